//! A lanet peer process for the integration tests: listens on `NID`, accepts PUTs on
//! `SINK_PORTAL` and answers GETs on `SOURCE_PORTAL`, prints `ready` once it serves, and
//! runs until killed or until its standard input closes.
//!
//! Usage: lanet-tcp-peer NID INCARNATION

use std::io::{BufRead, Write};

use lanet::op::MatchEntry;
use lanet::{Endpoint, Event, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};
use lanet_tests::{pattern, MAX_TRANSFER, SINK_PORTAL, SIZES, SOURCE_PORTAL};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (Some(nid), Some(incarnation)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: lanet-tcp-peer NID INCARNATION");
        std::process::exit(2);
    };
    let nid = nid.parse().unwrap_or_else(|e| {
        eprintln!("lanet-tcp-peer: {e}");
        std::process::exit(2)
    });
    let incarnation: u64 = incarnation.parse().unwrap_or_else(|e| {
        eprintln!("lanet-tcp-peer: bad incarnation: {e}");
        std::process::exit(2)
    });
    let cfg = NodeConfig::new(incarnation);
    let lnd = TcpLnd::bind(nid, TcpConfig::for_node(&cfg)).unwrap_or_else(|e| {
        eprintln!("lanet-tcp-peer: {e}");
        std::process::exit(1)
    });
    let ep = Endpoint::builder(cfg)
        .lnd(lnd)
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
    // Consume deliveries so the receive budget never fills.
    let consumer = ep.clone();
    std::thread::spawn(move || {
        while let Some(e) = consumer.recv_event(None) {
            if let Event::ProtocolError { peer, error, .. } = e {
                eprintln!("lanet-tcp-peer: protocol error from {peer}: {error}");
            }
        }
    });
    println!("ready");
    std::io::stdout().flush().unwrap();
    // Until the test closes our standard input (or kills us).
    for _ in std::io::stdin().lock().lines() {}
    ep.shutdown();
}
