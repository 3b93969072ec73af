//! The TCP driver's connection logic, without system calls: HELLO handshakes, connection
//! races, frames in and out, failures and timeouts. A backend (epoll, io_uring) owns the
//! sockets, moves bytes, and tells the engine what happened; the engine produces the
//! [`LndEvent`]s for the core and tells the backend which sockets to close.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::handshake::{check_hello, HandshakeError, Identity, PeerHello};
use lanet::lane::Lane;
use lanet::lnd::{
    expired, LndError, LndErrorKind, LndEvent, RaceWaits, RxPayload, Transmit, TxToken,
};
use lanet::nid::Nid;
use lanet::wire::{HelloStatus, Limits};
use rustc_hash::FxHashMap;

use crate::framing::{RxFramer, TxQueue};

/// Names a socket of the backend.
pub(crate) type ConnId = usize;

/// What this node says about itself, and how long it waits for others.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Local {
    pub(crate) id: Identity,
    pub(crate) connect_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// TCP connect in progress (dialled only).
    Connecting,
    /// Waiting for the peer's HELLO.
    Hello,
    Up,
    /// Sending a refusal; closes once it is written.
    Closing,
}

pub(crate) struct Conn {
    /// Known from the start when dialled; from the HELLO when accepted.
    peer: Option<(Nid, Lane)>,
    dialled: bool,
    stage: Stage,
    pub(crate) rx: RxFramer,
    pub(crate) tx: TxQueue,
    /// Until when the handshake may take.
    deadline: Option<Instant>,
    hello: Option<PeerHello>,
}

impl Conn {
    pub(crate) fn wants_write(&self) -> bool {
        self.stage != Stage::Connecting && !self.tx.is_empty()
    }

    pub(crate) fn is_connecting(&self) -> bool {
        self.stage == Stage::Connecting
    }
}

pub(crate) struct Engine {
    local: Local,
    conns: FxHashMap<ConnId, Conn>,
    up: FxHashMap<(Nid, Lane), ConnId>,
    dialling: FxHashMap<(Nid, Lane), ConnId>,
    /// Lanes whose dial lost a race: the peer's own connection should arrive by then.
    awaiting: RaceWaits,
    /// For the core.
    pub(crate) events: Vec<LndEvent>,
    /// Sockets the backend must close (the engine has forgotten them).
    closes: Vec<ConnId>,
    done: Vec<TxToken>,
}

fn err(kind: LndErrorKind, detail: impl Into<String>) -> LndError {
    LndError::new(kind, detail)
}

impl Engine {
    pub(crate) fn new(local: Local) -> Engine {
        Engine {
            local,
            conns: FxHashMap::default(),
            up: FxHashMap::default(),
            dialling: FxHashMap::default(),
            awaiting: RaceWaits::default(),
            events: Vec::new(),
            closes: Vec::new(),
            done: Vec::new(),
        }
    }

    pub(crate) fn local(&self) -> &Local {
        &self.local
    }

    fn limits(&self) -> Limits {
        Limits {
            max_payload: self.local.id.max_payload,
        }
    }

    pub(crate) fn lane_of(&self, id: ConnId) -> Option<Lane> {
        self.conns.get(&id)?.peer.map(|(_, lane)| lane)
    }

    pub(crate) fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&id)
    }

    /// Sockets to close; the backend drops them.
    pub(crate) fn take_closes(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.closes)
    }

    /// The core asks for (peer, lane). True if the backend should dial; otherwise the
    /// answer is on its way (already up: said again; being set up: comes when done).
    pub(crate) fn want_connect(&mut self, peer: Nid, lane: Lane) -> bool {
        if let Some(hello) = self.up.get(&(peer, lane)).and_then(|c| self.conns[c].hello) {
            self.events.push(LndEvent::Connected {
                peer,
                lane,
                hello,
                local_credits: self.local.id.credits[lane],
            });
            return false;
        }
        !self.dialling.contains_key(&(peer, lane)) && !self.awaiting.contains(peer, lane)
    }

    /// Where to dial for the core's connect request, or None when no dial is needed (the
    /// answer is already on its way) or possible (then the failure is reported).
    pub(crate) fn dial_target(&mut self, peer: Nid, lane: Lane) -> Option<std::net::SocketAddrV4> {
        if !self.want_connect(peer, lane) {
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
        self.dialling.insert((peer, lane), conn);
        self.conns.insert(
            conn,
            Conn {
                peer: Some((peer, lane)),
                dialled: true,
                stage: Stage::Connecting,
                rx: RxFramer::new(self.limits()),
                tx: TxQueue::default(),
                deadline: Some(now + self.local.connect_timeout),
                hello: None,
            },
        );
    }

    /// Dialling failed before a socket existed.
    pub(crate) fn dial_failed(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.events
            .push(LndEvent::ConnectFailed { peer, lane, error });
    }

    /// The backend accepted `conn`; its HELLO should follow.
    pub(crate) fn accepted(&mut self, conn: ConnId, now: Instant) {
        self.conns.insert(
            conn,
            Conn {
                peer: None,
                dialled: false,
                stage: Stage::Hello,
                rx: RxFramer::new(self.limits()),
                tx: TxQueue::default(),
                deadline: Some(now + self.local.connect_timeout),
                hello: None,
            },
        );
    }

    /// A dialled socket connected: say HELLO.
    pub(crate) fn established(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let (Stage::Connecting, Some((peer, lane))) = (c.stage, c.peer) {
            c.stage = Stage::Hello;
            let hello = self.local.id.hello(lane).encode(peer);
            c.tx.push(hello, Bytes::new(), None);
        }
    }

    /// The core sends a frame.
    pub(crate) fn post(&mut self, tx: Transmit) -> Option<ConnId> {
        match self.up.get(&(tx.peer, tx.lane)) {
            Some(&conn) => {
                let c = self.conns.get_mut(&conn).expect("up connections exist");
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

    /// `n` bytes of `conn`'s queue were written.
    pub(crate) fn wrote(&mut self, conn: ConnId, n: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.tx.advance(n, &mut self.done);
        for token in self.done.drain(..) {
            self.events.push(LndEvent::SendComplete {
                token,
                result: Ok(()),
            });
        }
        if c.stage == Stage::Closing && c.tx.is_empty() {
            self.conns.remove(&conn);
            self.closes.push(conn);
        }
    }

    /// Bytes arrived on `conn` (already in its framer): handle every complete frame.
    pub(crate) fn received(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if c.stage == Stage::Closing {
                return;
            }
            let frame = match c.rx.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => return self.fail(conn, err(LndErrorKind::Protocol, e.to_string())),
            };
            let (h, payload) = frame;
            match (c.stage, c.peer) {
                (Stage::Up, Some((peer, lane))) => self.events.push(LndEvent::Received {
                    peer,
                    lane,
                    header: h,
                    payload: RxPayload::Inline(payload),
                }),
                (Stage::Hello, Some((peer, lane))) if c.dialled => {
                    match check_hello(&self.local.id.hello(lane), Some(peer), &h) {
                        Ok(hello) => self.mark_up(conn, hello),
                        Err(HandshakeError::LostRace) => self.lost_race(conn, peer, lane, now),
                        Err(e) => {
                            return self.fail(conn, err(LndErrorKind::Refused, e.to_string()))
                        }
                    }
                }
                (Stage::Hello, None) => self.incoming_hello(conn, h),
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

    fn mark_up(&mut self, conn: ConnId, hello: PeerHello) {
        let (peer, lane) = (hello.nid, hello.lane);
        let c = self.conns.get_mut(&conn).expect("live");
        c.stage = Stage::Up;
        c.peer = Some((peer, lane));
        c.deadline = None;
        c.hello = Some(hello);
        self.dialling.remove(&(peer, lane));
        self.awaiting.done(peer, lane);
        if let Some(old) = self.up.insert((peer, lane), conn) {
            // The peer dialled again: it restarted, or believes the old connection dead.
            let error = err(
                LndErrorKind::Reset,
                "replaced by a new connection from the peer",
            );
            self.forget(old, &error);
            self.events
                .push(LndEvent::Disconnected { peer, lane, error });
        }
        self.events.push(LndEvent::Connected {
            peer,
            lane,
            hello,
            local_credits: self.local.id.credits[lane],
        });
    }

    /// Our dial lost a race: the peer keeps its own connection, which should reach us soon.
    fn lost_race(&mut self, conn: ConnId, peer: Nid, lane: Lane, now: Instant) {
        self.conns.remove(&conn);
        self.closes.push(conn);
        self.dialling.remove(&(peer, lane));
        if !self.up.contains_key(&(peer, lane)) {
            self.awaiting
                .wait(peer, lane, now + self.local.connect_timeout);
        }
    }

    /// The first frame of an accepted connection.
    fn incoming_hello(&mut self, conn: ConnId, h: lanet::wire::Header) {
        let lane = h.lane;
        let hello = match check_hello(&self.local.id.hello(lane), None, &h) {
            Ok(hello) => hello,
            Err(e) => {
                tracing::warn!(nid = %self.local.id.nid, "refusing a connection: {e}");
                self.conns.remove(&conn);
                self.closes.push(conn);
                return;
            }
        };
        let peer = hello.nid;
        if let Some(&current) = self.up.get(&(peer, lane)) {
            let c = &self.conns[&current];
            let same_life = c.hello.is_some_and(|h| h.incarnation == hello.incarnation);
            if same_life && c.dialled && self.local.id.nid < peer {
                // Our dial is the rule's winner and is up: this is the peer's side of a race
                // whose HELLO was already on its way. (A peer that restarted, or that dialled
                // again while holding the winner, replaces the connection below.)
                return self.refuse_race(conn, peer, lane);
            }
        }
        if let Some(&mine) = self.dialling.get(&(peer, lane)) {
            // Both sides dialled: the connection dialled by the lower NID wins, on both sides.
            if self.local.id.nid < peer {
                return self.refuse_race(conn, peer, lane);
            }
            // Theirs wins: drop our dial quietly (it carries only our HELLO); this connection
            // answers our connect.
            self.dialling.remove(&(peer, lane));
            self.conns.remove(&mine);
            self.closes.push(mine);
        }
        let reply = self.local.id.hello(lane).encode(peer);
        let c = self.conns.get_mut(&conn).expect("live");
        c.tx.push(reply, Bytes::new(), None);
        self.mark_up(conn, hello);
    }

    /// Answers an accepted connection that lost a race with a `Race` HELLO, then closes it.
    fn refuse_race(&mut self, conn: ConnId, peer: Nid, lane: Lane) {
        let refusal = self
            .local
            .id
            .hello(lane)
            .header_with(peer, HelloStatus::Race);
        let c = self.conns.get_mut(&conn).expect("live");
        c.tx.push(lanet::wire::encode_header(&refusal), Bytes::new(), None);
        c.stage = Stage::Closing;
    }

    /// Removes `conn`, failing its queued sends with `error`.
    fn forget(&mut self, conn: ConnId, error: &LndError) -> Option<Conn> {
        let mut c = self.conns.remove(&conn)?;
        for token in c.tx.abandon() {
            self.events.push(LndEvent::SendComplete {
                token,
                result: Err(error.clone()),
            });
        }
        self.closes.push(conn);
        Some(c)
    }

    /// `conn` failed (I/O error, end of stream, protocol error): report what it meant.
    pub(crate) fn fail(&mut self, conn: ConnId, error: LndError) {
        let Some(c) = self.forget(conn, &error) else {
            return;
        };
        let Some((peer, lane)) = c.peer else {
            return; // an accepted connection that never said HELLO
        };
        match c.stage {
            Stage::Up if self.up.get(&(peer, lane)) == Some(&conn) => {
                self.up.remove(&(peer, lane));
                self.events
                    .push(LndEvent::Disconnected { peer, lane, error });
            }
            _ if c.dialled && self.dialling.get(&(peer, lane)) == Some(&conn) => {
                self.dialling.remove(&(peer, lane));
                self.events
                    .push(LndEvent::ConnectFailed { peer, lane, error });
            }
            _ => {}
        }
    }

    /// The core closes (peer, lane).
    pub(crate) fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        if let Some(&conn) = self.up.get(&(peer, lane)) {
            self.fail(conn, error);
        }
    }

    /// Handshakes past their deadline fail; so do lanes still awaiting a race winner.
    pub(crate) fn expire(&mut self, now: Instant) {
        let late = expired(self.conns.iter().map(|(id, c)| (*id, c.deadline)), now);
        for conn in late {
            self.fail(
                conn,
                err(LndErrorKind::TimedOut, "connection handshake timed out"),
            );
        }
        self.awaiting.expire(now, &mut self.events);
    }

    /// How long the backend may wait for I/O: not at all if events await the core or the
    /// backend has work of its own (`busy`), else the core's `timeout` cut at the next
    /// handshake deadline.
    pub(crate) fn wait(
        &self,
        timeout: Option<std::time::Duration>,
        busy: bool,
    ) -> Option<std::time::Duration> {
        if busy || !self.events.is_empty() {
            return Some(std::time::Duration::ZERO);
        }
        match self.next_deadline() {
            None => timeout,
            Some(d) => {
                let until = d.saturating_duration_since(Instant::now());
                Some(timeout.map_or(until, |t| t.min(until)))
            }
        }
    }

    /// The earliest deadline the backend must wake up for.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|c| c.deadline);
        conns.chain(self.awaiting.next_deadline()).min()
    }
}

#[cfg(test)]
mod tests;
