//! The receive low-water mark (`SO_RCVLOWAT`) a TCP LND raises while a large frame arrives,
//! seen from outside on real sockets, with whichever backend `LANET_TCP_BACKEND` picks: it
//! is raised, never above what the peer has still to send (higher, the connection would
//! stall), and back at 1 once the frame is in. A test binary of its own, so that only this
//! test's sockets are in the process.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use lanet::handshake::LocalHello;
use lanet::op::MatchEntry;
use lanet::wire::{encode_header, Body, Header, HEADER_LEN};
use lanet::{Endpoint, Event, Lane, Nid, NodeConfig};
use lanet_lnd_tcp::{TcpConfig, TcpLnd};

const WAIT: Duration = Duration::from_secs(20);
const PAYLOAD: usize = 1 << 20;

/// The receive low-water mark of every socket of this process, each with the bytes queued
/// unread on it, read first: the LND reading meanwhile only lowers both, so a mark is never
/// paired with fewer queued bytes than it was set against.
fn marks() -> Vec<(RawFd, usize, usize)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|to| to.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one `c_int` into `queued`, a live one.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } != 0 {
            continue; // a listener, or not TCP
        }
        if let Ok(mark) = lanet_lnd_tcp::receive_low_water(fd) {
            found.push((fd, mark, queued as usize));
        }
    }
    found
}

/// Waits until `ok` holds for the marks of this process's sockets.
fn marks_until(
    what: &str,
    ok: impl Fn(&[(RawFd, usize, usize)]) -> bool,
) -> Vec<(RawFd, usize, usize)> {
    let until = Instant::now() + WAIT;
    loop {
        let now = marks();
        if ok(&now) {
            return now;
        }
        assert!(Instant::now() < until, "{what}: marks {now:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_large_frame_raises_the_mark_to_no_more_than_is_still_to_come_and_then_lowers_it() {
    if !lanet_lnd_tcp::raises_receive_low_water() {
        eprintln!("this kernel gets no raised marks (before Linux 5.11): nothing to check");
        return;
    }
    let cfg = NodeConfig::new(1);
    let server = lanet_lnd_tcp::free_loopback_nid().unwrap();
    let lnd = TcpLnd::bind(server, TcpConfig::for_node(&cfg)).unwrap();
    let ep = Endpoint::builder(cfg).lnd(lnd).start().unwrap();
    ep.attach(MatchEntry::sink(4, 1, PAYLOAD as u32)).unwrap();

    // A raw peer: HELLO, then the header and the start of a 1 MiB PUT.
    let addr = SocketAddr::V4(server.socket_addr(0).unwrap());
    let mut peer = TcpStream::connect(addr).unwrap();
    peer.set_nodelay(true).unwrap();
    let port = peer.local_addr().unwrap().port();
    let me: Nid = format!("127.0.0.1:{port}@tcp").parse().unwrap();
    let hello = LocalHello {
        nid: me,
        incarnation: 99,
        lane: Lane::Data,
        credits: 8,
        max_payload: PAYLOAD as u32,
    };
    peer.write_all(&hello.encode(server)).unwrap();
    let mut answer = [0u8; HEADER_LEN];
    peer.set_read_timeout(Some(WAIT)).unwrap();
    peer.read_exact(&mut answer).expect("the LND's HELLO");
    let put = Header {
        lane: Lane::Data,
        hop_limit: 8,
        credits: 0,
        src: me,
        dst: server,
        src_incarnation: 99,
        msg_id: 1,
        payload_len: PAYLOAD as u32,
        body: Body::Put {
            portal: 4,
            match_bits: 1,
            settled_below: 0,
            ack: true,
        },
        router_gen: 0,
        attempt: 0,
    };
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    let sent_first = 100_000;
    peer.write_all(&encode_header(&put)).unwrap();
    peer.write_all(&payload[..sent_first]).unwrap();

    let to_come = PAYLOAD - sent_first;
    let within =
        |m: &[(RawFd, usize, usize)]| m.iter().all(|&(_, mark, queued)| mark <= queued + to_come);
    // A receive that takes fewer bytes than its mark asked for leaves the mark above the
    // rest until the LND sets it again, before its next receive: a moment, not a stall.
    // Once raised, the mark must settle within the rest, and stay there.
    marks_until("a mark raised for the rest", |m| {
        m.iter().any(|&(_, mark, _)| mark > 1)
    });
    marks_until(
        "a raised mark within the bytes queued and still to come (above, it would stall)",
        |m| within(m) && m.iter().any(|&(_, mark, _)| mark > 1),
    );
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(2));
        let now = marks();
        assert!(
            within(&now),
            "a mark above the bytes queued and {to_come} still to come, which would stall: \
             {now:?}"
        );
    }

    peer.write_all(&payload[sent_first..]).unwrap();
    match ep.recv_event(Some(WAIT)) {
        Some(Event::Delivered(d)) => assert!(d.payload[..] == payload[..], "delivered intact"),
        other => panic!("expected the PUT, got {other:?}"),
    }
    marks_until("every mark back at 1 once the frame is in", |m| {
        m.iter().all(|&(_, mark, _)| mark == 1)
    });
    ep.shutdown();
}
