//! The target side: matching, refusals, GET sources, deferred (zero-copy) payloads.

use super::*;

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
            settled_below: 0,
            ack: true,
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
            settled_below: 0,
            ack: true,
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
            settled_below: 0,
            ack: true,
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

/// A PUT of `payload` from B on portal 4 with `match_bits`, without ACK.
fn put_from_b_to_portal_4(n: &mut Node, match_bits: u64, msg_id: u64, payload: &[u8]) {
    let body = Body::Put {
        portal: 4,
        match_bits,
        settled_below: 0,
        ack: false,
    };
    receive(n, t(0), B, Lane::Data, body, msg_id, 0, payload);
}

/// The entries that took what was delivered, in order; deliveries and refusals are
/// taken (they count against `max_undelivered`).
fn delivered_to(n: &mut Node) -> Vec<OpId> {
    let events = events(n);
    n.deliveries_consumed(events.iter().filter(|e| e.is_delivery()).count());
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Delivered(d) => Some(d.entry),
            _ => None,
        })
        .collect()
}

/// Exact entries are looked up by their bits and wildcards apart, yet the oldest entry
/// that takes a message wins: a wildcard attached between two exact entries of the same
/// bits takes the second message, the first exact one having gone, not the first. An
/// exact entry that cannot take a message leaves it to a wildcard attached after it.
#[test]
fn the_oldest_entry_that_takes_a_message_wins_among_exact_entries_and_wildcards() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    let wildcard = |max_len| MatchEntry {
        ignore_bits: u64::MAX,
        ..MatchEntry::sink(4, 0, max_len)
    };
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100).once())
        .unwrap();
    n.attach(OpId(2), wildcard(100).once()).unwrap();
    n.attach(OpId(3), MatchEntry::sink(4, 0x10, 100).once())
        .unwrap();
    for msg_id in 1..=3 {
        put_from_b_to_portal_4(&mut n, 0x10, msg_id, b"x");
    }
    assert_eq!(delivered_to(&mut n), [OpId(1), OpId(2), OpId(3)]);
    n.attach(OpId(4), MatchEntry::sink(4, 0x20, 2)).unwrap();
    n.attach(OpId(5), wildcard(100)).unwrap();
    put_from_b_to_portal_4(&mut n, 0x20, 4, b"too long for 4");
    put_from_b_to_portal_4(&mut n, 0x20, 5, b"ok");
    assert_eq!(delivered_to(&mut n), [OpId(5), OpId(4)]);
}

/// What a PUT from `from` on `portal` with `match_bits` and `len` bytes matches under
/// the rule itself, walked in attach order over `attached`: the oldest that takes it.
fn oldest_that_takes(
    attached: &[(OpId, MatchEntry)],
    from: Nid,
    portal: u32,
    match_bits: u64,
    len: u32,
) -> Option<usize> {
    attached.iter().position(|(_, e)| {
        e.portal == portal
            && e.matches(from, match_bits)
            && matches!(e.kind, EntryKind::Sink { max_len } if max_len >= len)
    })
}

#[derive(Debug, Clone)]
enum MatchStep {
    Attach {
        portal: u32,
        bits: u64,
        ignore: u64,
        from_c_only: bool,
        max_len: u32,
        once: bool,
    },
    Put {
        from_c: bool,
        portal: u32,
        bits: u64,
        len: u32,
    },
    Cancel(usize),
}

fn match_step() -> impl proptest::strategy::Strategy<Value = MatchStep> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u32..2, 0u64..4, prop_oneof![Just(0u64), Just(1), Just(u64::MAX)], any::<bool>(), 1u32..4, any::<bool>())
            .prop_map(|(portal, bits, ignore, from_c_only, max_len, once)| MatchStep::Attach {
                portal, bits, ignore, from_c_only, max_len, once,
            }),
        4 => (any::<bool>(), 0u32..2, 0u64..4, 1u32..4)
            .prop_map(|(from_c, portal, bits, len)| MatchStep::Put { from_c, portal, bits, len }),
        1 => any::<usize>().prop_map(MatchStep::Cancel),
    ]
}

proptest::proptest! {
    /// Whatever entries come and go (exact and wildcard, for one source or any, use-once
    /// or not, of several sizes), every PUT lands in the entry a walk of every attached
    /// entry in attach order picks, or is refused (no match) when that finds none: the
    /// index by bits and the order between exact entries and wildcards, checked against
    /// the rule (which entry matches which bits is `MatchEntry::matches`' either way).
    #[test]
    fn a_put_lands_where_a_walk_in_attach_order_would_put_it(
        steps in proptest::collection::vec(match_step(), 1..80)
    ) {
        let mut n = node();
        connected(&mut n, B, Lane::Data, 8, 7);
        connected(&mut n, C, Lane::Data, 8, 7);
        let mut attached: Vec<(OpId, MatchEntry)> = Vec::new();
        for (k, step) in steps.into_iter().enumerate() {
            let id = OpId(k as u64 + 1);
            match step {
                MatchStep::Attach { portal, bits, ignore, from_c_only, max_len, once } => {
                    let mut e = MatchEntry {
                        ignore_bits: ignore,
                        ..MatchEntry::sink(portal, bits, max_len)
                    };
                    e.source = from_c_only.then(|| nid(C));
                    e.once = once;
                    n.attach(id, e.clone()).unwrap();
                    attached.push((id, e));
                }
                MatchStep::Put { from_c, portal, bits, len } => {
                    let from = if from_c { C } else { B };
                    let want = oldest_that_takes(&attached, nid(from), portal, bits, len);
                    let body = Body::Put { portal, match_bits: bits, settled_below: 0, ack: false };
                    let payload = vec![7u8; len as usize];
                    receive(&mut n, t(0), from, Lane::Data, body, id.0, 0, &payload);
                    let happened = events(&mut n);
                    n.deliveries_consumed(happened.iter().filter(|e| e.is_delivery()).count());
                    let got: Vec<OpId> = happened.iter().filter_map(|e| match e {
                        Event::Delivered(d) => Some(d.entry),
                        _ => None,
                    }).collect();
                    let refused = happened.iter().any(|e| {
                        matches!(e, Event::Refused(r) if r.reason == RejectReason::NoMatch)
                    });
                    match want {
                        Some(at) => {
                            proptest::prop_assert_eq!(got, vec![attached[at].0]);
                            proptest::prop_assert!(!refused);
                            if attached[at].1.once {
                                attached.remove(at);
                            }
                        }
                        None => proptest::prop_assert!(got.is_empty() && refused, "{happened:?}"),
                    }
                }
                MatchStep::Cancel(i) => {
                    if !attached.is_empty() {
                        let (id, _) = attached.remove(i % attached.len());
                        n.cancel(id);
                    }
                }
            }
            for sent in drain(&mut n) {
                sent_ok(&mut n, &sent);
            }
        }
        events(&mut n);
        for (id, _) in attached.drain(..) {
            n.cancel(id);
        }
        proptest::prop_assert_eq!(n.footprint().entry_lists, 0);
    }
}

/// A portal holding 50,000 use-once entries of bits of their own, as a client's reply
/// buffers are: each match looks its bits up, not at the entries attached before it.
/// Matched newest first, a walk from the oldest looked at 1.25 billion entries (40 s;
/// `bench/RESULTS.md`, 2026-12-07, last section); this checks the order of magnitude only.
#[test]
fn matching_among_many_exact_entries_does_not_walk_them() {
    const N: u64 = 50_000;
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    for bits in 0..N {
        n.attach(OpId(bits + 1), MatchEntry::sink(4, bits, 64).once())
            .unwrap();
    }
    let t0 = std::time::Instant::now();
    for bits in (0..N).rev() {
        put_from_b_to_portal_4(&mut n, bits, bits + 1, b"x");
        assert_eq!(delivered_to(&mut n), [OpId(bits + 1)]);
        // The CREDIT frames returning B's credits leave, so B may send on.
        for sent in drain(&mut n) {
            sent_ok(&mut n, &sent);
        }
    }
    let took = t0.elapsed();
    eprintln!("{N} matches among exact entries, newest first: {took:?}");
    assert_eq!(n.footprint().entry_lists, 0, "every entry used up");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
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
            settled_below: 0,
            ack: true,
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
            settled_below: 0,
            ack: true,
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
            settled_below: 0,
            ack: true,
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
            settled_below: 0,
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
            settled_below: 0,
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
            lane: Lane::Data,
            dst: nid(B),
            portal: 6,
            match_bits: 1,
            want_len: 8,
            timeout: None,
            on_peer_down: Default::default(),
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

pub(super) fn receive_deferred(n: &mut Node, body: Body, msg_id: u64, handle: u64, len: u32) {
    let header = Header {
        hop_limit: 8,
        router_gen: 0,
        lane: Lane::Data,
        credits: 0,
        src: nid(B),
        dst: nid(A),
        src_incarnation: 7,
        msg_id,
        payload_len: len,
        body,
        attempt: 0,
    };
    let payload = RxPayload::Deferred {
        handle: RxHandle(handle),
        len,
    };
    arrives(n, t(0), nid(B), header, payload);
}

pub(super) fn fetched(n: &mut Node, handle: u64, result: Result<Bytes, LndError>) {
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
        settled_below: 0,
        ack: true,
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
            settled_below: 0,
            ack: true,
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
        matches!(&c[..], [(OpId(1), Err(OpError::Remote(m)))] if m.contains("could not be moved"))
    );
}

/// The GET `OpId(1)` for 4 bytes, sent on a connected lane: its message id.
fn get_for_4_bytes(n: &mut Node) -> u64 {
    connected(n, B, Lane::Data, 8, 7);
    let get = GetRequest {
        lane: Lane::Data,
        dst: nid(B),
        portal: 2,
        match_bits: 1,
        want_len: 4,
        timeout: None,
        on_peer_down: Default::default(),
    };
    n.get(t(0), OpId(1), get).unwrap();
    let sent = drain(n);
    sent_ok(n, &sent[0]);
    sent[0].header.msg_id
}

/// The answer broke the protocol: the op fails with `Protocol`, the connection is closed.
fn assert_refused_as_protocol_violation(n: &mut Node) {
    let c = completions(n);
    assert!(
        matches!(&c[..], [(OpId(1), Err(OpError::Protocol(_)))]),
        "{c:?}"
    );
    assert_eq!(n.stats().protocol_errors, 1);
    assert!(requests(n)
        .iter()
        .any(|r| matches!(r, LndRequest::Close { peer, .. } if *peer == nid(B))));
}

#[test]
fn a_reply_longer_than_the_get_asked_for_is_refused() {
    let mut n = node();
    let msg = get_for_4_bytes(&mut n);
    let reply = Body::Reply { status: Status::Ok };
    receive(&mut n, t(1), B, Lane::Data, reply, msg, 1, b"12345678");
    assert_refused_as_protocol_violation(&mut n);

    // Deferred: refused before anything is fetched, and the payload is declined.
    let mut n = node();
    let msg = get_for_4_bytes(&mut n);
    receive_deferred(&mut n, reply, msg, 9, 8);
    let requests_before: Vec<LndRequest> = std::iter::from_fn(|| n.poll_request())
        .map(|(_, r)| r)
        .collect();
    assert!(
        !requests_before
            .iter()
            .any(|r| matches!(r, LndRequest::Fetch { .. })),
        "{requests_before:?}"
    );
    assert!(requests_before
        .iter()
        .any(|r| matches!(r, LndRequest::Decline { handle } if handle.0 == 9)));
    let c = completions(&mut n);
    assert!(
        matches!(&c[..], [(OpId(1), Err(OpError::Protocol(_)))]),
        "{c:?}"
    );
}

#[test]
fn an_ack_for_more_bytes_than_were_sent_is_refused() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put(B, b"hello")).unwrap();
    let sent = drain(&mut n);
    sent_ok(&mut n, &sent[0]);
    let ack = Body::Ack {
        status: Status::Ok,
        mlen: 6,
    };
    receive(
        &mut n,
        t(1),
        B,
        Lane::Data,
        ack,
        sent[0].header.msg_id,
        1,
        b"",
    );
    assert_refused_as_protocol_violation(&mut n);
}

/// A GET from a far initiator, through router B whose `max_payload` (4 KiB) is smaller
/// than the 8 KiB the GET asked for: the REPLY goes without its payload, aborted, rather
/// than whole, which B would refuse by closing the connection (again for each copy).
#[test]
fn a_reply_larger_than_its_next_hop_takes_goes_aborted_without_its_payload() {
    let mut n = node();
    connected_taking(&mut n, 0, nid(B), 4096);
    let once = MatchEntry::source(6, 1, Bytes::from(vec![1u8; 8192])).once();
    n.attach(OpId(1), once).unwrap();
    let far = Nid::mem(9, 2);
    route_to_net_2_via_b(&mut n);
    let get = Body::Get {
        portal: 6,
        match_bits: 1,
        want_len: 8192,
        settled_below: 0,
    };
    arrives(
        &mut n,
        t(1),
        nid(B),
        header(far, nid(A), 5, get),
        RxPayload::Inline(Bytes::new()),
    );
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].header.body,
        Body::Reply {
            status: Status::Aborted
        }
    );
    assert_eq!((sent[0].header.payload_len, sent[0].payload.len()), (0, 0));
    // Not served: the use-once entry stays attached, nothing said it was unlinked.
    assert!(completions(&mut n).is_empty());
    assert!(n.ops.get(OpId(1)).is_some(), "the entry stays");
}
