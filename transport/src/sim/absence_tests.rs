//! Black-hole self-absence on the virtual clock: a client on net 1, servers on net 2,
//! routers 8 and 9 on both, fellows of each other. Links are cut to make one router a
//! black hole (for a net, or for one peer), and the tests check who withdraws, when, what
//! the clients see, and that no operation is lost or delivered twice.

use std::time::Duration;

use super::routing_tests::on;
use super::*;
use crate::config::RouterConfig;
use crate::node::BlackHole;
use crate::wire::{AbsentReason, RouterState};

use super::absence_cluster::*;

#[test]
fn a_starting_router_warms_up_before_it_takes_traffic() {
    let warming = RouterConfig {
        warm_up: Duration::from_millis(500),
        ..quick()
    };
    let mut c = cluster_with([warming, quick()]);
    assert_eq!(c.state(0), RouterState::Absent(AbsentReason::WarmingUp));
    let mut s = Stream::default();
    c.stream(400 * MS, &mut s);
    assert_eq!(c.forwarded(0), 0, "nothing forwarded while warming up");
    assert!(c.forwarded(1) > 0);
    let events = router_events(&mut c.sim, c.routers[0]);
    assert!(events.is_empty(), "{events:?}");
    c.sim.run_for(100 * MS);
    c.settle(&mut s);
    s.check_nothing_lost();
    assert_eq!(c.state(0), RouterState::Forwarding);
    let events = router_events(&mut c.sim, c.routers[0]);
    assert_eq!(
        events,
        vec![(RouterState::Forwarding, false, "it forwards".into())]
    );
    let mut s = Stream::default();
    c.stream(100 * MS, &mut s);
    c.settle(&mut s);
    s.check_nothing_lost();
    assert!(c.forwarded(0) > 0, "router 8 carries traffic once warm");
}

/// When router `r` last changed to `state`, by its events (taken).
fn changed_at(sim: &mut Sim, r: Nid, want: RouterState) -> Vec<(Time, bool, String)> {
    sim.take_timed_events(r)
        .into_iter()
        .filter_map(|(t, e)| match e {
            Event::RouterChanged {
                state,
                degraded,
                cause,
                ..
            } if state == want => Some((t, degraded, cause)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_router_that_loses_a_net_withdraws_within_a_second_and_returns_after_its_hold_down() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    assert!(c.forwarded(0) > 0 && c.forwarded(1) > 0, "both in use");
    let r8 = c.routers[0];
    c.sim.take_events(r8);

    c.pull_cable(0, true);
    let cut = c.sim.now();
    c.stream(1000 * MS, &mut s);
    let absent = changed_at(&mut c.sim, r8, RouterState::Absent(AbsentReason::BlackHole));
    assert_eq!(absent.len(), 1, "{absent:?}");
    let (at, _, cause) = &absent[0];
    let took = *at - cut;
    eprintln!("net cut: router 8 absent after {took:?}: {cause}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Whichever server it found silent first, it names what it cannot reach on net 2.
    assert!(cause.contains("mem2"), "{cause}");
    assert_eq!(
        c.sim.node(r8).router_condition().black_hole,
        Some(BlackHole::NetSilent(net(2)))
    );
    assert_eq!(c.state(1), RouterState::Forwarding, "its fellow stays");
    let through_8 = c.forwarded(0);

    c.pull_cable(0, false);
    let healed = c.sim.now();
    c.stream(1500 * MS, &mut s);
    assert_eq!(c.forwarded(0), through_8, "still out during its hold-down");
    c.stream(2500 * MS, &mut s);
    let back = changed_at(&mut c.sim, r8, RouterState::Forwarding);
    assert_eq!(back.len(), 1, "{back:?}");
    let out_for = back[0].0 - healed;
    eprintln!("link healed: router 8 back after {out_for:?}");
    let hold_down = RouterConfig::default().hold_down;
    assert!(
        out_for >= hold_down && out_for < hold_down * 2,
        "{out_for:?}"
    );
    c.stream(100 * MS, &mut s);
    assert!(c.forwarded(0) > through_8, "the client uses router 8 again");
    c.settle(&mut s);
    s.check_nothing_lost();
    let counters = c.sim.node(r8).router_condition().counters;
    assert_eq!((counters.withdrawals, counters.returns), (1, 1));
}

#[test]
fn a_flapping_link_keeps_the_router_out_longer_each_time() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    let r8 = c.routers[0];
    // Ten flaps in twenty seconds: a second cut, a second healed.
    let mut last_heal = c.sim.now();
    for _ in 0..10 {
        c.pull_cable(0, true);
        c.stream(1000 * MS, &mut s);
        c.pull_cable(0, false);
        last_heal = c.sim.now();
        c.stream(1000 * MS, &mut s);
    }
    c.sim.take_events(r8);
    let condition = c.sim.node(r8).router_condition();
    assert_eq!(
        condition.state,
        RouterState::Absent(AbsentReason::BlackHole),
        "out all along: {condition:?}"
    );
    assert_eq!(
        condition.counters.returns, 0,
        "never back while flapping: {condition:?}"
    );
    assert!(condition.counters.flaps >= 3, "{condition:?}");
    let (_, hold) = condition.hold_down.unwrap();
    eprintln!(
        "after ten flaps: penalty {:.0}, hold-down {hold:?}",
        condition.counters.penalty
    );
    assert!(hold > RouterConfig::default().hold_down * 4, "{hold:?}");
    c.stream(hold + Duration::from_secs(2), &mut s);
    let back = changed_at(&mut c.sim, r8, RouterState::Forwarding);
    assert_eq!(back.len(), 1, "back, once the flapping stopped long enough");
    eprintln!(
        "damping kept router 8 out {:?} after the last heal",
        back[0].0 - last_heal
    );
    assert!(back[0].0 - last_heal >= hold / 2);
    c.settle(&mut s);
    s.check_nothing_lost();
}

#[test]
fn a_router_that_cannot_reach_one_peer_its_fellow_reaches_advertises_it_then_withdraws() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    let (r8, r9) = (c.routers[0], c.routers[1]);
    c.sim.take_events(r8);
    let s2 = c.servers[0];
    c.sim.fabric().set_cut(on(2, 8), s2, true);
    let cut = c.sim.now();
    c.stream(1000 * MS, &mut s);
    let absent = changed_at(&mut c.sim, r8, RouterState::Absent(AbsentReason::BlackHole));
    assert_eq!(absent.len(), 1, "{absent:?}");
    eprintln!(
        "peer cut: router 8 absent after {:?}: {}",
        absent[0].0 - cut,
        absent[0].2
    );
    assert!(absent[0]
        .2
        .contains("cannot reach 2@mem2, which 9@mem1 reaches"));
    // It listed the peer before it withdrew, its fellow vouching for it.
    let status = c.sim.node(r8).router_status().clone();
    assert_eq!(status.unreachable, vec![s2]);
    assert_eq!(c.sim.node(r9).router_status().vouched, vec![s2]);
    assert_eq!(c.state(1), RouterState::Forwarding);
    // The client sees router 8 absent, and reaches the server through router 9.
    assert!(matches!(
        c.sim.node(c.client).gateway_status(r8).map(|s| s.state),
        Some(RouterState::Absent(AbsentReason::BlackHole))
    ));
    c.settle(&mut s);
    s.check_nothing_lost();
    // Healed: back after the hold-down.
    c.sim.fabric().set_cut(on(2, 8), s2, false);
    c.stream(4000 * MS, &mut s);
    assert_eq!(c.state(0), RouterState::Forwarding);
    c.settle(&mut s);
    s.check_nothing_lost();
}

/// Withdrawn because its fellow reaches a peer it does not, a router whose fellow then
/// dies is the last router between the nets: it comes back once it finds the fellow Down,
/// not after a hold-down meant for a cause that healed (2 s or more, with no router
/// between the nets meanwhile).
#[test]
fn a_withdrawn_router_whose_fellow_dies_comes_back_at_once() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    let (r8, r9) = (c.routers[0], c.routers[1]);
    let s2 = c.servers[0];
    c.sim.fabric().set_cut(on(2, 8), s2, true);
    c.stream(1000 * MS, &mut s);
    assert_eq!(c.state(0), RouterState::Absent(AbsentReason::BlackHole));
    c.settle(&mut s);
    s.check_nothing_lost();
    c.sim.take_events(r8);

    c.sim.kill(r9);
    let killed = c.sim.now();
    let detect = c.sim.node(r8).config().health.detect_time();
    c.sim.run_for(detect + 200 * MS);
    let back = changed_at(&mut c.sim, r8, RouterState::Forwarding);
    assert_eq!(back.len(), 1, "router 8 back as the last router: {back:?}");
    let took = back[0].0 - killed;
    eprintln!("fellow killed: router 8 back after {took:?}: {}", back[0].2);
    assert!(took <= detect + 100 * MS, "{took:?}");
    // The client reaches the server router 8 still reaches through it.
    let mut s = Stream::default();
    c.stream(500 * MS, &mut s);
    c.settle(&mut s);
    let s1 = c.servers[1];
    let to_s1 = s.ops.len() as u32 / 3;
    let delivered_to_s1 = s.delivered.keys().filter(|&&i| i % 3 == 1).count() as u32;
    assert_eq!(
        delivered_to_s1, to_s1,
        "every PUT to {s1} delivered through router 8"
    );
}

#[test]
fn a_peer_that_died_is_no_black_hole_and_nobody_withdraws() {
    // Seed 000's trap: a server dies (its failover partner starts later). Both routers
    // lose it; neither can vouch for it; both stay, and the client keeps both routes.
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    c.settle(&mut s);
    s.check_nothing_lost();
    for r in c.routers.clone() {
        c.sim.take_events(r);
    }
    c.sim.take_events(c.client);
    let s2 = c.servers[0];
    c.sim.kill(s2);
    let mut s = Stream::default();
    c.stream(2000 * MS, &mut s);
    for r in 0..2 {
        assert_eq!(c.state(r), RouterState::Forwarding);
        let node = c.sim.node(c.routers[r]);
        assert_eq!(node.router_status().unreachable, vec![s2], "router {r}");
        assert!(node.router_status().vouched.is_empty());
        assert_eq!(node.router_condition().black_hole, None);
        assert!(router_events(&mut c.sim, c.routers[r]).is_empty());
    }
    let route_downs: Vec<Event> = c
        .sim
        .take_events(c.client)
        .into_iter()
        .filter(|e| matches!(e, Event::RouteDown { .. }))
        .collect();
    assert!(route_downs.is_empty(), "{route_downs:?}");
    // The PUTs to the dead server failed (PeerDead or a timeout), each once; those to the
    // other all arrived.
    c.settle(&mut s);
    assert_eq!(s.results.len(), s.ops.len());
    let to_live = s.delivered.len();
    assert!(to_live as u32 >= s.sent / 3, "{to_live} of {}", s.sent);
}

#[test]
fn when_both_routers_lose_a_net_neither_strands_the_other_and_nothing_hangs() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    c.settle(&mut s);
    for r in c.routers.clone() {
        c.sim.take_events(r);
    }
    // Both routers' NIs on net 2 cut off from everything there, each other included.
    c.cut_from_servers(0, true);
    c.cut_from_servers(1, true);
    c.sim.fabric().set_cut(on(2, 8), on(2, 9), true);
    let mut s = Stream::default();
    c.stream(2000 * MS, &mut s);
    let conds: Vec<_> = (0..2)
        .map(|r| c.sim.node(c.routers[r]).router_condition())
        .collect();
    eprintln!("both cut off from net 2: {conds:?}");
    assert!(
        conds.iter().any(|c| c.state == RouterState::Forwarding),
        "one at least still forwards (fail-open): {conds:?}"
    );
    // Every operation ended, and quickly (refused on the way), none at its deadline.
    c.settle(&mut s);
    assert_eq!(s.results.len(), s.ops.len());
    assert!(
        c.sim.now() < Time::ZERO + Duration::from_secs(9),
        "none waited its deadline"
    );
    c.cut_from_servers(0, false);
    c.cut_from_servers(1, false);
    c.sim.fabric().set_cut(on(2, 8), on(2, 9), false);
    c.stream(8000 * MS, &mut s);
    for r in 0..2 {
        let cond = c.sim.node(c.routers[r]).router_condition();
        assert_eq!(
            (cond.state, cond.degraded),
            (RouterState::Forwarding, false),
            "{cond:?}"
        );
    }
    let mut s = Stream::default();
    c.stream(100 * MS, &mut s);
    c.settle(&mut s);
    s.check_nothing_lost();
}

#[test]
fn stopping_is_final_and_the_operator_may_take_a_router_out_and_back() {
    let mut c = cluster(quick());
    let r8 = c.routers[0];
    c.sim
        .set_router_state(r8, RouterState::Absent(AbsentReason::Administrator));
    c.sim.run_for(MS);
    assert_eq!(c.state(0), RouterState::Absent(AbsentReason::Administrator));
    c.sim.set_router_state(r8, RouterState::Forwarding);
    c.sim.run_for(MS);
    assert_eq!(c.state(0), RouterState::Forwarding);
    c.sim
        .set_router_state(r8, RouterState::Absent(AbsentReason::Stopping));
    c.sim.set_router_state(r8, RouterState::Forwarding);
    c.sim.run_for(MS);
    assert_eq!(
        c.state(0),
        RouterState::Absent(AbsentReason::Stopping),
        "final"
    );
}

/// Routers 8 and 9 each lose one server the other reaches, at once. Neither may go for
/// the other: each is a black hole for a peer the other serves, so with either gone a
/// server is stranded. Both stay (degraded), each listing its own, and the client routes
/// around them. (Before, each withdrew for the other, came back at once as the last router
/// there, and withdrew again: 85,098 changes each in 2 s, and 5,962 of 6,150 PUTs failed.)
#[test]
fn two_routers_each_missing_a_peer_the_other_reaches_both_stay_and_nothing_fails() {
    let mut c = cluster(quick());
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    let (r8, r9) = (c.routers[0], c.routers[1]);
    c.sim.take_events(r8);
    c.sim.take_events(r9);
    let (s2, s3) = (c.servers[0], c.servers[1]);
    c.sim.fabric().set_cut(on(2, 8), s2, true);
    c.sim.fabric().set_cut(on(2, 9), s3, true);
    for _ in 0..2000 {
        c.stream(MS, &mut s);
        assert_eq!(
            (c.state(0), c.state(1)),
            (RouterState::Forwarding, RouterState::Forwarding),
            "at {:?}",
            c.sim.now()
        );
    }
    for (r, lost) in [(r8, s2), (r9, s3)] {
        let changes = router_events(&mut c.sim, r);
        assert!(
            matches!(&changes[..], [(RouterState::Forwarding, true, _)]),
            "{r}: once degraded, nothing else: {changes:?}"
        );
        assert_eq!(c.sim.node(r).router_status().unreachable, vec![lost]);
        let condition = c.sim.node(r).router_condition();
        assert!(condition.degraded);
        assert!(matches!(
            condition.black_hole,
            Some(BlackHole::PeerUnreachable { peer, .. }) if peer == lost
        ));
        assert_eq!(condition.counters.withdrawals, 0);
    }
    c.settle(&mut s);
    s.check_nothing_lost();
}

/// Three routers. Routers 8 and 9 cannot reach server 2 (the same cause), which router 10
/// reaches; router 10 cannot reach server 3, which 8 and 9 reach. Router 9 is no stand-in
/// for 8 (it cannot reach server 2 either), nor 8 for 9, nor 10 for either: all three stay,
/// each listing what it cannot reach, and the client routes around them. (Before, 8 and 9
/// each withdrew counting on the other, came back at once as the last router there, and
/// withdrew again, without end.)
#[test]
fn two_routers_missing_the_same_peer_do_not_withdraw_for_each_other() {
    for skew in [Duration::ZERO, 100 * MS, 150 * MS] {
        missing_the_same_peer(skew);
    }
}

/// The test above, router 9 cut from server 2 `skew` after router 8 (so that it finds
/// the same cause that much later).
fn missing_the_same_peer(skew: Duration) {
    let mut c = cluster_of(&[(8, quick()), (9, quick()), (10, quick())]);
    let mut s = Stream::default();
    c.stream(50 * MS, &mut s);
    for &r in &c.routers {
        c.sim.take_events(r);
    }
    let (s2, s3) = (c.servers[0], c.servers[1]);
    c.sim.fabric().set_cut(on(2, 8), s2, true);
    c.sim.fabric().set_cut(on(2, 10), s3, true);
    let skew_at = c.sim.now() + skew;
    for _ in 0..2000 {
        if c.sim.now() >= skew_at {
            c.sim.fabric().set_cut(on(2, 9), s2, true);
        }
        c.stream(MS, &mut s);
        for r in 0..3 {
            assert_eq!(
                c.state(r),
                RouterState::Forwarding,
                "{r} at {:?}, skew {skew:?}",
                c.sim.now()
            );
        }
    }
    for (r, lost) in [(0, s2), (1, s2), (2, s3)] {
        let router = c.routers[r];
        let changes = router_events(&mut c.sim, router);
        assert!(
            matches!(&changes[..], [(RouterState::Forwarding, true, _)]),
            "{router}, skew {skew:?}: once degraded, nothing else: {changes:?}"
        );
        assert_eq!(c.sim.node(router).router_status().unreachable, vec![lost]);
        assert_eq!(
            c.sim.node(router).router_condition().counters.withdrawals,
            0
        );
    }
    c.settle(&mut s);
    s.check_nothing_lost();
}

/// Router 8 watches server 2 only because router 9 lists it as unreachable (no traffic to
/// it ever went through 8: it is not *served*, only *asked*), and 8 reaches it. Router 8
/// itself cannot reach server 3, which 9 reaches. So router 9 is no stand-in for 8: with 8
/// gone, nobody would reach server 2. Router 8 stays, degraded, as 9 does for server 3;
/// and once the client has a route through 8, its PUTs to server 2 all arrive through 8.
/// (A stand-in rule that counted served peers alone had 8 withdraw, counting on 9.)
#[test]
fn a_router_stays_for_a_peer_it_watches_for_its_fellow_and_alone_reaches() {
    use crate::op::MatchEntry;
    use bytes::Bytes;
    let mut c = cluster(quick());
    let (r8, r9) = (c.routers[0], c.routers[1]);
    let (s2, s3) = (c.servers[0], c.servers[1]);
    // The client goes through router 9 only; server 3 puts to the client through both.
    assert!(c.sim.remove_route(c.client, net(2), r8));
    c.sim.attach(c.client, MatchEntry::sink(4, 1, 64));
    let mut s = Stream::default();
    let step = |c: &mut Cluster, s: &mut Stream, ms: u32| {
        for _ in 0..ms {
            let payload = Bytes::from(s.sent.to_le_bytes().to_vec());
            let op = c
                .sim
                .put(c.client, super::routing_tests::put(s2, 4, payload));
            s.ops.insert(op, s.sent);
            s.sent += 1;
            let up = Bytes::from_static(b"up");
            c.sim.put(s3, super::routing_tests::put(c.client, 4, up));
            let next = c.sim.now() + MS;
            c.sim.run_until(next);
            c.collect(s);
        }
    };
    step(&mut c, &mut s, 200);
    assert_eq!(c.sim.node(r8).served_and_asked(s2), (false, false));
    assert!(c.sim.node(r8).served_and_asked(s3).0);
    assert!(c.sim.node(r9).served_and_asked(s2).0);
    c.sim.take_events(r8);
    c.sim.take_events(r9);
    c.sim.fabric().set_cut(on(2, 9), s2, true);
    c.sim.fabric().set_cut(on(2, 8), s3, true);
    for _ in 0..2000 {
        step(&mut c, &mut s, 1);
        assert_eq!(
            (c.state(0), c.state(1)),
            (RouterState::Forwarding, RouterState::Forwarding),
            "at {:?}",
            c.sim.now()
        );
    }
    // Router 8 watched server 2 for 9, and did not take it for its own.
    assert_eq!(c.sim.node(r8).served_and_asked(s2), (false, true));
    for (r, lost) in [(r8, s3), (r9, s2)] {
        let changes = router_events(&mut c.sim, r);
        assert!(
            matches!(&changes[..], [(RouterState::Forwarding, true, _)]),
            "{r}: once degraded, nothing else: {changes:?}"
        );
        let condition = c.sim.node(r).router_condition();
        assert!(matches!(
            condition.black_hole,
            Some(BlackHole::PeerUnreachable { peer, .. }) if peer == lost
        ));
        assert_eq!(condition.counters.withdrawals, 0, "{r}");
    }
    // The client's PUTs to server 2 through router 9 (its only way) were refused, each
    // failing once with why. Through router 8, every new one arrives.
    c.settle(&mut s);
    assert_eq!(s.results.len(), s.ops.len(), "every op completed once");
    let refused = s.results.iter().filter(|r| r.is_err()).count() as u32;
    assert!(refused > 1000, "{refused} refused");
    assert_eq!(refused + s.delivered.len() as u32, s.sent);
    assert!(s.results.iter().all(|r| match r {
        // Refused by router 9, or failed at once for its saying it cannot take them.
        Err(e) => e.to_string().contains("9@mem1"),
        Ok(_) => true,
    }));
    c.sim
        .add_route(c.client, super::routing_tests::route(2, r8, 1))
        .unwrap();
    let mut after = Stream::default();
    step(&mut c, &mut after, 500);
    c.settle(&mut after);
    after.check_nothing_lost();
}
