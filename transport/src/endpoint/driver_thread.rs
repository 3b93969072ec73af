//! The endpoint's driver thread: takes commands, runs the node and its LNDs, hands events
//! to the application, and however it stops (shutdown, a driver failing for good, a panic)
//! completes every operation it accepted, exactly once.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::gate::Gate;
use super::EndpointError;
use crate::driver::Driver;
use crate::health::{HealthStats, PeerHealth};
use crate::nid::{Net, Nid};
use crate::node::{Node, NodeStats, Route};
use crate::op::{
    Completion, Event, GetRequest, MatchEntry, OpError, OpId, PingRequest, PutRequest,
};
use crate::time::{Clock, Time};

pub(super) enum Command {
    Put(OpId, PutRequest),
    Get(OpId, GetRequest),
    Ping(OpId, PingRequest),
    Attach(OpId, MatchEntry),
    Cancel(OpId),
    Stats(Sender<NodeStats>),
    /// With a reply, the node's verdict goes back; without (from a callback), a refusal
    /// is logged.
    Watch(Nid, Option<Sender<Result<(), OpError>>>),
    Unwatch(Nid),
    Health(Nid, Sender<(Option<PeerHealth>, HealthStats)>),
    /// Answered with the routes after the change (see [`RoutesNow`]).
    AddRoute(Route, Sender<Result<RoutesNow, OpError>>),
    RemoveRoute(Net, Nid, Sender<(bool, RoutesNow)>),
    Routes(Sender<Vec<Route>>),
    Report(Sender<Box<crate::node::NodeReport>>),
    GroupSubmit(OpId, crate::node::GroupId, crate::node::GroupRequest),
    AddGroup(
        crate::node::FailoverGroup,
        Sender<Result<crate::node::GroupId, OpError>>,
    ),
    SetRouterState(crate::wire::RouterState, Sender<bool>),
    AddFault(
        crate::node::FaultRule,
        Sender<Result<u32, crate::node::FaultError>>,
    ),
    RemoveFault(u32, Sender<bool>),
}

pub(super) type Callback = Box<dyn FnMut(Event) + Send>;

/// Operations whose submitter waits for their completion itself (`Endpoint::ping_and_wait`):
/// their completion goes to it, not to the application's events. Registered before the
/// operation is submitted, so the completion cannot come first.
#[derive(Default)]
pub(super) struct Awaited {
    /// How many are registered: emitting checks this, and locks only when it is not 0.
    count: AtomicUsize,
    waiters: std::sync::Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    by_op: rustc_hash::FxHashMap<OpId, Sender<Completion>>,
    /// The driver thread ended: nothing registers any more.
    closed: bool,
}

impl Awaited {
    /// False once the driver thread has ended.
    pub(super) fn register(&self, op: OpId, tx: Sender<Completion>) -> bool {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.closed {
            return false;
        }
        w.by_op.insert(op, tx);
        self.count.store(w.by_op.len(), Ordering::Release);
        true
    }

    /// The driver thread ends: waiters whose completion did not come (it was lost with a
    /// panicking callback) hear that the endpoint stopped, instead of waiting forever.
    fn abandon(&self) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.closed = true;
        w.by_op.clear();
        self.count.store(0, Ordering::Release);
    }

    pub(super) fn forget(&self, op: OpId) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.by_op.remove(&op);
        self.count.store(w.by_op.len(), Ordering::Release);
    }

    /// The event, unless it completes an awaited operation (then handed to its waiter).
    fn route(&self, e: Event) -> Option<Event> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Some(e);
        }
        let Event::Completed(c) = e else {
            return Some(e);
        };
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = w.by_op.remove(&c.op) else {
            return Some(Event::Completed(c));
        };
        self.count.store(w.by_op.len(), Ordering::Release);
        let _ = tx.send(c); // a waiter that gave up has nobody to tell
        None
    }
}

pub(super) enum Sink {
    Channel(Sender<Event>),
    Callback(Callback),
}

/// Why the serving loop ended.
enum Stop {
    /// Asked to ([`Gate::request_stop`], or every handle went away).
    Shutdown,
    /// A driver failed for good; the node is intact.
    LndFailed(String),
}

pub(super) struct DriverThread {
    pub(super) driver: Driver,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) commands: Receiver<Command>,
    pub(super) gate: Arc<Gate>,
    pub(super) sink: Sink,
    pub(super) consumed: Arc<AtomicUsize>,
    /// A command was queued on this thread (see `Inner::queued_on_driver_thread`).
    pub(super) queued_on_driver_thread: Arc<AtomicBool>,
    pub(super) awaited: Arc<Awaited>,
    /// Events waiting in the channel past which news of the network is dropped (the
    /// node's `max_undelivered`; see [`Event::is_notice`]).
    pub(super) notice_backlog: usize,
    /// The op of the command the node is taking, while it takes it: if the node panics
    /// right then, this is the one op neither its table nor its events may hold.
    pub(super) in_hand: Option<OpId>,
}

impl DriverThread {
    pub(super) fn run(mut self) {
        self.run_to_the_end();
        self.awaited.abandon();
    }

    fn run_to_the_end(&mut self) {
        let served = catch_unwind(AssertUnwindSafe(|| self.serve()));
        // Stopping runs the node and the LNDs once more: a panic there is handled as one
        // while serving.
        let stopped = match served {
            Ok(Stop::Shutdown) => catch_unwind(AssertUnwindSafe(|| self.stop())),
            Ok(Stop::LndFailed(reason)) => catch_unwind(AssertUnwindSafe(|| self.fail(reason))),
            Err(panic) => Err(panic),
        };
        let Err(panic) = stopped else {
            return;
        };
        let message = panic_message(&*panic);
        if let Err(again) = catch_unwind(AssertUnwindSafe(|| self.fail_after_panic(message))) {
            // Salvage touches only plain data, and the application's callback: that
            // panicked, and the events it was to receive cannot reach it.
            tracing::error!(
                "the event callback panicked while the endpoint failed; later events are lost: {}",
                panic_message(&*again)
            );
        }
    }

    fn serve(&mut self) -> Stop {
        // When the node next needs its timers run, as it said at the end of the last turn
        // (at first: now). Asked every turn, so a deadline set meanwhile (a submission's,
        // a retry's) is late by one turn at most, and never missed.
        let mut due = Some(Time::ZERO);
        loop {
            // The time read right after the poll that ended the last turn, if it did and
            // brought little (see `Driver::take_polled_at`).
            let now = self
                .driver
                .take_polled_at()
                .unwrap_or_else(|| self.clock.now());
            // What callbacks queue from here on is flagged; what came from other threads
            // woke the poll that ended the last turn.
            self.queued_on_driver_thread.store(false, Ordering::Relaxed);
            if self.take_commands(now) || self.gate.stop_requested() {
                return self.stop_now(now);
            }
            let node = self.driver.node_mut();
            node.deliveries_consumed(self.consumed.swap(0, Ordering::Relaxed));
            // Running every subsystem's timers when none is due cost a turn more than all
            // of its message handling.
            if due.is_some_and(|d| d <= now) {
                node.handle_timeout(now);
            } else {
                node.set_time(now);
            }
            self.driver.flush();
            self.deliver_events();
            // Commands the callbacks just queued (a PUT answering a completion, say): taken
            // before polling the LND, whose events keep, in this turn, so that a callback's
            // submission costs no turn of its own; but only once a turn, or busy submitters
            // could starve the network. At the time they are taken: callbacks take time,
            // and deadlines count from it.
            if self.queued_on_driver_thread.swap(false, Ordering::Relaxed) {
                let now = self.clock.now();
                if self.take_commands(now) || self.gate.stop_requested() {
                    return self.stop_now(now);
                }
                // An attach or a cancel leaves the node without a time: the flush's
                // completions need one.
                self.driver.node_mut().set_time(now);
                self.driver.flush();
                self.deliver_events();
            }
            due = self.driver.node_mut().poll_timeout();
            // Nothing wakes the poll for what callbacks queued since: it must not wait.
            let timeout = if self.queued_on_driver_thread.load(Ordering::Relaxed) {
                Some(std::time::Duration::ZERO)
            } else {
                due.map(|t| t.saturating_since(self.clock.now()))
            };
            if let Err((ni, e)) = self.driver.poll(&*self.clock, timeout) {
                let nid = self.driver.node().nids().nth(ni.0);
                let nid = nid.map_or_else(|| format!("NI {}", ni.0), |n| n.to_string());
                return Stop::LndFailed(format!("the LND of {nid} failed: {e}"));
            }
        }
    }

    /// Hands the commands waiting now to the node (those that come meanwhile wait for the
    /// next take: submitters faster than the node must not keep it from the network). True
    /// if the endpoint is to stop.
    fn take_commands(&mut self, now: Time) -> bool {
        // Most turns find none. An empty look costs two loads this way, a fence and more
        // through `try_recv`. (A closed channel reads empty too: the gate's stop, which
        // the caller checks, is requested before the senders go.) The queue's length is
        // read only once one has come, and before it runs, so what its running lets in (a
        // woken caller's next command) waits for the next turn. (A submitter blocked on
        // the full queue may slip one in between the take and the read: still bounded by
        // the queue's capacity.)
        if self.commands.is_empty() {
            return false;
        }
        let mut behind_it = None;
        loop {
            let cmd = match self.commands.try_recv() {
                Ok(cmd) => cmd,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            };
            let left = behind_it.get_or_insert_with(|| self.commands.len());
            run_command(self.driver.node_mut(), now, cmd, &mut self.in_hand);
            if *left == 0 {
                return false;
            }
            *left -= 1;
        }
    }

    /// A stop was requested while taking commands: the node takes what is delivered and
    /// what is due, as a turn would, before [`Self::stop`] cancels the rest.
    fn stop_now(&mut self, now: Time) -> Stop {
        let node = self.driver.node_mut();
        node.deliveries_consumed(self.consumed.swap(0, Ordering::Relaxed));
        node.handle_timeout(now);
        Stop::Shutdown
    }

    /// A requested stop: everything live and everything still arriving is cancelled.
    fn stop(&mut self) {
        self.driver.node_mut().shutdown();
        self.close_gate(EndpointError::ShutDown);
        // The flush may hand the node completions, at the node's time (`shutdown` leaves
        // it unset, and `close_gate` may).
        let now = self.clock.now();
        self.driver.node_mut().set_time(now);
        self.driver.flush();
        self.deliver_events();
    }

    /// A driver failed for good: the node completes everything with the reason, which the
    /// application then hears as the last event.
    fn fail(&mut self, reason: String) {
        tracing::error!("stopping the endpoint: {reason}");
        let error = OpError::Local(reason.clone());
        self.driver.node_mut().abort(error);
        self.close_gate(EndpointError::Failed(reason.clone()));
        self.deliver_events();
        self.emit(Event::EndpointFailed { reason });
    }

    /// The serving loop panicked: the node's state is in doubt, so nothing but its table
    /// of live operations is trusted, and each of them is completed from here.
    fn fail_after_panic(&mut self, message: String) {
        let reason = format!("the driver thread panicked: {message}");
        tracing::error!("stopping the endpoint: {reason}");
        let error = OpError::Local(reason.clone());
        // Events the node produced before the panic come first (completions among them).
        let node = self.driver.node_mut();
        let mut events: Vec<Event> = std::iter::from_fn(|| node.poll_event()).collect();
        let live = node.take_live_ops();
        if let Some(op) = self.in_hand.take() {
            let completed = |e: &Event| matches!(e, Event::Completed(c) if c.op == op);
            if !live.contains(&op) && !events.iter().any(completed) {
                events.push(failed(op, &error)); // lost inside the node's submission
            }
        }
        events.extend(live.into_iter().map(|op| failed(op, &error)));
        let gate = self.gate.clone();
        let commands = self.commands.clone();
        let mut refuse = || {
            for cmd in commands.try_iter() {
                events.extend(command_op(&cmd).map(|op| failed(op, &error)));
            }
        };
        gate.close(EndpointError::Failed(reason.clone()), &mut refuse);
        refuse();
        events.push(Event::EndpointFailed { reason });
        for e in events {
            self.emit(e);
        }
    }

    /// Closes the gate, handing what still comes in to the node, and then the rest.
    fn close_gate(&mut self, why: EndpointError) {
        let gate = self.gate.clone();
        let commands = self.commands.clone();
        let node = self.driver.node_mut();
        let in_hand = &mut self.in_hand;
        let now = self.clock.now();
        let mut take = || {
            for cmd in commands.try_iter() {
                run_command(node, now, cmd, in_hand);
            }
        };
        gate.close(why, &mut take);
        take();
    }

    fn deliver_events(&mut self) {
        while let Some(e) = self.driver.node_mut().poll_event() {
            let delivery = e.is_delivery();
            let callback = matches!(self.sink, Sink::Callback(_));
            self.emit(e);
            if delivery && callback {
                self.driver.node_mut().deliveries_consumed(1);
            }
        }
    }

    /// Hands one event to the application.
    fn emit(&mut self, e: Event) {
        let Some(e) = self.awaited.route(e) else {
            return;
        };
        match &mut self.sink {
            // News its peers cause waits for the application only up to a bound: one that
            // does not take its events must not grow this queue without end.
            Sink::Channel(tx) if e.is_notice() && tx.len() >= self.notice_backlog => {
                let node = self.driver.node_mut();
                node.stats.notices_dropped += 1;
                let dropped = node.stats.notices_dropped;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        "the application leaves its events untaken: news of the network dropped"
                    );
                }
            }
            // The receiver lives as long as any endpoint handle; if none is left, nobody
            // can observe the event.
            Sink::Channel(tx) => {
                let _ = tx.send(e);
            }
            Sink::Callback(f) => f(e),
        }
    }
}

/// Hands `cmd` to the node, with its op `in_hand` meanwhile.
fn run_command(node: &mut Node, now: Time, cmd: Command, in_hand: &mut Option<OpId>) {
    *in_hand = command_op(&cmd);
    // Op ids come from the endpoint's counter: never a duplicate.
    let submitted = match cmd {
        Command::Put(id, r) => node.put(now, id, r),
        Command::GroupSubmit(id, g, r) => node.group_submit(now, id, g, r),
        Command::AddGroup(g, reply) => {
            let _ = reply.send(node.add_failover_group(g));
            Ok(())
        }
        Command::Get(id, r) => node.get(now, id, r),
        Command::Ping(id, r) => node.ping(now, id, r),
        Command::Attach(id, e) => node.attach(id, e),
        Command::Cancel(id) => {
            node.cancel(id);
            Ok(())
        }
        Command::Stats(reply) => {
            let _ = reply.send(node.stats().clone());
            Ok(())
        }
        Command::Watch(peer, reply) => {
            let watched = node.watch(now, peer);
            match reply {
                Some(reply) => {
                    let _ = reply.send(watched);
                }
                None => {
                    if let Err(e) = watched {
                        tracing::warn!(%peer, "not watched: {e}");
                    }
                }
            }
            Ok(())
        }
        Command::Unwatch(peer) => {
            node.unwatch(now, peer);
            Ok(())
        }
        Command::Health(peer, reply) => {
            let _ = reply.send((node.peer_health(peer), node.health_stats()));
            Ok(())
        }
        Command::AddRoute(route, reply) => {
            let added = node.add_route(route).map(|()| routes_now(node));
            let _ = reply.send(added);
            Ok(())
        }
        Command::RemoveRoute(net, gateway, reply) => {
            let removed = node.remove_route(net, gateway);
            let _ = reply.send((removed, routes_now(node)));
            Ok(())
        }
        Command::Routes(reply) => {
            let _ = reply.send(node.routes());
            Ok(())
        }
        Command::AddFault(rule, reply) => {
            let _ = reply.send(node.add_fault_rule(rule));
            Ok(())
        }
        Command::RemoveFault(id, reply) => {
            let _ = reply.send(node.remove_fault_rule(id));
            Ok(())
        }
        Command::Report(reply) => {
            let _ = reply.send(Box::new(node.report(now)));
            Ok(())
        }
        Command::SetRouterState(state, reply) => {
            let _ = reply.send(node.set_router_state(now, state));
            Ok(())
        }
    };
    debug_assert!(submitted.is_ok(), "{submitted:?}");
    *in_hand = None;
}

/// The operation a command submits, if it submits one.
/// The node's routes as a change left them, and how many changes that is: taken with the
/// change, on this thread, so that two threads changing routes at once can tell which list
/// is the later.
pub(super) type RoutesNow = (u64, Vec<Route>);

fn routes_now(node: &Node) -> RoutesNow {
    (node.route_changes(), node.routes())
}

fn command_op(cmd: &Command) -> Option<OpId> {
    match cmd {
        Command::Put(id, _) | Command::Get(id, _) | Command::Ping(id, _) => Some(*id),
        Command::GroupSubmit(id, _, _) => Some(*id),
        Command::Attach(id, _) => Some(*id),
        _ => None,
    }
}

fn failed(op: OpId, error: &OpError) -> Event {
    Event::Completed(Completion {
        op,
        result: Err(error.clone()),
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
