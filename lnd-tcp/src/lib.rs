//! `lanet-lnd-tcp`: the TCP network driver (LND) for lanet.
//!
//! One TCP connection per lane per peer pair, so a socket buffer full of bulk data never
//! delays a health frame. The connection logic (HELLO handshake, connection races decided by
//! the lower NID, framing, failures, timeouts) lives in a backend-neutral engine; a backend
//! only moves bytes. This version has the epoll backend (through mio); the io_uring backend
//! plugs into the same engine.
//!
//! ```no_run
//! use lanet::{Endpoint, NodeConfig};
//! use lanet_lnd_tcp::{TcpConfig, TcpLnd};
//!
//! let cfg = NodeConfig::new(1);
//! let lnd = TcpLnd::bind("127.0.0.1:7001@tcp".parse().unwrap(), TcpConfig::for_node(&cfg)).unwrap();
//! let endpoint = Endpoint::builder(cfg).lnd(lnd).start().unwrap();
//! ```

mod engine;
mod epoll;
mod framing;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanet::lane::{Lane, PerLane};
use lanet::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Transmit, Wake};
use lanet::nid::{LndKind, Nid};
use lanet::NodeConfig;

/// The port used when a NID has none (LNet's acceptor port).
pub const DEFAULT_PORT: u16 = 988;

/// Settings of a TCP NI.
#[derive(Debug, Clone, Copy)]
pub struct TcpConfig {
    pub incarnation: u64,
    /// Receive credits offered per lane.
    pub credits: PerLane<u16>,
    pub max_payload: u32,
    /// How long a connection may take to come up (TCP connect plus HELLO).
    pub connect_timeout: Duration,
}

impl TcpConfig {
    /// The credits and limits a node with `cfg` expects its drivers to offer.
    pub fn for_node(cfg: &NodeConfig) -> Self {
        TcpConfig {
            incarnation: cfg.incarnation,
            credits: PerLane::new(
                cfg.lanes[Lane::Health].peer_credits,
                cfg.lanes[Lane::Data].peer_credits,
            ),
            max_payload: cfg.max_payload,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A TCP NI: listens on its NID's address and connects to peers on demand.
pub struct TcpLnd {
    backend: epoll::Epoll,
}

impl TcpLnd {
    /// Listens on `nid`'s address (`ADDRESS[:PORT]@tcpN`).
    pub fn bind(nid: Nid, cfg: TcpConfig) -> Result<TcpLnd, LndError> {
        if nid.net.kind != LndKind::Tcp {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("the TCP LND serves tcp nets, not {}", nid.net),
            ));
        }
        let addr = SocketAddr::V4(
            nid.socket_addr(DEFAULT_PORT)
                .expect("tcp NIDs are IP addresses"),
        );
        let local = engine::Local {
            nid,
            incarnation: cfg.incarnation,
            credits: cfg.credits,
            max_payload: cfg.max_payload,
            connect_timeout: cfg.connect_timeout,
        };
        let backend = epoll::Epoll::new(engine::Engine::new(local), addr).map_err(|e| {
            LndError::new(
                LndErrorKind::Resource,
                format!("cannot listen on {addr}: {e}"),
            )
        })?;
        tracing::info!(%nid, "TCP LND listening on {addr}, epoll backend");
        Ok(TcpLnd { backend })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.backend.local_addr()
    }
}

impl Lnd for TcpLnd {
    fn nid(&self) -> Nid {
        self.backend.engine.local().nid
    }

    fn connect(&mut self, peer: Nid, lane: Lane) {
        self.backend.connect(peer, lane)
    }

    fn post(&mut self, tx: Transmit) {
        self.backend.post(tx)
    }

    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.backend.close(peer, lane, error)
    }

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        self.backend.poll(events, timeout)
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.backend.waker()
    }
}

/// TCP_NODELAY for latency; keepalive as a backstop behind the health lane.
fn tune_socket(s: &mio::net::TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    socket2::SockRef::from(s).set_tcp_keepalive(&keepalive)
}

/// Where a socket error happened, for the core: refused (remote), reset/timeout/unreachable
/// (network), out of resources (local).
fn io_error(e: &io::Error, during: &str) -> LndError {
    use io::ErrorKind as K;
    let kind = match e.kind() {
        K::ConnectionRefused => LndErrorKind::Refused,
        K::ConnectionReset
        | K::ConnectionAborted
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::NotConnected => LndErrorKind::Reset,
        K::TimedOut => LndErrorKind::TimedOut,
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
            LndErrorKind::Unreachable
        }
        K::OutOfMemory => LndErrorKind::Resource,
        _ => match e.raw_os_error() {
            // EMFILE, ENFILE, ENOBUFS, ENOMEM
            Some(24 | 23 | 105 | 12) => LndErrorKind::Resource,
            _ => LndErrorKind::Reset,
        },
    };
    LndError::new(kind, format!("{during}: {e}"))
}
