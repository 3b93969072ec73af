//! Routers and the nodes that use them.
//!
//! * As a router (`forwarding`), the node keeps its [`RouterStatus`]: its nets up or down,
//!   forwarding or absent and why, the peers it cannot reach (those its failure detection
//!   holds Down), and a generation that changes with any of it. The status goes back in
//!   every PONG, its generation on every frame the router sends, and when it changes it is
//!   pushed (a STATUS frame) to the nodes that sent frames through it lately, at most once
//!   per health interval. An absent router refuses frames passing through (NACK) and keeps
//!   answering its own pings, so everyone can tell "alive but absent" from "dead".
//! * As a user of routers, the node keeps what each of its gateways last said, and skips a
//!   gateway that is absent, whose NI on the target's net is down, or that cannot reach the
//!   target. A route changing state is an event (`RouteUp`, `RouteDown` with the reason).
//!   Only a gateway's own word (and its own silence) decides this, never a failure behind it.

use bytes::Bytes;
use rustc_hash::FxHashMap;

use super::ops::Stage;
use super::peers::Pending;
use super::Node;
use crate::lane::Lane;
use crate::nid::{Net, Nid};
use crate::op::{Event, OpError, RouteDownReason};
use crate::time::Time;
use crate::wire::{AbsentReason, Body, Header, RouterState, RouterStatus};

/// A router's counters (`lanetctl routing show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// Tiny, small, large.
    pub pools: [super::PoolStats; 3],
    pub peers: Vec<PeerRouting>,
}

/// What a router did for one upstream peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRouting {
    pub peer: Nid,
    pub forwarded: u64,
    /// Its frames this router holds now (each a credit of its and a pool buffer).
    pub held: u32,
}

/// This node as a router.
pub(crate) struct Router {
    /// Forwarding, or absent and why, as judged ([`Node::judge_router`]).
    pub(crate) state: RouterState,
    /// The judgment's inputs and memory.
    pub(crate) absence: super::absence::Absence,
    /// What it says: built from the node's state, its generation raised on each change.
    pub(crate) status: RouterStatus,
    /// The status, encoded once per change, for every PONG.
    pub(crate) encoded: Bytes,
    /// Frames passed on, by the hop they came from.
    forwarded_for: FxHashMap<Nid, u64>,
    /// A push of the status is wanted, at this time at the earliest.
    pub(crate) push_at: Option<Time>,
    last_push: Option<Time>,
}

impl Router {
    /// Keeps the forwarding counts of the hops `keep` says are still known.
    pub(crate) fn forget_hops(&mut self, keep: impl Fn(&Nid) -> bool) {
        self.forwarded_for.retain(|n, _| keep(n));
    }

    /// A router starts warming up (if it warms up at all), judged at its first tick.
    pub(crate) fn new(cfg: &crate::NodeConfig) -> Router {
        let state = if cfg.forwarding && !cfg.router.warm_up.is_zero() {
            RouterState::Absent(crate::wire::AbsentReason::WarmingUp)
        } else {
            RouterState::Forwarding
        };
        let status = RouterStatus {
            generation: 1,
            state,
            nets: Vec::new(),
            unreachable: Vec::new(),
            more_unreachable: false,
            vouched: Vec::new(),
        };
        Router {
            state,
            absence: super::absence::Absence::new(cfg.forwarding),
            encoded: status.encode(),
            status,
            forwarded_for: FxHashMap::default(),
            push_at: None,
            last_push: None,
        }
    }
}

/// What the gateways this node uses last said, and the routes' states as last reported.
#[derive(Default)]
pub(crate) struct Gateways {
    views: FxHashMap<Nid, RouterStatus>,
    /// Generations seen stamped on a gateway's frames that its status has not caught up
    /// with yet (a fresh status was asked for).
    asked: FxHashMap<Nid, u32>,
    /// Routes reported down (absent: up).
    down: FxHashMap<(Net, Nid), RouteDownReason>,
    /// Gateways that said they are absent (or a net of theirs down), monitored (pinged when
    /// silent, their status in every PONG) until they say all is well: they may have
    /// stopped pushing to us, as we stopped using them.
    pub(crate) polled: rustc_hash::FxHashSet<Nid>,
}

impl Gateways {
    /// Entries over its tables: views, questions asked, routes down, gateways polled.
    pub(crate) fn entries(&self) -> usize {
        self.views.len() + self.asked.len() + self.down.len() + self.polled.len()
    }

    /// What `router` last said of itself.
    pub(crate) fn view(&self, router: Nid) -> Option<&RouterStatus> {
        self.views.get(&router)
    }

    /// Every router's last word.
    pub(crate) fn all_views(&self) -> Vec<(Nid, RouterStatus)> {
        self.views.iter().map(|(n, v)| (*n, v.clone())).collect()
    }

    /// Why the route to `net` through `gateway` was last reported down, if it was.
    pub(crate) fn route_down(&self, net: Net, gateway: Nid) -> Option<RouteDownReason> {
        self.down.get(&(net, gateway)).copied()
    }

    /// Whether `gateway`, by its own word, takes a frame for `dst`: it forwards, its NI on
    /// `dst`'s net is not down, and it does not list `dst` as a peer it cannot reach.
    pub(crate) fn takes(&self, gateway: Nid, dst: Nid) -> bool {
        self.serves_net(gateway, dst.net())
            && self
                .views
                .get(&gateway)
                .is_none_or(|v| !v.unreachable.contains(&dst))
    }

    /// Whether `gateway`, by its own word, forwards to `net` at all.
    pub(crate) fn serves_net(&self, gateway: Nid, net: Net) -> bool {
        // Nothing said yet: usable until it says otherwise.
        self.views
            .get(&gateway)
            .is_none_or(|v| v.state == RouterState::Forwarding && v.net_up(net) != Some(false))
    }
}

/// Whether a gateway's word is worth asking again while it is silent: it is absent or one
/// of its nets is down, and it may not push its return to us (we stopped using it).
fn worth_polling(view: &RouterStatus) -> bool {
    view.state != RouterState::Forwarding || view.nets.iter().any(|(_, up)| !up)
}

impl Node {
    // ---- as a router --------------------------------------------------------------------

    /// This node's status as a router (meaningful when it forwards).
    pub fn router_status(&self) -> &RouterStatus {
        &self.router.status
    }

    /// Rebuilds the status from the node's state; a change raises the generation and
    /// books a push to the nodes using this router.
    pub(crate) fn router_status_changed(&mut self, now: Time) {
        if !self.cfg.forwarding {
            return;
        }
        let nets = self.router_nets();
        let mut down = self.health.down_peers();
        // Cut at MAX_UNREACHABLE on the wire: those that matter most first (stable: in
        // NID order within each rank).
        down.sort_by_key(|p| self.router.absence.listing_rank(p));
        let vouched = self.router_vouched();
        let r = &mut self.router;
        let fresh = RouterStatus {
            generation: r.status.generation,
            state: r.state,
            nets,
            more_unreachable: down.len() > crate::wire::MAX_UNREACHABLE,
            unreachable: down,
            vouched,
        };
        if fresh == r.status {
            return;
        }
        // A peer it newly cannot reach goes to its fellows at once, not after the rate
        // limit: one of them may be about to withdraw counting on this router for that
        // very peer (see `absence`, `withdraw_at`).
        let lost_more = fresh
            .unreachable
            .iter()
            .any(|p| !r.status.unreachable.contains(p));
        r.status = RouterStatus {
            generation: r.status.generation.wrapping_add(1).max(1),
            ..fresh
        };
        r.encoded = r.status.encode();
        let earliest = r.last_push.map_or(now, |t| t + self.cfg.health.interval);
        r.push_at = Some(now.max(earliest));
        if lost_more {
            let fellows: Vec<Nid> = self.cfg.router.fellows.clone();
            for f in fellows {
                if self.ni_of(f).is_some() {
                    self.push_status_to(f);
                }
            }
        }
    }

    /// Sends (or queues) this router's status to `user`, unless one already waits in its
    /// queue: that one carries the latest status when it leaves, so a user slow to return
    /// credits does not pile them up.
    fn push_status_to(&mut self, user: Nid) {
        if !self.health_queue_holds(user, |p| matches!(p, Pending::Status)) {
            self.send_or_queue(user, Lane::Health, Pending::Status);
        }
    }

    /// Whether `hop`'s health lane already holds, waiting for a credit, a frame `like`
    /// this: one waiting is enough for what this node only asks or says once at a time
    /// (its status, a question about the hop's), however often the hop makes it due.
    fn health_queue_holds(&self, hop: Nid, like: impl Fn(&Pending) -> bool) -> bool {
        self.hops
            .get(&hop)
            .is_some_and(|h| h.lanes[Lane::Health].queue.iter().any(like))
    }

    pub(crate) fn router_forwarded_for(&mut self, hop: Nid) {
        *self.router.forwarded_for.entry(hop).or_default() += 1;
    }

    /// What this router holds and has passed on: its pools, and per upstream peer the
    /// frames passed on and the buffers (credits) it holds for it now.
    pub fn router_stats(&self) -> RouterStats {
        let held = |peer: &Nid| {
            self.hops.get(peer).map_or(0, |h| {
                Lane::ALL
                    .iter()
                    .map(|&l| match &h.lanes[l].conn {
                        super::peers::Conn::Up { credits, .. } => u32::from(credits.held()),
                        _ => 0,
                    })
                    .sum()
            })
        };
        let mut peers: Vec<PeerRouting> = self
            .router
            .forwarded_for
            .iter()
            .map(|(peer, &forwarded)| PeerRouting {
                peer: *peer,
                forwarded,
                held: held(peer),
            })
            .collect();
        peers.sort_by_key(|p| p.peer);
        RouterStats {
            pools: self.pools.stats(),
            peers,
        }
    }

    /// Pushes the status to the nodes this router served lately (the ones it watches, see
    /// `absence`), if a push is due; older users ask (ping) before they send.
    pub(crate) fn push_router_status(&mut self, now: Time) {
        if self.router.push_at.is_none_or(|t| t > now) {
            return;
        }
        self.router.push_at = None;
        let mut users: Vec<Nid> = self
            .router
            .absence
            .served_peers()
            .filter(|p| !self.health.is_down(**p))
            .copied()
            .collect();
        // Fellow routers hear of every change: they judge themselves by it.
        users.extend(
            self.cfg
                .router
                .fellows
                .iter()
                .filter(|f| self.ni_of(**f).is_some()),
        );
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return;
        }
        self.router.last_push = Some(now);
        for user in users {
            self.push_status_to(user);
        }
    }

    // ---- as a user of routers -----------------------------------------------------------

    /// What gateway `gateway` last said, if it said anything.
    pub fn gateway_status(&self, gateway: Nid) -> Option<&RouterStatus> {
        self.gateways.views.get(&gateway)
    }

    /// Whether this node is a router and `peer` one of its fellows.
    fn is_fellow(&self, peer: Nid) -> bool {
        self.cfg.forwarding && self.cfg.router.fellows.contains(&peer)
    }

    /// A status came from router `from` (in a PONG, or pushed).
    pub(crate) fn status_received(&mut self, now: Time, from: Nid, payload: &[u8]) {
        let status = match RouterStatus::decode(payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%from, "ignoring a router status: {e}");
                return;
            }
        };
        let fellow = self.is_fellow(from);
        if !fellow && !self.routes.is_gateway(from) {
            return; // not one of our gateways, nor a fellow router: none of our business
        }
        let newer = self
            .gateways
            .views
            .get(&from)
            .is_none_or(|old| old.generation != status.generation);
        self.gateways.asked.remove(&from);
        if newer {
            let poll = worth_polling(&status);
            if poll && self.gateways.polled.insert(from) {
                self.health.interest_started(from, now);
            } else if !poll && self.gateways.polled.remove(&from) {
                self.health.interest_ended(from);
            }
            self.gateways.views.insert(from, status);
            self.check_routes_through(now, from);
            self.reroute_refused_by(from);
            if fellow {
                self.router_judgment_due(now);
            }
        }
    }

    /// Gateway `gateway` restarted: what its old life said is moot, and its new life
    /// counts generations from the start again, so the next status it gives is taken
    /// whatever its generation (until then, it is usable as a gateway never heard from).
    pub(crate) fn gateway_restarted(&mut self, now: Time, gateway: Nid) {
        self.gateways.asked.remove(&gateway);
        // Polled for what its old life said: its new life's status decides again (one
        // that never gives any, no longer forwarding, would be polled for ever).
        if self.gateways.polled.remove(&gateway) {
            self.health.interest_ended(gateway);
        }
        if self.gateways.views.remove(&gateway).is_some() {
            self.check_routes_through(now, gateway);
            if self.is_fellow(gateway) {
                self.router_judgment_due(now);
            }
        }
    }

    /// Requests of ours sent through `gateway` that it now says it cannot take (it is
    /// absent, its net is down, or it cannot reach their target) go another way at once:
    /// those not yet sent for free, those it may have forwarded within their resend
    /// budget (the target answers a copy without delivering it twice). Waiting would cost
    /// them their deadline: a black hole answers nothing.
    fn reroute_refused_by(&mut self, gateway: Nid) {
        let gateways = &self.gateways;
        let refused = self.ops.of_peer(gateway, |op| {
            op.via == Some(gateway)
                && op
                    .target()
                    .is_some_and(|(dst, _)| dst != gateway && !gateways.takes(gateway, dst))
        });
        // A router stopping or taken out by its administrator still passes the answers of
        // what it took: only what never left here goes another way.
        let view = self.gateways.views.get(&gateway);
        let orderly_for = |dst: Nid| {
            view.is_some_and(|v| {
                matches!(
                    v.state,
                    RouterState::Absent(AbsentReason::Stopping | AbsentReason::Administrator)
                ) && v.net_up(dst.net()) != Some(false)
                    && !v.unreachable.contains(&dst)
            })
        };
        let orderly: Vec<bool> = refused
            .iter()
            .map(|id| {
                self.ops
                    .get(*id)
                    .and_then(|op| op.target())
                    .is_some_and(|(dst, _)| orderly_for(dst))
            })
            .collect();
        let why = || OpError::Network(format!("router {gateway} says it cannot take it"));
        for (id, orderly) in refused.into_iter().zip(orderly) {
            match self.ops.get(id).map(|op| op.stage) {
                Some(Stage::Queued) => self.resend(id, &why()),
                Some(_) if !orderly => self.resend_after_failure(id, &why()),
                _ => {}
            }
        }
    }

    /// A frame `h` from hop `from` carried its router generation: if that is news, ask it
    /// for its status (a PING, answered with it) without waiting for a push.
    pub(crate) fn router_generation_seen(&mut self, from: Nid, h: &Header) {
        let generation = h.router_gen;
        if generation == 0 {
            return;
        }
        let known = self.gateways.views.get(&from).map(|v| v.generation);
        if known == Some(generation) || self.gateways.asked.get(&from) == Some(&generation) {
            return;
        }
        if known.is_none() {
            // Nothing known of it: worth asking only if it is ours to know (a gateway of
            // our routes, or a fellow), as after its restart (see `gateway_restarted`),
            // and if this frame is not its status itself.
            let carries_status =
                h.src == from && matches!(h.body, Body::Status | Body::Pong { .. });
            let ours = self.routes.is_gateway(from) || self.is_fellow(from);
            if carries_status || !ours {
                return;
            }
        }
        self.gateways.asked.insert(from, generation);
        // A PING to it that still waits for a credit asks as well (its PONG carries the
        // status): a gateway that keeps our credits while its frames name ever-new
        // generations must not pile PINGs up in its queue.
        let asking = |p: &Pending| matches!(p, Pending::HealthPing { dst, .. } if *dst == from);
        if self.health_queue_holds(from, asking) {
            return;
        }
        self.health_seq += 1;
        let seq = self.health_seq;
        self.send_or_queue(from, Lane::Health, Pending::HealthPing { dst: from, seq });
    }

    /// Why the route to `net` through `gateway` is not usable now, if it is not.
    fn route_state(&self, net: Net, gateway: Nid) -> Result<(), RouteDownReason> {
        if self.ni_of(gateway).is_none() {
            return Err(RouteDownReason::LocalNiDown);
        }
        if self.health.is_down(gateway) {
            return Err(RouteDownReason::GatewayDown);
        }
        let Some(view) = self.gateways.views.get(&gateway) else {
            return Ok(());
        };
        if let RouterState::Absent(why) = view.state {
            return Err(RouteDownReason::Absent(why));
        }
        if view.net_up(net) == Some(false) {
            return Err(RouteDownReason::NetDown);
        }
        Ok(())
    }

    /// Reports every route through `gateway` whose state changed.
    pub(crate) fn check_routes_through(&mut self, now: Time, gateway: Nid) {
        let nets: Vec<Net> = self
            .routes
            .all()
            .into_iter()
            .filter(|r| r.gateway == gateway)
            .map(|r| r.net)
            .collect();
        for net in nets {
            let state = self.route_state(net, gateway);
            let was = self.gateways.down.get(&(net, gateway)).copied();
            match (was, state) {
                (None, Err(reason)) => {
                    self.gateways.down.insert((net, gateway), reason);
                    tracing::info!(%net, %gateway, "route down: {reason}");
                    self.out.events.push_back(Event::RouteDown {
                        net,
                        gateway,
                        reason,
                        at: now,
                    });
                }
                (Some(old), Err(reason)) if old != reason => {
                    self.gateways.down.insert((net, gateway), reason);
                }
                (Some(_), Ok(())) => {
                    self.gateways.down.remove(&(net, gateway));
                    tracing::info!(%net, %gateway, "route up");
                    self.out.events.push_back(Event::RouteUp {
                        net,
                        gateway,
                        at: now,
                    });
                }
                _ => {}
            }
        }
    }

    /// A route is gone: nothing more to report about it.
    pub(crate) fn forget_route(&mut self, net: Net, gateway: Nid) {
        self.gateways.down.remove(&(net, gateway));
        let fellow = self.cfg.router.fellows.contains(&gateway);
        if !fellow && !self.routes.is_gateway(gateway) {
            if self.gateways.polled.remove(&gateway) {
                self.health.interest_ended(gateway);
            }
            self.gateways.views.remove(&gateway);
            self.gateways.asked.remove(&gateway);
        }
    }
}
