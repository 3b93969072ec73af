//! The driver loop over real in-memory LNDs, some rigged to misbehave on cue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::*;
use crate::lane::Lane;
use crate::mem::rigged::{Rigged, Trick};
use crate::mem::{LinkFaults, MemFabric, MemLnd, MemLndConfig};
use crate::nid::Nid;
use crate::op::{Event, MatchEntry, OpId, OpOutcome, PutRequest};
use crate::time::MonotonicClock;

/// Two nodes, 1@mem and 2@mem, each a driver of one in-memory LND, on links without delay;
/// `ni_credits` for the data lane, if given; node 1's LND gathers frames (`Trick::Gather`)
/// if `gather`. Node 2 has a sink on portal 4.
fn pair(ni_credits: Option<u32>, gather: bool) -> (Arc<MonotonicClock>, Driver, Driver) {
    let clock = Arc::new(MonotonicClock::new());
    let fabric = MemFabric::new(clock.clone(), 1);
    fabric.set_default_link(LinkFaults {
        delay: Duration::ZERO,
        ..LinkFaults::default()
    });
    let driver = |n: u32| {
        let mut cfg = NodeConfig::new(u64::from(n));
        if let Some(credits) = ni_credits {
            cfg.lanes[Lane::Data].ni_credits = credits;
        }
        let lnd = MemLnd::new(&fabric, Nid::mem(n, 0), MemLndConfig::for_node(&cfg)).unwrap();
        let lnd: Box<dyn Lnd> = match gather && n == 1 {
            true => Box::new(Rigged::new(lnd, Trick::Gather).0),
            false => Box::new(lnd),
        };
        Driver::new(cfg, vec![lnd]).unwrap()
    };
    let (a, mut b) = (driver(1), driver(2));
    b.node_mut()
        .attach(OpId(100), MatchEntry::sink(4, 0, 64))
        .unwrap();
    (clock, a, b)
}

/// A 4-byte PUT to node 2's sink.
fn put(ack: bool) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst: Nid::mem(2, 0),
        portal: 4,
        match_bits: 0,
        payload: bytes::Bytes::from_static(b"ping"),
        timeout: None,
        on_peer_down: Default::default(),
        ack,
    }
}

/// One turn of both drivers (timers, flush, a poll that does not wait); the ops of `a`
/// that completed meanwhile, each successfully, go to `done`.
fn turn(clock: &MonotonicClock, a: &mut Driver, b: &mut Driver, done: &mut Vec<OpId>) {
    for d in [&mut *a, &mut *b] {
        d.node_mut().handle_timeout(clock.now());
        d.flush();
        d.poll(clock, Some(Duration::ZERO)).unwrap();
    }
    while let Some(e) = a.node_mut().poll_event() {
        if let Event::Completed(c) = e {
            assert!(c.result.is_ok(), "{c:?}");
            done.push(c.op);
        }
    }
}

/// Turns both until `a` has completed `n` ops in all.
fn run_until(
    clock: &MonotonicClock,
    a: &mut Driver,
    b: &mut Driver,
    done: &mut Vec<OpId>,
    n: usize,
) {
    for _ in 0..10_000 {
        if done.len() >= n {
            return;
        }
        turn(clock, a, b, done);
    }
    panic!("only {done:?} completed");
}

/// A frame that its driver sends as it is posted (here: into the in-memory fabric), or
/// when the hand-over ends (`send_posted`), is done when `flush` returns: its completion
/// reaches the node within the flush, not at the next poll (a turn of the loop for that
/// alone).
#[test]
fn a_send_that_completes_as_it_is_posted_ends_within_the_flush() {
    for gather in [false, true] {
        a_send_ends_within_the_flush(gather);
    }
}

fn a_send_ends_within_the_flush(gather: bool) {
    let (clock, mut a, mut b) = pair(None, gather);
    let mut done = Vec::new();
    // The first PUT sets the connection up.
    a.node_mut().put(clock.now(), OpId(1), put(true)).unwrap();
    run_until(&clock, &mut a, &mut b, &mut done, 1);
    // The second goes out at once, and the flush that posts it also ends its send.
    a.node_mut().put(clock.now(), OpId(2), put(true)).unwrap();
    assert_eq!(a.node().footprint().in_lnd, 1, "the PUT is for its driver");
    assert!(a.flush(), "the PUT was handed over");
    let fp = a.node().footprint();
    assert_eq!(fp.in_lnd, 0, "its send completed within the flush");
    assert_eq!(fp.ops, 1, "the PUT is still live: it awaits its ACK");
    run_until(&clock, &mut a, &mut b, &mut done, 2);
    assert_eq!(done, [OpId(1), OpId(2)]);
}

/// Sends that complete as they are posted free NI credits, which send the next queued
/// frames, and so on: however long that chain, a flush leaves nothing in the node for
/// the drivers, nor unsent in a driver that gathers frames, and what it did not take yet,
/// the next poll hands over at once.
#[test]
fn a_flush_leaves_no_frame_behind_however_many_complete_at_once() {
    for gather in [false, true] {
        a_flush_leaves_no_frame_behind(gather);
    }
}

fn a_flush_leaves_no_frame_behind(gather: bool) {
    let (clock, mut a, mut b) = pair(Some(1), gather); // one frame in a driver at a time
    let mut done = Vec::new();
    // Up first, with one PUT answered.
    a.node_mut().put(clock.now(), OpId(1), put(true)).unwrap();
    run_until(&clock, &mut a, &mut b, &mut done, 1);
    // More PUTs without ACK than a flush has rounds: each ends as it is posted.
    let n = 3 * FLUSH_ROUNDS as u64;
    for id in 2..2 + n {
        a.node_mut().put(clock.now(), OpId(id), put(false)).unwrap();
    }
    a.node_mut().handle_timeout(clock.now());
    while b.node_mut().poll_event().is_some() {} // the first PUT's delivery
    assert!(a.flush());
    while let Some(e) = a.node_mut().poll_event() {
        if let Event::Completed(c) = e {
            assert_eq!(c.result, Ok(OpOutcome::Sent { len: 4 }));
            done.push(c.op);
        }
    }
    let fp = a.node().footprint();
    assert_eq!(
        fp.outbox, 0,
        "frames left in the node for its driver: {fp:?}"
    );
    assert_eq!(
        fp.in_lnd, 1,
        "the last one handed over, its completion not taken yet"
    );
    let ended_in_flush = (1..=FLUSH_ROUNDS as u64).map(OpId).collect::<Vec<_>>();
    assert_eq!(
        done, ended_in_flush,
        "one completion taken per round but the last"
    );
    // The last one left the driver too: the peer has it before `a` polls again.
    b.poll(&*clock, Some(Duration::ZERO)).unwrap();
    let delivered = std::iter::from_fn(|| b.node_mut().poll_event())
        .filter(|e| matches!(e, Event::Delivered(_)))
        .count();
    assert_eq!(delivered, FLUSH_ROUNDS, "the flush's PUTs at the peer");
    // What the flush left, the next poll hands over without waiting (orders of
    // magnitude: a poll that waited would take its whole 5 s).
    let started = Instant::now();
    let handled = a.poll(&*clock, Some(Duration::from_secs(5))).unwrap();
    assert!(handled >= 1 && started.elapsed() < Duration::from_secs(1));
    // The rest go, every one.
    run_until(&clock, &mut a, &mut b, &mut done, 1 + n as usize);
    assert_eq!(done, (1..2 + n).map(OpId).collect::<Vec<_>>());
}

/// Two in-memory LNDs of node 1@mem (1@mem and 2@mem), the first rigged with `trick`.
fn rigged_driver(trick: Trick) -> (Arc<MonotonicClock>, Driver, Arc<AtomicBool>) {
    let clock = Arc::new(MonotonicClock::new());
    let fabric = MemFabric::new(clock.clone(), 1);
    let cfg = NodeConfig::new(1);
    let lnd = |n| MemLnd::new(&fabric, Nid::mem(1, n), MemLndConfig::for_node(&cfg)).unwrap();
    let (rigged, armed) = Rigged::new(lnd(1), trick);
    let driver = Driver::new(cfg.clone(), vec![Box::new(rigged), Box::new(lnd(2))]).unwrap();
    (clock, driver, armed)
}

/// One of several NIs fails: the poll that finds it returns at once, so that what its
/// loss set going in the node (an `NiDown` event, ops sent another way) is taken up
/// before the thread sleeps, not after the poll's whole timeout.
#[test]
fn a_failing_ni_ends_the_poll_that_finds_it() {
    let (clock, mut driver, armed) = rigged_driver(Trick::Fail);
    driver.poll(&*clock, Some(Duration::ZERO)).unwrap();
    armed.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let handled = driver.poll(&*clock, Some(Duration::from_secs(5))).unwrap();
    // Orders of magnitude: before, it slept the whole 5 s.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "slept {:?} after the failure",
        started.elapsed()
    );
    assert!(handled >= 1);
    assert!(!driver.node().ni_is_up(NiId(0)) && driver.node().ni_is_up(NiId(1)));
    let down = std::iter::from_fn(|| driver.node_mut().poll_event())
        .any(|e| matches!(e, Event::NiDown { .. }));
    assert!(down, "the node said the NI went down");
}

/// One of several NIs fails for good: its driver is dropped at once, not kept (open, and
/// answering nobody) until the whole node stops. Its listener goes with it: here the
/// in-memory fabric lets a new driver take the failed NI's NID, where it said "already
/// attached" while the failed one lived.
#[test]
fn a_failed_nis_driver_is_dropped_at_once() {
    let clock = Arc::new(MonotonicClock::new());
    let fabric = MemFabric::new(clock.clone(), 1);
    let cfg = NodeConfig::new(1);
    let lnd = |n| MemLnd::new(&fabric, Nid::mem(1, n), MemLndConfig::for_node(&cfg));
    let (rigged, armed) = Rigged::new(lnd(1).unwrap(), Trick::Fail);
    let lnds: Vec<Box<dyn Lnd>> = vec![Box::new(rigged), Box::new(lnd(2).unwrap())];
    let mut driver = Driver::new(cfg.clone(), lnds).unwrap();
    driver.poll(&*clock, Some(Duration::ZERO)).unwrap();
    assert!(lnd(1).is_err(), "attached while its driver lives");
    armed.store(true, Ordering::SeqCst);
    driver.poll(&*clock, Some(Duration::ZERO)).unwrap();
    assert!(!driver.node().ni_is_up(NiId(0)));
    assert!(lnd(1).is_ok(), "its driver is gone");
    // The loop goes on with the other NI, and asks nothing of the failed one.
    driver.poll(&*clock, Some(Duration::ZERO)).unwrap();
    assert!(driver.node().ni_is_up(NiId(1)));
}

/// A wake that comes while the thread polls its LNDs (a submission racing it) is not
/// swallowed by that poll: the sleep that follows ends at once, not at its timeout.
#[test]
fn a_wake_while_polling_several_lnds_cuts_the_next_sleep_short() {
    let wakers = Arc::new(Mutex::new(Vec::new()));
    let (clock, mut driver, armed) = rigged_driver(Trick::WakeMidPoll(wakers.clone()));
    *wakers.lock().unwrap() = driver.wakers();
    armed.store(true, Ordering::SeqCst);
    let started = Instant::now();
    driver.poll(&*clock, Some(Duration::from_secs(5))).unwrap();
    let waited = started.elapsed();
    // Orders of magnitude: a swallowed wake sleeps the whole 5 s.
    assert!(
        waited < Duration::from_secs(1),
        "slept {waited:?} despite the wake"
    );
    // And with nothing to wake it, it does sleep.
    let started = Instant::now();
    driver
        .poll(&*clock, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
}

/// A PUT whose payload waits at its sender (to be fetched) arrives in the very poll that
/// finds its NI failed: the fetch it asked for ends once, failed with the NI's other work,
/// not a second time when the flush finds it queued for a dead NI (a driver "finishing a
/// fetch nobody asked for", counted as a protocol error).
#[test]
fn a_fetch_asked_for_as_its_ni_fails_ends_once() {
    let clock = Arc::new(MonotonicClock::new());
    let fabric = MemFabric::new(clock.clone(), 1);
    fabric.set_default_link(LinkFaults {
        delay: Duration::ZERO,
        ..LinkFaults::default()
    });
    let lnd = |cfg: &NodeConfig, n: u32| {
        let mut lnd_cfg = MemLndConfig::for_node(cfg);
        lnd_cfg.inline_max = Some(0); // every payload deferred
        MemLnd::new(&fabric, Nid::mem(n, 0), lnd_cfg).unwrap()
    };
    let (cfg_a, cfg_b) = (NodeConfig::new(1), NodeConfig::new(2));
    let mut a = Driver::new(cfg_a.clone(), vec![Box::new(lnd(&cfg_a, 1))]).unwrap();
    let (rigged, armed) = Rigged::new(lnd(&cfg_b, 2), Trick::FailAfterPoll);
    let mut b = Driver::new(cfg_b, vec![Box::new(rigged)]).unwrap();
    b.node_mut()
        .attach(OpId(100), MatchEntry::sink(4, 0, 64))
        .unwrap();
    let mut done = Vec::new();
    a.node_mut().put(clock.now(), OpId(1), put(true)).unwrap();
    run_until(&clock, &mut a, &mut b, &mut done, 1); // connected, one PUT fetched
    a.node_mut().put(clock.now(), OpId(2), put(true)).unwrap();
    a.flush();
    armed.store(true, Ordering::SeqCst);
    assert!(
        b.poll(&*clock, Some(Duration::ZERO)).is_err(),
        "its only NI"
    );
    b.flush();
    assert!(!b.node().ni_is_up(NiId(0)));
    assert_eq!(b.node().stats().fetch_failures, 1, "the fetch failed");
    assert_eq!(b.node().stats().protocol_errors, 0, "and only once");
}

/// The time read after a poll serves the next turn only if handling that poll was quick:
/// not after the poll found its NI failed, whose loss may end thousands of operations.
#[test]
fn after_an_ni_fails_the_next_turn_reads_the_clock_again() {
    let clock = Arc::new(MonotonicClock::new());
    let fabric = MemFabric::new(clock.clone(), 1);
    let cfg = NodeConfig::new(1);
    let lnd = MemLnd::new(&fabric, Nid::mem(1, 1), MemLndConfig::for_node(&cfg)).unwrap();
    let (rigged, armed) = Rigged::new(lnd, Trick::Fail);
    let mut driver = Driver::new(cfg, vec![Box::new(rigged)]).unwrap();
    driver.poll(&*clock, Some(Duration::ZERO)).unwrap();
    assert!(
        driver.take_polled_at().is_some(),
        "a quick poll's time is kept"
    );
    armed.store(true, Ordering::SeqCst);
    assert!(driver.poll(&*clock, Some(Duration::ZERO)).is_err());
    assert_eq!(driver.take_polled_at(), None);
}

/// An NI added to the node after its drivers were given has no driver: what the node
/// sends on it fails like a send on an NI that is down, rather than the flush panicking
/// on a missing driver.
#[test]
fn an_ni_without_a_driver_fails_its_sends_and_never_panics() {
    let (clock, mut a, _b) = pair(None, false);
    a.node_mut().add_ni(Nid::mem(1, 7)).unwrap();
    let now = clock.now();
    let put = PutRequest {
        dst: Nid::mem(2, 7),
        ..put(true)
    };
    a.node_mut().put(now, OpId(1), put).unwrap();
    for _ in 0..100 {
        a.node_mut().handle_timeout(clock.now());
        a.flush();
        a.poll(&*clock, Some(Duration::ZERO)).unwrap();
        while let Some(e) = a.node_mut().poll_event() {
            if let Event::Completed(c) = e {
                assert_eq!(c.op, OpId(1));
                assert!(c.result.is_err(), "{c:?}");
                return;
            }
        }
    }
    panic!("the PUT on the NI without a driver never completed");
}
