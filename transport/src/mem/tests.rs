//! The in-memory LND against the driver contract, driven by hand on a virtual clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::lnd::{RxPayload, TxToken};
use crate::time::{Clock, MonotonicClock, Time, VirtualClock};
use crate::wire::{decode_header, Limits};
use crate::wire::{encode_header, Body, Header};

const US: Duration = Duration::from_micros(1);

fn cfg(inc: u64) -> MemLndConfig {
    MemLndConfig {
        incarnation: inc,
        credits: PerLane::new(4, 8),
        max_payload: 1 << 16,
        inline_max: None,
        handshake_timeout: Duration::from_secs(1),
    }
}

fn setup() -> (VirtualClock, MemFabric, MemLnd, MemLnd) {
    let clock = VirtualClock::new();
    let fabric = MemFabric::new(Arc::new(clock.clone()), 3);
    fabric.set_default_link(LinkFaults {
        delay: 10 * US,
        ..LinkFaults::default()
    });
    let a = MemLnd::new(&fabric, Nid::mem(1, 0), cfg(11)).unwrap();
    let b = MemLnd::new(&fabric, Nid::mem(2, 0), cfg(22)).unwrap();
    (clock, fabric, a, b)
}

fn poll(lnd: &mut MemLnd) -> Vec<LndEvent> {
    let mut v = Vec::new();
    lnd.poll(&mut v, Some(Duration::ZERO)).unwrap();
    v
}

/// Advances the clock step by step, polling both sides, until neither has anything more.
fn exchange(
    clock: &VirtualClock,
    fabric: &MemFabric,
    a: &mut MemLnd,
    b: &mut MemLnd,
) -> (Vec<LndEvent>, Vec<LndEvent>) {
    let (mut ea, mut eb) = (poll(a), poll(b));
    while let Some(t) = fabric.next_arrival() {
        clock.advance_to(t);
        ea.extend(poll(a));
        eb.extend(poll(b));
    }
    (ea, eb)
}

fn data_frame(from: u32, to: u32, seq: u64) -> Transmit {
    let h = Header {
        hop_limit: 8,
        router_gen: 0,
        lane: Lane::Data,
        credits: 0,
        src: Nid::mem(from, 0),
        dst: Nid::mem(to, 0),
        src_incarnation: 11,
        msg_id: seq,
        payload_len: 3,
        body: Body::Put {
            portal: 1,
            match_bits: 2,
            settled_below: 0,
            ack: true,
        },
        attempt: 0,
    };
    Transmit::new(Nid::mem(to, 0), &h, Bytes::from_static(b"abc"), seq)
}

fn ping_frame(from: u32, to: u32, seq: u64) -> Transmit {
    let mut tx = data_frame(from, to, seq);
    let h = Header {
        hop_limit: 8,
        router_gen: 0,
        lane: Lane::Health,
        credits: 0,
        src: Nid::mem(from, 0),
        dst: Nid::mem(to, 0),
        src_incarnation: 1,
        msg_id: seq,
        payload_len: 0,
        body: Body::Ping { seq },
        attempt: 0,
    };
    tx.lane = Lane::Health;
    tx.header = encode_header(&h);
    tx.payload = Bytes::new();
    tx
}

fn connected_count(events: &[LndEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, LndEvent::Connected { .. }))
        .count()
}

#[test]
fn handshake_reports_each_side_with_the_others_hello() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(2, 0), Lane::Data);
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    match &ea[..] {
        [LndEvent::Connected {
            peer,
            lane: Lane::Data,
            hello,
            local_credits: 8,
        }] => {
            // Memory does not corrupt: headers to the peer go without a checksum.
            assert_eq!(
                (*peer, hello.incarnation, hello.credits, hello.header_check),
                (Nid::mem(2, 0), 22, 8, crate::wire::HeaderCheck::Link)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&eb[..], [LndEvent::Connected { peer, hello, .. }]
        if *peer == Nid::mem(1, 0) && hello.header_check == crate::wire::HeaderCheck::Link));
    assert_eq!(clock.now(), Time(20_000), "one round trip of 10 us delays");
}

#[test]
fn simultaneous_connects_make_one_connection_and_answer_both_requests() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(2, 0), Lane::Health);
    b.connect(Nid::mem(1, 0), Lane::Health);
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert_eq!(
        (connected_count(&ea), connected_count(&eb)),
        (1, 1),
        "{ea:?} {eb:?}"
    );
    // It is one connection, and frames cross it both ways.
    a.post(ping_frame(1, 2, 1));
    b.post(ping_frame(2, 1, 2));
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    let received = |ev: &[LndEvent]| -> Vec<(Nid, u64)> {
        ev.iter()
            .filter_map(|e| match e {
                LndEvent::Received { peer, header, .. } => Some((*peer, header.msg_id)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(received(&ea), vec![(Nid::mem(2, 0), 2)]);
    assert_eq!(received(&eb), vec![(Nid::mem(1, 0), 1)]);
}

#[test]
fn frames_arrive_in_order_despite_jitter_and_every_post_completes_once() {
    let (clock, fabric, mut a, mut b) = setup();
    fabric.set_default_link(LinkFaults {
        delay: 10 * US,
        jitter: 50 * US,
        ..LinkFaults::default()
    });
    a.connect(Nid::mem(2, 0), Lane::Data);
    exchange(&clock, &fabric, &mut a, &mut b);
    for seq in 0..200 {
        a.post(data_frame(1, 2, seq));
    }
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    let tokens: Vec<u64> = ea
        .iter()
        .map(|e| match e {
            LndEvent::SendComplete {
                token,
                result: Ok(()),
            } => token.0,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(tokens, (0..200).collect::<Vec<_>>());
    let ids: Vec<u64> = eb
        .iter()
        .map(|e| match e {
            LndEvent::Received {
                header, payload, ..
            } => {
                assert_eq!(payload, &RxPayload::Inline(Bytes::from_static(b"abc")));
                header.msg_id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, (0..200).collect::<Vec<_>>(), "FIFO per connection");
}

#[test]
fn loss_drops_about_the_configured_share_silently() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(2, 0), Lane::Data);
    exchange(&clock, &fabric, &mut a, &mut b);
    fabric.set_link(
        Nid::mem(1, 0),
        Nid::mem(2, 0),
        LinkFaults {
            loss: 0.25,
            ..LinkFaults::default()
        },
    );
    for seq in 0..4000 {
        a.post(data_frame(1, 2, seq));
    }
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert_eq!(
        ea.len(),
        4000,
        "the sender cannot tell: every send completes Ok"
    );
    let lost = 4000 - eb.len();
    assert!((800..1200).contains(&lost), "lost {lost} of 4000 at 25%");
    assert_eq!(fabric.stats().lost, lost as u64);
}

#[test]
fn connecting_to_nobody_is_refused_and_to_a_cut_link_times_out() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(9, 0), Lane::Data);
    let (ea, _) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        matches!(&ea[..], [LndEvent::ConnectFailed { error, .. }] if error.kind == LndErrorKind::Refused)
    );
    fabric.set_cut(Nid::mem(1, 0), Nid::mem(2, 0), true);
    fabric.set_connect_timeout(Duration::from_millis(3));
    let t0 = clock.now();
    a.connect(Nid::mem(2, 0), Lane::Data);
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        matches!(&ea[..], [LndEvent::ConnectFailed { error, .. }] if error.kind == LndErrorKind::TimedOut)
    );
    assert!(eb.is_empty());
    assert_eq!(clock.now() - t0, Duration::from_millis(3));
}

#[test]
fn a_dead_peer_resets_connections_after_what_it_already_sent() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(2, 0), Lane::Data);
    exchange(&clock, &fabric, &mut a, &mut b);
    b.post(data_frame(2, 1, 5));
    drop(b);
    let mut events = Vec::new();
    while let Some(t) = fabric.next_arrival() {
        clock.advance_to(t);
        events.extend(poll(&mut a));
    }
    assert!(matches!(&events[0], LndEvent::Received { header, .. } if header.msg_id == 5));
    assert!(
        matches!(&events[1], LndEvent::Disconnected { error, .. } if error.kind == LndErrorKind::Reset)
    );
    assert_eq!(events.len(), 2);
    // Posting to a peer that is gone completes with an error, not silence.
    a.post(data_frame(1, 2, 6));
    assert!(matches!(
        &poll(&mut a)[..],
        [LndEvent::SendComplete { result: Err(_), .. }]
    ));
}

#[test]
fn garbage_on_a_connection_closes_it_as_a_protocol_error() {
    let (clock, fabric, mut a, mut b) = setup();
    a.connect(Nid::mem(2, 0), Lane::Data);
    exchange(&clock, &fabric, &mut a, &mut b);
    let mut bad = data_frame(1, 2, 1);
    bad.header[0] ^= 0xff; // bad magic
    a.post(bad);
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        matches!(&eb[..], [LndEvent::Disconnected { error, .. }] if error.kind == LndErrorKind::Protocol),
        "{eb:?}"
    );
    assert!(
        ea.iter()
            .any(|e| matches!(e, LndEvent::Disconnected { .. })),
        "{ea:?}"
    );
}

#[test]
fn attaching_twice_or_off_a_mem_net_is_refused() {
    let (_, fabric, _a, _b) = setup();
    assert!(MemLnd::new(&fabric, Nid::mem(1, 0), cfg(1)).is_err());
    assert!(MemLnd::new(&fabric, "10.0.0.1@tcp".parse().unwrap(), cfg(1)).is_err());
}

#[test]
fn a_blocking_poll_on_the_real_clock_waits_for_frames_and_wakes_on_demand() {
    let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
    fabric.set_default_link(LinkFaults {
        delay: Duration::from_millis(30),
        ..LinkFaults::default()
    });
    let mut a = MemLnd::new(&fabric, Nid::mem(1, 0), cfg(1)).unwrap();
    let _b = MemLnd::new(&fabric, Nid::mem(2, 0), cfg(2)).unwrap();
    a.connect(Nid::mem(9, 0), Lane::Data); // refused after two delays: 60 ms
    let t0 = Instant::now();
    let mut events = Vec::new();
    a.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
    let waited = t0.elapsed();
    assert_eq!(events.len(), 1);
    assert!(
        waited >= Duration::from_millis(55) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // With nothing due, a wake from another thread ends the wait.
    let waker = a.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        waker.wake();
    });
    let t0 = Instant::now();
    a.poll(&mut events, None).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(4));
    t.join().unwrap();
}

/// On a real clock nobody asks for the next arrival (a virtual clock's driver loop does):
/// none is booked, or the fabric would hold one more for every frame while it lives.
#[test]
fn a_fabric_on_the_real_clock_books_no_arrivals() {
    let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
    let (an, bn) = (Nid::mem(1, 0), Nid::mem(2, 0));
    let mut a = MemLnd::new(&fabric, an, cfg(1)).unwrap();
    let mut b = MemLnd::new(&fabric, bn, cfg(2)).unwrap();
    a.connect(bn, Lane::Data);
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let wait = Some(Duration::from_millis(100));
    while !ea.iter().any(|e| matches!(e, LndEvent::Connected { .. })) {
        a.poll(&mut ea, wait).unwrap();
        b.poll(&mut eb, Some(Duration::ZERO)).unwrap();
    }
    for seq in 0..100 {
        a.post(data_frame(1, 2, seq));
        a.send_posted();
        while !eb.iter().any(|e| matches!(e, LndEvent::Received { .. })) {
            b.poll(&mut eb, wait).unwrap();
        }
        eb.clear();
    }
    assert_eq!(fabric.arrivals_booked(), 0);
}

/// Sets up a and b where a defers payloads over 16 bytes, connected on the data lane.
fn deferring() -> (VirtualClock, MemFabric, MemLnd, MemLnd) {
    let clock = VirtualClock::new();
    let fabric = MemFabric::new(Arc::new(clock.clone()), 3);
    fabric.set_default_link(LinkFaults {
        delay: 10 * US,
        ..LinkFaults::default()
    });
    let a_cfg = MemLndConfig {
        inline_max: Some(16),
        ..cfg(11)
    };
    let mut a = MemLnd::new(&fabric, Nid::mem(1, 0), a_cfg).unwrap();
    let mut b = MemLnd::new(&fabric, Nid::mem(2, 0), cfg(22)).unwrap();
    a.connect(Nid::mem(2, 0), Lane::Data);
    exchange(&clock, &fabric, &mut a, &mut b);
    (clock, fabric, a, b)
}

fn big_frame(seq: u64, len: usize) -> Transmit {
    let mut tx = data_frame(1, 2, seq);
    let mut h = decode_header(&tx.header, &Limits::default()).unwrap();
    h.payload_len = len as u32;
    tx.header = encode_header(&h);
    tx.payload = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
    tx
}

fn deferred_handle(events: &[LndEvent]) -> (RxHandle, u32) {
    match events {
        [LndEvent::Received {
            payload: RxPayload::Deferred { handle, len },
            ..
        }] => (*handle, *len),
        other => panic!("{other:?}"),
    }
}

#[test]
fn large_payloads_wait_at_the_sender_until_fetched_into_the_sink() {
    let (clock, fabric, mut a, mut b) = deferring();
    a.post(data_frame(1, 2, 1)); // 3 bytes: inline
    a.post(big_frame(2, 1000));
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert_eq!(ea.len(), 1, "only the inline frame's send is done: {ea:?}");
    assert!(matches!(
        &eb[0],
        LndEvent::Received {
            payload: RxPayload::Inline(_),
            ..
        }
    ));
    let (handle, len) = deferred_handle(&eb[1..]);
    assert_eq!(len, 1000);
    let t0 = clock.now();
    b.fetch(handle, BytesMut::with_capacity(1000));
    let (ea, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        matches!(
            &ea[..],
            [LndEvent::SendComplete {
                token: TxToken(2),
                result: Ok(())
            }]
        ),
        "{ea:?}"
    );
    match &eb[..] {
        [LndEvent::Fetched {
            handle: h,
            result: Ok(data),
        }] => {
            assert_eq!(*h, handle);
            assert_eq!(&data[..], &big_frame(2, 1000).payload[..]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(clock.now() - t0, 20 * US, "a fetch costs a round trip");
    // A handle is good for one fetch only.
    b.fetch(handle, BytesMut::new());
    assert!(matches!(
        &poll(&mut b)[..],
        [LndEvent::Fetched { result: Err(_), .. }]
    ));
}

#[test]
fn declined_payloads_free_the_sender_and_dead_connections_fail_both_sides() {
    let (clock, fabric, mut a, mut b) = deferring();
    a.post(big_frame(1, 100));
    let (_, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    b.decline(deferred_handle(&eb).0);
    let (ea, _) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(matches!(
        &ea[..],
        [LndEvent::SendComplete {
            token: TxToken(1),
            result: Ok(())
        }]
    ));

    a.post(big_frame(2, 100));
    let (_, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    let (handle, _) = deferred_handle(&eb);
    fabric.reset_connections(Nid::mem(1, 0), Nid::mem(2, 0));
    let (ea, _) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        ea.iter().any(|e| matches!(
            e,
            LndEvent::SendComplete {
                token: TxToken(2),
                result: Err(_)
            }
        )),
        "{ea:?}"
    );
    b.fetch(handle, BytesMut::new());
    let (_, eb) = exchange(&clock, &fabric, &mut a, &mut b);
    assert!(
        matches!(&eb[..], [LndEvent::Fetched { result: Err(_), .. }]),
        "{eb:?}"
    );
}

#[test]
fn a_version_1_peer_is_refused_with_both_versions_named() {
    let (clock, fabric, _a, mut b) = setup();
    let old = Nid::mem(3, 0);
    fabric.attach(old).unwrap();
    let fabric::Dial::New(conn) = fabric.dial(old, Nid::mem(2, 0), Lane::Data) else {
        panic!("a new connection");
    };
    let id = crate::handshake::Identity {
        nid: old,
        incarnation: 1,
        credits: PerLane::new(4, 8),
        max_payload: 1 << 16,
    };
    // A HELLO as a version 1 node (before routing) would send it.
    let mut hello = id.hello(Lane::Data).encode(Nid::mem(2, 0));
    hello[4] = 1;
    let crc = crc32fast::hash(&hello[..92]);
    hello[92..].copy_from_slice(&crc.to_le_bytes());
    fabric.send(old, conn, hello, Bytes::new(), true).unwrap();
    clock.advance(Duration::from_millis(1));
    assert!(
        !poll(&mut b)
            .iter()
            .any(|e| matches!(e, LndEvent::Connected { .. })),
        "no connection with a version 1 peer"
    );
    clock.advance(Duration::from_millis(1));
    let mut items = Vec::new();
    fabric.take_due(old, Some(Duration::ZERO), &mut items);
    let said = items
        .iter()
        .find_map(|i| match i {
            fabric::Item::Reset { error, .. } => Some(error.detail.clone()),
            _ => None,
        })
        .expect("the connection is closed");
    assert!(
        said.contains("version 1") && said.contains(&format!("version {}", crate::wire::VERSION)),
        "{said}"
    );
}
