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

/// Streams `puts` PUTs of 1 MiB from one endpoint to another, 8 in flight, both driven by
/// TCP LNDs that spin for `spin` (zero: they sleep); returns how long the stream took
/// from its first acknowledgement (connection set-up is not streaming).
fn stream_1mib(spin: Duration, puts: usize) -> Duration {
    let (na, nb) = (
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
        lanet_lnd_tcp::free_loopback_nid().unwrap(),
    );
    let lnd = |nid, cfg: &NodeConfig| {
        let mut tcp = TcpConfig::for_node(cfg);
        tcp.spin = spin;
        TcpLnd::bind(nid, tcp).unwrap()
    };
    let (ca, cb) = (NodeConfig::new(1), NodeConfig::new(2));
    let a = Endpoint::builder(ca.clone())
        .lnd(lnd(na, &ca))
        .start()
        .unwrap();
    let b = Endpoint::builder(cb.clone())
        .lnd(lnd(nb, &cb))
        .start()
        .unwrap();
    b.attach(MatchEntry::sink(4, 1, 1 << 20)).unwrap();
    // The target's deliveries are taken as they come, or they would hold its buffers.
    let receiver = {
        let b = b.clone();
        std::thread::spawn(move || {
            let mut delivered = 0;
            while delivered < puts {
                match b.recv_event(Some(Duration::from_secs(60))) {
                    Some(Event::Delivered(d)) => {
                        assert_eq!(d.payload.len(), 1 << 20);
                        delivered += 1;
                    }
                    Some(_) => {}
                    None => panic!("{delivered} of {puts} PUTs delivered"),
                }
            }
        })
    };
    let payload = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let put = || {
        a.put(PutRequest {
            dst: nb,
            lane: Lane::Data,
            portal: 4,
            match_bits: 1,
            payload: payload.clone(),
            timeout: None,
            on_peer_down: Default::default(),
        })
        .unwrap()
    };
    const WINDOW: usize = 8;
    for _ in 0..WINDOW.min(puts) {
        put();
    }
    let (mut sent, mut acked, mut start) = (WINDOW.min(puts), 0, None);
    while acked < puts {
        match a.recv_event(Some(Duration::from_secs(60))) {
            Some(Event::Completed(c)) => {
                assert!(c.result.is_ok(), "{c:?}");
                acked += 1;
                start.get_or_insert_with(Instant::now);
                if sent < puts {
                    put();
                    sent += 1;
                }
            }
            Some(_) => {}
            None => panic!("{acked} of {puts} PUTs acknowledged"),
        }
    }
    let took = start.expect("acknowledged").elapsed();
    receiver.join().unwrap();
    a.shutdown();
    b.shutdown();
    took
}

/// Spinning drivers leave the CPU to the bulk mover threads while those move bytes: on
/// two cores, two spinning drivers once starved them and cut a 1 MiB stream ~30-fold
/// (from ~5 GB/s to 0.15-0.2 GB/s). Compared with sleeping drivers in the same run, so
/// that only an order of magnitude is judged, not this machine's speed.
#[test]
fn spinning_drivers_stream_bulk_as_fast_as_sleeping_ones_to_an_order_of_magnitude() {
    const PUTS: usize = 256;
    let sleeping = stream_1mib(Duration::ZERO, PUTS);
    let spinning = stream_1mib(SPIN, PUTS);
    assert!(
        spinning < sleeping * 4 + Duration::from_millis(200),
        "256 MiB took {spinning:?} with spinning drivers, {sleeping:?} with sleeping ones"
    );
}
