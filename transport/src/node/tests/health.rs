//! The node's side of failure detection: its own backed-up health lane counts as its lag.

use super::*;

/// A node watching a silent peer B over a connected health lane; each PING it sends stays
/// in the driver for `stuck` ms. Returns when B was declared Down, and the node's stats.
fn down_at(stuck: u64) -> (u64, crate::health::HealthStats) {
    let mut n = node();
    connected(&mut n, B, Lane::Health, 8, 7);
    n.watch(Time::ZERO, nid(B)).unwrap();
    // (when the driver reports it sent, token)
    let mut in_driver: Vec<(u64, TxToken)> = Vec::new();
    loop {
        let due = n.poll_timeout().map(|t| t.as_duration().as_millis() as u64);
        let sent = in_driver.iter().map(|(at, _)| *at).min();
        let now = [due, sent]
            .into_iter()
            .flatten()
            .min()
            .expect("something due");
        assert!(now < 5_000, "B never went Down");
        if let Some(i) = in_driver.iter().position(|(at, _)| *at == now) {
            let (_, token) = in_driver.swap_remove(i);
            let done = LndEvent::SendComplete {
                token,
                result: Ok(()),
            };
            n.handle_lnd_event(t(now), NiId(0), done);
        } else {
            n.handle_timeout(t(now));
        }
        for s in drain(&mut n) {
            assert!(matches!(s.header.body, Body::Ping { .. }), "{:?}", s.header);
            in_driver.push((now + stuck, s.token));
        }
        if events(&mut n)
            .iter()
            .any(|e| matches!(e, Event::PeerDown { peer, .. } if *peer == nid(B)))
        {
            return (now, n.health_stats());
        }
    }
}

#[test]
fn a_ping_stuck_in_its_own_driver_is_the_nodes_lag_not_the_peers_silence() {
    let (prompt, stats) = down_at(0);
    assert_eq!(prompt, 300);
    assert_eq!(stats.lag_stretches, 0);
    // Every PING takes 150 ms to leave: the node forgives what its own lane held back.
    let (stuck, stats) = down_at(150);
    assert!(stuck > prompt, "Down at {stuck} ms");
    assert!(stats.backlog_stretches >= 1, "{stats:?}");
    // ... but not forever: a lane stuck for good (perhaps on the peer) delays the verdict by
    // at most one detection time per frame.
    let (forever, stats) = down_at(1_000_000);
    assert!(
        forever > prompt && forever <= 2 * prompt + 100,
        "Down at {forever} ms"
    );
    assert!(stats.max_lag <= MS * 300, "{stats:?}");
}
