//! A TCP driver closing its connection to a peer that died mid-stream (its cable pulled,
//! in a network namespace, so that nothing it would acknowledge comes back): the bytes
//! the peer will never acknowledge are given up within about a second. io_uring sends
//! large frames to such a peer zero-copy, and holds their memory and the socket until the
//! kernel lets go of them: after TCP's retries, some 15 minutes, if nothing bounds them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Transmit};
use lanet::wire::Body;
use lanet::{Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};
use lanet_tests::data_frame;
use lanet_tests::netns::{self, Lab};
use lanet_tests::peer::Peer;

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");
const PORT: u16 = 7988;

/// A 1 MiB PUT frame without ACK (large enough to go zero-copy), token `msg_id`.
fn big_put(from: Nid, to: Nid, msg_id: u64) -> Transmit {
    let no_ack = Body::Put {
        portal: 4,
        match_bits: 0,
        settled_below: 0,
        ack: false,
    };
    data_frame(
        from,
        to,
        no_ack,
        Bytes::from(vec![msg_id as u8; 1 << 20]),
        msg_id,
    )
}

/// Polls `lnd` for `period`, returning the tokens of the sends that ended meanwhile.
fn sends_ended_within(lnd: &mut TcpLnd, period: Duration) -> Vec<u64> {
    let (start, mut events, mut ended) = (Instant::now(), Vec::new(), Vec::new());
    while start.elapsed() < period {
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        for e in events.drain(..) {
            if let LndEvent::SendComplete { token, .. } = e {
                ended.push(token.0);
            }
        }
    }
    ended
}

#[test]
fn a_driver_lets_go_of_its_connection_to_a_peer_that_died_mid_stream_within_seconds() {
    if !netns::available() {
        eprintln!("SKIPPED: network namespaces need root (CI runs as root)");
        return;
    }
    let mut lab = Lab::new(1).expect("make the lab");
    let here = lab.join_here(0, 1).expect("join the net");
    let host = lab.host("peer", 2, &[0]).expect("the peer's host");
    let peer_nid: Nid = format!("{}:{PORT}@tcp", lab.addr(0, 2)).parse().unwrap();
    let args = [peer_nid.to_string(), "3".to_owned()];
    let peer = Peer::start_with_args(&host.exec(), PEER_EXE, &args, peer_nid, true)
        .expect("lanet-peer in its namespace");
    let nid: Nid = format!("{here}:{PORT}@tcp").parse().unwrap();
    let mut lnd = TcpLnd::bind(nid, TcpConfig::for_node(&NodeConfig::new(1))).unwrap();
    lnd.connect(peer_nid, Lane::Data);
    let (start, mut events) = (Instant::now(), Vec::new());
    while !events
        .iter()
        .any(|e| matches!(e, LndEvent::Connected { .. }))
    {
        assert!(start.elapsed() < Duration::from_secs(5), "no connection");
        events.clear();
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    // The stream under way: one frame through.
    lnd.post(big_put(nid, peer_nid, 1));
    lnd.send_posted();
    let mut ended = sends_ended_within(&mut lnd, Duration::from_millis(500));
    assert_eq!(ended, [1], "the first frame went through");
    // The peer's cable pulled; more frames, which it will never acknowledge.
    lab.set_link(0, 2, false).expect("pull the cable");
    for id in 2..=4 {
        lnd.post(big_put(nid, peer_nid, id));
    }
    lnd.send_posted();
    ended.extend(sends_ended_within(&mut lnd, Duration::from_millis(200)));
    // Its health lane would say it is Down by now: the connection is closed.
    lnd.close(
        peer_nid,
        Lane::Data,
        LndError::new(LndErrorKind::Closed, "the peer is Down"),
    );
    ended.extend(sends_ended_within(&mut lnd, Duration::from_secs(3)));
    ended.sort_unstable();
    assert_eq!(ended, [1, 2, 3, 4], "each send ended, once");
    // Whatever the driver still holds for that connection, the drop waits for the kernel
    // to let go of (up to 2 s, then leaks it): a dead peer's bytes must be given up by now.
    let start = Instant::now();
    drop(lnd);
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the drop took {took:?}: it waited for the kernel to let go of a send to the dead peer"
    );
    drop(peer);
}
