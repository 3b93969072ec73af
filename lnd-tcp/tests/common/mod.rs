//! What the TCP LND's integration tests share: drivers on loopback, frames to post, and
//! ways to poll for what comes up.

// Each test binary uses some of these.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::lnd::{Lnd, LndEvent, Transmit};
use lanet::wire::{Body, Header};
use lanet::{Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};

pub fn lnd(nid: Nid, spin: Duration) -> TcpLnd {
    let mut cfg = TcpConfig::for_node(&NodeConfig::new(1));
    cfg.spin = spin;
    TcpLnd::bind(nid, cfg).unwrap()
}

pub fn put(from: Nid, to: Nid, msg_id: u64, token: u64) -> Transmit {
    put_of(from, to, msg_id, token, Bytes::from_static(b"data"))
}

/// A PUT frame carrying `payload`.
pub fn put_of(from: Nid, to: Nid, msg_id: u64, token: u64, payload: Bytes) -> Transmit {
    let header = Header {
        lane: Lane::Data,
        hop_limit: 8,
        credits: 0,
        src: from,
        dst: to,
        src_incarnation: 1,
        msg_id,
        payload_len: payload.len() as u32,
        body: Body::Put {
            portal: 4,
            match_bits: 1,
            settled_below: 0,
            ack: false,
        },
        router_gen: 0,
        attempt: 0,
    };
    Transmit::new(to, &header, payload, token)
}

/// Polls `lnd` until `pick` finds an event, for at most 5 s.
pub fn poll_until(lnd: &mut TcpLnd, pick: impl Fn(&LndEvent) -> bool) {
    let start = Instant::now();
    let mut events = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        if events.iter().any(&pick) {
            return;
        }
        events.clear();
    }
    panic!("nothing came within 5 s");
}

/// Polls `lnd` until `n` frames came, for at most 5 s: their message ids, in order.
pub fn receive_msg_ids(lnd: &mut TcpLnd, n: usize) -> Vec<u64> {
    let mut received = Vec::new();
    let mut events = Vec::new();
    let start = Instant::now();
    while received.len() < n {
        assert!(start.elapsed() < Duration::from_secs(5), "got {received:?}");
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        received.extend(msg_ids(&mut events));
    }
    received
}

/// Everything `lnd` hands up while it is polled for `period`.
pub fn poll_for(lnd: &mut TcpLnd, period: Duration) -> Vec<LndEvent> {
    let mut events = Vec::new();
    let start = Instant::now();
    while start.elapsed() < period {
        lnd.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    events
}

/// The message ids of the frames received among `events`, which it empties.
pub fn msg_ids(events: &mut Vec<LndEvent>) -> Vec<u64> {
    events
        .drain(..)
        .filter_map(|e| match e {
            LndEvent::Received { header, .. } => Some(header.msg_id),
            _ => None,
        })
        .collect()
}

/// The tokens of the sends completed among `events`, which it empties; each must have
/// succeeded.
pub fn sends_done(events: &mut Vec<LndEvent>) -> Vec<u64> {
    events
        .drain(..)
        .filter_map(|e| match e {
            LndEvent::SendComplete { token, result } => {
                assert!(result.is_ok(), "send {} failed: {result:?}", token.0);
                Some(token.0)
            }
            _ => None,
        })
        .collect()
}

/// A health PING from `from` to `to`.
pub fn ping(from: Nid, to: Nid, seq: u64, token: u64) -> Transmit {
    let header = Header {
        lane: Lane::Health,
        hop_limit: 8,
        credits: 0,
        src: from,
        dst: to,
        src_incarnation: 1,
        msg_id: seq,
        payload_len: 0,
        body: Body::Ping { seq },
        router_gen: 0,
        attempt: 0,
    };
    Transmit::new(to, &header, Bytes::new(), token)
}

/// Two LNDs with their data lane up between them.
pub fn connected_pair() -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
    connected_pair_on(Lane::Data, Duration::ZERO)
}

/// Two LNDs with `lane` up between them, the first busy-polling for `spin`.
pub fn connected_pair_on(lane: Lane, spin: Duration) -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let (mut a, mut b) = (lnd(na, spin), lnd(nb, Duration::ZERO));
    connect(&mut a, &mut b, nb, lane);
    ((na, a), (nb, b))
}

/// Has `a` dial `lane` to `b` (at `nb`) and polls both until it is up.
pub fn connect(a: &mut TcpLnd, b: &mut TcpLnd, nb: Nid, lane: Lane) {
    a.connect(nb, lane);
    let connected = |e: &LndEvent| matches!(e, LndEvent::Connected { .. });
    // Each side's handshake moves only while it is polled: poll both in turn.
    let start = Instant::now();
    let (mut a_up, mut b_up) = (false, false);
    let mut events = Vec::new();
    while !(a_up && b_up) {
        assert!(start.elapsed() < Duration::from_secs(5), "no connection");
        a.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        a_up |= events.iter().any(connected);
        events.clear();
        b.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        b_up |= events.iter().any(connected);
        events.clear();
    }
}

/// An LND busy-polling for `spin` (the first) with `lanes` up to it from a sleeping one
/// (the second), which dialled them.
pub fn dialled_by_a_sleeper(lanes: &[Lane], spin: Duration) -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let (mut a, mut b) = (lnd(na, spin), lnd(nb, Duration::ZERO));
    for &lane in lanes {
        b.connect(na, lane);
    }
    // Each side's handshake moves only while it is polled.
    let mut up = 0;
    let mut events = Vec::new();
    let start = Instant::now();
    while up < 2 * lanes.len() {
        assert!(start.elapsed() < Duration::from_secs(5), "no connections");
        for side in [&mut a, &mut b] {
            side.poll(&mut events, Some(Duration::from_millis(1)))
                .unwrap();
            up += events
                .drain(..)
                .filter(|e| matches!(e, LndEvent::Connected { .. }))
                .count();
        }
    }
    ((na, a), (nb, b))
}
