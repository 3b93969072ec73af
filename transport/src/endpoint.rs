//! The endpoint: the API a server links against.
//!
//! An endpoint owns a [`Node`](crate::node::Node) and its LNDs on one driver thread. Any
//! number of threads submit through cloned handles (commands travel on a bounded crossbeam
//! channel, so a flood of submissions blocks its submitters rather than growing memory) and
//! receive events from a channel or a callback. Every operation submitted ends in exactly one
//! [`Event::Completed`], including at shutdown (`Cancelled`).
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use lanet::mem::{MemFabric, MemLnd, MemLndConfig};
//! use lanet::op::{MatchEntry, PutRequest};
//! use lanet::time::MonotonicClock;
//! use lanet::{Endpoint, Event, Lane, Nid, NodeConfig, OpOutcome};
//!
//! let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
//! let start = |n: u32| {
//!     let cfg = NodeConfig::new(n.into());
//!     let lnd = MemLnd::new(&fabric, Nid::mem(n, 0), MemLndConfig::for_node(&cfg)).unwrap();
//!     Endpoint::builder(cfg).lnd(lnd).start().unwrap()
//! };
//! let (a, b) = (start(1), start(2));
//! b.attach(MatchEntry::sink(4, 0x10, 1024)).unwrap();
//! let put = PutRequest { lane: Lane::Data,
//!     dst: Nid::mem(2, 0), portal: 4, match_bits: 0x10,
//!     payload: Bytes::from_static(b"hello"), timeout: None,
//!     on_peer_down: Default::default(), ack: true,
//! };
//! let op = a.put(put).unwrap();
//! match a.recv_event(None) {
//!     Some(Event::Completed(c)) => assert_eq!((c.op, c.result), (op, Ok(OpOutcome::Put { mlen: 5 }))),
//!     other => panic!("{other:?}"),
//! }
//! ```

mod driver_thread;
mod gate;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::config::NodeConfig;
use crate::driver::Driver;
use crate::health::{HealthStats, PeerHealth};
use crate::lnd::{Lnd, Wake};
use crate::nid::Nid;
use crate::node::{NodeStats, Route};
use crate::op::{Completion, Event, GetRequest, MatchEntry, OpId, PingRequest, PutRequest};
use crate::time::{Clock, MonotonicClock};
use driver_thread::{Callback, Command, DriverThread, Sink};
use gate::Gate;

/// Why the endpoint did not take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the endpoint is shut down")]
    ShutDown,
    /// The endpoint failed (see [`Event::EndpointFailed`]) and takes no more work.
    #[error("the endpoint failed: {0}")]
    Failed(String),
    #[error("the endpoint could not start: {0}")]
    Start(String),
    /// Only from the driver thread itself (an event callback): it cannot wait for itself.
    #[error("the command queue is full; submit from another thread or raise command_capacity")]
    Busy,
}

/// The most commands an endpoint's queue may hold ([`EndpointBuilder::command_capacity`]):
/// the queue is allocated whole when the endpoint starts.
pub const MAX_COMMAND_CAPACITY: usize = 1 << 20;

/// Configures and starts an [`Endpoint`].
pub struct EndpointBuilder {
    cfg: NodeConfig,
    lnds: Vec<Box<dyn Lnd>>,
    clock: Arc<dyn Clock>,
    callback: Option<Callback>,
    command_capacity: usize,
    realtime: Option<u8>,
    routes: Vec<Route>,
    groups: Vec<crate::node::FailoverGroup>,
}

impl EndpointBuilder {
    /// Adds an NI, served by `lnd`. One per net.
    pub fn lnd(mut self, lnd: impl Lnd + 'static) -> Self {
        self.lnds.push(Box::new(lnd));
        self
    }

    /// Adds an NI whose driver was chosen at run time.
    pub fn boxed_lnd(mut self, lnd: Box<dyn Lnd>) -> Self {
        self.lnds.push(lnd);
        self
    }

    /// The clock the driver thread reads (the monotonic clock by default).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Hands events to `f` on the driver thread instead of the event channel. `f` must be
    /// quick (the driver waits for it) and may submit, but not query (`stats`, `health`).
    /// A panic in `f` fails the endpoint, as any panic on the driver thread does.
    pub fn on_event(mut self, f: impl FnMut(Event) + Send + 'static) -> Self {
        self.callback = Some(Box::new(f));
        self
    }

    /// Runs the driver thread at real-time priority (`SCHED_RR`, `priority` 1..=99), so that
    /// on a host whose CPUs are saturated it still gets a CPU as soon as a health frame
    /// arrives, instead of waiting out another thread's time slice (measured:
    /// `bench/RESULTS.md`, lanes). Threads it starts run at normal priority. Opt-in: it
    /// needs `CAP_SYS_NICE` (without it, a warning and normal priority), and event
    /// callbacks then run at that priority too, so they must stay short. A priority
    /// outside 1..=99 is refused by [`EndpointBuilder::start`].
    pub fn realtime_driver(mut self, priority: u8) -> Self {
        self.realtime = Some(priority);
        self
    }

    /// Adds a failover group, set up when the endpoint starts (see
    /// [`Endpoint::add_failover_group`]).
    pub fn failover_group(mut self, group: crate::node::FailoverGroup) -> Self {
        self.groups.push(group);
        self
    }

    /// Adds a route, set up when the endpoint starts (see [`Endpoint::add_route`]).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Submissions that may wait for the driver thread before submitters block: from 1
    /// (0 is taken as 1) to [`MAX_COMMAND_CAPACITY`] (more is refused by `start`, as the
    /// queue is allocated whole).
    pub fn command_capacity(mut self, n: usize) -> Self {
        self.command_capacity = n.max(1);
        self
    }

    pub fn start(self) -> Result<Endpoint, EndpointError> {
        if self.command_capacity > MAX_COMMAND_CAPACITY {
            return Err(EndpointError::Start(format!(
                "command_capacity {} is more than {MAX_COMMAND_CAPACITY}",
                self.command_capacity
            )));
        }
        if let Some(priority) = self.realtime.filter(|p| !(1..=99).contains(p)) {
            return Err(EndpointError::Start(format!(
                "realtime_driver priority {priority}: SCHED_RR takes 1 to 99"
            )));
        }
        let cfg = self.cfg.clone();
        let driver =
            Driver::new(self.cfg, self.lnds).map_err(|e| EndpointError::Start(e.to_string()))?;
        let nids: Vec<Nid> = driver.node().nids().collect();
        let wakers = driver.wakers();
        let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(self.command_capacity);
        let consumed = Arc::new(AtomicUsize::new(0));
        let queued_on_driver_thread = Arc::new(AtomicBool::new(false));
        let awaited = Arc::new(driver_thread::Awaited::default());
        let (sink, events) = match self.callback {
            Some(cb) => (Sink::Callback(cb), None),
            None => {
                let (tx, rx) = crossbeam_channel::unbounded();
                (Sink::Channel(tx), Some(rx))
            }
        };
        let gate = Arc::new(Gate::default());
        let driver_thread = DriverThread {
            driver,
            clock: self.clock,
            commands: cmd_rx,
            gate: gate.clone(),
            sink,
            consumed: consumed.clone(),
            queued_on_driver_thread: queued_on_driver_thread.clone(),
            awaited: awaited.clone(),
            in_hand: None,
            notice_backlog: cfg.max_undelivered,
        };
        let name = format!("lanet-{}", nids[0]);
        let realtime = self.realtime;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(priority) = realtime {
                    if let Err(e) = crate::sched::set_realtime(priority) {
                        tracing::warn!(
                            "the driver thread stays at normal priority: SCHED_RR {priority}: {e}"
                        );
                    }
                }
                driver_thread.run()
            })
            .map_err(|e| EndpointError::Start(format!("cannot spawn the driver thread: {e}")))?;
        let endpoint = Endpoint {
            inner: Arc::new(Inner {
                commands: cmd_tx,
                gate,
                driver_thread: thread.thread().id(),
                wakers,
                next_op: AtomicU64::new(1),
                nids,
                routed: Mutex::new((0, Vec::new())),
                groups: Mutex::new(Vec::new()),
                cfg,
                events,
                consumed,
                queued_on_driver_thread,
                awaited,
                thread: Mutex::new(Some(thread)),
            }),
        };
        for route in self.routes {
            if let Err(e) = endpoint.add_route(route) {
                endpoint.shutdown();
                return Err(EndpointError::Start(format!(
                    "route to {} through {}: {e}",
                    route.net, route.gateway
                )));
            }
        }
        for group in self.groups {
            let name = group.name.clone();
            if let Err(e) = endpoint.add_failover_group(group) {
                endpoint.shutdown();
                return Err(EndpointError::Start(format!(
                    "failover group {name:?}: {e}"
                )));
            }
        }
        Ok(endpoint)
    }
}

struct Inner {
    commands: Sender<Command>,
    /// Every command passes it, so that none is lost when the driver thread stops.
    gate: Arc<Gate>,
    driver_thread: std::thread::ThreadId,
    wakers: Vec<Arc<dyn Wake>>,
    next_op: AtomicU64,
    nids: Vec<Nid>,
    /// The nets this endpoint has routes to (a copy of the node's, for checking requests
    /// without a round trip to the driver thread), and the route changes it is as of.
    routed: Mutex<(u64, Vec<crate::nid::Net>)>,
    /// Failover groups by name.
    groups: Mutex<Vec<(String, crate::node::GroupId)>>,
    cfg: NodeConfig,
    events: Option<Receiver<Event>>,
    consumed: Arc<AtomicUsize>,
    /// Set when a command is queued on the driver thread (by an event callback), which
    /// wakes nobody: the driver takes it before it next waits.
    queued_on_driver_thread: Arc<AtomicBool>,
    awaited: Arc<driver_thread::Awaited>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    fn on_driver_thread(&self) -> bool {
        std::thread::current().id() == self.driver_thread
    }

    fn send(&self, cmd: Command) -> Result<(), EndpointError> {
        if self.on_driver_thread() {
            // From a callback, on the thread that closes the gate; the driver looks at
            // its queue before it next waits, so no wake-up (two system calls per
            // submission) is needed.
            return self.gate.pass_on_closing_thread(|| {
                self.commands.try_send(cmd).map_err(|e| match e {
                    crossbeam_channel::TrySendError::Full(_) => EndpointError::Busy,
                    crossbeam_channel::TrySendError::Disconnected(_) => self.gate.refusal(),
                })?;
                // The same thread reads it: no ordering beyond its own program order.
                self.queued_on_driver_thread.store(true, Ordering::Relaxed);
                Ok(())
            });
        }
        self.gate.pass(|| {
            self.commands.send(cmd).map_err(|_| self.gate.refusal())?;
            for w in &self.wakers {
                w.wake();
            }
            Ok(())
        })
    }

    fn routed(&self) -> Vec<crate::nid::Net> {
        self.routed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Keeps the nets of the routes a change left, unless another thread's later change
    /// was kept already (its answer came first).
    fn set_routed(&self, (changes, routes): driver_thread::RoutesNow) {
        let mut nets: Vec<crate::nid::Net> = routes.into_iter().map(|r| r.net).collect();
        nets.dedup();
        let mut routed = self.routed.lock().unwrap_or_else(|e| e.into_inner());
        if changes >= routed.0 {
            *routed = (changes, nets);
        }
    }

    /// Asks the driver thread something and waits for its answer.
    fn query<T>(&self, ask: impl FnOnce(Sender<T>) -> Command) -> Result<T, EndpointError> {
        if self.on_driver_thread() {
            return Err(EndpointError::Invalid(
                "queries (stats, health) cannot be made from an event callback: the driver \
                 thread would wait for itself"
                    .into(),
            ));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(ask(tx))?;
        rx.recv().map_err(|_| self.gate.refusal())
    }

    fn shutdown(&self) {
        self.gate.request_stop();
        for w in &self.wakers {
            w.wake();
        }
        if self.on_driver_thread() {
            // Called from a callback: the thread stops after it returns. The handle stays
            // for a caller on another thread, whose shutdown must still wait for that.
            return;
        }
        // Held while joining: a second caller returns only once the first's join has.
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = thread.take() {
            if handle.join().is_err() {
                tracing::error!("the lanet driver thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A handle on a running endpoint. Clones share it; it shuts down when the last goes.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    pub fn builder(cfg: NodeConfig) -> EndpointBuilder {
        EndpointBuilder {
            cfg,
            lnds: Vec::new(),
            clock: Arc::new(MonotonicClock::new()),
            callback: None,
            command_capacity: 65_536,
            realtime: None,
            routes: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// This endpoint's NIDs, one per NI.
    pub fn nids(&self) -> &[Nid] {
        &self.inner.nids
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.cfg
    }

    fn next_id(&self) -> OpId {
        OpId(self.inner.next_op.fetch_add(1, Ordering::Relaxed))
    }

    fn submit(&self, make: impl FnOnce(OpId) -> Command) -> Result<OpId, EndpointError> {
        let id = self.next_id();
        self.inner.send(make(id))?;
        Ok(id)
    }

    /// Sends a PUT; its completion comes as an event.
    pub fn put(&self, req: PutRequest) -> Result<OpId, EndpointError> {
        req.validate(self.inner.cfg.max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|id| Command::Put(id, req))
    }

    pub fn get(&self, req: GetRequest) -> Result<OpId, EndpointError> {
        req.validate(self.inner.cfg.max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|id| Command::Get(id, req))
    }

    pub fn ping(&self, req: PingRequest) -> Result<OpId, EndpointError> {
        self.submit(|id| Command::Ping(id, req))
    }

    /// Pings and waits for the answer (or the ping's own failure): an operator's
    /// `lanetctl ping`. Its completion comes back here, not as an event. Not from the
    /// driver thread (an event callback): that would wait for itself.
    pub fn ping_and_wait(&self, req: PingRequest) -> Result<Completion, EndpointError> {
        if self.inner.on_driver_thread() {
            return Err(EndpointError::Invalid(
                "ping_and_wait from the driver thread (an event callback) would wait for itself"
                    .into(),
            ));
        }
        let id = self.next_id();
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.inner.awaited.register(id, tx) {
            return Err(self.inner.gate.refusal());
        }
        if let Err(e) = self.inner.send(Command::Ping(id, req)) {
            self.inner.awaited.forget(id);
            return Err(e);
        }
        // Every accepted operation completes exactly once, however the endpoint stops; if
        // its completion was lost all the same (a panicking callback), the driver thread
        // drops this channel's sender as it ends.
        rx.recv().map_err(|_| self.inner.gate.refusal())
    }

    /// Posts a receive buffer or GET source. It completes when unlinked.
    pub fn attach(&self, entry: MatchEntry) -> Result<OpId, EndpointError> {
        self.submit(|id| Command::Attach(id, entry))
    }

    /// Cancels an operation or unlinks an entry (no-op if it already completed). A request
    /// already sent may still reach its target (see [`crate::Node::cancel`]).
    pub fn cancel(&self, op: OpId) -> Result<(), EndpointError> {
        self.inner.send(Command::Cancel(op))
    }

    /// Monitors `peer` (PINGs when it is silent, `PeerDown`/`PeerUp` events) even with no
    /// operation outstanding, until [`Endpoint::unwatch`]. `Invalid` if this endpoint has
    /// no NI on `peer`'s net, or `peer` is this endpoint, or (as the node says) no NI up on
    /// its net nor a route to it. Called from an event callback, the node's refusal can
    /// only be logged: the driver thread cannot wait for itself.
    pub fn watch(&self, peer: Nid) -> Result<(), EndpointError> {
        let nids = &self.inner.nids;
        if nids.contains(&peer) {
            return Err(EndpointError::Invalid(format!(
                "{peer} is this endpoint; it cannot watch itself"
            )));
        }
        let routed = || self.inner.routed().contains(&peer.net());
        if !nids.iter().any(|n| n.same_net(&peer)) && !routed() {
            return Err(EndpointError::Invalid(format!(
                "no route to {peer}: this endpoint has no NI on {}, nor a route to it",
                peer.net()
            )));
        }
        if self.inner.on_driver_thread() {
            return self.inner.send(Command::Watch(peer, None));
        }
        self.inner
            .query(|tx| Command::Watch(peer, Some(tx)))?
            .map_err(|e| EndpointError::Invalid(format!("{peer} not watched: {e}")))
    }

    /// Adds a route (or updates the one through the same gateway to the same net): `net`
    /// is reached through `gateway`, which must be on one of this endpoint's nets.
    pub fn add_route(&self, route: Route) -> Result<(), EndpointError> {
        let now = self
            .inner
            .query(|tx| Command::AddRoute(route, tx))?
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
        self.inner.set_routed(now);
        Ok(())
    }

    /// Removes the route to `net` through `gateway`; false if there was none.
    pub fn remove_route(&self, net: crate::nid::Net, gateway: Nid) -> Result<bool, EndpointError> {
        let (removed, now) = self
            .inner
            .query(|tx| Command::RemoveRoute(net, gateway, tx))?;
        self.inner.set_routed(now);
        Ok(removed)
    }

    /// Adds a fault rule (frames arriving here dropped or delayed: `lanetctl fault`); its
    /// number.
    pub fn add_fault_rule(&self, rule: crate::node::FaultRule) -> Result<u32, EndpointError> {
        self.inner
            .query(|tx| Command::AddFault(rule, tx))?
            .map_err(|e| EndpointError::Invalid(e.to_string()))
    }

    /// Removes fault rule `id`; false if there was none.
    pub fn remove_fault_rule(&self, id: u32) -> Result<bool, EndpointError> {
        self.inner.query(|tx| Command::RemoveFault(id, tx))
    }

    /// The endpoint's routes, sorted by net, priority and hops.
    pub fn routes(&self) -> Result<Vec<Route>, EndpointError> {
        self.inner.query(Command::Routes)
    }

    pub fn unwatch(&self, peer: Nid) -> Result<(), EndpointError> {
        self.inner.send(Command::Unwatch(peer))
    }

    /// What the node believes about `peer` (if it monitors it), and its failure-detection
    /// counters (pings, verdicts, local-lag stretches).
    pub fn health(&self, peer: Nid) -> Result<(Option<PeerHealth>, HealthStats), EndpointError> {
        self.inner.query(|tx| Command::Health(peer, tx))
    }

    /// Everything an operator asks about, at once: NIs, monitored peers, routes and their
    /// state, and as a router its status, its judgment of itself and its pools.
    pub fn report(&self) -> Result<crate::node::NodeReport, EndpointError> {
        self.inner.query(Command::Report).map(|r| *r)
    }

    /// As a router: the operator takes it out (`Absent(Administrator)`), stops it
    /// (`Absent(Stopping)`, to drain), or lets it forward again (`Forwarding`). Its status
    /// says so at once, pushed to the nodes using it.
    pub fn set_router_state(&self, state: crate::wire::RouterState) -> Result<(), EndpointError> {
        if !self.inner.cfg.forwarding {
            return Err(EndpointError::Invalid(
                "this endpoint does not forward (it is not a router)".into(),
            ));
        }
        if self.inner.query(|tx| Command::SetRouterState(state, tx))? {
            Ok(())
        } else {
            Err(EndpointError::Invalid(
                "the router is stopping: that is final".into(),
            ))
        }
    }

    /// Adds a failover group: a service reached at any of its members (see
    /// [`crate::node::FailoverGroup`]); operations to it go through
    /// [`Endpoint::group_put`] and [`Endpoint::group_get`].
    pub fn add_failover_group(
        &self,
        group: crate::node::FailoverGroup,
    ) -> Result<crate::node::GroupId, EndpointError> {
        let name = group.name.clone();
        let id = self
            .inner
            .query(|tx| Command::AddGroup(group, tx))?
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, id));
        Ok(id)
    }

    /// The failover group named `name`, if there is one.
    pub fn group(&self, name: &str) -> Option<crate::node::GroupId> {
        let groups = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// A PUT to `group`'s current member (`req.dst` is ignored), moving on to the next
    /// members as its mode says; it completes once.
    pub fn group_put(
        &self,
        group: crate::node::GroupId,
        req: PutRequest,
    ) -> Result<OpId, EndpointError> {
        req.validate(self.inner.cfg.max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|id| Command::GroupSubmit(id, group, crate::node::GroupRequest::Put(req)))
    }

    /// A GET from `group`'s current member (`req.dst` is ignored); see
    /// [`Endpoint::group_put`].
    pub fn group_get(
        &self,
        group: crate::node::GroupId,
        req: GetRequest,
    ) -> Result<OpId, EndpointError> {
        req.validate(self.inner.cfg.max_payload)
            .map_err(EndpointError::Invalid)?;
        self.submit(|id| Command::GroupSubmit(id, group, crate::node::GroupRequest::Get(req)))
    }

    /// The node's counters, fetched from the driver thread.
    pub fn stats(&self) -> Result<NodeStats, EndpointError> {
        self.inner.query(Command::Stats)
    }

    fn taken(&self, e: Event) -> Event {
        if e.is_delivery() {
            self.inner.consumed.fetch_add(1, Ordering::Relaxed);
        }
        e
    }

    /// The next event, waiting up to `timeout` (`None`: until one comes). `None` on timeout,
    /// once the endpoint is shut down and drained, or in callback mode.
    pub fn recv_event(&self, timeout: Option<Duration>) -> Option<Event> {
        let rx = self.inner.events.as_ref()?;
        let e = match timeout {
            None => rx.recv().ok(),
            Some(t) => rx.recv_timeout(t).ok(),
        };
        e.map(|e| self.taken(e))
    }

    /// The next event if one is ready.
    pub fn try_recv_event(&self) -> Option<Event> {
        let rx = self.inner.events.as_ref()?;
        match rx.try_recv() {
            Ok(e) => Some(self.taken(e)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
        }
    }

    /// Stops the endpoint: every live operation completes `Cancelled` (the events stay
    /// readable), the driver thread exits and the LNDs close. Later submissions fail with
    /// `ShutDown`. Idempotent; also done when the last handle is dropped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

#[cfg(test)]
mod tests;
