//! A plain `recv` into a framer's buffer: how epoll reads every socket, and how a
//! busy-polling io_uring reads its hot connection (`uring::Uring::poll_hot`).

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Reads from `sock` into `buf`'s spare capacity (none of it zero-filled first) and appends
/// what arrived; never waits, whether the socket blocks (io_uring's do) or not (epoll's).
///
/// The system call is made directly, not through the C library's `recv`: that is a thread
/// cancellation point, which in a threaded process brackets every call with enabling and
/// disabling asynchronous cancellation (glibc: ~70 instructions a call, measured). Nothing
/// here cancels threads. (`syscall` takes `long` arguments: each is passed as one.)
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

#[cfg(test)]
mod tests {
    use std::io::Write;
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
}
