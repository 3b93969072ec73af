//! The send path: peer-lane queues, credits, and frames handed to drivers.

use bytes::Bytes;

use super::health::HEALTH_PING_BIT;
use super::{Conn, InLnd, LndRequest, NiId, Node, OpKind, Peer, PeerLane, Pending, Stage};
use crate::lane::{Lane, PerLane};
use crate::lnd::{LndError, Transmit, TxToken};
use crate::nid::Nid;
use crate::op::{OpError, OpId};
use crate::time::Time;
use crate::wire::{encode_header, Body, Header};

impl Peer {
    fn new(ni: NiId) -> Peer {
        let lane = || PeerLane {
            conn: Conn::Down,
            queue: Default::default(),
            answers: Default::default(),
        };
        Peer {
            ni,
            incarnation: None,
            lanes: PerLane::new(lane(), lane()),
        }
    }
}

/// What the head of a peer-lane queue turned into.
struct Outgoing {
    body: Body,
    msg_id: u64,
    payload: Bytes,
    op: Option<(OpId, u64)>,
}

impl Node {
    pub(crate) fn peer_entry(&mut self, nid: Nid, ni: NiId) -> &mut Peer {
        self.peers.entry(nid).or_insert_with(|| Peer::new(ni))
    }

    /// Queues a frame for (peer, lane) and sends what credits allow. Callers check that
    /// `dst` is reachable; should nothing reach it after all, an operation fails with
    /// `NoRoute` and a health ping is dropped (the monitor's verdict follows in time).
    pub(crate) fn enqueue(&mut self, dst: Nid, lane: Lane, pending: Pending) {
        let Some(ni) = self.ni_of(dst) else {
            tracing::warn!(%dst, "nothing reaches this peer: not queued");
            if let Pending::Op { id, .. } = pending {
                if self.is_live(&pending) {
                    self.complete(id, Err(OpError::NoRoute(dst)));
                }
            }
            return;
        };
        self.peer_entry(dst, ni).lanes[lane]
            .queue
            .push_back(pending);
        self.pump(dst, lane);
    }

    fn is_live(&self, p: &Pending) -> bool {
        match p {
            Pending::Op { id, seq } => self.ops.get(id).is_some_and(|op| op.seq == *seq),
            Pending::HealthPing { .. } => true,
        }
    }

    /// Sends answers, then the head of (peer, lane)'s queue, while the lane is up and both
    /// the peer credit and the NI credit allow; asks for a connection if the lane is down;
    /// returns owed credits in a CREDIT frame if nothing else carried them.
    pub(crate) fn pump(&mut self, nid: Nid, lane: Lane) {
        loop {
            let Some(peer) = self.peers.get(&nid) else {
                return;
            };
            let ni = peer.ni;
            let pl = &peer.lanes[lane];
            let answer_first = !pl.answers.is_empty();
            let front_live = if answer_first {
                Some(true)
            } else {
                pl.queue.front().map(|p| self.is_live(p))
            };
            let peer_max = match &pl.conn {
                Conn::Up { hello, .. } => hello.max_payload,
                Conn::Connecting => return,
                Conn::Down => {
                    if pl.queue.iter().any(|p| self.is_live(p)) {
                        self.peers.get_mut(&nid).expect("peer").lanes[lane].conn = Conn::Connecting;
                        self.requests
                            .push_back((ni, LndRequest::Connect { peer: nid, lane }));
                    }
                    return;
                }
            };
            match front_live {
                None => break,
                Some(false) => {
                    self.peers.get_mut(&nid).expect("peer").lanes[lane]
                        .queue
                        .pop_front();
                    continue;
                }
                Some(true) => {}
            }
            // A request too large for the peer would only make it close the connection.
            if let (false, Some(Pending::Op { id, .. })) = (answer_first, pl.queue.front()) {
                if let Some(OpKind::Put(r)) = self.ops.get(id).map(|o| &o.kind) {
                    if r.payload.len() > peer_max as usize {
                        let (id, len) = (*id, r.payload.len());
                        self.peers.get_mut(&nid).expect("peer").lanes[lane]
                            .queue
                            .pop_front();
                        self.complete(
                            id,
                            Err(OpError::Remote(format!(
                                "payload of {len} bytes exceeds {nid}'s limit of {peer_max}"
                            ))),
                        );
                        continue;
                    }
                }
            }
            let peer = self.peers.get_mut(&nid).expect("peer");
            let pl = &mut peer.lanes[lane];
            let Conn::Up { credits, .. } = &mut pl.conn else {
                unreachable!("checked above")
            };
            if credits.available() == 0 {
                break;
            }
            let ni_credits = &mut self.nis[ni.0].credits[lane];
            if !ni_credits.try_take() {
                ni_credits.wait(nid);
                break;
            }
            let spent = credits.try_spend();
            debug_assert!(spent, "credit availability was checked above");
            let returned = credits.take_owed();
            let out = if answer_first {
                let r = pl.answers.pop_front().expect("checked non-empty");
                Outgoing {
                    body: r.body,
                    msg_id: r.msg_id,
                    payload: r.payload,
                    op: None,
                }
            } else {
                let pending = pl.queue.pop_front().expect("front checked");
                self.outgoing(pending)
            };
            self.emit(ni, nid, lane, out, returned, true);
        }
        self.return_credits_if_owed(nid, lane);
    }

    /// Turns a queue entry into a frame; ops move to `InLnd` and become answerable.
    fn outgoing(&mut self, pending: Pending) -> Outgoing {
        match pending {
            Pending::HealthPing { seq } => Outgoing {
                body: Body::Ping { seq },
                msg_id: HEALTH_PING_BIT | seq,
                payload: Bytes::new(),
                op: None,
            },
            Pending::Op { id, seq } => {
                let op = self.ops.get_mut(&id).expect("liveness checked");
                op.stage = Stage::InLnd;
                self.awaiting.insert(seq, id);
                let (body, payload) = match &op.kind {
                    OpKind::Put(r) => (
                        Body::Put {
                            portal: r.portal,
                            match_bits: r.match_bits,
                        },
                        r.payload.clone(),
                    ),
                    OpKind::Get(r) => (
                        Body::Get {
                            portal: r.portal,
                            match_bits: r.match_bits,
                            want_len: r.want_len,
                        },
                        Bytes::new(),
                    ),
                    OpKind::Ping { .. } => (Body::Ping { seq }, Bytes::new()),
                    OpKind::Entry(_) => unreachable!("entries are never queued"),
                };
                Outgoing {
                    body,
                    msg_id: seq,
                    payload,
                    op: Some((id, seq)),
                }
            }
        }
    }

    /// Sends a CREDIT frame if (peer, lane) owes at least the high-water mark. CREDIT frames
    /// spend neither a peer credit nor an NI credit: they must always get through.
    pub(crate) fn return_credits_if_owed(&mut self, nid: Nid, lane: Lane) {
        let Some(peer) = self.peers.get_mut(&nid) else {
            return;
        };
        let ni = peer.ni;
        let pl = &mut peer.lanes[lane];
        let Conn::Up { credits, .. } = &mut pl.conn else {
            return;
        };
        if !credits.wants_credit_frame() {
            return;
        }
        // Answers that have a peer credit wait only for our driver (an NI credit); the first
        // to leave carries what we owe. Returning it now would let the peer pile more
        // requests behind them. With no peer credit, though, the peer may be waiting for
        // ours to answer us: then the CREDIT frame must go, or both sides could wait forever.
        if !pl.answers.is_empty() && credits.available() > 0 {
            return;
        }
        let returned = credits.take_owed();
        self.stats.credit_frames_sent += 1;
        let out = Outgoing {
            body: Body::Credit,
            msg_id: 0,
            payload: Bytes::new(),
            op: None,
        };
        self.emit(ni, nid, lane, out, returned, false);
    }

    fn emit(
        &mut self,
        ni: NiId,
        peer: Nid,
        lane: Lane,
        out: Outgoing,
        credits: u16,
        ni_credit: bool,
    ) {
        let header = Header {
            lane,
            credits,
            src: self.nis[ni.0].nid,
            dst: peer,
            src_incarnation: self.cfg.incarnation,
            msg_id: out.msg_id,
            payload_len: out.payload.len() as u32,
            body: out.body,
        };
        let token = self.next_token;
        self.next_token += 1;
        self.in_lnd.insert(
            token,
            InLnd {
                ni,
                lane,
                ni_credit,
                op: out.op,
            },
        );
        if let (Lane::Health, Some(now)) = (lane, self.clock) {
            self.health_in_lnd.insert(token, now);
        }
        self.stats.frames_sent += 1;
        self.transmits[lane].push_back((
            ni,
            Transmit {
                peer,
                lane,
                header: encode_header(&header),
                payload: out.payload,
                token: TxToken(token),
            },
        ));
    }

    /// A driver finished (or failed) sending a frame.
    pub(crate) fn on_send_complete(
        &mut self,
        now: Time,
        token: TxToken,
        result: Result<(), LndError>,
    ) {
        if let Some(since) = self.health_in_lnd.remove(&token.0) {
            if result.is_ok() {
                self.health.backlog(since, now); // how long it took to leave
            }
        }
        let Some(rec) = self.in_lnd.remove(&token.0) else {
            tracing::warn!(token = token.0, "driver completed an unknown send");
            self.stats.protocol_errors += 1;
            return;
        };
        if rec.ni_credit {
            self.nis[rec.ni.0].credits[rec.lane].release();
            while let Some(waiter) = self.nis[rec.ni.0].credits[rec.lane].next_waiter() {
                self.pump(waiter, rec.lane);
            }
        }
        let Some((id, seq)) = rec.op else {
            if result.is_err() {
                self.stats.responses_dropped += 1;
            }
            return;
        };
        let Some(op) = self.ops.get_mut(&id).filter(|op| op.seq == seq) else {
            return; // already answered, timed out or cancelled
        };
        match result {
            Ok(()) => {
                if op.stage == Stage::InLnd {
                    op.stage = Stage::Awaiting;
                }
            }
            Err(e) => self.complete(id, Err(e.into())),
        }
    }
}
