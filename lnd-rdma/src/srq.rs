//! A shared receive queue: one pool of posted receives that many queue pairs draw from, so
//! a node's receive memory follows its traffic, not its number of peers.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use crate::mr::Sge;
use crate::verbs::{check, non_null, Pd, PdHandle, VerbsError};

/// Keeps a shared receive queue alive; destroyed when the last holder goes.
pub(crate) struct SrqHandle {
    srq: NonNull<sys::ibv_srq>,
    _pd: Arc<PdHandle>,
}

// SAFETY: nothing to call but drop, which destroys the SRQ once, after its last holder (the
// owning `Srq`, or a connection id whose QP uses it). Those holders are `Srq`, not `Sync`,
// and `CmId`, not `Send`: posts to the SRQ come from one thread at a time. An `Srq` may
// move to another thread only with the ids attached to it (the RDMA driver moves them
// all together), as destroying a QP may touch its SRQ on some providers.
unsafe impl Send for SrqHandle {}
unsafe impl Sync for SrqHandle {}

impl SrqHandle {
    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_srq {
        self.srq.as_ptr()
    }
}

impl Drop for SrqHandle {
    fn drop(&mut self) {
        // SAFETY: created by us, destroyed once, after the QPs attached to it (they hold the
        // handle).
        unsafe { sys::ibv_destroy_srq(self.as_ptr()) };
    }
}

/// A shared receive queue of at most [`Srq::capacity`] posted receives.
///
/// Not `Sync` (posting is single-threaded, as for [`crate::verbs::Cq`]):
///
/// ```compile_fail
/// fn shared<T: Sync>() {}
/// shared::<lanet_lnd_rdma::srq::Srq>();
/// ```
pub struct Srq {
    handle: Arc<SrqHandle>,
    capacity: usize,
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

/// What `pd`'s device allows: receives in a shared receive queue, entries in a CQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_srq_wr: usize,
    pub max_cqe: usize,
}

impl DeviceLimits {
    pub fn of(pd: &Pd) -> Result<DeviceLimits, VerbsError> {
        // SAFETY: all-zero is a valid ibv_device_attr to be filled in.
        let mut attr: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-parameter.
        check("ibv_query_device", unsafe {
            sys::ibv_query_device(pd.context().as_ptr(), &mut attr)
        })?;
        let n = |v: i32| usize::try_from(v).unwrap_or(0);
        Ok(DeviceLimits {
            max_srq_wr: n(attr.max_srq_wr),
            max_cqe: n(attr.max_cqe),
        })
    }
}

impl Srq {
    /// A shared receive queue in `pd` with room for `depth` receives (one element each).
    pub fn new(pd: &Pd, depth: usize) -> Result<Srq, VerbsError> {
        // SAFETY: all-zero is a valid ibv_srq_init_attr to fill in.
        let mut attr: sys::ibv_srq_init_attr = unsafe { std::mem::zeroed() };
        attr.attr.max_wr = u32::try_from(depth).unwrap_or(u32::MAX);
        attr.attr.max_sge = 1;
        // SAFETY: the PD is alive and outlives the SRQ (the handle holds it); `attr` is read
        // and updated during the call only.
        let srq = unsafe { sys::ibv_create_srq(pd.handle().as_ptr(), &mut attr) };
        let srq = non_null(srq, "ibv_create_srq", &format!("{depth} receives"))?;
        Ok(Srq {
            handle: Arc::new(SrqHandle {
                srq,
                _pd: pd.handle().clone(),
            }),
            // The device may round up; it reports what it gives.
            capacity: usize::try_from(attr.attr.max_wr)
                .unwrap_or(depth)
                .max(depth),
            _not_sync: Default::default(),
        })
    }

    /// For what must keep the SRQ alive (queue pairs attached to it).
    pub(crate) fn handle(&self) -> &Arc<SrqHandle> {
        &self.handle
    }

    /// How many receives it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Posts a receive into `sge`; its completion, on whichever queue pair a message
    /// arrives, carries `wr_id`.
    ///
    /// # Safety
    /// The memory `sge` names must stay registered and untouched by us until the receive
    /// completes (or every queue pair attached to the SRQ and the SRQ itself are gone).
    pub unsafe fn post_recv(&self, sge: Sge, wr_id: u64) -> Result<(), VerbsError> {
        let rc = sge.post_as_recv(wr_id, |wr, bad| {
            // SAFETY: the SRQ is alive and posted to from one thread (not `Sync`); the
            // work request is valid for the call; the caller keeps the memory alive.
            unsafe { sys::ibv_post_srq_recv(self.handle.as_ptr(), wr, bad) }
        });
        check("ibv_post_srq_recv", rc)
    }
}
