//! A lanet node over real TCP (a `lanet-peer` process on loopback) against peers that mean
//! harm, each a raw socket speaking as much of the protocol as it likes. Each must get a
//! disconnect (or be ignored, where what it sends is harmless), while a well-behaved client
//! goes on being served: every one of its operations completes, and succeeds, and every
//! PUT it made is delivered exactly once (the peer counts them when it exits).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lanet::wire::{encode_header, Body, NackReason, HEADER_LEN};
use lanet::{Endpoint, Lane};
use lanet_tests::peer::{get, put, wait_all, Peer};
use lanet_tests::raw::*;
use lanet_tests::{loopback_endpoint, pattern};

const PEER_EXE: &str = env!("CARGO_BIN_EXE_lanet-peer");

/// The server, and a well-behaved client of it.
struct Site {
    server: Peer,
    client: Endpoint,
    puts: u64,
}

impl Site {
    fn new() -> Site {
        let server = Peer::start_on_loopback(PEER_EXE, 7, true);
        let client = loopback_endpoint(1);
        let mut site = Site {
            server,
            client,
            puts: 0,
        };
        site.still_serves("at the start");
        site
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::V4(self.server.nid.socket_addr(0).expect("an IP NID"))
    }

    /// The client PUTs and GETs; both must succeed, intact.
    fn still_serves(&mut self, after: &str) {
        let nid = self.server.nid;
        let p = self.client.put(put(nid, pattern(4096, 9))).unwrap();
        let g = self.client.get(get(nid, 5)).unwrap();
        let done = wait_all(&self.client, &[p, g]);
        assert!(
            done[&p].result.is_ok(),
            "{after}: PUT {:?}",
            done[&p].result
        );
        assert!(
            done[&g].result.is_ok(),
            "{after}: GET {:?}",
            done[&g].result
        );
        self.puts += 1;
    }

    /// The server's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.server.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Ends the run: every PUT the client made was delivered exactly once, intact.
    fn finish(self) {
        let puts = self.puts;
        drop(self.client);
        let (intact, corrupt) = self.server.finish();
        assert_eq!(
            (intact, corrupt),
            (puts, 0),
            "PUTs delivered exactly once, intact"
        );
    }
}

#[test]
fn bytes_that_are_no_lanet_frame_are_closed_and_the_node_serves_on() {
    let mut site = Site::new();
    let server = site.server.nid;
    let me = nid_at(Ipv4Addr::new(127, 0, 0, 1));
    let mut bad_magic = hello(me, server, Lane::Data, 8);
    bad_magic[0] ^= 0xff;
    let mut old_version = hello(me, server, Lane::Data, 8);
    old_version[4] = 1;
    let mut bad_checksum = hello(me, server, Lane::Data, 8);
    bad_checksum[40] ^= 1;
    // As an RDMA peer sends it: TCP does not protect headers well enough to go without.
    let unchecked = {
        let mut b = hello(me, server, Lane::Data, 8);
        b[10] = lanet::wire::FLAG_LINK_CHECKED;
        b[92..].fill(0);
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("zeros", vec![0; 4096]),
        ("a bad magic", bad_magic.to_vec()),
        ("protocol version 1", old_version.to_vec()),
        ("a bad checksum", bad_checksum.to_vec()),
        ("a header without a checksum", unchecked.to_vec()),
        (
            "a truncated HELLO, then silence",
            hello(me, server, Lane::Data, 8)[..50].to_vec(),
        ),
        ("nothing at all", Vec::new()),
    ];
    for (what, bytes) in cases {
        let mut s = dial(site.addr(), Ipv4Addr::LOCALHOST);
        let _ = s.write_all(&bytes); // it may close before all is written
        assert!(closed_by_server(&mut s), "{what}: not closed");
        site.still_serves(what);
    }
    site.finish();
}

#[test]
fn hellos_that_lie_are_refused() {
    let mut site = Site::new();
    let server = site.server.nid;
    let client = site.client.nids()[0];
    // (what, the NID it claims, the address it comes from, whom it addresses)
    let cases = [
        (
            "the client's NID from 127.0.0.2",
            client,
            Ipv4Addr::new(127, 0, 0, 2),
            server,
        ),
        (
            "10.1.2.3@tcp from 127.0.0.1",
            nid_at(Ipv4Addr::new(10, 1, 2, 3)),
            Ipv4Addr::LOCALHOST,
            server,
        ),
        (
            "a HELLO for another node",
            nid_at(Ipv4Addr::LOCALHOST),
            Ipv4Addr::LOCALHOST,
            nid_at(Ipv4Addr::new(127, 0, 0, 9)),
        ),
    ];
    for (what, claimed, from, to) in cases {
        let mut s = dial(site.addr(), from);
        s.write_all(&hello(claimed, to, Lane::Data, 8)).unwrap();
        assert!(closed_by_server(&mut s), "{what}: not refused");
        site.still_serves(what);
    }
    site.finish();
}

#[test]
fn credits_never_lent_and_lengths_beyond_the_limit_close_the_connection() {
    let mut site = Site::new();
    let server = site.server.nid;
    let me = nid_at(Ipv4Addr::new(127, 0, 0, 3));
    // Credits returned that were never lent.
    let mut s = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 3));
    s.write_all(&hello(me, server, Lane::Data, 8)).unwrap();
    read_hello(&mut s);
    s.write_all(&frame(me, server, Lane::Data, Body::Credit, 0, 500))
        .unwrap();
    assert!(closed_by_server(&mut s), "500 credits returned, none lent");
    site.still_serves("credits never lent");

    // A payload length far beyond the largest payload.
    let mut s = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 3));
    s.write_all(&hello(me, server, Lane::Data, 8)).unwrap();
    read_hello(&mut s);
    let put = Body::Put {
        portal: lanet_tests::SINK_PORTAL,
        match_bits: 1,
        settled_below: 0,
        ack: true,
    };
    let mut huge = frame(me, server, Lane::Data, put, 1, 0);
    huge.truncate(HEADER_LEN);
    let limits = lanet::wire::Limits::new(u32::MAX, lanet::wire::HeaderCheck::Crc32);
    let mut h = lanet::wire::decode_header(&huge, &limits).expect("a PUT header");
    h.payload_len = u32::MAX - 1;
    s.write_all(&encode_header(&h)).unwrap();
    assert!(closed_by_server(&mut s), "a 4 GiB payload length");
    site.still_serves("a huge length");
    site.finish();
}

/// Writes `frames` to `s` from a thread of its own until done or the server stops taking
/// them for 10 s; returns how many bytes went.
fn flood(s: &TcpStream, frames: Vec<u8>, times: usize) -> std::thread::JoinHandle<usize> {
    let mut s = s.try_clone().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        for _ in 0..times {
            match s.write_all(&frames) {
                Ok(()) => sent += frames.len(),
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
fn a_flood_from_a_peer_that_never_reads_is_cut_off_and_costs_bounded_memory() {
    let mut site = Site::new();
    let server = site.server.nid;
    let me = nid_at(Ipv4Addr::new(127, 0, 0, 5));
    let before = site.rss_kib();
    // It lends the server one credit and never reads: the server's answers (PONGs, ACKs)
    // wait, then are shed. Its CREDIT frames leave until the socket buffers fill (96 MB
    // of PINGs is far beyond any buffer); then one stays in the server's driver, no
    // other joins it, and what the flooder sends beyond the credits it got back is an
    // overrun.
    let mut health = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 5));
    health
        .write_all(&hello(me, server, Lane::Health, 1))
        .unwrap();
    read_hello(&mut health);
    let mut data = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 5));
    data.write_all(&hello(me, server, Lane::Data, 1)).unwrap();
    read_hello(&mut data);
    let pings: Vec<u8> = (1..=1_000u64)
        .flat_map(|m| frame(me, server, Lane::Health, Body::Ping { seq: m }, m, 0))
        .collect();
    let put = Body::Put {
        portal: lanet_tests::SINK_PORTAL,
        match_bits: 77, // matches nothing: refused
        settled_below: 0,
        ack: true,
    };
    let puts: Vec<u8> = (1..=1_000u64)
        .flat_map(|m| frame(me, server, Lane::Data, put, m, 0))
        .collect();
    let floods = [flood(&health, pings, 1_000), flood(&data, puts, 500)];
    // Meanwhile the client is served.
    for i in 0..20 {
        site.still_serves(&format!("exchange {i} during the flood"));
    }
    let sent: Vec<usize> = floods.into_iter().map(|f| f.join().unwrap()).collect();
    site.still_serves("the flood");
    let after = site.rss_kib();
    eprintln!(
        "flood: {} MB of PINGs and {} MB of PUTs sent; server RSS {} -> {} MiB",
        sent[0] >> 20,
        sent[1] >> 20,
        before >> 10,
        after >> 10
    );
    // It never read the CREDIT frames returning its credits, so what it sent beyond
    // them was an overrun: both connections were cut (the writers saw them go).
    assert!(
        closed_by_server(&mut health),
        "the PING flooder was not cut off"
    );
    assert!(
        closed_by_server(&mut data),
        "the PUT flooder was not cut off"
    );
    assert!(
        after < before + 16 * 1024,
        "the server grew from {before} to {after} KiB under a flood it answers nothing of"
    );
    site.still_serves("the flooder gone");
    site.finish();
}

#[test]
fn frames_a_stranger_has_no_business_sending_change_nothing() {
    let mut site = Site::new();
    let server = site.server.nid;
    let me = nid_at(Ipv4Addr::new(127, 0, 0, 4));
    let mut health = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 4));
    health
        .write_all(&hello(me, server, Lane::Health, 64))
        .unwrap();
    let health_credits = read_hello(&mut health);
    let mut data = dial(site.addr(), Ipv4Addr::new(127, 0, 0, 4));
    data.write_all(&hello(me, server, Lane::Data, 64)).unwrap();
    let data_credits = read_hello(&mut data);
    // NACKs for requests never made, answers to nothing, a router status from no router:
    // within the credits (one kept for the PING below), so nothing to close the
    // connection for; ignored.
    let n = u64::from(data_credits.min(health_credits)) - 1;
    let client = site.client.nids()[0];
    let status = lanet::wire::RouterStatus {
        generation: 7,
        state: lanet::wire::RouterState::Absent(lanet::wire::AbsentReason::BlackHole),
        nets: vec![(server.net(), false)],
        unreachable: vec![client],
        more_unreachable: false,
        vouched: Vec::new(),
    }
    .encode();
    for m in 1..=n / 2 {
        let nack = Body::Nack {
            reason: NackReason::NoRoute,
            target: client,
        };
        let ack = Body::Ack {
            status: lanet::wire::Status::Ok,
            mlen: 0,
        };
        data.write_all(&frame(me, server, Lane::Data, nack, m, 0))
            .unwrap();
        data.write_all(&frame(me, server, Lane::Data, ack, m, 0))
            .unwrap();
        let pong = Body::Pong { seq: m };
        health
            .write_all(&frame(me, server, Lane::Health, pong, m, 0))
            .unwrap();
        let mut push = frame(me, server, Lane::Health, Body::Status, m, 0);
        let mut h = lanet::wire::decode_header(&push, &Default::default()).unwrap();
        h.payload_len = status.len() as u32;
        push = encode_header(&h).to_vec();
        push.extend_from_slice(&status);
        health.write_all(&push).unwrap();
    }
    // The stranger's own connection still works: its PING is answered.
    let ping = Body::Ping { seq: 4242 };
    health
        .write_all(&frame(me, server, Lane::Health, ping, 4242, 0))
        .unwrap();
    assert!(
        answered_with_pong(&mut health, 4242),
        "the stranger's connection was cut or its PING unanswered"
    );
    site.still_serves("NACKs, ACKs, PONGs and a router status from a stranger");
    site.finish();
}

/// Lets this process (and the server it starts) hold thousands of sockets.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(65536);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

#[test]
fn thousands_of_half_open_connections_are_closed_and_cost_bounded_memory() {
    raise_fd_limit();
    let mut site = Site::new();
    let pid = site.server.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    let rss_before = site.rss_kib();
    let mut rss = Vec::new();
    for round in 0..4 {
        // Each connects and says nothing: past max_pending_accepts (1024) the server
        // closes the oldest at once, the rest when their handshake times out (5 s).
        let started = Instant::now();
        let mut conns: Vec<TcpStream> = (0..2_000)
            .map(|_| TcpStream::connect(site.addr()).expect("connect"))
            .collect();
        site.still_serves(&format!("round {round} of half-open connections"));
        // What the 1,024 cost while they wait for their HELLO.
        let pending = site.rss_kib();
        assert!(
            pending < rss_before + 32 * 1024,
            "round {round}: {pending} KiB with connections pending, {rss_before} before"
        );
        // Those past the cap were closed at once, well before the handshake timeout (an
        // order of magnitude, not a timing measurement).
        let early = conns.iter().filter(|c| closed_now(c)).count();
        if started.elapsed() < Duration::from_secs(3) {
            assert!(
                early >= 900,
                "round {round}: only {early} closed before the timeout"
            );
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert!(
                closed_by_server(c),
                "round {round}: connection {i} still open"
            );
        }
        drop(conns);
        rss.push(site.rss_kib());
        // Its sockets are all gone (a closed socket may take a moment to be reaped).
        let deadline = Instant::now() + Duration::from_secs(10);
        while fds() > fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(fds(), fds_before, "round {round}: descriptors left open");
    }
    eprintln!("server RSS after each round of 2,000 half-open connections (KiB): {rss:?}");
    // The first round warms the allocator; later rounds must not add to it.
    assert!(
        rss[3] < rss[0] + 16 * 1024,
        "RSS grew from {} to {} KiB over 3 more rounds",
        rss[0],
        rss[3]
    );
    site.finish();
}

#[test]
fn a_ping_flood_from_a_well_behaved_peer_leaves_others_served() {
    // A peer that keeps every rule (credits returned, answers read) but pings as fast as
    // it can: the server answers what it can, and its other clients are served between.
    let mut site = Site::new();
    let server = site.server.nid;
    let flooder = loopback_endpoint(3);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinging = {
        let (flooder, stop) = (flooder.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut pongs = 0u64;
            // At least one batch, however soon the client is done.
            loop {
                let ops: Vec<_> = (0..256)
                    .map(|_| {
                        let req = lanet::op::PingRequest {
                            dst: server,
                            lane: Lane::Health,
                            timeout: None,
                            on_peer_down: Default::default(),
                        };
                        flooder.ping(req).unwrap()
                    })
                    .collect();
                let done = wait_all(&flooder, &ops);
                pongs += done.values().filter(|c| c.result.is_ok()).count() as u64;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break pongs;
                }
            }
        })
    };
    for i in 0..50 {
        site.still_serves(&format!("exchange {i} during the ping flood"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let pongs = pinging.join().unwrap();
    eprintln!("ping flood: {pongs} PONGs while the client made 50 exchanges");
    assert!(pongs >= 256, "the flood ran ({pongs} PONGs)");
    site.finish();
}
