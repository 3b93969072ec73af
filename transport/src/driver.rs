//! The glue between a [`Node`] and its LNDs: hands the node's frames and requests to the
//! drivers, and the drivers' events to the node. Both the threaded [`crate::Endpoint`] and
//! the deterministic [`crate::sim::Sim`] run nodes through this one loop body.

use std::sync::Arc;
use std::time::Duration;

use crate::config::NodeConfig;
use crate::lnd::{Lnd, LndError, LndEvent, Wake};
use crate::node::{LndRequest, NiId, Node};
use crate::op::OpError;
use crate::time::Clock;

/// A node and the drivers of its NIs (NI `i` is driver `i`).
pub struct Driver {
    node: Node,
    lnds: Vec<Box<dyn Lnd>>,
    scratch: Vec<LndEvent>,
}

impl Driver {
    /// A node on `lnds`, one NI per driver, in order.
    pub fn new(cfg: NodeConfig, lnds: Vec<Box<dyn Lnd>>) -> Result<Driver, OpError> {
        cfg.validate()
            .map_err(|e| OpError::Invalid(e.to_string()))?;
        if lnds.is_empty() {
            return Err(OpError::Invalid("a node needs at least one LND".into()));
        }
        let mut node = Node::new(cfg);
        for lnd in &lnds {
            node.add_ni(lnd.nid())?;
        }
        Ok(Driver {
            node,
            lnds,
            scratch: Vec::new(),
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn wakers(&self) -> Vec<Arc<dyn Wake>> {
        self.lnds.iter().map(|l| l.waker()).collect()
    }

    /// Hands everything the node wants done to the drivers. True if there was anything.
    pub fn flush(&mut self) -> bool {
        let mut any = false;
        while let Some((ni, req)) = self.node.poll_request() {
            any = true;
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
            self.lnds[ni.0].post(tx);
        }
        any
    }

    /// Polls the drivers once and feeds their events to the node, at the time `clock` reads
    /// after each poll. Waits up to `timeout` for the first event when there is one driver;
    /// with several, each is polled without waiting and then the first waits at most 1 ms
    /// (a shared readiness fd is the router's job). Returns how many events were handled;
    /// `Err` names a driver that failed for good.
    pub fn poll(
        &mut self,
        clock: &dyn Clock,
        timeout: Option<Duration>,
    ) -> Result<usize, (NiId, LndError)> {
        let mut handled = 0;
        let n = self.lnds.len();
        for i in 0..n {
            let wait = match (n, i) {
                (1, _) => timeout,
                _ => Some(Duration::ZERO),
            };
            handled += self.poll_one(NiId(i), clock, wait)?;
        }
        if n > 1 && handled == 0 {
            let wait = timeout.map_or(Duration::from_millis(1), |t| {
                t.min(Duration::from_millis(1))
            });
            handled += self.poll_one(NiId(0), clock, Some(wait))?;
        }
        Ok(handled)
    }

    fn poll_one(
        &mut self,
        ni: NiId,
        clock: &dyn Clock,
        wait: Option<Duration>,
    ) -> Result<usize, (NiId, LndError)> {
        self.lnds[ni.0]
            .poll(&mut self.scratch, wait)
            .map_err(|e| (ni, e))?;
        let now = clock.now();
        let n = self.scratch.len();
        for ev in self.scratch.drain(..) {
            self.node.handle_lnd_event(now, ni, ev);
        }
        Ok(n)
    }
}
