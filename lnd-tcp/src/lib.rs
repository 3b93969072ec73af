//! `lanet-lnd-tcp`: the TCP network driver (LND) for lanet.
//!
//! One TCP connection per lane per peer pair, so a socket buffer full of bulk data never
//! delays a health frame. The connection logic (HELLO handshake, connection races decided by
//! the lower NID, framing, failures, timeouts) lives in a backend-neutral engine; a backend
//! only moves bytes: io_uring by default, epoll (through mio) where io_uring is unavailable
//! (an old kernel, `kernel.io_uring_disabled`, a seccomp profile). `LANET_TCP_BACKEND=uring`
//! or `=epoll` forces one; a log line says which runs and why.
//!
//! ```no_run
//! use lanet::{Endpoint, NodeConfig};
//! use lanet_lnd_tcp::{TcpConfig, TcpLnd};
//!
//! let cfg = NodeConfig::new(1);
//! let lnd = TcpLnd::bind("127.0.0.1:7001@tcp".parse().unwrap(), TcpConfig::for_node(&cfg)).unwrap();
//! let endpoint = Endpoint::builder(cfg).lnd(lnd).start().unwrap();
//! ```

mod accept_pause;
mod direct;
mod engine;
mod epoll;
mod framing;
mod kernel;
mod loopback;
mod low_water;
mod sockopt;
mod uring;

pub use loopback::free_loopback_nid;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanet::lane::{Lane, PerLane};
use lanet::lnd::spin::SpinWaker;
use lanet::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Transmit, Wake};
use lanet::nid::{LndKind, Nid};
use lanet::NodeConfig;

/// The port used when a NID has none (LNet's acceptor port).
pub const DEFAULT_PORT: u16 = lanet::nid::TCP_DEFAULT_PORT;

/// Settings of a TCP NI.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub incarnation: u64,
    /// Receive credits offered per lane.
    pub credits: PerLane<u16>,
    pub max_payload: u32,
    /// How long a connection may take to come up (TCP connect plus HELLO).
    pub connect_timeout: Duration,
    /// Messages of at least this many bytes to a non-loopback peer are sent zero-copy
    /// (`sendmsg_zc`, io_uring backend); `usize::MAX`: never. Loopback peers never are:
    /// measured slower at every size (bench/RESULTS.md).
    pub zero_copy_min: usize,
    /// Refuse an accepted connection whose HELLO names a NID whose address is not the
    /// one the connection comes from: a node cannot claim another's NID from elsewhere.
    /// On by default (lanet's dialers bind their NID's address); off only where peers
    /// dial from another address than their NID's, as behind NAT.
    pub check_source_address: bool,
    /// Accepted connections that have not finished their handshake yet (their HELLO, or
    /// with keys their AUTH), at most: a new one closes the one that has waited longest
    /// (logged), so that a flood of half-open connections costs bounded memory and cannot
    /// lock newcomers out. Each lives at most `connect_timeout` unfinished. At least 1.
    pub max_pending_accepts: usize,
    /// Keys to authenticate connections with, and which to accept (with
    /// [`Accept::DialOnly`](lanet::handshake::auth::Accept::DialOnly), the NI does not listen).
    pub auth: lanet::handshake::auth::Auth,
    /// How long to busy-poll before sleeping (zero: never): latency for a CPU, as UCX and
    /// the RDMA LND's spin. Only where this NI is its driver thread's only one, and (with
    /// io_uring) not while the bulk mover moves bytes: it needs that CPU, and busy-polls
    /// itself meanwhile, within `spin` (2 ms at most) of the last bytes it moved. (With or
    /// without `spin`, a mover polls for `mover_poll` after the last bytes it moved; no
    /// mover polls on a machine with one CPU.) On a node without
    /// cores to spare that delays the health lane by milliseconds: keep health intervals
    /// well above that (measured: false Downs at 3 ms under bulk load on two cores).
    pub spin: Duration,
    /// io_uring: how long the bulk mover thread polls its ring after it last moved bytes
    /// (or was handed a job) before it sleeps, whether or not the NI busy-polls (if it
    /// does, `spin` is the mover's if longer; 2 ms at most either way; never on a machine
    /// with one CPU). 200 us by default: a sleep between two pieces of a stream cost
    /// context switches (on two cores, 1 MiB PUTs on loopback 5.9-6.2 against 8.2-8.6
    /// GB/s). On a link slower than loopback the mover polls between pieces for nothing,
    /// up to about half a CPU while a stream moves: zero makes it sleep between them.
    pub mover_poll: Duration,
}

/// Environment variable that sets [`TcpConfig::spin`] (microseconds) where the
/// configuration does not.
pub const SPIN_ENV: &str = "LANET_TCP_SPIN_US";

/// Environment variable that sets [`TcpConfig::mover_poll`] (microseconds) where the
/// configuration does not (above 2 ms, the mover polls 2 ms).
pub const MOVER_POLL_ENV: &str = "LANET_TCP_MOVER_POLL_US";

/// [`TcpConfig::max_pending_accepts`] by default: a whole cluster's clients connecting at
/// once, as after a router restart, finish their handshakes in well under a millisecond.
pub const DEFAULT_MAX_PENDING_ACCEPTS: usize = lanet::config::DEFAULT_PENDING_ACCEPTS;

impl TcpConfig {
    /// The credits and limits a node with `cfg` expects its drivers to offer.
    pub fn for_node(cfg: &NodeConfig) -> Self {
        TcpConfig {
            incarnation: cfg.incarnation,
            credits: cfg.peer_credits(),
            max_payload: cfg.max_payload,
            connect_timeout: Duration::from_secs(5),
            zero_copy_min: uring::ZC_THRESHOLD,
            check_source_address: true,
            max_pending_accepts: DEFAULT_MAX_PENDING_ACCEPTS,
            auth: cfg.auth.clone(),
            spin: lanet::lnd::spin::from_env(SPIN_ENV, Duration::ZERO),
            mover_poll: lanet::lnd::spin::from_env(MOVER_POLL_ENV, uring::POLL_WHILE_MOVING),
        }
    }
}

/// Opens the TCP NIs of a configuration file ([`lanet::config::ConfigFile::endpoint`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenTcp;

impl lanet::config::OpenLnd for OpenTcp {
    fn serves(&self, kind: LndKind) -> bool {
        kind == LndKind::Tcp
    }

    fn open(
        &self,
        net: &lanet::config::NetSection,
        node: &NodeConfig,
    ) -> Result<Box<dyn Lnd>, LndError> {
        let mut cfg = TcpConfig::for_node(node);
        cfg.credits[lanet::Lane::Data] = net.peer_credits;
        cfg.max_pending_accepts = net.pending_accepts;
        cfg.check_source_address = net.check_source_address;
        if let Some(spin) = net.spin {
            cfg.spin = spin;
        }
        if let Some(poll) = net.mover_poll {
            cfg.mover_poll = poll;
        }
        // `for_node` took the node's keys and accept policy.
        Ok(Box::new(TcpLnd::bind(net.nid, cfg)?))
    }
}

/// Which system interface moves the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: one ring per driver thread, multishot receive, batched submission.
    Uring,
    /// epoll through mio: for kernels or sandboxes without a usable io_uring.
    Epoll,
}

/// Environment variable that forces a backend: `uring` or `epoll`.
pub const BACKEND_ENV: &str = "LANET_TCP_BACKEND";

enum Driver {
    Uring(Box<uring::Uring>),
    Epoll(Box<epoll::Epoll>),
}

/// A TCP NI: listens on its NID's address (unless it accepts no connections) and connects
/// to peers on demand.
pub struct TcpLnd {
    backend: Driver,
    /// Busy-polling, where configured.
    spin: Option<Spin>,
    /// Busy-polling turns since the last that looked at every socket, and when that was
    /// (see [`FULL_POLL_EVERY`]): counted across polls, which a frame on the hot
    /// connection often ends within a few turns.
    hot_turns: u32,
    last_full_poll: Instant,
}

/// A busy-polling driver looks at every socket at least every this many turns, and in the
/// others reads only its hot connection (`Epoll::poll_hot`, `Uring::poll_hot`) ...
const FULL_POLL_EVERY: u32 = 8;
/// ... and at least this often: other sockets (the health lane's) wait at most eight turns
/// (~0.5 us each while nothing comes) or this long, whichever comes first, so that eight
/// turns each handing up a frame the application takes long over do not add up (one
/// such turn still can).
const FULL_POLL_WITHIN: Duration = Duration::from_micros(100);

/// How long to busy-poll, and the waker the spinning loop reads.
struct Spin {
    limit: Duration,
    waker: Arc<SpinWaker>,
}

impl Driver {
    /// The backend's own waker (which wakes its sleep).
    fn waker(&self) -> Arc<dyn Wake> {
        match self {
            Driver::Uring(b) => b.waker(),
            Driver::Epoll(b) => b.waker(),
        }
    }
}

/// Runs `$body` on whichever backend this LND has.
macro_rules! with_backend {
    ($self:expr, $b:ident => $body:expr) => {
        match &mut $self.backend {
            Driver::Uring($b) => $body,
            Driver::Epoll($b) => $body,
        }
    };
}

impl TcpLnd {
    /// Listens on `nid`'s address (`ADDRESS[:PORT]@tcpN`); or, where `cfg.auth` accepts
    /// no connections, only dials from it.
    pub fn bind(nid: Nid, cfg: TcpConfig) -> Result<TcpLnd, LndError> {
        if nid.net().kind != LndKind::Tcp {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("the TCP LND serves tcp nets, not {}", nid.net()),
            ));
        }
        if cfg.max_pending_accepts == 0 {
            return Err(LndError::new(
                LndErrorKind::Resource,
                "max_pending_accepts must be at least 1: else no connection could be accepted",
            ));
        }
        let addr = SocketAddr::V4(
            nid.socket_addr(DEFAULT_PORT)
                .expect("tcp NIDs are IP addresses"),
        );
        let local = engine::Local {
            id: lanet::handshake::Identity {
                nid,
                incarnation: cfg.incarnation,
                credits: cfg.credits,
                max_payload: cfg.max_payload,
            },
            connect_timeout: cfg.connect_timeout,
            check_source_address: cfg.check_source_address,
            max_pending_accepts: cfg.max_pending_accepts,
            auth: cfg.auth.clone(),
        };
        let listen_error = |e: io::Error| {
            LndError::new(
                LndErrorKind::Resource,
                format!("cannot listen on {addr}: {e}"),
            )
        };
        let listener = match cfg.auth.listens() {
            true => Some(std::net::TcpListener::bind(addr).map_err(listen_error)?),
            false => None,
        };
        let on = match &listener {
            Some(_) => format!("on {addr}"),
            None => format!("from {nid}, accepting no connections (accept = none)"),
        };
        if let Some(keys) = cfg.auth.keys() {
            tracing::info!(%nid, "authenticating connections with keys {:?}, accept = {}",
                keys.fingerprints(), cfg.auth.accept().name());
        }
        let epoll = |listener, why: &str| -> Result<Driver, LndError> {
            let b = epoll::Epoll::new(engine::Engine::new(local.clone()), listener)
                .map_err(listen_error)?;
            tracing::info!(%nid, "TCP LND {on}: epoll backend{why}");
            Ok(Driver::Epoll(Box::new(b)))
        };
        let wanted = std::env::var(BACKEND_ENV).unwrap_or_default();
        let backend = match wanted.as_str() {
            "epoll" => epoll(listener, &format!(" ({BACKEND_ENV}=epoll)"))?,
            "uring" | "" => {
                match uring::Uring::new(
                    engine::Engine::new(local.clone()),
                    listener.as_ref().map(|l| l.try_clone()).transpose(),
                    cfg.zero_copy_min,
                    cfg.spin,
                    cfg.mover_poll,
                ) {
                    Ok(b) => {
                        tracing::info!(%nid, "TCP LND {on}: io_uring backend");
                        Driver::Uring(Box::new(b))
                    }
                    Err(e) if wanted == "uring" => {
                        return Err(LndError::new(
                            LndErrorKind::Resource,
                            format!("{BACKEND_ENV}=uring, but io_uring cannot be used here: {e}"),
                        ))
                    }
                    Err(e) => epoll(listener, &format!(", because io_uring is unavailable: {e}"))?,
                }
            }
            other => {
                return Err(LndError::new(
                    LndErrorKind::Resource,
                    format!("{BACKEND_ENV} must be uring or epoll, not {other:?}"),
                ))
            }
        };
        let spin = (!cfg.spin.is_zero()).then(|| {
            tracing::info!(%nid, "TCP LND busy-polls {:?} before sleeping", cfg.spin);
            Spin {
                limit: cfg.spin,
                waker: SpinWaker::new(backend.waker()),
            }
        });
        Ok(TcpLnd {
            backend,
            spin,
            hot_turns: 0,
            last_full_poll: Instant::now(),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.backend {
            Driver::Uring(_) => Backend::Uring,
            Driver::Epoll(_) => Backend::Epoll,
        }
    }

    /// The address actually listened on (an error if the NI does not listen).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.backend {
            Driver::Uring(b) => b.local_addr(),
            Driver::Epoll(b) => b.local_addr(),
        }
    }
}

impl Lnd for TcpLnd {
    fn nid(&self) -> Nid {
        match &self.backend {
            Driver::Uring(b) => b.engine.local().id.nid,
            Driver::Epoll(b) => b.engine.local().id.nid,
        }
    }

    fn connect(&mut self, peer: Nid, lane: Lane) {
        with_backend!(self, b => b.connect(peer, lane))
    }

    fn post(&mut self, tx: Transmit) {
        with_backend!(self, b => b.post(tx))
    }

    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        with_backend!(self, b => b.close(peer, lane, error))
    }

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        let Some(spin) = &self.spin else {
            return with_backend!(self, b => b.poll(events, timeout));
        };
        if timeout == Some(Duration::ZERO) {
            return with_backend!(self, b => b.poll(events, timeout));
        }
        // Busy-poll: look without waiting until something comes, a wake, the timeout, or
        // the end of the spin; then sleep for what is left of the timeout. While the bulk
        // mover has work, sleep at once: it needs a CPU more than this thread needs to
        // spin (its completions wake the sleep).
        let start = Instant::now();
        let limit = timeout.map_or(spin.limit, |t| t.min(spin.limit));
        // One clock read per turn, at its end, serves both the spin's limit and the
        // next turn's choice of look.
        let mut now = start;
        loop {
            // The hot connection is read directly most turns (`Epoll::poll_hot`,
            // `Uring::poll_hot`).
            self.hot_turns += 1;
            let looked = self.hot_turns < FULL_POLL_EVERY
                && now.saturating_duration_since(self.last_full_poll) < FULL_POLL_WITHIN
                && with_backend!(self, b => b.poll_hot(events));
            if !looked {
                self.hot_turns = 0;
                self.last_full_poll = now;
                with_backend!(self, b => b.poll(events, Some(Duration::ZERO)))?;
            }
            if !events.is_empty() || spin.waker.take() {
                return Ok(());
            }
            now = Instant::now();
            let spun = now.saturating_duration_since(start);
            if spun >= limit || with_backend!(self, b => b.bulk_busy()) {
                let rest = timeout.map(|t| t.saturating_sub(spun));
                if rest == Some(Duration::ZERO) {
                    return Ok(());
                }
                let slept = with_backend!(self, b => b.poll(events, rest));
                // The core looks at its commands next: a wake's flag is spent.
                let _ = spin.waker.take();
                return slept;
            }
            std::hint::spin_loop();
        }
    }

    /// The epoll backend writes a hand-over's data frames as it ends, one `writev` per
    /// connection, if no hand-over of this look did (health frames go as they are
    /// posted); io_uring writes a socket's small frames directly, once per look (a
    /// sleeping one only where what waits is all for one socket), and submits the rest
    /// now if it busy-polls, with the poll's wait if it sleeps. What
    /// waits goes with the next look (`poll`, or `prepare_wait` before a shared thread
    /// sleeps).
    fn send_posted(&mut self) {
        with_backend!(self, b => b.send_posted())
    }

    /// Sends written directly (all of epoll's, io_uring's small ones as `send_posted`
    /// says) complete as they are written, so their completions are known at once;
    /// io_uring's ring sends complete in a poll.
    fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        with_backend!(self, b => b.take_ready(events))
    }

    fn waker(&self) -> Arc<dyn Wake> {
        match &self.spin {
            Some(spin) => spin.waker.clone(),
            None => self.backend.waker(),
        }
    }

    fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        match &mut self.backend {
            Driver::Uring(b) => b.wait_fd(),
            Driver::Epoll(b) => Some(b.wait_fd()),
        }
    }

    fn prepare_wait(&mut self) -> lanet::lnd::Readiness {
        with_backend!(self, b => b.prepare_wait())
    }
}

/// Where a backend's listener listens, or why there is none.
fn listener_addr<L: ListenerAddr>(listener: Option<&L>) -> io::Result<SocketAddr> {
    match listener {
        Some(l) => l.addr(),
        None => Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "this NI accepts no connections (accept = none): it has no listening address",
        )),
    }
}

/// The listeners of both backends (std's and mio's).
trait ListenerAddr {
    fn addr(&self) -> io::Result<SocketAddr>;
}

impl ListenerAddr for std::net::TcpListener {
    fn addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

impl ListenerAddr for mio::net::TcpListener {
    fn addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// A TCP socket for dialling from `local` (this NI's NID): bound to its address, so the
/// peer sees the connection come from the address our HELLO names (which it checks, see
/// [`TcpConfig::check_source_address`]), whatever interface the route leaves by.
fn dial_socket(local: Nid) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if let Some(addr) = local.socket_addr(0) {
        // The port is left to connect, as without the bind: it may then serve several
        // destinations at once, and is not taken from the range `bind(0)` draws on.
        sockopt::set_int(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            1,
        )?;
        let from = std::net::SocketAddrV4::new(*addr.ip(), 0);
        s.bind(&std::net::SocketAddr::V4(from).into())?;
    }
    Ok(s)
}

/// TCP_NODELAY for latency; keepalive as a backstop behind the health lane.
fn tune_socket(s: &impl std::os::fd::AsFd) -> io::Result<()> {
    let s = socket2::SockRef::from(s);
    s.set_tcp_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    s.set_tcp_keepalive(&keepalive)
}

/// Whether TCP LNDs on this kernel raise a socket's receive low-water mark while a large
/// frame arrives (Linux 5.11 and later; see `low_water`).
pub fn raises_receive_low_water() -> bool {
    low_water::kernel_wakes_early()
}

/// A socket's receive low-water mark (`SO_RCVLOWAT`; 1 unless raised), for diagnostics and
/// tests.
pub fn receive_low_water(fd: std::os::fd::RawFd) -> io::Result<usize> {
    low_water::get(fd)
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
