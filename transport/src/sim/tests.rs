use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::mem::{LinkFaults, MemLndConfig};
use crate::op::{OpError, OpOutcome, RejectReason};

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
        ack: true,
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
