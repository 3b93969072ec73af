//! Unit tests of the node alone: driver events are fed by hand, outputs inspected.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::handshake::PeerHello;
use crate::lnd::{LndErrorKind, LndEvent, RxHandle, RxPayload, TxToken};
use crate::op::{EntryKind, Refused, RejectReason};
use crate::wire::{decode_header, Header, Limits, Status};

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;
const MS: Duration = Duration::from_millis(1);

fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

fn t(ms: u64) -> Time {
    Time(ms * 1_000_000)
}

fn cfg() -> NodeConfig {
    NodeConfig::new(100)
}

fn node_with(cfg: NodeConfig) -> Node {
    let mut n = Node::new(cfg);
    n.add_ni(nid(A)).unwrap();
    n
}

fn node() -> Node {
    node_with(cfg())
}

struct Sent {
    header: Header,
    payload: Bytes,
    token: TxToken,
}

fn drain(n: &mut Node) -> Vec<Sent> {
    std::iter::from_fn(|| n.poll_transmit())
        .map(|(_, tx)| Sent {
            header: decode_header(&tx.header, &Limits::default()).unwrap(),
            payload: tx.payload,
            token: tx.token,
        })
        .collect()
}

fn events(n: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

fn completions(n: &mut Node) -> Vec<(OpId, Result<OpOutcome, OpError>)> {
    events(n)
        .into_iter()
        .filter_map(|e| match e {
            Event::Completed(c) => Some((c.op, c.result)),
            _ => None,
        })
        .collect()
}

fn requests(n: &mut Node) -> Vec<LndRequest> {
    std::iter::from_fn(|| n.poll_request())
        .map(|(_, r)| r)
        .collect()
}

fn connected(n: &mut Node, peer: u32, lane: Lane, credits: u16, incarnation: u64) {
    let hello = PeerHello {
        nid: nid(peer),
        incarnation,
        lane,
        credits,
        max_payload: 1 << 20,
    };
    let local_credits = n.config().lanes[lane].peer_credits;
    n.handle_lnd_event(
        Time::ZERO,
        NiId(0),
        LndEvent::Connected {
            peer: nid(peer),
            lane,
            hello,
            local_credits,
        },
    );
}

// A frame is its fields; bundling them into a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn receive(
    n: &mut Node,
    now: Time,
    peer: u32,
    lane: Lane,
    body: Body,
    msg_id: u64,
    credits: u16,
    payload: &[u8],
) {
    let header = Header {
        lane,
        credits,
        src: nid(peer),
        dst: nid(A),
        src_incarnation: 7,
        msg_id,
        payload_len: payload.len() as u32,
        body,
    };
    n.handle_lnd_event(
        now,
        NiId(0),
        LndEvent::Received {
            peer: nid(peer),
            lane,
            header,
            payload: RxPayload::Inline(Bytes::copy_from_slice(payload)),
        },
    );
}

fn sent_ok(n: &mut Node, s: &Sent) {
    n.handle_lnd_event(
        Time::ZERO,
        NiId(0),
        LndEvent::SendComplete {
            token: s.token,
            result: Ok(()),
        },
    );
}

fn put(dst: u32, bytes: &'static [u8]) -> PutRequest {
    PutRequest {
        dst: nid(dst),
        portal: 4,
        match_bits: 0x10,
        payload: Bytes::from_static(bytes),
        timeout: None,
    }
}

fn ping(dst: u32) -> PingRequest {
    PingRequest {
        dst: nid(dst),
        lane: Lane::Health,
        timeout: None,
    }
}

#[test]
fn put_connects_sends_and_completes_on_ack() {
    let mut n = node();
    n.put(t(0), OpId(1), put(B, b"hello")).unwrap();
    assert_eq!(
        requests(&mut n),
        vec![LndRequest::Connect {
            peer: nid(B),
            lane: Lane::Data
        }]
    );
    assert!(
        drain(&mut n).is_empty(),
        "nothing goes out before the lane is up"
    );
    connected(&mut n, B, Lane::Data, 8, 7);
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    let h = sent[0].header;
    assert_eq!(
        h.body,
        Body::Put {
            portal: 4,
            match_bits: 0x10
        }
    );
    assert_eq!(
        (h.src, h.dst, h.lane, h.src_incarnation),
        (nid(A), nid(B), Lane::Data, 100)
    );
    assert_eq!(&sent[0].payload[..], b"hello");
    sent_ok(&mut n, &sent[0]);
    assert!(
        completions(&mut n).is_empty(),
        "a PUT completes on its ACK, not on sending"
    );
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Ack {
            status: Status::Ok,
            mlen: 5,
        },
        h.msg_id,
        1,
        b"",
    );
    assert_eq!(
        completions(&mut n),
        vec![(OpId(1), Ok(OpOutcome::Put { mlen: 5 }))]
    );
    assert_eq!(n.live_ops(), 0);
}

#[test]
fn sends_wait_for_peer_credits_and_resume_when_returned() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 2, 7);
    for i in 0..4 {
        n.put(t(0), OpId(i), put(B, b"x")).unwrap();
    }
    let first = drain(&mut n);
    assert_eq!(first.len(), 2, "two credits, two frames");
    // The peer returns one credit on an ACK: exactly one more frame leaves.
    let id0 = first[0].header.msg_id;
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Ack {
            status: Status::Ok,
            mlen: 1,
        },
        id0,
        1,
        b"",
    );
    let next = drain(&mut n);
    assert_eq!(next.len(), 1);
    // It carries back the credit we owe for the ACK we consumed.
    assert_eq!(next[0].header.credits, 1);
    receive(&mut n, t(1), B, Lane::Data, Body::Credit, 0, 2, b"");
    assert_eq!(drain(&mut n).len(), 1, "the last queued PUT");
}

#[test]
fn owed_credits_go_back_in_a_credit_frame_at_the_high_water_mark() {
    let mut c = cfg();
    c.lanes[Lane::Data].peer_credits = 4;
    c.lanes[Lane::Data].credits_hiw = 3;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 1, 7);
    // Spend our only credit, so nothing else can carry credits back.
    n.put(t(0), OpId(1), put(B, b"x")).unwrap();
    assert_eq!(drain(&mut n).len(), 1);
    for seq in 0..2 {
        receive(
            &mut n,
            t(1),
            B,
            Lane::Data,
            Body::Ping { seq },
            50 + seq,
            0,
            b"",
        );
    }
    assert!(
        drain(&mut n).is_empty(),
        "PONGs wait for a credit; 2 owed < hiw 3"
    );
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Ping { seq: 2 },
        52,
        0,
        b"",
    );
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.body, Body::Credit);
    assert_eq!(sent[0].header.credits, 3);
    assert_eq!(n.stats().credit_frames_sent, 1);
    // The CREDIT frame spent no credit: the PONGs still wait, and go when one comes back.
    receive(&mut n, t(2), B, Lane::Data, Body::Credit, 0, 1, b"");
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert!(matches!(sent[0].header.body, Body::Pong { seq: 0 }));
    assert_eq!(
        sent[0].header.credits, 0,
        "the CREDIT frame took everything owed"
    );
}

#[test]
fn ni_credits_bound_frames_in_flight_across_peers() {
    let mut c = cfg();
    c.lanes[Lane::Data].ni_credits = 2;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 8, 7);
    connected(&mut n, C, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put(B, b"1")).unwrap();
    n.put(t(0), OpId(2), put(C, b"2")).unwrap();
    n.put(t(0), OpId(3), put(C, b"3")).unwrap();
    n.put(t(0), OpId(4), put(B, b"4")).unwrap();
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 2);
    sent_ok(&mut n, &sent[0]);
    let more = drain(&mut n);
    assert_eq!(more.len(), 1, "one credit back, one frame out");
    // Waiting peers are served in the order they ran out: C first, then B.
    assert_eq!(more[0].header.dst, nid(C));
    sent_ok(&mut n, &sent[1]);
    assert_eq!(drain(&mut n)[0].header.dst, nid(B));
}

#[test]
fn health_frames_leave_before_queued_data() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    connected(&mut n, B, Lane::Health, 8, 7);
    for i in 0..5 {
        n.put(t(0), OpId(i), put(B, b"data")).unwrap();
    }
    n.ping(t(0), OpId(99), ping(B)).unwrap();
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 6);
    assert_eq!(sent[0].header.lane, Lane::Health);
    assert!(matches!(sent[0].header.body, Body::Ping { .. }));
    assert!(sent[1..].iter().all(|s| s.header.lane == Lane::Data));
    receive(
        &mut n,
        t(3),
        B,
        Lane::Health,
        Body::Pong { seq: 0 },
        sent[0].header.msg_id,
        1,
        b"",
    );
    assert_eq!(
        completions(&mut n),
        vec![(OpId(99), Ok(OpOutcome::Pong { rtt: 3 * MS }))]
    );
}

#[test]
fn deadlines_say_where_an_operation_was_stuck() {
    let mut n = node();
    // Never connected: network timeout.
    n.put(
        t(0),
        OpId(1),
        PutRequest {
            timeout: Some(10 * MS),
            ..put(B, b"a")
        },
    )
    .unwrap();
    // Connected but no credits: local timeout (LNet blames the local NI).
    connected(&mut n, C, Lane::Data, 1, 7);
    n.put(t(0), OpId(2), put(C, b"b")).unwrap();
    n.put(
        t(0),
        OpId(3),
        PutRequest {
            timeout: Some(20 * MS),
            ..put(C, b"c")
        },
    )
    .unwrap();
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    // Op 2 is in the driver with no send completion: network timeout at the default deadline.
    assert_eq!(n.poll_timeout(), Some(t(10)));
    n.handle_timeout(t(10));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(1), Err(OpError::NetworkTimeout))]
    );
    n.handle_timeout(t(20));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(3), Err(OpError::LocalTimeout))]
    );
    n.handle_timeout(t(10_000));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(2), Err(OpError::NetworkTimeout))]
    );
    // Sent, acknowledged by the driver, never answered: remote timeout.
    n.put(
        t(10_000),
        OpId(4),
        PutRequest {
            timeout: Some(5 * MS),
            ..put(C, b"d")
        },
    )
    .unwrap();
    receive(&mut n, t(10_000), C, Lane::Data, Body::Credit, 0, 1, b"");
    let sent = drain(&mut n);
    sent_ok(&mut n, &sent[0]);
    n.handle_timeout(t(10_005));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(4), Err(OpError::RemoteTimeout))]
    );
    // A late ACK is counted, not completed again.
    receive(
        &mut n,
        t(10_006),
        C,
        Lane::Data,
        Body::Ack {
            status: Status::Ok,
            mlen: 1,
        },
        sent[0].header.msg_id,
        0,
        b"",
    );
    assert!(completions(&mut n).is_empty());
    assert_eq!(n.stats().late_responses, 1);
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn bad_requests_complete_at_once_with_a_clear_error() {
    let mut n = node();
    let far = "10.0.0.1@tcp".parse().unwrap();
    n.put(
        t(0),
        OpId(1),
        PutRequest {
            dst: far,
            ..put(B, b"")
        },
    )
    .unwrap();
    n.put(t(0), OpId(2), put(A, b"self")).unwrap();
    let mut big = put(B, b"");
    big.payload = Bytes::from(vec![0; n.config().max_payload as usize + 1]);
    n.put(t(0), OpId(3), big).unwrap();
    let c = completions(&mut n);
    assert_eq!(c[0], (OpId(1), Err(OpError::NoRoute(far))));
    assert!(matches!(&c[1].1, Err(OpError::Invalid(m)) if m.contains("is this node")));
    assert!(matches!(&c[2].1, Err(OpError::Invalid(m)) if m.contains("exceeds max_payload")));
    assert!(requests(&mut n).is_empty());
    n.attach(OpId(4), MatchEntry::sink(1, 0, 10)).unwrap();
    assert_eq!(
        n.put(t(0), OpId(4), put(B, b"")),
        Err(SubmitError::DuplicateOpId(OpId(4)))
    );
}

#[test]
fn connection_failures_complete_queued_and_in_flight_operations() {
    let mut n = node();
    n.put(t(0), OpId(1), put(B, b"a")).unwrap();
    let refused = LndError::new(LndErrorKind::Refused, "connection refused");
    n.handle_lnd_event(
        t(1),
        NiId(0),
        LndEvent::ConnectFailed {
            peer: nid(B),
            lane: Lane::Data,
            error: refused,
        },
    );
    let c = completions(&mut n);
    assert!(matches!(&c[..], [(OpId(1), Err(OpError::Remote(m)))] if m.contains("refused")));

    requests(&mut n);
    n.put(t(2), OpId(2), put(B, b"b")).unwrap();
    n.put(t(2), OpId(3), put(B, b"c")).unwrap();
    assert_eq!(requests(&mut n).len(), 1, "a new attempt after the failure");
    connected(&mut n, B, Lane::Data, 1, 7);
    let sent = drain(&mut n);
    sent_ok(&mut n, &sent[0]);
    let reset = LndError::new(LndErrorKind::Reset, "connection reset by peer");
    n.handle_lnd_event(
        t(3),
        NiId(0),
        LndEvent::Disconnected {
            peer: nid(B),
            lane: Lane::Data,
            error: reset,
        },
    );
    let c = completions(&mut n);
    assert!(
        matches!(&c[..], [(OpId(2), Err(OpError::Network(_)))]),
        "{c:?}"
    );
    // The still-queued op asks for a new connection and goes out on it.
    assert_eq!(
        requests(&mut n),
        vec![LndRequest::Connect {
            peer: nid(B),
            lane: Lane::Data
        }]
    );
    connected(&mut n, B, Lane::Data, 1, 7);
    assert_eq!(&drain(&mut n)[0].payload[..], b"c");
}

#[test]
fn a_new_incarnation_is_a_restart_and_loses_what_the_old_one_owed() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put(B, b"a")).unwrap();
    let sent = drain(&mut n);
    sent_ok(&mut n, &sent[0]);
    connected(&mut n, B, Lane::Data, 8, 7);
    assert!(
        events(&mut n).is_empty(),
        "same incarnation: a reconnection, not a restart"
    );
    connected(&mut n, B, Lane::Data, 8, 8);
    assert_eq!(
        events(&mut n),
        vec![
            Event::PeerRestarted {
                peer: nid(B),
                old: 7,
                new: 8
            },
            Event::Completed(Completion {
                op: OpId(1),
                result: Err(OpError::PeerRestarted)
            }),
        ]
    );
}

#[test]
fn frames_that_lie_about_their_origin_close_the_connection() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    let header = Header {
        lane: Lane::Data,
        credits: 0,
        src: nid(C),
        dst: nid(A),
        src_incarnation: 7,
        msg_id: 1,
        payload_len: 0,
        body: Body::Credit,
    };
    n.handle_lnd_event(
        t(0),
        NiId(0),
        LndEvent::Received {
            peer: nid(B),
            lane: Lane::Data,
            header,
            payload: RxPayload::Inline(Bytes::new()),
        },
    );
    assert!(matches!(&requests(&mut n)[..], [LndRequest::Close { peer, .. }] if *peer == nid(B)));
    // Returning credits never spent is a protocol error too.
    receive(&mut n, t(0), B, Lane::Data, Body::Credit, 0, 1, b"");
    assert_eq!(requests(&mut n).len(), 1);
    assert_eq!(n.stats().protocol_errors, 2);
}

#[test]
fn puts_land_in_matching_entries_in_order_and_once_entries_unlink() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    connected(&mut n, C, Lane::Data, 8, 7);
    let mut only_c = MatchEntry::sink(4, 0x10, 100).once();
    only_c.source = Some(nid(C));
    n.attach(OpId(1), only_c).unwrap();
    n.attach(
        OpId(2),
        MatchEntry {
            ignore_bits: 0xf,
            ..MatchEntry::sink(4, 0x10, 3)
        },
    )
    .unwrap();
    n.attach(OpId(3), MatchEntry::sink(4, 0x10, 100)).unwrap();

    // From B: entry 1 wants C, entry 2 ignores the low bits but is too small, entry 3 takes it.
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Put {
            portal: 4,
            match_bits: 0x10,
        },
        9,
        0,
        b"four",
    );
    // From C with other low bits: entry 1 needs exact bits; entry 2 fits.
    receive(
        &mut n,
        t(0),
        C,
        Lane::Data,
        Body::Put {
            portal: 4,
            match_bits: 0x1f,
        },
        10,
        0,
        b"abc",
    );
    // From C exact: entry 1, which then unlinks.
    receive(
        &mut n,
        t(0),
        C,
        Lane::Data,
        Body::Put {
            portal: 4,
            match_bits: 0x10,
        },
        11,
        0,
        b"c!",
    );
    let ev = events(&mut n);
    let delivered: Vec<(OpId, &[u8])> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Delivered(d) => Some((d.entry, &d.payload[..])),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered,
        vec![(OpId(3), &b"four"[..]), (OpId(2), b"abc"), (OpId(1), b"c!")]
    );
    assert!(ev.contains(&Event::Completed(Completion {
        op: OpId(1),
        result: Ok(OpOutcome::Unlinked)
    })));
    // Each PUT was ACKed with its accepted length.
    let acks: Vec<Body> = drain(&mut n).into_iter().map(|s| s.header.body).collect();
    assert_eq!(
        acks,
        vec![
            Body::Ack {
                status: Status::Ok,
                mlen: 4
            },
            Body::Ack {
                status: Status::Ok,
                mlen: 3
            },
            Body::Ack {
                status: Status::Ok,
                mlen: 2
            }
        ]
    );
}

#[test]
fn unmatched_and_over_budget_puts_are_refused_with_a_reason() {
    let mut c = cfg();
    c.max_undelivered = 1;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Put {
            portal: 5,
            match_bits: 0x10,
        },
        1,
        0,
        b"?",
    );
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Put {
            portal: 4,
            match_bits: 0x10,
        },
        2,
        0,
        b"full",
    );
    n.deliveries_consumed(1);
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Put {
            portal: 4,
            match_bits: 0x10,
        },
        3,
        0,
        b"ok",
    );
    let acks: Vec<Status> = drain(&mut n)
        .into_iter()
        .map(|s| match s.header.body {
            Body::Ack { status, .. } => status,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(acks, vec![Status::NoMatch, Status::Busy, Status::Ok]);
    let ev = events(&mut n);
    assert!(matches!(
        &ev[0],
        Event::Refused(Refused {
            reason: RejectReason::NoMatch,
            portal: 5,
            ..
        })
    ));
    assert!(matches!(&ev[1], Event::Delivered(d) if &d.payload[..] == b"ok"));
    assert_eq!((n.stats().refused_no_match, n.stats().refused_busy), (1, 1));
}

#[test]
fn gets_are_answered_from_sources_and_rejections_reach_the_initiator() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(
        OpId(1),
        MatchEntry::source(6, 1, Bytes::from_static(b"0123456789")),
    )
    .unwrap();
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Get {
            portal: 6,
            match_bits: 1,
            want_len: 4,
        },
        5,
        0,
        b"",
    );
    receive(
        &mut n,
        t(0),
        B,
        Lane::Data,
        Body::Get {
            portal: 6,
            match_bits: 2,
            want_len: 4,
        },
        6,
        0,
        b"",
    );
    let sent = drain(&mut n);
    assert_eq!(sent[0].header.body, Body::Reply { status: Status::Ok });
    assert_eq!(
        (&sent[0].payload[..], sent[0].header.msg_id),
        (&b"0123"[..], 5)
    );
    assert_eq!(
        sent[1].header.body,
        Body::Reply {
            status: Status::NoMatch
        }
    );

    n.get(
        t(0),
        OpId(2),
        GetRequest {
            dst: nid(B),
            portal: 6,
            match_bits: 1,
            want_len: 8,
            timeout: None,
        },
    )
    .unwrap();
    let g = drain(&mut n);
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Reply {
            status: Status::NoMatch,
        },
        g[0].header.msg_id,
        0,
        b"",
    );
    let c = completions(&mut n);
    assert_eq!(
        c,
        vec![(OpId(2), Err(OpError::Rejected(RejectReason::NoMatch)))]
    );
}

#[test]
fn cancel_and_shutdown_complete_each_operation_exactly_once() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 1, 7);
    n.put(t(0), OpId(1), put(B, b"a")).unwrap();
    n.put(t(0), OpId(2), put(B, b"b")).unwrap();
    n.attach(OpId(3), MatchEntry::sink(1, 0, 10)).unwrap();
    n.ping(t(0), OpId(4), ping(B)).unwrap();
    let sent = drain(&mut n);
    n.cancel(OpId(2));
    n.cancel(OpId(2));
    n.shutdown();
    n.put(t(0), OpId(5), put(B, b"late")).unwrap();
    let c = completions(&mut n);
    let ids: Vec<OpId> = c.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![OpId(2), OpId(1), OpId(3), OpId(4), OpId(5)]);
    assert!(c.iter().all(|(_, r)| *r == Err(OpError::Cancelled)));
    // Late driver and peer events find nothing to complete.
    sent_ok(&mut n, &sent[0]);
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Ack {
            status: Status::Ok,
            mlen: 1,
        },
        sent[0].header.msg_id,
        0,
        b"",
    );
    n.handle_timeout(t(1_000_000));
    assert!(completions(&mut n).is_empty());
    assert!(matches!(
        n.attach(
            OpId(6),
            MatchEntry {
                kind: EntryKind::Sink { max_len: 1 },
                ..MatchEntry::sink(1, 0, 1)
            }
        ),
        Ok(())
    ));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(6), Err(OpError::Cancelled))]
    );
}

fn receive_deferred(n: &mut Node, body: Body, msg_id: u64, handle: u64, len: u32) {
    let header = Header {
        lane: Lane::Data,
        credits: 0,
        src: nid(B),
        dst: nid(A),
        src_incarnation: 7,
        msg_id,
        payload_len: len,
        body,
    };
    let payload = RxPayload::Deferred {
        handle: RxHandle(handle),
        len,
    };
    let ev = LndEvent::Received {
        peer: nid(B),
        lane: Lane::Data,
        header,
        payload,
    };
    n.handle_lnd_event(t(0), NiId(0), ev);
}

fn fetched(n: &mut Node, handle: u64, result: Result<Bytes, LndError>) {
    let ev = LndEvent::Fetched {
        handle: RxHandle(handle),
        result,
    };
    n.handle_lnd_event(t(0), NiId(0), ev);
}

fn acks(n: &mut Node) -> Vec<(u64, Status, u32)> {
    drain(n)
        .into_iter()
        .map(|s| match s.header.body {
            Body::Ack { status, mlen } => (s.header.msg_id, status, mlen),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn deferred_payloads_are_fetched_after_matching_and_declined_otherwise() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100).once())
        .unwrap();
    n.attach(OpId(2), MatchEntry::sink(4, 0x10, 100).once())
        .unwrap();
    let put = Body::Put {
        portal: 4,
        match_bits: 0x10,
    };

    receive_deferred(&mut n, put, 1, 11, 50);
    match &requests(&mut n)[..] {
        [LndRequest::Fetch {
            handle: RxHandle(11),
            sink,
        }] => assert!(sink.capacity() >= 50),
        other => panic!("{other:?}"),
    }
    assert!(drain(&mut n).is_empty(), "no ACK before the payload is in");
    // Entry 1 is reserved by that payload: the next PUT matches entry 2.
    receive_deferred(&mut n, put, 2, 12, 60);
    assert!(matches!(
        &requests(&mut n)[..],
        [LndRequest::Fetch {
            handle: RxHandle(12),
            ..
        }]
    ));
    // Nothing matches portal 9: the payload is declined and the sender told.
    receive_deferred(
        &mut n,
        Body::Put {
            portal: 9,
            match_bits: 0,
        },
        3,
        13,
        70,
    );
    assert_eq!(
        requests(&mut n),
        vec![LndRequest::Decline {
            handle: RxHandle(13)
        }]
    );
    assert_eq!(acks(&mut n), vec![(3, Status::NoMatch, 0)]);
    events(&mut n);

    // Entry 2's payload is lost in transit: ACK Aborted, the entry is free again.
    let lost = LndError::new(LndErrorKind::Reset, "connection reset");
    fetched(&mut n, 12, Err(lost));
    assert_eq!(acks(&mut n), vec![(2, Status::Aborted, 0)]);
    assert!(events(&mut n).is_empty());
    assert_eq!(n.stats().fetch_failures, 1);
    // Entry 1's payload arrives: delivered, unlinked, ACKed.
    fetched(&mut n, 11, Ok(Bytes::from(vec![5; 50])));
    let ev = events(&mut n);
    assert!(matches!(&ev[0], Event::Delivered(d) if d.entry == OpId(1) && d.payload.len() == 50));
    assert_eq!(
        ev[1],
        Event::Completed(Completion {
            op: OpId(1),
            result: Ok(OpOutcome::Unlinked)
        })
    );
    assert_eq!(acks(&mut n), vec![(1, Status::Ok, 50)]);
    // Entry 2 takes the next one.
    receive_deferred(&mut n, put, 4, 14, 10);
    fetched(&mut n, 14, Ok(Bytes::from(vec![6; 10])));
    assert!(matches!(&events(&mut n)[0], Event::Delivered(d) if d.entry == OpId(2)));
}

#[test]
fn an_aborted_ack_fails_the_put_as_a_remote_error() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put(B, b"x")).unwrap();
    let sent = drain(&mut n);
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        Body::Ack {
            status: Status::Aborted,
            mlen: 0,
        },
        sent[0].header.msg_id,
        1,
        b"",
    );
    let c = completions(&mut n);
    assert!(
        matches!(&c[..], [(OpId(1), Err(OpError::Remote(m)))] if m.contains("could not take its payload"))
    );
}
