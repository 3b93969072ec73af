//! The daemon's life: start from the configuration file, serve until a signal, reload
//! routes on SIGHUP, drain on SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use lanet::config::{ConfigFile, NetSection, OpenLnd};
use lanet::wire::{AbsentReason, RouterState};
use lanet::{Endpoint, Event, Nid, Route, RouteUnfit};
use lanet_lnd_rdma::OpenRdma;
use lanet_lnd_tcp::OpenTcp;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use lanet_control::metrics::MetricsServer;
use lanet_control::ControlSocket;

/// lanet's router: forwards between the nets of its configuration file, and takes itself
/// out of every net when it detects that it has become a black hole.
#[derive(Parser)]
#[command(name = "lanet-router", version)]
struct Args {
    /// The node's configuration file (TOML; see config/example-router.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Where to answer status queries, instead of the file's `routing.control_socket`.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`), e.g. 127.0.0.1:9977.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// The program: `lanet-router --config FILE [--control-socket PATH]`. Logs go to standard
/// error, filtered by `RUST_LOG` (default `info`). Exit status 2 for a configuration that
/// does not read (starting again would not help); 1 for a start that failed on what this
/// host has or lacks (an interface without its address yet, an NI that did not open, a
/// socket that did not bind), or a failure later: a supervisor restarts it then.
pub fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Under systemd, the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    let args = Args::parse();
    let started = Daemon::start(&args.config, args.control_socket).and_then(|mut d| {
        if let Some(addr) = args.metrics {
            d.serve_metrics(addr)?;
        }
        Ok(d)
    });
    let daemon = match started {
        Ok(d) => d,
        Err(e) => {
            eprintln!("lanet-router: {e}");
            return ExitCode::from(if e.lasting { 2 } else { 1 });
        }
    };
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanet-router: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the router did not start.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    /// A mistake in the configuration: starting again, with the same file, would fail
    /// the same way. Otherwise (what the host has or lacks) it may not.
    pub lasting: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for StartError {
    /// What the host did not give (a socket, a thread, signals): not lasting.
    fn from(message: String) -> StartError {
        StartError {
            message,
            lasting: false,
        }
    }
}

impl From<lanet::config::ConfigFileError> for StartError {
    /// Lasting unless it is about what this host lacks.
    fn from(e: lanet::config::ConfigFileError) -> StartError {
        StartError {
            lasting: !e.on_this_host,
            message: e.to_string(),
        }
    }
}

impl From<StartError> for String {
    fn from(e: StartError) -> String {
        e.message
    }
}

/// The configuration running: the file's, with the control socket it answers at (which
/// `--control-socket` may have put elsewhere), for `lanetctl export`.
fn running(config: &ConfigFile, control_socket: &Path) -> ConfigFile {
    let mut running = config.clone();
    running.daemon.control_socket = control_socket.to_owned();
    running
}

/// What changed from `old` to `fresh` that a reload does not apply (it applies routes and
/// the drain bound), named for the log.
fn needs_restart(old: &ConfigFile, fresh: &ConfigFile) -> Vec<&'static str> {
    let mut old_node = old.node.clone();
    old_node.incarnation = fresh.node.incarnation; // fresh at every read
    let mut changed = Vec::new();
    if fresh.nets != old.nets {
        changed.push("[[net]]");
    }
    if fresh.node != old_node {
        changed.push("the node's settings (tunables, [health], [routing], [auth])");
    }
    if fresh.daemon.control_socket != old.daemon.control_socket {
        changed.push("control_socket");
    }
    if fresh.failover != old.failover {
        changed.push("[[failover]]");
    }
    changed
}

/// The drivers a router can open: TCP and RDMA.
pub const DRIVERS: [&dyn OpenLnd; 2] = [&OpenTcp, &OpenRdma];

/// A running router.
pub struct Daemon {
    config_path: PathBuf,
    config: ConfigFile,
    endpoint: Endpoint,
    control: ControlSocket,
    metrics: Option<MetricsServer>,
    events: Option<std::thread::JoinHandle<()>>,
    signals: Signals,
    /// Stop signals delivered (`signals` reports two of a kind as one).
    stops: crate::stops::StopCount,
    /// Why the endpoint failed for good (every NI's driver failed, or the driver thread
    /// panicked): set by the events thread, which then closes `signals` to wake `run`.
    failed: Arc<Mutex<Option<String>>>,
}

impl Daemon {
    /// Reads `config_path` and starts: NIs open, warming up, the control socket (at
    /// `control`, else where the file says) answering.
    pub fn start(config_path: &Path, control: Option<PathBuf>) -> Result<Daemon, StartError> {
        // Caught from the start: a SIGTERM during start-up drains rather than kills.
        let stops = crate::stops::StopCount::register()
            .map_err(|e| format!("cannot catch signals: {e}"))?;
        let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| format!("cannot catch signals: {e}"))?;
        let config = ConfigFile::load(config_path)?;
        if !config.node.forwarding {
            return Err(StartError {
                message: format!(
                    "{}: routing is not enabled: a router needs `[routing] enable = true`",
                    config_path.display()
                ),
                lasting: true,
            });
        }
        let endpoint = config
            .endpoint(&DRIVERS)?
            .start()
            .map_err(|e| format!("cannot start: {e}"))?;
        let socket = control.unwrap_or_else(|| config.daemon.control_socket.clone());
        let control =
            ControlSocket::serve(&socket, endpoint.clone(), Some(running(&config, &socket)))
                .map_err(|e| format!("control socket {}: {e}", socket.display()))?;
        let logger = endpoint.clone();
        let failed = Arc::new(Mutex::new(None));
        let (failure, wake) = (failed.clone(), signals.handle());
        let events = std::thread::Builder::new()
            .name("lanet-events".into())
            .spawn(move || {
                while let Some(e) = logger.recv_event(None) {
                    log_event(&e);
                    if let Event::EndpointFailed { reason } = e {
                        *lock(&failure) = Some(reason);
                        wake.close();
                    }
                }
            })
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
        let nids: Vec<String> = endpoint.nids().iter().map(ToString::to_string).collect();
        tracing::info!(
            nids = %nids.join(" "),
            control = %socket.display(),
            warm_up = ?config.node.router.warm_up,
            "lanet-router started"
        );
        Ok(Daemon {
            config_path: config_path.to_owned(),
            config,
            endpoint,
            control,
            metrics: None,
            events: Some(events),
            signals,
            stops,
            failed,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn control_socket(&self) -> &Path {
        self.control.path()
    }

    /// Serves Prometheus metrics at `addr` from now on.
    pub fn serve_metrics(&mut self, addr: std::net::SocketAddr) -> Result<(), String> {
        let server = MetricsServer::serve(addr, self.endpoint.clone())
            .map_err(|e| format!("metrics at {addr}: {e}"))?;
        tracing::info!(addr = %server.addr(), "serving metrics at /metrics");
        self.metrics = Some(server);
        Ok(())
    }

    /// Serves until SIGTERM or SIGINT (then drains), reloading routes on SIGHUP. `Err` if
    /// the endpoint fails for good: it forwards nothing any more, and the process exits 1
    /// for its supervisor to restart it (systemd's `Restart=on-failure`).
    pub fn run(mut self) -> Result<(), String> {
        crate::notify::notify("READY=1");
        loop {
            let arrived: Vec<i32> = self.signals.wait().collect();
            if lock(&self.failed).is_some() {
                crate::notify::notify("STOPPING=1");
                return self.stopped();
            }
            if arrived.contains(&SIGHUP) {
                crate::notify::reloading();
                self.reload();
                crate::notify::notify("READY=1");
            }
            let stops: Vec<i32> = arrived.iter().copied().filter(|&s| s != SIGHUP).collect();
            // Counted as delivered (the iterator reports two of a kind as one): two of
            // any kind among them.
            if self.stops.get() > 1 {
                // Asked twice before it looked (an impatient operator): stop now.
                tracing::warn!(?stops, "signalled twice: stopping without a drain");
                return self.stopped();
            }
            if let Some(signal) = stops.first() {
                tracing::info!(signal, "stopping: draining");
                break;
            }
        }
        self.drain()
    }

    /// The end of a stop: shuts the endpoint down, waits for the events thread (which ends
    /// with it), and says whether the endpoint had failed meanwhile (`Err`: the process
    /// exits 1).
    fn stopped(mut self) -> Result<(), String> {
        self.endpoint.shutdown();
        if let Some(t) = self.events.take() {
            let _ = t.join();
        }
        match lock(&self.failed).clone() {
            Some(why) => Err(format!("the router failed and stops: {why}")),
            None => Ok(()),
        }
    }

    /// Re-reads the configuration file and applies its routes and drain bound; anything
    /// else that changed needs a restart, and is named. A file that does not parse changes
    /// nothing; routes that do not suit the running nets (see [`apply_routes`]) change no
    /// route; a route the node refuses still stops the reload there (logged), the routes
    /// before it added.
    pub fn reload(&mut self) {
        let fresh = match ConfigFile::load(&self.config_path) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("reload refused, nothing changed: {e}");
                return;
            }
        };
        let unapplied = needs_restart(&self.config, &fresh);
        if !unapplied.is_empty() {
            tracing::warn!(
                "reload: routes and drain are reloaded; restart to apply the changes to {}",
                unapplied.join(", ")
            );
        }
        if fresh.daemon.drain != self.config.daemon.drain {
            tracing::info!(drain = ?fresh.daemon.drain, "reload: drain bound applied");
            self.config.daemon.drain = fresh.daemon.drain;
            // `export` says what runs now (its routes are the node's of the moment).
            self.control
                .set_config(running(&self.config, self.control.path()));
        }
        let running = Running {
            nets: &self.config.nets,
            failover: &self.config.failover,
        };
        let (added, removed) = match apply_routes(&self.endpoint, running, &fresh.routes) {
            Ok(counts) => counts,
            Err(e) => {
                tracing::error!("reload: {e}");
                return;
            }
        };
        tracing::info!(added, removed, "reload: routes applied");
        self.config.routes = fresh.routes;
    }

    /// Says it is stopping (absent, pushed), forwards what it holds, and shuts down once
    /// it holds nothing (after at least two health intervals, so the news has gone out),
    /// the drain bound passed, a second SIGTERM or SIGINT came, or the endpoint failed
    /// (`Err` then).
    pub fn drain(mut self) -> Result<(), String> {
        crate::notify::notify("STOPPING=1");
        let start = Instant::now();
        let bound = self.config.daemon.drain;
        let at_least = self.config.node.health.interval * 2;
        if let Err(e) = self
            .endpoint
            .set_router_state(RouterState::Absent(AbsentReason::Stopping))
        {
            tracing::error!("cannot say it is stopping: {e}");
        }
        // What it holds is read from the node's whole report, which walks every peer on
        // the driver thread that is forwarding what is left: ten times a second, not at
        // every look for a signal.
        let mut holds = 0;
        let mut asked: Option<Instant> = None;
        loop {
            if asked.is_none_or(|at| at.elapsed() >= HOLDS_EVERY) {
                holds = self
                    .endpoint
                    .report()
                    .ok()
                    .and_then(|r| r.router)
                    .map_or(0, |r| r.holds());
                asked = Some(Instant::now());
            }
            let waited = start.elapsed();
            if holds == 0 && waited >= at_least {
                tracing::info!(?waited, "drained: it holds nothing");
                break;
            }
            if waited >= bound && holds > 0 {
                tracing::warn!(
                    ?waited,
                    holds,
                    "drain bound passed: stopping with frames held"
                );
                break;
            }
            if waited >= bound {
                tracing::warn!(
                    ?waited,
                    two_intervals = ?at_least,
                    "drain bound passed before two health intervals: stopping with nothing \
                     held, though its users may not all have heard it is stopping (a drain \
                     longer than two intervals lets them)"
                );
                break;
            }
            // A second SIGTERM or SIGINT (an impatient operator): stop now.
            if let Some(signal) = self.signals.pending().find(|&s| s != SIGHUP) {
                tracing::warn!(signal, ?waited, holds, "signalled again: stopping now");
                break;
            }
            if lock(&self.failed).is_some() {
                break; // nothing more will leave
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stopped()
    }
}

/// How often a drain asks what the router still holds.
const HOLDS_EVERY: Duration = Duration::from_millis(100);

/// What a router runs that a reload does not change.
#[derive(Clone, Copy)]
struct Running<'a> {
    nets: &'a [NetSection],
    failover: &'a [lanet::node::FailoverGroup],
}

/// Makes the endpoint's routes those of `wanted`, for a node running NIs on the nets of
/// `running`; (added or updated, removed). A route the running node would refuse
/// ([`Route::unfit_for`]: a gateway on none of those nets, as with a `[[net]]` the reload
/// added, which takes a restart; one of its own NIDs; one of its nets) is refused before
/// anything changes, and so are routes that would leave a member of a running failover
/// group out of reach (a `[[failover]]` change takes a restart); then the new and updated
/// routes go in before the stale ones go, so that a gateway swapped for another leaves
/// its net no moment without a route.
fn apply_routes(
    endpoint: &Endpoint,
    running: Running<'_>,
    wanted: &[Route],
) -> Result<(usize, usize), String> {
    let own: Vec<Nid> = running.nets.iter().map(|n| n.nid).collect();
    for w in wanted {
        if let Some(unfit) = w.unfit_for(&own) {
            let restart = match unfit {
                RouteUnfit::GatewayOffNet => " (a new [[net]] takes a restart)",
                RouteUnfit::OwnNet => " (a [[net]] removed takes a restart)",
                RouteUnfit::GatewayIsSelf | RouteUnfit::NoHops => "",
            };
            return Err(format!(
                "route to {} through {}: {unfit}{restart}; no route changed",
                w.net, w.gateway
            ));
        }
    }
    for group in running.failover {
        let stranded = group
            .members
            .iter()
            .find(|&&m| !lanet::node::reachable(m, &own, wanted));
        if let Some(m) = stranded {
            return Err(format!(
                "no route would reach {m}, a member of the running failover group {:?} (a \
                 [[failover]] change takes a restart); no route changed",
                group.name
            ));
        }
    }
    let current = endpoint.routes().map_err(|e| e.to_string())?;
    let mut added = 0;
    for w in wanted {
        if !current.contains(w) {
            endpoint
                .add_route(*w)
                .map_err(|e| format!("route to {} through {}: {e}", w.net, w.gateway))?;
            added += 1;
        }
    }
    let mut removed = 0;
    for r in &current {
        if !wanted
            .iter()
            .any(|w| w.net == r.net && w.gateway == r.gateway)
        {
            endpoint
                .remove_route(r.net, r.gateway)
                .map_err(|e| e.to_string())?;
            removed += 1;
        }
    }
    Ok((added, removed))
}

/// The lock, even if a thread panicked holding it (it holds only an `Option`).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn log_event(e: &Event) {
    match e {
        Event::PeerDown { peer, reason, .. } => tracing::info!(%peer, ?reason, "peer down"),
        Event::PeerUp { peer, .. } => tracing::info!(%peer, "peer up"),
        Event::PeerRestarted { peer, .. } => tracing::info!(%peer, "peer restarted"),
        Event::NiDown { nid, reason, .. } => tracing::error!(%nid, "NI down: {reason}"),
        Event::RouteUp { net, gateway, .. } => tracing::info!(%net, %gateway, "route up"),
        Event::RouteDown {
            net,
            gateway,
            reason,
            ..
        } => tracing::warn!(%net, %gateway, "route down: {reason}"),
        Event::ProtocolError { peer, error, .. } => {
            tracing::warn!(%peer, "protocol error: {error}")
        }
        Event::EndpointFailed { reason } => tracing::error!("endpoint failed: {reason}"),
        // Logged by the core as they happen, with their cause.
        Event::RouterChanged { .. } | Event::FailoverMoved { .. } => {}
        Event::Completed(_) | Event::Delivered(_) | Event::Refused(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETS: &str = "[[net]]\nnet = \"tcp1\"\naddress = \"127.0.0.1\"\nport = 7001\n\
                        [[net]]\nnet = \"tcp2\"\naddress = \"127.0.0.1\"\nport = 7002\n";

    fn file(routing: &str) -> ConfigFile {
        let text = format!("{NETS}[routing]\nenable = true\n{routing}");
        ConfigFile::parse("router.toml", &text).unwrap()
    }

    /// Two free loopback ports' `[[net]]`s for tcp1 and tcp2, with `rest` after them.
    fn config_in(dir: &Path, rest: &str) -> PathBuf {
        let port = || {
            let nid = lanet_lnd_tcp::free_loopback_nid().unwrap();
            nid.socket_addr(0).unwrap().port()
        };
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("router.toml");
        let text = format!(
            "[[net]]\nnet = \"tcp1\"\naddress = \"127.0.0.1\"\nport = {}\n\
             [[net]]\nnet = \"tcp2\"\naddress = \"127.0.0.1\"\nport = {}\n{rest}",
            port(),
            port()
        );
        std::fs::write(&config, text).unwrap();
        config
    }

    /// A reload that moves a failover group to another net and its route with it (the
    /// group's change takes a restart) changes no route: removing the old net's route
    /// would leave the running group's members out of reach.
    #[test]
    fn a_reload_does_not_strand_a_running_failover_group() {
        let dir = std::env::temp_dir().join(format!("lanet-stranded-{}", std::process::id()));
        let routing = "[routing]\nenable = true\n";
        let old = format!(
            "{routing}[[route]]\nnet = \"tcp3\"\ngateway = \"127.0.0.9@tcp1\"\n\
             [[failover]]\nname = \"pair\"\nnids = [\"10.0.0.1@tcp3\", \"10.0.0.2@tcp3\"]\n"
        );
        let config = config_in(&dir, &old);
        let mut daemon = Daemon::start(&config, Some(dir.join("router.sock"))).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        let moved = text
            .replace("tcp3", "tcp4")
            .replace("127.0.0.9@tcp1", "127.0.0.8@tcp1");
        std::fs::write(&config, moved).unwrap();
        daemon.reload();
        let routes = daemon.endpoint().routes().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0].net.to_string(), "tcp3", "{routes:?}");
    }

    /// Two SIGTERMs that came before the daemon looked (signal-hook reports them as one)
    /// stop it at once, as two signals do: no drain (here it would last at least two
    /// health intervals, 20 s).
    #[test]
    fn two_sigterms_before_the_daemon_looks_stop_it_without_a_drain() {
        let dir = std::env::temp_dir().join(format!("lanet-two-terms-{}", std::process::id()));
        let config = config_in(
            &dir,
            "[health]\ninterval = \"10s\"\n[routing]\nenable = true\ndrain = \"60s\"\n",
        );
        let daemon = Daemon::start(&config, Some(dir.join("router.sock"))).unwrap();
        signal_hook::low_level::raise(SIGTERM).unwrap();
        signal_hook::low_level::raise(SIGTERM).unwrap();
        let start = Instant::now();
        daemon.run().unwrap();
        let took = start.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(took < Duration::from_secs(10), "it drained: {took:?}");
    }

    /// A reload names each change it does not apply, and nothing for the same file read
    /// again (its incarnation is fresh at every read).
    #[test]
    fn a_reload_names_what_it_does_not_apply() {
        let old = file("");
        assert_eq!(needs_restart(&old, &file("")), Vec::<&str>::new());
        assert_eq!(
            needs_restart(&old, &file("drain = \"60s\"\n")),
            Vec::<&str>::new()
        );
        assert_eq!(
            needs_restart(&old, &file("control_socket = \"/tmp/other.sock\"\n")),
            vec!["control_socket"]
        );
        assert_eq!(
            needs_restart(&old, &file("warm_up = \"0s\"\n")),
            vec!["the node's settings (tunables, [health], [routing], [auth])"]
        );
    }
}
