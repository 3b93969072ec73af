//! `lanet-bench sim`, routed part: clients on one net reach servers on another through a
//! few routers, each a gateway of every client, which watches them (as LNet's router
//! pinger does). Reported per client count: health frames per router and per client per
//! second, and, once one router withdraws (its administrator takes it out), how long every
//! client took to stop using it. A client that used it lately gets its status pushed; one
//! that did not hears it in the router's next PONG. Either way it should not depend on how
//! many clients there are.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::mem::{LinkFaults, MemLndConfig};
use lanet::op::{MatchEntry, PutRequest};
use lanet::sim::Sim;
use lanet::wire::{AbsentReason, RouterState};
use lanet::{Event, Lane, Nid, NodeConfig, Route};

use crate::report::Report;
use crate::SimArgs;

const PORTAL: u32 = 4;
const CLIENT_NET: u16 = 1;
const SERVER_NET: u16 = 2;

pub(crate) fn run(args: &SimArgs, report: &mut Report) -> Result<(), String> {
    let mut slowest = Vec::new();
    for &clients in &args.routed_clients {
        let started = Instant::now();
        let r = one_size(args, clients)?;
        let key = |what: &str| format!("routed.c{clients}.{what}");
        report.add(key("health_frames_per_router_per_s"), r.router_load, "/s");
        report.add(key("health_frames_per_client_per_s"), r.client_load, "/s");
        report.add(key("withdraw_ms.users.p50"), r.pushed.p50, "ms");
        report.add(key("withdraw_ms.users.max"), r.pushed.max, "ms");
        report.add(key("withdraw_ms.watchers.p50"), r.ponged.p50, "ms");
        report.add(key("withdraw_ms.watchers.max"), r.ponged.max, "ms");
        report.add(key("wall_s"), started.elapsed().as_secs_f64(), "s");
        slowest.push(r.pushed.max.max(r.ponged.max));
    }
    if let (Some(first), Some(last)) = (slowest.first(), slowest.last()) {
        if *first > 0.0 {
            report.add("ratio.withdraw_max_largest_vs_smallest", last / first, "x");
        }
    }
    Ok(())
}

struct SizeResult {
    router_load: f64,
    client_load: f64,
    /// Withdrawal heard by clients that used the router lately (pushed to them).
    pushed: Percentiles,
    /// Withdrawal heard by clients that only watch it (in its PONGs).
    ponged: Percentiles,
}

struct Percentiles {
    p50: f64,
    max: f64,
}

/// The NIDs of one routed network: routers (one NID per net, the client side first),
/// servers and clients.
struct Layout {
    gateways: u32,
    servers: u32,
}

impl Layout {
    fn router(&self, i: u32) -> [Nid; 2] {
        [Nid::mem(1 + i, CLIENT_NET), Nid::mem(1 + i, SERVER_NET)]
    }
    fn server(&self, i: u32) -> Nid {
        Nid::mem(1 + self.gateways + i, SERVER_NET)
    }
    fn client(&self, i: u32) -> Nid {
        Nid::mem(1 + self.gateways + self.servers + i, CLIENT_NET)
    }
}

fn route(net: u16, gateway: Nid) -> Route {
    Route {
        net: Nid::mem(0, net).net(),
        gateway,
        hops: 1,
        priority: 0,
    }
}

fn one_size(args: &SimArgs, clients: u32) -> Result<SizeResult, String> {
    if args.gateways < 2 || args.routed_servers == 0 || clients == 0 {
        return Err("the routed part needs at least 2 gateways, 1 server and 1 client".into());
    }
    let l = Layout {
        gateways: args.gateways,
        servers: args.routed_servers,
    };
    let mut sim = Sim::new(args.seed);
    sim.fabric().set_default_link(LinkFaults {
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(20),
        ..LinkFaults::default()
    });
    let mut incarnation = 0;
    let mut cfg = |forwarding: bool| {
        incarnation += 1;
        let mut c = NodeConfig::new(incarnation);
        c.forwarding = forwarding;
        c.router.warm_up = std::time::Duration::ZERO;
        c
    };
    for g in 0..l.gateways {
        let c = cfg(true);
        let lnd = MemLndConfig::for_node(&c);
        sim.add_node_on(&l.router(g), c, lnd)?;
    }
    let err = |e: lanet::OpError| e.to_string();
    for s in 0..l.servers {
        sim.add_node(l.server(s), cfg(false))?;
        for g in 0..l.gateways {
            sim.add_route(l.server(s), route(CLIENT_NET, l.router(g)[1]))
                .map_err(err)?;
        }
        sim.attach(l.server(s), MatchEntry::sink(PORTAL, 0, 64));
    }
    let mut watches = Vec::new();
    for c in 0..clients {
        sim.add_node(l.client(c), cfg(false))?;
        for g in 0..l.gateways {
            sim.add_route(l.client(c), route(SERVER_NET, l.router(g)[0]))
                .map_err(err)?;
            watches.push((l.client(c), l.router(g)[0]));
        }
    }
    sim.watch_many(&watches).map_err(err)?;

    // Every client talks to a server once: connections up.
    put_from_every_client(&mut sim, &l, clients, 1)?;
    let health = |sim: &Sim, nid: Nid| {
        let s = sim.node(nid).stats();
        s.health_frames_sent + s.health_frames_received
    };
    let routers: Vec<Nid> = (0..l.gateways).map(|g| l.router(g)[0]).collect();
    let clients_nids: Vec<Nid> = (0..clients).map(|c| l.client(c)).collect();
    let sum = |sim: &Sim, nids: &[Nid]| nids.iter().map(|&n| health(sim, n)).sum::<u64>();
    let (r0, c0) = (sum(&sim, &routers), sum(&sim, &clients_nids));
    let measure = Duration::from_secs_f64(args.secs);
    sim.run_for(measure);
    let per_s = |frames: u64, nodes: usize| frames as f64 / nodes as f64 / measure.as_secs_f64();
    let router_load = per_s(sum(&sim, &routers) - r0, routers.len());
    let client_load = per_s(sum(&sim, &clients_nids) - c0, clients_nids.len());

    // Nobody sent anything during the measurement, longer than a router remembers its
    // users: the second router's withdrawal reaches the clients in its next PONG. Then
    // every client PUTs once through each router left (round robin), all at once, and
    // the first router's withdrawal is pushed to them. Every client must hear each and
    // route around it.
    let ponged = withdraw(&mut sim, routers[1], &clients_nids)?;
    put_from_every_client(&mut sim, &l, clients, routers.len() - 1)?;
    let pushed = withdraw(&mut sim, routers[0], &clients_nids)?;
    // And they did stop: another round of PUTs, none through the withdrawn routers.
    let before: Vec<u64> = routers[..2]
        .iter()
        .map(|&r| sim.node(r).stats().forwarded)
        .collect();
    put_from_every_client(&mut sim, &l, clients, 1)?;
    for (&r, before) in routers[..2].iter().zip(before) {
        let again = sim.node(r).stats().forwarded - before;
        if again > 0 {
            return Err(format!("{again} frames went through {r} after it withdrew"));
        }
    }
    Ok(SizeResult {
        router_load,
        client_load,
        pushed,
        ponged,
    })
}

/// How long after `router` withdraws each client heard it (ms, sorted); an error unless
/// every one of them did, and about that router only.
fn withdraw(sim: &mut Sim, router: Nid, clients: &[Nid]) -> Result<Percentiles, String> {
    // The clients' pings all started together, and stay in step on the virtual clock:
    // withdrawing on the beat would flatter the watchers. Off the beat, by a fixed part
    // of the interval, the same for every size.
    sim.run_for(NodeConfig::new(1).health.interval * 61 / 100);
    for &c in clients {
        sim.take_events(c);
    }
    let at = sim.now();
    sim.set_router_state(router, RouterState::Absent(AbsentReason::Administrator));
    sim.run_for(Duration::from_secs(2));
    let mut took = Vec::new();
    for &c in clients {
        for (t, e) in sim.take_timed_events(c) {
            if let Event::RouteDown { gateway, .. } = e {
                if gateway != router {
                    return Err(format!("{c} took the route through {gateway} down too"));
                }
                took.push(t.saturating_since(at).as_secs_f64() * 1e3);
            }
        }
    }
    if took.len() != clients.len() {
        return Err(format!(
            "{} of {} clients heard that {router} withdrew",
            took.len(),
            clients.len()
        ));
    }
    took.sort_by(f64::total_cmp);
    Ok(Percentiles {
        p50: took[took.len() / 2],
        max: took[took.len() - 1],
    })
}

/// `each` small PUTs at once from every client to a server, run to completion: all must
/// succeed.
fn put_from_every_client(
    sim: &mut Sim,
    l: &Layout,
    clients: u32,
    each: usize,
) -> Result<(), String> {
    for c in (0..clients).flat_map(|c| std::iter::repeat_n(c, each)) {
        sim.put(
            l.client(c),
            PutRequest {
                dst: l.server(c % l.servers),
                lane: Lane::Data,
                portal: PORTAL,
                match_bits: 0,
                payload: Bytes::from_static(b"routed"),
                timeout: None,
                on_peer_down: Default::default(),
                ack: true,
            },
        );
    }
    sim.run_for(Duration::from_secs(1));
    let mut done = 0;
    for c in 0..clients {
        for e in sim.take_events(l.client(c)) {
            if let Event::Completed(completion) = e {
                if let Err(err) = completion.result {
                    return Err(format!("a PUT from {} failed: {err}", l.client(c)));
                }
                done += 1;
            }
        }
    }
    let all = clients as usize * each;
    if done != all {
        return Err(format!("{done} of {all} PUTs completed within 1 s"));
    }
    Ok(())
}
