//! `lanet-bench bandwidth`: streaming PUTs with as many in flight as the peer's credits allow;
//! each completion sends the next, from the driver thread.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lanet::op::PutRequest;
use lanet::{Endpoint, Event, Lane, OpOutcome};

use crate::baselines;
use crate::peer::{self, Target};
use crate::perftest;
use crate::report::Report;
use crate::rounds;
use crate::{BandwidthArgs, LndChoice};

/// iperf3's own write size over TCP.
const IPERF3_DEFAULT_LEN: usize = 128 * 1024;

pub(crate) fn run(args: &BandwidthArgs) -> Result<Report, String> {
    let c = &args.common;
    let size = c.size.unwrap_or(1 << 20);
    let title = format!(
        "bandwidth: {size}-byte PUTs over {} for {} s",
        c.lnd.name(),
        args.secs
    );
    let mut report = Report::new(title, c.json);
    let rdma = match c.lnd {
        LndChoice::Rdma => Some(peer::rdma_place(c.addr)?),
        _ => None,
    };
    // ib_write_bw busy-polls its CQ all the time; so do the lanet processes here.
    if rdma.is_some() {
        let how = peer::busy_poll(lanet_lnd_rdma::SPIN_ENV, c.connect);
        report.note(format!("{how}, as perftest does"));
    }
    if args.spin && c.lnd == LndChoice::Tcp {
        let how = peer::busy_poll(lanet_lnd_tcp::SPIN_ENV, c.connect);
        report.note(format!("{how}, as UCX and libfabric do; iperf3 blocks"));
    } else if c.lnd == LndChoice::Tcp {
        if let Some(unset) = peer::no_busy_poll() {
            report.note(unset);
        }
    }
    let window = args.window.unwrap_or_else(default_window);
    let ack = !args.no_ack;
    let rounds = usize::from(args.rounds);
    if rounds > 1 && (c.lnd != LndChoice::Tcp || c.connect.is_some()) {
        return Err("--rounds is for TCP against its own server, beside the baselines".into());
    }
    report.note(format!("{window} PUTs in flight (--window)"));
    report.note(if ack {
        "each PUT done when its ACK came back"
    } else {
        "PUTs without ACK (--no-ack): each done once sent; bytes sent, not bytes the \
         target took (its refusals are not heard: see its stats)"
    });
    // A server process of its own for each stream, which is gone before the baselines run.
    let stream_once = || match (c.lnd, c.connect) {
        (LndChoice::Mem, _) => stream_with(Target::Mem, size, args.secs, window, ack),
        (_, Some(nid)) => stream_with(Target::Remote(nid), size, args.secs, window, ack),
        (_, None) => {
            let server = peer::spawn_server("bandwidth", rdma.as_ref().map(|(_, ip)| *ip))?;
            stream_with(Target::Remote(server.nid), size, args.secs, window, ack)
        }
    };
    if c.connect.is_some() || c.lnd != LndChoice::Tcp {
        let streamed = stream_once()?;
        report.add("lanet.gbytes_per_s", streamed.gbytes_per_s, "GB/s");
        report.add("lanet.msgs_per_s", streamed.msgs_per_s, "msg/s");
        if let (Some((device, ip)), None) = (rdma, c.connect) {
            let g = perftest::write_bw(&device, ip, size, c.baseline_secs)?;
            report.add("perftest.gbytes_per_s", g, "GB/s");
            report.add_ratio(
                "ratio.vs_perftest",
                "lanet.gbytes_per_s",
                "perftest.gbytes_per_s",
            );
            report.note(format!("RDMA on {device} at {ip}; perftest is ib_write_bw"));
        }
        if c.lnd == LndChoice::Mem && c.connect.is_none() {
            mem_baseline(&mut report, size, c.baseline_secs);
        }
        return Ok(report);
    }
    // A stream written in calls of the PUTs' size, from 128 KiB (iperf3's default): with its
    // default alone, 1 MiB PUTs were compared with 128 KiB writes, which move half as much.
    let write_len = size.max(IPERF3_DEFAULT_LEN);
    // UCX's tagged messages of the same size over TCP, for about as long (guessing 3 GB/s
    // and at most 300,000 messages a second).
    let secs = f64::from(c.baseline_secs);
    let ucx_iters = (secs * 3e9 / size.max(1) as f64).min(secs * 3e5).max(100.0);
    let mut measured = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut round = Report::new("round", false);
        let lanet = stream_once()?;
        round.add("lanet.gbytes_per_s", lanet.gbytes_per_s, "GB/s");
        round.add("lanet.msgs_per_s", lanet.msgs_per_s, "msg/s");
        // None with 0 seconds: iperf3 -t 0 would never end.
        if c.baseline_secs != 0 {
            baselines_of_round(&mut round, size, secs, write_len, ucx_iters as usize);
        }
        measured.push(round);
    }
    if c.baseline_secs == 0 {
        report.note("--baseline-secs 0: no external baselines (iperf3, UCX)");
    }
    let mut ratios = vec![
        ("ratio.vs_ucx", "lanet.gbytes_per_s", "ucx.gbytes_per_s"),
        ("ratio.rate_vs_ucx", "lanet.msgs_per_s", "ucx.msgs_per_s"),
    ];
    if size >= IPERF3_DEFAULT_LEN {
        ratios.push((
            "ratio.vs_iperf3",
            "lanet.gbytes_per_s",
            "iperf3.gbytes_per_s",
        ));
    } else if c.baseline_secs != 0 {
        report.note(format!(
            "no ratio.vs_iperf3 below {} KiB: iperf3 streams bytes in writes of {} KiB, \
             not messages of this size (UCX's tagged messages are the baseline here)",
            IPERF3_DEFAULT_LEN >> 10,
            IPERF3_DEFAULT_LEN >> 10
        ));
    }
    rounds::combine(
        &mut report,
        &measured,
        &ratios,
        &[
            "lanet.gbytes_per_s",
            "iperf3.gbytes_per_s",
            "ucx.gbytes_per_s",
        ],
    );
    Ok(report)
}

/// The baseline of a stream between two endpoints in one process on the in-memory LND:
/// UCX's tagged messages between two processes over shared memory, of the same size, for
/// about as long (what users pick on one host; a network's would be beside the point).
fn mem_baseline(report: &mut Report, size: usize, baseline_secs: u32) {
    if baseline_secs == 0 {
        report.note("--baseline-secs 0: no external baseline (UCX over shared memory)");
        return;
    }
    // Guessing 10 GB/s and at most 3 million messages a second.
    let secs = f64::from(baseline_secs);
    let iters = (secs * 1e10 / size.max(1) as f64)
        .min(secs * 3e6)
        .max(100.0);
    if add_ucx_stream(report, baselines::ucx_shm_stream(size, iters as usize)) {
        report.add_ratio("ratio.vs_ucx", "lanet.gbytes_per_s", "ucx.gbytes_per_s");
        report.add_ratio("ratio.rate_vs_ucx", "lanet.msgs_per_s", "ucx.msgs_per_s");
        report.note("--lnd mem: UCX runs over shared memory (UCX_TLS=sm, tag_bw), busy-polling");
    }
}

/// What a stream achieved: bytes and PUTs per second, acknowledged (or sent, without ACK).
pub(crate) struct Streamed {
    pub(crate) gbytes_per_s: f64,
    pub(crate) msgs_per_s: f64,
}

/// PUTs in flight by default: the data lane's peer credits, so none waits in a queue.
fn default_window() -> usize {
    peer::node_config(1).lanes[Lane::Data].peer_credits as usize
}

/// Streams PUTs to `target` for `secs`, with as many in flight as credits allow; GB/s
/// acknowledged.
pub(crate) fn stream(target: Target, size: usize, secs: f64) -> Result<f64, String> {
    stream_with(target, size, secs, default_window(), true).map(|s| s.gbytes_per_s)
}

/// Streams PUTs to `target` for `secs`, `window` of them in flight (beyond the peer's
/// credits they wait in its queue), each waiting for its ACK if `ack`.
pub(crate) fn stream_with(
    target: Target,
    size: usize,
    secs: f64,
    window: usize,
    ack: bool,
) -> Result<Streamed, String> {
    if window == 0 {
        return Err("--window must be at least 1".into());
    }
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let cell: Arc<OnceLock<(Endpoint, PutRequest)>> = Arc::new(OnceLock::new());
    let run_for = Duration::from_secs_f64(secs);
    let on_event = {
        let cell = cell.clone();
        let mut start: Option<Instant> = None;
        let mut bytes = 0u64;
        let mut msgs = 0u64;
        let mut in_flight = window;
        let mut done_tx = Some(done_tx);
        move |e: Event| {
            let Event::Completed(c) = e else { return };
            in_flight -= 1;
            match c.result {
                // The clock starts at the first acknowledgement: connection set-up is not
                // bandwidth.
                Ok(OpOutcome::Put { mlen: len } | OpOutcome::Sent { len }) => match start {
                    None => start = Some(Instant::now()),
                    Some(_) => {
                        bytes += u64::from(len);
                        msgs += 1;
                    }
                },
                other => {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(Err(format!("a PUT failed: {other:?}")));
                    }
                    return;
                }
            }
            let t0 = start.expect("set above");
            if t0.elapsed() < run_for {
                let (ep, req) = cell.get().expect("set before the first PUT");
                if ep.put(req.clone()).is_ok() {
                    in_flight += 1;
                }
            } else if in_flight == 0 {
                if let Some(tx) = done_tx.take() {
                    let secs = t0.elapsed().as_secs_f64();
                    let _ = tx.send(Ok(Streamed {
                        gbytes_per_s: bytes as f64 / secs / 1e9,
                        msgs_per_s: msgs as f64 / secs,
                    }));
                }
            }
        }
    };
    let client = peer::client(target, size, Duration::from_secs(30), on_event)?;
    let req = PutRequest {
        ack,
        ..client.put.clone()
    };
    let ep = client.ep.clone();
    let _ = cell.set((ep.clone(), req.clone()));
    for _ in 0..window {
        ep.put(req.clone()).map_err(|e| e.to_string())?;
    }
    let result = done_rx
        .recv_timeout(run_for + Duration::from_secs(120))
        .map_err(|_| "the stream did not finish".to_string())?;
    ep.shutdown();
    result
}

/// iperf3's and UCX's figures for one round, beside lanet's.
fn baselines_of_round(
    round: &mut Report,
    size: usize,
    secs: f64,
    write_len: usize,
    ucx_iters: usize,
) {
    let iperf3 = baselines::iperf3(secs, write_len);
    if let Some(g) = round.baseline("iperf3", "iperf3", iperf3) {
        round.add("iperf3.gbytes_per_s", g, "GB/s");
        round.note(format!("iperf3 writes {write_len} bytes per call (-l)"));
    }
    add_ucx_stream(round, baselines::ucx_stream(size, ucx_iters));
}

/// UCX's stream figures, or a note saying why there are none; whether there are.
fn add_ucx_stream(report: &mut Report, ucx: Option<Result<Streamed, String>>) -> bool {
    let Some(u) = report.baseline("ucx_perftest", "UCX", ucx) else {
        return false;
    };
    report.add("ucx.gbytes_per_s", u.gbytes_per_s, "GB/s");
    report.add("ucx.msgs_per_s", u.msgs_per_s, "msg/s");
    true
}
