//! Writing: flushing what connections have queued (small frames directly when the core
//! hands them over, the rest through the ring or by the bulk mover), submitting those
//! sends, and handling their completions. The whole send path in one place.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};
use lanet::lane::Lane;
use lanet::lnd::{LndEvent, Transmit};

use super::mover::Job;
use super::send::SendSlot;
use super::{user_data, Uring, BULK_MIN, MOVER_SENDS, SEND};
use crate::engine::ConnId;
use crate::io_error;

impl Uring {
    /// Sends what `conn` has queued, unless a send (or its notification) is pending, the
    /// bulk mover has [`MOVER_SENDS`] of its messages, or the socket is still connecting
    /// (the completion queues it for a flush again, if anything waits), or it is closing
    /// (nothing more goes out). While the mover sends, only a message it sends too may
    /// follow (after those it has); another waits for them.
    fn flush(&mut self, conn: ConnId) {
        if self.busy_polling() && self.send_direct(conn) {
            return; // written, held for the next look, or failed
        }
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        if sock.sending
            || sock.notif
            || sock.closing
            || sock.connect.is_some()
            || sock.moving >= MOVER_SENDS
        {
            return;
        }
        let Some((c, lane)) = self.engine.conn_and_lane(conn) else {
            return;
        };
        if !c.wants_write() {
            return;
        }
        let behind_mover = sock.moving > 0;
        if behind_mover && !c.tx.unwritten_exceeds(sock.moving_bytes) {
            return; // the mover has it all
        }
        let slot = match sock.send.as_mut() {
            Some(slot) => slot,
            None if behind_mover => sock.spare.get_or_insert_with(SendSlot::new),
            None => unreachable!("the slot is home while nothing is sending"),
        };
        let len = slot.fill(&c.tx, sock.moving_bytes);
        let zero_copy = sock.zero_copy && len >= self.zero_copy_min;
        let data = lane == Some(Lane::Data);
        let bulk = data && !zero_copy && len >= BULK_MIN;
        if behind_mover && (!bulk || self.stopping) {
            // Nothing past the mover's, or too little for it: sent once the mover is done.
            // (A driver being dropped stops its mover: nothing behind it goes.)
            slot.release();
            return;
        }
        // A driver being dropped sends what it holds inline, as far as the socket takes it
        // at once (its sockets are shut down next): neither the mover nor a kernel worker.
        if bulk && !self.stopping && self.mover().is_some() {
            let sock = self.socks.get_mut(&conn).expect("checked above");
            let slot = match sock.send.take() {
                Some(slot) => slot,
                None => sock.spare.take().expect("filled above"),
            };
            sock.moving += 1;
            sock.moving_bytes += len;
            let more = sock.moving < MOVER_SENDS;
            let job = Job::Send {
                conn,
                fd: sock.fd.as_raw_fd(),
                slot,
                broken: sock.broken.get_or_insert_with(Default::default).clone(),
            };
            if let Err(job) = self.mover.as_mut().expect("started above").submit(job) {
                return self.mover_gone(job);
            }
            if more {
                self.flush(conn); // the next message, for the mover to start as this ends
            }
            return;
        }
        let sock = self.socks.get_mut(&conn).expect("checked above");
        let slot = sock.send.as_ref().expect("home");
        let fd = Fd(sock.fd.as_raw_fd());
        // MSG_WAITALL: the kernel keeps sending until the whole message is out, instead of
        // completing after the first partial write when the socket buffer is full.
        // MSG_NOSIGNAL, which the kernel adds to io_uring's sends anyway: a socket shut
        // down under a send fails it with EPIPE, no SIGPIPE.
        let flags = (libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32;
        let e = if zero_copy {
            opcode::SendMsgZc::new(fd, slot.msghdr())
                .flags(flags)
                .build()
        } else {
            opcode::SendMsg::new(fd, slot.msghdr()).flags(flags).build()
        };
        // Without a mover, large data-lane sends run on a kernel worker thread: inline, a
        // loopback send of 512 KiB held this thread in `io_uring_enter` for ~1 ms (it also
        // runs the receiver's TCP input), and the health lane waited behind it.
        let e = match data && len >= BULK_MIN && !self.stopping {
            true => e.flags(squeue::Flags::ASYNC),
            false => e,
        };
        sock.sending = true;
        self.sends_queued = true;
        // SAFETY: the message lives in the boxed send slot, whose staging copies and held
        // `Bytes` are not touched or released until the send (and any notification)
        // completes: `sending`/`notif` guard refills, and `reap` keeps the slot until then.
        unsafe { self.push(e.user_data(user_data(conn, SEND))) };
    }

    /// Writes what `conn` has queued with a plain `sendmsg`, if its unsent frames come to
    /// less than [`BULK_MIN`] (and less than the zero-copy threshold, for a socket that
    /// sends so) and nothing of the socket's is in the ring (so its bytes stay in order);
    /// if the socket was written so in this look already, holds it for the next (see
    /// [`Uring::held`]). True if that was the end of it: all written, held, or the
    /// connection failed; false leaves the rest (or all, if the socket was full) to the
    /// ring. Busy-polling, the loop then makes one system call per message sent, as for
    /// one received ([`Self::poll_hot`]), and a cheaper one than the `io_uring_enter`
    /// that would submit and complete the send (measured: bench/RESULTS.md, "2026-12-06
    /// (dusk)"); sleeping, see [`Self::write_dirty_directly`].
    fn send_direct(&mut self, conn: ConnId) -> bool {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return false;
        };
        if sock.sending || sock.notif || sock.closing || sock.connect.is_some() || sock.moving > 0 {
            return false;
        }
        let Some(c) = self.engine.conn_mut(conn) else {
            return false;
        };
        let limit = direct_limit(sock.zero_copy, self.zero_copy_min);
        if !c.wants_write() || c.tx.unwritten_exceeds(limit.saturating_sub(1)) {
            return false;
        }
        if sock.written_look == self.looks {
            self.held.push(conn);
            return true;
        }
        sock.written_look = self.looks;
        match crate::direct::write_queue(&sock.fd, &c.tx, BULK_MIN) {
            Ok(n) => !self.engine.wrote(conn, n),
            Err(e) if crate::direct::nothing_now(&e) => false,
            Err(e) => {
                self.fail_sending(conn, io_error(&e, "send"));
                true
            }
        }
    }

    /// A look begins: what [`Self::send_direct`] held is flushed with it.
    pub(super) fn new_look(&mut self) {
        self.looks += 1;
        self.dirty.append(&mut self.held);
    }

    /// Sends for every connection that may have something queued. Most calls find none (a
    /// poll asks before and after it reaps): that look is made where it is called.
    #[inline]
    pub(super) fn flush_dirty(&mut self) {
        if !self.dirty.is_empty() {
            self.flush_each_dirty();
        }
    }

    /// [`Self::flush_dirty`]'s work. The list keeps its capacity: no allocation per turn.
    fn flush_each_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &conn in &dirty {
            self.flush(conn);
        }
        dirty.clear();
        // Kept: what a flush added (a socket failing there hands up its receives first,
        // whose answers may be queued).
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    pub(crate) fn post(&mut self, tx: Transmit) {
        // Sent when the hand-over ends (`send_posted`) or with the next submission:
        // everything posted in a hand-over goes out together.
        if let Some(conn) = self.engine.post(tx) {
            self.dirty.push(conn);
        }
    }

    /// The hand-over is complete. Busy-polling, its sends go now (written directly, see
    /// [`Self::send_direct`], or in one submission), rather than with the next poll's,
    /// after the core has run the application's callbacks (8-byte message rate with ACK:
    /// 1.17-1.22x UCX's before, 1.37-1.50x after). Sleeping, what can be written directly
    /// is too where it is all for one socket ([`Self::write_dirty_directly`]), and the
    /// rest goes with the `io_uring_enter` that also waits (or, on a thread shared by
    /// several LNDs, with `prepare_wait`'s submission before it sleeps).
    pub(crate) fn send_posted(&mut self) {
        if !self.busy_polling() {
            return self.write_dirty_directly();
        }
        if self.enable().is_err() {
            return; // the poll says why
        }
        self.flush_dirty();
        self.submit_sends();
    }

    /// Sleeping: where what waits to be written (`dirty`: this hand-over's frames, and
    /// any an earlier one in the look left) is all for one socket, writes it directly, as
    /// far as [`Self::send_direct`] takes it (small frames, nothing of the socket's in the
    /// ring, one write per look); the rest stays for the poll to submit.
    /// A send of the ring completed as the poll's `io_uring_enter` submitted it, and that
    /// completion woke the wait it was to sleep in: a turn of the core's, and an
    /// `io_uring_enter` more, for nothing but the completion, each round trip. Written
    /// here, the send's completion goes to the core with this hand-over (`take_ready`),
    /// and the poll sleeps until the answer (measured: `lanet-bench cost --lnd tcp`,
    /// bench/RESULTS.md). Frames for several sockets (a data frame and a PING, a round of
    /// PINGs to many peers) go in the poll's one submission rather than a system call
    /// each: a guard, not a measured win (`lanet-bench detect` under load saw 2 false
    /// Downs in 4 runs with every socket written directly, 1 in 9 without: not a
    /// significant difference; bench/RESULTS.md).
    fn write_dirty_directly(&mut self) {
        // `dirty` names a socket once per frame posted to it.
        let Some(&conn) = self.dirty.first() else {
            return;
        };
        if self.dirty.iter().any(|&c| c != conn) {
            return;
        }
        // `send_direct` adds nothing to `dirty`: what it holds goes with the next look.
        if self.send_direct(conn) {
            self.dirty.clear();
        }
    }

    /// What is known without polling: the sends [`Self::send_direct`] wrote (and a
    /// connection it found failed), for the core at once rather than at the next poll.
    pub(crate) fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        self.drop_closed();
        events.append(&mut self.engine.events);
    }

    /// Submits the sends queued since the last submission, if any (what else is queued
    /// goes with them).
    pub(super) fn submit_sends(&mut self) {
        if self.sends_queued && !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => self.sends_queued = false,
                Err(e) => tracing::warn!("io_uring submit failed: {e}"),
            }
        }
    }

    pub(super) fn on_send(&mut self, conn: ConnId, res: i32, flags: u32) {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        let slot = sock.send.as_mut().expect("a finished send's slot is home");
        if cqueue::notif(flags) {
            sock.notif = false;
            slot.release();
            self.dirty.push(conn);
            return self.reap(conn);
        }
        sock.sending = false;
        if cqueue::more(flags) {
            sock.notif = true; // zero-copy: the memory is in use until the notification
        } else {
            slot.release();
        }
        let closing = sock.closing;
        if res > 0 && !closing {
            if self.engine.wrote(conn, res as usize) {
                self.dirty.push(conn); // more waits: the rest, or frames posted meanwhile
            }
        } else if !closing {
            let e = if res == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "send wrote nothing")
            } else {
                io::Error::from_raw_os_error(-res)
            };
            self.fail_sending(conn, io_error(&e, "send"));
        }
        self.reap(conn);
    }
}

/// The unsent bytes of a socket below which [`Uring::send_direct`] writes them itself:
/// less than a bulk send, and, where the socket sends zero-copy (`zero_copy`, a peer off
/// loopback), less than `zero_copy_min`, so that a frame to go zero-copy is never copied
/// instead.
#[inline]
fn direct_limit(zero_copy: bool, zero_copy_min: usize) -> usize {
    match zero_copy {
        true => zero_copy_min.min(BULK_MIN),
        false => BULK_MIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_that_sends_zero_copy_is_written_directly_only_below_its_threshold() {
        assert_eq!(
            direct_limit(false, 0),
            BULK_MIN,
            "loopback: never zero-copy"
        );
        assert_eq!(direct_limit(false, 4096), BULK_MIN);
        assert_eq!(direct_limit(true, 16 << 10), 16 << 10);
        assert_eq!(
            direct_limit(true, 0),
            0,
            "everything zero-copy: nothing direct"
        );
        assert_eq!(direct_limit(true, BULK_MIN), BULK_MIN, "the default");
        assert_eq!(
            direct_limit(true, usize::MAX),
            BULK_MIN,
            "a kernel without zero-copy sends"
        );
    }
}
