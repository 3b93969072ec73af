//! The glue between a [`Node`] and its LNDs: hands the node's frames and requests to the
//! drivers, and the drivers' events to the node. Both the threaded [`crate::Endpoint`] and
//! the deterministic [`crate::sim::Sim`] run nodes through this one loop body.
//!
//! With one LND the loop waits inside its `poll`. With several (a router's NIs), it polls
//! each without waiting and then sleeps on all of them at once ([`Lnd::wait_fd`]), so a
//! frame on any NI is handled in the same wake-up. An LND whose `poll` fails takes down its
//! NI only ([`Node::ni_failed`]); the loop gives up when none is left.

use std::sync::Arc;
use std::time::Duration;

use crate::config::NodeConfig;
use crate::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Readiness, Wake};
use crate::node::{LndRequest, NiId, Node};
use crate::op::OpError;
use crate::sys::{EventFd, WaitSet};
use crate::time::{Clock, Time};

/// How often an LND that offers nothing to sleep on is polled, when several share a thread.
const UNWAITABLE_POLL: Duration = Duration::from_millis(1);

/// Events a poll may bring for the time read after it to serve the next turn too.
const REUSE_TIME_UP_TO: usize = 4;

/// Hand-overs per flush: after each but the last, what completed at once goes to the node.
const FLUSH_ROUNDS: usize = 4;

/// A node and the drivers of its NIs (NI `i` is driver `i`).
pub struct Driver {
    node: Node,
    lnds: Vec<Box<dyn Lnd>>,
    /// With several LNDs, the thread's own wake-up: an LND's waker cuts short only that
    /// LND's wait, and a wake consumed by a poll that waits for nothing would be lost.
    wake: Option<Arc<EventFd>>,
    /// What it sleeps on with several LNDs, kept between sleeps.
    waits: WaitSet,
    scratch: Vec<LndEvent>,
    /// The time read after the last LND poll, for the caller's next turn: one clock read
    /// fewer per turn.
    polled_at: Option<Time>,
}

impl Driver {
    /// A node on `lnds`, one NI per driver, in order.
    pub fn new(cfg: NodeConfig, mut lnds: Vec<Box<dyn Lnd>>) -> Result<Driver, OpError> {
        cfg.validate()
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        if lnds.is_empty() {
            return Err(OpError::Invalid("a node needs at least one LND".into()));
        }
        let mut node = Node::new(cfg);
        for lnd in &lnds {
            node.add_ni(lnd.nid())?;
        }
        let mut wake = None;
        if lnds.len() > 1 {
            // Before the first poll: an LND may need to set itself up for a shared thread.
            for lnd in &mut lnds {
                lnd.wait_fd();
            }
            let fd = EventFd::new().map_err(|e| {
                OpError::Invalid(format!("no eventfd for a thread on several LNDs: {e}"))
            })?;
            wake = Some(Arc::new(fd));
        }
        Ok(Driver {
            node,
            wake,
            waits: WaitSet::default(),
            lnds,
            scratch: Vec::new(),
            polled_at: None,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// What cuts short a [`Driver::poll`] from another thread (each must be woken).
    pub fn wakers(&self) -> Vec<Arc<dyn Wake>> {
        match &self.wake {
            Some(fd) => vec![fd.clone() as Arc<dyn Wake>],
            None => self.lnds.iter().map(|l| l.waker()).collect(),
        }
    }

    /// Hands everything the node wants done to the drivers. True if there was anything.
    ///
    /// What the drivers then already know (sends that completed as they were posted) goes
    /// to the node at once, rather than at the next poll, which would otherwise be a turn
    /// of the caller's loop for that alone; and what that frees (credits) is handed over
    /// too, for a few rounds. The last round is always a hand-over, so the node keeps
    /// nothing for the drivers; what that round completed stays with them, and their next
    /// poll hands it over without waiting.
    pub fn flush(&mut self) -> bool {
        if !self.hand_over() {
            return false;
        }
        for _ in 1..FLUSH_ROUNDS {
            if !self.feed_ready() || !self.hand_over() {
                break;
            }
        }
        true
    }

    /// Feeds the node what the live drivers hold already (see [`Lnd::take_ready`]). True
    /// if there was anything.
    fn feed_ready(&mut self) -> bool {
        let now = self.node.clock.unwrap_or_default();
        let mut any = false;
        for i in 0..self.lnds.len() {
            if !self.node.ni_is_up(NiId(i)) {
                continue;
            }
            self.lnds[i].take_ready(&mut self.scratch);
            any |= !self.scratch.is_empty();
            for ev in self.scratch.drain(..) {
                self.node.handle_lnd_event(now, NiId(i), ev);
            }
        }
        any
    }

    /// Hands the node's requests and frames to the drivers, until it has none left (a
    /// frame for a down NI, failed here, may send its op another way). True if there were
    /// any.
    fn hand_over(&mut self) -> bool {
        let mut any = false;
        loop {
            let (handed, fed) = self.hand_over_once();
            any |= handed;
            if !fed {
                return any;
            }
        }
    }

    /// One pass: whether anything was handed over, and whether the node was fed an event
    /// (for a down NI), which may have given it more.
    fn hand_over_once(&mut self) -> (bool, bool) {
        let (mut any, mut fed) = (false, false);
        while let Some((ni, req)) = self.node.poll_request() {
            any = true;
            if !self.node.ni_is_up(ni) {
                // The NI is down: nothing to ask of its driver. A fetch must still end.
                if let LndRequest::Fetch { handle, .. } = req {
                    let now = self.node.clock.unwrap_or_default();
                    let error = LndError::new(LndErrorKind::Closed, "its NI is down");
                    let ev = LndEvent::Fetched {
                        handle,
                        result: Err(error),
                    };
                    self.node.handle_lnd_event(now, ni, ev);
                    fed = true;
                }
                continue;
            }
            let lnd = &mut self.lnds[ni.0];
            match req {
                LndRequest::Connect { peer, lane } => lnd.connect(peer, lane),
                LndRequest::Close { peer, lane, error } => lnd.close(peer, lane, error),
                LndRequest::Fetch { handle, sink } => lnd.fetch(handle, sink),
                LndRequest::Decline { handle } => lnd.decline(handle),
            }
        }
        while let Some((ni, tx)) = self.node.poll_transmit() {
            any = true;
            if !self.node.ni_is_up(ni) {
                // Queued before the NI went down: it ends here, with the error.
                let now = self.node.clock.unwrap_or_default();
                let error = LndError::new(LndErrorKind::Closed, "its NI is down");
                let ev = LndEvent::SendComplete {
                    token: tx.token,
                    result: Err(error),
                };
                self.node.handle_lnd_event(now, ni, ev);
                fed = true;
                continue;
            }
            self.lnds[ni.0].post(tx);
        }
        (any, fed)
    }

    /// The time the clock read right after the last poll of an LND, once, if that poll
    /// brought at most a few events and the clock is real: a turn that starts just after
    /// it can take it rather than read the clock again.
    pub fn take_polled_at(&mut self) -> Option<Time> {
        self.polled_at.take()
    }

    /// Polls the drivers once and feeds their events to the node, at the time `clock` reads
    /// after each poll, waiting up to `timeout` for the first event. Returns how many events
    /// were handled; `Err` once every driver has failed for good (the last failure).
    pub fn poll(
        &mut self,
        clock: &dyn Clock,
        timeout: Option<Duration>,
    ) -> Result<usize, (NiId, LndError)> {
        if self.lnds.len() == 1 {
            return self.poll_one(NiId(0), clock, timeout);
        }
        let handled = self.poll_all(clock)?;
        if handled > 0 || timeout == Some(Duration::ZERO) {
            return Ok(handled);
        }
        // Nothing now: sleep on every NI at once, no longer than each allows.
        let Driver {
            node,
            lnds,
            wake,
            waits,
            ..
        } = self;
        let wake = wake
            .as_ref()
            .expect("a driver of several LNDs has its own wake-up");
        waits.clear();
        waits.add(wake.fd());
        let mut sleep = timeout;
        let mut ready = false;
        for (i, lnd) in lnds.iter_mut().enumerate() {
            if !node.ni_is_up(NiId(i)) {
                continue;
            }
            match lnd.wait_fd() {
                Some(fd) => waits.add(fd),
                None => sleep = shorter(sleep, Some(UNWAITABLE_POLL)),
            }
            match lnd.prepare_wait() {
                Readiness::Ready => ready = true,
                Readiness::Sleep(within) => sleep = shorter(sleep, within),
            }
        }
        if !ready {
            if let Err(e) = waits.wait(sleep) {
                tracing::warn!("waiting on the NIs failed: {e}");
            }
            // The caller looks at what it was woken for once this returns; a wake from
            // now on makes the next sleep return at once.
            wake.drain();
        }
        self.poll_all(clock)
    }

    /// Polls every live driver without waiting.
    fn poll_all(&mut self, clock: &dyn Clock) -> Result<usize, (NiId, LndError)> {
        let mut handled = 0;
        let mut last_failure = None;
        for i in 0..self.lnds.len() {
            if !self.node.ni_is_up(NiId(i)) {
                continue;
            }
            match self.poll_one(NiId(i), clock, Some(Duration::ZERO)) {
                Ok(n) => handled += n,
                // Counted as work: what the NI's loss set going in the node (its frames
                // rerouted, status pushed through the others) must go out before a sleep.
                Err(failure) => {
                    handled += 1;
                    last_failure = Some(failure);
                }
            }
        }
        match last_failure {
            Some(failure) if !(0..self.lnds.len()).any(|i| self.node.ni_is_up(NiId(i))) => {
                Err(failure)
            }
            _ => Ok(handled),
        }
    }

    fn poll_one(
        &mut self,
        ni: NiId,
        clock: &dyn Clock,
        wait: Option<Duration>,
    ) -> Result<usize, (NiId, LndError)> {
        let polled = self.lnds[ni.0].poll(&mut self.scratch, wait);
        let now = clock.now();
        let n = self.scratch.len();
        // After a batch, handling it takes long enough that the next turn reads the clock;
        // and a virtual clock moves only when told, maybe before that turn.
        self.polled_at = (n <= REUSE_TIME_UP_TO && !clock.is_virtual()).then_some(now);
        for ev in self.scratch.drain(..) {
            self.node.handle_lnd_event(now, ni, ev);
        }
        if let Err(e) = polled {
            // That NI is done; the node carries on with the others.
            self.node.ni_failed(now, ni, e.clone());
            return Err((ni, e));
        }
        Ok(n)
    }
}

/// The shorter of two optional waits (`None`: unbounded).
fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;
    use crate::lane::Lane;
    use crate::lnd::Transmit;
    use crate::mem::{MemFabric, MemLnd, MemLndConfig};
    use crate::nid::Nid;
    use crate::time::MonotonicClock;

    /// An in-memory LND that, at its next poll, does what a submitter racing the driver
    /// thread does: wakes the thread while it is still polling, not yet asleep.
    struct WakesMidPoll {
        inner: MemLnd,
        wakers: Arc<Mutex<Vec<Arc<dyn Wake>>>>,
        armed: Arc<AtomicBool>,
    }

    impl Lnd for WakesMidPoll {
        fn nid(&self) -> Nid {
            self.inner.nid()
        }
        fn connect(&mut self, peer: Nid, lane: Lane) {
            self.inner.connect(peer, lane)
        }
        fn post(&mut self, tx: Transmit) {
            self.inner.post(tx)
        }
        fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
            self.inner.take_ready(events)
        }
        fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
            self.inner.close(peer, lane, error)
        }
        fn poll(
            &mut self,
            events: &mut Vec<LndEvent>,
            timeout: Option<Duration>,
        ) -> Result<(), LndError> {
            if self.armed.swap(false, Ordering::SeqCst) {
                for w in self.wakers.lock().unwrap().iter() {
                    w.wake();
                }
            }
            self.inner.poll(events, timeout)
        }
        fn waker(&self) -> Arc<dyn Wake> {
            self.inner.waker()
        }
        fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
            self.inner.wait_fd()
        }
        fn prepare_wait(&mut self) -> Readiness {
            self.inner.prepare_wait()
        }
    }

    /// A frame that its driver sends as it is posted (here: into the in-memory fabric) is
    /// done when `flush` returns: its completion reaches the node within the flush, not at
    /// the next poll (a turn of the loop for that alone).
    #[test]
    fn a_send_that_completes_as_it_is_posted_ends_within_the_flush() {
        use crate::mem::LinkFaults;
        use crate::op::{Event, MatchEntry, OpId, OpOutcome, PutRequest};

        let clock = Arc::new(MonotonicClock::new());
        let fabric = MemFabric::new(clock.clone(), 1);
        fabric.set_default_link(LinkFaults {
            delay: Duration::ZERO,
            ..LinkFaults::default()
        });
        let driver = |n: u32| {
            let cfg = NodeConfig::new(u64::from(n));
            let lnd = MemLnd::new(&fabric, Nid::mem(n, 0), MemLndConfig::for_node(&cfg)).unwrap();
            Driver::new(cfg, vec![Box::new(lnd)]).unwrap()
        };
        let (mut a, mut b) = (driver(1), driver(2));
        b.node_mut()
            .attach(OpId(100), MatchEntry::sink(4, 0, 64))
            .unwrap();
        let put = PutRequest {
            lane: Lane::Data,
            dst: Nid::mem(2, 0),
            portal: 4,
            match_bits: 0,
            payload: bytes::Bytes::from_static(b"ping"),
            timeout: None,
            on_peer_down: Default::default(),
            ack: true,
        };
        // Runs both until `a`'s op `id` completes.
        let run_until_done = |a: &mut Driver, b: &mut Driver, id: OpId| {
            for _ in 0..10_000 {
                for d in [&mut *a, &mut *b] {
                    d.node_mut().handle_timeout(clock.now());
                    d.flush();
                    d.poll(&*clock, Some(Duration::ZERO)).unwrap();
                }
                while let Some(e) = a.node_mut().poll_event() {
                    if let Event::Completed(c) = e {
                        assert_eq!(c.op, id);
                        assert_eq!(c.result, Ok(OpOutcome::Put { mlen: 4 }));
                        return;
                    }
                }
            }
            panic!("{id} did not complete");
        };
        // The first PUT sets the connection up.
        a.node_mut().put(clock.now(), OpId(1), put.clone()).unwrap();
        run_until_done(&mut a, &mut b, OpId(1));
        // The second goes out at once, and the flush that posts it also ends its send.
        a.node_mut().put(clock.now(), OpId(2), put).unwrap();
        assert_eq!(a.node().footprint().in_lnd, 1, "the PUT is for its driver");
        assert!(a.flush(), "the PUT was handed over");
        let fp = a.node().footprint();
        assert_eq!(fp.in_lnd, 0, "its send completed within the flush");
        assert_eq!(fp.ops, 1, "the PUT is still live: it awaits its ACK");
        run_until_done(&mut a, &mut b, OpId(2));
    }

    /// Sends that complete as they are posted free NI credits, which send the next queued
    /// frames, and so on: however long that chain, a flush leaves nothing in the node for
    /// the drivers, and what it did not take yet, the next poll hands over at once.
    #[test]
    fn a_flush_leaves_no_frame_behind_however_many_complete_at_once() {
        use crate::mem::LinkFaults;
        use crate::op::{Event, MatchEntry, OpId, OpOutcome, PutRequest};

        let clock = Arc::new(MonotonicClock::new());
        let fabric = MemFabric::new(clock.clone(), 1);
        fabric.set_default_link(LinkFaults {
            delay: Duration::ZERO,
            ..LinkFaults::default()
        });
        let driver = |n: u32| {
            let mut cfg = NodeConfig::new(u64::from(n));
            cfg.lanes[Lane::Data].ni_credits = 1; // one frame in a driver at a time
            let lnd = MemLnd::new(&fabric, Nid::mem(n, 0), MemLndConfig::for_node(&cfg)).unwrap();
            Driver::new(cfg, vec![Box::new(lnd)]).unwrap()
        };
        let (mut a, mut b) = (driver(1), driver(2));
        b.node_mut()
            .attach(OpId(100), MatchEntry::sink(4, 0, 64))
            .unwrap();
        let put = |ack| PutRequest {
            lane: Lane::Data,
            dst: Nid::mem(2, 0),
            portal: 4,
            match_bits: 0,
            payload: bytes::Bytes::from_static(b"ping"),
            timeout: None,
            on_peer_down: Default::default(),
            ack,
        };
        let mut done = Vec::new();
        let turn = |a: &mut Driver, b: &mut Driver, done: &mut Vec<OpId>| {
            for d in [&mut *a, &mut *b] {
                d.node_mut().handle_timeout(clock.now());
                d.flush();
                d.poll(&*clock, Some(Duration::ZERO)).unwrap();
            }
            while let Some(e) = a.node_mut().poll_event() {
                if let Event::Completed(c) = e {
                    assert!(c.result.is_ok(), "{c:?}");
                    done.push(c.op);
                }
            }
        };
        // Up first, with one PUT answered.
        a.node_mut().put(clock.now(), OpId(1), put(true)).unwrap();
        for _ in 0..10_000 {
            if !done.is_empty() {
                break;
            }
            turn(&mut a, &mut b, &mut done);
        }
        assert_eq!(done, [OpId(1)]);
        // More PUTs without ACK than a flush has rounds: each ends as it is posted.
        let n = 3 * FLUSH_ROUNDS as u64;
        for id in 2..2 + n {
            a.node_mut().put(clock.now(), OpId(id), put(false)).unwrap();
        }
        a.node_mut().handle_timeout(clock.now());
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
        // What the flush left, the next poll hands over without waiting (orders of
        // magnitude: a poll that waited would take its whole 5 s).
        let started = Instant::now();
        let handled = a.poll(&*clock, Some(Duration::from_secs(5))).unwrap();
        assert!(handled >= 1 && started.elapsed() < Duration::from_secs(1));
        // The rest go, every one.
        for _ in 0..10_000 {
            if done.len() == 1 + n as usize {
                break;
            }
            turn(&mut a, &mut b, &mut done);
        }
        assert_eq!(done, (1..2 + n).map(OpId).collect::<Vec<_>>());
    }

    /// An in-memory LND whose next poll fails for good, when armed.
    struct FailsWhenArmed {
        inner: MemLnd,
        armed: Arc<AtomicBool>,
    }

    impl Lnd for FailsWhenArmed {
        fn nid(&self) -> Nid {
            self.inner.nid()
        }
        fn connect(&mut self, peer: Nid, lane: Lane) {
            self.inner.connect(peer, lane)
        }
        fn post(&mut self, tx: Transmit) {
            self.inner.post(tx)
        }
        fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
            self.inner.close(peer, lane, error)
        }
        fn poll(
            &mut self,
            events: &mut Vec<LndEvent>,
            timeout: Option<Duration>,
        ) -> Result<(), LndError> {
            if self.armed.load(Ordering::SeqCst) {
                return Err(LndError::new(LndErrorKind::Resource, "the device is gone"));
            }
            self.inner.poll(events, timeout)
        }
        fn waker(&self) -> Arc<dyn Wake> {
            self.inner.waker()
        }
        fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
            self.inner.wait_fd()
        }
        fn prepare_wait(&mut self) -> Readiness {
            self.inner.prepare_wait()
        }
    }

    /// One of several NIs fails: the poll that finds it returns at once, so that what its
    /// loss set going in the node (an `NiDown` event, ops sent another way) is taken up
    /// before the thread sleeps, not after the poll's whole timeout.
    #[test]
    fn a_failing_ni_ends_the_poll_that_finds_it() {
        let clock = Arc::new(MonotonicClock::new());
        let fabric = MemFabric::new(clock.clone(), 1);
        let cfg = NodeConfig::new(1);
        let lnd = |n| MemLnd::new(&fabric, Nid::mem(1, n), MemLndConfig::for_node(&cfg)).unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let failing = FailsWhenArmed {
            inner: lnd(1),
            armed: armed.clone(),
        };
        let mut driver =
            Driver::new(cfg.clone(), vec![Box::new(failing), Box::new(lnd(2))]).unwrap();
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
            .any(|e| matches!(e, crate::op::Event::NiDown { .. }));
        assert!(down, "the node said the NI went down");
    }

    /// A wake that comes while the thread polls its LNDs (a submission racing it) is not
    /// swallowed by that poll: the sleep that follows ends at once, not at its timeout.
    #[test]
    fn a_wake_while_polling_several_lnds_cuts_the_next_sleep_short() {
        let clock = Arc::new(MonotonicClock::new());
        let fabric = MemFabric::new(clock.clone(), 1);
        let cfg = NodeConfig::new(1);
        let lnd = |n| MemLnd::new(&fabric, Nid::mem(1, n), MemLndConfig::for_node(&cfg)).unwrap();
        let wakers = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(AtomicBool::new(false));
        let racer = WakesMidPoll {
            inner: lnd(1),
            wakers: wakers.clone(),
            armed: armed.clone(),
        };
        let mut driver = Driver::new(cfg.clone(), vec![Box::new(racer), Box::new(lnd(2))]).unwrap();
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
}
