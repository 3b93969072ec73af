//! `lanet-router`: the router daemon for gateway nodes, and the `lanetctl` admin CLI.
//!
//! Planned shape (see DESIGN.md, "Routing and routers"): forward between nets with bounded
//! tiny/small/large buffer pools and per-peer router credits; report per-net status in PONGs;
//! take itself out of every network as soon as it detects it has become a black hole for some
//! peer, and return only after a hold-down period, failing open when it is the last router.
//!
//! Nothing is implemented here yet; the crate exists so the workspace shows the architecture.
