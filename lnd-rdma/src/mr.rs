//! Memory regions: memory registered with a protection domain so the adapter may read or
//! write it. A region owns (or holds a reference to) its memory, so the memory cannot be
//! freed while registered: it is deregistered first, in drop.

use std::ptr::NonNull;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rdma_sys as sys;

use crate::verbs::{non_null, Pd, PdHandle, VerbsError};

/// One scatter-gather element: where a work request reads or writes, and its local key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub len: u32,
    pub lkey: u32,
}

impl Sge {
    pub(crate) fn raw(self) -> sys::ibv_sge {
        sys::ibv_sge {
            addr: self.addr,
            length: self.len,
            lkey: self.lkey,
        }
    }

    /// Builds a receive work request into this element and hands it to `post` (a QP's or
    /// an SRQ's post call, with its `bad_wr` out-parameter); `post`'s return code.
    pub(crate) fn post_as_recv(
        self,
        wr_id: u64,
        post: impl FnOnce(*mut sys::ibv_recv_wr, *mut *mut sys::ibv_recv_wr) -> i32,
    ) -> i32 {
        let mut sg = self.raw();
        // SAFETY: all-zero is a valid work request; `sg` outlives the call that reads it.
        let mut wr: sys::ibv_recv_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sg;
        wr.num_sge = 1;
        let mut bad = std::ptr::null_mut();
        post(&mut wr, &mut bad)
    }
}

/// Where a peer may RDMA READ or WRITE: an address in its memory and the key for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBuf {
    pub addr: u64,
    pub rkey: u32,
    pub len: u32,
}

/// Registers `len` bytes at `ptr`.
///
/// # Safety
/// The memory must stay allocated until the registration is dropped, and be writable if
/// `access` allows writes.
unsafe fn register(
    pd: &Pd,
    ptr: *mut u8,
    len: usize,
    access: sys::ibv_access_flags,
) -> Result<NonNull<sys::ibv_mr>, VerbsError> {
    // SAFETY: forwarded contract; the PD is alive.
    let mr = unsafe { sys::ibv_reg_mr(pd.handle().as_ptr(), ptr.cast(), len, access.0 as i32) };
    non_null(mr, "ibv_reg_mr", &format!("{len} bytes"))
}

/// A registration; deregistered on drop, before the memory it covers is released (the
/// owner of that memory is a later field of the regions below).
struct Registration {
    mr: NonNull<sys::ibv_mr>,
    _pd: Arc<PdHandle>,
}

// SAFETY: an MR handle may be used and deregistered from any thread. Shared, it offers
// only its keys (`lkey`, `rkey`: reads of fields the registration set and nothing writes).
unsafe impl Send for Registration {}
unsafe impl Sync for Registration {}

impl Registration {
    fn lkey(&self) -> u32 {
        // SAFETY: a registered MR's fields are valid while it is.
        unsafe { (*self.mr.as_ptr()).lkey }
    }

    fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr.as_ptr()).rkey }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: registered by us, deregistered once, before its memory is released.
        unsafe { sys::ibv_dereg_mr(self.mr.as_ptr()) };
    }
}

/// Driver-owned registered memory: message buffers, for the adapter's local access only
/// ([`Mr::new`]: a peer, authenticated or not, can neither read nor write them), or
/// memory peers may read and write ([`Mr::with_remote_access`]).
pub struct Mr {
    reg: Registration,
    /// After `reg`, so freed after deregistration.
    buf: RawBuf,
}

/// Zeroed heap bytes held by a raw pointer, so a slice of one part of them says nothing
/// about the rest, which the adapter may be writing meanwhile (a pool's other buffers).
struct RawBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: it owns its bytes as a `Box<[u8]>` would, and hands out references to them only
// through `&self` (shared) and `&mut self` (exclusive).
unsafe impl Send for RawBuf {}
unsafe impl Sync for RawBuf {}

impl RawBuf {
    fn zeroed(len: usize) -> RawBuf {
        let bytes: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let ptr = Box::into_raw(bytes).cast::<u8>();
        RawBuf {
            ptr: std::ptr::NonNull::new(ptr).expect("a box is never null"),
            len,
        }
    }

    /// Bytes `offset..offset + len`. Panics outside the buffer.
    fn range(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: within our allocation (checked above), initialised (zeroed at birth),
        // and only ever written through `&mut self` or by the adapter, which the owner
        // does not let write where it reads.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: as in `range`, and `&mut self` makes this the only reference we hand out.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr` and `len` came from `Box::into_raw` of a boxed slice, freed once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

impl Mr {
    /// Registers `len` zeroed bytes for local access (SEND sources, RECV targets).
    pub fn new(pd: &Pd, len: usize) -> Result<Mr, VerbsError> {
        Mr::register(pd, len, sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE)
    }

    /// Registers `len` zeroed bytes that peers may also RDMA-READ and -WRITE.
    pub fn with_remote_access(pd: &Pd, len: usize) -> Result<Mr, VerbsError> {
        let access = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
            | sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        Mr::register(pd, len, access)
    }

    fn register(pd: &Pd, len: usize, access: sys::ibv_access_flags) -> Result<Mr, VerbsError> {
        let buf = RawBuf::zeroed(len.max(1));
        // SAFETY: the buffer is writable, and freed only after the registration (field order).
        let mr = unsafe { register(pd, buf.ptr.as_ptr(), buf.len, access)? };
        Ok(Mr {
            reg: Registration {
                mr,
                _pd: pd.handle().clone(),
            },
            buf,
        })
    }

    pub fn lkey(&self) -> u32 {
        self.reg.lkey()
    }

    pub fn rkey(&self) -> u32 {
        self.reg.rkey()
    }

    pub fn addr(&self) -> u64 {
        self.buf.ptr.as_ptr() as u64
    }

    /// The element for `len` bytes at `offset`. Panics outside the region (a driver bug).
    pub fn sge(&self, offset: usize, len: usize) -> Sge {
        assert!(
            offset
                .checked_add(len)
                .is_some_and(|end| end <= self.buf.len),
            "work request outside its memory region"
        );
        Sge {
            addr: self.addr() + offset as u64,
            len: len as u32,
            lkey: self.lkey(),
        }
    }

    /// The whole region (while no work request uses any of it).
    pub fn as_slice(&self) -> &[u8] {
        self.buf.range(0, self.buf.len)
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.range_mut(0, self.buf.len)
    }

    /// Bytes `offset..offset + len` alone: other parts may be in use by the adapter.
    /// Panics outside the region.
    pub fn range(&self, offset: usize, len: usize) -> &[u8] {
        self.buf.range(offset, len)
    }

    pub fn range_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        self.buf.range_mut(offset, len)
    }
}

/// An application payload registered read-only: for us to RDMA WRITE from it, and, if it
/// is registered for that, for a peer to RDMA READ it. Holds the `Bytes`, so the memory
/// lives while registered.
pub struct SourceMr {
    reg: Registration,
    data: Bytes,
}

impl SourceMr {
    /// `remote_read`: a peer may READ it (it is told the key); otherwise only our own
    /// work requests may use it, and no key guessed on the fabric opens it.
    pub fn new(pd: &Pd, data: Bytes, remote_read: bool) -> Result<SourceMr, VerbsError> {
        // Read-only memory (a static payload) can be registered without write access.
        let access = if remote_read {
            sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ
        } else {
            sys::ibv_access_flags(0)
        };
        // SAFETY: `data` is kept alive by this struct until after deregistration; the
        // access flags allow no writes.
        let mr = unsafe { register(pd, data.as_ptr().cast_mut(), data.len().max(1), access)? };
        Ok(SourceMr {
            reg: Registration {
                mr,
                _pd: pd.handle().clone(),
            },
            data,
        })
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn sge(&self) -> Sge {
        Sge {
            addr: self.data.as_ptr() as u64,
            len: self.data.len() as u32,
            lkey: self.reg.lkey(),
        }
    }

    pub fn remote(&self) -> RemoteBuf {
        RemoteBuf {
            addr: self.data.as_ptr() as u64,
            rkey: self.reg.rkey(),
            len: self.data.len() as u32,
        }
    }
}

/// A receive buffer registered for local writes (our RDMA READ lands here) and, if it is
/// registered for that, remote ones (a peer RDMA WRITEs here). Holds the `BytesMut` until
/// [`SinkMr::into_bytes`].
pub struct SinkMr {
    reg: Registration,
    buf: BytesMut,
}

impl SinkMr {
    /// Registers the first `len` bytes of `buf`, zero-filled first so no byte is ever
    /// uninitialised, whatever the peer writes.
    /// `remote_write`: the peer WRITEs the payload (it is told the key); otherwise we READ
    /// it, and no key guessed on the fabric opens the buffer.
    pub fn new(
        pd: &Pd,
        mut buf: BytesMut,
        len: usize,
        remote_write: bool,
    ) -> Result<SinkMr, VerbsError> {
        buf.clear();
        buf.resize(len, 0);
        let mut access = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if remote_write {
            access |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        // SAFETY: `buf` is writable, owned by this struct and not touched (nor moved: a
        // BytesMut's heap buffer stays put) until after deregistration.
        let mr = unsafe { register(pd, buf.as_mut_ptr(), len.max(1), access)? };
        Ok(SinkMr {
            reg: Registration {
                mr,
                _pd: pd.handle().clone(),
            },
            buf,
        })
    }

    pub fn sge(&mut self) -> Sge {
        Sge {
            addr: self.buf.as_mut_ptr() as u64,
            len: self.buf.len() as u32,
            lkey: self.reg.lkey(),
        }
    }

    pub fn remote(&mut self) -> RemoteBuf {
        RemoteBuf {
            addr: self.buf.as_mut_ptr() as u64,
            rkey: self.reg.rkey(),
            len: self.buf.len() as u32,
        }
    }

    /// Deregisters and hands the filled buffer back.
    pub fn into_bytes(self) -> Bytes {
        let SinkMr { reg, buf } = self;
        drop(reg);
        buf.freeze()
    }
}
