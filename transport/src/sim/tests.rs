use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::mem::{LinkFaults, MemLndConfig};
use crate::op::{OpError, OpOutcome, RejectReason};
use crate::rng::SplitMix64;

const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);

fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

fn sim_with(nodes: u32, seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.fabric().set_default_link(LinkFaults {
        delay: 100 * US,
        ..LinkFaults::default()
    });
    for i in 1..=nodes {
        sim.add_node(nid(i), NodeConfig::new(1000 + u64::from(i)))
            .unwrap();
    }
    sim
}

fn put(dst: u32, portal: u32, data: &'static [u8]) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: nid(dst),
        portal,
        match_bits: 7,
        payload: Bytes::from_static(data),
        timeout: None,
        on_peer_down: Default::default(),
    }
}

/// Runs until `op` on `at` completes, returning when and how.
fn run_to_completion(sim: &mut Sim, at: Nid, op: OpId) -> (Time, Result<OpOutcome, OpError>) {
    for _ in 0..100_000 {
        let done = sim
            .take_timed_events(at)
            .into_iter()
            .find_map(|(t, e)| match e {
                Event::Completed(c) if c.op == op => Some((t, c.result)),
                _ => None,
            });
        if let Some(done) = done {
            return done;
        }
        assert!(sim.step(), "{op} pending, yet nothing is scheduled");
    }
    panic!("{op} never completed");
}

#[test]
fn put_and_get_cross_the_fabric_with_data_intact() {
    let mut sim = sim_with(2, 1);
    let sink = sim.attach(nid(2), MatchEntry::sink(4, 7, 1 << 20));
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let data = Bytes::from(data);
    sim.attach(nid(2), MatchEntry::source(5, 7, data.clone()));

    let op = sim.put(
        nid(1),
        PutRequest {
            payload: data.clone(),
            ..put(2, 4, b"")
        },
    );
    let (at, result) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(result, Ok(OpOutcome::Put { mlen: 100_000 }));
    // HELLO there and back, then PUT and ACK: four one-way delays of 100 us.
    assert_eq!(at, Time(400_000));
    let delivered: Vec<Bytes> = sim
        .take_events(nid(2))
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered(d) if d.entry == sink && d.from == nid(1) => Some(d.payload),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, vec![data.clone()]);

    let op = sim.get(
        nid(1),
        GetRequest {
            lane: Lane::Data,
            dst: nid(2),
            portal: 5,
            match_bits: 7,
            want_len: 60_000,
            timeout: None,
            on_peer_down: Default::default(),
        },
    );
    let (at, result) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(
        result,
        Ok(OpOutcome::Get {
            data: data.slice(..60_000)
        })
    );
    assert_eq!(at, Time(600_000), "connection reused: one round trip");

    let op = sim.put(nid(1), put(2, 9, b"nobody listens on portal 9"));
    assert_eq!(
        run_to_completion(&mut sim, nid(1), op).1,
        Err(OpError::Rejected(RejectReason::NoMatch))
    );
}

#[test]
fn large_puts_and_gets_go_zero_copy_where_the_driver_defers_them() {
    let mut sim = Sim::new(1);
    sim.fabric().set_default_link(LinkFaults {
        delay: 100 * US,
        ..LinkFaults::default()
    });
    for i in 1..=2 {
        let cfg = NodeConfig::new(u64::from(i));
        let lnd = MemLndConfig {
            inline_max: Some(4096),
            ..MemLndConfig::for_node(&cfg)
        };
        sim.add_node_with(nid(i), cfg, lnd).unwrap();
    }
    let data: Bytes = (0..1_000_000u32)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    sim.attach(nid(2), MatchEntry::sink(4, 7, 1 << 20).once());
    sim.attach(nid(2), MatchEntry::source(5, 7, data.clone()));
    let op = sim.put(
        nid(1),
        PutRequest {
            payload: data.clone(),
            ..put(2, 4, b"")
        },
    );
    let (at, r) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(r, Ok(OpOutcome::Put { mlen: 1_000_000 }));
    // Handshake, header, fetch round trip, ACK: six one-way delays.
    assert_eq!(at, Time(600_000));
    let events = sim.take_events(nid(2));
    assert!(
        matches!(&events[0], Event::Delivered(d) if d.payload == data),
        "{events:?}"
    );
    assert!(matches!(&events[1], Event::Completed(c) if c.result == Ok(OpOutcome::Unlinked)));
    // The once-entry is gone: a second large PUT finds no match and its payload is declined.
    let op = sim.put(
        nid(1),
        PutRequest {
            payload: data.clone(),
            ..put(2, 4, b"")
        },
    );
    let (_, r) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(r, Err(OpError::Rejected(RejectReason::NoMatch)));
    // GET: the REPLY's payload is fetched by the initiator.
    let op = sim.get(
        nid(1),
        GetRequest {
            lane: Lane::Data,
            dst: nid(2),
            portal: 5,
            match_bits: 7,
            want_len: 1 << 20,
            timeout: None,
            on_peer_down: Default::default(),
        },
    );
    let (_, r) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(r, Ok(OpOutcome::Get { data }));
    sim.run_for(MS);
    assert_eq!(sim.node(nid(1)).live_ops(), 0);
    assert_eq!(sim.node(nid(2)).stats().fetch_failures, 0);
}

#[test]
fn health_pings_use_their_own_connection_and_measure_the_round_trip() {
    let mut sim = sim_with(2, 1);
    let op = sim.ping(
        nid(1),
        PingRequest {
            dst: nid(2),
            lane: Lane::Health,
            timeout: None,
            on_peer_down: Default::default(),
        },
    );
    let (_, r) = run_to_completion(&mut sim, nid(1), op);
    assert_eq!(
        r,
        Ok(OpOutcome::Pong { rtt: 400 * US }),
        "handshake plus one round trip"
    );
    let op = sim.ping(
        nid(1),
        PingRequest {
            dst: nid(2),
            lane: Lane::Health,
            timeout: None,
            on_peer_down: Default::default(),
        },
    );
    assert_eq!(
        run_to_completion(&mut sim, nid(1), op).1,
        Ok(OpOutcome::Pong { rtt: 200 * US })
    );
    // The data lane was never needed.
    assert_eq!(sim.node(nid(1)).stats().frames_sent, 2);
}

#[test]
fn a_cut_link_times_out_in_the_right_place() {
    let mut sim = sim_with(3, 1);
    sim.attach(nid(2), MatchEntry::sink(4, 7, 100));
    let op = sim.put(nid(1), put(2, 4, b"first"));
    assert!(run_to_completion(&mut sim, nid(1), op).1.is_ok());
    // Established connection, cable pulled: the PUT is sent and never answered.
    sim.fabric().set_cut(nid(1), nid(2), true);
    let op = sim.put(
        nid(1),
        PutRequest {
            timeout: Some(50 * MS),
            ..put(2, 4, b"lost")
        },
    );
    assert_eq!(
        run_to_completion(&mut sim, nid(1), op).1,
        Err(OpError::RemoteTimeout)
    );
    // A new connection across a cut link never comes up.
    sim.fabric().set_cut(nid(1), nid(3), true);
    sim.fabric().set_connect_timeout(20 * MS);
    let op = sim.put(
        nid(1),
        PutRequest {
            timeout: Some(50 * MS),
            ..put(3, 4, b"x")
        },
    );
    let (at, r) = run_to_completion(&mut sim, nid(1), op);
    assert!(
        matches!(&r, Err(OpError::Network(m)) if m.contains("timed out")),
        "{r:?}"
    );
    assert!(at < sim.now() + 50 * MS);
    // Healed, the next PUT to node 2 on the old connection works again.
    sim.fabric().set_cut(nid(1), nid(2), false);
    let op = sim.put(nid(1), put(2, 4, b"back"));
    assert_eq!(
        run_to_completion(&mut sim, nid(1), op).1,
        Ok(OpOutcome::Put { mlen: 4 })
    );
}

#[test]
fn a_killed_peer_fails_what_was_in_flight_and_a_restart_is_noticed() {
    let mut sim = sim_with(2, 1);
    sim.attach(nid(2), MatchEntry::sink(4, 7, 100));
    let op = sim.put(nid(1), put(2, 4, b"hello"));
    assert!(run_to_completion(&mut sim, nid(1), op).1.is_ok());
    let in_flight = sim.put(nid(1), put(2, 4, b"doomed"));
    sim.run_for(50 * US); // the PUT is on the wire
    sim.kill(nid(2));
    let (_, r) = run_to_completion(&mut sim, nid(1), in_flight);
    assert!(
        matches!(&r, Err(OpError::Network(m)) if m.contains("went away")),
        "{r:?}"
    );
    // Nothing listens any more: refused.
    let op = sim.put(nid(1), put(2, 4, b"anyone?"));
    let (_, r) = run_to_completion(&mut sim, nid(1), op);
    assert!(
        matches!(&r, Err(OpError::Remote(m)) if m.contains("refused")),
        "{r:?}"
    );
    // Back with a new incarnation: a restart, not just a reconnection.
    sim.add_node(nid(2), NodeConfig::new(2002)).unwrap();
    sim.attach(nid(2), MatchEntry::sink(4, 7, 100));
    let op = sim.put(nid(1), put(2, 4, b"again"));
    sim.run_for(10 * MS);
    let events = sim.take_events(nid(1));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::PeerRestarted {
                peer,
                old: 1002,
                new: 2002,
                ..
            } if *peer == nid(2)
        )),
        "{events:?}"
    );
    let done = Completion {
        op,
        result: Ok(OpOutcome::Put { mlen: 5 }),
    };
    assert!(events.contains(&Event::Completed(done)));
    assert!(sim.ledger().violations().is_empty());
}

#[test]
fn ledger_catches_double_unknown_and_missing_completions() {
    let mut l = Ledger::default();
    let (a, b) = (nid(1), nid(2));
    l.submitted(a, OpId(1));
    l.submitted(a, OpId(2));
    l.submitted(b, OpId(1));
    let ok = |op| Completion {
        op,
        result: Err(OpError::Cancelled),
    };
    l.completed(a, &ok(OpId(1)));
    assert!(l.violations().is_empty());
    l.completed(a, &ok(OpId(1)));
    l.completed(a, &ok(OpId(9)));
    assert_eq!(l.violations().len(), 2, "{:?}", l.violations());
    assert_eq!(l.outstanding(), vec![(a, OpId(2)), (b, OpId(1))]);
    l.forget(b);
    assert_eq!(l.outstanding(), vec![(a, OpId(2))]);
    assert_eq!(l.counts(), (2, 3));
}

/// Random operations between random nodes under random faults: loss, jitter, cuts, resets,
/// kills and restarts. Every operation must complete exactly once.
fn chaos(seed: u64, ops: usize) -> (Sim, Vec<String>) {
    let mut rng = SplitMix64::new(seed);
    let mut sim = Sim::new(seed);
    let n = 6u32;
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
    let start = |sim: &mut Sim, i: u32, inc: u64| {
        let mut c = cfg.clone();
        c.incarnation = inc;
        // Odd nodes defer payloads over 500 bytes, as an RDMA driver would.
        let inline_max = (i % 2 == 1).then_some(500);
        let lnd = MemLndConfig {
            inline_max,
            ..MemLndConfig::for_node(&c)
        };
        sim.add_node_with(nid(i), c, lnd).unwrap();
        let sink = sim.attach(nid(i), MatchEntry::sink(1, 7, 1000));
        let data = Bytes::from_static(&[9; 3000]);
        let source = sim.attach(nid(i), MatchEntry::source(2, 7, data));
        [(nid(i), sink), (nid(i), source)]
    };
    for i in 1..=n {
        entries.extend(start(&mut sim, i, incarnation));
        incarnation += 1;
    }
    let mut submitted: Vec<(Nid, OpId)> = Vec::new();
    let mut trace = Vec::new();
    for _ in 0..ops {
        let from = nid(1 + rng.below(u64::from(n)) as u32);
        let mut to = nid(1 + rng.below(u64::from(n)) as u32);
        if to == from && rng.chance(0.95) {
            to = nid(1 + (from.addr_num() % n)); // mostly someone else; sometimes oneself
        }
        let roll = rng.below(100);
        if !sim.is_alive(from) {
            if roll < 20 {
                entries.extend(start(&mut sim, from.addr_num(), incarnation));
                incarnation += 1;
            }
        } else if roll < 55 {
            let len = rng.below(1500) as usize;
            let op = sim.put(
                from,
                PutRequest {
                    lane: Lane::Data,
                    dst: to,
                    portal: rng.below(3) as u32,
                    match_bits: 7,
                    payload: Bytes::from(vec![1; len]),
                    timeout: Some(Duration::from_micros(1 + rng.below(40_000))),
                    on_peer_down: Default::default(),
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
            sim.fabric().set_cut(from, to, rng.chance(0.4));
        } else if roll < 97 {
            sim.fabric().reset_connections(from, to);
        } else if roll < 98 {
            sim.fabric().set_link(
                from,
                to,
                LinkFaults {
                    loss: 0.05,
                    ..sim.fabric().link(from, to)
                },
            );
        } else if rng.chance(0.1) && (1..=n).filter(|&i| sim.is_alive(nid(i))).count() > 2 {
            sim.kill(from);
        }
        sim.run_for(Duration::from_micros(rng.below(300)));
        for i in 1..=n {
            for e in sim.take_events(nid(i)) {
                trace.push(format!("{} {} {e:?}", sim.now().0, nid(i)));
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
    for i in 1..=n {
        sim.shutdown(nid(i));
    }
    assert!(
        sim.run_until_idle(Duration::from_secs(60)),
        "the simulation never went quiet"
    );
    (sim, trace)
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

trait AddrNum {
    fn addr_num(&self) -> u32;
}

impl AddrNum for Nid {
    fn addr_num(&self) -> u32 {
        match self.addr {
            crate::nid::NidAddr::Num(n) => n,
            _ => unreachable!("mem NIDs are numbers"),
        }
    }
}

#[test]
fn thousands_of_random_operations_under_faults_each_complete_exactly_once() {
    for seed in [1, 2, 3] {
        let (sim, trace) = chaos(seed, 4000);
        let ledger = sim.ledger();
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
        // Nothing is corrupted here: a protocol error is a bug (e.g. a lane whose credits
        // were rebuilt while in use, so the peer later returned more than it held).
        assert_eq!(sim.protocol_errors(), 0, "seed {seed}");
        assert!(
            submitted > 3000,
            "seed {seed}: only {submitted} ops survived"
        );
        let stats = sim.fabric().stats();
        assert!(
            stats.lost > 0 && stats.cut > 0,
            "seed {seed}: faults were injected: {stats:?}"
        );
        let outcomes = outcome_counts(&trace);
        eprintln!("seed {seed}: {submitted} ops, {stats:?}, outcomes {outcomes:?}");
        // The mix exercises success and every common failure path.
        for kind in [
            "Ok(Put",
            "Ok(Get",
            "Ok(Pong",
            "Ok(Unlinked",
            "Rejected",
            "Timeout",
            "Cancelled",
            "Network(",
        ] {
            assert!(
                outcomes.iter().any(|(k, n)| k.contains(kind) && *n > 0),
                "seed {seed}: no {kind}: {outcomes:?}"
            );
        }
    }
}

#[test]
fn same_seed_same_run() {
    let (a, ta) = chaos(42, 1500);
    let (b, tb) = chaos(42, 1500);
    assert_eq!(ta, tb);
    assert_eq!(a.fabric().stats(), b.fabric().stats());
    assert_eq!(a.now(), b.now());
    let (_, tc) = chaos(43, 1500);
    assert_ne!(ta, tc, "a different seed is a different run");
}
