//! The node: lanet's protocol state machine, with no I/O of its own.
//!
//! Inputs are the application's requests and the drivers' [`LndEvent`]s, each with the
//! current time; outputs are polled: frames to transmit (health lane strictly first), driver
//! requests (connect, close), events for the application (completions, deliveries) and the
//! next time the node wants [`Node::handle_timeout`] called.
//!
//! Life of a PUT: queued on its peer's data lane → sent when the lane is connected, holds a
//! peer credit and an NI credit → `SendComplete` (NI credit back) → ACK (peer credit came
//! back on some frame) → `Completed`. It can leave that path at any point through its
//! deadline, a connection failure, cancellation or shutdown, and always exactly once.

mod health;
mod rx;
mod target;

use target::Incoming;
mod tx;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::config::NodeConfig;
use crate::credits::{LaneCredits, NiCredits};
use crate::handshake::PeerHello;
use crate::health::{Action, Monitor};
use crate::lane::{Lane, PerLane};
use crate::lnd::{LndError, RxHandle, Transmit};
use crate::nid::Nid;
use crate::op::{
    Completion, Event, GetRequest, MatchEntry, OpError, OpId, OpOutcome, PingRequest, PutRequest,
};
use crate::time::Time;
use crate::wire::Body;

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

/// Counters for what the node did and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub credit_frames_sent: u64,
    pub protocol_errors: u64,
    /// ACK/REPLY/PONG for an operation that had already completed (e.g. timed out).
    pub late_responses: u64,
    pub refused_no_match: u64,
    pub refused_busy: u64,
    /// ACK/REPLY/PONG that could not be sent because the connection failed.
    pub responses_dropped: u64,
    /// PINGs left unanswered because the peer already had [`ANSWER_BACKLOG_PER_CREDIT`] x
    /// credits' worth of answers waiting: it pings faster than it lets us answer.
    pub pings_shed: u64,
    /// PUTs and GETs left without ACK or REPLY for the same reason (the request itself was
    /// handled; the peer's deadline ends its operation).
    pub answers_shed: u64,
    /// Deferred payloads whose fetch failed.
    pub fetch_failures: u64,
}

/// Answers (ACK, REPLY, PONG) that may wait for one peer on one lane, per receive credit we
/// offered it. Credits go back to a peer as soon as its frames are consumed, so one that keeps
/// sending requests while never returning ours could otherwise grow the queue without bound.
/// A peer that returns credits keeps this queue near empty, since answers leave before our
/// own requests; past the bound its requests go unanswered (counted in
/// [`NodeStats::pings_shed`] and [`NodeStats::answers_shed`]) and its own deadlines end them.
pub const ANSWER_BACKLOG_PER_CREDIT: usize = 4;

/// Stale deadlines the heap may hold beyond twice the live ops before it is swept.
const DEADLINE_SLACK: usize = 64;

/// Submission failures that leave no operation behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("{0} is already in use by a live operation")]
    DuplicateOpId(OpId),
}

pub(crate) struct Ni {
    pub(crate) nid: Nid,
    pub(crate) credits: PerLane<NiCredits>,
}

/// Connection state of one lane of one peer, as the core sees it.
#[derive(Debug)]
pub(crate) enum Conn {
    Down,
    Connecting,
    Up {
        credits: LaneCredits,
        /// What the peer said when this connection came up (its credits, largest payload).
        hello: PeerHello,
    },
}

/// A request of ours waiting for credits on a peer lane.
pub(crate) enum Pending {
    /// An operation's request (PUT, GET, PING); `seq` tells a live op from a reused id.
    Op { id: OpId, seq: u64 },
    /// The health monitor's PING; not an operation.
    HealthPing { seq: u64 },
}

/// An answer owed to the peer (ACK, REPLY, PONG), waiting for credits.
pub(crate) struct Response {
    pub(crate) body: Body,
    pub(crate) msg_id: u64,
    pub(crate) payload: Bytes,
}

pub(crate) struct PeerLane {
    pub(crate) conn: Conn,
    /// Our requests, in submission order.
    pub(crate) queue: VecDeque<Pending>,
    /// Answers to the peer's requests. They leave before our requests: the peer's
    /// operations are already under way, and answering them is what bounds this queue.
    pub(crate) answers: VecDeque<Response>,
}

pub(crate) struct Peer {
    pub(crate) ni: NiId,
    pub(crate) incarnation: Option<u64>,
    pub(crate) lanes: PerLane<PeerLane>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting on its peer lane for a connection or credits.
    Queued,
    /// Handed to the driver; no `SendComplete` yet.
    InLnd,
    /// Sent; waiting for the ACK/REPLY/PONG.
    Awaiting,
}

pub(crate) enum OpKind {
    Put(PutRequest),
    Get(GetRequest),
    Ping { req: PingRequest, sent_at: Time },
    Entry(MatchEntry),
}

pub(crate) struct Op {
    /// Unique per node and submission; also the message id of the op's request frame.
    pub(crate) seq: u64,
    pub(crate) kind: OpKind,
    pub(crate) stage: Stage,
    /// A use-once entry matched by a payload still being fetched: it matches nothing else.
    pub(crate) reserved: bool,
}

/// What a deferred payload being fetched is for.
pub(crate) enum Fetch {
    /// A PUT matched `entry`; ACK it once the payload is in.
    Put {
        req: Incoming,
        entry: OpId,
        entry_seq: u64,
    },
    /// The REPLY to our GET `op`.
    Reply { op: OpId, seq: u64 },
}

impl Op {
    /// The peer and lane of an op that sends something.
    pub(crate) fn route(&self) -> Option<(Nid, Lane)> {
        match &self.kind {
            OpKind::Put(r) => Some((r.dst, r.lane)),
            OpKind::Get(r) => Some((r.dst, r.lane)),
            OpKind::Ping { req, .. } => Some((req.dst, req.lane)),
            OpKind::Entry(_) => None,
        }
    }
}

/// Bookkeeping for a frame handed to a driver.
pub(crate) struct InLnd {
    pub(crate) ni: NiId,
    pub(crate) lane: Lane,
    /// Whether it holds an NI credit (CREDIT frames do not).
    pub(crate) ni_credit: bool,
    pub(crate) op: Option<(OpId, u64)>,
}

/// The protocol state machine of one node.
pub struct Node {
    pub(crate) cfg: NodeConfig,
    pub(crate) nis: Vec<Ni>,
    pub(crate) peers: FxHashMap<Nid, Peer>,
    pub(crate) ops: FxHashMap<OpId, Op>,
    /// The live ops that send to each peer, in submission order: what a peer's failure
    /// ends, found without looking at anyone else's. (A peer's set stays when emptied.)
    pub(crate) ops_to: FxHashMap<Nid, BTreeSet<(u64, OpId)>>,
    /// Ops whose request went out, by message id, to match ACK/REPLY/PONG.
    pub(crate) awaiting: FxHashMap<u64, OpId>,
    /// Attached entries per portal, in attach order.
    pub(crate) portals: FxHashMap<u32, Vec<OpId>>,
    deadlines: BinaryHeap<Reverse<(Time, u64, OpId)>>,
    pub(crate) in_lnd: FxHashMap<u64, InLnd>,
    /// Health-lane frames in the driver, by token (so oldest first), with when they went.
    pub(crate) health_in_lnd: BTreeMap<u64, Time>,
    /// The time of the call being handled, when it carries one; `None` in calls that do not
    /// (their frames are not timed).
    pub(crate) clock: Option<Time>,
    /// Deferred payloads being fetched, by the NI and handle of their driver.
    pub(crate) fetching: FxHashMap<(NiId, RxHandle), Fetch>,
    next_seq: u64,
    pub(crate) next_token: u64,
    pub(crate) transmits: PerLane<VecDeque<(NiId, Transmit)>>,
    pub(crate) requests: VecDeque<(NiId, LndRequest)>,
    pub(crate) events: VecDeque<Event>,
    /// Deliveries reported and not yet consumed by the application.
    pub(crate) undelivered: usize,
    pub(crate) stats: NodeStats,
    /// Failure detection.
    pub(crate) health: Monitor,
    health_actions: Vec<Action>,
    health_seq: u64,
    /// Incarnations of peers when they went Down: a return with another one is a restart.
    down_incarnation: FxHashMap<Nid, Option<u64>>,
    /// Set by shutdown or abort: what every later submission completes with.
    shut_down: Option<OpError>,
}

impl Node {
    /// A node with no NIs yet. The configuration must be valid ([`NodeConfig::validate`]).
    pub fn new(cfg: NodeConfig) -> Node {
        debug_assert_eq!(cfg.validate(), Ok(()));
        let health = Monitor::new(cfg.health);
        Node {
            cfg,
            nis: Vec::new(),
            peers: FxHashMap::default(),
            ops: FxHashMap::default(),
            ops_to: FxHashMap::default(),
            awaiting: FxHashMap::default(),
            portals: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            in_lnd: FxHashMap::default(),
            health_in_lnd: BTreeMap::new(),
            clock: None,
            fetching: FxHashMap::default(),
            next_seq: 1,
            next_token: 1,
            transmits: PerLane::default(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            undelivered: 0,
            stats: NodeStats::default(),
            health,
            health_actions: Vec::new(),
            health_seq: 0,
            down_incarnation: FxHashMap::default(),
            shut_down: None,
        }
    }

    /// Attaches the node to a net with address `nid`. One NI per net.
    pub fn add_ni(&mut self, nid: Nid) -> Result<NiId, OpError> {
        if self.nis.iter().any(|ni| ni.nid.net == nid.net) {
            return Err(OpError::Invalid(format!(
                "this node already has an NI on net {}",
                nid.net
            )));
        }
        let lanes = &self.cfg.lanes;
        self.nis.push(Ni {
            nid,
            credits: PerLane::new(
                NiCredits::new(lanes[Lane::Health].ni_credits),
                NiCredits::new(lanes[Lane::Data].ni_credits),
            ),
        });
        Ok(NiId(self.nis.len() - 1))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn nids(&self) -> impl Iterator<Item = Nid> + '_ {
        self.nis.iter().map(|ni| ni.nid)
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Live operations (submitted, not yet completed).
    pub fn live_ops(&self) -> usize {
        self.ops.len()
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
        let seq = self.take_seq();
        if let Some(error) = self.shut_down.clone() {
            self.push_completion(id, Err(error));
            return Ok(());
        }
        self.portals.entry(entry.portal).or_default().push(id);
        let op = Op {
            seq,
            kind: OpKind::Entry(entry),
            stage: Stage::Queued,
            reserved: false,
        };
        self.ops.insert(id, op);
        Ok(())
    }

    /// Cancels a live operation (or unlinks an entry): it completes with `Cancelled`. A
    /// request already handed to the driver may still reach the peer; its answer is ignored.
    /// Unknown or finished ids are ignored.
    pub fn cancel(&mut self, id: OpId) {
        self.clock = None;
        if self.ops.contains_key(&id) {
            self.complete(id, Err(OpError::Cancelled));
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
        let mut live: Vec<(u64, OpId)> = self.ops.iter().map(|(id, op)| (op.seq, *id)).collect();
        live.sort_unstable();
        for (_, id) in live {
            self.complete(id, Err(error.clone()));
        }
        for peer in self.peers.values_mut() {
            for lane in Lane::ALL {
                peer.lanes[lane].queue.clear();
                peer.lanes[lane].answers.clear();
            }
        }
        self.deadlines.clear();
    }

    /// Removes every live operation without touching anything else, and returns their ids
    /// in submission order: for completing them from outside after a panic left the node's
    /// other state in doubt.
    pub fn take_live_ops(&mut self) -> Vec<OpId> {
        self.ops_to.clear();
        let mut live: Vec<(u64, OpId)> = self.ops.drain().map(|(id, op)| (op.seq, id)).collect();
        live.sort_unstable();
        live.into_iter().map(|(_, id)| id).collect()
    }

    // ---- time ---------------------------------------------------------------------------

    /// When the node next needs [`Node::handle_timeout`].
    pub fn poll_timeout(&mut self) -> Option<Time> {
        let mut op = None;
        while let Some(Reverse((t, seq, id))) = self.deadlines.peek().copied() {
            if self.ops.get(&id).is_some_and(|op| op.seq == seq) {
                op = Some(t);
                break;
            }
            self.deadlines.pop();
        }
        match (op, self.health.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires operations whose deadline is at or before `now`, and runs failure detection.
    pub fn handle_timeout(&mut self, now: Time) {
        self.clock = Some(now);
        self.health_timeout(now);
        while let Some(Reverse((t, seq, id))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let Some(op) = self.ops.get(&id).filter(|op| op.seq == seq) else {
                continue;
            };
            let error = match op.stage {
                Stage::Queued => {
                    let connected = op.route().is_some_and(|(peer, lane)| {
                        self.peers
                            .get(&peer)
                            .is_some_and(|p| matches!(p.lanes[lane].conn, Conn::Up { .. }))
                    });
                    if connected {
                        OpError::LocalTimeout
                    } else {
                        OpError::NetworkTimeout
                    }
                }
                Stage::InLnd => OpError::NetworkTimeout,
                Stage::Awaiting => OpError::RemoteTimeout,
            };
            self.complete(id, Err(error));
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next frame to hand to a driver: every health frame before any data frame.
    pub fn poll_transmit(&mut self) -> Option<(NiId, Transmit)> {
        Lane::ALL
            .into_iter()
            .find_map(|lane| self.transmits[lane].pop_front())
    }

    pub fn poll_request(&mut self) -> Option<(NiId, LndRequest)> {
        self.requests.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals shared by tx and rx --------------------------------------------------

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    fn check_id(&self, id: OpId) -> Result<(), SubmitError> {
        if self.ops.contains_key(&id) {
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
        let seq = self.take_seq();
        let op = Op {
            seq,
            kind,
            stage: Stage::Queued,
            reserved: false,
        };
        let (dst, lane) = op.route().expect("submit is for ops that send");
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
        self.ops_to.entry(dst).or_default().insert((seq, id));
        self.ops.insert(id, op);
        // After the insert: a sweep this push triggers keeps the deadlines of live ops.
        self.push_deadline(deadline, seq, id);
        self.enqueue(dst, lane, Pending::Op { id, seq });
        Ok(())
    }

    /// Ends a live op: removes every trace that could complete it again, and reports it.
    pub(crate) fn complete(&mut self, id: OpId, result: Result<OpOutcome, OpError>) {
        let Some(op) = self.ops.remove(&id) else {
            debug_assert!(false, "{id} completed twice");
            return;
        };
        self.awaiting.remove(&op.seq);
        if let Some((dst, _)) = op.route() {
            self.health.interest_ended(dst);
            // An emptied set stays, keeping its node: the next op to this peer then costs
            // no allocation (the peer's record stays too).
            if let Some(to) = self.ops_to.get_mut(&dst) {
                to.remove(&(op.seq, id));
            }
        }
        if let OpKind::Entry(entry) = &op.kind {
            if let Some(list) = self.portals.get_mut(&entry.portal) {
                list.retain(|e| *e != id);
                if list.is_empty() {
                    self.portals.remove(&entry.portal);
                }
            }
        }
        // Queue slots and deadlines are dropped lazily: they no longer find a live op with
        // this seq.
        self.push_completion(id, result);
    }

    /// Books the deadline of op `id`, already live. Those of ops that completed early stay
    /// in the heap until they pass or the heap is swept, which happens whenever they are
    /// the majority: the heap stays within twice the live ops (plus a little), at
    /// amortised O(1) a push.
    fn push_deadline(&mut self, deadline: Time, seq: u64, id: OpId) {
        self.deadlines.push(Reverse((deadline, seq, id)));
        if self.deadlines.len() > 2 * self.ops.len() + DEADLINE_SLACK {
            let ops = &self.ops;
            self.deadlines
                .retain(|Reverse((_, seq, id))| ops.get(id).is_some_and(|op| op.seq == *seq));
        }
    }

    /// Live ops to `peer` in submission order, for which `doomed` holds.
    pub(crate) fn ops_to_peer(&self, peer: Nid, doomed: impl Fn(&Op) -> bool) -> Vec<OpId> {
        self.ops_to.get(&peer).map_or_else(Vec::new, |to| {
            to.iter()
                .filter(|(_, id)| self.ops.get(id).is_some_and(&doomed))
                .map(|(_, id)| *id)
                .collect()
        })
    }

    fn push_completion(&mut self, op: OpId, result: Result<OpOutcome, OpError>) {
        self.events
            .push_back(Event::Completed(Completion { op, result }));
    }

    /// Whether frames can be sent to `nid`: another node, on a net we have an NI on.
    fn check_reachable(&self, nid: Nid) -> Result<(), OpError> {
        if self.nis.iter().any(|ni| ni.nid == nid) {
            return Err(OpError::Invalid(format!(
                "{nid} is this node; sending to oneself is not supported"
            )));
        }
        match self.ni_of(nid) {
            Some(_) => Ok(()),
            None => Err(OpError::NoRoute(nid)),
        }
    }

    pub(crate) fn ni_of(&self, nid: Nid) -> Option<NiId> {
        self.nis
            .iter()
            .position(|ni| ni.nid.net == nid.net)
            .map(NiId)
    }
}
