//! The target side: incoming PUTs and GETs matched against attached entries, refusals,
//! answers, and PUT payloads that arrive deferred (zero-copy) and are fetched after matching.

use bytes::{Bytes, BytesMut};

use super::dedup::Seen;
use super::ops::OpKind;
use super::peers::{Hop, Response};
use super::{Fetch, LndRequest, NiId, Node, ANSWER_BACKLOG_PER_CREDIT};
use crate::lane::Lane;
use crate::lnd::{LndError, RxPayload};
use crate::nid::Nid;
use crate::op::{Delivery, EntryKind, Event, OpId, OpOutcome, Refused, RejectReason};
use crate::wire::{Body, Status};

/// Who started an incoming request, which of our NIDs it addressed, on which lane, what it
/// matches, and the message id its answer must echo.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming {
    /// The initiator (not the router it came through), and its incarnation.
    pub(crate) from: Nid,
    pub(crate) incarnation: u64,
    /// It came through a router: a copy of it may come again, resent (never of a PUT
    /// without ACK: its initiator fails it instead).
    pub(crate) routed: bool,
    /// The hop it came from (the initiator itself, or that router).
    pub(crate) hop: Nid,
    pub(crate) to: Nid,
    pub(crate) lane: Lane,
    pub(crate) portal: u32,
    pub(crate) match_bits: u64,
    pub(crate) msg_id: u64,
    /// A PUT's initiator wants an ACK (every GET gets its REPLY).
    pub(crate) wants_ack: bool,
}

impl Node {
    /// Sends (or queues) the answer (ACK, REPLY, PONG) to request `req` at the next hop
    /// towards its initiator: the initiator itself, or a usable router, preferably the one
    /// the request came through (then a failure of that router is one the initiator sees,
    /// and resends for), else any other.
    #[inline]
    pub(super) fn respond(&mut self, req: Incoming, body: Body, payload: Bytes) {
        if req.routed && matches!(body, Body::Ack { .. } | Body::Reply { .. }) {
            self.dedup.answered(
                req.from,
                req.to,
                req.incarnation,
                req.msg_id,
                body,
                payload.clone(),
            );
        }
        let answer = Response {
            src: req.to,
            dst: req.from,
            body,
            msg_id: req.msg_id,
            payload,
            reroutes: 0,
            attempt: 0,
        };
        let back = req.routed.then_some(req.hop);
        self.send_answer(req.lane, answer, back);
    }

    /// Sends (or queues) an answer at the next hop towards `answer.dst` (`by`, if it is a
    /// usable gateway there), within the hop lane's bound.
    pub(super) fn send_answer(&mut self, lane: Lane, answer: Response, by: Option<Nid>) {
        let by = by.filter(|&g| self.usable_gateway(g, answer.dst));
        match by {
            Some(hop) => self.queue_answer(hop, lane, answer),
            None => self.send_answer_avoiding(lane, answer, None),
        }
    }

    /// Sends (or queues) an answer at the next hop towards `answer.dst`, not through
    /// `avoid` (a gateway that just failed).
    #[inline]
    pub(super) fn send_answer_avoiding(
        &mut self,
        lane: Lane,
        answer: Response,
        avoid: Option<Nid>,
    ) {
        let avoid: &[Nid] = avoid.as_slice();
        match self
            .next_hop(answer.dst, avoid)
            .filter(|h| !avoid.contains(h))
        {
            Some(hop) => self.queue_answer(hop, lane, answer),
            None => {
                self.stats.responses_dropped += 1;
                self.stats.lanes[lane].dropped += 1;
            }
        }
    }

    /// Sends an answer on (hop, lane), or queues it there within its bound.
    #[inline]
    fn queue_answer(&mut self, hop: Nid, lane: Lane, answer: Response) {
        let Some(ni) = self.ni_of(hop) else {
            return;
        };
        let pl = &mut self.hops.entry(hop).or_insert_with(|| Hop::new(ni)).lanes[lane];
        let queued = pl.answers.len();
        // Most answers find none waiting (their peer returns credits): the bound is worked
        // out only for a queue already as long as the shortest it can be.
        let cap = if queued < ANSWER_BACKLOG_PER_CREDIT.min(self.cfg.routed_answer_backlog) {
            usize::MAX
        } else if answer.dst == hop {
            // Per credit of the connection's window (what the two ends agreed: a peer
            // offering fewer sends fewer at a time), or of our offer while it is not up.
            let window = match &pl.conn {
                super::peers::Conn::Up { credits, .. } => credits.window(),
                _ => self.cfg.lanes[lane].peer_credits,
            };
            ANSWER_BACKLOG_PER_CREDIT * usize::from(window)
        } else {
            self.cfg.routed_answer_backlog
        };
        let (nid, body) = (answer.dst, answer.body);
        if queued >= cap {
            let shed = match body {
                Body::Pong { .. } => &mut self.stats.pings_shed,
                _ => &mut self.stats.answers_shed,
            };
            *shed += 1;
            // Logged at 1, 2, 4, 8, ...: visible, without a flood of lines during a flood.
            if shed.is_power_of_two() {
                tracing::warn!(
                    peer = %nid, %lane, shed = *shed,
                    "request left unanswered: {cap} answers already wait for credits the peer does not return"
                );
            }
            return;
        }
        self.send_or_queue_answer(hop, lane, answer);
    }

    /// Request `req` with its payload, if it is to be handled: a copy of one that came
    /// through a router and was seen already is answered again (or dropped), not handled
    /// twice. A copy of a PUT whose payload is still being fetched is held, in case that
    /// fetch fails (see [`Node::put_fetched`]).
    #[inline]
    pub(super) fn first_time(
        &mut self,
        ni: NiId,
        req: Incoming,
        settled_below: u64,
        payload: RxPayload,
    ) -> Option<RxPayload> {
        if !req.routed {
            return Some(payload);
        }
        let seen = self
            .dedup
            .check(req.from, req.to, req.incarnation, req.msg_id, settled_below);
        self.stats.dedup_entries = self.dedup.entries() as u64;
        self.stats.dedup_initiators = self.dedup.windows() as u64;
        let again = match seen {
            Seen::New => return Some(payload),
            Seen::Pending => {
                // Its first copy's payload is on its way (through a router that may have
                // failed: that is why this copy came). The latest copy is kept.
                let key = copy_key(req);
                if let Some((ni, _, older)) = self.held_copies.insert(key, (ni, req, payload)) {
                    self.decline_deferred(ni, older);
                }
                return None;
            }
            Seen::Answered(body, data) => Some((body, data)),
            Seen::TooOld => {
                self.stats.duplicates_dropped += 1;
                None
            }
        };
        self.decline_deferred(ni, payload);
        if let Some((body, data)) = again {
            self.stats.duplicates_answered += 1;
            self.respond(req, body, data);
        }
        None
    }

    /// ACKs a PUT whose initiator wants it; one that does not hears nothing, whatever
    /// became of it.
    fn ack(&mut self, req: Incoming, status: Status, mlen: u32) {
        if !req.wants_ack {
            return;
        }
        self.respond(req, Body::Ack { status, mlen }, Bytes::new());
    }

    /// Releases a deferred payload that will not be fetched.
    pub(super) fn decline_deferred(&mut self, ni: NiId, payload: RxPayload) {
        if let RxPayload::Deferred { handle, .. } = payload {
            self.out
                .requests
                .push_back((ni, LndRequest::Decline { handle }));
        }
    }

    /// Refuses an incoming request; past the delivery budget, refusals are only counted.
    fn refuse(&mut self, req: Incoming, len: u32, reason: RejectReason) {
        match reason {
            RejectReason::NoMatch => self.stats.refused_no_match += 1,
            RejectReason::Busy => self.stats.refused_busy += 1,
        }
        if reason == RejectReason::NoMatch && self.undelivered < self.cfg.max_undelivered {
            self.undelivered += 1;
            self.out.events.push_back(Event::Refused(Refused {
                from: req.from,
                portal: req.portal,
                match_bits: req.match_bits,
                len,
                reason,
            }));
        }
    }

    /// The oldest entry of the request's portal that takes it: that matches it, for which
    /// `fits` holds, and that is not reserved by a payload in transit. The oldest of those
    /// that match its bits exactly, unless a wildcard attached before it takes it (see
    /// `portal_list`).
    fn find_entry(&self, req: Incoming, fits: impl Fn(&EntryKind) -> bool) -> Option<OpId> {
        let takes = |op: &super::ops::Op| {
            matches!(&op.kind, OpKind::Entry(e)
                if !op.reserved && e.matches(req.from, req.match_bits) && fits(&e.kind))
        };
        let exact = self
            .portals
            .exact(req.portal, req.match_bits)
            .iter()
            .find_map(|&id| {
                let op = self.ops.get(id)?;
                takes(op).then_some((id, op.seq))
            });
        for &id in self.portals.wildcards(req.portal) {
            let Some(op) = self.ops.get(id) else {
                continue;
            };
            if exact.is_some_and(|(_, seq)| op.seq > seq) {
                break; // attached after the exact one: every later wildcard is too
            }
            if takes(op) {
                return Some(id);
            }
        }
        exact.map(|(id, _)| id)
    }

    /// After a match: unlink a use-once entry.
    fn matched(&mut self, entry: OpId) {
        if matches!(self.ops.get(entry).map(|o| &o.kind), Some(OpKind::Entry(e)) if e.once) {
            self.complete(entry, Ok(OpOutcome::Unlinked));
        }
    }

    // Always: grown by the match by bits, `rx_put` no longer took it in (+15
    // instructions per round trip as a call; `lanet-bench cost`).
    #[inline(always)]
    fn deliver(&mut self, entry: OpId, req: Incoming, payload: Bytes) {
        self.out.events.push_back(Event::Delivered(Delivery {
            entry,
            from: req.from,
            portal: req.portal,
            match_bits: req.match_bits,
            payload,
        }));
        self.matched(entry);
    }

    #[inline]
    pub(super) fn rx_put(&mut self, ni: NiId, req: Incoming, payload: RxPayload) {
        let len = payload.len() as u32;
        let found = self.find_entry(
            req,
            |k| matches!(k, EntryKind::Sink { max_len } if *max_len >= len),
        );
        let status = match found {
            _ if self.undelivered >= self.cfg.max_undelivered => {
                self.refuse(req, len, RejectReason::Busy);
                self.decline_deferred(ni, payload);
                Status::Busy
            }
            None => {
                self.refuse(req, len, RejectReason::NoMatch);
                self.decline_deferred(ni, payload);
                Status::NoMatch
            }
            Some(entry) => {
                // The delivery budget is taken now, whether the payload is here or not.
                self.undelivered += 1;
                match payload {
                    RxPayload::Inline(data) => {
                        self.deliver(entry, req, data);
                        Status::Ok
                    }
                    RxPayload::Deferred { handle, len } => {
                        let op = self.ops.get_mut(entry).expect("matched a live entry");
                        op.reserved = matches!(&op.kind, OpKind::Entry(e) if e.once);
                        let fetch = Fetch::Put {
                            req,
                            entry,
                            entry_seq: op.seq,
                        };
                        self.fetching.insert((ni, handle), fetch);
                        let sink = BytesMut::with_capacity(len as usize);
                        self.out
                            .requests
                            .push_back((ni, LndRequest::Fetch { handle, sink }));
                        return; // ACKed (if wanted) once the payload is in
                    }
                }
            }
        };
        let mlen = if status == Status::Ok { len } else { 0 };
        self.ack(req, status, mlen);
    }

    /// The deferred payload of a matched PUT is in (or lost): deliver it and ACK (if
    /// wanted).
    pub(super) fn put_fetched(
        &mut self,
        req: Incoming,
        (entry, entry_seq): (OpId, u64),
        result: Result<Bytes, LndError>,
    ) {
        let live = self
            .ops
            .get_mut(entry)
            .filter(|op| op.seq == entry_seq)
            .map(|op| op.reserved = false)
            .is_some();
        // A copy that came meanwhile (see `first_time`).
        let held = match req.routed {
            true => self.held_copies.remove(&copy_key(req)),
            false => None,
        };
        let (status, mlen) = match result {
            Ok(data) if live => {
                let n = data.len() as u32;
                self.deliver(entry, req, data);
                (Status::Ok, n)
            }
            Err(e) if req.routed => {
                // The payload never came through the router it waited at: the PUT was not
                // delivered, as if it had been lost on the way. A copy the initiator sent
                // another way meanwhile is taken instead; else the copy it sends if that
                // router failed (it sees it fail, or is refused by it) must be taken as
                // new. No answer: "aborted" would end an operation that the copy can
                // still complete; else its deadline ends it.
                tracing::debug!(from = %req.from, via = %req.hop, "routed payload lost: {e}");
                self.undelivered = self.undelivered.saturating_sub(1);
                if let Some((ni, copy, payload)) = held {
                    // Handled as if it came now: matched (the entry is free again, or
                    // gone: NoMatch), and answered as the request (still pending here).
                    return self.rx_put(ni, copy, payload);
                }
                self.dedup
                    .forget(req.from, req.to, req.incarnation, req.msg_id);
                return;
            }
            // The entry was cancelled meanwhile, or the payload never came.
            _ => {
                self.undelivered = self.undelivered.saturating_sub(1);
                (Status::Aborted, 0)
            }
        };
        self.ack(req, status, mlen);
        // Its payload is not needed: the first copy's came (or its entry is gone). It is
        // answered too, by the way it came: the one its initiator took when it gave up on
        // the first copy's, which may not reach it any more.
        if let Some((ni, copy, payload)) = held {
            self.decline_deferred(ni, payload);
            if copy.hop != req.hop {
                self.stats.duplicates_answered += 1;
                self.ack(copy, status, mlen);
            }
        }
    }

    pub(super) fn rx_get(&mut self, req: Incoming, want_len: u32) {
        let found = self.find_entry(req, |k| matches!(k, EntryKind::Source { .. }));
        let (status, data) = match found {
            None => {
                self.refuse(req, want_len, RejectReason::NoMatch);
                (Status::NoMatch, Bytes::new())
            }
            Some(entry) => {
                let Some(OpKind::Entry(e)) = self.ops.get(entry).map(|o| &o.kind) else {
                    unreachable!("find_entry returns entries")
                };
                let EntryKind::Source { data } = &e.kind else {
                    unreachable!("matched a source")
                };
                let data = data.slice(..data.len().min(want_len as usize));
                if self.too_large_for_the_way_back(req, data.len()) {
                    // Aborted before it is matched: the entry stays for a GET that can
                    // take it (see `answer_out`, which checks again as the REPLY leaves).
                    (Status::Aborted, Bytes::new())
                } else {
                    self.matched(entry);
                    (Status::Ok, data)
                }
            }
        };
        self.respond(req, Body::Reply { status }, data);
    }

    /// Whether a REPLY of `len` bytes to `req` is larger than the hop it will go back by
    /// takes, by that connection's HELLO: the hop the GET came by, when the answer goes
    /// back that way (see `respond`). Otherwise (the answer goes another way, or the
    /// connection is not up) it is left to `answer_out` as the REPLY leaves, after the
    /// match. The way back is asked only of a REPLY too large: most are not.
    fn too_large_for_the_way_back(&self, req: Incoming, len: usize) -> bool {
        let conn = self.hops.get(&req.hop).map(|h| &h.lanes[req.lane].conn);
        let too_large = matches!(conn, Some(super::peers::Conn::Up { hello, .. }) if len > hello.max_payload as usize);
        too_large && (!req.routed || self.usable_gateway(req.hop, req.from))
    }
}

/// Which request a copy held by [`Node::first_time`] is one of.
pub(crate) type CopyKey = (Nid, Nid, u64, u64);

fn copy_key(req: Incoming) -> CopyKey {
    (req.from, req.to, req.incarnation, req.msg_id)
}
