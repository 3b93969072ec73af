//! Forwarding: what a router does with frames addressed to others.
//!
//! A frame for another node is passed on to its next hop (the target itself if it is on
//! one of our nets, else a gateway of a route to its net), ends unchanged, its hop limit
//! one lower. Its credit on the connection it came by is held until it has left the next
//! hop's driver, so a sender faster than the way ahead is slowed instead of this node's
//! memory growing. What cannot be passed on is refused at once: a request with a NACK to
//! its initiator, which may then send it another way (it was never delivered); an answer
//! (nobody resends those) is counted and dropped.

use bytes::{Bytes, BytesMut};

use super::peers::{Conn, Forward, Pending, Response, Upstream};
use super::{Fetch, LndRequest, NiId, Node};
use crate::lane::Lane;
use crate::lnd::{LndError, RxPayload};
use crate::nid::Nid;
use crate::wire::{Body, Header, NackReason};

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
        };
        let refusal = if !self.cfg.forwarding {
            Some(NackReason::NotForwarding)
        } else if self.router.status.state != crate::wire::RouterState::Forwarding {
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
        self.router_used_by(from, self.clock.unwrap_or_default());
        self.hold(upstream);
        match payload {
            RxPayload::Inline(data) => self.pass_on(h, data, upstream),
            RxPayload::Deferred { handle, len } => {
                // Fetched here first, then passed on like any other.
                self.fetching.insert(
                    (ni, handle),
                    Fetch::Forward {
                        header: h,
                        upstream,
                    },
                );
                let sink = BytesMut::with_capacity(len as usize);
                self.out
                    .requests
                    .push_back((ni, LndRequest::Fetch { handle, sink }));
            }
        }
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

    /// Queues a frame (its upstream credit held) at its next hop, or refuses it.
    fn pass_on(&mut self, h: Header, payload: Bytes, upstream: Upstream) {
        // Never straight back where it came from: that is a loop.
        let next = self.next_hop(h.dst, &[upstream.hop]);
        let reason = match next {
            None => Some(NackReason::NoRoute),
            Some(next) if self.health.is_down(next) => Some(NackReason::NextHopDown),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return self.refuse_forward(
                Forward {
                    header: h,
                    payload,
                    upstream,
                },
                reason,
            );
        }
        let next = next.expect("checked above");
        self.stats.forwarded += 1;
        let lane = h.lane;
        let f = Forward {
            header: h,
            payload,
            upstream,
        };
        self.enqueue(next, lane, Pending::Forward(Box::new(f)));
    }

    /// A frame passing through cannot go on: its upstream buffer is free, and its
    /// initiator hears why.
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
        let Some(ni) = self.ni_of(upstream.hop) else {
            return;
        };
        self.stats.nacks_sent += 1;
        let nack = Response {
            src: self.nis[ni.0].nid,
            dst: h.src,
            body: Body::Nack {
                reason,
                target: h.dst,
            },
            msg_id: h.msg_id,
            payload: Bytes::new(),
        };
        // Back the way the request came, if that is a way to its initiator.
        self.send_answer(h.lane, nack, Some(upstream.hop));
    }

    /// Keeps the buffer of the frame just consumed from `up` in use: its credit is not
    /// returned until [`Node::release_upstream`].
    fn hold(&mut self, up: Upstream) {
        if let Some(Conn::Up {
            credits, serial, ..
        }) = self
            .hops
            .get_mut(&up.hop)
            .map(|h| &mut h.lanes[up.lane].conn)
        {
            if *serial == up.serial {
                credits.hold_last();
            }
        }
    }

    /// A frame that came from `up` no longer needs its buffer: the credit goes back (on
    /// that connection only: a newer one never lent it).
    pub(super) fn release_upstream(&mut self, up: Upstream) {
        if let Some(Conn::Up {
            credits, serial, ..
        }) = self
            .hops
            .get_mut(&up.hop)
            .map(|h| &mut h.lanes[up.lane].conn)
        {
            if *serial == up.serial {
                credits.release_held();
                self.pump(up.hop, up.lane);
            }
        }
    }
}
