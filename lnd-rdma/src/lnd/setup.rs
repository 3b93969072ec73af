//! Connection set-up over rdma_cm: dialling, accepting, HELLOs in private data, races,
//! authentication, and handshake deadlines.
//!
//! With keys ([`lanet::handshake::auth`]), the connect request carries the dialler's
//! nonce, the accept its answer (nonce and proof, in the longer private data of a reply),
//! and the dialler's AUTH is the first message on the new queue pair. The acceptor tells
//! its connection table of the peer only once that AUTH checks out.

use std::net::SocketAddrV4;

use lanet::handshake::auth::{fresh_nonce, AcceptorStep, AuthError, DiallerStep};
use lanet::handshake::{
    check_hello, decode_compact, set_compact_rx_msg_kib, set_compact_takes_unchecked_headers,
    CompactHello, HandshakeError,
};
use lanet::lane::Lane;
use lanet::lnd::conns::{Connect, Incoming, Stage};
use lanet::lnd::{LndError, LndErrorKind};
use lanet::nid::Nid;
use lanet::wire::{HeaderCheck, HelloStatus};

use super::conn::{self, Conn, ConnAuth, Ctrl};
use super::{peer_addr, verbs_error, RdmaLnd, LISTENER_TAG};
use crate::cm::{CmEvent, CmEventKind, CmId};

fn err(kind: LndErrorKind, detail: impl Into<String>) -> LndError {
    LndError::new(kind, detail)
}

/// IB's code for 640 us: how long a peer waits to retry a message that found no posted
/// receive (UCX's default is about 1 ms).
const RNR_TIMER: u8 = 12;

// rdma_cm takes 196 bytes of private data in an RC accept: the longest answer fits.
const _: () = assert!(lanet::handshake::COMPACT_HELLO_MAX_LEN <= 196);

impl RdmaLnd {
    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.ctx.local.connect_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// The core asks for (peer, lane).
    pub(super) fn dial(&mut self, peer: Nid, lane: Lane) {
        let now = self.now();
        if self.conns.connect(peer, lane, now, &mut self.ctx.events) == Connect::Answered {
            return;
        }
        let failed = |kind, detail: String| err(kind, detail);
        let Some(addr) = peer_addr(peer).filter(|_| peer.same_net(&self.ctx.local.id.nid)) else {
            let e = failed(
                LndErrorKind::Unreachable,
                format!("{peer} is not on {}", self.ctx.local.id.nid.net()),
            );
            return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
        };
        let id = self.new_conn_id();
        let cm = match CmId::with_tag(&self.channel, u64::from(id)) {
            Ok(cm) => cm,
            Err(e) => {
                let e = failed(LndErrorKind::Resource, e.to_string());
                return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
            }
        };
        let src = SocketAddrV4::new(self.ctx.local.ip, 0);
        if let Err(e) = cm.resolve_addr(Some(src), addr, self.timeout_ms()) {
            let e = failed(LndErrorKind::Unreachable, format!("{addr}: {e}"));
            return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
        }
        tracing::debug!(%peer, %lane, "dialling {addr}");
        let conn = Conn {
            cm,
            qp: None,
            auth: ConnAuth::Done,
            reached_rts: false,
        };
        self.conns.dialled(id, peer, lane, conn, now);
    }

    pub(super) fn on_cm_event(&mut self, ev: CmEvent) {
        if ev.kind == CmEventKind::DeviceRemoval {
            // Told for each id on the device (the listener, every connection): the first
            // ends the NI.
            return self.device_removed();
        }
        if ev.tag == LISTENER_TAG {
            if ev.kind == CmEventKind::ConnectRequest {
                self.on_connect_request(ev);
            }
            return;
        }
        let Ok(id) = u32::try_from(ev.tag) else {
            return;
        };
        let timeout_ms = self.timeout_ms();
        let Some((peer, lane)) = self.conns.peer(id) else {
            // Forgotten already, or accepted and awaiting the dialler's AUTH (which its
            // first message brings; until then, only its end matters).
            let unproven = self.conns.get(id).is_some();
            if unproven && ev.kind.ends_a_connection() {
                let e = err(
                    LndErrorKind::Reset,
                    format!("{:?} before its AUTH", ev.kind),
                );
                self.fail(id, e);
            }
            return;
        };
        let dialled = self.conns.is_dialled(id);
        tracing::trace!(id, kind = ?ev.kind, status = ev.status, "rdma_cm event");
        match ev.kind {
            CmEventKind::AddrResolved => {
                let conn = self.conns.get_mut(id).expect("known above");
                if let Err(e) = conn.cm.resolve_route(timeout_ms) {
                    self.fail(id, err(LndErrorKind::Unreachable, e.to_string()));
                }
            }
            CmEventKind::RouteResolved => {
                let nonce = self
                    .ctx
                    .local
                    .auth
                    .dialler_hello(fresh_nonce)
                    .map(|a| a.nonce);
                let mut hello = self
                    .ctx
                    .local
                    .id
                    .hello(lane)
                    .encode_compact_dial(peer, nonce);
                if self.ctx.link_checks_headers {
                    set_compact_takes_unchecked_headers(&mut hello);
                }
                if let (Some(nonce), Some(conn)) = (nonce, self.conns.get_mut(id)) {
                    conn.auth = ConnAuth::Dialled(nonce);
                }
                if let Err(e) = self.qp_and_send(id, lane, CmId::connect, &hello, None) {
                    self.fail(id, e);
                }
            }
            CmEventKind::Established if dialled => {
                self.on_rts(id);
                self.dial_answered(id, &ev.private_data)
            }
            CmEventKind::Established => {
                if self.conns.stage(id) == Some(Stage::Handshake) {
                    self.mark_up(id);
                }
            }
            CmEventKind::Rejected => self.rejected(id, &ev),
            CmEventKind::Unreachable | CmEventKind::Error(_) => {
                let e = err(
                    LndErrorKind::Unreachable,
                    format!("rdma_cm: {:?} (status {})", ev.kind, ev.status),
                );
                self.fail(id, e);
            }
            CmEventKind::Disconnected => {
                self.fail(id, err(LndErrorKind::Reset, "the peer disconnected"));
            }
            CmEventKind::ConnectRequest | CmEventKind::DeviceRemoval | CmEventKind::Other(_) => {}
        }
    }

    /// Connection `id`'s QP is in RTS (our dial was answered, or we accepted): it may
    /// receive from now on (and so hold a shared receive when it fails: see `retire`). It
    /// tells peers whose message finds its shared receives empty to retry soon, not in
    /// rdma_cm's 655 ms.
    fn on_rts(&mut self, id: u32) {
        if let Some(conn) = self.conns.get_mut(id) {
            conn.reached_rts = true;
            if let Err(e) = conn.cm.set_min_rnr_timer(RNR_TIMER) {
                tracing::warn!(id, "cannot set the RNR timer: {e}");
            }
        }
    }

    /// Our connect was accepted: the reply's private data is the peer's HELLO (with its
    /// proof of a key, if it has keys; ours goes first on the queue pair).
    fn dial_answered(&mut self, id: u32, private: &[u8]) {
        let Some((peer, lane)) = self.conns.peer(id) else {
            return;
        };
        let local = self.ctx.local.id.hello(lane);
        let sent = match self.conns.get(id).map(|c| c.auth) {
            Some(ConnAuth::Dialled(nonce)) => Some(nonce),
            _ => None,
        };
        let checked = decode_compact(private, self.ctx.local.id.nid)
            .map_err(|e| e.to_string())
            .and_then(|said| {
                let mut hello =
                    check_hello(&local, Some(peer), &said.header).map_err(|e| e.to_string())?;
                hello.header_check =
                    header_check(self.ctx.link_checks_headers, said.takes_unchecked_headers);
                let step = self.ctx.local.auth.dialler_step(
                    &(&local).into(),
                    &hello,
                    sent,
                    said.auth.as_ref(),
                );
                step.map(|step| (hello, step, said.rx_msg_kib))
                    .map_err(|e| format!("not connecting to {peer}: {e}"))
            });
        match checked {
            Ok((hello, step, rx_msg_kib)) => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.auth = ConnAuth::Done;
                    if let Some(qp) = conn.qp.as_mut() {
                        qp.set_peer_msg_size(conn::peer_msg_size(rx_msg_kib), &self.ctx);
                    }
                    if let (DiallerStep::Prove(proof), Some(qp)) = (step, conn.qp.as_mut()) {
                        // Driver work goes before any frame: the AUTH is the first message.
                        let (h, p) = local.auth_frame(peer, &proof);
                        qp.ctrl.push_back(Ctrl::Frame(h, p));
                    }
                }
                let now = self.now();
                let old = self.conns.answered(id, hello, now, &mut self.ctx.events);
                self.retire(old);
                tracing::debug!(%peer, %lane, "connection up");
                self.pump(id);
            }
            Err(e) => {
                tracing::warn!(nid = %self.ctx.local.id.nid, "{e}");
                self.fail(id, err(LndErrorKind::Refused, e))
            }
        }
    }

    /// Our connect was refused: a lost race (the peer's own connection will come), or a
    /// real refusal.
    fn rejected(&mut self, id: u32, ev: &CmEvent) {
        let Some((peer, lane)) = self.conns.peer(id).filter(|_| self.conns.is_dialled(id)) else {
            return self.fail(id, err(LndErrorKind::Refused, "rejected"));
        };
        let local = self.ctx.local.id.nid;
        let said = decode_compact(&ev.private_data, local)
            .map(|c| check_hello(&self.ctx.local.id.hello(lane), Some(peer), &c.header));
        match said {
            Ok(Err(HandshakeError::LostRace)) => {}
            Ok(Err(e @ HandshakeError::KeyRequired { .. })) => {
                tracing::warn!(nid = %local, "{e}");
                return self.fail(id, err(LndErrorKind::Refused, e.to_string()));
            }
            _ => {
                let why = format!(
                    "connection refused by {peer} (rdma_cm reject, status {})",
                    ev.status
                );
                return self.fail(id, err(LndErrorKind::Refused, why));
            }
        }
        // Our dial goes quietly (its QP, which never received, with it); the peer's dial
        // answers the request.
        let now = self.now();
        let lost = self.conns.lost_race(id, now);
        self.retire(lost);
    }

    fn on_connect_request(&mut self, mut ev: CmEvent) {
        let Some(mut cm) = CmId::adopt(&self.channel, &mut ev) else {
            return;
        };
        // On refusal: why, and what to tell the dialler (a keyless one hears KeyRequired).
        let checked = decode_compact(&ev.private_data, self.ctx.local.id.nid)
            .map_err(|e| (e.to_string(), Vec::new()))
            .and_then(
                |CompactHello {
                     header,
                     auth,
                     rx_msg_kib,
                     takes_unchecked_headers,
                 }| {
                    let local = self.ctx.local.id.hello(header.lane);
                    let mut hello = check_hello(&local, None, &header)
                        .map_err(|e| (e.to_string(), Vec::new()))?;
                    if self.ctx.local.check_source_address {
                        check_source(&cm, hello.nid).map_err(|e| (e, Vec::new()))?;
                    }
                    hello.header_check =
                        header_check(self.ctx.link_checks_headers, takes_unchecked_headers);
                    let step = self.ctx.local.auth.acceptor_step(
                        &(&local).into(),
                        &hello,
                        auth.as_ref(),
                        fresh_nonce,
                    );
                    step.map(|step| (hello, step, rx_msg_kib)).map_err(|e| {
                        let say = match e {
                            AuthError::PeerHasNoKey { .. } => local
                                .encode_compact(hello.nid, HelloStatus::KeyRequired)
                                .to_vec(),
                            _ => Vec::new(),
                        };
                        (e.to_string(), say)
                    })
                },
            );
        let (hello, step, rx_msg_kib) = match checked {
            Ok(c) => c,
            Err((e, say)) => {
                let now = self.now();
                self.refusals.refused(now, self.ctx.local.id.nid, &e);
                if let Err(e) = cm.reject(&say) {
                    tracing::warn!("rdma_reject: {e}");
                }
                return;
            }
        };
        let (peer, lane) = (hello.nid, hello.lane);
        let local = self.ctx.local.id.hello(lane);
        let peer_msg = Some(conn::peer_msg_size(rx_msg_kib));
        // Each pending accept holds a queue pair: past the bound, the oldest goes.
        if self.conns.pending_accepts() >= self.ctx.local.max_pending_accepts {
            if let Some((oldest, conn)) = self.conns.evict_oldest_pending_accept() {
                self.evicted_accepts += 1;
                // Once per thousand: a flood must not flood the log too.
                if self.evicted_accepts % 1000 == 1 {
                    tracing::warn!(nid = %self.ctx.local.id.nid,
                        "{} accepted connections awaiting their handshake \
                         (max_pending_accepts): closing the oldest ({} so far)",
                        self.ctx.local.max_pending_accepts, self.evicted_accepts);
                }
                let error = err(LndErrorKind::TimedOut, "evicted: too many pending accepts");
                self.retire(Some(lanet::lnd::conns::Closed {
                    id: oldest,
                    data: conn,
                    error,
                }));
            }
        }
        let id = self.new_conn_id();
        cm.set_tag(u64::from(id));
        let now = self.now();
        if let AcceptorStep::Challenge { reply, pending } = step {
            if !self.conns.loses_race(&hello, now) {
                // The table hears of the peer only once its AUTH checks out.
                let conn = Conn {
                    cm,
                    qp: None,
                    auth: ConnAuth::AwaitingProof(pending, hello),
                    reached_rts: false,
                };
                self.conns.accepted(id, conn, now);
                let mut answer = local.encode_compact_answer(peer, HelloStatus::Ok, Some(&reply));
                say_header_check(&mut answer, hello.header_check);
                if let Err(e) = self.qp_and_send(id, lane, CmId::accept, &answer, peer_msg) {
                    tracing::warn!(%peer, %lane, "cannot accept: {e}");
                    self.fail(id, e);
                }
                return;
            }
        }
        let conn = Conn {
            cm,
            qp: None,
            auth: ConnAuth::Done,
            reached_rts: false,
        };
        self.conns.accepted(id, conn, now);
        match self.conns.incoming(id, hello, now) {
            Incoming::Refuse => {
                tracing::debug!(%peer, %lane, "refusing a connection: lost a connection race");
                let race = local.encode_compact(peer, HelloStatus::Race);
                if let Some(conn) = self.conns.remove(id) {
                    if let Err(e) = conn.cm.reject(&race) {
                        tracing::warn!("rdma_reject: {e}");
                    }
                }
            }
            Incoming::Accept { lost_dial } => {
                self.retire(lost_dial);
                let mut answer = local.encode_compact(peer, HelloStatus::Ok);
                say_header_check(&mut answer, hello.header_check);
                if let Err(e) = self.qp_and_send(id, lane, CmId::accept, &answer, peer_msg) {
                    tracing::warn!(%peer, %lane, "cannot accept: {e}");
                    self.fail(id, e);
                }
            }
        }
    }

    /// Creates connection `id`'s queue pair, then hands our HELLO (`hello`, to which it
    /// adds the size of our message buffers) to `send` (rdma_connect for our dial,
    /// rdma_accept for the peer's). `peer_msg`: the peer's message buffers, if known.
    fn qp_and_send(
        &mut self,
        id: u32,
        lane: Lane,
        send: fn(&CmId, &[u8]) -> Result<(), crate::verbs::VerbsError>,
        hello: &[u8],
        peer_msg: Option<usize>,
    ) -> Result<(), LndError> {
        self.make_cq_room(lane, conn::send_slots(self.ctx.local.id.credits[lane]));
        let cq_in_use = self.cq_in_use(lane);
        let mut private = hello.to_vec();
        // Our receive buffers' size, unless the dialler said none: it has the default
        // buffers (or predates the field, and would refuse a HELLO that says one), and
        // the connection uses the smaller size either way.
        if peer_msg != Some(conn::DEFAULT_MSG_SIZE) {
            let ours = self.ctx.recv[lane].buf_size();
            set_compact_rx_msg_kib(&mut private, conn::msg_kib(ours));
        }
        // Making room drains the CQs, whose completions may have ended this connection
        // (a dial that lost its race to the peer's, proved by an AUTH drained).
        let Some(conn) = self.conns.get_mut(id) else {
            return Ok(());
        };
        conn.create_qp(lane, cq_in_use, peer_msg, &mut self.ctx)?;
        if let Some(num) = conn.cm.qp_num() {
            self.qp_conns.insert(num, (id, lane));
        }
        send(&conn.cm, &private).map_err(verbs_error)?;
        if !self.conns.is_dialled(id) {
            // rdma_accept took the QP to RTS: the peer may send from now on (an
            // authenticating acceptor's ESTABLISHED may come after its first message).
            self.on_rts(id);
        }
        Ok(())
    }

    /// The first message on an accepted connection awaiting its dialler's AUTH (`ConnAuth::
    /// AwaitingProof`): it must be that AUTH, with a good proof. Then the table hears of
    /// the peer, and the connection is up (or, if a race was decided meanwhile, closed).
    pub(super) fn dialler_proof(
        &mut self,
        id: u32,
        message: Result<(lanet::wire::Header, bytes::Bytes), String>,
        (pending, hello): (lanet::handshake::auth::Pending, lanet::handshake::PeerHello),
    ) {
        let (peer, local) = (hello.nid, self.ctx.local.id.nid);
        let checked = message.and_then(|(h, payload)| match h.body {
            lanet::wire::Body::Auth
                if (h.src, h.dst, h.lane, h.credits) == (peer, local, hello.lane, 0) =>
            {
                lanet::handshake::auth::Proof::decode(&payload)
                    .map_err(|e| format!("{peer}: {e}"))
                    .and_then(|proof| {
                        let checked = self.ctx.local.auth.check_dialler(&pending, &proof);
                        checked.map_err(|e| e.to_string())
                    })
            }
            lanet::wire::Body::Auth => {
                Err(format!("{peer}: its AUTH names other ends than its HELLO"))
            }
            _ => Err(format!(
                "{peer} sent {:?} before proving a key (this node authenticates its peers)",
                h.frame_type()
            )),
        });
        if let Err(e) = checked {
            self.refusals.refused(self.now(), local, &e);
            return self.fail(id, err(LndErrorKind::Refused, e));
        }
        if let Some(conn) = self.conns.get_mut(id) {
            conn.auth = ConnAuth::Done;
        }
        let now = self.now();
        match self.conns.incoming_proved(id, hello, now) {
            Incoming::Accept { lost_dial } => {
                self.retire(lost_dial);
                self.mark_up(id);
            }
            Incoming::Refuse => {
                // Our own dial to it came up meanwhile and wins: the peer hears this one
                // close and uses ours.
                tracing::debug!(%peer, "closing an authenticated connection: it lost a race");
                self.fail(id, err(LndErrorKind::Closed, "lost a connection race"));
            }
        }
    }

    /// Accepted connection `id` is established: it replaces any older one to the same
    /// (peer, lane).
    pub(super) fn mark_up(&mut self, id: u32) {
        let now = self.now();
        let old = self.conns.mark_up(id, now, &mut self.ctx.events);
        self.retire(old);
        tracing::debug!(id, "connection up");
        self.pump(id);
    }
}

/// A connect request's HELLO must name a NID at the address the request comes from (see
/// [`super::RdmaConfig::check_source_address`]). Where rdma_cm gives no IPv4 address for
/// the dialler (an InfiniBand-native address, say), nothing is checked, as over TCP.
fn check_source(cm: &CmId, claimed: Nid) -> Result<(), String> {
    let claimed_ip = claimed.socket_addr(0).map(|a| *a.ip());
    match (cm.peer_ipv4(), claimed_ip) {
        (Some(from), Some(ip)) if from != ip => {
            Err(format!("HELLO claims {claimed} but comes from {from}"))
        }
        _ => Ok(()),
    }
}

/// How headers to a peer go: without a checksum when our device checks every packet and
/// the peer said, in its HELLO, that it takes them so (nodes before that flag did not).
fn header_check(link_checks_headers: bool, peer_takes_them: bool) -> HeaderCheck {
    match link_checks_headers && peer_takes_them {
        true => HeaderCheck::Link,
        false => HeaderCheck::Crc32,
    }
}

/// An acceptor's answer says it takes headers without a checksum only to a dialler that
/// said so too: a dialler from before the flag would refuse the answer.
fn say_header_check(answer: &mut [u8], check: HeaderCheck) {
    if check == HeaderCheck::Link {
        set_compact_takes_unchecked_headers(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanet::handshake::LocalHello;

    /// Without a checksum only where both ends take it so; an acceptor's answer says so
    /// exactly then (a dialler from before the flag would refuse it).
    #[test]
    fn headers_go_unchecked_only_where_both_ends_take_them_so() {
        let hello = LocalHello {
            nid: Nid::mem(1, 0),
            incarnation: 1,
            lane: Lane::Data,
            credits: 8,
            max_payload: 1 << 20,
        };
        for (ours, theirs) in [(false, false), (false, true), (true, false), (true, true)] {
            let check = header_check(ours, theirs);
            assert_eq!(check == HeaderCheck::Link, ours && theirs);
            let mut answer = hello.encode_compact(Nid::mem(2, 0), HelloStatus::Ok);
            say_header_check(&mut answer, check);
            let said = decode_compact(&answer, Nid::mem(2, 0)).unwrap();
            assert_eq!(said.takes_unchecked_headers, ours && theirs);
        }
    }
}
