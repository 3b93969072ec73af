//! Busy-polling (`TcpConfig::spin`) over real TCP sockets on 127.0.0.1: frames still move
//! intact, and a wake reaches a spinning driver at once, not at the end of its spin.

use std::time::{Duration, Instant};

use lanet::lnd::Lnd;
use lanet::op::{MatchEntry, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, NodeConfig, OpOutcome};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};

/// Longer than any test here: a driver that missed a wake would still be spinning.
const SPIN: Duration = Duration::from_secs(10);

fn spinning(nid: Nid, cfg: &NodeConfig) -> TcpLnd {
    let mut tcp = TcpConfig::for_node(cfg);
    tcp.spin = SPIN;
    TcpLnd::bind(nid, tcp).unwrap()
}

#[test]
fn a_wake_ends_the_spin_at_once() {
    let cfg = NodeConfig::new(1);
    let nid = lanet_lnd_tcp::free_loopback_nid().unwrap();
    let mut lnd = spinning(nid, &cfg);
    let waker = lnd.waker();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The driver polls on a thread of its own, so that a poll that misses the wake fails
    // this test rather than hanging it.
    std::thread::spawn(move || {
        let mut events = Vec::new();
        let start = Instant::now();
        lnd.poll(&mut events, None).unwrap();
        let woken = start.elapsed();
        // A timeout shorter than the spin still ends the poll.
        let start = Instant::now();
        lnd.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        let _ = done_tx.send((woken, start.elapsed()));
    });
    std::thread::sleep(Duration::from_millis(100));
    waker.wake();
    let (woken, timed_out) = done_rx
        .recv_timeout(SPIN / 2)
        .expect("the wake waited for the end of the spin");
    assert!(woken >= Duration::from_millis(90), "{woken:?}");
    assert!(timed_out < SPIN / 4, "{timed_out:?}");
}

/// PUTs submitted from this thread (not from a callback on the driver thread) to a
/// spinning endpoint: each is taken at once, so many round trips take well under what one
/// health interval per PUT would.
#[test]
fn spinning_endpoints_carry_puts_intact_and_take_submissions_at_once() {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    // A health interval of a second: the core's next timer, which a missed wake would
    // wait for, is then far from anything scheduling on a busy machine can cost.
    let config = |incarnation| {
        let mut cfg = NodeConfig::new(incarnation);
        cfg.health.interval = Duration::from_secs(1);
        cfg
    };
    let (ca, cb) = (config(1), config(2));
    let a = Endpoint::builder(ca.clone())
        .lnd(spinning(na, &ca))
        .start()
        .unwrap();
    let b = Endpoint::builder(cb.clone())
        .lnd(spinning(nb, &cb))
        .start()
        .unwrap();
    b.attach(MatchEntry::sink(4, 1, 1 << 20)).unwrap();
    const PUTS: usize = 50;
    let start = Instant::now();
    for i in 0..PUTS {
        let payload: bytes::Bytes = vec![i as u8; 100 + i].into();
        let op = a
            .put(PutRequest {
                dst: nb,
                lane: Lane::Data,
                portal: 4,
                match_bits: 1,
                payload: payload.clone(),
                timeout: None,
                on_peer_down: Default::default(),
                ack: true,
            })
            .unwrap();
        match a.recv_event(Some(Duration::from_secs(30))) {
            Some(Event::Completed(c)) => {
                assert_eq!(c.op, op);
                assert_eq!(
                    c.result,
                    Ok(OpOutcome::Put {
                        mlen: payload.len() as u32
                    })
                );
            }
            other => panic!("{other:?}"),
        }
        match b.recv_event(Some(Duration::from_secs(30))) {
            Some(Event::Delivered(d)) => assert!(d.payload == payload, "PUT {i} corrupted"),
            other => panic!("{other:?}"),
        }
    }
    // A missed wake holds a PUT until the next timer of the core (health ticks every
    // second): 50 of them would take tens of seconds. Taken at once, each costs at worst a
    // few scheduler ticks (the spinning threads hold both CPUs here).
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{PUTS} PUTs took {took:?}");
}
