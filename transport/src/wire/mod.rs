//! The wire format: a fixed 96-byte, versioned header, checksummed unless the link protects
//! it, then the payload.
//!
//! ```text
//! offset len  field
//!  0      4   magic "LANT" (0x544e414c little-endian)
//!  4      1   version (4)
//!  5      1   frame type (FrameType)
//!  6      1   lane (0 health, 1 data)
//!  7      1   hop limit: routers the frame may still pass (each takes one)   [per hop]
//!  8      2   credits returned to the receiver of this frame                 [per hop]
//! 10      1   header flags: bit 0 [`FLAG_LINK_CHECKED`], the others zero              [per hop]
//! 11      1   attempt: the initiator's count of its tries of this request (0 for the
//!             first copy, different for each copy, wrapping); a NACK echoes it
//! 12      4   payload length
//! 16     16   source NID: the initiator of the exchange (not the last router)
//! 32     16   destination NID: the final target (not the next router)
//! 48      8   source incarnation
//! 56      8   message id (the initiator's cookie; ACK/REPLY/PONG/NACK echo it)
//! 64     24   per-type fields (Body), unused bytes zero
//! 88      4   router status generation of the hop's sender (0: no router)   [per hop]
//!             (a router's status, see [`RouterStatus`], travels in PONG and STATUS payloads)
//! 92      4   CRC-32 of bytes 0..92; zero when [`FLAG_LINK_CHECKED`] is set           [per hop]
//! ```
//!
//! Frames name their ends; the connection a frame arrives on names the previous hop. A
//! router forwards a frame with its ends unchanged and rewrites only the per-hop fields.
//!
//! All integers are little-endian. The payload is not checksummed: TCP and RDMA already
//! protect it, and a header checksum is what keeps a corrupt length from being trusted.
//! Where the link already protects the header as strongly, the header goes without one
//! ([`HeaderCheck::Link`]): InfiniBand's and RoCE's ICRC is a CRC-32 over the whole
//! packet, and memory does not corrupt. TCP's 16-bit checksum is weaker, and iWARP has no
//! ICRC: those headers always carry theirs. It is decided per connection, in the HELLO:
//! a peer's headers go unchecked only if it said it takes them so
//! ([`crate::handshake::PeerHello::header_check`]); a receiver takes them only on a link
//! that protects them ([`Limits::link_checks_headers`]). An RDMA acceptor says it only
//! to diallers that said it, so diallers from before the flag still connect (acceptors from
//! before it refuse the flag in a HELLO).
//!
//! Version 2 added routing (ends in the header, hop limit, NACK, router status
//! generation). Within it, authentication came later and needs nothing from nodes without
//! keys: a HELLO may carry a payload (the [`crate::handshake::auth`] nonce and proof; one
//! without keys ignores it), and the AUTH frame follows it only between nodes that both
//! have keys. Version 3 added the attempt byte (11, reserved before) and NACK reason 7
//! (next hop stalled): a version 2 node would have refused either mid-stream, closing a
//! connection full of work, so they are refused at the handshake instead. Version 4
//! changed no byte but what the HELLO's credits mean: both ends use the smaller offer as
//! the connection's window ([`crate::credits`]). A version 3 receiver whose
//! `credits_hiw` is above a version 4 sender's window would never return its credits.
//! Frames of another version are refused with an error naming both versions.

mod codec;
mod status;

pub use codec::{decode, decode_header, encode_header, encode_header_with, DecodeError, Frame};
pub use status::{AbsentReason, RouterState, RouterStatus, StatusError, MAX_UNREACHABLE};

use crate::lane::Lane;
use crate::nid::Nid;

pub const MAGIC: u32 = u32::from_le_bytes(*b"LANT");
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 96;

/// Largest payload a health-lane frame may carry (PONGs will carry router status).
pub const HEALTH_MAX_PAYLOAD: u32 = 1024;

/// The hop limit an initiator gives its frames by default: more routers than any sane
/// topology puts in a path, few enough that a routing loop ends at once.
pub const DEFAULT_HOP_LIMIT: u8 = 8;

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
    Nack = 9,
    /// A router's status, pushed to those using it when it changes.
    Status = 10,
    /// A dialler's proof that it holds a key, right after the acceptor's HELLO
    /// ([`crate::handshake::auth`]).
    Auth = 11,
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
            9 => FrameType::Nack,
            10 => FrameType::Status,
            11 => FrameType::Auth,
            _ => return None,
        })
    }

    /// Whether a frame of this type asks its target for an answer (and so may be refused
    /// on the way with a NACK, and resent).
    pub fn is_request(self) -> bool {
        matches!(self, FrameType::Put | FrameType::Get | FrameType::Ping)
    }

    /// Whether a frame of this type uses one of the receiver's buffers, and so a credit.
    /// HELLO precedes credits and CREDIT frames must always get through (o2iblnd reserves
    /// receives for them in the same way).
    pub fn consumes_credit(self) -> bool {
        !matches!(self, FrameType::Hello | FrameType::Auth | FrameType::Credit)
    }

    /// Whether a frame of this type belongs to a connection's handshake (HELLO, AUTH): the
    /// only frames a stream may carry before its handshake is done.
    pub fn is_handshake(self) -> bool {
        matches!(self, FrameType::Hello | FrameType::Auth)
    }

    /// Whether frames of this type may carry a payload.
    pub fn carries_payload(self) -> bool {
        self.max_payload(Lane::Data, u32::MAX) > 0
    }

    /// The largest payload a frame of this type may carry on `lane`, where the data lane
    /// takes up to `data_max`. A HELLO may carry its authentication, an AUTH its proof.
    pub fn max_payload(self, lane: Lane, data_max: u32) -> u32 {
        use crate::handshake::auth::{HelloAuth, Proof};
        match (self, lane) {
            (FrameType::Hello, _) => HelloAuth::MAX_LEN as u32,
            (FrameType::Auth, _) => Proof::MAX_LEN as u32,
            (FrameType::Put | FrameType::Reply | FrameType::Pong | FrameType::Status, lane) => {
                match lane {
                    Lane::Health => HEALTH_MAX_PAYLOAD,
                    Lane::Data => data_max,
                }
            }
            _ => 0,
        }
    }

    /// Whether this type may travel on `lane`. The health lane carries only health and
    /// connection-management frames, so nobody can use it as a fast path for data.
    pub fn allowed_on(self, lane: Lane) -> bool {
        match lane {
            Lane::Data => true,
            Lane::Health => matches!(
                self,
                FrameType::Hello
                    | FrameType::Auth
                    | FrameType::Ping
                    | FrameType::Pong
                    | FrameType::Credit
                    | FrameType::Nack
                    | FrameType::Status
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

/// Why a node on the way refused to pass a frame on (carried by NACK). A refused frame was
/// never delivered, so its initiator may send it again another way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackReason {
    /// The refusing node knows no usable route to the target's net.
    NoRoute = 1,
    /// The next hop towards the target is down (or its connection failed).
    NextHopDown = 2,
    /// The frame reached a node that does not forward (not a router).
    NotForwarding = 3,
    /// The frame used up its hop limit: a routing loop, or a path longer than allowed.
    HopLimit = 4,
    /// The router has no buffer for the frame.
    OutOfBuffers = 5,
    /// The router has withdrawn from its nets (it is a black hole, or stopping).
    Absent = 6,
    /// The frame waited at its next hop, which was up but took nothing, past the router's
    /// `forward_patience`. It was never passed on.
    NextHopStalled = 7,
}

impl NackReason {
    fn from_wire(v: u32) -> Option<NackReason> {
        Some(match v {
            1 => NackReason::NoRoute,
            2 => NackReason::NextHopDown,
            3 => NackReason::NotForwarding,
            4 => NackReason::HopLimit,
            5 => NackReason::OutOfBuffers,
            6 => NackReason::Absent,
            7 => NackReason::NextHopStalled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for NackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NackReason::NoRoute => "no route to the target's net",
            NackReason::NextHopDown => "the next hop is down",
            NackReason::NotForwarding => "the node does not forward",
            NackReason::HopLimit => "hop limit reached (a routing loop?)",
            NackReason::OutOfBuffers => "the router is out of buffers",
            NackReason::Absent => "the router has withdrawn",
            NackReason::NextHopStalled => "the next hop took nothing for too long",
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
    /// The acceptor takes only peers that prove a key, and the dialler sent no proof.
    KeyRequired = 2,
}

impl HelloStatus {
    fn from_wire(v: u32) -> Option<HelloStatus> {
        match v {
            0 => Some(HelloStatus::Ok),
            1 => Some(HelloStatus::Race),
            2 => Some(HelloStatus::KeyRequired),
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
    /// `settled_below`, in PUT and GET: every request of this initiator to this target
    /// with a lower message id has been answered or abandoned (a PUT without ACK: sent),
    /// so the target may forget its answers to them (it keeps recent answers so that a
    /// request resent after a router failed is answered again, not delivered twice). A
    /// PUT without ACK is never resent, so the target ignores the field in one.
    ///
    /// `ack`: the initiator wants an ACK (flag bit [`PUT_NO_ACK`] clear).
    Put {
        portal: u32,
        match_bits: u64,
        settled_below: u64,
        ack: bool,
    },
    Get {
        portal: u32,
        match_bits: u64,
        want_len: u32,
        settled_below: u64,
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
    /// A node on the way (the frame's source) refused to pass on the request with this
    /// message id, sent to `target`.
    Nack {
        reason: NackReason,
        target: Nid,
    },
    /// The source, a router, pushes its status (the payload, a [`RouterStatus`]).
    Status,
    /// The dialler's proof of a key (the payload, a [`crate::handshake::auth::Proof`]).
    Auth,
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
            Body::Nack { .. } => FrameType::Nack,
            Body::Status => FrameType::Status,
            Body::Auth => FrameType::Auth,
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub lane: Lane,
    /// Routers the frame may still pass; each router takes one and refuses it at zero.
    pub hop_limit: u8,
    /// Credits the sender of this hop returns to its receiver (for the lane of this frame).
    pub credits: u16,
    /// The initiator (not the last router it passed).
    pub src: Nid,
    /// The final target (not the next router).
    pub dst: Nid,
    pub src_incarnation: u64,
    pub msg_id: u64,
    pub payload_len: u32,
    pub body: Body,
    /// The router status generation of this hop's sender; 0 if it is no router. A change
    /// tells the receiver that router's status changed.
    pub router_gen: u32,
    /// Of a request: its initiator's count of its tries (0 for the first copy, different
    /// for each copy, wrapping; a try given up before it was sent counts too); routers
    /// pass it on unchanged. Of a NACK: the refused request's, so that its initiator tells
    /// a refusal of a copy it has already replaced. 0 in other frames.
    pub attempt: u8,
}

impl Header {
    pub fn frame_type(&self) -> FrameType {
        self.body.frame_type()
    }

    /// Whether it is a PUT without ACK: a request nothing answers.
    pub fn is_put_without_ack(&self) -> bool {
        matches!(self.body, Body::Put { ack: false, .. })
    }
}

/// PUT flag (body bytes 4..8, a little-endian word whose other bits are zero): no ACK
/// wanted ([`crate::op::PutRequest::ack`]). Clear in every PUT from before the option.
pub const PUT_NO_ACK: u32 = 1;

/// Header flag (byte 10): the header has no checksum, the link it travels on protects it.
pub const FLAG_LINK_CHECKED: u8 = 1;

/// What protects a header on the wire: its own CRC-32, or the link under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderCheck {
    /// A CRC-32 of the header in its last four bytes: links whose own check is weak (TCP).
    #[default]
    Crc32,
    /// No checksum ([`FLAG_LINK_CHECKED`]): the link protects every byte at least as
    /// strongly (InfiniBand's and RoCE's ICRC, memory), and the peer said it takes such
    /// headers. Spares a CRC per frame at each end.
    Link,
}

/// Limits the decoder enforces before anything is allocated or trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data-lane payload accepted.
    pub max_payload: u32,
    /// The link protects headers ([`HeaderCheck::Link`]): headers without a checksum are
    /// accepted. Otherwise they are an error.
    pub link_checks_headers: bool,
}

impl Limits {
    /// The limits of a link whose headers are protected as `check` says.
    pub fn new(max_payload: u32, check: HeaderCheck) -> Limits {
        Limits {
            max_payload,
            link_checks_headers: check == HeaderCheck::Link,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(crate::config::DEFAULT_MAX_PAYLOAD, HeaderCheck::Crc32)
    }
}

#[cfg(test)]
mod tests;
