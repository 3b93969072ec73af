//! A router's status: the small document it returns in every PONG and pushes (in a STATUS
//! frame) to the nodes using it when it changes.
//!
//! ```text
//! offset len      field
//!  0      1       status format (2)
//!  1      1       state: 0 forwarding, 1 absent
//!  2      1       why absent: 0 -, 1 black hole, 2 warming up, 3 stopping, 4 administrator
//!  3      1       nets listed (n, at most 16)
//!  4      4       generation: changes whenever anything below does
//!  8      2       peers it cannot reach, listed (m)
//! 10      1       flags: bit 0, more peers it cannot reach than listed
//! 11      1       reserved, zero
//! 12      2       peers it vouches for, listed (r)
//! 14      2       reserved, zero
//! 16      4 x n   nets: LND kind, up (1) or down (0), net number (u16)
//! ..     16 x m   peers it cannot reach (NIDs)
//! ..     16 x r   peers it vouches for: a fellow router listed them as unreachable, and
//!                 this router has heard from them since it started watching them
//! ```
//!
//! It fits a health-lane payload ([`HEALTH_MAX_PAYLOAD`]); a router that cannot reach more
//! peers than fit lists the first and sets the flag.

use bytes::Bytes;

use super::HEALTH_MAX_PAYLOAD;
use crate::nid::{LndKind, Net, Nid, NID_WIRE_LEN};

const FORMAT: u8 = 2;
const FIXED: usize = 16;
/// Nets a status lists at most.
pub const MAX_NETS: usize = 16;
/// Peers it vouches for that a status lists at most.
pub const MAX_VOUCHED: usize = 16;
/// Peers it cannot reach that a status lists at most.
pub const MAX_UNREACHABLE: usize =
    (HEALTH_MAX_PAYLOAD as usize - FIXED - 4 * MAX_NETS) / NID_WIRE_LEN - MAX_VOUCHED;

/// Why a router does not forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbsentReason {
    /// It cannot deliver to some of the peers or nets it serves.
    BlackHole = 1,
    /// It is starting: connecting and hearing its nets before it takes traffic.
    WarmingUp = 2,
    /// It is stopping: it forwards what it holds and takes nothing new.
    Stopping = 3,
    /// Its administrator took it out.
    Administrator = 4,
}

impl std::fmt::Display for AbsentReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AbsentReason::BlackHole => "it cannot deliver (black hole)",
            AbsentReason::WarmingUp => "it is warming up",
            AbsentReason::Stopping => "it is stopping",
            AbsentReason::Administrator => "its administrator took it out",
        })
    }
}

/// Whether a router forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouterState {
    Forwarding,
    Absent(AbsentReason),
}

/// A router's status, as it says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouterStatus {
    pub generation: u32,
    pub state: RouterState,
    /// Its nets, each up or down.
    pub nets: Vec<(Net, bool)>,
    /// Peers it cannot reach (first [`MAX_UNREACHABLE`]).
    pub unreachable: Vec<Nid>,
    /// It cannot reach more peers than listed.
    pub more_unreachable: bool,
    /// Peers a fellow router cannot reach and this one can (first [`MAX_VOUCHED`]).
    pub vouched: Vec<Nid>,
}

/// Why bytes are not a router status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad router status: {0}")]
pub struct StatusError(&'static str);

impl RouterStatus {
    /// Its encoding; at most [`MAX_NETS`] nets, [`MAX_UNREACHABLE`] and [`MAX_VOUCHED`]
    /// peers are kept.
    pub fn encode(&self) -> Bytes {
        let nets = &self.nets[..self.nets.len().min(MAX_NETS)];
        let listed = &self.unreachable[..self.unreachable.len().min(MAX_UNREACHABLE)];
        let vouched = &self.vouched[..self.vouched.len().min(MAX_VOUCHED)];
        let more = self.more_unreachable || listed.len() < self.unreachable.len();
        let mut b = Vec::with_capacity(
            FIXED + 4 * nets.len() + NID_WIRE_LEN * (listed.len() + vouched.len()),
        );
        let (state, why) = match self.state {
            RouterState::Forwarding => (0, 0),
            RouterState::Absent(r) => (1, r as u8),
        };
        b.extend_from_slice(&[FORMAT, state, why, nets.len() as u8]);
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&(listed.len() as u16).to_le_bytes());
        b.extend_from_slice(&[u8::from(more), 0]);
        b.extend_from_slice(&(vouched.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        for (net, up) in nets {
            b.extend_from_slice(&[net.kind.wire(), u8::from(*up)]);
            b.extend_from_slice(&net.num.to_le_bytes());
        }
        let mut nid = [0u8; NID_WIRE_LEN];
        for peer in listed.iter().chain(vouched) {
            peer.encode(&mut nid);
            b.extend_from_slice(&nid);
        }
        b.into()
    }

    /// Decodes a status, checking every count against the bytes present first.
    pub fn decode(b: &[u8]) -> Result<RouterStatus, StatusError> {
        let fixed = b.get(..FIXED).ok_or(StatusError("too short"))?;
        if fixed[0] != FORMAT {
            return Err(StatusError("unknown format"));
        }
        let state = match (fixed[1], fixed[2]) {
            (0, 0) => RouterState::Forwarding,
            (1, 1) => RouterState::Absent(AbsentReason::BlackHole),
            (1, 2) => RouterState::Absent(AbsentReason::WarmingUp),
            (1, 3) => RouterState::Absent(AbsentReason::Stopping),
            (1, 4) => RouterState::Absent(AbsentReason::Administrator),
            _ => return Err(StatusError("unknown state")),
        };
        let n = usize::from(fixed[3]);
        let m = usize::from(u16::from_le_bytes([fixed[8], fixed[9]]));
        let r = usize::from(u16::from_le_bytes([fixed[12], fixed[13]]));
        if n > MAX_NETS
            || m > MAX_UNREACHABLE
            || r > MAX_VOUCHED
            || fixed[10] > 1
            || fixed[11] != 0
            || fixed[14..16] != [0, 0]
        {
            return Err(StatusError("bad counts or reserved bits"));
        }
        if b.len() != FIXED + 4 * n + NID_WIRE_LEN * (m + r) {
            return Err(StatusError("length does not match its counts"));
        }
        let mut nets = Vec::with_capacity(n);
        for e in b[FIXED..FIXED + 4 * n].chunks_exact(4) {
            let kind = LndKind::from_wire(e[0]).ok_or(StatusError("unknown net kind"))?;
            if e[1] > 1 {
                return Err(StatusError("bad net state"));
            }
            nets.push((Net::new(kind, u16::from_le_bytes([e[2], e[3]])), e[1] == 1));
        }
        let mut peers = Vec::with_capacity(m + r);
        for e in b[FIXED + 4 * n..].chunks_exact(NID_WIRE_LEN) {
            let raw: &[u8; NID_WIRE_LEN] = e.try_into().expect("chunk of a NID");
            peers.push(Nid::decode(raw).ok_or(StatusError("bad NID"))?);
        }
        let vouched = peers.split_off(m);
        Ok(RouterStatus {
            generation: u32::from_le_bytes(fixed[4..8].try_into().expect("4 bytes")),
            state,
            nets,
            unreachable: peers,
            more_unreachable: fixed[10] == 1,
            vouched,
        })
    }

    /// Whether its NI on `net` is up; `None` if it has none there.
    pub fn net_up(&self, net: Net) -> Option<bool> {
        self.nets.iter().find(|(n, _)| *n == net).map(|(_, up)| *up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nid::tests::any_nid;
    use proptest::prelude::*;

    fn any_status() -> impl Strategy<Value = RouterStatus> {
        let state = prop_oneof![
            Just(RouterState::Forwarding),
            Just(RouterState::Absent(AbsentReason::BlackHole)),
            Just(RouterState::Absent(AbsentReason::WarmingUp)),
            Just(RouterState::Absent(AbsentReason::Stopping)),
            Just(RouterState::Absent(AbsentReason::Administrator)),
        ];
        let net = (any_nid(), any::<bool>()).prop_map(|(n, up)| (n.net(), up));
        (
            any::<u32>(),
            state,
            proptest::collection::vec(net, 0..=MAX_NETS),
            proptest::collection::vec(any_nid(), 0..=MAX_UNREACHABLE),
            any::<bool>(),
            proptest::collection::vec(any_nid(), 0..=MAX_VOUCHED),
        )
            .prop_map(
                |(generation, state, nets, unreachable, more_unreachable, vouched)| RouterStatus {
                    generation,
                    state,
                    nets,
                    unreachable,
                    more_unreachable,
                    vouched,
                },
            )
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity_and_fits_a_health_frame(s in any_status()) {
            let b = s.encode();
            prop_assert!(b.len() <= HEALTH_MAX_PAYLOAD as usize);
            prop_assert_eq!(RouterStatus::decode(&b), Ok(s));
        }

        #[test]
        fn garbage_never_panics_and_damage_is_mostly_caught(
            s in any_status(), at in any::<usize>(), flip in 1u8..,
            junk in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = RouterStatus::decode(&junk);
            let mut b = s.encode().to_vec();
            let at = at % b.len();
            b[at] ^= flip;
            let _ = RouterStatus::decode(&b);
        }
    }

    #[test]
    fn too_many_unreachable_peers_are_cut_and_flagged() {
        let s = RouterStatus {
            generation: 3,
            state: RouterState::Absent(AbsentReason::BlackHole),
            nets: vec![],
            unreachable: (0..MAX_UNREACHABLE as u32 + 10)
                .map(|n| Nid::mem(n, 0))
                .collect(),
            more_unreachable: false,
            vouched: vec![Nid::mem(1, 1)],
        };
        let d = RouterStatus::decode(&s.encode()).unwrap();
        assert_eq!(d.unreachable.len(), MAX_UNREACHABLE);
        assert!(d.more_unreachable);
        assert_eq!(d.vouched, [Nid::mem(1, 1)]);
    }
}
