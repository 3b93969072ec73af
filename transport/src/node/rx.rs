//! Driver events: connections coming and going, frames arriving, sends finishing.
//!
//! A frame arrives on a connection from a hop, and names its ends. Credits belong to the
//! hop; everything else (who asked, who answers, incarnations) to the ends. Frames for one
//! of our NIDs are handled here; others are forwarded, if this node is a router.

use bytes::{Bytes, BytesMut};

use super::faults::{Delayed, Verdict};
use super::ops::{OpKind, Stage};
use super::peers::{Conn, Hop, Pending};
use super::{Fetch, Incoming, LndRequest, NiId, Node};
use crate::credits::LaneCredits;
use crate::handshake::PeerHello;
use crate::lane::Lane;
use crate::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, RxPayload};
use crate::nid::Nid;
use crate::op::{Event, OpError, OpOutcome, RejectReason};
use crate::time::Time;
use crate::wire::{Body, Header, NackReason, Status};

impl Node {
    /// Feeds one driver event from NI `ni` into the node.
    #[inline]
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
                ref header,
                payload,
            } => self.on_frame(now, ni, peer, lane, header, payload),
            LndEvent::SendComplete { token, result } => self.on_send_complete(now, token, result),
            LndEvent::Fetched { handle, result } => self.on_fetched(ni, handle, result),
        }
        self.forget_idle_hops_if_due();
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
        let hop = self.hops.entry(nid).or_insert_with(|| Hop::new(ni));
        if let Conn::Up { hello: current, .. } = &hop.lanes[lane].conn {
            if *current == hello {
                // The answer to a connect request made while the driver replaced the
                // connection (Disconnected, then Connected): the lane is up already, and
                // its credits are as they are.
                if !self.faults.silences(nid, lane) {
                    self.heard(now, nid);
                }
                return self.pump(nid, lane);
            }
            // A different HELLO without a Disconnected first: the driver replaced the
            // connection without saying so. Treat it as the replacement it is (a new
            // incarnation fails what the old one owed below, as a restart).
            tracing::warn!(%nid, %lane, "driver reported a new connection without closing the old one");
            let same_life = current.incarnation == hello.incarnation;
            self.lane_lost(nid, lane);
            // A new life first fails what was sent to it as a restart (PeerRestarted); what
            // was sent through it (a router) is lost with its old life on every lane, and
            // goes another way below, as after the old connection's loss.
            let lanes = if same_life {
                Some(lane)
            } else {
                self.seen_hello_incarnation(now, nid, hello.incarnation);
                None
            };
            let error = LndError::new(LndErrorKind::Reset, "replaced by a new connection");
            self.fail_sent_via(nid, lanes, || error.clone().into());
        }
        let serial = self.next_conn_serial;
        self.next_conn_serial += 1;
        let hop = self.hops.get_mut(&nid).expect("hop");
        // Connected: a gateway an earlier attempt failed to reach is usable again.
        hop.unreachable_until = None;
        let hl = &mut hop.lanes[lane];
        hl.conn = Conn::Up {
            credits: LaneCredits::new(hello.credits, local, hiw),
            hello,
            serial,
        };
        // What waited while it connected has waited for the connection, not for the hop:
        // the hop is judged from now (see `forward::refuse_stalled`).
        hl.moved_at = now;
        self.seen_hello_incarnation(now, nid, hello.incarnation);
        if !self.faults.silences(nid, lane) {
            self.heard(now, nid);
        }
        self.pump(nid, lane);
    }

    /// Whether `incarnation` is one that `nid`'s current life replaced: a frame of that
    /// life is late. (Not merely a lower number: a node's clock may have gone back between
    /// its starts, and its new life must be heard.)
    fn is_earlier_life(&self, nid: Nid, incarnation: u64) -> bool {
        self.ends
            .get(&nid)
            .is_some_and(|e| e.earlier_lives.contains(&incarnation))
            // (Its end entry may have been forgotten while idle; dedup's memory is kept.)
            || self.dedup.is_replaced(nid, incarnation)
    }

    /// What a routed frame's `incarnation` is of `nid`'s lives, if not one its current
    /// life replaced ([`Node::is_earlier_life`]). A higher number than the current one is
    /// a new life: incarnations are the clock's nanoseconds at start. A lower one never
    /// seen is most likely a life before the current one that we never heard from (a
    /// frame a router held while the end restarted), while the current one was seen
    /// within `forward_patience` and a detection time: late. Past that it may be a new
    /// life whose clock went back between starts, or a frame a router held longer still
    /// (a slow next hop holds frames however long): it is taken in doubt. So is any life
    /// of an end that had one taken in doubt, and one of an end forgotten while dedup
    /// still remembers another life of it. Taken in doubt, the life it replaces is not
    /// taken for replaced: if that one speaks again it is taken back (once the other has
    /// been silent as long, if lower), rather than all its frames dropped from then on.
    fn routed_life(&self, now: Time, nid: Nid, incarnation: u64) -> RoutedLife {
        let window = self.late_frame_window();
        let Some((e, current)) = self
            .ends
            .get(&nid)
            .and_then(|e| e.incarnation.map(|current| (e, current)))
        else {
            return match self.dedup.knows_another_life(nid, incarnation) {
                true => RoutedLife::Doubtful,
                false => RoutedLife::CurrentOrNew,
            };
        };
        if current == incarnation {
            RoutedLife::CurrentOrNew
        } else if incarnation < current && now.saturating_since(e.incarnation_seen_at) < window {
            RoutedLife::Late
        } else if incarnation < current || e.in_doubt {
            RoutedLife::Doubtful
        } else {
            RoutedLife::CurrentOrNew
        }
    }

    /// How long after a far end's current life was last seen a lower life never heard
    /// from is still taken for a late frame ([`Node::routed_life`]): `forward_patience`
    /// and a detection time.
    pub(super) fn late_frame_window(&self) -> std::time::Duration {
        self.cfg.forward_patience + self.cfg.health.interval * self.cfg.health.detect_mult
    }

    /// [`Node::seen_incarnation`] from `nid`'s own HELLO, which ends any doubt about which
    /// life it is in.
    fn seen_hello_incarnation(&mut self, now: Time, nid: Nid, incarnation: u64) {
        self.seen_incarnation(now, nid, incarnation, false);
        self.end_entry(nid).in_doubt = false;
    }

    /// `nid` (an end) said it is `incarnation` (in a HELLO, or in a frame it started): if
    /// it was another before, it restarted, and whatever the old one owed us is lost.
    /// Unless `doubtful`, the life it was before is remembered as replaced: its late
    /// frames are dropped. (A HELLO is never in doubt: it comes from the end itself.)
    fn seen_incarnation(&mut self, now: Time, nid: Nid, incarnation: u64, doubtful: bool) {
        if doubtful {
            // Nor in dedup: the first request of this life would record it there.
            self.dedup.forget_node(nid);
        }
        let end = self.end_entry(nid);
        end.incarnation_seen_at = now;
        let old = end.incarnation.replace(incarnation);
        if let Some(old) = old.filter(|&o| o != incarnation) {
            end.in_doubt = doubtful;
            if !doubtful {
                super::peers::remember_earlier_life(&mut end.earlier_lives, old);
            }
            self.out.events.push_back(Event::PeerRestarted {
                peer: nid,
                old,
                new: incarnation,
                at: now,
            });
            let doomed = self.ops.of_peer(nid, |op| {
                op.stage != Stage::Queued && op.target().is_some_and(|(d, _)| d == nid)
            });
            for id in doomed {
                self.complete(id, Err(OpError::PeerRestarted));
            }
            self.gateway_restarted(now, nid);
        } else if doubtful {
            end.in_doubt = true;
        }
    }

    fn on_connect_failed(&mut self, nid: Nid, lane: Lane, error: LndError) {
        self.connect_failed(nid, lane, error, false);
    }

    /// (hop, lane) could not be connected; `for_good` if its NI is gone, when even the
    /// operations that chose to wait for a Down target end.
    fn connect_failed(&mut self, nid: Nid, lane: Lane, error: LndError, for_good: bool) {
        let Some(hop) = self.hops.get_mut(&nid) else {
            return;
        };
        let hl = &mut hop.lanes[lane];
        if matches!(hl.conn, Conn::Up { .. }) {
            return; // a losing duplicate attempt; the lane is up
        }
        hl.conn = Conn::Down;
        let answers = std::mem::take(&mut hl.answers);
        let queued = std::mem::take(&mut hl.queue);
        // A gateway we cannot connect to is no gateway for a while (until a connection
        // to it comes up), unless its other lane is up all the same.
        let other_up = hop
            .lanes
            .iter()
            .any(|(_, l)| matches!(l.conn, Conn::Up { .. }));
        if !other_up && self.routes.is_gateway(nid) {
            let until = self.clock.unwrap_or_default() + self.cfg.health.detect_time();
            if let Some(hop) = self.hops.get_mut(&nid) {
                hop.unreachable_until = Some(until);
            }
        }
        self.reroute_answers(nid, lane, answers);
        let mut keep = std::collections::VecDeque::new();
        for p in queued {
            match p {
                // Operations waiting for a Down target keep waiting (its return pumps
                // them); routed ones try another gateway; the rest fail with the error.
                Pending::Op { id, seq } => {
                    // An entry left behind by an op that went another way is dead here.
                    if !self.is_live(nid, &p) {
                        continue;
                    }
                    let Some(op) = self.ops.live(id, seq) else {
                        continue;
                    };
                    if op.router().is_some() {
                        // Not in a driver (a copy of an earlier attempt, if one left, keeps
                        // its message id: the target tells it apart): another way is safe.
                        self.resend(id, &error.clone().into());
                    } else if !for_good && self.waits_for_peer(id) {
                        keep.push_back(p);
                    } else {
                        self.complete(id, Err(error.clone().into()));
                    }
                }
                // The monitor pings again if it must; the status goes with the next PONG.
                Pending::HealthPing { .. } | Pending::Status => {}
                Pending::Forward(f) => self.refuse_forward(*f, NackReason::NextHopDown),
            }
        }
        if let Some(hop) = self.hops.get_mut(&nid) {
            hop.lanes[lane].queue.extend(keep);
        }
    }

    /// (hop, lane) can carry nothing any more (its NI went down): as if its connection
    /// failed, whether it was up or being set up.
    pub(super) fn hop_gone(&mut self, nid: Nid, lane: Lane, error: &LndError) {
        let up = self
            .hops
            .get(&nid)
            .is_some_and(|h| matches!(h.lanes[lane].conn, Conn::Up { .. }));
        if up {
            self.lane_lost(nid, lane);
            self.fail_sent_via(nid, Some(lane), || error.clone().into());
        }
        // Then what still waits for it fails or goes another way: for good, as nothing
        // will carry it to that hop again.
        self.connect_failed(nid, lane, error.clone(), true);
    }

    fn on_disconnected(&mut self, nid: Nid, lane: Lane, error: LndError) {
        if !self.hops.contains_key(&nid) {
            return;
        }
        self.lane_lost(nid, lane);
        // Requests that went on this connection cannot be answered on it any more.
        self.fail_sent_via(nid, Some(lane), || error.clone().into());
        // Queued requests wait for a new connection (within their deadlines).
        self.pump(nid, lane);
    }

    /// The (hop, lane) connection is gone: what only it could carry goes with it.
    fn lane_lost(&mut self, nid: Nid, lane: Lane) {
        let Some(hop) = self.hops.get_mut(&nid) else {
            return;
        };
        let hl = &mut hop.lanes[lane];
        let lost = match std::mem::replace(&mut hl.conn, Conn::Down) {
            Conn::Up { serial, .. } => Some(serial),
            _ => None,
        };
        self.fail_unposted(nid, lane);
        if let Some(serial) = lost.filter(|_| self.cfg.forwarding) {
            self.refuse_from_lost(nid, lane, serial);
        }
        // A close asked for this connection (a protocol error) is moot now; handed over
        // later, it would close whichever connection replaced it.
        self.out.requests.retain(
            |(_, r)| !matches!(r, LndRequest::Close { peer, lane: l, .. } if *peer == nid && *l == lane),
        );
        for held in self.faults.forget(nid, lane) {
            self.decline_deferred(held.ni, held.payload);
        }
        let Some(hop) = self.hops.get_mut(&nid) else {
            return;
        };
        let hl = &mut hop.lanes[lane];
        let answers = std::mem::take(&mut hl.answers);
        let forwards = hl.take_forwards();
        // Our own requests wait for a new connection; the monitor pings again if it must.
        hl.queue.retain(|p| matches!(p, Pending::Op { .. }));
        // A router holds nothing for a next hop that went away (LU-17855): refused now.
        for f in forwards {
            self.refuse_forward(f, NackReason::NextHopDown);
        }
        self.reroute_answers(nid, lane, answers);
    }

    /// Frames built for (hop, lane)'s lost connection and not yet handed to its driver end
    /// as if the driver had failed them. Handed over later, they would go out on whichever
    /// connection is up by then, a new one, which never gave the credit they spend nor
    /// owes the credits they carry back (its peer would close it for an overrun).
    fn fail_unposted(&mut self, nid: Nid, lane: Lane) {
        let mut unposted = Vec::new();
        self.out.transmits[lane].retain(|(_, tx)| {
            let stale = tx.peer == nid;
            if stale {
                unposted.push(tx.token);
            }
            !stale
        });
        let now = self.clock.unwrap_or_default();
        for token in unposted {
            let error = LndError::new(LndErrorKind::Closed, "its connection was lost");
            self.on_send_complete(now, token, Err(error));
        }
    }

    /// Answers that were waiting at (hop, lane), whose connection is gone: those for the
    /// hop itself die with it (its own deadlines cover them); those passing through it, a
    /// gateway, go another way if there is one (an answer may arrive twice: the second is
    /// a late answer, harmless).
    fn reroute_answers(
        &mut self,
        hop: Nid,
        lane: Lane,
        answers: std::collections::VecDeque<super::peers::Response>,
    ) {
        for mut answer in answers {
            // Each way it tried failed to connect: past the resend budget it goes, or
            // two dead gateways would pass it back and forth for ever. (Counted after
            // the check: a budget of 255, the most the configuration takes, would wrap.)
            if answer.dst == hop || answer.reroutes >= self.cfg.resend_budget {
                self.stats.responses_dropped += 1;
                self.stats.lanes[lane].dropped += 1;
            } else {
                answer.reroutes += 1;
                self.send_answer_avoiding(lane, answer, Some(hop));
            }
        }
    }

    /// The ops whose request went to hop `nid` (on `lane`, or any lane) and whose answer
    /// is now in doubt: sent to `nid` itself, they fail; through it (a router), they are
    /// sent again another way, within their resend budget.
    pub(super) fn fail_sent_via(
        &mut self,
        nid: Nid,
        lane: Option<Lane>,
        error: impl Fn() -> OpError,
    ) {
        let doomed = self.ops.of_peer(nid, |op| {
            op.stage != Stage::Queued
                && op.via == Some(nid)
                && op
                    .target()
                    .is_some_and(|(_, l)| lane.is_none_or(|lane| lane == l))
        });
        for id in doomed {
            if self.ops.get(id).is_some_and(|op| op.router().is_some()) {
                self.resend_after_failure(id, &error());
            } else {
                self.complete(id, Err(error()));
            }
        }
    }

    /// Closes a connection whose peer broke the protocol, and says so.
    pub(super) fn protocol_error(&mut self, ni: NiId, nid: Nid, lane: Lane, what: String) {
        self.count_protocol_error(nid, nid, lane, &what);
        self.out.events.push_back(Event::ProtocolError {
            peer: nid,
            lane,
            error: what.clone(),
        });
        self.out.requests.push_back((
            ni,
            LndRequest::Close {
                peer: nid,
                lane,
                error: LndError::new(LndErrorKind::Protocol, what),
            },
        ));
    }

    /// Logs and counts a protocol error of `src`'s, which came through hop `via` (`src`
    /// itself when it is the hop).
    fn count_protocol_error(&mut self, src: Nid, via: Nid, lane: Lane, what: &str) {
        tracing::warn!(%src, %via, %lane, "protocol error: {what}");
        self.stats.protocol_errors += 1;
        self.stats.lanes[lane].protocol_errors += 1;
    }

    /// A frame from hop `nid`, unless a fault rule drops or delays it.
    fn on_frame(
        &mut self,
        now: Time,
        ni: NiId,
        nid: Nid,
        lane: Lane,
        h: &Header,
        payload: RxPayload,
    ) {
        self.stats.frames_received += 1;
        let counts = &mut self.stats.lanes[lane];
        counts.frames_received += 1;
        counts.bytes_received += u64::from(h.payload_len);
        if lane == Lane::Health {
            self.stats.health_frames_received += 1;
        }
        if h.frame_type().consumes_credit() {
            match self.faults.judge(lane, h) {
                Verdict::Pass => {}
                Verdict::Drop => return self.fault_drop(ni, nid, lane, h, payload),
                Verdict::Delay(d) => {
                    // Not yet connected: the normal path says why that is wrong.
                    if let Some((serial, credits)) = self.conn_serial(nid, lane) {
                        let held = Delayed {
                            ni,
                            hop: nid,
                            lane,
                            serial,
                            header: *h,
                            payload,
                        };
                        let Some(over) = self.faults.hold(now + d, held, credits) else {
                            self.stats.lanes[lane].fault_delayed += 1;
                            return;
                        };
                        self.decline_deferred(ni, over.payload);
                        let what = format!("{nid} sent more than its window of {credits} credits");
                        return self.protocol_error(ni, nid, lane, what);
                    }
                }
            }
        }
        self.on_frame_admitted(now, ni, nid, lane, h, payload)
    }

    /// The (hop, lane) connection's serial and its credit window, if it is up.
    fn conn_serial(&self, nid: Nid, lane: Lane) -> Option<(u64, u16)> {
        match &self.hops.get(&nid)?.lanes[lane].conn {
            Conn::Up {
                serial, credits, ..
            } => Some((*serial, credits.window())),
            Conn::Down | Conn::Connecting => None,
        }
    }

    /// A fault rule lost this frame: never heard, never handled; its credit (and those it
    /// returns) accounted as the LND would.
    fn fault_drop(&mut self, ni: NiId, nid: Nid, lane: Lane, h: &Header, payload: RxPayload) {
        self.decline_deferred(ni, payload);
        self.stats.lanes[lane].fault_dropped += 1;
        let Some(Conn::Up { credits, .. }) =
            self.hops.get_mut(&nid).map(|p| &mut p.lanes[lane].conn)
        else {
            let what = format!("frame from {nid} on the {lane} lane before its connection was up");
            return self.protocol_error(ni, nid, lane, what);
        };
        if let Err(e) = credits
            .on_returned(h.credits)
            .and_then(|()| credits.on_consumed())
        {
            return self.protocol_error(ni, nid, lane, e.to_string());
        }
        self.pump(nid, lane);
    }

    /// Frames whose delay is over, handled now, unless their connection went meanwhile.
    pub(super) fn release_delayed(&mut self, now: Time) {
        while let Some(d) = self.faults.release(now) {
            if self.conn_serial(d.hop, d.lane).map(|(s, _)| s) == Some(d.serial) {
                self.on_frame_admitted(now, d.ni, d.hop, d.lane, &d.header, d.payload);
            } else {
                self.decline_deferred(d.ni, d.payload);
            }
        }
    }

    /// A frame from hop `nid`: credits first (they are the hop's), then by destination.
    fn on_frame_admitted(
        &mut self,
        now: Time,
        ni: NiId,
        nid: Nid,
        lane: Lane,
        h: &Header,
        payload: RxPayload,
    ) {
        // A CREDIT frame is not judged by fault rules (its credits must count), but from a
        // node whose every frame is dropped it is no sign of life either. A frame the hop
        // forwards for another source is judged by that source, so it still counts.
        if h.src != nid || !self.faults.silences(nid, lane) {
            self.heard(now, nid);
        }
        if let Err(what) = self.check_frame(ni, nid, lane, h, &payload) {
            self.decline_deferred(ni, payload);
            return self.protocol_error(ni, nid, lane, what);
        }
        let Some(Conn::Up {
            credits, serial, ..
        }) = self.hops.get_mut(&nid).map(|p| &mut p.lanes[lane].conn)
        else {
            let what = format!("frame from {nid} on the {lane} lane before its connection was up");
            self.decline_deferred(ni, payload);
            return self.protocol_error(ni, nid, lane, what);
        };
        let serial = *serial;
        let mut accounting = credits.on_returned(h.credits);
        if accounting.is_ok() && h.frame_type().consumes_credit() {
            accounting = credits.on_consumed();
        }
        if let Err(e) = accounting {
            self.decline_deferred(ni, payload);
            return self.protocol_error(ni, nid, lane, e.to_string());
        }
        if !self.is_local(h.dst) {
            if !h.frame_type().consumes_credit() {
                // HELLO and CREDIT are the hop's own business: never passed on.
                let what = format!("{:?} frame addressed to {}", h.frame_type(), h.dst);
                self.decline_deferred(ni, payload);
                return self.protocol_error(ni, nid, lane, what);
            }
            self.forward(ni, nid, lane, serial, *h, payload);
            // After the forward holds the frame's credit: a PING this sends to the hop may
            // leave at once, carrying every credit owed on its lane.
            self.router_generation_seen(nid, h);
            return self.pump(nid, lane);
        }
        self.router_generation_seen(nid, h);
        if h.src != nid {
            let life = self.routed_life(now, h.src, h.src_incarnation);
            if life == RoutedLife::Late || self.is_earlier_life(h.src, h.src_incarnation) {
                // Late through a router, from before the end restarted: its requests'
                // initiator is gone, and what it answered ended with that life.
                self.stats.stale_frames += 1;
                self.decline_deferred(ni, payload);
                return self.pump(nid, lane);
            }
            // Started behind a router: the frame is all we hear of that end.
            let doubtful = life == RoutedLife::Doubtful;
            self.seen_incarnation(now, h.src, h.src_incarnation, doubtful);
            self.heard(now, h.src);
        }
        let req = Incoming {
            from: h.src,
            incarnation: h.src_incarnation,
            // Through a router, or through this very node as the gateway to the NID it
            // addressed (a node routing between its own nets): either way, if that hop
            // fails the initiator sends a copy another way, to be told apart.
            routed: h.src != nid || h.dst != self.nis[ni.0].nid,
            hop: nid,
            to: h.dst,
            lane,
            portal: 0,
            match_bits: 0,
            msg_id: h.msg_id,
            wants_ack: true,
        };
        match h.body {
            Body::Put {
                portal,
                match_bits,
                settled_below,
                ack,
            } => {
                let req = Incoming {
                    portal,
                    match_bits,
                    wants_ack: ack,
                    ..req
                };
                // Copies of a PUT without ACK are never sent (its initiator fails it
                // instead), and one may overtake another on the way, past the floor a
                // later one raised: such PUTs are not held against that window.
                if !ack {
                    self.rx_put(ni, req, payload)
                } else if let Some(payload) = self.first_time(ni, req, settled_below, payload) {
                    self.rx_put(ni, req, payload)
                }
            }
            Body::Get {
                portal,
                match_bits,
                want_len,
                settled_below,
            } => {
                let req = Incoming {
                    portal,
                    match_bits,
                    ..req
                };
                if self.first_time(ni, req, settled_below, payload).is_some() {
                    self.rx_get(req, want_len)
                }
            }
            Body::Ack { status, mlen } => {
                self.rx_answer(now, ni, nid, h, Answer::Ack(status, mlen))
            }
            Body::Reply { status } => {
                self.rx_answer(now, ni, nid, h, Answer::Reply(status, payload))
            }
            Body::Pong { .. } => {
                // A router's status counts from that router itself only: a neighbour's
                // frame in another's name could make a healthy router withdraw.
                if let RxPayload::Inline(status) = &payload {
                    if !status.is_empty() && h.src == nid {
                        self.status_received(now, h.src, status);
                    }
                }
                self.decline_deferred(ni, payload);
                self.rx_answer(now, ni, nid, h, Answer::Pong)
            }
            Body::Status => match &payload {
                // From the router itself only, as a PONG's status (its own hop's business).
                RxPayload::Inline(status) if h.src == nid => {
                    self.status_received(now, h.src, status)
                }
                RxPayload::Inline(_) => {
                    tracing::debug!(hop = %nid, src = %h.src, "a status in another's name: ignored");
                    self.stats.protocol_errors += 1;
                }
                RxPayload::Deferred { .. } => self.decline_deferred(ni, payload),
            },
            Body::Nack { reason, target } => {
                self.stats.nacks_received += 1;
                self.stats.lanes[lane].nacks_received += 1;
                self.rx_answer(now, ni, nid, h, Answer::Nack(reason, target))
            }
            Body::Ping { seq } => {
                // A router answers with its status.
                let status = if self.cfg.forwarding {
                    self.router.encoded.clone()
                } else {
                    Bytes::new()
                };
                self.respond(req, Body::Pong { seq }, status)
            }
            Body::Credit => {}
            Body::Hello { .. } | Body::Auth => {
                let what = format!("{:?} on an established connection", h.frame_type());
                return self.protocol_error(ni, nid, lane, what);
            }
        }
        // Queued frames may now have credits, and they carry what we owe; else a CREDIT.
        self.pump(nid, lane);
    }

    /// What is wrong with a frame from hop `nid`, if anything, before it is trusted.
    fn check_frame(
        &self,
        ni: NiId,
        nid: Nid,
        lane: Lane,
        h: &Header,
        payload: &RxPayload,
    ) -> Result<(), String> {
        let local = self.nis[ni.0].nid;
        if h.lane != lane {
            return Err(format!(
                "frame of the {} lane arrived on the {lane} connection from {nid}",
                h.lane
            ));
        }
        if payload.len() != h.payload_len as usize {
            return Err(format!(
                "driver delivered {} payload bytes for a header saying {}",
                payload.len(),
                h.payload_len
            ));
        }
        // An end node hears its own nets' nodes only from themselves; from other nets,
        // through routers. (A router may pass on frames from anywhere.)
        let src_is_neighbour = self.ni_of(h.src).is_some();
        if !self.cfg.forwarding && src_is_neighbour && h.src != nid {
            return Err(format!(
                "frame {} -> {} arrived on the connection from {nid} to {local}",
                h.src, h.dst
            ));
        }
        // Credit frames concern the hop alone.
        if h.frame_type() == crate::wire::FrameType::Credit && (h.src != nid || h.dst != local) {
            return Err(format!("CREDIT frame {} -> {} from {nid}", h.src, h.dst));
        }
        Ok(())
    }

    /// An ACK, REPLY, PONG or NACK for one of our operations, from its target (or, for a
    /// NACK, from a router on the way), by way of hop `hop`.
    #[inline]
    fn rx_answer(&mut self, now: Time, ni: NiId, hop: Nid, h: &Header, answer: Answer) {
        // Answers are matched on the message and its far end, not on the connection: the
        // way back need not be the way out.
        let target = match answer {
            Answer::Nack(_, target) => target,
            _ => h.src,
        };
        let op = self
            .ops
            .answering(h.msg_id)
            .filter(|id| self.ops.get(*id).and_then(|op| op.target()) == Some((target, h.lane)));
        let Some(id) = op else {
            if h.msg_id & super::health::HEALTH_PING_BIT != 0 {
                // The monitor's own PING: being heard (or refused) was the point; a PONG
                // times the round trip too.
                let seq = h.msg_id & !super::health::HEALTH_PING_BIT;
                match answer {
                    Answer::Pong => self.health_pong(now, seq),
                    Answer::Nack(_, dst) => self.health_ping_refused(seq, dst, h.src),
                    // Nothing of ours: its payload, if it is left in the driver, goes.
                    Answer::Reply(_, payload) => {
                        self.stats.late_responses += 1;
                        self.decline_deferred(ni, payload);
                    }
                    Answer::Ack(..) => self.stats.late_responses += 1,
                }
                return;
            }
            // Not (or no longer) ours to answer: e.g. it timed out.
            self.stats.late_responses += 1;
            if let Answer::Reply(_, payload) = answer {
                self.decline_deferred(ni, payload);
            }
            return;
        };
        let op = self.ops.get(id).expect("found above");
        if matches!(answer, Answer::Ack(..)) && op.kind.unanswered() {
            // An ACK nobody asked for (no node of ours sends one), whatever it says: the
            // send completion ends the PUT.
            self.stats.late_responses += 1;
            return;
        }
        if let Some(what) = answer.exceeds(&op.kind) {
            // A peer must not hand the application more than it asked for.
            let what = format!("{what} from {}", h.src);
            if let Answer::Reply(_, payload) = answer {
                self.decline_deferred(ni, payload);
            }
            self.complete(id, Err(OpError::Protocol(what.clone())));
            if h.src == hop {
                return self.protocol_error(ni, hop, h.lane, what);
            }
            // Through a router, which cannot know what the op asked for: the far end broke
            // the protocol, not the hop, whose connection (and every op through it) stays.
            return self.count_protocol_error(h.src, hop, h.lane, &what);
        }
        let result = match (&op.kind, answer) {
            (_, Answer::Nack(_, _)) if op.router().is_none() => {
                // Sent straight to its target, it passed no router that could refuse it:
                // the NACK is forged (a neighbour guessing message ids) or confused. Taken,
                // it would end the op, which has no other way to go.
                self.stats.late_responses += 1;
                return;
            }
            (_, Answer::Nack(_, _)) if h.attempt != super::ops::wire_attempt(op.attempts) => {
                // A refusal of a copy this op already replaced (every copy sent another
                // way counts an attempt): by a gateway it left when that said it could not
                // take it, or by a router deeper on the way.
                self.stats.late_responses += 1;
                return;
            }
            (kind, Answer::Nack(reason, _)) => {
                tracing::debug!(op = %id, by = %h.src, %reason, "request refused on the way");
                let error = nack_error(reason, target, h.src);
                if kind.unanswered() {
                    // Refused before its send completed. A copy may still be out (a next
                    // hop that failed as it passed it on), and the target keeps no record
                    // to tell a resent one from it: the refusal ends it.
                    return self.complete(id, Err(error));
                }
                return self.resend(id, &error);
            }
            (OpKind::Put(_), Answer::Ack(Status::Ok, mlen)) => Ok(OpOutcome::Put { mlen }),
            (OpKind::Get(_), Answer::Reply(Status::Ok, RxPayload::Inline(data))) => {
                Ok(OpOutcome::Get { data })
            }
            (OpKind::Get(_), Answer::Reply(Status::Ok, RxPayload::Deferred { handle, len })) => {
                let (seq, attempt) = (op.seq, op.attempts);
                if !self.reply_fetches.start(seq, hop) {
                    // A second REPLY by the same way, while the first one's payload is
                    // fetched: a peer's error, or a hostile one making each take a buffer
                    // of its length.
                    self.stats.late_responses += 1;
                    return self.decline_deferred(ni, RxPayload::Deferred { handle, len });
                }
                self.fetching.insert(
                    (ni, handle),
                    Fetch::Reply {
                        op: id,
                        seq,
                        attempt,
                        hop,
                    },
                );
                let sink = BytesMut::with_capacity(len as usize);
                self.out
                    .requests
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
    pub(super) fn on_fetched(
        &mut self,
        ni: NiId,
        handle: RxHandle,
        result: Result<Bytes, LndError>,
    ) {
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
            Some(Fetch::Reply {
                op,
                seq,
                attempt,
                hop,
            }) => {
                let another_reply = self.reply_fetches.end(seq, hop);
                let Some(live) = self.ops.live(op, seq) else {
                    self.stats.late_responses += 1;
                    return;
                };
                let (resent, routed) = (live.attempts != attempt, live.router().is_some());
                // The REPLY came by a router the GET has left since (it failed), or the GET
                // waits to go out again: a copy sent another way answers.
                let superseded = live.avoid.contains(&hop) || live.stage == super::Stage::Queued;
                match result {
                    Ok(data) => self.complete(op, Ok(OpOutcome::Get { data })),
                    // The GET went out again since (its router failed): that copy answers;
                    // or another REPLY, to a copy by another way, is being fetched.
                    Err(_) if resent || superseded || another_reply => {}
                    // The payload was held on the way back, by a router that failed: the
                    // target answers a copy sent another way from its record, without
                    // serving it twice. (The copy avoids the router the request went out
                    // through, which is the one that held the payload unless the answer
                    // came back another way.)
                    Err(e) if routed => self.resend_after_failure(op, &e.into()),
                    Err(e) => self.complete(op, Err(e.into())),
                }
            }
            Some(Fetch::Put {
                req,
                entry,
                entry_seq,
            }) => self.put_fetched(req, (entry, entry_seq), result),
            Some(Fetch::Forward { header, upstream }) => {
                self.forward_fetched(header, upstream, result)
            }
        }
    }
}

/// What a non-OK ACK or REPLY status means for the initiator.
fn status_error(status: Status) -> OpError {
    match status {
        Status::NoMatch => OpError::Rejected(RejectReason::NoMatch),
        Status::Busy => OpError::Rejected(RejectReason::Busy),
        Status::Aborted | Status::Ok => OpError::Remote(
            "aborted: the payload could not be moved (its transfer failed, or a REPLY was \
             larger than a hop on the way back takes)"
                .into(),
        ),
    }
}

/// What a NACK means for the initiator when no other way is left.
fn nack_error(reason: NackReason, target: Nid, by: Nid) -> OpError {
    match reason {
        NackReason::NoRoute => OpError::NoRoute(target),
        _ => OpError::Network(format!("refused by {by} on the way to {target}: {reason}")),
    }
}

/// What a routed frame's incarnation is of its end's lives ([`Node::routed_life`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoutedLife {
    /// The current life, or a new one (a restart).
    CurrentOrNew,
    /// A life before the current one that was never heard from: the frame is late.
    Late,
    /// Perhaps a new life: lower than the current one, which has been silent long; any
    /// other of an end that had a life taken in doubt; or one of an end forgotten while
    /// dedup remembers another.
    Doubtful,
}

pub(super) enum Answer {
    Ack(Status, u32),
    Reply(Status, RxPayload),
    Pong,
    Nack(NackReason, Nid),
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
