//! `lanet-bench conns`: what an idle connection costs a server. A lanet server process
//! (`--serve`) accepts peers that connect both lanes and then say nothing; its resident
//! memory is read at each of `--steps` steps as they come. The headline is the slope of a
//! least-squares fit over the steps, per connection: one-time costs (the first
//! connection's tables) fall outside it, and a table that doubles within one step counts
//! as spread over the steps.
//!
//! The peers are bare RDMA drivers in this process, each on its own port, with receive
//! pools of a few buffers: they stand for client nodes, and only the server is measured.
//! Resident memory counts what the server's process maps: its own state, its registered
//! buffers, and the queues the verbs provider maps into it (rxe maps each queue pair's
//! send queue). Kernel objects outside those mappings are not counted.

use std::time::{Duration, Instant};

use lanet::lnd::{Lnd, LndEvent};
use lanet::{Lane, NodeConfig};
use lanet_lnd_rdma::{RdmaConfig, RdmaLnd, RecvPool};

use crate::peer;
use crate::report::Report;
use crate::{ConnsArgs, LndChoice};

/// Goal of issue 17: what an idle connection may cost.
const GOAL_BYTES: f64 = 64.0 * 1024.0;

pub(crate) fn run(args: &ConnsArgs) -> Result<Report, String> {
    if args.common.lnd != LndChoice::Rdma {
        return Err("conns measures RDMA connections: run it with --lnd rdma".into());
    }
    let steps = args.steps.max(2);
    if args.peers < steps {
        return Err(format!("--peers must be at least --steps ({steps})"));
    }
    // Each client driver holds a few descriptors (its epoll, channels, waker).
    raise_open_file_limit();
    let (device, ip) = peer::rdma_place(args.common.addr)?;
    let server = peer::spawn_server("conns", Some(ip))?;
    let pid = server.pid();
    std::thread::sleep(Duration::from_secs(1));
    let before = Resident::of(pid)?;

    let mut clients: Vec<RdmaLnd> = Vec::with_capacity(args.peers);
    // (connections, resident memory) at each step.
    let mut points: Vec<(f64, Resident)> = Vec::new();
    let started = Instant::now();
    for step in 1..=steps {
        while clients.len() < args.peers * step / steps {
            clients.push(connected_client(ip, server.nid)?);
        }
        idle_while(&mut clients, Duration::from_secs(1))?;
        points.push((2.0 * clients.len() as f64, Resident::of(pid)?));
    }
    let setup = started.elapsed();

    let mut report = Report::new(
        format!(
            "Idle connections: {} peers on both lanes to one server, over {device} ({ip})",
            args.peers
        ),
        args.common.json,
    );
    report.add("peers", args.peers as f64, "");
    report.add("server.rss_before_bytes", before.total as f64, "B");
    for (conns, r) in &points {
        let key = format!("server.at_{conns}_connections");
        report.add(format!("{key}.rss_bytes"), r.total as f64, "B");
        report.add(format!("{key}.rss_anon_bytes"), r.anon as f64, "B");
        report.add(format!("{key}.rss_mapped_bytes"), r.mapped as f64, "B");
    }
    let fit = |f: fn(&Resident) -> u64| {
        let xy: Vec<(f64, f64)> = points.iter().map(|(c, r)| (*c, f(r) as f64)).collect();
        slope(&xy).max(0.0)
    };
    report.add("rdma.bytes_per_idle_connection", fit(|r| r.total), "B");
    report.add("rdma.anon_bytes_per_idle_connection", fit(|r| r.anon), "B");
    report.add(
        "rdma.mapped_bytes_per_idle_connection",
        fit(|r| r.mapped),
        "B",
    );
    report.add("goal.bytes_per_idle_connection", GOAL_BYTES, "B");
    report.add_ratio(
        "ratio.vs_goal",
        "rdma.bytes_per_idle_connection",
        "goal.bytes_per_idle_connection",
    );
    report.add("setup_secs", setup.as_secs_f64(), "s");
    report.note(format!(
        "per connection: the least-squares slope of the server's resident memory (VmRSS) \
         over {steps} steps of connections; anon is its heap (state, registered buffers), \
         mapped the queues the verbs provider maps into it"
    ));
    Ok(report)
}

/// Raises this process's limit on open files to what it may (the hard limit).
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The least-squares slope of `y` over `x`.
fn slope(xy: &[(f64, f64)]) -> f64 {
    let n = xy.len() as f64;
    let (mx, my) = (
        xy.iter().map(|p| p.0).sum::<f64>() / n,
        xy.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = xy.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xy.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// A bare RDMA driver on a port of its own, connected to `server` on both lanes.
fn connected_client(ip: std::net::Ipv4Addr, server: lanet::Nid) -> Result<RdmaLnd, String> {
    let mut last = String::new();
    for _ in 0..5 {
        let mut cfg = RdmaConfig::for_node(&NodeConfig::new(1));
        // A client here only dials: a few receive buffers are all it needs.
        let tiny = RecvPool { initial: 4, max: 4 };
        cfg.recv_pools = lanet::lane::PerLane::new(tiny, tiny);
        let mut lnd = match RdmaLnd::bind(peer::rdma_nid(ip), cfg) {
            Ok(l) => l,
            Err(e) if e.to_string().contains("Too many open files") => {
                return Err(format!("{e}: each peer's driver holds a few descriptors; raise `ulimit -n` for more peers"));
            }
            Err(e) => {
                last = e.to_string();
                continue; // a port taken: another
            }
        };
        for lane in [Lane::Health, Lane::Data] {
            lnd.connect(server, lane);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut up = 0;
        let mut events = Vec::new();
        while up < 2 {
            if Instant::now() > deadline {
                return Err(format!("{} did not connect to {server} in 30 s", lnd.nid()));
            }
            lnd.poll(&mut events, Some(Duration::from_millis(1)))
                .map_err(|e| e.to_string())?;
            for e in events.drain(..) {
                match e {
                    LndEvent::Connected { .. } => up += 1,
                    LndEvent::ConnectFailed { error, .. } => {
                        return Err(format!("{} could not connect: {error}", lnd.nid()))
                    }
                    _ => {}
                }
            }
        }
        return Ok(lnd);
    }
    Err(last)
}

/// Keeps every client's driver turning (answering nothing: they are idle) for `d`.
fn idle_while(clients: &mut [RdmaLnd], d: Duration) -> Result<(), String> {
    let until = Instant::now() + d;
    let mut events = Vec::new();
    while Instant::now() < until {
        for c in clients.iter_mut() {
            c.poll(&mut events, Some(Duration::ZERO))
                .map_err(|e| e.to_string())?;
        }
        if let Some(e) = events.iter().find(|e| {
            matches!(
                e,
                LndEvent::Disconnected { .. } | LndEvent::ConnectFailed { .. }
            )
        }) {
            return Err(format!("an idle connection ended: {e:?}"));
        }
        events.clear();
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A process's resident memory (bytes): all of it, its anonymous part (heap, stacks), and
/// what is mapped from files and devices (the verbs provider's queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resident {
    total: u64,
    anon: u64,
    mapped: u64,
}

impl Resident {
    fn of(pid: u32) -> Result<Resident, String> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        Resident::parse(&status).ok_or_else(|| format!("no VmRSS/RssAnon lines in {path}"))
    }

    fn parse(status: &str) -> Option<Resident> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        let total = field("VmRSS:")?;
        let anon = field("RssAnon:")?;
        Some(Resident {
            total,
            anon,
            mapped: total.saturating_sub(anon),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc_status() {
        let status = "Name:\tx\nVmRSS:\t    1234 kB\nRssAnon:\t  1000 kB\nThreads:\t3\n";
        let r = Resident::parse(status).unwrap();
        assert_eq!(
            (r.total, r.anon, r.mapped),
            (1234 * 1024, 1000 * 1024, 234 * 1024)
        );
        assert_eq!(Resident::parse("Name:\tx\nVmRSS:\t1 kB\n"), None);
        let own = Resident::of(std::process::id()).unwrap();
        assert!(own.total > 100 * 1024 && own.anon <= own.total, "{own:?}");
    }

    #[test]
    fn the_slope_is_a_least_squares_fit() {
        let line = [(2.0, 10.0), (4.0, 14.0), (6.0, 18.0)];
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        // One step up in the middle (a table doubling) moves the slope, not the fit's sense.
        let step = [(2.0, 10.0), (4.0, 20.0), (6.0, 22.0), (8.0, 24.0)];
        assert!(slope(&step) > 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }
}
