//! How a connection's end reaches the other side, over real sockets on 127.0.0.1: a
//! peer's close that comes with its last frame, and what a dropped driver still held.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use lanet::lnd::{Lnd, LndEvent};
use lanet::Lane;
use lanet_lnd_tcp::Backend;

/// Polls `lnd` for up to 5 s, until `lane` is disconnected: the msg_ids it received
/// before, and whether it was.
fn received_until_disconnected(lnd: &mut lanet_lnd_tcp::TcpLnd, on: Lane) -> (Vec<u64>, bool) {
    let mut ids = Vec::new();
    let mut events = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        for e in events.drain(..) {
            match e {
                LndEvent::Received { header, .. } => ids.push(header.msg_id),
                LndEvent::Disconnected { lane, .. } if lane == on => return (ids, true),
                _ => {}
            }
        }
    }
    (ids, false)
}

/// A peer's last frame and its close reach the socket before the driver looks (one
/// readiness event for both, edge-triggered on epoll): the frame is received, and the
/// close is seen too, at once, not left until something is written to the dead socket.
#[test]
fn a_last_frame_and_the_close_that_came_with_it_are_both_seen() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::ZERO);
    a.post(put(na, nb, 7, 1));
    a.send_posted();
    drop(a);
    std::thread::sleep(Duration::from_millis(50)); // both are in before b looks
    let (ids, disconnected) = received_until_disconnected(&mut b, Lane::Data);
    assert_eq!(ids, [7], "the last frame");
    assert!(disconnected, "the close was never seen");
}

/// An epoll driver dropped right after a frame larger than a round's write budget was
/// handed over still sends it whole: the peer receives it, then the close. (io_uring
/// hands a large send to its mover thread, and a drop cancels what the mover has not
/// finished: the peer gets a prefix of whole frames, `writes.rs` checks.)
#[test]
fn a_dropped_epoll_driver_sends_a_large_frame_it_held_whole() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::ZERO);
    if a.backend() != Backend::Epoll {
        return;
    }
    // Past the 256 KiB a round writes to a data socket, well within the send buffer a
    // loopback socket grows to (`tcp_wmem`), so the drop's write is not stopped short.
    a.post(put_of(na, nb, 9, 1, Bytes::from(vec![9u8; 320 << 10])));
    a.send_posted();
    drop(a);
    let (ids, disconnected) = received_until_disconnected(&mut b, Lane::Data);
    assert_eq!(ids, [9], "the large frame");
    assert!(disconnected);
}
