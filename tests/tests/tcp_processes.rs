//! lanet over TCP between two processes on 127.0.0.1: this test process and a
//! `lanet-peer` child that the tests start, stop and kill.

use std::time::Duration;

use lanet::{Endpoint, Event, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};
use lanet_tests::peer::{
    check_exchange_of_every_size, check_kill_mid_transfer, put, wait_all, Peer, HANG,
};
use lanet_tests::{free_tcp_nid, pattern};

fn spawn(incarnation: u64) -> Peer {
    // The port may be taken between our probe and the peer's bind: try another.
    (0..5)
        .find_map(|_| Peer::start(PEER_EXE, free_tcp_nid(), incarnation, false))
        .expect("lanet-peer did not start")
}

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");

fn local_endpoint(incarnation: u64) -> Endpoint {
    let cfg = NodeConfig::new(incarnation);
    // Another test process may take the port between our probe and our bind: try again.
    let lnd = (0..5)
        .find_map(|_| TcpLnd::bind(free_tcp_nid(), TcpConfig::for_node(&cfg)).ok())
        .expect("bind a loopback port");
    Endpoint::builder(cfg).lnd(lnd).start().expect("start")
}

#[test]
fn puts_and_gets_of_0_bytes_to_16_mib_cross_processes_intact_both_ways() {
    check_exchange_of_every_size(&local_endpoint(1), spawn(7));
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
