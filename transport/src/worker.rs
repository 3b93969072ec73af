//! The worker: a node and its LNDs driven by the application's own thread, as a UCX worker
//! or eRPC's event loop is. There is no driver thread, so no channel to it and no thread
//! hand-off per operation: the application submits with `&mut self`, and [`Worker::progress`]
//! does the node's and the drivers' work and hands the events back.
//!
//! An [`Endpoint`](crate::Endpoint) is the same loop on a thread of its own, which any
//! thread may submit to; a worker suits a server that polls one transport per thread and
//! answers requests as it handles them. Its rules are the endpoint's: every operation ends
//! in exactly one [`Event::Completed`], after [`Worker::shutdown`] too (with `Cancelled`).
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use lanet::mem::{MemFabric, MemLnd, MemLndConfig};
//! use lanet::op::{MatchEntry, PutRequest};
//! use lanet::time::MonotonicClock;
//! use lanet::{Event, Lane, Nid, NodeConfig, OpOutcome, Worker};
//!
//! let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
//! let start = |n: u32| {
//!     let cfg = NodeConfig::new(n.into());
//!     let lnd = MemLnd::new(&fabric, Nid::mem(n, 0), MemLndConfig::for_node(&cfg)).unwrap();
//!     Worker::new(cfg, vec![Box::new(lnd)]).unwrap()
//! };
//! let (mut a, mut b) = (start(1), start(2));
//! b.attach(MatchEntry::sink(4, 0x10, 1024));
//! let op = a.put(PutRequest { lane: Lane::Data,
//!     dst: Nid::mem(2, 0), portal: 4, match_bits: 0x10,
//!     payload: Bytes::from_static(b"hello"), timeout: None,
//!     on_peer_down: Default::default(), ack: true,
//! }).unwrap();
//! // One thread drives both here; each would usually have its own.
//! let mut events = Vec::new();
//! let done = loop {
//!     b.progress(Some(std::time::Duration::ZERO), &mut Vec::new());
//!     a.progress(Some(std::time::Duration::from_millis(1)), &mut events);
//!     if let Some(Event::Completed(c)) = events.pop() { break c; }
//! };
//! assert_eq!((done.op, done.result), (op, Ok(OpOutcome::Put { mlen: 5 })));
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::config::NodeConfig;
use crate::driver::Driver;
use crate::endpoint::EndpointError;
use crate::lnd::Lnd;
use crate::nid::Nid;
use crate::node::{Node, SubmitError};
use crate::op::{Event, GetRequest, MatchEntry, OpError, OpId, PingRequest, PutRequest};
use crate::time::{Clock, MonotonicClock, Time};

/// A node and its LNDs, driven by the thread that owns it (see the module).
pub struct Worker {
    driver: Driver,
    clock: Arc<dyn Clock>,
    max_payload: u32,
    /// The next id handed out: the worker chooses them, so none is ever in use twice.
    next_op: u64,
    /// When the node next has a timer due (as of the last turn), if ever.
    due: Option<Time>,
    /// Set when the LNDs all failed: the worker then only completes what is submitted.
    failed: bool,
    /// Something was asked of the node since its last turn: the next `progress` starts
    /// with a turn, to send it before waiting. (A turn leaves nothing behind it.)
    asked: bool,
}

impl Worker {
    /// A worker on `lnds`, one NI per driver in order, on the monotonic clock.
    pub fn new(cfg: NodeConfig, lnds: Vec<Box<dyn Lnd>>) -> Result<Worker, EndpointError> {
        Worker::with_clock(cfg, lnds, Arc::new(MonotonicClock::new()))
    }

    /// A worker on `lnds` whose node reads `clock`.
    pub fn with_clock(
        cfg: NodeConfig,
        lnds: Vec<Box<dyn Lnd>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Worker, EndpointError> {
        let max_payload = cfg.max_payload;
        let driver = Driver::new(cfg, lnds).map_err(|e| EndpointError::Start(e.to_string()))?;
        Ok(Worker {
            driver,
            clock,
            max_payload,
            next_op: 1,
            due: Some(Time::ZERO),
            failed: false,
            asked: true,
        })
    }

    /// This worker's NIDs, one per NI.
    pub fn nids(&self) -> impl Iterator<Item = Nid> + '_ {
        self.driver.node().nids()
    }

    /// The node, for what it reports (statistics, routes, health).
    pub fn node(&self) -> &Node {
        self.driver.node()
    }

    /// Sends a PUT; its completion comes from a later [`Worker::progress`].
    pub fn put(&mut self, req: PutRequest) -> Result<OpId, EndpointError> {
        req.validate(self.max_payload)
            .map_err(EndpointError::Invalid)?;
        Ok(self.submit(|node, now, id| node.put(now, id, req)))
    }

    pub fn get(&mut self, req: GetRequest) -> Result<OpId, EndpointError> {
        req.validate(self.max_payload)
            .map_err(EndpointError::Invalid)?;
        Ok(self.submit(|node, now, id| node.get(now, id, req)))
    }

    pub fn ping(&mut self, req: PingRequest) -> OpId {
        self.submit(|node, now, id| node.ping(now, id, req))
    }

    /// Posts a receive buffer or GET source. It completes when unlinked.
    pub fn attach(&mut self, entry: MatchEntry) -> OpId {
        self.submit(|node, _, id| node.attach(id, entry))
    }

    /// Cancels an operation or unlinks an entry (nothing if it already completed).
    pub fn cancel(&mut self, op: OpId) {
        self.asked = true;
        self.driver.node_mut().cancel(op);
    }

    /// Hands the node an operation under the next id, at the time now (its deadline counts
    /// from it, however long ago the last turn was).
    fn submit(
        &mut self,
        send: impl FnOnce(&mut Node, Time, OpId) -> Result<(), SubmitError>,
    ) -> OpId {
        self.asked = true;
        let id = OpId(self.next_op);
        // Bit 62 marks the node's own ids (failover attempts): ours stay below it.
        self.next_op = (self.next_op + 1) % (1 << 62);
        let now = self.clock.now();
        let submitted = send(self.driver.node_mut(), now, id);
        debug_assert!(submitted.is_ok(), "a fresh id: {submitted:?}");
        id
    }

    /// One turn of work: sends what was submitted, hands the drivers what the node wants
    /// done, handles what they have and the timers due, and appends the events to
    /// `events`. If there were none, it waits for the drivers up to `timeout` (`None`:
    /// until something happens; the node's next timer bounds it either way) and handles
    /// what came. Returns how many events it appended.
    ///
    /// Events handed back count as consumed: a node holds back deliveries only while its
    /// application has not taken them.
    pub fn progress(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> usize {
        let before = events.len();
        let now = self.clock.now();
        if self.asked || self.due.is_some_and(|d| d <= now) {
            self.turn(now, events);
        }
        let mut wait = if events.len() > before {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        if let Some(due) = self.due {
            let until_due = due.saturating_since(now);
            wait = Some(wait.map_or(until_due, |w| w.min(until_due)));
        }
        if !self.failed {
            if let Err((_, e)) = self.driver.poll(&*self.clock, wait) {
                self.fail(format!("every LND failed; the last: {e}"), events);
                return events.len() - before;
            }
            let now = self
                .driver
                .take_polled_at()
                .unwrap_or_else(|| self.clock.now());
            self.turn(now, events);
        }
        events.len() - before
    }

    /// The node's work at `now` (its timers if due), the drivers' hand-over, the events.
    fn turn(&mut self, now: Time, events: &mut Vec<Event>) {
        self.asked = false;
        let node = self.driver.node_mut();
        if self.due.is_some_and(|d| d <= now) {
            node.handle_timeout(now);
        } else {
            node.set_time(now);
        }
        self.driver.flush();
        let node = self.driver.node_mut();
        let mut delivered = 0;
        while let Some(e) = node.poll_event() {
            delivered += usize::from(e.is_delivery());
            events.push(e);
        }
        node.deliveries_consumed(delivered);
        self.due = node.poll_timeout();
    }

    /// Every driver failed for good: everything live completes with the error, and so does
    /// everything submitted later; [`Event::EndpointFailed`] says why, once.
    fn fail(&mut self, reason: String, events: &mut Vec<Event>) {
        tracing::error!("the worker stops: {reason}");
        self.failed = true;
        self.driver.node_mut().abort(OpError::Local(reason.clone()));
        self.turn(self.clock.now(), events);
        events.push(Event::EndpointFailed { reason });
    }

    /// Completes every live operation with `Cancelled` (their events are appended), and
    /// every one submitted later too. The drivers close with the worker.
    pub fn shutdown(&mut self, events: &mut Vec<Event>) {
        self.driver.node_mut().shutdown();
        self.turn(self.clock.now(), events);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let live = self.driver.node().live_ops();
        if live > 0 {
            tracing::warn!(
                live,
                "a worker dropped with operations live: their completions are lost \
                 (Worker::shutdown hands them back)"
            );
        }
    }
}

#[cfg(test)]
mod tests;
