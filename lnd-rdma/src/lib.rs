//! `lanet-lnd-rdma`: the RDMA network driver (LND) for lanet, on libibverbs and librdmacm
//! through `rdma-sys`.
//!
//! [`RdmaLnd`] implements [`lanet::lnd::Lnd`]: one RC queue pair per lane per peer, set up
//! with rdma_cm and a compact HELLO in private data; the health CQ polled before the data
//! CQ; message buffers in NI-wide pools (a shared receive queue per lane, so an idle
//! connection holds none); small payloads inline in SENDs, large ones
//! zero-copy (PUT: the receiver's sink and our RDMA WRITE; GET reply: the receiver's RDMA
//! READ) through the core's deferred payloads, with a registration cache. See the `lnd`
//! module for the design and `msg` for the wire format.
//!
//! The small owning wrappers it is built from are public: device context, protection
//! domain, completion queue and channel ([`verbs`]); memory regions ([`mr`]); event channel,
//! connection id and its RC queue pair ([`cm`]). Each frees its resource on drop, after what
//! depends on it; every `unsafe` block says why it is sound; errors carry the verbs call and
//! errno. Where there is no RDMA device, [`verbs::first_active_device`] says so in one
//! clear error. Tested for real, on soft-RoCE in a VM (`tests/rxe-vm`,
//! `tests/tests/rdma.rs`, `tests/tests/rdma_verbs.rs`).
//!
//! ```no_run
//! use lanet::{Endpoint, NodeConfig};
//! use lanet_lnd_rdma::{RdmaConfig, RdmaLnd};
//!
//! let cfg = NodeConfig::new(1);
//! let lnd = RdmaLnd::bind("10.0.2.15@o2ib".parse().unwrap(), RdmaConfig::for_node(&cfg)).unwrap();
//! let endpoint = Endpoint::builder(cfg).lnd(lnd).start().unwrap();
//! ```

pub mod cm;
mod device;
mod lnd;
pub mod mr;
mod msg;
mod regcache;
pub mod srq;
pub mod verbs;

pub use device::default_ipv4;
pub use lnd::{
    OpenRdma, RdmaConfig, RdmaLnd, RdmaMemory, RecvPool, DEFAULT_PORT, EAGER_ENV, EAGER_MAX,
    SEND_POOL_BYTES, SPIN_ENV,
};
pub use regcache::{RegCacheLimits, RegCacheStats};

pub use verbs::VerbsError;
