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
        let lanet = stream_once()?;
        let iperf3 = baselines::iperf3(secs, write_len);
        let iperf3 = report.baseline("iperf3", "iperf3", iperf3);
        let ucx = baselines::ucx_stream(size, ucx_iters as usize);
        let ucx = report.baseline("ucx_perftest", "UCX", ucx);
        measured.push(Round { lanet, iperf3, ucx });
    }
    if measured.iter().any(|r| r.iperf3.is_some()) {
        report.note(format!("iperf3 writes {write_len} bytes per call (-l)"));
    }
    add_rounds(&mut report, &measured);
    Ok(report)
}

/// One round of a TCP comparison: lanet's stream, then each baseline's, back to back.
struct Round {
    lanet: Streamed,
    iperf3: Option<f64>,
    ucx: Option<Streamed>,
}

/// One figure of a round, if it was measured.
type Figure = fn(&Round) -> Option<f64>;

/// The figures of `rounds`: one round's as they are; several rounds' medians, and each
/// ratio as the median of the rounds' own ratios (a round's runs are seconds apart, so a
/// slow phase of the machine tends to slow both sides of its ratio), with its range.
fn add_rounds(report: &mut Report, rounds: &[Round]) {
    let series: [(&str, &str, Figure); 5] = [
        ("lanet.gbytes_per_s", "GB/s", |r| Some(r.lanet.gbytes_per_s)),
        ("lanet.msgs_per_s", "msg/s", |r| Some(r.lanet.msgs_per_s)),
        ("iperf3.gbytes_per_s", "GB/s", |r| r.iperf3),
        ("ucx.gbytes_per_s", "GB/s", |r| {
            r.ucx.as_ref().map(|u| u.gbytes_per_s)
        }),
        ("ucx.msgs_per_s", "msg/s", |r| {
            r.ucx.as_ref().map(|u| u.msgs_per_s)
        }),
    ];
    let ratios: [(&str, Figure); 3] = [
        ("ratio.vs_iperf3", |r| {
            ratio(r.lanet.gbytes_per_s, r.iperf3?)
        }),
        ("ratio.vs_ucx", |r| {
            ratio(r.lanet.gbytes_per_s, r.ucx.as_ref()?.gbytes_per_s)
        }),
        ("ratio.rate_vs_ucx", |r| {
            ratio(r.lanet.msgs_per_s, r.ucx.as_ref()?.msgs_per_s)
        }),
    ];
    for (key, unit, of) in series {
        if let Some(m) = median(rounds.iter().filter_map(of)) {
            report.add(key, m, unit);
        }
    }
    for (key, of) in ratios {
        let each: Vec<f64> = rounds.iter().filter_map(of).collect();
        if let Some(m) = median(each.iter().copied()) {
            report.add(key, m, "x");
            if rounds.len() > 1 {
                let (lo, hi) = each
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                report.add(format!("{key}.min"), lo, "x");
                report.add(format!("{key}.max"), hi, "x");
            }
        }
    }
    if rounds.len() > 1 {
        report.add("rounds", rounds.len() as f64, "");
        report.note(format!(
            "{} rounds of lanet, iperf3, UCX: medians; each ratio the median of the rounds' own",
            rounds.len()
        ));
        for (i, r) in rounds.iter().enumerate() {
            let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            report.note(format!(
                "round {}: lanet {:.2} GB/s, iperf3 {}, UCX {}",
                i + 1,
                r.lanet.gbytes_per_s,
                show(r.iperf3),
                show(r.ucx.as_ref().map(|u| u.gbytes_per_s)),
            ));
        }
    }
}

fn ratio(n: f64, d: f64) -> Option<f64> {
    (d > 0.0).then(|| n / d)
}

/// The median (of an even count, the mean of the middle two); None for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(match v.len() % 2 {
        1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(lanet: f64, iperf3: Option<f64>, ucx: Option<f64>) -> Round {
        let streamed = |g: f64| Streamed {
            gbytes_per_s: g,
            msgs_per_s: g * 1000.0,
        };
        Round {
            lanet: streamed(lanet),
            iperf3,
            ucx: ucx.map(streamed),
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }

    #[test]
    fn a_ratio_is_the_median_of_the_rounds_own_not_of_the_medians() {
        // Each round's lanet and UCX share the machine's phase: 4/2, 5/5, 3/6.
        let rounds = [
            round(4.0, Some(5.0), Some(2.0)),
            round(5.0, None, Some(5.0)),
            round(3.0, Some(6.0), Some(6.0)),
        ];
        let mut report = Report::new("t", false);
        add_rounds(&mut report, &rounds);
        assert_eq!(report.get("lanet.gbytes_per_s"), Some(4.0));
        assert_eq!(report.get("ucx.gbytes_per_s"), Some(5.0));
        // The medians' ratio would be 0.8.
        assert_eq!(report.get("ratio.vs_ucx"), Some(1.0));
        assert_eq!(report.get("ratio.vs_ucx.min"), Some(0.5));
        assert_eq!(report.get("ratio.vs_ucx.max"), Some(2.0));
        // A round without iperf3 has no iperf3 ratio: 4/5 and 3/6.
        assert_eq!(report.get("iperf3.gbytes_per_s"), Some(5.5));
        assert_eq!(report.get("ratio.vs_iperf3"), Some(0.65));
        assert_eq!(report.get("rounds"), Some(3.0));
    }

    #[test]
    fn one_round_reports_its_own_figures_without_a_range() {
        let mut report = Report::new("t", false);
        add_rounds(&mut report, &[round(4.0, None, Some(5.0))]);
        assert_eq!(report.get("ratio.vs_ucx"), Some(0.8));
        assert_eq!(report.get("ratio.vs_ucx.min"), None);
        assert_eq!(report.get("iperf3.gbytes_per_s"), None);
        assert_eq!(report.get("rounds"), None);
    }
}
