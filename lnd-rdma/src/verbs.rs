//! Small owning wrappers over libibverbs: device context, protection domain, memory region,
//! completion queue. Each frees its resource on drop, after everything that depends on it
//! (children hold an `Arc` of their parent). Errors name the verbs call and the errno.

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

fn non_null<T>(p: *mut T, call: &'static str, context: &str) -> Result<NonNull<T>, VerbsError> {
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

    /// The context librdmacm opened for a connection id. Not closed by us.
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
    let names = device_names()?;
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

/// A protection domain.
pub struct Pd {
    pd: NonNull<sys::ibv_pd>,
    ctx: Arc<Context>,
}

// SAFETY: a PD is used from one driver thread at a time; allocation calls are thread-safe.
unsafe impl Send for Pd {}
unsafe impl Sync for Pd {}

impl Pd {
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>, VerbsError> {
        // SAFETY: the context is open.
        let pd = non_null(
            unsafe { sys::ibv_alloc_pd(ctx.as_ptr()) },
            "ibv_alloc_pd",
            ctx.name(),
        )?;
        Ok(Arc::new(Pd {
            pd,
            ctx: ctx.clone(),
        }))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_pd {
        self.pd.as_ptr()
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: allocated by us, freed once, after its MRs and QPs (they hold an Arc).
        unsafe { sys::ibv_dealloc_pd(self.as_ptr()) };
    }
}

/// Memory registered for RDMA, owned here so it cannot be freed while registered.
pub struct Mr {
    mr: NonNull<sys::ibv_mr>,
    buf: Box<[u8]>,
    _pd: Arc<Pd>,
}

// SAFETY: the MR and its buffer move with their owner; the buffer is only touched through
// `&self`/`&mut self`.
unsafe impl Send for Mr {}

impl Mr {
    /// Registers `len` zeroed bytes for local access and remote read/write.
    pub fn new(pd: &Arc<Pd>, len: usize) -> Result<Mr, VerbsError> {
        let mut buf = vec![0u8; len.max(1)].into_boxed_slice();
        let access = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        // SAFETY: the buffer is valid for `len` bytes and outlives the registration (it is
        // freed only after ibv_dereg_mr in drop).
        let mr = unsafe {
            sys::ibv_reg_mr(
                pd.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                access.0 as i32,
            )
        };
        Ok(Mr {
            mr: non_null(mr, "ibv_reg_mr", &format!("{len} bytes"))?,
            buf,
            _pd: pd.clone(),
        })
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: a registered MR's fields are valid while it is.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }

    pub fn addr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered by us, deregistered once, before the buffer is freed.
        unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
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
}

impl Completion {
    pub fn ok(&self) -> bool {
        self.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    pub fn is_recv(&self) -> bool {
        self.opcode == sys::ibv_wc_opcode::IBV_WC_RECV
    }
}

/// A completion queue, polled (no completion channel: the LND polls its queues).
pub struct Cq {
    cq: NonNull<sys::ibv_cq>,
    _ctx: Arc<Context>,
}

// SAFETY: polled by one thread at a time (the driver thread).
unsafe impl Send for Cq {}
unsafe impl Sync for Cq {}

impl Cq {
    pub fn new(ctx: &Arc<Context>, depth: i32) -> Result<Arc<Cq>, VerbsError> {
        // SAFETY: the context is open; no completion channel or context pointer is given.
        let cq = unsafe {
            sys::ibv_create_cq(
                ctx.as_ptr(),
                depth,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        Ok(Arc::new(Cq {
            cq: non_null(cq, "ibv_create_cq", ctx.name())?,
            _ctx: ctx.clone(),
        }))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_cq {
        self.cq.as_ptr()
    }

    /// Fills `wcs` with completions; returns how many.
    pub fn poll(&self, wcs: &mut [sys::ibv_wc]) -> Result<usize, VerbsError> {
        // SAFETY: the CQ is alive and `wcs` has room for `wcs.len()` entries.
        let n = unsafe { sys::ibv_poll_cq(self.as_ptr(), wcs.len() as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(VerbsError::from_rc("ibv_poll_cq", -n, ""));
        }
        Ok(n as usize)
    }
}

impl Cq {
    /// The next completion, if any.
    pub fn poll_one(&self) -> Result<Option<Completion>, VerbsError> {
        // SAFETY: all-zero is a valid ibv_wc to be filled in.
        let mut wc: [sys::ibv_wc; 1] = unsafe { std::mem::zeroed() };
        Ok((self.poll(&mut wc)? == 1).then(|| Completion {
            wr_id: wc[0].wr_id,
            status: wc[0].status,
            opcode: wc[0].opcode,
            byte_len: wc[0].byte_len,
        }))
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        // SAFETY: created by us, destroyed once, after the QPs using it (they hold an Arc).
        unsafe { sys::ibv_destroy_cq(self.as_ptr()) };
    }
}
