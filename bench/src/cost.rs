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

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::baselines::{installed, output_within, what_went_wrong};
use crate::latency::pingpong;
use crate::peer::Target;
use crate::report::Report;
use crate::CostArgs;

/// Round trips of the shorter run (after the ping-pong's own warm-up).
const BASE: usize = 1_000;
/// What issue 17 asks of the core, both ends, per round trip.
const GOAL: f64 = 2_000.0;

/// Who instructions are counted to: code by the file it was written in ([`parse`]); what
/// is in no owner's code goes with its function, which is one of the first three by its
/// name or shares it among its callers' owners; what no owner called (thread start, the
/// loader, `main`'s set-up) is the runtime's.
const OWNERS: [&str; 4] = ["core", "mem_lnd", "bench", "runtime"];
const CORE: usize = 0;
const MEM_LND: usize = 1;
const BENCH: usize = 2;
const RUNTIME: usize = 3;

/// The owner a function has by its name, if any: by the path it is defined under, not by
/// its generic arguments (`Vec<lanet::mem::X>::push` is the standard library's, shared
/// among its callers), and for `<X as Trait>::f` by the type `X`.
fn owner_by_name(f: &str) -> Option<usize> {
    let path = defined_under(f);
    if path.starts_with("lanet::time::") || path.starts_with("lanet::sys::") {
        // Clocks, time arithmetic and the system-call wrappers are utilities like the
        // standard library's, counted to whoever uses them: the in-memory LND reads a
        // clock for its simulated delays and signals an eventfd to wake its peer, and
        // those are its own; the driver loop's are the core's. (A clock read is
        // `lanet::sys::monotonic_nanos`, whether or not it is inlined into `now`.) By
        // file the same: see [`owner_by_file`].
        None
    } else if path.starts_with("lanet::mem::") {
        Some(MEM_LND)
    } else if path.starts_with("lanet_bench::") {
        Some(BENCH)
    } else if path.starts_with("lanet::") {
        Some(CORE)
    } else {
        None
    }
}

/// The path a function is defined under: the self type of `<X as Trait>::f` (and of
/// `<impl Trait for X>::f`), else the name, generic arguments left out either way.
fn defined_under(f: &str) -> String {
    if let Some(inner) = f.strip_prefix("<impl ") {
        // Past the top-level " for ", if any.
        let mut depth = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' if depth == 0 => break,
                '>' => depth -= 1,
                ' ' if depth == 0 && inner[i..].starts_with(" for ") => {
                    return defined_under(&format!("<{}", &inner[i + 5..]));
                }
                _ => {}
            }
        }
        return defined_under(&format!("<{inner}"));
    }
    if let Some(inner) = f.strip_prefix('<') {
        // Up to the matching '>' or a top-level " as ".
        let mut depth = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' if depth == 0 => return shorten(&inner[..i]),
                '>' => depth -= 1,
                ' ' if depth == 0 && inner[i..].starts_with(" as ") => return shorten(&inner[..i]),
                _ => {}
            }
        }
    }
    shorten(f)
}

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
}

/// Whose ping-pong `--top` lists the functions of.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum TopOf {
    Endpoints,
    Workers,
}

/// Runs `n` round trips after the warm-up, of the `kind` asked for.
pub(crate) fn run_inner(n: usize, size: usize, kind: Inner) -> Result<(), String> {
    match kind {
        Inner::Endpoints => pingpong(Target::Mem, size, n).map(|_| ()),
        Inner::Workers => crate::peer::mem_workers_pingpong(n, crate::latency::WARMUP, size),
        Inner::Channels => {
            channel_pingpong(n, size);
            Ok(())
        }
    }
}

/// The baseline: `size`-byte messages passed between two threads over crossbeam channels
/// and back, `n` times, as the two endpoints' threads pass a PUT and its ACK: the least a
/// round trip between two threads of one process costs, with no protocol at all.
fn channel_pingpong(n: usize, size: usize) {
    let (to_echo, echo_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let (to_client, client_rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let echo = std::thread::spawn(move || {
        for m in echo_rx {
            if to_client.send(m).is_err() {
                break;
            }
        }
    });
    let mut message = vec![0x5a; size];
    for _ in 0..n {
        to_echo.send(message).expect("the echo thread runs");
        message = client_rx.recv().expect("the echo thread answers");
    }
    drop(to_echo);
    let _ = echo.join();
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

    let per_rt = |long: f64, short: f64| (long - short).max(0.0) / args.iters as f64;
    let mut report = Report::new(
        format!(
            "cost: instructions per {}-byte PUT round trip, both ends, on the in-memory LND \
             (callgrind, {} round trips beyond {BASE})",
            args.size, args.iters
        ),
        args.json,
    );
    let (owned_long, owned_short) = (long.owned(), short.owned());
    if owned_long[CORE] == 0.0 {
        return Err(
            "no function of lanet's core in the callgrind profile: were the symbols \
                    demangled (a valgrind that knows Rust's mangling) and the binary built \
                    with debug info?"
                .into(),
        );
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
        per_rt(worker_long.owned()[CORE], worker_short.owned()[CORE]),
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
    let (worker_owned_long, worker_owned_short) = (worker_long.owned(), worker_short.owned());
    for (i, owner) in OWNERS.iter().enumerate().filter(|&(i, _)| i != CORE) {
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

/// Instructions counted in one run: in all, and per function.
struct Counts {
    total: u64,
    functions: HashMap<String, Function>,
}

/// One function's instructions: its own, and what the calls to it cost (inclusive),
/// each split by the owner of the code it is in (see [`parse`]).
#[derive(Default)]
struct Function {
    /// Its own instructions in code with no owner (a library function's own, or lanet's
    /// clocks and system calls in it): they go with the function, to its owner by name
    /// or its callers'.
    unowned: u64,
    /// Its own instructions in each owner's code, by owner: the function's own code, or
    /// code of another owner's inlined into it, with the library code inlined within
    /// that.
    owned_lines: [u64; 4],
    /// What the calls to it cost when made from code with no owner, by the function that
    /// made them.
    callers: HashMap<String, u64>,
    /// What the calls to it cost when made from each owner's code, by owner.
    called_from_owned: [u64; 4],
}

impl Counts {
    /// Instructions per owner ([`OWNERS`]): each function's own, in each owner's code as
    /// [`parse`] found it, the rest shared as [`Counts::shares`]. They add up to the
    /// total.
    fn owned(&self) -> [f64; 4] {
        let shares = self.shares();
        let mut owned = [0.0; 4];
        for (name, f) in &self.functions {
            for (i, share) in shares[name.as_str()].iter().enumerate() {
                owned[i] += f.unowned as f64 * share + f.owned_lines[i] as f64;
            }
        }
        owned
    }

    /// What part of each function's `unowned` instructions each owner ([`OWNERS`])
    /// has: all of them for a function owned by name, else shared in proportion to what
    /// the calls to it cost, among the owners of the code the calls were made from and
    /// (for calls made from code with no owner) the shares of the functions that made
    /// them.
    fn shares(&self) -> HashMap<&str, [f64; 4]> {
        let owners: HashMap<&str, Option<usize>> = self
            .functions
            .keys()
            .map(|name| (name.as_str(), owner_by_name(name)))
            .collect();
        // Every caller is a function of the profile (it has its own `fn=`), so every name
        // looked up below has a share.
        let mut shares: HashMap<&str, [f64; 4]> = owners
            .iter()
            .map(|(&name, owner)| {
                let mut share = [0.0; 4];
                share[owner.unwrap_or(RUNTIME)] = 1.0;
                (name, share)
            })
            .collect();
        // Up the calls, a level a pass: a few dozen passes settle any call chain here.
        for _ in 0..64 {
            let mut changed = false;
            for (name, f) in &self.functions {
                if owners[name.as_str()].is_some() {
                    continue;
                }
                let weight: u64 = f
                    .callers
                    .iter()
                    .filter(|(c, _)| *c != name)
                    .map(|(_, &w)| w)
                    .sum::<u64>()
                    + f.called_from_owned.iter().sum::<u64>();
                if weight == 0 {
                    continue;
                }
                let mut share = [0.0; 4];
                for (i, &w) in f.called_from_owned.iter().enumerate() {
                    share[i] += w as f64 / weight as f64;
                }
                for (caller, &w) in f.callers.iter().filter(|(c, _)| *c != name) {
                    let from = shares[caller.as_str()];
                    for i in 0..4 {
                        share[i] += from[i] * w as f64 / weight as f64;
                    }
                }
                let old = shares
                    .insert(name, share)
                    .expect("every function has a share");
                changed |= old.iter().zip(&share).any(|(a, b)| (a - b).abs() > 1e-9);
            }
            if !changed {
                break;
            }
        }
        shares
    }

    /// Each function's instructions of its own that count as the core's: code written in
    /// the core's files wherever it was inlined (an LND's function may have some), and its
    /// share of the rest.
    fn core_instructions(&self) -> HashMap<&str, f64> {
        let shares = self.shares();
        self.functions
            .iter()
            .map(|(name, f)| {
                let shared = f.unowned as f64 * shares[name.as_str()][CORE];
                (name.as_str(), shared + f.owned_lines[CORE] as f64)
            })
            .collect()
    }
}

/// Runs this binary's ping-pong of `n` round trips under callgrind, its counts read from
/// `out`.
fn callgrind(exe: &Path, out: &Path, n: usize, size: usize, kind: Inner) -> Result<Counts, String> {
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
    let done = output_within(cmd, CALLGRIND_LIMIT).map_err(|e| format!("valgrind: {e}"))?;
    if !done.status.success() {
        return Err(format!(
            "the ping-pong under callgrind failed ({}){}",
            done.status,
            what_went_wrong(&done.stderr)
        ));
    }
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    parse(&text)
}

/// Reads a callgrind profile written with `--compress-strings=no --compress-pos=no`: each
/// function's own instructions (cost lines under `fn=`), what each call cost (the cost
/// line after `cfn=` and `calls=`, which is not the caller's own), and the total.
///
/// Each cost line (and each call) counts to the owner of the source file it was written
/// in ([`owner_by_file`]), whatever function it landed in; otherwise what the compiler
/// chose to inline would move instructions between owners (the core's header decoder
/// inlined into the in-memory LND's poll would count as the LND's). Its file is the
/// group's (`fl=`: callgrind groups a function's code by the file of each basic block's
/// first instruction, which may itself be inlined code), or the one an `fi=` switched to;
/// `fe=` switches back to the group's.
///
/// A line in a file without an owner (a library's, or lanet's clocks and system calls)
/// is a heuristic's: it counts to the owner of the inlined code it follows, from the last
/// `fi=` of an owned file up to the next `fe=`, and otherwise to the group's file's owner.
/// So a hash map's probe inlined within the core's code, itself inlined into the LND's
/// poll, is the core's. It can err both ways, within a basic block: library code after
/// an owned span but not within it (the rest of an LND's map probe after the core's NID
/// hash inlined into it) takes the span's owner; library code within an owned span, at
/// the start of a block that starts in a library's file, goes with the group's. In a
/// group whose file has no owner (a library function's own), lines outside owned spans
/// go with the function: its owner by name, or its callers'.
fn parse(text: &str) -> Result<Counts, String> {
    let mut functions: HashMap<String, Function> = HashMap::new();
    let mut total = None;
    let mut current: Option<String> = None;
    let mut callee: Option<String> = None;
    let mut after_call = false;
    // The owner of the group's file (`fl=`), and of the code the next lines are in (see
    // above).
    let mut block_file_owner = None;
    let mut around_owner = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("fn=") {
            current = Some(name.to_owned());
            around_owner = block_file_owner;
            functions.entry(name.to_owned()).or_default();
        } else if let Some(file) = line.strip_prefix("fl=") {
            block_file_owner = owner_by_file(file);
            around_owner = block_file_owner;
        } else if let Some(file) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            around_owner = match line.starts_with("fe=") {
                // Back in the group's own file.
                true => block_file_owner,
                false => owner_by_file(file).or(around_owner),
            };
        } else if let Some(name) = line.strip_prefix("cfn=") {
            callee = Some(name.to_owned());
        } else if line.starts_with("calls=") {
            after_call = true;
        } else if let Some(t) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            total = t.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            let ir: u64 = line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("not a cost line: {line:?}"))?;
            let f = current
                .clone()
                .ok_or_else(|| format!("a cost line before any fn=: {line:?}"))?;
            if std::mem::take(&mut after_call) {
                let g = callee
                    .clone()
                    .ok_or_else(|| format!("calls= without cfn=: {line:?}"))?;
                let g = functions.entry(g).or_default();
                match around_owner {
                    Some(owner) => g.called_from_owned[owner] += ir,
                    None => *g.callers.entry(f).or_default() += ir,
                }
            } else {
                let f = functions.entry(f).or_default();
                match around_owner {
                    Some(owner) => f.owned_lines[owner] += ir,
                    None => f.unowned += ir,
                }
            }
        }
    }
    let total = total.ok_or("no totals: or summary: line in the callgrind profile")?;
    Ok(Counts { total, functions })
}

/// The owner of code written in source file `file`, if it is a file of this workspace's
/// that has one: the in-memory LND's (`transport/src/mem/`), the benchmark's
/// (`bench/src/`), the core's (the rest of `transport/src/`). Clocks and system calls
/// (`transport/src/time.rs`, `sys.rs`) have none, as by name ([`owner_by_name`]), nor do
/// the other crates' files and the libraries'.
fn owner_by_file(file: &str) -> Option<usize> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench crate is in the workspace");
    // The compiler names a file by its absolute path, or by one relative to the
    // workspace.
    let path = Path::new(file);
    let path = path.strip_prefix(workspace).unwrap_or(path);
    if path.starts_with("transport/src/mem") {
        Some(MEM_LND)
    } else if path.starts_with("transport/src/time.rs") || path.starts_with("transport/src/sys.rs")
    {
        None
    } else if path.starts_with("transport/src") {
        Some(CORE)
    } else if path.starts_with("bench/src") {
        Some(BENCH)
    } else {
        None
    }
}

/// A function's name without its generic arguments, trimmed for a table.
fn shorten(f: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in f.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<..>");
                }
                depth += 1;
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    if out.chars().count() > 100 {
        out = out.chars().take(97).collect::<String>() + "...";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_code_is_counted_to_its_callers() {
        // The core calls get_mut (10) and malloc (100 in all); the in-memory LND calls
        // malloc too (50); get_mut is a library's, and so is malloc, which get_mut calls.
        let text = "events: Ir\n\
                    fn=lanet::node::Node::handle\n\
                    10 5\n\
                    cfn=hashbrown::map::HashMap::get_mut\n\
                    calls=1 0\n\
                    11 110\n\
                    12 7\n\
                    fn=hashbrown::map::HashMap::get_mut\n\
                    1 10\n\
                    cfn=malloc\n\
                    calls=1 0\n\
                    2 100\n\
                    fn=malloc\n\
                    1 150\n\
                    fn=lanet::mem::MemLnd::poll\n\
                    3 20\n\
                    cfn=malloc\n\
                    calls=1 0\n\
                    4 50\n\
                    fn=main\n\
                    1 3\n\
                    summary: 195\n";
        let c = parse(text).unwrap();
        assert_eq!(c.total, 195);
        assert_eq!(c.functions["lanet::node::Node::handle"].unowned, 12);
        assert_eq!(c.functions["malloc"].unowned, 150);
        assert_eq!(
            c.functions["malloc"].callers["lanet::mem::MemLnd::poll"],
            50
        );
        let owned = c.owned();
        // core: its own 12, get_mut's 10, two thirds of malloc's 150.
        assert!((owned[0] - 122.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[1] - 70.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[RUNTIME] - 3.0).abs() < 1e-6, "{owned:?}");
        // The list of the core's costliest: each function's own, as far as it is the core's.
        let core = c.core_instructions();
        assert!((core["malloc"] - 100.0).abs() < 1e-6, "{core:?}");
        assert!(
            (core["hashbrown::map::HashMap::get_mut"] - 10.0).abs() < 1e-6,
            "{core:?}"
        );
        assert!(
            (core["lanet::node::Node::handle"] - 12.0).abs() < 1e-6,
            "{core:?}"
        );
        assert_eq!(core["lanet::mem::MemLnd::poll"], 0.0);
        assert!(parse("fn=x\n1 2\n").is_err(), "no total");
        assert!(parse("1 2\nsummary: 2\n").is_err(), "no function");
    }

    /// This workspace's file at `rel`, as the compiler names it.
    fn at(rel: &str) -> String {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        workspace.join(rel).to_string_lossy().into_owned()
    }

    #[test]
    fn code_counts_to_the_owner_of_the_file_it_was_written_in() {
        let (mem, codec, lib) = (
            at("transport/src/mem/mod.rs"),
            at("transport/src/wire/codec.rs"),
            "/rustc/abc/library/core/src/num/mod.rs",
        );
        let (driver, fabric, time) = (
            at("transport/src/driver.rs"),
            at("transport/src/mem/fabric.rs"),
            at("transport/src/time.rs"),
        );
        let (hashbrown, nid) = ("/cargo/hashbrown/src/map.rs", at("transport/src/nid.rs"));
        // The in-memory LND's poll, in three groups. Under its own file: its lines (3),
        // the core's header decoder inlined (8), within it a library helper (4) and a
        // clock read (2), its own again (5), a library helper in its own code (7). Under
        // the decoder's file (a group that begins in inlined code): 6, and a call to
        // memcpy (30). Under a library's file: 11 outside any owned code, then the core's
        // NID hash (1) and a library line after it (2), then the group's file again (4).
        // The core's flush has the LND's post inlined (16) and ends inside it; the
        // function after it, in the same file with no new fl=, is the core's (1) and calls
        // memcpy (10). The core's hash map lookup calls memcpy from its own library code
        // (5). memcpy is a library function: its callers'.
        let text = format!(
            "events: Ir\n\
             fl={mem}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n10 3\n\
             fi={codec}\n180 8\nfi={lib}\n5 4\nfi={time}\n7 2\n\
             fe={mem}\n11 5\nfi={lib}\n12 7\n\
             fl={codec}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n190 6\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n191 30\n\
             fl={hashbrown}\nfn=<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll\n50 11\n\
             fi={nid}\n139 1\nfi={lib}\n6 2\nfe={hashbrown}\n51 4\n\
             fl={driver}\nfn=lanet::driver::Driver::flush\n20 1\n\
             fi={fabric}\n40 16\n\
             fn=lanet::driver::Driver::poll\n30 1\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n31 10\n\
             fl={hashbrown}\nfn=hashbrown::map::HashMap::get\n60 20\n\
             cfn=__memcpy_avx_unaligned_erms\ncalls=1 0\n61 5\n\
             fl={driver}\nfn=lanet::driver::Driver::hand_over\n70 1\n\
             cfn=hashbrown::map::HashMap::get\ncalls=1 0\n71 25\n\
             fl=???\nfn=__memcpy_avx_unaligned_erms\n0 45\n\
             summary: 137\n"
        );
        let c = parse(&text).unwrap();
        let poll = &c.functions["<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"];
        assert_eq!(
            poll.unowned,
            11 + 4,
            "outside any owned span of a library group"
        );
        assert_eq!(poll.owned_lines, [8 + 4 + 2 + 6 + 1 + 2, 3 + 5 + 7, 0, 0]);
        let flush = &c.functions["lanet::driver::Driver::flush"];
        assert_eq!((flush.unowned, flush.owned_lines), (0, [1, 16, 0, 0]));
        let poll_loop = &c.functions["lanet::driver::Driver::poll"];
        assert_eq!(
            poll_loop.owned_lines,
            [1, 0, 0, 0],
            "not the LND's span before"
        );
        let memcpy = &c.functions["__memcpy_avx_unaligned_erms"];
        assert_eq!(memcpy.unowned, 45);
        assert_eq!(memcpy.called_from_owned, [40, 0, 0, 0]);
        assert_eq!(memcpy.callers["hashbrown::map::HashMap::get"], 5);
        let owned = c.owned();
        // The core: 23 in the LND's poll, 1 + 1 + 1 in its own functions, the map lookup's
        // 20 (its only caller is the core's) and memcpy's 45 (every call to it made in the
        // core's code, or in that lookup); the LND: 15 + 15 + 16.
        assert!((owned[CORE] - 91.0).abs() < 1e-6, "{owned:?}");
        assert!((owned[MEM_LND] - 46.0).abs() < 1e-6, "{owned:?}");
        assert!(
            (owned.iter().sum::<f64>() - 137.0).abs() < 1e-6,
            "{owned:?}"
        );
        let core = c.core_instructions();
        assert!((core["<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"] - 23.0).abs() < 1e-6);
    }

    #[test]
    fn files_have_owners_by_where_they_are_in_the_workspace() {
        let owner = |f: &str| owner_by_file(f).map(|i| OWNERS[i]);
        assert_eq!(owner(&at("transport/src/node/rx.rs")), Some("core"));
        assert_eq!(owner("transport/src/node/rx.rs"), Some("core"), "relative");
        assert_eq!(owner(&at("transport/src/mem/fabric.rs")), Some("mem_lnd"));
        assert_eq!(owner(&at("bench/src/peer.rs")), Some("bench"));
        assert_eq!(
            owner("transport/src/mem/mod.rs"),
            Some("mem_lnd"),
            "relative"
        );
        assert_eq!(owner("bench/src/peer.rs"), Some("bench"), "relative");
        assert_eq!(
            owner(&at("transport/src/memo.rs")),
            Some("core"),
            "a sibling of mem/"
        );
        assert_eq!(owner(&at("transport/src/sys.rs")), None);
        assert_eq!(owner(&at("transport/src/time.rs")), None);
        assert_eq!(owner(&at("lnd-tcp/src/lib.rs")), None);
        assert_eq!(owner("/rustc/abc/library/core/src/num/mod.rs"), None);
        assert_eq!(
            owner("/root/.cargo/registry/src/x/some-crate/transport/src/lib.rs"),
            None,
            "a dependency's transport/src is not ours"
        );
        assert_eq!(owner("???"), None);
    }

    #[test]
    fn owners_go_by_where_a_function_is_defined_not_its_arguments() {
        let owner = |f| owner_by_name(f).map(|i| OWNERS[i]);
        assert_eq!(
            owner("lanet::node::queues::<impl lanet::node::Node>::pump_busy"),
            Some("core")
        );
        assert_eq!(
            owner("<lanet::mem::MemLnd as lanet::lnd::Lnd>::poll"),
            Some("mem_lnd")
        );
        assert_eq!(owner("alloc::vec::Vec<lanet::mem::X>::push"), None);
        assert_eq!(
            owner("hashbrown::map::HashMap<lanet::nid::Nid,V>::get_mut"),
            None
        );
        assert_eq!(
            owner("<alloc::vec::Vec<T> as lanet::Foo>::bar"),
            None,
            "a library type's impl of our trait is the library's code"
        );
        assert_eq!(
            owner("lanet::endpoint::Endpoint::put<lanet_bench::latency::X>"),
            Some("core")
        );
        assert_eq!(
            owner("<impl lanet::lnd::Lnd for lanet::mem::MemLnd>::poll"),
            Some("mem_lnd"),
            "the type the impl is for"
        );
        assert_eq!(owner("<impl lanet::node::Node>::pump"), Some("core"));
        assert_eq!(
            owner("<lanet::time::MonotonicClock as lanet::time::Clock>::now"),
            None,
            "a clock read is its caller's"
        );
        assert_eq!(owner("lanet::sys::monotonic_nanos"), None);
        assert_eq!(
            owner("lanet::sys::EventFd::new"),
            None,
            "a system call's wrapper is its caller's, as a clock read is"
        );
        assert_eq!(
            owner("lanet_bench::latency::pingpong::{{closure}}"),
            Some("bench")
        );
    }

    #[test]
    fn generic_arguments_are_left_out() {
        assert_eq!(
            shorten("<lanet::a::B<T> as c::D>::e"),
            "<..>::e".to_string()
        );
        assert_eq!(shorten("f<u8>::g"), "f<..>::g");
    }
}
