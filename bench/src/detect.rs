//! `lanet-bench detect`: how fast, and how accurately, a node finds out that a peer died.
//!
//! Each trial starts a server process, watches it from this process, kills it with SIGKILL
//! at a random moment, and times the `PeerDown` verdict. As root, a second set of trials
//! runs the server in a network namespace and takes its link down instead (no reset, no
//! goodbye: a pulled cable). Then one long run streams 1 MiB
//! PUTs at a live server, saturating the link, and counts `PeerDown` verdicts: any is a
//! false one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use lanet::op::PeerDownReason;
use lanet::{Event, Nid, OpOutcome};

use crate::netns;
use crate::peer;
use crate::report::Report;
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
    let (false_downs, gbps) = false_downs(args)?;
    report.add("false_downs", false_downs as f64, "");
    report.add("load.data_gbytes_per_s", gbps, "GB/s");
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

/// Streams 1 MiB PUTs at a live, watched server for `load_secs`; PeerDown verdicts seen.
fn false_downs(args: &DetectArgs) -> Result<(u64, f64), String> {
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
    let downs = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.load_secs);
    let mut acked = 0u64;
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Seen::Down(..)) => {
                downs.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Seen::PutDone(ok)) => {
                if ok {
                    acked += 1 << 20;
                } else {
                    failed.store(true, Ordering::Relaxed);
                }
                client
                    .ep
                    .put(client.put.clone())
                    .map_err(|e| e.to_string())?;
            }
            Err(_) => return Err("the load stalled for 5 s".into()),
        }
    }
    let gbps = acked as f64 / start.elapsed().as_secs_f64() / 1e9;
    client.ep.shutdown();
    if failed.load(Ordering::Relaxed) && downs.load(Ordering::Relaxed) == 0 {
        return Err("PUTs failed under load without a verdict".into());
    }
    Ok((downs.load(Ordering::Relaxed), gbps))
}
