//! The HELLO handshake every connection starts with, shared by all LNDs.
//!
//! Each side sends a HELLO (its NID, incarnation, the lane, the receive credits it offers and
//! its largest payload) and checks the one it receives: right version (the codec checks),
//! addressed to us, from the peer we expected, for the same lane, offering at least one credit.
//! Where nodes hold keys, the HELLOs also carry an HMAC challenge and response ([`auth`]).

pub mod auth;

use auth::{HelloAuth, Nonce};

use crate::lane::Lane;
use crate::nid::Nid;
use crate::wire::{self, Body, FrameType, Header, HeaderCheck, HelloStatus, HEADER_LEN};

/// What this side says in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHello {
    pub nid: Nid,
    pub incarnation: u64,
    pub lane: Lane,
    pub credits: u16,
    pub max_payload: u32,
}

impl LocalHello {
    pub fn header(&self, peer: Nid) -> Header {
        self.header_with(peer, HelloStatus::Ok)
    }

    /// A HELLO answering a dialler: `Ok`, or the reason its connection is refused.
    pub fn header_with(&self, peer: Nid, status: HelloStatus) -> Header {
        Header {
            lane: self.lane,
            hop_limit: 0,
            credits: 0,
            src: self.nid,
            dst: peer,
            src_incarnation: self.incarnation,
            msg_id: 0,
            payload_len: 0,
            body: Body::Hello {
                credits: self.credits,
                max_payload: self.max_payload,
                status,
            },
            router_gen: 0,
            attempt: 0,
        }
    }

    pub fn encode(&self, peer: Nid) -> [u8; HEADER_LEN] {
        wire::encode_header(&self.header(peer))
    }

    /// A HELLO frame for byte-stream transports: the header, and the authentication (if
    /// any) as its payload.
    pub fn frame(
        &self,
        peer: Nid,
        status: HelloStatus,
        auth: Option<&HelloAuth>,
    ) -> ([u8; HEADER_LEN], Vec<u8>) {
        let payload = auth.map_or(Vec::new(), HelloAuth::encode);
        let mut h = self.header_with(peer, status);
        h.payload_len = payload.len() as u32;
        (wire::encode_header(&h), payload)
    }

    /// The dialler's AUTH frame: its proof, sent right after the acceptor's HELLO.
    pub fn auth_frame(&self, peer: Nid, proof: &auth::Proof) -> ([u8; HEADER_LEN], Vec<u8>) {
        let payload = proof.encode();
        let mut h = self.header(peer);
        h.body = Body::Auth;
        h.payload_len = payload.len() as u32;
        (wire::encode_header(&h), payload)
    }
}

/// The authentication a HELLO frame carries as its payload, if any.
pub fn hello_auth(payload: &[u8]) -> Result<Option<HelloAuth>, auth::Malformed> {
    match payload.is_empty() {
        true => Ok(None),
        false => HelloAuth::decode(payload).map(Some),
    }
}

/// Bytes of a [compact HELLO](LocalHello::encode_compact): what fits in rdma_cm's
/// connect-request private data (56 bytes on RC).
pub const COMPACT_HELLO_LEN: usize = 56;
/// Bytes of the longest compact HELLO, an acceptor's with its authentication (rdma_cm's
/// accept takes 196 bytes of private data on RC).
pub const COMPACT_HELLO_MAX_LEN: usize = COMPACT_HELLO_LEN + HelloAuth::MAX_LEN;
const COMPACT_MAGIC: u32 = u32::from_le_bytes(*b"LNTH");
/// Flag (byte 7): the dialler's nonce stands where the destination NID would. The
/// connect request has no room for both; the dialler's AUTH proves which node it meant.
const FLAG_DIALLER_NONCE: u8 = 1;
/// Flag (byte 7): a [`HelloAuth`] follows the 56 bytes (the acceptor's answer).
const FLAG_AUTH_FOLLOWS: u8 = 2;
/// Flag (byte 7, beside either of the above): its sender takes headers without a checksum
/// on this connection ([`HeaderCheck::Link`]), its link protecting them. An acceptor says
/// it only to a dialler that said it: nodes before the flag refuse a HELLO with it.
const FLAG_TAKES_UNCHECKED: u8 = 4;
/// Bytes 10..12: the largest message its sender receives in one piece, in KiB.
const RX_MSG_KIB: std::ops::Range<usize> = 10..12;

/// Says, in an encoded compact HELLO, that its sender receives messages of up to `kib`
/// KiB in one piece (an RDMA driver's receive buffers). 0, what nodes that do not say
/// send, means the transport's default.
pub fn set_compact_rx_msg_kib(hello: &mut [u8], kib: u16) {
    if let Some(b) = hello.get_mut(RX_MSG_KIB) {
        b.copy_from_slice(&kib.to_le_bytes());
    }
}

/// Says, in an encoded compact HELLO, that its sender takes headers without a checksum
/// (see [`CompactHello::takes_unchecked_headers`]).
pub fn set_compact_takes_unchecked_headers(hello: &mut [u8]) {
    if let Some(flags) = hello.get_mut(7) {
        *flags |= FLAG_TAKES_UNCHECKED;
    }
}

impl LocalHello {
    /// The HELLO in 56 bytes, for transports that carry it in a connection request's
    /// private data: magic, version, status, lane, flags, credits, largest message
    /// received in one piece (0 here; see [`set_compact_rx_msg_kib`]), largest payload,
    /// incarnation, source and destination NIDs. No CRC: the transport protects the
    /// request.
    pub fn encode_compact(&self, peer: Nid, status: HelloStatus) -> [u8; COMPACT_HELLO_LEN] {
        let mut b = [0u8; COMPACT_HELLO_LEN];
        b[0..4].copy_from_slice(&COMPACT_MAGIC.to_le_bytes());
        b[4] = wire::VERSION;
        b[5] = status as u8;
        b[6] = self.lane as u8;
        b[8..10].copy_from_slice(&self.credits.to_le_bytes());
        b[12..16].copy_from_slice(&self.max_payload.to_le_bytes());
        b[16..24].copy_from_slice(&self.incarnation.to_le_bytes());
        let mut nid = [0u8; crate::nid::NID_WIRE_LEN];
        self.nid.encode(&mut nid);
        b[24..40].copy_from_slice(&nid);
        peer.encode(&mut nid);
        b[40..56].copy_from_slice(&nid);
        b
    }

    /// A dialler's compact HELLO; with `nonce` (the dialler has keys) the nonce replaces
    /// the destination NID.
    pub fn encode_compact_dial(&self, peer: Nid, nonce: Option<Nonce>) -> [u8; 56] {
        let mut b = self.encode_compact(peer, HelloStatus::Ok);
        if let Some(nonce) = nonce {
            b[7] = FLAG_DIALLER_NONCE;
            b[40..56].copy_from_slice(&nonce);
        }
        b
    }

    /// An acceptor's compact HELLO, with its authentication after it if it has any.
    pub fn encode_compact_answer(
        &self,
        peer: Nid,
        status: HelloStatus,
        auth: Option<&HelloAuth>,
    ) -> Vec<u8> {
        let mut b = self.encode_compact(peer, status).to_vec();
        if let Some(auth) = auth {
            b[7] = FLAG_AUTH_FOLLOWS;
            b.extend(auth.encode());
        }
        b
    }
}

/// Why bytes are not a compact HELLO.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactHelloError {
    #[error("not a lanet HELLO ({0})")]
    Malformed(&'static str),
    #[error("the peer speaks protocol version {0}; this node speaks version {v} only", v = wire::VERSION)]
    Version(u8),
}

/// A compact HELLO, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactHello {
    /// What [`check_hello`] checks.
    pub header: Header,
    /// The dialler's nonce, or the acceptor's nonce and proof.
    pub auth: Option<HelloAuth>,
    /// The largest message its sender receives in one piece, in KiB; 0: not said (the
    /// transport's default).
    pub rx_msg_kib: u16,
    /// Its sender takes headers without a checksum on this connection: its link protects
    /// them (see [`set_compact_takes_unchecked_headers`]).
    pub takes_unchecked_headers: bool,
}

/// Decodes a [compact HELLO](LocalHello::encode_compact) received by `local`. Extra
/// trailing bytes (transports pad private data) are ignored. A dialler's HELLO that
/// carries a nonce names no destination: it is taken to be `local`, and the dialler's
/// AUTH proves it.
pub fn decode_compact(b: &[u8], local: Nid) -> Result<CompactHello, CompactHelloError> {
    let b_all = b;
    let b: &[u8; COMPACT_HELLO_LEN] = b
        .get(..COMPACT_HELLO_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(CompactHelloError::Malformed("too short"))?;
    if b[0..4] != COMPACT_MAGIC.to_le_bytes() {
        return Err(CompactHelloError::Malformed("bad magic"));
    }
    if b[4] != wire::VERSION {
        return Err(CompactHelloError::Version(b[4]));
    }
    let status = match b[5] {
        0 => HelloStatus::Ok,
        1 => HelloStatus::Race,
        2 => HelloStatus::KeyRequired,
        _ => return Err(CompactHelloError::Malformed("unknown status")),
    };
    let lane = Lane::from_wire(b[6]).ok_or(CompactHelloError::Malformed("unknown lane"))?;
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let nid_at = |o: usize, which| {
        let raw: &[u8; crate::nid::NID_WIRE_LEN] = b[o..o + 16].try_into().expect("16 bytes");
        Nid::decode(raw).ok_or(CompactHelloError::Malformed(which))
    };
    let takes_unchecked_headers = b[7] & FLAG_TAKES_UNCHECKED != 0;
    let (dst, auth) = match b[7] & !FLAG_TAKES_UNCHECKED {
        0 => (nid_at(40, "bad destination NID")?, None),
        FLAG_DIALLER_NONCE if status == HelloStatus::Ok => {
            let nonce: Nonce = b[40..56].try_into().expect("16 bytes");
            (local, Some(HelloAuth { nonce, proof: None }))
        }
        FLAG_AUTH_FOLLOWS => {
            let (auth, _) = HelloAuth::decode_prefix(&b_all[COMPACT_HELLO_LEN..])
                .map_err(|m| CompactHelloError::Malformed(m.0))?;
            (nid_at(40, "bad destination NID")?, Some(auth))
        }
        _ => return Err(CompactHelloError::Malformed("unknown flags")),
    };
    let header = Header {
        lane,
        hop_limit: 0,
        credits: 0,
        src: nid_at(24, "bad source NID")?,
        dst,
        src_incarnation: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        msg_id: 0,
        payload_len: 0,
        body: Body::Hello {
            credits: u16::from_le_bytes([b[8], b[9]]),
            max_payload: u32_at(12),
            status,
        },
        router_gen: 0,
        attempt: 0,
    };
    Ok(CompactHello {
        header,
        auth,
        rx_msg_kib: u16::from_le_bytes([b[10], b[11]]),
        takes_unchecked_headers,
    })
}

/// What a node says about itself in the HELLO of every connection it makes or accepts
/// (the drivers keep one and make each lane's HELLO from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub nid: Nid,
    pub incarnation: u64,
    /// Receive credits offered per lane.
    pub credits: crate::lane::PerLane<u16>,
    pub max_payload: u32,
}

impl Identity {
    /// The HELLO for a connection of `lane`.
    pub fn hello(&self, lane: Lane) -> LocalHello {
        LocalHello {
            nid: self.nid,
            incarnation: self.incarnation,
            lane,
            credits: self.credits[lane],
            max_payload: self.max_payload,
        }
    }
}

/// What the peer said in its HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHello {
    pub nid: Nid,
    pub incarnation: u64,
    pub lane: Lane,
    pub credits: u16,
    pub max_payload: u32,
    /// How the headers sent to the peer on this connection are protected: the driver
    /// says [`HeaderCheck::Link`] where both ends' link protects them and the peer said
    /// it takes them so; [`check_hello`] gives `Crc32`.
    pub header_check: HeaderCheck,
}

impl From<&LocalHello> for PeerHello {
    /// What the peer hears of our HELLO (the authentication transcript takes both alike).
    fn from(h: &LocalHello) -> PeerHello {
        PeerHello {
            nid: h.nid,
            incarnation: h.incarnation,
            lane: h.lane,
            credits: h.credits,
            max_payload: h.max_payload,
            header_check: HeaderCheck::Crc32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("expected HELLO, got {0:?}")]
    NotHello(FrameType),
    #[error("HELLO addressed to {got}, but this node is {expected}")]
    WrongDestination { expected: Nid, got: Nid },
    #[error("HELLO from {0}, which is this node itself")]
    FromSelf(Nid),
    #[error("HELLO from {got}, but we connected to {expected}")]
    UnexpectedPeer { expected: Nid, got: Nid },
    #[error("HELLO from {peer} is on net {got}, not ours ({expected})")]
    WrongNet {
        peer: Nid,
        expected: crate::nid::Net,
        got: crate::nid::Net,
    },
    #[error("HELLO for the {got} lane on a {expected} lane connection")]
    LaneMismatch { expected: Lane, got: Lane },
    #[error("HELLO offers no receive credits")]
    NoCredits,
    #[error("HELLO returns credits before any were spent")]
    CreditsInHello,
    #[error("connection race: the peer keeps the connection dialled by the lower NID")]
    LostRace,
    #[error("{peer} accepts only peers that prove a key (accept = secure), and this node has none: set [auth] key_file")]
    KeyRequired { peer: Nid },
}

/// Checks a received HELLO header against what this side expects. `expected_peer` is the
/// NID we connected to (None when accepting).
pub fn check_hello(
    local: &LocalHello,
    expected_peer: Option<Nid>,
    h: &Header,
) -> Result<PeerHello, HandshakeError> {
    let Body::Hello {
        credits,
        max_payload,
        status,
    } = h.body
    else {
        return Err(HandshakeError::NotHello(h.frame_type()));
    };
    match status {
        HelloStatus::Ok => {}
        HelloStatus::Race => return Err(HandshakeError::LostRace),
        HelloStatus::KeyRequired => return Err(HandshakeError::KeyRequired { peer: h.src }),
    }
    if h.dst != local.nid {
        return Err(HandshakeError::WrongDestination {
            expected: local.nid,
            got: h.dst,
        });
    }
    // Nobody connects to itself: a peer in our name would be a hop of our own NID, its
    // frames taken for ours.
    if h.src == local.nid {
        return Err(HandshakeError::FromSelf(h.src));
    }
    if let Some(expected) = expected_peer {
        if h.src != expected {
            return Err(HandshakeError::UnexpectedPeer {
                expected,
                got: h.src,
            });
        }
    }
    if !h.src.same_net(&local.nid) {
        return Err(HandshakeError::WrongNet {
            peer: h.src,
            expected: local.nid.net(),
            got: h.src.net(),
        });
    }
    if h.lane != local.lane {
        return Err(HandshakeError::LaneMismatch {
            expected: local.lane,
            got: h.lane,
        });
    }
    if credits == 0 {
        return Err(HandshakeError::NoCredits);
    }
    if h.credits != 0 {
        return Err(HandshakeError::CreditsInHello);
    }
    Ok(PeerHello {
        nid: h.src,
        incarnation: h.src_incarnation,
        lane: h.lane,
        credits,
        max_payload,
        header_check: HeaderCheck::Crc32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_header, Limits};

    fn hello(nid: u32, lane: Lane) -> LocalHello {
        LocalHello {
            nid: Nid::mem(nid, 0),
            incarnation: 7,
            lane,
            credits: 8,
            max_payload: 4096,
        }
    }

    /// The flag that the sender takes headers without a checksum goes beside the others
    /// (a dialler's nonce, an acceptor's authentication) and changes nothing else.
    #[test]
    fn compact_hellos_say_whether_their_sender_takes_unchecked_headers() {
        let (a, b) = (hello(1, Lane::Data), hello(2, Lane::Data));
        let plain = a.encode_compact(b.nid, HelloStatus::Ok);
        assert!(
            !decode_compact(&plain, b.nid)
                .unwrap()
                .takes_unchecked_headers
        );
        let nonce = [9; 16];
        let auth = HelloAuth { nonce, proof: None };
        let answer = a.encode_compact_answer(b.nid, HelloStatus::Ok, Some(&auth));
        for mut bytes in [
            plain.to_vec(),
            a.encode_compact_dial(b.nid, Some(nonce)).to_vec(),
            answer,
        ] {
            let before = decode_compact(&bytes, b.nid).unwrap();
            set_compact_takes_unchecked_headers(&mut bytes);
            let after = decode_compact(&bytes, b.nid).unwrap();
            assert!(after.takes_unchecked_headers);
            assert_eq!((after.header, after.auth), (before.header, before.auth));
        }
        // Flags this node does not know are still refused.
        let mut unknown = plain;
        unknown[7] = 8;
        assert!(decode_compact(&unknown, b.nid).is_err());
    }

    /// A HELLO in this node's own name (an impostor, or a connection looped back) is
    /// refused, by a dialler or an acceptor.
    #[test]
    fn a_hello_from_this_nodes_own_nid_is_refused() {
        let b = hello(2, Lane::Data);
        let own = b.header(b.nid);
        assert_eq!(
            check_hello(&b, None, &own),
            Err(HandshakeError::FromSelf(b.nid))
        );
        assert!(check_hello(&b, Some(b.nid), &own).is_err());
        assert!(check_hello(&b, None, &hello(1, Lane::Data).header(b.nid)).is_ok());
    }

    #[test]
    fn compact_hellos_round_trip_and_reject_garbage() {
        let (a, b) = (hello(1, Lane::Health), hello(2, Lane::Health));
        let bytes = a.encode_compact(b.nid, HelloStatus::Ok);
        let h = decode_compact(&bytes, b.nid).unwrap().header;
        assert_eq!(h, a.header(b.nid));
        assert_eq!(check_hello(&b, Some(a.nid), &h).unwrap().credits, 8);
        let race = decode_compact(&a.encode_compact(b.nid, HelloStatus::Race), b.nid)
            .unwrap()
            .header;
        assert_eq!(check_hello(&b, None, &race), Err(HandshakeError::LostRace));
        // Padding after the HELLO is ignored; anything short or altered is not a HELLO.
        let mut padded = bytes.to_vec();
        padded.extend([0; 8]);
        assert_eq!(decode_compact(&padded, b.nid).map(|c| c.header), Ok(h));
        assert!(decode_compact(&bytes[..55], b.nid).is_err());
        let mut v1 = bytes;
        v1[4] = 1;
        let said = decode_compact(&v1, b.nid).unwrap_err().to_string();
        assert!(
            said.contains("version 1")
                && said.contains(&format!("version {}", crate::wire::VERSION)),
            "{said}"
        );
        // The receive-message size: 0 unless said, and read back as said.
        assert_eq!(decode_compact(&bytes, b.nid).unwrap().rx_msg_kib, 0);
        let mut sized = bytes;
        set_compact_rx_msg_kib(&mut sized, 16);
        let got = decode_compact(&sized, b.nid).unwrap();
        assert_eq!((got.rx_msg_kib, got.header), (16, h));
        for (at, v) in [(0, 0), (4, 9), (5, 7), (6, 9), (7, 8), (7, 3), (24, 99)] {
            let mut bad = bytes;
            bad[at] = v;
            assert!(
                decode_compact(&bad, b.nid).is_err(),
                "byte {at} = {v} accepted"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn compact_hello_decoding_never_panics(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let _ = decode_compact(&b, Nid::mem(1, 0));
        }
    }

    #[test]
    fn accepts_a_good_hello_through_the_codec() {
        let (a, b) = (hello(1, Lane::Data), hello(2, Lane::Data));
        let h = decode_header(&a.encode(b.nid), &Limits::default()).unwrap();
        let got = check_hello(&b, Some(a.nid), &h).unwrap();
        assert_eq!(
            got,
            PeerHello {
                nid: a.nid,
                incarnation: 7,
                lane: Lane::Data,
                credits: 8,
                max_payload: 4096,
                header_check: HeaderCheck::Crc32,
            }
        );
        assert_eq!(check_hello(&b, None, &h), Ok(got));
    }

    #[test]
    fn rejects_each_mismatch() {
        let (a, b) = (hello(1, Lane::Data), hello(2, Lane::Data));
        let c = hello(3, Lane::Data);
        assert!(matches!(
            check_hello(&c, None, &a.header(b.nid)),
            Err(HandshakeError::WrongDestination { .. })
        ));
        assert!(matches!(
            check_hello(&b, Some(c.nid), &a.header(b.nid)),
            Err(HandshakeError::UnexpectedPeer { .. })
        ));
        assert!(matches!(
            check_hello(&hello(2, Lane::Health), None, &a.header(b.nid)),
            Err(HandshakeError::LaneMismatch { .. })
        ));
        let mut other_net = a;
        other_net.nid = Nid::mem(1, 5);
        assert!(matches!(
            check_hello(&b, None, &other_net.header(b.nid)),
            Err(HandshakeError::WrongNet { .. })
        ));
        let mut broke = a;
        broke.credits = 0;
        assert_eq!(
            check_hello(&b, None, &broke.header(b.nid)),
            Err(HandshakeError::NoCredits)
        );
        assert_eq!(
            check_hello(&b, Some(a.nid), &a.header_with(b.nid, HelloStatus::Race)),
            Err(HandshakeError::LostRace)
        );
        let mut ping = a.header(b.nid);
        ping.body = Body::Ping { seq: 1 };
        assert_eq!(
            check_hello(&b, None, &ping),
            Err(HandshakeError::NotHello(FrameType::Ping))
        );
    }
}
