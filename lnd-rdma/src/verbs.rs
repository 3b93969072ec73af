//! Small owning wrappers over libibverbs: device context, protection domain, memory region,
//! completion queue. Each frees its resource on drop, after everything that depends on it
//! (children hold an `Arc` of their parent). A context librdmacm opened
//! ([`Context::borrowed`]) is kept open by librdmacm's connection ids on its device, not by
//! those `Arc`s: its children must go before the last such id (the RDMA driver declares
//! them so). Errors name the verbs call and the errno.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

/// A verbs or rdma_cm call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsError {
    pub call: &'static str,
    pub errno: i32,
    /// What was being done, for the reader.
    pub context: String,
}

impl fmt::Display for VerbsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let err = io::Error::from_raw_os_error(self.errno);
        if self.context.is_empty() {
            write!(f, "{} failed: {err}", self.call)
        } else {
            write!(f, "{} failed ({}): {err}", self.call, self.context)
        }
    }
}

impl std::error::Error for VerbsError {}

impl VerbsError {
    /// The errno of the call that just failed.
    pub(crate) fn last(call: &'static str, context: impl Into<String>) -> VerbsError {
        VerbsError {
            call,
            errno: io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
            context: context.into(),
        }
    }

    /// For calls that return an errno (positive) or -1 with errno set.
    pub(crate) fn from_rc(call: &'static str, rc: i32, context: impl Into<String>) -> VerbsError {
        if rc > 0 {
            VerbsError {
                call,
                errno: rc,
                context: context.into(),
            }
        } else {
            VerbsError::last(call, context)
        }
    }
}

pub(crate) fn check(call: &'static str, rc: i32) -> Result<(), VerbsError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(VerbsError::from_rc(call, rc, ""))
    }
}

pub(crate) fn non_null<T>(
    p: *mut T,
    call: &'static str,
    context: &str,
) -> Result<NonNull<T>, VerbsError> {
    NonNull::new(p).ok_or_else(|| VerbsError::last(call, context))
}

/// Names of the RDMA devices present.
pub fn device_names() -> Result<Vec<String>, VerbsError> {
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count to `n` and returns an array of `n` device
    // pointers (or null with errno), which we free below after copying the names.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(VerbsError::last(
            "ibv_get_device_list",
            "is the kernel's RDMA stack loaded?",
        ));
    }
    let names = (0..n as usize)
        .map(|i| {
            // SAFETY: i < n, so the entry is a valid device; its name is a NUL-terminated
            // string that lives as long as the list.
            unsafe { CStr::from_ptr(sys::ibv_get_device_name(*list.add(i))) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { sys::ibv_free_device_list(list) };
    Ok(names)
}

/// An open device: either ours (closed on drop) or one librdmacm opened for a connection.
pub struct Context {
    ctx: NonNull<sys::ibv_context>,
    owned: bool,
    name: String,
}

// SAFETY: libibverbs contexts may be used from any thread; we only hand out shared access to
// calls that are thread-safe (allocation, queries).
unsafe impl Send for Context {}
unsafe impl Sync for Context {}

/// The state of a device port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    Active,
    Down,
    Other(u32),
}

impl Context {
    /// Opens the device named `name`.
    pub fn open(name: &str) -> Result<Arc<Context>, VerbsError> {
        let mut n = 0;
        // SAFETY: as in `device_names`.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(VerbsError::last(
                "ibv_get_device_list",
                "is the kernel's RDMA stack loaded?",
            ));
        }
        let mut found = None;
        for i in 0..n as usize {
            // SAFETY: i < n: a valid device of the list.
            let dev = unsafe { *list.add(i) };
            // SAFETY: a device's name is a NUL-terminated string owned by the list.
            let dev_name = unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) };
            if dev_name.to_bytes() == name.as_bytes() {
                // SAFETY: `dev` is valid; the context stays valid after the list is freed.
                found = Some(unsafe { sys::ibv_open_device(dev) });
                break;
            }
        }
        // SAFETY: freed once; opened contexts do not depend on the list.
        unsafe { sys::ibv_free_device_list(list) };
        let ctx = match found {
            None => {
                return Err(VerbsError {
                    call: "ibv_get_device_list",
                    errno: libc::ENODEV,
                    context: format!("no RDMA device named {name}"),
                })
            }
            Some(p) => non_null(p, "ibv_open_device", name)?,
        };
        Ok(Arc::new(Context {
            ctx,
            owned: true,
            name: name.to_owned(),
        }))
    }

    /// The context librdmacm opened for a connection id. Not closed by us, and not kept
    /// open by this value: librdmacm closes it with the device's last id once the device
    /// is gone, so what is made from it must be destroyed while such an id lives.
    pub(crate) fn borrowed(ctx: *mut sys::ibv_context) -> Option<Arc<Context>> {
        let ctx = NonNull::new(ctx)?;
        // SAFETY: a live context's device has a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(sys::ibv_get_device_name((*ctx.as_ptr()).device)) }
            .to_string_lossy()
            .into_owned();
        Some(Arc::new(Context {
            ctx,
            owned: false,
            name,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device's transport checks every packet with its own CRC-32 (the ICRC
    /// of InfiniBand and RoCE, soft-RoCE included), which covers all we send; iWARP and
    /// the rest have no such check of their own.
    pub fn checks_every_packet(&self) -> bool {
        // SAFETY: an open context points at its device, which outlives it.
        let transport = unsafe { (*(*self.as_ptr()).device).transport_type };
        transport == sys::ibv_transport_type::IBV_TRANSPORT_IB
    }

    /// Whether the device is iWARP's, whose RDMA READ needs the buffer it lands in to
    /// allow remote writes (the READ's response is written into it as a peer's WRITE).
    pub fn is_iwarp(&self) -> bool {
        // SAFETY: an open context points at its device, which outlives it.
        let transport = unsafe { (*(*self.as_ptr()).device).transport_type };
        transport == sys::ibv_transport_type::IBV_TRANSPORT_IWARP
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_context {
        self.ctx.as_ptr()
    }

    /// The state of port `port` (1-based).
    pub fn port_state(&self, port: u8) -> Result<PortState, VerbsError> {
        // SAFETY: all-zero is a valid ibv_port_attr to be filled in.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-parameter.
        check("ibv_query_port", unsafe {
            sys::___ibv_query_port(self.as_ptr(), port, &mut attr)
        })?;
        Ok(match attr.state {
            sys::ibv_port_state::IBV_PORT_ACTIVE => PortState::Active,
            sys::ibv_port_state::IBV_PORT_DOWN => PortState::Down,
            other => PortState::Other(other),
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: opened by us, closed once; everything allocated from it holds an Arc
            // of this context and so is already gone.
            unsafe { sys::ibv_close_device(self.as_ptr()) };
        }
    }
}

/// The first device with an active port 1, or an error that says there is none.
pub fn first_active_device() -> Result<Arc<Context>, VerbsError> {
    let names = device_names().map_err(|e| VerbsError {
        context: "no RDMA device on this machine: the kernel's RDMA stack is not loaded".into(),
        ..e
    })?;
    if names.is_empty() {
        return Err(VerbsError {
            call: "ibv_get_device_list",
            errno: libc::ENODEV,
            context: "no RDMA device on this machine (load a NIC driver, or rdma_rxe with \
                      `rdma link add rxe0 type rxe netdev IFACE`)"
                .into(),
        });
    }
    for name in &names {
        let ctx = Context::open(name)?;
        if ctx.port_state(1)? == PortState::Active {
            return Ok(ctx);
        }
    }
    Err(VerbsError {
        call: "ibv_query_port",
        errno: libc::ENETDOWN,
        context: format!(
            "no RDMA device has an active port (devices: {})",
            names.join(", ")
        ),
    })
}

/// Makes the owning wrappers below ([`Pd`], [`CompChannel`], [`Cq`]) `Send` but not `Sync`.
type NotSync = std::marker::PhantomData<std::cell::Cell<()>>;

/// Keeps a protection domain alive; deallocated when the last holder goes.
pub(crate) struct PdHandle {
    pd: NonNull<sys::ibv_pd>,
    _ctx: Arc<Context>,
}

// SAFETY: the handle offers safe code nothing to call (the type and its pointer are
// crate-private). What holds it (the owning `Pd`, registrations, connection ids) calls into
// the PD only through control-path verbs (registering, creating a QP), which the kernel
// serialises; its drop deallocates the PD once, from whichever thread drops the last
// holder, which libibverbs allows.
unsafe impl Send for PdHandle {}
unsafe impl Sync for PdHandle {}

impl PdHandle {
    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }
}

impl Drop for PdHandle {
    fn drop(&mut self) {
        // SAFETY: allocated by us, freed once, after its MRs and QPs (they hold the handle).
        unsafe { sys::ibv_dealloc_pd(self.as_ptr()) };
    }
}

/// A protection domain: memory is registered in it and queue pairs are created in it.
///
/// Like [`CompChannel`] and [`Cq`], it is `Send` and not `Sync`: one thread at a time uses
/// it, whatever the verbs provider does about locking (some can be told to take none, e.g.
/// mlx5's `MLX5_SINGLE_THREADED`). What depends on one (a QP on a CQ, an MR in a PD) holds
/// a crate-private handle with nothing to call, which only keeps the resource alive.
///
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<lanet_lnd_rdma::verbs::Pd>();
/// ```
pub struct Pd {
    handle: Arc<PdHandle>,
    _not_sync: NotSync,
}

impl Pd {
    pub fn new(ctx: &Arc<Context>) -> Result<Pd, VerbsError> {
        // SAFETY: the context is open.
        let pd = non_null(
            unsafe { sys::ibv_alloc_pd(ctx.as_ptr()) },
            "ibv_alloc_pd",
            ctx.name(),
        )?;
        Ok(Pd {
            handle: Arc::new(PdHandle {
                pd,
                _ctx: ctx.clone(),
            }),
            _not_sync: NotSync::default(),
        })
    }

    /// For what must keep the PD alive (registrations, queue pairs).
    pub(crate) fn handle(&self) -> &Arc<PdHandle> {
        &self.handle
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.handle._ctx
    }
}

/// One work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` (0) or the verbs status code.
    pub status: u32,
    pub opcode: u32,
    pub byte_len: u32,
    /// The queue pair it happened on (what names a receive from a shared receive queue).
    pub qp_num: u32,
}

impl Completion {
    fn from_raw(wc: &sys::ibv_wc) -> Completion {
        Completion {
            wr_id: wc.wr_id,
            status: wc.status,
            opcode: wc.opcode,
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
        }
    }

    pub fn ok(&self) -> bool {
        self.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// The verbs status in words ("transport retry counter exceeded", ...).
    pub fn status_text(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        unsafe { std::ffi::CStr::from_ptr(sys::ibv_wc_status_str(self.status)) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn is_recv(&self) -> bool {
        self.opcode == sys::ibv_wc_opcode::IBV_WC_RECV
    }
}

/// Keeps a completion channel alive; destroyed when the last holder goes.
pub(crate) struct ChannelHandle {
    ch: NonNull<sys::ibv_comp_channel>,
    _ctx: Arc<Context>,
}

// SAFETY: nothing to call but drop, which destroys the channel once, after its last
// holder (the owning `CompChannel`, or a `Cq` signalling it).
unsafe impl Send for ChannelHandle {}
unsafe impl Sync for ChannelHandle {}

impl Drop for ChannelHandle {
    fn drop(&mut self) {
        // SAFETY: every CQ on this channel holds the handle, so all are destroyed. Its
        // context is open: an owned one is held by the `Arc` above, a borrowed one by the
        // connection id its owner keeps until after this (the RDMA driver's field order).
        unsafe { sys::ibv_destroy_comp_channel(self.ch.as_ptr()) };
    }
}

/// A completion channel: a file descriptor that becomes readable when an armed completion
/// queue gets a completion, so the driver can sleep in epoll instead of spinning.
///
/// Not `Sync` (see [`Pd`] for the rule):
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<lanet_lnd_rdma::verbs::CompChannel>();
/// ```
pub struct CompChannel {
    handle: Arc<ChannelHandle>,
    _not_sync: NotSync,
}

impl CompChannel {
    /// A channel whose descriptor does not block.
    pub fn new(ctx: &Arc<Context>) -> Result<CompChannel, VerbsError> {
        // SAFETY: the context is open.
        let ch = non_null(
            unsafe { sys::ibv_create_comp_channel(ctx.as_ptr()) },
            "ibv_create_comp_channel",
            ctx.name(),
        )?;
        let handle = Arc::new(ChannelHandle {
            ch,
            _ctx: ctx.clone(),
        });
        // SAFETY: the channel is alive; its fd is a plain descriptor we only set flags on.
        let fd = unsafe { (*ch.as_ptr()).fd };
        set_nonblocking(fd, "completion channel")?;
        Ok(CompChannel {
            handle,
            _not_sync: NotSync::default(),
        })
    }

    fn as_ptr(&self) -> *mut sys::ibv_comp_channel {
        self.handle.ch.as_ptr()
    }

    pub fn fd(&self) -> i32 {
        // SAFETY: the channel is alive.
        unsafe { (*self.as_ptr()).fd }
    }

    /// Takes and acknowledges every pending notification; returns how many there were.
    /// Each CQ must be re-armed ([`Cq::arm`]) before the next wait.
    pub fn drain(&self) -> usize {
        let mut n = 0;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut cq_ctx = std::ptr::null_mut();
            // SAFETY: the channel is alive and non-blocking; the out-pointers are valid;
            // no other thread uses it (not `Sync`).
            let rc = unsafe { sys::ibv_get_cq_event(self.as_ptr(), &mut cq, &mut cq_ctx) };
            if rc != 0 {
                return n; // EAGAIN: nothing more
            }
            // SAFETY: `cq` is the live CQ the event was for; one event is acknowledged.
            unsafe { sys::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
    }
}

/// Makes `fd` non-blocking.
pub(crate) fn set_nonblocking(fd: i32, what: &str) -> Result<(), VerbsError> {
    // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(VerbsError::last(
            "fcntl",
            format!("make the {what} non-blocking"),
        ));
    }
    Ok(())
}

/// Keeps a completion queue alive; destroyed when the last holder goes.
pub(crate) struct CqHandle {
    cq: NonNull<sys::ibv_cq>,
    _channel: Option<Arc<ChannelHandle>>,
    _ctx: Arc<Context>,
}

// SAFETY: nothing to call but drop, which destroys the CQ once, after its last holder
// (the owning `Cq`, or a connection id whose QP uses it). Those holders are `Cq`, not
// `Sync`, and `CmId`, not `Send`: the data-path calls they make on the CQ come from one
// thread at a time.
unsafe impl Send for CqHandle {}
unsafe impl Sync for CqHandle {}

impl CqHandle {
    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }
}

impl Drop for CqHandle {
    fn drop(&mut self) {
        // SAFETY: created by us, destroyed once, after the QPs using it (they hold the
        // handle); its channel's events were acknowledged as they came
        // (`CompChannel::drain`).
        unsafe { sys::ibv_destroy_cq(self.as_ptr()) };
    }
}

/// A completion queue: polled, resized, and optionally armed to signal a completion
/// channel.
///
/// Not `Sync` (see [`Pd`] for the rule), so polling and resizing never race:
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<lanet_lnd_rdma::verbs::Cq>();
/// ```
///
/// It can still move to another thread (a driver is built on one and runs on another):
///
/// ```
/// fn movable<T: Send>() {}
/// movable::<lanet_lnd_rdma::verbs::Cq>();
/// movable::<lanet_lnd_rdma::verbs::Pd>();
/// movable::<lanet_lnd_rdma::verbs::CompChannel>();
/// ```
pub struct Cq {
    handle: Arc<CqHandle>,
    /// Entries it holds: read back from the CQ when created or resized.
    capacity: std::cell::Cell<usize>,
}

impl Cq {
    pub fn new(ctx: &Arc<Context>, depth: i32) -> Result<Cq, VerbsError> {
        Self::with_channel(ctx, depth, None)
    }

    /// A CQ of at least `depth` entries that signals `channel` when armed.
    pub fn with_channel(
        ctx: &Arc<Context>,
        depth: i32,
        channel: Option<&CompChannel>,
    ) -> Result<Cq, VerbsError> {
        let ch = channel.map_or(std::ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: the context (and channel, if any) are alive and outlive the CQ (the
        // handle holds them).
        let cq = unsafe { sys::ibv_create_cq(ctx.as_ptr(), depth, std::ptr::null_mut(), ch, 0) };
        let cq = non_null(cq, "ibv_create_cq", ctx.name())?;
        let handle = Arc::new(CqHandle {
            cq,
            _channel: channel.map(|c| c.handle.clone()),
            _ctx: ctx.clone(),
        });
        let cq = Cq {
            handle,
            capacity: std::cell::Cell::new(0),
        };
        cq.read_capacity();
        Ok(cq)
    }

    fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.handle.as_ptr()
    }

    /// For what must keep the CQ alive (queue pairs).
    pub(crate) fn handle(&self) -> &Arc<CqHandle> {
        &self.handle
    }

    fn read_capacity(&self) {
        // SAFETY: a live CQ's `cqe` is its actual size; nothing else touches it meanwhile
        // (not `Sync`).
        let n = unsafe { (*self.as_ptr()).cqe };
        self.capacity.set(usize::try_from(n).unwrap_or(0));
    }

    /// How many completions the queue holds.
    pub fn capacity(&self) -> usize {
        self.capacity.get()
    }

    /// Grows the queue to at least `depth` entries (queue pairs are added as peers come).
    pub fn resize(&self, depth: usize) -> Result<(), VerbsError> {
        let depth = i32::try_from(depth).unwrap_or(i32::MAX);
        // SAFETY: the CQ is alive, and no other thread polls it meanwhile (not `Sync`).
        check("ibv_resize_cq", unsafe {
            sys::ibv_resize_cq(self.as_ptr(), depth)
        })?;
        self.read_capacity();
        Ok(())
    }

    /// Asks for a notification on the channel at the next completion.
    pub fn arm(&self) -> Result<(), VerbsError> {
        // SAFETY: the CQ is alive.
        check("ibv_req_notify_cq", unsafe {
            sys::ibv_req_notify_cq(self.as_ptr(), 0)
        })
    }

    /// Fills `wcs` with completions; returns how many.
    pub fn poll(&self, wcs: &mut [sys::ibv_wc]) -> Result<usize, VerbsError> {
        // SAFETY: the CQ is alive, no other thread polls it (not `Sync`), and `wcs` has
        // room for `wcs.len()` entries.
        let n = unsafe { sys::ibv_poll_cq(self.as_ptr(), wcs.len() as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(VerbsError::from_rc("ibv_poll_cq", -n, ""));
        }
        Ok(n as usize)
    }

    /// Up to `max` completions (at most 32 per call), appended to `out`.
    pub fn poll_into(&self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        const BATCH: usize = 32;
        // SAFETY: all-zero is a valid ibv_wc to be filled in.
        let mut wcs: [sys::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let n = self.poll(&mut wcs[..max.min(BATCH)])?;
        out.extend(wcs[..n].iter().map(Completion::from_raw));
        Ok(n)
    }

    /// The next completion, if any.
    pub fn poll_one(&self) -> Result<Option<Completion>, VerbsError> {
        // SAFETY: all-zero is a valid ibv_wc to be filled in.
        let mut wc: [sys::ibv_wc; 1] = unsafe { std::mem::zeroed() };
        Ok((self.poll(&mut wc)? == 1).then(|| Completion::from_raw(&wc[0])))
    }
}
