//! `lanet-bench detect`: how fast, and how accurately, a node finds out that a peer died.
//!
//! Each trial starts a server process, watches it from this process, kills it with SIGKILL
//! at a random moment, and times the `PeerDown` verdict. As root, a second set of trials
//! runs the server in a network namespace and takes its link down instead (no reset, no
//! goodbye: a pulled cable). Then one long run streams 1 MiB
//! PUTs at a live server, saturating the link, and counts `PeerDown` verdicts: any is a
//! false one.

use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use lanet::op::PeerDownReason;
use lanet::{Event, Nid, OpOutcome};

use crate::cputime;
use crate::netns;
use crate::peer;
use crate::report::Report;
use crate::stalls;
use crate::DetectArgs;

/// What the event callback passes on.
enum Seen {
    Down(Nid, PeerDownReason),
    PutDone(bool),
}

fn forward(tx: Sender<Seen>) -> impl FnMut(Event) + Send + 'static {
    move |e| {
        let seen = match e {
            Event::PeerDown { peer, reason, .. } => Seen::Down(peer, reason),
            Event::Completed(c) => match c.result {
                Ok(OpOutcome::Put { .. }) => Seen::PutDone(true),
                Ok(_) => return,
                Err(_) => Seen::PutDone(false),
            },
            _ => return,
        };
        let _ = tx.send(seen);
    }
}

pub(crate) fn run(args: &DetectArgs) -> Result<Report, String> {
    let interval = Duration::from_millis(args.interval_ms);
    peer::set_health_interval(interval);
    let title = format!(
        "detect: {} peers SIGKILLed (and, as root, {} cut off by a link down) at {} ms intervals (x{} to Down), then {} s of saturating load",
        args.trials,
        args.trials,
        args.interval_ms,
        lanet::health::HealthConfig::default().detect_mult,
        args.load_secs
    );
    let mut report = Report::new(title, args.json);
    // Its TCP processes sleep, as the figures it compares assume.
    if let Some(unset) = crate::peer::no_busy_poll() {
        report.note(unset);
    }
    let mut rng = lanet::rng::SplitMix64::new(args.seed);
    let kill = trials(args, interval, &mut rng, None)?;
    add_times(&mut report, "detect_ms", &kill, args.interval_ms);
    if netns::available() {
        let ns = netns::Netns::create()?;
        let cut = trials(args, interval, &mut rng, Some(&ns))?;
        add_times(&mut report, "link_down.detect_ms", &cut, args.interval_ms);
    } else {
        report.note("not root: the network-namespace link-down trials were skipped");
    }
    let load = false_downs(args)?;
    let detect_time = lanet::health::HealthConfig {
        interval,
        ..Default::default()
    }
    .detect_time();
    report.add("false_downs", load.down_silences.len() as f64, "");
    report.add("load.data_gbytes_per_s", load.gbytes_per_s, "GB/s");
    // How near it came: the silences that made Suspects, and this node's own stalls.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let h = load.health;
    report.add("load.pings_sent", h.pings_sent as f64, "");
    report.add("load.longest_silence_ms", ms(h.longest_silence), "ms");
    report.add(
        "load.longest_silence_of_detect_time",
        h.longest_silence.as_secs_f64() / detect_time.as_secs_f64(),
        "",
    );
    report.add("load.lag_stretches", h.lag_stretches as f64, "");
    report.add("load.max_lag_ms", ms(h.max_lag), "ms");
    report.add("load.host_steal_ms", load.host_steal_secs * 1e3, "ms");
    // Stalls no thread of this machine could have run through (see `stalls`).
    let longest = load
        .stalls
        .iter()
        .map(|s| s.longest)
        .max()
        .unwrap_or_default();
    let over: u64 = load.stalls.iter().map(|s| s.over_threshold).sum();
    report.add("load.cpu_stall_max_ms", ms(longest), "ms");
    for s in &load.stalls {
        report.add(
            format!("load.cpu{}.stall_max_ms", s.cpu),
            ms(s.longest),
            "ms",
        );
    }
    report.add("load.cpu_stalls_of_an_interval_or_more", over as f64, "");
    if load.stalls.iter().any(|s| !s.realtime) {
        report.note("the stall watchers could not run pinned at real-time priority (not root?): their stalls include normal threads' turns");
    }
    for (i, silent) in load.down_silences.iter().enumerate() {
        report.note(format!(
            "false Down {}: after {:.2} ms of silence",
            i + 1,
            ms(*silent)
        ));
    }
    report.add("interval_ms", args.interval_ms as f64, "ms");
    Ok(report)
}

fn add_times(report: &mut Report, prefix: &str, ms: &[f64], interval_ms: u64) {
    let mut ms = ms.to_vec();
    ms.sort_by(f64::total_cmp);
    let p50 = ms[ms.len() / 2];
    let max = *ms.last().expect("at least one trial");
    report.add(format!("{prefix}.p50"), p50, "ms");
    report.add(format!("{prefix}.max"), max, "ms");
    report.add(
        format!("{prefix}.p50_in_intervals"),
        p50 / interval_ms as f64,
        "",
    );
    report.add(
        format!("{prefix}.max_in_intervals"),
        max / interval_ms as f64,
        "",
    );
}

/// Detection times (ms) of `args.trials` peers, each SIGKILLed, or cut off by taking its
/// namespace's link down, at a random moment.
fn trials(
    args: &DetectArgs,
    interval: Duration,
    rng: &mut lanet::rng::SplitMix64,
    ns: Option<&netns::Netns>,
) -> Result<Vec<f64>, String> {
    let mut detect_ms = Vec::new();
    for trial in 0..args.trials {
        let server = match ns {
            None => peer::spawn_server("detect", None)?,
            Some(ns) => {
                ns.set_link(true)?;
                let nid = format!("{}:{}@tcp", ns.inner_ip, 20_000 + trial)
                    .parse()
                    .expect("a valid NID");
                peer::spawn_server_at("detect", nid, &ns.exec())?
                    .ok_or("the server in the namespace did not start")?
            }
        };
        // A link just set up may drop the first ARP reply, and the next ARP try is 1 s
        // later: the trial starts once the path carries a TCP handshake.
        wait_until_reachable(server.nid)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let client = peer::client(
            peer::Target::Remote(server.nid),
            8,
            Duration::from_secs(10),
            forward(tx),
        )?;
        let watched = Instant::now();
        client.ep.watch(server.nid).map_err(|e| e.to_string())?;
        // Up and answering, then a random moment within an interval or two.
        std::thread::sleep(3 * interval + interval.mul_f64(2.0 * rng.unit()));
        if let Ok(Seen::Down(_, reason)) = rx.try_recv() {
            return Err(format!(
                "trial {trial}: the live server {} was declared down ({reason:?}) before the kill, {:?} after the watch began",
                server.nid,
                watched.elapsed()
            ));
        }
        let killed = match ns {
            None => server.kill()?,
            Some(ns) => {
                let at = Instant::now();
                ns.set_link(false)?;
                at
            }
        };
        let took = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Seen::Down(p, _)) if p == server.nid => break killed.elapsed(),
                Ok(_) => {}
                Err(_) => return Err("no PeerDown within 30 s of the kill".into()),
            }
        };
        detect_ms.push(took.as_secs_f64() * 1e3);
        client.ep.shutdown();
    }
    Ok(detect_ms)
}

/// Waits (up to 10 s) until a plain TCP connection reaches the server's echo port.
fn wait_until_reachable(nid: Nid) -> Result<(), String> {
    let addr = peer::echo_addr(nid);
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= give_up => {
                return Err(format!("the server at {addr} is not reachable: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What the loaded phase saw.
struct Load {
    /// The silence each PeerDown verdict reported: all false.
    down_silences: Vec<Duration>,
    gbytes_per_s: f64,
    /// The client's health counters at the end.
    health: lanet::health::HealthStats,
    /// CPU time the hypervisor took from this machine meanwhile (see [`cputime::host_steal`]).
    host_steal_secs: f64,
    /// How long each CPU stopped running what wanted to run, meanwhile.
    stalls: Vec<stalls::CpuStalls>,
}

/// Streams 1 MiB PUTs at a live, watched server for `load_secs`; PeerDown verdicts seen.
fn false_downs(args: &DetectArgs) -> Result<Load, String> {
    const WINDOW: usize = 16;
    let server = peer::spawn_server("detect", None)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let client = peer::client(
        peer::Target::Remote(server.nid),
        1 << 20,
        Duration::from_secs(30),
        forward(tx),
    )?;
    client.ep.watch(server.nid).map_err(|e| e.to_string())?;
    for _ in 0..WINDOW {
        client
            .ep
            .put(client.put.clone())
            .map_err(|e| e.to_string())?;
    }
    let mut down_silences = Vec::new();
    let mut failed = false;
    let steal_before = cputime::host_steal()?;
    let watch = stalls::StallWatch::start(Duration::from_millis(args.interval_ms))?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.load_secs);
    let mut acked = 0u64;
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Seen::Down(_, PeerDownReason::Silent(silent))) => down_silences.push(silent),
            Ok(Seen::PutDone(ok)) => {
                if ok {
                    acked += 1 << 20;
                } else {
                    failed = true;
                }
                client
                    .ep
                    .put(client.put.clone())
                    .map_err(|e| e.to_string())?;
            }
            Err(_) => return Err("the load stalled for 5 s".into()),
        }
    }
    let gbytes_per_s = acked as f64 / start.elapsed().as_secs_f64() / 1e9;
    let host_steal_secs = cputime::host_steal()? - steal_before;
    let stalls = watch.stop()?;
    let (_, health) = client.ep.health(server.nid).map_err(|e| e.to_string())?;
    client.ep.shutdown();
    if failed && down_silences.is_empty() {
        return Err("PUTs failed under load without a verdict".into());
    }
    Ok(Load {
        down_silences,
        gbytes_per_s,
        health,
        host_steal_secs,
        stalls,
    })
}
