//! lanet over TCP between two processes on 127.0.0.1: this test process and a
//! `lanet-peer` child that the tests start, stop and kill.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lanet::op::Completion;
use lanet::{Endpoint, Event, OpId};
use lanet_tests::pattern;
use lanet_tests::peer::{
    check_exchange_of_every_size, check_kill_mid_transfer, put, wait_all, Exchange, Peer, Request,
    HANG,
};

fn spawn(incarnation: u64) -> Peer {
    Peer::start_on_loopback(PEER_EXE, incarnation, false)
}

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");

fn local_endpoint(incarnation: u64) -> Endpoint {
    lanet_tests::loopback_endpoint(incarnation)
}

#[test]
fn puts_and_gets_of_0_bytes_to_16_mib_cross_processes_intact_both_ways() {
    check_exchange_of_every_size(&local_endpoint(1), spawn(7));
}

/// The same exchange from a worker (`lanet::Worker`, driven by this test's thread) instead
/// of an endpoint: every size both ways over real sockets, each op completed once.
#[test]
fn a_worker_exchanges_puts_and_gets_of_every_size_with_a_peer_process() {
    let peer = spawn(7);
    let mut w = lanet_tests::loopback_worker(1);
    let exchange = Exchange::submit(peer.nid, |r| match r {
        Request::Put(r) => w.put(r).unwrap(),
        Request::Get(r) => w.get(r).unwrap(),
    });
    let ops = exchange.ops();
    let mut done: HashMap<OpId, Completion> = HashMap::new();
    let mut events = Vec::new();
    let give_up = Instant::now() + HANG.expect("a bound");
    while done.len() < ops.len() {
        assert!(
            Instant::now() < give_up,
            "{} of {} done",
            done.len(),
            ops.len()
        );
        w.progress(Some(Duration::from_millis(100)), &mut events);
        for e in events.drain(..) {
            if let Event::Completed(c) = e {
                assert!(done.insert(c.op, c.clone()).is_none(), "{c:?} twice");
            }
        }
    }
    w.shutdown(&mut events);
    assert!(events.is_empty(), "nothing was live: {events:?}");
    exchange.check(&done, peer);
}

#[test]
fn killing_the_peer_mid_transfer_fails_every_operation_in_flight_exactly_once() {
    check_kill_mid_transfer(&local_endpoint(1), spawn(7));
}

#[test]
fn a_restarted_peer_process_is_reported_as_a_restart() {
    let peer = spawn(7);
    let ep = local_endpoint(1);
    let op = ep.put(put(peer.nid, pattern(10, 0))).unwrap();
    assert!(wait_all(&ep, &[op])[&op].result.is_ok());
    let nid = peer.nid;
    drop(peer);
    // A new process on the same address, with a new incarnation.
    let mut reborn = None;
    for _ in 0..50 {
        reborn = Peer::start(PEER_EXE, nid, 8, true);
        if reborn.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the old socket may linger
    }
    let _reborn = reborn.expect("restart the peer on its old address");
    let mut restarted = false;
    let mut result = None;
    while result.is_none() {
        let op = ep.put(put(nid, pattern(10, 0))).unwrap();
        loop {
            match ep.recv_event(HANG).expect("events") {
                Event::PeerRestarted {
                    peer,
                    old: 7,
                    new: 8,
                    ..
                } if peer == nid => restarted = true,
                Event::Completed(c) if c.op == op => {
                    // The first attempt may meet the dead connection; the next one connects.
                    if c.result.is_ok() {
                        result = Some(c.result);
                    }
                    break;
                }
                _ => {}
            }
        }
    }
    assert!(restarted, "the new incarnation was noticed");
}
