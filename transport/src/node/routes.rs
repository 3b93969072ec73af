//! Routes: which gateways reach a remote net, and which one a frame takes.
//!
//! A route says: net N is reached through gateway G, `hops` routers away, with a
//! `priority` (lower is preferred, as in LNet). Among the gateways the node finds usable
//! for a frame (alive, on one of its nets, not already refused for that frame), the choice
//! is: lowest priority, then fewest hops, then best health, then least queued, then round
//! robin, so equal gateways share the load.

use rustc_hash::FxHashMap;

use crate::nid::{Net, Nid};

/// One way to a remote net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// The remote net.
    pub net: Net,
    /// The router to send to; on one of this node's nets.
    pub gateway: Nid,
    /// Routers between this node and `net`, the gateway included (at least 1).
    pub hops: u8,
    /// Lower is preferred; gateways of equal priority share the load.
    pub priority: u8,
}

impl Route {
    /// Why a node whose NIs have the NIDs `own` cannot take this route, if it cannot. The
    /// one rule that the node ([`crate::Node::add_route`]), the config file's check and a
    /// router's reload (before it changes anything) all apply.
    pub fn unfit_for(&self, own: &[Nid]) -> Option<RouteUnfit> {
        if own.iter().any(|n| n.is_on(self.net)) {
            Some(RouteUnfit::OwnNet)
        } else if own.contains(&self.gateway) {
            Some(RouteUnfit::GatewayIsSelf)
        } else if !own.iter().any(|n| n.same_net(&self.gateway)) {
            Some(RouteUnfit::GatewayOffNet)
        } else if self.hops == 0 {
            Some(RouteUnfit::NoHops)
        } else {
            None
        }
    }
}

/// Whether a node whose NIs have the NIDs `own`, with `routes`, reaches `nid`: it is on
/// one of the node's nets, or a route goes to its net. The one rule that the config
/// file's check of failover members and a router's reload (before it changes routes)
/// both apply.
pub fn reachable(nid: Nid, own: &[Nid], routes: &[Route]) -> bool {
    own.iter().any(|n| n.same_net(&nid)) || routes.iter().any(|r| r.net == nid.net())
}

/// Why a node cannot take a route ([`Route::unfit_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteUnfit {
    /// The net is one of the node's own: no route needed.
    OwnNet,
    /// The gateway is one of the node's own NIDs.
    GatewayIsSelf,
    /// The gateway is on none of the node's nets, so the node cannot reach it.
    GatewayOffNet,
    /// `hops` is 0 (the gateway itself is a hop).
    NoHops,
}

impl std::fmt::Display for RouteUnfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouteUnfit::OwnNet => "the net is one of this node's own nets: no route needed",
            RouteUnfit::GatewayIsSelf => "the gateway is this node itself",
            RouteUnfit::GatewayOffNet => "the gateway is not on any net of this node",
            RouteUnfit::NoHops => "a route has at least one hop",
        })
    }
}

/// How good a usable gateway is right now, besides its route's priority and hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// Its health value (higher is better).
    pub(crate) health: u16,
    /// Frames waiting for it (fewer is better).
    pub(crate) queued: usize,
}

/// A usable gateway's place in the choice, lowest first: priority, hops, health (best
/// first), queued frames.
type Rank = (u8, u8, std::cmp::Reverse<u16>, usize);

#[derive(Debug, Default)]
struct NetRoutes {
    routes: Vec<Route>,
    /// Round-robin cursor among equals.
    turn: usize,
}

/// The node's routes, by remote net.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    nets: FxHashMap<Net, NetRoutes>,
    /// Changes made so far: which of two lists read at different times is the later.
    changes: u64,
}

impl RouteTable {
    /// Adds a route, or updates the one through the same gateway to the same net.
    pub(crate) fn add(&mut self, route: Route) {
        self.changes += 1;
        let routes = &mut self.nets.entry(route.net).or_default().routes;
        match routes.iter_mut().find(|r| r.gateway == route.gateway) {
            Some(r) => *r = route,
            None => routes.push(route),
        }
    }

    /// Removes the route to `net` through `gateway`; false if there was none.
    pub(crate) fn remove(&mut self, net: Net, gateway: Nid) -> bool {
        let Some(n) = self.nets.get_mut(&net) else {
            return false;
        };
        let before = n.routes.len();
        n.routes.retain(|r| r.gateway != gateway);
        let removed = n.routes.len() < before;
        if n.routes.is_empty() {
            self.nets.remove(&net);
        }
        self.changes += u64::from(removed);
        removed
    }

    /// Changes made so far (added, updated or removed routes).
    pub(crate) fn changes(&self) -> u64 {
        self.changes
    }

    /// Every route, sorted by net, priority, hops and gateway.
    pub(crate) fn all(&self) -> Vec<Route> {
        let mut v: Vec<Route> = self.nets.values().flat_map(|n| n.routes.clone()).collect();
        v.sort_by_key(|r| (r.net, r.priority, r.hops, r.gateway));
        v
    }

    /// The gateways of the routes to `net`.
    pub(crate) fn gateways(&self, net: Net) -> impl Iterator<Item = Nid> + '_ {
        self.nets
            .get(&net)
            .into_iter()
            .flat_map(|n| n.routes.iter().map(|r| r.gateway))
    }

    /// Whether `gateway` is a gateway of any route (no allocation: asked per frame).
    pub(crate) fn is_gateway(&self, gateway: Nid) -> bool {
        self.nets
            .values()
            .any(|n| n.routes.iter().any(|r| r.gateway == gateway))
    }

    /// Whether `gateway` is a gateway to `net`.
    pub(crate) fn has(&self, net: Net, gateway: Nid) -> bool {
        self.nets
            .get(&net)
            .is_some_and(|n| n.routes.iter().any(|r| r.gateway == gateway))
    }

    pub(crate) fn has_routes_to(&self, net: Net) -> bool {
        self.nets.contains_key(&net)
    }

    /// The gateway a frame to `net` takes: the best of those `standing` finds usable
    /// (`None`: not usable), round robin among equals. Each call moves the turn.
    pub(crate) fn select(
        &mut self,
        net: Net,
        mut standing: impl FnMut(&Route) -> Option<Standing>,
    ) -> Option<Nid> {
        let n = self.nets.get_mut(&net)?;
        let mut best: Vec<(Nid, Rank)> = Vec::new();
        for r in &n.routes {
            let Some(s) = standing(r) else { continue };
            let rank = (r.priority, r.hops, std::cmp::Reverse(s.health), s.queued);
            match best.first().map(|(_, b)| rank.cmp(b)) {
                Some(std::cmp::Ordering::Greater) => {}
                Some(std::cmp::Ordering::Less) => {
                    best.clear();
                    best.push((r.gateway, rank));
                }
                _ => best.push((r.gateway, rank)),
            }
        }
        if best.is_empty() {
            return None;
        }
        // Stable order among equals, whatever order the routes were added in.
        best.sort_unstable_by_key(|(g, _)| *g);
        let pick = best[n.turn % best.len()].0;
        n.turn = n.turn.wrapping_add(1);
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM9: Net = Net::new(crate::nid::LndKind::Mem, 9);

    fn route(gw: u32, hops: u8, priority: u8) -> Route {
        Route {
            net: MEM9,
            gateway: Nid::mem(gw, 0),
            hops,
            priority,
        }
    }

    fn fine(_: &Route) -> Option<Standing> {
        Some(Standing {
            health: 1000,
            queued: 0,
        })
    }

    fn picks(t: &mut RouteTable, n: usize, s: impl Fn(&Route) -> Option<Standing>) -> Vec<u32> {
        (0..n)
            .map(|_| {
                let g = t.select(MEM9, &s).expect("a gateway");
                match g.addr() {
                    crate::nid::NidAddr::Num(n) => n,
                    _ => unreachable!(),
                }
            })
            .collect()
    }

    /// The one rule every route passes, wherever it comes from: each way a route can be
    /// unfit, and a fit one.
    #[test]
    fn a_route_is_unfit_to_an_own_net_through_self_off_net_or_with_no_hops() {
        let own = [Nid::mem(1, 0), Nid::mem(1, 1)];
        assert_eq!(route(7, 1, 0).unfit_for(&own), None);
        let mine = Route {
            net: Nid::mem(2, 1).net(),
            ..route(7, 1, 0)
        };
        assert_eq!(mine.unfit_for(&own), Some(RouteUnfit::OwnNet));
        let through_self = Route {
            gateway: Nid::mem(1, 1),
            ..route(7, 1, 0)
        };
        assert_eq!(
            through_self.unfit_for(&own),
            Some(RouteUnfit::GatewayIsSelf)
        );
        let off_net = Route {
            gateway: Nid::mem(7, 3),
            ..route(7, 1, 0)
        };
        assert_eq!(off_net.unfit_for(&own), Some(RouteUnfit::GatewayOffNet));
        assert_eq!(route(7, 0, 0).unfit_for(&own), Some(RouteUnfit::NoHops));
        assert_eq!(
            route(7, 1, 0).unfit_for(&[]),
            Some(RouteUnfit::GatewayOffNet)
        );
    }

    #[test]
    fn priority_then_hops_then_health_then_queue_then_round_robin() {
        let mut t = RouteTable::default();
        t.add(route(1, 2, 0));
        t.add(route(2, 1, 1));
        t.add(route(3, 1, 0));
        t.add(route(4, 1, 0));
        // Priority 0 beats 1; one hop beats two; 3 and 4 share.
        assert_eq!(picks(&mut t, 4, fine), vec![3, 4, 3, 4]);
        // Healthier first, then less queued.
        let sick_3 = |r: &Route| {
            Some(Standing {
                health: if r.gateway == Nid::mem(3, 0) {
                    900
                } else {
                    1000
                },
                queued: 0,
            })
        };
        assert_eq!(picks(&mut t, 2, sick_3), vec![4, 4]);
        let busy_4 = |r: &Route| {
            Some(Standing {
                health: 1000,
                queued: usize::from(r.gateway == Nid::mem(4, 0)),
            })
        };
        assert_eq!(picks(&mut t, 2, busy_4), vec![3, 3]);
        // Unusable ones are skipped; with none left, nothing is chosen.
        let only_2 = |r: &Route| (r.gateway == Nid::mem(2, 0)).then(|| fine(r)).flatten();
        assert_eq!(picks(&mut t, 1, only_2), vec![2]);
        assert_eq!(t.select(MEM9, |_| None), None);
        assert_eq!(
            t.select(Net::new(crate::nid::LndKind::Mem, 8), fine),
            None,
            "no route to that net"
        );
    }

    #[test]
    fn routes_are_added_updated_and_removed() {
        let mut t = RouteTable::default();
        t.add(route(1, 1, 5));
        t.add(route(1, 2, 0)); // same gateway: updated
        t.add(route(2, 1, 0));
        assert_eq!(t.all(), vec![route(2, 1, 0), route(1, 2, 0)]);
        assert!(t.remove(MEM9, Nid::mem(1, 0)));
        assert!(!t.remove(MEM9, Nid::mem(1, 0)));
        assert!(t.remove(MEM9, Nid::mem(2, 0)));
        assert!(!t.has_routes_to(MEM9));
    }
}
