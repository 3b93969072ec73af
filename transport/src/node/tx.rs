//! The send path: choosing the next hop, turning queue entries and answers into frames,
//! handing them to the drivers, and their send completions. The hop-lane queues and the
//! credits that let frames go are in `queues`.

use bytes::Bytes;

use super::health::HEALTH_PING_BIT;
use super::ops::OpKind;
use super::peers::{Hop, Pending, Upstream};
use super::routes::Standing;
use super::{InLnd, NiId, Node};
use crate::health::{PeerState, HEALTH_MAX};
use crate::lane::Lane;
use crate::lnd::{LndError, Transmit, TxToken};
use crate::nid::Nid;
use crate::op::{OpError, OpId, OpOutcome};
use crate::time::Time;
use crate::wire::{encode_header_with, Body, Header, HeaderCheck, NackReason};

/// A gateway is usable while it is on one of our nets, not Down, and not just found
/// unreachable.
fn usable(
    nis: &[super::Ni],
    health: &crate::health::Monitor,
    hops: &crate::memo_map::NidMap<Hop>,
    gateway: Nid,
    now: Time,
) -> bool {
    let reachable = hops
        .get(&gateway)
        .and_then(|h| h.unreachable_until)
        .is_none_or(|until| now >= until);
    nis.iter().any(|ni| ni.nid.same_net(&gateway) && ni.up) && !health.is_down(gateway) && reachable
}

/// [`Node::answer_out`]'s REPLY too large for its hop: aborted, its payload dropped.
#[cold]
fn abort_reply_too_large(r: &mut super::peers::Response, hop_max: u32) {
    if let Body::Reply { status } = &mut r.body {
        tracing::warn!(
            dst = %r.dst,
            len = r.payload.len(),
            hop_max,
            "a REPLY larger than its next hop takes goes aborted, without its payload"
        );
        *status = crate::wire::Status::Aborted;
        r.payload = Bytes::new();
    }
}

/// A frame about to be handed to a driver.
pub(super) struct Outgoing {
    pub(super) src: Nid,
    pub(super) dst: Nid,
    pub(super) src_incarnation: u64,
    pub(super) hop_limit: u8,
    pub(super) body: Body,
    pub(super) msg_id: u64,
    pub(super) payload: Bytes,
    pub(super) op: Option<(OpId, u64, u32)>,
    pub(super) upstream: Option<Upstream>,
    /// The header's attempt byte (see [`crate::wire::Header::attempt`]).
    pub(super) attempt: u8,
}

impl Node {
    /// Where a frame to `dst` goes next: `dst` itself when it is on one of our nets, else
    /// the best usable gateway of a route to its net (not in `avoid`).
    pub(crate) fn next_hop(&mut self, dst: Nid, avoid: &[Nid]) -> Option<Nid> {
        if self.ni_of(dst).is_some() {
            return Some(dst);
        }
        let now = self.clock.unwrap_or_default();
        let (nis, health, hops, gateways) = (&self.nis, &self.health, &self.hops, &self.gateways);
        // Gateways passed over for being Down: probed (on their backoff), or a crashed one
        // nobody monitors any more would never be found back.
        let mut down = Vec::new();
        let mut pick = |listed_ok: bool| {
            self.routes.select(dst.net(), |r| {
                let up = usable(nis, health, hops, r.gateway, now);
                if !up && health.is_down(r.gateway) {
                    down.push(r.gateway);
                }
                let usable = up
                    && !avoid.contains(&r.gateway)
                    && if listed_ok {
                        gateways.serves_net(r.gateway, dst.net())
                    } else {
                        gateways.takes(r.gateway, dst)
                    };
                usable.then(|| Standing {
                    health: health.peer(r.gateway).map_or(HEALTH_MAX, |p| p.health),
                    queued: hops.get(&r.gateway).map_or(0, Hop::queued),
                })
            })
        };
        // If every gateway lists `dst` as unreachable, try one anyway: it may be back (a
        // restart) before they say so, and a gateway that still cannot reach it refuses
        // at once (NACK), so the op goes on to the next or fails, quickly either way.
        let next = pick(false).or_else(|| pick(true));
        for gateway in down {
            self.health.poke(gateway, now);
        }
        next
    }

    /// Whether `gateway` is a usable gateway towards `dst` now.
    pub(crate) fn usable_gateway(&self, gateway: Nid, dst: Nid) -> bool {
        let now = self.clock.unwrap_or_default();
        self.routes.has(dst.net(), gateway)
            && usable(&self.nis, &self.health, &self.hops, gateway, now)
            && self.gateways.takes(gateway, dst)
    }

    /// Routes op `id`'s request to its next hop and sends or queues it there; with no way,
    /// the op fails with `NoRoute`.
    pub(crate) fn send_op(&mut self, id: OpId) {
        // New: in no queue yet.
        self.route_op(id, None, None);
    }

    /// Routes op `id`'s request to its next hop and sends or queues it there; with no way
    /// left, the op fails with `stuck` (`NoRoute` if none). `queued_at`: the hop whose
    /// queue held its request until now, if one did.
    fn route_op(&mut self, id: OpId, stuck: Option<&OpError>, queued_at: Option<Nid>) {
        let Some(op) = self.ops.get(id) else {
            return;
        };
        let (seq, (dst, lane)) = (op.seq, op.target().expect("only ops that send"));
        let avoid = op.avoid.clone();
        let len = op.kind.payload_len();
        let Some(hop) = self.next_hop(dst, &avoid) else {
            let error = stuck.cloned().unwrap_or(OpError::NoRoute(dst));
            return self.complete(id, Err(error));
        };
        let routers = self.ops.set_via(id, Some(hop)).expect("looked up above");
        if let Some(old) = queued_at.filter(|&old| old != hop) {
            self.left_queue(old, lane);
        }
        if routers.old != routers.new {
            let now = self.clock.unwrap_or_default();
            if let Some(r) = routers.old {
                self.health.interest_ended(r);
            }
            if let Some(r) = routers.new {
                self.health.interest_started(r, now);
            }
        }
        // Live, waiting (a new op, or one `requeued`) and now at `hop`: its request is to
        // be sent from there, as `send_or_queue` would look up.
        self.send_or_queue_with_len(hop, lane, Pending::Op { id, seq }, Some(len));
    }

    /// Sends op `id`'s request again through another of our gateways, because the way it
    /// went refused it (a NACK from that gateway or one beyond) or failed: never through
    /// that gateway again, so resends end, within the op's deadline. Without another
    /// gateway, the op fails with `why`.
    pub(crate) fn resend(&mut self, id: OpId, why: &OpError) {
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        let (dst, lane) = op.target().expect("only ops that send");
        if let Some(router) = op.router() {
            if !op.avoid.contains(&router) {
                op.avoid.push(router);
            }
        }
        // Where it waited, if it was still waiting: taken before it counts as waiting
        // again, or a request that had left would count as gone from a queue it was not in.
        let queued_at = op.via.filter(|_| op.stage == super::Stage::Queued);
        if self.ni_of(dst).is_some() {
            // No other way to a neighbour: the refusal stands.
            return self.complete(id, Err(why.clone()));
        }
        self.ops.requeued(id);
        self.stats.resent += 1;
        self.stats.lanes[lane].resent += 1;
        self.route_op(id, Some(why), queued_at);
    }

    /// Op `id` was in flight through `router`, which failed (its connection went, or it
    /// was declared Down): its request may or may not have got through, so it is sent
    /// again another way (the target answers a copy without delivering it twice), within
    /// the resend budget; past it, with no other way, or for a PUT without ACK (whose
    /// copies the target does not tell apart), it fails with `why`.
    pub(crate) fn resend_after_failure(&mut self, id: OpId, why: &OpError) {
        let budget = self.cfg.resend_budget;
        let Some(op) = self.ops.get_mut(id) else {
            return;
        };
        if op.failure_resends >= budget || op.router().is_none() || op.kind.unanswered() {
            return self.complete(id, Err(why.clone()));
        }
        op.failure_resends += 1;
        self.resend(id, why);
    }

    /// Sends (or queues) the monitor's PING to `dst` at its next hop (dropped if there is
    /// none: the monitor's verdict follows in time).
    ///
    /// A far end's PING goes by a gateway that is not Suspect if there is one: a gateway
    /// gone silent would take the PINGs with it, and the end, silent through it, would be
    /// declared Down with it (failing its operations rather than resending them), however
    /// well its other gateways reach it. (Data keeps to its routes' priorities until a
    /// gateway is Down: its frames are resent then.)
    pub(crate) fn send_health_ping(&mut self, dst: Nid, seq: u64) {
        let suspect: Vec<Nid> = if self.ni_of(dst).is_some() {
            Vec::new()
        } else {
            let health = &self.health;
            self.routes
                .gateways(dst.net())
                .filter(|&g| {
                    health
                        .peer(g)
                        .is_some_and(|p| p.state == PeerState::Suspect)
                })
                .collect()
        };
        let hop = if suspect.is_empty() {
            self.next_hop(dst, &[])
        } else {
            self.next_hop(dst, &suspect)
                .or_else(|| self.next_hop(dst, &[]))
        };
        match hop {
            Some(hop) => self.send_or_queue(hop, Lane::Health, Pending::HealthPing { dst, seq }),
            None => tracing::debug!(%dst, "no way to ping it"),
        }
    }

    /// Turns a queue entry (or one sent without waiting in the queue) into a frame; ops move
    /// to `InLnd` and become answerable.
    pub(super) fn outgoing(&mut self, ni: NiId, hop: Nid, pending: Pending) -> Outgoing {
        let src = self.nis[ni.0].nid;
        let (src_incarnation, hop_limit) = (self.cfg.incarnation, self.cfg.hop_limit);
        let ours = move |dst, body, msg_id, payload, op: Option<(OpId, u64, u32)>| Outgoing {
            src,
            dst,
            src_incarnation,
            hop_limit,
            body,
            msg_id,
            payload,
            op,
            upstream: None,
            attempt: op.map_or(0, |(_, _, attempt)| super::ops::wire_attempt(attempt)),
        };
        match pending {
            Pending::HealthPing { dst, seq } => {
                self.health_ping_leaves(seq, dst, hop);
                ours(
                    dst,
                    Body::Ping { seq },
                    HEALTH_PING_BIT | seq,
                    Bytes::new(),
                    None,
                )
            }
            Pending::Op { id, seq } => {
                let sent = self.ops.sent(id, src).expect("liveness checked");
                let (op, dst, settled_below) = (sent.op, sent.dst, sent.settled_below);
                let (body, payload) = match &op.kind {
                    OpKind::Put(r) => (
                        Body::Put {
                            portal: r.portal,
                            match_bits: r.match_bits,
                            settled_below,
                            ack: r.ack,
                        },
                        r.payload.clone(),
                    ),
                    OpKind::Get(r) => (
                        Body::Get {
                            portal: r.portal,
                            match_bits: r.match_bits,
                            want_len: r.want_len,
                            settled_below,
                        },
                        Bytes::new(),
                    ),
                    OpKind::Ping { .. } => (Body::Ping { seq }, Bytes::new()),
                    OpKind::Entry(_) => unreachable!("entries are never queued"),
                };
                Outgoing {
                    src: sent.first_src,
                    ..ours(dst, body, seq, payload, Some((id, seq, sent.attempt)))
                }
            }
            Pending::Status => Outgoing {
                hop_limit: 0,
                ..ours(hop, Body::Status, 0, self.router.encoded.clone(), None)
            },
            Pending::Forward(f) => {
                let h = f.header;
                Outgoing {
                    src: h.src,
                    dst: h.dst,
                    src_incarnation: h.src_incarnation,
                    hop_limit: h.hop_limit,
                    body: h.body,
                    msg_id: h.msg_id,
                    payload: f.payload,
                    op: None,
                    upstream: Some(f.upstream),
                    attempt: h.attempt,
                }
            }
        }
    }

    /// Our answer `r`, to leave by a hop that takes payloads of up to `hop_max` bytes. A
    /// REPLY larger than that (the hop a router with a smaller `max_payload` than the
    /// initiator's) would only make the hop close the connection, again for each copy:
    /// it goes without its payload, aborted, so the GET fails with a clear error.
    pub(super) fn answer_out(&self, mut r: super::peers::Response, hop_max: u32) -> Outgoing {
        if r.payload.len() > hop_max as usize {
            abort_reply_too_large(&mut r, hop_max);
        }
        Outgoing {
            src: r.src,
            dst: r.dst,
            src_incarnation: self.cfg.incarnation,
            hop_limit: self.cfg.hop_limit,
            body: r.body,
            msg_id: r.msg_id,
            payload: r.payload,
            op: None,
            upstream: None,
            attempt: r.attempt,
        }
    }

    /// Sends `out` to `hop` on `lane`, its header protected as the connection's HELLO
    /// said (`check`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &mut self,
        ni: NiId,
        hop: Nid,
        lane: Lane,
        out: Outgoing,
        credits: u16,
        ni_credit: bool,
        check: HeaderCheck,
    ) -> u64 {
        let header = Header {
            lane,
            hop_limit: out.hop_limit,
            credits,
            src: out.src,
            dst: out.dst,
            src_incarnation: out.src_incarnation,
            msg_id: out.msg_id,
            payload_len: out.payload.len() as u32,
            body: out.body,
            router_gen: if self.cfg.forwarding {
                self.router.status.generation
            } else {
                0
            },
            attempt: out.attempt,
        };
        let sent = self.out.next_sent;
        self.out.next_sent += 1;
        let token = self.out.in_lnd.insert(InLnd {
            sent,
            ni,
            lane,
            ni_credit,
            op: out.op,
            upstream: out.upstream,
            refuse_to: (out.upstream.is_some() && header.frame_type().is_request()).then_some(
                super::RefuseTo {
                    src: header.src,
                    dst: header.dst,
                    msg_id: header.msg_id,
                    attempt: header.attempt,
                },
            ),
            credit_for: None,
        });
        if let (Lane::Health, Some(now)) = (lane, self.clock) {
            self.out.health_in_lnd.insert(sent, now);
        }
        self.stats.frames_sent += 1;
        let counts = &mut self.stats.lanes[lane];
        counts.frames_sent += 1;
        counts.bytes_sent += out.payload.len() as u64;
        if lane == Lane::Health {
            self.stats.health_frames_sent += 1;
        }
        self.out.transmits[lane].push_back((
            ni,
            Transmit {
                peer: hop,
                lane,
                header: encode_header_with(&header, check),
                payload: out.payload,
                token: TxToken(token),
                report_at_once: header.is_put_without_ack(),
            },
        ));
        token
    }

    /// A driver finished (or failed) sending a frame.
    pub(crate) fn on_send_complete(
        &mut self,
        now: Time,
        token: TxToken,
        result: Result<(), LndError>,
    ) {
        let Some(rec) = self.out.in_lnd.remove(token.0) else {
            tracing::warn!(token = token.0, "driver completed an unknown send");
            self.stats.protocol_errors += 1;
            return;
        };
        if rec.lane == Lane::Health {
            if let Some(since) = self.out.health_in_lnd.remove(&rec.sent) {
                if result.is_ok() {
                    self.health.backlog(since, now); // how long it took to leave
                }
            }
        }
        if result.is_err() {
            self.stats.lanes[rec.lane].send_errors += 1;
        }
        if rec.ni_credit {
            self.nis[rec.ni.0].credits[rec.lane].release();
            while let Some(waiter) = self.nis[rec.ni.0].credits[rec.lane].next_waiter() {
                self.pump(waiter, rec.lane);
            }
        }
        if let Some((hop, serial)) = rec.credit_for {
            self.credit_frame_done(hop, rec.lane, serial);
        }
        if let Some(up) = rec.upstream {
            // The forwarded frame has left (or failed to): its buffer upstream is free.
            self.release_upstream(up);
            // A request that failed to leave may not have got out: its initiator hears so
            // and sends it another way (its target answers a copy, never delivers twice).
            if let (Err(_), Some(to)) = (&result, rec.refuse_to) {
                self.nack_to(rec.lane, to, up, NackReason::NextHopDown);
            }
        }
        let Some((id, seq, attempt)) = rec.op else {
            if result.is_err() && rec.upstream.is_none() {
                self.stats.responses_dropped += 1;
                self.stats.lanes[rec.lane].dropped += 1;
            }
            return;
        };
        let Some(op) = self.ops.get_mut(id).filter(|op| op.seq == seq) else {
            return; // already answered, timed out or cancelled
        };
        if op.attempts != attempt {
            return; // an earlier attempt's; the op was sent again since
        }
        match result {
            // Nothing will answer a PUT without ACK: having left is its end.
            Ok(()) => match &op.kind {
                OpKind::Put(r) if !r.ack => {
                    let len = r.payload.len() as u32;
                    self.complete(id, Ok(OpOutcome::Sent { len }));
                }
                _ if op.stage == super::Stage::InLnd => op.stage = super::Stage::Awaiting,
                _ => {}
            },
            // Through a router, it may have got out before the failure: sent again
            // another way, the target answering a copy without delivering it twice.
            Err(e) if op.router().is_some() => self.resend_after_failure(id, &e.into()),
            Err(e) => self.complete(id, Err(e.into())),
        }
    }
}
