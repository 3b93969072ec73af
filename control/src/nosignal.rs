//! Writes to a Unix socket that fail rather than signal: a peer gone before it took what
//! we sent (a `lanetctl ping` interrupted, a node that died) fails the write with EPIPE,
//! where a plain write would raise SIGPIPE. That would kill a host process serving a
//! control socket that does not ignore it (a program in C, or in Rust with the signal
//! restored), and lanetctl itself, which restores it for output into a closed pipe.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Writes what it can of `bytes`, with `MSG_NOSIGNAL`.
pub(crate) fn send(conn: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `bytes` is a live buffer of its length, which the kernel only reads.
    let sent = unsafe {
        libc::send(
            conn.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
