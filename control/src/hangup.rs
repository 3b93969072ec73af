//! Whether a control client has hung up. A client that gives up while its command waits
//! for a free slot (`lanetctl` at its timeout, an operator's Ctrl-C) has already written
//! the command, and a Unix socket keeps it after its writer closed: read and run later,
//! it would change the node behind the operator's back (a `routing off` they thought
//! cancelled), or, retried, twice.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// True if the client closed its end for good. A client that only shut down its writing
/// half (`socat`, `nc -N`: the command sent, the answer awaited) has not: a Unix socket
/// reports POLLHUP only once both halves are shut.
pub(crate) fn hung_up(conn: &UnixStream) -> bool {
    let mut poll = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd that lives across the call; a timeout of 0 never blocks, and the
    // descriptor is open as long as `conn` is borrowed.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_client_has_hung_up_and_a_half_closed_one_has_not() {
        let (server, client) = UnixStream::pair().unwrap();
        assert!(!hung_up(&server));
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!hung_up(&server), "it still waits for the answer");
        drop(client);
        assert!(hung_up(&server));
    }
}
