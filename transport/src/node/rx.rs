//! Driver events: connections coming and going, frames arriving, sends finishing.

use bytes::{Bytes, BytesMut};

use super::{Conn, Fetch, Incoming, LndRequest, NiId, Node, OpKind, Pending, Stage};
use crate::credits::LaneCredits;
use crate::handshake::PeerHello;
use crate::lane::Lane;
use crate::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, RxPayload};
use crate::nid::Nid;
use crate::op::{Event, OpError, OpOutcome, RejectReason};
use crate::time::Time;
use crate::wire::{Body, Header, Status};

impl Node {
    /// Feeds one driver event from NI `ni` into the node.
    pub fn handle_lnd_event(&mut self, now: Time, ni: NiId, event: LndEvent) {
        self.clock = Some(now);
        match event {
            LndEvent::Connected {
                peer,
                lane,
                hello,
                local_credits,
            } => self.on_connected(now, ni, peer, lane, hello, local_credits),
            LndEvent::ConnectFailed { peer, lane, error } => {
                self.on_connect_failed(peer, lane, error)
            }
            LndEvent::Disconnected { peer, lane, error } => self.on_disconnected(peer, lane, error),
            LndEvent::Received {
                peer,
                lane,
                header,
                payload,
            } => self.on_frame(now, ni, peer, lane, header, payload),
            LndEvent::SendComplete { token, result } => self.on_send_complete(now, token, result),
            LndEvent::Fetched { handle, result } => self.on_fetched(ni, handle, result),
        }
    }

    fn on_connected(
        &mut self,
        now: Time,
        ni: NiId,
        nid: Nid,
        lane: Lane,
        hello: PeerHello,
        local: u16,
    ) {
        if self.ni_of(nid) != Some(ni) {
            tracing::warn!(%nid, "driver reported a connection from a peer on another net");
            self.stats.protocol_errors += 1;
            return;
        }
        let hiw = self.cfg.lanes[lane].credits_hiw;
        let peer = self.peer_entry(nid, ni);
        if let Conn::Up { hello: current, .. } = &peer.lanes[lane].conn {
            if *current == hello {
                // The answer to a connect request made while the driver replaced the
                // connection (Disconnected, then Connected): the lane is up already, and
                // its credits are as they are.
                self.heard(now, nid);
                return self.pump(nid, lane);
            }
            // A different HELLO without a Disconnected first: the driver replaced the
            // connection without saying so. Treat it as the replacement it is (a new
            // incarnation fails what the old one owed below, as a restart).
            tracing::warn!(%nid, %lane, "driver reported a new connection without closing the old one");
            let same_life = current.incarnation == hello.incarnation;
            self.lane_lost(nid, lane);
            if same_life {
                let error = LndError::new(LndErrorKind::Reset, "replaced by a new connection");
                self.fail_awaiting(nid, Some(lane), || error.clone().into());
            }
        }
        let peer = self.peer_entry(nid, ni);
        let old = peer.incarnation.replace(hello.incarnation);
        peer.lanes[lane].conn = Conn::Up {
            credits: LaneCredits::new(hello.credits, local, hiw),
            hello,
        };
        if let Some(old) = old.filter(|&o| o != hello.incarnation) {
            self.events.push_back(Event::PeerRestarted {
                peer: nid,
                old,
                new: hello.incarnation,
                at: now,
            });
            // Whatever the old incarnation was answering is gone with it.
            self.fail_awaiting(nid, None, || OpError::PeerRestarted);
        }
        self.heard(now, nid);
        self.pump(nid, lane);
    }

    fn on_connect_failed(&mut self, nid: Nid, lane: Lane, error: LndError) {
        let Some(peer) = self.peers.get_mut(&nid) else {
            return;
        };
        let pl = &mut peer.lanes[lane];
        if matches!(pl.conn, Conn::Up { .. }) {
            return; // a losing duplicate attempt; the lane is up
        }
        pl.conn = Conn::Down;
        let queued = std::mem::take(&mut pl.queue);
        // Operations waiting for a Down peer keep waiting (its return pumps them); the
        // rest fail with the connection error.
        let (keep, fail): (Vec<Pending>, Vec<Pending>) = queued
            .into_iter()
            .partition(|p| matches!(p, Pending::Op { id, .. } if self.waits_for_peer(*id)));
        if let Some(peer) = self.peers.get_mut(&nid) {
            peer.lanes[lane].queue.extend(keep);
        }
        self.fail_queued(fail, &error);
    }

    fn on_disconnected(&mut self, nid: Nid, lane: Lane, error: LndError) {
        if !self.peers.contains_key(&nid) {
            return;
        }
        self.lane_lost(nid, lane);
        // Requests on this connection cannot be answered any more.
        self.fail_awaiting(nid, Some(lane), || error.clone().into());
        // Queued requests wait for a new connection (within their deadlines).
        self.pump(nid, lane);
    }

    /// The (peer, lane) connection is gone: what only it could carry goes with it.
    fn lane_lost(&mut self, nid: Nid, lane: Lane) {
        let Some(peer) = self.peers.get_mut(&nid) else {
            return;
        };
        let pl = &mut peer.lanes[lane];
        pl.conn = Conn::Down;
        // Answers owed to the peer die with the connection; its own deadlines cover it.
        self.stats.responses_dropped += pl.answers.len() as u64;
        pl.answers.clear();
        pl.queue.retain(|p| matches!(p, Pending::Op { .. }));
    }

    fn fail_queued(&mut self, queued: impl IntoIterator<Item = Pending>, error: &LndError) {
        for p in queued {
            match p {
                Pending::Op { id, seq } => {
                    if self.ops.get(&id).is_some_and(|op| op.seq == seq) {
                        self.complete(id, Err(error.clone().into()));
                    }
                }
                Pending::HealthPing { .. } => {} // the monitor pings again if it must
            }
        }
    }

    /// Completes ops to `nid` (on `lane`, or any lane) whose request went out and whose
    /// answer is now impossible.
    fn fail_awaiting(&mut self, nid: Nid, lane: Option<Lane>, error: impl Fn() -> OpError) {
        let doomed = self.ops_to_peer(nid, |op| {
            op.stage != Stage::Queued
                && op
                    .route()
                    .is_some_and(|(_, l)| lane.is_none_or(|lane| lane == l))
        });
        for id in doomed {
            self.complete(id, Err(error()));
        }
    }

    /// Closes a connection whose peer broke the protocol, and says so.
    pub(super) fn protocol_error(&mut self, ni: NiId, nid: Nid, lane: Lane, what: String) {
        tracing::warn!(%nid, %lane, "protocol error: {what}");
        self.stats.protocol_errors += 1;
        self.events.push_back(Event::ProtocolError {
            peer: nid,
            lane,
            error: what.clone(),
        });
        self.requests.push_back((
            ni,
            LndRequest::Close {
                peer: nid,
                lane,
                error: LndError::new(LndErrorKind::Protocol, what),
            },
        ));
    }

    fn on_frame(
        &mut self,
        now: Time,
        ni: NiId,
        nid: Nid,
        lane: Lane,
        h: Header,
        payload: RxPayload,
    ) {
        self.stats.frames_received += 1;
        self.heard(now, nid);
        let local = self.nis[ni.0].nid;
        if h.src != nid || h.dst != local || h.lane != lane {
            let what = format!(
                "frame {} -> {} on the {} lane arrived on the {lane} connection from {nid} to {local}",
                h.src, h.dst, h.lane
            );
            return self.protocol_error(ni, nid, lane, what);
        }
        if payload.len() != h.payload_len as usize {
            let what = format!(
                "driver delivered {} payload bytes for a header saying {}",
                payload.len(),
                h.payload_len
            );
            return self.protocol_error(ni, nid, lane, what);
        }
        let Some(Conn::Up { credits, .. }) =
            self.peers.get_mut(&nid).map(|p| &mut p.lanes[lane].conn)
        else {
            let what = format!("frame from {nid} on the {lane} lane before its connection was up");
            return self.protocol_error(ni, nid, lane, what);
        };
        let mut accounting = credits.on_returned(h.credits);
        if accounting.is_ok() && h.frame_type().consumes_credit() {
            accounting = credits.on_consumed();
        }
        if let Err(e) = accounting {
            return self.protocol_error(ni, nid, lane, e.to_string());
        }
        match h.body {
            Body::Put { portal, match_bits } => {
                let req = Incoming {
                    from: nid,
                    lane,
                    portal,
                    match_bits,
                    msg_id: h.msg_id,
                };
                self.rx_put(ni, req, payload)
            }
            Body::Get {
                portal,
                match_bits,
                want_len,
            } => {
                let req = Incoming {
                    from: nid,
                    lane,
                    portal,
                    match_bits,
                    msg_id: h.msg_id,
                };
                self.rx_get(req, want_len)
            }
            Body::Ack { status, mlen } => {
                self.rx_answer(now, ni, nid, lane, h.msg_id, Answer::Ack(status, mlen))
            }
            Body::Reply { status } => {
                self.rx_answer(now, ni, nid, lane, h.msg_id, Answer::Reply(status, payload))
            }
            Body::Pong { .. } => {
                self.decline_deferred(ni, payload);
                self.rx_answer(now, ni, nid, lane, h.msg_id, Answer::Pong)
            }
            Body::Ping { seq } => {
                self.respond(nid, lane, Body::Pong { seq }, h.msg_id, Bytes::new())
            }
            Body::Credit => {}
            Body::Hello { .. } => {
                let what = "HELLO on an established connection".to_owned();
                return self.protocol_error(ni, nid, lane, what);
            }
        }
        // Queued frames may now have credits, and they carry what we owe; else a CREDIT.
        self.pump(nid, lane);
    }

    /// An ACK, REPLY or PONG for one of our operations.
    fn rx_answer(
        &mut self,
        now: Time,
        ni: NiId,
        from: Nid,
        lane: Lane,
        msg_id: u64,
        answer: Answer,
    ) {
        let op = self
            .awaiting
            .get(&msg_id)
            .copied()
            .filter(|id| self.ops.get(id).and_then(|op| op.route()) == Some((from, lane)));
        let Some(id) = op else {
            if msg_id & super::health::HEALTH_PING_BIT != 0 {
                return; // the monitor's own PING: being heard was the point
            }
            // Not (or no longer) ours to answer: e.g. it timed out.
            self.stats.late_responses += 1;
            if let Answer::Reply(_, payload) = answer {
                self.decline_deferred(ni, payload);
            }
            return;
        };
        let op = &self.ops[&id];
        if let Some(what) = answer.exceeds(&op.kind) {
            // A peer must not hand the application more than it asked for.
            let what = format!("{what} from {from}");
            if let Answer::Reply(_, payload) = answer {
                self.decline_deferred(ni, payload);
            }
            self.complete(id, Err(OpError::Protocol(what.clone())));
            return self.protocol_error(ni, from, lane, what);
        }
        let result = match (&op.kind, answer) {
            (OpKind::Put(_), Answer::Ack(Status::Ok, mlen)) => Ok(OpOutcome::Put { mlen }),
            (OpKind::Get(_), Answer::Reply(Status::Ok, RxPayload::Inline(data))) => {
                Ok(OpOutcome::Get { data })
            }
            (OpKind::Get(_), Answer::Reply(Status::Ok, RxPayload::Deferred { handle, len })) => {
                let seq = op.seq;
                self.fetching
                    .insert((ni, handle), Fetch::Reply { op: id, seq });
                let sink = BytesMut::with_capacity(len as usize);
                self.requests
                    .push_back((ni, LndRequest::Fetch { handle, sink }));
                return;
            }
            (OpKind::Ping { sent_at, .. }, Answer::Pong) => Ok(OpOutcome::Pong {
                rtt: now.saturating_since(*sent_at),
            }),
            (OpKind::Put(_), Answer::Ack(status, _)) => Err(status_error(status)),
            (OpKind::Get(_), Answer::Reply(status, payload)) => {
                self.decline_deferred(ni, payload);
                Err(status_error(status))
            }
            (_, answer) => {
                self.stats.late_responses += 1;
                if let Answer::Reply(_, payload) = answer {
                    self.decline_deferred(ni, payload);
                }
                return;
            }
        };
        self.complete(id, result);
    }

    /// A deferred payload arrived (or could not).
    fn on_fetched(&mut self, ni: NiId, handle: RxHandle, result: Result<Bytes, LndError>) {
        if result.is_err() {
            self.stats.fetch_failures += 1;
        }
        match self.fetching.remove(&(ni, handle)) {
            None => {
                tracing::warn!(
                    handle = handle.0,
                    "driver finished a fetch nobody asked for"
                );
                self.stats.protocol_errors += 1;
            }
            Some(Fetch::Reply { op, seq }) => {
                if self.ops.get(&op).is_some_and(|o| o.seq == seq) {
                    let result = result.map(|data| OpOutcome::Get { data });
                    self.complete(op, result.map_err(OpError::from));
                } else {
                    self.stats.late_responses += 1;
                }
            }
            Some(Fetch::Put {
                req,
                entry,
                entry_seq,
            }) => self.put_fetched(req, (entry, entry_seq), result),
        }
    }
}

/// What a non-OK ACK or REPLY status means for the initiator.
fn status_error(status: Status) -> OpError {
    match status {
        Status::NoMatch => OpError::Rejected(RejectReason::NoMatch),
        Status::Busy => OpError::Rejected(RejectReason::Busy),
        Status::Aborted | Status::Ok => {
            OpError::Remote("the target matched the message but could not take its payload".into())
        }
    }
}

pub(super) enum Answer {
    Ack(Status, u32),
    Reply(Status, RxPayload),
    Pong,
}

impl Answer {
    /// What is wrong if this answer claims more bytes than the operation `kind` sent or
    /// asked for.
    fn exceeds(&self, kind: &OpKind) -> Option<String> {
        match (kind, self) {
            (OpKind::Put(r), Answer::Ack(_, mlen)) if *mlen as usize > r.payload.len() => Some(
                format!("ACK for {mlen} bytes of a {}-byte PUT", r.payload.len()),
            ),
            (OpKind::Get(r), Answer::Reply(_, payload)) if payload.len() > r.want_len as usize => {
                Some(format!(
                    "REPLY of {} bytes to a GET for {}",
                    payload.len(),
                    r.want_len
                ))
            }
            _ => None,
        }
    }
}
