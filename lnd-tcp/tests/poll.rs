//! Two TCP LNDs driven by hand over real sockets on 127.0.0.1: what a poll hands up.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::lnd::{Lnd, LndEvent, Transmit, TxToken};
use lanet::wire::{Body, Header};
use lanet::{Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{Backend, TcpConfig, TcpLnd};

fn lnd(nid: Nid, spin: Duration) -> TcpLnd {
    let mut cfg = TcpConfig::for_node(&NodeConfig::new(1));
    cfg.spin = spin;
    TcpLnd::bind(nid, cfg).unwrap()
}

fn put(from: Nid, to: Nid, msg_id: u64, token: u64) -> Transmit {
    put_of(from, to, msg_id, token, Bytes::from_static(b"data"))
}

/// A PUT frame carrying `payload`.
fn put_of(from: Nid, to: Nid, msg_id: u64, token: u64, payload: Bytes) -> Transmit {
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
    };
    Transmit::new(to, &header, payload, token)
}

/// Polls `lnd` until `pick` finds an event, for at most 5 s.
fn poll_until(lnd: &mut TcpLnd, pick: impl Fn(&LndEvent) -> bool) {
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
fn receive_msg_ids(lnd: &mut TcpLnd, n: usize) -> Vec<u64> {
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

/// The message ids of the frames received among `events`, which it empties.
fn msg_ids(events: &mut Vec<LndEvent>) -> Vec<u64> {
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
fn sends_done(events: &mut Vec<LndEvent>) -> Vec<u64> {
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
fn ping(from: Nid, to: Nid, seq: u64, token: u64) -> Transmit {
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
    };
    Transmit::new(to, &header, Bytes::new(), token)
}

/// Two LNDs with their data lane up between them.
fn connected_pair() -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
    connected_pair_on(Lane::Data, Duration::ZERO)
}

/// Two LNDs with `lane` up between them, the first busy-polling for `spin`.
fn connected_pair_on(lane: Lane, spin: Duration) -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let (mut a, mut b) = (lnd(na, spin), lnd(nb, Duration::ZERO));
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
    ((na, a), (nb, b))
}

/// A small send written whole at the end of the hand-over (`send_posted`: epoll's
/// `writev`, a sleeping io_uring's plain `sendmsg`) ends in `take_ready`, with no poll
/// (which would otherwise wake for nothing but that completion); the frame ends once,
/// and arrives.
#[test]
fn a_send_written_when_the_hand_over_ends_completes_without_a_poll() {
    let ((na, mut a), (nb, mut b)) = connected_pair();
    a.post(put(na, nb, 1, 7));
    a.send_posted();
    let mut ready = Vec::new();
    a.take_ready(&mut ready);
    let done = |e: &LndEvent| {
        matches!(
            e,
            LndEvent::SendComplete {
                token: TxToken(7),
                result: Ok(())
            }
        )
    };
    assert!(
        matches!(&ready[..], [e] if done(e)),
        "{:?}: {ready:?}",
        a.backend()
    );
    poll_until(&mut b, |e| matches!(e, LndEvent::Received { .. }));
    let mut later = Vec::new();
    for _ in 0..10 {
        a.poll(&mut later, Some(Duration::from_millis(1))).unwrap();
    }
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, LndEvent::SendComplete { .. })),
        "a second completion: {later:?}"
    );
}

/// A sleeping driver writes a socket once per look (a poll): frames of a second
/// hand-over before the next poll wait for it (with what else comes meanwhile) rather
/// than take a system call of their own. They leave with that poll, after the first
/// hand-over's, and each ends once: the first's at its hand-over, the second's in a poll.
#[test]
fn a_sleeping_driver_writes_a_socket_once_per_look() {
    let ((na, mut a), (nb, mut b)) = connected_pair();
    let mut done = Vec::new();
    a.post(put(na, nb, 1, 1));
    a.send_posted();
    a.take_ready(&mut done);
    assert_eq!(sends_done(&mut done), [1], "{:?}", a.backend());
    a.post(put(na, nb, 2, 2));
    a.send_posted();
    a.take_ready(&mut done);
    assert_eq!(
        sends_done(&mut done),
        Vec::<u64>::new(),
        "{:?}",
        a.backend()
    );
    assert_eq!(receive_msg_ids(&mut b, 1), [1]);
    let start = Instant::now();
    let mut ended = Vec::new();
    while ended.is_empty() && start.elapsed() < Duration::from_secs(5) {
        a.poll(&mut done, Some(Duration::from_millis(10))).unwrap();
        ended.extend(sends_done(&mut done));
    }
    assert_eq!(receive_msg_ids(&mut b, 1), [2]);
    for _ in 0..5 {
        a.poll(&mut done, Some(Duration::from_millis(1))).unwrap();
        ended.extend(sends_done(&mut done));
    }
    assert_eq!(ended, [2]);
}

/// Frames posted in one hand-over leave together when it ends (`send_posted`, one write
/// per connection), not one system call each as they are posted: until then the peer has
/// none of them, then all, in order.
#[test]
fn frames_posted_in_one_hand_over_leave_together_when_it_ends() {
    const FRAMES: u64 = 16;
    let ((na, mut a), (nb, mut b)) = connected_pair();
    for i in 0..FRAMES {
        a.post(put(na, nb, 100 + i, i));
    }
    let mut events = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(200) {
        b.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LndEvent::Received { .. })),
        "frames left before the hand-over ended: {events:?}"
    );
    let mut done = Vec::new();
    a.send_posted();
    a.take_ready(&mut done);
    let received = receive_msg_ids(&mut b, FRAMES as usize);
    assert_eq!(received, (100..100 + FRAMES).collect::<Vec<_>>());
    // Each send ends once (io_uring's may end in a later poll).
    let start = Instant::now();
    let mut tokens = Vec::new();
    let take_sends = |done: &mut Vec<LndEvent>, tokens: &mut Vec<(u64, bool)>| {
        tokens.extend(done.drain(..).filter_map(|e| match e {
            LndEvent::SendComplete { token, result } => Some((token.0, result.is_ok())),
            _ => None,
        }))
    };
    loop {
        take_sends(&mut done, &mut tokens);
        if tokens.len() as u64 >= FRAMES || start.elapsed() > Duration::from_secs(5) {
            break;
        }
        a.poll(&mut done, Some(Duration::from_millis(10))).unwrap();
    }
    for _ in 0..5 {
        a.poll(&mut done, Some(Duration::from_millis(1))).unwrap();
    }
    take_sends(&mut done, &mut tokens);
    tokens.sort_unstable();
    let expected: Vec<_> = (0..FRAMES).map(|t| (t, true)).collect();
    assert_eq!(tokens, expected);
}

/// Busy-polling, both backends send a hand-over's frames in `send_posted`: the peer has
/// them while the sender does not poll.
#[test]
fn a_busy_polling_driver_sends_when_the_hand_over_ends() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::from_millis(1));
    for i in 0..4 {
        a.post(put(na, nb, 100 + i, i));
    }
    a.send_posted();
    assert_eq!(receive_msg_ids(&mut b, 4), [100, 101, 102, 103]);
}

/// Busy-polling, both backends write a small frame themselves when the hand-over ends
/// and nothing of the socket's is in flight (io_uring: a plain `sendmsg`, not a ring
/// send): its completion is ready at once, with no poll, and comes once. Frames posted
/// around a large one (which io_uring's bulk mover sends) still arrive in order, each
/// completing once.
#[test]
fn a_busy_polling_drivers_small_send_completes_at_the_hand_over_and_keeps_its_order() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::from_millis(1));
    a.post(put(na, nb, 1, 1));
    a.send_posted();
    let mut ready = Vec::new();
    a.take_ready(&mut ready);
    assert_eq!(sends_done(&mut ready), [1]);

    // A small frame and a large one in one hand-over, then a small one while the large
    // one may still be on its way: it must not overtake it.
    a.post(put(na, nb, 2, 2));
    a.post(put_of(na, nb, 3, 3, Bytes::from(vec![3u8; 256 << 10])));
    a.send_posted();
    a.post(put(na, nb, 4, 4));
    a.send_posted();
    let mut done = Vec::new();
    a.take_ready(&mut done);
    let mut received = Vec::new();
    let mut events = Vec::new();
    let start = Instant::now();
    while received.len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(5), "got {received:?}");
        a.poll(&mut done, Some(Duration::ZERO)).unwrap();
        b.poll(&mut events, Some(Duration::from_millis(1))).unwrap();
        received.extend(msg_ids(&mut events));
    }
    assert_eq!(received, [1, 2, 3, 4]);
    for _ in 0..10 {
        a.poll(&mut done, Some(Duration::from_millis(1))).unwrap();
    }
    let mut tokens = sends_done(&mut done);
    tokens.sort_unstable();
    assert_eq!(tokens, [2, 3, 4], "each send ends once");
}

/// A busy-polling sender whose socket fills while its peer does not read: a direct write
/// gets part of a frame out and leaves the rest to a ring send (io_uring), which waits for
/// room. Once the peer has read, the next look's write must not go around that send (the
/// ring runs its rest only when entered, after the look's writes). Every frame arrives,
/// in order, and completes once.
#[test]
fn a_send_left_to_the_ring_is_never_overtaken() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::from_millis(1));
    let (mut a_events, mut b_events) = (Vec::new(), Vec::new());
    // Frames just under the 64 KiB a direct write takes, one a look, until one does not
    // get all out: the socket is full, and the rest of that frame is in the ring.
    let mut done = Vec::new();
    let mut posted = 0;
    loop {
        assert!(posted < 4_000, "240 MiB went out with the peer not reading");
        a.post(put_of(
            na,
            nb,
            posted,
            posted,
            Bytes::from(vec![7u8; 60 << 10]),
        ));
        posted += 1;
        a.send_posted();
        a.take_ready(&mut a_events);
        done.extend(sends_done(&mut a_events));
        if done.len() < posted as usize {
            break;
        }
        a.poll(&mut a_events, Some(Duration::ZERO)).unwrap(); // the next look
        done.extend(sends_done(&mut a_events));
    }
    // Room again at the sender, then a small frame in the next look.
    for _ in 0..4 {
        b.poll(&mut b_events, Some(Duration::ZERO)).unwrap();
    }
    a.post(put(na, nb, posted, posted));
    posted += 1;
    a.send_posted();
    a.poll(&mut a_events, Some(Duration::ZERO)).unwrap();
    done.extend(sends_done(&mut a_events));
    let mut received = Vec::new();
    let start = Instant::now();
    while received.len() < posted as usize || done.len() < posted as usize {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "received {} of {posted}, {} sends done; b: {b_events:?}",
            received.len(),
            done.len()
        );
        b.poll(&mut b_events, Some(Duration::from_millis(1)))
            .unwrap();
        received.extend(b_events.drain(..).map(|e| match e {
            LndEvent::Received { header, .. } => header.msg_id,
            e => panic!("the receiver saw {e:?}"),
        }));
        a.poll(&mut a_events, Some(Duration::ZERO)).unwrap();
        done.extend(sends_done(&mut a_events));
    }
    assert_eq!(received, (0..posted).collect::<Vec<_>>());
    for _ in 0..10 {
        a.poll(&mut a_events, Some(Duration::from_millis(1)))
            .unwrap();
    }
    done.extend(sends_done(&mut a_events));
    done.sort_unstable();
    assert_eq!(done, (0..posted).collect::<Vec<_>>(), "each send ends once");
}

/// A driver writes a connection's data frames once per look: the core hands over several
/// times a look, and a frame posted after that look's write waits for the next look
/// (`poll`), going with whatever else came by then (io_uring, busy-polling: one plain
/// `sendmsg` per socket per look; epoll: one `send_posted` write per look).
#[test]
fn a_driver_writes_its_data_frames_once_per_look() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::from_millis(1));
    a.post(put(na, nb, 1, 1));
    a.send_posted();
    a.post(put(na, nb, 2, 2));
    a.send_posted();
    let mut events = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        b.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(
        msg_ids(&mut events),
        [1],
        "the second frame left in the same look"
    );
    a.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap();
    assert_eq!(receive_msg_ids(&mut b, 1), [2]);
}

/// What a driver still holds when it is dropped (a node's last turn is not followed by a
/// poll) goes out first: a frame held for the next look, busy-polling, and one a sleeping
/// io_uring would have sent with its next poll.
#[test]
fn a_dropped_driver_sends_what_it_held() {
    for spin in [Duration::from_millis(1), Duration::ZERO] {
        let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, spin);
        a.post(put(na, nb, 1, 1));
        a.send_posted();
        a.post(put(na, nb, 2, 2));
        a.send_posted();
        drop(a);
        assert_eq!(receive_msg_ids(&mut b, 2), [1, 2], "spin {spin:?}");
    }
}

/// A hand-over of health frames only (written as they are posted) does not count as the
/// look's write of data frames: data frames handed over after it in the same look still
/// go at the end of their hand-over, the peer having them while the sender does not poll.
#[test]
fn a_look_whose_first_hand_over_was_health_only_still_writes_its_data_frames() {
    let ((na, mut a), (nb, mut b)) =
        dialled_by_a_sleeper(&[Lane::Data, Lane::Health], Duration::from_millis(1));
    a.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap(); // a look begins
    a.post(ping(na, nb, 7, 1));
    a.send_posted();
    a.post(put(na, nb, 8, 2));
    a.send_posted();
    let mut events = Vec::new();
    let (mut ping_came, mut put_came) = (false, false);
    let start = Instant::now();
    while !(ping_came && put_came) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "ping {ping_came}, put {put_came}"
        );
        b.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        for e in events.drain(..) {
            if let LndEvent::Received { header, .. } = e {
                ping_came |= header.body == Body::Ping { seq: 7 };
                put_came |= header.msg_id == 8 && header.lane == Lane::Data;
            }
        }
    }
}

/// A driver dropped while a stream of large frames is under way, at different points of
/// it, more frames posted just before: the drop does not panic, and the peer gets a prefix
/// of the frames, in order, each whole. (Whether the mover then holds one send or two, or
/// none, is up to timing: the case of one, with frames behind it, is not reliably reached
/// here.)
#[test]
fn a_driver_dropped_mid_stream_leaves_its_peer_a_prefix_of_whole_frames() {
    for trial in 0..16 {
        let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Data, Duration::ZERO);
        let big = |id: u64| put_of(na, nb, id, id, Bytes::from(vec![id as u8; 1 << 20]));
        // One frame: two messages for io_uring's mover. As the peer reads, the first
        // comes back and the mover holds one send; then more frames, and the drop.
        a.post(big(0));
        let mut events = Vec::new();
        a.poll(&mut events, Some(Duration::ZERO)).unwrap();
        for _ in 0..trial {
            b.poll(&mut Vec::new(), Some(Duration::ZERO)).unwrap();
            a.poll(&mut events, Some(Duration::ZERO)).unwrap();
        }
        for id in 1..3 {
            a.post(big(id));
        }
        drop(a);
        let mut received = Vec::new();
        let start = Instant::now();
        'reading: while start.elapsed() < Duration::from_secs(2) {
            b.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            for e in events.drain(..) {
                match e {
                    LndEvent::Received {
                        header, payload, ..
                    } => {
                        assert_eq!(payload.len(), 1 << 20, "trial {trial}: a frame cut");
                        received.push(header.msg_id);
                    }
                    LndEvent::Disconnected { .. } => break 'reading,
                    _ => {}
                }
            }
        }
        let prefix: Vec<u64> = (0..received.len() as u64).collect();
        assert_eq!(received, prefix, "trial {trial}");
    }
}

/// A health frame never waits for the end of a hand-over on epoll, where data frames do:
/// a PING must not queue behind data writes to other sockets. (A sleeping io_uring writes
/// both when the hand-over ends, or, if it wrote the socket already in that look, with
/// its next poll, which comes before it sleeps.)
#[test]
fn epoll_writes_a_health_frame_as_it_is_posted() {
    let ((na, mut a), (nb, mut b)) = connected_pair_on(Lane::Health, Duration::ZERO);
    if a.backend() != Backend::Epoll {
        return;
    }
    a.post(ping(na, nb, 7, 1));
    poll_until(
        &mut b,
        |e| matches!(e, LndEvent::Received { header, .. } if header.body == Body::Ping { seq: 7 }),
    );
}

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

/// An LND busy-polling for `spin` (the first) with `lanes` up to it from a sleeping one
/// (the second), which dialled them.
fn dialled_by_a_sleeper(lanes: &[Lane], spin: Duration) -> ((Nid, TcpLnd), (Nid, TcpLnd)) {
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
