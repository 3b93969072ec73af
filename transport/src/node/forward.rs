//! Forwarding: what a router does with frames addressed to others.
//!
//! A frame for another node is passed on to its next hop (the target itself if it is on
//! one of our nets, else a gateway of a route to its net), ends unchanged, its hop limit
//! one lower. Until it has left the next hop's driver it holds its credit on the
//! connection it came by and a buffer of the router's pools (see `pools`), so a sender
//! faster than the way ahead is slowed instead of this node's memory growing. What cannot
//! be passed on is refused at once: a request with a NACK to its initiator, which may then
//! send it another way (it was never delivered); an answer (nobody resends those) is
//! counted and dropped, but for a REPLY too large for its next hop, passed on aborted
//! without its payload (`queues::too_large`).

use std::cmp::Reverse;

use bytes::{Bytes, BytesMut};

use super::peers::{Conn, Forward, Pending, Response, Upstream};
use super::pools::PoolKind;
use super::{Fetch, LndRequest, NiId, Node, RefuseTo};
use crate::credits::LaneCredits;
use crate::lane::Lane;
use crate::lnd::{LndError, RxHandle, RxPayload};
use crate::nid::Nid;
use crate::time::Time;
use crate::wire::{Body, Header, NackReason};

/// A frame passing through, as it arrived (its payload perhaps still at the sender).
pub(crate) struct Arrived {
    header: Header,
    payload: InHand,
    upstream: Upstream,
}

enum InHand {
    Inline(Bytes),
    /// To fetch from NI `ni`'s driver.
    Deferred {
        ni: NiId,
        handle: RxHandle,
        len: u32,
    },
}

impl Node {
    /// A frame for another node arrived from hop `from` on connection `serial`, its credit
    /// consumed: pass it on, or refuse it.
    pub(super) fn forward(
        &mut self,
        ni: NiId,
        from: Nid,
        lane: Lane,
        serial: u64,
        mut h: Header,
        payload: RxPayload,
    ) {
        let upstream = Upstream {
            hop: from,
            lane,
            serial,
            // Answers take no buffer: they are what frees buffers and credits along the
            // way back, and must not wait behind requests for one. Nor do health-lane
            // frames: they go first end to end, and a burst of data must not make a PING
            // wait (a false Down). Both are bounded all the same: each hop holds at most
            // its connection's credits of frames here.
            pool: (h.frame_type().is_request() && lane == Lane::Data)
                .then(|| PoolKind::for_len(h.payload_len)),
        };
        let refusal = if !self.cfg.forwarding {
            Some(NackReason::NotForwarding)
        } else if self.router.status.state != crate::wire::RouterState::Forwarding
            && h.frame_type().is_request()
        {
            // Absent, it takes no new work; answers still pass: they end work already
            // under way (a draining router's last requests) and free what it holds.
            Some(NackReason::Absent)
        } else if h.hop_limit == 0 {
            Some(NackReason::HopLimit)
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.decline_deferred(ni, payload);
            return self.nack(&h, upstream, reason);
        }
        h.hop_limit -= 1;
        let now = self.clock.unwrap_or_default();
        self.hold(upstream);
        let payload = match payload {
            RxPayload::Inline(data) => InHand::Inline(data),
            RxPayload::Deferred { handle, len } => InHand::Deferred { ni, handle, len },
        };
        let arrived = Arrived {
            header: h,
            payload,
            upstream,
        };
        // Without a buffer free, it waits for one (its credit held: the sender slows).
        let Some(kind) = upstream.pool else {
            return self.proceed(arrived);
        };
        if let Some(arrived) = self.pools.take(kind, arrived, now) {
            self.proceed(arrived);
        }
    }

    /// A frame passing through has its buffer: on towards its next hop (its payload
    /// fetched here first if it is still at the sender).
    fn proceed(&mut self, a: Arrived) {
        match a.payload {
            InHand::Inline(data) => self.pass_on(a.header, data, a.upstream),
            InHand::Deferred { ni, handle, len } => {
                let fetch = Fetch::Forward {
                    header: a.header,
                    upstream: a.upstream,
                };
                self.fetching.insert((ni, handle), fetch);
                let sink = BytesMut::with_capacity(len as usize);
                self.out
                    .requests
                    .push_back((ni, LndRequest::Fetch { handle, sink }));
            }
        }
    }

    /// The connection `serial` from (`hop`, `lane`) is gone: the requests that came by it
    /// and still wait here, for a buffer or at their next hop, are dropped. Their sender
    /// counts what it sent on that connection as lost and sends it again, and a sender
    /// that reconnects must not hold a second window of buffers beside the first: each
    /// upstream connection holds at most its credits of them. The initiator of one that
    /// `hop` passed on (a router) is told by a NACK; `hop` itself needs none (and its
    /// NACK would only ask for a connection to it). Those being fetched end with their
    /// fetch, which fails.
    pub(super) fn refuse_from_lost(&mut self, hop: Nid, lane: Lane, serial: u64) {
        let from_it = |up: &Upstream| {
            up.hop == hop && up.lane == lane && up.serial == serial && up.pool.is_some()
        };
        for a in self.pools.take_waiting_where(|a| from_it(&a.upstream)) {
            if let InHand::Deferred { ni, handle, .. } = a.payload {
                self.out
                    .requests
                    .push_back((ni, LndRequest::Decline { handle }));
            }
            // It held no buffer yet, and its credit went with the connection.
            if a.header.src != hop {
                self.nack(&a.header, a.upstream, NackReason::OutOfBuffers);
            }
        }
        let mut orphans = Vec::new();
        for h in self.hops.values_mut() {
            for l in Lane::ALL {
                orphans.extend(h.lanes[l].take_forwards_where(|f| from_it(&f.upstream)));
            }
        }
        for f in orphans {
            if f.header.src == hop {
                self.release_upstream(f.upstream);
            } else {
                self.refuse_forward(f, NackReason::OutOfBuffers);
            }
        }
    }

    /// A frame waited for a buffer past its patience: refused (its credit released).
    pub(super) fn out_of_patience(&mut self, a: Arrived) {
        if let InHand::Deferred { ni, handle, .. } = a.payload {
            self.out
                .requests
                .push_back((ni, LndRequest::Decline { handle }));
        }
        self.release_credit(a.upstream);
        self.nack(&a.header, a.upstream, NackReason::OutOfBuffers);
    }

    /// The payload of a frame passing through is here (or is lost).
    pub(super) fn forward_fetched(
        &mut self,
        h: Header,
        upstream: Upstream,
        result: Result<Bytes, LndError>,
    ) {
        match result {
            Ok(data) => self.pass_on(h, data, upstream),
            Err(e) => {
                // Its sender is gone (or its connection is): nobody is left to refuse to.
                tracing::debug!(src = %h.src, dst = %h.dst, "forwarded payload lost: {e}");
                self.release_upstream(upstream);
            }
        }
    }

    /// Sends (or queues) a frame, its upstream credit and buffer held, at its next hop, or
    /// refuses it.
    fn pass_on(&mut self, h: Header, payload: Bytes, upstream: Upstream) {
        // Never straight back where it came from: that is a loop.
        let next = self.next_hop(h.dst, &[upstream.hop]);
        let reason = match next {
            None => Some(NackReason::NoRoute),
            Some(next) if self.health.is_down(next) => {
                // Probed again (on its backoff), or a peer that stayed away longer than
                // this router remembers serving it would be refused for good.
                self.health.poke(next, self.clock.unwrap_or_default());
                Some(NackReason::NextHopDown)
            }
            Some(_) => None,
        };
        let f = Forward {
            header: h,
            payload,
            upstream,
        };
        match (next, reason) {
            (Some(next), None) => {
                self.stats.forwarded += 1;
                self.router_forwarded_for(upstream.hop);
                let now = self.clock.unwrap_or_default();
                self.router_served(now, [upstream.hop, next]);
                self.send_or_queue(next, h.lane, Pending::Forward(Box::new(f)));
            }
            (_, reason) => self.refuse_forward(f, reason.unwrap_or(NackReason::NoRoute)),
        }
    }

    /// A frame passing through was queued at (hop, lane), waiting for a credit: the lane
    /// is looked at once it may have stood still for the forward patience, if no look is
    /// booked already.
    pub(super) fn forward_queued(&mut self, hop: Nid, lane: Lane, now: Time) {
        let patience = self.cfg.forward_patience;
        let hl = self.hop_lane(hop, lane);
        if hl.stall_check.is_none() {
            let at = (hl.moved_at + patience).max(now);
            hl.stall_check = Some(at);
            self.stall_checks.push(Reverse((at, hop, lane)));
        }
    }

    /// Refuses the frames passing through that wait at a hop lane from which nothing has
    /// left for the forward patience: the hop is up (a lane still connecting is left to
    /// its connect's deadline) but takes nothing, and what they hold (upstream credits,
    /// buffers) must not be held for it for ever (LU-18444's pattern). Their initiators
    /// may send them another way. A lane that moves, however slowly, keeps its frames: a
    /// busy server's queue at its router may take many seconds to drain, and is no fault.
    pub(super) fn refuse_stalled(&mut self, now: Time) {
        let patience = self.cfg.forward_patience;
        // A moving lane is looked at again no sooner than an eighth of the patience
        // later: a bounded number of looks per patience, however its frames come and go.
        // Never none: a patience under 8 ns (refused by validation, but a node built in
        // code is not validated in release builds) would look again at once, for ever.
        let step = (patience / 8).max(std::time::Duration::from_micros(1));
        while let Some(&Reverse((at, hop, lane))) = self.stall_checks.peek() {
            if at > now {
                break;
            }
            self.stall_checks.pop();
            let Some(hl) = self.hops.get_mut(&hop).map(|h| &mut h.lanes[lane]) else {
                continue;
            };
            if hl.stall_check != Some(at) {
                continue;
            }
            hl.stall_check = None;
            if !hl.queue.iter().any(|p| matches!(p, Pending::Forward(_))) {
                continue;
            }
            if !hl.stopped_for(now, patience) {
                let next = (hl.moved_at + patience).max(now + step);
                hl.stall_check = Some(next);
                self.stall_checks.push(Reverse((next, hop, lane)));
                continue;
            }
            let stalled = hl.take_forwards();
            self.stats.forwards_stalled += stalled.len() as u64;
            tracing::warn!(%hop, %lane, frames = stalled.len(),
                "next hop took nothing for {patience:?}: frames passing through refused");
            for f in stalled {
                self.refuse_forward(f, NackReason::NextHopStalled);
            }
        }
    }

    /// A frame passing through cannot go on: what it holds is freed, and its initiator
    /// hears why.
    pub(super) fn refuse_forward(&mut self, f: Forward, reason: NackReason) {
        self.release_upstream(f.upstream);
        self.nack(&f.header, f.upstream, reason);
    }

    /// Answers a request that cannot be passed on with a NACK to its initiator; anything
    /// else is dropped and counted.
    fn nack(&mut self, h: &Header, upstream: Upstream, reason: NackReason) {
        if !h.frame_type().is_request() {
            self.stats.unroutable_answers += 1;
            return;
        }
        let to = RefuseTo {
            src: h.src,
            dst: h.dst,
            msg_id: h.msg_id,
            attempt: h.attempt,
        };
        self.nack_to(h.lane, to, upstream, reason);
    }

    /// Refuses request `to`, which came from `upstream`, with a NACK to its initiator.
    pub(super) fn nack_to(
        &mut self,
        lane: Lane,
        to: RefuseTo,
        upstream: Upstream,
        reason: NackReason,
    ) {
        let Some(ni) = self.ni_of(upstream.hop) else {
            return;
        };
        if self.is_local(to.src) {
            // It names this node as its initiator (forged, or looped back): nobody to
            // refuse it to, and a NACK to ourselves would have us dial ourselves.
            tracing::debug!(initiator = %to.src, "a refused request in our own name: dropped");
            self.stats.protocol_errors += 1;
            return;
        }
        self.stats.nacks_sent += 1;
        self.stats.lanes[lane].nacks_sent += 1;
        let nack = Response {
            src: self.nis[ni.0].nid,
            dst: to.src,
            body: Body::Nack {
                reason,
                target: to.dst,
            },
            msg_id: to.msg_id,
            payload: Bytes::new(),
            reroutes: 0,
            attempt: to.attempt,
        };
        // Back the way the request came, if that is a way to its initiator.
        self.send_answer(lane, nack, Some(upstream.hop));
    }

    /// Keeps the buffer of the frame just consumed from `up` in use: its credit is not
    /// returned until it is released.
    fn hold(&mut self, up: Upstream) {
        if let Some(credits) = self.upstream_credits(up) {
            credits.hold_last();
        }
    }

    /// The credits of the connection a frame came by, if it is still the one that lent
    /// them (a newer connection never did).
    fn upstream_credits(&mut self, up: Upstream) -> Option<&mut LaneCredits> {
        match self
            .hops
            .get_mut(&up.hop)
            .map(|h| &mut h.lanes[up.lane].conn)
        {
            Some(Conn::Up {
                credits, serial, ..
            }) if *serial == up.serial => Some(credits),
            _ => None,
        }
    }

    /// A frame that came from `up` is done here: its pool buffer goes to the next frame
    /// waiting for one, and its credit back to the sender.
    pub(super) fn release_upstream(&mut self, up: Upstream) {
        if let Some(next) = up.pool.and_then(|kind| self.pools.release(kind)) {
            if self.pools.hand_off(next) {
                while let Some(next) = self.pools.next_handoff() {
                    self.proceed(next);
                }
            }
        }
        self.release_credit(up);
    }

    /// The credit of a frame that came from `up` goes back (on that connection only).
    fn release_credit(&mut self, up: Upstream) {
        if let Some(credits) = self.upstream_credits(up) {
            credits.release_held();
            self.pump(up.hop, up.lane);
        }
    }
}
