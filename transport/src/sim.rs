//! Deterministic multi-node runs in one process: nodes on a [`MemFabric`] driven on a
//! [`VirtualClock`]. Same seed, same inputs, same run, to the nanosecond.
//!
//! A [`Ledger`] records every operation submitted and every completion, and reports any
//! operation completed twice, completed without being submitted, or never completed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::config::NodeConfig;
use crate::driver::Driver;
use crate::lnd::Lnd;
use crate::mem::{MemFabric, MemLnd, MemLndConfig};
use crate::nid::Nid;
use crate::node::{Node, SubmitError};
use crate::op::{
    Completion, Event, GetRequest, MatchEntry, OpError, OpId, PingRequest, PutRequest,
};
use crate::time::{Clock, Time, VirtualClock};

/// Submissions and completions of every node, checked for exactly-once.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Per (node, op): completions seen so far.
    ops: FxHashMap<(Nid, OpId), u32>,
    submitted: u64,
    completed: u64,
    violations: Vec<String>,
}

impl Ledger {
    pub fn submitted(&mut self, node: Nid, op: OpId) {
        self.submitted += 1;
        if self.ops.insert((node, op), 0).is_some() {
            self.violations
                .push(format!("{node} {op}: submitted twice"));
        }
    }

    pub fn completed(&mut self, node: Nid, c: &Completion) {
        self.completed += 1;
        match self.ops.get_mut(&(node, c.op)) {
            None => self
                .violations
                .push(format!("{node} {}: completed but never submitted", c.op)),
            Some(n) => {
                *n += 1;
                if *n > 1 {
                    self.violations
                        .push(format!("{node} {}: completed {} times", c.op, n));
                }
            }
        }
    }

    /// Forgets a node's uncompleted operations: its process died and took them along.
    pub fn forget(&mut self, node: Nid) {
        let mut lost = 0;
        self.ops.retain(|(n, _), completions| {
            let gone = *n == node && *completions == 0;
            lost += u64::from(gone);
            !gone
        });
        self.submitted -= lost;
    }

    /// Operations submitted and not completed, in a stable order.
    pub fn outstanding(&self) -> Vec<(Nid, OpId)> {
        let mut v: Vec<_> = self
            .ops
            .iter()
            .filter(|(_, &n)| n == 0)
            .map(|(k, _)| *k)
            .collect();
        v.sort();
        v
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn counts(&self) -> (u64, u64) {
        (self.submitted, self.completed)
    }
}

struct SimNode {
    driver: Driver,
    /// Events with the virtual time they were reported at.
    events: Vec<(Time, Event)>,
}

/// A topology of nodes on one in-memory fabric and one virtual clock.
pub struct Sim {
    clock: VirtualClock,
    fabric: MemFabric,
    nodes: BTreeMap<Nid, SimNode>,
    ledger: Ledger,
    next_op: u64,
    /// (deadline, node): when each node next wants its timers run. Entries may be early
    /// (the node's deadline moved later): visiting a node early does nothing.
    timers: BinaryHeap<Reverse<(Time, Nid)>>,
    /// The earliest entry of each node in `timers`, so it is not pushed again and again.
    booked: FxHashMap<Nid, Time>,
    /// Nodes the application touched since the last settle.
    dirty: BTreeSet<Nid>,
    /// The node each port (NID) of the fabric belongs to: a node with several NIs (a
    /// router) is known by its first NID.
    owners: FxHashMap<Nid, Nid>,
    /// Protocol errors counted by nodes since killed.
    dead_protocol_errors: u64,
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let clock = VirtualClock::new();
        let fabric = MemFabric::new(Arc::new(clock.clone()), seed);
        Sim {
            clock,
            fabric,
            nodes: BTreeMap::new(),
            ledger: Ledger::default(),
            next_op: 1,
            timers: BinaryHeap::new(),
            booked: FxHashMap::default(),
            dirty: BTreeSet::new(),
            owners: FxHashMap::default(),
            dead_protocol_errors: 0,
        }
    }

    /// The network, for fault injection.
    pub fn fabric(&self) -> &MemFabric {
        &self.fabric
    }

    pub fn now(&self) -> Time {
        self.clock.now()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Starts a node at `nid` (a mem NID).
    pub fn add_node(&mut self, nid: Nid, cfg: NodeConfig) -> Result<(), String> {
        let lnd_cfg = MemLndConfig::for_node(&cfg);
        self.add_node_with(nid, cfg, lnd_cfg)
    }

    /// Starts a node whose in-memory LND has settings of its own (e.g. `inline_max`).
    pub fn add_node_with(
        &mut self,
        nid: Nid,
        cfg: NodeConfig,
        lnd_cfg: MemLndConfig,
    ) -> Result<(), String> {
        self.add_node_on(&[nid], cfg, lnd_cfg)
    }

    /// Starts a node with an NI at each of `nids` (mem NIDs on different nets), each with
    /// an in-memory LND of `lnd_cfg`. It is known by its first NID. With
    /// `cfg.forwarding`, it is a router between those nets.
    pub fn add_node_on(
        &mut self,
        nids: &[Nid],
        cfg: NodeConfig,
        lnd_cfg: MemLndConfig,
    ) -> Result<(), String> {
        let key = *nids.first().ok_or("a node needs at least one NID")?;
        let mut lnds: Vec<Box<dyn Lnd>> = Vec::new();
        for &nid in nids {
            let lnd = MemLnd::new(&self.fabric, nid, lnd_cfg).map_err(|e| e.to_string())?;
            lnds.push(Box::new(lnd));
        }
        let driver = Driver::new(cfg, lnds).map_err(|e| e.to_string())?;
        for &nid in nids {
            self.owners.insert(nid, key);
        }
        self.nodes.insert(
            key,
            SimNode {
                driver,
                events: Vec::new(),
            },
        );
        self.dirty.insert(key);
        Ok(())
    }

    /// Adds a route at node `at`.
    pub fn add_route(&mut self, at: Nid, route: crate::node::Route) -> Result<(), OpError> {
        let node = self
            .nodes
            .get_mut(&at)
            .ok_or(OpError::Invalid(format!("no node {at} in the simulation")))?;
        node.driver.node_mut().add_route(route)?;
        self.dirty.insert(at);
        Ok(())
    }

    /// Takes router `at` out of (or back into) forwarding.
    pub fn set_router_state(&mut self, at: Nid, state: crate::wire::RouterState) {
        let now = self.clock.now();
        if let Some(n) = self.nodes.get_mut(&at) {
            let _ = n.driver.node_mut().set_router_state(now, state);
        }
        self.dirty.insert(at);
    }

    /// Adds a fault rule at node `at` (frames arriving there).
    pub fn add_fault_rule(
        &mut self,
        at: Nid,
        rule: crate::node::FaultRule,
    ) -> Result<u32, crate::node::FaultError> {
        let node = self.nodes.get_mut(&at).expect("no such node");
        let id = node.driver.node_mut().add_fault_rule(rule);
        self.dirty.insert(at);
        id
    }

    pub fn remove_fault_rule(&mut self, at: Nid, id: u32) -> bool {
        let node = self.nodes.get_mut(&at).expect("no such node");
        let removed = node.driver.node_mut().remove_fault_rule(id);
        self.dirty.insert(at);
        removed
    }

    /// Removes a route at node `at`.
    pub fn remove_route(&mut self, at: Nid, net: crate::nid::Net, gateway: Nid) -> bool {
        let removed = self
            .nodes
            .get_mut(&at)
            .is_some_and(|n| n.driver.node_mut().remove_route(net, gateway));
        self.dirty.insert(at);
        removed
    }

    /// Kills a node's process: no goodbye, its connections reset at the other ends, its own
    /// operations vanish with it.
    pub fn kill(&mut self, nid: Nid) {
        if let Some(n) = self.nodes.remove(&nid) {
            self.dead_protocol_errors += n.driver.node().stats().protocol_errors;
        }
        self.owners.retain(|_, key| *key != nid);
        self.booked.remove(&nid);
        self.ledger.forget(nid);
    }

    /// Protocol errors every node ever started here counted: with no corrupted input,
    /// any is a bug in one of them.
    pub fn protocol_errors(&self) -> u64 {
        let live: u64 = self
            .nodes
            .values()
            .map(|n| n.driver.node().stats().protocol_errors)
            .sum();
        live + self.dead_protocol_errors
    }

    pub fn is_alive(&self, nid: Nid) -> bool {
        self.nodes.contains_key(&nid)
    }

    pub fn node(&self, nid: Nid) -> &Node {
        self.nodes[&nid].driver.node()
    }

    fn submit(
        &mut self,
        nid: Nid,
        f: impl FnOnce(&mut Node, Time, OpId) -> Result<(), SubmitError>,
    ) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        let now = self.clock.now();
        let node = self
            .nodes
            .get_mut(&nid)
            .expect("no such node")
            .driver
            .node_mut();
        f(node, now, id).expect("sim op ids are unique");
        self.dirty.insert(nid);
        self.ledger.submitted(nid, id);
        id
    }

    pub fn put(&mut self, from: Nid, req: PutRequest) -> OpId {
        self.submit(from, |n, now, id| n.put(now, id, req))
    }

    pub fn get(&mut self, from: Nid, req: GetRequest) -> OpId {
        self.submit(from, |n, now, id| n.get(now, id, req))
    }

    /// Adds a failover group at node `at`.
    pub fn add_failover_group(
        &mut self,
        at: Nid,
        group: crate::node::FailoverGroup,
    ) -> Result<crate::node::GroupId, OpError> {
        let node = self.nodes.get_mut(&at).expect("no such node");
        node.driver.node_mut().add_failover_group(group)
    }

    /// A PUT or GET to a failover group of `from`'s.
    pub fn group_submit(
        &mut self,
        from: Nid,
        group: crate::node::GroupId,
        req: crate::node::GroupRequest,
    ) -> OpId {
        self.submit(from, |n, now, id| n.group_submit(now, id, group, req))
    }

    pub fn ping(&mut self, from: Nid, req: PingRequest) -> OpId {
        self.submit(from, |n, now, id| n.ping(now, id, req))
    }

    pub fn attach(&mut self, at: Nid, entry: MatchEntry) -> OpId {
        self.submit(at, |n, _, id| n.attach(id, entry))
    }

    /// `at` monitors `peer` until unwatched, with or without operations to it.
    pub fn watch(&mut self, at: Nid, peer: Nid) -> Result<(), OpError> {
        self.watch_many(&[(at, peer)])
    }

    /// Many watches at once (one settle for all): `(watcher, watched)` pairs. Stops at
    /// the first the watcher refuses (e.g. `NoRoute`).
    pub fn watch_many(&mut self, pairs: &[(Nid, Nid)]) -> Result<(), OpError> {
        let now = self.clock.now();
        let mut result = Ok(());
        for &(at, peer) in pairs {
            if let Some(n) = self.nodes.get_mut(&at) {
                result = n.driver.node_mut().watch(now, peer);
                self.dirty.insert(at);
                if result.is_err() {
                    break;
                }
            }
        }
        self.settle();
        result
    }

    pub fn unwatch(&mut self, at: Nid, peer: Nid) {
        let now = self.clock.now();
        if let Some(n) = self.nodes.get_mut(&at) {
            n.driver.node_mut().unwatch(now, peer);
        }
        self.dirty.insert(at);
    }

    pub fn cancel(&mut self, at: Nid, op: OpId) {
        if let Some(n) = self.nodes.get_mut(&at) {
            n.driver.node_mut().cancel(op);
        }
        self.dirty.insert(at);
    }

    /// Shuts a node's core down gracefully: everything live completes `Cancelled`.
    pub fn shutdown(&mut self, nid: Nid) {
        if let Some(n) = self.nodes.get_mut(&nid) {
            n.driver.node_mut().shutdown();
        }
        self.dirty.insert(nid);
        self.settle();
    }

    /// Events a node reported since the last call (deliveries count as consumed).
    pub fn take_events(&mut self, nid: Nid) -> Vec<Event> {
        self.take_timed_events(nid)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// Like [`Sim::take_events`], with the time each event was reported.
    pub fn take_timed_events(&mut self, nid: Nid) -> Vec<(Time, Event)> {
        self.nodes
            .get_mut(&nid)
            .map(|n| std::mem::take(&mut n.events))
            .unwrap_or_default()
    }

    /// Runs everything due at the current instant until no node has anything left to do.
    /// Only nodes with something due are visited (a timer, an arrival, the application's
    /// touch), so a large quiet network costs nothing.
    fn settle(&mut self) {
        let now = self.clock.now();
        loop {
            let mut work = std::mem::take(&mut self.dirty);
            while let Some(&Reverse((t, nid))) = self.timers.peek() {
                if t > now {
                    break;
                }
                self.timers.pop();
                if self.booked.get(&nid) == Some(&t) {
                    self.booked.remove(&nid);
                }
                work.insert(nid);
            }
            let owners = &self.owners;
            work.extend(
                self.fabric
                    .due_ports(now)
                    .into_iter()
                    .filter_map(|port| owners.get(&port).copied()),
            );
            if work.is_empty() {
                return;
            }
            for nid in work {
                self.run_node(nid, now);
            }
        }
    }

    /// Runs one node until it has nothing left to do at `now`, then books its next timer.
    fn run_node(&mut self, nid: Nid, now: Time) {
        let Some(n) = self.nodes.get_mut(&nid) else {
            return;
        };
        loop {
            let mut progress = false;
            let node = n.driver.node_mut();
            node.handle_timeout(now);
            progress |= n.driver.flush();
            let handled = n
                .driver
                .poll(&self.clock, Some(Duration::ZERO))
                .expect("the in-memory LND does not fail");
            progress |= handled > 0;
            progress |= n.driver.flush();
            let node = n.driver.node_mut();
            let mut delivered = 0;
            while let Some(ev) = node.poll_event() {
                progress = true;
                delivered += usize::from(ev.is_delivery());
                if let Event::Completed(c) = &ev {
                    self.ledger.completed(nid, c);
                }
                n.events.push((now, ev));
            }
            node.deliveries_consumed(delivered);
            if !progress {
                break;
            }
        }
        if let Some(t) = n.driver.node_mut().poll_timeout() {
            let at = t.max(now);
            if self.booked.get(&nid).is_none_or(|&b| at < b) {
                self.booked.insert(nid, at);
                self.timers.push(Reverse((at, nid)));
            }
        }
    }

    /// When something next happens: a frame arrives or a deadline passes.
    pub fn next_wakeup(&mut self) -> Option<Time> {
        while let Some(&Reverse((_, nid))) = self.timers.peek() {
            if self.nodes.contains_key(&nid) {
                break;
            }
            self.timers.pop(); // a killed node's
        }
        let timer = self.timers.peek().map(|&Reverse((t, _))| t);
        [timer, self.fabric.next_arrival()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Settles the present, then moves to the next instant anything happens and settles it.
    /// False if nothing is scheduled at all.
    pub fn step(&mut self) -> bool {
        self.settle();
        let Some(next) = self.next_wakeup() else {
            return false;
        };
        self.clock.advance_to(next.max(self.clock.now()));
        self.settle();
        true
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: Time) {
        loop {
            self.settle();
            match self.next_wakeup() {
                Some(next) if next <= t => self.clock.advance_to(next.max(self.clock.now())),
                _ => break,
            }
        }
        self.clock.advance_to(t);
        self.settle();
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.clock.now() + d;
        self.run_until(t);
    }

    /// Runs until nothing is pending anywhere, or `limit` of virtual time has passed.
    /// True if it went quiet.
    pub fn run_until_idle(&mut self, limit: Duration) -> bool {
        let end = self.clock.now() + limit;
        loop {
            self.settle();
            match self.next_wakeup() {
                None => return true,
                Some(next) if next > end => {
                    self.clock.advance_to(end);
                    self.settle();
                    return false;
                }
                Some(next) => self.clock.advance_to(next.max(self.clock.now())),
            }
        }
    }
}

#[cfg(test)]
mod absence_cluster;
#[cfg(test)]
mod absence_tests;
#[cfg(test)]
mod chaos_tests;
#[cfg(test)]
mod failover_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod routing_load_tests;
#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod tests;
