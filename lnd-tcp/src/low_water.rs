//! The receive low-water mark (`SO_RCVLOWAT`) of a socket on which a large frame arrives:
//! the kernel wakes the receiving thread once a good part of the frame's rest is in, not
//! for every segment.
//!
//! Measured on loopback with 1 MiB PUTs (`lanet-bench bandwidth`, 8 in flight): without a
//! mark the receiving process slept and woke ~26,000 times a second with epoll (~28,000
//! with io_uring's bulk mover), about once per 128 KiB, and each wake-up cost the sending
//! thread, which runs the receiver's TCP input on loopback, a wake-up between CPUs (on a
//! VM, an exit). With it: epoll 3.0-3.8 GB/s became 4.7-5.9, io_uring 2.3-3.7 became
//! 3.1-4.4 (`bench/RESULTS.md`, "2026-12-05 (night, last session)").
//!
//! A mark is never higher than the bytes still missing from the frame in progress, queued
//! or on their way: the peer is sending them, so they come. Whoever raises it sets it
//! again whenever the socket is left to raise its next wake-up (epoll: each drain that
//! empties it; the mover: before each receive), so it never outlives the frame. The kernel
//! also wakes before the mark when its receive buffer or window runs short, or the peer
//! closes, and grows the receive buffer to hold the mark. Those early wake-ups were fixed
//! over several releases up to about Linux 5.11 (a reader could hang below its mark); on
//! older kernels the mark stays at 1.

use std::io;
use std::os::fd::RawFd;
use std::sync::OnceLock;

use crate::sockopt;

/// A frame missing at least this much has the mark raised; below it, the mark is 1 (the
/// socket's default): a wake-up per segment is then a wake-up or two per frame anyway.
const RAISE_FROM: usize = 128 << 10;
/// The highest mark: wake-ups for a large frame's rest come at least this often.
const CAP: usize = 1 << 20;

/// The mark for a socket whose frame in progress misses `rest` bytes (0: none known).
pub(crate) fn mark_for(rest: usize) -> usize {
    if rest >= RAISE_FROM && kernel_wakes_early() {
        rest.min(CAP)
    } else {
        1
    }
}

/// Whether this kernel is recent enough to wake a reader before its mark when the receive
/// buffer or window runs short (see the module's doc): 5.11. Without, marks stay 1.
pub(crate) fn kernel_wakes_early() -> bool {
    // Held here (the version is cached already) so that the log line comes once.
    static WAKES_EARLY: OnceLock<bool> = OnceLock::new();
    *WAKES_EARLY.get_or_init(|| {
        let version = crate::kernel::version();
        let at_least = wakes_early(version);
        if !at_least {
            tracing::info!(
                ?version,
                "no receive low-water marks for large frames before Linux 5.11"
            );
        }
        at_least
    })
}

/// Whether a kernel of `version` wakes a reader early (an unknown one is not assumed to).
fn wakes_early(version: Option<(u32, u32)>) -> bool {
    version.is_some_and(|v| v >= (5, 11))
}

/// Moves a socket's mark from `was` to a different `mark`; returns the mark in effect
/// after. One that cannot be raised stays where it was: only a cost, a wake-up per
/// segment as without a mark. One that cannot be lowered is an error: the socket might
/// wait for bytes that never come, and its connection must go.
pub(crate) fn change(fd: RawFd, was: usize, mark: usize) -> io::Result<usize> {
    match set(fd, mark) {
        Ok(()) => Ok(mark),
        Err(e) if mark > was => {
            tracing::debug!(fd, "SO_RCVLOWAT {mark} not raised: {e}");
            Ok(was)
        }
        Err(e) => Err(e),
    }
}

/// Sets the socket's receive low-water mark.
fn set(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, value)
}

/// The socket's receive low-water mark.
pub(crate) fn get(fd: RawFd) -> io::Result<usize> {
    sockopt::get_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT).map(|v| v as usize)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn readable_within(s: &TcpStream, ms: i32) -> bool {
        let mut fds = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, its count passed.
        let n = unsafe { libc::poll(&mut fds, 1, ms) };
        assert!(n >= 0, "poll: {}", io::Error::last_os_error());
        fds.revents & libc::POLLIN != 0
    }

    /// A mark that cannot be set (here: not a socket) stays where it was when it was to
    /// be raised, and is an error when it was to be lowered.
    #[test]
    fn a_failed_raise_keeps_the_mark_and_a_failed_lowering_is_an_error() {
        let (r, _w) = std::io::pipe().unwrap();
        let fd = r.as_raw_fd();
        assert_eq!(change(fd, 1, CAP).unwrap(), 1);
        assert!(change(fd, CAP, 1).is_err());
    }

    #[test]
    fn a_large_frames_rest_raises_the_mark_up_to_its_cap_and_small_ones_leave_it_at_1() {
        if !kernel_wakes_early() {
            assert_eq!(mark_for(16 << 20), 1, "an old kernel keeps the mark at 1");
            return;
        }
        assert_eq!(mark_for(0), 1, "no frame in progress");
        assert_eq!(mark_for(RAISE_FROM - 1), 1);
        assert_eq!(mark_for(RAISE_FROM), RAISE_FROM);
        assert_eq!(
            mark_for(600_000),
            600_000,
            "never more than is still to come"
        );
        assert_eq!(mark_for(16 << 20), CAP);
    }

    #[test]
    fn kernels_before_5_11_keep_the_mark_at_1() {
        use crate::kernel::parse;
        assert!(wakes_early(parse("6.18.44-fc-v1272")));
        assert!(wakes_early(parse("5.11.0")));
        assert!(!wakes_early(parse("5.10.209-1")));
        assert!(!wakes_early(parse("4.19.0-26-amd64")));
        assert!(wakes_early(parse("5.15.0-1034-azure")));
        assert!(!wakes_early(parse("5")), "no minor: not assumed");
        assert!(!wakes_early(None), "unknown: not assumed");
    }

    /// What both backends rely on: a socket holding less than its mark is not readable,
    /// and becomes so as the mark's last byte arrives, or as the mark is lowered.
    #[test]
    fn the_kernel_reports_a_socket_readable_only_from_its_mark() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        // A receive window far larger than the mark: a window about to close (under one
        // segment, 64 KiB on loopback) would make the socket readable before its mark.
        // The kernel caps the size at `net.core.rmem_max` (at least ~208 KiB, doubled),
        // still several marks.
        socket2::SockRef::from(&l)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let mut tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        tx.set_nodelay(true).unwrap(); // the last byte goes at once
        let (rx, _) = l.accept().unwrap();
        // Within the first receive window: on loopback a write has queued its bytes at
        // the receiver by the time it returns.
        let mark = 50_000;
        set(rx.as_raw_fd(), mark).unwrap();
        assert_eq!(get(rx.as_raw_fd()).unwrap(), mark);
        tx.write_all(&vec![7; mark - 1]).unwrap();
        assert!(!readable_within(&rx, 0), "one byte short of the mark");
        tx.write_all(&[7]).unwrap();
        assert!(readable_within(&rx, 5_000), "the mark reached");
        // Raised past what is queued, and lowered again.
        set(rx.as_raw_fd(), mark + 1).unwrap();
        assert!(!readable_within(&rx, 0), "raised past what is queued");
        set(rx.as_raw_fd(), 1).unwrap();
        assert!(readable_within(&rx, 0));
        assert_eq!(get(rx.as_raw_fd()).unwrap(), 1);
    }
}
