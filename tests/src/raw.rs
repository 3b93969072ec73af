//! A raw TCP socket speaking as much of lanet's protocol as a test likes: for hostile
//! peers and impostors (`tests/hostile_tcp.rs`, `tests/auth.rs`).

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use lanet::handshake::LocalHello;
use lanet::wire::{encode_header, Body, Header, HEADER_LEN};
use lanet::{Lane, Nid};

/// How long the server may take to close on a hostile peer: its handshake timeout (5 s)
/// with room for a loaded machine. A guard against a hang, not a measurement.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(30);

/// A connection to `to` from loopback address `from` (127/8 is all ours).
pub fn dial(to: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// Whether the server closes `s` (end of stream, or a reset) within [`CLOSE_WITHIN`];
/// whatever it sends first (its HELLO, answers) is read and dropped.
pub fn closed_by_server(s: &mut TcpStream) -> bool {
    let deadline = Instant::now() + CLOSE_WITHIN;
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) => panic!("reading from the server: {e}"),
        }
    }
}

/// Whether the server has closed `s` already (end of stream or reset), without waiting.
pub fn closed_now(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let closed = match (&*s).read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Reads frames from `s` until a PONG for `seq` (true), or the server closes it or is
/// silent for [`CLOSE_WITHIN`] (false).
pub fn answered_with_pong(s: &mut TcpStream, seq: u64) -> bool {
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let limits = lanet::wire::Limits::new(1 << 20, lanet::wire::HeaderCheck::Crc32);
    loop {
        let mut h = [0u8; HEADER_LEN];
        if s.read_exact(&mut h).is_err() {
            return false;
        }
        let header = lanet::wire::decode_header(&h, &limits).expect("the server's frame");
        let mut payload = vec![0u8; header.payload_len as usize];
        if s.read_exact(&mut payload).is_err() {
            return false;
        }
        if header.body == (Body::Pong { seq }) {
            return true;
        }
    }
}

/// Reads the server's answering HELLO on `s`: the credits it offers.
pub fn read_hello(s: &mut TcpStream) -> u16 {
    let mut h = [0u8; HEADER_LEN];
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    s.read_exact(&mut h).expect("the server's HELLO");
    let header = lanet::wire::decode_header(&h, &Default::default()).expect("a HELLO");
    match header.body {
        Body::Hello { credits, .. } => credits,
        other => panic!("expected a HELLO, got {other:?}"),
    }
}

/// A HELLO from `me` to `server` on `lane`, offering `credits`.
pub fn hello(me: Nid, server: Nid, lane: Lane, credits: u16) -> [u8; HEADER_LEN] {
    LocalHello {
        nid: me,
        incarnation: 99,
        lane,
        credits,
        max_payload: 1 << 20,
    }
    .encode(server)
}

/// A frame header from `me` to `server`.
pub fn frame(me: Nid, server: Nid, lane: Lane, body: Body, msg_id: u64, credits: u16) -> Vec<u8> {
    let payload_len = match body {
        Body::Put { .. } => 16,
        _ => 0,
    };
    let h = Header {
        lane,
        hop_limit: 8,
        credits,
        src: me,
        dst: server,
        src_incarnation: 99,
        msg_id,
        payload_len,
        body,
        router_gen: 0,
        attempt: 0,
    };
    let mut b = encode_header(&h).to_vec();
    b.resize(HEADER_LEN + payload_len as usize, 0);
    b
}

pub fn nid_at(ip: Ipv4Addr) -> Nid {
    format!("{ip}:7@tcp").parse().unwrap()
}
