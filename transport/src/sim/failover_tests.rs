//! Failover groups behind routers on the virtual clock (seed 000's case): a client on net
//! 1, routers 8 and 9, servers 2 and 3 on net 2 as one service. Server 2 dies; server 3
//! starts only seconds later. The client must keep both routers (no route goes down: a
//! server's death is never blamed on the routers in front of it), move to server 3 once
//! server 2 is declared down, and end every operation once, as the group's mode says.

use std::time::Duration;

use bytes::Bytes;

use super::routing_tests::{on, put, route, router_cfg, seeded_sim};
use super::*;
use crate::node::{FailoverGroup, FailoverMode, GroupId, GroupRequest};
use crate::op::{OpError, OpOutcome};

const MS: Duration = Duration::from_millis(1);

struct Setup {
    sim: Sim,
    client: Nid,
    servers: [Nid; 2],
    group: GroupId,
}

fn setup(mode: FailoverMode) -> Setup {
    let mut sim = seeded_sim(11);
    let client = on(1, 1);
    let servers = [on(2, 2), on(2, 3)];
    sim.add_node(client, NodeConfig::new(1)).unwrap();
    for n in [8, 9] {
        let cfg = router_cfg(u64::from(n) * 100);
        let lnd = crate::mem::MemLndConfig::for_node(&cfg);
        sim.add_node_on(&[on(1, n), on(2, n)], cfg, lnd).unwrap();
        sim.add_route(client, route(2, on(1, n), 1)).unwrap();
    }
    start_server(&mut sim, servers[0], 2);
    let group = sim
        .add_failover_group(
            client,
            FailoverGroup {
                name: "ost0".into(),
                members: servers.to_vec(),
                mode,
            },
        )
        .unwrap();
    Setup {
        sim,
        client,
        servers,
        group,
    }
}

fn start_server(sim: &mut Sim, s: Nid, incarnation: u64) {
    sim.add_node(s, NodeConfig::new(incarnation)).unwrap();
    for n in [8, 9] {
        sim.add_route(s, route(1, on(2, n), 1)).unwrap();
    }
    sim.attach(s, MatchEntry::sink(4, 1, 64));
}

/// PUTs to the group, one each millisecond, for `d`; their ids.
fn stream(s: &mut Setup, d: Duration, ops: &mut Vec<OpId>) {
    let end = s.sim.now() + d;
    while s.sim.now() < end {
        let req = put(s.servers[0], 4, Bytes::from_static(b"data"));
        ops.push(
            s.sim
                .group_submit(s.client, s.group, GroupRequest::Put(req)),
        );
        let next = s.sim.now() + MS;
        s.sim.run_until(next);
    }
}

/// Runs until every op completed; the results, and the client's other events.
fn settle(
    s: &mut Setup,
    ops: &[OpId],
) -> (FxHashMap<OpId, Result<OpOutcome, OpError>>, Vec<Event>) {
    let mut done = FxHashMap::default();
    let mut other = Vec::new();
    for _ in 0..2000 {
        for e in s.sim.take_events(s.client) {
            match e {
                Event::Completed(c) => {
                    assert!(ops.contains(&c.op), "a completion of no op of ours: {c:?}");
                    assert!(done.insert(c.op, c.result).is_none(), "completed twice");
                }
                e => other.push(e),
            }
        }
        if done.len() == ops.len() {
            break;
        }
        s.sim.run_for(10 * MS);
    }
    assert_eq!(done.len(), ops.len(), "every op completed");
    (done, other)
}

#[test]
fn a_failover_pair_behind_routers_moves_to_the_partner_when_it_answers_and_blames_no_router() {
    let mut s = setup(FailoverMode::Failover);
    let mut ops = Vec::new();
    stream(&mut s, 100 * MS, &mut ops);
    s.sim.kill(s.servers[0]);
    stream(&mut s, 2000 * MS, &mut ops);
    // The partner starts two seconds later (it mounts the shared storage, say).
    start_server(&mut s.sim, s.servers[1], 3);
    stream(&mut s, 500 * MS, &mut ops);
    let (done, events) = settle(&mut s, &ops);
    let failed: Vec<_> = done.values().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let moved: Vec<(Nid, Nid)> = events
        .iter()
        .filter_map(|e| match e {
            Event::FailoverMoved { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(moved, vec![(s.servers[0], s.servers[1])]);
    let route_downs: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::RouteDown { .. }))
        .collect();
    assert!(
        route_downs.is_empty(),
        "the routers were blamed: {route_downs:?}"
    );
    assert_eq!(
        s.sim.node(s.client).group_member(s.group),
        Some(s.servers[1])
    );
    assert!(s.sim.ledger().violations().is_empty());
}

#[test]
fn in_failout_mode_operations_fail_at_once_instead() {
    let mut s = setup(FailoverMode::Failout);
    let mut ops = Vec::new();
    stream(&mut s, 100 * MS, &mut ops);
    let before = ops.len();
    s.sim.kill(s.servers[0]);
    stream(&mut s, 1000 * MS, &mut ops);
    let (done, events) = settle(&mut s, &ops);
    let after_kill: Vec<&Result<OpOutcome, OpError>> =
        ops[before + 400..].iter().map(|op| &done[op]).collect();
    // Nothing answers: each fails, and quickly (not at its 10 s deadline).
    assert!(
        after_kill.iter().all(|r| r.is_err()),
        "{:?}",
        &after_kill[..3]
    );
    assert!(
        !after_kill
            .iter()
            .any(|r| matches!(r, Err(OpError::RemoteTimeout | OpError::NetworkTimeout))),
        "failed at once, not by timing out"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::FailoverMoved { .. })));
    assert!(!events.iter().any(|e| matches!(e, Event::RouteDown { .. })));
    assert!(
        s.sim.now() < Time::ZERO + Duration::from_secs(5),
        "no op waited its deadline"
    );
}

#[test]
fn a_group_op_can_be_cancelled_and_shutdown_ends_waiting_ones() {
    let mut s = setup(FailoverMode::Failover);
    s.sim.kill(s.servers[0]);
    let mut ops = Vec::new();
    stream(&mut s, 600 * MS, &mut ops);
    s.sim.cancel(s.client, ops[0]);
    s.sim.shutdown(s.client);
    let (done, _) = settle(&mut s, &ops);
    assert_eq!(done[&ops[0]], Err(OpError::Cancelled));
    assert!(done.values().all(|r| r.is_err()));
    assert!(s.sim.ledger().violations().is_empty());
}

#[test]
fn ids_with_the_attempt_bit_are_refused_not_lost() {
    let mut node = Node::new(NodeConfig::new(1));
    node.add_ni(on(1, 1)).unwrap();
    let id = OpId(1 << 62 | 5);
    let req = put(on(1, 2), 4, Bytes::from_static(b"x"));
    assert!(matches!(
        node.put(Time::ZERO, id, req),
        Err(crate::node::SubmitError::ReservedOpId(_))
    ));
}

/// A group learns that its member failed from the answer, and a PUT without ACK has none
/// (and one that failed may have got through: a retry would deliver it twice): refused.
#[test]
fn a_failover_group_refuses_puts_without_ack() {
    let mut s = setup(FailoverMode::Failover);
    let req = PutRequest {
        ack: false,
        ..put(s.servers[0], 4, Bytes::from_static(b"data"))
    };
    let op = s
        .sim
        .group_submit(s.client, s.group, GroupRequest::Put(req));
    let (done, _) = settle(&mut s, &[op]);
    assert!(
        matches!(&done[&op], Err(OpError::Invalid(why)) if why.contains("must want an ACK")),
        "{:?}",
        done[&op]
    );
    assert_eq!(s.sim.node(s.servers[0]).stats().frames_received, 0);
}
