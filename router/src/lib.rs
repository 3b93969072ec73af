//! `lanet-router`: the router daemon for gateway nodes.
//!
//! The protocol lives in the core (`lanet`): forwarding with bounded pools and per-peer
//! credits, router status in PONGs and pushes, and the router's judgment of itself
//! (black-hole self-absence, fail-open, damping, warm-up; `lanet::node` `absence`). This
//! crate is the program around it: it reads the node's configuration file, opens its
//! NIs (TCP and RDMA), logs through `tracing` (`RUST_LOG`), drains on SIGTERM, reloads
//! its routes on SIGHUP, and answers operators on a Unix control socket
//! (`lanet_control`, whose client is `lanetctl`).

pub mod daemon;
pub mod notify;
mod stops;
