//! `lanet-lnd-rdma`: the RDMA network driver (LND) for lanet, on libibverbs and librdmacm
//! through `rdma-sys`.
//!
//! Planned shape (see the RDMA LND issue): small owning wrappers for device, protection domain,
//! memory regions, completion queues, RC queue pairs and rdma_cm ids; one RC QP per lane per
//! peer with the health QP's completion queue polled first; receive credits equal to pre-posted
//! receives; zero-copy bulk with RDMA WRITE (PUT) and RDMA READ (GET). Tested for real on
//! soft-RoCE (rdma_rxe) inside a qemu VM.
//!
//! Nothing is implemented here yet; the crate exists so the workspace shows the architecture.
