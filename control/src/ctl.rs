//! `lanetctl`: an administrator's view of a running lanet node, with `lnetctl`'s verbs.
//! Tables for people; `--json` for scripts (the node's own document, or the part asked
//! for). Exit status 0 when done, 1 when the node refused or could not be asked, 2 for a
//! command line that does not parse.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lanet::config::{ConfigFile, DEFAULT_CONTROL_SOCKET};
use lanet::node::{FaultAction, FaultError, FaultRule};
use lanet::{Net, Nid, Route};
use serde_json::{json, Value};

use crate::client::{request, ClientError};
use crate::command::{parse_lane, ping_timeout, Command};
use crate::table::{cell, render};
use crate::topology::Topology;

/// Looks after a running lanet node (lanet-router, or any program serving a control
/// socket), as lnetctl does LNet.
#[derive(Parser)]
#[command(name = "lanetctl", version)]
struct Cli {
    /// The node's control socket (its configuration's `routing.control_socket`).
    #[arg(long, short, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The node's NIs.
    Net {
        #[command(subcommand)]
        verb: Show,
    },
    /// The peers it monitors: state, health, last heard; with -v credits and queues.
    Peer {
        #[command(subcommand)]
        verb: PeerVerb,
    },
    /// Its routes.
    Route {
        #[command(subcommand)]
        verb: RouteVerb,
    },
    /// As a router: its buffer pools.
    Routing {
        #[command(subcommand)]
        verb: Show,
    },
    /// As a router: forwarding, absent or degraded, why, and the hold-down left.
    Router {
        #[command(subcommand)]
        verb: StatusVerb,
    },
    /// `set routing 0` takes a router out (absent, pushed at once); `set routing 1` lets
    /// it forward again.
    Set {
        #[command(subcommand)]
        what: SetWhat,
    },
    /// Counters per lane: frames, bytes, drops, errors, NACKs, resends.
    Stats {
        #[command(subcommand)]
        verb: Show,
    },
    /// A health-lane round trip to NID from the node, through its routes (lnetctl ping).
    Ping {
        nid: Nid,
        /// How long to wait for the answer.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        verb: ConfigVerb,
    },
    /// The running configuration (its file, with the routes of the moment) as TOML.
    Export,
    /// Converts an LNet configuration (`lnetctl export`, YAML) to a lanet configuration
    /// file (TOML, on standard output); what has no counterpart is named on standard error.
    Import { file: PathBuf },
    /// Site topologies (nets, routers, servers, failover pairs).
    Topology {
        #[command(subcommand)]
        verb: TopologyVerb,
    },
    /// Fault injection (lctl net_drop_add / net_delay_add): frames arriving at the node
    /// dropped or delayed, by source, destination, lane and rate.
    Fault {
        #[command(subcommand)]
        verb: FaultVerb,
    },
}

#[derive(Subcommand)]
enum TopologyVerb {
    /// Finds the layouts where lanet cannot keep its promises (split failover pairs,
    /// single routers, routers that cannot fail open), each with its reason. Exit status 1
    /// if there is any.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum FaultVerb {
    /// Drops every RATEth matching frame, as a lossy network would.
    Drop {
        #[command(subcommand)]
        verb: FaultAdd,
    },
    /// Delays every RATEth matching frame by --latency-ms.
    Delay {
        #[command(subcommand)]
        verb: FaultAdd,
    },
    /// Removes rule ID (as `fault show` numbers them).
    Del { id: u32 },
    /// The rules, and what each has matched and hit.
    Show,
}

#[derive(Subcommand)]
enum FaultAdd {
    Add {
        /// Frames from: `*`, a net (tcp1) or a NID (their initiator or answerer).
        #[arg(long, default_value = "*")]
        src: String,
        /// Frames to: `*`, a net or a NID.
        #[arg(long, default_value = "*")]
        dst: String,
        /// health, data or `*`.
        #[arg(long, default_value = "*")]
        lane: String,
        /// Every RATEth matching frame (1: all).
        #[arg(long, default_value_t = 1)]
        rate: u32,
        /// For delay rules: by how much.
        #[arg(long)]
        latency_ms: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Show {
    Show,
}

#[derive(Subcommand)]
enum StatusVerb {
    Status,
}

#[derive(Subcommand)]
enum PeerVerb {
    Show {
        /// Only this peer.
        nid: Option<Nid>,
        /// Credits (now, most, lowest), frames queued and incarnation too.
        #[arg(short, long)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum RouteVerb {
    Show,
    /// Adds a route to NET through GATEWAY (until the node restarts or reloads its file).
    Add {
        net: Net,
        gateway: Nid,
        #[arg(long, default_value_t = 1)]
        hop: u8,
        #[arg(long, default_value_t = 0)]
        priority: u8,
    },
    /// Removes the route to NET through GATEWAY.
    Del {
        net: Net,
        gateway: Nid,
    },
}

#[derive(Subcommand)]
enum SetWhat {
    Routing {
        #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
        on: u8,
    },
}

#[derive(Subcommand)]
enum ConfigVerb {
    /// Reads FILE as a node would, and says what is wrong with it (file, line, key).
    Check { file: PathBuf },
}

pub fn main() -> ExitCode {
    // Output into a closed pipe (`lanetctl ... | head -1`) ends the program quietly, as
    // other command-line tools do, rather than as a panic of `println!`.
    // SAFETY: sets the default action of one signal, before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(Failure { usage, message }) => {
            eprintln!("lanetctl: {message}");
            // As clap's own: a command line that does not parse is 2, what went wrong
            // asking (or the node's refusal) 1.
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// Why `lanetctl` did not do what it was asked.
struct Failure {
    /// The command line is wrong (exit status 2), not the asking (1).
    usage: bool,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            usage: false,
            message,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        message.to_owned().into()
    }
}

/// A command line that does not parse, though clap took it.
fn usage(message: impl Into<String>) -> Failure {
    Failure {
        usage: true,
        message: message.into(),
    }
}

fn run(cli: &Cli) -> Result<String, Failure> {
    let ask = |c: &Command| request(&cli.socket, c).map_err(|e: ClientError| e.to_string());
    let status = || ask(&Command::Status);
    let as_json = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match &cli.what {
        What::Net { verb: Show::Show } => {
            let s = status()?;
            Ok(if cli.json {
                as_json(&json!({ "nets": s["nets"] }))
            } else {
                nets(&s)
            })
        }
        What::Peer {
            verb: PeerVerb::Show { nid, verbose },
        } => {
            let s = status()?;
            let all = s["peers"].as_array().cloned().unwrap_or_default();
            let chosen: Vec<Value> = match nid {
                None => all,
                Some(n) => {
                    let one: Vec<Value> = all
                        .into_iter()
                        .filter(|p| p["nid"] == n.to_string().as_str())
                        .collect();
                    if one.is_empty() {
                        return Err(format!("{n}: not a peer this node monitors").into());
                    }
                    one
                }
            };
            Ok(if cli.json {
                as_json(&json!({ "peers": chosen }))
            } else {
                peers(&chosen, *verbose)
            })
        }
        What::Route { verb } => match verb {
            RouteVerb::Show => {
                let s = status()?;
                Ok(if cli.json {
                    as_json(&json!({ "routes": s["routes"] }))
                } else {
                    routes(&s)
                })
            }
            RouteVerb::Add {
                net,
                gateway,
                hop,
                priority,
            } => {
                if *hop == 0 {
                    return Err(usage("--hop: a route has at least one hop"));
                }
                let route = Route {
                    net: *net,
                    gateway: *gateway,
                    hops: *hop,
                    priority: *priority,
                };
                done(cli.json, ask(&Command::RouteAdd(route))?)
            }
            RouteVerb::Del { net, gateway } => done(
                cli.json,
                ask(&Command::RouteDel {
                    net: *net,
                    gateway: *gateway,
                })?,
            ),
        },
        What::Routing { verb: Show::Show } => {
            let s = status()?;
            let router = &s["router"];
            Ok(if cli.json {
                as_json(&json!({ "enabled": !router.is_null(), "pools": router["pools"] }))
            } else if router.is_null() {
                "routing: disabled (this node does not forward)".into()
            } else {
                pools(router)
            })
        }
        What::Router {
            verb: StatusVerb::Status,
        } => {
            let s = status()?;
            let router = &s["router"];
            if router.is_null() {
                return Err("this node is not a router (routing is not enabled)".into());
            }
            Ok(if cli.json {
                as_json(router)
            } else {
                router_status(router)
            })
        }
        What::Set {
            what: SetWhat::Routing { on },
        } => done(cli.json, ask(&Command::Routing(*on == 1))?),
        What::Stats { verb: Show::Show } => {
            let s = status()?;
            Ok(if cli.json {
                as_json(&json!({ "lanes": s["lanes"], "counters": s["counters"] }))
            } else {
                stats(&s)
            })
        }
        What::Ping { nid, timeout_ms } => {
            let timeout =
                ping_timeout(*timeout_ms).map_err(|e| usage(format!("--timeout-ms: {e}")))?;
            let answer = ask(&Command::Ping { nid: *nid, timeout })?;
            Ok(if cli.json {
                as_json(&answer)
            } else {
                let rtt = answer["rtt_us"].as_f64().unwrap_or(f64::NAN);
                format!("{nid}: health-lane round trip {rtt:.1} us")
            })
        }
        What::Config {
            verb: ConfigVerb::Check { file },
        } => {
            let f = ConfigFile::load(file).map_err(|e| e.to_string())?;
            let summary = json!({
                "file": file.display().to_string(),
                "ok": true,
                "nets": f.nets.iter().map(|n| n.nid.to_string()).collect::<Vec<_>>(),
                "routes": f.routes.len(),
                "failover_groups": f.failover.len(),
                "router": f.node.forwarding,
            });
            Ok(if cli.json {
                as_json(&summary)
            } else {
                format!(
                    "{}: ok: {} net(s) ({}), {} route(s), {} failover group(s), {}",
                    file.display(),
                    f.nets.len(),
                    f.nets
                        .iter()
                        .map(|n| n.nid.to_string())
                        .collect::<Vec<_>>()
                        .join(" "),
                    f.routes.len(),
                    f.failover.len(),
                    if f.node.forwarding {
                        "a router"
                    } else {
                        "not a router"
                    }
                )
            })
        }
        What::Import { file } => {
            let text = lanet::config::read_config_text(file)
                .map_err(|e| format!("{}: cannot read it: {e}", file.display()))?;
            let imported = crate::import::lnetctl_yaml(&text)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            for note in &imported.notes {
                eprintln!("lanetctl: note: {note}");
            }
            Ok(if cli.json {
                as_json(&json!({ "toml": imported.toml, "notes": imported.notes }))
            } else {
                imported.toml.trim_end().to_owned()
            })
        }
        What::Topology {
            verb: TopologyVerb::Check { file },
        } => {
            let findings = Topology::load(file)?.check();
            if cli.json {
                let list: Vec<Value> = findings
                    .iter()
                    .map(|f| json!({ "rule": f.rule, "what": f.what, "why": f.why }))
                    .collect();
                println!("{}", as_json(&json!({ "findings": list })));
            } else {
                for f in &findings {
                    println!("{}: {}\n    why: {}", f.rule, f.what, f.why);
                }
            }
            match findings.len() {
                0 if cli.json => Ok(String::new()),
                0 => Ok(format!("{}: no findings", file.display())),
                n => Err(format!("{}: {n} finding(s)", file.display()).into()),
            }
        }
        What::Fault { verb } => {
            let add = |delay: bool, a: &FaultAdd| -> Result<String, Failure> {
                let FaultAdd::Add {
                    src,
                    dst,
                    lane,
                    rate,
                    latency_ms,
                } = a;
                let action = match (delay, latency_ms) {
                    (false, None) => FaultAction::Drop,
                    (false, Some(_)) => return Err(usage("--latency-ms is for delay rules")),
                    (true, Some(ms)) => FaultAction::Delay(Duration::from_millis(*ms)),
                    (true, None) => return Err(usage("a delay rule needs --latency-ms")),
                };
                let rule = FaultRule {
                    action,
                    src: src
                        .parse()
                        .map_err(|e: String| usage(format!("--src: {e}")))?,
                    dst: dst
                        .parse()
                        .map_err(|e: String| usage(format!("--dst: {e}")))?,
                    lane: parse_lane(lane).map_err(|e| usage(format!("--lane: {e}")))?,
                    rate: *rate,
                };
                // The node's own check, before any socket is asked (exit 2, not 1).
                rule.check().map_err(|e| match e {
                    FaultError::ZeroRate => usage(format!("--rate: {e}")),
                    _ => usage(format!("--latency-ms: {e}")),
                })?;
                let answer = ask(&Command::FaultAdd(rule))?;
                Ok(if cli.json {
                    answer.to_string()
                } else {
                    format!("fault rule {} added", cell(&answer["id"]))
                })
            };
            match verb {
                FaultVerb::Drop { verb } => add(false, verb),
                FaultVerb::Delay { verb } => add(true, verb),
                FaultVerb::Del { id } => done(cli.json, ask(&Command::FaultDel(*id))?),
                FaultVerb::Show => {
                    let s = status()?;
                    Ok(if cli.json {
                        as_json(&json!({ "faults": s["faults"] }))
                    } else {
                        faults(&s)
                    })
                }
            }
        }
        What::Export => {
            let answer = ask(&Command::Export)?;
            let toml = answer["toml"]
                .as_str()
                .ok_or("the node's export has no TOML in it")?;
            Ok(if cli.json {
                as_json(&answer)
            } else {
                toml.trim_end().to_owned()
            })
        }
    }
}

/// A command that changes something: silent when done (or `{"ok": true}` as JSON).
fn done(json: bool, answer: Value) -> Result<String, Failure> {
    Ok(if json {
        answer.to_string()
    } else {
        String::new()
    })
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn nets(s: &Value) -> String {
    let rows: Vec<Vec<String>> = rows(&s["nets"])
        .iter()
        .map(|n| {
            let up = n["up"].as_bool().unwrap_or(false);
            vec![
                cell(&n["net"]),
                cell(&n["nid"]),
                (if up { "up" } else { "down" }).into(),
            ]
        })
        .collect();
    render(&["NET", "NID", "STATE"], &rows)
}

fn peers(peers: &[Value], verbose: bool) -> String {
    let mut headers = vec!["NID", "STATE", "HEALTH", "LAST_HEARD_MS"];
    if verbose {
        headers.extend([
            "DATA_CREDITS",
            "MAX",
            "LOWEST",
            "QUEUED",
            "HEALTH_CREDITS",
            "INCARNATION",
        ]);
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let mut row = vec![
                cell(&p["nid"]),
                cell(&p["state"]),
                cell(&p["health"]),
                cell(&p["last_heard_ms"]),
            ];
            if verbose {
                let data = &p["lanes"]["data"];
                let health = &p["lanes"]["health"];
                let queued =
                    data["queued"].as_u64().unwrap_or(0) + health["queued"].as_u64().unwrap_or(0);
                row.extend([
                    cell(&data["credits"]),
                    cell(&data["max_credits"]),
                    cell(&data["lowest_credits"]),
                    if p["neighbour"].as_bool() == Some(true) {
                        queued.to_string()
                    } else {
                        "-".into()
                    },
                    cell(&health["credits"]),
                    cell(&p["incarnation"]),
                ]);
            }
            row
        })
        .collect();
    render(&headers, &rows)
}

fn routes(s: &Value) -> String {
    let rows: Vec<Vec<String>> = rows(&s["routes"])
        .iter()
        .map(|r| {
            ["net", "gateway", "hop", "priority", "state", "why"]
                .iter()
                .map(|k| cell(&r[*k]))
                .collect()
        })
        .collect();
    render(
        &["NET", "GATEWAY", "HOP", "PRIORITY", "STATE", "WHY"],
        &rows,
    )
}

fn pools(router: &Value) -> String {
    let rows: Vec<Vec<String>> = rows(&router["pools"])
        .iter()
        .map(|p| {
            ["pool", "buffers", "in_use", "min_free", "waits", "refused"]
                .iter()
                .map(|k| cell(&p[*k]))
                .collect()
        })
        .collect();
    format!(
        "routing: enabled\n{}",
        render(
            &[
                "POOL",
                "BUFFERS",
                "IN_USE",
                "LOWEST_FREE",
                "WAITS",
                "REFUSED"
            ],
            &rows
        )
    )
}

fn router_status(r: &Value) -> String {
    let mut out = format!("state: {}", cell(&r["state"]));
    if !r["why"].is_null() {
        out.push_str(&format!(" ({})", cell(&r["why"])));
    }
    out.push_str(&format!("\ndegraded: {}", cell(&r["degraded"])));
    if !r["black_hole"].is_null() {
        out.push_str(&format!("\nblack hole: {}", cell(&r["black_hole"])));
    }
    if let (Some(clear), Some(needed)) = (
        r["hold_down"]["clear_for_ms"].as_u64(),
        r["hold_down"]["needed_ms"].as_u64(),
    ) {
        out.push_str(&format!(
            "\nhold-down: {} ms left (clear for {clear} of {needed} ms)",
            needed.saturating_sub(clear)
        ));
    }
    let unreachable = rows(&r["status"]["unreachable"]);
    if !unreachable.is_empty() {
        let list: Vec<String> = unreachable.iter().map(cell).collect();
        out.push_str(&format!("\nunreachable: {}", list.join(" ")));
    }
    out.push_str(&format!("\nframes held: {}", cell(&r["holds"])));
    let c = &r["counters"];
    out.push_str(&format!(
        "\nwithdrawals: {}  returns: {}  flaps: {}  degradations: {}  damping penalty: {}  \
         unwatched forwards: {}",
        cell(&c["withdrawals"]),
        cell(&c["returns"]),
        cell(&c["flaps"]),
        cell(&c["degradations"]),
        cell(&c["penalty"]),
        cell(&c["unwatched_forwards"]),
    ));
    out
}

fn faults(s: &Value) -> String {
    let rows: Vec<Vec<String>> = rows(&s["faults"])
        .iter()
        .map(|f| {
            [
                "id",
                "action",
                "latency_ms",
                "src",
                "dst",
                "lane",
                "rate",
                "matched",
                "hit",
            ]
            .iter()
            .map(|k| cell(&f[*k]))
            .collect()
        })
        .collect();
    render(
        &[
            "ID",
            "ACTION",
            "LATENCY_MS",
            "SRC",
            "DST",
            "LANE",
            "RATE",
            "MATCHED",
            "HIT",
        ],
        &rows,
    )
}

fn stats(s: &Value) -> String {
    const KEYS: [&str; 12] = [
        "frames_sent",
        "frames_received",
        "bytes_sent",
        "bytes_received",
        "send_errors",
        "protocol_errors",
        "dropped",
        "nacks_sent",
        "nacks_received",
        "resent",
        "fault_dropped",
        "fault_delayed",
    ];
    let rows: Vec<Vec<String>> = ["health", "data"]
        .iter()
        .map(|lane| {
            let l = &s["lanes"][*lane];
            std::iter::once(lane.to_string())
                .chain(KEYS.iter().map(|k| cell(&l[*k])))
                .collect()
        })
        .collect();
    let headers = [
        "LANE",
        "FRAMES_TX",
        "FRAMES_RX",
        "BYTES_TX",
        "BYTES_RX",
        "SEND_ERR",
        "PROTO_ERR",
        "DROPPED",
        "NACKS_TX",
        "NACKS_RX",
        "RESENT",
        "FAULT_DROP",
        "FAULT_DELAY",
    ];
    let c = &s["counters"];
    format!(
        "{}\nforwarded: {}  peer downs: {}  recoveries: {}  pings sent: {}  longest silence survived: {} ms",
        render(&headers, &rows),
        cell(&c["forwarded"]),
        cell(&c["peer_downs"]),
        cell(&c["peer_recoveries"]),
        cell(&c["pings_sent"]),
        c["longest_silence_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}")),
    )
}
