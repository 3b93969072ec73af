//! The node: lanet's protocol state machine, with no I/O of its own.
//!
//! Inputs are the application's requests and the drivers' [`LndEvent`]s, each with the
//! current time; outputs are polled: frames to transmit (health lane strictly first), driver
//! requests (connect, close), events for the application (completions, deliveries) and the
//! next time the node wants [`Node::handle_timeout`] called.
//!
//! Life of a PUT: routed to its next hop (the target on one of our nets, or a router
//! towards it) → sent once that hop's data lane is connected and a hop credit and an NI
//! credit are free (at once if they are and nothing waits there before it, else queued
//! there until then) → `SendComplete` (NI credit back) → ACK from the target, by whatever
//! way it comes → `Completed`. A router on the way that cannot pass it on says so (NACK),
//! and it is sent again another way at once. It can leave that path at any point through
//! its deadline, a failure, cancellation or shutdown, and always exactly once.
//! A PUT without ACK ends at its `SendComplete`; a NACK or a router failure before that
//! fails it instead of sending it again.
//!
//! The pieces: [`ops`](self::ops) (live operations and their indexes), [`peers`](self::peers)
//! (next hops and far ends), [`routes`](self::routes); the hop-lane queues and the credits
//! that let frames go (`queues`), the send path (`tx`), driver events and received frames
//! (`rx`), the target side (`target`), forwarding for routers (`forward`), failure
//! detection (`health`).

mod absence;
mod dedup;
mod failover;
mod faults;
mod footprint;
mod forward;
mod gateways;
mod health;
mod idle;
mod inflight;
mod ops;
pub(crate) mod peers;
mod pools;
mod portal_list;
mod queues;
mod reply_fetches;
mod report;
mod room;
mod routes;
mod rx;
mod target;
mod tx;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use bytes::BytesMut;
use rustc_hash::FxHashMap;

use crate::config::NodeConfig;
use crate::credits::NiCredits;
use crate::health::{Action, Monitor};
use crate::lane::{Lane, PerLane};
use crate::lnd::{LndError, RxHandle, RxPayload, Transmit};
use crate::memo_map::NidMap;
use crate::nid::Nid;
use crate::op::{
    Completion, Event, GetRequest, MatchEntry, OpError, OpId, OpOutcome, PingRequest, PutRequest,
};
use crate::time::Time;
pub use absence::{AbsenceStats, BlackHole, RouterCondition};
pub use failover::{FailoverGroup, FailoverMode, GroupId, GroupRequest};
pub use faults::{
    FaultAction, FaultError, FaultRule, FaultRuleReport, NidPattern, MAX_FAULT_DELAY,
    MAX_FAULT_RULES,
};
pub use footprint::Footprint;
pub use gateways::{PeerRouting, RouterStats};
pub use idle::MAX_IDLE_PEERS;
use inflight::InFlight;
use ops::{Op, OpKind, Ops, Stage};
use peers::{Conn, End, Hop, Upstream};
pub use pools::{PoolKind, PoolSizes, PoolStats};
pub use report::{CreditReport, HopLaneReport, HopReport, NodeReport, RouterReport};
use routes::RouteTable;
pub use routes::{reachable, Route, RouteUnfit};
use target::Incoming;

/// Index of a network interface of the node (the order NIs were added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NiId(pub usize);

/// Something the node asks a driver to do besides sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LndRequest {
    Connect {
        peer: Nid,
        lane: Lane,
    },
    Close {
        peer: Nid,
        lane: Lane,
        error: LndError,
    },
    /// Move a deferred payload into `sink`.
    Fetch {
        handle: RxHandle,
        sink: BytesMut,
    },
    /// Release a deferred payload nobody wants.
    Decline {
        handle: RxHandle,
    },
}

/// Counters of one lane, over all its connections (`lanetctl stats show`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Payload bytes (headers not counted).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Frames a driver failed to send (their connection failed under them).
    pub send_errors: u64,
    /// Frames that arrived broken or breaking the protocol.
    pub protocol_errors: u64,
    /// Answers of ours dropped because no way to their target was left.
    pub dropped: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Requests of ours sent again another way.
    pub resent: u64,
    /// Frames a fault rule dropped, or delayed (`lanetctl fault`).
    pub fault_dropped: u64,
    pub fault_delayed: u64,
}

/// Counters for what the node did and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Per lane: what the totals below are made of, with bytes.
    pub lanes: PerLane<LaneStats>,
    /// Round trips of the health monitor's PINGs.
    pub health_rtt: crate::health::RttHistogram,
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Of those, on the health lane (PINGs, PONGs, router status, and what a router passes
    /// on there): the cost of watching and being watched.
    pub health_frames_sent: u64,
    pub health_frames_received: u64,
    pub credit_frames_sent: u64,
    pub protocol_errors: u64,
    /// ACK/REPLY/PONG/NACK for an operation that had already completed (e.g. timed out),
    /// or for one not asking for it: a NACK for a PUT without ACK that was sent already
    /// (a router on the way refused it, after its sender was done) counts here.
    pub late_responses: u64,
    pub refused_no_match: u64,
    pub refused_busy: u64,
    /// Frames of our own, not requests, that could not be sent because the connection
    /// failed or no way was left: answers (ACK/REPLY/PONG/NACK), CREDIT, health PINGs,
    /// router STATUS.
    pub responses_dropped: u64,
    /// PINGs left unanswered because the peer already had [`ANSWER_BACKLOG_PER_CREDIT`] x
    /// its connection's window of answers waiting: it pings faster than it lets us answer.
    pub pings_shed: u64,
    /// PUTs and GETs left without ACK or REPLY for the same reason (the request itself was
    /// handled; the peer's deadline ends its operation).
    pub answers_shed: u64,
    /// Deferred payloads whose fetch failed.
    pub fetch_failures: u64,
    /// Frames this node passed on towards their target (it is a router).
    pub forwarded: u64,
    /// Frames passing through refused because they waited at a next hop that took nothing
    /// past `forward_patience` (requests NACKed, answers dropped).
    pub forwards_stalled: u64,
    /// Requests this node refused to pass on, each answered with a NACK.
    pub nacks_sent: u64,
    /// NACKs received for our own requests.
    pub nacks_received: u64,
    /// Requests of ours sent again another way (after a NACK, or their router failing).
    pub resent: u64,
    /// Answers or NACKs addressed to others that this node could not pass on (nobody
    /// resends an answer: the initiator's deadline ends its operation).
    pub unroutable_answers: u64,
    /// Frames from an earlier life of a far end (an incarnation a newer life of it
    /// replaced), come late through routers: dropped.
    pub stale_frames: u64,
    /// Resent requests that reached us again and were answered again, not delivered twice.
    pub duplicates_answered: u64,
    /// Copies of requests too old for what we remember: dropped, in case they were
    /// delivered already.
    pub duplicates_dropped: u64,
    /// Answers remembered for resent requests, now (bounded by `dedup_window` x
    /// `dedup_initiators`), and the windows they are in: one per initiator and NID of
    /// ours it addresses.
    pub dedup_entries: u64,
    pub dedup_initiators: u64,
    /// News of the network (see [`Event::is_notice`]) an endpoint dropped because its
    /// application had left `max_undelivered` events untaken.
    pub notices_dropped: u64,
    /// REPLYs passing through sent on aborted, without their payload: larger than their
    /// next hop takes.
    pub replies_aborted: u64,
}

/// Answers (ACK, REPLY, PONG, NACK) that may wait at one hop lane, per receive credit we
/// offer. Credits go back to a peer as soon as its frames are consumed, so one that keeps
/// sending requests while never returning ours could otherwise grow the queue without bound.
/// A peer that returns credits keeps this queue near empty, since answers leave before our
/// own requests; past the bound its requests go unanswered (counted in
/// [`NodeStats::pings_shed`] and [`NodeStats::answers_shed`]) and its own deadlines end them.
pub const ANSWER_BACKLOG_PER_CREDIT: usize = 4;

/// Submission failures that leave no operation behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("{0} is already in use by a live operation")]
    DuplicateOpId(OpId),
    #[error("{0} has bit 62 set: such ids are the node's own (failover attempts)")]
    ReservedOpId(OpId),
}

pub(crate) struct Ni {
    pub(crate) nid: Nid,
    pub(crate) credits: PerLane<NiCredits>,
    /// False once its driver failed for good: nothing goes through it any more.
    pub(crate) up: bool,
}

/// What a deferred payload being fetched is for.
pub(crate) enum Fetch {
    /// A PUT matched `entry`; ACK it (if wanted) once the payload is in.
    Put {
        req: Incoming,
        entry: OpId,
        entry_seq: u64,
    },
    /// The REPLY to our GET `op`, which came by `hop` when the op had made `attempt`
    /// attempts (see `Op::attempts`; a REPLY does not say which copy it answers).
    Reply {
        op: OpId,
        seq: u64,
        attempt: u32,
        hop: Nid,
    },
    /// A frame passing through (we are a router): forwarded once its payload is here.
    Forward {
        header: crate::wire::Header,
        upstream: Upstream,
    },
}

/// Bookkeeping for a frame handed to a driver.
pub(crate) struct InLnd {
    /// Its place in the order frames were queued for the drivers (within a lane, the order
    /// they are handed over).
    pub(crate) sent: u64,
    pub(crate) ni: NiId,
    pub(crate) lane: Lane,
    /// Whether it holds an NI credit (CREDIT frames do not).
    pub(crate) ni_credit: bool,
    /// An op's request: the op, its seq, and which attempt.
    pub(crate) op: Option<(OpId, u64, u32)>,
    /// A forwarded frame: the upstream credit it holds until it has left.
    pub(crate) upstream: Option<Upstream>,
    /// A forwarded request: whom to refuse it to (NACK) if it fails to leave.
    pub(crate) refuse_to: Option<RefuseTo>,
    /// A CREDIT frame: the hop and the serial of the connection it returns credits on.
    pub(crate) credit_for: Option<(Nid, u64)>,
}

/// Enough of a forwarded request to refuse it after it has left our hands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefuseTo {
    pub(crate) src: Nid,
    pub(crate) dst: Nid,
    pub(crate) msg_id: u64,
    /// The refused copy's attempt byte, echoed in the NACK.
    pub(crate) attempt: u8,
}

/// What the node has for its drivers and its application, until they poll it, and what
/// it handed to the drivers and awaits word of.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) transmits: PerLane<VecDeque<(NiId, Transmit)>>,
    pub(crate) requests: VecDeque<(NiId, LndRequest)>,
    pub(crate) events: VecDeque<Event>,
    /// Frames in the drivers, by token.
    pub(crate) in_lnd: InFlight<InLnd>,
    /// Health-lane frames in the drivers, by `InLnd::sent` (so oldest first), with when
    /// they went.
    pub(crate) health_in_lnd: BTreeMap<u64, Time>,
    /// The next frame's `InLnd::sent`.
    pub(crate) next_sent: u64,
}

impl Outbox {
    /// Drops what is queued for NI `ni`'s driver and not yet handed over, its driver being
    /// gone: frames (their in-driver records end with the driver's others) and requests
    /// (its fetches end from `fetching`; connects, closes and declines are moot).
    fn drop_queued_for(&mut self, ni: NiId) {
        for lane in Lane::ALL {
            self.transmits[lane].retain(|(n, _)| *n != ni);
        }
        self.requests.retain(|(n, _)| *n != ni);
    }
}

/// The protocol state machine of one node.
pub struct Node {
    pub(crate) cfg: NodeConfig,
    pub(crate) nis: Vec<Ni>,
    /// Neighbours we keep (or want) connections with.
    pub(crate) hops: NidMap<Hop>,
    /// Far ends of our operations and of the requests we answer.
    pub(crate) ends: NidMap<End>,
    /// When `hops` and `ends` grow to these sizes, the idle entries go (see [`idle`]).
    pub(crate) sweep_at: idle::SweepAt,
    pub(crate) routes: RouteTable,
    /// What our gateways say of themselves; and, as a router, what we say.
    pub(crate) gateways: gateways::Gateways,
    pub(crate) router: gateways::Router,
    /// Failover groups, and the operations addressed to them.
    pub(crate) groups: failover::Groups,
    /// As a router: buffers for frames passing through, and those waiting for one.
    pub(crate) pools: pools::Pools<forward::Arrived>,
    /// As a router: when hop lanes with frames passing through waiting in their queues
    /// are next looked at for frames stalled there (see `forward::refuse_stalled`). An
    /// entry whose time is not its lane's `stall_check` any more is stale, and skipped.
    pub(crate) stall_checks: BinaryHeap<Reverse<(Time, Nid, Lane)>>,
    pub(crate) ops: Ops,
    /// What reached us through routers, to answer resent requests again.
    pub(crate) dedup: dedup::Dedup,
    /// Attached entries, by portal (and bits), in attach order.
    pub(crate) portals: portal_list::Portals,
    /// Deferred payloads being fetched, by the NI and handle of their driver.
    pub(crate) fetching: FxHashMap<(NiId, RxHandle), Fetch>,
    /// The GETs' REPLYs among them.
    pub(crate) reply_fetches: reply_fetches::ReplyFetches,
    /// Copies of routed PUTs that came while their first copy's payload was being
    /// fetched, by initiator, NID addressed, incarnation and message id: taken if that
    /// fetch fails (at most one per fetch).
    pub(crate) held_copies: FxHashMap<target::CopyKey, (NiId, Incoming, RxPayload)>,
    pub(crate) out: Outbox,
    /// Fault injection: rules, and the frames their delays hold.
    pub(crate) faults: faults::Faults,
    /// Deliveries reported and not yet consumed by the application.
    pub(crate) undelivered: usize,
    pub(crate) stats: NodeStats,
    /// Failure detection, the actions it asks for (reused), and its PINGs' numbering.
    pub(crate) health: Monitor,
    health_actions: Vec<Action>,
    health_seq: u64,
    /// When the monitor's PINGs in flight left, by seq: their PONGs time the round trip.
    health_ping_sent: FxHashMap<u64, health::PingOut>,
    /// The time of the call being handled, when it carries one; `None` in calls that do not
    /// (their frames are not timed).
    pub(crate) clock: Option<Time>,
    /// Names connections as they come up (see [`peers::Conn::Up`]).
    pub(crate) next_conn_serial: u64,
    /// Set by shutdown or abort: what every later submission completes with.
    shut_down: Option<OpError>,
}

impl Node {
    /// A node with no NIs yet. The configuration must be valid ([`NodeConfig::validate`]).
    pub fn new(cfg: NodeConfig) -> Node {
        debug_assert_eq!(cfg.validate(), Ok(()));
        let health = Monitor::new(cfg.health);
        let sweep_at = idle::SweepAt::new(cfg.max_idle_peers);
        let pools_cfg = (cfg.router_buffers, cfg.router_patience);
        let dedup = dedup::Dedup::new(cfg.dedup_window, cfg.dedup_initiators);
        let router = gateways::Router::new(&cfg);
        let ops = Ops::new(cfg.incarnation);
        Node {
            dedup,
            router,
            groups: failover::Groups::default(),
            cfg,
            nis: Vec::new(),
            hops: NidMap::default(),
            ends: NidMap::default(),
            sweep_at,
            routes: RouteTable::default(),
            gateways: gateways::Gateways::default(),
            pools: pools::Pools::new(pools_cfg.0, pools_cfg.1),
            stall_checks: BinaryHeap::new(),
            ops,
            portals: portal_list::Portals::default(),
            fetching: FxHashMap::default(),
            reply_fetches: Default::default(),
            held_copies: FxHashMap::default(),
            faults: faults::Faults::default(),
            out: Outbox::default(),
            undelivered: 0,
            stats: NodeStats::default(),
            health,
            health_actions: Vec::new(),
            health_seq: 0,
            health_ping_sent: FxHashMap::default(),
            clock: None,
            next_conn_serial: 1,
            shut_down: None,
        }
    }

    /// Attaches the node to a net with address `nid`. One NI per net.
    pub fn add_ni(&mut self, nid: Nid) -> Result<NiId, OpError> {
        if self.has_net(nid.net()) {
            return Err(OpError::Invalid(format!(
                "this node already has an NI on net {}",
                nid.net()
            )));
        }
        if self.routes.has_routes_to(nid.net()) {
            return Err(OpError::Invalid(format!(
                "net {} is reached through routers here; remove its routes first",
                nid.net()
            )));
        }
        let lanes = &self.cfg.lanes;
        self.nis.push(Ni {
            nid,
            credits: PerLane::new(
                NiCredits::new(lanes[Lane::Health].ni_credits),
                NiCredits::new(self.cfg.data_ni_credits(nid.net())),
            ),
            up: true,
        });
        self.router_status_changed(self.clock.unwrap_or_default());
        Ok(NiId(self.nis.len() - 1))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn nids(&self) -> impl Iterator<Item = Nid> + '_ {
        self.nis.iter().map(|ni| ni.nid)
    }

    /// Whether NI `ni` still works (false once [`Node::ni_failed`]).
    pub fn ni_is_up(&self, ni: NiId) -> bool {
        self.nis.get(ni.0).is_some_and(|n| n.up)
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Live operations (submitted, not yet completed).
    pub fn live_ops(&self) -> usize {
        self.ops.len()
    }

    // ---- routes -------------------------------------------------------------------------

    /// Adds a route (or updates the one through the same gateway to the same net). The
    /// gateway must be on one of this node's nets, and the net must not be.
    pub fn add_route(&mut self, route: Route) -> Result<(), OpError> {
        let own: Vec<Nid> = self.nis.iter().map(|ni| ni.nid).collect();
        if let Some(unfit) = route.unfit_for(&own) {
            return Err(OpError::Invalid(format!(
                "route to {} through {}: {unfit}",
                route.net, route.gateway
            )));
        }
        self.routes.add(route);
        self.check_routes_through(self.clock.unwrap_or_default(), route.gateway);
        Ok(())
    }

    /// Removes the route to `net` through `gateway`; false if there was none. Frames already
    /// on their way through it are not called back.
    pub fn remove_route(&mut self, net: crate::nid::Net, gateway: Nid) -> bool {
        let removed = self.routes.remove(net, gateway);
        self.forget_route(net, gateway);
        removed
    }

    /// Every route, sorted by net, priority and hops.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.all()
    }

    /// Route changes so far: of two lists of [`Node::routes`] taken with it, the one with
    /// more is the later.
    pub fn route_changes(&self) -> u64 {
        self.routes.changes()
    }

    // ---- application inputs -------------------------------------------------------------

    pub fn put(&mut self, now: Time, id: OpId, req: PutRequest) -> Result<(), SubmitError> {
        let check = req.validate(self.cfg.max_payload).err();
        let timeout = req.timeout;
        self.submit(now, id, OpKind::Put(req), timeout, check)
    }

    pub fn get(&mut self, now: Time, id: OpId, req: GetRequest) -> Result<(), SubmitError> {
        let check = req.validate(self.cfg.max_payload).err();
        let timeout = req.timeout;
        self.submit(now, id, OpKind::Get(req), timeout, check)
    }

    pub fn ping(&mut self, now: Time, id: OpId, req: PingRequest) -> Result<(), SubmitError> {
        let timeout = req.timeout;
        let kind = OpKind::Ping { req, sent_at: now };
        self.submit(now, id, kind, timeout, None)
    }

    /// Attaches a receive buffer or GET source; it completes when unlinked.
    pub fn attach(&mut self, id: OpId, entry: MatchEntry) -> Result<(), SubmitError> {
        self.clock = None;
        self.check_id(id)?;
        let seq = self.ops.take_seq();
        if let Some(error) = self.shut_down.clone() {
            self.push_completion(id, Err(error));
            return Ok(());
        }
        self.portals
            .push(entry.portal, id, entry.match_bits, entry.ignore_bits);
        self.ops
            .insert(id, Op::new(seq, OpKind::Entry(entry)), None);
        Ok(())
    }

    /// Cancels a live operation (or unlinks an entry): it completes with `Cancelled`. A
    /// request already sent (its frame built for the driver, its credit spent: whether the
    /// driver has taken it yet or not) may still reach the peer; its answer is ignored.
    /// One still queued (for credits, or a connection) never leaves. Unknown or finished
    /// ids are ignored.
    pub fn cancel(&mut self, id: OpId) {
        self.clock = None;
        if self.ops.contains(id) {
            self.complete(id, Err(OpError::Cancelled));
        } else {
            self.cancel_group_op(id);
        }
    }

    /// The application took `n` of the events for which [`Event::is_delivery`] holds.
    pub fn deliveries_consumed(&mut self, n: usize) {
        self.undelivered = self.undelivered.saturating_sub(n);
    }

    /// Completes every live operation with `Cancelled` (in submission order); later
    /// submissions are cancelled at once.
    pub fn shutdown(&mut self) {
        self.clock = None;
        self.abort(OpError::Cancelled);
    }

    /// Like [`Node::shutdown`], completing everything live (and everything submitted later)
    /// with `error` instead (e.g. when a driver failed for good).
    pub fn abort(&mut self, error: OpError) {
        self.clock = None;
        self.shut_down = Some(error.clone());
        for id in self.ops.ids() {
            self.complete(id, Err(error.clone()));
        }
        self.abort_group_ops(&error);
        self.router_stop_watching();
        let mut forwards = Vec::new();
        for hop in self.hops.values_mut() {
            for lane in Lane::ALL {
                forwards.extend(hop.lanes[lane].take_forwards());
                hop.lanes[lane].queue.clear();
                hop.lanes[lane].answers.clear();
            }
        }
        // Frames passing through are dropped with their buffers; nothing is sent any
        // more (their upstream credits go with the connections).
        self.pools
            .abandon(forwards.iter().filter_map(|f| f.upstream.pool));
        for held in self.faults.take_all() {
            self.decline_deferred(held.ni, held.payload);
        }
        for (_, (ni, _, copy)) in std::mem::take(&mut self.held_copies) {
            self.decline_deferred(ni, copy);
        }
    }

    /// Removes every live operation without touching anything else, and returns their ids
    /// (plain ones in submission order, then failover-group ones by id): for completing
    /// them from outside after a panic left the node's other state in doubt.
    pub fn take_live_ops(&mut self) -> Vec<OpId> {
        let live = self.ops.drain();
        self.take_group_ops(live)
    }

    // ---- time ---------------------------------------------------------------------------

    /// When the node next needs [`Node::handle_timeout`].
    pub fn poll_timeout(&mut self) -> Option<Time> {
        // Asked every turn of the driver loop: a minimum of plain numbers, "none" the
        // largest, not a fold of options or an iterator chain (each cost more than the
        // seven questions). A deadline at the very end of time reads as none: the same.
        const NONE: u64 = u64::MAX;
        let at = |t: Option<Time>| t.map_or(NONE, |t| t.0);
        let due = at(self.ops.next_deadline())
            .min(at(self.health.next_deadline()))
            .min(at(self.router.push_at))
            .min(at(self.router.absence.due))
            .min(at(self.groups.next_deadline()))
            .min(at(self.pools.next_deadline()))
            .min(at(self.stall_checks.peek().map(|Reverse((t, ..))| *t)))
            .min(at(self.faults.next_release()));
        (due != NONE).then_some(Time(due))
    }

    /// Takes `now` as the time for work it is not given one for (a driver's completions,
    /// reports): what [`Node::handle_timeout`] also does, for a turn with no timer due.
    pub fn set_time(&mut self, now: Time) {
        self.clock = Some(now);
    }

    /// Expires operations whose deadline is at or before `now`, and runs failure detection.
    pub fn handle_timeout(&mut self, now: Time) {
        self.clock = Some(now);
        self.health_timeout(now);
        if self.router.absence.due.is_some_and(|t| t <= now) {
            self.judge_router(now);
        }
        self.push_router_status(now);
        self.groups_timeout(now);
        for late in self.pools.expire(now) {
            self.out_of_patience(late);
        }
        self.refuse_stalled(now);
        self.release_delayed(now);
        while let Some(id) = self.ops.pop_expired(now) {
            let Some(op) = self.ops.get(id) else {
                continue;
            };
            let error = match op.stage {
                // Connected but no credit: LNet blames the local side.
                Stage::Queued if self.hop_is_up(op) => OpError::LocalTimeout,
                Stage::Queued | Stage::InLnd => OpError::NetworkTimeout,
                Stage::Awaiting => OpError::RemoteTimeout,
            };
            self.complete(id, Err(error));
        }
        self.forget_idle_hops_if_due();
    }

    fn hop_is_up(&self, op: &Op) -> bool {
        let lane = op.target().map_or(Lane::Data, |(_, l)| l);
        op.via.is_some_and(|via| {
            self.hops
                .get(&via)
                .is_some_and(|h| matches!(h.lanes[lane].conn, Conn::Up { .. }))
        })
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Whether [`Node::poll_request`] or [`Node::poll_transmit`] has anything for the
    /// drivers (not [`Node::poll_event`], which is the application's): a look at the
    /// queues' lengths, cheaper than a poll that finds nothing.
    pub fn has_output(&self) -> bool {
        !self.out.requests.is_empty()
            || Lane::ALL.iter().any(|&l| !self.out.transmits[l].is_empty())
    }

    /// The next frame to hand to a driver: every health frame before any data frame.
    pub fn poll_transmit(&mut self) -> Option<(NiId, Transmit)> {
        Lane::ALL
            .into_iter()
            .find_map(|lane| self.out.transmits[lane].pop_front())
    }

    pub fn poll_request(&mut self) -> Option<(NiId, LndRequest)> {
        self.out.requests.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    // ---- internals shared by the submodules ---------------------------------------------

    fn check_id(&self, id: OpId) -> Result<(), SubmitError> {
        if failover::Groups::is_attempt(id) && !self.groups.is_live_attempt(id) {
            return Err(SubmitError::ReservedOpId(id));
        }
        if self.ops.contains(id) || self.groups.has_parent(id) {
            Err(SubmitError::DuplicateOpId(id))
        } else {
            Ok(())
        }
    }

    fn submit(
        &mut self,
        now: Time,
        id: OpId,
        kind: OpKind,
        timeout: Option<std::time::Duration>,
        invalid: Option<String>,
    ) -> Result<(), SubmitError> {
        self.clock = Some(now);
        self.check_id(id)?;
        let op = Op::new(self.ops.take_seq(), kind);
        let (dst, _) = op.target().expect("submit is for ops that send");
        let early = if let Some(error) = &self.shut_down {
            Some(error.clone())
        } else if let Some(why) = invalid {
            Some(OpError::Invalid(why))
        } else if let Err(e) = self.check_reachable(dst) {
            Some(e)
        } else if self.fails_fast(dst, &op.kind) {
            self.health.poke(dst, now);
            Some(OpError::PeerDead)
        } else {
            None
        };
        if let Some(error) = early {
            self.push_completion(id, Err(error));
            return Ok(());
        }
        let deadline = now + timeout.unwrap_or(self.cfg.op_timeout);
        self.health.interest_started(dst, now);
        self.ops.insert(id, op, Some(deadline));
        self.send_op(id);
        Ok(())
    }

    /// Ends a live op: removes every trace that could complete it again, and reports it.
    pub(crate) fn complete(&mut self, id: OpId, result: Result<OpOutcome, OpError>) {
        let Some(op) = self.ops.remove(id) else {
            debug_assert!(false, "{id} completed twice");
            return;
        };
        if let (Stage::Queued, Some(via), Some((_, lane))) = (op.stage, op.via, op.target()) {
            self.left_queue(via, lane);
        }
        if let Some((dst, _)) = op.target() {
            self.health.interest_ended(dst);
        }
        if let Some(router) = op.router() {
            self.health.interest_ended(router);
        }
        if let OpKind::Entry(entry) = &op.kind {
            self.portals
                .remove(entry.portal, id, entry.match_bits, entry.ignore_bits);
        }
        self.push_completion(id, result);
    }

    fn push_completion(&mut self, op: OpId, result: Result<OpOutcome, OpError>) {
        if failover::Groups::is_attempt(op) {
            return self.attempt_done(op, result);
        }
        self.out
            .events
            .push_back(Event::Completed(Completion { op, result }));
    }

    /// Whether frames can be sent to `nid`: another node, on a net we have an NI on or a
    /// route to.
    fn check_reachable(&self, nid: Nid) -> Result<(), OpError> {
        if self.is_local(nid) {
            return Err(OpError::Invalid(format!(
                "{nid} is this node; sending to oneself is not supported"
            )));
        }
        if self.ni_of(nid).is_some() || self.routes.has_routes_to(nid.net()) {
            Ok(())
        } else {
            Err(OpError::NoRoute(nid))
        }
    }

    /// NI `ni`'s driver failed for good: the NI goes down, and the node carries on with
    /// its others. What its driver held or its peers were owed ends: requests routed
    /// through one of its gateways go another way (those in flight within their resend
    /// budget), the rest fail with `error`; frames passing through that were queued for
    /// it are refused (NACK), those in its driver let go of their buffers and credits;
    /// fetches from it fail. Routes through its gateways go down (`RouteDown`), a router
    /// says its net is down, and it is reported as `NiDown`.
    pub fn ni_failed(&mut self, now: Time, ni: NiId, error: LndError) {
        self.clock = Some(now);
        let Some(n) = self.nis.get_mut(ni.0).filter(|n| n.up) else {
            return;
        };
        n.up = false;
        let nid = n.nid;
        tracing::error!(%nid, "NI down: {error}");
        self.out.events.push_back(Event::NiDown {
            nid,
            reason: error.to_string(),
            at: now,
        });
        // What its driver still held ends here (it will not report on it), and what was
        // queued for it and not yet handed over (nobody will): sends fail (a request
        // through a router is sent again another way), fetches fail.
        self.out.drop_queued_for(ni);
        // Copies held against a failing fetch cannot be fetched on it any more.
        self.held_copies.retain(|_, (n, ..)| *n != ni);
        let mut held: Vec<(u64, u64)> = self
            .out
            .in_lnd
            .iter()
            .filter(|(_, f)| f.ni == ni)
            .map(|(token, f)| (f.sent, token))
            .collect();
        held.sort_unstable(); // in the order they were queued
        for (_, token) in held {
            self.on_send_complete(now, crate::lnd::TxToken(token), Err(error.clone()));
        }
        let mut fetches: Vec<RxHandle> = self
            .fetching
            .keys()
            .filter(|(n, _)| *n == ni)
            .map(|&(_, h)| h)
            .collect();
        fetches.sort_unstable_by_key(|h| h.0);
        for handle in fetches {
            self.on_fetched(ni, handle, Err(error.clone()));
        }
        let mut gone: Vec<Nid> = self
            .hops
            .iter()
            .filter(|(_, h)| h.ni == ni)
            .map(|(n, _)| *n)
            .collect();
        gone.sort_unstable();
        for hop in gone {
            for lane in Lane::ALL {
                self.hop_gone(hop, lane, &error);
            }
        }
        let mut gateways: Vec<Nid> = self
            .routes
            .all()
            .into_iter()
            .map(|r| r.gateway)
            .filter(|g| g.same_net(&nid))
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        for gateway in gateways {
            self.check_routes_through(now, gateway);
        }
        self.router_status_changed(now);
        self.router_judgment_due(now);
    }

    /// Whether `nid` is one of this node's own NIDs.
    pub(crate) fn is_local(&self, nid: Nid) -> bool {
        self.nis.iter().any(|ni| ni.nid == nid)
    }

    /// The NI on `nid`'s net, if this node has one and it is up.
    pub(crate) fn ni_of(&self, nid: Nid) -> Option<NiId> {
        self.nis
            .iter()
            .position(|ni| ni.nid.same_net(&nid) && ni.up)
            .map(NiId)
    }

    /// Whether this node has an NI on `net`, up or not.
    pub(crate) fn has_net(&self, net: crate::nid::Net) -> bool {
        self.nis.iter().any(|ni| ni.nid.is_on(net))
    }

    pub(crate) fn end_entry(&mut self, nid: Nid) -> &mut End {
        if self.ends.len() >= self.sweep_at.ends && !self.ends.contains_key(&nid) {
            self.forget_idle_ends();
        }
        self.ends.entry(nid).or_default()
    }
}
