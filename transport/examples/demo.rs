//! The lanet demo: two endpoints on the in-memory LND, in one process, on the real clock.
//! It shows PUT, GET, a health-lane ping, a refusal, flow control under a burst, a cut cable
//! and a dead peer, and how each operation ends in exactly one completion; then two nets
//! joined by two routers, one of which becomes a black hole and takes itself out.
//!
//! Run with `./scripts/demo` (or `cargo run -p lanet --example demo`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanet::mem::{LinkFaults, MemFabric, MemLnd, MemLndConfig};
use lanet::op::{GetRequest, MatchEntry, PingRequest, PutRequest};
use lanet::time::MonotonicClock;
use lanet::{Endpoint, Event, Lane, Nid, NodeConfig, OpId};

const SINK: u32 = 4;
const SOURCE: u32 = 5;

fn start(fabric: &MemFabric, nid: Nid, incarnation: u64) -> Endpoint {
    let cfg = NodeConfig::new(incarnation);
    let lnd = MemLnd::new(fabric, nid, MemLndConfig::for_node(&cfg)).expect("attach to the fabric");
    Endpoint::builder(cfg)
        .lnd(lnd)
        .start()
        .expect("start the endpoint")
}

/// Prints events from `ep` until `op`, submitted at `t0`, completes.
fn wait(who: &str, ep: &Endpoint, op: OpId, t0: Instant) {
    loop {
        match ep.recv_event(Some(Duration::from_secs(10))) {
            None => panic!("{who}: no completion for {op} within 10 s"),
            Some(Event::Completed(c)) if c.op == op => {
                let took = t0.elapsed();
                match c.result {
                    Ok(outcome) => println!(
                        "  {who}: {op} ok after {took:.1?}: {}",
                        short(&format!("{outcome:?}"))
                    ),
                    Err(e) => println!("  {who}: {op} failed after {took:.1?}: {e}"),
                }
                return;
            }
            Some(other) => show(who, other),
        }
    }
}

fn show(who: &str, e: Event) {
    match e {
        Event::Delivered(d) => println!(
            "  {who}: received {} bytes from {} on portal {} (bits {:#x}): {:?}",
            d.payload.len(),
            d.from,
            d.portal,
            d.match_bits,
            String::from_utf8_lossy(&d.payload[..d.payload.len().min(40)])
        ),
        other => println!("  {who}: {}", short(&format!("{other:?}"))),
    }
}

fn short(s: &str) -> String {
    if s.len() > 100 {
        format!("{}...", &s[..100])
    } else {
        s.to_owned()
    }
}

/// Prints whatever `ep` has reported, waiting briefly for stragglers.
fn drain(who: &str, ep: &Endpoint) {
    while let Some(e) = ep.recv_event(Some(Duration::from_millis(50))) {
        show(who, e);
    }
}

fn put(dst: Nid, portal: u32, payload: impl Into<Bytes>) -> PutRequest {
    PutRequest {
        lane: Lane::Data,
        dst,
        portal,
        match_bits: 0x10,
        payload: payload.into(),
        timeout: None,
        on_peer_down: Default::default(),
        ack: true,
    }
}

fn main() {
    let fabric = MemFabric::new(Arc::new(MonotonicClock::new()), 1);
    fabric.set_default_link(LinkFaults {
        delay: Duration::from_micros(50),
        ..LinkFaults::default()
    });
    let (client_nid, server_nid): (Nid, Nid) = ("1@mem".parse().unwrap(), "2@mem".parse().unwrap());
    let client = start(&fabric, client_nid, 1);
    let server = start(&fabric, server_nid, 2);
    println!("lanet demo: client {client_nid} and server {server_nid} on an in-memory net, 50 us one-way delay\n");

    println!(
        "1. The server posts a receive buffer (portal {SINK}) and a GET source (portal {SOURCE})."
    );
    server
        .attach(MatchEntry::sink(SINK, 0x10, 1 << 20))
        .unwrap();
    let file: Bytes = (0..64 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    server
        .attach(MatchEntry::source(SOURCE, 0x10, file.clone()))
        .unwrap();

    println!("\n2. PUT \"hello, lanet\": connects the data lane (HELLO both ways), sends, waits for the ACK.");
    let t0 = Instant::now();
    let op = client
        .put(put(server_nid, SINK, &b"hello, lanet"[..]))
        .unwrap();
    wait("client", &client, op, t0);
    drain("server", &server);

    println!("\n3. GET 64 KiB from the server's source; the data is checked.");
    let op = client
        .get(GetRequest {
            lane: Lane::Data,
            dst: server_nid,
            portal: SOURCE,
            match_bits: 0x10,
            want_len: 64 * 1024,
            timeout: None,
            on_peer_down: Default::default(),
        })
        .unwrap();
    let t0 = Instant::now();
    loop {
        match client.recv_event(Some(Duration::from_secs(10))) {
            Some(Event::Completed(c)) if c.op == op => {
                match c.result {
                    Ok(lanet::OpOutcome::Get { data }) => {
                        println!(
                            "  client: {op} got {} bytes after {:.1?}; identical to the source: {}",
                            data.len(),
                            t0.elapsed(),
                            data == file
                        )
                    }
                    other => println!("  client: {op}: {other:?}"),
                }
                break;
            }
            Some(e) => show("client", e),
            None => panic!("GET did not complete"),
        }
    }

    println!("\n4. Two PINGs on the health lane (its own connection and credits; the first connects it):");
    for _ in 0..2 {
        let t0 = Instant::now();
        let op = client
            .ping(PingRequest {
                dst: server_nid,
                lane: Lane::Health,
                timeout: None,
                on_peer_down: Default::default(),
            })
            .unwrap();
        wait("client", &client, op, t0);
    }

    println!("\n5. A PUT to portal 9, where nothing is posted: refused, and both sides hear why.");
    let t0 = Instant::now();
    let op = client.put(put(server_nid, 9, &b"anyone?"[..])).unwrap();
    wait("client", &client, op, t0);
    drain("server", &server);

    println!(
        "\n6. A burst of 2000 PUTs of 4 KiB: 8 peer credits bound what is in flight; all complete."
    );
    let t0 = Instant::now();
    let ops: Vec<OpId> = (0..2000)
        .map(|_| client.put(put(server_nid, SINK, vec![7u8; 4096])).unwrap())
        .collect();
    let mut ok = 0;
    let mut left = ops.len();
    while left > 0 {
        match client.recv_event(Some(Duration::from_secs(10))) {
            Some(Event::Completed(c)) => {
                left -= 1;
                ok += usize::from(c.result.is_ok());
            }
            Some(_) => {}
            None => panic!("burst stalled with {left} left"),
        }
    }
    let took = t0.elapsed();
    let mut received = 0;
    while let Some(e) = server.recv_event(Some(Duration::from_millis(100))) {
        received += usize::from(matches!(e, Event::Delivered(_)));
    }
    println!("  client: {ok}/2000 acknowledged in {took:.1?}; server received {received}");
    let stats = client.stats().unwrap();
    println!(
        "  client stats: {} frames sent, {} received, {} explicit CREDIT frames",
        stats.frames_sent, stats.frames_received, stats.credit_frames_sent
    );

    println!("\n7. The cable is cut: a PUT with a 200 ms deadline is sent but never answered.");
    fabric.set_cut(client_nid, server_nid, true);
    let t0 = Instant::now();
    let op = client
        .put(PutRequest {
            timeout: Some(Duration::from_millis(200)),
            ..put(server_nid, SINK, &b"lost"[..])
        })
        .unwrap();
    wait("client", &client, op, t0);
    fabric.set_cut(client_nid, server_nid, false);

    println!(
        "\n8. On a slow link (20 ms), the server dies with a 1 MiB PUT on the wire: the reset"
    );
    println!("   fails the client's operation at once instead of at its 10 s deadline.");
    let slow = LinkFaults {
        delay: Duration::from_millis(20),
        ..fabric.link(client_nid, server_nid)
    };
    fabric.set_link(client_nid, server_nid, slow);
    let t0 = Instant::now();
    let op = client
        .put(put(server_nid, SINK, vec![1u8; 1 << 20]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    drop(server);
    wait("client", &client, op, t0);
    drain("client", &client);

    println!("\n9. The server comes back with a new incarnation: the client sees a restart, not just a reconnection.");
    fabric.set_link(
        client_nid,
        server_nid,
        LinkFaults {
            delay: Duration::from_micros(50),
            ..slow
        },
    );
    let server = start(&fabric, server_nid, 3);
    server
        .attach(MatchEntry::sink(SINK, 0x10, 1 << 20))
        .unwrap();
    let t0 = Instant::now();
    let op = client
        .put(put(server_nid, SINK, &b"welcome back"[..]))
        .unwrap();
    wait("client", &client, op, t0);
    drain("server", &server);

    client.shutdown();
    server.shutdown();
    routers(&fabric);
    println!("\nDone: every operation above ended in exactly one completion.");
}

/// Step 10: a client on net mem1, a server on mem2, routers 8 and 9 on both.
fn routers(fabric: &MemFabric) {
    println!("\n10. Two nets, two routers. Router 8 loses net mem2 (its cable pulled) while it");
    println!("    still answers on mem1: it detects it has become a black hole and withdraws;");
    println!("    the client's PUTs go on through router 9, none lost; the cable back, router 8");
    println!("    returns after its hold-down.");
    let server_nid = Nid::mem(12, 2);
    let node = |n: u32, nets: &[u16], forwarding: bool, fellow: Option<u32>| {
        let mut cfg = NodeConfig::new(u64::from(n));
        cfg.forwarding = forwarding;
        cfg.router.warm_up = Duration::ZERO;
        if let Some(f) = fellow {
            cfg.router.fellows = vec![Nid::mem(f, 1), Nid::mem(f, 2)];
        }
        let mut b = Endpoint::builder(cfg.clone());
        for &net in nets {
            let lnd = MemLnd::new(fabric, Nid::mem(n, net), MemLndConfig::for_node(&cfg))
                .expect("attach to the fabric");
            b = b.lnd(lnd);
        }
        b.start().expect("start the endpoint")
    };
    let r8 = node(8, &[1, 2], true, Some(9));
    let _r9 = node(9, &[1, 2], true, Some(8));
    let client = node(11, &[1], false, None);
    let server = node(12, &[2], false, None);
    for gw in [8, 9] {
        let route = |net: u16, at: u16| lanet::Route {
            net: Nid::mem(0, net).net(),
            gateway: Nid::mem(gw, at),
            hops: 1,
            priority: 0,
        };
        client.add_route(route(2, 1)).unwrap();
        server.add_route(route(1, 2)).unwrap();
    }
    server
        .attach(MatchEntry::sink(SINK, 0x10, 1 << 20))
        .unwrap();
    let consumer = server.clone();
    std::thread::spawn(move || while consumer.recv_event(None).is_some() {});
    let (mut ok, mut failed) = (0u32, 0u32);
    let t0 = Instant::now();
    let mut cut_at = None;
    let mut healed_at = None;
    let pulled = |on: bool| {
        for peer in [server_nid, Nid::mem(9, 2)] {
            fabric.set_cut(Nid::mem(8, 2), peer, on);
        }
    };
    while t0.elapsed() < Duration::from_millis(4500) {
        let op = client
            .put(put(server_nid, SINK, &b"through a router"[..]))
            .unwrap();
        loop {
            match client.recv_event(Some(Duration::from_secs(20))) {
                Some(Event::Completed(c)) if c.op == op => {
                    match c.result {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            failed += 1;
                            println!("  client: {op} failed: {e}");
                        }
                    }
                    break;
                }
                Some(Event::RouteDown {
                    gateway, reason, ..
                }) => {
                    println!(
                        "  client, at {} ms: route through {gateway} down: {reason}",
                        t0.elapsed().as_millis()
                    )
                }
                Some(Event::RouteUp { gateway, .. }) => {
                    println!(
                        "  client, at {} ms: route through {gateway} up again",
                        t0.elapsed().as_millis()
                    )
                }
                Some(_) => {}
                None => panic!("a PUT never completed"),
            }
        }
        while let Some(e) = r8.try_recv_event() {
            if let Event::RouterChanged { state, cause, .. } = e {
                println!(
                    "  router 8, at {} ms: {state:?}: {cause}",
                    t0.elapsed().as_millis()
                );
            }
        }
        if cut_at.is_none() && t0.elapsed() > Duration::from_millis(300) {
            pulled(true);
            cut_at = Some(t0.elapsed().as_millis());
            println!(
                "  -- at {} ms: router 8's cable on mem2 pulled",
                t0.elapsed().as_millis()
            );
        }
        if healed_at.is_none() && t0.elapsed() > Duration::from_millis(1500) {
            pulled(false);
            healed_at = Some(t0.elapsed().as_millis());
            println!("  -- at {} ms: the cable is back", t0.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("  client: {ok} PUTs through the routers, {failed} failed");
    client.shutdown();
}
