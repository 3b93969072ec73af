//! The server side of the benchmarks, and the plumbing that starts it as a child process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lanet::mem::{LinkFaults, MemFabric, MemLnd, MemLndConfig};
use lanet::nid::LndKind;
use lanet::op::MatchEntry;
use lanet::time::MonotonicClock;
use lanet::{Endpoint, Event, Nid, NodeConfig, Worker};
use lanet_lnd_rdma::{RdmaConfig, RdmaLnd};
use lanet_lnd_tcp::{TcpConfig, TcpLnd, DEFAULT_PORT};

/// Where the server accepts benchmark PUTs.
pub(crate) const PORTAL: u32 = 4;
/// The largest PUT the server accepts.
pub(crate) const MAX_PUT: u32 = 64 << 20;

static ZERO_COPY_MIN: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
static PEER_CREDITS: std::sync::OnceLock<Option<u16>> = std::sync::OnceLock::new();

/// `--peer-credits`: the data lane's credits of this process's endpoints, passed on to
/// the server process.
pub(crate) fn set_peer_credits(v: Option<u16>) {
    let _ = PEER_CREDITS.set(v);
}

/// `--zc-min`: applies to this process's TCP LNDs and is passed on to the server process.
pub(crate) fn set_zero_copy_min(v: Option<usize>) {
    let _ = ZERO_COPY_MIN.set(v);
}

fn tcp_config(cfg: &NodeConfig) -> TcpConfig {
    let mut t = TcpConfig::for_node(cfg);
    if let Some(Some(min)) = ZERO_COPY_MIN.get() {
        t.zero_copy_min = *min;
    }
    t
}

static CLIENT_CONFIG: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

/// `--config FILE`: the client of `--connect` runs on this configuration file.
pub(crate) fn set_client_config(path: Option<std::path::PathBuf>) {
    let _ = CLIENT_CONFIG.set(path);
}

/// A client endpoint from the `--config` file, if one was given.
fn config_client(on_event: impl FnMut(Event) + Send + 'static) -> Option<Result<Endpoint, String>> {
    let path = CLIENT_CONFIG.get()?.as_ref()?;
    Some((|| {
        let file = lanet::config::ConfigFile::load(path).map_err(|e| e.to_string())?;
        file.endpoint(&lanet_router::daemon::DRIVERS)
            .map_err(|e| e.to_string())?
            .on_event(on_event)
            .start()
            .map_err(|e| e.to_string())
    })())
}

static BACKEND: std::sync::OnceLock<lanet_lnd_tcp::Backend> = std::sync::OnceLock::new();

/// Records the TCP backend the client ran on, for the report.
pub(crate) fn set_backend(b: lanet_lnd_tcp::Backend) {
    let _ = BACKEND.set(b);
}

/// The TCP backend the client ran on, if it ran on TCP.
pub(crate) fn backend() -> Option<lanet_lnd_tcp::Backend> {
    BACKEND.get().copied()
}

static REALTIME_DRIVER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Real-time priority of the driver threads of `--rt-driver` runs.
const RT_PRIORITY: u8 = 10;

/// `--rt-driver`: this process's driver threads run at real-time priority; passed on to
/// the server process.
pub(crate) fn set_realtime_driver(on: bool) {
    let _ = REALTIME_DRIVER.set(on);
}

fn builder(cfg: NodeConfig) -> lanet::EndpointBuilder {
    let b = Endpoint::builder(cfg);
    match REALTIME_DRIVER.get() {
        Some(true) => b.realtime_driver(RT_PRIORITY),
        _ => b,
    }
}

static WORKER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `latency --worker`: this process's lanet side is a [`Worker`]; passed on to the server
/// process.
pub(crate) fn set_worker(on: bool) {
    let _ = WORKER.set(on);
}

/// Whether this process's lanet side is a [`Worker`].
pub(crate) fn worker() -> bool {
    WORKER.get() == Some(&true)
}

static HEALTH_INTERVAL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// `--interval-ms`: the health interval of this process's endpoints.
pub(crate) fn set_health_interval(d: Duration) {
    let _ = HEALTH_INTERVAL.set(d);
}

/// Configuration shared by both sides: generous data credits for streaming.
pub(crate) fn node_config(incarnation: u64) -> NodeConfig {
    let mut cfg = NodeConfig::new(incarnation);
    cfg.max_payload = MAX_PUT;
    if let Some(Some(credits)) = PEER_CREDITS.get() {
        let data = &mut cfg.lanes[lanet::Lane::Data];
        data.peer_credits = *credits;
        data.credits_hiw = (*credits / 2).max(1);
        data.ni_credits = data.ni_credits.max(u32::from(*credits) * 4);
    }
    if let Some(&interval) = HEALTH_INTERVAL.get() {
        cfg.health.interval = interval;
    }
    cfg
}

/// Attaches the benchmark sink; events are consumed as they come, so nothing piles up.
fn sink(ep: &Endpoint) -> Result<(), String> {
    ep.attach(bench_sink())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The entry every benchmark server's PUTs land in.
fn bench_sink() -> MatchEntry {
    MatchEntry::sink(PORTAL, 0, MAX_PUT)
}

fn discard_events(_: Event) {}

/// The raw TCP echo baseline listens next to the lanet server.
pub(crate) fn echo_addr(nid: Nid) -> SocketAddr {
    let a = nid.socket_addr(DEFAULT_PORT).expect("tcp NID");
    SocketAddr::new((*a.ip()).into(), a.port() + 1)
}

/// The driver for `nid`: RDMA for o2ib NIDs, TCP otherwise.
fn bind(nid: Nid, cfg: &NodeConfig) -> Result<Box<dyn lanet::lnd::Lnd>, String> {
    Ok(if nid.net().kind == LndKind::O2ib {
        Box::new(RdmaLnd::bind(nid, RdmaConfig::for_node(cfg)).map_err(|e| e.to_string())?)
    } else {
        Box::new(TcpLnd::bind(nid, tcp_config(cfg)).map_err(|e| e.to_string())?)
    })
}

/// Runs the server until standard input closes: lanet on `nid`, and for TCP the raw TCP
/// echo next to it.
pub(crate) fn serve(nid: Nid) -> Result<(), String> {
    let cfg = node_config(2);
    let lnd = bind(nid, &cfg)?;
    if worker() {
        if nid.net().kind != LndKind::Tcp {
            return Err("--worker runs the TCP ping-pong: serve a tcp NID".into());
        }
        return serve_worker(cfg, lnd, nid);
    }
    let ep = builder(cfg)
        .boxed_lnd(lnd)
        .on_event(discard_events)
        .start()
        .map_err(|e| e.to_string())?;
    serve_until_stdin_closes(&ep, (nid.net().kind == LndKind::Tcp).then_some(nid))
}

/// Attaches the benchmark sink, starts the raw TCP echo beside `echo` (if given), says
/// "ready", and serves until standard input closes.
fn serve_until_stdin_closes(ep: &Endpoint, echo: Option<Nid>) -> Result<(), String> {
    sink(ep)?;
    echo_and_say_ready(echo)?;
    for _ in std::io::stdin().lock().lines() {}
    ep.shutdown();
    Ok(())
}

/// [`serve`] with a [`Worker`] driven by this thread: the same sink, echo and "ready".
fn serve_worker(cfg: NodeConfig, lnd: Box<dyn lanet::lnd::Lnd>, nid: Nid) -> Result<(), String> {
    let mut w = Worker::new(cfg, vec![lnd]).map_err(|e| e.to_string())?;
    w.attach(bench_sink()).map_err(|e| e.to_string())?;
    echo_and_say_ready(Some(nid))?;
    let serving = Arc::new(AtomicBool::new(true));
    {
        let serving = serving.clone();
        std::thread::spawn(move || {
            for _ in std::io::stdin().lock().lines() {}
            serving.store(false, Ordering::Relaxed);
        });
    }
    serve_with(&mut w, &serving);
    Ok(())
}

/// A server worker at `nid` (TCP) that serves `puts` PUTs and then shuts down, having
/// said "ready" once it listens: for `cost --lnd tcp`, whose counts must not depend on how
/// long the run took (no timed wake-ups while it waits). It exits early if its standard
/// input closes: whoever started it has gone, and no client will come.
pub(crate) fn serve_puts(nid: Nid, puts: usize) -> Result<(), String> {
    let cfg = node_config(2);
    let lnd = bind(nid, &cfg)?;
    let mut w = Worker::new(cfg, vec![lnd]).map_err(|e| e.to_string())?;
    w.attach(bench_sink()).map_err(|e| e.to_string())?;
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!("lanet-bench: standard input closed before the client's PUTs ended");
        std::process::exit(3);
    });
    echo_and_say_ready(None)?;
    let (mut events, mut delivered) = (Vec::new(), 0);
    while delivered < puts {
        w.progress(None, &mut events);
        for e in events.drain(..) {
            match e {
                Event::Delivered(_) => delivered += 1,
                Event::EndpointFailed { reason } => return Err(reason),
                _ => {}
            }
        }
    }
    // The last ACK left with the turn that delivered the last PUT, or is held for the
    // next look: the shutdown's driver drop writes it.
    w.shutdown(&mut events);
    Ok(())
}

/// Drives a server worker while `serving` holds, dropping its events, then shuts it down.
fn serve_with(w: &mut Worker, serving: &AtomicBool) {
    let mut events = Vec::new();
    while serving.load(Ordering::Relaxed) {
        w.progress(Some(Duration::from_millis(10)), &mut events);
        events.clear();
    }
    w.shutdown(&mut events);
}

/// Starts the raw TCP echo beside `echo` (if given) and says "ready".
fn echo_and_say_ready(echo: Option<Nid>) -> Result<(), String> {
    if let Some(nid) = echo {
        let echo = TcpListener::bind(echo_addr(nid)).map_err(|e| format!("echo server: {e}"))?;
        std::thread::spawn(move || {
            for conn in echo.incoming().flatten() {
                std::thread::spawn(move || echo_loop(conn));
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())
}

/// Runs a server on configuration file `path` (its nets and routes) until standard input
/// closes.
pub(crate) fn serve_config(path: &std::path::Path) -> Result<(), String> {
    let file = lanet::config::ConfigFile::load(path).map_err(|e| e.to_string())?;
    let ep = file
        .endpoint(&lanet_router::daemon::DRIVERS)
        .map_err(|e| e.to_string())?
        .on_event(discard_events)
        .start()
        .map_err(|e| e.to_string())?;
    // The raw TCP echo beside the first tcp NI, as `--serve` has: the floor a client
    // measures with `--connect` (direct, whatever routers lanet goes through).
    let echo = file
        .nets
        .iter()
        .map(|n| n.nid)
        .find(|n| n.net().kind == LndKind::Tcp);
    serve_until_stdin_closes(&ep, echo)
}

/// Starts `lanet-bench ARGS` (through `wrapper`, e.g. `ip netns exec NS`) and waits for
/// its "ready".
pub(crate) fn spawn_self(args: &[&str], wrapper: &[&str]) -> Result<ServerProcess, String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let child = spawn_ready(&args, wrapper)?
        .ok_or_else(|| format!("lanet-bench {} did not start", args.join(" ")))?;
    Ok(ServerProcess {
        child,
        nid: Nid::LO,
    })
}

/// Starts this program with `args` behind `wrapper`; the child once it printed "ready",
/// or None if it ended without.
fn spawn_ready(args: &[String], wrapper: &[&str]) -> Result<Option<Child>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = match wrapper {
        [] => Command::new(&exe),
        [first, rest @ ..] => {
            let mut c = Command::new(first);
            c.args(rest).arg(&exe);
            c
        }
    };
    let mut child = crate::pin::server_side(&mut cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start lanet-bench {}: {e}", args.join(" ")))?;
    let mut line = String::new();
    let out = child.stdout.take().expect("piped");
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.trim() == "ready" {
        return Ok(Some(child));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

/// Echo: a u32 message size, then each message of that size straight back.
fn echo_loop(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut len = [0u8; 4];
    if conn.read_exact(&mut len).is_err() {
        return;
    }
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    while conn.read_exact(&mut buf).is_ok() {
        if conn.write_all(&buf).is_err() {
            return;
        }
    }
}

/// A server child process; stopped when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) nid: Nid,
}

impl ServerProcess {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the server; the moment it was sent.
    pub(crate) fn kill(&self) -> Result<std::time::Instant, String> {
        let at = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("run kill: {e}"))?;
        if !status.success() {
            return Err("kill -KILL failed".into());
        }
        Ok(at)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if self.child.wait_timeout_ms(2000).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

trait WaitTimeout {
    fn wait_timeout_ms(&mut self, ms: u64) -> Option<std::process::ExitStatus>;
}

impl WaitTimeout for Child {
    fn wait_timeout_ms(&mut self, ms: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..ms / 10 {
            if let Ok(Some(s)) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// A NID for a client of `dst`: at the address this host reaches `dst` from (a NID names
/// where its node is, and peers check that connections come from there), on a port free
/// a moment ago. Loopback for a loopback `dst`.
pub(crate) fn client_nid_towards(dst: Nid) -> Nid {
    let Some(to) = dst
        .socket_addr(DEFAULT_PORT)
        .filter(|a| !a.ip().is_loopback())
    else {
        return free_nid();
    };
    let local = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(to).and_then(|()| s.local_addr()));
    let Ok(SocketAddr::V4(local)) = local else {
        return free_nid();
    };
    match TcpListener::bind((*local.ip(), 0)).and_then(|l| l.local_addr()) {
        Ok(bound) => format!("{bound}@tcp").parse().expect("an IP NID"),
        Err(_) => free_nid(),
    }
}

/// A loopback NID whose port and the next one (the raw TCP echo) were free a moment ago,
/// both drawn (and so claimed against other processes drawing ports): a process's draws
/// walk the range upwards, so the next draw is usually the next port.
pub(crate) fn free_nid() -> Nid {
    let draw = || {
        let nid = lanet_lnd_tcp::free_loopback_nid().expect("a free loopback port");
        (nid, nid.socket_addr(DEFAULT_PORT).expect("tcp NID").port())
    };
    for _ in 0..64 {
        let (nid, port) = draw();
        if draw().1.checked_sub(1) == Some(port) {
            return nid;
        }
    }
    // Where ports come from the kernel (no range below its ephemeral ones), draws are not
    // consecutive: the next port is only checked.
    loop {
        let (nid, port) = draw();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return nid;
        }
    }
}

/// Where RDMA runs: the first active device, and `addr` or an IPv4 address of its
/// interface.
pub(crate) fn rdma_place(addr: Option<Ipv4Addr>) -> Result<(String, Ipv4Addr), String> {
    if let Some(ip) = addr {
        let device = lanet_lnd_rdma::verbs::first_active_device().map_err(|e| e.to_string())?;
        return Ok((device.name().to_owned(), ip));
    }
    lanet_lnd_rdma::default_ipv4().map_err(|e| e.to_string())
}

/// An o2ib NID on `ip` at a port picked from the clock (rdma_cm ports cannot be probed
/// the way TCP's can; a taken one fails the bind, and the caller tries another).
pub(crate) fn rdma_nid(ip: Ipv4Addr) -> Nid {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let port = 20_000 + (nanos ^ std::process::id()) % 40_000;
    format!("{ip}:{port}@o2ib").parse().expect("a valid NID")
}

/// Starts `lanet-bench <bench> --serve NID` and waits until it serves: on loopback TCP, or
/// over RDMA on `rdma` (an address of the RDMA device's interface).
pub(crate) fn spawn_server(bench: &str, rdma: Option<Ipv4Addr>) -> Result<ServerProcess, String> {
    for _ in 0..5 {
        let nid = rdma.map_or_else(free_nid, rdma_nid);
        if let Some(server) = spawn_server_at(bench, nid, &[])? {
            return Ok(server);
        }
        // Lost a port race; try another.
    }
    Err("the server process did not start".into())
}

/// Starts `lanet-bench <bench> --serve NID`, run through `wrapper` (e.g. `ip netns exec
/// NS`) if given; None if it did not come up (its address was taken).
pub(crate) fn spawn_server_at(
    bench: &str,
    nid: Nid,
    wrapper: &[&str],
) -> Result<Option<ServerProcess>, String> {
    let mut args = vec![bench.to_owned(), "--serve".into(), nid.to_string()];
    if let Some(Some(min)) = ZERO_COPY_MIN.get() {
        args.extend(["--zc-min".to_owned(), min.to_string()]);
    }
    if let Some(Some(credits)) = PEER_CREDITS.get() {
        args.extend(["--peer-credits".to_owned(), credits.to_string()]);
    }
    if REALTIME_DRIVER.get() == Some(&true) {
        args.push("--rt-driver".into());
    }
    if worker() {
        args.push("--worker".into());
    }
    Ok(spawn_ready(&args, wrapper)?.map(|child| ServerProcess { child, nid }))
}

/// Endpoints in this process on the in-memory LND (no delay): the core alone. The client
/// is on net 1; the server too (`direct`) or on net 2, behind a router on both nets.
/// Returns the client, the endpoints kept alive beside it, and the server's NID.
pub(crate) fn mem_endpoints(
    routed: bool,
    client: impl FnMut(Event) + Send + 'static,
) -> Result<(Endpoint, Vec<Endpoint>, Nid), String> {
    let fabric = zero_delay_fabric();
    let start = |nids: &[Nid], cfg: NodeConfig, on_event: Box<dyn FnMut(Event) + Send>| {
        let mut b = Endpoint::builder(cfg.clone()).on_event(on_event);
        for &nid in nids {
            let lnd = MemLnd::new(&fabric, nid, MemLndConfig::for_node(&cfg))
                .map_err(|e| e.to_string())?;
            b = b.lnd(lnd);
        }
        b.start().map_err(|e| e.to_string())
    };
    let cn = Nid::mem(1, 1);
    let sn = Nid::mem(2, if routed { 2 } else { 1 });
    let mut others = Vec::new();
    if routed {
        let rn = [Nid::mem(3, 1), Nid::mem(3, 2)];
        let mut cfg = node_config(3);
        cfg.forwarding = true;
        cfg.router.warm_up = std::time::Duration::ZERO;
        others.push(start(&rn, cfg, Box::new(discard_events))?);
        let server = start(&[sn], node_config(2), Box::new(discard_events))?;
        add_route(&server, cn.net(), rn[1])?;
        sink(&server)?;
        others.push(server);
        let client = start(&[cn], node_config(1), Box::new(client))?;
        add_route(&client, sn.net(), rn[0])?;
        return Ok((client, others, sn));
    }
    let server = start(&[sn], node_config(2), Box::new(discard_events))?;
    sink(&server)?;
    others.push(server);
    let client = start(&[cn], node_config(1), Box::new(client))?;
    Ok((client, others, sn))
}

/// The in-memory fabric of the benchmarks: links without delay, so the core alone counts.
fn zero_delay_fabric() -> MemFabric {
    let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
    fabric.set_default_link(LinkFaults {
        delay: Duration::ZERO,
        ..LinkFaults::default()
    });
    fabric
}

/// The ping-pong of [`mem_endpoints`] with [`Worker`]s instead: each side's node driven by
/// its own thread's loop, no driver thread and no channel between them. `n` round trips of
/// `size`-byte PUTs after `warmup`, each sent once the one before completed.
pub(crate) fn mem_workers_pingpong(n: usize, warmup: usize, size: usize) -> Result<(), String> {
    let fabric = zero_delay_fabric();
    let start = |nid: Nid, cfg: NodeConfig| -> Result<Worker, String> {
        let lnd =
            MemLnd::new(&fabric, nid, MemLndConfig::for_node(&cfg)).map_err(|e| e.to_string())?;
        Worker::new(cfg, vec![Box::new(lnd)]).map_err(|e| e.to_string())
    };
    let (cn, sn) = (Nid::mem(1, 1), Nid::mem(2, 1));
    let mut server = start(sn, node_config(2))?;
    let mut client = start(cn, node_config(1))?;
    server.attach(bench_sink()).map_err(|e| e.to_string())?;
    let serving = Arc::new(AtomicBool::new(true));
    let server_thread = {
        let serving = serving.clone();
        std::thread::spawn(move || serve_with(&mut server, &serving))
    };
    let put = bench_put(sn, size, Duration::from_secs(10));
    let mut events = Vec::new();
    let result =
        (0..warmup + n).try_for_each(|_| worker_round_trip(&mut client, &put, &mut events));
    serving.store(false, Ordering::Relaxed);
    client.shutdown(&mut events);
    server_thread
        .join()
        .map_err(|_| "the server worker panicked".to_string())?;
    result
}

fn add_route(ep: &Endpoint, net: lanet::Net, gateway: Nid) -> Result<(), String> {
    let route = lanet::Route {
        net,
        gateway,
        hops: 1,
        priority: 0,
    };
    ep.add_route(route).map_err(|e| e.to_string())
}

/// A client endpoint over RDMA on `ip`.
fn rdma_client(
    ip: Ipv4Addr,
    on_event: impl FnMut(Event) + Send + 'static,
) -> Result<Endpoint, String> {
    let cfg = node_config(1);
    let mut last = String::new();
    for _ in 0..5 {
        match RdmaLnd::bind(rdma_nid(ip), RdmaConfig::for_node(&cfg)) {
            Ok(lnd) => {
                return Endpoint::builder(cfg)
                    .lnd(lnd)
                    .on_event(on_event)
                    .start()
                    .map_err(|e| e.to_string())
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// A client endpoint over TCP on a free loopback port, and the backend its LND runs.
pub(crate) fn tcp_client(
    towards: Nid,
    on_event: impl FnMut(Event) + Send + 'static,
) -> Result<(Endpoint, lanet_lnd_tcp::Backend), String> {
    let cfg = node_config(1);
    let nid = client_nid_towards(towards);
    let lnd = TcpLnd::bind(nid, tcp_config(&cfg)).map_err(|e| e.to_string())?;
    let backend = lnd.backend();
    let ep = builder(cfg)
        .lnd(lnd)
        .on_event(on_event)
        .start()
        .map_err(|e| e.to_string())?;
    Ok((ep, backend))
}

/// Sends `put` from `w` and drives `w` until it completes: one round trip.
pub(crate) fn worker_round_trip(
    w: &mut Worker,
    put: &lanet::op::PutRequest,
    events: &mut Vec<Event>,
) -> Result<(), String> {
    let op = w.put(put.clone()).map_err(|e| e.to_string())?;
    loop {
        w.progress(None, events);
        for e in events.drain(..) {
            match e {
                Event::Completed(c) if c.op == op => {
                    return c
                        .result
                        .map(|_| ())
                        .map_err(|e| format!("a PUT failed: {e}"));
                }
                Event::Completed(c) => return Err(format!("unexpected {c:?}")),
                _ => {}
            }
        }
    }
}

/// A [`Worker`] client towards `dst` over TCP, and the PUT of `size` bytes it repeats.
pub(crate) fn tcp_worker_client(
    dst: Nid,
    size: usize,
) -> Result<(Worker, lanet::op::PutRequest), String> {
    let cfg = node_config(1);
    let lnd = TcpLnd::bind(client_nid_towards(dst), tcp_config(&cfg)).map_err(|e| e.to_string())?;
    set_backend(lnd.backend());
    let w = Worker::new(cfg, vec![Box::new(lnd)]).map_err(|e| e.to_string())?;
    Ok((w, bench_put(dst, size, Duration::from_secs(10))))
}

/// The PUT the benchmarks repeat: `size` bytes to the sink at `dst`.
fn bench_put(dst: Nid, size: usize, timeout: Duration) -> lanet::op::PutRequest {
    lanet::op::PutRequest {
        dst,
        lane: lanet::Lane::Data,
        portal: PORTAL,
        match_bits: 0,
        payload: bytes::Bytes::from(vec![0x5a; size]),
        timeout: Some(timeout),
        on_peer_down: Default::default(),
        ack: true,
    }
}

/// Where a benchmark's PUTs go.
#[derive(Clone, Copy)]
pub(crate) enum Target {
    /// A server at this NID, over TCP or RDMA.
    Remote(Nid),
    /// An in-memory server in this process, on the client's net.
    Mem,
    /// An in-memory server in this process, behind an in-memory router.
    MemRouted,
    /// A server at `dst`, over TCP through the router at `gateway` (on the client's net).
    Routed { dst: Nid, gateway: Nid },
}

/// The measuring side of a benchmark: its endpoint, the PUT it repeats, and the in-memory
/// server (and router) kept alive alongside.
pub(crate) struct Client {
    pub(crate) ep: Endpoint,
    pub(crate) put: lanet::op::PutRequest,
    _others: Vec<Endpoint>,
}

/// Builds the client whose completions go to `on_event`, repeating `size`-byte PUTs.
pub(crate) fn client(
    target: Target,
    size: usize,
    timeout: Duration,
    on_event: impl FnMut(Event) + Send + 'static,
) -> Result<Client, String> {
    let (ep, dst, others) = match target {
        Target::Remote(dst) if CLIENT_CONFIG.get().is_some_and(|c| c.is_some()) => {
            let ep = config_client(on_event).expect("a --config file")?;
            (ep, dst, Vec::new())
        }
        Target::Remote(dst) if dst.net().kind == LndKind::O2ib => {
            let ip = *dst.socket_addr(0).expect("o2ib NIDs are IP addresses").ip();
            (rdma_client(ip, on_event)?, dst, Vec::new())
        }
        Target::Remote(dst) => {
            let (ep, backend) = tcp_client(dst, on_event)?;
            set_backend(backend);
            (ep, dst, Vec::new())
        }
        Target::Routed { dst, gateway } => {
            let (ep, backend) = tcp_client(gateway, on_event)?;
            set_backend(backend);
            add_route(&ep, dst.net(), gateway)?;
            (ep, dst, Vec::new())
        }
        Target::Mem | Target::MemRouted => {
            let (ep, others, dst) = mem_endpoints(matches!(target, Target::MemRouted), on_event)?;
            (ep, dst, others)
        }
    };
    let put = bench_put(dst, size, timeout);
    Ok(Client {
        ep,
        put,
        _others: others,
    })
}

/// Unsets the TCP LND's busy-polling variable for a run that sleeps: left in the
/// environment, it would make the lanet processes (this one's driver, and the servers it
/// starts) busy-poll against blocking baselines. What to note, if it was set. (The bulk
/// mover's `LANET_TCP_MOVER_POLL_US` is a sleeping NI's setting: kept.)
pub(crate) fn no_busy_poll() -> Option<String> {
    let var = lanet_lnd_tcp::SPIN_ENV;
    std::env::var_os(var)?;
    // Called before the benchmark starts a thread or a child that reads the environment.
    std::env::remove_var(var);
    Some(format!("{var} unset: a run without --spin sleeps"))
}

/// Makes the lanet processes busy-poll through the LND's spin variable `var` (its
/// `SPIN_ENV`), unless the environment already sets it: a server spawned later inherits
/// it; one given with `--connect` does as it was told. What to note in the report: who
/// spins, and the setting in force.
pub(crate) fn busy_poll(var: &str, connect: Option<Nid>) -> String {
    if std::env::var_os(var).is_none() {
        std::env::set_var(var, crate::latency::BUSY_POLL_US.to_string());
    }
    let who = match connect {
        Some(_) => "this lanet process busy-polls",
        None => "both lanet processes busy-poll",
    };
    format!("{who} ({var}={})", std::env::var(var).unwrap_or_default())
}
