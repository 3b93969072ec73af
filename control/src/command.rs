//! What a control socket is asked: one command per connection, one line of text each way
//! (the answer is JSON). Parsed and printed here only, so server and client agree.
//!
//! ```text
//! status                                     the node's whole report
//! routing on | routing off                   a router forwards again, or is taken out
//! route add NET GATEWAY [hop N] [priority P] add a route (until restart or reload)
//! route del NET GATEWAY                      remove one
//! ping NID [TIMEOUT_MS]                      a health-lane round trip, through routes
//! export                                     the running configuration as TOML
//! ```

use std::fmt;
use std::time::Duration;

use lanet::{Net, Nid, Route};

/// Longest a `ping` may be told to wait.
pub const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// A `ping`'s deadline when none is given.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    /// `routing on` (true) or `routing off`.
    Routing(bool),
    RouteAdd(Route),
    RouteDel {
        net: Net,
        gateway: Nid,
    },
    Ping {
        nid: Nid,
        timeout: Duration,
    },
    Export,
}

fn number<T: std::str::FromStr>(what: &str, s: Option<&str>) -> Result<T, String> {
    let s = s.ok_or_else(|| format!("{what}: expected a number after it"))?;
    s.parse()
        .map_err(|_| format!("{what}: expected a number, got {s:?}"))
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let nid = |s: &str| s.parse::<Nid>().map_err(|e| format!("{s:?}: {e}"));
        let net = |s: &str| s.parse::<Net>().map_err(|e| format!("{s:?}: {e}"));
        match words.as_slice() {
            [] | ["status"] => Ok(Command::Status),
            ["routing", "on"] => Ok(Command::Routing(true)),
            ["routing", "off"] => Ok(Command::Routing(false)),
            ["route", "add", n, g, rest @ ..] => {
                let mut route = Route {
                    net: net(n)?,
                    gateway: nid(g)?,
                    hops: 1,
                    priority: 0,
                };
                let mut it = rest.iter().copied();
                while let Some(key) = it.next() {
                    match key {
                        "hop" => route.hops = number("hop", it.next())?,
                        "priority" => route.priority = number("priority", it.next())?,
                        other => {
                            return Err(format!(
                                "route add: unknown {other:?}: expected hop N or priority P"
                            ))
                        }
                    }
                }
                if route.hops == 0 {
                    return Err("route add: a route has at least one hop".into());
                }
                Ok(Command::RouteAdd(route))
            }
            ["route", "del", n, g] => Ok(Command::RouteDel {
                net: net(n)?,
                gateway: nid(g)?,
            }),
            ["ping", n] => Ok(Command::Ping {
                nid: nid(n)?,
                timeout: DEFAULT_PING_TIMEOUT,
            }),
            ["ping", n, ms] => {
                let ms: u64 = number("ping timeout (ms)", Some(ms))?;
                let timeout = Duration::from_millis(ms);
                if timeout.is_zero() || timeout > MAX_PING_TIMEOUT {
                    return Err(format!(
                        "ping timeout: expected 1 to {} ms, got {ms}",
                        MAX_PING_TIMEOUT.as_millis()
                    ));
                }
                Ok(Command::Ping {
                    nid: nid(n)?,
                    timeout,
                })
            }
            ["export"] => Ok(Command::Export),
            _ => Err(format!(
                "unknown command {:?}: expected status, routing on|off, route add|del, \
                 ping NID, or export",
                line.trim()
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Status => write!(f, "status"),
            Command::Routing(on) => write!(f, "routing {}", if *on { "on" } else { "off" }),
            Command::RouteAdd(r) => write!(
                f,
                "route add {} {} hop {} priority {}",
                r.net, r.gateway, r.hops, r.priority
            ),
            Command::RouteDel { net, gateway } => write!(f, "route del {net} {gateway}"),
            Command::Ping { nid, timeout } => write!(f, "ping {nid} {}", timeout.as_millis()),
            Command::Export => write!(f, "export"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reads_back_as_printed() {
        let commands = [
            Command::Status,
            Command::Routing(true),
            Command::Routing(false),
            Command::RouteAdd(Route {
                net: "tcp2".parse().unwrap(),
                gateway: "10.0.0.1:7000@tcp".parse().unwrap(),
                hops: 2,
                priority: 3,
            }),
            Command::RouteDel {
                net: "o2ib1".parse().unwrap(),
                gateway: "10.0.0.1@tcp".parse().unwrap(),
            },
            Command::Ping {
                nid: "10.0.0.2@tcp".parse().unwrap(),
                timeout: Duration::from_millis(250),
            },
            Command::Export,
        ];
        for c in commands {
            assert_eq!(Command::parse(&c.to_string()), Ok(c.clone()), "{c}");
        }
    }

    #[test]
    fn bad_commands_say_what_was_expected() {
        for (line, says) in [
            ("reboot", "unknown command"),
            ("route add tcp2", "unknown command"),
            ("route add tcp2 nonsense", "\"nonsense\""),
            ("route add tcp2 10.0.0.1@tcp hop", "expected a number"),
            ("route add tcp2 10.0.0.1@tcp hop 0", "at least one hop"),
            ("route add tcp2 10.0.0.1@tcp weight 2", "unknown \"weight\""),
            ("ping 10.0.0.1@tcp 0", "expected 1 to 30000 ms"),
            ("ping 10.0.0.1@tcp 99999", "expected 1 to 30000 ms"),
        ] {
            let e = Command::parse(line).expect_err(line);
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
