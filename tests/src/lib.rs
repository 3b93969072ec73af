//! `lanet-tests`: cross-crate integration tests: multi-node topologies in network namespaces,
//! fault injection with real processes killed, and the soft-RoCE VM harness.
//!
//! Single-process, deterministic topologies on the in-memory LND live in the core
//! (`lanet::sim`); this crate is for tests that need real sockets, processes or devices.
//!
//! Nothing is implemented here yet; the crate exists so the workspace shows the architecture.
