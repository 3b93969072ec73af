//! NIDs (`ADDRESS@NET`) and nets (`tcp`, `tcp1`, `o2ib3`, `mem`, `lo`).
//!
//! A net is an LND type plus a number (default 0, printed without the number, as LNet does).
//! Addresses depend on the type: IPv4 (optionally `:PORT`, since many nodes of one test share
//! a host) for `tcp` and `o2ib`, a number for `mem`, and `0` for `lo`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU32;
use std::str::FromStr;

pub use crate::sys::interface_ipv4;

/// The kind of network driver a net runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LndKind {
    /// Loopback within one node: only `0@lo`.
    Lo,
    /// TCP (io_uring or epoll).
    Tcp,
    /// RDMA (InfiniBand, RoCE) through libibverbs; named `o2ib` as in LNet.
    O2ib,
    /// The in-memory LND for single-process topologies and simulation.
    Mem,
}

impl LndKind {
    /// Every kind, in the order kinds compare.
    const ALL_IN_ORDER: [LndKind; 4] = [LndKind::Lo, LndKind::Tcp, LndKind::O2ib, LndKind::Mem];

    /// Every kind, longest name first where one could be a prefix of another when parsing.
    pub const ALL: [LndKind; 4] = [LndKind::O2ib, LndKind::Tcp, LndKind::Mem, LndKind::Lo];

    /// The name used in NIDs.
    pub fn name(self) -> &'static str {
        match self {
            LndKind::Lo => "lo",
            LndKind::Tcp => "tcp",
            LndKind::O2ib => "o2ib",
            LndKind::Mem => "mem",
        }
    }

    pub(crate) const fn wire(self) -> u8 {
        match self {
            LndKind::Lo => 1,
            LndKind::Tcp => 2,
            LndKind::O2ib => 3,
            LndKind::Mem => 4,
        }
    }

    pub(crate) const fn from_wire(v: u8) -> Option<Self> {
        Some(match v {
            1 => LndKind::Lo,
            2 => LndKind::Tcp,
            3 => LndKind::O2ib,
            4 => LndKind::Mem,
            _ => return None,
        })
    }

    /// The port its LND listens on and dials when a NID names none (LNet's: the acceptor's
    /// 988 for TCP, o2iblnd's service port 987). A NID that names this port is the NID
    /// without it: `10.0.0.1:988@tcp` is `10.0.0.1@tcp`, so that writing out a default
    /// (in a config file, say) never makes another node of the same one.
    pub const fn default_port(self) -> Option<u16> {
        match self {
            LndKind::Tcp => Some(TCP_DEFAULT_PORT),
            LndKind::O2ib => Some(O2IB_DEFAULT_PORT),
            LndKind::Lo | LndKind::Mem => None,
        }
    }

    /// Whether addresses on this kind of net are IPv4 addresses (else plain numbers).
    fn uses_ip(self) -> bool {
        matches!(self, LndKind::Tcp | LndKind::O2ib)
    }
}

/// The TCP LND's port when a NID names none (LNet's acceptor port).
pub const TCP_DEFAULT_PORT: u16 = 988;

/// The RDMA LND's rdma_cm port when a NID names none (o2iblnd's service port).
pub const O2IB_DEFAULT_PORT: u16 = 987;

/// A network: an LND kind and a number, e.g. `tcp1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    pub kind: LndKind,
    pub num: u16,
}

impl Net {
    pub const fn new(kind: LndKind, num: u16) -> Self {
        Net { kind, num }
    }

    /// The net as one word, one-to-one and in the same order: the kind above bit 16
    /// (counted from 1, so that no word is zero), the number below.
    const fn word(self) -> NonZeroU32 {
        match NonZeroU32::new(kind_code(self.kind) << 16 | self.num as u32) {
            Some(w) => w,
            None => unreachable!(),
        }
    }

    const fn from_word(w: NonZeroU32) -> Net {
        let w = w.get();
        match LndKind::from_wire((w >> 16) as u8) {
            Some(kind) => Net::new(kind, w as u16),
            None => panic!("a net word is made by Net::word"),
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num == 0 {
            f.write_str(self.kind.name())
        } else {
            write!(f, "{}{}", self.kind.name(), self.num)
        }
    }
}

/// The address part of a NID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NidAddr {
    /// A plain number (`mem`, `lo`).
    Num(u32),
    /// An IPv4 address (`tcp`, `o2ib`), using the net's default port.
    Ip(Ipv4Addr),
    /// An IPv4 address with an explicit port, for several nodes on one host.
    IpPort(SocketAddrV4),
}

impl fmt::Display for NidAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NidAddr::Num(n) => write!(f, "{n}"),
            NidAddr::Ip(ip) => write!(f, "{ip}"),
            NidAddr::IpPort(sa) => write!(f, "{sa}"),
        }
    }
}

/// A network identifier: `ADDRESS@NET`.
///
/// Held as two words rather than as its address and net: the core compares and hashes
/// NIDs several times per frame, and two words compare in two instructions where the
/// address enum took a walk field by field (`lanet-bench cost`, bench/RESULTS.md). That
/// makes it 16 bytes, aligned to 8 (it was 12, aligned to 4; three 4-byte words cost more
/// instructions than that saved), and an `Option<Nid>` no larger (the net word is never
/// zero). The derived order is the one of (address, net) field by field: the address's
/// kind, its number or IP address, its port; then the net's kind and number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nid {
    /// The address as one word: its kind above bit 48; below it the number, the IP
    /// address, or the IP address above the port. One-to-one, and in the address's order.
    addr: u64,
    /// The net (see [`Net::word`]).
    net: NonZeroU32,
}

const ADDR_KIND_SHIFT: u32 = 48;

/// Whether `port` is the default port of `kind`'s nets.
const fn is_default_port(kind: LndKind, port: u16) -> bool {
    matches!(kind.default_port(), Some(p) if p == port)
}

impl Nid {
    /// Builds a NID, checking that the address suits the net (as parsing does).
    pub fn new(addr: NidAddr, net: Net) -> Result<Nid, NidError> {
        check_addr_for_net(&addr, net).map(|()| Nid::pack(addr, net))
    }

    /// `N@mem` (or `N@memK`): the in-memory LND's addresses.
    pub fn mem(num: u32, net_num: u16) -> Nid {
        Nid::pack(NidAddr::Num(num), Net::new(LndKind::Mem, net_num))
    }

    /// `0@lo`.
    pub const LO: Nid = Nid::pack(NidAddr::Num(0), Net::new(LndKind::Lo, 0));

    /// The words of an address and a net, unchecked (callers check, or know). An address
    /// with the net's default port is packed as the address without it (see
    /// [`LndKind::default_port`]).
    const fn pack(addr: NidAddr, net: Net) -> Nid {
        let addr = match addr {
            NidAddr::Num(n) => n as u64,
            NidAddr::Ip(ip) => 1 << ADDR_KIND_SHIFT | ip.to_bits() as u64,
            NidAddr::IpPort(sa) if is_default_port(net.kind, sa.port()) => {
                1 << ADDR_KIND_SHIFT | sa.ip().to_bits() as u64
            }
            NidAddr::IpPort(sa) => {
                2 << ADDR_KIND_SHIFT | (sa.ip().to_bits() as u64) << 16 | sa.port() as u64
            }
        };
        Nid {
            addr,
            net: net.word(),
        }
    }

    /// The address part.
    pub const fn addr(&self) -> NidAddr {
        let word = self.addr;
        let low = word & ((1 << ADDR_KIND_SHIFT) - 1);
        match word >> ADDR_KIND_SHIFT {
            0 => NidAddr::Num(low as u32),
            1 => NidAddr::Ip(Ipv4Addr::from_bits(low as u32)),
            _ => NidAddr::IpPort(SocketAddrV4::new(
                Ipv4Addr::from_bits((low >> 16) as u32),
                low as u16,
            )),
        }
    }

    /// The net part.
    pub const fn net(&self) -> Net {
        Net::from_word(self.net)
    }

    /// Whether this NID is on `net`: a comparison of one word.
    #[inline]
    pub fn is_on(&self, net: Net) -> bool {
        self.net == net.word()
    }

    /// Whether both NIDs are on the same net: a comparison of one word.
    #[inline]
    pub fn same_net(&self, other: &Nid) -> bool {
        self.net == other.net
    }

    /// The socket address to reach this NID at, for IP nets (`default_port` when none is given).
    pub fn socket_addr(&self, default_port: u16) -> Option<SocketAddrV4> {
        match self.addr() {
            NidAddr::Ip(ip) => Some(SocketAddrV4::new(ip, default_port)),
            NidAddr::IpPort(sa) => Some(sa),
            NidAddr::Num(_) => None,
        }
    }
}

impl fmt::Display for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.addr(), self.net())
    }
}

/// Debug prints the NID as written (`10.0.0.1@tcp`): events and logs stay readable.
impl fmt::Debug for Nid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a NID or net. Every variant says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NidError {
    #[error("invalid NID {input:?}: expected ADDRESS@NET, e.g. 10.0.0.1@tcp or 3@mem")]
    MissingAt { input: String },
    #[error("invalid NID {input:?}: the address before '@' is empty; expected e.g. 10.0.0.1@tcp")]
    EmptyAddress { input: String },
    #[error("invalid net {net:?}: expected a network type (tcp, o2ib, mem, lo) followed by an optional number, e.g. tcp or o2ib3")]
    UnknownNetType { net: String },
    #[error("invalid net {net:?}: expected a net number from 0 to 65535 after {kind:?}")]
    BadNetNumber { net: String, kind: &'static str },
    #[error("invalid net {net:?}: the lo net has no number; expected lo")]
    NumberedLo { net: String },
    #[error("invalid address {addr:?} for net {net}: expected {expected}")]
    BadAddress {
        addr: String,
        net: Net,
        expected: &'static str,
    },
}

impl FromStr for Net {
    type Err = NidError;

    fn from_str(s: &str) -> Result<Net, NidError> {
        let unknown = || NidError::UnknownNetType { net: s.to_owned() };
        let kind = LndKind::ALL
            .into_iter()
            .find(|k| s.starts_with(k.name()))
            .ok_or_else(unknown)?;
        let digits = &s[kind.name().len()..];
        if digits.is_empty() {
            return Ok(Net::new(kind, 0));
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        let num = digits.parse::<u16>().map_err(|_| NidError::BadNetNumber {
            net: s.to_owned(),
            kind: kind.name(),
        })?;
        if kind == LndKind::Lo && num != 0 {
            return Err(NidError::NumberedLo { net: s.to_owned() });
        }
        Ok(Net::new(kind, num))
    }
}

impl FromStr for Nid {
    type Err = NidError;

    fn from_str(s: &str) -> Result<Nid, NidError> {
        let (addr, net) = s.rsplit_once('@').ok_or_else(|| NidError::MissingAt {
            input: s.to_owned(),
        })?;
        if addr.is_empty() {
            return Err(NidError::EmptyAddress {
                input: s.to_owned(),
            });
        }
        let net: Net = net.parse()?;
        let addr = parse_addr(addr, net)?;
        Ok(Nid::pack(addr, net))
    }
}

const EXPECT_IP: &str =
    "an IPv4 address, optionally with :PORT (1-65535), e.g. 10.0.0.1 or 127.0.0.1:7001";
const EXPECT_NUM: &str = "a number from 0 to 4294967295, e.g. 3";
const EXPECT_LO: &str = "0 (the only address on lo)";

fn parse_addr(s: &str, net: Net) -> Result<NidAddr, NidError> {
    let bad = |expected| NidError::BadAddress {
        addr: s.to_owned(),
        net,
        expected,
    };
    let addr = if net.kind.uses_ip() {
        match s.split_once(':') {
            None => NidAddr::Ip(s.parse().map_err(|_| bad(EXPECT_IP))?),
            Some((ip, port)) => {
                let ip = ip.parse().map_err(|_| bad(EXPECT_IP))?;
                let port = port.parse().map_err(|_| bad(EXPECT_IP))?;
                NidAddr::IpPort(SocketAddrV4::new(ip, port))
            }
        }
    } else {
        let expected = if net.kind == LndKind::Lo {
            EXPECT_LO
        } else {
            EXPECT_NUM
        };
        // u32::from_str accepts a leading '+'; NIDs do not.
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(expected));
        }
        NidAddr::Num(s.parse().map_err(|_| bad(expected))?)
    };
    check_addr_for_net(&addr, net).map_err(|e| match e {
        NidError::BadAddress { expected, .. } => bad(expected),
        other => other,
    })?;
    Ok(addr)
}

fn check_addr_for_net(addr: &NidAddr, net: Net) -> Result<(), NidError> {
    if addr_suits_net(addr, net) {
        return Ok(());
    }
    let expected = match net.kind {
        LndKind::Tcp | LndKind::O2ib => EXPECT_IP,
        LndKind::Mem => EXPECT_NUM,
        LndKind::Lo => EXPECT_LO,
    };
    Err(NidError::BadAddress {
        addr: addr.to_string(),
        net,
        expected,
    })
}

/// Whether `addr` is an address on `net`: [`check_addr_for_net`] without the reason.
fn addr_suits_net(addr: &NidAddr, net: Net) -> bool {
    Nid::pack(*addr, net).suits_its_net()
}

impl Nid {
    /// Whether the address is one of the net's kind: asked of every NID parsed, built or
    /// decoded (twice per frame), on the packed words.
    fn suits_its_net(&self) -> bool {
        const LO: u32 = kind_code(LndKind::Lo);
        const TCP: u32 = kind_code(LndKind::Tcp);
        const O2IB: u32 = kind_code(LndKind::O2ib);
        const MEM: u32 = kind_code(LndKind::Mem);
        let (net, addr) = (self.net.get(), self.addr);
        // A catch-all, which rustc turns into fewer instructions than every pair spelled
        // out; `every_kind_decodes_its_own_addresses` makes a new kind be decided here.
        match (net >> 16, addr >> ADDR_KIND_SHIFT) {
            (TCP | O2IB, 1) => true,
            (TCP | O2IB, 2) => addr as u16 != 0,
            (MEM, 0) => true,
            // 0@lo: address 0 on net number 0.
            (LO, 0) => addr == 0 && net as u16 == 0,
            _ => false,
        }
    }
}

/// A kind's code in [`Net::word`]: its wire value, never zero, in the kinds' order.
const fn kind_code(kind: LndKind) -> u32 {
    kind.wire() as u32
}

// What the packed words promise, checked where they are made: the kinds' wire values
// follow their declared (and compared) order, and an absent NID takes no more room.
const _: () = {
    let [a, b, c, d] = LndKind::ALL_IN_ORDER;
    assert!(a.wire() < b.wire() && b.wire() < c.wire() && c.wire() < d.wire());
    assert!(size_of::<Option<Nid>>() == size_of::<Nid>());
};

/// Size of a NID on the wire.
pub(crate) const NID_WIRE_LEN: usize = 16;

// Wire layout (little-endian): kind u8, address kind u8, net number u16, address u32,
// port u16, six reserved zero bytes.
const ADDR_NUM: u8 = 0;
const ADDR_IP: u8 = 1;
const ADDR_IP_PORT: u8 = 2;

impl Nid {
    pub(crate) fn encode(&self, out: &mut [u8; NID_WIRE_LEN]) {
        let (akind, value, port) = match self.addr() {
            NidAddr::Num(n) => (ADDR_NUM, n, 0u16),
            NidAddr::Ip(ip) => (ADDR_IP, u32::from(ip), 0),
            NidAddr::IpPort(sa) => (ADDR_IP_PORT, u32::from(*sa.ip()), sa.port()),
        };
        out.fill(0);
        let net = self.net.get();
        // A kind's code in the net word is its wire value.
        out[0] = (net >> 16) as u8;
        out[1] = akind;
        out[2..4].copy_from_slice(&(net as u16).to_le_bytes());
        out[4..8].copy_from_slice(&value.to_le_bytes());
        out[8..10].copy_from_slice(&port.to_le_bytes());
    }

    /// Decodes a wire NID; `None` for anything that `encode` cannot have produced.
    pub(crate) fn decode(b: &[u8; NID_WIRE_LEN]) -> Option<Nid> {
        let kind = LndKind::from_wire(b[0])?;
        let num = u16::from_le_bytes([b[2], b[3]]);
        let value = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let port = u16::from_le_bytes([b[8], b[9]]);
        let reserved =
            u32::from_le_bytes([b[10], b[11], b[12], b[13]]) | u32::from(b[14]) | u32::from(b[15]);
        if reserved != 0 {
            return None;
        }
        let (value, port) = (u64::from(value), u64::from(port));
        let addr = match (b[1], port) {
            (ADDR_NUM, 0) => value,
            (ADDR_IP, 0) => 1 << ADDR_KIND_SHIFT | value,
            // Never encoded with its net's default port (`pack` drops it).
            (ADDR_IP_PORT, p) if !is_default_port(kind, p as u16) => {
                2 << ADDR_KIND_SHIFT | value << 16 | p
            }
            _ => return None,
        };
        let nid = Nid {
            addr,
            net: Net::new(kind, num).word(),
        };
        nid.suits_its_net().then_some(nid)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nid(s: &str) -> Nid {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_documented_examples() {
        let n = nid("10.0.0.1@tcp");
        assert_eq!(n.net(), Net::new(LndKind::Tcp, 0));
        assert_eq!(n.addr(), NidAddr::Ip(Ipv4Addr::new(10, 0, 0, 1)));

        let n = nid("10.0.0.1:7001@tcp1");
        assert_eq!(n.net(), Net::new(LndKind::Tcp, 1));
        assert_eq!(
            n.addr(),
            NidAddr::IpPort(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7001))
        );

        assert_eq!(nid("192.168.5.2@o2ib3").net(), Net::new(LndKind::O2ib, 3));
        assert_eq!(nid("0@lo"), Nid::LO);
        assert_eq!(nid("3@mem"), Nid::mem(3, 0));
    }

    /// Writing out the LND's default port names the same node, on the wire too; another
    /// kind's default port is just a port.
    #[test]
    fn a_default_port_is_the_nid_without_it() {
        assert_eq!(nid("10.0.0.1:988@tcp1"), nid("10.0.0.1@tcp1"));
        assert_eq!(nid("10.0.0.1:988@tcp1").to_string(), "10.0.0.1@tcp1");
        assert_eq!(nid("10.0.0.1:987@o2ib"), nid("10.0.0.1@o2ib"));
        let net = Net::new(LndKind::Tcp, 1);
        let with_port = NidAddr::IpPort(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 988));
        assert_eq!(Nid::new(with_port, net), Ok(nid("10.0.0.1@tcp1")));
        let other = nid("10.0.0.1:987@tcp1");
        assert_ne!(other, nid("10.0.0.1@tcp1"));
        assert_eq!(other.to_string(), "10.0.0.1:987@tcp1");
        // The wire never carries a default port: such bytes are not a NID `encode` makes.
        let mut b = [0u8; NID_WIRE_LEN];
        other.encode(&mut b);
        assert_eq!(Nid::decode(&b), Some(other));
        b[8..10].copy_from_slice(&988u16.to_le_bytes());
        assert_eq!(Nid::decode(&b), None);
    }

    #[test]
    fn prints_canonically() {
        for (input, printed) in [
            ("10.0.0.1@tcp", "10.0.0.1@tcp"),
            ("10.0.0.1@tcp0", "10.0.0.1@tcp"),
            ("127.0.0.1:7001@tcp1", "127.0.0.1:7001@tcp1"),
            ("192.168.5.2@o2ib3", "192.168.5.2@o2ib3"),
            ("0@lo", "0@lo"),
            ("3@mem", "3@mem"),
            ("3@mem007", "3@mem7"),
        ] {
            assert_eq!(nid(input).to_string(), printed, "{input}");
        }
    }

    #[test]
    fn rejects_malformed_input_saying_what_was_expected() {
        let cases: &[(&str, &str)] = &[
            ("10.0.0.1", "expected ADDRESS@NET"),
            ("", "expected ADDRESS@NET"),
            ("@tcp", "address before '@' is empty"),
            ("10.0.0.1@", "expected a network type"),
            ("10.0.0.1@udp", "expected a network type"),
            ("10.0.0.1@tcpx", "expected a network type"),
            ("10.0.0.1@tcp-1", "expected a network type"),
            ("10.0.0.1@tcp65536", "net number from 0 to 65535"),
            ("0@lo1", "the lo net has no number"),
            ("10.0.0@tcp", "expected an IPv4 address"),
            ("10.0.0.256@tcp", "expected an IPv4 address"),
            (
                "10.0.0.1:0@tcp",
                "expected an IPv4 address, optionally with :PORT (1-65535)",
            ),
            ("10.0.0.1:70000@tcp", "optionally with :PORT"),
            ("10.0.0.1:@tcp", "optionally with :PORT"),
            ("3@tcp", "expected an IPv4 address"),
            ("10.0.0.1@mem", "expected a number"),
            ("+3@mem", "expected a number"),
            ("4294967296@mem", "expected a number"),
            ("1@lo", "0 (the only address on lo)"),
            ("a@b@tcp", "expected an IPv4 address"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Nid>().expect_err(input).to_string();
            assert!(
                err.contains(expected),
                "{input:?}: {err:?} lacks {expected:?}"
            );
        }
    }

    #[test]
    fn wire_encoding_rejects_garbage() {
        let mut b = [0u8; NID_WIRE_LEN];
        nid("127.0.0.1:7001@tcp1").encode(&mut b);
        assert_eq!(Nid::decode(&b), Some(nid("127.0.0.1:7001@tcp1")));
        let mut bad_kind = b;
        bad_kind[0] = 9;
        assert_eq!(Nid::decode(&bad_kind), None);
        for i in 10..NID_WIRE_LEN {
            let mut reserved = b;
            reserved[i] = 1;
            assert_eq!(Nid::decode(&reserved), None, "reserved byte {i}");
        }
        let mut port_on_num = [0u8; NID_WIRE_LEN];
        Nid::mem(3, 0).encode(&mut port_on_num);
        port_on_num[8] = 1;
        assert_eq!(Nid::decode(&port_on_num), None);
        // Well-formed fields that do not suit the net, as parsing refuses them too.
        let mut num_on_tcp = [0u8; NID_WIRE_LEN];
        Nid::mem(3, 0).encode(&mut num_on_tcp);
        num_on_tcp[0] = LndKind::Tcp.wire();
        assert_eq!(Nid::decode(&num_on_tcp), None);
        let mut ip_on_mem = b;
        ip_on_mem[0] = LndKind::Mem.wire();
        assert_eq!(Nid::decode(&ip_on_mem), None);
        let mut numbered_lo = [0u8; NID_WIRE_LEN];
        Nid::LO.encode(&mut numbered_lo);
        assert_eq!(Nid::decode(&numbered_lo), Some(Nid::LO));
        let mut one_at_lo = numbered_lo;
        one_at_lo[4] = 1;
        assert_eq!(Nid::decode(&one_at_lo), None, "1@lo");
        let mut ip_on_lo = b;
        ip_on_lo[0] = LndKind::Lo.wire();
        ip_on_lo[2..4].fill(0);
        assert_eq!(Nid::decode(&ip_on_lo), None);
        let mut plain_ip = [0u8; NID_WIRE_LEN];
        nid("10.0.0.1@tcp").encode(&mut plain_ip);
        assert_eq!(Nid::decode(&plain_ip), Some(nid("10.0.0.1@tcp")));
        plain_ip[0] = LndKind::Mem.wire();
        assert_eq!(Nid::decode(&plain_ip), None, "an IP address on mem");
        numbered_lo[2] = 1;
        assert_eq!(Nid::decode(&numbered_lo), None);
        let mut zero_port = b;
        zero_port[8..10].fill(0);
        assert_eq!(Nid::decode(&zero_port), None, "an explicit port 0");
    }

    /// The wire layout itself, byte for byte (the round-trip test would pass a changed
    /// layout that decodes what it encodes): what every peer of another build expects.
    #[test]
    fn wire_layout_is_the_documented_one() {
        let cases: [(&str, [u8; NID_WIRE_LEN]); 4] = [
            (
                "127.0.0.1:7001@tcp1",
                [2, 2, 1, 0, 1, 0, 0, 127, 0x59, 0x1b, 0, 0, 0, 0, 0, 0],
            ),
            (
                "10.0.0.1@o2ib3",
                [3, 1, 3, 0, 1, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                "4000000000@mem65535",
                [4, 0, 255, 255, 0, 0x28, 0x6b, 0xee, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            ("0@lo", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for (text, wire) in cases {
            let mut b = [0xaa; NID_WIRE_LEN];
            nid(text).encode(&mut b);
            assert_eq!(b, wire, "{text}");
            assert_eq!(Nid::decode(&wire), Some(nid(text)), "{text}");
        }
    }

    /// Every kind has addresses that decode (a kind added without deciding its addresses in
    /// `Nid::suits_its_net` would decode none): the match below has no catch-all, so a new
    /// kind must be given an example here.
    #[test]
    fn every_kind_decodes_its_own_addresses() {
        for kind in LndKind::ALL {
            let example = match kind {
                LndKind::Lo => "0@lo",
                LndKind::Tcp => "10.0.0.1:7001@tcp3",
                LndKind::O2ib => "10.0.0.1@o2ib",
                LndKind::Mem => "7@mem2",
            };
            let n = nid(example);
            let mut b = [0u8; NID_WIRE_LEN];
            n.encode(&mut b);
            assert_eq!(Nid::decode(&b), Some(n), "{example}");
        }
    }

    /// Addresses of different variants whose bits are the same below the variant tag:
    /// only the tag keeps their packed words apart.
    #[test]
    fn packed_words_keep_address_variants_apart() {
        let ip = |x: u32| NidAddr::Ip(Ipv4Addr::from(x));
        let ip_port = |x: u32, p: u16| NidAddr::IpPort(SocketAddrV4::new(Ipv4Addr::from(x), p));
        let net = Net::new(LndKind::Tcp, 0);
        let pairs = [
            (NidAddr::Num(0x0a00_0001), ip(0x0a00_0001)),
            // 0.0.0.1 port 2 packs to 0x1_0002 below its tag, as does 0.1.0.2.
            (ip(0x0001_0002), ip_port(1, 2)),
            (NidAddr::Num(0x0001_0002), ip_port(1, 2)),
        ];
        for (x, y) in pairs {
            let (a, b) = (Nid::pack(x, net), Nid::pack(y, net));
            assert_ne!(a, b);
            assert_eq!((a.addr(), b.addr()), (x, y));
        }
    }

    /// A port no LND takes by default: a NID with a default port is the NID without it
    /// (see [`a_default_port_is_the_nid_without_it`]).
    fn any_port() -> impl Strategy<Value = u16> {
        (1u16..).prop_filter("a default port", |&p| {
            LndKind::ALL.iter().all(|k| k.default_port() != Some(p))
        })
    }

    pub(crate) fn any_nid() -> impl Strategy<Value = Nid> {
        any_parts().prop_map(|(addr, net)| Nid::pack(addr, net))
    }

    /// The address and net of a valid NID.
    fn any_parts() -> impl Strategy<Value = (NidAddr, Net)> {
        let ip = any::<u32>().prop_map(Ipv4Addr::from);
        let ip_addr = prop_oneof![
            ip.clone().prop_map(NidAddr::Ip),
            (ip, any_port()).prop_map(|(ip, p)| NidAddr::IpPort(SocketAddrV4::new(ip, p))),
        ];
        prop_oneof![
            (ip_addr.clone(), any::<u16>()).prop_map(|(a, n)| (a, Net::new(LndKind::Tcp, n))),
            (ip_addr, any::<u16>()).prop_map(|(a, n)| (a, Net::new(LndKind::O2ib, n))),
            (any::<u32>(), any::<u16>())
                .prop_map(|(a, n)| (NidAddr::Num(a), Net::new(LndKind::Mem, n))),
            Just((NidAddr::Num(0), Net::new(LndKind::Lo, 0))),
        ]
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(n in any_nid()) {
            let text = n.to_string();
            prop_assert_eq!(text.parse::<Nid>(), Ok(n));
        }

        #[test]
        fn wire_round_trips(n in any_nid()) {
            let mut b = [0u8; NID_WIRE_LEN];
            n.encode(&mut b);
            prop_assert_eq!(Nid::decode(&b), Some(n));
        }

        /// The packed words are one-to-one and ordered as (address, net) field by field:
        /// NIDs that differ in one field never compare equal, and sort as their parts.
        #[test]
        fn packed_words_are_one_to_one_and_keep_the_order(
            a in any_parts(),
            b in any_parts(),
            port in any_port(),
        ) {
            let (addr, net) = a;
            let mut near = vec![b, (addr, Net::new(net.kind, net.num.wrapping_add(1)))];
            // The same address on every kind of net, whether or not it suits it: the kinds
            // must compare in their order.
            near.extend(LndKind::ALL.map(|k| (addr, Net::new(k, net.num))));
            let ip = match addr {
                NidAddr::Ip(ip) => Some(ip),
                NidAddr::IpPort(sa) => Some(*sa.ip()),
                NidAddr::Num(_) => None,
            };
            if let Some(ip) = ip {
                near.push((NidAddr::Ip(ip), net));
                near.push((NidAddr::IpPort(SocketAddrV4::new(ip, port)), net));
                near.push((NidAddr::Num(u32::from(ip)), net));
            }
            let packed = Nid::pack(addr, net);
            prop_assert_eq!((packed.addr(), packed.net()), a);
            for c in near {
                let other = Nid::pack(c.0, c.1);
                prop_assert_eq!(packed == other, a == c, "{} and {}", packed, other);
                prop_assert_eq!(packed.cmp(&other), a.cmp(&c), "{} and {}", packed, other);
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
            if let Ok(n) = s.parse::<Nid>() {
                // Whatever parses prints to something that parses to the same NID.
                prop_assert_eq!(n.to_string().parse::<Nid>(), Ok(n));
            }
        }
    }
}
