//! Fault rules on the virtual clock: what they drop is lost as on a network (and only
//! that), what they delay comes late, and windows do not shrink.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::node::{FaultAction, FaultRule, NidPattern};
use crate::op::{OpOutcome, PeerDownPolicy};

const MS: Duration = Duration::from_millis(1);

fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

fn sim() -> Sim {
    let mut sim = Sim::new(11);
    for i in 1..=2 {
        sim.add_node(nid(i), NodeConfig::new(2000 + u64::from(i)))
            .unwrap();
    }
    sim.attach(nid(2), MatchEntry::sink(4, 7, 1 << 20));
    sim
}

fn put(timeout: Duration) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: nid(2),
        portal: 4,
        match_bits: 7,
        payload: Bytes::from_static(b"fault"),
        timeout: Some(timeout),
        on_peer_down: PeerDownPolicy::Wait,
        ack: true,
    }
}

fn rule(action: FaultAction, src: NidPattern, lane: Option<Lane>, rate: u32) -> FaultRule {
    FaultRule {
        action,
        src,
        dst: NidPattern::Any,
        lane,
        rate,
    }
}

/// PUTs 1 -> 2, `n` of them, run to the end; (acknowledged, failed).
fn puts(sim: &mut Sim, n: usize, timeout: Duration) -> (usize, usize) {
    let ops: Vec<OpId> = (0..n).map(|_| sim.put(nid(1), put(timeout))).collect();
    sim.run_for(timeout + Duration::from_secs(1));
    let events = sim.take_events(nid(1));
    let mut ok = 0;
    let mut failed = 0;
    for e in events {
        if let Event::Completed(c) = e {
            if ops.contains(&c.op) {
                match c.result {
                    Ok(OpOutcome::Put { .. }) => ok += 1,
                    _ => failed += 1,
                }
            }
        }
    }
    (ok, failed)
}

#[test]
fn every_nth_dropped_request_is_lost_and_the_window_stays_whole() {
    let mut sim = sim();
    sim.run_for(10 * MS);
    // At node 2: every 2nd PUT from node 1 on the data lane, lost.
    let id = sim
        .add_fault_rule(
            nid(2),
            rule(
                FaultAction::Drop,
                NidPattern::Nid(nid(1)),
                Some(Lane::Data),
                2,
            ),
        )
        .unwrap();
    let (ok, failed) = puts(&mut sim, 40, Duration::from_millis(500));
    assert_eq!((ok, failed), (20, 20), "exactly every second one lost");
    let r = sim.node(nid(2)).fault_rules()[0];
    assert_eq!((r.matched, r.hit), (40, 20));
    assert_eq!(sim.node(nid(2)).stats().lanes[Lane::Data].fault_dropped, 20);
    // The dropped frames' credits came back: 3x the window still gets through whole.
    assert!(sim.remove_fault_rule(nid(2), id));
    assert!(!sim.remove_fault_rule(nid(2), id));
    let window = usize::from(NodeConfig::new(1).lanes[Lane::Data].peer_credits);
    assert_eq!(
        puts(&mut sim, 3 * window, Duration::from_secs(2)),
        (3 * window, 0)
    );
    assert!(
        sim.ledger().violations().is_empty(),
        "{:?}",
        sim.ledger().violations()
    );
}

#[test]
fn dropping_a_peers_pongs_makes_it_silent_and_lifting_it_brings_it_back() {
    let mut sim = sim();
    sim.watch(nid(1), nid(2)).unwrap();
    sim.run_for(500 * MS);
    let id = sim
        .add_fault_rule(
            nid(1),
            rule(
                FaultAction::Drop,
                NidPattern::Nid(nid(2)),
                Some(Lane::Health),
                1,
            ),
        )
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let down = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::PeerDown { peer, .. } if *peer == nid(2)))
            .count()
    };
    let events = sim.take_timed_events(nid(1));
    let events: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
    assert_eq!(down(&events), 1, "node 2 heard no more: Down: {events:?}");
    sim.remove_fault_rule(nid(1), id);
    sim.run_for(Duration::from_secs(2));
    let back = sim
        .take_events(nid(1))
        .iter()
        .any(|e| matches!(e, Event::PeerUp { peer, .. } if *peer == nid(2)));
    assert!(back, "node 2 answers again: Up");
}

#[test]
fn a_delayed_frame_arrives_late_and_whole() {
    let mut sim = sim();
    sim.run_for(10 * MS);
    let rtt = |sim: &mut Sim| {
        let op = sim.ping(
            nid(1),
            PingRequest {
                dst: nid(2),
                lane: Lane::Data,
                timeout: Some(Duration::from_secs(5)),
                on_peer_down: PeerDownPolicy::Wait,
            },
        );
        sim.run_for(Duration::from_secs(1));
        sim.take_events(nid(1))
            .into_iter()
            .find_map(|e| match e {
                Event::Completed(c) if c.op == op => Some(c.result),
                _ => None,
            })
            .expect("the ping completed")
    };
    let Ok(OpOutcome::Pong { rtt: before }) = rtt(&mut sim) else {
        panic!("a pong")
    };
    sim.add_fault_rule(
        nid(1),
        rule(
            FaultAction::Delay(200 * MS),
            NidPattern::Any,
            Some(Lane::Data),
            1,
        ),
    )
    .unwrap();
    let Ok(OpOutcome::Pong { rtt: after }) = rtt(&mut sim) else {
        panic!("a pong, late")
    };
    assert!(
        after >= 200 * MS && after < before + 300 * MS,
        "{before:?} -> {after:?}"
    );
    assert_eq!(puts(&mut sim, 5, Duration::from_secs(2)), (5, 0));
    assert!(sim.node(nid(1)).stats().lanes[Lane::Data].fault_delayed >= 6);
}
