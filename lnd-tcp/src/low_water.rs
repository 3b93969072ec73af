//! The receive low-water mark (`SO_RCVLOWAT`) of a socket on which a large frame arrives:
//! the kernel wakes the receiving thread once a good part of the frame's rest is in, not
//! for every segment.
//!
//! Measured on loopback with 1 MiB PUTs (`lanet-bench bandwidth`, 8 in flight): without a
//! mark the receiving process slept and woke ~26,000 times a second (epoll; ~28,000 with
//! io_uring's bulk mover), about one wake-up per 128 KiB, and each cost the sending thread,
//! which runs the receiver's TCP input on loopback, a wake-up between CPUs (on a VM, an
//! exit). With it, epoll's 3.0-3.8 GB/s became 4.7-5.9.
//!
//! A mark is only ever as high as the bytes still missing from the frame in progress: the
//! peer is sending them, so they come. The kernel also reports the socket readable before
//! the mark when its receive buffer or window runs short, or the peer closes; and raising
//! the mark grows the receive buffer to hold it. A mark left higher than what is still to
//! come would stall the connection, so whoever raises it sets it again after every read.

use std::io;
use std::os::fd::RawFd;

/// A frame missing at least this much has the mark raised; below it, the mark is 1 (the
/// socket's default): a wake-up per segment is then a wake-up or two per frame anyway.
const MIN: usize = 128 << 10;
/// The highest mark: wake-ups for a large frame's rest come at least this often.
const MAX: usize = 1 << 20;

/// The mark for a socket whose frame in progress misses `rest` bytes (0: none known).
pub(crate) fn mark_for(rest: usize) -> usize {
    if rest >= MIN {
        rest.min(MAX)
    } else {
        1
    }
}

/// Sets the socket's receive low-water mark (which socket2 does not offer).
pub(crate) fn set(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is a live `c_int` of the length passed, read by the kernel
    // during the call only; an fd that is not a socket is refused with an error.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket's receive low-water mark (for tests).
#[cfg(test)]
pub(crate) fn get(fd: RawFd) -> io::Result<usize> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, a live `c_int`, and the
    // length it wrote into `len`, during the call only.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value as usize)
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

    #[test]
    fn a_large_frames_rest_raises_the_mark_up_to_its_cap_and_small_ones_leave_it_at_1() {
        assert_eq!(mark_for(0), 1, "no frame in progress");
        assert_eq!(mark_for(MIN - 1), 1);
        assert_eq!(mark_for(MIN), MIN);
        assert_eq!(
            mark_for(600_000),
            600_000,
            "never more than is still to come"
        );
        assert_eq!(mark_for(16 << 20), MAX);
    }

    /// What both backends rely on: a socket holding less than its mark is not readable,
    /// and becomes so as the mark's last byte arrives, or as the mark is lowered.
    #[test]
    fn the_kernel_reports_a_socket_readable_only_from_its_mark() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
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
