//! The connection table on its own: requests and their answers, races from both arrival
//! orders, replacement, failures and deadlines.

use super::*;

const T: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

fn table(n: u32) -> ConnTable<u32, &'static str> {
    ConnTable::new(nid(n), PerLane::new(4, 8), T)
}

fn hello(from: u32, incarnation: u64, lane: Lane) -> PeerHello {
    PeerHello {
        nid: nid(from),
        incarnation,
        lane,
        credits: 8,
        max_payload: 1 << 20,
        header_check: crate::wire::HeaderCheck::Crc32,
    }
}

fn at(ms: u64) -> Time {
    Time::ZERO + MS * ms as u32
}

/// The events, shortened: ("connected" | "failed" | "down", peer, lane).
fn said(events: &mut Vec<LndEvent>) -> Vec<(&'static str, u32, Lane)> {
    let num = |n: Nid| match n.addr() {
        crate::nid::NidAddr::Num(n) => n,
        _ => unreachable!(),
    };
    events
        .drain(..)
        .map(|e| match e {
            LndEvent::Connected { peer, lane, .. } => ("connected", num(peer), lane),
            LndEvent::ConnectFailed { peer, lane, .. } => ("failed", num(peer), lane),
            LndEvent::Disconnected { peer, lane, .. } => ("down", num(peer), lane),
            other => panic!("the table only speaks of connections: {other:?}"),
        })
        .collect()
}

const D: Lane = Lane::Data;

#[test]
fn a_dial_comes_up_is_answered_again_and_closes() {
    let mut a = table(1);
    let mut ev = Vec::new();
    assert_eq!(a.connect(nid(2), D, at(0), &mut ev), Connect::Dial);
    a.dialled(10, nid(2), D, "dial", at(0));
    assert_eq!(a.connect(nid(2), D, at(1), &mut ev), Connect::Answered);
    assert!(ev.is_empty(), "the answer comes when the dial ends");
    assert!(a.answered(10, hello(2, 7, D), at(2), &mut ev).is_none());
    assert_eq!(said(&mut ev), vec![("connected", 2, D)]);
    assert_eq!((a.up(nid(2), D), a.stage(10)), (Some(10), Some(Stage::Up)));
    // Asked again while up: said again, same connection.
    assert_eq!(a.connect(nid(2), D, at(3), &mut ev), Connect::Answered);
    assert!(matches!(
        &ev[..],
        [LndEvent::Connected {
            local_credits: 8,
            ..
        }]
    ));
    ev.clear();
    assert_eq!(a.next_deadline(), None, "nothing left to time out");
    let closed = a.close(nid(2), D, error(LndErrorKind::Closed, "bye"), &mut ev);
    let closed = closed.expect("the up connection comes back to be torn down");
    assert_eq!((closed.id, closed.data), (10, "dial"));
    assert_eq!(said(&mut ev), vec![("down", 2, D)]);
    assert!(a.is_empty());
}

/// Both sides dial at once; every order in which the two HELLOs can arrive leaves one
/// connection up on each side, the same one, and no failure.
#[test]
fn simultaneous_dials_leave_the_lower_nids_connection_on_both_sides() {
    for loser_hello_first in [true, false] {
        let (mut lo, mut hi) = (table(1), table(2));
        let (mut el, mut eh) = (Vec::new(), Vec::new());
        assert_eq!(lo.connect(nid(2), D, at(0), &mut el), Connect::Dial);
        assert_eq!(hi.connect(nid(1), D, at(0), &mut eh), Connect::Dial);
        lo.dialled(1, nid(2), D, "lo's dial", at(0)); // = hi's 101
        hi.dialled(2, nid(1), D, "hi's dial", at(0)); // = lo's 102
        lo.accepted(102, "hi's dial, accepted", at(0));
        hi.accepted(101, "lo's dial, accepted", at(0));
        if loser_hello_first {
            // hi's HELLO reaches lo, which is dialling and lower: refused.
            assert!(matches!(
                lo.incoming(102, hello(2, 20, D), at(1)),
                Incoming::Refuse
            ));
            assert_eq!(lo.remove(102), Some("hi's dial, accepted"));
            // hi learns its dial lost, and waits for lo's.
            assert!(hi.lost_race(2, at(2)).is_some());
            assert_eq!(hi.connect(nid(1), D, at(2), &mut eh), Connect::Answered);
            // lo's HELLO reaches hi: accepted and up; hi's reply brings lo's dial up.
            match hi.incoming(101, hello(1, 10, D), at(3)) {
                Incoming::Accept { lost_dial: None } => {}
                other => panic!("{other:?}"),
            }
        } else {
            // lo's HELLO reaches hi while hi dials: lo's wins, hi's dial goes quietly.
            match hi.incoming(101, hello(1, 10, D), at(1)) {
                Incoming::Accept {
                    lost_dial: Some(closed),
                } => assert_eq!((closed.id, closed.data), (2, "hi's dial")),
                other => panic!("{other:?}"),
            }
            // hi's HELLO, sent before, reaches lo (still dialling): refused.
            assert!(matches!(
                lo.incoming(102, hello(2, 20, D), at(2)),
                Incoming::Refuse
            ));
            assert_eq!(lo.remove(102), Some("hi's dial, accepted"));
            // The refusal finds hi's dial gone already.
            assert!(hi.lost_race(2, at(3)).is_none());
        }
        assert!(hi.mark_up(101, at(4), &mut eh).is_none());
        assert!(lo.answered(1, hello(2, 20, D), at(5), &mut el).is_none());
        assert_eq!(said(&mut el), vec![("connected", 2, D)]);
        assert_eq!(said(&mut eh), vec![("connected", 1, D)]);
        assert_eq!((lo.up(nid(2), D), hi.up(nid(1), D)), (Some(1), Some(101)));
        // Nothing is left to fail later.
        assert!(lo.expire(at(0) + 3 * T, &mut el).is_empty());
        assert!(hi.expire(at(0) + 3 * T, &mut eh).is_empty());
        assert!(el.is_empty() && eh.is_empty(), "{el:?} {eh:?}");
        assert_eq!((lo.len(), hi.len()), (1, 1));
    }
}

#[test]
fn a_same_life_dial_soon_after_ours_came_up_is_refused_later_it_replaces_ours() {
    let mut lo = table(1);
    let mut ev = Vec::new();
    lo.dialled(1, nid(2), D, "ours", at(0));
    let _ = lo.answered(1, hello(2, 20, D), at(1), &mut ev);
    said(&mut ev);
    // The peer's own dial of that race, its HELLO late: refused, ours stays.
    lo.accepted(2, "theirs, late", at(2));
    assert!(matches!(
        lo.incoming(2, hello(2, 20, D), at(2)),
        Incoming::Refuse
    ));
    assert_eq!(lo.stage(2), Some(Stage::Refused));
    assert_eq!(lo.remove(2), Some("theirs, late"));
    assert_eq!(lo.up(nid(2), D), Some(1));
    // Long after: the peer must have lost our connection; its new one replaces it.
    let later = at(1) + T + MS;
    lo.accepted(3, "theirs, new", later);
    assert!(matches!(
        lo.incoming(3, hello(2, 20, D), later),
        Incoming::Accept { lost_dial: None }
    ));
    let old = lo
        .mark_up(3, later, &mut ev)
        .expect("the old one comes back");
    assert_eq!((old.id, old.data), (1, "ours"));
    assert_eq!(said(&mut ev), vec![("down", 2, D), ("connected", 2, D)]);
    assert_eq!(lo.up(nid(2), D), Some(3));
}

#[test]
fn a_restarted_peer_replaces_the_connection_at_once() {
    let mut lo = table(1);
    let mut ev = Vec::new();
    lo.dialled(1, nid(2), D, "ours", at(0));
    let _ = lo.answered(1, hello(2, 20, D), at(1), &mut ev);
    lo.accepted(2, "reborn", at(2));
    assert!(matches!(
        lo.incoming(2, hello(2, 21, D), at(2)),
        Incoming::Accept { .. }
    ));
    let old = lo.mark_up(2, at(3), &mut ev).expect("replaced");
    assert_eq!(old.id, 1);
    assert!(matches!(
        &ev[..],
        [LndEvent::Connected { .. }, LndEvent::Disconnected { .. }, LndEvent::Connected { hello, .. }]
            if hello.incarnation == 21
    ));
}

#[test]
fn without_races_a_dial_while_up_always_replaces() {
    let mut a = table(1).without_races();
    let mut ev = Vec::new();
    a.dialled(1, nid(2), D, "ours", at(0));
    let _ = a.answered(1, hello(2, 20, D), at(1), &mut ev);
    a.accepted(2, "theirs", at(1));
    assert!(matches!(
        a.incoming(2, hello(2, 20, D), at(1)),
        Incoming::Accept { .. }
    ));
    assert!(a.mark_up(2, at(1), &mut ev).is_some());
    assert_eq!(a.up(nid(2), D), Some(2));
}

#[test]
fn handshakes_and_waits_time_out_and_say_so_once() {
    let mut a = table(1);
    let mut ev = Vec::new();
    a.dialled(1, nid(2), D, "dial", at(0));
    a.accepted(2, "silent accept", at(1));
    assert_eq!(a.next_deadline(), Some(at(0) + T));
    assert!(a.expire(at(0) + (T - MS), &mut ev).is_empty());
    let closed = a.expire(at(0) + T, &mut ev);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].error.kind, LndErrorKind::TimedOut);
    assert_eq!(said(&mut ev), vec![("failed", 2, D)]);
    // An accepted connection that never said HELLO goes without a word.
    let closed = a.expire(at(1) + T, &mut ev);
    assert_eq!(
        closed.iter().map(|c| c.data).collect::<Vec<_>>(),
        ["silent accept"]
    );
    assert!(ev.is_empty());
    // A lost race whose winner never comes.
    a.dialled(3, nid(2), D, "loser", at(100));
    let _ = a.lost_race(3, at(101));
    assert_eq!(a.connect(nid(2), D, at(102), &mut ev), Connect::Answered);
    assert!(a.expire(at(101) + T, &mut ev).is_empty());
    assert_eq!(said(&mut ev), vec![("failed", 2, D)]);
    assert_eq!(a.next_deadline(), None);
    assert!(a.is_empty());
}

#[test]
fn a_request_waiting_for_an_accepted_connection_fails_with_it_at_once() {
    let mut a = table(1);
    let mut ev = Vec::new();
    a.accepted(5, "theirs", at(0));
    assert!(matches!(
        a.incoming(5, hello(2, 20, D), at(0)),
        Incoming::Accept { lost_dial: None }
    ));
    // Established comes later (RDMA): a request meanwhile waits for it.
    assert_eq!(a.connect(nid(2), D, at(1), &mut ev), Connect::Answered);
    let closed = a.fail(5, error(LndErrorKind::Reset, "gone"), &mut ev);
    assert!(closed.is_some());
    assert_eq!(said(&mut ev), vec![("failed", 2, D)]);
    assert_eq!(a.next_deadline(), None, "the wait's timer went with it");
    // And one that comes up answers the wait.
    a.accepted(6, "theirs again", at(2));
    let _ = a.incoming(6, hello(2, 20, D), at(2));
    assert_eq!(a.connect(nid(2), D, at(2), &mut ev), Connect::Answered);
    assert!(a.mark_up(6, at(3), &mut ev).is_none());
    assert_eq!(said(&mut ev), vec![("connected", 2, D)]);
}

#[test]
fn failing_says_what_the_connection_meant_to_the_core() {
    let mut a = table(1);
    let mut ev = Vec::new();
    let reset = || error(LndErrorKind::Reset, "reset");
    a.dialled(1, nid(2), D, "dialling", at(0));
    a.dialled(2, nid(3), D, "up", at(0));
    let _ = a.answered(2, hello(3, 30, D), at(0), &mut ev);
    ev.clear();
    a.accepted(3, "no HELLO yet", at(0));
    for id in [1, 2, 3] {
        assert!(a.fail(id, reset(), &mut ev).is_some());
    }
    assert!(a.fail(1, reset(), &mut ev).is_none(), "once only");
    assert_eq!(said(&mut ev), vec![("failed", 2, D), ("down", 3, D)]);
    assert!(a.is_empty());
    assert_eq!(a.next_deadline(), None);
}

/// Thousands of peers: what is done with stays out of the timers, so the next deadline
/// and expiry cost O(log n), and the lane records go with their connections.
#[test]
fn thousands_of_connections_leave_nothing_behind() {
    let mut a = table(1);
    let mut ev = Vec::new();
    for p in 2..5002u32 {
        a.dialled(p, nid(p), D, "dial", at(0));
    }
    assert_eq!(a.timers.len(), 5000);
    for p in 2..5002u32 {
        let _ = a.answered(p, hello(p, 1, D), at(1), &mut ev);
    }
    assert_eq!((a.timers.len(), a.next_deadline()), (0, None));
    for p in 2..5002u32 {
        let _ = a.close(nid(p), D, error(LndErrorKind::Closed, "x"), &mut ev);
    }
    assert_eq!((a.len(), a.lanes.len(), a.timers.len()), (0, 0, 0));
}

/// With keys, the acceptor answers a HELLO with an Ok and a challenge, and hears of the
/// peer only once its proof comes; the dialler takes the connection for up at the Ok. A
/// dial of ours started meanwhile loses to the proved connection, though our NID is the
/// lower: refused instead, the connection its peer already sends on would go down (a
/// flap). Our dial goes quietly, and the request it was for is answered by theirs.
#[test]
fn a_proved_connection_wins_over_our_dial_started_after_it_was_answered() {
    let mut lo = table(1);
    let mut ev = Vec::new();
    lo.accepted(7, "theirs, challenged", at(0));
    assert!(!lo.loses_race(&hello(2, 20, D), at(0)), "answered Ok");
    assert_eq!(lo.connect(nid(2), D, at(1), &mut ev), Connect::Dial);
    lo.dialled(8, nid(2), D, "ours", at(1));
    match lo.incoming_proved(7, hello(2, 20, D), at(2)) {
        Incoming::Accept {
            lost_dial: Some(closed),
        } => assert_eq!((closed.id, closed.data), (8, "ours")),
        other => panic!("{other:?}"),
    }
    assert!(lo.mark_up(7, at(2), &mut ev).is_none());
    assert_eq!(said(&mut ev), vec![("connected", 2, D)]);
    assert_eq!(lo.up(nid(2), D), Some(7));
    assert!(lo.expire(at(0) + 3 * T, &mut ev).is_empty());
    assert!(ev.is_empty(), "{ev:?}");
    // Without keys (answered only once taken) the lower NID's dial still wins.
    let mut lo = table(1);
    lo.dialled(8, nid(2), D, "ours", at(1));
    lo.accepted(7, "theirs", at(1));
    assert!(matches!(
        lo.incoming(7, hello(2, 20, D), at(2)),
        Incoming::Refuse
    ));
}
