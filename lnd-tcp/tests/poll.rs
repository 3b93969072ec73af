//! Two TCP LNDs driven by hand over real sockets on 127.0.0.1: what a poll hands up.
//! (When a hand-over's frames leave, and how they end: `writes.rs`.)

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use lanet::lnd::{Lnd, LndEvent};
use lanet::wire::Body;
use lanet::Lane;
use lanet_lnd_tcp::TcpLnd;

/// A driver that posts a frame before every poll always has a send completion waiting.
/// A poll may hand such events up without looking at the sockets, but the next one
/// looks: a frame from the peer still comes up at once.
#[test]
fn a_poll_with_completions_waiting_still_reads_the_sockets_at_the_next() {
    let ((na, mut a), (nb, mut b)) = connected_pair();
    let mut events = Vec::new();
    b.post(put(nb, na, 1, 1));
    poll_until(&mut b, |e| matches!(e, LndEvent::SendComplete { .. }));
    std::thread::sleep(Duration::from_millis(50)); // in A's socket by now
    let mut polls = 0;
    let received = loop {
        polls += 1;
        assert!(polls <= 50, "the peer's frame never came up");
        a.post(put(na, nb, 100 + polls, polls));
        a.poll(&mut events, Some(Duration::ZERO)).unwrap();
        let got = events
            .iter()
            .any(|e| matches!(e, LndEvent::Received { .. }));
        events.clear();
        if got {
            break polls;
        }
    };
    assert!(received <= 3, "came up at poll {received}");
}

/// A busy-polling driver reads its hot connection (the one data connection its last
/// looks read from) itself, most turns. Its other sockets must still be looked at while
/// that connection never runs dry: a PING on the health lane comes up within a few
/// polls, each of which found data frames, and the data frames come up whole and in
/// order meanwhile.
#[test]
fn a_busy_polling_driver_hears_its_other_sockets_while_one_never_runs_dry() {
    let ((na, mut a), (nb, mut b)) =
        dialled_by_a_sleeper(&[Lane::Data, Lane::Health], Duration::from_secs(10));
    let mut events = Vec::new();
    let mut next = 0;
    let mut received = Vec::new();
    let send_batch = |b: &mut TcpLnd, next: &mut u64| {
        for _ in 0..16 {
            b.post(put(nb, na, *next, *next));
            *next += 1;
        }
        b.send_posted();
        b.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap();
    };
    // A's data connection becomes its hot one.
    send_batch(&mut b, &mut next);
    poll_until(&mut a, |e| matches!(e, LndEvent::Received { .. }));
    // From now on there is always more on it before A polls.
    b.post(ping(nb, na, 7, u64::MAX));
    b.send_posted();
    let mut polls = 0;
    let heard = loop {
        polls += 1;
        if polls > 16 {
            break false;
        }
        send_batch(&mut b, &mut next);
        a.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        let (mut pinged, before) = (false, received.len());
        for e in events.drain(..) {
            if let LndEvent::Received { header, .. } = e {
                match header.body {
                    Body::Ping { seq: 7 } => pinged = true,
                    _ => received.push(header.msg_id),
                }
            }
        }
        // Else the hot connection ran dry, and this would test nothing.
        assert!(received.len() > before, "poll {polls} found no data frame");
        if pinged {
            break true;
        }
    };
    assert!(heard, "the PING did not come up within 16 polls");
    assert!(
        received
            .iter()
            .zip(received.iter().skip(1))
            .all(|(x, y)| y == &(x + 1)),
        "data frames out of order or lost: {received:?}"
    );
}

/// A busy-polling driver that reads its hot connection itself (io_uring: with no receive
/// in the ring meanwhile) must hand it back to the kernel before it sleeps: frames that
/// come while it sleeps wake it. Bursts come both within its spin and after it, and every
/// frame comes up once, in order, each wait ending long before its timeout.
#[test]
fn a_busy_polling_driver_wakes_for_its_hot_connection_after_its_spin() {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let mut a = lnd(na, Duration::from_micros(200));
    // The sender is made, and polled, on a thread of its own: an io_uring stays with the
    // thread that first used it.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut b = lnd(nb, Duration::ZERO);
        b.connect(na, Lane::Data);
        poll_until(&mut b, |e| matches!(e, LndEvent::Connected { .. }));
        let mut next = 0;
        for burst in 0..20u64 {
            // Within the spin, or well after it.
            let pause = if burst % 2 == 0 { 50 } else { 20_000 };
            std::thread::sleep(Duration::from_micros(pause));
            for _ in 0..8 {
                b.post(put(nb, na, next, next));
                next += 1;
            }
            b.send_posted();
            b.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap();
        }
        // Kept open until the receiver has everything.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
    });
    let mut events = Vec::new();
    let mut received = Vec::new();
    let start = Instant::now();
    while received.len() < 160 {
        let waited = Instant::now();
        a.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
        // A sleep the hot connection could not end lasts the whole timeout (10 s).
        let waited = waited.elapsed();
        assert!(waited < Duration::from_secs(5), "a wait took {waited:?}");
        received.extend(msg_ids(&mut events));
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "got {received:?}"
        );
    }
    let _ = done_tx.send(());
    sender.join().unwrap();
    assert_eq!(received, (0..160).collect::<Vec<_>>());
}

/// Two peers send to one busy-polling driver in bursts, within its spin and after it,
/// small frames and frames large enough for io_uring's bulk mover (received in place):
/// the hot connection changes between them, goes to the mover and back, and to the ring
/// before each sleep. Every frame comes up once, whole, in its connection's order.
#[test]
fn a_busy_polling_driver_keeps_each_connection_in_order_as_its_hot_one_changes() {
    const FRAMES: u64 = 60;
    let na = lanet_lnd_tcp::free_loopback_nid().unwrap();
    let mut a = lnd(na, Duration::from_micros(200));
    // Dropped when this thread is done, or panics: the senders then stop.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let senders: Vec<_> = (0..2u64)
        .map(|who| {
            let done_rx = done_rx.clone();
            std::thread::spawn(move || {
                // Made and polled on its own thread: an io_uring stays with its first.
                let nb = lanet_lnd_tcp::free_loopback_nid().unwrap();
                let mut b = lnd(nb, Duration::ZERO);
                b.connect(na, Lane::Data);
                poll_until(&mut b, |e| matches!(e, LndEvent::Connected { .. }));
                for i in 0..FRAMES {
                    // Every fifth frame is a bulk one (the mover's from 64 KiB).
                    let len = if i % 5 == 4 {
                        200 << 10
                    } else {
                        100 + i as usize
                    };
                    let payload = Bytes::from(vec![(who * 100 + i) as u8; len]);
                    b.post(put_of(nb, na, who << 32 | i, i, payload));
                    b.send_posted();
                    let mut sent = Vec::new();
                    b.poll(&mut sent, Some(Duration::ZERO)).unwrap();
                    if i % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(if i % 2 == 0 {
                            50
                        } else {
                            5_000
                        }));
                    }
                }
                // Polled until the receiver has everything, for the rest of the writes.
                while done_rx.try_recv() == Err(crossbeam_channel::TryRecvError::Empty) {
                    b.poll(&mut Vec::new(), Some(Duration::from_millis(1)))
                        .unwrap();
                }
            })
        })
        .collect();
    let mut received: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut events = Vec::new();
    let start = Instant::now();
    while received.iter().map(Vec::len).sum::<usize>() < 2 * FRAMES as usize {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "got {received:?}"
        );
        let waited = Instant::now();
        a.poll(&mut events, Some(Duration::from_secs(10))).unwrap();
        // Frames are on their way until the last is in: a wait of the whole timeout is
        // a wake-up lost (a connection without a receive, the mover's work not taken).
        let waited = waited.elapsed();
        assert!(waited < Duration::from_secs(5), "a wait took {waited:?}");
        for e in events.drain(..) {
            if let LndEvent::Received {
                header, payload, ..
            } = e
            {
                let (who, i) = (header.msg_id >> 32, header.msg_id & u64::from(u32::MAX));
                let lanet::lnd::RxPayload::Inline(bytes) = payload else {
                    panic!("TCP delivers payloads inline");
                };
                let whole = bytes.len() == header.payload_len as usize
                    && bytes.iter().all(|&b| b == (who * 100 + i) as u8);
                assert!(whole, "frame {i} of sender {who} corrupted");
                received[who as usize].push(i);
            }
        }
    }
    drop(done_tx);
    for s in senders {
        s.join().unwrap();
    }
    for (who, got) in received.iter().enumerate() {
        assert_eq!(got, &(0..FRAMES).collect::<Vec<_>>(), "sender {who}");
    }
}
