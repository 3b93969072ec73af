//! `lanet-bench lanes`: does the health lane keep its latency when data saturates the
//! peer? Health PING round trips between two processes over TCP, measured (a) idle,
//! (b) while several threads stream 1 MiB PUTs to the same peer, and (c) under the same
//! load with the pings on the data lane, as a transport without a health lane would send
//! them: the baseline. Data throughput is reported for (b) and (c), so that no lane wins by
//! starving data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use lanet::op::{PingRequest, PutRequest};
use lanet::{Endpoint, Event, Lane, Nid, OpOutcome};

use crate::baselines::histogram;
use crate::peer;
use crate::report::Report;
use crate::LanesArgs;

/// PUTs in flight: more than the peer's data credits, so a queue forms in the core (as
/// under real load) and a ping on the data lane has to wait in it.
const WINDOW: usize = 32;
/// Time between one ping's answer and the next ping.
const PING_GAP: Duration = Duration::from_millis(2);

/// What the endpoint's event callback feeds the benchmark threads.
struct Feeds {
    /// One token per completed PUT: a submitter may send another.
    slots: Sender<()>,
    /// Ping round trips, as the core measured them.
    pongs: Sender<Duration>,
    /// Bytes acknowledged.
    bytes: AtomicU64,
    failed: AtomicBool,
}

pub(crate) fn run(args: &LanesArgs) -> Result<Report, String> {
    let size = args.size;
    let phase = Duration::from_secs_f64(args.secs / 3.0);
    let title = format!(
        "lanes: health PING round trips, idle and under {} threads of {size}-byte PUTs, {:.1} s per phase",
        args.threads,
        phase.as_secs_f64()
    );
    let mut report = Report::new(title, args.json);
    // Its TCP processes sleep, as the figures it compares assume.
    if let Some(unset) = crate::peer::no_busy_poll() {
        report.note(unset);
    }
    let server = peer::spawn_server("lanes", None)?;
    let (slots_tx, slots_rx) = crossbeam_channel::unbounded();
    let (pongs_tx, pongs_rx) = crossbeam_channel::unbounded();
    let feeds = Arc::new(Feeds {
        slots: slots_tx,
        pongs: pongs_tx,
        bytes: AtomicU64::new(0),
        failed: AtomicBool::new(false),
    });
    let on_event = {
        let feeds = feeds.clone();
        move |e: Event| {
            let Event::Completed(c) = e else { return };
            match c.result {
                Ok(OpOutcome::Pong { rtt }) => {
                    let _ = feeds.pongs.send(rtt);
                }
                Ok(OpOutcome::Put { mlen }) => {
                    feeds.bytes.fetch_add(u64::from(mlen), Ordering::Relaxed);
                    let _ = feeds.slots.send(());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("lanet-bench lanes: an operation failed: {e}");
                    feeds.failed.store(true, Ordering::Relaxed);
                    let _ = feeds.slots.send(());
                }
            }
        }
    };
    let client = peer::client(
        peer::Target::Remote(server.nid),
        size,
        Duration::from_secs(60),
        on_event,
    )?;
    let ep = client.ep.clone();
    let dst = server.nid;

    // (a) Idle.
    let idle = pings(&ep, dst, Lane::Health, &pongs_rx, phase)?;
    // (b) Loaded, pings on the health lane; (c) the same, pings on the data lane.
    let mut loaded = None;
    let mut single = None;
    for lane in [Lane::Health, Lane::Data] {
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..WINDOW {
            let _ = feeds.slots.send(());
        }
        let submitters: Vec<_> = (0..args.threads)
            .map(|_| {
                let (ep, req, rx, stop) = (
                    ep.clone(),
                    client.put.clone(),
                    slots_rx.clone(),
                    stop.clone(),
                );
                std::thread::spawn(move || submit_while(&ep, &req, &rx, &stop))
            })
            .collect();
        // Let the stream fill the pipes before measuring.
        std::thread::sleep(Duration::from_millis(300));
        let before = feeds.bytes.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let hist = pings(&ep, dst, lane, &pongs_rx, phase)?;
        let gbps = (feeds.bytes.load(Ordering::Relaxed) - before) as f64
            / t0.elapsed().as_secs_f64()
            / 1e9;
        stop.store(true, Ordering::Relaxed);
        for _ in 0..args.threads {
            let _ = feeds.slots.send(()); // wake every submitter to see the stop
        }
        for s in submitters {
            let _ = s.join();
        }
        // Drain: wait until the PUTs in flight are acknowledged.
        std::thread::sleep(Duration::from_millis(500));
        while slots_rx.try_recv().is_ok() {}
        match lane {
            Lane::Health => loaded = Some((hist, gbps)),
            Lane::Data => single = Some((hist, gbps)),
        }
    }
    ep.shutdown();
    if feeds.failed.load(Ordering::Relaxed) {
        return Err("operations failed during the run (see above)".into());
    }
    let (loaded, loaded_gbps) = loaded.expect("measured");
    let (single, single_gbps) = single.expect("measured");
    report.add_latency("idle", &idle);
    report.add_latency("loaded", &loaded);
    report.add_latency("loaded_single_lane", &single);
    report.add("loaded.data_gbytes_per_s", loaded_gbps, "GB/s");
    report.add("loaded_single_lane.data_gbytes_per_s", single_gbps, "GB/s");
    report.add_ratio("ratio.loaded_vs_idle_p99", "loaded.p99_us", "idle.p99_us");
    report.add_ratio(
        "ratio.single_lane_vs_loaded_p99",
        "loaded_single_lane.p99_us",
        "loaded.p99_us",
    );
    report.add("pings.idle", idle.len() as f64, "");
    report.add("pings.loaded", loaded.len() as f64, "");
    report.add("pings.loaded_single_lane", single.len() as f64, "");
    Ok(report)
}

/// Submits a PUT for every slot token until told to stop.
fn submit_while(ep: &Endpoint, req: &PutRequest, slots: &Receiver<()>, stop: &AtomicBool) {
    while slots.recv().is_ok() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if ep.put(req.clone()).is_err() {
            return;
        }
    }
}

/// Pings `dst` on `lane`, one at a time, for `phase`; their round trips.
fn pings(
    ep: &Endpoint,
    dst: Nid,
    lane: Lane,
    pongs: &Receiver<Duration>,
    phase: Duration,
) -> Result<Histogram<u64>, String> {
    let mut hist = histogram();
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let req = PingRequest {
            dst,
            lane,
            timeout: Some(Duration::from_secs(30)),
            on_peer_down: Default::default(),
        };
        ep.ping(req).map_err(|e| e.to_string())?;
        let rtt = pongs
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "a ping got no answer within 60 s".to_string())?;
        hist.record(rtt.as_nanos().max(1) as u64)
            .map_err(|e| e.to_string())?;
        std::thread::sleep(PING_GAP);
    }
    Ok(hist)
}
