//! Rendezvous a peer leaves unfinished.
//!
//! A deferred payload needs the peer to act: name a sink for ours (then we WRITE), or READ
//! ours and say so; or, for its own, WRITE into the sink we named and say so. A peer that
//! answers PINGs but never acts would hold, for as long as the connection lives, our
//! frame's completion (and, past `RDV_MAX` of them, every deferred send after it) or our
//! sink. So a connection whose deferred payloads make no step for
//! [`RdmaConfig::rendezvous_timeout`] is failed, and with it everything it held, as
//! o2iblnd does with a transmit past its `timeout`. What counts is the connection's last
//! step, not each payload's age: a peer working through many large payloads one after
//! another on a slow link is making progress, however long the last one waited. The price:
//! one payload the peer forgets while others move holds its token and one of the
//! `RDV_MAX` places until the others stop too (then the connection goes).
//!
//! The deadlines cost the data path a store per step: each records the current sweep's
//! number in its connection, and housekeeping sweeps [`RDV_SWEEPS`] times a timeout,
//! failing the connections with payloads under way whose last step is that many sweeps
//! old: between five sixths of the timeout and all of it after it. A sleeping NI wakes
//! for the sweeps only while payloads are under way.
//!
//! [`RdmaConfig::rendezvous_timeout`]: super::RdmaConfig::rendezvous_timeout

use std::time::Duration;

use lanet::lnd::{LndError, LndErrorKind};
use lanet::time::Time;

use super::RdmaLnd;

/// Sweeps per rendezvous timeout.
const RDV_SWEEPS: u32 = 6;
/// Sweeps come at most this often, whatever the timeout (a zero one would otherwise
/// have a sleeping NI spin).
const SWEEP_MIN: Duration = Duration::from_millis(1);

impl RdmaLnd {
    /// When the next sweep is due.
    pub(super) fn next_rendezvous_sweep(&self) -> Time {
        self.rdv_swept_at + (self.rendezvous_timeout / RDV_SWEEPS).max(SWEEP_MIN)
    }

    /// Fails the connections whose deferred payloads made no step for the timeout, once
    /// per sweep.
    pub(super) fn sweep_rendezvous(&mut self, now: Time) {
        if now < self.next_rendezvous_sweep() {
            return;
        }
        self.rdv_swept_at = now;
        self.ctx.rdv_sweeps = self.ctx.rdv_sweeps.wrapping_add(1);
        let sweep = self.ctx.rdv_sweeps;
        // Under way: ours the peer has not finished with, and theirs we began to fetch
        // (until then the core decides).
        let mut busy: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.qp.as_ref().is_some_and(|q| !q.out.is_empty()))
            .map(|(id, _)| id)
            .collect();
        busy.extend(
            self.incoming
                .values()
                .filter(|r| r.sink.is_some())
                .map(|r| r.conn),
        );
        busy.sort_unstable();
        busy.dedup();
        self.ctx.rdv_idle = busy.is_empty();
        let stalled: Vec<u32> = busy
            .into_iter()
            .filter(|&id| {
                let qp = self.conns.get(id).and_then(|c| c.qp.as_ref());
                qp.is_some_and(|q| sweep.wrapping_sub(q.rdv_progress) >= RDV_SWEEPS)
            })
            .collect();
        for id in stalled {
            if self.conns.get(id).is_none() {
                continue; // failed meanwhile, by an earlier one's fallout
            }
            let why = format!(
                "the deferred payloads on this connection made no step for about {:?} \
                 (the peer named no sink, or finished no READ or WRITE): the connection \
                 is closed",
                self.rendezvous_timeout
            );
            tracing::warn!(id, "{why}");
            self.fail(id, LndError::new(LndErrorKind::TimedOut, why));
        }
    }
}
