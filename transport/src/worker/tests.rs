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

/// Whether an op ended at its deadline (whichever side the node blames).
fn timed_out(result: &Result<OpOutcome, OpError>) -> bool {
    matches!(
        result,
        Err(OpError::NetworkTimeout | OpError::LocalTimeout | OpError::RemoteTimeout)
    )
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
/// loop would, reach a server worker on another thread, each delivered once and in order,
/// well past the server's bound on deliveries not taken.
#[test]
fn workers_on_two_threads_ping_pong_puts_delivered_once_each_in_order() {
    const N: usize = 500;
    let f = fabric();
    // Far fewer than N: deliveries handed back must count as taken, or the server
    // refuses the 17th (Busy).
    let mut cfg = NodeConfig::new(2);
    cfg.max_undelivered = 16;
    let server_lnd = lnd(&f, 2, &cfg);
    let mut server = Worker::new(cfg, vec![Box::new(server_lnd)]).unwrap();
    let mut client = worker(&f, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            server.attach(MatchEntry::sink(4, 1, 64)).unwrap();
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

/// A node offering fewer credits (2) than the other's `credits_hiw` (4) streams PUTs
/// without ACK to it. Both ends use a window of 2, and the receiver sends a CREDIT frame
/// once it owes half of it, not the 4 it was configured with: a sender that waited for 4
/// would wait for ever.
#[test]
fn a_one_way_stream_with_a_window_below_the_receivers_hiw_keeps_going() {
    const N: usize = 200;
    let f = fabric();
    let mut small = NodeConfig::new(1);
    small.lanes[Lane::Data].peer_credits = 2;
    small.lanes[Lane::Data].credits_hiw = 2;
    let client_lnd = lnd(&f, 1, &small);
    let mut client = Worker::new(small, vec![Box::new(client_lnd)]).unwrap();
    let mut server = worker(&f, 2);
    assert_eq!(server.node().config().lanes[Lane::Data].credits_hiw, 4);
    let serving = std::thread::spawn(move || {
        server.attach(MatchEntry::sink(4, 1, 64)).unwrap();
        let (mut events, mut got) = (Vec::new(), 0usize);
        let give_up = Instant::now() + Duration::from_secs(30);
        while got < N && Instant::now() < give_up {
            server.progress(Some(Duration::from_millis(10)), &mut events);
            got += events.drain(..).filter(|e| e.is_delivery()).count();
        }
        (got, server.node().stats().credit_frames_sent)
    });
    let ops: Vec<OpId> = (0..N)
        .map(|_| {
            let req = PutRequest {
                ack: false,
                ..put(2, Bytes::from_static(b"x"), None)
            };
            client.put(req).unwrap()
        })
        .collect();
    // Each PUT completes once it has been sent, which took a credit: all N of them took
    // credits the server gave back, N - 2 at least.
    let (done, _) = complete_all(&mut client, &ops, Duration::from_secs(30));
    assert!(done.values().all(|c| c.result.is_ok()), "{done:?}");
    let (got, credit_frames) = serving.join().unwrap();
    assert_eq!(got, N, "every PUT delivered");
    assert!(
        credit_frames >= (N as u64 - 2) / 2,
        "{credit_frames} CREDIT frames returned {N} credits in windows of 2"
    );
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
    assert!(timed_out(&done[0].result), "{:?}", done[0].result);
    // Nothing more comes for it.
    events.clear();
    w.progress(Some(Duration::from_millis(100)), &mut events);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Completed(_))),
        "{events:?}"
    );
}

/// Shutting down completes what is live with `Cancelled`, entries included, exactly once
/// each; afterwards submissions are refused and `progress` hands back nothing.
#[test]
fn shutdown_cancels_what_is_live_once_and_refuses_what_comes_after() {
    let f = fabric();
    let _silent = worker(&f, 2);
    let mut w = worker(&f, 1);
    let mut live = vec![w.attach(MatchEntry::sink(4, 1, 64)).unwrap()];
    live.extend((0..5).map(|_| w.put(put(2, Bytes::from_static(b"y"), None)).unwrap()));
    let mut events = Vec::new();
    w.progress(Some(Duration::from_millis(20)), &mut events);
    assert!(events.is_empty(), "{events:?}");
    w.shutdown(&mut events);
    let mut cancelled: Vec<OpId> = events
        .iter()
        .map(|e| match e {
            Event::Completed(c) if c.result == Err(OpError::Cancelled) => c.op,
            e => panic!("{e:?}"),
        })
        .collect();
    cancelled.sort_unstable();
    assert_eq!(cancelled, live, "each live op once");
    assert_eq!(
        w.put(put(2, Bytes::new(), None)),
        Err(EndpointError::ShutDown)
    );
    assert_eq!(
        w.attach(MatchEntry::sink(4, 2, 64)),
        Err(EndpointError::ShutDown)
    );
    assert_eq!(w.cancel(live[0]), Err(EndpointError::ShutDown));
    events.clear();
    assert_eq!(w.progress(Some(Duration::from_millis(10)), &mut events), 0);
    w.shutdown(&mut events);
    assert!(events.is_empty(), "a second shutdown: {events:?}");
    assert_eq!(w.node().live_ops(), 0);
}

/// `progress` waits only when it has nothing to hand back: an op that fails as it is
/// submitted comes back from the first call, however long that call may wait.
#[test]
fn progress_hands_back_what_it_has_without_waiting() {
    let f = fabric();
    let mut w = worker(&f, 1);
    // Sending to oneself is refused at once.
    let op = w.put(put(1, Bytes::from_static(b"me"), None)).unwrap();
    let started = Instant::now();
    let mut events = Vec::new();
    assert_eq!(w.progress(Some(Duration::from_secs(30)), &mut events), 1);
    // Orders of magnitude: nothing to wait for, against a 30 s wait.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let Event::Completed(c) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(c.op, op);
    assert!(matches!(c.result, Err(OpError::Invalid(_))), "{c:?}");
}

/// A cancelled entry completes once, with `Cancelled`.
#[test]
fn a_cancelled_entry_completes_once() {
    let f = fabric();
    let mut w = worker(&f, 1);
    let entry = w.attach(MatchEntry::sink(4, 1, 64)).unwrap();
    w.cancel(entry).unwrap();
    w.cancel(entry).unwrap();
    let (done, other) = complete_all(&mut w, &[entry], Duration::from_secs(10));
    assert_eq!(done[&entry].result, Err(OpError::Cancelled));
    assert!(other.is_empty(), "{other:?}");
    let mut events = Vec::new();
    w.progress(Some(Duration::from_millis(20)), &mut events);
    assert!(events.is_empty(), "{events:?}");
}

/// A worker whose only driver fails for good completes every operation with the error,
/// says why once, and refuses those submitted later.
#[test]
fn a_worker_whose_driver_fails_completes_everything_and_says_why() {
    let f = fabric();
    let _b = worker(&f, 2);
    f.set_cut(Nid::mem(1, 0), Nid::mem(2, 0), true);
    let cfg = NodeConfig::new(1);
    let (rigged, broken) = Rigged::new(lnd(&f, 1, &cfg), Trick::Fail);
    let mut w = Worker::new(cfg, vec![Box::new(rigged)]).unwrap();
    let mut ops = vec![w.attach(MatchEntry::sink(4, 1, 64)).unwrap()];
    ops.extend((0..10).map(|_| w.put(put(2, Bytes::from_static(b"z"), None)).unwrap()));
    let mut events = Vec::new();
    w.progress(Some(Duration::ZERO), &mut events);
    broken.store(true, Ordering::Relaxed);
    let give_up = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| matches!(e, Event::EndpointFailed { .. }))
    {
        assert!(Instant::now() < give_up, "no failure reported: {events:?}");
        w.progress(Some(Duration::from_millis(100)), &mut events);
    }
    assert!(matches!(
        w.put(put(2, Bytes::new(), None)),
        Err(EndpointError::Failed(_))
    ));
    // Nothing more comes.
    let after = events.len();
    assert_eq!(w.progress(Some(Duration::from_millis(10)), &mut events), 0);
    assert_eq!(events.len(), after);
    let failed = events
        .iter()
        .filter(|e| matches!(e, Event::EndpointFailed { .. }))
        .count();
    assert_eq!(failed, 1, "{events:?}");
    let mut completed: HashMap<OpId, Completion> = HashMap::new();
    for e in &events {
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
    assert_eq!(completed.len(), ops.len(), "{completed:?}");
}

/// An op already past its deadline when the worker shuts down ends as timed out, as at an
/// endpoint's shutdown: the timers due run first. Whether the worker turned since the op
/// was submitted (and so knew its deadline) or not.
#[test]
fn shutdown_ends_an_op_past_its_deadline_as_timed_out() {
    for turned_since in [true, false] {
        let f = fabric();
        let _silent = worker(&f, 2);
        let mut w = worker(&f, 1);
        let mut events = Vec::new();
        if !turned_since {
            w.progress(Some(Duration::ZERO), &mut events);
        }
        let late = Some(Duration::from_millis(10));
        let op = w.put(put(2, Bytes::from_static(b"late"), late)).unwrap();
        if turned_since {
            w.progress(Some(Duration::ZERO), &mut events);
            assert!(events.is_empty(), "{events:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
        w.shutdown(&mut events);
        let [Event::Completed(c)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!(c.op, op);
        assert!(timed_out(&c.result), "turned since: {turned_since}: {c:?}");
    }
}
