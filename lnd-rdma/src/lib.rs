//! `lanet-lnd-rdma`: the RDMA network driver (LND) for lanet, on libibverbs and librdmacm
//! through `rdma-sys`.
//!
//! This first part holds the small owning wrappers the driver is built from: device
//! context, protection domain, memory region and completion queue ([`verbs`]); event
//! channel, connection id and its RC queue pair ([`cm`]). Each frees its resource on drop,
//! after what depends on it; every `unsafe` block says why it is sound; errors carry the
//! verbs call and errno. Where there is no RDMA device, [`verbs::first_active_device`] says
//! so in one clear error. They are tested for real, on soft-RoCE in a VM
//! (`tests/rxe-vm`, `tests/tests/rdma_verbs.rs`).
//!
//! To come (see the RDMA LND issue): the [`lanet::lnd::Lnd`] itself: one RC QP per lane per
//! peer, the health CQ polled first, receive credits = pre-posted receives, zero-copy PUT
//! and GET with RDMA WRITE and READ through the core's deferred payloads.

pub mod cm;
mod device;
mod lnd;
pub mod mr;
mod msg;
mod regcache;
pub mod verbs;

pub use device::default_ipv4;
pub use lnd::{RdmaConfig, RdmaLnd, DEFAULT_PORT, EAGER_MAX, SPIN_ENV};
pub use regcache::{RegCacheLimits, RegCacheStats};

pub use verbs::VerbsError;
