//! The node's side of failure detection: feeding the [`Monitor`] (frames heard, operations
//! outstanding, watches) and carrying out its verdicts (PINGs, flushing a dead peer,
//! announcing its return).

use super::ops::{OpKind, Stage};
use super::peers::{Conn, Pending};
use super::{LndRequest, Node};
use crate::health::{Action, HealthStats, PeerHealth};
use crate::lane::Lane;
use crate::lnd::{LndError, LndErrorKind};
use crate::nid::Nid;
use crate::op::{Event, OpError, OpId, PeerDownPolicy, PeerDownReason};
use crate::time::Time;
use crate::wire::NackReason;

/// Message ids of the monitor's own PINGs have this bit set: their PONGs match no
/// operation, and are not late answers.
pub(crate) const HEALTH_PING_BIT: u64 = 1 << 63;

/// PINGs timed at once, at most: unanswered ones are forgotten past this (a few round
/// trips go unrecorded) rather than kept without bound.
const MAX_PINGS_TIMED: usize = 16_384;

/// A PING of the monitor in flight.
pub(crate) struct PingOut {
    at: Time,
    dst: Nid,
    /// The hop it left through.
    via: Nid,
    /// A copy sent again after a refusal: not sent again.
    resent: bool,
}

impl OpKind {
    fn on_peer_down(&self) -> PeerDownPolicy {
        match self {
            OpKind::Put(r) => r.on_peer_down,
            OpKind::Get(r) => r.on_peer_down,
            OpKind::Ping { req, .. } => req.on_peer_down,
            OpKind::Entry(_) => PeerDownPolicy::Fail,
        }
    }
}

impl Node {
    /// The monitor's PING `seq` to `dst` leaves through `via`: timed, and remembered in
    /// case it is refused on the way.
    pub(super) fn health_ping_leaves(&mut self, seq: u64, dst: Nid, via: Nid) {
        let Some(now) = self.clock else { return };
        if self.health_ping_sent.len() >= MAX_PINGS_TIMED
            && !self.health_ping_sent.contains_key(&seq)
        {
            self.health_ping_sent.clear();
        }
        // A copy sent again after a refusal stays marked so.
        let resent = self.health_ping_sent.get(&seq).is_some_and(|p| p.resent);
        let out = PingOut {
            at: now,
            dst,
            via,
            resent,
        };
        self.health_ping_sent.insert(seq, out);
    }

    /// The monitor's PING `seq` to `dst` was refused on the way, by `by`: a router that
    /// cannot reach `dst` and has not said so yet. Lost, the next PING would likely take
    /// that router again, and `dst` be found silent though another way reaches it: so it
    /// goes again at once, avoiding the hop it left through and the refuser, if another
    /// way there is. Only a PING of ours in flight, to the end the refusal names, and once
    /// (two routers refusing it must not bounce it between them; a forged refusal costs
    /// at most one PING of ours, to an end we were pinging anyway).
    pub(super) fn health_ping_refused(&mut self, seq: u64, dst: Nid, by: Nid) {
        let Some(p) = self.health_ping_sent.get_mut(&seq) else {
            return;
        };
        if p.resent || p.dst != dst {
            return;
        }
        p.resent = true;
        let avoid = [p.via, by];
        if self.ni_of(dst).is_some() {
            return; // a neighbour: no other way
        }
        if let Some(hop) = self.next_hop(dst, &avoid).filter(|h| !avoid.contains(h)) {
            self.send_or_queue(hop, Lane::Health, Pending::HealthPing { dst, seq });
        }
    }

    /// The PONG to the monitor's PING `seq` arrived now: its round trip recorded.
    pub(super) fn health_pong(&mut self, now: Time, seq: u64) {
        if let Some(sent) = self.health_ping_sent.remove(&seq) {
            self.stats.health_rtt.record(now.saturating_since(sent.at));
        }
    }

    /// Monitors `nid` (pinging it when silent) until [`Node::unwatch`], even with no
    /// operation outstanding. `NoRoute` if nothing reaches it, `Invalid` for this node.
    pub fn watch(&mut self, now: Time, nid: Nid) -> Result<(), OpError> {
        self.clock = Some(now);
        self.check_reachable(nid)?;
        self.health.watch(nid, now, true);
        Ok(())
    }

    pub fn unwatch(&mut self, now: Time, nid: Nid) {
        self.clock = Some(now);
        self.health.watch(nid, now, false);
    }

    /// What this node believes about `nid`, if it monitors it.
    pub fn peer_health(&self, nid: Nid) -> Option<PeerHealth> {
        self.health.peer(nid)
    }

    pub fn health_stats(&self) -> HealthStats {
        self.health.stats()
    }

    /// Peers monitored now (operations outstanding, or watched).
    pub fn monitored_peers(&self) -> usize {
        self.health.monitored()
    }

    /// Whether a new operation to `dst` fails at once because `dst` is Down.
    pub(super) fn fails_fast(&self, dst: Nid, kind: &OpKind) -> bool {
        kind.on_peer_down() == PeerDownPolicy::Fail && self.health.is_down(dst)
    }

    /// A frame (or a connection) from `nid` proves it alive.
    pub(super) fn heard(&mut self, now: Time, nid: Nid) {
        if let Some(Action::Recovered(peer)) = self.health.heard(nid, now) {
            self.recovered(now, peer);
        }
        if self.cfg.forwarding {
            self.router_heard(now, nid);
        }
    }

    /// Runs the monitor's timers.
    pub(super) fn health_timeout(&mut self, now: Time) {
        let mut actions = std::mem::take(&mut self.health_actions);
        // A health frame still in the driver: this node's own health lane is behind.
        if let Some((_, &since)) = self.out.health_in_lnd.first_key_value() {
            self.health.backlog(since, now);
        }
        self.health.tick(now, &mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Ping(peer) => self.health_ping(peer),
                Action::Down { peer, silent } => self.peer_down(now, peer, silent),
                Action::Recovered(peer) => self.recovered(now, peer),
            }
        }
        self.health_actions = actions;
    }

    fn health_ping(&mut self, peer: Nid) {
        self.health_seq += 1;
        let seq = self.health_seq;
        self.send_health_ping(peer, seq);
    }

    /// `peer` is Down. As an end: everything queued or in flight to it ends now with
    /// `PeerDead`, except queued operations that chose to wait for it. As a router:
    /// requests of ours go another way (those it already took within their resend
    /// budget: the target answers a copy without delivering it twice), and frames passing
    /// through for it are refused. Only its own
    /// silence decides this: nothing behind it counts against it.
    fn peer_down(&mut self, now: Time, peer: Nid, silent: std::time::Duration) {
        tracing::debug!(%peer, ?silent, "peer is down");
        let end = self.end_entry(peer);
        end.down_incarnation = Some(end.incarnation);
        self.out.events.push_back(Event::PeerDown {
            peer,
            reason: PeerDownReason::Silent(silent),
            at: now,
        });
        let targeting = |op: &super::ops::Op| op.target().is_some_and(|(d, _)| d == peer);
        let doomed = self.ops.of_peer(peer, |op| {
            targeting(op)
                && (op.stage != Stage::Queued || op.kind.on_peer_down() == PeerDownPolicy::Fail)
        });
        for id in doomed {
            self.complete(id, Err(OpError::PeerDead));
        }
        let through = self
            .ops
            .of_peer(peer, |op| !targeting(op) && op.via == Some(peer));
        let gone = || OpError::Network(format!("router {peer} is down"));
        for id in through {
            match self.ops.get(id).map(|op| op.stage) {
                // Not in a driver (a copy of an earlier attempt, if one left, keeps its
                // message id: the target tells it apart): another way is safe, and free.
                Some(Stage::Queued) => self.resend(id, &gone()),
                // Maybe delivered: resent within the budget; the target answers a copy.
                Some(_) => self.resend_after_failure(id, &gone()),
                None => {}
            }
        }
        // Its connections are given up too: whatever they held (credits spent on frames
        // that never arrived) is not to be trusted. The peer's return brings fresh ones.
        let Some(hop) = self.hops.get_mut(&peer) else {
            return;
        };
        let ni = hop.ni;
        let mut forwards = Vec::new();
        for lane in Lane::ALL {
            let hl = &mut hop.lanes[lane];
            forwards.extend(hl.take_forwards());
            if matches!(hl.conn, Conn::Up { .. }) {
                let error = LndError::new(LndErrorKind::Closed, "peer declared dead");
                self.out
                    .requests
                    .push_back((ni, LndRequest::Close { peer, lane, error }));
            }
        }
        for f in forwards {
            self.refuse_forward(f, NackReason::NextHopDown);
        }
        self.router_status_changed(now);
        self.router_judgment_due(now);
        self.check_routes_through(now, peer);
    }

    /// A Down peer answered: `PeerUp`, unless it is a new incarnation (then the restart
    /// was announced as `PeerRestarted` when its incarnation was seen).
    fn recovered(&mut self, now: Time, peer: Nid) {
        let end = self.end_entry(peer);
        let before = end.down_incarnation.take().flatten();
        let current = end.incarnation;
        tracing::debug!(%peer, "peer is back");
        if before.is_none() || before == current {
            self.out.events.push_back(Event::PeerUp { peer, at: now });
        }
        self.router_status_changed(now);
        self.router_judgment_due(now);
        self.check_routes_through(now, peer);
        // Operations that chose to wait for it go now.
        for lane in Lane::ALL {
            self.pump(peer, lane);
        }
    }

    /// Whether a queued op stays queued through a failed connection attempt: it chose to
    /// wait for a target that is Down.
    pub(super) fn waits_for_peer(&self, id: OpId) -> bool {
        self.ops.get(id).is_some_and(|op| {
            op.kind.on_peer_down() == PeerDownPolicy::Wait
                && op.target().is_some_and(|(p, _)| self.health.is_down(p))
        })
    }
}
