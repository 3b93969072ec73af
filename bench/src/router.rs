//! `lanet-bench router`: what a router costs. The same PUT ping-pong and PUT stream, to a
//! server on the client's own net (direct) and to one behind a router (routed), in one run;
//! the direct figures are the baseline the routed ones are a ratio of.
//!
//! * `--lnd mem`: one process, the in-memory LND without delay: the core's own cost of
//!   forwarding (header checks, route choice, pools, credits held and released).
//! * `--lnd tcp`: loopback, three processes: the client here, the server, and between
//!   them the router daemon's code (`lanet_router::daemon`) in a process of its own.

use std::io::{BufRead, Write};
use std::path::Path;

use lanet::Nid;

use crate::bandwidth::stream;
use crate::latency::pingpong;
use crate::peer::{self, Target};
use crate::relay;
use crate::report::Report;
use crate::{LndChoice, RouterArgs};

/// The child process `--router-config FILE`: the router daemon, until standard input
/// closes; then it drains and exits.
pub(crate) fn run_router(path: &Path) -> Result<(), String> {
    let daemon = lanet_router::daemon::Daemon::start(path, None)?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    for _ in std::io::stdin().lock().lines() {}
    daemon.drain()
}

pub(crate) fn run(args: &RouterArgs) -> Result<Report, String> {
    let c = &args.common;
    match c.lnd {
        LndChoice::Mem if args.wire_gbit.is_some() => {
            Err("--wire-gbit needs --lnd tcp: the in-memory LND has no wires".into())
        }
        LndChoice::Mem => run_mem(args),
        LndChoice::Tcp => {
            // Its TCP processes (started before the report) sleep, as the figures assume.
            let unset = crate::peer::no_busy_poll();
            let mut report = match args.wire_gbit {
                Some(gbit) => crate::router_wire::run(args, gbit),
                None => run_tcp(args),
            }?;
            if let Some(unset) = unset {
                report.note(unset);
            }
            Ok(report)
        }
        other => Err(format!(
            "router over {}: only --lnd mem and --lnd tcp for now",
            other.name()
        )),
    }
}

fn port_of(nid: Nid) -> u16 {
    nid.socket_addr(0).expect("a tcp NID").port()
}

/// Client -> server directly, then through a router process, over loopback TCP.
fn run_tcp(args: &RouterArgs) -> Result<Report, String> {
    let c = &args.common;
    if c.serve.is_some() || c.connect.is_some() {
        return Err("--serve and --connect do not apply to the router bench".into());
    }
    let size = c.size.unwrap_or(8);
    let direct = peer::spawn_server("router", None)?;
    let tmp = TempDir::new("router")?;
    let dir = tmp.0.clone();
    let (pa, pb, ps) = (
        port_of(peer::free_nid()),
        port_of(peer::free_nid()),
        port_of(peer::free_nid()),
    );
    let common = format!("max_payload = {}\n", peer::MAX_PUT);
    let router_cfg = format!(
        "{common}[[net]]\nnet = \"tcp\"\naddress = \"127.0.0.1\"\nport = {pa}\n\
         [[net]]\nnet = \"tcp2\"\naddress = \"127.0.0.1\"\nport = {pb}\n\
         [routing]\nenable = true\nwarm_up = \"0s\"\ncontrol_socket = \"{}\"\n",
        dir.join("router.sock").display()
    );
    let server_cfg = format!(
        "{common}[[net]]\nnet = \"tcp2\"\naddress = \"127.0.0.1\"\nport = {ps}\n\
         [[route]]\nnet = \"tcp\"\ngateway = \"127.0.0.1:{pb}@tcp2\"\n"
    );
    let write = |name: &str, text: &str| -> Result<String, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        Ok(path.display().to_string())
    };
    let (rpath, spath) = (
        write("router.toml", &router_cfg)?,
        write("server.toml", &server_cfg)?,
    );
    let router = peer::spawn_self(&["router", "--router-config", &rpath], &[])?;
    let server = peer::spawn_self(&["router", "--serve-config", &spath], &[])?;
    let routed = Target::Routed {
        dst: format!("127.0.0.1:{ps}@tcp2").parse().expect("a NID"),
        gateway: format!("127.0.0.1:{pa}@tcp").parse().expect("a NID"),
    };
    let title = format!(
        "router over tcp (loopback): {size}-byte PUT round trips ({} of them) and {}-byte PUTs streamed for {} s, direct vs through one lanet-router process",
        args.iters, args.stream_size, args.secs
    );
    let mut report = Report::new(title, c.json);
    let direct_target = Target::Remote(direct.nid);
    report.add_latency("direct", &pingpong(direct_target, size, args.iters)?);
    report.add_latency("routed", &pingpong(routed, size, args.iters)?);
    report.add(
        "direct.gbytes_per_s",
        stream(direct_target, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add(
        "routed.gbytes_per_s",
        stream(routed, args.stream_size, args.secs)?,
        "GB/s",
    );
    add_ratios(&mut report);
    // What any relay costs here: the same stream as raw TCP, directly and through a
    // plain copying relay. On loopback the hop is not a wire but two more copies on the
    // same cores, so this ratio, not 1.0, is the most a router can reach on this machine.
    report.add(
        "raw.direct_gbytes_per_s",
        relay::raw_stream(false, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add(
        "raw.relayed_gbytes_per_s",
        relay::raw_stream(true, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add_ratio(
        "ratio.bandwidth_raw_relayed_vs_direct",
        "raw.relayed_gbytes_per_s",
        "raw.direct_gbytes_per_s",
    );
    report.note("direct is the baseline: the same client and server with no router between");
    report.note(
        "raw: the same stream as plain TCP, directly and through a one-way blocking copy relay \
         (threads of this process, measured after lanet's streams)",
    );
    report.note("goals (issue 14): routed bandwidth >= 0.9x direct, routed p50 <= 2.2x direct");
    drop((router, server, direct));
    Ok(report)
}

/// A directory of this run's files, removed when dropped (on every way out).
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!("lanet-bench-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn add_ratios(report: &mut Report) {
    report.add_ratio(
        "ratio.p50_routed_vs_direct",
        "routed.p50_us",
        "direct.p50_us",
    );
    report.add_ratio(
        "ratio.bandwidth_routed_vs_direct",
        "routed.gbytes_per_s",
        "direct.gbytes_per_s",
    );
}

fn run_mem(args: &RouterArgs) -> Result<Report, String> {
    let c = &args.common;
    if c.serve.is_some() || c.connect.is_some() {
        return Err("--serve and --connect do not apply to the in-memory router bench".into());
    }
    let size = c.size.unwrap_or(8);
    let title = format!(
        "router over mem: {size}-byte PUT round trips ({} of them) and {}-byte PUTs streamed for {} s, direct vs through one router",
        args.iters, args.stream_size, args.secs
    );
    let mut report = Report::new(title, c.json);
    // Each measured once, in this order; run the bench twice to see the spread.
    report.add_latency("direct", &pingpong(Target::Mem, size, args.iters)?);
    report.add_latency("routed", &pingpong(Target::MemRouted, size, args.iters)?);
    report.add(
        "direct.gbytes_per_s",
        stream(Target::Mem, args.stream_size, args.secs)?,
        "GB/s",
    );
    report.add(
        "routed.gbytes_per_s",
        stream(Target::MemRouted, args.stream_size, args.secs)?,
        "GB/s",
    );
    add_ratios(&mut report);
    report.note("one process, in-memory LND without delay: a router's cost in the core alone");
    Ok(report)
}
