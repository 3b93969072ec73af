//! Two engines joined by in-memory byte pipes: handshakes, races, failures, timeouts.

use std::io::IoSlice;

use super::*;
use crate::framing::MAX_SLICES;
use lanet::handshake::LocalHello;
use lanet::lane::PerLane;
use lanet::wire::{encode_header, Body, Header};

const T: Duration = Duration::from_secs(5);

fn local(n: u32) -> Local {
    Local {
        id: Identity {
            nid: Nid::mem(n, 0),
            incarnation: u64::from(n) * 10,
            credits: PerLane::new(4, 8),
            max_payload: 1 << 20,
        },
        connect_timeout: T,
        check_source_address: true,
        max_pending_accepts: 4,
        auth: Auth::open(),
    }
}

/// The bytes `e` has queued on `conn` (as many as one `writev` takes), not yet written.
fn queued_bytes(e: &mut Engine, conn: ConnId) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(c) = e.conn_mut(conn) {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = c.tx.slices_up_to(&mut slices, usize::MAX);
        for s in &slices[..n] {
            bytes.extend_from_slice(s);
        }
    }
    bytes
}

/// Moves everything `from` has queued on `fc` into `to`'s `tc`, as TCP would.
fn carry(from: &mut Engine, fc: ConnId, to: &mut Engine, tc: ConnId, now: Instant) {
    let bytes = queued_bytes(from, fc);
    if bytes.is_empty() {
        return;
    }
    from.wrote(fc, bytes.len());
    if let Some(c) = to.conn_mut(tc) {
        c.rx.extend(&bytes);
        to.received(tc, || now);
    }
}

fn events(e: &mut Engine) -> Vec<LndEvent> {
    std::mem::take(&mut e.events)
}

fn connected(events: &[LndEvent]) -> Vec<(Nid, Lane)> {
    events
        .iter()
        .filter_map(|e| match e {
            LndEvent::Connected { peer, lane, .. } => Some((*peer, *lane)),
            _ => None,
        })
        .collect()
}

fn ping(from: u32, to: u32, token: u64) -> Transmit {
    Transmit::new(
        Nid::mem(to, 0),
        &ping_header(from, to, token),
        Bytes::new(),
        token,
    )
}

fn ping_header(from: u32, to: u32, token: u64) -> Header {
    Header {
        hop_limit: 8,
        router_gen: 0,
        lane: Lane::Health,
        credits: 0,
        src: Nid::mem(from, 0),
        dst: Nid::mem(to, 0),
        src_incarnation: 1,
        msg_id: token,
        payload_len: 0,
        body: Body::Ping { seq: token },
        attempt: 0,
    }
}

/// The header of a data-lane PUT of `len` bytes from node `from` to node `to`.
fn put_header(from: u32, to: u32, len: u32) -> [u8; lanet::wire::HEADER_LEN] {
    encode_header(&Header {
        lane: Lane::Data,
        payload_len: len,
        body: Body::Put {
            portal: 4,
            match_bits: 0,
            settled_below: 0,
            ack: true,
        },
        ..ping_header(from, to, 1)
    })
}

/// A dials B on the health lane: A's socket 1 is B's socket 101.
fn dial_pair(a: &mut Engine, b: &mut Engine, now: Instant) {
    dial_pair_on(a, b, now, Lane::Health)
}

/// A dials B on `lane`: A's socket 1 is B's socket 101.
fn dial_pair_on(a: &mut Engine, b: &mut Engine, now: Instant, lane: Lane) {
    assert!(a.want_connect(Nid::mem(2, 0), lane, now));
    a.dialled(1, Nid::mem(2, 0), lane, now);
    b.accepted(101, None, now);
    a.established(1);
    carry(a, 1, b, 101, now);
    carry(b, 101, a, 1, now);
}

#[test]
fn a_dial_and_an_accept_shake_hands_and_carry_frames() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    let ea = events(&mut a);
    match &ea[..] {
        [LndEvent::Connected {
            peer,
            lane: Lane::Health,
            hello,
            local_credits: 4,
        }] => {
            assert_eq!(
                (*peer, hello.incarnation, hello.credits),
                (Nid::mem(2, 0), 20, 4)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        connected(&events(&mut b)),
        vec![(Nid::mem(1, 0), Lane::Health)]
    );
    // Connecting again is answered at once from the established connection.
    assert!(!a.want_connect(Nid::mem(2, 0), Lane::Health, now));
    assert_eq!(connected(&events(&mut a)).len(), 1);

    assert_eq!(a.post(ping(1, 2, 7)), Some(1));
    carry(&mut a, 1, &mut b, 101, now);
    assert!(matches!(
        &events(&mut a)[..],
        [LndEvent::SendComplete {
            token: TxToken(7),
            result: Ok(())
        }]
    ));
    assert!(
        matches!(&events(&mut b)[..], [LndEvent::Received { header, .. }] if header.msg_id == 7)
    );
    // No connection, no send: the frame completes with an error at once.
    assert_eq!(
        a.post(Transmit {
            lane: Lane::Data,
            ..ping(1, 2, 8)
        }),
        None
    );
    assert!(matches!(
        &events(&mut a)[..],
        [LndEvent::SendComplete {
            token: TxToken(8),
            result: Err(_)
        }]
    ));
}

#[test]
fn simultaneous_dials_leave_one_connection_and_no_failure() {
    let now = Instant::now();
    let (n1, n2) = (Nid::mem(1, 0), Nid::mem(2, 0));
    // Both orders of arrival: the refusal may overtake the winner's HELLO or follow it;
    // without keys, and with (the winner is up on B once its AUTH arrives).
    for (refusal_first, keys) in [(true, false), (false, false), (true, true), (false, true)] {
        let node = |n| if keys { keyed(n, KEY) } else { local(n) };
        let (mut a, mut b) = (Engine::new(node(1)), Engine::new(node(2)));
        assert!(a.want_connect(n2, Lane::Data, now));
        assert!(b.want_connect(n1, Lane::Data, now));
        // A's dial: a socket 1 <-> b socket 201. B's dial: b socket 2 <-> a socket 102.
        a.dialled(1, n2, Lane::Data, now);
        b.dialled(2, n1, Lane::Data, now);
        b.accepted(201, None, now);
        a.accepted(102, None, now);
        a.established(1);
        b.established(2);
        if refusal_first {
            carry(&mut b, 2, &mut a, 102, now); // B's HELLO reaches A, dialling: A (lower) refuses
            carry(&mut a, 102, &mut b, 2, now); // B learns it lost, waits
            carry(&mut a, 1, &mut b, 201, now); // A's HELLO reaches B: accepted
        } else {
            carry(&mut a, 1, &mut b, 201, now); // A's HELLO reaches B while B dials: A's wins
            carry(&mut b, 2, &mut a, 102, now); // B's HELLO (sent before) reaches A: refused
            carry(&mut a, 102, &mut b, 2, now); // the refusal finds B's dial already dropped
        }
        carry(&mut b, 201, &mut a, 1, now); // B's reply: A is up
        let mut eb = events(&mut b);
        if keys {
            assert!(connected(&eb).is_empty(), "B up before A's AUTH: {eb:?}");
        }
        carry(&mut a, 1, &mut b, 201, now); // A's AUTH, if it owes one: B is up
        let ea = events(&mut a);
        eb.extend(events(&mut b));
        assert_eq!(connected(&ea), vec![(n2, Lane::Data)], "A: {ea:?}");
        assert_eq!(connected(&eb), vec![(n1, Lane::Data)], "B: {eb:?}");
        assert!(ea
            .iter()
            .chain(&eb)
            .all(|e| matches!(e, LndEvent::Connected { .. })));
        // Nothing left waiting to fail later.
        a.expire(now + 2 * T);
        b.expire(now + 2 * T);
        assert!(events(&mut a).is_empty() && events(&mut b).is_empty());
        assert_eq!(a.conns.up(n2, Lane::Data), Some(1));
        assert_eq!(b.conns.up(n1, Lane::Data), Some(201));
    }
}

#[test]
fn handshakes_and_lost_races_time_out_into_connect_failures() {
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    let now = Instant::now();
    a.dialled(1, Nid::mem(2, 0), Lane::Data, now);
    assert_eq!(a.next_deadline(), Some(now + T));
    a.expire(now + T);
    assert!(
        matches!(&events(&mut a)[..], [LndEvent::ConnectFailed { error, .. }] if error.kind == LndErrorKind::TimedOut)
    );
    assert_eq!(a.take_closes(), vec![1]);
    // A dial that lost a race, whose winner never shows up.
    b.dialled(2, Nid::mem(1, 0), Lane::Data, now);
    b.established(2);
    let mut race = local(1)
        .id
        .hello(Lane::Data)
        .header_with(Nid::mem(2, 0), HelloStatus::Race);
    race.dst = Nid::mem(2, 0);
    b.conn_mut(2).unwrap().rx.extend(&encode_header(&race));
    b.received(2, || now);
    assert!(events(&mut b).is_empty(), "a lost race is not a failure");
    assert!(
        !b.want_connect(Nid::mem(1, 0), Lane::Data, now),
        "still waiting for the winner"
    );
    b.expire(now + T);
    assert!(
        matches!(&events(&mut b)[..], [LndEvent::ConnectFailed { error, .. }] if error.kind == LndErrorKind::TimedOut)
    );
}

/// The epoll backend stops writing a socket when `wrote` says nothing more waits: a
/// wrong "nothing" would leave frames queued with no edge to wake for them.
#[test]
fn wrote_says_whether_more_waits_and_frames_read_together_all_arrive() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    events(&mut a);
    events(&mut b);
    for token in [1, 2, 3] {
        assert_eq!(a.post(ping(1, 2, token)), Some(1));
    }
    let bytes = queued_bytes(&mut a, 1);
    let frame = bytes.len() / 3;
    assert!(a.wrote(1, frame + 1), "two frames and a byte still wait");
    assert!(a.wrote(1, frame), "the third frame is not all out");
    assert!(!a.wrote(1, frame - 1), "all out");
    let done = events(&mut a);
    assert_eq!(done.len(), 3, "{done:?}");
    // All three reach B in one read, which reads no clock: the connection is up.
    b.conn_mut(101).unwrap().rx.extend(&bytes);
    b.received(101, || panic!("a read of an up connection read the clock"));
    let ids: Vec<u64> = events(&mut b)
        .iter()
        .filter_map(|e| match e {
            LndEvent::Received { header, .. } => Some(header.msg_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

/// The acceptor's HELLO and a frame it sent right behind it arrive in one read: the
/// HELLO brings the connection up, and the frame is then received on it.
#[test]
fn a_hello_and_a_frame_behind_it_in_one_read_both_arrive_in_order() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    assert!(a.want_connect(Nid::mem(2, 0), Lane::Health, now));
    a.dialled(1, Nid::mem(2, 0), Lane::Health, now);
    b.accepted(101, None, now);
    a.established(1);
    carry(&mut a, 1, &mut b, 101, now);
    assert_eq!(b.post(ping(2, 1, 9)), Some(101), "B is up once it answered");
    carry(&mut b, 101, &mut a, 1, now);
    let ea = events(&mut a);
    let at = |wanted: fn(&LndEvent) -> bool| ea.iter().position(wanted);
    let up = at(|e| matches!(e, LndEvent::Connected { .. }));
    let ping = at(|e| matches!(e, LndEvent::Received { header, .. } if header.msg_id == 9));
    assert!(matches!((up, ping), (Some(u), Some(p)) if u < p), "{ea:?}");
}

#[test]
fn a_hello_from_the_wrong_node_is_refused_and_garbage_fails_the_connection() {
    let now = Instant::now();
    let (mut a, mut c) = (Engine::new(local(1)), Engine::new(local(3)));
    // A dials 2@mem but node 3 answers.
    a.dialled(1, Nid::mem(2, 0), Lane::Health, now);
    c.accepted(301, None, now);
    a.established(1);
    carry(&mut a, 1, &mut c, 301, now);
    assert!(
        events(&mut c).is_empty(),
        "3 refuses a HELLO addressed to 2"
    );
    assert_eq!(c.take_closes(), vec![301]);

    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    events(&mut a);
    events(&mut b);
    a.post(ping(1, 2, 5));
    b.conn_mut(101).unwrap().rx.extend(&[0xab; 100]);
    b.received(101, || now);
    assert!(
        matches!(&events(&mut b)[..], [LndEvent::Disconnected { error, .. }] if error.kind == LndErrorKind::Protocol)
    );
    // A's end then fails too: its queued frame completes with the error.
    a.fail(1, err(LndErrorKind::Reset, "connection reset by peer"));
    let ea = events(&mut a);
    assert!(ea.iter().any(|e| matches!(
        e,
        LndEvent::SendComplete {
            token: TxToken(5),
            result: Err(_)
        }
    )));
    assert!(ea
        .iter()
        .any(|e| matches!(e, LndEvent::Disconnected { .. })));
    assert_eq!(ea.len(), 2, "{ea:?}");
}

#[test]
fn a_late_hello_from_the_race_loser_is_refused_but_a_restarted_peer_replaces_the_connection() {
    let now = Instant::now();
    let (n1, n2) = (Nid::mem(1, 0), Nid::mem(2, 0));
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    // A (the lower NID) dials B and is up.
    a.want_connect(n2, Lane::Data, now);
    a.dialled(1, n2, Lane::Data, now);
    b.accepted(201, None, now);
    a.established(1);
    carry(&mut a, 1, &mut b, 201, now);
    carry(&mut b, 201, &mut a, 1, now);
    assert_eq!(connected(&events(&mut a)), vec![(n2, Lane::Data)]);
    events(&mut b);
    // A HELLO from B's own dial, sent before B accepted A's, arrives late: refused.
    let mut late_b = Engine::new(local(2));
    late_b.dialled(2, n1, Lane::Data, now);
    late_b.established(2);
    a.accepted(102, None, now);
    carry(&mut late_b, 2, &mut a, 102, now);
    assert!(events(&mut a).is_empty(), "the working connection stays");
    assert_eq!(a.conns.up(n2, Lane::Data), Some(1));
    carry(&mut a, 102, &mut late_b, 2, now);
    assert!(
        events(&mut late_b).is_empty(),
        "the loser learns it lost, without failing"
    );
    // B restarts (new incarnation) and dials: that connection replaces the old one.
    let mut old = local(2);
    old.id.incarnation = 99;
    let mut reborn = Engine::new(old);
    reborn.dialled(3, n1, Lane::Data, now);
    reborn.established(3);
    a.accepted(103, None, now);
    carry(&mut reborn, 3, &mut a, 103, now);
    let ea = events(&mut a);
    assert!(
        matches!(&ea[0], LndEvent::Disconnected { error, .. } if error.detail.contains("replaced")),
        "{ea:?}"
    );
    assert!(matches!(&ea[1], LndEvent::Connected { hello, .. } if hello.incarnation == 99));
}

#[test]
fn the_backend_waits_no_longer_than_work_and_deadlines_allow() {
    let now = Instant::now();
    let mut e = Engine::new(local(1));
    let long = Some(Duration::from_secs(60));
    assert_eq!(
        e.wait(long, false),
        long,
        "nothing pending: the core's timeout"
    );
    assert_eq!(
        e.wait(None, false),
        None,
        "no timeout at all: wait until woken"
    );
    assert_eq!(
        e.wait(long, true),
        Some(Duration::ZERO),
        "backend work pending: do not block"
    );
    e.dial_failed(Nid::mem(2, 0), Lane::Data, err(LndErrorKind::Refused, "x"));
    assert_eq!(
        e.wait(None, false),
        Some(Duration::ZERO),
        "events for the core: do not block"
    );
    events(&mut e);
    e.dialled(1, Nid::mem(2, 0), Lane::Data, now);
    let w = e
        .wait(long, false)
        .expect("a handshake deadline bounds the wait");
    assert!(w <= T, "{w:?}");
}

#[test]
fn a_version_1_hello_closes_the_connection_without_a_word_to_the_core() {
    let mut b = Engine::new(local(2));
    let now = Instant::now();
    b.accepted(7, None, now);
    let mut hello = local(1).id.hello(Lane::Data).encode(Nid::mem(2, 0));
    hello[4] = 1; // the version is checked before the checksum
    b.conn_mut(7).unwrap().rx.extend(&hello);
    b.received(7, || now);
    assert!(events(&mut b).is_empty());
    assert_eq!(b.take_closes(), vec![7]);
}

#[test]
fn a_hello_naming_a_nid_at_another_address_than_the_socket_is_refused() {
    let now = Instant::now();
    let tcp = |ip: &str| -> Local {
        let mut l = local(0);
        l.id.nid = format!("{ip}@tcp").parse().unwrap();
        l
    };
    let from = |ip: &str| Some(ip.parse::<IpAddr>().unwrap());
    let b_nid: Nid = "10.0.0.2@tcp".parse().unwrap();
    for (source, check, refused) in [
        ("10.0.0.9", true, true),   // claims 10.0.0.1, comes from 10.0.0.9
        ("10.0.0.1", true, false),  // comes from where it says
        ("10.0.0.9", false, false), // the check is off
    ] {
        let (mut a, mut b) = (Engine::new(tcp("10.0.0.1")), Engine::new(tcp("10.0.0.2")));
        b.local.check_source_address = check;
        assert!(a.want_connect(b_nid, Lane::Data, now));
        a.dialled(1, b_nid, Lane::Data, now);
        b.accepted(101, from(source), now);
        a.established(1);
        carry(&mut a, 1, &mut b, 101, now);
        let up = connected(&events(&mut b));
        if refused {
            assert!(up.is_empty(), "{source}: {up:?}");
            assert_eq!(b.take_closes(), vec![101]);
        } else {
            assert_eq!(
                up,
                vec![("10.0.0.1@tcp".parse().unwrap(), Lane::Data)],
                "{source}"
            );
        }
    }
}

#[test]
fn past_the_cap_of_connections_awaiting_their_hello_the_oldest_is_closed() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    // `local` allows 4 at once.
    for id in 0..4 {
        b.accepted(500 + id, None, now);
    }
    assert!(b.take_closes().is_empty());
    b.accepted(504, None, now);
    assert_eq!(b.take_closes(), vec![500], "the oldest makes room");
    // A newcomer is never locked out: the newest still says HELLO and comes up.
    assert!(a.want_connect(Nid::mem(2, 0), Lane::Health, now));
    a.dialled(1, Nid::mem(2, 0), Lane::Health, now);
    a.established(1);
    carry(&mut a, 1, &mut b, 504, now);
    assert_eq!(
        connected(&events(&mut b)),
        vec![(Nid::mem(1, 0), Lane::Health)]
    );
    // Up, it no longer counts: room for one more without closing anyone.
    b.accepted(505, None, now);
    assert!(b.take_closes().is_empty());
    b.accepted(506, None, now);
    assert_eq!(b.take_closes(), vec![501]);
}

/// Before its HELLO, a connection is held to the handshake's frames: a data frame's header
/// closes it at once, before the node makes room for its payload (1 MiB here; 16 MiB by
/// default, for each of up to `max_pending_accepts` strangers).
#[test]
fn a_data_frame_before_the_hello_closes_the_connection_before_its_payload_is_read() {
    let now = Instant::now();
    let mut b = Engine::new(local(2));
    b.accepted(101, None, now);
    b.conn_mut(101)
        .unwrap()
        .rx
        .extend(&put_header(1, 2, 1 << 20));
    b.received(101, || now);
    assert_eq!(b.take_closes(), vec![101]);
    assert!(b.conn_mut(101).is_none());
    assert!(
        events(&mut b).is_empty(),
        "nothing for the core: it never came up"
    );

    // Up on the data lane, the same header is a frame like any other.
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair_on(&mut a, &mut b, now, Lane::Data);
    events(&mut b);
    let c = b.conn_mut(101).unwrap();
    c.rx.extend(&put_header(1, 2, 1 << 20));
    b.received(101, || now);
    assert!(b.take_closes().is_empty());
    assert_eq!(b.conn_mut(101).unwrap().rx.rest_of_frame(), 1 << 20);
}

/// A data-lane frame on a health connection fails it at its header, before the node makes
/// room for its payload: the health lane's buffers are for its own small frames.
#[test]
fn a_data_frame_on_the_health_connection_fails_it_before_its_payload_is_read() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    events(&mut b);
    b.conn_mut(101)
        .unwrap()
        .rx
        .extend(&put_header(1, 2, 1 << 20));
    b.received(101, || now);
    let why = failure(&events(&mut b)).expect("the connection fails");
    assert!(
        why.contains("a frame of the data lane on the health lane's connection"),
        "{why}"
    );
    assert_eq!(b.take_closes(), vec![101]);
}

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn keyed(n: u32, key: &str) -> Local {
    let mut l = local(n);
    l.auth = Auth::new(
        Some(lanet::handshake::auth::Keys::parse(key).unwrap()),
        None,
    )
    .unwrap();
    l
}

/// A frame without a header checksum, as an RDMA peer sends it, fails a TCP connection:
/// TCP does not protect headers well enough for that.
#[test]
fn a_header_without_a_checksum_fails_a_tcp_connection() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    events(&mut a);
    events(&mut b);
    let mut unchecked = ping(1, 2, 5).header;
    unchecked[10] = lanet::wire::FLAG_LINK_CHECKED;
    unchecked[92..].fill(0);
    b.conn_mut(101).unwrap().rx.extend(&unchecked);
    b.received(101, || now);
    let why = failure(&events(&mut b)).expect("the connection fails");
    assert!(why.contains("without a checksum"), "{why}");
}

fn failure(events: &[LndEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        LndEvent::ConnectFailed { error, .. } | LndEvent::Disconnected { error, .. } => {
            Some(error.to_string())
        }
        _ => None,
    })
}

#[test]
fn with_keys_the_acceptor_is_up_only_once_the_dialler_proves_its_key() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(keyed(1, KEY)), Engine::new(keyed(2, KEY)));
    dial_pair(&mut a, &mut b, now);
    assert_eq!(
        connected(&events(&mut a)),
        vec![(Nid::mem(2, 0), Lane::Health)]
    );
    assert!(events(&mut b).is_empty(), "B waits for A's AUTH");
    // A sends at once, right behind its AUTH: B is up, then hears the frame.
    assert_eq!(a.post(ping(1, 2, 9)), Some(1));
    carry(&mut a, 1, &mut b, 101, now);
    let eb = events(&mut b);
    assert!(
        matches!(&eb[..], [LndEvent::Connected { .. }, LndEvent::Received { header, .. }] if header.msg_id == 9),
        "{eb:?}"
    );
    assert!(b.take_closes().is_empty());
}

#[test]
fn a_wrong_key_fails_the_dial_and_b_never_comes_up() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(keyed(1, OTHER_KEY)), Engine::new(keyed(2, KEY)));
    dial_pair(&mut a, &mut b, now);
    let why = failure(&events(&mut a)).expect("A's dial fails");
    assert!(why.contains("different keys"), "{why}");
    assert_eq!(a.take_closes(), vec![1]);
    // B's side ends at its handshake deadline, never up.
    b.expire(now + T + Duration::from_millis(1));
    assert!(connected(&events(&mut b)).is_empty());
    assert_eq!(b.take_closes(), vec![101]);
}

#[test]
fn a_dialler_without_a_key_is_told_the_acceptor_requires_one() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(keyed(2, KEY)));
    dial_pair(&mut a, &mut b, now);
    let why = failure(&events(&mut a)).expect("A's dial fails");
    assert!(why.contains("key_file") && why.contains("secure"), "{why}");
    assert!(events(&mut b).is_empty());
    // B closed the connection once its refusal was out.
    assert_eq!(b.take_closes(), vec![101]);
    // And an acceptor without keys is refused by a dialler that has them.
    let (mut a, mut b) = (Engine::new(keyed(1, KEY)), Engine::new(local(2)));
    dial_pair(&mut a, &mut b, now);
    let why = failure(&events(&mut a)).expect("A's dial fails");
    assert!(why.contains("sent no proof"), "{why}");
}

/// A connection being refused keeps nothing its peer goes on sending: a peer that does
/// not read could otherwise hold the refusal back, and have the node buffer its stream,
/// until the handshake deadline.
#[test]
fn what_a_refused_dialler_goes_on_sending_is_not_kept() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(local(1)), Engine::new(keyed(2, KEY)));
    assert!(a.want_connect(Nid::mem(2, 0), Lane::Health, now));
    a.dialled(1, Nid::mem(2, 0), Lane::Health, now);
    b.accepted(101, None, now);
    a.established(1);
    carry(&mut a, 1, &mut b, 101, now);
    // B refuses the keyless HELLO; its refusal waits to be written (A does not read).
    assert!(!queued_bytes(&mut b, 101).is_empty());
    for _ in 0..64 {
        b.conn_mut(101).unwrap().rx.extend(&[0x5a; 64 * 1024]);
        b.received(101, || now);
    }
    assert_eq!(b.conn_mut(101).unwrap().rx.buffered(), 0);
    assert!(events(&mut b).is_empty());
}

/// What an impostor claiming to be `nid` says first, as a keyed dialler would: its HELLO
/// to node 2 with a nonce (and no proof to follow).
fn impostor_hello(nid: Nid, lane: Lane) -> (LocalHello, Vec<u8>) {
    let hello = LocalHello {
        nid,
        incarnation: 10,
        lane,
        credits: 4,
        max_payload: 1 << 20,
    };
    let ext = lanet::handshake::auth::HelloAuth {
        nonce: [7; 16],
        proof: None,
    };
    let (h, p) = hello.frame(Nid::mem(2, 0), HelloStatus::Ok, Some(&ext));
    (hello, [&h[..], &p].concat())
}

#[test]
fn nothing_but_an_auth_is_heard_from_a_dialler_that_owes_one() {
    let now = Instant::now();
    let mut b = Engine::new(keyed(2, KEY));
    b.accepted(101, None, now);
    // An impostor sends a HELLO with a nonce, as a keyed dialler would, then a PING.
    let (hello, said) = impostor_hello(Nid::mem(1, 0), Lane::Health);
    let c = b.conn_mut(101).unwrap();
    c.rx.extend(&said);
    c.rx.extend(&encode_header(&Header {
        credits: 0,
        ..lanet::wire::decode_header(&ping(1, 2, 3).header, &Limits::default()).unwrap()
    }));
    b.received(101, || now);
    let eb = events(&mut b);
    assert!(
        !eb.iter()
            .any(|e| matches!(e, LndEvent::Connected { .. } | LndEvent::Received { .. })),
        "{eb:?}"
    );
    assert_eq!(b.take_closes(), vec![101]);
    // A forged AUTH (a proof under another key) fails the same way.
    b.accepted(102, None, now);
    b.conn_mut(102).unwrap().rx.extend(&said);
    b.received(102, || now);
    let mut forged = vec![1, 0, 0, 0];
    forged.extend([0x5a; 32]);
    let proof = lanet::handshake::auth::Proof::decode(&forged).unwrap();
    let (ah, ap) = hello.auth_frame(Nid::mem(2, 0), &proof);
    let c = b.conn_mut(102).unwrap();
    c.rx.extend(&ah);
    c.rx.extend(&ap);
    b.received(102, || now);
    assert!(connected(&events(&mut b)).is_empty());
    assert_eq!(b.take_closes(), vec![102]);
}

#[test]
fn connections_awaiting_their_auth_count_against_the_cap() {
    let now = Instant::now();
    let mut b = Engine::new(keyed(2, KEY));
    // Four impostors (the cap) get as far as B's challenge, and wait there.
    for i in 0..4u32 {
        let id = 500 + i as usize;
        b.accepted(id, None, now);
        let (_, said) = impostor_hello(Nid::mem(10 + i, 0), Lane::Data);
        b.conn_mut(id).unwrap().rx.extend(&said);
        b.received(id, || now);
    }
    assert!(b.take_closes().is_empty());
    b.accepted(504, None, now);
    assert_eq!(b.take_closes(), vec![500], "the oldest makes room");
}

#[test]
fn an_unproven_hello_neither_cancels_our_dial_nor_takes_its_place() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(keyed(1, KEY)), Engine::new(keyed(2, KEY)));
    // B dials A; A's NID is the lower, so a real connection from A would win the race.
    assert!(b.want_connect(Nid::mem(1, 0), Lane::Data, now));
    b.dialled(1, Nid::mem(1, 0), Lane::Data, now);
    // An impostor claiming to be A says HELLO with a nonce, and never proves a key.
    b.accepted(201, None, now);
    let (_, said) = impostor_hello(Nid::mem(1, 0), Lane::Data);
    b.conn_mut(201).unwrap().rx.extend(&said);
    b.received(201, || now);
    assert!(b.take_closes().is_empty(), "B's dial is left alone");
    // B's dial goes on and comes up with the real A.
    a.accepted(11, None, now);
    b.established(1);
    carry(&mut b, 1, &mut a, 11, now);
    carry(&mut a, 11, &mut b, 1, now);
    assert_eq!(
        connected(&events(&mut b)),
        vec![(Nid::mem(1, 0), Lane::Data)]
    );
    carry(&mut b, 1, &mut a, 11, now);
    assert_eq!(
        connected(&events(&mut a)),
        vec![(Nid::mem(2, 0), Lane::Data)]
    );
    // The impostor's connection ends at its deadline, having changed nothing.
    b.expire(now + T + Duration::from_millis(1));
    assert!(events(&mut b).is_empty());
    assert_eq!(b.take_closes(), vec![201]);
}

/// With keys, B (the higher NID) dials A; A answers with a challenge, so B takes the
/// connection for up and sends on it. A's core asks for a connection to B before B's
/// proof arrives, and A dials. The proof comes: B's connection wins over A's dial (A's
/// NID is the lower, but refusing B's connection now would flap it under B's frames);
/// A's dial goes quietly, and its request is answered by B's connection.
#[test]
fn with_keys_a_proved_connection_wins_over_a_dial_started_after_its_challenge() {
    let now = Instant::now();
    let (mut a, mut b) = (Engine::new(keyed(1, KEY)), Engine::new(keyed(2, KEY)));
    assert!(b.want_connect(Nid::mem(1, 0), Lane::Health, now));
    b.dialled(1, Nid::mem(1, 0), Lane::Health, now);
    a.accepted(101, None, now);
    b.established(1);
    carry(&mut b, 1, &mut a, 101, now); // B's HELLO
    carry(&mut a, 101, &mut b, 1, now); // A's challenge
    assert_eq!(
        connected(&events(&mut b)),
        vec![(Nid::mem(1, 0), Lane::Health)]
    );
    assert!(a.want_connect(Nid::mem(2, 0), Lane::Health, now));
    a.dialled(5, Nid::mem(2, 0), Lane::Health, now);
    assert_eq!(b.post(ping(2, 1, 9)), Some(1));
    carry(&mut b, 1, &mut a, 101, now); // B's AUTH, then its PING
    let ea = events(&mut a);
    assert!(
        matches!(&ea[..], [LndEvent::Connected { .. }, LndEvent::Received { header, .. }] if header.msg_id == 9),
        "{ea:?}"
    );
    assert_eq!(
        a.take_closes(),
        vec![5],
        "A's dial goes, quietly; B's stays"
    );
}

/// The warnings logged while it is the thread's subscriber: their messages.
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn last(&self) -> String {
        self.0.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        *m.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if *e.metadata().level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            e.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A thousand refused handshakes (a HELLO from the wrong address, again and again) are
/// each refused, and logged only at the 1st, 2nd, 4th, ... 512th: a peer dialling in a
/// loop must not flood the log. While refusals go on, the first 10 minutes or more after
/// the last line is logged too, saying how many went unlogged; and one after a quiet
/// spell at once.
#[test]
fn refused_handshakes_are_logged_at_powers_of_two_and_10_minutes_apart() {
    let now = Instant::now();
    let warnings = Warnings::default();
    let tcp = |n: u32, ip: &str| -> Local {
        let mut l = local(n);
        l.id.nid = format!("{ip}@tcp").parse().unwrap();
        l
    };
    let mut b = Engine::new(tcp(2, "10.0.0.2"));
    b.local.check_source_address = true;
    let b_nid = b.local.id.nid;
    let mut refuse = |i: usize, at: Instant| {
        let mut a = Engine::new(tcp(1, "10.0.0.1"));
        assert!(a.want_connect(b_nid, Lane::Data, at));
        a.dialled(1, b_nid, Lane::Data, at);
        b.accepted(100 + i, Some("10.9.9.9".parse().unwrap()), at);
        a.established(1);
        carry(&mut a, 1, &mut b, 100 + i, at);
        assert_eq!(b.take_closes(), vec![100 + i], "refused");
        assert!(connected(&events(&mut b)).is_empty());
    };
    tracing::subscriber::with_default(warnings.clone(), || {
        for i in 0..1000 {
            refuse(i, now);
        }
        assert_eq!(warnings.count(), 10);
        // Then one every 6 minutes for an hour (a peer misconfigured for good, say): a
        // line at 12, 24, 36, 48 and 60 minutes (each 10 minutes or more after the last),
        // so that the log goes on saying that refusals happen.
        let minutes = |m: u64| now + Duration::from_secs(60 * m);
        for k in 1..=10 {
            refuse(1000 + k, minutes(6 * k as u64));
            if k == 2 {
                // Those past the 512th, and the one at 6 minutes.
                assert!(
                    warnings.last().contains("489 of them not logged"),
                    "{}",
                    warnings.last()
                );
            }
        }
        assert_eq!(warnings.count(), 15);
        // After a quiet spell, the next at once.
        refuse(1011, minutes(71));
        assert_eq!(warnings.count(), 16);
        assert!(warnings
            .last()
            .contains("1011 refused since the start, 0 of them"));
    });
}
