//! `lanet-bench cost`: instructions per PUT round trip, both ends, counted by callgrind
//! rather than timed, so that the figure is the same on a busy machine as on a quiet one.
//!
//! The ping-pong of `latency --lnd mem` (two endpoints in this process on the in-memory
//! LND) runs twice under `valgrind --tool=callgrind`, with `base` and `base + iters` round
//! trips; the difference over `iters` leaves set-up, warm-up and shut-down out.
//!
//! The headline, `instructions_per_round_trip`, is the core's: lanet's node, endpoint and
//! driver loop, with what they call of the libraries (hash maps, clocks, CRC, copies,
//! allocator, channels). The in-memory LND stands in for a real one and the benchmark's
//! loop is not lanet, so both are counted apart. A function of neither (a library's) is
//! shared among its callers, in proportion to what each call cost: a caller's share of a
//! hash map lookup is the core's if the caller is the core's, and so on up the calls.
//! Code counts to the owner of the source file it was written in, wherever the compiler
//! inlined it (the core's header decoder inlined into the LND's poll is the core's), and
//! library code inlined within it with it, by a heuristic ([`parse`]); library functions
//! that are called go to their callers. A change that moves inlining across the LND's or
//! the benchmark's boundary can still move some instructions between owners: each owner's
//! figure is printed, for endpoints and workers, and they add up to `total_`; a change to
//! the core is judged by its figure and the total's.
//!
//! `worker.instructions_per_round_trip` counts the same way the same ping-pong between two
//! [`lanet::Worker`]s, each driven by its own thread's loop: the core without the
//! endpoints' driver threads, command channels and event delivery.
//!
//! The baseline, counted the same way in the same run, is two threads passing a message
//! back and forth over channels: what a round trip between two threads costs with no
//! protocol at all.
//!
//! `--lnd tcp` counts instead a round trip over the TCP LND, between two processes, for
//! each backend ([`tcp`]): what a real driver costs beside the core.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::baselines::{installed, output_within, what_went_wrong};
use crate::latency::pingpong;
use crate::peer::Target;
use crate::report::Report;
use crate::{CostArgs, LndChoice};
use lanet::Nid;

/// Round trips of the shorter run (after the ping-pong's own warm-up).
const BASE: usize = 1_000;
/// What issue 17 asks of the core, both ends, per round trip.
const GOAL: f64 = 2_000.0;

mod profile;
mod tcp;

use profile::{owner_name, parse, shorten, Counts, CORE, OWNERS};

/// Why a profile may have nothing of the core's.
const NO_CORE: &str = "no function of lanet's core in the callgrind profile: were the symbols \
    demangled (a valgrind that knows Rust's mangling) and the binary built with debug info?";

/// The health interval of the runs' nodes: longer than a run.
const RUN_HEALTH_INTERVAL: Duration = Duration::from_secs(600);

/// How long one run under callgrind may take (20,000 round trips take a few seconds).
const CALLGRIND_LIMIT: Duration = Duration::from_secs(600);

/// What runs under callgrind.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Inner {
    /// The ping-pong of two endpoints (each with its driver thread).
    Endpoints,
    /// The same with two workers, each driven by its own thread's loop.
    Workers,
    /// The baseline: two threads and two channels.
    Channels,
    /// A TCP worker client's PUTs to the server at `--inner-nid`.
    TcpClient,
    /// A TCP worker server at `--inner-nid`, until it has served the client's PUTs.
    TcpServer,
}

/// Whose ping-pong `--top` lists the functions of.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum TopOf {
    Endpoints,
    Workers,
}

/// Runs `n` round trips after the warm-up, of the `kind` asked for (the TCP kinds with
/// the server at `nid`).
pub(crate) fn run_inner(
    n: usize,
    size: usize,
    kind: Inner,
    nid: Option<Nid>,
) -> Result<(), String> {
    let warmup = crate::latency::WARMUP;
    let server = || nid.ok_or_else(|| "a TCP kind needs --inner-nid".to_string());
    // No health timer in a run: its work would make the counts depend on how long the
    // run took under callgrind (an interval is 100 ms by default), not on round trips.
    crate::peer::set_health_interval(RUN_HEALTH_INTERVAL);
    match kind {
        Inner::Endpoints => pingpong(Target::Mem, size, n).map(|_| ()),
        Inner::Workers => crate::peer::mem_workers_pingpong(n, warmup, size),
        Inner::Channels => {
            channel_pingpong(n, size);
            Ok(())
        }
        Inner::TcpClient => {
            let (mut w, put) = crate::peer::tcp_worker_client(server()?, size)?;
            let mut events = Vec::new();
            let done = (0..warmup + n)
                .try_for_each(|_| crate::peer::worker_round_trip(&mut w, &put, &mut events));
            w.shutdown(&mut events);
            done
        }
        Inner::TcpServer => crate::peer::serve_puts(server()?, warmup + n),
    }
}

/// The baseline: `size`-byte messages passed between two threads over crossbeam channels
/// and back, `n` times, as the two endpoints' threads pass a PUT and its ACK: the least a
/// round trip between two threads of one process costs, with no protocol at all.
fn channel_pingpong(n: usize, size: usize) {
    let echo = crate::baselines::ChannelEcho::start();
    let mut message = vec![0x5a; size];
    for _ in 0..n {
        echo.to_echo.send(message).expect("the echo thread runs");
        message = echo.back.recv().expect("the echo thread answers");
    }
    echo.stop();
}

pub(crate) fn run(args: &CostArgs) -> Result<Report, String> {
    if args.iters == 0 {
        return Err("--iters must be at least 1".into());
    }
    if !installed("valgrind") {
        return Err(
            "valgrind is not installed: `apt-get install valgrind` (or ./scripts/setup bench)"
                .into(),
        );
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("lanet-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    match args.lnd {
        LndChoice::Mem => {}
        LndChoice::Tcp => {
            let report = tcp::run(args, &exe, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            return report;
        }
        LndChoice::Rdma => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err("cost counts the in-memory LND or TCP, not RDMA (--lnd mem|tcp)".into());
        }
    }
    let counted = |n: usize, kind: Inner| -> Result<Counts, String> {
        let out = dir.join(format!("callgrind.{n}.{kind:?}"));
        let result = callgrind(&exe, &out, n, args.size, kind);
        let _ = std::fs::remove_file(&out);
        result
    };
    let pair = |kind: Inner| -> Result<(Counts, Counts), String> {
        Ok((counted(BASE, kind)?, counted(BASE + args.iters, kind)?))
    };
    let result = (|| {
        Ok::<_, String>((
            pair(Inner::Endpoints)?,
            pair(Inner::Workers)?,
            pair(Inner::Channels)?,
        ))
    })();
    let _ = std::fs::remove_dir(&dir);
    let ((short, long), (worker_short, worker_long), (base_short, base_long)) = result?;

    let per_rt = |long: f64, short: f64| per_round_trip(long, short, args.iters);
    let mut report = Report::new(
        format!(
            "cost: instructions per {}-byte PUT round trip, both ends, on the in-memory LND \
             (callgrind, {} round trips beyond {BASE})",
            args.size, args.iters
        ),
        args.json,
    );
    let (owned_long, owned_short) = (long.owned(), short.owned());
    let (worker_owned_long, worker_owned_short) = (worker_long.owned(), worker_short.owned());
    if owned_long[CORE] == 0.0 {
        return Err(NO_CORE.into());
    }
    report.add(
        "instructions_per_round_trip",
        per_rt(owned_long[CORE], owned_short[CORE]),
        "instr",
    );
    report.add("goal.instructions_per_round_trip", GOAL, "instr");
    report.add_ratio(
        "ratio.vs_goal",
        "instructions_per_round_trip",
        "goal.instructions_per_round_trip",
    );
    report.add(
        "total_instructions_per_round_trip",
        per_rt(long.total as f64, short.total as f64),
        "instr",
    );
    report.add(
        "worker.instructions_per_round_trip",
        per_rt(worker_owned_long[CORE], worker_owned_short[CORE]),
        "instr",
    );
    report.add_ratio(
        "ratio.worker_vs_goal",
        "worker.instructions_per_round_trip",
        "goal.instructions_per_round_trip",
    );
    report.add(
        "worker.total_instructions_per_round_trip",
        per_rt(worker_long.total as f64, worker_short.total as f64),
        "instr",
    );
    report.add(
        "channel_pingpong.instructions_per_round_trip",
        per_rt(base_long.total as f64, base_short.total as f64),
        "instr",
    );
    report.add_ratio(
        "ratio.total_vs_channel_pingpong",
        "total_instructions_per_round_trip",
        "channel_pingpong.instructions_per_round_trip",
    );
    // Beside the core's, what the rest of each process is counted to: the owners' shares
    // add up to its total, so a change that only moves instructions between owners
    // (inlining across the LND's boundary, say) shows as such.
    for i in (0..OWNERS.len()).filter(|&i| i != CORE) {
        let owner = owner_name(i, "mem_lnd");
        report.add(
            format!("instructions.{owner}"),
            per_rt(owned_long[i], owned_short[i]),
            "instr",
        );
        report.add(
            format!("worker.instructions.{owner}"),
            per_rt(worker_owned_long[i], worker_owned_short[i]),
            "instr",
        );
    }
    let (listed_long, listed_short) = match args.top_of {
        TopOf::Endpoints => (&long, &short),
        TopOf::Workers => (&worker_long, &worker_short),
    };
    let (core_long, core_short) = (
        listed_long.core_instructions(),
        listed_short.core_instructions(),
    );
    let mut top: Vec<(f64, &str)> = core_long
        .iter()
        .map(|(&f, &l)| (per_rt(l, core_short.get(f).copied().unwrap_or(0.0)), f))
        .filter(|(n, _)| *n >= 1.0)
        .collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (n, f) in top.into_iter().take(args.top) {
        report.note(format!("{n:>8.0}  {}", shorten(f)));
    }
    report.note(
        "above: the functions with the most of the core's instructions (of the endpoints' \
         ping-pong, or with --top-of workers the workers'): the code in each \
         written in the core's files (node, endpoint, driver loop; an LND's function may \
         have some inlined), and its share of the library code in it and called by it; \
         total_ is everything in the process",
    );
    Ok(report)
}

/// What one round trip of `iters` added: the longer run's count over the shorter's.
fn per_round_trip(long: f64, short: f64, iters: usize) -> f64 {
    (long - short).max(0.0) / iters as f64
}

/// Runs this binary's ping-pong of `n` round trips under callgrind, its counts read from
/// `out`.
fn callgrind(exe: &Path, out: &Path, n: usize, size: usize, kind: Inner) -> Result<Counts, String> {
    counted(callgrind_command(exe, out, n, size, kind), out)
}

/// This binary's `kind` of `n` round trips, under callgrind, its counts to be written to
/// `out`.
fn callgrind_command(exe: &Path, out: &Path, n: usize, size: usize, kind: Inner) -> Command {
    let mut cmd = Command::new("valgrind");
    // Fair scheduling: valgrind runs one thread at a time, and with its default lock
    // how long a thread spins before it sleeps (crossbeam's backoff, futexes) depends on
    // the machine's load, by thousands of instructions per round trip; with a ticket
    // lock, the counts repeat.
    cmd.args([
        "--tool=callgrind",
        "--fair-sched=yes",
        "--compress-strings=no",
        "--compress-pos=no",
    ])
    .arg(format!("--callgrind-out-file={}", out.display()))
    .arg(exe)
    .args([
        "cost",
        "--inner",
        &n.to_string(),
        "--size",
        &size.to_string(),
    ]);
    let kind = clap::ValueEnum::to_possible_value(&kind).expect("no variant is skipped");
    cmd.args(["--inner-kind", kind.get_name()]);
    cmd
}

/// Runs `cmd` (see [`callgrind_command`]) to its end and reads the counts it wrote to
/// `out`.
fn counted(cmd: Command, out: &Path) -> Result<Counts, String> {
    let done = output_within(cmd, CALLGRIND_LIMIT).map_err(|e| format!("valgrind: {e}"))?;
    if !done.status.success() {
        return Err(format!(
            "the ping-pong under callgrind failed ({}){}",
            done.status,
            what_went_wrong(&done.stderr)
        ));
    }
    read_counts(out)
}

fn read_counts(out: &Path) -> Result<Counts, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    parse(&text)
}
