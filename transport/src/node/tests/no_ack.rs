//! PUTs without ACK (LNet's `LNET_NOACK_REQ`): done once sent, never answered.

use super::target::{fetched, receive_deferred};
use super::*;

fn put_no_ack(dst: u32, bytes: &'static [u8]) -> PutRequest {
    PutRequest {
        ack: false,
        ..put(dst, bytes)
    }
}

fn put_body(portal: u32, ack: bool) -> Body {
    Body::Put {
        portal,
        match_bits: 0x10,
        settled_below: 0,
        ack,
    }
}

fn no_ack_body(portal: u32) -> Body {
    put_body(portal, false)
}

#[test]
fn a_put_without_ack_completes_once_sent_and_an_ack_changes_nothing() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put_no_ack(B, b"abc")).unwrap();
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert!(matches!(sent[0].header.body, Body::Put { ack: false, .. }));
    // Marked for the driver: its send completion is its end, not to be held back.
    assert!(sent[0].report_at_once);
    // A peer that ACKs anyway (none of ours does), before and after the send completed:
    // not an outcome, and never a second completion.
    let ack = Body::Ack {
        status: Status::Ok,
        mlen: 3,
    };
    let msg_id = sent[0].header.msg_id;
    // Even one for more bytes than were sent (which would break a PUT with ACK).
    let too_much = Body::Ack {
        status: Status::Ok,
        mlen: 99,
    };
    receive(&mut n, t(1), B, Lane::Data, too_much, msg_id, 1, b"");
    assert!(completions(&mut n).is_empty(), "not before it has left");
    assert_eq!(n.stats().protocol_errors, 0);
    sent_ok(&mut n, &sent[0]);
    assert_eq!(
        completions(&mut n),
        vec![(OpId(1), Ok(OpOutcome::Sent { len: 3 }))]
    );
    assert_eq!(n.ops.len(), 0, "nothing kept for an answer");
    receive(&mut n, t(1), B, Lane::Data, ack, msg_id, 0, b"");
    assert!(completions(&mut n).is_empty());
    assert_eq!(n.stats().late_responses, 2);
}

#[test]
fn a_put_without_ack_that_fails_to_leave_completes_with_the_error() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.put(t(0), OpId(1), put_no_ack(B, b"abc")).unwrap();
    let sent = drain(&mut n);
    let error = LndError::new(LndErrorKind::Reset, "connection reset");
    n.handle_lnd_event(
        t(1),
        NiId(0),
        LndEvent::SendComplete {
            token: sent[0].token,
            result: Err(error),
        },
    );
    let c = completions(&mut n);
    assert!(matches!(&c[..], [(OpId(1), Err(_))]), "{c:?}");
    assert_eq!(n.ops.len(), 0);
}

#[test]
fn a_target_answers_no_put_that_wants_no_ack_delivered_or_refused() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    receive(&mut n, t(0), B, Lane::Data, no_ack_body(4), 9, 0, b"four");
    receive(&mut n, t(0), B, Lane::Data, no_ack_body(5), 10, 0, b"none");
    let ev = events(&mut n);
    assert!(matches!(&ev[0], Event::Delivered(d) if d.entry == OpId(1) && d.payload == "four"));
    assert!(matches!(&ev[1], Event::Refused(r) if r.portal == 5));
    assert!(drain(&mut n).is_empty(), "no ACK, not even for the refusal");
    // The same PUTs wanting an ACK get theirs.
    for (portal, msg_id) in [(4, 11), (5, 12)] {
        let body = put_body(portal, true);
        receive(&mut n, t(0), B, Lane::Data, body, msg_id, 0, b"four");
    }
    let answers: Vec<_> = drain(&mut n).iter().map(|s| s.header.body).collect();
    assert_eq!(
        answers,
        vec![
            Body::Ack {
                status: Status::Ok,
                mlen: 4
            },
            Body::Ack {
                status: Status::NoMatch,
                mlen: 0
            }
        ]
    );
}

#[test]
fn a_deferred_payload_without_ack_is_fetched_and_delivered_unanswered() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    receive_deferred(&mut n, no_ack_body(4), 1, 11, 50);
    assert!(matches!(
        &requests(&mut n)[..],
        [LndRequest::Fetch {
            handle: RxHandle(11),
            ..
        }]
    ));
    fetched(&mut n, 11, Ok(Bytes::from(vec![5; 50])));
    assert!(matches!(&events(&mut n)[0], Event::Delivered(d) if d.payload.len() == 50));
    // Lost in transit: nobody to tell, and the entry takes the next one.
    receive_deferred(&mut n, no_ack_body(4), 2, 12, 60);
    requests(&mut n);
    let lost = LndError::new(LndErrorKind::Reset, "connection reset");
    fetched(&mut n, 12, Err(lost));
    assert!(drain(&mut n).is_empty(), "no ACK, Ok or Aborted");
    assert_eq!(n.stats().fetch_failures, 1);
}

#[test]
fn credits_for_puts_without_ack_come_back_in_credit_frames() {
    let mut c = cfg();
    c.lanes[Lane::Data].credits_hiw = 3;
    let mut n = node_with(c);
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    // No answer carries what we owe the sender: at the high-water mark a CREDIT does.
    for msg_id in 1..=3 {
        receive(&mut n, t(0), B, Lane::Data, no_ack_body(4), msg_id, 0, b"x");
    }
    let sent = drain(&mut n);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header.body, Body::Credit);
    assert_eq!(sent[0].header.credits, 3);
}

/// Through two routers a PUT without ACK may be overtaken by a later one, whose
/// `settled_below` (its sender is done with the first) raises the floor of the target's
/// resend window past it. It must still be delivered: it is never resent, so it is no copy.
#[test]
fn an_overtaken_routed_put_without_ack_is_delivered_below_the_resend_floor() {
    let mut n = node();
    connected(&mut n, B, Lane::Data, 8, 7);
    n.attach(OpId(1), MatchEntry::sink(4, 0x10, 100)).unwrap();
    let far = Nid::mem(9, 2);
    routed_put(&mut n, nid(B), far, nid(A), 20, 20, true);
    routed_put(&mut n, nid(B), far, nid(A), 10, 10, false);
    // A PUT with ACK as far below is dropped as a possible copy: the floor is in force.
    routed_put(&mut n, nid(B), far, nid(A), 5, 5, true);
    assert_eq!(
        deliveries(&mut n),
        2,
        "message 20 and the overtaken 10; not 5"
    );
    assert_eq!(n.stats().duplicates_dropped, 1);
}
