//! Workers on real threads and the real clock, over the in-memory LND.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::lane::Lane;
use crate::mem::rigged::{Rigged, Trick};
use crate::mem::{MemFabric, MemLnd, MemLndConfig};
use crate::op::{Completion, OpOutcome};

fn fabric() -> MemFabric {
    MemFabric::new(Arc::new(MonotonicClock::new()), 11)
}

fn lnd(fabric: &MemFabric, n: u32, cfg: &NodeConfig) -> MemLnd {
    MemLnd::new(fabric, Nid::mem(n, 0), MemLndConfig::for_node(cfg)).unwrap()
}

fn worker(fabric: &MemFabric, n: u32) -> Worker {
    let cfg = NodeConfig::new(u64::from(n));
    let lnd = lnd(fabric, n, &cfg);
    Worker::new(cfg, vec![Box::new(lnd)]).unwrap()
}

fn put(dst: u32, payload: Bytes, timeout: Option<Duration>) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: Nid::mem(dst, 0),
        portal: 4,
        match_bits: 1,
        payload,
        timeout,
        on_peer_down: Default::default(),
        ack: true,
    }
}

/// Progresses `w` until each op in `ops` has completed (within `limit`), checking that
/// none completes twice; returns the completions and the other events.
fn complete_all(
    w: &mut Worker,
    ops: &[OpId],
    limit: Duration,
) -> (HashMap<OpId, Completion>, Vec<Event>) {
    let give_up = Instant::now() + limit;
    let (mut done, mut other, mut events) = (HashMap::new(), Vec::new(), Vec::new());
    while ops.iter().any(|op| !done.contains_key(op)) {
        assert!(Instant::now() < give_up, "not all of {ops:?} completed");
        w.progress(Some(Duration::from_secs(1)), &mut events);
        for e in events.drain(..) {
            match e {
                Event::Completed(c) => {
                    assert!(done.insert(c.op, c.clone()).is_none(), "{c:?} twice");
                }
                e => other.push(e),
            }
        }
    }
    (done, other)
}

/// A client worker's PUTs, each sent from the completion of the one before as a server
/// loop would, reach a server worker on another thread, each delivered once and in order.
#[test]
fn workers_on_two_threads_ping_pong_puts_delivered_once_each_in_order() {
    const N: usize = 500;
    let f = fabric();
    let mut server = worker(&f, 2);
    let mut client = worker(&f, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            server.attach(MatchEntry::sink(4, 1, 64));
            let (mut events, mut got) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                server.progress(Some(Duration::from_millis(10)), &mut events);
                for e in events.drain(..) {
                    match e {
                        Event::Delivered(d) => got.push(d.payload),
                        e => panic!("server: {e:?}"),
                    }
                }
            }
            got
        })
    };
    let mut events = Vec::new();
    let mut next = 0usize;
    let mut op = client.put(put(2, Bytes::from(next.to_le_bytes().to_vec()), None));
    // Each progress may wait long: a PUT submitted before it must leave before it waits
    // (its answer then ends the wait), or every round trip waits a timer out.
    let give_up = Instant::now() + Duration::from_secs(60);
    while next < N {
        assert!(
            Instant::now() < give_up,
            "{next} of {N} round trips in 60 s"
        );
        client.progress(Some(Duration::from_secs(30)), &mut events);
        for e in events.drain(..) {
            let Event::Completed(c) = e else {
                panic!("client: {e:?}")
            };
            assert_eq!(Ok(c.op), op, "the op in flight completes");
            assert_eq!(c.result, Ok(OpOutcome::Put { mlen: 8 }));
            next += 1;
            if next < N {
                op = client.put(put(2, Bytes::from(next.to_le_bytes().to_vec()), None));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let got = serving.join().unwrap();
    let want: Vec<Bytes> = (0..N)
        .map(|i| Bytes::from(i.to_le_bytes().to_vec()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(client.node().live_ops(), 0);
}

/// An op to a peer that never answers ends at its deadline, even when the application
/// asks `progress` to wait far longer: the node's timer bounds the wait.
#[test]
fn a_deadline_cuts_a_long_wait_short_and_the_op_ends_once() {
    let f = fabric();
    // Registered on the fabric, but never progressed: nothing it is sent is answered.
    let _silent = worker(&f, 2);
    let mut w = worker(&f, 1);
    let op = w
        .put(put(
            2,
            Bytes::from_static(b"x"),
            Some(Duration::from_millis(50)),
        ))
        .unwrap();
    let started = Instant::now();
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, Event::Completed(_))) {
        w.progress(Some(Duration::from_secs(30)), &mut events);
    }
    // Orders of magnitude: a 50 ms deadline, against waits of 30 s each.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let done: Vec<&Completion> = events
        .iter()
        .filter_map(|e| match e {
            Event::Completed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].op, op);
    assert!(
        matches!(
            done[0].result,
            Err(OpError::NetworkTimeout | OpError::LocalTimeout | OpError::RemoteTimeout)
        ),
        "{:?}",
        done[0].result
    );
    // Nothing more comes for it.
    events.clear();
    w.progress(Some(Duration::from_millis(100)), &mut events);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Completed(_))),
        "{events:?}"
    );
}

/// Shutting down completes what is live with `Cancelled`, entries included, and what is
/// submitted afterwards too: exactly once each.
#[test]
fn shutdown_cancels_what_is_live_and_what_comes_after() {
    let f = fabric();
    let _silent = worker(&f, 2);
    let mut w = worker(&f, 1);
    let entry = w.attach(MatchEntry::sink(4, 1, 64));
    let puts: Vec<OpId> = (0..5)
        .map(|_| w.put(put(2, Bytes::from_static(b"y"), None)).unwrap())
        .collect();
    let mut events = Vec::new();
    w.progress(Some(Duration::from_millis(20)), &mut events);
    assert!(events.is_empty(), "{events:?}");
    w.shutdown(&mut events);
    let late = w.put(put(2, Bytes::new(), None)).unwrap();
    let mut all = vec![entry, late];
    all.extend(&puts);
    let (pending, _) = complete_all(&mut w, &[late], Duration::from_secs(10));
    for e in events {
        if let Event::Completed(c) = e {
            assert!(!pending.contains_key(&c.op), "{c:?} twice");
            assert_eq!(c.result, Err(OpError::Cancelled), "{c:?}");
            all.retain(|&op| op != c.op);
        }
    }
    assert_eq!(pending[&late].result, Err(OpError::Cancelled));
    all.retain(|&op| op != late);
    assert!(all.is_empty(), "never completed: {all:?}");
    assert_eq!(w.node().live_ops(), 0);
}

/// A worker whose only driver fails for good completes every operation with the error,
/// and those submitted later, and says why once.
#[test]
fn a_worker_whose_driver_fails_completes_everything_and_says_why() {
    let f = fabric();
    let _b = worker(&f, 2);
    f.set_cut(Nid::mem(1, 0), Nid::mem(2, 0), true);
    let cfg = NodeConfig::new(1);
    let (rigged, broken) = Rigged::new(lnd(&f, 1, &cfg), Trick::Fail);
    let mut w = Worker::new(cfg, vec![Box::new(rigged)]).unwrap();
    let mut ops = vec![w.attach(MatchEntry::sink(4, 1, 64))];
    ops.extend((0..10).map(|_| w.put(put(2, Bytes::from_static(b"z"), None)).unwrap()));
    let mut events = Vec::new();
    w.progress(Some(Duration::ZERO), &mut events);
    broken.store(true, Ordering::Relaxed);
    w.progress(Some(Duration::from_secs(1)), &mut events);
    ops.push(w.put(put(2, Bytes::new(), None)).unwrap());
    let (done, other) = complete_all(&mut w, &ops[ops.len() - 1..], Duration::from_secs(10));
    let mut all: Vec<Event> = events;
    all.extend(other);
    let failed: Vec<&Event> = all
        .iter()
        .filter(|e| matches!(e, Event::EndpointFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{all:?}");
    let mut completed: HashMap<OpId, Completion> = done;
    for e in &all {
        if let Event::Completed(c) = e {
            assert!(completed.insert(c.op, c.clone()).is_none(), "{c:?} twice");
        }
    }
    for op in &ops {
        let c = completed
            .get(op)
            .unwrap_or_else(|| panic!("{op} never completed"));
        assert!(matches!(c.result, Err(OpError::Local(_))), "{c:?}");
    }
}
