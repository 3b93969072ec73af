//! Small owning wrappers over librdmacm: an event channel, connection ids with their RC
//! queue pair, and the events that drive connection set-up.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use rdma_sys as sys;

use crate::mr::{RemoteBuf, Sge};
use crate::srq::{Srq, SrqHandle};
use crate::verbs::{check, set_nonblocking, Context, Cq, CqHandle, Pd, PdHandle, VerbsError};

/// The most SENDs one `ibv_post_send` takes ([`CmId::post_sends`]): a chain on the stack.
pub const SEND_CHAIN_MAX: usize = 16;

/// What happened to a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    RouteResolved,
    ConnectRequest,
    Established,
    Rejected,
    Unreachable,
    Disconnected,
    /// The device under the id went away (removed, or reset by its driver): nothing on
    /// it works any more.
    DeviceRemoval,
    /// Address or route resolution, or the connection, failed in another way.
    Error(u32),
    Other(u32),
}

impl CmEventKind {
    /// Whether the event ends its connection (or its attempt).
    pub fn ends_a_connection(self) -> bool {
        matches!(
            self,
            CmEventKind::Disconnected
                | CmEventKind::Unreachable
                | CmEventKind::Rejected
                | CmEventKind::Error(_)
        )
    }

    fn from_raw(e: u32) -> CmEventKind {
        use sys::rdma_cm_event_type::*;
        match e {
            RDMA_CM_EVENT_ADDR_RESOLVED => CmEventKind::AddrResolved,
            RDMA_CM_EVENT_ROUTE_RESOLVED => CmEventKind::RouteResolved,
            RDMA_CM_EVENT_CONNECT_REQUEST => CmEventKind::ConnectRequest,
            RDMA_CM_EVENT_ESTABLISHED => CmEventKind::Established,
            RDMA_CM_EVENT_REJECTED => CmEventKind::Rejected,
            RDMA_CM_EVENT_UNREACHABLE => CmEventKind::Unreachable,
            RDMA_CM_EVENT_DISCONNECTED => CmEventKind::Disconnected,
            RDMA_CM_EVENT_DEVICE_REMOVAL => CmEventKind::DeviceRemoval,
            RDMA_CM_EVENT_ADDR_ERROR | RDMA_CM_EVENT_ROUTE_ERROR | RDMA_CM_EVENT_CONNECT_ERROR => {
                CmEventKind::Error(e)
            }
            other => CmEventKind::Other(other),
        }
    }
}

/// An rdma_cm event, copied out (the library's event is acknowledged at once).
#[derive(Debug)]
pub struct CmEvent {
    pub kind: CmEventKind,
    pub status: i32,
    /// The connection's private data (CONNECT_REQUEST, ESTABLISHED, REJECTED).
    pub private_data: Vec<u8>,
    /// The tag of the id the event is for (a CONNECT_REQUEST's: its listener's).
    pub tag: u64,
    /// For CONNECT_REQUEST: the new id, to adopt with [`CmId::adopt`].
    id: *mut sys::rdma_cm_id,
}

/// A channel on which rdma_cm reports events for the ids created on it.
pub struct EventChannel {
    ch: NonNull<sys::rdma_event_channel>,
}

// SAFETY: librdmacm event channels may be used from any thread. Not `Sync` (and shared by
// its ids through an `Rc`): `next` reads the context of each event's id, which
// `CmId::set_tag` writes; sharing the channel across threads would let one poll while
// another tags.
unsafe impl Send for EventChannel {}

impl EventChannel {
    pub fn new() -> Result<Rc<EventChannel>, VerbsError> {
        // SAFETY: no arguments; null means failure with errno.
        let ch = unsafe { sys::rdma_create_event_channel() };
        let ch =
            NonNull::new(ch).ok_or_else(|| VerbsError::last("rdma_create_event_channel", ""))?;
        Ok(Rc::new(EventChannel { ch }))
    }

    /// Waits for the next event.
    pub fn next(&self) -> Result<CmEvent, VerbsError> {
        let mut ev: *mut sys::rdma_cm_event = std::ptr::null_mut();
        // SAFETY: the channel is alive; `ev` receives an event we acknowledge below.
        check("rdma_get_cm_event", unsafe {
            sys::rdma_get_cm_event(self.ch.as_ptr(), &mut ev)
        })?;
        // SAFETY: rdma_get_cm_event succeeded, so `ev` points at a valid event until acked.
        let (kind, status, id, private_data) = unsafe {
            let e = &*ev;
            let conn = e.param.conn;
            let private_data = if conn.private_data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(
                    conn.private_data.cast::<u8>(),
                    usize::from(conn.private_data_len),
                )
                .to_vec()
            };
            (CmEventKind::from_raw(e.event), e.status, e.id, private_data)
        };
        // SAFETY: the event's id is alive (ours, or new for a CONNECT_REQUEST, whose context
        // is its listener's).
        let tag = unsafe { (*id).context as u64 };
        // SAFETY: acknowledged once; a CONNECT_REQUEST's new id outlives the ack.
        check("rdma_ack_cm_event", unsafe { sys::rdma_ack_cm_event(ev) })?;
        Ok(CmEvent {
            kind,
            status,
            private_data,
            tag,
            id,
        })
    }

    /// Makes [`EventChannel::try_next`] return at once when no event is pending.
    pub fn set_nonblocking(&self) -> Result<(), VerbsError> {
        set_nonblocking(self.fd(), "rdma_cm event channel")
    }

    /// The channel's descriptor, readable when an event is pending.
    pub fn fd(&self) -> i32 {
        // SAFETY: the channel is alive.
        unsafe { (*self.ch.as_ptr()).fd }
    }

    /// The next event if one is pending (the channel must be non-blocking).
    pub fn try_next(&self) -> Result<Option<CmEvent>, VerbsError> {
        match self.next() {
            Ok(e) => Ok(Some(e)),
            Err(e) if e.errno == libc::EAGAIN => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for an event of `kind`; any other event is an error that says what came.
    pub fn expect(&self, kind: CmEventKind) -> Result<CmEvent, VerbsError> {
        let e = self.next()?;
        if e.kind == kind {
            Ok(e)
        } else {
            Err(VerbsError {
                call: "rdma_get_cm_event",
                errno: if e.status < 0 {
                    -e.status
                } else {
                    libc::EPROTO
                },
                context: format!("expected {kind:?}, got {:?} (status {})", e.kind, e.status),
            })
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id created on this channel holds an Arc of it, so all are gone.
        unsafe { sys::rdma_destroy_event_channel(self.ch.as_ptr()) };
    }
}

/// Bytes of inline data asked for when creating a QP: a header and a small payload.
const INLINE_WANTED: u32 = 256;

/// A connection id, and its RC queue pair once created.
///
/// Not `Send`: posting to its QP, and destroying the QP (which cleans its entries out of
/// the CQ), must not race the thread that polls that CQ, and some verbs providers take no
/// locks to make that safe (see [`crate::verbs::Pd`]). A driver that keeps its ids with
/// their PD and CQs, and moves them only all together, may vouch for that as a whole
/// (`RdmaLnd` does).
///
/// ```compile_fail
/// fn movable<T: Send>() {}
/// movable::<lanet_lnd_rdma::cm::CmId>();
/// ```
pub struct CmId {
    id: NonNull<sys::rdma_cm_id>,
    has_qp: bool,
    max_inline: u32,
    // Dropped after the id and QP: what they point at stays valid until then.
    _pd: Option<Arc<PdHandle>>,
    _cq: Option<Arc<CqHandle>>,
    _srq: Option<Arc<SrqHandle>>,
    _ch: Rc<EventChannel>,
}

/// Where a queue pair's receives come from.
#[derive(Clone, Copy)]
pub enum Receives<'a> {
    /// A receive queue of its own, of this depth.
    Own(u32),
    /// A shared receive queue (the caller posts to it).
    Shared(&'a Srq),
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl CmId {
    /// A new id for a reliable connection (RDMA_PS_TCP).
    pub fn new(ch: &Rc<EventChannel>) -> Result<CmId, VerbsError> {
        Self::with_tag(ch, 0)
    }

    /// A new id whose events carry `tag` (the driver's name for the connection).
    pub fn with_tag(ch: &Rc<EventChannel>, tag: u64) -> Result<CmId, VerbsError> {
        let mut id = std::ptr::null_mut();
        // SAFETY: the channel is alive; `id` receives the new id.
        let rc = unsafe {
            sys::rdma_create_id(
                ch.ch.as_ptr(),
                &mut id,
                tag as *mut libc::c_void,
                sys::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check("rdma_create_id", rc)?;
        Ok(CmId {
            id: NonNull::new(id).ok_or_else(|| VerbsError::last("rdma_create_id", "null id"))?,
            has_qp: false,
            max_inline: 0,
            _pd: None,
            _cq: None,
            _srq: None,
            _ch: ch.clone(),
        })
    }

    /// Takes ownership of the id a CONNECT_REQUEST carries, out of the event: once only
    /// (two owners would destroy it twice). `ch` must be the channel the event came on.
    pub fn adopt(ch: &Rc<EventChannel>, event: &mut CmEvent) -> Option<CmId> {
        if event.kind != CmEventKind::ConnectRequest {
            return None;
        }
        let id = NonNull::new(std::mem::replace(&mut event.id, std::ptr::null_mut()))?;
        Some(CmId {
            id,
            has_qp: false,
            max_inline: 0,
            _pd: None,
            _cq: None,
            _srq: None,
            _ch: ch.clone(),
        })
    }

    /// Renames the id: its later events carry `tag`.
    pub fn set_tag(&mut self, tag: u64) {
        // SAFETY: the id is alive; its context is ours to set and only read back by us.
        unsafe { (*self.raw()).context = tag as *mut libc::c_void };
    }

    fn raw(&self) -> *mut sys::rdma_cm_id {
        self.id.as_ptr()
    }

    /// The IPv4 address of the far end (for an id adopted from a connect request, the
    /// dialler's), if rdma_cm knows it as one (IPv4, or IPv4 mapped into IPv6).
    pub fn peer_ipv4(&self) -> Option<Ipv4Addr> {
        // SAFETY: the id is alive and its route is rdma_cm's, filled in before the
        // connect request was reported; the union is read as the family it says it is,
        // and `sockaddr_storage` is large enough for either.
        unsafe {
            let dst = &(*self.raw()).route.addr.dst_addr_union;
            match i32::from(dst.dst_addr.sa_family) {
                libc::AF_INET => Some(Ipv4Addr::from(u32::from_be(dst.dst_sin.sin_addr.s_addr))),
                libc::AF_INET6 => Ipv6Addr::from(dst.dst_sin6.sin6_addr.s6_addr).to_ipv4_mapped(),
                _ => None,
            }
        }
    }

    pub fn bind(&self, addr: SocketAddrV4) -> Result<(), VerbsError> {
        let mut sa = sockaddr(addr);
        // SAFETY: the id is alive; the address is read during the call only.
        check("rdma_bind_addr", unsafe {
            sys::rdma_bind_addr(self.raw(), (&mut sa as *mut libc::sockaddr_in).cast())
        })
    }

    pub fn listen(&self, backlog: i32) -> Result<(), VerbsError> {
        // SAFETY: the id is alive and bound.
        check("rdma_listen", unsafe {
            sys::rdma_listen(self.raw(), backlog)
        })
    }

    /// Starts resolving `dst` (from `src` if given); ADDR_RESOLVED follows.
    pub fn resolve_addr(
        &self,
        src: Option<SocketAddrV4>,
        dst: SocketAddrV4,
        timeout_ms: i32,
    ) -> Result<(), VerbsError> {
        let mut s = src.map(sockaddr);
        let mut d = sockaddr(dst);
        let sp = s.as_mut().map_or(std::ptr::null_mut(), |s| {
            (s as *mut libc::sockaddr_in).cast()
        });
        // SAFETY: the id is alive; both addresses are read during the call only.
        check("rdma_resolve_addr", unsafe {
            sys::rdma_resolve_addr(
                self.raw(),
                sp,
                (&mut d as *mut libc::sockaddr_in).cast(),
                timeout_ms,
            )
        })
    }

    /// Starts resolving the route; ROUTE_RESOLVED follows.
    pub fn resolve_route(&self, timeout_ms: i32) -> Result<(), VerbsError> {
        // SAFETY: the id is alive with its address resolved.
        check("rdma_resolve_route", unsafe {
            sys::rdma_resolve_route(self.raw(), timeout_ms)
        })
    }

    /// The device context rdma_cm bound this id to (after address resolution, or for an
    /// adopted id). Allocate the PD and CQ of the QP from it.
    pub fn context(&self) -> Option<Arc<Context>> {
        // SAFETY: the id is alive; `verbs` is set once it is bound to a device.
        Context::borrowed(unsafe { (*self.raw()).verbs })
    }

    /// Creates the id's RC queue pair, sending and receiving through `cq`.
    pub fn create_qp(&mut self, pd: &Pd, cq: &Cq, depth: u32) -> Result<(), VerbsError> {
        self.create_rc_qp(pd, cq, depth, Receives::Own(depth))
    }

    /// Creates the id's RC queue pair with room for `send` work requests, receiving into
    /// its own queue or a shared one.
    pub fn create_rc_qp(
        &mut self,
        pd: &Pd,
        cq: &Cq,
        send: u32,
        receives: Receives<'_>,
    ) -> Result<(), VerbsError> {
        // SAFETY: all-zero is a valid ibv_qp_init_attr to fill in.
        let mut attr: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.handle().as_ptr();
        attr.recv_cq = cq.handle().as_ptr();
        attr.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        attr.cap.max_send_wr = send;
        match receives {
            Receives::Own(depth) => attr.cap.max_recv_wr = depth,
            Receives::Shared(srq) => attr.srq = srq.handle().as_ptr(),
        }
        attr.cap.max_send_sge = 2;
        attr.cap.max_recv_sge = 1;
        // Small SENDs go inline (copied into the work request: no DMA read of the buffer)
        // where the device allows; otherwise without.
        attr.cap.max_inline_data = INLINE_WANTED;
        // SAFETY: id, PD and CQ are alive; the CQ and PD are kept alive by this id until
        // its QP is destroyed in drop.
        let mut rc = unsafe { sys::rdma_create_qp(self.raw(), pd.handle().as_ptr(), &mut attr) };
        if rc != 0 {
            attr.cap.max_inline_data = 0;
            // SAFETY: as above.
            rc = unsafe { sys::rdma_create_qp(self.raw(), pd.handle().as_ptr(), &mut attr) };
        }
        check("rdma_create_qp", rc)?;
        // The device reports what it actually gives.
        self.max_inline = attr.cap.max_inline_data;
        self.has_qp = true;
        self._pd = Some(pd.handle().clone());
        self._cq = Some(cq.handle().clone());
        if let Receives::Shared(srq) = receives {
            self._srq = Some(srq.handle().clone());
        }
        Ok(())
    }

    /// Sets how long a peer whose message found no posted receive waits before sending it
    /// again (IB's RNR NAK timer code: 1 = 10 us ... 12 = 640 us ... 0 = 655 ms). rdma_cm
    /// leaves it at 0, fatal to latency where receives are shared and may run out, so the
    /// driver sets it once the queue pair is ready to send (RTS to RTS).
    pub fn set_min_rnr_timer(&self, code: u8) -> Result<(), VerbsError> {
        if !self.has_qp {
            return Ok(());
        }
        // SAFETY: all-zero is a valid ibv_qp_attr; only the masked field is read.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.min_rnr_timer = code;
        // SAFETY: the id and its QP are alive (has_qp); `attr` is read during the call.
        check("ibv_modify_qp", unsafe {
            sys::ibv_modify_qp(
                self.qp(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0 as i32,
            )
        })
    }

    /// The queue pair's number (completions name it), once it has one.
    pub fn qp_num(&self) -> Option<u32> {
        // SAFETY: the id is alive; its `qp` is null or the QP we created, alive until drop.
        let qp = unsafe { (*self.raw()).qp };
        // SAFETY: non-null: our live QP.
        (self.has_qp && !qp.is_null()).then(|| unsafe { (*qp).qp_num })
    }

    fn conn_param(private: &[u8]) -> sys::rdma_conn_param {
        // SAFETY: all-zero is a valid rdma_conn_param.
        let mut p: sys::rdma_conn_param = unsafe { std::mem::zeroed() };
        p.private_data = private.as_ptr().cast();
        p.private_data_len = u8::try_from(private.len()).expect("private data fits in 255 bytes");
        p.responder_resources = 1;
        p.initiator_depth = 1;
        p.retry_count = 7;
        p.rnr_retry_count = 7;
        p
    }

    /// Connects (after ROUTE_RESOLVED and `create_qp`); ESTABLISHED or REJECTED follows.
    pub fn connect(&self, private: &[u8]) -> Result<(), VerbsError> {
        let mut p = Self::conn_param(private);
        // SAFETY: the id is alive with a QP; the parameters are read during the call only.
        check("rdma_connect", unsafe {
            sys::rdma_connect(self.raw(), &mut p)
        })
    }

    /// Accepts an adopted CONNECT_REQUEST id (after `create_qp`).
    pub fn accept(&self, private: &[u8]) -> Result<(), VerbsError> {
        let mut p = Self::conn_param(private);
        // SAFETY: as for connect.
        check("rdma_accept", unsafe {
            sys::rdma_accept(self.raw(), &mut p)
        })
    }

    /// Refuses an adopted CONNECT_REQUEST, telling the peer why in `private`.
    pub fn reject(&self, private: &[u8]) -> Result<(), VerbsError> {
        let len = u8::try_from(private.len()).expect("private data fits in 255 bytes");
        // SAFETY: the id is alive; the data is read during the call only.
        check("rdma_reject", unsafe {
            sys::rdma_reject(self.raw(), private.as_ptr().cast(), len)
        })
    }

    /// Moves the queue pair to the error state: every posted work request completes,
    /// flushed, and nothing more arrives from the peer.
    pub fn set_error(&self) -> Result<(), VerbsError> {
        if !self.has_qp {
            return Ok(());
        }
        // SAFETY: all-zero is a valid ibv_qp_attr; only the state is read (attr mask).
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: the QP is alive.
        check("ibv_modify_qp", unsafe {
            sys::ibv_modify_qp(
                self.qp(),
                &mut attr,
                sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
            )
        })
    }

    /// Ends an established connection and leaves its QP to be destroyed later: the peer
    /// hears at once (a DREQ, or the DREP it waits for if it disconnected first), and the
    /// QP goes to the error state (every work request it holds of ours completes,
    /// flushed). Returns whether the QP is now in the error state; without a QP there is
    /// nothing to flush. (A connection not established yet hears nothing from the
    /// disconnect: its peer hears when the id is destroyed.)
    pub fn shut_down(&self) -> bool {
        if !self.has_qp {
            return false;
        }
        // First: on IB and RoCE it moves the QP to the error state itself; on iWARP it
        // wants the QP still working (moving it to SQD).
        if let Err(e) = self.disconnect() {
            tracing::debug!("{e}");
        }
        self.set_error()
            .inspect_err(|e| tracing::debug!("{e}"))
            .is_ok()
    }

    /// Starts or answers a disconnect. A side that receives DISCONNECTED must call this too:
    /// it sends the DREP the other side waits for (otherwise that side waits out the CM's
    /// retry timeout, about 100 s).
    pub fn disconnect(&self) -> Result<(), VerbsError> {
        // SAFETY: the id is alive.
        check("rdma_disconnect", unsafe {
            sys::rdma_disconnect(self.raw())
        })
    }

    fn qp(&self) -> *mut sys::ibv_qp {
        assert!(self.has_qp, "no queue pair yet");
        // SAFETY: the id is alive and has a QP.
        unsafe { (*self.raw()).qp }
    }

    /// Posts a receive into `sge`.
    ///
    /// # Safety
    /// The memory `sge` names must stay registered and untouched until the receive
    /// completes, or the QP is destroyed.
    pub unsafe fn post_recv(&self, sge: Sge, wr_id: u64) -> Result<(), VerbsError> {
        let rc = sge.post_as_recv(wr_id, |wr, bad| {
            // SAFETY: the QP is alive; the work request is valid for the call; the caller
            // keeps the memory alive.
            unsafe { sys::ibv_post_recv(self.qp(), wr, bad) }
        });
        check("ibv_post_recv", rc)
    }

    /// Posts signalled SENDs of `sends` (element, work request id), in order, chained: one
    /// `ibv_post_send` (one doorbell; a system call on soft-RoCE) per [`SEND_CHAIN_MAX`]
    /// of them. On an error, those before the failed one went; it and the rest did not.
    ///
    /// # Safety
    /// As for [`CmId::post_recv`], for each element until its send completes.
    pub unsafe fn post_sends(&self, sends: &[(Sge, u64)]) -> Result<(), VerbsError> {
        use std::mem::MaybeUninit;
        for chunk in sends.chunks(SEND_CHAIN_MAX) {
            // Only the entries used are written (zeroing all sixteen cost more than the
            // post of one SEND under emulation).
            let mut sg = [const { MaybeUninit::<sys::ibv_sge>::uninit() }; SEND_CHAIN_MAX];
            let mut wrs = [const { MaybeUninit::<sys::ibv_send_wr>::uninit() }; SEND_CHAIN_MAX];
            let (wp, sp) = (wrs.as_mut_ptr().cast::<sys::ibv_send_wr>(), sg.as_mut_ptr());
            for (k, &(sge, wr_id)) in chunk.iter().enumerate() {
                // SAFETY: all-zero is a valid work request.
                let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
                wr.wr_id = wr_id;
                // A zero-length SEND carries no element.
                wr.num_sge = i32::from(sge.len > 0);
                wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
                if sge.len <= self.max_inline {
                    wr.send_flags |= sys::ibv_send_flags::IBV_SEND_INLINE.0;
                }
                wr.opcode = sys::ibv_wr_opcode::IBV_WR_SEND;
                // SAFETY: `k` is within both arrays and `k + 1`, linked only when used,
                // within `wrs`; the arrays do not move while `wp` and `sp`, the pointers
                // the call gets, are in use, and every link is derived from them. The last
                // request's `next` stays null (zeroed): the chain's end.
                unsafe {
                    wr.sg_list = sp.add(k).cast::<sys::ibv_sge>();
                    if k + 1 < chunk.len() {
                        wr.next = wp.add(k + 1);
                    }
                    sp.add(k).write(MaybeUninit::new(sge.raw()));
                    wp.add(k).write(wr);
                }
            }
            let mut bad = std::ptr::null_mut();
            // SAFETY: the QP is alive; the chain it reads during the call (from `wp`, each
            // request's `next` and `sg_list` derived from `wp` and `sp`, every entry it
            // reaches written above) lives on this frame past the call; the caller keeps
            // the memory the elements name alive until completion.
            check("ibv_post_send", unsafe {
                sys::ibv_post_send(self.qp(), wp, &mut bad)
            })?;
        }
        Ok(())
    }

    /// Posts a signalled RDMA WRITE of `sge` into the peer's `remote` buffer.
    ///
    /// # Safety
    /// As for [`CmId::post_recv`], until the write completes.
    pub unsafe fn post_write(
        &self,
        sge: Sge,
        remote: RemoteBuf,
        wr_id: u64,
    ) -> Result<(), VerbsError> {
        // SAFETY: forwarded contract.
        unsafe {
            self.post(
                sge,
                wr_id,
                sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                Some(remote),
            )
        }
    }

    /// Posts a signalled RDMA READ of the peer's `remote` buffer into `sge`.
    ///
    /// # Safety
    /// As for [`CmId::post_recv`], until the read completes.
    pub unsafe fn post_read(
        &self,
        sge: Sge,
        remote: RemoteBuf,
        wr_id: u64,
    ) -> Result<(), VerbsError> {
        // SAFETY: forwarded contract.
        unsafe {
            self.post(
                sge,
                wr_id,
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                Some(remote),
            )
        }
    }

    /// Posts one signalled RDMA WRITE or READ.
    ///
    /// # Safety
    /// As for [`CmId::post_recv`]: the memory `sge` names stays registered and untouched
    /// until the work request completes or the QP is destroyed; and `remote` is a region
    /// the peer registered for it.
    unsafe fn post(
        &self,
        sge: Sge,
        wr_id: u64,
        opcode: u32,
        remote: Option<RemoteBuf>,
    ) -> Result<(), VerbsError> {
        let mut sg = sge.raw();
        // SAFETY: all-zero is a valid work request.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sg;
        wr.num_sge = i32::from(sge.len > 0);
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.opcode = opcode;
        if let Some(r) = remote {
            wr.wr.rdma.remote_addr = r.addr;
            wr.wr.rdma.rkey = r.rkey;
        }
        let mut bad = std::ptr::null_mut();
        // SAFETY: the QP is alive; `wr` and `sg` are read during the call; the caller keeps
        // the memory alive until completion.
        check("ibv_post_send", unsafe {
            sys::ibv_post_send(self.qp(), &mut wr, &mut bad)
        })
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP (if any) and the id were created by us and are destroyed once, QP
        // first; the PD, CQ and channel they use are held until after this.
        unsafe {
            if self.has_qp {
                sys::rdma_destroy_qp(self.raw());
            }
            sys::rdma_destroy_id(self.raw());
        }
    }
}
