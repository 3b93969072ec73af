//! `lanet-tests`: cross-crate integration tests with real sockets and real processes (and,
//! in later issues, network namespaces and the soft-RoCE VM harness).
//!
//! Single-process, deterministic topologies on the in-memory LND live in the core
//! (`lanet::sim`); this crate is for tests that need the operating system. Its binary
//! `lanet-tcp-peer` is a peer process the tests start, talk to and kill.

use bytes::Bytes;

/// Portal where the peer accepts PUTs (of up to [`MAX_TRANSFER`] bytes, match bits 1).
pub const SINK_PORTAL: u32 = 4;
/// Portal where the peer serves GETs: match bits `i` answer [`pattern`]`(SIZES[i], i)`.
pub const SOURCE_PORTAL: u32 = 5;
/// Largest transfer the tests make.
pub const MAX_TRANSFER: usize = 16 << 20;
/// Transfer sizes from 0 B to 16 MiB, around the header size and the read chunk.
pub const SIZES: [usize; 9] = [0, 1, 95, 96, 97, 65_537, 1 << 20, 4 << 20, MAX_TRANSFER];

/// Deterministic test data: both processes compute the same bytes.
pub fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .rotate_left((i >> 12) as u32 & 7)
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A NID on a loopback port that was free a moment ago.
pub fn free_tcp_nid() -> lanet::Nid {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    format!("127.0.0.1:{port}@tcp")
        .parse()
        .expect("a valid NID")
}
