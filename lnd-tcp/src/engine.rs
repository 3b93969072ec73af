//! The TCP driver's connection logic, without system calls: HELLO handshakes, connection
//! races, frames in and out, failures and timeouts. A backend (epoll, io_uring) owns the
//! sockets, moves bytes, and tells the engine what happened; the engine produces the
//! [`LndEvent`]s for the core and tells the backend which sockets to close.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::handshake::auth::{fresh_nonce, AcceptorStep, Auth, AuthError, DiallerStep, Nonce};
use lanet::handshake::auth::{Pending, Proof};
use lanet::handshake::{check_hello, hello_auth, HandshakeError, Identity, PeerHello};
use lanet::lane::Lane;
use lanet::lnd::conns::{Closed, ConnMut, ConnTable, Connect, Incoming, Stage};
use lanet::lnd::{LndError, LndErrorKind, LndEvent, Readiness, RxPayload, Transmit, TxToken};
use lanet::nid::Nid;
use lanet::time::Time;
use lanet::wire::{Body, Header, HeaderCheck, HelloStatus, Limits};

use crate::accept_pause::AcceptPause;
use crate::framing::{RxFramer, TxQueue};

/// Names a socket of the backend.
pub(crate) type ConnId = usize;

/// What this node says about itself, and how long it waits for others.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) id: Identity,
    pub(crate) connect_timeout: Duration,
    /// See [`crate::TcpConfig::check_source_address`].
    pub(crate) check_source_address: bool,
    /// See [`crate::TcpConfig::max_pending_accepts`].
    pub(crate) max_pending_accepts: usize,
    /// See [`crate::TcpConfig::auth`].
    pub(crate) auth: Auth,
}

/// Where a connection's authentication stands.
#[derive(Debug, Clone, Copy)]
enum ConnAuth {
    /// Nothing to do (none asked, or done).
    Done,
    /// We dialled, with this nonce in our HELLO.
    Dialled(Nonce),
    /// We accepted and answered `PeerHello` with a challenge: the dialler's AUTH must
    /// come next. Until it checks out, the connection table does not hear of the peer:
    /// an impostor must not cancel our dial to the node it claims to be, nor take its
    /// place.
    AwaitingProof(Pending, PeerHello),
    /// We refused the dialler for proving no key: the connection closes once our
    /// `KeyRequired` HELLO is out.
    Refusing,
}

/// A socket's bytes in and out (the connection table keeps the rest).
pub(crate) struct Conn {
    /// The TCP connect of a dial is still in progress.
    connecting: bool,
    /// Where an accepted connection comes from (none for a dial, or if the kernel
    /// could not say).
    from: Option<IpAddr>,
    auth: ConnAuth,
    pub(crate) rx: RxFramer,
    pub(crate) tx: TxQueue,
}

impl Conn {
    pub(crate) fn wants_write(&self) -> bool {
        !self.connecting && !self.tx.is_empty()
    }

    pub(crate) fn is_connecting(&self) -> bool {
        self.connecting
    }
}

pub(crate) struct Engine {
    local: Local,
    conns: ConnTable<ConnId, Conn>,
    /// The table's clock: deadlines are kept as time since this.
    origin: Instant,
    /// For the core.
    pub(crate) events: Vec<LndEvent>,
    /// Sockets the backend must close (the engine has forgotten them).
    closes: Vec<ConnId>,
    done: Vec<TxToken>,
    /// Connections closed to keep within `max_pending_accepts`.
    evicted_accepts: u64,
    /// Accepted connections refused at their handshake.
    refusals: lanet::lnd::Refusals,
    /// Accepting paused after an accept failed for want of descriptors (or for anything
    /// else that is not the one connection's): the backends ask it.
    pub(crate) accept_pause: AcceptPause,
}

fn err(kind: LndErrorKind, detail: impl Into<String>) -> LndError {
    LndError::new(kind, detail)
}

impl Engine {
    pub(crate) fn new(local: Local) -> Engine {
        Engine {
            conns: ConnTable::new(local.id.nid, local.id.credits, local.connect_timeout),
            local,
            origin: Instant::now(),
            events: Vec::new(),
            closes: Vec::new(),
            done: Vec::new(),
            evicted_accepts: 0,
            refusals: Default::default(),
            accept_pause: AcceptPause::default(),
        }
    }

    pub(crate) fn local(&self) -> &Local {
        &self.local
    }

    /// TCP's 16-bit checksum is weak: headers keep their CRC-32.
    fn limits(&self) -> Limits {
        Limits::new(self.local.id.max_payload, HeaderCheck::Crc32)
    }

    fn time(&self, at: Instant) -> Time {
        Time::from_duration(at.saturating_duration_since(self.origin))
    }

    fn new_conn(&self, connecting: bool, from: Option<IpAddr>) -> Conn {
        Conn {
            connecting,
            from,
            auth: ConnAuth::Done,
            rx: RxFramer::for_handshake(self.limits()),
            tx: TxQueue::default(),
        }
    }

    pub(crate) fn lane_of(&self, id: ConnId) -> Option<Lane> {
        self.conns.peer(id).map(|(_, lane)| lane)
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id)
    }

    /// A connection with its lane, once known (an accepted one learns it from the HELLO).
    pub(crate) fn conn_and_lane(&mut self, id: ConnId) -> Option<(&mut Conn, Option<Lane>)> {
        let c = self.conns.get_mut_with_state(id)?;
        Some((c.data, c.peer.map(|(_, lane)| lane)))
    }

    /// Sockets to close; the backend drops them.
    pub(crate) fn take_closes(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.closes)
    }

    /// Whether [`Engine::take_closes`] has any.
    pub(crate) fn has_closes(&self) -> bool {
        !self.closes.is_empty()
    }

    /// The core asks for (peer, lane). True if the backend should dial; otherwise the
    /// answer is given (already up: said again) or comes when the attempt under way ends.
    pub(crate) fn want_connect(&mut self, peer: Nid, lane: Lane, now: Instant) -> bool {
        let now = self.time(now);
        self.conns.connect(peer, lane, now, &mut self.events) == Connect::Dial
    }

    /// Where to dial for the core's connect request, or None when no dial is needed (the
    /// answer is given, or on its way) or possible (then the failure is reported).
    pub(crate) fn dial_target(
        &mut self,
        peer: Nid,
        lane: Lane,
        now: Instant,
    ) -> Option<std::net::SocketAddrV4> {
        if !self.want_connect(peer, lane, now) {
            return None;
        }
        let addr = peer.socket_addr(crate::DEFAULT_PORT);
        if addr.is_none() {
            let e = err(
                LndErrorKind::Unreachable,
                format!("{peer} is not an IP address"),
            );
            self.dial_failed(peer, lane, e);
        }
        addr
    }

    /// The backend started dialling `conn` for (peer, lane).
    pub(crate) fn dialled(&mut self, conn: ConnId, peer: Nid, lane: Lane, now: Instant) {
        let data = self.new_conn(true, None);
        let now = self.time(now);
        self.conns.dialled(conn, peer, lane, data, now);
    }

    /// Dialling failed before a socket existed.
    pub(crate) fn dial_failed(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.conns.dial_failed(peer, lane, error, &mut self.events);
    }

    /// The backend accepted `conn`, from address `from`; its HELLO should follow. If too
    /// many accepted connections await the end of their handshake (their HELLO, or
    /// their AUTH), the one that has waited longest is closed to make room: a flood of
    /// silent connections cannot lock newcomers out, since a real peer's HELLO follows
    /// its connect within a round trip.
    pub(crate) fn accepted(&mut self, conn: ConnId, from: Option<IpAddr>, now: Instant) {
        self.accept_pause.succeeded(now);
        if self.conns.pending_accepts() >= self.local.max_pending_accepts {
            if let Some((oldest, data)) = self.conns.evict_oldest_pending_accept() {
                self.evicted_accepts += 1;
                // Once per thousand: a flood must not flood the log too.
                if self.evicted_accepts % 1000 == 1 {
                    tracing::warn!(
                        nid = %self.local.id.nid,
                        "{} connections awaiting their handshake (max_pending_accepts): \
                         closing the oldest, from {} ({} closed so far)",
                        self.local.max_pending_accepts,
                        data.from.map_or("?".to_owned(), |ip| ip.to_string()),
                        self.evicted_accepts
                    );
                }
                self.closes.push(oldest);
            }
        }
        let data = self.new_conn(false, from);
        let now = self.time(now);
        self.conns.accepted(conn, data, now);
    }

    /// A dialled socket connected: say HELLO (with our nonce, if we have keys).
    pub(crate) fn established(&mut self, conn: ConnId) {
        let Some((peer, lane)) = self.conns.peer(conn) else {
            return;
        };
        let ext = self.local.auth.dialler_hello(fresh_nonce);
        let (hello, payload) = self
            .local
            .id
            .hello(lane)
            .frame(peer, HelloStatus::Ok, ext.as_ref());
        if let Some(c) = self.conns.get_mut(conn).filter(|c| c.connecting) {
            c.connecting = false;
            c.auth = ext.map_or(ConnAuth::Done, |a| ConnAuth::Dialled(a.nonce));
            c.tx.push(hello, Bytes::from(payload), None);
        }
    }

    /// The core sends a frame.
    pub(crate) fn post(&mut self, tx: Transmit) -> Option<ConnId> {
        match self.conns.up(tx.peer, tx.lane) {
            Some(conn) => {
                let c = self.conns.get_mut(conn).expect("up connections exist");
                c.tx.push(tx.header, tx.payload, Some(tx.token));
                Some(conn)
            }
            None => {
                let error = err(
                    LndErrorKind::Closed,
                    format!("no {} connection to {}", tx.lane, tx.peer),
                );
                self.events.push(LndEvent::SendComplete {
                    token: tx.token,
                    result: Err(error),
                });
                None
            }
        }
    }

    /// `n` bytes of `conn`'s queue were written. Returns whether more waits to be written.
    pub(crate) fn wrote(&mut self, conn: ConnId, n: usize) -> bool {
        let Some(ConnMut { stage, data: c, .. }) = self.conns.get_mut_with_state(conn) else {
            return false;
        };
        c.tx.advance(n, &mut self.done);
        let sent = c.tx.is_empty();
        let refusing = matches!(c.auth, ConnAuth::Refusing) || stage == Stage::Refused;
        for token in self.done.drain(..) {
            self.events.push(LndEvent::SendComplete {
                token,
                result: Ok(()),
            });
        }
        if sent && refusing {
            // The refusal is out: the connection has served its purpose.
            self.conns.remove(conn);
            self.closes.push(conn);
            return false;
        }
        !sent
    }

    /// Bytes arrived on `conn` (already in its framer): handle every complete frame. The
    /// time matters only to handshakes: `now` reads it only for them, not for every read
    /// of a connection that is up.
    pub(crate) fn received(&mut self, conn: ConnId, now: impl Fn() -> Instant) {
        loop {
            let Some(ConnMut {
                stage,
                peer,
                data: c,
            }) = self.conns.get_mut_with_state(conn)
            else {
                return;
            };
            if stage == Stage::Refused || matches!(c.auth, ConnAuth::Refusing) {
                // Only the refusal is left to send: a peer that keeps sending must not
                // fill a buffer meanwhile (it may not read, and so hold the refusal back
                // until the handshake deadline).
                c.rx.discard();
                return;
            }
            if let (Stage::Up, Some((peer, lane))) = (stage, peer) {
                c.rx.handshake_done(lane);
                // Up stays up while its frames are read: one lookup for them all.
                let error = loop {
                    match c.rx.next_frame() {
                        Ok(Some((header, payload))) => self.events.push(LndEvent::Received {
                            peer,
                            lane,
                            header,
                            payload: RxPayload::Inline(payload),
                        }),
                        Ok(None) => return,
                        Err(e) => break e,
                    }
                };
                return self.fail(conn, err(LndErrorKind::Protocol, error.to_string()));
            }
            // A handshake's frames, one at a time: each may change where the connection
            // stands (up, refused, gone) for the next.
            let (h, payload) = match c.rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.fail(conn, err(LndErrorKind::Protocol, e.to_string())),
            };
            match (stage, peer) {
                (Stage::Handshake, Some((peer, lane))) if self.conns.is_dialled(conn) => {
                    let now = self.time(now());
                    match check_hello(&self.local.id.hello(lane), Some(peer), &h) {
                        Ok(hello) => {
                            if let Err(e) = self.authenticate_acceptor(conn, &hello, &payload) {
                                tracing::warn!(nid = %self.local.id.nid, "{e}");
                                return self.fail(conn, err(LndErrorKind::Refused, e));
                            }
                            let old = self.conns.answered(conn, hello, now, &mut self.events);
                            self.retire(old);
                        }
                        Err(HandshakeError::LostRace) => {
                            // The peer keeps its own connection, which should reach us soon.
                            let lost = self.conns.lost_race(conn, now);
                            self.retire(lost);
                        }
                        Err(e) => {
                            return self.fail(conn, err(LndErrorKind::Refused, e.to_string()))
                        }
                    }
                }
                // Only here is a pending proof looked for (not once per frame).
                (Stage::Handshake, None) => {
                    let now = self.time(now());
                    match self.conns.get(conn).map(|c| c.auth) {
                        Some(ConnAuth::AwaitingProof(pending, hello)) => {
                            self.dialler_proof(conn, (pending, hello), &h, &payload, now)
                        }
                        _ => self.incoming_hello(conn, h, &payload, now),
                    }
                }
                _ => {
                    return self.fail(
                        conn,
                        err(
                            LndErrorKind::Protocol,
                            "frame before the connection was set up",
                        ),
                    )
                }
            }
        }
    }

    /// Our dial got the acceptor's HELLO (`hello`, its payload `payload`): check its
    /// proof of a key if it owes one, and queue our AUTH if we owe one.
    fn authenticate_acceptor(
        &mut self,
        conn: ConnId,
        hello: &PeerHello,
        payload: &[u8],
    ) -> Result<(), String> {
        let got = hello_auth(payload).map_err(|e| format!("{}: {e}", hello.nid))?;
        let local = self.local.id.hello(hello.lane);
        let sent = match self.conns.get(conn).map(|c| c.auth) {
            Some(ConnAuth::Dialled(nonce)) => Some(nonce),
            _ => None,
        };
        let step = self
            .local
            .auth
            .dialler_step(&(&local).into(), hello, sent, got.as_ref())
            .map_err(|e| format!("not connecting to {}: {e}", hello.nid))?;
        let c = self.conns.get_mut(conn).expect("live");
        c.auth = ConnAuth::Done;
        if let DiallerStep::Prove(proof) = step {
            // Ahead of anything the core sends once it hears the connection is up.
            let (header, payload) = local.auth_frame(hello.nid, &proof);
            c.tx.push(header, Bytes::from(payload), None);
        }
        Ok(())
    }

    /// The first frame of an accepted connection.
    fn incoming_hello(&mut self, conn: ConnId, h: Header, payload: &[u8], now: Time) {
        let local = self.local.id.hello(h.lane);
        let checked = check_hello(&local, None, &h)
            .map_err(|e| e.to_string())
            .and_then(|hello| self.check_source(conn, hello))
            .and_then(|hello| {
                let got = hello_auth(payload).map_err(|e| format!("{}: {e}", hello.nid))?;
                let auth = &self.local.auth;
                match auth.acceptor_step(&(&local).into(), &hello, got.as_ref(), fresh_nonce) {
                    Ok(step) => Ok((hello, step)),
                    Err(e @ AuthError::PeerHasNoKey { .. }) => {
                        // Tell the dialler why, then close.
                        let (refusal, _) = local.frame(hello.nid, HelloStatus::KeyRequired, None);
                        let c = self.conns.get_mut(conn).expect("live");
                        c.auth = ConnAuth::Refusing;
                        c.tx.push(refusal, Bytes::new(), None);
                        Err(e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                }
            });
        let (hello, step) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                self.refusals.refused(now, self.local.id.nid, &e);
                let refusing = self.conns.get(conn).map(|c| c.auth);
                if !matches!(refusing, Some(ConnAuth::Refusing)) {
                    self.conns.remove(conn);
                    self.closes.push(conn);
                }
                return;
            }
        };
        let peer = hello.nid;
        if let AcceptorStep::Challenge { reply, pending } = step {
            if !self.conns.loses_race(&hello, now) {
                // The table hears of the peer only once it has proved its key.
                let (h, p) = local.frame(peer, HelloStatus::Ok, Some(&reply));
                let c = self.conns.get_mut(conn).expect("live");
                c.auth = ConnAuth::AwaitingProof(pending, hello);
                c.tx.push(h, Bytes::from(p), None);
                return;
            }
        }
        let ((reply, reply_payload), lost_dial) = match self.conns.incoming(conn, hello, now) {
            // Answered with a `Race` HELLO; the socket closes once that is written.
            Incoming::Refuse => (local.frame(peer, HelloStatus::Race, None), None),
            Incoming::Accept { lost_dial } => (local.frame(peer, HelloStatus::Ok, None), lost_dial),
        };
        self.retire(lost_dial);
        let c = self.conns.get_mut(conn).expect("live");
        c.tx.push(reply, Bytes::from(reply_payload), None);
        if self.conns.stage(conn) == Some(Stage::Handshake) {
            let old = self.conns.mark_up(conn, now, &mut self.events);
            self.retire(old);
        }
    }

    /// A frame on an accepted connection we answered with a challenge: it must be the
    /// dialler's AUTH, with a good proof; then the table hears of the peer, and the
    /// connection is up (or, if a race was decided meanwhile, closed as its loser).
    fn dialler_proof(
        &mut self,
        conn: ConnId,
        (pending, hello): (Pending, PeerHello),
        h: &Header,
        payload: &[u8],
        now: Time,
    ) {
        let (peer, local) = (hello.nid, self.local.id.nid);
        let checked = match h.body {
            Body::Auth if (h.src, h.dst, h.lane, h.credits) != (peer, local, hello.lane, 0) => {
                Err(format!("{peer}: its AUTH names other ends than its HELLO"))
            }
            Body::Auth => Proof::decode(payload)
                .map_err(|e| format!("{peer}: {e}"))
                .and_then(|proof| {
                    let checked = self.local.auth.check_dialler(&pending, &proof);
                    checked.map_err(|e| e.to_string())
                }),
            _ => Err(format!(
                "{peer} sent {:?} before proving a key (this node authenticates its peers)",
                h.frame_type()
            )),
        };
        if let Err(e) = checked {
            self.refusals.refused(now, self.local.id.nid, &e);
            self.conns.remove(conn);
            self.closes.push(conn);
            return;
        }
        if let Some(c) = self.conns.get_mut(conn) {
            c.auth = ConnAuth::Done;
        }
        match self.conns.incoming_proved(conn, hello, now) {
            Incoming::Accept { lost_dial } => {
                self.retire(lost_dial);
                let old = self.conns.mark_up(conn, now, &mut self.events);
                self.retire(old);
            }
            Incoming::Refuse => {
                // Our own dial to it came up meanwhile and wins; the peer hears this one
                // close and uses ours.
                tracing::debug!(%peer, "closing an authenticated connection: it lost a race");
                self.conns.remove(conn);
                self.closes.push(conn);
            }
        }
    }

    /// An accepted connection's HELLO must name a NID at the address it comes from.
    fn check_source(&self, conn: ConnId, hello: PeerHello) -> Result<PeerHello, String> {
        if !self.local.check_source_address {
            return Ok(hello);
        }
        let from = self.conns.get(conn).and_then(|c| c.from);
        let claimed = hello.nid.socket_addr(0).map(|a| IpAddr::V4(*a.ip()));
        match (from, claimed) {
            (Some(from), Some(claimed)) if from != claimed => {
                Err(format!("HELLO claims {} but comes from {from}", hello.nid))
            }
            _ => Ok(hello),
        }
    }

    /// Tears down a connection the table let go: its queued sends fail with its error, and
    /// its socket is closed.
    fn retire(&mut self, closed: Option<Closed<ConnId, Conn>>) {
        let Some(Closed {
            id,
            mut data,
            error,
        }) = closed
        else {
            return;
        };
        for token in data.tx.abandon() {
            self.events.push(LndEvent::SendComplete {
                token,
                result: Err(error.clone()),
            });
        }
        self.closes.push(id);
    }

    /// `conn` failed (I/O error, end of stream, protocol error): report what it meant.
    pub(crate) fn fail(&mut self, conn: ConnId, error: LndError) {
        let closed = self.conns.fail(conn, error, &mut self.events);
        self.retire(closed);
    }

    /// The core closes (peer, lane).
    pub(crate) fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        let closed = self.conns.close(peer, lane, error, &mut self.events);
        self.retire(closed);
    }

    /// [`Engine::expire`] at the time now, if a deadline is pending at all: with every
    /// connection up, as in steady traffic, not even the clock is read.
    pub(crate) fn expire_due(&mut self) {
        if self.conns.next_deadline().is_some() {
            self.expire(Instant::now());
        }
    }

    /// Handshakes past their deadline fail; so do lanes still awaiting a race winner.
    pub(crate) fn expire(&mut self, now: Instant) {
        let now = self.time(now);
        for closed in self.conns.expire(now, &mut self.events) {
            self.retire(Some(closed));
        }
    }

    /// How long the backend may wait for I/O: not at all if events await the core or the
    /// backend has work of its own (`busy`), else the core's `timeout` cut at the next
    /// handshake deadline.
    pub(crate) fn wait(&self, timeout: Option<Duration>, busy: bool) -> Option<Duration> {
        if busy || !self.events.is_empty() {
            return Some(Duration::ZERO);
        }
        match self.next_deadline() {
            None => timeout,
            Some(d) => {
                let until = d.saturating_duration_since(Instant::now());
                Some(timeout.map_or(until, |t| t.min(until)))
            }
        }
    }

    /// What the backend says before a thread shared with other LNDs sleeps on it: ready
    /// when [`Engine::wait`] would not wait (events, backend work, a deadline passed),
    /// else sleep until the next deadline at most.
    pub(crate) fn readiness(&self, busy: bool) -> Readiness {
        match self.wait(None, busy) {
            Some(d) if d.is_zero() => Readiness::Ready,
            within => Readiness::Sleep(within),
        }
    }

    /// The earliest deadline the backend must wake up for: a handshake's, or the end of
    /// a pause in accepting.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let handshake = self
            .conns
            .next_deadline()
            .map(|d| self.origin + d.as_duration());
        match (handshake, self.accept_pause.until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
