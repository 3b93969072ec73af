//! An initiator behind routers: a request whose router fails is sent again another way,
//! and every copy looks the same to its target.

use super::*;

/// The far target, on net 2, behind the routers.
fn far() -> Nid {
    Nid::mem(9, 2)
}

fn route_via(n: &mut Node, gateway: Nid, priority: u8) {
    let route = Route {
        net: far().net(),
        gateway,
        hops: 1,
        priority,
    };
    n.add_route(route).unwrap();
}

/// The frames handed to drivers: (NI, hop, header, token).
fn sent(n: &mut Node) -> Vec<(usize, Nid, Header, TxToken)> {
    std::iter::from_fn(|| n.poll_transmit())
        .map(|(ni, tx)| {
            let h = decode_header(&tx.header, &Limits::default()).unwrap();
            (ni.0, tx.peer, h, tx.token)
        })
        .collect()
}

/// One of [`sent`]'s frames (without payload) left: its driver completed its send.
fn went_out(n: &mut Node, frame: &(usize, Nid, Header, TxToken)) {
    let sent = Sent {
        header: frame.2,
        payload: Bytes::new(),
        token: frame.3,
        report_at_once: false,
    };
    sent_ok(n, &sent);
}

fn far_put() -> PutRequest {
    PutRequest {
        dst: far(),
        ..put(B, b"x")
    }
}

fn lost(n: &mut Node, ni: usize, hop: Nid) {
    let error = LndError::new(LndErrorKind::Closed, "connection reset");
    let ev = LndEvent::Disconnected {
        peer: hop,
        lane: Lane::Data,
        error,
    };
    n.handle_lnd_event(t(1), NiId(ni), ev);
}

/// A PUT to `far()` handed to the driver for B, the better route; C, the other, has no
/// connection up yet. The node, and the frame for B.
fn far_put_sent_through_b() -> (Node, Vec<(usize, Nid, Header, TxToken)>) {
    let mut n = node();
    route_via(&mut n, nid(B), 0);
    route_via(&mut n, nid(C), 1);
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 7);
    n.put(t(0), OpId(1), far_put()).unwrap();
    let first = sent(&mut n);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, nid(B), "the better route first");
    (n, first)
}

/// The router's connection resets with the request still in its driver. The driver then
/// fails that send too, after the request was queued for the other router (whose
/// connection is not up yet): that failure is about the attempt that is over, and must
/// not end the operation.
#[test]
fn a_failed_send_through_a_failed_router_does_not_end_the_resent_operation() {
    let (b, c) = (nid(B), nid(C));
    let (mut n, first) = far_put_sent_through_b();
    lost(&mut n, 0, b);
    let error = LndError::new(LndErrorKind::Closed, "connection reset");
    let ev = LndEvent::SendComplete {
        token: first[0].3,
        result: Err(error),
    };
    n.handle_lnd_event(t(1), NiId(0), ev);
    assert_eq!(completions(&mut n), vec![], "still under way");
    connected_on(&mut n, 0, c, Lane::Data, 8, 7);
    let again = sent(&mut n);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].1, again[0].2.msg_id), (c, first[0].2.msg_id));
}

/// The router fails after passing the request on; the op waits to be resent through
/// the other router, whose connection is not up yet. The target's ACK to the first copy
/// then comes back (the first router reconnected): it ends the op, rather than being
/// thrown away as late and leaving the op to a resend that may find no way.
#[test]
fn an_answer_to_a_copy_that_got_through_ends_the_op_waiting_to_be_resent() {
    let (b, c) = (nid(B), nid(C));
    let (mut n, first) = far_put_sent_through_b();
    went_out(&mut n, &first[0]);
    lost(&mut n, 0, b);
    assert!(sent(&mut n).is_empty(), "waiting for the other router");
    connected_on(&mut n, 0, b, Lane::Data, 8, 7);
    let ack = Header {
        src_incarnation: 3,
        ..header(
            far(),
            nid(A),
            first[0].2.msg_id,
            Body::Ack {
                status: Status::Ok,
                mlen: 1,
            },
        )
    };
    arrives(&mut n, t(2), b, ack, RxPayload::Inline(Bytes::new()));
    assert_eq!(
        completions(&mut n),
        vec![(OpId(1), Ok(OpOutcome::Put { mlen: 1 }))]
    );
    assert_eq!(n.stats().late_responses, 0);
    // Nothing is left to send through the other router when it comes up.
    connected_on(&mut n, 0, c, Lane::Data, 8, 7);
    assert!(sent(&mut n).is_empty());
    assert_eq!(n.footprint().queued, 0);
}

/// An initiator on two nets resends through a gateway on its other net: the copy still
/// says it comes from the NID the first did, or its target would take it for another
/// initiator's request and deliver it twice.
#[test]
fn a_copy_resent_from_another_of_our_nets_keeps_its_first_source() {
    let mut n = node();
    n.add_ni(Nid::mem(A, 3)).unwrap();
    let (b, c) = (nid(B), Nid::mem(C, 3));
    route_via(&mut n, b, 0);
    route_via(&mut n, c, 1);
    connected_on(&mut n, 0, b, Lane::Data, 8, 7);
    connected_on(&mut n, 1, c, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), far_put()).unwrap();
    let first = sent(&mut n);
    assert_eq!((first[0].0, first[0].1), (0, b));
    went_out(&mut n, &first[0]);
    lost(&mut n, 0, b);
    let again = sent(&mut n);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, again[0].1), (1, c), "through the other net");
    assert_eq!(again[0].2.src, first[0].2.src);
    assert_eq!(again[0].2.src, nid(A));
}

/// A node whose route to the far net goes through B, else C; both connected.
fn behind_two_routers_up() -> Node {
    let mut n = node();
    route_via(&mut n, nid(B), 0);
    route_via(&mut n, nid(C), 1);
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 7);
    connected_on(&mut n, 0, nid(C), Lane::Data, 8, 7);
    n
}

/// A PUT without ACK whose router fails with it in the driver may have got through, and
/// its target keeps no record to tell a copy from it: it fails, never sent again.
#[test]
fn a_put_without_ack_is_not_sent_again_when_its_router_fails() {
    let mut n = behind_two_routers_up();
    let b = nid(B);
    let req = PutRequest {
        ack: false,
        ..far_put()
    };
    n.put(t(0), OpId(1), req).unwrap();
    assert_eq!(sent(&mut n).len(), 1);
    lost(&mut n, 0, b);
    let c = completions(&mut n);
    assert!(matches!(&c[..], [(OpId(1), Err(_))]), "{c:?}");
    assert!(sent(&mut n).is_empty(), "not through the other router");
}

/// A router's refusal of a PUT without ACK fails it while its send is not complete (no
/// second copy), and after that only counts as late.
#[test]
fn a_refusal_fails_a_put_without_ack_before_its_send_completed_and_is_late_after() {
    let mut n = behind_two_routers_up();
    let req = || PutRequest {
        ack: false,
        ..far_put()
    };
    let nack = Body::Nack {
        reason: NackReason::NextHopDown,
        target: far(),
    };
    n.put(t(0), OpId(1), req()).unwrap();
    let first = sent(&mut n);
    receive(&mut n, t(1), B, Lane::Data, nack, first[0].2.msg_id, 1, b"");
    let done = completions(&mut n);
    assert!(matches!(&done[..], [(OpId(1), Err(_))]), "{done:?}");
    assert!(sent(&mut n).is_empty(), "not sent again");

    n.put(t(2), OpId(2), req()).unwrap();
    let second = sent(&mut n);
    n.handle_lnd_event(
        t(2),
        NiId(0),
        LndEvent::SendComplete {
            token: second[0].3,
            result: Ok(()),
        },
    );
    assert_eq!(
        completions(&mut n),
        vec![(OpId(2), Ok(OpOutcome::Sent { len: 1 }))]
    );
    let late = n.stats().late_responses;
    receive(
        &mut n,
        t(3),
        B,
        Lane::Data,
        nack,
        second[0].2.msg_id,
        1,
        b"",
    );
    assert!(completions(&mut n).is_empty());
    assert!(sent(&mut n).is_empty());
    assert_eq!(n.stats().late_responses, late + 1);
}

/// An initiator reckons what it settled per destination NID. A target with NIDs on two
/// nets must keep a resend window per NID: requests to one raising the floor must not drop
/// the copy of an older request to the other, still unanswered at its initiator.
#[test]
fn a_floor_raised_at_one_nid_of_the_target_drops_no_copy_sent_to_another() {
    let mut n = node();
    let second = Nid::mem(1, 1);
    n.add_ni(second).unwrap();
    connected(&mut n, B, Lane::Data, 8, 7);
    route_via(&mut n, nid(B), 0); // the way back
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    let initiator = far();
    routed_put(&mut n, nid(B), initiator, nid(A), 10, 10, true);
    routed_put(&mut n, nid(B), initiator, second, 20, 20, true);
    // Its router failed before the ACK of 10 got back: the initiator sends it again.
    routed_put(&mut n, nid(B), initiator, nid(A), 10, 10, true);
    assert_eq!(deliveries(&mut n), 2, "each PUT once");
    assert_eq!(
        n.stats().duplicates_dropped,
        0,
        "the copy must not be dropped"
    );
    assert_eq!(
        n.stats().duplicates_answered,
        1,
        "the copy is answered again"
    );
    assert_eq!(acks_sent(&mut n, 10), 2);
}

/// A node that is the gateway to its own other NID: an initiator on the first net reaches
/// the second NID through it, so it is that request's router, and when the hop fails the
/// initiator sends the request again through another gateway. The first copy came
/// straight from the initiator, yet is remembered as a routed one, or the second would be
/// delivered again.
#[test]
fn a_request_through_this_node_as_its_own_gateway_is_delivered_once() {
    let mut router = cfg();
    router.forwarding = true;
    let mut n = node_with(router);
    let second = Nid::mem(1, 1);
    n.add_ni(second).unwrap();
    connected(&mut n, B, Lane::Data, 8, 5);
    connected(&mut n, C, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    routed_put(&mut n, nid(B), nid(B), second, 10, 10, true);
    // The copy, through the gateway C.
    routed_put(&mut n, nid(C), nid(B), second, 10, 10, true);
    assert_eq!(deliveries(&mut n), 1, "delivered twice");
    assert_eq!(
        n.stats().duplicates_answered,
        1,
        "the copy is answered again"
    );
    assert_eq!(acks_sent(&mut n, 10), 2);
}

/// A request its router refuses after it left is sent again another way. It was in no
/// queue at that router by then, so the router's queue must not count an entry of it
/// gone: with ops still waiting there, a count too many held back nothing but made the
/// queue look busy and compact early.
#[test]
fn a_request_refused_after_it_left_counts_no_dead_entry_at_its_router() {
    let mut n = node();
    let (b, c) = (nid(B), nid(C));
    route_via(&mut n, b, 0);
    route_via(&mut n, c, 1);
    // One credit at B: the first PUT leaves, the next three wait in B's queue.
    connected_on(&mut n, 0, b, Lane::Data, 1, 7);
    connected_on(&mut n, 0, c, Lane::Data, 8, 7);
    for id in 1..=4 {
        n.put(t(0), OpId(id), far_put()).unwrap();
    }
    let first = sent(&mut n);
    assert_eq!(first.len(), 1, "{first:?}");
    let nack = Body::Nack {
        reason: NackReason::NextHopDown,
        target: far(),
    };
    receive(&mut n, t(1), B, Lane::Data, nack, first[0].2.msg_id, 0, b"");
    let again = sent(&mut n);
    assert!(
        again
            .iter()
            .any(|s| s.1 == c && s.2.msg_id == first[0].2.msg_id),
        "sent again through C: {again:?}"
    );
    let at_b = &n.hops.get(&b).expect("B is a hop").lanes[Lane::Data];
    assert_eq!(at_b.queue.len(), 3, "the three waiting");
    assert_eq!(
        at_b.left, 0,
        "none of them, nor the refused one, gone from it"
    );
}

/// A routed PUT whose payload never came (the router it waited at failed while we fetched
/// it) was not delivered. It must not be answered "aborted" (which would end an operation
/// that its resend can still complete), nor that answer be remembered: the copy the
/// initiator sends through another router is taken as new, fetched and delivered.
#[test]
fn a_routed_put_whose_payload_never_came_is_taken_anew_when_resent() {
    let mut n = behind_b_and_c_with_a_sink();
    deferred_put_from_far(&mut n, nid(B), 1);
    assert!(fetching(&mut n, 1), "the payload is fetched");
    let gone = LndError::new(
        LndErrorKind::Reset,
        "the payload is gone with its connection",
    );
    super::target::fetched(&mut n, 1, Err(gone));
    assert_eq!(acks_sent(&mut n, 10), 0, "no answer for what never came");
    // The initiator saw router B fail, and sends the PUT again through C.
    deferred_put_from_far(&mut n, nid(C), 2);
    assert!(fetching(&mut n, 2), "the copy is taken as new");
    super::target::fetched(&mut n, 2, Ok(Bytes::from(vec![1u8; 48])));
    assert_eq!(deliveries(&mut n), 1);
    let acks: Vec<_> = drain(&mut n)
        .into_iter()
        .filter_map(|s| match s.header.body {
            Body::Ack { status, mlen } if s.header.msg_id == 10 => Some((status, mlen)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(Status::Ok, 48)]);
}

/// The other order, the likelier one: the initiator saw router B fail first, and its copy
/// through C came while the payload was still being fetched from B. The copy is held, not
/// declined; when the fetch from B fails, the copy's payload is fetched instead, and the
/// PUT is delivered once and ACKed.
#[test]
fn a_copy_that_came_while_the_first_payload_was_fetched_is_taken_when_that_fails() {
    let mut n = put_and_its_copy_during_the_fetch();
    let fetches = |n: &mut Node| -> Vec<u64> {
        requests(n)
            .into_iter()
            .filter_map(|r| match r {
                LndRequest::Fetch { handle, .. } => Some(handle.0),
                _ => None,
            })
            .collect()
    };
    let gone = LndError::new(
        LndErrorKind::Reset,
        "the payload is gone with its connection",
    );
    super::target::fetched(&mut n, 1, Err(gone));
    assert_eq!(fetches(&mut n), vec![2], "the copy's payload instead");
    super::target::fetched(&mut n, 2, Ok(Bytes::from(vec![1u8; 48])));
    assert_eq!(deliveries(&mut n), 1);
    assert_eq!(acks_sent(&mut n, 10), 1);
}

/// A PUT from `far()` as `incarnation`, handed over by B (its router).
fn put_from_far_life(n: &mut Node, incarnation: u64, msg_id: u64) {
    put_from_far_life_at(n, t(1), incarnation, msg_id)
}

/// [`put_from_far_life`], arriving at `at`.
fn put_from_far_life_at(n: &mut Node, at: Time, incarnation: u64, msg_id: u64) {
    let header = put_header_from_far(incarnation, msg_id, 1, 0);
    let payload = RxPayload::Inline(Bytes::from_static(b"x"));
    arrives(n, at, nid(B), header, payload);
}

/// The header of a PUT (portal 4, match bits 0x10, ACK wanted) of `len` bytes from
/// `far()` as `incarnation` to us.
fn put_header_from_far(incarnation: u64, msg_id: u64, len: u32, settled_below: u64) -> Header {
    let body = Body::Put {
        portal: 4,
        match_bits: 0x10,
        settled_below,
        ack: true,
    };
    Header {
        hop_limit: 7,
        src_incarnation: incarnation,
        payload_len: len,
        ..header(far(), nid(A), msg_id, body)
    }
}

/// A node with a sink (portal 4, match bits 0x10) for PUTs from the far net, whose route
/// back goes through B, connected.
fn sink_behind_b() -> Node {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    route_via(&mut n, nid(B), 0);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    n
}

/// A frame of a far end's earlier life that comes late, through a slow router, after its
/// new life was heard, is not news of another restart (which would fail our operations
/// to it again) and is not delivered.
#[test]
fn a_late_frame_from_a_far_ends_earlier_life_is_dropped_not_taken_for_a_restart() {
    let mut n = sink_behind_b();
    put_from_far_life(&mut n, 5, 1);
    put_from_far_life(&mut n, 9, 1);
    let restarts = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::PeerRestarted { .. }))
            .count()
    };
    let seen = events(&mut n);
    assert_eq!(restarts(&seen), 1, "{seen:?}");
    put_from_far_life(&mut n, 5, 2);
    let late = events(&mut n);
    assert_eq!(restarts(&late), 0, "{late:?}");
    assert!(
        !late.iter().any(|e| matches!(e, Event::Delivered(_))),
        "{late:?}"
    );
    assert_eq!(n.stats().stale_frames, 1);
    // The new life carries on as before.
    put_from_far_life(&mut n, 9, 2);
    assert_eq!(deliveries(&mut n), 1);
    // It restarts again, its clock gone back meanwhile: a lower number, not the one
    // replaced. While life 9 was heard within `forward_patience` and a detection time,
    // that is taken for a late frame of a life never heard from (dropped); once life 9
    // has been silent that long, for the new life it may be.
    put_from_far_life(&mut n, 3, 1);
    let early = events(&mut n);
    assert_eq!(restarts(&early), 0, "{early:?}");
    assert_eq!(n.stats().stale_frames, 2);
    let later = t(1) + n.late_frame_window();
    put_from_far_life_at(&mut n, later, 3, 1);
    let back = events(&mut n);
    assert_eq!(restarts(&back), 1, "{back:?}");
    assert!(
        back.iter().any(|e| matches!(e, Event::Delivered(_))),
        "{back:?}"
    );
    // Taken in doubt: life 9 is not taken for replaced. (Had 3 been a late frame, and 9
    // only quiet, 9 would otherwise be dropped for good.) 9 speaking again is taken
    // back, in doubt too; 3 is late again while 9 is heard.
    put_from_far_life_at(&mut n, later, 9, 3);
    let again = events(&mut n);
    assert_eq!(restarts(&again), 1, "{again:?}");
    assert!(
        again.iter().any(|e| matches!(e, Event::Delivered(_))),
        "{again:?}"
    );
    put_from_far_life_at(&mut n, later, 3, 2);
    assert_eq!(deliveries(&mut n), 0);
    // Two lives ago: late too, not another restart.
    put_from_far_life_at(&mut n, later, 5, 3);
    let older = events(&mut n);
    assert_eq!(restarts(&older), 0, "{older:?}");
    assert_eq!(n.stats().stale_frames, 4);
}

/// A late frame of a life before the current one that this node never heard from (sent
/// through a slow router just before the end restarted; the new life's frames came
/// first another way) is not taken for a restart: that would take the live life for the
/// one replaced, and drop all its frames from then on.
#[test]
fn a_late_frame_from_a_life_never_heard_does_not_lock_out_the_current_one() {
    let mut n = sink_behind_b();
    put_from_far_life(&mut n, 9, 100);
    assert_eq!(deliveries(&mut n), 1);
    put_from_far_life(&mut n, 5, 1);
    let late = events(&mut n);
    assert!(
        !late
            .iter()
            .any(|e| matches!(e, Event::PeerRestarted { .. } | Event::Delivered(_))),
        "{late:?}"
    );
    assert_eq!(n.stats().stale_frames, 1);
    put_from_far_life(&mut n, 9, 101);
    assert_eq!(deliveries(&mut n), 1, "the live life is heard as before");
    // Quiet longer than a router is expected to hold a frame, then one of life 5 comes
    // still later: taken for a new life in doubt, life 9 is still heard after it.
    let later = t(1) + n.late_frame_window();
    put_from_far_life_at(&mut n, later, 5, 2);
    assert_eq!(deliveries(&mut n), 1);
    put_from_far_life_at(&mut n, later, 9, 102);
    assert_eq!(deliveries(&mut n), 1, "life 9 is not locked out");
    put_from_far_life_at(&mut n, later, 9, 103);
    assert_eq!(deliveries(&mut n), 1);
}

/// A far end restarted with its clock gone back (life 3 after 9), and then frames of its
/// old life still come late, held by a slow router: each time, the live life is heard
/// again once the old one has been silent for `forward_patience` and a detection time,
/// never dropped for good.
#[test]
fn a_far_end_whose_clock_went_back_is_not_locked_out_by_its_old_lifes_late_frames() {
    let mut n = sink_behind_b();
    let window = n.late_frame_window();
    put_from_far_life(&mut n, 9, 100);
    assert_eq!(deliveries(&mut n), 1);
    let (t1, t2) = (t(1) + window, t(1) + window * 2);
    put_from_far_life_at(&mut n, t1, 3, 1);
    assert_eq!(deliveries(&mut n), 1, "the new life, in doubt");
    put_from_far_life_at(&mut n, t1, 9, 101);
    assert_eq!(
        deliveries(&mut n),
        1,
        "the old life's late frame: taken back in doubt"
    );
    put_from_far_life_at(&mut n, t1, 3, 2);
    assert_eq!(deliveries(&mut n), 0, "while the old life was just heard");
    put_from_far_life_at(&mut n, t2, 3, 3);
    assert_eq!(deliveries(&mut n), 1, "the live life again");
    put_from_far_life_at(&mut n, t2, 3, 4);
    assert_eq!(deliveries(&mut n), 1);
}

/// A far end this node forgot (idle), whose answers dedup still remembers for its life 9:
/// a late frame of a life 5 never heard from is taken in doubt, not as a restart that
/// would make dedup take 9 for replaced and drop all its frames from then on.
#[test]
fn a_late_frame_after_the_far_end_was_forgotten_does_not_lock_out_its_life() {
    let mut n = sink_behind_b();
    put_from_far_life(&mut n, 9, 100);
    assert_eq!(deliveries(&mut n), 1);
    n.ends.remove(&far());
    put_from_far_life(&mut n, 5, 1);
    events(&mut n);
    put_from_far_life(&mut n, 9, 101);
    assert_eq!(deliveries(&mut n), 1, "life 9 is not locked out");
    put_from_far_life(&mut n, 9, 102);
    assert_eq!(deliveries(&mut n), 1);
}

/// The route to the far net is two routers deep: B or C, then a router D on the far side.
/// The PUT went through B, which failed; its copy went through C. Then D's refusal of the
/// first copy comes back (it was queued there when B failed). It is about an attempt
/// already replaced: it must not send the copy yet another way (there is none left, so
/// the operation would fail although its copy gets through), and the copy's ACK ends it.
#[test]
fn a_refusal_of_an_earlier_attempt_from_deeper_on_the_way_does_not_end_the_resent_copy() {
    let mut n = behind_two_routers_up();
    let (b, c, deep) = (nid(B), nid(C), Nid::mem(6, 2));
    n.put(t(0), OpId(1), far_put()).unwrap();
    let first = sent(&mut n);
    assert_eq!(first[0].1, b);
    lost(&mut n, 0, b);
    let again = sent(&mut n);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, c, "the copy, through C");
    assert_ne!(
        again[0].2.attempt, first[0].2.attempt,
        "told apart on the wire"
    );
    let answer = |n: &mut Node, src: Nid, body: Body, attempt: u8| {
        let header = Header {
            hop_limit: 6,
            src_incarnation: 3,
            attempt,
            ..header(src, nid(A), first[0].2.msg_id, body)
        };
        arrives(n, t(2), c, header, RxPayload::Inline(Bytes::new()));
    };
    let refusal = Body::Nack {
        reason: NackReason::NextHopDown,
        target: far(),
    };
    answer(&mut n, deep, refusal, first[0].2.attempt);
    assert_eq!(completions(&mut n), vec![], "still under way");
    assert!(sent(&mut n).is_empty(), "not sent again");
    let ack = Body::Ack {
        status: Status::Ok,
        mlen: 1,
    };
    answer(&mut n, far(), ack, again[0].2.attempt);
    let done = completions(&mut n);
    assert!(
        matches!(&done[..], [(OpId(1), Ok(OpOutcome::Put { mlen: 1 }))]),
        "{done:?}"
    );
}

/// A 48-byte PUT from `far()` (incarnation 5, message 10) whose payload waits at `hop`
/// under driver handle `handle`.
fn deferred_put_from_far(n: &mut Node, hop: Nid, handle: u64) {
    let header = put_header_from_far(5, 10, 48, 10);
    let payload = RxPayload::Deferred {
        handle: RxHandle(handle),
        len: 48,
    };
    arrives(n, t(1), hop, header, payload);
}

/// Whether the node asked its driver to fetch payload `handle` (taking its requests).
fn fetching(n: &mut Node, handle: u64) -> bool {
    requests(n)
        .iter()
        .any(|r| matches!(r, LndRequest::Fetch { handle: h, .. } if h.0 == handle))
}

/// Routers B and C, a sink on portal 4, and a PUT from `far()` waiting at B whose copy
/// came through C while its payload was being fetched (held).
fn put_and_its_copy_during_the_fetch() -> Node {
    let mut n = behind_b_and_c_with_a_sink();
    deferred_put_from_far(&mut n, nid(B), 1);
    deferred_put_from_far(&mut n, nid(C), 2);
    assert!(!requests(&mut n)
        .iter()
        .any(|r| matches!(r, LndRequest::Decline { .. })));
    n
}

/// The first copy's payload comes after all: delivered once, and the held copy's payload
/// declined; nothing is held any more. The ACK goes back both ways: the copy's, which the
/// initiator took when it gave up on the first's (B may not reach it any more), and the
/// first's.
#[test]
fn a_held_copy_is_declined_when_the_first_payload_comes() {
    let mut n = put_and_its_copy_during_the_fetch();
    super::target::fetched(&mut n, 1, Ok(Bytes::from(vec![1u8; 48])));
    assert_eq!(deliveries(&mut n), 1);
    let declined: Vec<u64> = requests(&mut n)
        .into_iter()
        .filter_map(|r| match r {
            LndRequest::Decline { handle } => Some(handle.0),
            _ => None,
        })
        .collect();
    assert_eq!(declined, vec![2]);
    assert!(n.held_copies.is_empty());
    let mut acked_via: Vec<Nid> = sent(&mut n)
        .into_iter()
        .filter(|(_, _, h, _)| h.msg_id == 10 && matches!(h.body, Body::Ack { .. }))
        .map(|(_, hop, _, _)| hop)
        .collect();
    acked_via.sort();
    assert_eq!(acked_via, vec![nid(B), nid(C)]);
    assert_eq!(n.stats().duplicates_answered, 1, "the copy, answered");
}

/// The entry was cancelled while the first payload was fetched, and that fetch fails:
/// the held copy is answered (no match) at once, not left to its initiator's deadline.
#[test]
fn a_held_copy_for_a_cancelled_entry_is_answered_no_match() {
    let mut n = put_and_its_copy_during_the_fetch();
    n.cancel(OpId(1));
    completions(&mut n);
    let gone = LndError::new(
        LndErrorKind::Reset,
        "the payload is gone with its connection",
    );
    super::target::fetched(&mut n, 1, Err(gone));
    let acks: Vec<Status> = drain(&mut n)
        .into_iter()
        .filter_map(|s| match s.header.body {
            Body::Ack { status, .. } if s.header.msg_id == 10 => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![Status::NoMatch]);
    assert!(n.held_copies.is_empty());
    assert_eq!(deliveries(&mut n), 0);
}

/// A target reached through routers B and C (both up, both routes back), with a sink on
/// portal 4.
fn behind_b_and_c_with_a_sink() -> Node {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    connected(&mut n, C, Lane::Data, 8, 7);
    route_via(&mut n, nid(B), 0);
    route_via(&mut n, nid(C), 0);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    n
}

/// The health monitor's PING to a far end goes through gateway B (the better route),
/// which refuses it: B cannot reach the far end, and has not said so yet. The PING goes
/// again at once through C, rather than being lost: lost, every PING would take B again,
/// and the far end would be declared Down although C reaches it. A PING is sent again
/// once only, so two gateways refusing it cannot bounce it between them.
#[test]
fn a_health_ping_refused_by_a_gateway_goes_again_another_way_once() {
    let mut n = node();
    let (b, c) = (nid(B), nid(C));
    route_via(&mut n, b, 0);
    route_via(&mut n, c, 1);
    connected_on(&mut n, 0, b, Lane::Health, 8, 7);
    connected_on(&mut n, 0, c, Lane::Health, 8, 7);
    n.watch(t(0), far()).unwrap();
    let pings = |n: &mut Node| -> Vec<(Nid, Header)> {
        sent(n)
            .into_iter()
            .filter(|(_, _, h, _)| h.dst == far() && matches!(h.body, Body::Ping { .. }))
            .map(|(_, hop, h, _)| (hop, h))
            .collect()
    };
    let mut first = Vec::new();
    for ms in (0..=1000).step_by(10) {
        n.handle_timeout(t(ms));
        first = pings(&mut n);
        if !first.is_empty() {
            break;
        }
    }
    assert_eq!(first.len(), 1, "the monitor pings the far end");
    assert_eq!(first[0].0, b, "through the better route");
    // A refusal by `src`, come back through `hop`, of message `msg_id` to `target`.
    let refuse = |n: &mut Node, src: Nid, hop: Nid, msg_id: u64, target: Nid| {
        let refusal = Body::Nack {
            reason: NackReason::NextHopDown,
            target,
        };
        let header = Header {
            lane: Lane::Health,
            hop_limit: 7,
            ..header(src, nid(A), msg_id, refusal)
        };
        arrives(n, t(1), hop, header, RxPayload::Inline(Bytes::new()));
    };
    let msg_id = first[0].1.msg_id;
    // Refusals of no PING of ours, or naming another end, send nothing.
    let health_bit = crate::node::health::HEALTH_PING_BIT;
    refuse(&mut n, b, b, health_bit | 999_999, far());
    refuse(&mut n, b, b, msg_id, Nid::mem(8, 2));
    assert!(
        pings(&mut n).is_empty(),
        "nothing for a refusal of nothing of ours"
    );
    // A router beyond B refuses it, and the NACK comes back through C: it goes again
    // avoiding B, the way it left, whatever way the refusal came.
    let deep = Nid::mem(6, 2);
    refuse(&mut n, deep, c, msg_id, far());
    let again = pings(&mut n);
    assert_eq!(again.len(), 1, "sent again at once");
    assert_eq!(again[0].0, c, "another way than it left by");
    assert_eq!(again[0].1.msg_id, msg_id);
    refuse(&mut n, c, c, msg_id, far());
    assert!(pings(&mut n).is_empty(), "once only");
}

/// A GET of 8 KiB through B (or C), whose REPLY from `far()` came through B with its
/// payload left at B (deferred, handle 1): the GET's first copy.
fn get_whose_reply_waits_at_b() -> (Node, Header) {
    let mut n = behind_two_routers_up();
    n.get(t(0), OpId(1), far_get()).unwrap();
    let first = sent(&mut n);
    assert_eq!(first[0].1, nid(B));
    reply_left_at_b(&mut n, t(1), first[0].2.msg_id, 1);
    assert!(requests(&mut n).iter().any(|r| matches!(
        r,
        LndRequest::Fetch {
            handle: RxHandle(1),
            ..
        }
    )));
    (n, first[0].2)
}

/// A GET of 8 KiB from `far()` (portal 4, bits 0x10).
fn far_get() -> GetRequest {
    GetRequest {
        dst: far(),
        lane: Lane::Data,
        portal: 4,
        match_bits: 0x10,
        want_len: 8192,
        timeout: None,
        on_peer_down: Default::default(),
    }
}

/// The GET (op 1) ended with the 3 bytes "abc", and nothing else completed.
fn got_abc(n: &mut Node) {
    let done = completions(n);
    assert!(
        matches!(&done[..], [(OpId(1), Ok(OpOutcome::Get { data }))] if &data[..] == b"abc"),
        "{done:?}"
    );
}

/// `far()`'s REPLY of 5,000 bytes to `msg_id` comes through B, its payload left at B
/// (deferred, as `handle`).
fn reply_left_at_b(n: &mut Node, now: Time, msg_id: u64, handle: u64) {
    let payload = RxPayload::Deferred {
        handle: RxHandle(handle),
        len: 5000,
    };
    far_reply_via(n, now, nid(B), msg_id, payload);
}

/// `far()`'s REPLY to `msg_id`, with `payload`, comes through `hop`.
fn far_reply_via(n: &mut Node, now: Time, hop: Nid, msg_id: u64, payload: RxPayload) {
    let reply = Header {
        hop_limit: 6,
        payload_len: payload.len() as u32,
        ..header(far(), nid(A), msg_id, Body::Reply { status: Status::Ok })
    };
    arrives(n, now, hop, reply, payload);
}

fn fetch_failed(n: &mut Node) {
    let gone = LndError::new(LndErrorKind::Reset, "gone with its connection");
    super::target::fetched(n, 1, Err(gone));
}

/// B fails while the REPLY's payload is fetched from it: the GET went out again through C,
/// so the failed fetch is about a copy already replaced, and the new copy's REPLY ends it.
#[test]
fn a_routed_get_resent_while_its_reply_was_fetched_ends_with_the_copys_reply() {
    let (mut n, first) = get_whose_reply_waits_at_b();
    lost(&mut n, 0, nid(B));
    let again = sent(&mut n);
    assert_eq!((again[0].1, again[0].2.msg_id), (nid(C), first.msg_id));
    fetch_failed(&mut n);
    assert_eq!(completions(&mut n), vec![], "the copy is under way");
    let abc = RxPayload::Inline(Bytes::from_static(b"abc"));
    far_reply_via(&mut n, t(2), nid(C), first.msg_id, abc);
    got_abc(&mut n);
}

/// The fetch from B fails before B's connection is reported lost: the payload was at a
/// router, so the GET is sent again another way (its target answers the copy from its
/// record) rather than failed.
#[test]
fn a_routed_get_whose_reply_cannot_be_fetched_from_its_router_is_sent_again() {
    let (mut n, first) = get_whose_reply_waits_at_b();
    fetch_failed(&mut n);
    assert_eq!(completions(&mut n), vec![]);
    let again = sent(&mut n);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].1, again[0].2.msg_id), (nid(C), first.msg_id));
}

/// B fails with the GET in flight, and the GET goes again through C. B comes back and
/// passes on the target's REPLY to the first copy; C then brings the REPLY to the copy,
/// both payloads left at their router. The fetch from B fails (B goes again): the fetch
/// from C is still under way, and its payload ends the GET. (Both REPLYs are fetched,
/// one per router: the second is not taken for a peer's error, nor the failed fetch for
/// a failure of the copy's router.)
#[test]
fn a_routed_get_whose_first_reply_cannot_be_fetched_ends_with_the_reply_of_its_copy() {
    let mut n = behind_two_routers_up();
    n.get(t(0), OpId(1), far_get()).unwrap();
    let first = sent(&mut n);
    assert_eq!(first[0].1, nid(B));
    lost(&mut n, 0, nid(B));
    let again = sent(&mut n);
    assert_eq!(again[0].1, nid(C));
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 7);
    let msg_id = first[0].2.msg_id;
    reply_left_at_b(&mut n, t(2), msg_id, 1);
    let at_c = RxPayload::Deferred {
        handle: RxHandle(2),
        len: 3,
    };
    far_reply_via(&mut n, t(3), nid(C), msg_id, at_c);
    let fetches: Vec<u64> = requests(&mut n)
        .into_iter()
        .filter_map(|r| match r {
            LndRequest::Fetch { handle, .. } => Some(handle.0),
            _ => None,
        })
        .collect();
    assert_eq!(fetches, vec![1, 2], "one REPLY fetched per router");
    fetch_failed(&mut n);
    assert_eq!(
        completions(&mut n),
        vec![],
        "the copy's REPLY is on its way"
    );
    super::target::fetched(&mut n, 2, Ok(Bytes::from_static(b"abc")));
    got_abc(&mut n);
}

/// B fails with the GET in flight; the GET goes again through C. B comes back with the
/// target's REPLY to the first copy, whose fetch from B fails (B goes again) before C
/// brings the copy's: the failure is B's, a router the GET has left, and the GET waits
/// for its copy's REPLY rather than be resent avoiding C (and fail, with no way left).
/// The same while the copy waits for C to connect.
#[test]
fn a_reply_by_a_router_the_get_left_that_cannot_be_fetched_leaves_the_copy_to_answer() {
    for c_up in [true, false] {
        let mut n = node();
        route_via(&mut n, nid(B), 0);
        route_via(&mut n, nid(C), 1);
        connected_on(&mut n, 0, nid(B), Lane::Data, 8, 7);
        if c_up {
            connected_on(&mut n, 0, nid(C), Lane::Data, 8, 7);
        }
        n.get(t(0), OpId(1), far_get()).unwrap();
        let first = sent(&mut n);
        lost(&mut n, 0, nid(B));
        assert_eq!(
            sent(&mut n).len(),
            usize::from(c_up),
            "through C, if it is up"
        );
        connected_on(&mut n, 0, nid(B), Lane::Data, 8, 7);
        let msg_id = first[0].2.msg_id;
        reply_left_at_b(&mut n, t(2), msg_id, 1);
        fetch_failed(&mut n);
        assert_eq!(completions(&mut n), vec![], "c up: {c_up}");
        if !c_up {
            connected_on(&mut n, 0, nid(C), Lane::Data, 8, 7);
            let again = sent(&mut n);
            assert_eq!((again.len(), again[0].1), (1, nid(C)));
        }
        let abc = RxPayload::Inline(Bytes::from_static(b"abc"));
        far_reply_via(&mut n, t(3), nid(C), msg_id, abc);
        got_abc(&mut n);
    }
}

/// A PUT sent straight to its neighbour B passes no router, so nothing can refuse it on
/// the way: a NACK naming it, from another neighbour C guessing its message id, is
/// ignored (it ended the PUT), and B's ACK ends it.
#[test]
fn a_nack_for_a_request_that_passed_no_router_is_ignored() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    connected(&mut n, C, Lane::Data, 8, 9);
    n.put(t(0), OpId(1), put(B, b"x")).unwrap();
    let first = sent(&mut n);
    assert_eq!(first[0].1, nid(B));
    let forged = Header {
        attempt: first[0].2.attempt,
        ..header(
            nid(C),
            nid(A),
            first[0].2.msg_id,
            Body::Nack {
                reason: NackReason::NextHopDown,
                target: nid(B),
            },
        )
    };
    arrives(
        &mut n,
        t(1),
        nid(C),
        forged,
        RxPayload::Inline(Bytes::new()),
    );
    assert_eq!(completions(&mut n), vec![]);
    let ack = Header {
        src_incarnation: 7,
        ..header(
            nid(B),
            nid(A),
            first[0].2.msg_id,
            Body::Ack {
                status: Status::Ok,
                mlen: 1,
            },
        )
    };
    arrives(&mut n, t(2), nid(B), ack, RxPayload::Inline(Bytes::new()));
    let done = completions(&mut n);
    assert!(
        matches!(&done[..], [(OpId(1), Ok(OpOutcome::Put { mlen: 1 }))]),
        "{done:?}"
    );
}

/// Router B restarts and its driver replaces the connection without a Disconnected first
/// (the new HELLO says incarnation 8): what went through B's old life is lost with it, so
/// the PUT in flight through B goes through C, rather than waiting out its deadline.
#[test]
fn a_router_back_in_a_new_life_without_a_disconnect_has_what_went_through_it_resent() {
    let mut n = behind_two_routers_up();
    n.put(t(0), OpId(1), far_put()).unwrap();
    let first = sent(&mut n);
    assert_eq!(first[0].1, nid(B));
    went_out(&mut n, &first[0]);
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 8);
    let again = sent(&mut n);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].1, again[0].2.msg_id), (nid(C), first[0].2.msg_id));
    assert!(completions(&mut n).is_empty());
}

/// A connection to the only gateway fails once (its listener not up yet), then comes
/// up: the gateway is usable again at once, not only after a detection time during
/// which every operation through it failed with no route.
#[test]
fn a_gateway_whose_connection_failed_is_usable_once_one_comes_up() {
    let mut n = node();
    let gateway = nid(B);
    route_via(&mut n, gateway, 0);
    n.put(t(0), OpId(1), far_put()).unwrap();
    let refused = LndError::new(LndErrorKind::Refused, "connection refused");
    let ev = LndEvent::ConnectFailed {
        peer: gateway,
        lane: Lane::Data,
        error: refused,
    };
    n.handle_lnd_event(t(1), NiId(0), ev);
    assert_eq!(completions(&mut n).len(), 1, "no other way");
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(2), OpId(2), far_put()).unwrap();
    assert!(completions(&mut n).is_empty(), "failed at once");
    let out = sent(&mut n);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].1, out[0].2.dst), (gateway, far()));
}

/// Our only gateway is Down and nobody monitors it any more (remembered Down). A sweep of
/// idle peers keeps it: forgotten, its route stayed reported down (no RouteUp would ever
/// come) although operations would try it again.
#[test]
fn the_idle_sweep_keeps_a_down_gateway_and_its_route_down() {
    let mut n = node();
    let gateway = nid(B);
    route_via(&mut n, gateway, 0);
    n.watch(t(0), gateway).unwrap();
    for ms in (100..=1_000).step_by(100) {
        n.handle_timeout(t(ms));
    }
    assert!(n.health.is_down(gateway));
    n.unwatch(t(1_000), gateway);
    assert!(n.health.is_down(gateway), "remembered Down");
    n.forget_idle_now();
    assert!(n.health.is_down(gateway), "still remembered Down");
    let down = n.gateways.route_down(far().net(), gateway);
    assert_eq!(down, Some(crate::op::RouteDownReason::GatewayDown));
    assert!(
        n.next_hop(far(), &[]).is_none(),
        "and not used: as reported"
    );
}

/// The REPLY's payload is being fetched from B when B sends the same REPLY again, and
/// again: each is declined (a hostile peer made each take a buffer of the GET's length),
/// and the first fetch still ends the GET.
#[test]
fn a_second_reply_to_the_same_copy_while_its_payload_is_fetched_is_declined() {
    let (mut n, first) = get_whose_reply_waits_at_b();
    for handle in 2..5 {
        reply_left_at_b(&mut n, t(2), first.msg_id, handle);
    }
    let asked = requests(&mut n);
    assert!(
        asked
            .iter()
            .all(|r| matches!(r, LndRequest::Decline { .. })),
        "{asked:?}"
    );
    assert_eq!(asked.len(), 3);
    super::target::fetched(&mut n, 1, Ok(Bytes::from(vec![7u8; 5000])));
    let done = completions(&mut n);
    assert!(
        matches!(&done[..], [(OpId(1), Ok(OpOutcome::Get { data }))] if data.len() == 5000),
        "{done:?}"
    );
}

/// A REPLY longer than the GET asked for, from a far end through router B: the GET fails
/// (`Protocol`), but B, which cannot know what the GET asked for, broke nothing: its
/// connection stays, and the other operation through it goes on.
#[test]
fn a_far_ends_protocol_error_does_not_close_the_router_it_came_through() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    route_via(&mut n, nid(B), 0);
    let get = GetRequest {
        dst: far(),
        lane: Lane::Data,
        portal: 4,
        match_bits: 0x10,
        want_len: 4,
        timeout: None,
        on_peer_down: Default::default(),
    };
    n.get(t(0), OpId(2), get).unwrap();
    n.put(t(0), OpId(3), far_put()).unwrap();
    let out = sent(&mut n);
    assert!(out.iter().all(|s| s.1 == nid(B)), "both through B");
    // Eight bytes where the GET asked for four.
    let eight = RxPayload::Inline(Bytes::from_static(b"12345678"));
    far_reply_via(&mut n, t(1), nid(B), out[0].2.msg_id, eight);
    let done = completions(&mut n);
    assert!(
        matches!(&done[..], [(OpId(2), Err(OpError::Protocol(_)))]),
        "{done:?}"
    );
    assert_eq!(n.stats().protocol_errors, 1);
    let closes: Vec<_> = requests(&mut n)
        .into_iter()
        .filter(|r| matches!(r, LndRequest::Close { .. }))
        .collect();
    assert!(closes.is_empty(), "{closes:?}");
    assert!(n.ops.contains(OpId(3)), "the PUT through B goes on");
}
