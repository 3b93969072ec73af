//! Busy-polling: the hot data connection, which this thread reads with plain `recv`s
//! instead of a receive in the ring, and gives back to the ring before it sleeps. Apart
//! because only a busy-polling driver takes this path.

use lanet::lnd::LndEvent;

use super::{Uring, BULK_MIN};
use crate::engine::ConnId;

impl Uring {
    /// Whether this driver busy-polls: a thread on several NIs (`shared`) sleeps on them
    /// all, and never spins.
    pub(super) fn busy_polling(&self) -> bool {
        self.shared.is_none() && !self.spin.is_zero()
    }

    /// Busy-polling: one look that reads the hot connection with a plain `recv` and
    /// takes the completions already in the ring, without entering the kernel for them.
    /// A frame on the hot connection then takes one system call from its arrival to its
    /// handling (the `recv`), where a receive in the ring takes an `io_uring_enter` that
    /// runs the kernel's task work for it, and the copy out of a provided buffer after
    /// (measured: `lanet-bench latency --spin`, bench/RESULTS.md). The busy-polling loop
    /// still polls in full every few looks, for the task work of the other sockets
    /// (the health lane's among them).
    ///
    /// False, having read nothing from the hot connection, where a full poll is wanted
    /// (what it reaped, and the events of that, go up with the full poll): no hot connection;
    /// receives held back or events to hand over; or frames of the hot connection not
    /// yet written out (a send in the kernel, whose completion may need the task work
    /// only an `io_uring_enter` runs; frames behind the mover's sends or a zero-copy
    /// send's notification): a sender whose socket is full would otherwise see it free
    /// up to eight looks late.
    pub(crate) fn poll_hot(&mut self, events: &mut Vec<LndEvent>) -> bool {
        if self.hot.is_none() || self.enable().is_err() {
            return false; // (the full poll says why it cannot enable)
        }
        self.new_look();
        self.flush_dirty();
        self.submit_sends();
        // Sends that completed as they were submitted are in the ring already; what the
        // mover finished is taken with them, as after every reap (its wake may be among
        // them). A burst the last full poll reaped still counts (`can_skip_enter`).
        if !self.ring.completion().is_empty() {
            let burst = self.last_reaped;
            self.reap_completions();
            self.collect_moved();
            self.last_reaped = self.last_reaped.max(burst);
        }
        // (That reap may have made another connection hot.)
        let Some(hot) = self.hot else {
            return false;
        };
        let writing = self.engine.conn_mut(hot).is_some_and(|c| c.wants_write());
        if writing || !self.backlog.is_empty() || !self.engine.events.is_empty() {
            return false;
        }
        // A look that does not enter the kernel, as a skipped one: the forced enters
        // (`can_skip_enter`) count these too.
        self.enters_skipped = self.enters_skipped.saturating_add(1);
        self.read_hot();
        self.finish_turn(events);
        true
    }

    /// Reads what the hot connection has (one `recv`); a large frame starting goes to the
    /// bulk mover, which receives it in place.
    pub(super) fn read_hot(&mut self) {
        let Some(conn) = self.hot else {
            return;
        };
        let (Some(sock), Some(c)) = (self.socks.get(&conn), self.engine.conn_mut(conn)) else {
            self.hot = None;
            return;
        };
        if sock.closing {
            self.hot = None;
            return;
        }
        let res = match crate::direct::recv_into(&sock.fd, c.rx.read_buf()) {
            Ok(n) => n as i32,
            Err(e) if crate::direct::nothing_now(&e) => return,
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        if res == -libc::ENOBUFS || res == -libc::ECANCELED {
            // Not a plain receive's errors, and `after_recv` would take them for a ring
            // receive's end: back to the ring, rather than no reader at all.
            return self.cool_hot();
        }
        // (`drained` is left as it is: nothing reads it until the connection goes back
        // to the ring, which sets it.)
        self.after_recv(conn, res, true);
        if res <= 0 {
            self.hot = None; // the connection failed (after_recv said so)
            return;
        }
        // The rest of a large frame is the mover's to receive, in place.
        let rest = self
            .engine
            .conn_mut(conn)
            .map_or(0, |c| c.rx.rest_of_frame());
        if rest >= BULK_MIN && self.mover().is_some() {
            self.hot = None;
            self.arm_recv(conn);
        }
    }

    /// Before the thread sleeps (or when a read of it fails as only a ring receive
    /// should): the hot connection goes back to a receive in the ring, which wakes it.
    pub(super) fn cool_hot(&mut self) {
        if let Some(conn) = self.hot.take() {
            self.back_to_ring(conn);
        }
    }

    /// A connection this thread read (no longer `hot`) gets a receive in the ring again,
    /// flagged drained (it polls first): what came since the last read fires it at once.
    pub(super) fn back_to_ring(&mut self, conn: ConnId) {
        if let Some(sock) = self.socks.get_mut(&conn) {
            sock.drained = true;
        }
        let lane = self.engine.lane_of(conn);
        self.arm_ring_recv(conn, lane);
    }
}
