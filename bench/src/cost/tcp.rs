//! `lanet-bench cost --lnd tcp`: the same count over the TCP LND, between two processes on
//! loopback, each under callgrind: a [`lanet::Worker`] client and a worker server, for
//! each backend this kernel has. The processes block in their waits (no busy-polling), and
//! the server waits with no timeout, so that nothing in either depends on how long the
//! run took.
//!
//! Besides the core's share, what the driver costs (`tcp_lnd`: its code, and its share of
//! the libraries': framing, the sockets' bookkeeping, the ring) is reported: the core's
//! share is what the in-memory run counts too, with the driver's header checksum (the
//! TCP LND keeps it), and what a real driver adds beside it is what a latency figure
//! pays for.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::profile::{owner_name, Counts, CORE, OWNERS};
use super::{callgrind_command, counted, read_counts, Inner, BASE, CALLGRIND_LIMIT, GOAL};
use crate::report::Report;
use crate::CostArgs;

/// The backends, by the names `LANET_TCP_BACKEND` takes.
const BACKENDS: [&str; 2] = ["uring", "epoll"];

/// How long a server under callgrind may take to listen (a second or two here).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// Counts each backend's round trips (as the module says) into a report.
pub(super) fn run(args: &CostArgs, exe: &Path, dir: &Path) -> Result<Report, String> {
    let mut report = Report::new(
        format!(
            "cost: instructions per {}-byte PUT round trip, both ends, over TCP on loopback \
             (two worker processes, blocking; callgrind, {} round trips beyond {BASE})",
            args.size, args.iters
        ),
        args.json,
    );
    let per_rt = |long: f64, short: f64| super::per_round_trip(long, short, args.iters);
    let mut failures = Vec::new();
    for backend in BACKENDS {
        let counted = both_ends(exe, dir, BASE, args.size, backend).and_then(|short| {
            let long = both_ends(exe, dir, BASE + args.iters, args.size, backend)?;
            Ok((short, long))
        });
        let (short, long) = match counted {
            Ok(runs) => runs,
            Err(e) => {
                report.note(format!("{backend}: not counted: {e}"));
                failures.push(format!("{backend}: {e}"));
                continue;
            }
        };
        let owned = |ends: &[Counts; 2]| -> [f64; 4] {
            let (client, server) = (ends[0].owned(), ends[1].owned());
            std::array::from_fn(|i| client[i] + server[i])
        };
        let (owned_long, owned_short) = (owned(&long), owned(&short));
        if owned_long[CORE] == 0.0 {
            return Err(super::NO_CORE.into());
        }
        let key = |what: &str| format!("{backend}.{what}");
        report.add(
            key("instructions_per_round_trip"),
            per_rt(owned_long[CORE], owned_short[CORE]),
            "instr",
        );
        for i in (0..OWNERS.len()).filter(|&i| i != CORE) {
            let name = owner_name(i, "tcp_lnd");
            report.add(
                key(&format!("instructions.{name}")),
                per_rt(owned_long[i], owned_short[i]),
                "instr",
            );
        }
        let total = |ends: &[Counts; 2], end: usize| ends[end].total as f64;
        for (end, name) in ["client", "server"].into_iter().enumerate() {
            report.add(
                key(&format!("{name}.total_instructions_per_round_trip")),
                per_rt(total(&long, end), total(&short, end)),
                "instr",
            );
        }
        report.add(
            key("total_instructions_per_round_trip"),
            per_rt(
                total(&long, 0) + total(&long, 1),
                total(&short, 0) + total(&short, 1),
            ),
            "instr",
        );
    }
    if failures.len() == BACKENDS.len() {
        return Err(format!("no backend counted: {}", failures.join("; ")));
    }
    report.add("goal.instructions_per_round_trip", GOAL, "instr");
    report.note(
        "{backend}.instructions_per_round_trip is the core's (node, worker, driver loop, \
         header codec with its checksum), both ends; .instructions.tcp_lnd the TCP \
         driver's; the owners add up to the total, which also counts the kernel-facing \
         libraries' code (not the kernel's)",
    );
    Ok(report)
}

/// The counts of a client and a server process, `n` round trips after the warm-up on
/// `backend`.
fn both_ends(
    exe: &Path,
    dir: &Path,
    n: usize,
    size: usize,
    backend: &str,
) -> Result<[Counts; 2], String> {
    let nid = crate::peer::free_nid().to_string();
    let out = |end: &str| dir.join(format!("callgrind.{backend}.{n}.{end}"));
    let (client_out, server_out) = (out("client"), out("server"));
    let mut server = callgrind_command(exe, &server_out, n, size, Inner::TcpServer);
    server
        .args(["--inner-nid", &nid])
        .env(lanet_lnd_tcp::BACKEND_ENV, backend)
        .env_remove(lanet_lnd_tcp::SPIN_ENV)
        .env_remove(lanet_lnd_tcp::MOVER_POLL_ENV)
        // Held open while it runs: if this process goes, the server's ends and so does it.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = server
        .spawn()
        .map_err(|e| format!("cannot start valgrind: {e}"))?;
    let stderr = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut e, &mut text);
            text
        })
    });
    let mut server = Server(child, stderr);
    server.ready()?;
    let mut client = callgrind_command(exe, &client_out, n, size, Inner::TcpClient);
    client
        .args(["--inner-nid", &nid])
        .env(lanet_lnd_tcp::BACKEND_ENV, backend)
        .env_remove(lanet_lnd_tcp::SPIN_ENV)
        .env_remove(lanet_lnd_tcp::MOVER_POLL_ENV);
    let client = counted(client, &client_out);
    // With the client's round trips done, the server has served them all and ends.
    let served = client.and_then(|c| server.end().map(|()| c));
    let result = served.and_then(|c| Ok([c, read_counts(&server_out)?]));
    let _ = std::fs::remove_file(&client_out);
    let _ = std::fs::remove_file(&server_out);
    result
}

/// The server process, and what it says on standard error (read as it writes, so that it
/// never blocks on a full pipe); killed if dropped before it ended.
struct Server(Child, Option<std::thread::JoinHandle<Vec<u8>>>);

impl Server {
    /// Waits for its "ready": it listens.
    fn ready(&mut self) -> Result<(), String> {
        let out = self.0.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(out).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        match rx.recv_timeout(READY_WITHIN) {
            Ok(Ok(line)) if line.trim() == "ready" => Ok(()),
            Ok(Ok(_)) => Err(format!("the server did not start{}", self.stderr())),
            Ok(Err(e)) => Err(format!("the server's output: {e}")),
            Err(_) => Err(format!(
                "the server did not start within {READY_WITHIN:?}{}",
                self.stderr()
            )),
        }
    }

    /// Waits for it to end, successfully.
    fn end(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + CALLGRIND_LIMIT;
        loop {
            if let Some(status) = self.0.try_wait().map_err(|e| e.to_string())? {
                if status.success() {
                    return Ok(());
                }
                return Err(format!("the server failed ({status}){}", self.stderr()));
            }
            if Instant::now() > deadline {
                return Err(format!("the server did not end within {CALLGRIND_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it said on standard error, for an error message (it is stopped first).
    fn stderr(&mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let text = self
            .1
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        crate::baselines::what_went_wrong(&text)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
