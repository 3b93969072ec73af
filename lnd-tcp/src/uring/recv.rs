//! Receiving: arming the ring's accept, the waker's read and the sockets' receives, and
//! handling the completions of those. The poll loop in the parent module dispatches to it.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};
use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind};

use super::{sys, user_data, Sock, Uring};
use super::{ACCEPT, RECV, RECV_BUFFER_SIZE, RECV_HEALTH, RECV_POLL_FIRST, WAKE};
use crate::accept_pause::AcceptRetry;
use crate::engine::ConnId;
use crate::io_error;

impl Uring {
    pub(super) fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        if self.stopping {
            return;
        }
        self.accept_armed = true;
        let e = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(0, ACCEPT));
        // SAFETY: the entry points at no memory; the listener lives as long as the ring.
        unsafe { self.push(e) };
    }

    pub(super) fn arm_wake(&mut self) {
        if self.stopping {
            return;
        }
        self.wake_armed = true;
        let e =
            sys::wake_read(self.wake_fd.as_fd(), &mut self.wake_buf).user_data(user_data(0, WAKE));
        // SAFETY: `wake_buf` is boxed (stable address) and lives as long as the ring; only
        // one wake read is ever pending.
        unsafe { self.push(e) };
    }

    pub(super) fn arm_recv(&mut self, conn: ConnId) {
        if self.hot == Some(conn) || !self.socks.get(&conn).is_some_and(|s| !s.recv && !s.closing) {
            return;
        }
        let lane = self.engine.lane_of(conn);
        if lane == Some(Lane::Data) && self.receive_in_place(conn) {
            return;
        }
        if lane == Some(Lane::Data) && self.busy_polling() {
            // Read by this thread from now on; the one it replaces goes back to the ring.
            if let Some(cooled) = self.hot.replace(conn) {
                self.back_to_ring(cooled);
            }
            return;
        }
        self.arm_ring_recv(conn, lane);
    }

    /// Arms a receive in the ring on `conn`, whose lane the engine says is `lane` (see
    /// [`Uring::arm_recv`]).
    pub(super) fn arm_ring_recv(&mut self, conn: ConnId, lane: Option<Lane>) {
        // Never two readers of a socket: the hot one is read by this thread.
        debug_assert_ne!(self.hot, Some(conn), "a ring receive on the hot connection");
        let Some(sock) = self.socks.get_mut(&conn).filter(|s| !s.recv && !s.closing) else {
            return;
        };
        sock.recv = true;
        // Accepted sockets learn their lane from the HELLO: until then, data buffers.
        let health = lane == Some(Lane::Health);
        let poll_first = if sock.drained { RECV_POLL_FIRST } else { 0 };
        let fd = Fd(sock.fd.as_raw_fd());
        let e = match health {
            true => opcode::RecvMulti::new(fd, self.health_bufs.bgid())
                .build()
                .user_data(user_data(conn, RECV_HEALTH)),
            // Data: one buffer per receive, re-armed when handled. A multishot receive on
            // a socket that never runs dry keeps copying inside one `io_uring_enter` for as
            // long as the sender keeps up (measured: 4 MiB, 1.5 ms), and the health lane
            // waits behind it.
            false => opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_SIZE as u32)
                .buf_group(self.bufs.bgid())
                .ioprio(poll_first)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(conn, RECV)),
        };
        // SAFETY: the receive writes into provided buffers, which live as long as the ring;
        // the socket stays open until this operation has completed (see `reap`).
        unsafe { self.push(e) };
    }

    pub(super) fn on_accept(&mut self, res: i32, flags: u32) {
        if res >= 0 && self.stopping {
            // Accepted as the driver closes (a completion already on its way): closed at
            // once, never served, so that the peer sees the close rather than silence.
            drop(sys::own(res));
        } else if res >= 0 {
            let fd = sys::own(res);
            match crate::tune_socket(&fd) {
                Ok(()) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let peer = socket2::SockRef::from(&fd)
                        .peer_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .map(|a| a.ip());
                    self.socks.insert(id, Sock::new(fd, peer));
                    // May close the oldest awaiting its HELLO (see `drop_closed`).
                    self.engine.accepted(id, peer, Instant::now());
                    self.arm_recv(id);
                }
                Err(e) => tracing::warn!("dropping an accepted connection: {e}"),
            }
        }
        let mut paused = false;
        if res < 0 && !self.stopping && res != -libc::ECANCELED {
            let e = io::Error::from_raw_os_error(-res);
            paused = self.engine.accept_pause.failed(&e, Instant::now()) == AcceptRetry::Paused;
        }
        if !cqueue::more(flags) {
            self.accept_armed = false;
            if !paused {
                self.arm_accept(); // else when the pause is over (`Uring::poll`)
            }
        }
    }

    pub(super) fn on_recv(&mut self, conn: ConnId, res: i32, flags: u32, health_bufs: bool) {
        let bid = cqueue::buffer_select(flags);
        let alive = match self.socks.get_mut(&conn) {
            Some(s) => {
                if !health_bufs {
                    s.drained = res > 0 && !cqueue::sock_nonempty(flags);
                }
                !s.closing
            }
            None => false,
        };
        let ring = match health_bufs {
            true => &mut self.health_bufs,
            false => &mut self.bufs,
        };
        if let Some(bid) = bid {
            let into = self.engine.conn_mut(conn).filter(|_| res > 0 && alive);
            let len = usize::try_from(res).unwrap_or(0);
            ring.take(bid, len, |bytes| {
                if let Some(c) = into {
                    c.rx.extend(bytes);
                }
            });
        }
        self.after_recv(conn, res, alive);
        if !cqueue::more(flags) {
            self.recv_ended(conn);
        }
    }

    /// The bytes of a receive are in `conn`'s framer (`res > 0`), or it failed.
    pub(super) fn after_recv(&mut self, conn: ConnId, res: i32, alive: bool) {
        if !alive {
            return;
        }
        if res > 0 {
            self.engine.received(conn, Instant::now);
            // A handshake's frames may have answers to send (an up connection's frames
            // queue none; frames of its own already wait for their send's completion).
            if self.engine.conn_mut(conn).is_some_and(|c| c.wants_write()) {
                self.dirty.push(conn);
            }
        } else if res == 0 {
            self.engine.fail(
                conn,
                LndError::new(LndErrorKind::Reset, "connection closed by the peer"),
            );
        } else if res != -libc::ENOBUFS && res != -libc::ECANCELED {
            let e = io::Error::from_raw_os_error(-res);
            self.engine.fail(conn, io_error(&e, "receive"));
        }
    }

    /// No receive is armed on `conn` any more: arm the next, unless the socket is going
    /// away (ENOBUFS ends a multishot receive too).
    pub(super) fn recv_ended(&mut self, conn: ConnId) {
        if let Some(sock) = self.socks.get_mut(&conn) {
            sock.recv = false;
        }
        self.arm_recv(conn);
        self.reap(conn);
    }
}
