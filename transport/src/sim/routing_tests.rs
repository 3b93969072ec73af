//! Routing on the virtual clock: clients and servers on different nets, routers with an NI
//! on each, frames forwarded with their ends unchanged, answers taking any usable way
//! back, refusals (NACK) and resends, loops ending at the hop limit.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::health::PeerState;
use crate::lane::Lane;
use crate::mem::{LinkFaults, MemLndConfig};
use crate::nid::Net;
use crate::node::Route;
use crate::op::{OpError, OpOutcome, RouteDownReason};
use crate::wire::{AbsentReason, RouterState};

const US: Duration = Duration::from_micros(1);

/// Node `n` on mem net `net`.
pub(super) fn on(net: u16, n: u32) -> Nid {
    Nid::mem(n, net)
}

fn net(n: u16) -> Net {
    on(n, 0).net()
}

pub(super) fn route(to: u16, gateway: Nid, hops: u8) -> Route {
    Route {
        net: net(to),
        gateway,
        hops,
        priority: 0,
    }
}

pub(super) fn sim() -> Sim {
    seeded_sim(5)
}

/// A simulation from `seed` whose links take 10 us.
pub(super) fn seeded_sim(seed: u64) -> Sim {
    let sim = Sim::new(seed);
    sim.fabric().set_default_link(LinkFaults {
        delay: 10 * US,
        ..LinkFaults::default()
    });
    sim
}

pub(super) fn cfg(incarnation: u64) -> NodeConfig {
    NodeConfig::new(incarnation)
}

pub(super) fn router_cfg(incarnation: u64) -> NodeConfig {
    NodeConfig {
        forwarding: true,
        router: crate::config::RouterConfig {
            warm_up: Duration::ZERO,
            ..Default::default()
        },
        ..NodeConfig::new(incarnation)
    }
}

/// Starts a router with an NI on each of `nets`, numbered `n` on each.
fn add_router(sim: &mut Sim, n: u32, nets: &[u16], lnd: Option<MemLndConfig>) -> Nid {
    let nids: Vec<Nid> = nets.iter().map(|&k| on(k, n)).collect();
    let c = router_cfg(u64::from(n) * 100);
    let lnd = lnd.unwrap_or_else(|| MemLndConfig::for_node(&c));
    sim.add_node_on(&nids, c, lnd).unwrap();
    nids[0]
}

fn run_to_completion(sim: &mut Sim, at: Nid, op: OpId) -> Result<OpOutcome, OpError> {
    for _ in 0..1_000_000 {
        // A step settles what is pending even when nothing is scheduled after it (an op
        // that failed as it was submitted): look at the events before giving up.
        let stepped = sim.step();
        let done = sim.take_events(at).into_iter().find_map(|e| match e {
            Event::Completed(c) if c.op == op => Some(c.result),
            _ => None,
        });
        if let Some(done) = done {
            return done;
        }
        assert!(stepped, "{op} pending, yet nothing is scheduled");
    }
    panic!("{op} never completed");
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

pub(super) fn put(dst: Nid, portal: u32, payload: Bytes) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst,
        portal,
        match_bits: 1,
        payload,
        timeout: None,
        on_peer_down: Default::default(),
        ack: true,
    }
}

fn get(dst: Nid, portal: u32, want_len: u32) -> GetRequest {
    GetRequest {
        lane: Lane::Data,
        dst,
        portal,
        match_bits: 1,
        want_len,
        timeout: None,
        on_peer_down: Default::default(),
    }
}

fn ping(dst: Nid) -> PingRequest {
    PingRequest {
        dst,
        lane: Lane::Health,
        timeout: None,
        on_peer_down: Default::default(),
    }
}

/// PUTs and GETs of 0 B to 16 MiB from `client` to `server` (data checked at both ends),
/// and a PING, through whatever routers the routes name.
fn exchange_every_size(sim: &mut Sim, client: Nid, server: Nid) {
    let big = pattern(16 << 20, 3);
    sim.attach(server, MatchEntry::sink(4, 1, 16 << 20));
    sim.attach(server, MatchEntry::source(5, 1, big.clone()));
    for len in [0, 1, 100, 4_000, 65_536, 1 << 20, 16 << 20] {
        let data = pattern(len, len as u8);
        let op = sim.put(client, put(server, 4, data.clone()));
        assert_eq!(
            run_to_completion(sim, client, op),
            Ok(OpOutcome::Put { mlen: len as u32 }),
            "PUT of {len} bytes"
        );
        let delivered = sim.take_events(server).into_iter().find_map(|e| match e {
            Event::Delivered(d) => Some(d),
            _ => None,
        });
        let d = delivered.expect("delivered");
        assert_eq!(d.from, client, "the initiator, not the router");
        assert!(d.payload == data, "PUT of {len} bytes corrupted");
        let op = sim.get(client, get(server, 5, len as u32));
        match run_to_completion(sim, client, op) {
            Ok(OpOutcome::Get { data }) => {
                assert!(data == big.slice(..len), "GET of {len} bytes corrupted")
            }
            other => panic!("GET of {len} bytes: {other:?}"),
        }
    }
    let op = sim.ping(client, ping(server));
    assert!(matches!(
        run_to_completion(sim, client, op),
        Ok(OpOutcome::Pong { .. })
    ));
}

/// Net 1 (client) and net 2 (server), router 9 on both. Every LND defers large payloads,
/// as RDMA does: the router fetches them into its own buffers before passing them on.
fn across_one_deferring_router() -> (Sim, Nid, Nid) {
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    let deferring = |c: &NodeConfig| MemLndConfig {
        inline_max: Some(4096),
        ..MemLndConfig::for_node(c)
    };
    sim.add_node_with(client, cfg(1), deferring(&cfg(1)))
        .unwrap();
    sim.add_node_with(server, cfg(2), deferring(&cfg(2)))
        .unwrap();
    add_router(&mut sim, 9, &[1, 2], Some(deferring(&router_cfg(900))));
    sim.add_route(client, route(2, on(1, 9), 1)).unwrap();
    sim.add_route(server, route(1, on(2, 9), 1)).unwrap();
    (sim, client, server)
}

#[test]
fn puts_gets_and_pings_cross_one_router_with_data_intact() {
    let (mut sim, client, server) = across_one_deferring_router();
    exchange_every_size(&mut sim, client, server);
    let r = sim.node(on(1, 9)).stats().clone();
    assert!(r.forwarded >= 30, "{r:?}");
    assert_eq!((r.nacks_sent, r.protocol_errors), (0, 0), "{r:?}");
    assert_eq!(sim.protocol_errors(), 0);
}

#[test]
fn puts_without_ack_cross_a_router_once_each_and_nothing_comes_back() {
    let (mut sim, client, server) = across_one_deferring_router();
    sim.attach(server, MatchEntry::sink(4, 1, 1 << 20));
    let sizes = [0, 100, 65_536, 1 << 20];
    for (i, &len) in sizes.iter().enumerate() {
        let req = PutRequest {
            ack: false,
            ..put(server, 4, pattern(len, i as u8))
        };
        let op = sim.put(client, req);
        assert_eq!(
            run_to_completion(&mut sim, client, op),
            Ok(OpOutcome::Sent { len: len as u32 }),
            "PUT of {len} bytes"
        );
    }
    sim.run_for(Duration::from_millis(100));
    let delivered: Vec<Bytes> = sim
        .take_events(server)
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered(d) => Some(d.payload),
            _ => None,
        })
        .collect();
    let sent: Vec<Bytes> = (0..sizes.len())
        .map(|i| pattern(sizes[i], i as u8))
        .collect();
    assert!(delivered == sent, "each PUT delivered once, in order");
    let s = sim.node(server).stats().clone();
    assert_eq!(
        s.lanes[Lane::Data].frames_sent,
        s.credit_frames_sent,
        "no ACK: {s:?}"
    );
    assert_eq!(sim.node(client).stats().late_responses, 0);
    assert_eq!(sim.protocol_errors(), 0);
}

#[test]
fn puts_gets_and_pings_cross_two_routers_in_series() {
    // Net 1 - router 8 - net 2 - router 9 - net 3.
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(3, 3));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(3)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let r9 = add_router(&mut sim, 9, &[2, 3], None);
    sim.add_route(client, route(3, on(1, 8), 2)).unwrap();
    sim.add_route(client, route(2, on(1, 8), 1)).unwrap();
    sim.add_route(r8, route(3, on(2, 9), 1)).unwrap();
    sim.add_route(r9, route(1, on(2, 8), 1)).unwrap();
    sim.add_route(server, route(1, on(3, 9), 2)).unwrap();
    sim.add_route(server, route(2, on(3, 9), 1)).unwrap();
    exchange_every_size(&mut sim, client, server);
    for r in [r8, r9] {
        let s = sim.node(r).stats().clone();
        assert!(s.forwarded >= 30, "{r}: {s:?}");
    }
    assert_eq!(sim.protocol_errors(), 0);
}

#[test]
fn answers_return_by_another_router_than_the_request_took() {
    // The client knows only router 8, the server only router 9: every request goes out
    // through 8 and every answer comes back through 9.
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(2)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let r9 = add_router(&mut sim, 9, &[1, 2], None);
    sim.add_route(client, route(2, on(1, 8), 1)).unwrap();
    sim.add_route(server, route(1, on(2, 9), 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 100));
    for i in 0..10 {
        let op = sim.put(client, put(server, 4, pattern(50, i)));
        assert_eq!(
            run_to_completion(&mut sim, client, op),
            Ok(OpOutcome::Put { mlen: 50 })
        );
    }
    let (s8, s9) = (sim.node(r8).stats().clone(), sim.node(r9).stats().clone());
    assert_eq!((s8.forwarded, s9.forwarded), (10, 10), "{s8:?} {s9:?}");
}

#[test]
fn equal_gateways_share_the_load_and_priority_decides_between_unequal_ones() {
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(2)).unwrap();
    let r7 = add_router(&mut sim, 7, &[1, 2], None);
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let r9 = add_router(&mut sim, 9, &[1, 2], None);
    sim.add_route(client, route(2, on(1, 8), 1)).unwrap();
    sim.add_route(client, route(2, on(1, 9), 1)).unwrap();
    sim.add_route(
        client,
        Route {
            priority: 1,
            ..route(2, on(1, 7), 1)
        },
    )
    .unwrap();
    sim.add_route(server, route(1, on(2, 7), 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 100));
    for i in 0..20 {
        let op = sim.put(client, put(server, 4, pattern(10, i)));
        assert!(run_to_completion(&mut sim, client, op).is_ok());
    }
    let f = |r| sim.node(r).stats().forwarded;
    // Requests: 8 and 9 take turns, 7 (lower priority) none; answers all go back by 7.
    assert_eq!((f(r8), f(r9), f(r7)), (10, 10, 20));
}

#[test]
fn a_refused_request_is_resent_through_another_router_at_once() {
    // Router 8 has no way to net 3; router 9 has. The client's first try through 8 is
    // refused (NACK: no route), and it goes through 9 straight away.
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(3, 3));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(3)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    add_router(&mut sim, 9, &[1, 3], None);
    sim.add_route(client, route(3, on(1, 8), 1)).unwrap();
    sim.add_route(client, route(3, on(1, 9), 1)).unwrap();
    sim.add_route(server, route(1, on(3, 9), 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 100));
    let mut via_8 = 0;
    for i in 0..6 {
        let before = sim.node(r8).stats().nacks_sent;
        let start = sim.now();
        let op = sim.put(client, put(server, 4, pattern(10, i)));
        assert_eq!(
            run_to_completion(&mut sim, client, op),
            Ok(OpOutcome::Put { mlen: 10 })
        );
        if sim.node(r8).stats().nacks_sent > before {
            via_8 += 1;
            // Refused and resent without waiting for anything but the NACK: the whole
            // exchange takes a handful of 10 us hops, not a timeout.
            assert!(
                sim.now() - start < Duration::from_millis(1),
                "{:?}",
                sim.now() - start
            );
        }
    }
    let c = sim.node(client).stats().clone();
    assert!(via_8 >= 1, "round robin sent some through 8");
    assert_eq!((c.nacks_received, c.resent), (via_8, via_8), "{c:?}");
    assert_eq!(sim.node(r8).stats().forwarded, 0);
}

#[test]
fn a_routing_loop_ends_in_a_refusal_not_a_storm() {
    // Misconfigured: three routers send net 3 round in a circle, 7 -> 8 -> 9 -> 7.
    let mut sim = sim();
    let client = on(1, 1);
    sim.add_node(client, cfg(1)).unwrap();
    let r7 = add_router(&mut sim, 7, &[1, 2, 6], None);
    let r8 = add_router(&mut sim, 8, &[2, 5], None);
    let r9 = add_router(&mut sim, 9, &[5, 6], None);
    sim.add_route(client, route(3, on(1, 7), 3)).unwrap();
    sim.add_route(r7, route(3, on(2, 8), 2)).unwrap();
    sim.add_route(r8, route(3, on(5, 9), 2)).unwrap();
    sim.add_route(r9, route(3, on(6, 7), 2)).unwrap();
    // The way back to the client is sound.
    sim.add_route(r8, route(1, on(2, 7), 1)).unwrap();
    sim.add_route(r9, route(1, on(6, 7), 1)).unwrap();
    let op = sim.put(client, put(on(3, 3), 4, pattern(10, 1)));
    match run_to_completion(&mut sim, client, op) {
        Err(OpError::Network(m)) => assert!(m.contains("hop limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    // It went round no more than the hop limit allows, then one router refused it.
    let f = |r| sim.node(r).stats().forwarded;
    let n = |r| sim.node(r).stats().nacks_sent;
    assert_eq!(
        f(r7) + f(r8) + f(r9),
        u64::from(crate::wire::DEFAULT_HOP_LIMIT) + 1,
        "8 hops out, 1 for the NACK back"
    );
    assert_eq!(n(r7) + n(r8) + n(r9), 1);

    // Two routers pointing at each other never even start: a router does not send a
    // frame back where it came from, so the second refuses at once (no route).
    let mut sim = self::sim();
    sim.add_node(client, cfg(1)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let r9 = add_router(&mut sim, 9, &[2, 4], None);
    sim.add_route(client, route(3, on(1, 8), 2)).unwrap();
    sim.add_route(r8, route(3, on(2, 9), 1)).unwrap();
    sim.add_route(r9, route(3, on(2, 8), 1)).unwrap();
    sim.add_route(r9, route(1, on(2, 8), 1)).unwrap();
    let op = sim.put(client, put(on(3, 3), 4, pattern(10, 1)));
    assert_eq!(
        run_to_completion(&mut sim, client, op),
        Err(OpError::NoRoute(on(3, 3)))
    );
    assert_eq!(sim.node(r9).stats().nacks_sent, 1);
}

#[test]
fn a_node_that_does_not_forward_refuses_and_nothing_routes_to_an_unknown_net() {
    let mut sim = sim();
    let (client, bystander) = (on(1, 1), on(1, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node_on(
        &[bystander, on(2, 2)],
        cfg(2),
        MemLndConfig::for_node(&cfg(2)),
    )
    .unwrap();
    // The client mistakes a two-NI end node for a router.
    sim.add_route(client, route(2, bystander, 1)).unwrap();
    let op = sim.put(client, put(on(2, 5), 4, pattern(10, 1)));
    match run_to_completion(&mut sim, client, op) {
        Err(OpError::Network(m)) => assert!(m.contains("does not forward"), "{m}"),
        other => panic!("{other:?}"),
    }
    let op = sim.put(client, put(on(7, 5), 4, pattern(10, 1)));
    assert_eq!(
        run_to_completion(&mut sim, client, op),
        Err(OpError::NoRoute(on(7, 5)))
    );
    // Routes are checked: the gateway must be on one of our nets, the net not ours.
    assert!(sim.add_route(client, route(2, on(5, 9), 1)).is_err());
    assert!(sim.add_route(client, route(1, bystander, 1)).is_err());
}

/// The round trip of one PING from `client` to `server` on `lane`, started now.
fn ping_rtt(sim: &mut Sim, client: Nid, server: Nid, lane: Lane) -> Duration {
    let op = sim.ping(
        client,
        PingRequest {
            lane,
            ..ping(server)
        },
    );
    match run_to_completion(sim, client, op) {
        Ok(OpOutcome::Pong { rtt }) => rtt,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_health_lane_keeps_its_priority_through_a_router() {
    let (mut sim, client, server) = one_router();
    sim.attach(server, MatchEntry::sink(4, 1, 1 << 20));
    ping_rtt(&mut sim, client, server, Lane::Health); // connections up
    let idle = ping_rtt(&mut sim, client, server, Lane::Health);
    // Saturate the data lane through the router: far more PUTs than credits, so queues
    // form at the client and at the router.
    let load = |sim: &mut Sim| {
        for i in 0..400u32 {
            sim.put(client, put(server, 4, pattern(64 << 10, i as u8)));
        }
    };
    load(&mut sim);
    sim.run_for(20 * US);
    let loaded = ping_rtt(&mut sim, client, server, Lane::Health);
    sim.run_for(Duration::from_secs(1));
    load(&mut sim);
    sim.run_for(20 * US);
    let single_lane = ping_rtt(&mut sim, client, server, Lane::Data);
    eprintln!("health lane through a router: idle {idle:?}, loaded {loaded:?}, single lane {single_lane:?}");
    // Four 10 us hops idle; the health lane stays within a small factor of that under
    // load, while a ping on the data lane waits behind the queue.
    assert!(loaded <= 3 * idle, "idle {idle:?}, loaded {loaded:?}");
    assert!(
        single_lane >= 10 * loaded,
        "loaded {loaded:?}, single lane {single_lane:?}"
    );
}

/// A client and a server on nets 1 and 2, routers 8 and 9 on both, every route through
/// both; the server takes PUTs on portal 4.
fn two_routers() -> (Sim, Nid, Nid, Nid, Nid) {
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(2)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let r9 = add_router(&mut sim, 9, &[1, 2], None);
    for gw in [8, 9] {
        sim.add_route(client, route(2, on(1, gw), 1)).unwrap();
        sim.add_route(server, route(1, on(2, gw), 1)).unwrap();
    }
    sim.attach(server, MatchEntry::sink(4, 1, 64));
    (sim, client, server, r8, r9)
}

/// Submits `n` PUTs, each carrying its own index, from `client` to `server`.
fn puts_in_flight(sim: &mut Sim, client: Nid, server: Nid, n: u32) -> Vec<OpId> {
    (0..n)
        .map(|i| {
            let payload = Bytes::from(i.to_le_bytes().to_vec());
            sim.put(client, put(server, 4, payload))
        })
        .collect()
}

/// What [`settle_all`] saw: each op's result, how many times the server got each index,
/// and when the last op completed.
type Settled = (
    Vec<Result<OpOutcome, OpError>>,
    std::collections::BTreeMap<u32, u32>,
    Time,
);

/// Runs until every op of `ops` completed at `client` (then a little longer, for late
/// copies to show).
fn settle_all(sim: &mut Sim, client: Nid, server: Nid, ops: &[OpId]) -> Settled {
    let mut done: FxHashMap<OpId, Result<OpOutcome, OpError>> = FxHashMap::default();
    let mut delivered = std::collections::BTreeMap::new();
    let mut steps = 0;
    while done.len() < ops.len() {
        assert!(sim.step(), "ops pending, yet nothing is scheduled");
        steps += 1;
        assert!(steps < 10_000_000, "never settled");
        for e in sim.take_events(client) {
            if let Event::Completed(c) = e {
                assert!(done.insert(c.op, c.result).is_none(), "{} twice", c.op);
            }
        }
        for e in sim.take_events(server) {
            if let Event::Delivered(d) = e {
                let i = u32::from_le_bytes(d.payload[..4].try_into().unwrap());
                *delivered.entry(i).or_default() += 1;
            }
        }
    }
    let last = sim.now();
    sim.run_for(Duration::from_millis(50));
    for e in sim.take_events(server) {
        if let Event::Delivered(d) = e {
            let i = u32::from_le_bytes(d.payload[..4].try_into().unwrap());
            *delivered.entry(i).or_default() += 1;
        }
    }
    (
        ops.iter().map(|op| done[op].clone()).collect(),
        delivered,
        last,
    )
}

#[test]
fn a_router_killed_with_a_thousand_operations_in_flight_costs_nothing_but_latency() {
    let (mut sim, client, server, r8, _r9) = two_routers();
    // Connections up, so the thousand go out at once.
    let warm = puts_in_flight(&mut sim, client, server, 2);
    let _ = settle_all(&mut sim, client, server, &warm);
    let ops = puts_in_flight(&mut sim, client, server, 1000);
    // Let some get through router 8, some be in it, some wait for it, then kill it.
    sim.run_for(60 * US);
    let in_8 = sim.node(r8).stats().forwarded;
    sim.kill(r8);
    let start = sim.now();
    let (results, delivered, last) = settle_all(&mut sim, client, server, &ops);
    let took = last - start;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(OpOutcome::Put { mlen: 4 }))),
        "{:?}",
        results
            .iter()
            .filter(|r| r.is_err())
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(delivered.len(), 1002 - 2, "every one delivered");
    assert!(
        delivered.values().all(|&n| n == 1),
        "delivered twice: {:?}",
        delivered
            .iter()
            .filter(|(_, &n)| n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let c = sim.node(client).stats().clone();
    let s = sim.node(server).stats().clone();
    eprintln!(
        "router killed after forwarding {in_8} frames: client resent {}, server answered {} \
         copies again, all done {took:?} after the kill",
        c.resent, s.duplicates_answered
    );
    assert!(in_8 > 0 && c.resent > 0, "{in_8} {c:?}");
    // Some copies reached the server again: the at-most-once path did run.
    assert!(s.duplicates_answered > 0, "{s:?}");
    assert!(sim.ledger().violations().is_empty());
    assert_eq!(sim.protocol_errors(), 0);
}

#[test]
fn a_router_gone_silent_is_declared_down_and_its_operations_resent() {
    let (mut sim, client, server, r8, _r9) = two_routers();
    let warm = puts_in_flight(&mut sim, client, server, 2);
    let _ = settle_all(&mut sim, client, server, &warm);
    let ops = puts_in_flight(&mut sim, client, server, 200);
    sim.run_for(30 * US);
    // Router 8's links go dead without a word: connections stay "up", frames vanish.
    for peer in [client, server] {
        let near = if peer == client { on(1, 8) } else { on(2, 8) };
        sim.fabric().set_cut(peer, near, true);
    }
    let start = sim.now();
    let (results, delivered, last) = settle_all(&mut sim, client, server, &ops);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert!(delivered.values().all(|&n| n == 1));
    assert_eq!(delivered.len(), 200);
    // Detection took the client three 100 ms intervals, then the resend went at once.
    let took = last - start;
    assert!(took < Duration::from_secs(1), "{took:?}");
    let downs = sim.node(client).health_stats().downs;
    assert!(downs >= 1, "router 8 declared down");
    let _ = r8;
}

/// The preferred router (a better priority) goes silent while the client watches the
/// server behind it: the client's PINGs to the server go by the other router once the
/// first is Suspect, so the server, alive, is never declared Down with it (which would
/// fail its operations with `PeerDead` rather than resend them).
#[test]
fn a_preferred_router_gone_silent_takes_no_live_server_down_with_it() {
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(2)).unwrap();
    let r8 = add_router(&mut sim, 8, &[1, 2], None);
    let _r9 = add_router(&mut sim, 9, &[1, 2], None);
    for (gw, priority) in [(8, 0), (9, 1)] {
        let to_server = Route {
            priority,
            ..route(2, on(1, gw), 1)
        };
        let to_client = Route {
            priority,
            ..route(1, on(2, gw), 1)
        };
        sim.add_route(client, to_server).unwrap();
        sim.add_route(server, to_client).unwrap();
    }
    sim.attach(server, MatchEntry::sink(4, 1, 64));
    let warm = puts_in_flight(&mut sim, client, server, 2);
    let _ = settle_all(&mut sim, client, server, &warm);
    assert!(sim.node(r8).stats().forwarded > 0, "router 8 preferred");
    sim.take_events(client);
    let ops = puts_in_flight(&mut sim, client, server, 50);
    sim.run_for(30 * US);
    for peer in [client, server] {
        let near = if peer == client { on(1, 8) } else { on(2, 8) };
        sim.fabric().set_cut(peer, near, true);
    }
    let (results, delivered, _) = settle_all(&mut sim, client, server, &ops);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert!(delivered.values().all(|&n| n == 1));
    assert_eq!(delivered.len(), 50);
    sim.run_for(Duration::from_secs(1));
    let node = sim.node(client);
    let state = |peer| node.peer_health(peer).map(|h| h.state);
    assert_eq!(state(on(1, 8)), Some(PeerState::Down));
    assert_ne!(state(server), Some(PeerState::Down));
    assert_eq!(node.health_stats().downs, 1, "only the router was Down");
}

/// Route events `at` reported since the last look: (up?, net, gateway, reason).
fn route_events(sim: &mut Sim, at: Nid) -> Vec<(bool, Net, Nid, Option<RouteDownReason>)> {
    sim.take_events(at)
        .into_iter()
        .filter_map(|e| match e {
            Event::RouteUp { net, gateway, .. } => Some((true, net, gateway, None)),
            Event::RouteDown {
                net,
                gateway,
                reason,
                ..
            } => Some((false, net, gateway, Some(reason))),
            _ => None,
        })
        .collect()
}

/// `n` PUTs from `client` to `server`, each run to completion (all must succeed).
fn puts_one_by_one(sim: &mut Sim, client: Nid, server: Nid, n: u8) {
    for i in 0..n {
        let op = sim.put(client, put(server, 4, pattern(4, i)));
        assert!(run_to_completion(sim, client, op).is_ok());
    }
}

#[test]
fn a_gateway_that_says_it_is_absent_is_skipped_from_the_next_operation_on() {
    let (mut sim, client, server, r8, r9) = two_routers();
    puts_one_by_one(&mut sim, client, server, 10);
    let f = |sim: &Sim, r| sim.node(r).stats().forwarded;
    assert!(f(&sim, r8) > 0 && f(&sim, r9) > 0, "both in use");
    route_events(&mut sim, client);

    sim.set_router_state(r8, RouterState::Absent(AbsentReason::Administrator));
    sim.run_for(Duration::from_millis(1)); // the push reaches the nodes using it
    let absent = Some(RouteDownReason::Absent(AbsentReason::Administrator));
    assert_eq!(
        route_events(&mut sim, client),
        vec![(false, net(2), on(1, 8), absent)]
    );
    assert!(matches!(
        sim.node(client).gateway_status(on(1, 8)).map(|s| s.state),
        Some(RouterState::Absent(AbsentReason::Administrator))
    ));
    let before = f(&sim, r8);
    puts_one_by_one(&mut sim, client, server, 20);
    assert_eq!(
        f(&sim, r8),
        before,
        "nothing more through the absent router"
    );
    // Alive but absent: its own pings are answered, and nobody declares it down.
    let op = sim.ping(client, ping(on(1, 8)));
    assert!(matches!(
        run_to_completion(&mut sim, client, op),
        Ok(OpOutcome::Pong { .. })
    ));

    sim.set_router_state(r8, RouterState::Forwarding);
    sim.run_for(Duration::from_millis(200)); // a push waits out the push interval
    assert_eq!(
        route_events(&mut sim, client),
        vec![(true, net(2), on(1, 8), None)]
    );
    puts_one_by_one(&mut sim, client, server, 10);
    assert!(f(&sim, r8) > before, "back in use");
}

#[test]
fn a_router_that_cannot_reach_a_peer_is_skipped_for_that_peer_only() {
    let (mut sim, client, server, r8, r9) = two_routers();
    let other = on(2, 3);
    sim.add_node(other, cfg(3)).unwrap();
    for gw in [8, 9] {
        sim.add_route(other, route(1, on(2, gw), 1)).unwrap();
    }
    sim.attach(other, MatchEntry::sink(4, 1, 64));
    puts_one_by_one(&mut sim, client, server, 4);
    puts_one_by_one(&mut sim, client, other, 4);
    // Router 8 loses the server (its link alone is cut) and, watching it, finds it Down.
    sim.watch(r8, server).unwrap();
    sim.fabric().set_cut(on(2, 8), server, true);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.node(r8).router_status().unreachable, vec![server]);
    assert_eq!(
        sim.node(client)
            .gateway_status(on(1, 8))
            .map(|s| s.unreachable.clone()),
        Some(vec![server]),
        "pushed to the client"
    );
    let f = |sim: &Sim, r| sim.node(r).stats().forwarded;
    let (b8, b9) = (f(&sim, r8), f(&sim, r9));
    puts_one_by_one(&mut sim, client, server, 10);
    assert_eq!(f(&sim, r8), b8, "not through router 8 to the server");
    assert!(f(&sim, r9) >= b9 + 10);
    let b8 = f(&sim, r8);
    puts_one_by_one(&mut sim, client, other, 10);
    assert!(f(&sim, r8) > b8, "router 8 still serves the rest of net 2");
    // The route itself stays up: router 8 is alive and forwards.
    assert!(route_events(&mut sim, client).is_empty());
}

#[test]
fn a_silent_gateway_is_a_route_down_and_its_return_a_route_up() {
    let (mut sim, client, server, _r8, _r9) = two_routers();
    puts_one_by_one(&mut sim, client, server, 4);
    route_events(&mut sim, client);
    sim.watch(client, on(1, 8)).unwrap();
    sim.fabric().set_cut(client, on(1, 8), true);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(
        route_events(&mut sim, client),
        vec![(false, net(2), on(1, 8), Some(RouteDownReason::GatewayDown))]
    );
    sim.fabric().set_cut(client, on(1, 8), false);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        route_events(&mut sim, client),
        vec![(true, net(2), on(1, 8), None)]
    );
}

#[test]
fn greedy_senders_are_slowed_by_the_routers_pools_and_others_keep_their_share() {
    let mut sim = sim();
    let lanes = |c: &mut NodeConfig| {
        c.lanes[Lane::Data].peer_credits = 4;
        c.lanes[Lane::Data].credits_hiw = 2;
    };
    let (g1, g2, h, server) = (on(1, 1), on(1, 2), on(1, 3), on(2, 9));
    for (i, n) in [g1, g2, h, server].into_iter().enumerate() {
        let mut c = cfg(i as u64 + 1);
        lanes(&mut c);
        sim.add_node(n, c).unwrap();
    }
    let mut rc = router_cfg(700);
    lanes(&mut rc);
    rc.router_buffers = crate::node::PoolSizes {
        tiny: 64,
        small: 64,
        large: 8,
    };
    sim.add_node_on(
        &[on(1, 7), on(2, 7)],
        rc.clone(),
        MemLndConfig::for_node(&rc),
    )
    .unwrap();
    let r7 = on(1, 7);
    for n in [g1, g2, h] {
        sim.add_route(n, route(2, r7, 1)).unwrap();
    }
    sim.add_route(server, route(1, on(2, 7), 1)).unwrap();
    // The way out of the router is slow: frames pile up there.
    sim.fabric().set_link(
        on(2, 7),
        server,
        LinkFaults {
            delay: Duration::from_millis(1),
            ..LinkFaults::default()
        },
    );
    sim.attach(server, MatchEntry::sink(4, 1, 1 << 20));
    let big = pattern(64 << 10, 1);
    let mut ops = Vec::new();
    for n in [g1, g2] {
        for _ in 0..100 {
            ops.push((n, sim.put(n, put(server, 4, big.clone()))));
        }
    }
    sim.run_for(Duration::from_millis(5));
    let modest: Vec<OpId> = (0..10)
        .map(|_| sim.put(h, put(server, 4, big.clone())))
        .collect();
    ops.extend(modest.iter().map(|&op| (h, op)));
    // Run to the end, noting when each op completed.
    let mut done: FxHashMap<OpId, (Time, Result<OpOutcome, OpError>)> = FxHashMap::default();
    let mut most_in_use = 0;
    while done.len() < ops.len() {
        assert!(sim.step(), "stuck");
        let large = sim.node(r7).router_stats().pools[crate::node::PoolKind::Large as usize];
        most_in_use = most_in_use.max(large.in_use);
        for n in [g1, g2, h] {
            for (t, e) in sim.take_timed_events(n) {
                if let Event::Completed(c) = e {
                    done.insert(c.op, (t, c.result));
                }
            }
        }
    }
    assert!(done.values().all(|(_, r)| r.is_ok()), "nothing lost");
    let stats = sim.node(r7).router_stats();
    let large = stats.pools[crate::node::PoolKind::Large as usize];
    assert_eq!(most_in_use, 8, "memory bounded by the pool");
    assert!(large.waits > 0 && large.refused == 0, "{large:?}");
    assert_eq!(large.in_use, 0);
    // The modest sender's PUTs were not stuck behind the greedy ones'.
    let last = |n: Nid| {
        ops.iter()
            .filter(|(m, _)| *m == n)
            .map(|(_, op)| done[op].0)
            .max()
            .unwrap()
    };
    let (g_last, h_last) = (last(g1).max(last(g2)), last(h));
    eprintln!("pools: {large:?}; greedy done at {g_last:?}, modest at {h_last:?}");
    assert!(
        h_last.0 * 3 < g_last.0,
        "modest {h_last:?}, greedy {g_last:?}"
    );
    let per_peer: Vec<(Nid, u64)> = stats.peers.iter().map(|p| (p.peer, p.forwarded)).collect();
    assert!(per_peer.contains(&(h, 10)), "{per_peer:?}");
}

/// Client 1 on net 1, server 2 on net 2, router 9 on both, each node's only route through
/// it; the server takes PUTs on portal 4.
fn one_router() -> (Sim, Nid, Nid) {
    let mut sim = sim();
    let (client, server) = (on(1, 1), on(2, 2));
    sim.add_node(client, cfg(1)).unwrap();
    sim.add_node(server, cfg(2)).unwrap();
    add_router(&mut sim, 9, &[1, 2], None);
    sim.add_route(client, route(2, on(1, 9), 1)).unwrap();
    sim.add_route(server, route(1, on(2, 9), 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 64));
    (sim, client, server)
}

/// PUTs from `client` to `server`, one at a time and a second apart, until one succeeds:
/// the attempts it took, or `None` after `tries`.
fn put_until_one_succeeds(sim: &mut Sim, client: Nid, server: Nid, tries: u8) -> Option<u8> {
    for i in 1..=tries {
        let op = sim.put(client, put(server, 4, pattern(4, i)));
        if run_to_completion(sim, client, op).is_ok() {
            return Some(i);
        }
        sim.run_for(Duration::from_secs(1));
    }
    None
}

/// A server that only answers (sends nothing of its own) dies and stays away longer than
/// its router remembers the peers it served (ten detection times). Back, it is reached
/// again: the router, which knew it Down, probes it again when asked to forward to it,
/// rather than refuse every frame for it until its tables fill up.
#[test]
fn a_server_back_after_a_long_death_is_reached_again_through_its_router() {
    let (mut sim, client, server) = one_router();
    puts_one_by_one(&mut sim, client, server, 2);
    sim.kill(server);
    let op = sim.put(client, put(server, 4, pattern(4, 0)));
    assert!(run_to_completion(&mut sim, client, op).is_err());
    sim.run_for(Duration::from_secs(10));
    sim.add_node(server, cfg(3)).unwrap();
    sim.add_route(server, route(1, on(2, 9), 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 64));
    sim.run_for(Duration::from_secs(1));
    let took = put_until_one_succeeds(&mut sim, client, server, 10);
    assert!(took.is_some(), "never reached again");
}

/// The only router crashes and stays away past every operation through it, so nobody
/// monitors it any more, only remembers it Down. Back, it is used again: the client's
/// next operations to that net probe it rather than fail with no route for good.
#[test]
fn a_gateway_back_after_a_long_crash_is_used_again() {
    let (mut sim, client, server) = one_router();
    puts_one_by_one(&mut sim, client, server, 2);
    // It hangs first (frames vanish), so the client finds it Down, then it dies.
    sim.fabric().set_cut(client, on(1, 9), true);
    let op = sim.put(client, put(server, 4, pattern(4, 0)));
    assert!(run_to_completion(&mut sim, client, op).is_err());
    let gateway = sim.node(client).peer_health(on(1, 9));
    assert_eq!(gateway.map(|p| p.state), Some(PeerState::Down));
    sim.kill(on(1, 9));
    sim.fabric().set_cut(client, on(1, 9), false);
    sim.run_for(Duration::from_secs(10));
    let nids = [on(1, 9), on(2, 9)];
    sim.add_node_on(
        &nids,
        router_cfg(901),
        MemLndConfig::for_node(&router_cfg(901)),
    )
    .unwrap();
    sim.run_for(Duration::from_secs(1));
    let took = put_until_one_succeeds(&mut sim, client, server, 12);
    assert!(took.is_some(), "never used again");
}
