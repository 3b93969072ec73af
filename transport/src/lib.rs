//! lanet: a user-space message transport for HPC storage clusters, in the tradition of
//! Lustre's LNet, with a health lane that congestion cannot delay.
//!
//! This crate is the core. It has no I/O of its own: the [`node::Node`] state machine takes
//! the application's requests and the drivers' events, each with the current time, and
//! returns frames to send, driver requests, completions and deliveries. Around it:
//!
//! * [`nid`]: `ADDRESS@NET` names; [`wire`]: the frame codec; [`handshake`]: HELLO;
//! * [`credits`]: per-peer, per-lane and per-NI credits; [`lane`]: health and data lanes;
//! * [`health`]: who is watched, when to PING, and the Up/Suspect/Down verdicts;
//! * [`op`]: requests, completions (exactly one per operation) and events;
//! * [`lnd`]: the driver contract; [`mem`]: an in-memory driver with fault injection;
//! * [`driver`]: the loop that joins a node to its drivers; [`endpoint`]: the thread-safe API
//!   a server uses; [`sim`]: deterministic multi-node runs on a [`time::VirtualClock`].

pub mod config;
pub mod credits;
pub mod driver;
pub mod endpoint;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod handshake;
pub mod health;
pub mod lane;
pub mod lnd;
pub mod mem;
pub mod memo_map;
pub mod nid;
pub mod node;
pub mod op;
pub mod rng;
mod sched;
pub mod sim;
mod sys;
pub mod time;
pub mod wire;
pub mod worker;

pub use config::NodeConfig;
pub use endpoint::{Endpoint, EndpointBuilder, MAX_COMMAND_CAPACITY};
pub use lane::Lane;
pub use nid::{Net, Nid};
pub use node::{Node, Route, RouteUnfit};
pub use op::{Completion, Event, MatchEntry, OpError, OpId, OpOutcome};
pub use time::Time;
pub use worker::Worker;
