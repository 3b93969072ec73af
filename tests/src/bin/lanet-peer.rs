//! A lanet peer process for the integration tests: listens on `NID`, accepts PUTs on
//! `SINK_PORTAL` and answers GETs on `SOURCE_PORTAL`, prints `ready` once it serves, and
//! runs until killed or until its standard input closes.
//!
//! Usage: lanet-peer NID INCARNATION   (a `tcp` NID runs the TCP LND, an `o2ib` one RDMA)
//!        lanet-peer --config FILE [--ids PATH]
//!                                      (the NIs and routes of a lanet configuration file;
//!                                      with --ids, the tag of every tagged PUT received,
//!                                      8 bytes little-endian each, goes to PATH)

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanet::op::MatchEntry;
use lanet::{Endpoint, Event, NodeConfig};
use lanet_tests::{bind_lnd, pattern, untag, MAX_TRANSFER, SINK_PORTAL, SIZES, SOURCE_PORTAL};

fn fail(why: impl std::fmt::Display) -> ! {
    eprintln!("lanet-peer: {why}");
    std::process::exit(1)
}

fn from_config(path: &str) -> Endpoint {
    let file = lanet::config::ConfigFile::load(path).unwrap_or_else(|e| fail(e));
    file.endpoint(&lanet_router::daemon::DRIVERS)
        .unwrap_or_else(|e| fail(e))
        .start()
        .unwrap_or_else(|e| fail(e))
}

fn from_nid(nid: &str, incarnation: &str) -> Endpoint {
    let nid = nid.parse().unwrap_or_else(|e| fail(e));
    let incarnation: u64 = incarnation
        .parse()
        .unwrap_or_else(|e| fail(format!("bad incarnation: {e}")));
    let cfg = NodeConfig::new(incarnation);
    let lnd = bind_lnd(nid, &cfg).unwrap_or_else(|e| fail(e));
    Endpoint::builder(cfg)
        .boxed_lnd(lnd)
        .start()
        .expect("start the endpoint")
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let ids_path = match (args.get(3).map(String::as_str), args.get(4)) {
        (Some("--ids"), Some(path)) => Some(path.clone()),
        _ => None,
    };
    let ep = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--config"), Some(path)) => from_config(path),
        (Some(nid), Some(incarnation)) => from_nid(nid, incarnation),
        _ => {
            eprintln!("usage: lanet-peer NID INCARNATION | lanet-peer --config FILE [--ids PATH]");
            std::process::exit(2);
        }
    };
    ep.attach(MatchEntry::sink(SINK_PORTAL, 1, MAX_TRANSFER as u32))
        .unwrap();
    for (i, &len) in SIZES.iter().enumerate() {
        ep.attach(MatchEntry::source(
            SOURCE_PORTAL,
            i as u64,
            pattern(len, i as u8),
        ))
        .unwrap();
    }
    // Consume deliveries so the receive budget never fills, checking each PUT's data.
    let consumer = ep.clone();
    let verdicts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let counts = verdicts.clone();
    let mut ids = ids_path.map(|p| {
        let f = std::fs::File::create(&p).unwrap_or_else(|e| fail(format!("{p}: {e}")));
        std::io::BufWriter::new(f)
    });
    let consuming = std::thread::spawn(move || {
        while let Some(e) = consumer.recv_event(None) {
            match e {
                Event::Delivered(d) if d.portal == SINK_PORTAL => {
                    let intact = match untag(&d.payload) {
                        Some((tag, intact)) => {
                            if let Some(ids) = ids.as_mut() {
                                ids.write_all(&tag.to_le_bytes()).expect("record a tag");
                            }
                            intact
                        }
                        None => {
                            let seed = d.payload.first().copied().unwrap_or(0);
                            d.payload == pattern(d.payload.len(), seed)
                        }
                    };
                    counts[usize::from(!intact)].fetch_add(1, Ordering::Relaxed);
                }
                Event::ProtocolError { peer, error, .. } => {
                    eprintln!("lanet-peer: protocol error from {peer}: {error}");
                }
                _ => {}
            }
        }
        if let Some(mut ids) = ids {
            ids.flush().expect("write the tags");
        }
    });
    println!("ready");
    std::io::stdout().flush().unwrap();
    // Until the test closes our standard input (or kills us).
    for _ in std::io::stdin().lock().lines() {}
    ep.shutdown();
    // Every event is counted before the counts are told (a flood of refusals may have
    // put many before the last deliveries).
    drop(ep);
    consuming
        .join()
        .expect("the event consumer panicked: its counts are incomplete");
    // The test may have stopped listening: a failed write here is no error.
    let [intact, corrupt] = &*verdicts;
    let _ = writeln!(
        std::io::stdout(),
        "puts intact {} corrupt {}",
        intact.load(Ordering::Relaxed),
        corrupt.load(Ordering::Relaxed)
    );
}
