//! The cluster the black-hole tests run: a client on net 1, two servers on net 2, and
//! routers on both, fellows of each other; a stream of PUTs through them, and what it saw.

use std::time::Duration;

use bytes::Bytes;

use super::routing_tests::{on, put, route, seeded_sim};
use super::*;
use crate::config::RouterConfig;
use crate::nid::Net;
use crate::op::{OpError, OpOutcome};
use crate::wire::RouterState;

pub(super) const MS: Duration = Duration::from_millis(1);

pub(super) struct Cluster {
    pub(super) sim: Sim,
    pub(super) client: Nid,
    pub(super) servers: [Nid; 2],
    /// In the order of their numbers (8, 9, ...).
    pub(super) routers: Vec<Nid>,
}

pub(super) fn net(n: u16) -> Net {
    on(n, 0).net()
}

/// Client 1 on net 1; servers 2 and 3 on net 2; routers 8 and 9 on both, each the other's
/// fellow, with `router` settings.
pub(super) fn cluster(router: RouterConfig) -> Cluster {
    cluster_with([router.clone(), router])
}

/// The same, router 8 with the first settings, router 9 with the second.
pub(super) fn cluster_with(routers: [RouterConfig; 2]) -> Cluster {
    cluster_of(&[(8, routers[0].clone()), (9, routers[1].clone())])
}

/// Client 1 on net 1; servers 2 and 3 on net 2; a router numbered `n` on both nets for
/// each of `routers`, with its settings, every other its fellow.
pub(super) fn cluster_of(routers: &[(u32, RouterConfig)]) -> Cluster {
    let mut sim = seeded_sim(7);
    let client = on(1, 1);
    let servers = [on(2, 2), on(2, 3)];
    sim.add_node(client, NodeConfig::new(1)).unwrap();
    for (i, &s) in servers.iter().enumerate() {
        sim.add_node(s, NodeConfig::new(2 + i as u64)).unwrap();
        sim.attach(s, MatchEntry::sink(4, 1, 64));
    }
    for (n, router) in routers {
        // On both nets: hearing a fellow on one but not the other tells a router that it
        // is the one cut off.
        let fellows = routers
            .iter()
            .filter(|(f, _)| f != n)
            .flat_map(|(f, _)| [on(1, *f), on(2, *f)])
            .collect();
        let cfg = NodeConfig {
            forwarding: true,
            router: RouterConfig {
                fellows,
                ..router.clone()
            },
            ..NodeConfig::new(u64::from(*n) * 100)
        };
        let lnd = crate::mem::MemLndConfig::for_node(&cfg);
        sim.add_node_on(&[on(1, *n), on(2, *n)], cfg, lnd).unwrap();
        sim.add_route(client, route(2, on(1, *n), 1)).unwrap();
        for s in servers {
            sim.add_route(s, route(1, on(2, *n), 1)).unwrap();
        }
    }
    Cluster {
        sim,
        client,
        servers,
        routers: routers.iter().map(|(n, _)| on(1, *n)).collect(),
    }
}

pub(super) fn quick() -> RouterConfig {
    RouterConfig {
        warm_up: Duration::ZERO,
        ..RouterConfig::default()
    }
}

/// What a stream of PUTs saw: each result, and copies delivered per index.
#[derive(Default)]
pub(super) struct Stream {
    pub(super) ops: FxHashMap<OpId, u32>,
    pub(super) results: Vec<Result<OpOutcome, OpError>>,
    pub(super) delivered: FxHashMap<u32, u32>,
    pub(super) sent: u32,
}

impl Cluster {
    pub(super) fn state(&self, r: usize) -> RouterState {
        self.sim.node(self.routers[r]).router_status().state
    }

    pub(super) fn forwarded(&self, r: usize) -> u64 {
        self.sim.node(self.routers[r]).stats().forwarded
    }

    /// Cuts (or heals) router `r`'s links to every server.
    pub(super) fn cut_from_servers(&mut self, r: usize, cut: bool) {
        let near = on(2, self.routers[r].addr_num());
        for s in self.servers {
            self.sim.fabric().set_cut(near, s, cut);
        }
    }

    /// Pulls (or plugs back) router `r`'s cable on net 2: cut from the servers and from
    /// the other router there.
    pub(super) fn pull_cable(&mut self, r: usize, cut: bool) {
        self.cut_from_servers(r, cut);
        let (a, b) = (self.routers[0].addr_num(), self.routers[1].addr_num());
        self.sim.fabric().set_cut(on(2, a), on(2, b), cut);
    }

    /// Runs for `d`, the client putting to the servers three times a millisecond (so that
    /// with round-robin routing each router serves both), and collects what completed and
    /// what was delivered.
    pub(super) fn stream(&mut self, d: Duration, s: &mut Stream) {
        let end = self.sim.now() + d;
        while self.sim.now() < end {
            for server in [self.servers[0], self.servers[1], self.servers[0]] {
                let payload = Bytes::from(s.sent.to_le_bytes().to_vec());
                let op = self.sim.put(self.client, put(server, 4, payload));
                s.ops.insert(op, s.sent);
                s.sent += 1;
            }
            let next = self.sim.now() + MS;
            self.sim.run_until(next);
            self.collect(s);
        }
    }

    /// Runs until every op of the stream completed.
    pub(super) fn settle(&mut self, s: &mut Stream) {
        for _ in 0..100 {
            if s.results.len() == s.ops.len() {
                break;
            }
            self.sim.run_for(100 * MS);
            self.collect(s);
        }
        self.sim.run_for(100 * MS);
        self.collect(s);
    }

    pub(super) fn collect(&mut self, s: &mut Stream) {
        for e in self.sim.take_events(self.client) {
            if let Event::Completed(c) = e {
                assert!(s.ops.contains_key(&c.op), "a completion of nothing");
                s.results.push(c.result);
            }
        }
        for server in self.servers {
            for e in self.sim.take_events(server) {
                if let Event::Delivered(d) = e {
                    let i = u32::from_le_bytes(d.payload[..4].try_into().unwrap());
                    *s.delivered.entry(i).or_default() += 1;
                }
            }
        }
    }
}

impl Stream {
    /// Every op completed once, successfully, and was delivered exactly once.
    pub(super) fn check_nothing_lost(&self) {
        assert_eq!(
            self.results.len(),
            self.ops.len(),
            "every op completed once"
        );
        let failed: Vec<_> = self.results.iter().filter(|r| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert_eq!(self.delivered.len() as u32, self.sent, "every op delivered");
        assert!(self.delivered.values().all(|&n| n == 1), "none twice");
    }
}

pub(super) trait AddrNum {
    fn addr_num(&self) -> u32;
}

impl AddrNum for Nid {
    fn addr_num(&self) -> u32 {
        match self.addr() {
            crate::nid::NidAddr::Num(n) => n,
            _ => unreachable!("mem NIDs are numbers"),
        }
    }
}

pub(super) fn router_events(sim: &mut Sim, r: Nid) -> Vec<(RouterState, bool, String)> {
    sim.take_events(r)
        .into_iter()
        .filter_map(|e| match e {
            Event::RouterChanged {
                state,
                degraded,
                cause,
                ..
            } => Some((state, degraded, cause)),
            _ => None,
        })
        .collect()
}
