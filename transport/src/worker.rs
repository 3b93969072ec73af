//! The worker: a node and its LNDs driven by the application's own thread, as a UCX worker
//! or eRPC's event loop is. There is no driver thread, so no channel to it and no thread
//! hand-off per operation: the application submits with `&mut self`, and [`Worker::progress`]
//! does the node's and the drivers' work and hands the events back.
//!
//! An [`Endpoint`](crate::Endpoint) is the same loop on a thread of its own, which any
//! thread may submit to; a worker suits a server that polls one transport per thread and
//! answers requests as it handles them. It reports with the endpoint's types
//! ([`Event`], [`EndpointError`]) and keeps the endpoint's promise: every operation it
//! accepted ends in exactly one [`Event::Completed`], handed back by `progress`, or by
//! [`Worker::shutdown`] (with `Cancelled`) for what is still live then. After a shutdown,
//! or once every driver failed for good ([`Event::EndpointFailed`]), it refuses
//! submissions and its drivers are closed. Two ways to lose completions remain, both the
//! application's to see: dropping a worker without `shutdown` (logged, with the count),
//! and a panic inside `progress`, which unwinds into the application's own thread.
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
//! b.attach(MatchEntry::sink(4, 0x10, 1024)).unwrap();
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
use crate::nid::{Net, Nid};
use crate::node::{Node, Route, SubmitError};
use crate::op::{Event, GetRequest, MatchEntry, OpError, OpId, PingRequest, PutRequest};
use crate::time::{Clock, MonotonicClock, Time};

/// A node and its LNDs, driven by the thread that owns it (see the module).
pub struct Worker {
    driver: Driver,
    clock: Arc<dyn Clock>,
    /// The next id handed out: the worker chooses them, in turn (see `submit`).
    next_op: u64,
    /// When the node next has a timer due (as of the last turn), if ever.
    due: Option<Time>,
    /// Why it stopped (shut down, or every driver failed): it then refuses submissions,
    /// and its drivers are closed.
    stopped: Option<EndpointError>,
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
        let driver = Driver::new(cfg, lnds).map_err(|e| EndpointError::Start(e.to_string()))?;
        Ok(Worker {
            driver,
            clock,
            next_op: 1,
            due: Some(Time::ZERO),
            stopped: None,
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
        req.validate(self.node().config().max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|node, now, id| node.put(now, id, req))
    }

    pub fn get(&mut self, req: GetRequest) -> Result<OpId, EndpointError> {
        req.validate(self.node().config().max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|node, now, id| node.get(now, id, req))
    }

    pub fn ping(&mut self, req: PingRequest) -> Result<OpId, EndpointError> {
        self.submit(|node, now, id| node.ping(now, id, req))
    }

    /// Posts a receive buffer or GET source. It completes when unlinked.
    pub fn attach(&mut self, entry: MatchEntry) -> Result<OpId, EndpointError> {
        self.submit(|node, _, id| node.attach(id, entry))
    }

    /// Cancels an operation or unlinks an entry (nothing if it already completed).
    pub fn cancel(&mut self, op: OpId) -> Result<(), EndpointError> {
        self.node_for_request()?.cancel(op);
        Ok(())
    }

    /// Adds a route: frames to `route.net` may go through `route.gateway`.
    pub fn add_route(&mut self, route: Route) -> Result<(), EndpointError> {
        self.node_for_request()?
            .add_route(route)
            .map_err(|e| EndpointError::Invalid(e.to_string()))
    }

    /// Removes a route; false if there was none.
    pub fn remove_route(&mut self, net: Net, gateway: Nid) -> Result<bool, EndpointError> {
        Ok(self.node_for_request()?.remove_route(net, gateway))
    }

    /// Has the health monitor watch `peer` (see [`Event::PeerDown`]).
    pub fn watch(&mut self, peer: Nid) -> Result<(), EndpointError> {
        let now = self.clock.now();
        self.node_for_request()?
            .watch(now, peer)
            .map_err(|e| EndpointError::Invalid(e.to_string()))
    }

    pub fn unwatch(&mut self, peer: Nid) -> Result<(), EndpointError> {
        let now = self.clock.now();
        self.node_for_request()?.unwatch(now, peer);
        Ok(())
    }

    /// The node, for a request of the application's, unless the worker has stopped; the
    /// next `progress` starts with a turn, to send what the request gave it to send.
    fn node_for_request(&mut self) -> Result<&mut Node, EndpointError> {
        if let Some(why) = &self.stopped {
            return Err(why.clone());
        }
        self.asked = true;
        Ok(self.driver.node_mut())
    }

    /// Hands the node an operation under the next id, at the time now (its deadline counts
    /// from it, however long ago the last turn was).
    fn submit(
        &mut self,
        send: impl FnOnce(&mut Node, Time, OpId) -> Result<(), SubmitError>,
    ) -> Result<OpId, EndpointError> {
        let id = OpId(self.next_op);
        // Bit 62 marks the node's own ids (failover attempts): ours stay below it, and
        // come round again only after 2^62 submissions (146 years at 10^9 a second).
        self.next_op = (self.next_op + 1) % (1 << 62);
        let now = self.clock.now();
        let submitted = send(self.node_for_request()?, now, id);
        debug_assert!(submitted.is_ok(), "a fresh id: {submitted:?}");
        Ok(id)
    }

    /// One turn of work: sends what was submitted, hands the drivers what the node wants
    /// done, handles what they have and the timers due, and appends the events to
    /// `events`. If there were none, it waits for the drivers up to `timeout` (`None`:
    /// until something happens; the node's next timer bounds it either way) and handles
    /// what came. Returns how many events it appended. Once the worker has stopped, it
    /// only waits (nothing more comes: see [`Worker::shutdown`]).
    ///
    /// Events handed back count as taken, as those an endpoint hands its callback do: the
    /// node refuses deliveries (`Busy`) only while more than `max_undelivered` are handed
    /// out and not taken, so a worker's application bounds its own backlog.
    pub fn progress(&mut self, timeout: Option<Duration>, events: &mut Vec<Event>) -> usize {
        let before = events.len();
        if self.stopped.is_some() {
            // No drivers to wait on: wait as asked, for nothing (a loop that keeps calling
            // does not spin); with no bound, return at once rather than never.
            if let Some(wait) = timeout {
                std::thread::sleep(wait);
            }
            return 0;
        }
        let mut now = self.clock.now();
        if self.asked || self.due.is_some_and(|d| d <= now) {
            self.turn(now, events);
            if events.len() == before {
                // The turn took time: the wait ends at the node's timer, not past it.
                now = self.clock.now();
            }
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
        if let Err((_, e)) = self.driver.poll(&*self.clock, wait) {
            self.fail(format!("every LND failed; the last: {e}"), events);
            return events.len() - before;
        }
        let now = self
            .driver
            .take_polled_at()
            .unwrap_or_else(|| self.clock.now());
        self.turn(now, events);
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

    /// Every driver failed for good: everything live completes with the error, and
    /// [`Event::EndpointFailed`] says why, once; later submissions are refused.
    fn fail(&mut self, reason: String, events: &mut Vec<Event>) {
        tracing::error!("the worker stops: {reason}");
        self.driver.node_mut().abort(OpError::Local(reason.clone()));
        self.stop(EndpointError::Failed(reason.clone()), events);
        events.push(Event::EndpointFailed { reason });
    }

    /// Completes every live operation with `Cancelled`, appending their events, and
    /// closes the drivers; later submissions are refused (`ShutDown`). A request already
    /// sent may still reach its target (see [`crate::Node::cancel`]). What the node
    /// reports stays readable.
    pub fn shutdown(&mut self, events: &mut Vec<Event>) {
        if self.stopped.is_some() {
            return;
        }
        // What is already past its deadline ends as timed out, not cancelled, as at an
        // endpoint's shutdown.
        // Asked of the node, not `due`: that is as of the last turn, and an op submitted
        // since may be past its deadline.
        let now = self.clock.now();
        let node = self.driver.node_mut();
        if node.poll_timeout().is_some_and(|d| d <= now) {
            node.handle_timeout(now);
        }
        node.shutdown();
        self.stop(EndpointError::ShutDown, events);
    }

    /// The last turn of a node shut down or aborted (what it sends still goes, as with an
    /// endpoint's last flush; no timer of a stopped node runs), then the drivers go.
    fn stop(&mut self, why: EndpointError, events: &mut Vec<Event>) {
        self.due = None;
        self.turn(self.clock.now(), events);
        self.driver.close_lnds();
        self.stopped = Some(why);
        self.due = None;
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
