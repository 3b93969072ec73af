//! The lanet demo, the product itself: a client, two routers and a failover pair of servers
//! as real processes. PUTs flow through the routers; the health lane keeps its round trip
//! under load; one router is cut off from the servers' net, takes itself out and comes back;
//! the primary server is killed and the client moves to its partner while the routers stay
//! up. It ends with lanet's detection and withdrawal times beside LNet's defaults, and fails
//! (exit status 1) if any operation failed or was lost.
//!
//! `./scripts/demo` runs it. Roles of its child processes: `--role router|server --config F`.

mod scenario;
mod show;
mod site;

use std::io::{BufRead, Write};
use std::process::ExitCode;

use lanet::config::{ConfigFile, OpenLnd};
use lanet::op::MatchEntry;

pub const PORTAL: u32 = 4;
pub const PUT_SIZE: usize = 64 << 10;

fn child_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn wait_for_stdin_to_close() {
    for _ in std::io::stdin().lock().lines() {}
}

fn ready() -> Result<(), String> {
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())
}

/// A router: the daemon's code, until the demo closes our standard input; then it drains.
fn router(config: &str) -> Result<(), String> {
    child_logging();
    let daemon = lanet_router::daemon::Daemon::start(config.as_ref(), None)?;
    ready()?;
    wait_for_stdin_to_close();
    daemon.drain()
}

/// A server: takes PUTs of up to `PUT_SIZE` on `PORTAL`.
fn server(config: &str) -> Result<(), String> {
    child_logging();
    let drivers: [&dyn OpenLnd; 1] = [&lanet_lnd_tcp::OpenTcp];
    let ep = ConfigFile::load(config)
        .map_err(|e| e.to_string())?
        .endpoint(&drivers)
        .map_err(|e| e.to_string())?
        .on_event(|_| {})
        .start()
        .map_err(|e| e.to_string())?;
    ep.attach(MatchEntry::sink(PORTAL, 0, PUT_SIZE as u32))
        .map_err(|e| e.to_string())?;
    ready()?;
    wait_for_stdin_to_close();
    ep.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--role", "router", "--config", f] => router(f),
        ["--role", "server", "--config", f] => server(f),
        [] => scenario::run(),
        _ => Err("usage: lanet-demo (no arguments; the roles are for its own processes)".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanet-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
