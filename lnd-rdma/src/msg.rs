//! The driver's messages: what one RDMA SEND carries.
//!
//! Every message starts with a 32-byte prefix (little-endian): magic `LR` (2), version (1),
//! kind (1), status (1), three zero bytes, cookie (8), remote address (8), rkey (4), length
//! (4). Frame kinds follow it with a lanet header (96 bytes) and, for eager frames, the
//! payload.
//!
//! * `Eager`: a frame with its payload inline (small payloads). The dialler's AUTH, the
//!   first message of an authenticated connection, is one too (it spends no credit).
//! * `PutReq`: a frame whose payload (`len` bytes) stays with the sender until the receiver
//!   answers with a `SinkAck` naming registered memory; the sender RDMA-WRITEs it there and
//!   sends `WriteDone` (o2iblnd's PUT_REQ, PUT_ACK, PUT_DONE).
//! * `ReadReq`: a frame whose payload the receiver RDMA-READs from (`addr`, `rkey`), then
//!   sends `ReadDone` so the sender may release it (the GET reply path).
//!
//! `cookie` names the deferred payload; the payload's sender picks it. `status` says
//! whether a `SinkAck` or `*Done` is a success or a refusal.

use crate::mr::RemoteBuf;

pub(crate) const PREFIX_LEN: usize = 32;
const MAGIC: [u8; 2] = *b"LR";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Eager = 1,
    PutReq = 2,
    ReadReq = 3,
    SinkAck = 4,
    WriteDone = 5,
    ReadDone = 6,
}

impl Kind {
    fn from_wire(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Eager,
            2 => Kind::PutReq,
            3 => Kind::ReadReq,
            4 => Kind::SinkAck,
            5 => Kind::WriteDone,
            6 => Kind::ReadDone,
            _ => return None,
        })
    }

    /// Whether a lanet header follows the prefix.
    pub(crate) fn carries_frame(self) -> bool {
        matches!(self, Kind::Eager | Kind::PutReq | Kind::ReadReq)
    }
}

/// Whether the other side took a deferred payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    Ok = 0,
    /// Nobody wanted it (or the sink could not be registered).
    Declined = 1,
    /// The transfer failed at the side that says so.
    Failed = 2,
}

impl Outcome {
    fn from_wire(v: u8) -> Option<Outcome> {
        Some(match v {
            0 => Outcome::Ok,
            1 => Outcome::Declined,
            2 => Outcome::Failed,
            _ => return None,
        })
    }
}

/// A decoded prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) kind: Kind,
    pub(crate) outcome: Outcome,
    pub(crate) cookie: u64,
    pub(crate) remote: RemoteBuf,
}

impl Prefix {
    pub(crate) fn new(kind: Kind, cookie: u64) -> Prefix {
        Prefix {
            kind,
            outcome: Outcome::Ok,
            cookie,
            remote: RemoteBuf {
                addr: 0,
                rkey: 0,
                len: 0,
            },
        }
    }

    pub(crate) fn with(mut self, outcome: Outcome, remote: RemoteBuf) -> Prefix {
        self.outcome = outcome;
        self.remote = remote;
        self
    }

    pub(crate) fn encode(&self, b: &mut [u8]) {
        let b = &mut b[..PREFIX_LEN];
        b.fill(0);
        b[0..2].copy_from_slice(&MAGIC);
        b[2] = VERSION;
        b[3] = self.kind as u8;
        b[4] = self.outcome as u8;
        b[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        b[16..24].copy_from_slice(&self.remote.addr.to_le_bytes());
        b[24..28].copy_from_slice(&self.remote.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.remote.len.to_le_bytes());
    }

    /// Decodes the prefix of a received message; never panics.
    pub(crate) fn decode(b: &[u8]) -> Result<Prefix, &'static str> {
        let b = b
            .get(..PREFIX_LEN)
            .ok_or("message shorter than its prefix")?;
        if b[0..2] != MAGIC {
            return Err("bad magic");
        }
        if b[2] != VERSION {
            return Err("unsupported driver message version");
        }
        if b[5..8] != [0, 0, 0] {
            return Err("reserved bytes set");
        }
        let kind = Kind::from_wire(b[3]).ok_or("unknown message kind")?;
        let outcome = Outcome::from_wire(b[4]).ok_or("unknown outcome")?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        Ok(Prefix {
            kind,
            outcome,
            cookie: u64_at(8),
            remote: RemoteBuf {
                addr: u64_at(16),
                rkey: u32_at(24),
                len: u32_at(28),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixes_round_trip_and_garbage_is_refused() {
        let p = Prefix::new(Kind::SinkAck, 77).with(
            Outcome::Declined,
            RemoteBuf {
                addr: 0xdead_beef_0000,
                rkey: 42,
                len: 1 << 20,
            },
        );
        let mut b = [0u8; 40];
        p.encode(&mut b);
        assert_eq!(Prefix::decode(&b), Ok(p));
        assert!(Prefix::decode(&b[..31]).is_err());
        for (at, v) in [(0, b'X'), (2, 9), (3, 0), (3, 7), (4, 3), (6, 1)] {
            let mut bad = b;
            bad[at] = v;
            assert!(Prefix::decode(&bad).is_err(), "byte {at} = {v} accepted");
        }
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Prefix::decode(&b);
        }
    }
}
