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

/// Server 9's data lane stops taking frames (they wait a minute at it, their credits held)
/// while its health lane answers: LU-18444's pattern. The frames the router holds for it
/// are refused once they have waited `forward_patience`, so the client's credits to the
/// router come back and its PUTs to server 10, behind them, get through. Held for ever,
/// they would hold every credit the client has there, and the PUTs to 10 would die at
/// their deadline with the rest.
#[test]
fn a_server_that_stops_taking_data_does_not_take_the_router_from_other_servers() {
    use crate::lane::Lane;
    use crate::node::{FaultAction, FaultRule, NidPattern};
    let mut sim = sim();
    let (clients, router, stalled) = star(&mut sim, 1, router_cfg(700));
    let client = clients[0];
    let healthy = on(2, 10);
    sim.add_node(healthy, cfg(10)).unwrap();
    sim.add_route(healthy, route(1, on(2, 7), 1)).unwrap();
    sim.attach(healthy, MatchEntry::sink(4, 1, 64));
    // Connections up, and both servers heard, first.
    for server in [stalled, healthy] {
        let op = sim.put(client, put(server, 4, Bytes::from_static(b"hello")));
        sim.run_for(Duration::from_millis(100));
        let done = sim
            .take_events(client)
            .into_iter()
            .any(|e| matches!(e, Event::Completed(c) if c.op == op && c.result.is_ok()));
        assert!(done, "{server} answered");
    }
    let stall = FaultRule {
        action: FaultAction::Delay(crate::node::MAX_FAULT_DELAY),
        src: NidPattern::Any,
        dst: NidPattern::Any,
        lane: Some(Lane::Data),
        rate: 1,
    };
    sim.add_fault_rule(stalled, stall).unwrap();
    // As many as the router's credits at the stalled server, and then the client's at
    // the router: those wait at the router.
    let to_stalled: Vec<OpId> = (0..16)
        .map(|_| sim.put(client, put(stalled, 4, Bytes::from_static(b"stuck"))))
        .collect();
    let to_healthy: Vec<OpId> = (0..4)
        .map(|_| sim.put(client, put(healthy, 4, Bytes::from_static(b"fine"))))
        .collect();
    let start = sim.now();
    sim.run_for(Duration::from_secs(12));
    let mut healthy_ok = Vec::new();
    let mut stalled_failed = 0;
    for (t, e) in sim.take_timed_events(client) {
        if let Event::Completed(c) = e {
            if to_healthy.contains(&c.op) {
                assert!(c.result.is_ok(), "a PUT to {healthy}: {:?}", c.result);
                healthy_ok.push(t.saturating_since(start));
            } else if to_stalled.contains(&c.op) && c.result.is_err() {
                stalled_failed += 1;
            }
        }
    }
    assert_eq!(healthy_ok.len(), 4, "every PUT to {healthy} ends, well");
    let patience = sim.node(router).config().forward_patience;
    assert!(
        healthy_ok.iter().all(|t| *t < patience * 2),
        "{healthy_ok:?}: after the stalled frames' refusal, not at their deadline"
    );
    assert_eq!(stalled_failed, 16, "every PUT to the stalled server fails");
    assert!(sim.node(router).stats().forwards_stalled > 0);
    let pools = sim.node(router).router_stats().pools;
    assert!(pools.iter().all(|p| p.in_use == 0), "{pools:?}");
}
