//! The node's live operations and what finds them: by id, by message id once their
//! request is out, by the peers they involve, and by deadline.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use rustc_hash::FxHashMap;

use crate::lane::Lane;
use crate::nid::Nid;
use crate::op::{GetRequest, MatchEntry, OpId, PingRequest, PutRequest};
use crate::time::Time;

/// Stale deadlines the heap may hold beyond twice the live ops before it is swept.
pub(crate) const DEADLINE_SLACK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Waiting at its next hop for a connection or credits.
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
    /// The next hop its request waits at or went through: its target, or a router.
    /// Set only by [`Ops::set_via`], which keeps `router` with it.
    pub(crate) via: Option<Nid>,
    /// `via` when that is not the target: kept, not derived, as it is asked several times
    /// per operation.
    router: Option<Nid>,
    /// Our gateways its request went through when it was refused (NACK) or they failed:
    /// not tried again for it.
    pub(crate) avoid: Vec<Nid>,
    /// Times its request was handed to a driver or taken back to be sent again: a send
    /// completion for an earlier attempt says nothing about the current one.
    pub(crate) attempts: u32,
    /// The NID its request first left from. Every copy carries the same source, even one
    /// resent by a gateway on another of our nets: the target knows an initiator by it,
    /// and must see a copy as one.
    pub(crate) src: Option<Nid>,
    /// Times it was sent again because its router failed with it in flight.
    pub(crate) failure_resends: u8,
}

impl OpKind {
    /// A PUT without ACK: once it may have left, it is never sent again (nothing at the
    /// target would tell a copy from it), and nothing answers it.
    pub(crate) fn unanswered(&self) -> bool {
        matches!(self, OpKind::Put(r) if !r.ack)
    }
}

impl Op {
    pub(crate) fn new(seq: u64, kind: OpKind) -> Op {
        Op {
            seq,
            kind,
            stage: Stage::Queued,
            reserved: false,
            via: None,
            router: None,
            avoid: Vec::new(),
            attempts: 0,
            src: None,
            failure_resends: 0,
        }
    }

    /// The final target and lane of an op that sends something.
    pub(crate) fn target(&self) -> Option<(Nid, Lane)> {
        match &self.kind {
            OpKind::Put(r) => Some((r.dst, r.lane)),
            OpKind::Get(r) => Some((r.dst, r.lane)),
            OpKind::Ping { req, .. } => Some((req.dst, req.lane)),
            OpKind::Entry(_) => None,
        }
    }

    /// The router it goes through, if it is routed.
    pub(crate) fn router(&self) -> Option<Nid> {
        self.router
    }
}

#[derive(Default)]
pub(crate) struct Ops {
    live: FxHashMap<OpId, Op>,
    /// Ops whose request went out, by message id, to match ACK/REPLY/PONG/NACK.
    awaiting: FxHashMap<u64, OpId>,
    /// Live ops by the peers they involve (their target, and the router they go through),
    /// in submission order: what a peer's failure ends, found without looking at others'.
    /// A peer's set stays when emptied, so the next op to it allocates nothing.
    by_peer: FxHashMap<Nid, BTreeSet<(u64, OpId)>>,
    deadlines: BinaryHeap<Reverse<(Time, u64, OpId)>>,
    next_seq: u64,
}

impl Ops {
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(crate) fn contains(&self, id: OpId) -> bool {
        self.live.contains_key(&id)
    }

    pub(crate) fn get(&self, id: OpId) -> Option<&Op> {
        self.live.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: OpId) -> Option<&mut Op> {
        self.live.get_mut(&id)
    }

    /// The op `id`, if it is still the one submitted as `seq` (not completed, not reused).
    pub(crate) fn live(&self, id: OpId, seq: u64) -> Option<&Op> {
        self.live.get(&id).filter(|op| op.seq == seq)
    }

    /// Adds a live op; `deadline` if it has one (entries do not).
    pub(crate) fn insert(&mut self, id: OpId, op: Op, deadline: Option<Time>) {
        let seq = op.seq;
        if let Some((dst, _)) = op.target() {
            self.by_peer.entry(dst).or_default().insert((seq, id));
        }
        self.live.insert(id, op);
        // After the insert: a sweep this push triggers keeps the deadlines of live ops.
        if let Some(deadline) = deadline {
            self.push_deadline(deadline, seq, id);
        }
    }

    /// Removes a live op and every trace that could find it again.
    pub(crate) fn remove(&mut self, id: OpId) -> Option<Op> {
        let op = self.live.remove(&id)?;
        self.awaiting.remove(&op.seq);
        for peer in op.target().map(|(d, _)| d).into_iter().chain(op.router()) {
            self.unindex(peer, (op.seq, id));
        }
        // Queue slots and deadlines are dropped lazily: they no longer find a live op with
        // this seq.
        Some(op)
    }

    /// Removes every live op, in submission order, touching nothing else.
    pub(crate) fn drain(&mut self) -> Vec<OpId> {
        self.by_peer.clear();
        self.awaiting.clear();
        self.deadlines.clear();
        let mut live: Vec<(u64, OpId)> = self.live.drain().map(|(id, op)| (op.seq, id)).collect();
        live.sort_unstable();
        live.into_iter().map(|(_, id)| id).collect()
    }

    /// Every live op, in submission order.
    pub(crate) fn ids(&self) -> Vec<OpId> {
        let mut live: Vec<(u64, OpId)> = self.live.iter().map(|(id, op)| (op.seq, *id)).collect();
        live.sort_unstable();
        live.into_iter().map(|(_, id)| id).collect()
    }

    /// Sets the next hop of op `id`, indexing it under a router.
    pub(crate) fn set_via(&mut self, id: OpId, via: Option<Nid>) {
        let Some(op) = self.live.get_mut(&id) else {
            return;
        };
        let key = (op.seq, id);
        let old_router = op.router;
        op.via = via;
        op.router = via.filter(|&v| Some(v) != op.target().map(|(d, _)| d));
        let new_router = op.router;
        if let Some(router) = old_router {
            self.unindex(router, key);
        }
        if let Some(router) = new_router {
            self.by_peer.entry(router).or_default().insert(key);
        }
    }

    /// Removes `key` from `peer`'s index. Empty indexes stay (a peer's next op reuses
    /// its allocation) until they are most of the table: then they go, so that a table
    /// per NID ever used cannot grow without bound (amortized O(1) per op).
    fn unindex(&mut self, peer: Nid, key: (u64, OpId)) {
        if let Some(set) = self.by_peer.get_mut(&peer) {
            set.remove(&key);
        }
        if self.by_peer.len() > 64 + 2 * self.live.len() {
            self.by_peer.retain(|_, set| !set.is_empty());
        }
    }

    /// The request of op `id` goes to a driver from our NID `src`, as message `seq`
    /// (answers find it by that); returns which attempt this is, and the source to put
    /// in the frame (the first one it was sent from).
    pub(crate) fn sent(&mut self, id: OpId, src: Nid) -> (u32, Nid) {
        let Some(op) = self.live.get_mut(&id) else {
            return (0, src);
        };
        op.stage = Stage::InLnd;
        op.attempts += 1;
        self.awaiting.insert(op.seq, id);
        (op.attempts, *op.src.get_or_insert(src))
    }

    /// Back to waiting at a next hop (its request is to be sent again): what the driver
    /// still says about the attempt before is about an attempt that is over.
    pub(crate) fn requeued(&mut self, id: OpId) {
        if let Some(op) = self.live.get_mut(&id) {
            op.stage = Stage::Queued;
            op.attempts += 1;
            self.awaiting.remove(&op.seq);
        }
    }

    /// The op waiting for an answer to message `msg_id`.
    pub(crate) fn answering(&self, msg_id: u64) -> Option<OpId> {
        self.awaiting.get(&msg_id).copied()
    }

    /// The lowest message id of a live op involving `peer` (`above` if none is lower): an
    /// initiator has settled every request to `peer` below it.
    pub(crate) fn settled_below(&self, peer: Nid, above: u64) -> u64 {
        self.by_peer
            .get(&peer)
            .and_then(|set| set.first())
            .map_or(above, |(seq, _)| (*seq).min(above))
    }

    /// Whether some live op targets `peer` or goes through it.
    pub(crate) fn involve(&self, peer: Nid) -> bool {
        self.by_peer.get(&peer).is_some_and(|set| !set.is_empty())
    }

    /// Live ops involving `peer` (as target or router) for which `pick` holds, in
    /// submission order.
    pub(crate) fn of_peer(&self, peer: Nid, pick: impl Fn(&Op) -> bool) -> Vec<OpId> {
        self.by_peer.get(&peer).map_or_else(Vec::new, |set| {
            set.iter()
                .filter(|(_, id)| self.live.get(id).is_some_and(&pick))
                .map(|(_, id)| *id)
                .collect()
        })
    }

    /// Books the deadline of op `id`, already live. Those of ops that completed early stay
    /// in the heap until they pass or the heap is swept, which happens whenever they are
    /// the majority: the heap stays within twice the live ops (plus a little), at
    /// amortised O(1) a push.
    fn push_deadline(&mut self, deadline: Time, seq: u64, id: OpId) {
        self.deadlines.push(Reverse((deadline, seq, id)));
        if self.deadlines.len() > 2 * self.live.len() + DEADLINE_SLACK {
            let live = &self.live;
            self.deadlines
                .retain(|Reverse((_, seq, id))| live.get(id).is_some_and(|op| op.seq == *seq));
        }
    }

    /// The earliest deadline of a live op.
    pub(crate) fn next_deadline(&mut self) -> Option<Time> {
        while let Some(Reverse((t, seq, id))) = self.deadlines.peek().copied() {
            if self.live(id, seq).is_some() {
                return Some(t);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The next live op whose deadline is at or before `now`, taken off the heap.
    pub(crate) fn pop_expired(&mut self, now: Time) -> Option<OpId> {
        while let Some(Reverse((t, seq, id))) = self.deadlines.peek().copied() {
            if t > now {
                return None;
            }
            self.deadlines.pop();
            if self.live(id, seq).is_some() {
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    pub(crate) fn indexed(&self) -> usize {
        self.by_peer.values().map(BTreeSet::len).sum()
    }
}
