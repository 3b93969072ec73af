//! How much a node holds: the entries of each of its tables. What a peer sends may make
//! them grow only up to a bound the configuration sets; the fuzz target and the hostile
//! peer tests check that, and operators can read it.

use super::Node;

/// Entries held, table by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Neighbours with connection state.
    pub hops: usize,
    /// Far ends whose incarnation is kept.
    pub ends: usize,
    /// When `hops` and `ends` reach these sizes, their idle entries are forgotten
    /// ([`crate::config::NodeConfig::max_idle_peers`]).
    pub hops_sweep_at: usize,
    pub ends_sweep_at: usize,
    /// Operations live.
    pub ops: usize,
    /// Their index by peer, and their deadlines (stale ones included).
    pub ops_indexed: usize,
    pub op_deadlines: usize,
    /// Frames queued at hop lanes (requests, forwards and answers).
    pub queued: usize,
    /// Frames in the drivers.
    pub in_lnd: usize,
    /// Payloads being fetched.
    pub fetching: usize,
    /// Copies of routed PUTs held while their first copy's payload is fetched (at most one
    /// per fetch).
    pub held_copies: usize,
    /// Lists of attached entries: each portal's wildcards, each portal's and bits' exact
    /// entries.
    pub entry_lists: usize,
    /// Remembered answers of routed requests.
    pub dedup_entries: usize,
    /// Windows they are remembered in: one per initiator and NID of ours it addresses.
    pub dedup_initiators: usize,
    /// Gateways' views, polls, routes down.
    pub gateways: usize,
    /// As a router: buffers in use.
    pub pool_buffers: usize,
    /// Frames waiting for a buffer.
    pub pool_waiting: usize,
    /// Peers the health monitor has (watched, remembered Down, or lingering until their
    /// look).
    pub health_peers: usize,
    /// Its timers (stale ones included).
    pub health_timers: usize,
    /// Its PINGs being timed.
    pub health_pings_timed: usize,
    /// Frames held by fault-injection delays.
    pub fault_delayed: usize,
    /// Outputs not yet taken by the driver.
    pub outbox: usize,
}

impl Node {
    /// What the node holds now.
    pub fn footprint(&self) -> Footprint {
        let (health_peers, health_timers) = self.health.sizes();
        Footprint {
            hops: self.hops.len(),
            ends: self.ends.len(),
            hops_sweep_at: self.sweep_at.hops,
            ends_sweep_at: self.sweep_at.ends,
            ops: self.ops.len(),
            ops_indexed: self.ops.indexed(),
            op_deadlines: self.ops.deadline_count(),
            queued: self.hops.values().map(super::peers::Hop::queued).sum(),
            // Health frames are also in `health_in_lnd`, timed: counted once.
            in_lnd: self.out.in_lnd.len(),
            fetching: self.fetching.len(),
            held_copies: self.held_copies.len(),
            entry_lists: self.portals.lists(),
            dedup_entries: self.dedup.entries(),
            dedup_initiators: self.dedup.windows(),
            gateways: self.gateways.entries(),
            pool_buffers: self.pools.stats().iter().map(|s| s.in_use as usize).sum(),
            pool_waiting: self.pools.waiting(),
            health_peers,
            health_timers,
            health_pings_timed: self.health_ping_sent.len(),
            fault_delayed: self.faults.held_frames(),
            outbox: self
                .out
                .transmits
                .iter()
                .map(|(_, t)| t.len())
                .sum::<usize>()
                + self.out.requests.len()
                + self.out.events.len(),
        }
    }
}
