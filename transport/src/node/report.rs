//! A node's state in one document, for operators (`lanet-router`'s control socket,
//! `lanetctl`): its NIs, the peers it monitors, its routes and their state, and as a
//! router its status, its judgment of itself and its pools.

use super::absence::RouterCondition;
use super::peers::{Conn, Hop};
use super::{Node, NodeStats, Route, RouterStats};
use crate::health::{HealthStats, PeerHealth};
use crate::lane::{Lane, PerLane};
use crate::nid::Nid;
use crate::op::RouteDownReason;
use crate::time::Time;
use crate::wire::RouterStatus;

/// What a node is and holds, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// When it was taken, on the node's clock (what `last_heard` is measured against).
    pub at: Time,
    /// Each NI, up or down.
    pub nis: Vec<(Nid, bool)>,
    /// The peers it monitors, in NID order.
    pub peers: Vec<(Nid, PeerHealth)>,
    /// The neighbours it keeps connections with, in NID order: credits and queues.
    pub hops: Vec<HopReport>,
    /// The incarnation each far end last showed (a restart changes it), in NID order.
    pub incarnations: Vec<(Nid, u64)>,
    /// Its routes, each with why it is not usable (if it is not).
    pub routes: Vec<(Route, Option<RouteDownReason>)>,
    /// What its gateways (and fellow routers) last said of themselves.
    pub gateways: Vec<(Nid, RouterStatus)>,
    /// As a router (`forwarding`).
    pub router: Option<RouterReport>,
    /// Fault rules in force (`lanetctl fault`), in the order they are tried.
    pub faults: Vec<super::FaultRuleReport>,
    pub stats: NodeStats,
    pub health: HealthStats,
}

/// A neighbour's connections, one per lane.
#[derive(Debug, Clone, PartialEq)]
pub struct HopReport {
    pub nid: Nid,
    pub lanes: PerLane<HopLaneReport>,
}

/// One lane's connection to a neighbour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopLaneReport {
    /// None while the connection is not up.
    pub credits: Option<CreditReport>,
    /// Frames waiting for a credit (requests, forwards) or to leave (answers).
    pub queued: usize,
}

/// Credits on one connection, lnetctl's `tx_credits`, `min_tx_credits` and the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditReport {
    /// Frames we may send now.
    pub available: u16,
    /// The connection's window (the smaller of the two ends' offers): the most in flight.
    pub max: u16,
    /// The fewest available since the connection came up.
    pub lowest: u16,
    /// Frames of the peer's we still hold (a router's, until passed on).
    pub held: u16,
    /// Credits we owe the peer and have not returned yet.
    pub owed: u16,
}

fn hop_report(nid: Nid, hop: &Hop) -> HopReport {
    let lane = |l: Lane| {
        let hl = &hop.lanes[l];
        HopLaneReport {
            credits: match &hl.conn {
                Conn::Up { credits, .. } => Some(CreditReport {
                    available: credits.available(),
                    max: credits.window(),
                    lowest: credits.lowest(),
                    held: credits.held(),
                    owed: credits.owed(),
                }),
                Conn::Down | Conn::Connecting => None,
            },
            queued: hl.queue.len() + hl.answers.len(),
        }
    };
    HopReport {
        nid,
        lanes: PerLane::new(lane(Lane::Health), lane(Lane::Data)),
    }
}

/// A router's part of a [`NodeReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct RouterReport {
    /// What it says of itself.
    pub status: RouterStatus,
    /// Why, and its damping.
    pub condition: RouterCondition,
    /// Its pools and what it forwards for whom.
    pub stats: RouterStats,
}

impl RouterReport {
    /// Frames it holds now: pool buffers in use, or upstream credits held.
    pub fn holds(&self) -> u64 {
        let pools: u64 = self.stats.pools.iter().map(|p| u64::from(p.in_use)).sum();
        let held: u64 = self.stats.peers.iter().map(|p| u64::from(p.held)).sum();
        pools.max(held)
    }
}

impl Node {
    /// Everything an operator asks about, at once, at `now` (what `last_heard` is against).
    pub fn report(&self, now: Time) -> NodeReport {
        let routes = self
            .routes
            .all()
            .into_iter()
            .map(|r| (r, self.gateways.route_down(r.net, r.gateway)))
            .collect();
        let mut gateways = self.gateways.all_views();
        gateways.sort_by_key(|(n, _)| *n);
        let mut hops: Vec<HopReport> = self
            .hops
            .iter()
            .map(|(&nid, hop)| hop_report(nid, hop))
            .collect();
        hops.sort_by_key(|h| h.nid);
        let mut incarnations: Vec<(Nid, u64)> = self
            .ends
            .iter()
            .filter_map(|(&nid, end)| Some((nid, end.incarnation?)))
            .collect();
        incarnations.sort_by_key(|(nid, _)| *nid);
        NodeReport {
            at: now,
            hops,
            incarnations,
            nis: self.nis.iter().map(|ni| (ni.nid, ni.up)).collect(),
            peers: self.health.all(),
            routes,
            gateways,
            router: self.cfg.forwarding.then(|| RouterReport {
                status: self.router.status.clone(),
                condition: self.router_condition(),
                stats: self.router_stats(),
            }),
            faults: self.fault_rules(),
            stats: self.stats.clone(),
            health: self.health.stats(),
        }
    }
}
