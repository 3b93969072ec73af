//! Failure detection end to end on the virtual clock: nodes on the in-memory network,
//! peers that go silent, answer slowly, restart or come back.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::mem::LinkFaults;
use crate::op::{OpError, OpOutcome, PeerDownPolicy, PeerDownReason};

const MS: Duration = Duration::from_millis(1);
const INTERVAL: Duration = Duration::from_millis(100);

fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

fn sim(delay: Duration) -> Sim {
    let mut sim = Sim::new(7);
    sim.fabric().set_default_link(LinkFaults {
        delay,
        ..LinkFaults::default()
    });
    for i in 1..=2 {
        sim.add_node(nid(i), NodeConfig::new(1000 + u64::from(i)))
            .unwrap();
    }
    sim.attach(nid(2), MatchEntry::sink(4, 7, 1 << 20));
    sim
}

fn put(payload: &'static [u8], on_peer_down: PeerDownPolicy) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: nid(2),
        portal: 4,
        match_bits: 7,
        payload: Bytes::from_static(payload),
        timeout: Some(Duration::from_secs(30)),
        on_peer_down,
        ack: true,
    }
}

/// Node 1's events about node 2's health, with their times.
fn verdicts(events: &[(Time, Event)]) -> Vec<(Time, &'static str)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::PeerDown { peer, .. } if *peer == nid(2) => Some((*t, "down")),
            Event::PeerUp { peer, .. } if *peer == nid(2) => Some((*t, "up")),
            Event::PeerRestarted { peer, .. } if *peer == nid(2) => Some((*t, "restarted")),
            _ => None,
        })
        .collect()
}

#[test]
fn a_silent_crash_is_detected_within_detect_mult_intervals() {
    for (seed, crash_at) in [(1, 1_000u64), (2, 1_037), (3, 1_081)] {
        let mut sim = sim(50 * Duration::from_micros(1));
        sim.watch(nid(1), nid(2)).unwrap();
        sim.run_for(MS * crash_at as u32);
        // Pulled cable: frames vanish, nothing resets, nothing says goodbye.
        let crash = sim.now();
        sim.fabric().set_cut(nid(1), nid(2), true);
        sim.run_for(Duration::from_secs(2));
        let events = sim.take_timed_events(nid(1));
        let down: Vec<Time> = verdicts(&events)
            .into_iter()
            .filter(|(_, v)| *v == "down")
            .map(|(t, _)| t)
            .collect();
        assert_eq!(down.len(), 1, "seed {seed}: {events:?}");
        let took = down[0].saturating_since(crash);
        // The last pong came at most one interval before the crash.
        assert!(
            took <= 3 * INTERVAL && took >= 2 * INTERVAL,
            "seed {seed}: detected {took:?} after the crash"
        );
        let stats = sim.node(nid(1)).health_stats();
        assert_eq!((stats.downs, stats.lag_stretches), (1, 0));
    }
}

#[test]
fn a_peer_answering_slowly_but_within_the_interval_is_never_declared_down() {
    // 45 ms each way: every ping's answer takes 90 ms of the 100 ms interval.
    let mut sim = sim(45 * MS);
    sim.watch(nid(1), nid(2)).unwrap();
    sim.run_for(Duration::from_secs(60));
    let events = sim.take_timed_events(nid(1));
    assert!(verdicts(&events).is_empty(), "{events:?}");
    let stats = sim.node(nid(1)).health_stats();
    assert_eq!(stats.downs, 0);
    // Pinged about once per interval of silence: the health load is bounded.
    assert!(
        (300..=600).contains(&stats.pings_sent),
        "{} pings in 60 s",
        stats.pings_sent
    );
    // And a peer nobody watches gets none at all.
    sim.unwatch(nid(1), nid(2));
    sim.run_for(Duration::from_secs(1));
    let before = sim.node(nid(1)).health_stats().pings_sent;
    sim.run_for(Duration::from_secs(10));
    assert!(sim.node(nid(1)).health_stats().pings_sent <= before + 1);
    assert_eq!(sim.node(nid(1)).monitored_peers(), 0);
}

#[test]
fn going_down_flushes_every_operation_exactly_once_and_new_ones_fail_fast_or_wait() {
    let mut sim = sim(50 * Duration::from_micros(1));
    let first = sim.put(nid(1), put(b"hello", PeerDownPolicy::Fail));
    sim.run_for(10 * MS);
    assert!(matches!(
        sim.take_events(nid(1)).as_slice(),
        [Event::Completed(c)] if c.op == first && c.result.is_ok()
    ));
    sim.fabric().set_cut(nid(1), nid(2), true);
    // Beyond the 8 credits: some are in flight, the rest queued.
    let failing: Vec<OpId> = (0..20)
        .map(|_| sim.put(nid(1), put(b"x", PeerDownPolicy::Fail)))
        .collect();
    let waiting = sim.put(nid(1), put(b"w", PeerDownPolicy::Wait));
    sim.run_for(Duration::from_millis(500));
    let events = sim.take_timed_events(nid(1));
    let down_at = verdicts(&events)
        .iter()
        .find(|(_, v)| *v == "down")
        .map(|(t, _)| *t)
        .expect("declared down");
    // Every failing op completed once, with PeerDead, at the verdict, long before its
    // 30 s deadline.
    for op in &failing {
        let done: Vec<&(Time, Event)> = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Completed(c) if c.op == *op))
            .collect();
        assert_eq!(done.len(), 1, "{op}: {done:?}");
        assert!(
            matches!(done[0], (t, Event::Completed(c)) if *t == down_at && c.result == Err(OpError::PeerDead)),
            "{op}: {done:?}"
        );
    }
    let reason = events.iter().find_map(|(_, e)| match e {
        Event::PeerDown { reason, .. } => Some(*reason),
        _ => None,
    });
    assert!(matches!(reason, Some(PeerDownReason::Silent(d)) if d >= 3 * INTERVAL));
    // New ones: the failing kind fails at once; the waiting kind waits.
    let fast = sim.put(nid(1), put(b"f", PeerDownPolicy::Fail));
    sim.run_for(MS);
    assert!(sim.take_events(nid(1)).iter().any(
        |e| matches!(e, Event::Completed(c) if c.op == fast && c.result == Err(OpError::PeerDead))
    ));
    assert!(sim.ledger().outstanding().contains(&(nid(1), waiting)));
    // The cable is back: the probes find the peer, and the waiting op goes through.
    sim.fabric().set_cut(nid(1), nid(2), false);
    sim.run_for(Duration::from_secs(12));
    let events = sim.take_timed_events(nid(1));
    assert_eq!(
        verdicts(&events)
            .iter()
            .map(|(_, v)| *v)
            .collect::<Vec<_>>(),
        vec!["up"],
        "same incarnation: a recovery"
    );
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        Event::Completed(c) if c.op == waiting && c.result == Ok(OpOutcome::Put { mlen: 1 })
    )));
    assert!(
        sim.ledger().violations().is_empty(),
        "{:?}",
        sim.ledger().violations()
    );
    // Nothing of node 1's is left (node 2's receive buffer stays attached).
    assert!(
        sim.ledger().outstanding().iter().all(|(n, _)| *n != nid(1)),
        "{:?}",
        sim.ledger().outstanding()
    );
}

#[test]
fn a_restart_is_told_apart_from_a_recovery() {
    let mut sim = sim(50 * Duration::from_micros(1));
    sim.watch(nid(1), nid(2)).unwrap();
    sim.run_for(Duration::from_millis(500));
    // The peer dies (its connections reset) and stays away long enough to be Down...
    sim.kill(nid(2));
    sim.run_for(Duration::from_millis(500));
    // ...then a new process takes its address, with a new incarnation.
    sim.add_node(nid(2), NodeConfig::new(2002)).unwrap();
    sim.run_for(Duration::from_secs(12));
    let events = sim.take_timed_events(nid(1));
    let kinds: Vec<&str> = verdicts(&events).iter().map(|(_, v)| *v).collect();
    assert_eq!(kinds, vec!["down", "restarted"], "{events:?}");
    let restarted = events.iter().find_map(|(_, e)| match e {
        Event::PeerRestarted { old, new, .. } => Some((*old, *new)),
        _ => None,
    });
    assert_eq!(restarted, Some((1002, 2002)));
}

/// The monitor's PINGs time their round trips: over a 2 ms link each takes about 4 ms,
/// and the histogram says so.
#[test]
fn health_ping_round_trips_are_recorded_in_the_histogram() {
    let mut sim = sim(2 * MS);
    sim.watch(nid(1), nid(2)).unwrap();
    sim.run_for(Duration::from_secs(2));
    let h = sim.node(nid(1)).stats().health_rtt;
    assert!(h.count() >= 10, "{h:?}");
    let bounds = crate::health::RttHistogram::BOUNDS;
    let at = bounds.partition_point(|&b| b < 4 * MS);
    let near: u64 = h.counts[at..=at + 1].iter().sum();
    assert_eq!(near, h.count(), "all in the 5 or 10 ms bucket: {h:?}");
    let mean = h.sum / h.count() as u32;
    assert!(mean >= 4 * MS && mean < 5 * MS, "{mean:?}");
}
