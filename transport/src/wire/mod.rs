//! The wire format: a fixed 96-byte, versioned, checksummed header, then the payload.
//!
//! ```text
//! offset len  field
//!  0      4   magic "LANT" (0x544e414c little-endian)
//!  4      1   version (1)
//!  5      1   frame type (FrameType)
//!  6      1   lane (0 health, 1 data)
//!  7      1   reserved, zero
//!  8      2   credits returned to the receiver of this frame
//! 10      2   reserved, zero
//! 12      4   payload length
//! 16     16   source NID
//! 32     16   destination NID
//! 48      8   source incarnation
//! 56      8   message id (the initiator's cookie; ACK/REPLY/PONG echo it)
//! 64     24   per-type fields (Body), unused bytes zero
//! 88      4   reserved, zero
//! 92      4   CRC-32 of bytes 0..92
//! ```
//!
//! All integers are little-endian. The payload is not checksummed: TCP and RDMA already
//! protect it, and a header checksum is what keeps a corrupt length from being trusted.

mod codec;

pub use codec::{decode, decode_header, encode_header, DecodeError, Frame};

use crate::lane::Lane;
use crate::nid::Nid;

pub const MAGIC: u32 = u32::from_le_bytes(*b"LANT");
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 96;

/// Largest payload a health-lane frame may carry (PONGs will carry router status).
pub const HEALTH_MAX_PAYLOAD: u32 = 1024;

/// Frame types. The discriminant is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    Hello = 1,
    Put = 2,
    Get = 3,
    Ack = 4,
    Reply = 5,
    Ping = 6,
    Pong = 7,
    Credit = 8,
}

impl FrameType {
    fn from_wire(v: u8) -> Option<FrameType> {
        Some(match v {
            1 => FrameType::Hello,
            2 => FrameType::Put,
            3 => FrameType::Get,
            4 => FrameType::Ack,
            5 => FrameType::Reply,
            6 => FrameType::Ping,
            7 => FrameType::Pong,
            8 => FrameType::Credit,
            _ => return None,
        })
    }

    /// Whether a frame of this type uses one of the receiver's buffers, and so a credit.
    /// HELLO precedes credits and CREDIT frames must always get through (o2iblnd reserves
    /// receives for them in the same way).
    pub fn consumes_credit(self) -> bool {
        !matches!(self, FrameType::Hello | FrameType::Credit)
    }

    /// Whether frames of this type may carry a payload.
    pub fn carries_payload(self) -> bool {
        matches!(self, FrameType::Put | FrameType::Reply | FrameType::Pong)
    }

    /// Whether this type may travel on `lane`. The health lane carries only health and
    /// connection-management frames, so nobody can use it as a fast path for data.
    pub fn allowed_on(self, lane: Lane) -> bool {
        match lane {
            Lane::Data => true,
            Lane::Health => matches!(
                self,
                FrameType::Hello | FrameType::Ping | FrameType::Pong | FrameType::Credit
            ),
        }
    }
}

/// Outcome carried by ACK and REPLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    /// No posted entry matched (portal, match bits, length, source).
    NoMatch = 1,
    /// The receiver has too many undelivered messages; try later.
    Busy = 2,
    /// A payload matched but could not be moved to the receiver (zero-copy fetch failed).
    Aborted = 3,
}

impl Status {
    fn from_wire(v: u32) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::NoMatch,
            2 => Status::Busy,
            3 => Status::Aborted,
            _ => return None,
        })
    }
}

/// The answer a HELLO carries. A dialler's HELLO is always `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HelloStatus {
    Ok = 0,
    /// Both sides dialled at once and this connection lost: the peer's own connection,
    /// dialled by the lower NID, is the one to use (socklnd's EALREADY).
    Race = 1,
}

impl HelloStatus {
    fn from_wire(v: u32) -> Option<HelloStatus> {
        match v {
            0 => Some(HelloStatus::Ok),
            1 => Some(HelloStatus::Race),
            _ => None,
        }
    }
}

/// Per-type header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Connection handshake: the receive credits offered on this connection and the largest
    /// payload accepted. NID, incarnation and lane are in the common header. A reply's
    /// `status` may refuse the connection (e.g. it lost a connection race).
    Hello {
        credits: u16,
        max_payload: u32,
        status: HelloStatus,
    },
    Put {
        portal: u32,
        match_bits: u64,
    },
    Get {
        portal: u32,
        match_bits: u64,
        want_len: u32,
    },
    /// `mlen`: payload bytes the target accepted.
    Ack {
        status: Status,
        mlen: u32,
    },
    Reply {
        status: Status,
    },
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    Credit,
}

impl Body {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Body::Hello { .. } => FrameType::Hello,
            Body::Put { .. } => FrameType::Put,
            Body::Get { .. } => FrameType::Get,
            Body::Ack { .. } => FrameType::Ack,
            Body::Reply { .. } => FrameType::Reply,
            Body::Ping { .. } => FrameType::Ping,
            Body::Pong { .. } => FrameType::Pong,
            Body::Credit => FrameType::Credit,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub lane: Lane,
    /// Credits the sender returns to the receiver (for the lane of this frame).
    pub credits: u16,
    pub src: Nid,
    pub dst: Nid,
    pub src_incarnation: u64,
    pub msg_id: u64,
    pub payload_len: u32,
    pub body: Body,
}

impl Header {
    pub fn frame_type(&self) -> FrameType {
        self.body.frame_type()
    }
}

/// Limits the decoder enforces before anything is allocated or trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data-lane payload accepted.
    pub max_payload: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: crate::config::DEFAULT_MAX_PAYLOAD,
        }
    }
}

#[cfg(test)]
mod tests;
