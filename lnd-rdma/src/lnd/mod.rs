//! The RDMA LND: [`RdmaLnd`] implements [`Lnd`] on rdma_cm and verbs.
//!
//! * **Connections**: one RC queue pair per lane per peer, set up with rdma_cm. The HELLO
//!   travels compact in the connect request's and reply's private data; a refusal that
//!   lost a connection race carries a `Race` HELLO in the reject. Races are decided as in
//!   the TCP LND: the connection dialled by the lower NID wins. With keys, the private
//!   data also carries the authentication's nonces and the acceptor's proof, and the
//!   dialler's AUTH is the first message on the queue pair (see `setup`).
//! * **Completions**: one CQ per lane, shared by that lane's QPs; every pass polls the
//!   health CQ before the data CQ. Before sleeping the driver spins for `spin`, then arms
//!   both CQs and sleeps in epoll on their completion channel, the rdma_cm channel and a
//!   waker.
//! * **Buffers**: message buffers are the NI's, not a connection's (see `bufs`): SENDs
//!   take one from a send pool; receives come from one shared receive queue per lane,
//!   whose pool grows with traffic. An idle connection holds its queue pair (a send queue
//!   sized by its credits) and a few KiB of state. The core's credits still pace each peer; a message that finds
//!   no posted receive is retried by the sender's adapter (RNR), never lost.
//! * **Payloads**: up to [`EAGER_MAX`] bytes inline in the SEND by default, up to what
//!   both ends' buffers hold with `eager_max` (each says its size in its HELLO); larger
//!   ones deferred:
//!   PUTs by the receiver's sink and our RDMA WRITE, GET replies by the receiver's RDMA READ
//!   (see `msg`). Source payloads go through a registration cache.
//! * **Failures**: an error completion, DISCONNECTED, UNREACHABLE or REJECTED fails the
//!   connection: everything it owed (queued, posted, deferred) completes with the error at
//!   once. Its QP goes to the error state and is destroyed a moment later, once the adapter
//!   has given back the shared receives it held (see `retire`), before any memory it could
//!   still touch is released. So does a connection whose deferred payloads make no step
//!   for `rendezvous_timeout` (see `stalled`).
//!   DEVICE_REMOVAL (the device removed, or reset by its driver) fails the whole NI: every
//!   poll from then on returns the error, and the core fails what the NI held. Verbs'
//!   asynchronous events are not read: a fatal QP error shows as error completions, and
//!   a driver recovering a failed device unregisters it, which rdma_cm reports as removal.

mod bufs;
mod conn;
mod fetch;
mod retire;
mod rx;
mod setup;
mod stalled;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanet::handshake::auth::Auth;
use lanet::handshake::Identity;
use lanet::lane::{Lane, PerLane};
use lanet::lnd::conns::{ConnMut, ConnTable, Stage};
use lanet::lnd::spin::SpinWaker;
use lanet::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Readiness, RxHandle, Transmit, Wake};
use lanet::nid::{LndKind, Nid};
use lanet::time::{Clock, MonotonicClock, Time};
use lanet::NodeConfig;
use rustc_hash::FxHashMap;

use crate::cm::{CmId, EventChannel};
use crate::mr::{RemoteBuf, SinkMr, SourceMr};
use crate::regcache::{RegCache, RegCacheLimits, RegCacheStats};
use crate::srq::DeviceLimits;
use crate::verbs::{CompChannel, Completion, Cq, Pd, VerbsError};
pub use bufs::RecvPool;
use bufs::{BufPool, SharedRecv};
pub use conn::EAGER_MAX;
use conn::{Conn, Mode, Pumped};
use retire::RetiringQps;

/// The port used when a NID has none (LNet's o2iblnd service port).
pub const DEFAULT_PORT: u16 = lanet::nid::O2IB_DEFAULT_PORT;

/// Environment variable that overrides how long the driver busy-polls (microseconds).
pub const SPIN_ENV: &str = "LANET_RDMA_SPIN_US";
/// Environment variable that sets [`RdmaConfig::eager_max`] where the configuration file
/// does not (bytes).
pub const EAGER_ENV: &str = "LANET_RDMA_EAGER_MAX";
const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Opens the o2ib NIs of a configuration file ([`lanet::config::ConfigFile::endpoint`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenRdma;

impl lanet::config::OpenLnd for OpenRdma {
    fn serves(&self, kind: lanet::nid::LndKind) -> bool {
        kind == lanet::nid::LndKind::O2ib
    }

    fn open(
        &self,
        net: &lanet::config::NetSection,
        node: &NodeConfig,
    ) -> Result<Box<dyn lanet::lnd::Lnd>, LndError> {
        // `for_node` takes the node's keys and accept policy.
        let mut cfg = RdmaConfig::for_node(node);
        cfg.credits[lanet::Lane::Data] = net.peer_credits;
        cfg.max_pending_accepts = net.pending_accepts;
        cfg.check_source_address = net.check_source_address;
        if let Some(spin) = net.spin {
            cfg.spin = spin;
        }
        if let Some(eager) = net.eager_max {
            cfg.eager_max = eager as usize;
        }
        Ok(Box::new(RdmaLnd::bind(net.nid, cfg)?))
    }
}

/// Settings of an RDMA NI.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    pub incarnation: u64,
    /// Receive credits offered per lane.
    pub credits: PerLane<u16>,
    pub max_payload: u32,
    /// How long a connection may take to come up (resolution, connect, HELLO, AUTH).
    pub connect_timeout: Duration,
    /// Accepted connections not up yet (awaiting ESTABLISHED, or with keys the
    /// dialler's AUTH), at most: each holds a queue pair and CQ entries, so a flood of
    /// connect requests past it closes the one that has waited longest. At least 1.
    pub max_pending_accepts: usize,
    /// Refuse a connect request whose HELLO names a NID whose address is not the one the
    /// request comes from: a node cannot claim another's NID from elsewhere. On by default
    /// (lanet's dialers resolve from their NID's address), as on TCP.
    pub check_source_address: bool,
    /// How long to busy-poll the CQs before sleeping: latency for CPU.
    pub spin: Duration,
    /// Bounds of the registration caches together: half for payloads a peer READs (GET
    /// replies), half for payloads we WRITE from (PUTs), which no peer may access.
    pub reg_cache: RegCacheLimits,
    /// Each lane's shared receive queue: buffers posted at first, and at most.
    pub recv_pools: PerLane<RecvPool>,
    /// Send buffers the NI registers at most, in bytes (default [`SEND_POOL_BYTES`]):
    /// SENDs past them wait for one to come back.
    pub send_pool_bytes: usize,
    /// Payloads up to this many bytes travel inside the message; larger ones by RDMA
    /// (a rendezvous: one more round trip). Message buffers are sized to it (whole KiB, 4
    /// to 64 KiB), and each connection uses the smaller of its two ends' (their HELLOs
    /// say). Default [`EAGER_MAX`] (4 KiB messages), or `LANET_RDMA_EAGER_MAX`.
    pub eager_max: usize,
    /// How long the payloads deferred on a connection (ours the peer is to take, or
    /// theirs we fetch) may make no step at all (a request or fetch begun, a sink named,
    /// a READ or WRITE finished, a DONE) before the connection is failed, with
    /// everything it held: between five sixths of it and all of it (see `stalled`). LNet's o2iblnd does the
    /// same with its `timeout`. Without it, a peer that answers PINGs but never takes a
    /// payload would hold the connection's deferred sends, and our sinks, for good.
    /// Default: three times the node's `op_timeout`, and at least 30 s, so that a peer
    /// is cut off only well after the operations waiting on it have ended.
    /// `Duration::MAX` never times out.
    pub rendezvous_timeout: Duration,
    /// Keys to authenticate connections with, and which to accept (with
    /// [`Accept::DialOnly`](lanet::handshake::auth::Accept::DialOnly), the NI does not listen).
    pub auth: Auth,
}

impl RdmaConfig {
    /// The credits and limits a node with `cfg` expects its drivers to offer.
    pub fn for_node(cfg: &NodeConfig) -> Self {
        RdmaConfig {
            incarnation: cfg.incarnation,
            credits: cfg.peer_credits(),
            max_payload: cfg.max_payload,
            connect_timeout: Duration::from_secs(5),
            spin: lanet::lnd::spin::from_env(SPIN_ENV, DEFAULT_SPIN),
            reg_cache: RegCacheLimits::default(),
            recv_pools: PerLane::new(
                RecvPool::default_for(Lane::Health),
                RecvPool::default_for(Lane::Data),
            ),
            eager_max: eager_from_env(),
            send_pool_bytes: SEND_POOL_BYTES,
            max_pending_accepts: lanet::config::DEFAULT_PENDING_ACCEPTS_RDMA,
            check_source_address: true,
            rendezvous_timeout: cfg
                .op_timeout
                .saturating_mul(3)
                .max(Duration::from_secs(30)),
            auth: cfg.auth.clone(),
        }
    }
}

/// What this node says about itself, where it is (and listens, unless it accepts no
/// connections), and how long it waits.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) id: Identity,
    pub(crate) ip: Ipv4Addr,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_pending_accepts: usize,
    /// See [`RdmaConfig::check_source_address`].
    pub(crate) check_source_address: bool,
    pub(crate) auth: Auth,
}

/// Everything but the connections, so a connection and this can be borrowed together.
pub(crate) struct Ctx {
    pub(crate) local: Local,
    pub(crate) pd: Pd,
    pub(crate) limits: DeviceLimits,
    /// Bytes of our send buffers, and of the data lane's receive buffers.
    pub(crate) msg_size: usize,
    pub(crate) cq: PerLane<Cq>,
    /// Buffers for SENDs, shared by every connection.
    pub(crate) send_bufs: BufPool,
    /// Registering send buffers failed: not tried again until the next housekeeping.
    pub(crate) send_reg_failed: bool,
    /// Times it failed (said at the first and every thousandth).
    pub(crate) send_reg_failures: u64,
    /// Sweeps of the rendezvous deadlines so far: each step of a connection's rendezvous
    /// records it (see `stalled`).
    pub(crate) rdv_sweeps: u32,
    /// The last sweep found no rendezvous under way, and none began since: a sleeping NI
    /// need not wake for the next.
    pub(crate) rdv_idle: bool,
    /// Each lane's shared receive queue, shared by that lane's connections.
    pub(crate) recv: PerLane<SharedRecv>,
    /// Registrations of payloads a peer READs (GET replies).
    pub(crate) cache: RegCache<SourceMr>,
    /// Registrations of payloads we WRITE from (PUTs): no remote access.
    pub(crate) local_cache: RegCache<SourceMr>,
    /// The buffers our RDMA READs land in must allow remote writes (iWARP).
    pub(crate) read_sinks_take_writes: bool,
    pub(crate) events: Vec<LndEvent>,
    /// The device checks every packet (InfiniBand's and RoCE's ICRC): headers go without
    /// a checksum of their own to peers that take them so, and we take them so.
    pub(crate) link_checks_headers: bool,
}

/// A deferred payload offered to the core, until fetched or declined.
struct InRdv {
    conn: u32,
    cookie: u64,
    mode: Mode,
    /// Where the payload is, for READs.
    source: RemoteBuf,
    /// Registered once the core fetches it.
    sink: Option<SinkMr>,
}

/// Entries each lane's CQ starts with, beside its receives; it grows when its queue pairs
/// need more.
const CQ_ENTRIES: i32 = 1024;
/// Bytes of send buffers an NI registers by default, at most: SENDs beyond wait for one.
pub const SEND_POOL_BYTES: usize = 64 << 20;

/// Held eager send completions that are handed over whatever else happens.
const QUIET_MAX: usize = 64;
/// Idle busy-poll passes between clock reads.
const CLOCK_PASSES: u32 = 64;
/// Busy-poll passes between looks at rdma_cm events and deadlines.
const HOUSEKEEPING_PASSES: u32 = 1024;
/// How long after the last such look a poll that does not wait looks again (a thread
/// serving several NIs polls each so, every turn).
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(1);
/// Polls of both CQs at most (each up to 32 completions a lane) before a connection's
/// end is acted on (see `housekeeping`), and before failed connections' QPs are
/// destroyed (see `retire`): enough for a data lane's whole shared receive
/// queue at its default limit (4,096).
const DRAIN_POLLS_MAX: usize = 160;

const WAKE: mio::Token = mio::Token(0);
const CM: mio::Token = mio::Token(1);
const COMP: mio::Token = mio::Token(2);
/// The listener's tag on rdma_cm events (connections are numbered from 1).
const LISTENER_TAG: u64 = u64::MAX;

struct MioWaker(mio::Waker);

impl Wake for MioWaker {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            tracing::warn!("cannot wake the RDMA driver: {e}");
        }
    }
}

// SAFETY: every verbs object of the driver (the connection ids with their queue pairs,
// the PD, the CQs and their channel, the registrations, and every `Rc` of the rdma_cm
// event channel) lives inside it, is reached only through `&mut self`, and leaves only
// when dropped. Moving the driver moves them all, so
// no two threads ever use objects that depend on each other at once: the promise the
// `CmId` (not `Send`) and `Cq`/`Pd`/`CompChannel` (not `Sync`) types ask of their owner.
unsafe impl Send for RdmaLnd {}

/// An RDMA NI: listens on its NID's address and connects to peers on demand.
pub struct RdmaLnd {
    /// First, so dropped first: every QP is destroyed before the buffers (in `ctx`) and
    /// sinks (in `incoming`) it could still touch.
    conns: ConnTable<u32, Conn>,
    /// Failed connections' QPs, flushing (see `retire`); dropped, like `conns`, before
    /// the buffers.
    retiring: RetiringQps,
    ctx: Ctx,
    /// Which connection (and lane) a queue pair, by number, belongs to: a receive from a
    /// shared receive queue names only its queue pair.
    qp_conns: FxHashMap<u32, (u32, Lane)>,
    spin: Duration,
    /// The connection table's time.
    clock: MonotonicClock,
    incoming: FxHashMap<RxHandle, InRdv>,
    /// Successful completions of eager sends, held until there is something else to say
    /// (or nothing to wait for), so they do not cost the core a pass each.
    quiet: Vec<LndEvent>,
    by_cookie: FxHashMap<(u32, u64), RxHandle>,
    next_conn: u32,
    /// Connections waiting for a send buffer, health-lane ones first, the others in the
    /// order they ran out (each marked `waiting_for_buf`, so it is in line once).
    buf_waiters: std::collections::VecDeque<u32>,
    /// `pump_buf_waiters` is running: a nested call (a waiter failed, and its buffers came
    /// back) only asks it to go on.
    serving_waiters: bool,
    /// Data-lane connections with frames posted since the last `send_posted`: pumped
    /// then, so that a hand-over's SENDs to one peer go in chains of up to
    /// `SEND_CHAIN_MAX` per post (each post a system call on soft-RoCE). May repeat one.
    posted_to: Vec<u32>,
    /// Accepted connections closed to keep within `max_pending_accepts`.
    evicted_accepts: u64,
    /// Connections refused at their handshake.
    refusals: lanet::lnd::Refusals,
    next_handle: u64,
    passes: u32,
    /// When `housekeeping` last ran.
    housekept_at: Time,
    /// When the rendezvous deadlines were last swept (see `stalled`).
    rdv_swept_at: Time,
    /// See [`RdmaConfig::rendezvous_timeout`].
    rendezvous_timeout: Duration,
    wcs: Vec<Completion>,
    poll: mio::Poll,
    mio_events: mio::Events,
    /// Wakes a sleep (its eventfd) and raises a flag the spinning loop reads.
    waker: Arc<SpinWaker>,
    /// The device's name, for what is said about it.
    device_name: String,
    /// Why the NI cannot work any more (its device went away): every poll from then on
    /// fails with it.
    gone: Option<LndError>,
    // Dropped in this order, after the connections and the CQs (fields drop in
    // declaration order): the completion channel while the listener still holds the
    // device open (the context it was made from is librdmacm's, which may close it with
    // the device's last id once the device is gone), then the listener before the
    // channel its events use.
    comp: CompChannel,
    _listener: CmId,
    channel: Rc<EventChannel>,
}

fn verbs_error(e: VerbsError) -> LndError {
    LndError::new(LndErrorKind::Resource, e.to_string())
}

impl RdmaLnd {
    /// Listens on `nid`'s address (`ADDRESS[:PORT]@o2ibN`), which must be an IPv4 address
    /// of an RDMA device's network interface; or, where `cfg.auth` accepts no
    /// connections, binds it only (dialling from it; peers' connect requests are refused
    /// by rdma_cm).
    pub fn bind(nid: Nid, cfg: RdmaConfig) -> Result<RdmaLnd, LndError> {
        if nid.net().kind != LndKind::O2ib {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("the RDMA LND serves o2ib nets, not {}", nid.net()),
            ));
        }
        let addr = nid
            .socket_addr(DEFAULT_PORT)
            .expect("o2ib NIDs are IP addresses");
        // Without any device, say so plainly rather than with rdma_cm's errno.
        crate::verbs::first_active_device().map_err(verbs_error)?;
        let channel = EventChannel::new().map_err(verbs_error)?;
        channel.set_nonblocking().map_err(verbs_error)?;
        let listener = CmId::with_tag(&channel, LISTENER_TAG).map_err(verbs_error)?;
        listener.bind(addr).map_err(|e| {
            LndError::new(
                LndErrorKind::Resource,
                format!("cannot listen on {addr} (is it an address of an RDMA device's interface?): {e}"),
            )
        })?;
        // Bound even where it does not listen: the binding names the device.
        if cfg.auth.listens() {
            listener.listen(64).map_err(verbs_error)?;
        }
        let device = listener.context().ok_or_else(|| {
            LndError::new(
                LndErrorKind::Resource,
                format!("{addr} is not an address of an RDMA device's interface"),
            )
        })?;
        let pd = Pd::new(&device).map_err(verbs_error)?;
        let comp = CompChannel::new(&device).map_err(verbs_error)?;
        let cq = |_| Cq::with_channel(&device, CQ_ENTRIES, Some(&comp)).map_err(verbs_error);
        let cq = PerLane::new(cq(Lane::Health)?, cq(Lane::Data)?);
        let limits = DeviceLimits::of(&pd).map_err(verbs_error)?;
        let msg_size = conn::msg_size_for(cfg.eager_max);
        if msg_size - conn::MSG_OVERHEAD != cfg.eager_max {
            tracing::info!(%nid, asked = cfg.eager_max, eager_max = msg_size - conn::MSG_OVERHEAD,
                "payloads inside messages: up to what whole-KiB buffers of 4 to 64 KiB hold");
        }
        // Health messages are small: that lane keeps the default buffers whatever eager_max.
        let recv = |lane| {
            let size = if lane == Lane::Health {
                conn::DEFAULT_MSG_SIZE
            } else {
                msg_size
            };
            SharedRecv::new(&pd, lane, size, cfg.recv_pools[lane], limits.max_srq_wr)
                .map_err(verbs_error)
        };
        let recv = PerLane::new(recv(Lane::Health)?, recv(Lane::Data)?);
        for lane in [Lane::Health, Lane::Data] {
            // Room for every receive the pool may post, beside the QPs' sends.
            let need = recv[lane].max_len() + CQ_ENTRIES as usize;
            conn::grow_cq(&cq[lane], need, limits.max_cqe)?;
        }
        let poll =
            mio::Poll::new().map_err(|e| LndError::new(LndErrorKind::Resource, e.to_string()))?;
        let io = |e: std::io::Error| LndError::new(LndErrorKind::Resource, e.to_string());
        let waker = SpinWaker::new(Arc::new(MioWaker(
            mio::Waker::new(poll.registry(), WAKE).map_err(io)?,
        )));
        for (fd, token) in [(channel.fd(), CM), (comp.fd(), COMP)] {
            poll.registry()
                .register(
                    &mut mio::unix::SourceFd(&fd),
                    token,
                    mio::Interest::READABLE,
                )
                .map_err(io)?;
        }
        let link_checks_headers = device.checks_every_packet();
        let read_sinks_take_writes = device.is_iwarp();
        let checked_by = match link_checks_headers {
            true => "the device's ICRC (with peers that agree) or their own CRC-32",
            false => "their own CRC-32 (the device has no ICRC)",
        };
        match cfg.auth.listens() {
            true => tracing::info!(%nid, device = device.name(), headers = checked_by,
                "RDMA LND listening on {addr}"),
            false => tracing::info!(%nid, device = device.name(), headers = checked_by,
                "RDMA LND on {addr}, accepting no connections (accept = none)"),
        }
        if let Some(keys) = cfg.auth.keys() {
            tracing::info!(%nid, "authenticating connections with keys {:?}, accept = {}",
                keys.fingerprints(), cfg.auth.accept().name());
        }
        Ok(RdmaLnd {
            ctx: Ctx {
                local: Local {
                    id: Identity {
                        nid,
                        incarnation: cfg.incarnation,
                        credits: cfg.credits,
                        max_payload: cfg.max_payload,
                    },
                    ip: *addr.ip(),
                    connect_timeout: cfg.connect_timeout,
                    max_pending_accepts: cfg.max_pending_accepts.max(1),
                    check_source_address: cfg.check_source_address,
                    auth: cfg.auth.clone(),
                },
                pd,
                limits,
                msg_size,
                cq,
                send_bufs: BufPool::new(msg_size, 64, (cfg.send_pool_bytes / msg_size).max(1)),
                send_reg_failed: false,
                send_reg_failures: 0,
                rdv_sweeps: 0,
                rdv_idle: true,
                recv,
                cache: RegCache::new(cfg.reg_cache.half()),
                local_cache: RegCache::new(cfg.reg_cache.half()),
                read_sinks_take_writes,
                events: Vec::new(),
                link_checks_headers,
            },
            qp_conns: FxHashMap::default(),
            buf_waiters: std::collections::VecDeque::new(),
            serving_waiters: false,
            posted_to: Vec::new(),
            spin: cfg.spin,
            conns: ConnTable::new(nid, cfg.credits, cfg.connect_timeout),
            retiring: RetiringQps::default(),
            clock: MonotonicClock::new(),
            incoming: FxHashMap::default(),
            quiet: Vec::new(),
            by_cookie: FxHashMap::default(),
            next_conn: 1,
            evicted_accepts: 0,
            refusals: Default::default(),
            next_handle: 1,
            passes: 0,
            housekept_at: Time::ZERO,
            rdv_swept_at: Time::ZERO,
            rendezvous_timeout: cfg.rendezvous_timeout,
            wcs: Vec::with_capacity(32),
            poll,
            mio_events: mio::Events::with_capacity(8),
            waker,
            device_name: device.name().to_owned(),
            gone: None,
            _listener: listener,
            channel,
            comp,
        })
    }

    /// How many completions `lane`'s CQ holds now. It grows (to twice what the queue
    /// pairs, failed ones still flushing included, may need) when a new queue pair would
    /// not fit, and never shrinks.
    pub fn cq_entries(&self, lane: Lane) -> usize {
        self.ctx.cq[lane].capacity()
    }

    /// Registration cache counts: how often a payload's registration was reused.
    pub fn reg_cache_stats(&self) -> RegCacheStats {
        self.ctx.cache.stats() + self.ctx.local_cache.stats()
    }

    /// Largest payload this NI sends inside a message (to peers whose buffers are as large).
    pub fn eager_max(&self) -> usize {
        self.ctx.msg_size - conn::MSG_OVERHEAD
    }

    fn new_conn_id(&mut self) -> u32 {
        // Never 0 or the listener's tag, nor one still in use after the count wraps (2
        // billion connections later); below 2^31, so a send's work request id never looks
        // like a receive's (`bufs::RECV_BIT`).
        loop {
            let id = self.next_conn;
            self.next_conn = self
                .next_conn
                .checked_add(1)
                .filter(|n| *n < 1 << 31)
                .unwrap_or(1);
            if self.conns.get(id).is_none() && !self.retiring.holds(id) {
                return id;
            }
        }
    }

    fn now(&self) -> Time {
        self.clock.now()
    }

    /// CQ entries `lane`'s receives and the sends of the queue pairs on it (flushing
    /// ones too) may need.
    fn cq_in_use(&self, lane: Lane) -> usize {
        let sends: usize = self
            .conns
            .iter()
            .map(|(_, c)| c)
            .chain(self.retiring.conns())
            .filter_map(|c| c.qp.as_ref())
            .filter(|qp| qp.cq_lane == lane)
            .map(|qp| qp.send_slots())
            .sum();
        sends + self.ctx.recv[lane].max_len()
    }

    /// What the NI's buffers and connections hold now.
    pub fn memory(&self) -> RdmaMemory {
        let queue_pairs = self.conns.iter().filter(|(_, c)| c.qp.is_some()).count();
        RdmaMemory {
            queue_pairs,
            retiring_queue_pairs: self.retiring.len(),
            send_buffer_bytes: self.ctx.send_bufs.bytes(),
            recv_buffer_bytes: PerLane::new(
                self.ctx.recv[Lane::Health].bytes(),
                self.ctx.recv[Lane::Data].bytes(),
            ),
            recv_posted: PerLane::new(
                self.ctx.recv[Lane::Health].posted(),
                self.ctx.recv[Lane::Data].posted(),
            ),
        }
    }

    /// Posts what the connection can take, if it is up; a failure to post fails it.
    fn pump(&mut self, id: u32) {
        let Some(ConnMut {
            stage: Stage::Up,
            data: conn,
            ..
        }) = self.conns.get_mut_with_state(id)
        else {
            return;
        };
        let Some(lane) = conn.qp.as_ref().map(|qp| qp.cq_lane) else {
            return; // no queue pair: nothing to pump
        };
        match conn.pump(id, lane, &mut self.ctx) {
            Ok(Pumped::Done) => {}
            Ok(Pumped::NeedsBuffers) => {
                if let Some(qp) = conn.qp.as_mut().filter(|qp| !qp.waiting_for_buf) {
                    qp.waiting_for_buf = true;
                    // The health lane first in line: its frames are few and never wait
                    // behind data.
                    match lane {
                        Lane::Health => self.buf_waiters.push_front(id),
                        Lane::Data => self.buf_waiters.push_back(id),
                    }
                }
            }
            Err(e) => self.fail(id, e),
        }
    }

    /// Send buffers came back: the connections waiting for them go on, in line (health
    /// ones first), until one runs short again (it goes to the back of the line).
    pub(crate) fn pump_buf_waiters(&mut self) {
        if self.buf_waiters.is_empty() || self.serving_waiters {
            return; // none (every send completion asks), or the loop below looks again
        }
        self.serving_waiters = true;
        let mut turns = self.buf_waiters.len();
        while turns > 0 && self.ctx.send_bufs.has_free() {
            let Some(id) = self.buf_waiters.pop_front() else {
                break;
            };
            turns -= 1;
            if let Some(qp) = self.conns.get_mut(id).and_then(|c| c.qp.as_mut()) {
                qp.waiting_for_buf = false;
            }
            self.pump(id);
        }
        self.serving_waiters = false;
    }

    /// Fails connection `id`: the core hears what it meant, and what it held completes
    /// with `error`.
    pub(crate) fn fail(&mut self, id: u32, error: LndError) {
        let closed = self.conns.fail(id, error, &mut self.ctx.events);
        self.retire(closed);
    }

    /// Polls both CQs, health first; true if anything completed.
    fn poll_cqs(&mut self) -> Result<bool, LndError> {
        const BATCH: usize = 32;
        let mut any = false;
        for lane in [Lane::Health, Lane::Data] {
            self.wcs.clear();
            let n = self.ctx.cq[lane]
                .poll_into(&mut self.wcs, BATCH)
                .map_err(verbs_error)?;
            any |= n > 0;
            let receives = self
                .wcs
                .iter()
                .filter(|c| c.wr_id & bufs::RECV_BIT != 0)
                .count();
            if self.ctx.recv[lane].note_poll(receives, n < BATCH) {
                self.grow_receives(lane);
            }
            let mut wcs = std::mem::take(&mut self.wcs);
            for c in wcs.drain(..) {
                self.on_completion(lane, c);
            }
            self.wcs = wcs;
        }
        Ok(any)
    }

    /// Polls both CQs until they are empty, or for [`DRAIN_POLLS_MAX`] polls (a stream
    /// from other peers may never leave them empty).
    fn drain_cqs(&mut self) -> Result<(), LndError> {
        for _ in 0..DRAIN_POLLS_MAX {
            if !self.poll_cqs()? {
                break;
            }
        }
        Ok(())
    }

    /// Arrivals outran reposts on `lane`: more receives for its shared queue.
    fn grow_receives(&mut self, lane: Lane) {
        let before = self.ctx.recv[lane].len();
        match self.ctx.recv[lane].grow(&self.ctx.pd) {
            Ok(added) => tracing::debug!(%lane, before, added, "more shared receives"),
            Err(e) => tracing::warn!(%lane, "cannot add shared receives: {e}"),
        }
    }

    /// rdma_cm said the NI's device went away (removed, or reset by its driver): nothing
    /// on it works any more, so the NI fails now ([`RdmaLnd::gone`]) rather than each of
    /// its operations waiting out its timeout, and the error tells the operator what to do.
    fn device_removed(&mut self) {
        if self.gone.is_none() {
            self.gone = Some(LndError::new(
                LndErrorKind::Resource,
                format!(
                    "RDMA device {} was removed or reset by its driver: this NI is down; \
                     restart the process to use the device again (some drivers, soft-RoCE's \
                     among them, finish removing a device only once every process using it \
                     has closed it)",
                    self.device_name
                ),
            ));
        }
    }

    /// The rare work: rdma_cm events, handshake deadlines, destroying failed connections'
    /// QPs once they have flushed, and sweeping the rendezvous deadlines. Each costs
    /// system calls, so it is never on the per-message path: the spinning loop does it
    /// every [`HOUSEKEEPING_PASSES`] passes and after sleeping, a poll that does not wait
    /// once [`HOUSEKEEPING_EVERY`] has passed since the last, and `prepare_wait` before a
    /// shared thread sleeps.
    fn housekeeping(&mut self) -> Result<(), LndError> {
        let now = self.now();
        self.housekept_at = now;
        while let Some(ev) = self.channel.try_next().map_err(verbs_error)? {
            if ev.kind.ends_a_connection() {
                // A peer's last frames reach our CQ before its disconnect reaches rdma_cm
                // (the NIC completes a receive before it acknowledges it): they go up
                // first, or, their connection gone, they would be dropped. Before each
                // such event: another peer's may have come since the last (two polls of
                // empty CQs cost little). Not for good if it fails: the device may be
                // going, which an event behind this one says (a CQ broken for good
                // fails the next pass).
                if let Err(e) = self.drain_cqs() {
                    tracing::warn!("draining the CQs before {:?}: {e}", ev.kind);
                }
            }
            // A removed device's CQs are not drained: posting receives and sends on
            // it would fail, and the NI fails what it held with the removal's reason.
            self.on_cm_event(ev);
            if let Some(gone) = &self.gone {
                return Err(gone.clone());
            }
        }
        // Registering send buffers may be tried again (once, if it fails again).
        self.ctx.send_reg_failed = false;
        for lane in [Lane::Health, Lane::Data] {
            // Buffers whose repost failed get another go.
            if let Err(e) = self.ctx.recv[lane].post_free() {
                tracing::warn!(%lane, "cannot post shared receives: {e}");
            }
        }
        if self.conns.next_deadline().is_some_and(|d| d <= now) {
            for closed in self.conns.expire(now, &mut self.ctx.events) {
                self.retire(Some(closed));
            }
        }
        self.destroy_retired();
        self.sweep_rendezvous(now);
        Ok(())
    }

    /// When housekeeping has work: a handshake's deadline, a failed connection's QP to
    /// destroy, or, while payloads are deferred, the next sweep of their deadlines.
    fn next_deadline(&self) -> Option<Time> {
        let sweep = (!self.ctx.rdv_idle).then(|| self.next_rendezvous_sweep());
        [
            self.conns.next_deadline(),
            self.retiring.next_deadline(),
            sweep,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Arms the CQs and sleeps until a completion, an rdma_cm event, a wake-up or the
    /// deadline. Returns true if woken by the waker.
    fn sleep(&mut self, until: Option<Instant>) -> Result<bool, LndError> {
        self.comp.drain();
        for lane in [Lane::Health, Lane::Data] {
            self.ctx.cq[lane].arm().map_err(verbs_error)?;
        }
        // A completion that came before arming signals nothing: look once more.
        if self.poll_cqs()? {
            return Ok(false);
        }
        let timeout = until.map(|u| u.saturating_duration_since(Instant::now()));
        let housekeeping = self.next_deadline().map(|d| d.saturating_since(self.now()));
        let timeout = match (timeout, housekeeping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.poll.poll(&mut self.mio_events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LndError::new(LndErrorKind::Resource, e.to_string())),
        }
        let woken = self.mio_events.iter().any(|e| e.token() == WAKE);
        self.comp.drain();
        if woken {
            // The caller returns to the core, which looks at its commands: this wake's
            // flag is spent.
            let _ = self.waker.take();
        }
        Ok(woken)
    }
}

impl Lnd for RdmaLnd {
    fn nid(&self) -> Nid {
        self.ctx.local.id.nid
    }

    fn connect(&mut self, peer: Nid, lane: Lane) {
        self.dial(peer, lane);
    }

    fn post(&mut self, tx: Transmit) {
        let Some(id) = self.conns.up(tx.peer, tx.lane) else {
            let error = LndError::new(
                LndErrorKind::Closed,
                format!("no {} connection to {}", tx.lane, tx.peer),
            );
            self.ctx.events.push(LndEvent::SendComplete {
                token: tx.token,
                result: Err(error),
            });
            return;
        };
        let lane = tx.lane;
        let conn = self.conns.get_mut(id).expect("up connections exist");
        conn.qp
            .as_mut()
            .expect("up connections have a QP")
            .frames
            .push_back(tx);
        if lane == Lane::Health {
            // At once: a PING or PONG must not wait behind data copied for other
            // connections, or other NIs', in the same hand-over.
            self.pump(id);
        } else if self.posted_to.last() != Some(&id) {
            self.posted_to.push(id);
        }
    }

    /// Pumps the connections posted to: each posts its frames' SENDs in chains.
    fn send_posted(&mut self) {
        let mut posted_to = std::mem::take(&mut self.posted_to);
        for &id in &posted_to {
            self.pump(id);
        }
        posted_to.clear();
        // Anything posted meanwhile (nothing today) waits for the next call.
        posted_to.append(&mut self.posted_to);
        self.posted_to = posted_to;
    }

    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        let closed = self.conns.close(peer, lane, error, &mut self.ctx.events);
        self.retire(closed);
    }

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        let polled = self.poll_once(events, timeout);
        if polled.is_err() {
            // What came before the failure still goes up with it (frames that arrived,
            // sends that completed): the core takes a failed poll's events first.
            self.hand_over(events);
        }
        polled
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        Some(self.poll.as_raw_fd())
    }

    fn prepare_wait(&mut self) -> Readiness {
        if self.gone.is_some() {
            return Readiness::Ready; // the next poll says so
        }
        self.send_posted();
        // Take what made the epoll readable off its ready list, so that only something
        // new makes it readable again; a wake among it is work (commands to take).
        let _ = self.poll.poll(&mut self.mio_events, Some(Duration::ZERO));
        let woken = self.mio_events.iter().any(|e| e.token() == WAKE);
        self.comp.drain();
        let armed = [Lane::Health, Lane::Data]
            .into_iter()
            .try_for_each(|lane| self.ctx.cq[lane].arm());
        // A completion that came before arming signals nothing: look once more.
        let work = woken
            || armed.is_err()
            || self.poll_cqs().unwrap_or(true)
            || self.housekeeping().is_err()
            || !self.ctx.events.is_empty()
            || !self.quiet.is_empty();
        if work {
            return Readiness::Ready;
        }
        let deadline = self.next_deadline().map(|d| d.saturating_since(self.now()));
        Readiness::Sleep(deadline)
    }

    fn fetch(&mut self, handle: RxHandle, sink: bytes::BytesMut) {
        self.start_fetch(handle, sink);
    }

    fn decline(&mut self, handle: RxHandle) {
        if self
            .incoming
            .get(&handle)
            .is_some_and(|rdv| rdv.sink.is_some())
        {
            // Being fetched (a caller's bug): its buffer is the NIC's until the transfer
            // completes, and the fetch ends as it would have, in its `Fetched`.
            tracing::warn!(?handle, "a payload being fetched was declined: ignored");
            return;
        }
        self.refuse(handle, crate::msg::Outcome::Declined);
    }
}

impl Drop for RdmaLnd {
    /// Sends what the core handed over last (frames held for the end of a hand-over: a
    /// node's last turn is not followed by a poll), and gives the SENDs in flight a moment
    /// to leave before the queue pairs go, which would cut them off. Not while unwinding
    /// from a panic, which may have left the connections inconsistent.
    fn drop(&mut self) {
        // Nor once its device is gone: nothing in flight would leave.
        if std::thread::panicking() || self.gone.is_some() {
            return;
        }
        self.send_posted();
        let deadline = Instant::now() + DROP_DRAIN;
        while self.conns.iter().any(|(_, c)| c.in_flight()) && Instant::now() < deadline {
            if self.poll_cqs().is_err() {
                break;
            }
        }
    }
}

/// How long a dropped driver waits for its SENDs in flight to complete, at most: a peer
/// that takes nothing (RNR, retried without end) or is gone would hold it forever. (It
/// waits for the send queues only: a deferred payload's peer may never fetch it, and
/// frames queued behind are dropped with their connection.) What arrives meanwhile is
/// consumed unreported: nobody polls a dropped driver.
const DROP_DRAIN: Duration = Duration::from_millis(200);

impl RdmaLnd {
    /// [`Lnd::poll`]'s work. What it collects is in `events`, or, if it fails, still held.
    fn poll_once(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        // Busy-polling reads only the CQs (no system call); the clock is read every
        // CLOCK_PASSES idle passes, rdma_cm and deadlines every HOUSEKEEPING_PASSES, or
        // by a poll that does not wait, every HOUSEKEEPING_EVERY.
        if let Some(gone) = &self.gone {
            // The NI is down for good (the core polls a failed driver no more).
            return Err(gone.clone());
        }
        // For callers that post without `send_posted`: nothing posted waits for the wait.
        self.send_posted();
        let mut started: Option<Instant> = None;
        let mut idle = 0u32;
        loop {
            let worked = self.poll_cqs()?;
            self.passes = self.passes.wrapping_add(1);
            let due = || self.now() >= self.housekept_at + HOUSEKEEPING_EVERY;
            if self.passes.is_multiple_of(HOUSEKEEPING_PASSES)
                || (timeout == Some(Duration::ZERO) && due())
            {
                self.housekeeping()?;
            }
            if !self.ctx.events.is_empty()
                || timeout == Some(Duration::ZERO)
                || self.quiet.len() >= QUIET_MAX
            {
                self.hand_over(events);
                return Ok(());
            }
            if worked {
                idle = 0;
                continue;
            }
            if self.waker.take() {
                // Commands for the core (a submission from another thread): back to it
                // now, not at the end of the spin.
                self.hand_over(events);
                return Ok(());
            }
            idle += 1;
            if !idle.is_multiple_of(CLOCK_PASSES) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let start = *started.get_or_insert(now);
            let until = timeout.map(|t| start + t);
            if until.is_some_and(|u| now >= u) {
                self.hand_over(events);
                return Ok(());
            }
            if now.duration_since(start) < self.spin {
                continue;
            }
            if !self.quiet.is_empty() {
                // About to sleep: held completions go up first.
                self.hand_over(events);
                return Ok(());
            }
            let woken = self.sleep(until)?;
            self.housekeeping()?;
            if woken {
                // The core has something to say: back to it.
                self.hand_over(events);
                return Ok(());
            }
        }
    }

    /// Gives the core everything pending: the held send completions, then the rest (the
    /// core matches completions by token, in whatever order).
    fn hand_over(&mut self, events: &mut Vec<LndEvent>) {
        events.append(&mut self.quiet);
        events.append(&mut self.ctx.events);
    }
}

/// [`RdmaConfig::eager_max`] from `LANET_RDMA_EAGER_MAX`, or the default.
fn eager_from_env() -> usize {
    match std::env::var(EAGER_ENV) {
        Err(_) => EAGER_MAX,
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!("{EAGER_ENV}={text:?} is not a number of bytes: ignored");
            EAGER_MAX
        }),
    }
}

/// What an RDMA NI's buffers and connections hold ([`RdmaLnd::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdmaMemory {
    /// Connections with a queue pair.
    pub queue_pairs: usize,
    /// Failed connections' queue pairs, kept a moment in the error state so that the
    /// adapter gives back the shared receives they held.
    pub retiring_queue_pairs: usize,
    /// Registered for SENDs, shared by every connection.
    pub send_buffer_bytes: usize,
    /// Registered for each lane's shared receive queue.
    pub recv_buffer_bytes: PerLane<usize>,
    /// Receives posted to each lane's shared queue now.
    pub recv_posted: PerLane<usize>,
}

/// The socket address for `nid` on an o2ib net.
pub(crate) fn peer_addr(nid: Nid) -> Option<SocketAddrV4> {
    nid.socket_addr(DEFAULT_PORT)
}
