//! The topology checker (`lanetctl topology check FILE`): reads a site's nets, routers,
//! servers and failover pairs and finds the layouts where lanet cannot keep its promises,
//! each with its reason:
//!
//! * `split-pair`: a failover pair whose servers a client net reaches through different
//!   single routers. When that router fails, the client sees its server vanish and fails
//!   over, exactly as if the server had died: router failure and server failover cannot be
//!   told apart (seed 000), and a live server is abandoned.
//! * `partial-router`: a router that reaches one server of a pair from a client net but
//!   not the other: after failover its clients lose that path.
//! * `unreachable-member`: a server of a pair that a client net cannot reach at all: after
//!   failover to it, the clients there are cut off.
//! * `single-router` / `no-router`: a net with one router on it (its only way out), or none
//!   (cut off from the others).
//! * `no-fail-open`: routers joining the same nets that are not all fellows of each other
//!   (once per such group of routers). A router fails open (stays, degraded, rather than
//!   strand a pair of nets) only by knowing the others between the same nets; strangers
//!   could all withdraw at once.
//!
//! Not flagged: a pair with one server on the client net and the other behind a single
//! router. Its router failing looks like that server failing, but clients only go there
//! once the first server has died, and then they have nowhere else to go anyway.
//!
//! Routes are taken as one hop: a client net reaches a server's net through the routers
//! with an NI on both (or directly, on the same net).
//!
//! ```toml
//! [[net]]
//! name = "tcp1"
//! clients = true            # clients live here (default false)
//!
//! [[router]]
//! name = "r1"
//! nets = ["tcp1", "tcp2"]
//! fellows = ["r2"]
//!
//! [[server]]
//! name = "oss1"
//! net = "tcp2"
//!
//! [[pair]]
//! servers = ["oss1", "oss2"]
//! ```

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default, rename = "net")]
    pub nets: Vec<NetEntry>,
    #[serde(default, rename = "router")]
    pub routers: Vec<RouterEntry>,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerEntry>,
    #[serde(default, rename = "pair")]
    pub pairs: Vec<PairEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetEntry {
    pub name: String,
    #[serde(default)]
    pub clients: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterEntry {
    pub name: String,
    pub nets: Vec<String>,
    #[serde(default)]
    pub fellows: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    pub name: String,
    pub net: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairEntry {
    pub servers: Vec<String>,
}

/// One thing wrong with a topology, and why it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `split-pair`, `partial-router`, `single-router` or `no-fail-open`.
    pub rule: &'static str,
    pub what: String,
    pub why: &'static str,
}

const SPLIT_PAIR: &str = "a router failing looks to these clients exactly like the server \
    failing: they fail over and abandon a live server (seed 000); give both servers the \
    same routers, or more than one each";
const PARTIAL_ROUTER: &str = "after failover to the other server, this router's clients \
    lose their path through it";
const UNREACHABLE: &str = "after failover to it, these clients have no way to it";
const NO_ROUTER: &str = "no way between it and the other nets";
const SINGLE_ROUTER: &str = "its only way to other nets: when that router fails or \
    withdraws, the net is cut off";
const NO_FAIL_OPEN: &str = "a router stays (degraded) rather than strand a pair of nets \
    only if it knows the others between them: list them as each other's fellows";

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, String> {
        let text = lanet::config::read_config_text(path)
            .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        Topology::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Topology, String> {
        let t: Topology = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        t.check_names()?;
        Ok(t)
    }

    /// Every name used is defined, and none twice.
    fn check_names(&self) -> Result<(), String> {
        let nets: BTreeSet<&str> = self.nets.iter().map(|n| n.name.as_str()).collect();
        let routers: BTreeSet<&str> = self.routers.iter().map(|r| r.name.as_str()).collect();
        let servers: BTreeSet<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        for (kind, names, count) in [
            ("net", &nets, self.nets.len()),
            ("router", &routers, self.routers.len()),
            ("server", &servers, self.servers.len()),
        ] {
            if names.len() != count {
                return Err(format!("a {kind} name is used twice"));
            }
        }
        let known = |set: &BTreeSet<&str>, kind: &str, name: &str, by: &str| {
            if set.contains(name) {
                Ok(())
            } else {
                Err(format!("{by} names {kind} {name:?}, which is not defined"))
            }
        };
        for r in &self.routers {
            for n in &r.nets {
                known(&nets, "net", n, &format!("router {}", r.name))?;
            }
            for f in &r.fellows {
                known(&routers, "router", f, &format!("router {}", r.name))?;
            }
        }
        for s in &self.servers {
            known(&nets, "net", &s.net, &format!("server {}", s.name))?;
        }
        for p in &self.pairs {
            if p.servers.len() < 2 {
                return Err(format!(
                    "pair {:?}: a failover pair has at least two servers",
                    p.servers
                ));
            }
            for s in &p.servers {
                known(&servers, "server", s, "a pair")?;
            }
        }
        Ok(())
    }

    fn server_net(&self, name: &str) -> &str {
        &self
            .servers
            .iter()
            .find(|s| s.name == name)
            .expect("checked")
            .net
    }

    /// Routers with an NI on both nets.
    fn joining(&self, a: &str, b: &str) -> Vec<&RouterEntry> {
        self.routers
            .iter()
            .filter(|r| r.nets.iter().any(|n| n == a) && r.nets.iter().any(|n| n == b))
            .collect()
    }

    pub fn check(&self) -> Vec<Finding> {
        let mut found = Vec::new();
        let client_nets: Vec<&str> = self
            .nets
            .iter()
            .filter(|n| n.clients)
            .map(|n| n.name.as_str())
            .collect();
        for pair in &self.pairs {
            let names = pair.servers.join("/");
            for &c in &client_nets {
                // Per server: None if it is on the client net itself, else its routers.
                let ways: Vec<(&str, Option<Vec<&str>>)> = pair
                    .servers
                    .iter()
                    .map(|s| {
                        let net = self.server_net(s);
                        let via = (net != c).then(|| {
                            self.joining(c, net)
                                .iter()
                                .map(|r| r.name.as_str())
                                .collect()
                        });
                        (s.as_str(), via)
                    })
                    .collect();
                let singles: BTreeSet<&str> = ways
                    .iter()
                    .filter_map(|(_, via)| match via.as_deref() {
                        Some([one]) => Some(*one),
                        _ => None,
                    })
                    .collect();
                if singles.len() >= 2
                    && ways
                        .iter()
                        .all(|(_, via)| via.as_ref().is_some_and(|v| v.len() == 1))
                {
                    let detail: Vec<String> = ways
                        .iter()
                        .map(|(s, via)| {
                            format!("{s} only through {}", via.as_ref().expect("all routed")[0])
                        })
                        .collect();
                    found.push(Finding {
                        rule: "split-pair",
                        what: format!("pair {names}, from clients on {c}: {}", detail.join(", ")),
                        why: SPLIT_PAIR,
                    });
                }
                for (s, via) in &ways {
                    if via.as_ref().is_some_and(Vec::is_empty) {
                        found.push(Finding {
                            rule: "unreachable-member",
                            what: format!("{s} of pair {names} cannot be reached from {c}: no router joins {c} and {}", self.server_net(s)),
                            why: UNREACHABLE,
                        });
                    }
                }
                let all: BTreeSet<&str> = ways
                    .iter()
                    .filter_map(|(_, via)| via.as_ref())
                    .flatten()
                    .copied()
                    .collect();
                for r in all {
                    let missed: Vec<&str> = ways
                        .iter()
                        // Members no router reaches are found above, once.
                        .filter(|(_, via)| {
                            via.as_ref()
                                .is_some_and(|v| !v.is_empty() && !v.contains(&r))
                        })
                        .map(|(s, _)| *s)
                        .collect();
                    if !missed.is_empty() {
                        found.push(Finding {
                            rule: "partial-router",
                            what: format!(
                                "router {r} reaches pair {names} from {c} but not {}",
                                missed.join(", ")
                            ),
                            why: PARTIAL_ROUTER,
                        });
                    }
                }
            }
        }
        if self.nets.len() > 1 {
            for net in &self.nets {
                let on: Vec<&str> = self
                    .routers
                    .iter()
                    .filter(|r| r.nets.contains(&net.name))
                    .map(|r| r.name.as_str())
                    .collect();
                match on.as_slice() {
                    [] => found.push(Finding {
                        rule: "no-router",
                        what: format!("net {} has no router", net.name),
                        why: NO_ROUTER,
                    }),
                    [one] => found.push(Finding {
                        rule: "single-router",
                        what: format!("net {} has one router, {one}", net.name),
                        why: SINGLE_ROUTER,
                    }),
                    _ => {}
                }
            }
        }
        // Per group of routers joining the same nets: the pairs of nets, and who does not
        // know whom.
        let mut groups: Vec<(Vec<&str>, Vec<String>)> = Vec::new();
        for (i, a) in self.nets.iter().enumerate() {
            for b in &self.nets[i + 1..] {
                let between = self.joining(&a.name, &b.name);
                if between.len() < 2 {
                    continue;
                }
                let names: Vec<&str> = between.iter().map(|r| r.name.as_str()).collect();
                let pair = format!("{}-{}", a.name, b.name);
                match groups.iter_mut().find(|(g, _)| *g == names) {
                    Some((_, pairs)) => pairs.push(pair),
                    None => groups.push((names, vec![pair])),
                }
            }
        }
        for (names, pairs) in groups {
            let strangers: Vec<String> = self
                .routers
                .iter()
                .filter(|r| names.contains(&r.name.as_str()))
                .flat_map(|r| {
                    names
                        .iter()
                        .filter(|&&o| o != r.name && !r.fellows.iter().any(|f| f == o))
                        .map(move |o| format!("{} does not list {o}", r.name))
                })
                .collect();
            if !strangers.is_empty() {
                found.push(Finding {
                    rule: "no-fail-open",
                    what: format!(
                        "routers {} (nets {}): {}",
                        names.join(", "),
                        pairs.join(", "),
                        strangers.join(", ")
                    ),
                    why: NO_FAIL_OPEN,
                });
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients on tcp1; servers s1, s2 on tcp2 (a pair); routers given.
    fn site(routers: &str, servers: &str) -> Vec<Finding> {
        let text = format!(
            "[[net]]\nname = \"tcp1\"\nclients = true\n[[net]]\nname = \"tcp2\"\n\
             [[net]]\nname = \"tcp3\"\n{routers}{servers}[[pair]]\nservers = [\"s1\", \"s2\"]\n"
        );
        Topology::parse(&text).unwrap().check()
    }

    const BOTH_ON_TCP2: &str = "[[server]]\nname = \"s1\"\nnet = \"tcp2\"\n\
                                [[server]]\nname = \"s2\"\nnet = \"tcp2\"\n";
    const SPLIT: &str = "[[server]]\nname = \"s1\"\nnet = \"tcp2\"\n\
                         [[server]]\nname = \"s2\"\nnet = \"tcp3\"\n";

    fn router(name: &str, nets: &[&str], fellows: &[&str]) -> String {
        let q = |v: &[&str]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[[router]]\nname = \"{name}\"\nnets = [{}]\nfellows = [{}]\n",
            q(nets),
            q(fellows)
        )
    }

    fn rules(found: &[Finding]) -> Vec<&'static str> {
        found.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn a_sound_site_has_no_findings() {
        let routers = router("r1", &["tcp1", "tcp2", "tcp3"], &["r2"])
            + &router("r2", &["tcp1", "tcp2", "tcp3"], &["r1"]);
        assert_eq!(site(&routers, SPLIT), vec![]);
        assert_eq!(site(&routers, BOTH_ON_TCP2), vec![]);
    }

    #[test]
    fn a_pair_behind_different_single_routers_is_a_split_pair() {
        let routers = router("r1", &["tcp1", "tcp2"], &[]) + &router("r2", &["tcp1", "tcp3"], &[]);
        let found = site(&routers, SPLIT);
        let split = found
            .iter()
            .find(|f| f.rule == "split-pair")
            .expect("split-pair");
        assert!(
            split.what.contains("s1 only through r1") && split.what.contains("s2 only through r2"),
            "{split:?}"
        );
        assert!(split.why.contains("seed 000"));
    }

    #[test]
    fn a_router_reaching_one_server_of_a_pair_is_partial() {
        let routers = router("r1", &["tcp1", "tcp2", "tcp3"], &["r2"])
            + &router("r2", &["tcp1", "tcp2"], &["r1"]);
        let found = site(&routers, SPLIT);
        assert_eq!(
            rules(&found),
            ["partial-router", "single-router"],
            "{found:?}"
        );
        assert_eq!(
            found[0].what,
            "router r2 reaches pair s1/s2 from tcp1 but not s2"
        );
    }

    #[test]
    fn a_net_with_one_router_is_found() {
        let routers = router("r1", &["tcp1", "tcp2", "tcp3"], &["r2"])
            + &router("r2", &["tcp1", "tcp2"], &["r1"]);
        let found = site(&routers, BOTH_ON_TCP2);
        assert_eq!(rules(&found), ["single-router"]);
        assert_eq!(found[0].what, "net tcp3 has one router, r1");
    }

    #[test]
    fn routers_that_are_strangers_could_all_withdraw_at_once() {
        let routers = router("r1", &["tcp1", "tcp2", "tcp3"], &["r2"])
            + &router("r2", &["tcp1", "tcp2", "tcp3"], &[]);
        let found = site(&routers, BOTH_ON_TCP2);
        assert_eq!(
            rules(&found),
            ["no-fail-open"],
            "once for the two routers: {found:?}"
        );
        assert!(found[0].what.contains("r2 does not list r1"), "{found:?}");
        assert!(
            found[0].what.contains("tcp1-tcp2, tcp1-tcp3, tcp2-tcp3"),
            "{found:?}"
        );
    }

    #[test]
    fn a_member_no_router_reaches_is_found_and_so_is_a_net_with_no_router() {
        // s1 on tcp2 (r1 joins tcp1 and tcp2); s2 on tcp3, which no router is on.
        let routers =
            router("r1", &["tcp1", "tcp2"], &["r2"]) + &router("r2", &["tcp1", "tcp2"], &["r1"]);
        let found = site(&routers, SPLIT);
        assert_eq!(
            rules(&found),
            ["unreachable-member", "no-router"],
            "{found:?}"
        );
        assert!(
            found[0]
                .what
                .starts_with("s2 of pair s1/s2 cannot be reached from tcp1"),
            "{found:?}"
        );
    }

    #[test]
    fn names_that_are_not_defined_are_errors() {
        let bad = "[[net]]\nname = \"tcp1\"\n[[router]]\nname = \"r1\"\nnets = [\"tcp9\"]\n";
        let e = Topology::parse(bad).unwrap_err();
        assert!(e.contains("router r1 names net \"tcp9\""), "{e}");
        let e = Topology::parse("[[pair]]\nservers = [\"a\"]\n").unwrap_err();
        assert!(e.contains("at least two servers"), "{e}");
        let e = Topology::parse("[[nett]]\n").unwrap_err();
        assert!(e.contains("nett"), "{e}");
    }
}
