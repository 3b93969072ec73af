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
//! fault drop add [src=P] [dst=P] [lane=L] [rate=N]
//! fault delay add latency_ms=N [src=P] [dst=P] [lane=L] [rate=N]
//!                                            frames arriving dropped or delayed: every
//!                                            Nth from src to dst (`*`, a net or a NID)
//!                                            on lane `health`, `data` or `*`
//! fault del ID                               remove a fault rule
//! ```

use std::fmt;
use std::time::Duration;

use lanet::node::{FaultAction, FaultRule, NidPattern};
use lanet::{Lane, Net, Nid, Route};

/// Longest a `ping` may be told to wait.
pub const MAX_PING_TIMEOUT: Duration = Duration::from_secs(30);
/// A `ping`'s deadline when none is given.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A ping's timeout of `ms` milliseconds, if within 1 ms and [`MAX_PING_TIMEOUT`].
pub fn ping_timeout(ms: u64) -> Result<Duration, String> {
    let timeout = Duration::from_millis(ms);
    if timeout.is_zero() || timeout > MAX_PING_TIMEOUT {
        return Err(format!(
            "expected 1 to {} ms, got {ms}",
            MAX_PING_TIMEOUT.as_millis()
        ));
    }
    Ok(timeout)
}

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
    FaultAdd(FaultRule),
    FaultDel(u32),
}

/// `health`, `data`, or `*` (None: either).
pub fn parse_lane(s: &str) -> Result<Option<Lane>, String> {
    match s {
        "*" => Ok(None),
        "health" => Ok(Some(Lane::Health)),
        "data" => Ok(Some(Lane::Data)),
        other => Err(format!("lane {other:?}: expected health, data or *")),
    }
}

fn lane_name(lane: Option<Lane>) -> &'static str {
    lane.map_or("*", Lane::name)
}

/// `fault drop|delay add KEY=VALUE...`.
fn parse_fault(delay: bool, args: &[&str]) -> Result<FaultRule, String> {
    let mut rule = FaultRule {
        action: FaultAction::Drop,
        src: NidPattern::Any,
        dst: NidPattern::Any,
        lane: None,
        rate: 1,
    };
    let mut latency = None;
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("fault: {arg:?}: expected KEY=VALUE"))?;
        match key {
            "src" => rule.src = value.parse()?,
            "dst" => rule.dst = value.parse()?,
            "lane" => rule.lane = parse_lane(value)?,
            "rate" => rule.rate = number("rate", Some(value))?,
            "latency_ms" if delay => latency = Some(number::<u64>("latency_ms", Some(value))?),
            other => {
                let keys = if delay {
                    "src, dst, lane, rate or latency_ms"
                } else {
                    "src, dst, lane or rate"
                };
                return Err(format!("fault: unknown key {other:?}: expected {keys}"));
            }
        }
    }
    if delay {
        let ms = latency.ok_or("fault delay: latency_ms=N is needed")?;
        rule.action = FaultAction::Delay(Duration::from_millis(ms));
    }
    Ok(rule)
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
                let timeout = ping_timeout(ms).map_err(|e| format!("ping timeout: {e}"))?;
                Ok(Command::Ping {
                    nid: nid(n)?,
                    timeout,
                })
            }
            ["export"] => Ok(Command::Export),
            ["fault", "drop", "add", rest @ ..] => parse_fault(false, rest).map(Command::FaultAdd),
            ["fault", "delay", "add", rest @ ..] => parse_fault(true, rest).map(Command::FaultAdd),
            ["fault", "del", id] => Ok(Command::FaultDel(number("fault id", Some(id))?)),
            _ => Err(format!(
                "unknown command {:?}: expected status, routing on|off, route add|del, \
                 ping NID, export, fault drop|delay add, or fault del",
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
            Command::FaultAdd(r) => {
                let (what, latency) = match r.action {
                    FaultAction::Drop => ("drop", String::new()),
                    FaultAction::Delay(d) => ("delay", format!(" latency_ms={}", d.as_millis())),
                };
                write!(
                    f,
                    "fault {what} add src={} dst={} lane={} rate={}{latency}",
                    r.src,
                    r.dst,
                    lane_name(r.lane),
                    r.rate
                )
            }
            Command::FaultDel(id) => write!(f, "fault del {id}"),
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
            Command::FaultAdd(FaultRule {
                action: FaultAction::Drop,
                src: "tcp1".parse().unwrap(),
                dst: "*".parse().unwrap(),
                lane: Some(Lane::Health),
                rate: 3,
            }),
            Command::FaultAdd(FaultRule {
                action: FaultAction::Delay(Duration::from_millis(40)),
                src: "10.0.0.2@tcp".parse().unwrap(),
                dst: "10.0.0.3@tcp".parse().unwrap(),
                lane: None,
                rate: 1,
            }),
            Command::FaultDel(7),
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
            ("fault drop add lane=both", "expected health, data or *"),
            ("fault drop add rate", "expected KEY=VALUE"),
            ("fault drop add latency_ms=5", "unknown key \"latency_ms\""),
            ("fault delay add src=*", "latency_ms=N is needed"),
            ("fault drop add src=nowhere", "expected *, a net or a NID"),
            ("fault del x", "expected a number"),
        ] {
            let e = Command::parse(line).expect_err(line);
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
