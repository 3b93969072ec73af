//! Chaos: thousands of random operations between random nodes under random faults (loss,
//! jitter, cuts, resets, kills and restarts), on one net or on two nets joined by routers
//! that are themselves cut, killed and restarted. Every operation must complete exactly
//! once, no PUT may be delivered twice to one life of a node, nothing may be a protocol
//! error (nothing is corrupted), and the same seed must give the same run.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::mem::{LinkFaults, MemLndConfig};
use crate::node::{NodeStats, Route};
use crate::rng::SplitMix64;

const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);

/// Who is in the chaos: end nodes (each on one net) and routers (on every net).
struct Topology {
    ends: Vec<Nid>,
    /// Each router's NIDs, first one naming it.
    routers: Vec<Vec<Nid>>,
}

impl Topology {
    /// Six nodes on one net, no routers.
    fn flat() -> Topology {
        Topology {
            ends: (1..=6).map(|i| Nid::mem(i, 0)).collect(),
            routers: Vec::new(),
        }
    }

    /// Three nodes on net 0, three on net 1, three routers on both.
    fn routed() -> Topology {
        Topology {
            ends: (1..=3)
                .map(|i| Nid::mem(i, 0))
                .chain((4..=6).map(|i| Nid::mem(i, 1)))
                .collect(),
            routers: (7..=9)
                .map(|r| vec![Nid::mem(r, 0), Nid::mem(r, 1)])
                .collect(),
        }
    }

    /// The routes a node on `net` needs: the other net through every router.
    fn routes_from(&self, net: u16) -> Vec<Route> {
        let other = 1 - net;
        self.routers
            .iter()
            .map(|r| Route {
                net: Nid::mem(0, other).net(),
                gateway: r[usize::from(net)],
                hops: 1,
                priority: 0,
            })
            .collect()
    }

    fn everyone(&self) -> Vec<Nid> {
        self.ends
            .iter()
            .copied()
            .chain(self.routers.iter().map(|r| r[0]))
            .collect()
    }
}

fn num(nid: Nid) -> u32 {
    match nid.addr() {
        crate::nid::NidAddr::Num(n) => n,
        _ => unreachable!("mem NIDs are numbers"),
    }
}

/// What a chaos run saw.
struct Run {
    sim: Sim,
    trace: Vec<String>,
    /// PUTs delivered more than once to one life of a node: (node, life, PUT number).
    delivered_twice: Vec<(Nid, u64, u64)>,
}

fn chaos(seed: u64, ops: usize, topo: &Topology) -> Run {
    let mut rng = SplitMix64::new(seed);
    let mut sim = Sim::new(seed);
    let mut cfg = NodeConfig::new(0);
    cfg.lanes[Lane::Data].peer_credits = 2;
    cfg.lanes[Lane::Data].credits_hiw = 1;
    cfg.lanes[Lane::Data].ni_credits = 4;
    cfg.op_timeout = 30 * MS;
    cfg.max_undelivered = 64;
    sim.fabric().set_default_link(LinkFaults {
        delay: 50 * US,
        jitter: 100 * US,
        loss: 0.0005,
        cut: false,
    });
    sim.fabric().set_connect_timeout(10 * MS);
    let mut incarnation = 1;
    let mut entries: std::collections::BTreeSet<(Nid, OpId)> = Default::default();
    // The life of each node (a count of its starts), to tell deliveries apart by life.
    let mut lives: BTreeMap<Nid, u64> = BTreeMap::new();
    let start = |sim: &mut Sim, key: Nid, inc: u64| {
        let mut c = cfg.clone();
        c.incarnation = inc;
        // Odd nodes defer payloads over 500 bytes, as an RDMA driver would.
        let inline_max = (num(key) % 2 == 1).then_some(500);
        let lnd = MemLndConfig {
            inline_max,
            ..MemLndConfig::for_node(&c)
        };
        if let Some(r) = topo.routers.iter().find(|r| r[0] == key) {
            c.forwarding = true;
            c.router.warm_up = std::time::Duration::ZERO;
            sim.add_node_on(r, c, lnd).unwrap();
            return Vec::new();
        }
        sim.add_node_with(key, c, lnd).unwrap();
        for route in topo.routes_from(key.net().num) {
            sim.add_route(key, route).unwrap();
        }
        let sink = sim.attach(key, MatchEntry::sink(1, 7, 1000));
        let data = Bytes::from_static(&[9; 3000]);
        let source = sim.attach(key, MatchEntry::source(2, 7, data));
        vec![(key, sink), (key, source)]
    };
    for key in topo.everyone() {
        entries.extend(start(&mut sim, key, incarnation));
        incarnation += 1;
        *lives.entry(key).or_default() += 1;
    }
    let ends = &topo.ends;
    let pick = |rng: &mut SplitMix64, among: &[Nid]| among[rng.below(among.len() as u64) as usize];
    let mut submitted: Vec<(Nid, OpId)> = Vec::new();
    let mut trace = Vec::new();
    let mut deliveries: BTreeMap<(Nid, u64, u64), u32> = BTreeMap::new();
    let mut put_number = 0u64;
    for _ in 0..ops {
        let from = pick(&mut rng, ends);
        let mut to = pick(&mut rng, ends);
        if to == from && rng.chance(0.95) {
            // Mostly someone else; sometimes oneself.
            let i = ends.iter().position(|&e| e == from).expect("an end");
            to = ends[(i + 1) % ends.len()];
        }
        // Faults and kills hit routers too, where there are some.
        let victim = if !topo.routers.is_empty() && rng.chance(0.3) {
            let r = &topo.routers[rng.below(topo.routers.len() as u64) as usize];
            r[usize::from(to.net().num)]
        } else {
            to
        };
        let roll = rng.below(100);
        if !sim.is_alive(from) {
            if roll < 20 {
                entries.extend(start(&mut sim, from, incarnation));
                incarnation += 1;
                *lives.entry(from).or_default() += 1;
            }
        } else if roll < 55 {
            let len = rng.below(1500) as usize;
            put_number += 1;
            // Each PUT carries its number, to catch a second delivery.
            let mut payload = vec![1; len];
            if len >= 8 {
                payload[..8].copy_from_slice(&put_number.to_le_bytes());
            }
            let op = sim.put(
                from,
                PutRequest {
                    lane: Lane::Data,
                    dst: to,
                    portal: rng.below(3) as u32,
                    match_bits: 7,
                    payload: Bytes::from(payload),
                    timeout: Some(Duration::from_micros(1 + rng.below(40_000))),
                    on_peer_down: Default::default(),
                    ack: true,
                },
            );
            submitted.push((from, op));
        } else if roll < 70 {
            let op = sim.get(
                from,
                GetRequest {
                    lane: Lane::Data,
                    dst: to,
                    portal: rng.below(3) as u32,
                    match_bits: 7,
                    want_len: rng.below(4000) as u32,
                    timeout: if rng.chance(0.5) {
                        None
                    } else {
                        Some(Duration::from_micros(rng.below(20_000)))
                    },
                    on_peer_down: Default::default(),
                },
            );
            submitted.push((from, op));
        } else if roll < 80 {
            let lane = if rng.chance(0.8) {
                Lane::Health
            } else {
                Lane::Data
            };
            let op = sim.ping(
                from,
                PingRequest {
                    dst: to,
                    lane,
                    timeout: None,
                    on_peer_down: Default::default(),
                },
            );
            submitted.push((from, op));
        } else if roll < 85 {
            let entry = MatchEntry::sink(rng.below(3) as u32, 7, rng.below(2000) as u32);
            let op = sim.attach(from, if rng.chance(0.7) { entry.once() } else { entry });
            submitted.push((from, op));
            entries.insert((from, op));
        } else if roll < 91 {
            if let Some(&(at, op)) = submitted.get(rng.below(submitted.len() as u64) as usize) {
                sim.cancel(at, op);
            }
        } else if roll < 95 {
            sim.fabric().set_cut(from, victim, rng.chance(0.4));
        } else if roll < 97 {
            sim.fabric().reset_connections(from, victim);
        } else if roll < 98 {
            sim.fabric().set_link(
                from,
                victim,
                LinkFaults {
                    loss: 0.05,
                    ..sim.fabric().link(from, victim)
                },
            );
        } else if rng.chance(0.2) {
            // Kill a router, or an end node, leaving at least two of each alive; or
            // restart a dead router.
            let dead_router = topo
                .routers
                .iter()
                .map(|r| r[0])
                .find(|&r| !sim.is_alive(r));
            if let Some(r) = dead_router.filter(|_| rng.chance(0.5)) {
                start(&mut sim, r, incarnation);
                incarnation += 1;
                *lives.entry(r).or_default() += 1;
            } else if victim != to && topo.routers.iter().filter(|r| sim.is_alive(r[0])).count() > 2
            {
                let key = topo
                    .routers
                    .iter()
                    .find(|r| r.contains(&victim))
                    .expect("a router")[0];
                sim.kill(key);
            } else if ends.iter().filter(|&&e| sim.is_alive(e)).count() > 2 {
                sim.kill(from);
            }
        }
        sim.run_for(Duration::from_micros(rng.below(300)));
        for key in topo.everyone() {
            for e in sim.take_events(key) {
                if let Event::Delivered(d) = &e {
                    if d.payload.len() >= 8 {
                        let n = u64::from_le_bytes(d.payload[..8].try_into().expect("8"));
                        *deliveries.entry((key, lives[&key], n)).or_default() += 1;
                    }
                }
                trace.push(format!("{} {} {e:?}", sim.now().0, key));
            }
        }
    }
    // Every deadline has passed after a second: only attached entries may still be live.
    // (Shutdown would cancel a stuck operation and hide it, so look before.)
    sim.run_for(Duration::from_secs(1));
    let stuck: Vec<_> = sim
        .ledger()
        .outstanding()
        .into_iter()
        .filter(|key| !entries.contains(key))
        .collect();
    assert!(
        stuck.is_empty(),
        "seed {seed}: operations outlived their deadlines: {stuck:?}"
    );
    // Then shut every node down: entries complete, nothing may remain.
    for key in topo.everyone() {
        sim.shutdown(key);
    }
    assert!(
        sim.run_until_idle(Duration::from_secs(60)),
        "the simulation never went quiet"
    );
    let delivered_twice = deliveries
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect();
    Run {
        sim,
        trace,
        delivered_twice,
    }
}

/// How many completions of each kind a trace holds, e.g. "Err(RemoteTimeout)" -> 12.
fn outcome_counts(trace: &[String]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in trace {
        if let Some(i) = line.find("result: ") {
            let r = &line[i + 8..];
            let kind: String = r
                .chars()
                .take_while(|c| *c != '{' && *c != '"' && *c != ' ')
                .collect();
            *counts.entry(kind).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// The promises every chaos run keeps, whatever the topology.
fn check(seed: u64, run: &Run, min_ops: u64) -> Vec<(String, usize)> {
    let ledger = run.sim.ledger();
    assert!(
        ledger.violations().is_empty(),
        "seed {seed}: {:?}",
        ledger.violations()
    );
    assert!(
        ledger.outstanding().is_empty(),
        "seed {seed}: never completed: {:?}",
        ledger.outstanding()
    );
    let (submitted, completed) = ledger.counts();
    assert_eq!(submitted, completed, "seed {seed}");
    assert!(
        submitted > min_ops,
        "seed {seed}: only {submitted} ops survived"
    );
    // Nothing is corrupted here: a protocol error is a bug (e.g. a lane whose credits
    // were rebuilt while in use, so the peer later returned more than it held).
    assert_eq!(run.sim.protocol_errors(), 0, "seed {seed}");
    assert!(
        run.delivered_twice.is_empty(),
        "seed {seed}: delivered twice: {:?}",
        run.delivered_twice
    );
    let stats = run.sim.fabric().stats();
    assert!(
        stats.lost > 0 && stats.cut > 0,
        "seed {seed}: faults were injected: {stats:?}"
    );
    let outcomes = outcome_counts(&run.trace);
    eprintln!("seed {seed}: {submitted} ops, {stats:?}, outcomes {outcomes:?}");
    outcomes
}

fn assert_covers(seed: u64, outcomes: &[(String, usize)], kinds: &[&str]) {
    for kind in kinds {
        assert!(
            outcomes.iter().any(|(k, n)| k.contains(kind) && *n > 0),
            "seed {seed}: no {kind}: {outcomes:?}"
        );
    }
}

#[test]
fn thousands_of_random_operations_under_faults_each_complete_exactly_once() {
    for seed in [1, 2, 3] {
        let run = chaos(seed, 4000, &Topology::flat());
        let outcomes = check(seed, &run, 3000);
        // The mix exercises success and every common failure path.
        assert_covers(
            seed,
            &outcomes,
            &[
                "Ok(Put",
                "Ok(Get",
                "Ok(Pong",
                "Ok(Unlinked",
                "Rejected",
                "Timeout",
                "Cancelled",
                "Network(",
            ],
        );
    }
}

#[test]
fn thousands_of_random_operations_across_routers_under_faults_each_complete_once() {
    for seed in [11, 12, 13] {
        let run = chaos(seed, 4000, &Topology::routed());
        let outcomes = check(seed, &run, 2500);
        assert_covers(
            seed,
            &outcomes,
            &["Ok(Put", "Ok(Get", "Ok(Pong", "Rejected", "Timeout"],
        );
        let routers: Vec<NodeStats> = Topology::routed()
            .routers
            .iter()
            .filter(|r| run.sim.is_alive(r[0]))
            .map(|r| run.sim.node(r[0]).stats().clone())
            .collect();
        let forwarded: u64 = routers.iter().map(|s| s.forwarded).sum();
        assert!(
            forwarded > 100,
            "seed {seed}: routers hardly used: {routers:?}"
        );
    }
}

#[test]
fn same_seed_same_run() {
    for topo in [Topology::flat(), Topology::routed()] {
        let (a, b) = (chaos(42, 1500, &topo), chaos(42, 1500, &topo));
        assert_eq!(a.trace, b.trace);
        assert_eq!(a.sim.fabric().stats(), b.sim.fabric().stats());
        assert_eq!(a.sim.now(), b.sim.now());
        let c = chaos(43, 1500, &topo);
        assert_ne!(a.trace, c.trace, "a different seed is a different run");
    }
}
