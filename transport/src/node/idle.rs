//! Forgetting peers nothing needs. Neighbours (`hops`) and far ends (`ends`) get an entry
//! when first seen; a peer, or many peers, connecting once and never again, or sources a
//! hostile peer forges, must not grow those tables without bound. Entries nothing needs
//! go once a table reaches `max_idle_peers` (or twice what it kept at its last sweep, so
//! each sweep is paid for by as many new entries: amortized O(1)).

use super::peers::Conn;
use super::Node;
use crate::lane::Lane;
use crate::nid::Nid;

/// Neighbours, and far ends, remembered while nothing needs them, by default
/// ([`crate::config::NodeConfig::max_idle_peers`]). Past this many (or
/// twice those needed, if more), those are forgotten. A neighbour is needed while a lane
/// to it is up or being set up or holds frames, while the monitor watches it for someone,
/// while an operation involves it or it is a gateway of a route; a far
/// end while an operation involves it, the monitor has it (watched, or remembered Down),
/// or it is a neighbour. What is forgotten of an idle end is its incarnation: nothing is
/// owed to or by it, but a restart it makes before it is heard from again is not reported
/// (no `PeerRestarted`), as for a peer never heard from. The monitor's memory of Down
/// peers nobody watches goes with a sweep of the neighbours (see
/// `Monitor::forget_uninteresting`).
pub const MAX_IDLE_PEERS: usize = 4096;

/// The table sizes at which the next sweeps come.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SweepAt {
    pub(crate) hops: usize,
    pub(crate) ends: usize,
}

impl SweepAt {
    pub(crate) fn new(max_idle: usize) -> SweepAt {
        SweepAt {
            hops: max_idle,
            ends: max_idle,
        }
    }
}

impl Node {
    /// Forgets the far ends nothing needs.
    pub(super) fn forget_idle_ends(&mut self) {
        let (hops, health, ops) = (&self.hops, &self.health, &self.ops);
        self.ends.retain(|nid, _| {
            hops.contains_key(nid) || health.peer(*nid).is_some() || ops.involve(*nid)
        });
        self.sweep_at.ends = self.cfg.max_idle_peers.max(2 * self.ends.len());
    }

    /// Forgets the neighbours nothing needs, if the table is due. Called only where the
    /// node is entered from outside (driver events, timers), so no caller on the stack
    /// holds on to a hop.
    #[inline]
    pub(super) fn forget_idle_hops_if_due(&mut self) {
        if self.hops.len() >= self.sweep_at.hops {
            self.forget_idle_hops();
        }
    }

    /// Sweeps both tables now, due or not: what is left is what the node needs.
    #[cfg(any(test, feature = "fuzz"))]
    pub(crate) fn forget_idle_now(&mut self) {
        self.forget_idle_hops();
        self.forget_idle_ends();
    }

    // Rare (the table reached `max_idle_peers`, or doubled since the last sweep): kept out
    // of its callers.
    #[cold]
    #[inline(never)]
    fn forget_idle_hops(&mut self) {
        let gateways: rustc_hash::FxHashSet<Nid> =
            self.routes.all().iter().map(|r| r.gateway).collect();
        // Down peers remembered for nobody go first: they would keep their hops. Not our
        // gateways: forgotten, a Down one would leave its routes reported down although
        // they would be tried again, and no RouteUp would ever come.
        self.health
            .forget_uninteresting(|nid| gateways.contains(nid));
        let (health, ops, faults) = (&self.health, &self.ops, &self.faults);
        self.hops.retain(|nid, hop| {
            let busy = Lane::ALL.iter().any(|&l| {
                let hl = &hop.lanes[l];
                !matches!(hl.conn, Conn::Down) || !hl.queue.is_empty() || !hl.answers.is_empty()
            });
            busy || health.wants(*nid)
                || ops.involve(*nid)
                || gateways.contains(nid)
                || faults.holds_from(*nid)
        });
        let hops = &self.hops;
        self.router.forget_hops(|n| hops.contains_key(n));
        self.sweep_at.hops = self.cfg.max_idle_peers.max(2 * self.hops.len());
    }
}
