//! A plain `recv` into a framer's buffer: how epoll reads every socket, and how a
//! busy-polling io_uring reads its hot connection (`uring::Uring::poll_hot`).

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Reads from `sock` into `buf`'s spare capacity (none of it zero-filled first) and appends
/// what arrived; never waits, whether the socket blocks (io_uring's do) or not (epoll's).
pub(crate) fn recv_into(sock: &impl AsRawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into memory we own and do not
    // otherwise touch during the call.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
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
