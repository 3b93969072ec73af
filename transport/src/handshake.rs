//! The HELLO handshake every connection starts with, shared by all LNDs.
//!
//! Each side sends a HELLO (its NID, incarnation, the lane, the receive credits it offers and
//! its largest payload) and checks the one it receives: right version (the codec checks),
//! addressed to us, from the peer we expected, for the same lane, offering at least one credit.

use crate::lane::Lane;
use crate::nid::Nid;
use crate::wire::{self, Body, FrameType, Header, HelloStatus, HEADER_LEN};

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
        }
    }

    pub fn encode(&self, peer: Nid) -> [u8; HEADER_LEN] {
        wire::encode_header(&self.header(peer))
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
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("expected HELLO, got {0:?}")]
    NotHello(FrameType),
    #[error("HELLO addressed to {got}, but this node is {expected}")]
    WrongDestination { expected: Nid, got: Nid },
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
    if status == HelloStatus::Race {
        return Err(HandshakeError::LostRace);
    }
    if h.dst != local.nid {
        return Err(HandshakeError::WrongDestination {
            expected: local.nid,
            got: h.dst,
        });
    }
    if let Some(expected) = expected_peer {
        if h.src != expected {
            return Err(HandshakeError::UnexpectedPeer {
                expected,
                got: h.src,
            });
        }
    }
    if h.src.net != local.nid.net {
        return Err(HandshakeError::WrongNet {
            peer: h.src,
            expected: local.nid.net,
            got: h.src.net,
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
                max_payload: 4096
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
