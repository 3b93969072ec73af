//! One connection: its rdma_cm id and RC queue pair, its send slots, and what waits to be
//! posted on it.
//!
//! Every work request on the send queue holds a *slot* (so the queue never overflows and a
//! completion finds what it was for); slots of SENDs also hold a message buffer from the
//! NI's send pool until they complete. Receives come from the lane's shared receive queue
//! (see `bufs`): a connection holds no receive buffer of its own.

use std::collections::VecDeque;
use std::sync::Arc;

use lanet::handshake::auth::{Nonce, Pending};
use lanet::handshake::PeerHello;
use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, Transmit, TxToken};
use lanet::wire::{FrameType, HEADER_LEN};
use rustc_hash::FxHashMap;

use super::bufs::{self, BufPool};
use super::Ctx;
use crate::cm::{CmId, Receives, SEND_CHAIN_MAX};
use crate::mr::{RemoteBuf, Sge, SourceMr};
use crate::msg::{Kind, Outcome, Prefix, PREFIX_LEN};
use crate::verbs::Cq;

/// Bytes of a message buffer by default (o2iblnd's IBLND_MSG_SIZE), and of a peer's that
/// does not say.
pub(crate) const DEFAULT_MSG_SIZE: usize = 4096;
/// Largest payload sent inline by default; larger ones go by RDMA READ or WRITE.
pub const EAGER_MAX: usize = DEFAULT_MSG_SIZE - MSG_OVERHEAD;
/// What a message carries beside its payload: our prefix and the frame's header.
pub(crate) const MSG_OVERHEAD: usize = PREFIX_LEN + HEADER_LEN;
/// Bytes of the largest message buffer (what `eager_max` may ask for).
pub(crate) const MSG_SIZE_MAX: usize = 64 * 1024;

/// The message size for an eager limit of `eager_max` payload bytes: whole KiB (the
/// HELLO says it in KiB), 4 KiB to 64 KiB.
pub(crate) fn msg_size_for(eager_max: usize) -> usize {
    (eager_max.min(MSG_SIZE_MAX) + MSG_OVERHEAD)
        .next_multiple_of(1024)
        .clamp(DEFAULT_MSG_SIZE, MSG_SIZE_MAX)
}
/// Deferred payloads a connection may have outstanding in each direction. Bounds the
/// driver's own messages (one `SinkAck` or `*Done` each way per payload), which spend no
/// core credits, and the sinks a peer can make us hold.
pub(crate) const RDV_MAX: usize = 8;
/// Work requests on a connection's send queue (SENDs, WRITEs, READs) when it offers
/// `credits`: about a SEND per credit and as many CREDIT frames, and two per deferred
/// payload (its WRITE and DONE); frames beyond wait in the connection's queue. One less
/// than a power of two, as providers keep a slot of their ring empty (rxe makes a ring of
/// 128 for 64): the send queue is most of what an idle connection costs.
pub(crate) fn send_slots(credits: u16) -> usize {
    let want = 2 * usize::from(credits) + 2 * RDV_MAX;
    (want.next_power_of_two() - 1).clamp(15, 255)
}

/// A send's work request id: the connection (below 2^31, see `RdmaLnd::new_conn_id`) and
/// its send slot. Receives carry [`bufs::RECV_BIT`] and their buffer instead.
pub(crate) fn wr_id(conn: u32, slot: usize) -> u64 {
    (u64::from(conn) << 32) | slot as u64
}

/// Makes room for `need` completions in `cq`: twice that, within the device's `max_cqe`
/// (rxe's is 32 K: about 900 connections on one lane with 8 credits).
pub(crate) fn grow_cq(cq: &Cq, need: usize, max_cqe: usize) -> Result<(), LndError> {
    if need <= cq.capacity() {
        return Ok(());
    }
    if need > max_cqe {
        return Err(resource(format!(
            "a CQ of {need} entries is needed, and the device allows {max_cqe}: too many \
             connections on this lane, or receive pools too large (recv_pools)"
        )));
    }
    cq.resize((need * 2).min(max_cqe)).map_err(resource)
}

/// Where a pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// At the end of its queues, or of its send queue's room (a completion pumps again).
    Done,
    /// No send buffer of the NI is free for its lane (the data lane leaves a few to the
    /// health lane): it goes on when one comes back.
    NeedsBuffers,
}

/// Send buffers the data lane leaves to the health lane while any are in use (a quarter
/// of the pool, if that is fewer): data SENDs stuck on a peer that takes nothing (RNR,
/// retried until the peer is found Down, itself by a PING) could otherwise hold every
/// buffer, and the health lane's PINGs and PONGs to everyone else would wait for one.
const HEALTH_SEND_RESERVE: usize = 4;

/// Whether a SEND on `lane` can have a buffer now. Registering more failing (the
/// locked-memory limit, say) is waited out while buffers are in use, as they come back,
/// and not tried again until the driver's next housekeeping; with none in use, nothing
/// would ever come back, and the connection fails saying why.
fn send_buf_ready(ctx: &mut Ctx, lane: Lane) -> Result<bool, LndError> {
    let in_use = ctx.send_bufs.in_use();
    let reserve = match lane {
        Lane::Data if in_use > 0 => HEALTH_SEND_RESERVE.min(ctx.send_bufs.max() / 4),
        _ => 0,
    };
    if ctx.send_reg_failed && in_use > 0 {
        return Ok(ctx.send_bufs.free_count() > reserve);
    }
    match ctx.send_bufs.ready_beyond(reserve, &ctx.pd) {
        Ok(ready) => Ok(ready),
        Err(e) if ctx.send_bufs.in_use() > 0 => {
            ctx.send_reg_failed = true;
            ctx.send_reg_failures += 1;
            if ctx.send_reg_failures % 1000 == 1 {
                tracing::warn!(
                    failures = ctx.send_reg_failures,
                    "cannot register more send buffers ({e}); SENDs wait for buffers in use"
                );
            }
            Ok(false)
        }
        Err(e) => Err(resource(format!("no send buffer can be registered: {e}"))),
    }
}

/// A peer's message buffers, from its HELLO's `rx_msg_kib` (0: not said, the default).
pub(crate) fn peer_msg_size(rx_msg_kib: u16) -> usize {
    match rx_msg_kib {
        0 => DEFAULT_MSG_SIZE,
        kib => usize::from(kib) * 1024,
    }
}

/// What our HELLO says of our message buffers: nothing (0) at the default size, which
/// nodes that do not read it assume.
pub(crate) fn msg_kib(msg_size: usize) -> u16 {
    match msg_size {
        DEFAULT_MSG_SIZE => 0,
        size => u16::try_from(size / 1024).unwrap_or(u16::MAX),
    }
}

/// Largest payload inside a message on a connection whose peer receives messages of
/// `peer_msg` bytes and whose sends come from buffers of `own_msg`.
pub(crate) fn conn_eager_max(peer_msg: usize, own_msg: usize) -> usize {
    peer_msg.min(own_msg).saturating_sub(MSG_OVERHEAD)
}

// The configuration file's bound is what the largest message holds.
const _: () = assert!(lanet::config::file::MAX_EAGER as usize == MSG_SIZE_MAX - MSG_OVERHEAD);

/// What a work request id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WrId {
    /// A receive from a lane's shared receive queue, into this buffer.
    Recv(u32),
    Send {
        conn: u32,
        slot: usize,
    },
}

pub(crate) fn split_wr_id(wr_id: u64) -> WrId {
    if wr_id & bufs::RECV_BIT != 0 {
        WrId::Recv(wr_id as u32)
    } else {
        WrId::Send {
            conn: (wr_id >> 32) as u32,
            slot: (wr_id & u64::from(u32::MAX)) as usize,
        }
    }
}

/// What a send-queue slot is busy with.
pub(crate) enum SlotUse {
    /// An eager frame: its token completes with the SEND; with `report_at_once`
    /// ([`lanet::lnd::Transmit::report_at_once`]), not held back.
    Eager {
        token: TxToken,
        report_at_once: bool,
    },
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
    /// The peer named its sink (SinkAck): the WRITE is under way, and any further SinkAck
    /// for it breaks the protocol (each would write the payload again, and queue).
    pub(crate) sink_acked: bool,
}

/// A busy send slot: what for, and the send-pool buffer it holds (SENDs only).
pub(crate) struct Slot {
    used: SlotUse,
    buf: Option<u32>,
}

/// The queue pair's send slots and queues, once it exists.
pub(crate) struct Qp {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    pub(crate) frames: VecDeque<Transmit>,
    pub(crate) ctrl: VecDeque<Ctrl>,
    pub(crate) out: FxHashMap<u64, OutRdv>,
    next_cookie: u64,
    /// The peer's deferred payloads not yet finished here.
    pub(crate) incoming: usize,
    /// The rendezvous sweep of the last step of any rendezvous on it (see `stalled`).
    pub(crate) rdv_progress: u32,
    /// The lane whose CQ and shared receive queue it uses. Its sends may need as many of
    /// the CQ's entries as it has slots, while it exists (counted from the QPs that exist,
    /// failed ones still flushing included, so none can leak).
    pub(crate) cq_lane: Lane,
    /// Largest payload sent inside a message on it: what both ends' buffers hold.
    pub(crate) eager_max: usize,
    /// In the NI's line of connections waiting for a send buffer.
    pub(crate) waiting_for_buf: bool,
    /// SENDs a pump took, posted together (one doorbell: one system call on soft-RoCE)
    /// once they fill a chain, before a WRITE or READ (which must not overtake them),
    /// right after a WriteDone, and when the pump ends.
    gathered: Vec<(Sge, u64)>,
}

/// A connection's transport (the connection table keeps its peer, stage and HELLO).
pub(crate) struct Conn {
    /// First field, so dropped first: destroying the QP stops the adapter touching what
    /// its slots hold (payload registrations below, send-pool buffers, the sinks the
    /// driver holds for this connection) before any of it goes.
    pub(crate) cm: CmId,
    pub(crate) qp: Option<Qp>,
    pub(crate) auth: ConnAuth,
    /// Its QP has been ready to receive (we accepted, or our dial was answered): when the
    /// connection fails, it may hold a shared receive (see `retire`).
    pub(crate) reached_rts: bool,
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
    /// Creates the QP on `lane`'s CQ and shared receive queue (growing the CQ if the
    /// QPs and receives already on it, which may need `cq_in_use` entries, leave too
    /// little room for its sends).
    /// `peer_msg_size`: the peer's message buffers, if known yet (an acceptor knows from
    /// the connect request; a dialler learns from the answer, [`Qp::set_peer_msg_size`]).
    pub(crate) fn create_qp(
        &mut self,
        lane: Lane,
        cq_in_use: usize,
        peer_msg_size: Option<usize>,
        ctx: &mut Ctx,
    ) -> Result<(), LndError> {
        let slots = send_slots(ctx.local.id.credits[lane]);
        let cq = &ctx.cq[lane];
        grow_cq(cq, cq_in_use + slots, ctx.limits.max_cqe)?;
        let receives = Receives::Shared(ctx.recv[lane].srq());
        self.cm
            .create_rc_qp(&ctx.pd, cq, slots as u32, receives)
            .map_err(resource)?;
        self.qp = Some(Qp {
            slots: (0..slots).map(|_| None).collect(),
            free: (0..slots).rev().collect(),
            frames: VecDeque::new(),
            ctrl: VecDeque::new(),
            out: FxHashMap::default(),
            next_cookie: 1,
            incoming: 0,
            rdv_progress: ctx.rdv_sweeps,
            cq_lane: lane,
            eager_max: EAGER_MAX,
            waiting_for_buf: false,
            gathered: Vec::new(),
        });
        if let (Some(qp), Some(size)) = (self.qp.as_mut(), peer_msg_size) {
            qp.set_peer_msg_size(size, ctx);
        }
        Ok(())
    }

    /// Posts what fits: driver messages first, then frames in order, their SENDs chained
    /// (see `Qp::gathered`). Only for a connection that is up, on `lane`. Stops short, to
    /// go on when a SEND completes elsewhere, where no send buffer is free for its lane
    /// (see `send_buf_ready`). An error
    /// fails the connection: what it took then ends with the QP.
    pub(crate) fn pump(&mut self, id: u32, lane: Lane, ctx: &mut Ctx) -> Result<Pumped, LndError> {
        let pumped = self.take_sends(id, lane, ctx).inspect_err(|_| {
            // Never posted later, should the connection outlive the error.
            if let Some(qp) = self.qp.as_mut() {
                qp.gathered.clear();
            }
        })?;
        if let Some(qp) = self.qp.as_mut() {
            qp.post_gathered(&self.cm)?;
        }
        Ok(pumped)
    }

    /// [`Conn::pump`] but for posting the last SENDs it takes: it posts them in chains of
    /// [`SEND_CHAIN_MAX`], and before a WRITE or READ.
    fn take_sends(&mut self, id: u32, lane: Lane, ctx: &mut Ctx) -> Result<Pumped, LndError> {
        let Some(qp) = self.qp.as_mut() else {
            return Ok(Pumped::Done);
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
                    return Ok(Pumped::Done);
                }
                if !matches!(c, Ctrl::Read { .. }) && !send_buf_ready(ctx, lane)? {
                    return Ok(Pumped::NeedsBuffers);
                }
                let c = qp.ctrl.pop_front().expect("checked");
                qp.post_ctrl(cm, id, c, ctx)?;
                qp.post_full_chain(cm)?;
                continue;
            }
            let Some(tx) = qp.frames.front() else {
                return Ok(Pumped::Done);
            };
            let deferred = tx.payload.len() > qp.eager_max;
            if qp.free.is_empty() || (deferred && qp.out.len() >= RDV_MAX) {
                return Ok(Pumped::Done);
            }
            if !send_buf_ready(ctx, lane)? {
                return Ok(Pumped::NeedsBuffers);
            }
            let tx = qp.frames.pop_front().expect("checked");
            if deferred {
                qp.post_request(id, tx, ctx)?;
            } else {
                qp.post_eager(id, tx, ctx)?;
            }
            qp.post_full_chain(cm)?;
        }
    }

    /// Whether work requests of its are still with the adapter (SENDs, READs, WRITEs).
    pub(crate) fn in_flight(&self) -> bool {
        self.qp
            .as_ref()
            .is_some_and(|qp| qp.free.len() < qp.slots.len())
    }

    /// Every token this connection still owes a `SendComplete`, for when it dies.
    pub(crate) fn owed_tokens(&mut self) -> Vec<TxToken> {
        let Some(qp) = self.qp.as_mut() else {
            return Vec::new();
        };
        let mut tokens: Vec<TxToken> = qp.frames.drain(..).map(|t| t.token).collect();
        tokens.extend(qp.slots.iter().filter_map(|s| match s {
            Some(Slot {
                used: SlotUse::Eager { token, .. },
                ..
            }) => Some(*token),
            _ => None,
        }));
        tokens.extend(qp.out.drain().map(|(_, r)| r.token));
        tokens
    }

    /// The send-pool buffers its slots hold, taken: for the pool once the QP is gone.
    pub(crate) fn take_send_bufs(&mut self) -> Vec<u32> {
        let Some(qp) = self.qp.as_mut() else {
            return Vec::new();
        };
        qp.slots
            .iter_mut()
            .filter_map(|s| s.as_mut().and_then(|s| s.buf.take()))
            .collect()
    }
}

impl Qp {
    /// The peer receives messages of `peer_msg_size` bytes: payloads that fit in its
    /// buffers and ours go inside the message.
    pub(crate) fn set_peer_msg_size(&mut self, peer_msg_size: usize, ctx: &Ctx) {
        self.eager_max = conn_eager_max(peer_msg_size, ctx.send_bufs.buf_size());
    }

    /// A step of one of its rendezvous: the stall clock starts again (see `stalled`).
    pub(crate) fn rdv_step(&mut self, ctx: &Ctx) {
        self.rdv_progress = ctx.rdv_sweeps;
    }

    /// A rendezvous begins on it (ours offered, or theirs fetched): a step, and the NI's
    /// sweeps are due again.
    pub(crate) fn rdv_begin(&mut self, ctx: &mut Ctx) {
        self.rdv_step(ctx);
        ctx.rdv_idle = false;
    }

    /// Work requests its send queue holds.
    pub(crate) fn send_slots(&self) -> usize {
        self.slots.len()
    }

    /// Frees send slot `i` (its buffer back to `pool`); what it was for.
    pub(crate) fn take_slot(&mut self, i: usize, pool: &mut BufPool) -> Option<SlotUse> {
        let Slot { used, buf } = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        if let Some(b) = buf {
            pool.give(b);
        }
        Some(used)
    }

    /// Takes a free slot for `used`.
    fn slot(&mut self, used: SlotUse) -> usize {
        let i = self.free.pop().expect("caller checked for a free slot");
        self.slots[i] = Some(Slot { used, buf: None });
        i
    }

    /// Gives slot `i` a buffer from the send pool, for a SEND; its contents.
    fn slot_buf<'a>(
        &mut self,
        i: usize,
        ctx: &'a mut Ctx,
    ) -> Result<(u32, &'a mut [u8]), LndError> {
        let b = ctx
            .send_bufs
            .take(&ctx.pd)
            .map_err(resource)?
            .ok_or_else(|| resource("the send buffer pool is at its limit"))?;
        if let Some(slot) = self.slots[i].as_mut() {
            slot.buf = Some(b);
        }
        Ok((b, ctx.send_bufs.get_mut(b)))
    }

    /// Takes a SEND of `len` bytes of send-pool buffer `buf` for slot `i`, posted with
    /// the pump's others (`post_gathered`).
    fn gather_send(&mut self, id: u32, i: usize, buf: u32, len: usize, ctx: &Ctx) {
        self.gathered
            .push((ctx.send_bufs.sge(buf, len), wr_id(id, i)));
    }

    /// Posts the SENDs taken once they fill a chain: the adapter starts on them while
    /// the pump copies the next frames.
    fn post_full_chain(&mut self, cm: &CmId) -> Result<(), LndError> {
        if self.gathered.len() >= SEND_CHAIN_MAX {
            self.post_gathered(cm)?;
        }
        Ok(())
    }

    /// Posts the SENDs taken since the last post, in order.
    fn post_gathered(&mut self, cm: &CmId) -> Result<(), LndError> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        // SAFETY: each buffer is its slot's until the SEND completes (`take_slot`) or the
        // QP is destroyed (`RdmaLnd::retire` and `destroy`); only then does it go back to
        // the pool, whose registrations outlive every QP.
        let posted = unsafe { cm.post_sends(&self.gathered) };
        self.gathered.clear();
        posted.map_err(resource)
    }

    fn post_eager(&mut self, id: u32, tx: Transmit, ctx: &mut Ctx) -> Result<(), LndError> {
        let used = SlotUse::Eager {
            token: tx.token,
            report_at_once: tx.report_at_once,
        };
        self.send_eager(id, used, &tx.header, &tx.payload, ctx)
    }

    /// Takes a SEND of a frame with its payload inline, the slot held for `used`.
    fn send_eager(
        &mut self,
        id: u32,
        used: SlotUse,
        header: &[u8; HEADER_LEN],
        payload: &[u8],
        ctx: &mut Ctx,
    ) -> Result<(), LndError> {
        let len = payload.len();
        let i = self.slot(used);
        let (b, buf) = self.slot_buf(i, ctx)?;
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
        self.gather_send(id, i, b, PREFIX_LEN + HEADER_LEN + len, ctx);
        Ok(())
    }

    /// Takes a SEND of a driver message of just a prefix, the slot held for `used`.
    fn send_prefix(
        &mut self,
        id: u32,
        used: SlotUse,
        prefix: Prefix,
        ctx: &mut Ctx,
    ) -> Result<(), LndError> {
        let i = self.slot(used);
        let (b, buf) = self.slot_buf(i, ctx)?;
        prefix.encode(buf);
        self.gather_send(id, i, b, PREFIX_LEN, ctx);
        Ok(())
    }

    /// Takes a SEND of a deferred frame's request: the header, and where to READ the
    /// payload (GET replies) or how long it is (PUTs, whose receiver answers with a sink).
    fn post_request(&mut self, id: u32, tx: Transmit, ctx: &mut Ctx) -> Result<(), LndError> {
        let payload = tx.payload.clone();
        let mode = if tx.header[5] == FrameType::Put as u8 {
            Mode::Write
        } else {
            Mode::Read
        };
        // A PUT's payload is only written from, by us: registered (and cached) apart from
        // those a peer reads, with no remote access.
        let remote_read = mode == Mode::Read;
        let cache = if remote_read {
            &mut ctx.cache
        } else {
            &mut ctx.local_cache
        };
        let registered = cache.get_or_register(payload.as_ptr() as usize, payload.len(), || {
            SourceMr::new(&ctx.pd, payload, remote_read)
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
        self.rdv_begin(ctx);
        self.out.insert(
            cookie,
            OutRdv {
                token: tx.token,
                src,
                mode,
                sink_acked: false,
            },
        );
        let i = self.slot(SlotUse::Request);
        let (b, buf) = self.slot_buf(i, ctx)?;
        Prefix::new(kind, cookie)
            .with(Outcome::Ok, remote)
            .encode(buf);
        buf[PREFIX_LEN..PREFIX_LEN + HEADER_LEN].copy_from_slice(&tx.header);
        self.gather_send(id, i, b, PREFIX_LEN + HEADER_LEN, ctx);
        Ok(())
    }

    fn post_ctrl(&mut self, cm: &CmId, id: u32, c: Ctrl, ctx: &mut Ctx) -> Result<(), LndError> {
        match c {
            Ctrl::Msg(prefix) => self.send_prefix(id, SlotUse::Ctrl, prefix, ctx),
            Ctrl::Frame(header, payload) => {
                self.send_eager(id, SlotUse::Ctrl, &header, &payload, ctx)
            }
            Ctrl::WriteData { cookie, sink } => {
                let Some(src) = self.out.get(&cookie).map(|r| r.src.clone()) else {
                    return Ok(()); // failed meanwhile
                };
                let sge = src.sge();
                self.post_gathered(cm)?; // the SENDs taken before it go first
                let i = self.slot(SlotUse::Write { _payload: src });
                // SAFETY: the slot holds the payload's registration (and so the payload)
                // until the WRITE completes; the QP goes before the slots.
                unsafe { cm.post_write(sge, sink, wr_id(id, i)) }.map_err(resource)?;
                // Ordered after the WRITE on this QP: when the peer sees it, the data is there.
                // Posted now, not behind the frames the pump copies next.
                let done = Prefix::new(Kind::WriteDone, cookie);
                self.send_prefix(id, SlotUse::WriteDone(cookie), done, ctx)?;
                self.post_gathered(cm)
            }
            Ctrl::Read {
                handle,
                sink,
                source,
            } => {
                self.post_gathered(cm)?; // the SENDs taken before it go first
                let i = self.slot(SlotUse::Read(handle));
                // SAFETY: the sink stays registered in the driver's table of fetches until
                // this READ completes or its connection (QP first) is gone.
                unsafe { cm.post_read(sink, source, wr_id(id, i)) }.map_err(resource)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sizes_are_whole_kib_and_said_only_when_not_the_default() {
        assert_eq!(msg_size_for(EAGER_MAX), DEFAULT_MSG_SIZE);
        assert_eq!(msg_size_for(1), DEFAULT_MSG_SIZE);
        assert_eq!(msg_size_for(EAGER_MAX + 1), 5 * 1024);
        assert_eq!(msg_size_for(8192), 9 * 1024);
        assert_eq!(msg_size_for(usize::MAX), MSG_SIZE_MAX);
        assert_eq!(msg_kib(DEFAULT_MSG_SIZE), 0);
        assert_eq!(msg_kib(9 * 1024), 9);
        for size in [DEFAULT_MSG_SIZE, 9 * 1024, MSG_SIZE_MAX] {
            assert_eq!(peer_msg_size(msg_kib(size)), size);
        }
    }

    #[test]
    fn a_connection_sends_inline_what_both_ends_buffers_hold() {
        assert_eq!(conn_eager_max(DEFAULT_MSG_SIZE, 9 * 1024), EAGER_MAX);
        assert_eq!(conn_eager_max(9 * 1024, DEFAULT_MSG_SIZE), EAGER_MAX);
        assert_eq!(conn_eager_max(9 * 1024, 17 * 1024), 9 * 1024 - MSG_OVERHEAD);
        // A peer claiming little is taken at its word; claiming much, capped by ours.
        assert_eq!(conn_eager_max(1024, DEFAULT_MSG_SIZE), 1024 - MSG_OVERHEAD);
        assert_eq!(
            conn_eager_max(peer_msg_size(u16::MAX), MSG_SIZE_MAX),
            MSG_SIZE_MAX - MSG_OVERHEAD
        );
        assert_eq!(peer_msg_size(0), DEFAULT_MSG_SIZE, "not said: the default");
    }

    #[test]
    fn send_queues_fit_power_of_two_rings_and_grow_with_credits() {
        assert_eq!(send_slots(8), 31);
        assert_eq!(send_slots(32), 127);
        assert_eq!(send_slots(0), 15); // the deferred payloads' share alone
        assert_eq!(send_slots(u16::MAX), 255);
        for credits in [1, 8, 16, 100, 1000] {
            let n = send_slots(credits);
            assert!((n + 1).is_power_of_two(), "{credits}: {n}");
        }
    }
}
