//! Hop-lane queues and the credits that let frames go: a frame leaves at once when its
//! hop lane's credits allow and nothing waits before it; else it waits in the lane's queue
//! (our answers in their own, ahead of requests) for the pump, which sends as credits come
//! back, asks for the connection, and returns owed credits in CREDIT frames. Frames are
//! built and handed to the drivers in `tx`.

use bytes::Bytes;

use super::peers::{Conn, Hop, HopLane, Pending, Response};
use super::tx::Outgoing;
use super::{LndRequest, NiId, Node};
use crate::credits::NiCredits;
use crate::lane::Lane;
use crate::nid::Nid;
use crate::op::OpError;
use crate::wire::{Body, HeaderCheck, NackReason};

/// The payload length of a frame queued at `hop`, if it still needs sending from there:
/// an op's request only while the op waits at that hop (it may have ended, or gone
/// another way).
fn live_payload_len(ops: &super::ops::Ops, hop: Nid, p: &Pending) -> Option<usize> {
    match p {
        Pending::Op { id, seq } => ops
            .live(*id, *seq)
            .filter(|op| op.stage == super::Stage::Queued && op.via == Some(hop))
            .map(|op| op.kind.payload_len()),
        Pending::Forward(f) => Some(f.payload.len()),
        Pending::HealthPing { .. } | Pending::Status => Some(0),
    }
}

impl Node {
    /// Sends a frame on (hop, lane) at once if it may leave now (see
    /// [`Node::spend_credits_to_send_now`]), else queues it there for the pump. The hop is
    /// on one of our nets (`next_hop` chose it).
    pub(super) fn send_or_queue(&mut self, hop: Nid, lane: Lane, pending: Pending) {
        let len = live_payload_len(&self.ops, hop, &pending);
        self.send_or_queue_with_len(hop, lane, pending, len)
    }

    /// [`Node::send_or_queue`] given what `live_payload_len` would say of the frame, as the
    /// caller knows it: its payload's length while it is still to be sent from `hop`, and
    /// `None` once not (the pump's to drop).
    pub(super) fn send_or_queue_with_len(
        &mut self,
        hop: Nid,
        lane: Lane,
        pending: Pending,
        len: Option<usize>,
    ) {
        debug_assert_eq!(len, live_payload_len(&self.ops, hop, &pending));
        let Some(ni) = self.ni_of(hop) else {
            // Its NI went down meanwhile (a status push, say): nothing to send it on.
            tracing::debug!(%hop, "not queued: no NI up on its net");
            match pending {
                Pending::Op { id, .. } => self.complete(id, Err(OpError::NoRoute(hop))),
                Pending::Forward(f) => self.refuse_forward(*f, NackReason::NextHopDown),
                Pending::HealthPing { .. } | Pending::Status => {}
            }
            return;
        };
        // A request that is no longer to be sent is the pump's to drop.
        if let Some(len) = len {
            if let Some((ni, returned, check, _)) =
                self.spend_credits_to_send_now(hop, lane, Passes::Nothing, len)
            {
                let out = self.outgoing(ni, hop, pending);
                self.emit(ni, hop, lane, out, returned, true, check);
                return;
            }
        }
        let now = self.clock.unwrap_or_default();
        let patience = self.cfg.forward_patience;
        let hl = &mut self.hops.entry(hop).or_insert_with(|| Hop::new(ni)).lanes[lane];
        let forward = matches!(pending, Pending::Forward(_));
        if forward && hl.stopped_for(now, patience) {
            // Nothing has left for it in the forward patience: no use waiting.
            if let Pending::Forward(f) = pending {
                self.stats.forwards_stalled += 1;
                self.refuse_forward(*f, NackReason::NextHopStalled);
            }
            return;
        }
        hl.begins_to_wait(now);
        hl.queue.push_back(pending);
        if forward {
            self.forward_queued(hop, lane, now);
        }
        self.pump_busy(hop, lane);
    }

    /// An op queued at (hop, lane) ended or went another way: its entry there is dead.
    /// Dead entries go once they may be half the queue, so that ops to a hop that never
    /// comes back cannot pile up dead entries without bound (amortized O(1) per op).
    pub(super) fn left_queue(&mut self, hop: Nid, lane: Lane) {
        let Some(h) = self.hops.get_mut(&hop) else {
            return;
        };
        h.lanes[lane].left += 1;
        self.compact_if_due(hop, lane);
    }

    /// Drops the dead entries of the (hop, lane) queue once they may be half of it.
    fn compact_if_due(&mut self, hop: Nid, lane: Lane) {
        if self
            .hops
            .get(&hop)
            .is_some_and(|h| h.lanes[lane].compaction_due())
        {
            self.compact(hop, lane);
        }
    }

    /// Drops the dead entries of the (hop, lane) queue, keeping the rest in order.
    fn compact(&mut self, hop: Nid, lane: Lane) {
        let Some(hl) = self.hops.get_mut(&hop).map(|h| &mut h.lanes[lane]) else {
            return;
        };
        let queue = std::mem::take(&mut hl.queue);
        let kept = queue.into_iter().filter(|p| self.is_live(hop, p)).collect();
        let hl = &mut self.hops.get_mut(&hop).expect("hop").lanes[lane];
        hl.queue = kept;
        hl.left = 0;
    }

    /// Whether a frame queued at `hop` still needs sending from there: an op's request
    /// only while the op waits at that hop (it may have ended, or gone another way).
    pub(super) fn is_live(&self, hop: Nid, p: &Pending) -> bool {
        live_payload_len(&self.ops, hop, p).is_some()
    }

    /// Sends answers, then the head of (hop, lane)'s queue, while the lane is up and both
    /// the hop credit and the NI credit allow; asks for a connection if the lane is down;
    /// returns owed credits in a CREDIT frame if nothing else carried them.
    ///
    /// Runs for every frame received and every credit freed, and most of those leave
    /// nothing to send: it looks first (one lookup), and only then sends.
    pub(super) fn pump(&mut self, nid: Nid, lane: Lane) {
        // Most frames received leave nothing to send: that look is kept apart from the
        // sending, whose set-up costs more than the look.
        if self
            .hops
            .get(&nid)
            .is_some_and(|hop| !hop.lanes[lane].has_nothing_to_do())
        {
            self.pump_busy(nid, lane);
        }
    }

    /// Sends our answer `r` on (hop, lane) at once if it may leave now (see
    /// [`Node::spend_credits_to_send_now`]), else queues it for the pump. The caller has
    /// made the hop's entry and checked the lane's bound on waiting answers.
    pub(super) fn send_or_queue_answer(&mut self, hop: Nid, lane: Lane, r: Response) {
        if let Some((ni, returned, check, hop_max)) =
            self.spend_credits_to_send_now(hop, lane, Passes::Queue, 0)
        {
            let out = self.answer_out(r, hop_max);
            self.emit(ni, hop, lane, out, returned, true, check);
            return;
        }
        let now = self.clock.unwrap_or_default();
        let hl = self.hop_lane(hop, lane);
        hl.begins_to_wait(now);
        hl.answers.push_back(r);
        self.pump_busy(hop, lane);
    }

    /// Whether a frame of `len` payload bytes may leave (hop, lane) now, as the pump would
    /// send it once it reached it: nothing waits there that it may not pass (an answer
    /// passes the queue, not other answers; a request passes nothing), the
    /// connection is up, the frame is not too large for the hop, and a hop credit and an
    /// NI credit are free. If so, spends both credits, takes the credits owed to the hop,
    /// and returns what the frame must then be sent with ([`Node::emit`]): the NI, the
    /// credits it carries back, its header's check; and the largest payload the hop takes.
    /// Most frames leave so, and skip the queue. `None`: it is to be queued (and if only
    /// the NI credit was short, the hop now waits for one, as the pump would make it).
    fn spend_credits_to_send_now(
        &mut self,
        hop: Nid,
        lane: Lane,
        passes: Passes,
        len: usize,
    ) -> Option<(NiId, u16, HeaderCheck, u32)> {
        let h = self.hops.get_mut(&hop)?;
        let ni = h.ni;
        let hl = &mut h.lanes[lane];
        let nothing_before =
            hl.answers.is_empty() && (passes == Passes::Queue || hl.queue.is_empty());
        let Conn::Up { hello, .. } = &hl.conn else {
            return None;
        };
        let (peer_max, check) = (lane_max(lane, hello), hello.header_check);
        // One too large for the hop is the pump's to refuse.
        if !nothing_before || len > peer_max as usize {
            return None;
        }
        let returned = take_send_credits(&mut self.nis[ni.0].credits[lane], hop, hl)?;
        if passes == Passes::Queue && !hl.queue.is_empty() {
            // An answer leaving past the queue: the lane moves, as when the pump sends one
            // (see `forward::refuse_stalled`).
            hl.moved_at = self.clock.unwrap_or_default();
        }
        Some((ni, returned, check, peer_max))
    }

    /// [`Node::pump`] for a hop lane that has something queued, owes a CREDIT frame, or
    /// has dead queue entries to drop. Looks the hop up once per frame, and the queue's
    /// front op once.
    fn pump_busy(&mut self, nid: Nid, lane: Lane) {
        let credit_frame_due = loop {
            let Some(hop) = self.hops.get_mut(&nid) else {
                return;
            };
            let ni = hop.ni;
            let hl = &mut hop.lanes[lane];
            // What left the queue (or was dropped from it, as when its connection went)
            // may leave only dead entries behind: they would wait for nothing. Checked
            // here, at no cost of its own, after every frame the pump takes.
            if hl.compaction_due() {
                self.compact(nid, lane);
                continue;
            }
            let answer_first = !hl.answers.is_empty();
            // The front's payload length if it is to be sent (answers: no limit applies).
            let front = if answer_first {
                Some(Some(0))
            } else {
                hl.queue
                    .front()
                    .map(|p| live_payload_len(&self.ops, nid, p))
            };
            let (peer_max, check) = match &hl.conn {
                Conn::Up { hello, .. } => (lane_max(lane, hello), hello.header_check),
                Conn::Connecting => return,
                Conn::Down => {
                    let wanted = answer_first
                        || hl
                            .queue
                            .iter()
                            .any(|p| live_payload_len(&self.ops, nid, p).is_some());
                    if wanted {
                        hl.conn = Conn::Connecting;
                        self.out
                            .requests
                            .push_back((ni, LndRequest::Connect { peer: nid, lane }));
                    }
                    return;
                }
            };
            let len = match front {
                None => break hl.credit_frame_due(),
                Some(None) => {
                    hl.queue.pop_front();
                    continue;
                }
                Some(Some(len)) => len,
            };
            // A request too large for the hop would only make it close the connection.
            if len > peer_max as usize {
                let p = hl.queue.pop_front().expect("front");
                self.too_large(p, nid, len, peer_max);
                continue;
            }
            let Some(returned) = take_send_credits(&mut self.nis[ni.0].credits[lane], nid, hl)
            else {
                break hl.credit_frame_due();
            };
            let next = if answer_first {
                hl.answers.pop_front().map(Next::Answer)
            } else {
                hl.queue.pop_front().map(Next::Pending)
            };
            // It moves (see `forward::refuse_stalled`).
            hl.moved_at = self.clock.unwrap_or_default();
            // Nothing left behind it: what the next look would find is known now, and
            // sending changes nothing of the hop's (one lookup fewer per frame).
            let drained = hl.holds_nothing().then(|| hl.credit_frame_due());
            let out = match next.expect("front checked") {
                Next::Answer(r) => self.answer_out(r, peer_max),
                Next::Pending(pending) => self.outgoing(ni, nid, pending),
            };
            self.emit(ni, nid, lane, out, returned, true, check);
            if let Some(due) = drained {
                debug_assert_eq!(
                    self.hops
                        .get(&nid)
                        .map(|h| h.lanes[lane].credit_frame_due()),
                    Some(due),
                    "sending changed the hop lane"
                );
                break due;
            }
        };
        if credit_frame_due {
            self.return_credits_if_owed(nid, lane);
        }
    }

    pub(super) fn hop_lane(&mut self, nid: Nid, lane: Lane) -> &mut HopLane {
        &mut self.hops.get_mut(&nid).expect("hop").lanes[lane]
    }

    /// A request larger than the next hop takes: ours fails, a forwarded one is refused.
    fn too_large(&mut self, p: Pending, hop: Nid, len: usize, max: u32) {
        match p {
            Pending::Op { id, .. } => self.complete(
                id,
                Err(OpError::Remote(format!(
                    "payload of {len} bytes exceeds {hop}'s limit of {max}"
                ))),
            ),
            Pending::Forward(mut f) if matches!(f.header.body, Body::Reply { .. }) => {
                // An answer (nobody resends those): passed on without its payload,
                // aborted, so that its GET fails with a clear error, not at its deadline.
                // (Its target matched it already: this is a router's limit it could not
                // see.) Logged at the first and at every power of two.
                self.stats.replies_aborted += 1;
                if self.stats.replies_aborted.is_power_of_two() {
                    let n = self.stats.replies_aborted;
                    tracing::warn!(%hop, len, max, n, "a REPLY passing through goes aborted: too large for its next hop");
                }
                f.header.body = Body::Reply {
                    status: crate::wire::Status::Aborted,
                };
                f.header.payload_len = 0;
                f.payload = Bytes::new();
                let lane = f.header.lane;
                self.hop_lane(hop, lane)
                    .queue
                    .push_front(Pending::Forward(f));
            }
            Pending::Forward(f) => self.refuse_forward(*f, NackReason::OutOfBuffers),
            Pending::HealthPing { .. } | Pending::Status => {}
        }
    }

    /// Sends a CREDIT frame if (hop, lane) owes at least the high-water mark. CREDIT frames
    /// spend neither a hop credit nor an NI credit: they must always get through.
    fn return_credits_if_owed(&mut self, nid: Nid, lane: Lane) {
        let Some(hop) = self.hops.get_mut(&nid) else {
            return;
        };
        let ni = hop.ni;
        let hl = &mut hop.lanes[lane];
        if !hl.credit_frame_due() {
            return;
        }
        let Conn::Up {
            credits,
            serial,
            hello,
        } = &mut hl.conn
        else {
            return;
        };
        let (serial, check) = (*serial, hello.header_check);
        let returned = credits.take_owed();
        hl.credit_frame_out = Some(serial);
        self.stats.credit_frames_sent += 1;
        let out = Outgoing {
            src: self.nis[ni.0].nid,
            dst: nid,
            src_incarnation: self.cfg.incarnation,
            hop_limit: 0,
            body: Body::Credit,
            msg_id: 0,
            payload: Bytes::new(),
            op: None,
            upstream: None,
            attempt: 0,
        };
        let token = self.emit(ni, nid, lane, out, returned, false, check);
        if let Some(rec) = self.out.in_lnd.get_mut(token) {
            rec.credit_for = Some((nid, serial));
        }
    }

    /// The CREDIT frame for `hop`'s connection `serial` has left (or failed to): another
    /// may go, if more is owed by now.
    pub(super) fn credit_frame_done(&mut self, hop: Nid, lane: Lane, serial: u64) {
        let Some(hl) = self.hops.get_mut(&hop).map(|h| &mut h.lanes[lane]) else {
            return;
        };
        if hl.credit_frame_out == Some(serial) {
            hl.credit_frame_out = None;
            self.return_credits_if_owed(hop, lane);
        }
    }
}

/// Spends a hop credit and an NI credit for one frame on the (up) connection of hop lane
/// `hl` to `nid`, and takes what the frame carries back (the credits owed); `None` if
/// either credit is short. If the NI credit is, `nid` waits for one: its release pumps
/// `nid` again.
fn take_send_credits(ni_credits: &mut NiCredits, nid: Nid, hl: &mut HopLane) -> Option<u16> {
    let Conn::Up { credits, .. } = &mut hl.conn else {
        return None;
    };
    if credits.available() == 0 {
        return None;
    }
    if !ni_credits.try_take() {
        ni_credits.wait(nid);
        return None;
    }
    let spent = credits.try_spend();
    debug_assert!(spent, "credit availability was checked above");
    Some(credits.take_owed())
}

/// The frame [`Node::pump_busy`] takes off a hop lane to send.
enum Next {
    Answer(Response),
    Pending(Pending),
}

/// What a frame sent at once may pass at its hop lane: waiting frames it may not pass keep
/// it in the queue behind them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passes {
    /// An answer: it leaves before anything in the queue (our requests, frames passing
    /// through, the monitor's PINGs), as the pump sends it.
    Queue,
    /// A request (or a frame passing through): nothing.
    Nothing,
}

/// The largest payload a frame may carry to a hop on `lane`: what its HELLO says on the
/// data lane; on the health lane the wire's own bound, which every node takes whatever
/// its data-lane limit (a router's status in a PONG passing through, to a hop whose
/// data-lane limit is smaller).
fn lane_max(lane: Lane, hello: &crate::handshake::PeerHello) -> u32 {
    match lane {
        Lane::Data => hello.max_payload,
        Lane::Health => crate::wire::HEALTH_MAX_PAYLOAD,
    }
}
