//! Connections on their way out.
//!
//! A QP destroyed at once can take a shared receive with it: the adapter takes a receive
//! from the lane's shared queue when a message begins to arrive, and a QP destroyed before
//! the message's last packet never completes it (soft-RoCE drops it; hardware may drop
//! completions not yet polled). That buffer is lost to the lane for good, and enough such
//! losses starve it. So a failed connection's QP, if it could ever receive, is first moved
//! to the error state, which makes the adapter complete, flushed, everything it holds of
//! ours (and the peer hears). The QP, with everything it could still touch (its send
//! buffers, the sinks offered to the peer), is kept for
//! [`RETIRE_GRACE`]; then the CQs are drained, which posts the flushed receives again,
//! and only then is it destroyed, from housekeeping. (Draining from `retire`, which CQ
//! processing calls when a completion fails its connection, would hand up completions
//! behind the rest of the batch being processed.) Its payload registrations need no
//! keeping: the registration caches hold their own reference, evicted only by a later
//! registration, after the QP was put in the error state (or destroyed); and a
//! registration is taken down before its memory is freed.
//!
//! This relies on the provider completing, flushed, a shared receive a QP holds for a
//! message cut off when the QP goes to the error state. Soft-RoCE in Linux 6.1 (the test
//! VM's) does; later soft-RoCE may not (its flush of an SRQ-attached QP looks as if it
//! drops such a receive). The VM test
//! `vm_driver_keeps_every_shared_receive_when_peers_die_mid_message` checks it.
//!
//! Verbs' LAST_WQE_REACHED event says exactly when a QP is done with its shared queue,
//! but it comes on the device context's event queue, which rdma_cm shares between every
//! NI of the process on that device: one NI reading it would take the others' events.
//! A grace far beyond a flush's microseconds (milliseconds on soft-RoCE under emulation)
//! serves every provider alike.
//!
//! Under a storm of failing connections, the QPs kept are bounded ([`RETIRING_MAX`]), and
//! a new QP that would not fit its CQ for them has the oldest destroyed early
//! ([`RdmaLnd::make_cq_room`]): new connections come first, at the small risk above.

use std::collections::VecDeque;
use std::time::Duration;

use lanet::lane::Lane;
use lanet::lnd::conns::Closed;
use lanet::lnd::{LndEvent, RxHandle};
use lanet::time::Time;

use super::conn::Conn;
use super::RdmaLnd;
use crate::mr::SinkMr;

/// How long a failed connection's QP is kept, in the error state, before it is destroyed.
pub(crate) const RETIRE_GRACE: Duration = Duration::from_millis(100);
/// QPs kept at once, at most: past it (a storm of failing connections) the oldest goes
/// early, at the small risk of losing a receive buffer, rather than memory without bound.
const RETIRING_MAX: usize = 4096;

/// A failed connection's QP and what it could still touch, until [`Retiring::until`].
pub(crate) struct Retiring {
    /// First field, so dropped first: the QP goes before what it could touch.
    conn: Conn,
    id: u32,
    send_bufs: Vec<u32>,
    sinks: Vec<SinkMr>,
    until: Time,
}

/// The connections on their way out, oldest first (all wait the same grace).
#[derive(Default)]
pub(crate) struct RetiringQps(VecDeque<Retiring>);

impl RetiringQps {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// When the oldest may go.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.0.front().map(|r| r.until)
    }

    /// Whether connection id `id` still has a QP here (its id is not free yet: a late
    /// flushed completion must not find another connection under it).
    pub(crate) fn holds(&self, id: u32) -> bool {
        self.0.iter().any(|r| r.id == id)
    }

    /// The connections kept: their QPs may still need room in their CQs.
    pub(crate) fn conns(&self) -> impl Iterator<Item = &Conn> {
        self.0.iter().map(|r| &r.conn)
    }
}

impl RdmaLnd {
    /// Tears down a connection the table let go: everything it owed completes with its
    /// error now; its QP goes once the adapter has given back what it held (see the
    /// module's doc), and before any memory it could touch.
    pub(super) fn retire(&mut self, closed: Option<Closed<u32, Conn>>) {
        let Some(Closed {
            id,
            data: mut conn,
            error,
        }) = closed
        else {
            return;
        };
        let tokens = conn.owed_tokens();
        let send_bufs = conn.take_send_bufs();
        if let Some(num) = conn.cm.qp_num() {
            if self.qp_conns.get(&num).is_some_and(|(c, _)| *c == id) {
                self.qp_conns.remove(&num);
            }
        }
        for token in tokens {
            self.ctx.events.push(LndEvent::SendComplete {
                token,
                result: Err(error.clone()),
            });
        }
        let mut handles: Vec<RxHandle> = self
            .incoming
            .iter()
            .filter(|(_, r)| r.conn == id)
            .map(|(h, _)| *h)
            .collect();
        handles.sort_unstable_by_key(|h| h.0);
        let mut sinks = Vec::new();
        for handle in handles {
            let rdv = self.incoming.remove(&handle).expect("listed above");
            self.by_cookie.remove(&(id, rdv.cookie));
            // Offered but not yet fetched: a later fetch finds nothing and fails then.
            if let Some(sink) = rdv.sink {
                sinks.push(sink);
                self.ctx.events.push(LndEvent::Fetched {
                    handle,
                    result: Err(error.clone()),
                });
            }
        }
        self.buf_waiters.retain(|w| *w != id);
        let retiring = Retiring {
            conn,
            id,
            send_bufs,
            sinks,
            until: self.now() + RETIRE_GRACE,
        };
        if retiring.conn.reached_rts && retiring.conn.cm.shut_down() {
            self.retiring.0.push_back(retiring);
            if self.retiring.len() > RETIRING_MAX {
                // Not drained first (see the module's doc): the small risk, under a storm.
                tracing::warn!(
                    "{RETIRING_MAX} failed connections waiting for their queue pairs to \
                     flush: destroying the oldest early"
                );
                let oldest = self.retiring.0.pop_front().expect("over the limit");
                self.destroy(oldest);
            }
        } else {
            // A QP that never received (or none, or one that could not be moved to the
            // error state): nothing to wait for. Destroying its id tells a peer that has
            // not seen the connection established yet (a REJ).
            self.destroy(retiring);
        }
    }

    /// Destroys the QPs whose grace is over, after draining the CQs (their flushed
    /// receives are posted again; on a busy NI, up to `DRAIN_POLLS_MAX` polls).
    pub(super) fn destroy_retired(&mut self) {
        let now = self.now();
        if self.retiring.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        if let Err(e) = self.drain_cqs() {
            // The device is failing: destroying is all that is left to do.
            tracing::warn!("draining the CQs before destroying queue pairs: {e}");
        }
        while self.retiring.next_deadline().is_some_and(|d| d <= now) {
            let due = self.retiring.0.pop_front().expect("it has a deadline");
            self.destroy(due);
        }
    }

    /// `lane`'s CQ must have room for a new QP's `slots` sends: failed connections' QPs
    /// on it are destroyed early, oldest first, while they keep it from fitting. The CQs
    /// are drained first: entries a destroyed QP left there would no longer be counted.
    /// (Called from rdma_cm events, in housekeeping, not from CQ processing.)
    pub(super) fn make_cq_room(&mut self, lane: Lane, slots: usize) {
        if self.cq_in_use(lane) + slots <= self.ctx.limits.max_cqe {
            return;
        }
        if let Err(e) = self.drain_cqs() {
            tracing::warn!("draining the CQs before destroying queue pairs: {e}");
        }
        // Counted again: the drain may have destroyed some.
        let mut in_use = self.cq_in_use(lane);
        // The CQ entries a flushing QP on `lane` may need.
        let needs = |r: &Retiring| {
            r.conn
                .qp
                .as_ref()
                .filter(|q| q.cq_lane == lane)
                .map(|q| q.send_slots())
        };
        while in_use + slots > self.ctx.limits.max_cqe {
            let Some(i) = self.retiring.0.iter().position(|r| needs(r).is_some()) else {
                return; // the live connections alone leave no room: `create_qp` says so
            };
            let oldest = self.retiring.0.remove(i).expect("found above");
            in_use -= needs(&oldest).expect("on this lane");
            self.destroy(oldest);
        }
    }

    /// Destroys the QP, then gives its send buffers back.
    fn destroy(&mut self, retiring: Retiring) {
        let Retiring {
            conn,
            send_bufs,
            sinks,
            ..
        } = retiring;
        drop(conn);
        drop(sinks);
        for b in send_bufs {
            self.ctx.send_bufs.give(b);
        }
        self.pump_buf_waiters();
    }
}
