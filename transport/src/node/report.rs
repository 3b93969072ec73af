//! A node's state in one document, for operators (`lanet-router`'s control socket,
//! `lanetctl`): its NIs, the peers it monitors, its routes and their state, and as a
//! router its status, its judgment of itself and its pools.

use super::absence::RouterCondition;
use super::{Node, NodeStats, Route, RouterStats};
use crate::health::{HealthStats, PeerHealth};
use crate::nid::Nid;
use crate::op::RouteDownReason;
use crate::wire::RouterStatus;

/// What a node is and holds, at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// Each NI, up or down.
    pub nis: Vec<(Nid, bool)>,
    /// The peers it monitors, in NID order.
    pub peers: Vec<(Nid, PeerHealth)>,
    /// Its routes, each with why it is not usable (if it is not).
    pub routes: Vec<(Route, Option<RouteDownReason>)>,
    /// What its gateways (and fellow routers) last said of themselves.
    pub gateways: Vec<(Nid, RouterStatus)>,
    /// As a router (`forwarding`).
    pub router: Option<RouterReport>,
    pub stats: NodeStats,
    pub health: HealthStats,
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
    /// Everything an operator asks about, at once.
    pub fn report(&self) -> NodeReport {
        let routes = self
            .routes
            .all()
            .into_iter()
            .map(|r| (r, self.gateways.route_down(r.net, r.gateway)))
            .collect();
        let mut gateways = self.gateways.all_views();
        gateways.sort_by_key(|(n, _)| *n);
        NodeReport {
            nis: self.nis.iter().map(|ni| (ni.nid, ni.up)).collect(),
            peers: self.health.all(),
            routes,
            gateways,
            router: self.cfg.forwarding.then(|| RouterReport {
                status: self.router.status.clone(),
                condition: self.router_condition(),
                stats: self.router_stats(),
            }),
            stats: self.stats.clone(),
            health: self.health.stats(),
        }
    }
}
