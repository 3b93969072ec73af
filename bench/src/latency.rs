//! `lanet-bench latency`: ping-pong of PUTs. A PUT completes when its ACK comes back, so each
//! one is a round trip; the next is sent from the completion callback, on the driver thread,
//! so no thread hand-off sits in the loop (with `--worker`, from the loop of the thread
//! that drives the worker).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lanet::nid::LndKind;
use lanet::op::PutRequest;
use lanet::{Endpoint, Event, Nid};

use crate::baselines::{self, histogram};
use crate::cputime::{self, CpuTime};
use crate::peer::{self, Target};
use crate::perftest;
use crate::pin;
use crate::report::Report;
use crate::rounds;
use crate::{LatencyArgs, LndChoice};

/// Round trips before the measured ones (the workers' ping-pong of `cost` too).
pub(crate) const WARMUP: usize = 1000;
/// UCX over verbs: round trips, and how long it may take (it hangs in UD wire-up under
/// an emulated CPU).
const UCX_RDMA_ITERS: usize = 20_000;
const UCX_RDMA_LIMIT: Duration = Duration::from_secs(60);
/// How long the drivers busy-poll before sleeping, in this benchmark (microseconds).
pub(crate) const BUSY_POLL_US: u64 = 1_000_000;

static PINNED_NOTE: OnceLock<String> = OnceLock::new();

/// `--pin`: places this process (see [`pin::pin`]) and keeps what was chosen for the
/// report.
pub(crate) fn pin(args: &LatencyArgs) -> Result<(), String> {
    if args.common.lnd != LndChoice::Tcp {
        return Err("--pin places the two processes of a TCP ping-pong (--lnd tcp)".into());
    }
    let side = match (args.common.serve, args.common.connect) {
        (Some(_), _) => pin::Side::Server,
        (None, Some(_)) => pin::Side::Client,
        (None, None) => pin::Side::Both,
    };
    let _ = PINNED_NOTE.set(pin::pin(side)?);
    Ok(())
}

/// The CPU time of the client process (this one) and of the server process, if we
/// started it.
fn both_sides(server: Option<u32>) -> Result<(CpuTime, Option<CpuTime>), String> {
    Ok((
        cputime::of(std::process::id())?,
        server.map(cputime::of).transpose()?,
    ))
}

/// Waits until process `pid` stops using CPU (less than a tick in 200 ms), for at most
/// ten times [`BUSY_POLL_US`]; false if it never did.
fn wait_until_idle(pid: u32) -> Result<bool, String> {
    const LOOK: Duration = Duration::from_millis(200);
    let give_up = Instant::now() + Duration::from_micros(10 * BUSY_POLL_US);
    let busy = |t: cputime::CpuTime| t.user + t.sys;
    let mut last = busy(cputime::of(pid)?);
    while Instant::now() < give_up {
        std::thread::sleep(LOOK);
        let now = busy(cputime::of(pid)?);
        if now - last < 0.01 {
            return Ok(true);
        }
        last = now;
    }
    Ok(false)
}

/// Reports where `--pin` placed the two sides, read back from the kernel: `pin.client_cpu`
/// and, if we started the server, `pin.server_cpu`.
fn add_placement(report: &mut Report, server: Option<u32>) -> Result<(), String> {
    let mut add = |side: &str, pid: u32| -> Result<(), String> {
        let cpus = pin::cpus_of(pid)?;
        let cpu: f64 = cpus
            .parse()
            .map_err(|_| format!("--pin: the {side} side runs on CPUs {cpus}, not one"))?;
        report.add(format!("pin.{side}_cpu"), cpu, "");
        Ok(())
    };
    add("client", std::process::id())?;
    if let Some(pid) = server {
        add("server", pid)?;
    }
    Ok(())
}

/// Reports what each side's process spent per round trip (us) since `before`, under
/// `cpu.<name>.`.
fn add_cpu(
    report: &mut Report,
    name: &str,
    server: Option<u32>,
    before: (CpuTime, Option<CpuTime>),
    round_trips: usize,
) -> Result<(), String> {
    let after = both_sides(server)?;
    let per_rt = |secs: f64| secs * 1e6 / round_trips as f64;
    let mut add = |side: &str, t: CpuTime| {
        report.add(format!("cpu.{name}.{side}_user_us"), per_rt(t.user), "us");
        report.add(format!("cpu.{name}.{side}_sys_us"), per_rt(t.sys), "us");
    };
    add("client", after.0 - before.0);
    if let (Some(a), Some(b)) = (after.1, before.1) {
        add("server", a - b);
    }
    Ok(())
}

pub(crate) fn run(args: &LatencyArgs) -> Result<Report, String> {
    let c = &args.common;
    let size = c.size.unwrap_or(8);
    let title = format!(
        "latency: {size}-byte PUT round trips over {}, {} iterations",
        c.lnd.name(),
        args.iters
    );
    let mut report = Report::new(title, c.json);
    let rounds = usize::from(args.rounds);
    if rounds > 1 && (c.lnd != LndChoice::Tcp || c.connect.is_some()) {
        return Err("--rounds is for TCP against its own server, beside the baselines".into());
    }
    if args.worker {
        let tcp_target = c.connect.is_none_or(|n| n.net().kind == LndKind::Tcp);
        if c.lnd != LndChoice::Tcp || !tcp_target || c.config.is_some() {
            return Err(
                "--worker runs the TCP ping-pong (--lnd tcp), directly (not with --config)".into(),
            );
        }
        report.note(match c.connect {
            Some(_) => "this side runs a lanet::Worker (--worker); the server runs what it was started with",
            None => "both lanet sides run a lanet::Worker, driven by the process's own thread (--worker)",
        });
    }
    if c.lnd == LndChoice::Rdma {
        rdma(args, size, &mut report)?;
        return Ok(report);
    }
    if args.spin && c.lnd == LndChoice::Tcp {
        let how = peer::busy_poll(lanet_lnd_tcp::SPIN_ENV, c.connect);
        report.note(format!(
            "{how}, as UCX and libfabric do; the raw TCP floor and sockperf block"
        ));
    } else if c.lnd == LndChoice::Tcp {
        if let Some(unset) = peer::no_busy_poll() {
            report.note(unset);
        }
    }
    let mut measured = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        measured.push(round(args, size)?);
    }
    rounds::combine(
        &mut report,
        &measured,
        &[
            ("ratio.p50_vs_raw_tcp", "lanet.p50_us", "raw_tcp.p50_us"),
            ("ratio.p50_vs_channels", "lanet.p50_us", "channels.p50_us"),
            ("ratio.p99_vs_raw_tcp", "lanet.p99_us", "raw_tcp.p99_us"),
            ("ratio.p50_vs_sockperf", "lanet.p50_us", "sockperf.p50_us"),
            ("ratio.p50_vs_ucx", "lanet.p50_us", "ucx.p50_us"),
            ("ratio.mean_vs_ucx", "lanet.mean_us", "ucx.mean_us"),
            (
                "ratio.mean_vs_libfabric",
                "lanet.mean_us",
                "libfabric.mean_us",
            ),
        ],
        &["lanet.p50_us", "raw_tcp.p50_us", "ucx.p50_us"],
    );
    let sockperf_ran = c.lnd == LndChoice::Tcp && c.connect.is_none() && c.baseline_secs > 0;
    if size < 14 && sockperf_ran {
        report.note("sockperf's smallest message is 14 bytes; it ran with 14");
    }
    Ok(report)
}

/// One round over TCP (or the in-memory LND): lanet's ping-pong against a server process
/// of its own, then the baselines while that server still runs (it hosts the raw TCP
/// echo). Its figures and notes, no ratios.
fn round(args: &LatencyArgs, size: usize) -> Result<Report, String> {
    let c = &args.common;
    let mut report = Report::new("round", false);
    // The server process (if we start one) lives until the baselines are measured too.
    let server = match (c.lnd, c.connect) {
        (LndChoice::Tcp, None) => Some(peer::spawn_server("latency", None)?),
        _ => None,
    };
    let server_pid = server.as_ref().map(|s| s.pid());
    if let Some(how) = PINNED_NOTE.get() {
        report.note(how.clone());
        add_placement(&mut report, server_pid)?;
    }
    // What each side's process spends per round trip, lanet's and the raw floor's; a
    // busy-polling driver spends all it is given, so only for blocking runs over TCP.
    let count_cpu = c.lnd == LndChoice::Tcp && !args.spin;
    let cpu_now = || count_cpu.then(|| both_sides(server_pid)).transpose();
    let before = cpu_now()?;
    let (hist, echo) = match (c.lnd, c.connect.or(server.as_ref().map(|s| s.nid))) {
        (LndChoice::Tcp, Some(nid)) if args.worker => (
            worker_pingpong(nid, size, args.iters)?,
            peer::echo_addr(nid),
        ),
        (LndChoice::Tcp, Some(nid)) => (
            pingpong(Target::Remote(nid), size, args.iters)?,
            peer::echo_addr(nid),
        ),
        _ => {
            report.add_latency("lanet", &pingpong(Target::Mem, size, args.iters)?);
            mem_baselines(&mut report, size, args.iters, c.baseline_secs)?;
            return Ok(report);
        }
    };
    report.add_latency("lanet", &hist);
    if let Some(before) = before {
        add_cpu(
            &mut report,
            "lanet",
            server_pid,
            before,
            WARMUP + args.iters,
        )?;
    }
    if args.spin {
        if let Some(pid) = server_pid {
            // Its driver spins on for a while after the last frame: the baselines must not
            // share the CPUs with it.
            if !wait_until_idle(pid)? {
                report.note("the lanet server still used CPU when the baselines began");
            }
        }
    }
    let before = cpu_now()?;
    report.add_latency(
        "raw_tcp",
        &baselines::raw_tcp(echo, size, WARMUP, args.iters)?,
    );
    if let Some(before) = before {
        add_cpu(
            &mut report,
            "raw_tcp",
            server_pid,
            before,
            WARMUP + args.iters,
        )?;
        report.note(
            "cpu.*: CPU time of each side's process per round trip, in user space and in \
             the kernel, from /proc in clock ticks; each phase's set-up and warm-up \
             included. On loopback a receiver's TCP input runs in the sender's softirq \
             and counts to the sender",
        );
    }
    if c.connect.is_none() && c.baseline_secs == 0 {
        report.note("--baseline-secs 0: no external baselines (sockperf, UCX, libfabric)");
    } else if c.connect.is_none() {
        let sockperf = baselines::sockperf(size, c.baseline_secs);
        for (name, us) in report
            .baseline("sockperf", "sockperf", sockperf)
            .unwrap_or_default()
        {
            report.add(format!("sockperf.{name}_us"), us, "us");
        }
        // What users who need a fast transport pick instead (`./scripts/setup bench`).
        let ucx = baselines::ucx_latency(size, args.iters);
        if let Some(rt) = report.baseline("ucx_perftest", "UCX", ucx) {
            add_ucx(&mut report, rt);
        }
        let libfabric = baselines::libfabric_latency(size, args.iters);
        if let Some(us) = report.baseline("fi_pingpong", "libfabric", libfabric) {
            report.add("libfabric.mean_us", us, "us");
            report.note(
                "libfabric: fi_pingpong reports only a mean time per transfer, so no \
                 libfabric.p50_us; ratio.mean_vs_libfabric compares means",
            );
        }
    }
    Ok(report)
}

/// The baselines of two endpoints in one process on the in-memory LND: two threads
/// passing the message over channels (the floor), and UCX between two processes over
/// shared memory (what users pick on one host). Network baselines would compare it with
/// the kernel's TCP, which the in-memory LND never crosses.
fn mem_baselines(
    report: &mut Report,
    size: usize,
    iters: usize,
    baseline_secs: u32,
) -> Result<(), String> {
    report.add_latency("channels", &baselines::channels(size, WARMUP, iters)?);
    if baseline_secs == 0 {
        report.note("--baseline-secs 0: no external baseline (UCX over shared memory)");
    } else if let Some(rt) = report.baseline(
        "ucx_perftest",
        "UCX",
        baselines::ucx_shm_latency(size, iters),
    ) {
        add_ucx(report, rt);
        report.note("--lnd mem: UCX runs over shared memory (UCX_TLS=sm), busy-polling");
    }
    report.note(
        "--lnd mem: no network baselines (raw TCP, sockperf, UCX and libfabric over TCP): \
         the in-memory LND crosses no network stack",
    );
    Ok(())
}

/// [`pingpong`] from a [`lanet::Worker`] driven by this thread, against the server at `dst`
/// (which runs a worker too when this process started it: `--worker` is passed on).
fn worker_pingpong(dst: Nid, size: usize, iters: usize) -> Result<Histogram<u64>, String> {
    let (mut w, put) = peer::tcp_worker_client(dst, size)?;
    let mut hist = histogram();
    let mut events = Vec::new();
    let mut sent = Instant::now();
    for i in 0..WARMUP + iters {
        peer::worker_round_trip(&mut w, &put, &mut events)?;
        let now = Instant::now();
        if i >= WARMUP {
            let _ = hist.record((now - sent).as_nanos().max(1) as u64);
        }
        sent = now;
    }
    w.shutdown(&mut events);
    Ok(hist)
}

/// Over RDMA: lanet between two processes on the device's address, then `ib_send_lat`.
fn rdma(args: &LatencyArgs, size: usize, report: &mut Report) -> Result<(), String> {
    let c = &args.common;
    let (device, ip) = peer::rdma_place(c.addr)?;
    // perftest busy-polls its CQ all the time; so do the lanet processes here.
    let how = peer::busy_poll(lanet_lnd_rdma::SPIN_ENV, c.connect);
    report.note(format!("{how}, as perftest does"));
    let server = match c.connect {
        Some(_) => None,
        None => Some(peer::spawn_server("latency", Some(ip))?),
    };
    let dst = c
        .connect
        .or(server.as_ref().map(|s| s.nid))
        .expect("one of them");
    report.add_latency("lanet", &pingpong(Target::Remote(dst), size, args.iters)?);
    drop(server);
    if c.connect.is_none() {
        let (p50, p99) = perftest::send_lat(&device, ip, size, WARMUP + args.iters)?;
        report.add("perftest.p50_us", p50, "us");
        report.add("perftest.p99_us", p99, "us");
        report.add_ratio("ratio.p50_vs_perftest", "lanet.p50_us", "perftest.p50_us");
        report.add_ratio("ratio.p99_vs_perftest", "lanet.p99_us", "perftest.p99_us");
        report.note(format!(
            "RDMA on {device} at {ip}; perftest's one-way latency is doubled into a round trip"
        ));
        // UCX over verbs, when it can run here (it cannot under qemu TCG: say so).
        let iters = args.iters.min(UCX_RDMA_ITERS);
        match baselines::ucx_rdma_latency(ip, size, iters, UCX_RDMA_LIMIT) {
            Some(Ok(rt)) => add_ucx(report, rt),
            Some(Err(e)) => report.note(format!(
                "UCX over verbs (UCX_TLS=rc_verbs,ud_verbs) could not run here: {e}"
            )),
            None => report.note("ucx_perftest is not installed; no UCX baseline"),
        }
        report.add_ratio("ratio.p50_vs_ucx", "lanet.p50_us", "ucx.p50_us");
        report.add_ratio("ratio.mean_vs_ucx", "lanet.mean_us", "ucx.mean_us");
    }
    Ok(())
}

/// UCX's round trip: its mean over the whole run, and its p50, which is over its last
/// iterations only (see [`baselines::UCX_P50_OF_LAST`]).
fn add_ucx(report: &mut Report, rt: baselines::UcxRoundTrip) {
    report.add("ucx.mean_us", rt.mean_us, "us");
    report.add("ucx.p50_us", rt.p50_us, "us");
    report.note(format!(
        "ucx.p50_us is the median of UCX's last {} iterations at most (its ring of \
         timings), lanet's p50 of all: ratio.mean_vs_ucx compares whole runs",
        baselines::UCX_P50_OF_LAST
    ));
}

/// Measures `iters` PUT round trips (after a warm-up) to `target`.
pub(crate) fn pingpong(
    target: Target,
    size: usize,
    iters: usize,
) -> Result<Histogram<u64>, String> {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let cell: Arc<OnceLock<(Endpoint, PutRequest)>> = Arc::new(OnceLock::new());
    let total = WARMUP + iters;
    let on_event = {
        let cell = cell.clone();
        let mut hist = histogram();
        let mut count = 0;
        let mut sent = Instant::now();
        let mut done_tx = Some(done_tx);
        move |e: Event| {
            let Event::Completed(c) = e else { return };
            // One clock read ends this round trip and starts the next: the loop's own
            // work counts, as in UCX's back-to-back timings.
            let now = Instant::now();
            let rtt = now - sent;
            if let Err(err) = c.result {
                if let Some(tx) = done_tx.take() {
                    let _ = tx.send(Err(format!("a PUT failed: {err}")));
                }
                return;
            }
            if count >= WARMUP {
                let _ = hist.record(rtt.as_nanos().max(1) as u64);
            }
            count += 1;
            if count < total {
                let (ep, req) = cell.get().expect("set before the first PUT");
                sent = now;
                if let Err(err) = ep.put(req.clone()) {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(Err(err.to_string()));
                    }
                }
            } else if let Some(tx) = done_tx.take() {
                let _ = tx.send(Ok(std::mem::replace(&mut hist, histogram())));
            }
        }
    };
    let client = peer::client(target, size, Duration::from_secs(10), on_event)?;
    let (ep, req) = (client.ep.clone(), client.put.clone());
    let _ = cell.set((ep.clone(), req.clone()));
    ep.put(req).map_err(|e| e.to_string())?;
    let result = done_rx
        .recv_timeout(Duration::from_secs(600))
        .map_err(|_| "the ping-pong did not finish within 10 minutes".to_string())?;
    ep.shutdown();
    result
}
