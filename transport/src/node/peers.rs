//! The two kinds of peer state.
//!
//! * A [`Hop`] is a node on one of our nets that we keep connections with: a next hop. It
//!   has connections per lane, their credits, and the frames waiting for them. Every
//!   frame leaves through a hop: its target itself, or a router towards it.
//! * An [`End`] is the far end of our operations (or of the requests we answer): its
//!   incarnation and our live operations to it. A remote end, behind routers, has no
//!   connections; a neighbour is both an end and a hop.
//!
//! Health verdicts and interest live in the [`crate::health::Monitor`], by NID, for both.

use std::collections::VecDeque;

use bytes::Bytes;

use super::NiId;
use crate::credits::LaneCredits;
use crate::handshake::PeerHello;
use crate::lane::{Lane, PerLane};
use crate::nid::Nid;
use crate::op::OpId;
use crate::time::Time;
use crate::wire::{Body, Header};

/// Connection state of one lane of a hop, as the core sees it.
#[derive(Debug)]
pub(crate) enum Conn {
    Down,
    Connecting,
    Up {
        credits: LaneCredits,
        /// What the hop said when this connection came up (its credits, largest payload).
        hello: PeerHello,
        /// Names this connection among all the node had: a credit held for a frame that
        /// came on an older one is not given back on this one.
        serial: u64,
    },
}

/// A frame waiting at a hop lane for a credit.
pub(crate) enum Pending {
    /// An operation's request (PUT, GET, PING); `seq` tells a live op from a reused id.
    Op { id: OpId, seq: u64 },
    /// The health monitor's PING to `dst` (this hop, or an end behind it); not an operation.
    HealthPing { dst: Nid, seq: u64 },
    /// A frame passing through this node (it is a router).
    Forward(Box<Forward>),
    /// This router's status, pushed to the hop (it uses this router).
    Status,
}

/// A frame being forwarded: as it arrived, and where its upstream credit is held.
pub(crate) struct Forward {
    pub(crate) header: Header,
    pub(crate) payload: Bytes,
    /// The hop, lane and connection it came on, whose credit it holds until it leaves.
    pub(crate) upstream: Upstream,
}

/// What a frame passing through holds until it leaves: its credit on the connection it
/// came by, and a buffer of the router's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub(crate) hop: Nid,
    pub(crate) lane: Lane,
    pub(crate) serial: u64,
    /// The buffer it holds; none for an answer (see `forward`).
    pub(crate) pool: Option<super::pools::PoolKind>,
}

/// An answer (ACK, REPLY, PONG, NACK) owed to the initiator `dst` of a request, waiting at
/// a hop lane for a credit.
pub(crate) struct Response {
    /// Which of our NIDs answers: the one the request was addressed to (or, for a NACK,
    /// ours on the net it leaves by).
    pub(crate) src: Nid,
    pub(crate) dst: Nid,
    pub(crate) body: Body,
    pub(crate) msg_id: u64,
    pub(crate) payload: Bytes,
    /// Times it went another way because its hop could not be reached.
    pub(crate) reroutes: u8,
    /// A NACK's: the refused copy's attempt byte (0 in other answers).
    pub(crate) attempt: u8,
}

pub(crate) struct HopLane {
    pub(crate) conn: Conn,
    /// In the order they came: our requests, and every frame passing through (answers
    /// among them: a router keeps the order it was given).
    pub(crate) queue: VecDeque<Pending>,
    /// Our own answers. They leave before the queue: those operations are already under
    /// way, and answering them is what bounds this queue.
    pub(crate) answers: VecDeque<Response>,
    /// Ops that left `queue` (ended, or went another way) since it was last compacted:
    /// their entries are dead. A hint (the pump drops dead entries it meets without
    /// counting them), enough to compact when they may be half the queue.
    pub(crate) left: usize,
    /// A CREDIT frame is in the driver for the connection of this serial: no other is
    /// sent until it is out, so a peer that never reads cannot pile them up (what is
    /// owed meanwhile goes with the next frame, or the next CREDIT).
    pub(crate) credit_frame_out: Option<u64>,
    /// When the lane last moved: a frame left `queue` or `answers` for the driver, or
    /// they began to hold something. Up, with frames waiting, and not moved for the
    /// forward patience, it takes nothing (see `forward::refuse_stalled`).
    pub(crate) moved_at: Time,
    /// When the frames passing through that wait in `queue` are next looked at, for the
    /// lane having stopped; none while none waits.
    pub(crate) stall_check: Option<Time>,
}

impl HopLane {
    /// Whether this lane's connection owes a CREDIT frame now: it is up, owes at least the
    /// high-water mark, and has none of ours in the driver already. Answers that have a
    /// hop credit wait only for our driver (an NI credit); the first to leave carries
    /// what we owe, and returning it now would let the peer pile more requests behind
    /// them. With no hop credit, though, the peer may be waiting for ours to answer us:
    /// then the CREDIT frame must go, or both sides could wait forever.
    pub(crate) fn credit_frame_due(&self) -> bool {
        let Conn::Up {
            credits, serial, ..
        } = &self.conn
        else {
            return false;
        };
        let answers_will_carry_them = !self.answers.is_empty() && credits.available() > 0;
        credits.wants_credit_frame()
            && self.credit_frame_out != Some(*serial)
            && !answers_will_carry_them
    }

    /// Whether nothing waits here: no answer, no queue entry, not even a dead one.
    pub(crate) fn holds_nothing(&self) -> bool {
        self.answers.is_empty() && self.queue.is_empty() && self.left == 0
    }

    /// Whether a pump would find nothing to do: nothing waits, and no CREDIT frame is
    /// owed. (A lane that is down with nothing queued asks for no connection either.)
    pub(crate) fn has_nothing_to_do(&self) -> bool {
        self.holds_nothing() && !self.credit_frame_due()
    }

    /// Whether the ops that left `queue` may be half of it: then it is compacted.
    pub(crate) fn compaction_due(&self) -> bool {
        self.left > 0 && self.left * 2 >= self.queue.len()
    }

    /// A frame is about to wait here: if nothing did, the lane's wait starts now.
    pub(crate) fn begins_to_wait(&mut self, now: Time) {
        if self.queue.is_empty() && self.answers.is_empty() {
            self.moved_at = now;
        }
    }

    /// Whether the lane is up, frames wait in it, and none has left for `patience`: its
    /// hop takes nothing (a lane still connecting is not judged: its connect has a
    /// deadline of its own).
    pub(crate) fn stopped_for(&self, now: Time, patience: std::time::Duration) -> bool {
        matches!(self.conn, Conn::Up { .. })
            && !(self.queue.is_empty() && self.answers.is_empty())
            && now.saturating_since(self.moved_at) >= patience
    }

    /// Takes the frames passing through out of the queue, leaving the rest in order.
    pub(crate) fn take_forwards(&mut self) -> Vec<Forward> {
        self.take_forwards_where(|_| true)
    }

    /// Takes the frames passing through that `pick` picks out of the queue, leaving the
    /// rest in order.
    pub(crate) fn take_forwards_where(&mut self, pick: impl Fn(&Forward) -> bool) -> Vec<Forward> {
        if !self
            .queue
            .iter()
            .any(|p| matches!(p, Pending::Forward(f) if pick(f)))
        {
            return Vec::new();
        }
        let mut forwards = Vec::new();
        let queued = std::mem::take(&mut self.queue);
        for p in queued {
            match p {
                Pending::Forward(f) if pick(&f) => forwards.push(*f),
                other => self.queue.push_back(other),
            }
        }
        forwards
    }
}

pub(crate) struct Hop {
    pub(crate) ni: NiId,
    pub(crate) lanes: PerLane<HopLane>,
    /// A connection to it just failed: as a gateway, it is not chosen before then.
    pub(crate) unreachable_until: Option<Time>,
}

impl Hop {
    pub(crate) fn new(ni: NiId) -> Hop {
        let lane = || HopLane {
            conn: Conn::Down,
            queue: VecDeque::new(),
            answers: VecDeque::new(),
            left: 0,
            credit_frame_out: None,
            moved_at: Time::ZERO,
            stall_check: None,
        };
        Hop {
            ni,
            lanes: PerLane::new(lane(), lane()),
            unreachable_until: None,
        }
    }

    /// Frames waiting for this hop, over both lanes (a load measure for route choice).
    pub(crate) fn queued(&self) -> usize {
        Lane::ALL
            .iter()
            .map(|&l| self.lanes[l].queue.len() + self.lanes[l].answers.len())
            .sum()
    }
}

/// Earlier lives remembered per far end (and per initiator, in dedup): a node restarting
/// over and over while a frame of an old life is still on its way.
pub(crate) const EARLIER_LIVES: usize = 4;

/// Adds `old` to `lives`, a node's replaced incarnations (the latest last), keeping the
/// latest [`EARLIER_LIVES`].
pub(crate) fn remember_earlier_life(lives: &mut Vec<u64>, old: u64) {
    if lives.len() == EARLIER_LIVES {
        lives.remove(0);
    }
    lives.push(old);
}

#[derive(Default)]
pub(crate) struct End {
    /// Its incarnation, as last seen (in a HELLO, or in the frames it starts).
    pub(crate) incarnation: Option<u64>,
    /// The incarnations its current one replaced, the latest last (at most
    /// [`EARLIER_LIVES`]): frames of those lives, late through a router, are dropped
    /// rather than taken for another restart. (Not those replaced in doubt.)
    pub(crate) earlier_lives: Vec<u64>,
    /// When its current incarnation was last seen (see [`End::incarnation`]).
    pub(crate) incarnation_seen_at: Time,
    /// A life of it was taken in doubt (see `Node::routed_life`): from then on, its
    /// lives replace one another without one being taken for replaced, until a HELLO of
    /// its own says which it is.
    pub(crate) in_doubt: bool,
    /// Its incarnation when it was declared Down: a return with another is a restart.
    pub(crate) down_incarnation: Option<Option<u64>>,
}
