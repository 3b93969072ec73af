//! Rendezvous a peer leaves unfinished.
//!
//! A deferred payload needs the peer to act: name a sink for ours (then we WRITE), or READ
//! ours and say so; or, for its own, WRITE into the sink we named and say so. A peer that
//! answers PINGs but never acts would hold, for as long as the connection lives, our
//! frame's completion (and, past `RDV_MAX` of them, every deferred send after it) or our
//! sink. So a rendezvous unfinished for [`RdmaConfig::rendezvous_timeout`] fails its
//! connection, and with it everything the connection held, as o2iblnd does with a
//! transmit past its `timeout`.
//!
//! The deadlines cost the data path nothing but a stamp: each rendezvous records the
//! current sweep's number, and housekeeping sweeps [`RDV_SWEEPS`] times a timeout,
//! failing the connections that hold one stamped that many sweeps ago. A rendezvous so
//! fails between five sixths of the timeout and all of it after it began.
//!
//! [`RdmaConfig::rendezvous_timeout`]: super::RdmaConfig::rendezvous_timeout

use lanet::lnd::{LndError, LndErrorKind};
use lanet::time::Time;

use super::conn::Mode;
use super::RdmaLnd;

/// Sweeps per rendezvous timeout.
const RDV_SWEEPS: u32 = 6;

impl RdmaLnd {
    /// When the next sweep is due.
    pub(super) fn next_rendezvous_sweep(&self) -> Time {
        self.rdv_swept_at + self.rendezvous_timeout / RDV_SWEEPS
    }

    /// Fails the connections holding a rendezvous older than the timeout, once per sweep.
    pub(super) fn sweep_rendezvous(&mut self, now: Time) {
        if now < self.next_rendezvous_sweep() {
            return;
        }
        self.rdv_swept_at = now;
        self.ctx.rdv_sweeps = self.ctx.rdv_sweeps.wrapping_add(1);
        let sweep = self.ctx.rdv_sweeps;
        let stale = |stamp: u32| sweep.wrapping_sub(stamp) >= RDV_SWEEPS;
        let mut late: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.qp.as_ref()
                    .is_some_and(|q| q.out.values().any(|r| stale(r.stamp)))
            })
            .map(|(id, _)| id)
            .collect();
        // Theirs: only once we named a sink (until then the core decides, and a READ of
        // ours ends by itself, done or failed).
        late.extend(
            self.incoming
                .values()
                .filter(|r| r.mode == Mode::Write && r.sink.is_some() && stale(r.stamp))
                .map(|r| r.conn),
        );
        late.sort_unstable();
        late.dedup();
        for id in late {
            let why = format!(
                "the peer left a deferred payload unfinished for {:?} (it named no sink, \
                 or finished no READ or WRITE): the connection is closed",
                self.rendezvous_timeout
            );
            tracing::warn!(id, "{why}");
            self.fail(id, LndError::new(LndErrorKind::TimedOut, why));
        }
    }
}
