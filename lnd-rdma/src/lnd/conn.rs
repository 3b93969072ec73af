//! One connection: its rdma_cm id and RC queue pair, the registered message buffers, and
//! what waits to be posted on it.
//!
//! Every work request on the send queue holds a *slot* (so the queue never overflows and a
//! completion finds what it was for); slots of SENDs also own a message buffer. Receives
//! are pre-posted, one per buffer, and re-posted as soon as a message is copied out.

use std::collections::VecDeque;
use std::sync::Arc;

use lanet::handshake::auth::{Nonce, Pending};
use lanet::handshake::PeerHello;
use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, Transmit, TxToken};
use lanet::wire::{FrameType, HEADER_LEN};
use rustc_hash::FxHashMap;

use super::Ctx;
use crate::cm::CmId;
use crate::mr::{Mr, RemoteBuf, Sge, SourceMr};
use crate::msg::{Kind, Outcome, Prefix, PREFIX_LEN};

/// Bytes of one message buffer (o2iblnd's IBLND_MSG_SIZE).
pub(crate) const MSG_SIZE: usize = 4096;
/// Largest payload sent inline; larger ones go by RDMA READ or WRITE.
pub const EAGER_MAX: usize = MSG_SIZE - PREFIX_LEN - HEADER_LEN;
/// Deferred payloads a connection may have outstanding in each direction. Bounds the
/// driver's own messages (one `SinkAck` or `*Done` each way per payload), which spend no
/// core credits, so the receive buffers reserved for them always suffice.
pub(crate) const RDV_MAX: usize = 8;
/// Work requests on a send queue (SENDs, WRITEs, READs).
pub(crate) const SEND_SLOTS: usize = 64;
/// Marks a receive's work request id.
const RECV_BIT: u64 = 1 << 31;

/// Receives to pre-post when offering `credits`: one per credit, as many again for CREDIT
/// frames (they need no credit, and at most one per credit can be in flight), two per
/// deferred payload for the driver's own messages, and one for the dialler's AUTH (the
/// first message of an authenticated connection; it spends no credit either).
pub(crate) fn recv_buffers(credits: u16) -> usize {
    2 * usize::from(credits) + 2 * RDV_MAX + 1
}

pub(crate) fn wr_id(conn: u32, index: usize, recv: bool) -> u64 {
    (u64::from(conn) << 32) | if recv { RECV_BIT } else { 0 } | index as u64
}

/// (connection, index, is a receive) of a work request id.
pub(crate) fn split_wr_id(wr_id: u64) -> (u32, usize, bool) {
    (
        (wr_id >> 32) as u32,
        (wr_id & (RECV_BIT - 1)) as usize,
        wr_id & RECV_BIT != 0,
    )
}

/// What a send-queue slot is busy with.
pub(crate) enum SlotUse {
    /// An eager frame: its token completes with the SEND.
    Eager(TxToken),
    /// The request of a deferred frame: its token completes with the rendezvous.
    Request,
    /// A driver message.
    Ctrl,
    /// An RDMA WRITE of a deferred payload (keeps its registration in use).
    Write { _payload: Arc<SourceMr> },
    /// The `WriteDone` after a WRITE: completes the frame with this cookie.
    WriteDone(u64),
    /// An RDMA READ fetching this deferred payload.
    Read(RxHandle),
}

/// Driver work that jumps the frame queue (it never waits for credits).
pub(crate) enum Ctrl {
    Msg(Prefix),
    /// A frame of the driver's own (the dialler's AUTH), sent eager: header and payload.
    Frame([u8; HEADER_LEN], Vec<u8>),
    /// WRITE our payload `cookie` into the peer's sink, then send `WriteDone`.
    WriteData {
        cookie: u64,
        sink: RemoteBuf,
    },
    /// READ the peer's payload into our registered sink.
    Read {
        handle: RxHandle,
        sink: Sge,
        source: RemoteBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The receiver names a sink; we WRITE (PUT payloads).
    Write,
    /// The receiver READs from us (GET replies).
    Read,
}

/// A deferred payload we sent, until the peer has it (or refused it).
pub(crate) struct OutRdv {
    pub(crate) token: TxToken,
    pub(crate) src: Arc<SourceMr>,
    pub(crate) mode: Mode,
}

/// The queue pair's buffers and queues, once it exists.
pub(crate) struct Qp {
    recv: Mr,
    recv_count: usize,
    send: Mr,
    slots: Vec<Option<SlotUse>>,
    free: Vec<usize>,
    pub(crate) frames: VecDeque<Transmit>,
    pub(crate) ctrl: VecDeque<Ctrl>,
    pub(crate) out: FxHashMap<u64, OutRdv>,
    next_cookie: u64,
    /// The peer's deferred payloads not yet finished here.
    pub(crate) incoming: usize,
    /// The lane whose CQ it uses, and how many of its entries it may need (while the QP
    /// exists, that is: they are counted from the live QPs, so none can leak).
    pub(crate) cq_lane: Lane,
    pub(crate) cq_share: usize,
}

/// A connection's transport (the connection table keeps its peer, stage and HELLO).
pub(crate) struct Conn {
    /// First field, so dropped first: destroying the QP stops the adapter touching the
    /// buffers below (and the sinks the driver holds for this connection) before they go.
    pub(crate) cm: CmId,
    pub(crate) qp: Option<Qp>,
    pub(crate) auth: ConnAuth,
}

/// Where a connection's authentication stands (see `setup`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConnAuth {
    /// Nothing to do (none asked, or done).
    Done,
    /// We dialled, with this nonce in our connect request.
    Dialled(Nonce),
    /// We accepted `PeerHello` with a challenge: the dialler's AUTH must be its first
    /// message. Until it checks out, the connection table does not hear of the peer.
    AwaitingProof(Pending, PeerHello),
}

fn resource(e: impl std::fmt::Display) -> LndError {
    LndError::new(LndErrorKind::Resource, e.to_string())
}

impl Conn {
    /// Creates the QP on `lane`'s CQ (growing it if the QPs already on it, which may need
    /// `cq_in_use` entries, leave too little), registers the buffers and pre-posts every
    /// receive.
    pub(crate) fn create_qp(
        &mut self,
        id: u32,
        lane: Lane,
        cq_in_use: usize,
        ctx: &mut Ctx,
    ) -> Result<(), LndError> {
        let recv_count = recv_buffers(ctx.local.id.credits[lane]);
        let share = SEND_SLOTS + recv_count;
        let cq = &ctx.cq[lane];
        let need = cq_in_use + share;
        if need > cq.capacity() {
            cq.resize(need * 2).map_err(resource)?;
        }
        self.cm
            .create_rc_qp(&ctx.pd, cq, SEND_SLOTS as u32, recv_count as u32)
            .map_err(resource)?;
        let qp = Qp {
            recv: Mr::new(&ctx.pd, recv_count * MSG_SIZE).map_err(resource)?,
            recv_count,
            send: Mr::new(&ctx.pd, SEND_SLOTS * MSG_SIZE).map_err(resource)?,
            slots: (0..SEND_SLOTS).map(|_| None).collect(),
            free: (0..SEND_SLOTS).rev().collect(),
            frames: VecDeque::new(),
            ctrl: VecDeque::new(),
            out: FxHashMap::default(),
            next_cookie: 1,
            incoming: 0,
            cq_lane: lane,
            cq_share: share,
        };
        let qp = self.qp.insert(qp);
        for i in 0..qp.recv_count {
            repost(&self.cm, qp, id, i)?;
        }
        Ok(())
    }

    /// Posts what fits: driver messages first, then frames in order. Only for a
    /// connection that is up.
    pub(crate) fn pump(&mut self, id: u32, ctx: &mut Ctx) -> Result<(), LndError> {
        let Some(qp) = self.qp.as_mut() else {
            return Ok(());
        };
        let cm = &self.cm;
        loop {
            if let Some(c) = qp.ctrl.front() {
                let need = if matches!(c, Ctrl::WriteData { .. }) {
                    2
                } else {
                    1
                };
                if qp.free.len() < need {
                    return Ok(());
                }
                let c = qp.ctrl.pop_front().expect("checked");
                qp.post_ctrl(cm, id, c)?;
                continue;
            }
            let Some(tx) = qp.frames.front() else {
                return Ok(());
            };
            let deferred = tx.payload.len() > EAGER_MAX;
            if qp.free.is_empty() || (deferred && qp.out.len() >= RDV_MAX) {
                return Ok(());
            }
            let tx = qp.frames.pop_front().expect("checked");
            if deferred {
                qp.post_request(cm, id, tx, ctx)?;
            } else {
                qp.post_eager(cm, id, tx)?;
            }
        }
    }

    /// Every token this connection still owes a `SendComplete`, for when it dies.
    pub(crate) fn owed_tokens(&mut self) -> Vec<TxToken> {
        let Some(qp) = self.qp.as_mut() else {
            return Vec::new();
        };
        let mut tokens: Vec<TxToken> = qp.frames.drain(..).map(|t| t.token).collect();
        tokens.extend(qp.slots.iter().filter_map(|s| match s {
            Some(SlotUse::Eager(t)) => Some(*t),
            _ => None,
        }));
        tokens.extend(qp.out.drain().map(|(_, r)| r.token));
        tokens
    }
}

/// Re-posts receive buffer `i`.
pub(crate) fn repost(cm: &CmId, qp: &Qp, id: u32, i: usize) -> Result<(), LndError> {
    let sge = qp.recv.sge(i * MSG_SIZE, MSG_SIZE);
    // SAFETY: the buffer belongs to `qp`, which the connection drops only after its CmId
    // (destroying the QP first); it is not read again until this receive completes.
    unsafe { cm.post_recv(sge, wr_id(id, i, true)) }.map_err(resource)
}

impl Qp {
    /// Receive buffer `i`'s first `len` bytes (a message that just arrived).
    pub(crate) fn received(&self, i: usize, len: usize) -> Option<&[u8]> {
        (i < self.recv_count && len <= MSG_SIZE)
            .then(|| &self.recv.as_slice()[i * MSG_SIZE..i * MSG_SIZE + len])
    }

    /// Frees send slot `i`; what it was for.
    pub(crate) fn take_slot(&mut self, i: usize) -> Option<SlotUse> {
        let used = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        Some(used)
    }

    /// Takes a free slot for `used` and returns its index and message buffer.
    fn slot(&mut self, used: SlotUse) -> (usize, &mut [u8]) {
        let i = self.free.pop().expect("caller checked for a free slot");
        self.slots[i] = Some(used);
        (
            i,
            &mut self.send.as_mut_slice()[i * MSG_SIZE..(i + 1) * MSG_SIZE],
        )
    }

    fn send(&mut self, cm: &CmId, id: u32, i: usize, len: usize) -> Result<(), LndError> {
        let sge = self.send.sge(i * MSG_SIZE, len);
        // SAFETY: slot `i`'s buffer is ours until its completion frees the slot, and the
        // QP is destroyed before the buffer (see `Conn`).
        unsafe { cm.post_send(sge, wr_id(id, i, false)) }.map_err(resource)
    }

    fn post_eager(&mut self, cm: &CmId, id: u32, tx: Transmit) -> Result<(), LndError> {
        self.send_eager(cm, id, SlotUse::Eager(tx.token), &tx.header, &tx.payload)
    }

    /// Sends a frame with its payload inline, the slot held for `used`.
    fn send_eager(
        &mut self,
        cm: &CmId,
        id: u32,
        used: SlotUse,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
    ) -> Result<(), LndError> {
        let len = payload.len();
        let (i, buf) = self.slot(used);
        let remote = RemoteBuf {
            addr: 0,
            rkey: 0,
            len: len as u32,
        };
        Prefix::new(Kind::Eager, 0)
            .with(Outcome::Ok, remote)
            .encode(buf);
        buf[PREFIX_LEN..PREFIX_LEN + HEADER_LEN].copy_from_slice(header);
        buf[PREFIX_LEN + HEADER_LEN..PREFIX_LEN + HEADER_LEN + len].copy_from_slice(payload);
        self.send(cm, id, i, PREFIX_LEN + HEADER_LEN + len)
    }

    /// Sends a deferred frame's request: the header, and where to READ the payload (GET
    /// replies) or how long it is (PUTs, whose receiver answers with a sink).
    fn post_request(
        &mut self,
        cm: &CmId,
        id: u32,
        tx: Transmit,
        ctx: &mut Ctx,
    ) -> Result<(), LndError> {
        let payload = tx.payload.clone();
        let registered =
            ctx.cache
                .get_or_register(payload.as_ptr() as usize, payload.len(), || {
                    SourceMr::new(&ctx.pd, payload)
                });
        let src = match registered {
            Ok(src) => src,
            Err(e) => {
                ctx.events.push(LndEvent::SendComplete {
                    token: tx.token,
                    result: Err(resource(e)),
                });
                return Ok(());
            }
        };
        let mode = if tx.header[5] == FrameType::Put as u8 {
            Mode::Write
        } else {
            Mode::Read
        };
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let (kind, remote) = match mode {
            Mode::Write => (
                Kind::PutReq,
                RemoteBuf {
                    addr: 0,
                    rkey: 0,
                    len: tx.payload.len() as u32,
                },
            ),
            Mode::Read => (Kind::ReadReq, src.remote()),
        };
        self.out.insert(
            cookie,
            OutRdv {
                token: tx.token,
                src,
                mode,
            },
        );
        let (i, buf) = self.slot(SlotUse::Request);
        Prefix::new(kind, cookie)
            .with(Outcome::Ok, remote)
            .encode(buf);
        buf[PREFIX_LEN..PREFIX_LEN + HEADER_LEN].copy_from_slice(&tx.header);
        self.send(cm, id, i, PREFIX_LEN + HEADER_LEN)
    }

    fn post_ctrl(&mut self, cm: &CmId, id: u32, c: Ctrl) -> Result<(), LndError> {
        match c {
            Ctrl::Msg(prefix) => {
                let (i, buf) = self.slot(SlotUse::Ctrl);
                prefix.encode(buf);
                self.send(cm, id, i, PREFIX_LEN)
            }
            Ctrl::Frame(header, payload) => {
                self.send_eager(cm, id, SlotUse::Ctrl, &header, &payload)
            }
            Ctrl::WriteData { cookie, sink } => {
                let Some(src) = self.out.get(&cookie).map(|r| r.src.clone()) else {
                    return Ok(()); // failed meanwhile
                };
                let sge = src.sge();
                let (i, _) = self.slot(SlotUse::Write { _payload: src });
                // SAFETY: the slot holds the payload's registration (and so the payload)
                // until the WRITE completes; the QP goes before the slots.
                unsafe { cm.post_write(sge, sink, wr_id(id, i, false)) }.map_err(resource)?;
                // Ordered after the WRITE on this QP: when the peer sees it, the data is there.
                let (i, buf) = self.slot(SlotUse::WriteDone(cookie));
                Prefix::new(Kind::WriteDone, cookie).encode(buf);
                self.send(cm, id, i, PREFIX_LEN)
            }
            Ctrl::Read {
                handle,
                sink,
                source,
            } => {
                let (i, _) = self.slot(SlotUse::Read(handle));
                // SAFETY: the sink stays registered in the driver's table of fetches until
                // this READ completes or its connection (QP first) is gone.
                unsafe { cm.post_read(sink, source, wr_id(id, i, false)) }.map_err(resource)
            }
        }
    }
}
