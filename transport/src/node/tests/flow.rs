//! Sending: connection set-up, peer credits, credit return, NI limits, health-lane priority.

use super::*;

/// A PING from B on the data lane, with message id `msg_id`, returning no credits.
fn ping_from_b(n: &mut Node, at: Time, seq: u64, msg_id: u64) {
    receive(n, at, B, Lane::Data, Body::Ping { seq }, msg_id, 0, b"");
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
        h.msg_id, 101,
        "a life numbers its requests from its incarnation, 100"
    );
    assert_eq!(
        h.body,
        Body::Put {
            portal: 4,
            match_bits: 0x10,
            settled_below: h.msg_id,
            ack: true,
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
    c.lanes[Lane::Data].credits_hiw = 3;
    let mut n = node_with(c);
    connected_with_credits_left(&mut n, B, Lane::Data, 1);
    // Spend our only credit, so nothing else can carry credits back.
    n.put(t(0), OpId(1), put(B, b"x")).unwrap();
    assert_eq!(drain(&mut n).len(), 1);
    for seq in 0..2 {
        ping_from_b(&mut n, t(1), seq, 50 + seq);
    }
    assert!(
        drain(&mut n).is_empty(),
        "PONGs wait for a credit; 2 owed < hiw 3"
    );
    ping_from_b(&mut n, t(1), 2, 52);
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

/// A peer offering far more credits than we offer it gets no more frames in flight than
/// we offer (8 here): reading nothing, it cannot take the NI's other credits from C.
#[test]
fn a_peer_offering_many_credits_holds_no_more_than_we_offer() {
    let mut c = cfg();
    c.lanes[Lane::Data].ni_credits = 16;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 1000, 7);
    connected(&mut n, C, Lane::Data, 8, 7);
    for i in 0..100 {
        n.put(t(0), OpId(i), put(B, b"b")).unwrap();
    }
    n.put(t(0), OpId(100), put(C, b"c")).unwrap();
    let sent = drain(&mut n);
    let to = |peer| sent.iter().filter(|s| s.header.dst == nid(peer)).count();
    assert_eq!((to(B), to(C)), (8, 1));
}

/// The window holds both ways: a peer that offered us 2 credits may have no more than 2
/// frames of its own here either, though we offered it 8. With our credits spent (its
/// PONGs cannot carry its credits back), its first PING gets a CREDIT frame back (half
/// the window is owed); the next two wait for that frame to leave the driver; a fourth
/// is an overrun.
#[test]
fn a_peer_sending_past_the_smaller_offer_overruns_its_window() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 2, 7);
    spend_all_but(&mut n, nid(B), Lane::Data, 0);
    let mut overrun_at = None;
    for seq in 0..12 {
        ping_from_b(&mut n, t(1), seq, 50 + seq);
        if n.stats().protocol_errors > 0 {
            overrun_at = Some(seq);
            break;
        }
    }
    assert_eq!(overrun_at, Some(3));
    assert_eq!(n.stats().credit_frames_sent, 1);
    let closed = requests(&mut n).into_iter().any(|r| {
        matches!(r, LndRequest::Close { peer, error, .. }
            if peer == nid(B) && error.to_string().contains("a window of 2"))
    });
    assert!(closed, "the overrun closes the connection, saying why");
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

/// B offers one credit on `lane` and never returns it, while our CREDIT frames give it
/// back its own, so it keeps sending requests: 10x the answer cap of them. Returns the
/// node, the cap (per credit of the window, which B's one credit makes 1, where we offer
/// more), the number of requests, and what we sent meanwhile.
fn flood_without_returning_credits(
    lane: Lane,
    request: impl Fn(u64) -> Body,
) -> (Node, usize, u64, Vec<Sent>) {
    let mut n = node();
    assert!(n.config().lanes[lane].peer_credits > 1);
    let cap = ANSWER_BACKLOG_PER_CREDIT;
    connected(&mut n, B, lane, 1, 7);
    let flood = 10 * cap as u64;
    let mut sent = Vec::new();
    for seq in 0..flood {
        receive(&mut n, t(1), B, lane, request(seq), seq, 0, b"");
        // B's socket takes what we send (it reads), so each CREDIT frame leaves.
        let out = drain(&mut n);
        for s in &out {
            sent_ok(&mut n, s);
        }
        sent.extend(out);
    }
    (n, cap, flood, sent)
}

#[test]
fn a_peer_that_never_reads_gets_one_credit_frame_then_is_cut_off_for_overrunning() {
    // B sends PINGs and never reads: the CREDIT frame returning its credits never
    // leaves our driver. No second one joins it (they would pile up without bound);
    // and what B sends beyond the credits it had back is an overrun.
    let mut n = node();
    let offered = n.config().lanes[Lane::Health].peer_credits;
    connected(&mut n, B, Lane::Health, 1, 7);
    let mut credit_frames = 0;
    for seq in 0..u64::from(offered) * 4 {
        receive(
            &mut n,
            t(1),
            B,
            Lane::Health,
            Body::Ping { seq },
            seq,
            0,
            b"",
        );
        credit_frames += drain(&mut n)
            .iter()
            .filter(|s| s.header.body == Body::Credit)
            .count();
    }
    assert_eq!(credit_frames, 1, "one CREDIT frame while it is stuck");
    assert!(
        n.stats().protocol_errors >= 1,
        "the overrun is a protocol error"
    );
    assert!(
        requests(&mut n)
            .iter()
            .any(|r| matches!(r, LndRequest::Close { .. })),
        "and closes the connection"
    );
}

/// B returns one credit at a time, `times` times; the message ids of what we sent.
fn credits_back_one_by_one(n: &mut Node, lane: Lane, times: usize) -> Vec<u64> {
    let mut sent = Vec::new();
    for _ in 0..times {
        receive(n, t(2), B, lane, Body::Credit, 0, 1, b"");
        sent.extend(drain(n).into_iter().map(|s| s.header.msg_id));
    }
    sent
}

#[test]
fn a_peer_that_pings_without_returning_credits_cannot_grow_our_pong_queue() {
    let (mut n, cap, flood, sent) =
        flood_without_returning_credits(Lane::Health, |seq| Body::Ping { seq });
    let pongs = sent
        .iter()
        .filter(|s| matches!(s.header.body, Body::Pong { .. }))
        .count();
    assert_eq!(pongs, 1, "one credit, one PONG");
    assert!(sent.iter().any(|s| s.header.body == Body::Credit));
    assert_eq!(n.hops[&nid(B)].lanes[Lane::Health].answers.len(), cap);
    assert_eq!(n.stats().pings_shed, flood - 1 - cap as u64);
    // Credits back: every waiting PONG goes, in order, and nothing more.
    let answered = credits_back_one_by_one(&mut n, Lane::Health, cap + 1);
    assert_eq!(answered, (1..=cap as u64).collect::<Vec<_>>());
    assert!(n.hops[&nid(B)].lanes[Lane::Health].answers.is_empty());
}

#[test]
fn a_peer_that_puts_without_returning_credits_cannot_grow_our_ack_queue() {
    let (mut n, cap, flood, sent) = flood_without_returning_credits(Lane::Data, |seq| Body::Put {
        portal: 4,
        match_bits: seq,
        settled_below: 0,
        ack: true,
    });
    let acks = sent
        .iter()
        .filter(|s| matches!(s.header.body, Body::Ack { .. }))
        .count();
    assert_eq!(acks, 1, "one credit, one ACK");
    assert!(sent.iter().any(|s| s.header.body == Body::Credit));
    assert_eq!(n.hops[&nid(B)].lanes[Lane::Data].answers.len(), cap);
    assert_eq!(n.stats().answers_shed, flood - 1 - cap as u64);
    assert_eq!(n.stats().pings_shed, 0, "no PING was involved");
    // Credits back: every waiting ACK goes, in order, and nothing more.
    let answered = credits_back_one_by_one(&mut n, Lane::Data, cap + 1);
    assert_eq!(answered, (1..=cap as u64).collect::<Vec<_>>());
    assert!(n.hops[&nid(B)].lanes[Lane::Data].answers.is_empty());
}

#[test]
fn answers_leave_before_our_own_queued_requests() {
    let mut n = node();
    connected_with_credits_left(&mut n, B, Lane::Data, 1);
    for i in 0..3 {
        n.put(t(0), OpId(i), put(B, b"x")).unwrap();
    }
    assert_eq!(drain(&mut n).len(), 1, "one credit, one PUT; two wait");
    // B's own PUT arrives; our ACK to it must not wait behind our two queued PUTs.
    let body = Body::Put {
        portal: 4,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    receive(&mut n, t(1), B, Lane::Data, body, 77, 0, b"y");
    assert!(drain(&mut n).is_empty(), "no credit yet");
    receive(&mut n, t(2), B, Lane::Data, Body::Credit, 0, 1, b"");
    let next = drain(&mut n);
    assert_eq!(next.len(), 1);
    assert!(matches!(next[0].header.body, Body::Ack { .. }));
    assert_eq!(next[0].header.msg_id, 77);
    receive(&mut n, t(3), B, Lane::Data, Body::Credit, 0, 1, b"");
    assert!(matches!(drain(&mut n)[0].header.body, Body::Put { .. }));
}

/// A frame that returns credits and asks for an answer: the credit goes to the answer
/// that waited for it, and the new one waits its turn (it cannot skip the queue).
#[test]
fn an_answer_does_not_pass_the_answers_waiting_for_credits() {
    let mut n = node();
    connected_with_credits_left(&mut n, B, Lane::Data, 1);
    let put_from_b = |match_bits| Body::Put {
        portal: 4,
        match_bits,
        settled_below: 0,
        ack: true,
    };
    receive(&mut n, t(1), B, Lane::Data, put_from_b(1), 1, 0, b"y");
    let first = drain(&mut n);
    assert_eq!(first.len(), 1, "one credit, one ACK");
    assert_eq!(first[0].header.msg_id, 1);
    receive(&mut n, t(2), B, Lane::Data, put_from_b(2), 2, 0, b"y");
    assert!(drain(&mut n).is_empty(), "no credit for the second ACK");
    // The third PUT brings a credit back.
    receive(&mut n, t(3), B, Lane::Data, put_from_b(3), 3, 1, b"y");
    let next = drain(&mut n);
    let ids: Vec<u64> = next.iter().map(|s| s.header.msg_id).collect();
    assert_eq!(ids, [2], "the waiting ACK goes first, and only it");
    assert_eq!(
        next[0].header.credits, 2,
        "with the credits owed for PUTs 2 and 3"
    );
    receive(&mut n, t(4), B, Lane::Data, Body::Credit, 0, 1, b"");
    let last: Vec<u64> = drain(&mut n).iter().map(|s| s.header.msg_id).collect();
    assert_eq!(last, [3]);
}

#[test]
fn answers_held_up_by_our_driver_carry_the_owed_credits_instead_of_a_credit_frame() {
    let mut c = cfg();
    c.lanes[Lane::Data].ni_credits = 1;
    c.lanes[Lane::Data].credits_hiw = 2;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 8, 7);
    // Our driver is busy with one frame: the NI has no credit left.
    n.put(t(0), OpId(1), put(B, b"x")).unwrap();
    let busy = drain(&mut n);
    assert_eq!(busy.len(), 1);
    for seq in 0..4 {
        let body = Body::Put {
            portal: 4,
            match_bits: seq,
            settled_below: 0,
            ack: true,
        };
        receive(&mut n, t(1), B, Lane::Data, body, 10 + seq, 0, b"y");
    }
    // 4 owed >= hiw 2, but a CREDIT frame would only let B pile more requests behind
    // answers that cannot leave yet.
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.stats().credit_frames_sent, 0);
    sent_ok(&mut n, &busy[0]);
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1, "one NI credit, one frame");
    assert!(matches!(sent[0].header.body, Body::Ack { .. }));
    assert_eq!(
        sent[0].header.credits, 4,
        "the first answer out carries all we owe"
    );
    // The rest follow, one per NI credit.
    let mut acks = 1;
    let mut last = sent;
    while let Some(done) = last.first() {
        sent_ok(&mut n, done);
        last = drain(&mut n);
        acks += last.len();
    }
    assert_eq!(acks, 4);
    assert_eq!(n.stats().credit_frames_sent, 0);
}

/// A driver that replaces a connection reports `Disconnected` then `Connected`, and answers
/// the connect request our core made in between with a second `Connected` for the lane that
/// is already up. That repeat must not hand back credits already spent, nor forget credits
/// we owe: the peer would then return more than we hold, or stall.
#[test]
fn a_repeated_connected_keeps_the_lanes_credits() {
    let mut n = node();
    connected_with_credits_left(&mut n, B, Lane::Data, 1);
    n.put(t(0), OpId(1), put(B, b"a")).unwrap();
    assert_eq!(drain(&mut n).len(), 1, "the one credit is spent");
    // A PUT from the peer: we owe it a credit, and its ACK waits for one of ours.
    n.attach(OpId(10), MatchEntry::sink(4, 0x10, 100)).unwrap();
    let body = Body::Put {
        portal: 4,
        match_bits: 0x10,
        settled_below: 0,
        ack: true,
    };
    receive(&mut n, t(0), B, Lane::Data, body, 50, 0, b"x");
    assert!(drain(&mut n).is_empty());
    connected(&mut n, B, Lane::Data, 8, 7);
    assert!(
        drain(&mut n).is_empty(),
        "no credit came back, so nothing may go out"
    );
    // The peer returns the credit we spent: the ACK leaves on it, with the credit we owe.
    receive(&mut n, t(1), B, Lane::Data, Body::Credit, 0, 1, b"");
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert!(matches!(sent[0].header.body, Body::Ack { .. }));
    assert_eq!(sent[0].header.credits, 1, "the owed credit was kept");
    assert_eq!(n.stats().protocol_errors, 0);
}

/// Headers leave without a checksum on a connection whose HELLO says the link protects
/// them, and with one on any other.
#[test]
fn headers_carry_a_checksum_unless_the_connection_says_the_link_protects_them() {
    let mut n = node();
    let linked = |peer: u32| PeerHello {
        nid: nid(peer),
        incarnation: 7,
        lane: Lane::Data,
        credits: 8,
        max_payload: 1 << 20,
        header_check: HeaderCheck::Link,
    };
    n.put(t(0), OpId(1), put(B, b"crc")).unwrap();
    n.put(t(0), OpId(2), put(C, b"link")).unwrap();
    connected(&mut n, B, Lane::Data, 8, 7);
    let local_credits = n.config().lanes[Lane::Data].peer_credits;
    n.handle_lnd_event(
        t(0),
        NiId(0),
        LndEvent::Connected {
            peer: nid(C),
            lane: Lane::Data,
            hello: linked(C),
            local_credits,
        },
    );
    let sent: Vec<_> = std::iter::from_fn(|| n.poll_transmit()).collect();
    assert_eq!(sent.len(), 2);
    for (_, tx) in sent {
        let (flag, check) = match tx.peer == nid(C) {
            false => (0, HeaderCheck::Crc32),
            true => (crate::wire::FLAG_LINK_CHECKED, HeaderCheck::Link),
        };
        assert_eq!(tx.header[10], flag, "to {}", tx.peer);
        let h = decode_header(&tx.header, &Limits::new(1 << 20, check)).unwrap();
        assert_eq!(h.dst, tx.peer);
    }
}
