//! The node's live operations and what finds them: by id, by message id once their
//! request is out, by the peers they involve, and by deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use crate::lane::Lane;
use crate::memo_map::NidMap;
use crate::nid::Nid;
use crate::op::{GetRequest, MatchEntry, OpId, PingRequest, PutRequest};
use crate::time::Time;

/// Stale deadlines the heap may hold beyond twice the live ops before it is swept.
pub(crate) const DEADLINE_SLACK: usize = 64;

/// Dead entries a peer's index may hold before it is compacted, if they are also at least
/// half of it.
pub(crate) const DEAD_INDEX_SLACK: usize = 32;

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

    /// The payload its request carries: a PUT's; the others carry none.
    pub(crate) fn payload_len(&self) -> usize {
        match self {
            OpKind::Put(r) => r.payload.len(),
            _ => 0,
        }
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

    /// Whether it is still the op submitted as `seq` and involves `peer`, as its target or
    /// its router.
    fn involves(&self, peer: Nid, seq: u64) -> bool {
        self.seq == seq
            && (self.router == Some(peer) || self.target().is_some_and(|(d, _)| d == peer))
    }

    /// The router it goes through, if it is routed.
    pub(crate) fn router(&self) -> Option<Nid> {
        self.router
    }
}

/// The router an op went through before [`Ops::set_via`], and the one it goes through now
/// (the same if it did not change).
pub(crate) struct Routers {
    pub(crate) old: Option<Nid>,
    pub(crate) new: Option<Nid>,
}

/// A request about to go to a driver (see [`Ops::sent`]).
pub(crate) struct SentRequest<'a> {
    pub(crate) op: &'a Op,
    pub(crate) dst: Nid,
    pub(crate) attempt: u32,
    pub(crate) first_src: Nid,
    pub(crate) settled_below: u64,
}

#[derive(Default)]
pub(crate) struct Ops {
    live: FxHashMap<OpId, Op>,
    /// Ops whose request went out, by message id, to match ACK/REPLY/PONG/NACK.
    awaiting: FxHashMap<u64, OpId>,
    /// Live ops by the peers they involve (their target, and the router they go through):
    /// what a peer's failure ends, found without looking at others'. A peer's index stays
    /// when emptied, with room for the ops a peer usually has.
    by_peer: NidMap<PeerOps>,
    deadlines: BinaryHeap<Reverse<(Time, u64, OpId)>>,
    /// The deadline entry at the top of `deadlines` when it is known to be a live op's
    /// (its seq and id), so that asking for the next deadline needs no lookup: set when a
    /// push puts a live op's entry on top or a look finds it live there, cleared when
    /// that op goes or its entry leaves the top.
    live_top: Option<(u64, OpId)>,
    next_seq: u64,
}

impl Ops {
    /// The ops of a node whose life is `incarnation`. Their seqs, which are their request
    /// frames' message ids, start from it: each life numbers its requests from its own
    /// start, so an answer to a life a restart replaced (late, through a router) finds no
    /// op of the new life, where lives all counting from 1 would have it complete one
    /// with another request's answer. Incarnations are the start's wall clock in
    /// nanoseconds: a life would need an op a nanosecond to reach the next one's ids. Kept
    /// below bit 62, so that ids stay clear of health PINGs' bit 63 for 2^62 requests.
    pub(crate) fn new(incarnation: u64) -> Ops {
        Ops {
            next_seq: incarnation & ((1 << 62) - 1),
            ..Ops::default()
        }
    }

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
            self.by_peer
                .entry(dst)
                .or_default()
                .queue
                .push_back((seq, id));
        }
        let old = self.live.insert(id, op);
        // The node checks ids (`check_id`); a live id used again would leave its old op's
        // traces (`live_top` among them) naming an op that is gone.
        debug_assert!(old.is_none(), "{id} inserted while live");
        // After the insert: a sweep this push triggers keeps the deadlines of live ops.
        if let Some(deadline) = deadline {
            self.push_deadline(deadline, seq, id);
        }
    }

    /// Removes a live op and every trace that could find it again.
    pub(crate) fn remove(&mut self, id: OpId) -> Option<Op> {
        let op = self.live.remove(&id)?;
        self.awaiting.remove(&op.seq);
        if self.live_top == Some((op.seq, id)) {
            // Its entry is on top: it goes now, rather than be found dead by the next look.
            self.deadlines.pop();
            self.live_top = None;
        }
        for peer in op.target().map(|(d, _)| d).into_iter().chain(op.router()) {
            self.unindex(peer, (op.seq, id));
        }
        // Queue slots and deadlines are dropped lazily: they no longer find a live op with
        // this seq.
        // Looked at as the count passes each multiple of 1,024 on its way down (not at
        // none left, where a node with one op at a time would look every time): a test
        // every removal pays, cheaper than asking the table its room.
        if self.live.len() % 1024 == 1023 {
            self.room_back_if_idle();
        }
        Some(op)
    }

    #[cold]
    #[inline(never)]
    fn room_back_if_idle(&mut self) {
        if super::room::mostly_idle(self.live.len(), self.live.capacity()) {
            self.give_room_back();
        }
    }

    /// The tables give back the room a burst took (see [`super::room`]), stale deadlines
    /// first, with the live table: they hold as many (the deadlines, awaited answers and
    /// per-peer indexes of live ops) or fewer.
    fn give_room_back(&mut self) {
        let keep = super::room::to_keep(self.live.len());
        self.live.shrink_to(keep);
        self.awaiting.shrink_to(keep);
        let live = &self.live;
        self.deadlines
            .retain(|Reverse((_, seq, id))| live.get(id).is_some_and(|op| op.seq == *seq));
        self.deadlines.shrink_to(keep);
        self.live_top = None;
        // A peer's index, if it is left with a few ops of its burst (its dead entries go
        // first, as a compaction would take them).
        let live = &self.live;
        for (peer, index) in self.by_peer.iter_mut() {
            if index.queue.capacity() > INDEX_CAPACITY_FREED {
                index.queue.retain(|&key| involves(live, *peer, key));
                index.dead = 0;
                index
                    .queue
                    .shrink_to((index.queue.len() * 2).max(INDEX_CAPACITY_KEPT));
            }
        }
    }

    /// Room the tables keep, in ops: the live ops', the answers awaited, the deadlines'.
    #[cfg(test)]
    fn room(&self) -> (usize, usize, usize) {
        (
            self.live.capacity(),
            self.awaiting.capacity(),
            self.deadlines.capacity(),
        )
    }

    /// Removes every live op, in submission order, touching nothing else.
    pub(crate) fn drain(&mut self) -> Vec<OpId> {
        self.by_peer.clear();
        self.awaiting.clear();
        self.deadlines.clear();
        self.live_top = None;
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
    ///
    /// An op never goes back to a router it left: `resend` puts that router in its
    /// `avoid` list before routing it again. The lazy per-peer index relies on it: an op
    /// joining a router's queue again, while its dead entry from before is still there,
    /// would be in it twice.
    ///
    /// Returns the router it went through before and the one it goes through now, if the
    /// op is live.
    pub(crate) fn set_via(&mut self, id: OpId, via: Option<Nid>) -> Option<Routers> {
        let op = self.live.get_mut(&id)?;
        let key = (op.seq, id);
        let old_router = op.router;
        op.via = via;
        op.router = via.filter(|&v| Some(v) != op.target().map(|(d, _)| d));
        let new_router = op.router;
        let routers = Routers {
            old: old_router,
            new: new_router,
        };
        if old_router == new_router {
            return Some(routers); // indexed there already, once
        }
        debug_assert!(
            new_router.is_none_or(|r| !op.avoid.contains(&r)),
            "{id} routed again through {new_router:?}, which it left"
        );
        if let Some(router) = old_router {
            self.unindex(router, key);
        }
        if let Some(router) = new_router {
            self.by_peer.entry(router).or_default().queue.push_back(key);
        }
        Some(routers)
    }

    /// The op `key` no longer involves `peer` (it is gone from `live`, or has another
    /// router): its entry in `peer`'s index is dead (see [`PeerOps`]). Empty indexes stay
    /// (a peer's next op finds one ready) until they are most of the table: then they go,
    /// so that a table per NID ever used cannot grow without bound (amortized O(1) per
    /// op).
    fn unindex(&mut self, peer: Nid, key: (u64, OpId)) {
        if let Some(index) = self.by_peer.get_mut(&peer) {
            index.leave(key, |key| involves(&self.live, peer, key));
        }
        if self.by_peer.len() > 64 + 2 * self.live.len() {
            self.by_peer.retain(|_, index| !index.queue.is_empty());
        }
    }

    /// The request of op `id` goes to a driver from our NID `src`, as message `seq`
    /// (answers find it by that): returns the op, which attempt this is, the source to put
    /// in the frame (the first one it was sent from), and the `settled_below` it carries
    /// to its target. One lookup of the op: it runs for every request sent.
    pub(crate) fn sent(&mut self, id: OpId, src: Nid) -> Option<SentRequest<'_>> {
        let op = self.live.get_mut(&id)?;
        op.stage = Stage::InLnd;
        op.attempts += 1;
        self.awaiting.insert(op.seq, id);
        let first_src = *op.src.get_or_insert(src);
        let (dst, _) = op.target().expect("only ops that send");
        let settled_below = settled_below(&self.by_peer, dst, op.seq);
        Some(SentRequest {
            dst,
            attempt: op.attempts,
            first_src,
            settled_below,
            op,
        })
    }

    /// Back to waiting at a next hop (its request is to be sent again): what the driver
    /// still says about the attempt before is about an attempt that is over. It stays
    /// answerable: a copy sent before may have got through, and its target's answer ends
    /// the op as well as the next copy's would (a NACK names its attempt, and one for
    /// the copy before is not taken).
    pub(crate) fn requeued(&mut self, id: OpId) {
        if let Some(op) = self.live.get_mut(&id) {
            op.stage = Stage::Queued;
            op.attempts += 1;
        }
    }

    /// The op waiting for an answer to message `msg_id`.
    pub(crate) fn answering(&self, msg_id: u64) -> Option<OpId> {
        self.awaiting.get(&msg_id).copied()
    }

    /// See [`settled_below`]; requests carry it from [`Ops::sent`].
    #[cfg(test)]
    pub(crate) fn settled_below(&self, peer: Nid, above: u64) -> u64 {
        settled_below(&self.by_peer, peer, above)
    }

    /// Whether some live op targets `peer` or goes through it.
    pub(crate) fn involve(&self, peer: Nid) -> bool {
        self.by_peer
            .get(&peer)
            .is_some_and(|index| !index.queue.is_empty())
    }

    /// Live ops involving `peer` (as target or router) for which `pick` holds, in
    /// submission order.
    pub(crate) fn of_peer(&self, peer: Nid, pick: impl Fn(&Op) -> bool) -> Vec<OpId> {
        let Some(index) = self.by_peer.get(&peer) else {
            return Vec::new();
        };
        // A router's index is in the order ops were routed through it, and a resent op
        // joins its new router's late: sorted by seq, for submission order.
        let mut ids: Vec<(u64, OpId)> = index
            .queue
            .iter()
            .filter(|&&(seq, id)| {
                self.live
                    .get(&id)
                    .is_some_and(|op| op.involves(peer, seq) && pick(op))
            })
            .copied()
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
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
        // The op is live (the caller inserted it): on top, its entry is the next deadline.
        // Otherwise the top is the entry `live_top` names, if it names one: that entry was
        // the earliest, and a sweep keeps live entries.
        if self.deadlines.peek() == Some(&Reverse((deadline, seq, id))) {
            self.live_top = Some((seq, id));
        }
    }

    /// The earliest deadline of a live op.
    pub(crate) fn next_deadline(&mut self) -> Option<Time> {
        while let Some(Reverse((t, seq, id))) = self.deadlines.peek().copied() {
            if self.live_top == Some((seq, id)) || self.live(id, seq).is_some() {
                self.live_top = Some((seq, id));
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
            self.live_top = None;
            if self.live(id, seq).is_some() {
                return Some(id);
            }
        }
        None
    }

    pub(crate) fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    /// Entries in the per-peer indexes, dead ones included.
    pub(crate) fn indexed(&self) -> usize {
        self.by_peer.values().map(|index| index.queue.len()).sum()
    }
}

/// A message id below which this initiator has settled every request to `peer` (`above`
/// at most): the seq of the oldest live op to `peer`, or lower. Ops to `peer` join its
/// index in seq order, when submitted; an op routed through `peer` joins later than that,
/// so after every op to `peer` with a lower seq. Hence the front (always live) is never
/// above the oldest op to `peer`.
fn settled_below(by_peer: &NidMap<PeerOps>, peer: Nid, above: u64) -> u64 {
    by_peer
        .get(&peer)
        .and_then(|index| index.queue.front())
        .map_or(above, |(seq, _)| (*seq).min(above))
}

/// Whether the op `key` names is live and involves `peer`.
fn involves(live: &FxHashMap<OpId, Op>, peer: Nid, (seq, id): (u64, OpId)) -> bool {
    live.get(&id).is_some_and(|op| op.involves(peer, seq))
}

/// One peer's index: the ops involving it, in the order they came to involve it (for its
/// ops as target, submission order). Ops mostly leave from the front, the oldest first;
/// one that leaves from further in (a router's ops to several targets complete out of its
/// order) stays as a dead entry until it reaches the front, or until the dead are half of
/// the queue and it is compacted: amortized O(1) per op either way, where a B-tree set
/// cost ~100 instructions an insert and as many a removal, per op.
///
/// The front is always live (or the queue empty): every entry that dies is reported to
/// [`PeerOps::leave`] once (see [`Ops::set_via`] for why once), which drops dead entries
/// from the front.
#[derive(Default)]
pub(crate) struct PeerOps {
    queue: VecDeque<(u64, OpId)>,
    /// Entries in `queue` whose op no longer involves the peer.
    dead: usize,
}

/// Room an emptied index keeps when it had grown past [`INDEX_CAPACITY_FREED`]: enough for
/// the ops a peer usually has in flight, without the memory of a rare burst.
const INDEX_CAPACITY_KEPT: usize = 64;
const INDEX_CAPACITY_FREED: usize = 16 * INDEX_CAPACITY_KEPT;

impl PeerOps {
    /// `key`'s op no longer involves the peer; `still_in` tells which others still do.
    fn leave(&mut self, key: (u64, OpId), still_in: impl Fn((u64, OpId)) -> bool) {
        if self.queue.front() != Some(&key) {
            self.dead += 1;
            if self.dead > DEAD_INDEX_SLACK && 2 * self.dead >= self.queue.len() {
                self.queue.retain(|&k| still_in(k));
                self.dead = 0;
            }
            return;
        }
        self.queue.pop_front();
        while self.dead > 0 {
            match self.queue.front() {
                Some(&k) if !still_in(k) => {
                    self.queue.pop_front();
                    self.dead -= 1;
                }
                _ => break,
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > INDEX_CAPACITY_FREED {
            self.queue.shrink_to(INDEX_CAPACITY_KEPT);
        }
    }
}

/// The header's attempt byte for an op whose `attempts` counter (sends and requeues,
/// counted from 1) is `attempt` as it is sent (see [`crate::wire::Header::attempt`]).
pub(crate) fn wire_attempt(attempt: u32) -> u8 {
    attempt.wrapping_sub(1) as u8
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn put_to(dst: Nid) -> OpKind {
        OpKind::Put(PutRequest {
            lane: Lane::Data,
            dst,
            portal: 0,
            match_bits: 0,
            payload: Bytes::new(),
            timeout: None,
            on_peer_down: Default::default(),
            ack: true,
        })
    }

    /// Checks what `peer`'s index says against the live ops that involve it, and that it
    /// holds at most about twice as many entries.
    fn check(ops: &Ops, peer: Nid, mut expected: Vec<(u64, OpId)>) {
        expected.sort_unstable();
        let ids: Vec<OpId> = expected.iter().map(|&(_, id)| id).collect();
        assert_eq!(ops.of_peer(peer, |_| true), ids, "in submission order");
        assert_eq!(ops.involve(peer), !ids.is_empty());
        let held = ops.by_peer.get(&peer).map_or(0, |index| index.queue.len());
        assert!(
            held <= 2 * ids.len() + DEAD_INDEX_SLACK + 1,
            "{held} entries for {} live ops",
            ids.len()
        );
        if let Some(index) = ops.by_peer.get(&peer) {
            let dead = index
                .queue
                .iter()
                .filter(|&&key| !involves(&ops.live, peer, key))
                .count();
            assert_eq!(index.dead, dead, "dead entries counted");
        }
    }

    /// The floor for each target is exactly its lowest live op (they go through routers
    /// only, so nothing else is in their indexes).
    fn check_floors(ops: &Ops, targets: &[Nid]) {
        for &t in targets {
            let lowest = ops
                .live
                .values()
                .filter(|op| op.target().is_some_and(|(d, _)| d == t))
                .map(|op| op.seq)
                .min();
            assert_eq!(ops.settled_below(t, u64::MAX), lowest.unwrap_or(u64::MAX));
            check(
                ops,
                t,
                ops.live
                    .iter()
                    .filter(|(_, op)| op.target().is_some_and(|(d, _)| d == t))
                    .map(|(id, op)| (op.seq, *id))
                    .collect(),
            );
        }
    }

    /// A router's index holds the ops to every target behind it, which end out of its
    /// order, and a resent op joins its new router's index late: the index stays right,
    /// in submission order, and bounded.
    #[test]
    fn a_routers_index_stays_right_and_bounded_when_its_ops_end_out_of_order() {
        let (first, second) = (Nid::mem(100, 0), Nid::mem(101, 0));
        let mut ops = Ops::default();
        let targets: Vec<Nid> = (1..=7).map(|n| Nid::mem(n, 1)).collect();
        let mut via_first = Vec::new();
        for i in 0..1000 {
            let (id, seq) = (OpId(i), ops.take_seq());
            let target = targets[i as usize % 7];
            ops.insert(id, Op::new(seq, put_to(target)), None);
            ops.set_via(id, Some(first));
            via_first.push((seq, id));
        }
        check(&ops, first, via_first.clone());
        // The second router is also a target, before and after ops are routed through it.
        let mut via_second = Vec::new();
        let to_second = |ops: &mut Ops, via_second: &mut Vec<(u64, OpId)>, id: u64| {
            let seq = ops.take_seq();
            ops.insert(OpId(id), Op::new(seq, put_to(second)), None);
            ops.set_via(OpId(id), Some(second));
            via_second.push((seq, OpId(id)));
        };
        for id in 5000..5003 {
            to_second(&mut ops, &mut via_second, id);
        }
        // A tenth go to the second router, newest first: it sees them out of seq order.
        for k in (0..via_first.len()).rev().filter(|k| k % 10 == 3) {
            let key = via_first.remove(k);
            ops.set_via(key.1, Some(second));
            via_second.push(key);
        }
        for id in 5003..5006 {
            to_second(&mut ops, &mut via_second, id);
        }
        check(&ops, first, via_first.clone());
        check(&ops, second, via_second.clone());
        check_floors(&ops, &targets);
        // Every other op of the first router ends, newest first, so that its oldest entry,
        // still live, never lets the dead ones behind it go from the front.
        let mut k = via_first.len();
        while k > 1 {
            k -= 2;
            let (_, id) = via_first.remove(k + 1);
            assert!(ops.remove(id).is_some());
            check(&ops, first, via_first.clone());
        }
        check_floors(&ops, &targets);
        // The rest end oldest first; the second router's from the middle out.
        while let Some((_, id)) = via_first.first().copied() {
            via_first.remove(0);
            ops.remove(id);
            check(&ops, first, via_first.clone());
        }
        while !via_second.is_empty() {
            let (_, id) = via_second.remove(via_second.len() / 2);
            ops.remove(id);
            check(&ops, second, via_second.clone());
            check_floors(&ops, &targets);
            // Its floor as a target is at most its oldest live op as a target.
            let oldest_to_it = via_second
                .iter()
                .filter(|(_, id)| id.0 >= 5000)
                .map(|&(seq, _)| seq)
                .min();
            assert!(ops.settled_below(second, u64::MAX) <= oldest_to_it.unwrap_or(u64::MAX));
        }
        assert_eq!(ops.len(), 0);
        assert_eq!(ops.indexed(), 0, "nothing left behind");
    }

    /// A burst of 50,000 ops, each with a deadline and awaiting its answer, gives its
    /// room back as it ends; what is still live stays findable, by id, by its answer's
    /// message id, and by its deadline.
    #[test]
    fn the_room_a_burst_took_is_given_back() {
        const N: u64 = 50_000;
        let (peer, us) = (Nid::mem(1, 1), Nid::mem(2, 1));
        let mut ops = Ops::default();
        let mut seqs = Vec::new();
        for i in 0..N {
            let seq = ops.take_seq();
            ops.insert(OpId(i), Op::new(seq, put_to(peer)), Some(Time(1_000 + i)));
            assert!(ops.sent(OpId(i), us).is_some());
            seqs.push(seq);
        }
        let (live, awaiting, deadlines) = ops.room();
        assert!(live >= N as usize && awaiting >= N as usize && deadlines >= N as usize);
        // All but the last ten end, newest first, so that the heap's top stays live.
        for i in (10..N).rev() {
            assert!(ops.remove(OpId(i)).is_some());
        }
        let (live, awaiting, deadlines) = ops.room();
        for room in [live, awaiting, deadlines] {
            assert!(
                room <= crate::node::room::KEPT_ANYWAY,
                "{room} ops of room kept for 10 ops"
            );
        }
        let index = ops.by_peer.get(&peer).expect("its index");
        assert!(
            index.queue.capacity() <= crate::node::room::KEPT_ANYWAY,
            "{}",
            index.queue.capacity()
        );
        check(
            &ops,
            peer,
            seqs[..10]
                .iter()
                .zip(0..)
                .map(|(&s, i)| (s, OpId(i)))
                .collect(),
        );
        for i in 0..10 {
            assert_eq!(ops.answering(seqs[i as usize]), Some(OpId(i)));
        }
        assert_eq!(ops.next_deadline(), Some(Time(1_000)));
        assert_eq!(ops.pop_expired(Time(1_009 + N)), Some(OpId(0)));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A new op, with a deadline or none.
        Insert(Option<u64>),
        /// The `k`-th live op (modulo their number) ends.
        Remove(usize),
        /// The node asks when it next needs its timers.
        Next,
        /// Timers run at this time: every expired op ends, as `handle_timeout` ends them.
        Expire(u64),
        /// This many ops come and go with deadlines later than any other, so that their
        /// entries stay in the heap, dead, until a sweep takes them.
        Churn(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => proptest::option::weighted(0.9, 0u64..50).prop_map(Step::Insert),
            2 => any::<usize>().prop_map(Step::Remove),
            3 => Just(Step::Next),
            1 => (0u64..60).prop_map(Step::Expire),
            1 => (1usize..80).prop_map(Step::Churn),
        ]
    }

    proptest! {
        /// Whatever ops come and go, the next deadline is the earliest of the live ops'
        /// (never one of an op that ended, however its entry left the heap: found dead,
        /// taken on removal, or expired), and expiry ends exactly the live ops due, in
        /// deadline order.
        #[test]
        fn the_next_deadline_is_always_the_earliest_live_ones(
            steps in proptest::collection::vec(step(), 1..200)
        ) {
            let mut ops = Ops::default();
            // The live ops with a deadline, as (deadline, seq, id); and those without.
            let mut model: Vec<(u64, u64, OpId)> = Vec::new();
            let mut undated: Vec<OpId> = Vec::new();
            let mut next_id = 0;
            for s in steps {
                match s {
                    Step::Insert(deadline) => {
                        let (id, seq) = (OpId(next_id), ops.take_seq());
                        next_id += 1;
                        ops.insert(id, Op::new(seq, put_to(Nid::mem(1, 1))), deadline.map(Time));
                        match deadline {
                            Some(t) => model.push((t, seq, id)),
                            None => undated.push(id),
                        }
                    }
                    Step::Remove(k) => {
                        let live = model.len() + undated.len();
                        if live == 0 {
                            continue;
                        }
                        let id = if k % live < model.len() {
                            model.remove(k % live).2
                        } else {
                            undated.remove(k % live - model.len())
                        };
                        prop_assert!(ops.remove(id).is_some());
                    }
                    Step::Churn(n) => {
                        for _ in 0..n {
                            let (id, seq) = (OpId(next_id), ops.take_seq());
                            next_id += 1;
                            let op = Op::new(seq, put_to(Nid::mem(1, 1)));
                            ops.insert(id, op, Some(Time(1000)));
                            prop_assert!(ops.remove(id).is_some());
                        }
                        // Swept at a push that left more than twice the live ops (the
                        // churned one among them) and the slack: never more than that.
                        prop_assert!(ops.deadline_count() <= 2 * (ops.len() + 1) + DEADLINE_SLACK);
                    }
                    Step::Next => {
                        let want = model.iter().map(|&(t, _, _)| Time(t)).min();
                        prop_assert_eq!(ops.next_deadline(), want);
                    }
                    Step::Expire(now) => {
                        let mut due: Vec<(u64, u64, OpId)> =
                            model.iter().copied().filter(|&(t, _, _)| t <= now).collect();
                        due.sort_unstable();
                        let mut ended = Vec::new();
                        while let Some(id) = ops.pop_expired(Time(now)) {
                            prop_assert!(ops.remove(id).is_some());
                            ended.push(id);
                        }
                        prop_assert_eq!(ended, due.iter().map(|&(_, _, id)| id).collect::<Vec<_>>());
                        model.retain(|&(t, _, _)| t > now);
                    }
                }
                prop_assert_eq!(ops.len(), model.len() + undated.len());
            }
        }
    }
}
