//! The driver thread's side of the bulk mover thread: starting it, handing it large
//! receives, taking back what it finished, and retiring it if it dies. Apart from
//! `mover`, which is the thread itself.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use lanet::lnd::{LndError, LndErrorKind};

use super::mover::{Job, Moved, Mover};
use super::send::SendSlot;
use super::{Uring, BULK_MIN};
use crate::engine::ConnId;
use crate::io_error;

impl Uring {
    /// When the rest of the frame arriving on `conn` is a large payload, has the bulk
    /// mover receive it in place, straight into the frame's buffer. True if it does.
    pub(super) fn receive_in_place(&mut self, conn: ConnId) -> bool {
        let rest = self
            .engine
            .conn_mut(conn)
            .map_or(0, |c| c.rx.rest_of_frame());
        if rest < BULK_MIN || self.mover().is_none() {
            return false;
        }
        let (Some(sock), Some(c)) = (self.socks.get_mut(&conn), self.engine.conn_mut(conn)) else {
            return false;
        };
        sock.recv = true;
        sock.mover_recv = true;
        let job = Job::Recv {
            conn,
            fd: sock.fd.as_raw_fd(),
            buf: c.rx.take_tail(rest),
            len: rest,
        };
        if let Err(job) = self.mover.as_mut().expect("started above").submit(job) {
            self.mover_gone(job);
        }
        true
    }

    /// The bulk mover thread died and could not take `job`: see [`Self::retire_mover`].
    pub(super) fn mover_gone(&mut self, job: Job) {
        drop(job); // never given to the kernel
        self.retire_mover();
    }

    /// The bulk mover thread died (a bug; it said why as it panicked): what it held never
    /// comes back (its memory is leaked, as the kernel may still use it). Each connection
    /// it held bytes of fails, its counts start over, and bulk transfers run on this
    /// thread's ring from now on.
    fn retire_mover(&mut self) {
        tracing::error!("the bulk mover thread died: its connections fail");
        self.mover = None;
        self.mover_failed = true;
        let held: Vec<ConnId> = (self.socks.iter())
            .filter(|(_, s)| s.moving > 0 || s.mover_recv)
            .map(|(&conn, _)| conn)
            .collect();
        for conn in held {
            let sock = self.socks.get_mut(&conn).expect("listed above");
            if sock.mover_recv {
                sock.recv = false;
                sock.mover_recv = false;
            }
            sock.moving = 0;
            sock.moving_bytes = 0;
            sock.send.get_or_insert_with(SendSlot::new);
            let e = LndError::new(LndErrorKind::Resource, "the bulk mover thread died");
            self.fail_sending(conn, e);
            self.reap(conn);
        }
    }

    /// The bulk mover, started on first use. None if it cannot be started (said once);
    /// then bulk transfers run on this thread's ring.
    pub(super) fn mover(&mut self) -> Option<&Mover> {
        if self.mover.is_none() && !self.mover_failed {
            // Busy-polling is for an NI alone on its thread (whose driver spins too); a
            // thread on several NIs asks for `wait_fd`, and then this one never spins.
            // A mover polls while it moves bytes either way, for `mover_poll` or the
            // NI's spin, the longer (`mover::poll_window`).
            let spin = match self.shared {
                Some(_) => Duration::ZERO,
                None => self.spin,
            };
            match Mover::start(
                "lanet-bulk".into(),
                self.wake_fd.clone(),
                spin,
                self.mover_poll,
            ) {
                Ok(m) => self.mover = Some(m),
                Err(e) => {
                    tracing::warn!(
                        "no bulk mover thread ({e}); bulk copies stay on the driver thread"
                    );
                    self.mover_failed = true;
                }
            }
        }
        self.mover.as_ref()
    }

    /// Whether the bulk mover is moving bytes for this LND: a busy-polling driver thread
    /// then sleeps instead, or it would take the CPU the mover needs (on 2 cores, two
    /// spinning drivers cut a 1 MiB stream from ~5 GB/s to 0.2).
    pub(crate) fn bulk_busy(&self) -> bool {
        self.mover.as_ref().is_some_and(Mover::busy)
    }

    /// Takes back what the bulk mover finished: send slots and received payloads; and
    /// retires it if it died.
    pub(super) fn collect_moved(&mut self) {
        // Read first: once it says so, all the mover handed back is there to take.
        let died = self.mover.as_ref().is_some_and(Mover::died);
        while let Some(done) = self.mover.as_mut().and_then(Mover::try_done) {
            let conn = done.conn;
            match done.moved {
                Moved::Send(slot) => self.on_moved_send(conn, done.res, slot),
                Moved::Recv(buf) => {
                    let alive = match self.socks.get_mut(&conn) {
                        Some(s) => {
                            // The mover read a whole payload; what follows may be there.
                            s.drained = false;
                            s.mover_recv = false;
                            !s.closing
                        }
                        None => false,
                    };
                    if let (true, Some(c)) = (done.res > 0 && alive, self.engine.conn_mut(conn)) {
                        c.rx.append_tail(buf);
                    }
                    self.after_recv(conn, done.res, alive);
                    self.recv_ended(conn);
                }
            }
        }
        if died {
            self.retire_mover();
        }
    }

    /// The bulk mover sent a message (`res`: its bytes, or a negated errno), or failed to.
    /// Anything short of the whole message fails the connection: the mover may already
    /// be sending the next one, so the rest cannot be sent again in its place.
    fn on_moved_send(&mut self, conn: ConnId, res: i32, mut slot: Box<SendSlot>) {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        let len = slot.len;
        slot.release();
        sock.moving -= 1;
        sock.moving_bytes -= len;
        match &mut sock.send {
            home @ None => *home = Some(slot),
            Some(_) => sock.spare = Some(slot),
        }
        if sock.closing {
            return self.reap(conn);
        }
        if res >= 0 && res as usize == len {
            if self.engine.wrote(conn, len) {
                // More is queued: the mover's other message, or frames past it.
                self.dirty.push(conn);
            }
        } else {
            let e = match res {
                ..0 => io::Error::from_raw_os_error(-res),
                _ => io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("the send ended after {res} of {len} bytes"),
                ),
            };
            self.fail_sending(conn, io_error(&e, "send"));
        }
        self.reap(conn);
    }
}
