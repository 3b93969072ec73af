//! The in-memory LND (`mem` nets): every node of a topology in one process, on a shared
//! [`MemFabric`] with injectable delay, jitter, loss, link cuts, resets and node death.
//!
//! It follows the [`Lnd`] contract to the letter (HELLO handshake through the codec, one
//! connection per lane, exactly one `SendComplete` per frame), so the core meets the same
//! behaviour here as on real drivers.

mod fabric;

#[cfg(test)]
pub(crate) mod rigged;
#[cfg(test)]
mod tests;

pub use fabric::{FabricStats, LinkFaults, MemFabric};

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::FxHashMap;

use crate::handshake::{check_hello, HandshakeError, LocalHello, PeerHello};
use crate::lane::{Lane, PerLane};
use crate::lnd::conns::{Closed, ConnTable, Connect, Incoming, Stage};
use crate::lnd::{
    Lnd, LndError, LndErrorKind, LndEvent, Readiness, RxHandle, RxPayload, Transmit, Wake,
};
use crate::nid::{LndKind, Nid};
use crate::time::Time;
use crate::wire::{decode_header, HeaderCheck, HelloStatus, Limits, HEADER_LEN};
use fabric::{ConnId, Dial, Item, XferId};

/// Settings of one in-memory NI.
#[derive(Debug, Clone, Copy)]
pub struct MemLndConfig {
    pub incarnation: u64,
    /// Receive credits offered per lane.
    pub credits: PerLane<u16>,
    pub max_payload: u32,
    /// Payloads larger than this are deferred: the receiver fetches them after matching,
    /// as an RDMA driver would (None: every payload travels with its header).
    pub inline_max: Option<u32>,
    /// How long a connection's handshake (or the wait for a peer's connection) may take.
    pub handshake_timeout: Duration,
}

impl MemLndConfig {
    /// The credits and limits a node with `cfg` expects its drivers to offer.
    pub fn for_node(cfg: &crate::NodeConfig) -> Self {
        MemLndConfig {
            incarnation: cfg.incarnation,
            credits: cfg.peer_credits(),
            max_payload: cfg.max_payload,
            inline_max: None,
            // Handshake frames are never lost here: only a vanished peer makes one wait,
            // and a slow simulated link must not.
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// One node's NI on a [`MemFabric`].
pub struct MemLnd {
    fabric: MemFabric,
    nid: Nid,
    cfg: MemLndConfig,
    /// The fabric pairs dials itself, so the table never sees a race.
    conns: ConnTable<ConnId, ()>,
    /// Deferred payloads reported to the core, not yet fetched or declined.
    deferred: FxHashMap<RxHandle, XferId>,
    next_handle: u64,
    /// Events produced by calls (send completions, local closes), handed out by `poll`
    /// or, before it, by `take_ready`.
    ready: Vec<LndEvent>,
    items: Vec<Item>,
    /// Signalled with the condition variable, for a thread sleeping on several LNDs.
    event: Option<Arc<crate::sys::EventFd>>,
}

impl MemLnd {
    /// Attaches `nid` (an address on a `mem` net) to `fabric`.
    pub fn new(fabric: &MemFabric, nid: Nid, cfg: MemLndConfig) -> Result<MemLnd, LndError> {
        if nid.net().kind != LndKind::Mem {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("the in-memory LND serves mem nets, not {}", nid.net()),
            ));
        }
        fabric.attach(nid)?;
        Ok(MemLnd {
            fabric: fabric.clone(),
            nid,
            cfg,
            conns: ConnTable::new(nid, cfg.credits, cfg.handshake_timeout).without_races(),
            deferred: FxHashMap::default(),
            next_handle: 1,
            ready: Vec::new(),
            items: Vec::new(),
            event: None,
        })
    }

    fn hello(&self, lane: Lane) -> LocalHello {
        let id = crate::handshake::Identity {
            nid: self.nid,
            incarnation: self.cfg.incarnation,
            credits: self.cfg.credits,
            max_payload: self.cfg.max_payload,
        };
        id.hello(lane)
    }

    /// Whether a payload of `len` bytes goes by the zero-copy path.
    fn defers(&self, len: usize) -> bool {
        self.cfg.inline_max.is_some_and(|m| len > m as usize)
    }

    /// `from`'s HELLO, checked. Memory does not corrupt headers, and every in-memory peer
    /// is this same build: headers go without a checksum both ways.
    fn check_hello(
        &self,
        lane: Lane,
        from: Nid,
        h: &crate::wire::Header,
    ) -> Result<PeerHello, HandshakeError> {
        let hello = check_hello(&self.hello(lane), Some(from), h)?;
        Ok(PeerHello {
            header_check: HeaderCheck::Link,
            ..hello
        })
    }

    /// Memory does not corrupt headers: they go without a checksum.
    fn limits(&self) -> Limits {
        Limits::new(self.cfg.max_payload, HeaderCheck::Link)
    }

    fn now(&self) -> Time {
        self.fabric.now()
    }

    /// Tears down a connection the table let go: the other end hears of it.
    fn retire(&mut self, closed: Closed<ConnId, ()>) {
        self.fabric.close(self.nid, closed.id, closed.error);
    }

    /// Fails a connection (the other end hears of it, the core too).
    fn fail(&mut self, conn: ConnId, error: LndError) {
        if let Some(closed) = self.conns.fail(conn, error, &mut self.ready) {
            self.retire(closed);
        }
    }

    /// Fails a connection for a protocol error found on it.
    fn reject(&mut self, conn: ConnId, what: String) {
        tracing::warn!(nid = %self.nid, "closing in-memory connection: {what}");
        self.fail(conn, LndError::new(LndErrorKind::Protocol, what));
    }

    /// A frame on a connection this side does not know yet: the peer dialled, and this is
    /// its HELLO.
    fn on_incoming(&mut self, conn: ConnId, from: Nid, lane: Lane, h: crate::wire::Header) {
        let now = self.now();
        let hello = match self.check_hello(lane, from, &h) {
            Ok(hello) => hello,
            Err(e) => {
                tracing::warn!(nid = %self.nid, "refusing in-memory connection from {from}: {e}");
                let err = LndError::new(LndErrorKind::Refused, e.to_string());
                self.fabric.close(self.nid, conn, err.clone());
                // A request waiting for this connection learns now.
                return self.conns.wait_failed(from, lane, err, &mut self.ready);
            }
        };
        self.conns.accepted(conn, (), now);
        match self.conns.incoming(conn, hello, now) {
            Incoming::Refuse => {
                let race = self.hello(lane).header_with(from, HelloStatus::Race);
                let race = crate::wire::encode_header(&race);
                // The loser closes its dial on hearing this; the close removes ours.
                if let Err(e) = self.fabric.send(self.nid, conn, race, Bytes::new(), true) {
                    self.fail(conn, e);
                }
            }
            Incoming::Accept { lost_dial } => {
                if let Some(closed) = lost_dial {
                    self.retire(closed);
                }
                let reply = self.hello(lane).encode(from);
                match self.fabric.send(self.nid, conn, reply, Bytes::new(), true) {
                    Ok(()) => {
                        if let Some(old) = self.conns.mark_up(conn, now, &mut self.ready) {
                            self.retire(old);
                        }
                    }
                    Err(e) => self.fail(conn, e),
                }
            }
        }
    }

    /// The peer's HELLO on our dial `conn`.
    fn on_answer(&mut self, conn: ConnId, from: Nid, lane: Lane, h: crate::wire::Header) {
        let now = self.now();
        match self.check_hello(lane, from, &h) {
            Ok(hello) => {
                if let Some(old) = self.conns.answered(conn, hello, now, &mut self.ready) {
                    self.retire(old);
                }
            }
            Err(HandshakeError::LostRace) => {
                if let Some(closed) = self.conns.lost_race(conn, now) {
                    self.retire(closed);
                }
            }
            Err(e) => self.reject(conn, e.to_string()),
        }
    }

    fn on_frame(
        &mut self,
        conn: ConnId,
        from: Nid,
        lane: Lane,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        deferred: Option<XferId>,
    ) {
        let stage = self.conns.stage(conn);
        let h = match decode_header(&header, &self.limits()) {
            Ok(h) => h,
            Err(e) if stage.is_some() => return self.reject(conn, e.to_string()),
            Err(e) => {
                let err = LndError::new(LndErrorKind::Protocol, e.to_string());
                self.fabric.close(self.nid, conn, err.clone());
                return self.conns.wait_failed(from, lane, err, &mut self.ready);
            }
        };
        let carried = if deferred.is_some() {
            0
        } else {
            h.payload_len as usize
        };
        if payload.len() != carried {
            let what = format!(
                "payload of {} bytes, header says {}",
                payload.len(),
                h.payload_len
            );
            return self.reject(conn, what);
        }
        match stage {
            Some(Stage::Up) => {
                let payload = match deferred {
                    None => RxPayload::Inline(payload),
                    Some(xfer) => {
                        let handle = RxHandle(self.next_handle);
                        self.next_handle += 1;
                        self.deferred.insert(handle, xfer);
                        RxPayload::Deferred {
                            handle,
                            len: h.payload_len,
                        }
                    }
                };
                self.ready.push(LndEvent::Received {
                    peer: from,
                    lane,
                    header: h,
                    payload,
                })
            }
            Some(Stage::Handshake) if self.conns.is_dialled(conn) => {
                self.on_answer(conn, from, lane, h)
            }
            // A refused connection's dialler sends nothing but its HELLO.
            Some(Stage::Handshake | Stage::Refused) => {
                self.reject(conn, "frame before the connection was set up".into())
            }
            None => self.on_incoming(conn, from, lane, h),
        }
    }
}

impl Drop for MemLnd {
    fn drop(&mut self) {
        self.fabric.detach(self.nid);
    }
}

struct MemWaker {
    fabric: MemFabric,
    nid: Nid,
}

impl Wake for MemWaker {
    fn wake(&self) {
        self.fabric.wake(self.nid);
    }
}

impl Lnd for MemLnd {
    fn nid(&self) -> Nid {
        self.nid
    }

    fn connect(&mut self, peer: Nid, lane: Lane) {
        let now = self.now();
        if self.conns.connect(peer, lane, now, &mut self.ready) == Connect::Answered {
            return;
        }
        match self.fabric.dial(self.nid, peer, lane) {
            Dial::New(conn) => {
                self.conns.dialled(conn, peer, lane, (), now);
                let hello = self.hello(lane).encode(peer);
                if let Err(e) = self.fabric.send(self.nid, conn, hello, Bytes::new(), true) {
                    self.fail(conn, e);
                }
            }
            // The peer's dial for this pair is on its way: its HELLO answers the request.
            Dial::Joined => self.conns.await_peer(peer, lane, now),
            // Its ConnectFailed is on its way.
            Dial::Failed => {}
        }
    }

    fn post(&mut self, tx: Transmit) {
        let result = match self.conns.up(tx.peer, tx.lane) {
            None => Err(LndError::new(
                LndErrorKind::Closed,
                format!("no {} connection to {}", tx.lane, tx.peer),
            )),
            Some(conn) if self.defers(tx.payload.len()) => {
                let sent = self
                    .fabric
                    .send_deferred(self.nid, conn, tx.header, tx.payload, tx.token);
                match sent {
                    Ok(true) => return, // completes when the receiver fetches or declines it
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Some(conn) => self
                .fabric
                .send(self.nid, conn, tx.header, tx.payload, false),
        };
        self.ready.push(LndEvent::SendComplete {
            token: tx.token,
            result,
        });
    }

    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        if let Some(closed) = self.conns.close(peer, lane, error, &mut self.ready) {
            self.retire(closed);
        }
    }

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        let wait = if self.ready.is_empty() {
            // No longer than the next handshake deadline.
            match self.conns.next_deadline() {
                Some(d) => {
                    let until = d.saturating_since(self.now());
                    Some(timeout.map_or(until, |t| t.min(until)))
                }
                None => timeout,
            }
        } else {
            Some(Duration::ZERO)
        };
        let mut items = std::mem::take(&mut self.items);
        self.fabric.take_due(self.nid, wait, &mut items);
        for item in items.drain(..) {
            match item {
                Item::Frame {
                    conn,
                    from,
                    lane,
                    header,
                    payload,
                    deferred,
                } => self.on_frame(conn, from, lane, header, payload, deferred),
                Item::Fetched { handle, result } => {
                    self.ready.push(LndEvent::Fetched { handle, result })
                }
                Item::Released { token, result } => {
                    self.ready.push(LndEvent::SendComplete { token, result })
                }
                // The other end closed it (for one we never knew or already let go: no
                // news for anyone).
                Item::Reset { conn, error, .. } => {
                    let _ = self.conns.fail(conn, error, &mut self.ready);
                }
                Item::ConnectFailed { peer, lane, error } => self
                    .ready
                    .push(LndEvent::ConnectFailed { peer, lane, error }),
            }
        }
        self.items = items;
        let now = self.now();
        for closed in self.conns.expire(now, &mut self.ready) {
            self.retire(closed);
        }
        events.append(&mut self.ready);
        Ok(())
    }

    /// What `poll` hands over before anything from the fabric: sends that completed as
    /// they were posted, among others.
    fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        events.append(&mut self.ready);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(MemWaker {
            fabric: self.fabric.clone(),
            nid: self.nid,
        })
    }

    fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        if self.event.is_none() {
            self.event = self.fabric.event(self.nid);
        }
        self.event.as_ref().map(|e| e.fd())
    }

    fn prepare_wait(&mut self) -> Readiness {
        if let Some(e) = &self.event {
            e.drain(); // what signalled it was handled by the last poll, or is looked at now
        }
        if !self.ready.is_empty() {
            return Readiness::Ready;
        }
        let now = self.now();
        let due = [self.fabric.next_due(self.nid), self.conns.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        match due {
            Some(t) if t <= now => Readiness::Ready,
            Some(t) => Readiness::Sleep(Some(t.saturating_since(now))),
            None => Readiness::Sleep(None),
        }
    }

    fn fetch(&mut self, handle: RxHandle, sink: BytesMut) {
        match self.deferred.remove(&handle) {
            Some(xfer) => self.fabric.fetch(self.nid, handle, xfer, sink),
            None => self.ready.push(LndEvent::Fetched {
                handle,
                result: Err(LndError::new(
                    LndErrorKind::Closed,
                    format!("no deferred payload {}", handle.0),
                )),
            }),
        }
    }

    fn decline(&mut self, handle: RxHandle) {
        if let Some(xfer) = self.deferred.remove(&handle) {
            self.fabric.decline(self.nid, xfer);
        }
    }
}
