//! Fuzz targets: what a hostile peer or a careless administrator can hand lanet, each
//! checked for more than "no panic" (decoded input encodes back to what decodes the same).
//! The `fuzz/` crate runs them under libFuzzer (`cargo fuzz run NAME`); `cargo test`
//! replays their corpora and every input that once failed (`fuzz/regressions/`), so CI
//! covers them. Built with the `fuzz` feature, and for this crate's tests.

mod node;

use crate::config::ConfigFile;
use crate::handshake::auth::{HelloAuth, Proof};
use crate::handshake::{check_hello, decode_compact, CompactHello, LocalHello};
use crate::lane::Lane;
use crate::nid::{Nid, NID_WIRE_LEN};
use crate::wire::{self, HeaderCheck, Limits, RouterStatus, HEADER_LEN};

pub use node::node;

/// A fuzz target: takes any bytes; panics on a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name `cargo fuzz` and the corpus folders know it.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("hello", hello),
    ("hello_compact", hello_compact),
    ("router_status", router_status),
    ("config", config),
    ("nid", nid),
    ("node", node),
];

/// Where the header checksum sits: a target that wants the decoder's later checks
/// reached sets it right, as a peer that means harm would.
const CRC_OFFSET: usize = 92;

/// `data` with a valid magic, version and checksum in its first [`HEADER_LEN`] bytes (if
/// it has that many), so that the fuzzer spends its time on the fields behind them.
pub(crate) fn with_valid_envelope(data: &[u8]) -> Vec<u8> {
    let mut b = data.to_vec();
    if b.len() >= HEADER_LEN {
        b[..4].copy_from_slice(&wire::MAGIC.to_le_bytes());
        b[4] = wire::VERSION;
        let crc = crc32fast::hash(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

/// `data` with a valid magic and version, flagged as having no checksum and with none, as
/// over a link that protects headers.
fn with_unchecked_envelope(data: &[u8]) -> Vec<u8> {
    let mut b = with_valid_envelope(data);
    if b.len() >= HEADER_LEN {
        b[10] = wire::FLAG_LINK_CHECKED;
        b[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    }
    b
}

/// The frame decoder, on raw bytes (first byte's bit 0 clear) or on bytes given a valid
/// envelope, as a link that does not protect headers decodes them or (bit 1) one that
/// does (whose envelope then has no checksum). A frame that decodes encodes back to the
/// same header.
pub fn frame(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let link = match mode & 2 {
        0 => HeaderCheck::Crc32,
        _ => HeaderCheck::Link,
    };
    let bytes = match (mode & 1, link) {
        (0, _) => rest.to_vec(),
        (_, HeaderCheck::Crc32) => with_valid_envelope(rest),
        (_, HeaderCheck::Link) => with_unchecked_envelope(rest),
    };
    let Ok(f) = wire::decode(&bytes, &Limits::new(1 << 16, link)) else {
        return;
    };
    assert!(f.wire_len() <= bytes.len());
    assert_eq!(f.payload.len(), f.header.payload_len as usize);
    // Without a checksum only where the link protects headers.
    let check = match bytes[10] {
        0 => HeaderCheck::Crc32,
        _ => {
            assert_eq!(link, HeaderCheck::Link, "an unchecked header over TCP");
            HeaderCheck::Link
        }
    };
    let again = wire::encode_header_with(&f.header, check);
    assert_eq!(
        &again[..],
        &bytes[..HEADER_LEN],
        "one encoding per header: nothing the decoder ignores"
    );
}

/// A TCP HELLO as the accepting and the dialling side check it, and the authentication
/// a HELLO or AUTH frame carries as its payload.
pub fn hello(data: &[u8]) {
    if let Ok(a) = HelloAuth::decode(data) {
        assert_eq!(a.encode(), data, "one encoding per HELLO authentication");
    }
    if let Ok(p) = Proof::decode(data) {
        assert_eq!(p.encode(), data, "one encoding per proof");
    }
    let bytes = with_valid_envelope(data);
    let Ok(h) = wire::decode_header(&bytes, &Limits::default()) else {
        return;
    };
    for lane in [Lane::Data, Lane::Health] {
        let local = LocalHello {
            nid: h.dst,
            incarnation: 1,
            lane,
            credits: 8,
            max_payload: 1 << 20,
        };
        for expected in [None, Some(h.src)] {
            if let Ok(peer) = check_hello(&local, expected, &h) {
                assert_eq!((peer.nid, peer.lane), (h.src, lane));
                assert!(peer.credits > 0, "a HELLO offering no credits is refused");
                assert_eq!(peer.nid.net(), local.nid.net());
            }
        }
    }
}

/// The compact HELLO of RDMA connection requests (private data), with the
/// authentication it may carry.
pub fn hello_compact(data: &[u8]) {
    let receiver = Nid::mem(1, 0);
    let Ok(CompactHello {
        header: h,
        auth,
        rx_msg_kib,
        takes_unchecked_headers,
    }) = decode_compact(data, receiver)
    else {
        return;
    };
    let wire::Body::Hello {
        credits,
        max_payload,
        status,
    } = h.body
    else {
        panic!("a compact HELLO decodes to a HELLO, not {:?}", h.body);
    };
    let local = LocalHello {
        nid: h.src,
        incarnation: h.src_incarnation,
        lane: h.lane,
        credits,
        max_payload,
    };
    let mut again = match auth {
        // A dialler's nonce stands where the destination would; it is the receiver.
        Some(a) if data[7] & 3 == 1 => {
            assert_eq!(
                (h.dst, a.proof, status),
                (receiver, None, wire::HelloStatus::Ok)
            );
            local.encode_compact_dial(receiver, Some(a.nonce)).to_vec()
        }
        a => local.encode_compact_answer(h.dst, status, a.as_ref()),
    };
    crate::handshake::set_compact_rx_msg_kib(&mut again, rx_msg_kib);
    if takes_unchecked_headers {
        crate::handshake::set_compact_takes_unchecked_headers(&mut again);
    }
    assert_eq!(
        decode_compact(&again, receiver),
        Ok(CompactHello {
            header: h,
            auth,
            rx_msg_kib,
            takes_unchecked_headers,
        })
    );
    assert_eq!(
        &again[..],
        &data[..again.len()],
        "one encoding per compact HELLO: nothing the decoder ignores"
    );
}

/// The router status document carried in PONGs and STATUS frames.
pub fn router_status(data: &[u8]) {
    let Ok(s) = RouterStatus::decode(data) else {
        return;
    };
    let again = s.encode();
    assert_eq!(RouterStatus::decode(&again), Ok(s));
}

/// The configuration file parser: a file it takes, written back out, reads the same.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = ConfigFile::parse("fuzz.toml", text) else {
        return;
    };
    let written = file.to_toml();
    match ConfigFile::parse("written.toml", &written) {
        Ok(mut again) => {
            // Not in the file: where it was read from, and the start's incarnation.
            again.path = file.path.clone();
            again.node.incarnation = file.node.incarnation;
            assert_eq!(again, file, "written back as:\n{written}");
        }
        Err(e) => panic!("a file it took, written back, is refused: {e}\n{written}"),
    }
}

/// NIDs as text (`ADDR@NET`) and on the wire (16 bytes).
pub fn nid(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = text.parse::<Nid>() {
            assert_eq!(n.to_string().parse::<Nid>(), Ok(n));
        }
    }
    if let Some(raw) = data.get(..NID_WIRE_LEN) {
        let raw: &[u8; NID_WIRE_LEN] = raw.try_into().expect("16 bytes");
        if let Some(n) = Nid::decode(raw) {
            let mut again = [0u8; NID_WIRE_LEN];
            n.encode(&mut again);
            assert_eq!(&again, raw, "one encoding per NID");
            assert_eq!(n.to_string().parse::<Nid>(), Ok(n), "{n}");
        }
    }
}

#[cfg(test)]
mod replay_tests;
