//! Unit tests of the node alone: driver events are fed by hand, outputs inspected.
//! Helpers here; the tests by theme in the submodules.

mod flow;
mod forward;
mod health;
mod hostile;
mod lifecycle;
mod no_ack;
mod resend;
mod target;

pub(super) use std::time::Duration;

pub(super) use bytes::Bytes;

pub(super) use super::ops::DEADLINE_SLACK;
pub(super) use super::peers::Conn;
pub(super) use super::*;
pub(super) use crate::handshake::PeerHello;
pub(super) use crate::lnd::{LndErrorKind, LndEvent, RxHandle, RxPayload, TxToken};
pub(super) use crate::op::{EntryKind, Refused, RejectReason};
pub(super) use crate::wire::{
    decode_header, Body, Header, HeaderCheck, Limits, NackReason, Status,
};

pub(super) const A: u32 = 1;
pub(super) const B: u32 = 2;
pub(super) const C: u32 = 3;
pub(super) const MS: Duration = Duration::from_millis(1);

pub(super) fn nid(n: u32) -> Nid {
    Nid::mem(n, 0)
}

pub(super) fn t(ms: u64) -> Time {
    Time(ms * 1_000_000)
}

pub(super) fn cfg() -> NodeConfig {
    NodeConfig::new(100)
}

pub(super) fn node_with(cfg: NodeConfig) -> Node {
    let mut n = Node::new(cfg);
    n.add_ni(nid(A)).unwrap();
    n
}

pub(super) fn node() -> Node {
    node_with(cfg())
}

pub(super) struct Sent {
    pub(super) header: Header,
    pub(super) payload: Bytes,
    pub(super) token: TxToken,
    pub(super) report_at_once: bool,
}

pub(super) fn drain(n: &mut Node) -> Vec<Sent> {
    std::iter::from_fn(|| n.poll_transmit())
        .map(|(_, tx)| Sent {
            header: decode_header(&tx.header, &Limits::default()).unwrap(),
            payload: tx.payload,
            token: tx.token,
            report_at_once: tx.report_at_once,
        })
        .collect()
}

pub(super) fn events(n: &mut Node) -> Vec<Event> {
    std::iter::from_fn(|| n.poll_event()).collect()
}

pub(super) fn completions(n: &mut Node) -> Vec<(OpId, Result<OpOutcome, OpError>)> {
    events(n)
        .into_iter()
        .filter_map(|e| match e {
            Event::Completed(c) => Some((c.op, c.result)),
            _ => None,
        })
        .collect()
}

pub(super) fn requests(n: &mut Node) -> Vec<LndRequest> {
    std::iter::from_fn(|| n.poll_request())
        .map(|(_, r)| r)
        .collect()
}

pub(super) fn connected(n: &mut Node, peer: u32, lane: Lane, credits: u16, incarnation: u64) {
    connected_on(n, 0, nid(peer), lane, credits, incarnation);
}

/// `peer`'s connection on `lane` is up with a full window (both ends offering our
/// `peer_credits`), all but `left` of our credits spent on frames taken to be in flight
/// already: we may send `left` more, and the peer still a whole window of its own.
pub(super) fn connected_with_credits_left(n: &mut Node, peer: u32, lane: Lane, left: u16) {
    connected(n, peer, lane, n.config().lanes[lane].peer_credits, 7);
    spend_all_but(n, nid(peer), lane, left);
}

/// Spends all but `left` of our credits on `peer`'s `lane`, which is up, as if frames
/// had gone out that it has not returned credits for yet.
pub(super) fn spend_all_but(n: &mut Node, peer: Nid, lane: Lane, left: u16) {
    let Some(Conn::Up { credits, .. }) = n.hops.get_mut(&peer).map(|h| &mut h.lanes[lane].conn)
    else {
        panic!("{peer}'s {lane} lane is up");
    };
    let window = credits.window();
    assert!(left <= window, "{left} left of a window of {window}");
    for _ in left..window {
        assert!(credits.try_spend(), "{left} left of a window of {window}");
    }
}

/// `peer`'s connection on `lane` is up at NI `ni`, offering us `credits`.
pub(super) fn connected_on(
    n: &mut Node,
    ni: usize,
    peer: Nid,
    lane: Lane,
    credits: u16,
    incarnation: u64,
) {
    let hello = PeerHello {
        nid: peer,
        incarnation,
        lane,
        credits,
        max_payload: 1 << 20,
        header_check: crate::wire::HeaderCheck::Crc32,
    };
    up_with(n, ni, hello);
}

/// `peer`'s data connection is up at NI `ni`, taking payloads of up to `max_payload`
/// bytes (8 credits, incarnation 9).
pub(super) fn connected_taking(n: &mut Node, ni: usize, peer: Nid, max_payload: u32) {
    let hello = PeerHello {
        nid: peer,
        incarnation: 9,
        lane: Lane::Data,
        credits: 8,
        max_payload,
        header_check: crate::wire::HeaderCheck::Crc32,
    };
    up_with(n, ni, hello);
}

/// The connection `hello` describes is up at NI `ni`.
pub(super) fn up_with(n: &mut Node, ni: usize, hello: PeerHello) {
    let (peer, lane) = (hello.nid, hello.lane);
    let local_credits = n.config().lanes[lane].peer_credits;
    n.handle_lnd_event(
        Time::ZERO,
        NiId(ni),
        LndEvent::Connected {
            peer,
            lane,
            hello,
            local_credits,
        },
    );
}

// A frame is its fields; bundling them into a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(super) fn receive(
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
        payload_len: payload.len() as u32,
        ..header(nid(peer), nid(A), msg_id, body)
    };
    let payload = RxPayload::Inline(Bytes::copy_from_slice(payload));
    arrives(n, now, nid(peer), header, payload);
}

/// The header of a data-lane frame from `src` to `dst` with no payload, as the tests
/// build them (hop limit 8, incarnation 7, no credits returned, first attempt): a test
/// sets what it needs on top (`Header { credits: 3, ..header(..) }`).
pub(super) fn header(src: Nid, dst: Nid, msg_id: u64, body: Body) -> Header {
    Header {
        lane: Lane::Data,
        hop_limit: 8,
        credits: 0,
        src,
        dst,
        src_incarnation: 7,
        msg_id,
        payload_len: 0,
        body,
        router_gen: 0,
        attempt: 0,
    }
}

/// `header` and `payload` arrive at NI 0 from the neighbour `hop`, on the header's lane.
pub(super) fn arrives(n: &mut Node, now: Time, hop: Nid, header: Header, payload: RxPayload) {
    let ev = LndEvent::Received {
        peer: hop,
        lane: header.lane,
        header,
        payload,
    };
    n.handle_lnd_event(now, NiId(0), ev);
}

/// `peer`'s connection on `lane` is lost (reset) at NI 0, at `now`.
pub(super) fn disconnected(n: &mut Node, now: Time, peer: u32, lane: Lane) {
    let error = LndError::new(LndErrorKind::Reset, "connection reset by peer");
    let ev = LndEvent::Disconnected {
        peer: nid(peer),
        lane,
        error,
    };
    n.handle_lnd_event(now, NiId(0), ev);
}

/// A route to mem net 2 through the neighbour B.
pub(super) fn route_to_net_2_via_b(n: &mut Node) {
    let route = Route {
        net: Nid::mem(0, 2).net(),
        gateway: nid(B),
        hops: 1,
        priority: 0,
    };
    n.add_route(route).unwrap();
}

/// A PUT from `from` to our `to`, as the initiator's incarnation 5, that the neighbour
/// `hop` hands us, wanting an ACK or not.
pub(super) fn routed_put(
    n: &mut Node,
    hop: Nid,
    from: Nid,
    to: Nid,
    msg_id: u64,
    settled_below: u64,
    ack: bool,
) {
    let body = Body::Put {
        portal: 4,
        match_bits: 0x10,
        settled_below,
        ack,
    };
    let header = Header {
        hop_limit: 7,
        src_incarnation: 5,
        payload_len: 1,
        ..header(from, to, msg_id, body)
    };
    let payload = RxPayload::Inline(Bytes::from_static(b"x"));
    arrives(n, t(0), hop, header, payload);
}

/// How many deliveries the node reported (taking its events).
pub(super) fn deliveries(n: &mut Node) -> usize {
    events(n)
        .iter()
        .filter(|e| matches!(e, Event::Delivered(_)))
        .count()
}

/// How many ACKs of message `msg_id` the node sent (taking its frames).
pub(super) fn acks_sent(n: &mut Node, msg_id: u64) -> usize {
    drain(n)
        .iter()
        .filter(|s| s.header.msg_id == msg_id && matches!(s.header.body, Body::Ack { .. }))
        .count()
}

pub(super) fn sent_ok(n: &mut Node, s: &Sent) {
    n.handle_lnd_event(
        Time::ZERO,
        NiId(0),
        LndEvent::SendComplete {
            token: s.token,
            result: Ok(()),
        },
    );
}

pub(super) fn put(dst: u32, bytes: &'static [u8]) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: nid(dst),
        portal: 4,
        match_bits: 0x10,
        payload: Bytes::from_static(bytes),
        timeout: None,
        on_peer_down: Default::default(),
        ack: true,
    }
}

pub(super) fn ping(dst: u32) -> PingRequest {
    PingRequest {
        dst: nid(dst),
        lane: Lane::Health,
        timeout: None,
        on_peer_down: Default::default(),
    }
}
