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
    /// The NIs posted to since their last `send_posted`: bit `i` for NI `i` (bit 63 for
    /// every NI from 63 on).
    posted_nis: u64,
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
            posted_nis: 0,
            polled_at: None,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    /// Drops the drivers, closing what they hold (sockets, queue pairs), for a node that is
    /// done ([`crate::Worker`] after its last turn): nothing may be polled, flushed or
    /// woken after this.
    pub(crate) fn close_lnds(&mut self) {
        self.lnds.clear();
        self.scratch.clear();
        self.posted_nis = 0;
        self.polled_at = None;
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
    /// What the drivers then already know (sends that completed as they were sent) goes
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
                return true;
            }
        }
        // The last round's frames leave too; their completions stay with the drivers.
        self.send_posted();
        true
    }

    /// A hand-over is complete: the drivers posted to since the last time send what they
    /// may have gathered (see [`Lnd::send_posted`]).
    fn send_posted(&mut self) {
        let posted = std::mem::take(&mut self.posted_nis);
        if posted == 0 {
            return;
        }
        for (i, lnd) in self.lnds.iter_mut().enumerate() {
            if posted & ni_bit(i) != 0 && self.node.ni_is_up(NiId(i)) {
                lnd.send_posted();
            }
        }
    }

    /// Ends the hand-over ([`Driver::send_posted`]), then feeds the node what the live
    /// drivers hold already (see [`Lnd::take_ready`]). True if there was anything.
    fn feed_ready(&mut self) -> bool {
        self.send_posted();
        let now = self.node.clock.unwrap_or_default();
        let mut any = false;
        for i in 0..self.lnds.len() {
            if !self.node.ni_is_up(NiId(i)) {
                continue;
            }
            self.lnds[i].take_ready(&mut self.scratch);
            any |= !self.scratch.is_empty();
            self.feed_scratch(now, NiId(i));
        }
        any
    }

    /// Hands the node the events of NI `ni`'s driver gathered in `scratch`.
    fn feed_scratch(&mut self, now: Time, ni: NiId) {
        // One event (or none) is the usual case: a drain's bookkeeping cost more than the
        // event's own handling in the loop around it (`lanet-bench cost`).
        if self.scratch.len() > 1 {
            for ev in self.scratch.drain(..) {
                self.node.handle_lnd_event(now, ni, ev);
            }
        } else if let Some(ev) = self.scratch.pop() {
            self.node.handle_lnd_event(now, ni, ev);
        }
    }

    /// Hands the node's requests and frames to the drivers, until it has none left (a
    /// frame for a down NI, failed here, may send its op another way). True if there were
    /// any.
    fn hand_over(&mut self) -> bool {
        // Most passes after the first find nothing: skip the polls then.
        if !self.node.has_output() {
            return false;
        }
        if self.node.nis.len() > self.lnds.len() {
            self.fail_driverless_nis();
        }
        let mut any = false;
        loop {
            let (handed, fed) = self.hand_over_once();
            any |= handed;
            if !fed {
                break;
            }
        }
        any
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
            self.posted_nis |= ni_bit(ni.0);
        }
        (any, fed)
    }

    /// NIs added to the node after its drivers were given (`node_mut().add_ni`) have
    /// none: they fail, as one whose driver failed does, before anything is asked of them
    /// (the hand-over would index past the drivers).
    #[cold]
    fn fail_driverless_nis(&mut self) {
        let now = self.node.clock.unwrap_or_default();
        for i in self.lnds.len()..self.node.nis.len() {
            let error = LndError::new(
                LndErrorKind::Closed,
                "no driver for this NI (added to the node after its drivers were given)",
            );
            self.node.ni_failed(now, NiId(i), error);
        }
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
                // Sleep as long as for an LND without a descriptor, rather than spin (and
                // log every turn) while the failure lasts.
                tracing::warn!("waiting on the NIs failed: {e}");
                std::thread::sleep(shorter(sleep, Some(UNWAITABLE_POLL)).unwrap_or_default());
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
        self.feed_scratch(now, ni);
        if let Err(e) = polled {
            // That NI is done; the node carries on with the others. Its loss may be much
            // work (every op through it): the next turn reads the clock again. Its driver
            // goes now, closing what it had open (see `failed`).
            self.node.ni_failed(now, ni, e.clone());
            self.polled_at = None;
            let nid = self.lnds[ni.0].nid();
            self.lnds[ni.0] = Box::new(failed::Failed::new(nid, e.clone()));
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

/// NI `i`'s bit in [`Driver::posted_nis`].
fn ni_bit(i: usize) -> u64 {
    1 << i.min(63)
}

mod failed;

#[cfg(test)]
mod tests;
