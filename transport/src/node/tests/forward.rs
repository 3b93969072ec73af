//! A router node driven by hand: what it passes on, what it refuses, and the credits it
//! holds meanwhile.

use super::*;

/// Node A with NIs on mem nets 0 and 1, forwarding.
fn router() -> Node {
    router_with(cfg())
}

/// [`router`], its other settings from `base`.
fn router_with(base: NodeConfig) -> Node {
    let mut n = node_with(NodeConfig {
        forwarding: true,
        router: crate::config::RouterConfig {
            warm_up: std::time::Duration::ZERO,
            ..base.router.clone()
        },
        ..base
    });
    n.add_ni(Nid::mem(A, 1)).unwrap();
    n
}

/// Downstream node D, on net 1.
fn d() -> Nid {
    Nid::mem(5, 1)
}

/// A PUT from B (on net 0) to `dst`, arriving at the router from B.
fn put_from_b(n: &mut Node, dst: Nid, msg_id: u64, hop_limit: u8) {
    resent_put_from_b(n, dst, msg_id, hop_limit, 0);
}

/// [`put_from_b`], B's copy number `attempt` of it.
fn resent_put_from_b(n: &mut Node, dst: Nid, msg_id: u64, hop_limit: u8, attempt: u8) {
    let put = Body::Put {
        portal: 4,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    let header = Header {
        hop_limit,
        payload_len: 3,
        attempt,
        ..header(nid(B), dst, msg_id, put)
    };
    let payload = RxPayload::Inline(Bytes::from_static(b"abc"));
    arrives(n, t(0), nid(B), header, payload);
}

/// (owed, held) credits of the router towards B on the data lane.
fn b_credits(n: &Node) -> (u16, u16) {
    match &n.hops[&nid(B)].lanes[Lane::Data].conn {
        Conn::Up { credits, .. } => (credits.owed(), credits.held()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forwarded_frames_credit_goes_back_only_once_it_has_left() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    connected_on(&mut n, 1, d(), Lane::Data, 1, 9);
    // B fills every buffer the router offered it; D takes one frame at a time.
    for m in 1..=8 {
        put_from_b(&mut n, d(), m, 8);
    }
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "one credit at D");
    let h = out[0].header;
    assert_eq!(
        (h.src, h.dst, h.msg_id, h.hop_limit),
        (nid(B), d(), 1, 7),
        "ends unchanged, one hop used"
    );
    assert_eq!(b_credits(&n), (0, 8), "all held: nothing to give back yet");
    // B cannot send a ninth: the held buffers are in use.
    put_from_b(&mut n, d(), 9, 8);
    assert_eq!(n.stats().protocol_errors, 1);
    // The first frame leaves D's driver: its buffer here is free again. B has no credit
    // left (the rest are held here), so the one freed goes back at once, though one is
    // below the high-water mark.
    sent_ok(&mut n, &out[0]);
    assert_eq!(b_credits(&n), (0, 7));
    let back = drain(&mut n);
    assert_eq!(back.len(), 1);
    assert_eq!(
        (
            back[0].header.dst,
            back[0].header.body,
            back[0].header.credits
        ),
        (nid(B), Body::Credit, 1)
    );
    assert_eq!(n.stats().forwarded, 8);
}

/// The NACK the router sent to B for message `msg_id`.
fn nack_to_b(n: &mut Node, msg_id: u64) -> (NackReason, Nid) {
    let out = drain(n);
    let nack = out
        .iter()
        .find(|s| s.header.dst == nid(B) && s.header.msg_id == msg_id)
        .unwrap_or_else(|| panic!("no NACK among {:?}", out.len()));
    assert_eq!(nack.header.src, nid(A), "from the router's NID on B's net");
    match nack.header.body {
        Body::Nack { reason, target } => (reason, target),
        other => panic!("{other:?}"),
    }
}

#[test]
fn what_cannot_be_passed_on_is_refused_at_once_and_says_why() {
    let far = Nid::mem(7, 5);
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    put_from_b(&mut n, far, 1, 8);
    assert_eq!(nack_to_b(&mut n, 1), (NackReason::NoRoute, far));
    assert_eq!(b_credits(&n).1, 0, "a refused frame holds no buffer");
    put_from_b(&mut n, d(), 2, 0);
    assert_eq!(nack_to_b(&mut n, 2), (NackReason::HopLimit, d()));
    // Declared Down: refused rather than held for it.
    n.health.watch(d(), t(0), true);
    n.handle_timeout(t(10_000));
    put_from_b(&mut n, d(), 3, 8);
    assert_eq!(nack_to_b(&mut n, 3), (NackReason::NextHopDown, d()));
    // A node that does not forward refuses too.
    let mut end = node();
    connected(&mut end, B, Lane::Data, 8, 7);
    put_from_b(&mut end, Nid::mem(C, 0), 4, 8);
    assert_eq!(
        nack_to_b(&mut end, 4),
        (NackReason::NotForwarding, Nid::mem(C, 0))
    );
    assert_eq!(n.stats().nacks_sent, 3);
}

/// The NI towards D fails with a forwarded frame still in its driver (which will never
/// report on it): the frame lets go of its buffer and of B's credit, and its initiator
/// hears at once that it may not have got out, instead of waiting out its deadline.
#[test]
fn a_failed_nis_driver_lets_go_of_what_it_held_for_others() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    connected_on(&mut n, 1, d(), Lane::Data, 8, 9);
    put_from_b(&mut n, d(), 1, 8);
    let to_d: Vec<_> = drain(&mut n);
    assert_eq!(to_d.len(), 1, "in NI 1's driver now");
    assert_eq!(b_credits(&n), (0, 1), "B's credit held while it is");
    let error = LndError::new(LndErrorKind::Resource, "driver gone");
    n.ni_failed(t(1), NiId(1), error);
    assert_eq!(b_credits(&n).1, 0, "nothing held for B any more");
    let pools = n.router_stats().pools;
    assert!(pools.iter().all(|p| p.in_use == 0), "{pools:?}");
    assert_eq!(nack_to_b(&mut n, 1), (NackReason::NextHopDown, d()));
}

/// The NI towards D fails while forwarded frames wait in the outbox for its driver (queued,
/// not yet handed over): each ends once, refused to B in the order they were queued, and
/// nothing is left for a driver to complete a second time.
#[test]
fn a_failed_nis_queued_frames_end_once_in_the_order_they_were_queued() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    connected_on(&mut n, 1, d(), Lane::Data, 8, 9);
    // Two frames out and back (the second first), so that the drivers' table reuses
    // their places in another order than the frames' (a later frame, a lower token).
    put_from_b(&mut n, d(), 1, 8);
    put_from_b(&mut n, d(), 2, 8);
    let out = drain(&mut n);
    assert_eq!(out.len(), 2);
    sent_ok(&mut n, &out[1]);
    sent_ok(&mut n, &out[0]);
    for m in 3..=5 {
        put_from_b(&mut n, d(), m, 8);
    }
    assert_eq!(
        drain(&mut n).iter().filter(|s| s.header.dst == d()).count(),
        3
    );
    // The sixth is queued for NI 1's driver, not handed over, when the NI fails.
    put_from_b(&mut n, d(), 6, 8);
    let error = LndError::new(LndErrorKind::Resource, "driver gone");
    n.ni_failed(t(1), NiId(1), error);
    let out = drain(&mut n);
    let refused: Vec<u64> = out
        .iter()
        .filter(|s| matches!(s.header.body, Body::Nack { .. }))
        .map(|s| s.header.msg_id)
        .collect();
    assert_eq!(refused, vec![3, 4, 5, 6]);
    assert!(
        out.iter().all(|s| s.header.dst == nid(B)),
        "nothing left for D"
    );
    assert_eq!(n.stats().protocol_errors, 0);
}

/// HELLO and CREDIT frames are a hop's own business: one addressed to another node is a
/// protocol error (its connection closed), never passed on or counted against credits.
#[test]
fn a_hello_or_credit_addressed_beyond_the_router_is_a_protocol_error() {
    for body in [
        Body::Credit,
        Body::Hello {
            credits: 8,
            max_payload: 1 << 20,
            status: crate::wire::HelloStatus::Ok,
        },
    ] {
        let mut n = router();
        connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
        connected_on(&mut n, 1, d(), Lane::Data, 8, 9);
        let header = header(nid(B), d(), 1, body);
        let ev = LndEvent::Received {
            peer: nid(B),
            lane: Lane::Data,
            header,
            payload: RxPayload::Inline(Bytes::new()),
        };
        n.handle_lnd_event(t(0), NiId(0), ev);
        assert_eq!(n.stats().protocol_errors, 1, "{body:?}");
        assert_eq!(n.stats().forwarded, 0, "{body:?}");
        let closed = std::iter::from_fn(|| n.poll_request())
            .any(|(_, r)| matches!(r, LndRequest::Close { peer, .. } if peer == nid(B)));
        assert!(closed, "{body:?}: the connection to B is closed");
    }
}

/// Node A with a route to mem net 2 through its neighbour B (`gw`), whose health lane is
/// up with `health_credits` of A's credits left, and which has told A its status:
/// generation 5.
fn node_behind_gateway(health_credits: u16) -> Node {
    let gw = nid(B);
    let mut n = node();
    n.add_route(Route {
        net: Nid::mem(0, 2).net(),
        gateway: gw,
        hops: 1,
        priority: 0,
    })
    .unwrap();
    connected_with_credits_left(&mut n, B, Lane::Health, health_credits);
    let status = crate::wire::RouterStatus {
        generation: 5,
        state: crate::wire::RouterState::Forwarding,
        nets: vec![],
        unreachable: vec![],
        more_unreachable: false,
        vouched: vec![],
    };
    let push = frame_from_gateway(Lane::Health, Body::Status, 0, 5, status.encode());
    n.handle_lnd_event(t(0), NiId(0), push);
    assert_eq!(n.gateway_status(gw).map(|s| s.generation), Some(5));
    n
}

/// A frame from the gateway B to A on `lane`, returning `credits`, saying the gateway's
/// status is at `router_gen`.
fn frame_from_gateway(
    lane: Lane,
    body: Body,
    credits: u16,
    router_gen: u32,
    payload: Bytes,
) -> LndEvent {
    let header = Header {
        lane,
        hop_limit: 0,
        credits,
        src: nid(B),
        dst: nid(A),
        src_incarnation: 7,
        msg_id: 0,
        payload_len: payload.len() as u32,
        body,
        router_gen,
        attempt: 0,
    };
    LndEvent::Received {
        peer: nid(B),
        lane,
        header,
        payload: RxPayload::Inline(payload),
    }
}

/// A router's status counts only from that router: a neighbour's STATUS (or PONG) in a
/// fellow's name could otherwise make a healthy router withdraw (a router takes frames
/// from sources behind its neighbours, so a frame's source alone proves nothing).
#[test]
fn a_status_in_a_fellows_name_from_another_neighbour_is_not_taken() {
    let fellow = nid(B);
    let mut n = node_with(NodeConfig {
        forwarding: true,
        router: crate::config::RouterConfig {
            warm_up: std::time::Duration::ZERO,
            fellows: vec![fellow],
            ..Default::default()
        },
        ..cfg()
    });
    connected(&mut n, B, Lane::Health, 8, 7);
    connected(&mut n, C, Lane::Health, 8, 9);
    let status = |generation, state| crate::wire::RouterStatus {
        generation,
        state,
        nets: vec![],
        unreachable: vec![],
        more_unreachable: false,
        vouched: vec![],
    };
    let own = status(5, crate::wire::RouterState::Forwarding);
    let push = frame_from_gateway(Lane::Health, Body::Status, 0, 5, own.encode());
    n.handle_lnd_event(t(0), NiId(0), push);
    assert_eq!(n.gateway_status(fellow), Some(&own), "its own word");
    let absent = crate::wire::RouterState::Absent(crate::wire::AbsentReason::BlackHole);
    let forged = status(9, absent);
    let errors = n.stats().protocol_errors;
    for body in [Body::Status, Body::Pong { seq: 1 }] {
        let LndEvent::Received {
            mut header,
            payload,
            ..
        } = frame_from_gateway(Lane::Health, body, 0, 0, forged.encode())
        else {
            unreachable!("a frame")
        };
        header.msg_id = 1 | crate::node::health::HEALTH_PING_BIT;
        let from_c = LndEvent::Received {
            peer: nid(C),
            lane: Lane::Health,
            header,
            payload,
        };
        n.handle_lnd_event(t(1), NiId(0), from_c);
    }
    assert_eq!(n.gateway_status(fellow), Some(&own), "its own word stands");
    assert!(n.stats().protocol_errors > errors, "the STATUS is counted");
}

#[test]
fn a_new_generation_on_a_gateways_frames_makes_the_node_ask_for_its_status() {
    let gw = nid(B);
    let mut n = node_behind_gateway(8);
    connected(&mut n, B, Lane::Data, 8, 7);
    assert!(drain(&mut n).is_empty());
    // Its frames now say 6: it changed, and the push did not reach us. One PING asks.
    for _ in 0..3 {
        let credit = frame_from_gateway(Lane::Data, Body::Credit, 0, 6, Bytes::new());
        n.handle_lnd_event(t(1), NiId(0), credit);
    }
    let asked = drain(&mut n);
    assert_eq!(asked.len(), 1, "asked once");
    assert!(matches!(asked[0].header.body, Body::Ping { .. }));
    assert_eq!(asked[0].header.dst, gw);
}

/// A gateway that keeps our health credits while its frames name generation after
/// generation (6, 7, 6, 7, ...): one PING asks, and the others wait behind it, not one
/// per frame.
#[test]
fn a_gateway_whose_frames_flip_generations_gets_one_waiting_ask_not_one_per_frame() {
    let mut n = node_behind_gateway(1);
    connected(&mut n, B, Lane::Data, 8, 7);
    let first = frame_from_gateway(Lane::Data, Body::Credit, 0, 6, Bytes::new());
    n.handle_lnd_event(t(1), NiId(0), first);
    assert_eq!(drain(&mut n).len(), 1, "the first ask takes the one credit");
    for i in 0..10_000u32 {
        let credit = frame_from_gateway(Lane::Data, Body::Credit, 0, 7 - i % 2, Bytes::new());
        n.handle_lnd_event(t(1), NiId(0), credit);
    }
    assert!(drain(&mut n).is_empty(), "no credit");
    assert_eq!(n.footprint().queued, 1, "one ask waits");
}

/// A frame that returns a credit and makes the node send a request of its own (here, the
/// PING that asks a gateway for its changed status): the credit goes to the request that
/// waited for it, and the new one waits its turn (it cannot skip the queue).
#[test]
fn a_request_sent_on_the_way_does_not_pass_those_waiting_for_credits() {
    let mut n = node_behind_gateway(1);
    // Two PINGs of ours: one credit, so one waits.
    n.ping(t(1), OpId(1), ping(B)).unwrap();
    n.ping(t(1), OpId(2), ping(B)).unwrap();
    let first = drain(&mut n);
    assert_eq!(first.len(), 1, "one credit, one PING");
    // The credit comes back on a frame saying generation 6: the node asks for the new
    // status, behind the PING that waited.
    let credit = || frame_from_gateway(Lane::Health, Body::Credit, 1, 6, Bytes::new());
    n.handle_lnd_event(t(2), NiId(0), credit());
    let next = drain(&mut n);
    assert_eq!(next.len(), 1, "one credit back, one frame");
    assert_eq!(
        next[0].header.msg_id,
        first[0].header.msg_id + 1,
        "op 2's PING"
    );
    n.handle_lnd_event(t(3), NiId(0), credit());
    let last = drain(&mut n);
    assert_eq!(last.len(), 1);
    assert!(matches!(last[0].header.body, Body::Ping { .. }));
    let health_ping = crate::node::health::HEALTH_PING_BIT;
    assert_ne!(
        last[0].header.msg_id & health_ping,
        0,
        "the status ask, the monitor's"
    );
}

/// [`router`] whose peers are not judged within a test (their health lanes answer, as it
/// were), with B's data lane up offering 8 credits.
fn router_nobody_down() -> Node {
    let mut base = cfg();
    base.health.interval = Duration::from_secs(3600);
    let mut n = router_with(base);
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    n
}

/// [`router_nobody_down`] with D's data lane up offering one credit, and B's eight PUTs to
/// D passed on: the first in D's driver, seven waiting.
fn seven_waiting_at_d() -> Node {
    let mut n = router_nobody_down();
    connected_on(&mut n, 1, d(), Lane::Data, 1, 9);
    for m in 1..=8 {
        put_from_b(&mut n, d(), m, 8);
    }
    n
}

/// A frame from D (its own, with no payload) arriving at the router on NI 1 at `at`,
/// returning `credits`.
fn from_d(n: &mut Node, at: Time, credits: u16, msg_id: u64, body: Body) {
    let header = Header {
        credits,
        src_incarnation: 9,
        ..header(d(), Nid::mem(A, 1), msg_id, body)
    };
    let ev = LndEvent::Received {
        peer: d(),
        lane: Lane::Data,
        header,
        payload: RxPayload::Inline(Bytes::new()),
    };
    n.handle_lnd_event(at, NiId(1), ev);
}

/// D stops returning data credits while it stays up (LU-18444's pattern: a peer whose
/// health lane answers but whose data lane takes nothing). The frames waiting at D are
/// refused once they have waited `forward_patience`, so B's credits and the router's
/// buffers come back, and B may send another way, instead of being held for ever.
#[test]
fn frames_waiting_at_a_next_hop_that_takes_nothing_are_refused_after_their_patience() {
    // D's health lane answers (here: nothing is judged within the test), so nothing is
    // refused for D being down.
    let mut n = seven_waiting_at_d();
    let patience = n.cfg.forward_patience;
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "D's one credit");
    sent_ok(&mut n, &out[0]);
    assert_eq!(
        b_credits(&n).1,
        7,
        "seven wait at D, each holding B's credit"
    );
    let back: Vec<_> = drain(&mut n).iter().map(|s| s.header.body).collect();
    assert_eq!(
        back,
        [Body::Credit],
        "the freed credit goes back to B at once"
    );
    // Short of the patience, they wait on: a slow next hop is not a stalled one.
    let half = t(0) + patience / 2;
    n.handle_timeout(half);
    let out: Vec<_> = drain(&mut n)
        .into_iter()
        .map(|s| (s.header.dst, s.header.body))
        .collect();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(b_credits(&n).1, 7);
    let at = n.poll_timeout().expect("a deadline for the waiting frames");
    assert!(at <= t(0) + patience * 9 / 8, "{at:?}");
    n.handle_timeout(at);
    let refused: Vec<_> = drain(&mut n)
        .into_iter()
        .filter(|s| s.header.dst == nid(B))
        .map(|s| match s.header.body {
            Body::Nack { reason, target } => (s.header.msg_id, reason, target),
            other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<_> = (2..=8)
        .map(|m| (m, NackReason::NextHopStalled, d()))
        .collect();
    assert_eq!(refused, want, "each refused once, in order");
    assert_eq!(b_credits(&n).1, 0, "B's credits are back");
    let pools = n.router_stats().pools;
    assert!(pools.iter().all(|p| p.in_use == 0), "{pools:?}");
}

/// B's connection is lost while seven of its PUTs wait at D, then B connects again and
/// sends eight more. B counts the first eight as lost (and sends them again), so the
/// router gives back the buffers of those still here: each connection of B's holds at
/// most its credits of them, not a window more at each reconnection.
#[test]
fn requests_from_a_lost_connection_give_back_their_buffers() {
    let in_use = |n: &Node| -> u32 { n.router_stats().pools.iter().map(|p| p.in_use).sum() };
    let mut n = seven_waiting_at_d();
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "D's one credit");
    assert_eq!(in_use(&n), 8);
    requests(&mut n);
    let nacks_before = n.stats().nacks_sent;
    disconnected(&mut n, t(0), B, Lane::Data);
    assert_eq!(in_use(&n), 1, "only the frame in D's driver");
    let to_d = n.hops[&d()].lanes[Lane::Data].queue.len();
    assert_eq!(to_d, 0, "nothing of the lost connection waits at D");
    // B started them, and counts them lost itself: no NACK, and no dial of B for one.
    assert_eq!(n.stats().nacks_sent, nacks_before);
    let dials: Vec<_> = requests(&mut n)
        .into_iter()
        .filter(|r| matches!(r, LndRequest::Connect { .. }))
        .collect();
    assert!(dials.is_empty(), "{dials:?}");
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    for m in 9..=16 {
        put_from_b(&mut n, d(), m, 8);
    }
    assert_eq!(in_use(&n), 9);
    sent_ok(&mut n, &out[0]);
    assert_eq!(in_use(&n), 8);
}

/// D takes one frame per half patience: slow, but moving. Its frames wait at the router
/// far longer than the patience, and none is refused (a busy server's queue at its router
/// may take many seconds to drain). Then it stops: once nothing has left for the
/// patience, what waits is refused; what comes next waits a patience again. Once D takes
/// frames again, they pass.
#[test]
fn frames_at_a_next_hop_that_is_slow_but_moving_wait_however_long() {
    let mut n = seven_waiting_at_d();
    let patience = n.cfg.forward_patience;
    let credit_from_d = |n: &mut Node, at: Time| from_d(n, at, 1, 0, Body::Credit);
    let nacks = |out: &[Sent]| {
        out.iter()
            .filter(|s| matches!(s.header.body, Body::Nack { .. }))
            .count()
    };
    let mut passed = drain(&mut n).len();
    assert_eq!(passed, 1);
    let mut now = t(0);
    for _ in 0..4 {
        now = now + patience / 2;
        n.handle_timeout(now);
        credit_from_d(&mut n, now);
        let out = drain(&mut n);
        assert_eq!(nacks(&out), 0, "at {now:?}");
        passed += out.len();
    }
    assert_eq!(passed, 5, "one frame per credit");
    assert!(now.saturating_since(t(0)) >= patience * 2);
    // D stops: the three still waiting go, once the lane has stood still for the patience.
    now = now + patience;
    n.handle_timeout(now);
    assert_eq!(nacks(&drain(&mut n)), 3);
    // The next one waits afresh (nothing else waited), and goes the same way.
    put_from_b(&mut n, d(), 9, 8);
    assert_eq!(nacks(&drain(&mut n)), 0);
    now = now + patience;
    n.handle_timeout(now);
    assert_eq!(nacks(&drain(&mut n)), 1);
    // D takes frames again: what comes next passes.
    credit_from_d(&mut n, now);
    put_from_b(&mut n, d(), 10, 8);
    let out = drain(&mut n);
    assert_eq!(nacks(&out), 0);
    assert!(out
        .iter()
        .any(|s| s.header.dst == d() && s.header.msg_id == 10));
}

/// A router's status lists at most [`crate::wire::MAX_UNREACHABLE`] peers it cannot
/// reach. The peers it serves go first: its fellows judge by them whether they may cover
/// for it, and its senders whether to avoid it, so they must not fall off the end of the
/// list behind peers nobody sends to (here the one it serves has the highest NID).
#[test]
fn a_router_lists_the_peers_it_serves_first_among_those_it_cannot_reach() {
    use crate::wire::{RouterStatus, MAX_UNREACHABLE};
    let mut n = router();
    let many: Vec<Nid> = (0..MAX_UNREACHABLE as u32 + 10)
        .map(|i| Nid::mem(100 + i, 1))
        .collect();
    for &p in &many {
        n.health.watch(p, t(0), true);
    }
    let served = *many.last().expect("peers");
    n.router_served(t(0), [nid(B), served]);
    // Past the detection time (300 ms), within the memory of peers served (3 s).
    n.handle_timeout(t(1_000));
    let status = RouterStatus::decode(&n.router.encoded).unwrap();
    assert!(status.more_unreachable);
    assert_eq!(status.unreachable.len(), MAX_UNREACHABLE);
    assert!(
        status.unreachable.contains(&served),
        "{served} is not among {:?}",
        status.unreachable
    );
}

/// The same with a fellow, B, that lists 43 peers it cannot reach (as many as a status
/// carries), all with lower NIDs than the one this router serves: the router watches
/// them for B, and they go Down here too (dead everywhere). The peer it serves still
/// comes first, before those it only watches for B.
#[test]
fn a_router_lists_the_peers_it_serves_before_those_it_watches_for_a_fellow() {
    use crate::wire::{RouterState, RouterStatus, MAX_UNREACHABLE};
    let mut base = cfg();
    base.router.fellows = vec![nid(B)];
    let mut n = router_with(base);
    connected_on(&mut n, 0, nid(B), Lane::Health, 8, 7);
    let dead: Vec<Nid> = (0..MAX_UNREACHABLE as u32)
        .map(|i| Nid::mem(100 + i, 1))
        .collect();
    let says = RouterStatus {
        generation: 3,
        state: RouterState::Forwarding,
        nets: vec![],
        unreachable: dead.clone(),
        more_unreachable: false,
        vouched: vec![],
    };
    let push = frame_from_gateway(Lane::Health, Body::Status, 0, 3, says.encode());
    n.handle_lnd_event(t(0), NiId(0), push);
    let served = Nid::mem(200, 1);
    n.router_served(t(0), [nid(C), served]);
    n.handle_timeout(t(1));
    assert!(
        dead.iter().all(|p| n.router.absence.concerns(p)),
        "watched for B"
    );
    n.handle_timeout(t(1_000));
    let status = RouterStatus::decode(&n.router.encoded).unwrap();
    assert!(status.unreachable.len() == MAX_UNREACHABLE && status.more_unreachable);
    // C and `served`, the peers it serves, first.
    assert_eq!(
        status.unreachable[..2],
        [nid(C), served],
        "{:?}",
        status.unreachable
    );
}

/// Gateway B restarts. Its new life counts generations from the start again, so its first
/// statuses may carry a generation its old life used: they must be taken all the same
/// (here it says it is warming up, absent, with the generation 5 the old life had said
/// "forwarding" with), or the node would send through it for as long as it stays absent.
#[test]
fn a_restarted_gateways_status_is_taken_even_at_a_generation_its_old_life_used() {
    let mut n = node_behind_gateway(8);
    let reset = LndError::new(LndErrorKind::Reset, "gateway restarted");
    let gone = LndEvent::Disconnected {
        peer: nid(B),
        lane: Lane::Health,
        error: reset,
    };
    n.handle_lnd_event(t(1), NiId(0), gone);
    connected(&mut n, B, Lane::Health, 8, 8);
    drain(&mut n);
    // A frame of its new life (8) says its status is at generation 5: asked for at once,
    // though the old life said 5 too (that view is gone with it).
    let ping = frame_from_gateway(Lane::Health, Body::Ping { seq: 1 }, 0, 5, Bytes::new());
    n.handle_lnd_event(t(1), NiId(0), of_life(ping, 8));
    let asked = drain(&mut n).iter().any(|s| {
        s.header.dst == nid(B)
            && matches!(s.header.body, Body::Ping { .. })
            && s.header.msg_id & crate::node::health::HEALTH_PING_BIT != 0
    });
    assert!(asked, "its new status is asked for");
    let warming = crate::wire::RouterStatus {
        generation: 5,
        state: crate::wire::RouterState::Absent(crate::wire::AbsentReason::WarmingUp),
        nets: vec![],
        unreachable: vec![],
        more_unreachable: false,
        vouched: vec![],
    };
    let push = frame_from_gateway(Lane::Health, Body::Status, 0, 5, warming.encode());
    n.handle_lnd_event(t(2), NiId(0), of_life(push, 8));
    assert_eq!(
        n.gateway_status(nid(B)).map(|s| s.state),
        Some(crate::wire::RouterState::Absent(
            crate::wire::AbsentReason::WarmingUp
        ))
    );
}

/// `ev`, a frame, as its sender's life `incarnation` sends it.
fn of_life(ev: LndEvent, incarnation: u64) -> LndEvent {
    let LndEvent::Received {
        peer,
        lane,
        mut header,
        payload,
    } = ev
    else {
        unreachable!("a frame")
    };
    header.src_incarnation = incarnation;
    LndEvent::Received {
        peer,
        lane,
        header,
        payload,
    }
}

/// A router passes a request's attempt byte on unchanged, and its NACK echoes it: the
/// initiator tells by it which of its copies was refused.
#[test]
fn a_router_keeps_the_attempt_of_what_it_passes_on_and_echoes_it_when_refusing() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    connected_on(&mut n, 1, d(), Lane::Data, 8, 9);
    resent_put_from_b(&mut n, d(), 1, 8, 3);
    let out = drain(&mut n);
    assert_eq!((out.len(), out[0].header.attempt), (1, 3));
    resent_put_from_b(&mut n, Nid::mem(7, 5), 2, 8, 4);
    let nack: Vec<_> = drain(&mut n)
        .into_iter()
        .filter(|s| matches!(s.header.body, Body::Nack { .. }))
        .map(|s| s.header.attempt)
        .collect();
    assert_eq!(nack, vec![4]);
}

/// B uses this router, and returns none of its health credits, yet is heard (it keeps
/// pinging), so it stays up. The router's status changes ten times, an interval apart,
/// and is pushed to B each time: one push waits in B's queue (it carries the latest status
/// when it leaves), not nine.
#[test]
fn status_pushes_to_a_user_that_returns_no_credits_do_not_pile_up() {
    use crate::wire::{AbsentReason, RouterState};
    let mut base = cfg();
    base.health.interval = Duration::from_millis(100);
    let mut n = router_with(base);
    connected_on(&mut n, 0, nid(B), Lane::Health, 8, 9);
    spend_all_but(&mut n, nid(B), Lane::Health, 1);
    n.router_served(t(0), [nid(B), d()]);
    for i in 1..=10u64 {
        let now = t(i * 200);
        let state = match i % 2 {
            0 => RouterState::Forwarding,
            _ => RouterState::Absent(AbsentReason::Administrator),
        };
        let ping = frame_from_gateway(Lane::Health, Body::Ping { seq: i }, 0, 0, Bytes::new());
        n.handle_lnd_event(now, NiId(0), ping);
        assert!(n.set_router_state(now, state));
        n.handle_timeout(now);
    }
    assert!(!n.health.is_down(nid(B)), "B is up");
    assert_eq!(n.stats().protocol_errors, 0, "B kept within its window");
    let pushed = n.stats().lanes[Lane::Health].frames_sent;
    assert!(pushed >= 1, "the first push left");
    let waiting = n.hops[&nid(B)].lanes[Lane::Health]
        .queue
        .iter()
        .filter(|p| matches!(p, crate::node::peers::Pending::Status))
        .count();
    assert_eq!(waiting, 1);
}

/// Long after D's lane last had anything waiting, an answer of ours to D waits there for
/// a credit, and a frame passing through waits behind it: the lane began to wait then,
/// not when something last waited in it, so nothing is refused for a stall.
#[test]
fn a_lane_whose_wait_began_with_an_answer_is_not_taken_for_stopped() {
    let mut n = router_nobody_down();
    connected_on(&mut n, 1, d(), Lane::Data, 8, 9);
    spend_all_but(&mut n, d(), Lane::Data, 1);
    let later = t(60_000);
    let put = Body::Put {
        portal: 4,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    let put_from_d = |n: &mut Node, msg_id: u64| from_d(n, later, 0, msg_id, put);
    // Two PUTs from D that match nothing here: the first ACK takes D's one credit, the
    // second waits.
    put_from_d(&mut n, 1);
    put_from_d(&mut n, 2);
    assert_eq!(drain(&mut n).len(), 1);
    // B's frame for D waits behind it.
    let header = header(nid(B), d(), 3, Body::Ping { seq: 3 });
    arrives(
        &mut n,
        later,
        nid(B),
        header,
        RxPayload::Inline(Bytes::new()),
    );
    n.handle_timeout(later + MS);
    let refused = drain(&mut n)
        .iter()
        .filter(|s| matches!(s.header.body, Body::Nack { .. }))
        .count();
    assert_eq!(refused, 0);
    assert_eq!(n.stats().forwards_stalled, 0);
}

/// A frame for D waits while D's connection is set up, which takes twice the patience;
/// D comes up offering no credit (a window of 0, which no driver lets through, standing
/// for one whose credits are all spent). The frame waited for the connection, not for D: it
/// is judged from when D came up, and refused only a patience after that.
#[test]
fn frames_that_waited_for_a_connection_are_judged_from_when_it_came_up() {
    let mut n = router_nobody_down();
    let patience = n.cfg.forward_patience;
    put_from_b(&mut n, d(), 1, 8);
    let asked = requests(&mut n)
        .iter()
        .any(|r| matches!(r, LndRequest::Connect { peer, .. } if *peer == d()));
    assert!(asked, "D's connection is asked for");
    let up = t(0) + patience * 2;
    n.handle_timeout(up);
    let hello = PeerHello {
        nid: d(),
        incarnation: 9,
        lane: Lane::Data,
        credits: 0,
        max_payload: 1 << 20,
        header_check: crate::wire::HeaderCheck::Crc32,
    };
    let local_credits = n.config().lanes[Lane::Data].peer_credits;
    let connected = LndEvent::Connected {
        peer: d(),
        lane: Lane::Data,
        hello,
        local_credits,
    };
    n.handle_lnd_event(up, NiId(1), connected);
    let nacks = |n: &mut Node| {
        drain(n)
            .iter()
            .filter(|s| matches!(s.header.body, Body::Nack { .. }))
            .count()
    };
    n.handle_timeout(up + patience / 2);
    assert_eq!(nacks(&mut n), 0, "D has been up for half a patience");
    n.handle_timeout(up + patience * 9 / 8);
    assert_eq!(nacks(&mut n), 1, "nothing has left since D came up");
}

/// A sender naming made-up NIDs on the router's other net: each is forwarded to (and
/// fails there), but the router watches at most `max_served` peers for its judgment of
/// itself, so such a sender cannot grow its tables (served, monitored) without bound.
#[test]
fn a_router_watches_at_most_max_served_peers_however_many_nids_it_is_sent_to() {
    let mut base = cfg();
    base.router.max_served = 4;
    let mut n = router_with(base);
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    // Six, and two more frames below: the eight credits the router offered B.
    let made_up: Vec<Nid> = (0..6).map(|i| Nid::mem(100 + i, 1)).collect();
    for (m, &dst) in made_up.iter().enumerate() {
        put_from_b(&mut n, dst, m as u64 + 1, 8);
    }
    let connects = requests(&mut n)
        .iter()
        .filter(|r| matches!(r, LndRequest::Connect { peer, .. } if made_up.contains(peer)))
        .count();
    assert_eq!(connects, 6, "each is forwarded to all the same");
    // B, the sender, is one of the four.
    assert!(n.served_and_asked(nid(B)).0);
    let watched: Vec<Nid> = made_up
        .iter()
        .copied()
        .filter(|p| n.served_and_asked(*p).0)
        .collect();
    assert_eq!(watched, made_up[..3], "the first three, then no more");
    for p in &made_up[3..] {
        assert!(n.health.peer(*p).is_none(), "{p} is not monitored");
    }
    assert_eq!(n.router_condition().counters.unwatched_forwards, 3);
    // Served again, a watched peer stays watched (its time renewed), and nothing new is.
    put_from_b(&mut n, made_up[0], 7, 8);
    assert_eq!(n.router_condition().counters.unwatched_forwards, 3);
    assert!(n.served_and_asked(made_up[0]).0);
    // An unwatched one's second frame counts again: frames are counted, not peers.
    put_from_b(&mut n, made_up[5], 8, 8);
    assert_eq!(n.router_condition().counters.unwatched_forwards, 4);
}

/// A health-lane frame to pass on comes from a gateway of ours naming a router generation
/// we do not know: the PING that asks for its status leaves on the same lane at once,
/// carrying the credits owed. The credit of the frame being passed on is not among them:
/// it is held until that frame has left (it was, and `hold_last` found nothing to hold).
#[test]
fn a_status_query_to_the_hop_does_not_give_back_the_credit_of_the_frame_it_came_with() {
    let mut n = router();
    route_to_net_2_via_b(&mut n);
    connected_on(&mut n, 0, nid(B), Lane::Health, 8, 9);
    connected_on(&mut n, 1, d(), Lane::Health, 0, 9);
    drain(&mut n);
    let ping = Header {
        lane: Lane::Health,
        router_gen: 5,
        ..header(Nid::mem(9, 2), d(), 1, Body::Ping { seq: 1 })
    };
    arrives(&mut n, t(0), nid(B), ping, RxPayload::Inline(Bytes::new()));
    let out = drain(&mut n);
    let query = out
        .iter()
        .find(|s| s.header.dst == nid(B))
        .expect("a PING asking B for its status");
    assert_eq!(query.header.credits, 0, "nothing owed yet");
    let held = match &n.hops[&nid(B)].lanes[Lane::Health].conn {
        Conn::Up { credits, .. } => credits.held(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        held, 1,
        "the PING to D waits for a credit there, its credit held"
    );
}

/// A router that lost an NI and has nobody to cover for it stays, degraded, for as long
/// as the NI is gone. The peers it served meanwhile are forgotten once idle, as ever: it
/// used to stop its sweep while it knew of any black hole, and so watched (and pinged)
/// every peer it ever served, for ever.
#[test]
fn a_degraded_router_forgets_the_peers_it_no_longer_serves() {
    let mut n = router();
    n.handle_timeout(t(0));
    let lost = LndError::new(LndErrorKind::Closed, "device removed");
    n.ni_failed(t(0), NiId(1), lost);
    n.router_served(t(0), [nid(B), nid(C)]);
    for ms in (100..=5_000).step_by(100) {
        n.handle_timeout(t(ms));
    }
    let c = n.router_condition();
    assert!(c.degraded, "{c:?}");
    assert_eq!(c.black_hole, Some(BlackHole::NiDown(Nid::mem(A, 1).net())));
    assert_eq!(n.served_and_asked(nid(B)), (false, false));
    assert_eq!(n.served_and_asked(nid(C)), (false, false));
}

/// Our gateway B said it is absent, so we poll it (monitor it) until it says otherwise.
/// It restarts: what its old life said is moot, and so is the polling; its new life's
/// status decides again. (One that never gives any would be polled for ever.)
#[test]
fn a_gateway_polled_for_its_old_lifes_word_is_not_after_it_restarts() {
    let mut n = node_behind_gateway(8);
    let absent = crate::wire::RouterStatus {
        generation: 6,
        state: crate::wire::RouterState::Absent(crate::wire::AbsentReason::Administrator),
        nets: vec![],
        unreachable: vec![],
        more_unreachable: false,
        vouched: vec![],
    };
    let push = frame_from_gateway(Lane::Health, Body::Status, 0, 6, absent.encode());
    n.handle_lnd_event(t(1), NiId(0), push);
    assert!(n.health.wants(nid(B)), "polled while absent");
    connected(&mut n, B, Lane::Health, 8, 8);
    assert!(
        n.gateway_status(nid(B)).is_none(),
        "its old life's word is moot"
    );
    assert!(!n.health.wants(nid(B)), "and so is the polling");
}

/// A REPLY passing through, larger than its next hop takes (D's `max_payload` is 4 KiB):
/// passed on aborted, without its payload, so that its GET fails with a clear error. It
/// used to be dropped (answers are not refused), and the GET to wait out its deadline.
#[test]
fn a_reply_too_large_for_the_next_hop_is_passed_on_aborted() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    connected_taking(&mut n, 1, d(), 4096);
    drain(&mut n);
    let reply = Header {
        payload_len: 8192,
        ..header(nid(B), d(), 3, Body::Reply { status: Status::Ok })
    };
    let payload = RxPayload::Inline(Bytes::from(vec![5u8; 8192]));
    arrives(&mut n, t(1), nid(B), reply, payload);
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{}", out.len());
    assert_eq!(
        (
            out[0].header.body,
            out[0].header.payload_len,
            out[0].payload.len()
        ),
        (
            Body::Reply {
                status: Status::Aborted
            },
            0,
            0
        )
    );
    assert_eq!(out[0].header.dst, d());
    // Its credit towards B is held until it has left, then comes back.
    assert_eq!(b_credits(&n), (0, 1));
    sent_ok(&mut n, &out[0]);
    assert_eq!(b_credits(&n), (1, 0));
}

/// A request through the router that names the router itself as its initiator (forged,
/// or looped back) and cannot be passed on: nobody to refuse it to. No NACK is queued to
/// the router's own NID, which would have it dial itself; it is counted.
#[test]
fn a_refused_request_in_the_routers_own_name_is_dropped_not_refused_to_itself() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Data, 8, 9);
    let put = Body::Put {
        portal: 4,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    let nowhere = Nid::mem(5, 7);
    let header = Header {
        payload_len: 3,
        ..header(nid(A), nowhere, 1, put)
    };
    let errors = n.stats().protocol_errors;
    arrives(
        &mut n,
        t(0),
        nid(B),
        header,
        RxPayload::Inline(Bytes::from_static(b"abc")),
    );
    assert!(
        !requests(&mut n)
            .iter()
            .any(|r| matches!(r, LndRequest::Connect { peer, .. } if *peer == nid(A))),
        "no dial of itself"
    );
    assert!(!n.hops.contains_key(&nid(A)), "no hop of its own NID");
    assert!(drain(&mut n).iter().all(|s| s.header.dst != nid(A)));
    assert_eq!(n.stats().protocol_errors, errors + 1);
}

/// A PONG carrying a router's status (a health-lane payload, up to the wire's 1,024 bytes
/// on that lane whatever a node's data-lane limit) passes through to a hop whose data-lane
/// limit is smaller: it goes on, rather than be refused as too large for the hop (its
/// PING's sender would go without an answer, and could find the far end silent).
#[test]
fn a_health_frame_passing_through_is_not_held_to_the_next_hops_data_limit() {
    let mut n = router();
    connected_on(&mut n, 0, nid(B), Lane::Health, 8, 9);
    let hello = PeerHello {
        nid: d(),
        incarnation: 9,
        lane: Lane::Health,
        credits: 8,
        max_payload: 256,
        header_check: crate::wire::HeaderCheck::Crc32,
    };
    up_with(&mut n, 1, hello);
    let header = Header {
        lane: Lane::Health,
        payload_len: 600,
        ..header(nid(B), d(), 7, Body::Pong { seq: 7 })
    };
    let status = RxPayload::Inline(Bytes::from(vec![1u8; 600]));
    arrives(&mut n, t(0), nid(B), header, status);
    let out = drain(&mut n);
    assert!(
        out.iter()
            .any(|s| s.header.dst == d() && matches!(s.header.body, Body::Pong { seq: 7 })),
        "passed on: {:?}",
        out.iter().map(|s| s.header).collect::<Vec<_>>()
    );
    assert_eq!(n.stats().unroutable_answers, 0);
}
