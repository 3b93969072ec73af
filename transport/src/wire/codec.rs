//! Encoding and decoding of frame headers. Decoding borrows the input and never allocates.

use super::{
    Body, FrameType, Header, HeaderCheck, HelloStatus, Limits, NackReason, Status,
    FLAG_LINK_CHECKED, HEADER_LEN, MAGIC, PUT_NO_ACK, VERSION,
};
use crate::lane::Lane;
use crate::nid::{Nid, NID_WIRE_LEN};

const CRC_OFFSET: usize = 92;
const BODY_OFFSET: usize = 64;

/// Why bytes are not a valid frame. A decode error is an error for the connection that
/// carried the bytes: the receiver closes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated frame: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("bad magic {0:#010x}: not a lanet frame")]
    BadMagic(u32),
    #[error("the peer speaks protocol version {got}; this node speaks version {VERSION} only")]
    UnsupportedVersion { got: u8 },
    #[error("header checksum mismatch: computed {computed:#010x}, frame says {stored:#010x}")]
    BadChecksum { computed: u32, stored: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    #[error("{ty:?} frames are not allowed on the {lane} lane")]
    WrongLane { ty: FrameType, lane: Lane },
    #[error("invalid {which} NID in header")]
    BadNid { which: &'static str },
    #[error("unknown status code {0}")]
    UnknownStatus(u32),
    #[error("unknown NACK reason {0}")]
    UnknownNackReason(u32),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("a header without a checksum, on a link that does not protect headers")]
    UncheckedHeader,
    #[error("{ty:?} frame before the connection's handshake finished: only HELLO and AUTH may come first")]
    BeforeHandshake { ty: FrameType },
    #[error("{ty:?} frames carry no payload, but length is {len}")]
    UnexpectedPayload { ty: FrameType, len: u32 },
    #[error("a frame of the {frame} lane on the {connection} lane's connection")]
    OtherLane { frame: Lane, connection: Lane },
    #[error("{ty:?} payload of {len} bytes exceeds its limit of {max} on the {lane} lane")]
    PayloadTooLarge {
        ty: FrameType,
        len: u32,
        max: u32,
        lane: Lane,
    },
}

/// A frame decoded from a borrowed buffer: the header and a slice of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame occupies in the buffer it was decoded from.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Encodes `h` into a header with its checksum. The caller sends `payload` (of
/// `h.payload_len` bytes) after it.
pub fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    encode_header_with(h, HeaderCheck::Crc32)
}

/// Encodes `h` into a header protected as `check` says (see [`HeaderCheck`]).
pub fn encode_header_with(h: &Header, check: HeaderCheck) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4] = VERSION;
    b[5] = h.frame_type() as u8;
    b[6] = h.lane as u8;
    b[7] = h.hop_limit;
    b[8..10].copy_from_slice(&h.credits.to_le_bytes());
    b[11] = h.attempt;
    b[12..16].copy_from_slice(&h.payload_len.to_le_bytes());
    let mut nid = [0u8; NID_WIRE_LEN];
    h.src.encode(&mut nid);
    b[16..32].copy_from_slice(&nid);
    h.dst.encode(&mut nid);
    b[32..48].copy_from_slice(&nid);
    b[48..56].copy_from_slice(&h.src_incarnation.to_le_bytes());
    b[56..64].copy_from_slice(&h.msg_id.to_le_bytes());
    encode_body(&h.body, &mut b[BODY_OFFSET..BODY_OFFSET + 24]);
    b[88..92].copy_from_slice(&h.router_gen.to_le_bytes());
    match check {
        HeaderCheck::Crc32 => {
            let crc = crc32fast::hash(&b[..CRC_OFFSET]);
            b[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        }
        HeaderCheck::Link => b[10] = FLAG_LINK_CHECKED,
    }
    b
}

fn encode_body(body: &Body, b: &mut [u8]) {
    let mut put_u32 = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    match *body {
        Body::Hello {
            credits,
            max_payload,
            status,
        } => {
            put_u32(0, u32::from(credits));
            put_u32(4, max_payload);
            put_u32(8, status as u32);
        }
        Body::Put {
            portal,
            match_bits,
            settled_below,
            ack,
        } => {
            put_u32(0, portal);
            put_u32(4, if ack { 0 } else { PUT_NO_ACK });
            b[8..16].copy_from_slice(&match_bits.to_le_bytes());
            b[16..24].copy_from_slice(&settled_below.to_le_bytes());
        }
        Body::Get {
            portal,
            match_bits,
            want_len,
            settled_below,
        } => {
            put_u32(0, portal);
            put_u32(4, want_len);
            b[8..16].copy_from_slice(&match_bits.to_le_bytes());
            b[16..24].copy_from_slice(&settled_below.to_le_bytes());
        }
        Body::Ack { status, mlen } => {
            put_u32(0, status as u32);
            put_u32(4, mlen);
        }
        Body::Reply { status } => put_u32(0, status as u32),
        Body::Ping { seq } | Body::Pong { seq } => b[0..8].copy_from_slice(&seq.to_le_bytes()),
        Body::Credit | Body::Status | Body::Auth => {}
        Body::Nack { reason, target } => {
            put_u32(0, reason as u32);
            let mut nid = [0u8; NID_WIRE_LEN];
            target.encode(&mut nid);
            b[8..24].copy_from_slice(&nid);
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes and validates a header from the first [`HEADER_LEN`] bytes of `buf`. Stream
/// drivers call this to learn how many payload bytes follow.
pub fn decode_header(buf: &[u8], limits: &Limits) -> Result<Header, DecodeError> {
    let b = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated {
        needed: HEADER_LEN,
        have: buf.len(),
    })?;
    let magic = u32_at(b, 0);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    if b[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion { got: b[4] });
    }
    let stored = u32_at(b, CRC_OFFSET);
    // A header without a checksum says so and has none; any other is checked, so that a
    // flipped flag bit reads as the bad checksum it is.
    let unchecked = b[10] == FLAG_LINK_CHECKED && stored == 0;
    if !unchecked {
        let computed = crc32fast::hash(&b[..CRC_OFFSET]);
        if stored != computed {
            return Err(DecodeError::BadChecksum { computed, stored });
        }
    } else if !limits.link_checks_headers {
        return Err(DecodeError::UncheckedHeader);
    }
    let ty = FrameType::from_wire(b[5]).ok_or(DecodeError::UnknownType(b[5]))?;
    let lane = Lane::from_wire(b[6]).ok_or(DecodeError::UnknownLane(b[6]))?;
    if !ty.allowed_on(lane) {
        return Err(DecodeError::WrongLane { ty, lane });
    }
    if b[10] != 0 && !unchecked {
        return Err(DecodeError::ReservedNotZero);
    }
    let payload_len = u32_at(b, 12);
    if payload_len > 0 && !ty.carries_payload() {
        return Err(DecodeError::UnexpectedPayload {
            ty,
            len: payload_len,
        });
    }
    let max = ty.max_payload(lane, limits.max_payload);
    if payload_len > max {
        return Err(DecodeError::PayloadTooLarge {
            ty,
            len: payload_len,
            max,
            lane,
        });
    }
    let nid_at = |off: usize, which| {
        Nid::decode(b[off..off + NID_WIRE_LEN].try_into().expect("16 bytes"))
            .ok_or(DecodeError::BadNid { which })
    };
    let body = decode_body(ty, &b[BODY_OFFSET..BODY_OFFSET + 24])?;
    Ok(Header {
        lane,
        hop_limit: b[7],
        credits: u16_at(b, 8),
        src: nid_at(16, "source")?,
        dst: nid_at(32, "destination")?,
        src_incarnation: u64_at(b, 48),
        msg_id: u64_at(b, 56),
        payload_len,
        body,
        router_gen: u32_at(b, 88),
        attempt: b[11],
    })
}

fn decode_body(ty: FrameType, b: &[u8]) -> Result<Body, DecodeError> {
    // Bytes each type leaves unused must be zero, so every header has one encoding.
    let used = match ty {
        FrameType::Hello => 12,
        FrameType::Ack => 8,
        FrameType::Put | FrameType::Get => 24,
        FrameType::Reply => 4,
        FrameType::Ping | FrameType::Pong => 8,
        FrameType::Credit | FrameType::Status | FrameType::Auth => 0,
        FrameType::Nack => 24,
    };
    if !zero_past(b, used) {
        return Err(DecodeError::ReservedNotZero);
    }
    let status = |v: u32| Status::from_wire(v).ok_or(DecodeError::UnknownStatus(v));
    Ok(match ty {
        FrameType::Hello => {
            let credits = u32_at(b, 0);
            let status = u32_at(b, 8);
            Body::Hello {
                credits: u16::try_from(credits).map_err(|_| DecodeError::ReservedNotZero)?,
                max_payload: u32_at(b, 4),
                status: HelloStatus::from_wire(status).ok_or(DecodeError::UnknownStatus(status))?,
            }
        }
        FrameType::Put => {
            let flags = u32_at(b, 4);
            if flags & !PUT_NO_ACK != 0 {
                return Err(DecodeError::ReservedNotZero);
            }
            Body::Put {
                portal: u32_at(b, 0),
                match_bits: u64_at(b, 8),
                settled_below: u64_at(b, 16),
                ack: flags & PUT_NO_ACK == 0,
            }
        }
        FrameType::Get => Body::Get {
            portal: u32_at(b, 0),
            want_len: u32_at(b, 4),
            match_bits: u64_at(b, 8),
            settled_below: u64_at(b, 16),
        },
        FrameType::Ack => Body::Ack {
            status: status(u32_at(b, 0))?,
            mlen: u32_at(b, 4),
        },
        FrameType::Reply => Body::Reply {
            status: status(u32_at(b, 0))?,
        },
        FrameType::Ping => Body::Ping { seq: u64_at(b, 0) },
        FrameType::Pong => Body::Pong { seq: u64_at(b, 0) },
        FrameType::Credit => Body::Credit,
        FrameType::Status => Body::Status,
        FrameType::Auth => Body::Auth,
        FrameType::Nack => {
            if u32_at(b, 4) != 0 {
                return Err(DecodeError::ReservedNotZero);
            }
            let reason = u32_at(b, 0);
            let target =
                Nid::decode(b[8..24].try_into().expect("16 bytes")).ok_or(DecodeError::BadNid {
                    which: "NACK target",
                })?;
            Body::Nack {
                reason: NackReason::from_wire(reason)
                    .ok_or(DecodeError::UnknownNackReason(reason))?,
                target,
            }
        }
    })
}

/// Whether the 24-byte body `b` is zero past its first `used` bytes: three words, each
/// shifted past the bytes in use, rather than a loop over up to 24 bytes per frame.
fn zero_past(b: &[u8], used: usize) -> bool {
    (0..3).all(|word| {
        let in_use = used.saturating_sub(8 * word).min(8);
        in_use == 8 || u64_at(b, 8 * word) >> (8 * in_use) == 0
    })
}

/// Decodes one frame at the start of `buf`. Bytes after the frame are left for the caller
/// (see [`Frame::wire_len`]); a payload cut short is `Truncated`.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<Frame<'a>, DecodeError> {
    let header = decode_header(buf, limits)?;
    let end = HEADER_LEN + header.payload_len as usize;
    let payload = buf.get(HEADER_LEN..end).ok_or(DecodeError::Truncated {
        needed: end,
        have: buf.len(),
    })?;
    Ok(Frame { header, payload })
}

#[cfg(test)]
mod body_tests {
    use super::zero_past;

    /// Each body byte past those in use, and only those, makes a body not zero there.
    #[test]
    fn only_bytes_past_those_in_use_count() {
        for used in [0, 4, 8, 12, 24] {
            assert!(zero_past(&[0; 24], used));
            for at in 0..24 {
                let mut b = [0u8; 24];
                b[at] = 0x80;
                assert_eq!(zero_past(&b, used), at < used, "byte {at}, {used} in use");
            }
        }
    }
}
