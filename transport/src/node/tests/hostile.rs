//! A peer that means harm, driven by hand: what it sends must not grow the node's tables
//! past what its configuration bounds.

use super::*;
use crate::lane::PerLane;

/// Node A, with a route to mem net 2 through B.
fn end_behind_gateway_b() -> Node {
    let mut n = node();
    route_to_net_2_via_b(&mut n);
    connected(&mut n, B, Lane::Health, 8, 7);
    connected(&mut n, B, Lane::Data, 8, 7);
    n
}

/// B passes on a frame from `src` (anywhere behind it), returning the credits of what A
/// sent it on that lane since (`owed`), as a well-behaved hop does.
fn from_behind_b(
    n: &mut Node,
    owed: &mut PerLane<u16>,
    src: Nid,
    lane: Lane,
    body: Body,
    msg_id: u64,
) {
    let header = Header {
        lane,
        hop_limit: 7,
        credits: std::mem::take(&mut owed[lane]),
        src,
        dst: nid(A),
        src_incarnation: msg_id,
        msg_id,
        payload_len: 0,
        body,
        router_gen: 0,
        attempt: 0,
    };
    let ev = LndEvent::Received {
        peer: nid(B),
        lane,
        header,
        payload: RxPayload::Inline(Bytes::new()),
    };
    n.handle_lnd_event(t(0), NiId(0), ev);
    for s in drain(n) {
        owed[s.header.lane] += 1;
        sent_ok(n, &s);
    }
}

#[test]
fn forged_sources_behind_a_gateway_do_not_grow_the_tables_without_bound() {
    let mut n = end_behind_gateway_b();
    let before = n.footprint();
    let mut owed = PerLane::new(0, 0);
    // 20,000 sources that never were, each pinging once and asking for data once.
    for i in 0..20_000u32 {
        let src = Nid::mem(1_000 + i, 2);
        from_behind_b(
            &mut n,
            &mut owed,
            src,
            Lane::Health,
            Body::Ping { seq: 1 },
            1,
        );
        let get = Body::Get {
            portal: 9,
            match_bits: 0,
            want_len: 8,
            settled_below: 0,
        };
        from_behind_b(&mut n, &mut owed, src, Lane::Data, get, 2);
    }
    assert_eq!(
        n.stats().protocol_errors,
        0,
        "all well-formed, from a real gateway"
    );
    let after = n.footprint();
    let cfg = n.config();
    assert!(after.hops <= before.hops, "{after:?}");
    assert!(after.ends <= before.ends + MAX_IDLE_PEERS, "{after:?}");
    assert!(after.dedup_initiators <= cfg.dedup_initiators, "{after:?}");
    assert!(after.health_peers <= before.health_peers, "{after:?}");
    assert!(after.gateways <= before.gateways + 1, "{after:?}");
}

#[test]
fn peers_that_connect_once_and_go_do_not_grow_the_tables_without_bound() {
    // A router: every client of a cluster may come by.
    let mut n = node_with(NodeConfig {
        forwarding: true,
        ..cfg()
    });
    n.add_ni(Nid::mem(A, 1)).unwrap();
    for i in 0..20_000u32 {
        let peer = Nid::mem(100 + i, u16::from(i % 2 == 0));
        let ni = usize::from(i % 2 == 0);
        for lane in Lane::ALL {
            connected_on(&mut n, ni, peer, lane, 8, u64::from(i));
        }
        for lane in Lane::ALL {
            let error = LndError::new(LndErrorKind::Reset, "gone");
            let ev = LndEvent::Disconnected { peer, lane, error };
            n.handle_lnd_event(t(0), NiId(ni), ev);
        }
    }
    let held = n.footprint();
    assert!(held.hops <= MAX_IDLE_PEERS, "{held:?}");
    assert!(held.ends <= MAX_IDLE_PEERS, "{held:?}");
    // Those still connected are kept, however many.
    let mut m = node();
    for i in 0..6_000u32 {
        connected(&mut m, 100 + i, Lane::Data, 8, 1);
    }
    assert_eq!(m.footprint().hops, 6_000);
}
