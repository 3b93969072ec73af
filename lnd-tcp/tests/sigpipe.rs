//! A peer that goes away while frames are still being sent to it: the sender's writes
//! fail (EPIPE, ECONNRESET) and its connection ends, and the process lives on even where
//! SIGPIPE is not ignored, as in a host written in C or a Rust program that restored the
//! signal: every send of either backend asks for none. A test binary of its own, as it
//! changes the process's SIGPIPE disposition.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::lnd::{Lnd, LndEvent, Transmit};
use lanet::{Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};

fn lnd(nid: Nid) -> TcpLnd {
    TcpLnd::bind(nid, TcpConfig::for_node(&NodeConfig::new(1))).unwrap()
}

fn put(from: Nid, to: Nid, msg_id: u64) -> Transmit {
    let payload = Bytes::from(vec![7u8; 256 << 10]);
    common::put_with(from, to, msg_id, msg_id, payload)
}

#[test]
fn sending_to_a_peer_that_went_away_raises_no_sigpipe() {
    // SAFETY: sets this process's SIGPIPE action back to the default (terminate); this
    // test binary runs this one test, and no other thread is running yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let (mut a, mut b) = (lnd(na), lnd(nb));
    a.connect(nb, Lane::Data);
    let mut events = Vec::new();
    let (mut a_up, mut b_up) = (false, false);
    let start = Instant::now();
    while !(a_up && b_up) {
        assert!(start.elapsed() < Duration::from_secs(5), "no connection");
        let up = |e: &LndEvent| matches!(e, LndEvent::Connected { .. });
        a.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        a_up |= events.drain(..).any(|e| up(&e));
        b.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        b_up |= events.drain(..).any(|e| up(&e));
    }
    drop(b); // its sockets close with frames still coming
    let start = Instant::now();
    let mut msg_id = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the connection to a closed peer never failed"
        );
        for _ in 0..4 {
            msg_id += 1;
            a.post(put(na, nb, msg_id));
        }
        a.send_posted();
        a.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        a.take_ready(&mut events);
        if events.iter().any(|e| {
            matches!(e, LndEvent::Disconnected { .. })
                || matches!(e, LndEvent::SendComplete { result: Err(_), .. })
        }) {
            break; // and this process is still here to see it
        }
        events.clear();
    }
}
