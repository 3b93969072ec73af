//! The in-memory LND (`mem` nets): every node of a topology in one process, on a shared
//! [`MemFabric`] with injectable delay, jitter, loss, link cuts, resets and node death.
//!
//! It follows the [`Lnd`] contract to the letter (HELLO handshake through the codec, one
//! connection per lane, exactly one `SendComplete` per frame), so the core meets the same
//! behaviour here as on real drivers.

mod fabric;

#[cfg(test)]
mod tests;

pub use fabric::{FabricStats, LinkFaults, MemFabric};

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::handshake::{check_hello, LocalHello, PeerHello};
use crate::lane::{Lane, PerLane};
use crate::lnd::{Lnd, LndError, LndErrorKind, LndEvent, RxHandle, RxPayload, Transmit, Wake};
use crate::nid::{LndKind, Nid};
use crate::wire::{decode_header, Limits, HEADER_LEN};
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
}

impl MemLndConfig {
    /// The credits and limits a node with `cfg` expects its drivers to offer.
    pub fn for_node(cfg: &crate::NodeConfig) -> Self {
        MemLndConfig {
            incarnation: cfg.incarnation,
            credits: cfg.peer_credits(),
            max_payload: cfg.max_payload,
            inline_max: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// We dialled and sent our HELLO; waiting for theirs.
    Dialled,
    Up,
}

struct MemConn {
    peer: Nid,
    lane: Lane,
    state: ConnState,
    /// The peer's HELLO, once received.
    hello: Option<PeerHello>,
}

/// One node's NI on a [`MemFabric`].
pub struct MemLnd {
    fabric: MemFabric,
    nid: Nid,
    cfg: MemLndConfig,
    conns: FxHashMap<ConnId, MemConn>,
    /// The connection reported up for each (peer, lane).
    up: FxHashMap<(Nid, Lane), ConnId>,
    /// Connects satisfied by a connection the peer is dialling: each still owes a result.
    joined: FxHashSet<(Nid, Lane)>,
    /// Deferred payloads reported to the core, not yet fetched or declined.
    deferred: FxHashMap<RxHandle, XferId>,
    next_handle: u64,
    /// Events produced by calls (send completions, local closes), handed out by `poll`.
    ready: Vec<LndEvent>,
    items: Vec<Item>,
}

impl MemLnd {
    /// Attaches `nid` (an address on a `mem` net) to `fabric`.
    pub fn new(fabric: &MemFabric, nid: Nid, cfg: MemLndConfig) -> Result<MemLnd, LndError> {
        if nid.net.kind != LndKind::Mem {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("the in-memory LND serves mem nets, not {}", nid.net),
            ));
        }
        fabric.attach(nid)?;
        Ok(MemLnd {
            fabric: fabric.clone(),
            nid,
            cfg,
            conns: FxHashMap::default(),
            up: FxHashMap::default(),
            joined: FxHashSet::default(),
            deferred: FxHashMap::default(),
            next_handle: 1,
            ready: Vec::new(),
            items: Vec::new(),
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

    fn limits(&self) -> Limits {
        Limits {
            max_payload: self.cfg.max_payload,
        }
    }

    /// Drops a connection and tells the core what it meant.
    fn lost(&mut self, conn: ConnId, error: LndError) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let event = match c.state {
            ConnState::Dialled => LndEvent::ConnectFailed {
                peer: c.peer,
                lane: c.lane,
                error,
            },
            ConnState::Up => {
                self.up.remove(&(c.peer, c.lane));
                LndEvent::Disconnected {
                    peer: c.peer,
                    lane: c.lane,
                    error,
                }
            }
        };
        self.ready.push(event);
    }

    /// Closes a connection for a protocol error found on it.
    fn reject(&mut self, conn: ConnId, what: String) {
        tracing::warn!(nid = %self.nid, "closing in-memory connection: {what}");
        let err = LndError::new(LndErrorKind::Protocol, what);
        self.fabric.close(self.nid, conn, err.clone());
        self.lost(conn, err);
    }

    fn mark_up(&mut self, conn: ConnId, hello: PeerHello) {
        let (peer, lane) = (hello.nid, hello.lane);
        self.joined.remove(&(peer, lane));
        if let Some(old) = self.up.insert((peer, lane), conn) {
            if old != conn {
                // The peer dialled again (e.g. it restarted before we heard of the old one).
                let err = LndError::new(LndErrorKind::Reset, "replaced by a new connection");
                self.fabric.close(self.nid, old, err.clone());
                self.conns.remove(&old);
                self.ready.push(LndEvent::Disconnected {
                    peer,
                    lane,
                    error: err,
                });
            }
        }
        let state = ConnState::Up;
        self.conns.insert(
            conn,
            MemConn {
                peer,
                lane,
                state,
                hello: Some(hello),
            },
        );
        self.ready.push(LndEvent::Connected {
            peer,
            lane,
            hello,
            local_credits: self.cfg.credits[lane],
        });
    }

    /// An item about a connection this side does not know yet: the peer is dialling.
    fn on_incoming(&mut self, conn: ConnId, from: Nid, lane: Lane, h: crate::wire::Header) {
        match check_hello(&self.hello(lane), Some(from), &h) {
            Ok(ph) => {
                let reply = self.hello(lane).encode(from);
                match self.fabric.send(self.nid, conn, reply, Bytes::new(), true) {
                    Ok(()) => self.mark_up(conn, ph),
                    Err(e) => self.fail_joined(from, lane, e),
                }
            }
            Err(e) => {
                tracing::warn!(nid = %self.nid, "refusing in-memory connection from {from}: {e}");
                let err = LndError::new(LndErrorKind::Refused, e.to_string());
                self.fabric.close(self.nid, conn, err.clone());
                self.fail_joined(from, lane, err);
            }
        }
    }

    fn fail_joined(&mut self, peer: Nid, lane: Lane, error: LndError) {
        if self.joined.remove(&(peer, lane)) {
            self.ready
                .push(LndEvent::ConnectFailed { peer, lane, error });
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
        let h = match decode_header(&header, &self.limits()) {
            Ok(h) => h,
            Err(e) if self.conns.contains_key(&conn) => return self.reject(conn, e.to_string()),
            Err(e) => {
                let err = LndError::new(LndErrorKind::Protocol, e.to_string());
                self.fabric.close(self.nid, conn, err.clone());
                return self.fail_joined(from, lane, err);
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
        match self.conns.get(&conn).map(|c| c.state) {
            Some(ConnState::Up) => {
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
            Some(ConnState::Dialled) => match check_hello(&self.hello(lane), Some(from), &h) {
                Ok(ph) => self.mark_up(conn, ph),
                Err(e) => self.reject(conn, e.to_string()),
            },
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
        match self.fabric.dial(self.nid, peer, lane) {
            Dial::New(conn) => {
                let state = ConnState::Dialled;
                self.conns.insert(
                    conn,
                    MemConn {
                        peer,
                        lane,
                        state,
                        hello: None,
                    },
                );
                let hello = self.hello(lane).encode(peer);
                if let Err(e) = self.fabric.send(self.nid, conn, hello, Bytes::new(), true) {
                    self.lost(conn, e);
                }
            }
            // The peer's HELLO for this pair is on its way, or the lane is up already.
            Dial::Joined => match self.up.get(&(peer, lane)).and_then(|c| self.conns.get(c)) {
                // Already up: say so again rather than leave the request unanswered.
                Some(MemConn {
                    hello: Some(hello), ..
                }) => {
                    let event = LndEvent::Connected {
                        peer,
                        lane,
                        hello: *hello,
                        local_credits: self.cfg.credits[lane],
                    };
                    self.ready.push(event);
                }
                _ => {
                    self.joined.insert((peer, lane));
                }
            },
            Dial::Failed => {}
        }
    }

    fn post(&mut self, tx: Transmit) {
        let result = match self.up.get(&(tx.peer, tx.lane)) {
            None => Err(LndError::new(
                LndErrorKind::Closed,
                format!("no {} connection to {}", tx.lane, tx.peer),
            )),
            Some(&conn) if self.defers(tx.payload.len()) => {
                let sent = self
                    .fabric
                    .send_deferred(self.nid, conn, tx.header, tx.payload, tx.token);
                match sent {
                    Ok(true) => return, // completes when the receiver fetches or declines it
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Some(&conn) => self
                .fabric
                .send(self.nid, conn, tx.header, tx.payload, false),
        };
        self.ready.push(LndEvent::SendComplete {
            token: tx.token,
            result,
        });
    }

    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        if let Some(&conn) = self.up.get(&(peer, lane)) {
            self.fabric.close(self.nid, conn, error.clone());
            self.lost(conn, error);
        }
    }

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        let wait = if self.ready.is_empty() {
            timeout
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
                Item::Reset {
                    conn,
                    from,
                    lane,
                    error,
                } => {
                    if self.conns.contains_key(&conn) {
                        self.lost(conn, error);
                    } else {
                        self.fail_joined(from, lane, error);
                    }
                }
                Item::ConnectFailed { peer, lane, error } => self
                    .ready
                    .push(LndEvent::ConnectFailed { peer, lane, error }),
            }
        }
        self.items = items;
        events.append(&mut self.ready);
        Ok(())
    }

    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(MemWaker {
            fabric: self.fabric.clone(),
            nid: self.nid,
        })
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
