//! System calls made on a socket directly, outside any ring or poller: a plain `recv`
//! into a framer's buffer, and a gathering `sendmsg` from a send queue's own buffers. The
//! epoll backend reads and writes every socket so; io_uring writes small frames so when
//! nothing of the socket's is in the ring (`uring::Uring::send_direct`), and a
//! busy-polling one reads its hot connection so (`uring::Uring::poll_hot`).
//!
//! Both are made through `syscall(2)`, not the C library's wrappers: those are thread
//! cancellation points, which in a threaded process bracket every call with enabling and
//! disabling asynchronous cancellation (glibc: ~70 instructions a call, measured). Nothing
//! here cancels threads. (`syscall` reads its arguments as `long`s: the integers are
//! passed as such; pointers and sizes are that wide already on the 64-bit targets we build
//! for.)

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;

use bytes::BytesMut;

use crate::framing::{TxQueue, MAX_SLICES};

/// Reads from `sock` into `buf`'s spare capacity (none of it zero-filled first) and appends
/// what arrived; never waits, whether the socket blocks (io_uring's do) or not (epoll's).
pub(crate) fn recv_into(sock: &impl AsRawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let no_addr: *mut libc::sockaddr = std::ptr::null_mut();
    let no_addr_len: *mut libc::socklen_t = std::ptr::null_mut();
    // SAFETY: recvfrom(fd, buf, len, flags, NULL, NULL) is recv(2); the kernel writes at
    // most `spare.len()` bytes into memory we own and do not otherwise touch during the
    // call, and writes no address (none asked for).
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            libc::c_long::from(sock.as_raw_fd()),
            spare.as_mut_ptr(),
            spare.len(),
            libc::c_long::from(libc::MSG_DONTWAIT),
            no_addr,
            no_addr_len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised the first `n` spare bytes, and `n <= spare.len()`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Whether a failed call here only means there was nothing to do now: the socket was
/// empty (or full), or a signal interrupted the call. The caller tries again later.
pub(crate) fn nothing_now(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Writes the first `max` unwritten bytes of `tx` (those of its first `MAX_SLICES / 2`
/// frames at most) with one gathering write; never waits, whether the socket blocks or not.
pub(crate) fn write_queue(sock: &impl AsRawFd, tx: &TxQueue, max: usize) -> io::Result<usize> {
    // The whole array is filled in before the call: one sized for the few frames of a
    // ping-pong costs an eighth of one sized for a window.
    if tx.len() <= FEW_FRAMES {
        write_slices::<{ 2 * FEW_FRAMES }>(sock, tx, max)
    } else {
        write_slices::<MAX_SLICES>(sock, tx, max)
    }
}

const FEW_FRAMES: usize = 4;

fn write_slices<const N: usize>(
    sock: &impl AsRawFd,
    tx: &TxQueue,
    max: usize,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); N];
    let n = tx.slices_up_to(&mut slices, max);
    send_slices(sock, &slices[..n])
}

/// `writev`, but by `sendmsg` with `MSG_NOSIGNAL`: a peer gone fails the write with EPIPE
/// and does not raise SIGPIPE, which would kill a host process that does not ignore it
/// (a program in C, or in Rust with the signal restored). And with `MSG_DONTWAIT`: a full
/// socket fails the write with `WouldBlock` whether the socket blocks (io_uring's do) or
/// not (epoll's).
fn send_slices(sock: &impl AsRawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (its documented guarantee); the
    // kernel only reads through the pointer. The length's type is size_t on glibc, int on
    // musl.
    msg.msg_iov = slices.as_ptr().cast_mut().cast();
    msg.msg_iovlen = slices.len() as _;
    // SAFETY: `msg` points at `slices`, which outlive the call; the kernel reads the
    // slices' memory only during it. Made directly (see the module), so nothing clears
    // `msghdr`'s padding (musl's wrapper would): `msg` was zeroed whole above.
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            libc::c_long::from(sock.as_raw_fd()),
            &raw const msg,
            libc::c_long::from(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn recv_into_never_waits_on_a_blocking_socket_and_appends_what_came() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"kept ");

        // Nothing sent yet: without MSG_DONTWAIT reaching the kernel, this would wait out
        // the socket's timeout (and fail the same way, only seconds later).
        reader
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let asked = std::time::Instant::now();
        let empty = recv_into(&reader, &mut buf).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock, "{empty}");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(2),
            "recv waited {:?}",
            asked.elapsed()
        );

        writer.write_all(b"arrived").unwrap();
        let mut got = 0;
        while got < 7 {
            match recv_into(&reader, &mut buf) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        assert_eq!(&buf[..], b"kept arrived");

        drop(writer);
        // The peer closed: end of stream, not an error.
        loop {
            match recv_into(&reader, &mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                other => panic!("expected the end of the stream, got {other:?}"),
            }
        }
    }

    /// A full socket fails the write at once, whether the socket blocks or not: the
    /// driver thread writing it (an io_uring driver's, whose sockets block) must never
    /// wait for its peer to read.
    #[test]
    fn write_queue_never_waits_on_a_full_blocking_socket() {
        use lanet::wire::{encode_header, Body, Header};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_reader, _) = listener.accept().unwrap(); // never reads

        // Without MSG_DONTWAIT reaching the kernel, a write to the full socket would wait
        // out this timeout (and fail the same way, only seconds later).
        writer
            .set_write_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let payload = bytes::Bytes::from(vec![7u8; 32 << 20]);
        let header = Header {
            lane: lanet::Lane::Data,
            hop_limit: 8,
            credits: 0,
            src: lanet::Nid::mem(1, 0),
            dst: lanet::Nid::mem(2, 0),
            src_incarnation: 1,
            msg_id: 1,
            payload_len: payload.len() as u32,
            body: Body::Put {
                portal: 1,
                match_bits: 2,
                settled_below: 0,
                ack: false,
            },
            router_gen: 0,
            attempt: 0,
        };
        let mut q = TxQueue::default();
        q.push(encode_header(&header), payload, None);
        let asked = std::time::Instant::now();
        let full = loop {
            match write_queue(&writer, &q, usize::MAX) {
                Ok(n) => q.advance(n, &mut Vec::new()),
                Err(e) => break e,
            }
            assert!(!q.is_empty(), "32 MiB fit in the socket's buffers");
        };
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(2),
            "the write waited {:?}",
            asked.elapsed()
        );
    }

    /// Whether SIGPIPE is pending for this thread (where it blocks it).
    fn sigpipe_pending() -> bool {
        // SAFETY: `sigpending` fills the set it is given, a live local.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut set);
            libc::sigismember(&set, libc::SIGPIPE) == 1
        }
    }

    /// Writing to a peer that has gone fails with an error and raises no SIGPIPE (which
    /// would kill a host that does not ignore it). The thread blocks the signal, so that
    /// one raised stays pending, to be seen.
    #[test]
    fn writing_to_a_peer_that_went_away_raises_no_sigpipe() {
        // SAFETY: blocks SIGPIPE for this test's thread only; the sets are live locals.
        unsafe {
            let mut block: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut block);
            libc::sigaddset(&mut block, libc::SIGPIPE);
            libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut());
        }
        assert!(!sigpipe_pending());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        drop(listener);
        peer.set_nonblocking(true).unwrap();
        let _ = peer.read(&mut [0u8; 16]);
        drop(peer); // its FIN comes; our next write draws a reset, the one after EPIPE
        let data = [7u8; 4096];
        let slices = [IoSlice::new(&data), IoSlice::new(&data)];
        let error = (0..100)
            .find_map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                send_slices(&sock, &slices).err()
            })
            .expect("writes to a closed peer fail");
        assert!(
            matches!(error.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
            "{error}"
        );
        assert!(!sigpipe_pending(), "a write raised SIGPIPE");
    }
}
