//! `lanet-bench sim`: failure detection at scale, on the core alone: thousands of nodes on
//! the in-memory network and the virtual clock. Clients watch a few routers and talk to a
//! few servers; then some servers are cut off. Reported per size: health frames per node
//! per second (which should follow interest, not the number of nodes) and how long the
//! clients took to declare the lost servers Down.

use std::time::{Duration, Instant};

use lanet::mem::LinkFaults;
use lanet::rng::SplitMix64;
use lanet::sim::Sim;
use lanet::{Event, Nid, NodeConfig};

use crate::report::Report;
use crate::SimArgs;

pub(crate) fn run(args: &SimArgs) -> Result<Report, String> {
    let title = format!(
        "sim: {} nodes ({}% routers, {}% servers), each client watching {} routers and {} servers, {} s of virtual time",
        args.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "),
        args.router_pct,
        args.server_pct,
        args.watch_routers,
        args.watch_servers,
        args.secs
    );
    let mut report = Report::new(title, args.json);
    let mut loads = Vec::new();
    for &n in &args.nodes {
        let started = Instant::now();
        let r = one_size(args, n)?;
        let key = |what: &str| format!("n{n}.{what}");
        report.add(key("health_frames_per_node_per_s"), r.load, "/s");
        report.add(key("monitored_per_client"), r.monitored, "");
        report.add(key("detect_ms.p50"), r.p50, "ms");
        report.add(key("detect_ms.max"), r.max, "ms");
        report.add(key("verdicts"), r.verdicts as f64, "");
        report.add(key("wall_s"), started.elapsed().as_secs_f64(), "s");
        loads.push(r.load);
    }
    if let (Some(first), Some(last)) = (loads.first(), loads.last()) {
        if *first > 0.0 {
            report.add("ratio.load_largest_vs_smallest", last / first, "x");
        }
    }
    crate::simrouted::run(args, &mut report)?;
    Ok(report)
}

struct SizeResult {
    load: f64,
    monitored: f64,
    p50: f64,
    max: f64,
    verdicts: usize,
}

fn one_size(args: &SimArgs, n: u32) -> Result<SizeResult, String> {
    let routers = (n * args.router_pct / 100).max(1);
    let servers = (n * args.server_pct / 100).max(args.watch_servers + args.lost_servers);
    let clients = n
        .checked_sub(routers + servers)
        .filter(|c| *c > 0)
        .ok_or("too few nodes")?;
    let nid = |i: u32| Nid::mem(i, 0);
    let router = |i: u32| nid(i);
    let server = |i: u32| nid(routers + i);
    let client = |i: u32| nid(routers + servers + i);
    let mut sim = Sim::new(args.seed);
    sim.fabric().set_default_link(LinkFaults {
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(20),
        ..LinkFaults::default()
    });
    for i in 0..n {
        sim.add_node(nid(i), NodeConfig::new(u64::from(i) + 1))?;
    }
    // Who watches whom: each client a few routers and a few servers, at random.
    let mut rng = SplitMix64::new(args.seed);
    let mut pairs = Vec::new();
    for c in 0..clients {
        for _ in 0..args.watch_routers {
            pairs.push((client(c), router(rng.below(u64::from(routers)) as u32)));
        }
        for _ in 0..args.watch_servers {
            pairs.push((client(c), server(rng.below(u64::from(servers)) as u32)));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    sim.watch_many(&pairs).map_err(|e| e.to_string())?;
    let warmup = Duration::from_secs(1);
    sim.run_for(warmup);
    let pings_before: u64 = (0..n)
        .map(|i| sim.node(nid(i)).health_stats().pings_sent)
        .sum();
    let measure = Duration::from_secs_f64(args.secs);
    sim.run_for(measure);
    let pings: u64 = (0..n)
        .map(|i| sim.node(nid(i)).health_stats().pings_sent)
        .sum::<u64>()
        - pings_before;
    // A PING and its PONG: two frames on the health lane.
    let load = 2.0 * pings as f64 / f64::from(n) / measure.as_secs_f64();
    let monitored = (0..clients)
        .map(|c| sim.node(client(c)).monitored_peers() as f64)
        .sum::<f64>()
        / f64::from(clients);
    for c in 0..clients {
        sim.take_events(client(c));
    }
    // Cut some servers off from everyone who watches them, and time the verdicts.
    let lost: Vec<Nid> = (0..args.lost_servers).map(server).collect();
    let cut_at = sim.now();
    for &(c, s) in &pairs {
        if lost.contains(&s) {
            sim.fabric().set_cut(c, s, true);
        }
    }
    sim.run_for(Duration::from_secs(2));
    let mut took: Vec<f64> = Vec::new();
    for c in 0..clients {
        for (t, e) in sim.take_timed_events(client(c)) {
            if let Event::PeerDown { peer, .. } = e {
                if !lost.contains(&peer) {
                    return Err(format!("false verdict: {} declared {peer} down", client(c)));
                }
                took.push(t.saturating_since(cut_at).as_secs_f64() * 1e3);
            }
        }
    }
    let expected = pairs.iter().filter(|(_, s)| lost.contains(s)).count();
    if took.len() != expected {
        return Err(format!(
            "{} of {expected} watchers of the lost servers declared them down",
            took.len()
        ));
    }
    took.sort_by(f64::total_cmp);
    Ok(SizeResult {
        load,
        monitored,
        p50: took.get(took.len() / 2).copied().unwrap_or(0.0),
        max: took.last().copied().unwrap_or(0.0),
        verdicts: took.len(),
    })
}
