//! A lanet peer process for the integration tests: listens on `NID`, accepts PUTs on
//! `SINK_PORTAL` and answers GETs on `SOURCE_PORTAL`, prints `ready` once it serves, and
//! runs until killed or until its standard input closes.
//!
//! Usage: lanet-peer NID INCARNATION   (a `tcp` NID runs the TCP LND, an `o2ib` one RDMA)

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanet::op::MatchEntry;
use lanet::{Endpoint, Event, NodeConfig};
use lanet_tests::{bind_lnd, pattern, MAX_TRANSFER, SINK_PORTAL, SIZES, SOURCE_PORTAL};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(nid), Some(incarnation)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: lanet-peer NID INCARNATION");
        std::process::exit(2);
    };
    let nid = nid.parse().unwrap_or_else(|e| {
        eprintln!("lanet-peer: {e}");
        std::process::exit(2)
    });
    let incarnation: u64 = incarnation.parse().unwrap_or_else(|e| {
        eprintln!("lanet-peer: bad incarnation: {e}");
        std::process::exit(2)
    });
    let cfg = NodeConfig::new(incarnation);
    let lnd = bind_lnd(nid, &cfg).unwrap_or_else(|e| {
        eprintln!("lanet-peer: {e}");
        std::process::exit(1)
    });
    let ep = Endpoint::builder(cfg)
        .boxed_lnd(lnd)
        .start()
        .expect("start the endpoint");
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
    std::thread::spawn(move || {
        while let Some(e) = consumer.recv_event(None) {
            match e {
                Event::Delivered(d) if d.portal == SINK_PORTAL => {
                    let seed = d.payload.first().copied().unwrap_or(0);
                    let intact = d.payload == pattern(d.payload.len(), seed);
                    counts[usize::from(!intact)].fetch_add(1, Ordering::Relaxed);
                }
                Event::ProtocolError { peer, error, .. } => {
                    eprintln!("lanet-peer: protocol error from {peer}: {error}");
                }
                _ => {}
            }
        }
    });
    println!("ready");
    std::io::stdout().flush().unwrap();
    // Until the test closes our standard input (or kills us).
    for _ in std::io::stdin().lock().lines() {}
    ep.shutdown();
    // The test may have stopped listening: a failed write here is no error.
    let [intact, corrupt] = &*verdicts;
    let _ = writeln!(
        std::io::stdout(),
        "puts intact {} corrupt {}",
        intact.load(Ordering::Relaxed),
        corrupt.load(Ordering::Relaxed)
    );
}
