//! Routers under bursts: many clients at once through one router, its buffers scarce.
//! Every operation must end well before its deadline, and no answer may be lost on the way.

use std::time::Duration;

use bytes::Bytes;

use super::routing_tests::{cfg, on, put, route, router_cfg, sim};
use super::*;
use crate::mem::{LinkFaults, MemLndConfig};
use crate::op::{OpError, OpOutcome};

/// `clients` clients on net 1 behind router 7, a server 9 on net 2 with a sink on portal
/// 4; returns the router (its net-1 NID) and the server.
fn star(sim: &mut Sim, clients: u32, router: NodeConfig) -> (Vec<Nid>, Nid, Nid) {
    let (r_near, r_far, server) = (on(1, 7), on(2, 7), on(2, 9));
    sim.add_node_on(
        &[r_near, r_far],
        router.clone(),
        MemLndConfig::for_node(&router),
    )
    .unwrap();
    sim.add_node(server, cfg(9)).unwrap();
    sim.add_route(server, route(1, r_far, 1)).unwrap();
    sim.attach(server, MatchEntry::sink(4, 1, 64));
    let nids: Vec<Nid> = (0..clients).map(|i| on(1, 100 + i)).collect();
    for (i, &c) in nids.iter().enumerate() {
        sim.add_node(c, cfg(100 + i as u64)).unwrap();
        sim.add_route(c, route(2, r_near, 1)).unwrap();
    }
    (nids, r_near, server)
}

/// Every client PUTs once, all at the same moment; returns each result with the time it
/// took, in the order they came.
fn burst(
    sim: &mut Sim,
    clients: &[Nid],
    server: Nid,
    payload: Bytes,
) -> Vec<(Duration, Result<OpOutcome, OpError>)> {
    let start = sim.now();
    for &c in clients {
        sim.put(c, put(server, 4, payload.clone()));
    }
    let mut results = Vec::new();
    while results.len() < clients.len() {
        assert!(sim.step(), "operations pending, yet nothing is scheduled");
        for &c in clients {
            for (t, e) in sim.take_timed_events(c) {
                if let Event::Completed(done) = e {
                    results.push((t.saturating_since(start), done.result));
                }
            }
        }
    }
    results.sort_by_key(|(t, _)| *t);
    results
}

/// 1,000 clients PUT at once through one router: the server's answers to that router wait
/// for its credits, many of them, and all must go back (the bound on answers waiting for
/// one peer's credits is for a peer answered directly; a router carries many).
#[test]
fn a_burst_from_hundreds_of_clients_through_one_router_is_answered_in_full() {
    let mut sim = sim();
    sim.fabric().set_default_link(LinkFaults {
        delay: Duration::from_micros(50),
        jitter: Duration::from_micros(20),
        ..LinkFaults::default()
    });
    let (clients, _, server) = star(&mut sim, 1000, router_cfg(700));
    let results = burst(&mut sim, &clients, server, Bytes::from_static(b"burst"));
    let took = results.last().expect("1,000 results").0;
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed[0].1
    );
    let stats = sim.node(server).stats();
    assert_eq!(stats.answers_shed, 0);
    // Orders of magnitude: a shed answer ends its operation only at its deadline (10 s).
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// The router's buffers are few, and requests wait for one until their patience runs out
/// (then they are refused: NACK, out of buffers). Answers coming back take no buffer: they
/// are not stuck behind those requests, so the first operations end after a round trip,
/// not when the requests queued ahead of their answers give up.
#[test]
fn answers_through_a_router_never_wait_behind_requests_for_its_buffers() {
    let mut sim = sim();
    let mut rc = router_cfg(700);
    rc.router_buffers = crate::node::PoolSizes {
        tiny: 4,
        small: 4,
        large: 1,
    };
    let patience = Duration::from_millis(10);
    rc.router_patience = patience;
    let (clients, router, server) = star(&mut sim, 100, rc);
    // The way to the server is slow: requests hold the router's buffers a while.
    sim.fabric().set_link(
        on(2, 7),
        server,
        LinkFaults {
            delay: Duration::from_millis(2),
            ..LinkFaults::default()
        },
    );
    // Connections up first (a handshake is two round trips).
    burst(&mut sim, &clients[..1], server, Bytes::new());
    // Empty PUTs: they take tiny buffers, as the answers would.
    let results = burst(&mut sim, &clients, server, Bytes::new());
    let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
    let refused = results.len() - ok;
    let stats = sim.node(router).stats();
    eprintln!(
        "{ok} delivered, {refused} refused, {} NACKs",
        stats.nacks_sent
    );
    assert!(
        ok > 0 && refused > 0,
        "the buffers were to be scarce, not absent"
    );
    assert_eq!(stats.unroutable_answers, 0, "answers dropped at the router");
    let first = results
        .iter()
        .find(|(_, r)| r.is_ok())
        .expect("some delivered")
        .0;
    assert!(first < patience, "the first answer came after {first:?}");
}
