//! lanet's control socket and `lanetctl`, its client.
//!
//! A node answers operators on a Unix socket: [`server::ControlSocket`] serves it for an
//! [`lanet::Endpoint`] (`lanet-router` always does; any program may), [`command`] is what
//! it is asked, [`json`] the report it answers with, and [`client`] is how `lanetctl` (and
//! the tests) ask.
//!
//! A program that serves one for its own endpoint:
//!
//! ```no_run
//! # fn f(ep: lanet::Endpoint) -> std::io::Result<()> {
//! let control = lanet_control::server::ControlSocket::serve(
//!     std::path::Path::new("/run/lanet/oss0.sock"),
//!     ep,
//!     None, // or the ConfigFile it started from, for `lanetctl export`
//! )?;
//! # Ok(()) }
//! ```

mod acceptor;
pub mod client;
pub mod command;
pub mod ctl;
mod hangup;
pub mod import;
pub mod json;
pub mod metrics;
mod nosignal;
pub mod server;
mod table;
pub mod topology;
mod within;

pub use client::{query, request, ClientError};
pub use command::Command;
pub use server::ControlSocket;
