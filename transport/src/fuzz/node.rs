//! The stateful target: one node, a router on two nets with a route beyond them, driven by
//! an LND that keeps its contract (`crate::lnd`) on behalf of peers that send whatever the
//! fuzzer says: any header that decodes, forged sources, HELLOs offering any credits,
//! connections that come and go, sends and fetches that fail, time that jumps. Checked:
//! no panic; every operation completes exactly once (none completes unsubmitted); the
//! node keeps the LND contract (it fetches or declines only payloads it was offered, each
//! once); and once everything has failed and time has passed, what the node holds is
//! bounded by its configuration, not by what it was sent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::config::NodeConfig;
use crate::handshake::PeerHello;
use crate::lane::Lane;
use crate::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, RxPayload, TxToken};
use crate::nid::Nid;
use crate::node::{LndRequest, NiId, Node, Route};
use crate::op::{Event, GetRequest, MatchEntry, OpId, PeerDownPolicy, PingRequest, PutRequest};
use crate::time::Time;
use crate::wire::{self, HeaderCheck, Limits, HEADER_LEN};

/// The fuzzer's bytes, read as the arguments of one instruction after another; zeros
/// once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (now, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        now
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[usize::from(self.byte()) % from.len()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const ME: u32 = 1;
/// Peers on each of the two nets.
const PEERS: u32 = 4;
/// The net beyond them, reached through peer 2 of either net.
const FAR_NET: u16 = 2;
/// Peers remembered while idle: few, so that the fuzzer's runs forget peers often.
const MAX_IDLE: usize = 4;
/// Instructions run at most, whatever the input's length.
const MAX_STEPS: usize = 2_000;

fn peer(index: u8) -> Nid {
    let net = u16::from(index / 4 % 2);
    Nid::mem(2 + u32::from(index) % PEERS, net)
}

fn error_kind(b: u8) -> LndErrorKind {
    [
        LndErrorKind::Refused,
        LndErrorKind::Reset,
        LndErrorKind::TimedOut,
        LndErrorKind::Unreachable,
        LndErrorKind::Protocol,
        LndErrorKind::Resource,
        LndErrorKind::Closed,
    ][usize::from(b) % 7]
}

/// A connection the LND has reported up, and the life it belongs to.
#[derive(Clone, Copy)]
struct Up {
    hello: PeerHello,
    /// The credits we offered in our HELLO: a repeated `Connected` says them again.
    local_credits: u16,
    life: u64,
}

struct Posted {
    ni: NiId,
    token: TxToken,
    /// The connection's life it was posted on; `None` if none was up (it can only fail).
    life: Option<u64>,
}

struct Run {
    node: Node,
    now: Time,
    nis: [NiId; 2],
    up: BTreeMap<(Nid, Lane), Up>,
    lives: u64,
    /// Connect requests not yet answered.
    connecting: Vec<(NiId, Nid, Lane)>,
    posted: Vec<Posted>,
    /// Deferred payloads offered and not yet fetched or declined, with their length.
    deferred: BTreeMap<(NiId, u64), u32>,
    /// Fetches asked for: the sink, and the payload's length.
    fetches: Vec<(NiId, RxHandle, BytesMut, u32)>,
    next_handle: u64,
    /// Completions seen, per operation submitted.
    ops: BTreeMap<OpId, u32>,
    entries: BTreeSet<OpId>,
    next_op: u64,
    delivered: usize,
    /// `LANET_FUZZ_TRACE` set: what happens is printed (to debug a failing input).
    trace: bool,
}

fn config() -> NodeConfig {
    // Incarnation 0: the node's requests count from 1 (see `Ops::new`), the ids its
    // answers in the corpus and the regression inputs were found with.
    let mut cfg = NodeConfig::new(0);
    cfg.forwarding = true;
    cfg.op_timeout = Duration::from_secs(2);
    cfg.max_payload = 4096;
    cfg.max_undelivered = 16;
    cfg.max_idle_peers = MAX_IDLE;
    cfg
}

impl Run {
    fn new() -> Run {
        let mut node = Node::new(config());
        let nis = [
            node.add_ni(Nid::mem(ME, 0)).expect("first NI"),
            node.add_ni(Nid::mem(ME, 1)).expect("second NI"),
        ];
        for gateway in [Nid::mem(2, 0), Nid::mem(2, 1)] {
            let route = Route {
                net: Nid::mem(0, FAR_NET).net(),
                gateway,
                hops: 1,
                priority: 0,
            };
            node.add_route(route).expect("route");
        }
        Run {
            node,
            now: Time::ZERO,
            nis,
            up: BTreeMap::new(),
            lives: 0,
            connecting: Vec::new(),
            posted: Vec::new(),
            deferred: BTreeMap::new(),
            fetches: Vec::new(),
            next_handle: 1,
            ops: BTreeMap::new(),
            entries: BTreeSet::new(),
            next_op: 1,
            delivered: 0,
            trace: std::env::var_os("LANET_FUZZ_TRACE").is_some(),
        }
    }

    fn ni_of(&self, nid: Nid) -> NiId {
        self.nis[usize::from(nid.net().num != 0)]
    }

    fn event(&mut self, ni: NiId, event: LndEvent) {
        if self.trace {
            eprintln!("{:?} {ni:?} <- {event:?}", self.now);
        }
        self.node.handle_lnd_event(self.now, ni, event);
        self.collect();
    }

    /// Takes what the node asks of its LND and what it reports, and checks it.
    fn collect(&mut self) {
        loop {
            let mut any = false;
            let for_drivers = self.node.has_output();
            while let Some((ni, tx)) = self.node.poll_transmit() {
                any = true;
                // With or without a checksum: the connection it was made for may have been
                // replaced by one that says otherwise since (the flow tests check which).
                let up = self.up.get(&(tx.peer, tx.lane));
                let limits = Limits::new(self.node.config().max_payload, HeaderCheck::Link);
                let decoded = wire::decode_header(&tx.header, &limits);
                if self.trace {
                    eprintln!("    {ni:?} -> {} {}: {decoded:?}", tx.peer, tx.lane);
                }
                let life = up.map(|u| u.life);
                assert!(
                    decoded.is_ok(),
                    "the node sends only headers that decode: {decoded:?}"
                );
                self.posted.push(Posted {
                    ni,
                    token: tx.token,
                    life,
                });
            }
            while let Some((ni, request)) = self.node.poll_request() {
                any = true;
                if self.trace {
                    eprintln!("    {ni:?} asks {request:?}");
                }
                match request {
                    LndRequest::Connect { peer, lane } => self.connecting.push((ni, peer, lane)),
                    LndRequest::Close { peer, lane, error } => {
                        if self.up.remove(&(peer, lane)).is_some() {
                            self.node.handle_lnd_event(
                                self.now,
                                ni,
                                LndEvent::Disconnected { peer, lane, error },
                            );
                        }
                    }
                    LndRequest::Fetch { handle, sink } => {
                        let len = self.deferred.remove(&(ni, handle.0));
                        let len = len.expect("the node fetches only what it was offered, once");
                        self.fetches.push((ni, handle, sink, len));
                    }
                    LndRequest::Decline { handle } => {
                        let offered = self.deferred.remove(&(ni, handle.0));
                        assert!(offered.is_some(), "declined a payload not offered");
                    }
                }
            }
            assert_eq!(
                for_drivers, any,
                "has_output said {for_drivers}; the polls found the opposite"
            );
            while let Some(event) = self.node.poll_event() {
                any = true;
                if self.trace {
                    eprintln!("    reports {event:?}");
                }
                match event {
                    Event::Completed(c) => {
                        let n = self.ops.get_mut(&c.op);
                        let n = n.unwrap_or_else(|| panic!("{} completed, never submitted", c.op));
                        *n += 1;
                        assert_eq!(*n, 1, "{} completed twice: {:?}", c.op, c.result);
                        self.entries.remove(&c.op);
                    }
                    Event::Delivered(_) => self.delivered += 1,
                    _ => {}
                }
            }
            if !any {
                return;
            }
        }
    }

    fn submit_id(&mut self) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        id
    }

    /// The node took operation `id` (or refused the submission, and owes nothing).
    fn submitted(&mut self, id: OpId, taken: bool) {
        if self.trace {
            eprintln!("{:?} submitted {id}: taken {taken}", self.now);
        }
        if taken {
            self.ops.insert(id, 0);
        }
        self.collect();
    }

    fn step(&mut self, input: &mut Input) {
        match input.byte() % 14 {
            0 => {
                // A peer dials us (or answers the dial of ours it satisfies).
                let nid = peer(input.byte());
                let lane = if input.byte().is_multiple_of(2) {
                    Lane::Data
                } else {
                    Lane::Health
                };
                let hello = PeerHello {
                    nid,
                    incarnation: u64::from(input.byte() % 3) + 1,
                    lane,
                    credits: input.u16().max(1),
                    max_payload: [0, 64, 4096, 1 << 20][usize::from(input.byte() % 4)],
                    header_check: header_check(input.byte()),
                };
                self.connected(nid, lane, hello, input.byte());
            }
            1 => {
                let Some(i) = input.pick(&(0..self.connecting.len()).collect::<Vec<_>>()) else {
                    return;
                };
                let (ni, nid, lane) = self.connecting.remove(i);
                if let Some(up) = self.up.get(&(nid, lane)).copied() {
                    // Up already: the LND says so again, with what it said first.
                    self.report_connected(ni, nid, lane, up);
                } else if input.byte().is_multiple_of(3) {
                    let error = LndError::new(error_kind(input.byte()), "fuzz: connect failed");
                    self.event(
                        ni,
                        LndEvent::ConnectFailed {
                            peer: nid,
                            lane,
                            error,
                        },
                    );
                } else {
                    let hello = PeerHello {
                        nid,
                        incarnation: u64::from(input.byte() % 3) + 1,
                        lane,
                        credits: input.u16().max(1),
                        max_payload: 1 << 20,
                        header_check: header_check(input.byte()),
                    };
                    self.connected(nid, lane, hello, input.byte());
                }
            }
            2 => {
                let keys: Vec<_> = self.up.keys().copied().collect();
                let Some((nid, lane)) = input.pick(&keys) else {
                    return;
                };
                self.up.remove(&(nid, lane));
                let error = LndError::new(error_kind(input.byte()), "fuzz: connection lost");
                self.event(
                    self.ni_of(nid),
                    LndEvent::Disconnected {
                        peer: nid,
                        lane,
                        error,
                    },
                );
            }
            3 => self.receive(input),
            4 => {
                if self.posted.is_empty() {
                    return;
                }
                let i = usize::from(input.byte()) % self.posted.len();
                let p = self.posted.swap_remove(i);
                let alive = p.life.is_some() && self.up.values().any(|u| Some(u.life) == p.life);
                let result = if alive && !input.byte().is_multiple_of(4) {
                    Ok(())
                } else {
                    Err(LndError::new(error_kind(input.byte()), "fuzz: send failed"))
                };
                self.event(
                    p.ni,
                    LndEvent::SendComplete {
                        token: p.token,
                        result,
                    },
                );
            }
            5 => {
                if self.fetches.is_empty() {
                    return;
                }
                let i = usize::from(input.byte()) % self.fetches.len();
                let (ni, handle, mut sink, len) = self.fetches.swap_remove(i);
                let result = if input.byte().is_multiple_of(4) {
                    Err(LndError::new(
                        error_kind(input.byte()),
                        "fuzz: fetch failed",
                    ))
                } else {
                    // The driver moves the payload's bytes into the sink, after what is there.
                    let fill = input.byte();
                    sink.resize(sink.len() + len as usize, fill);
                    Ok(sink.freeze())
                };
                self.event(ni, LndEvent::Fetched { handle, result });
            }
            6 => self.submit(input),
            7 => {
                let id = self.submit_id();
                let portal = u32::from(input.byte() % 3);
                let match_bits = u64::from(input.byte() % 4);
                let mut entry = if input.byte().is_multiple_of(2) {
                    MatchEntry::sink(portal, match_bits, u32::from(input.u16()))
                } else {
                    let data = Bytes::from(vec![7u8; usize::from(input.byte()) * 16]);
                    let mut e = MatchEntry::sink(portal, match_bits, 0);
                    e.kind = crate::op::EntryKind::Source { data };
                    e
                };
                entry.once = input.byte().is_multiple_of(2);
                entry.ignore_bits = u64::from(input.byte() % 2);
                let taken = self.node.attach(id, entry).is_ok();
                if taken {
                    self.entries.insert(id);
                }
                self.submitted(id, taken);
            }
            8 => {
                let live: Vec<OpId> = self
                    .ops
                    .iter()
                    .filter(|(_, &n)| n == 0)
                    .map(|(&id, _)| id)
                    .collect();
                if let Some(id) = input.pick(&live) {
                    self.node.cancel(id);
                    self.collect();
                }
            }
            9 => {
                let unit = [1_000u64, 1_000_000, 50_000_000][usize::from(input.byte() % 3)];
                self.advance(Duration::from_nanos(u64::from(input.byte()) * unit));
            }
            10 => {
                let n = usize::from(input.byte()).min(self.delivered);
                self.delivered -= n;
                self.node.deliveries_consumed(n);
                self.collect();
            }
            11 => {
                let gateway = peer(input.byte());
                if input.byte().is_multiple_of(2) {
                    let route = Route {
                        net: Nid::mem(0, FAR_NET).net(),
                        gateway,
                        hops: 1 + input.byte() % 3,
                        priority: input.byte() % 2,
                    };
                    let _ = self.node.add_route(route);
                } else {
                    self.node.remove_route(Nid::mem(0, FAR_NET).net(), gateway);
                }
                self.collect();
            }
            12 => {
                let nid = peer(input.byte());
                let _ = self.node.watch(self.now, nid);
                self.collect();
            }
            _ => {
                // The application stops, rarely: an abort ends everything at once.
                if input.byte() == 0xa5 {
                    self.node.shutdown();
                    self.collect();
                }
            }
        }
    }

    fn connected(&mut self, nid: Nid, lane: Lane, hello: PeerHello, local: u8) {
        let ni = self.ni_of(nid);
        if self.up.remove(&(nid, lane)).is_some() {
            // The peer dialled again: the old connection goes first (the contract).
            let error = LndError::new(LndErrorKind::Reset, "fuzz: replaced");
            self.event(
                ni,
                LndEvent::Disconnected {
                    peer: nid,
                    lane,
                    error,
                },
            );
        }
        self.lives += 1;
        let local_credits = self.node.config().lanes[lane]
            .peer_credits
            .min(u16::from(local).max(1));
        let up = Up {
            hello,
            local_credits,
            life: self.lives,
        };
        self.up.insert((nid, lane), up);
        self.connecting.retain(|&(_, n, l)| (n, l) != (nid, lane));
        self.report_connected(ni, nid, lane, up);
    }

    fn report_connected(&mut self, ni: NiId, peer: Nid, lane: Lane, up: Up) {
        let ev = LndEvent::Connected {
            peer,
            lane,
            hello: up.hello,
            local_credits: up.local_credits,
        };
        self.event(ni, ev);
    }

    /// A frame from a connected peer: any header that decodes (the LND decodes it and
    /// closes the connection if it does not), sources forged or not.
    fn receive(&mut self, input: &mut Input) {
        let keys: Vec<_> = self.up.keys().copied().collect();
        let Some((hop, lane)) = input.pick(&keys) else {
            return;
        };
        let ni = self.ni_of(hop);
        let mut raw = [0u8; HEADER_LEN];
        raw.copy_from_slice(&{
            let mut b = input.take(HEADER_LEN).to_vec();
            b.resize(HEADER_LEN, 0);
            b
        });
        let limits = Limits::new(self.node.config().max_payload, HeaderCheck::Crc32);
        let decoded = wire::decode_header(&super::with_valid_envelope(&raw), &limits);
        let Ok(mut h) = decoded else {
            self.up.remove(&(hop, lane));
            let error = LndError::new(LndErrorKind::Protocol, "fuzz: did not decode");
            return self.event(
                ni,
                LndEvent::Disconnected {
                    peer: hop,
                    lane,
                    error,
                },
            );
        };
        // Most frames come from the hop itself or through it, to us or beyond: steer the
        // NIDs there, since random ones seldom decode.
        match input.byte() % 4 {
            0 => h.src = hop,
            1 => h.src = peer(input.byte()),
            2 => h.src = Nid::mem(u32::from(input.u16()), FAR_NET),
            _ => {}
        }
        match input.byte() % 4 {
            0 => h.dst = Nid::mem(ME, hop.net().num),
            1 => h.dst = peer(input.byte()),
            2 => h.dst = Nid::mem(u32::from(input.byte()), FAR_NET),
            _ => {}
        }
        // What the steered header would have been on the wire, checked as the LND would.
        let Ok(h) = wire::decode_header(&wire::encode_header(&h), &limits) else {
            return;
        };
        let len = h.payload_len;
        let payload = if len > 0 && lane == Lane::Data && input.byte().is_multiple_of(3) {
            let handle = RxHandle(self.next_handle);
            self.next_handle += 1;
            self.deferred.insert((ni, handle.0), len);
            RxPayload::Deferred { handle, len }
        } else {
            let fill = input.byte();
            RxPayload::Inline(Bytes::from(vec![fill; len as usize]))
        };
        self.event(
            ni,
            LndEvent::Received {
                peer: hop,
                lane,
                header: h,
                payload,
            },
        );
    }

    fn submit(&mut self, input: &mut Input) {
        let id = self.submit_id();
        let dst = match input.byte() % 4 {
            0 | 1 => peer(input.byte()),
            2 => Nid::mem(9, FAR_NET),
            _ => Nid::mem(ME, 0),
        };
        let lane = if input.byte().is_multiple_of(5) {
            Lane::Health
        } else {
            Lane::Data
        };
        let timeout = [
            None,
            Some(Duration::from_millis(1)),
            Some(Duration::from_millis(300)),
        ][usize::from(input.byte() % 3)];
        let on_peer_down = if input.byte().is_multiple_of(2) {
            PeerDownPolicy::Fail
        } else {
            PeerDownPolicy::Wait
        };
        let (portal, match_bits) = (u32::from(input.byte() % 3), u64::from(input.byte() % 4));
        let taken = match input.byte() % 3 {
            0 => {
                // One draw sizes the payload and says whether an ACK is wanted (inputs
                // recorded before the option keep their meaning but for that).
                let drawn = input.u16();
                let payload = Bytes::from(vec![3u8; usize::from(drawn % 5000)]);
                let req = PutRequest {
                    dst,
                    lane,
                    portal,
                    match_bits,
                    payload,
                    timeout,
                    on_peer_down,
                    ack: (drawn / 5000).is_multiple_of(2),
                };
                self.node.put(self.now, id, req).is_ok()
            }
            1 => {
                let want_len = u32::from(input.u16() % 5000);
                let req = GetRequest {
                    dst,
                    lane,
                    portal,
                    match_bits,
                    want_len,
                    timeout,
                    on_peer_down,
                };
                self.node.get(self.now, id, req).is_ok()
            }
            _ => {
                let req = PingRequest {
                    dst,
                    lane,
                    timeout,
                    on_peer_down,
                };
                self.node.ping(self.now, id, req).is_ok()
            }
        };
        self.submitted(id, taken);
    }

    /// Time passes by `by`, the node's timers firing on the way as the driver fires them.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(due) = self.node.poll_timeout().filter(|&d| d <= until) {
            self.now = due.max(self.now);
            self.node.handle_timeout(self.now);
            self.collect();
        }
        self.now = until;
        self.node.handle_timeout(self.now);
        self.collect();
    }

    /// Every peer goes away, everything the LND holds fails, the application takes its
    /// deliveries and detaches, and time passes: then nothing may be left owed.
    fn quiesce(&mut self) {
        for id in self.entries.clone() {
            self.node.cancel(id);
        }
        self.collect();
        // Time passes before every round but the first, and the last round fails what the
        // node asked for during it: nothing is left hanging.
        for round in 0..=64 {
            if round > 0 {
                self.advance(Duration::from_secs(1));
            }
            for ((nid, lane), _) in std::mem::take(&mut self.up) {
                let error = LndError::new(LndErrorKind::Reset, "fuzz: all gone");
                self.event(
                    self.ni_of(nid),
                    LndEvent::Disconnected {
                        peer: nid,
                        lane,
                        error,
                    },
                );
            }
            for (ni, peer, lane) in std::mem::take(&mut self.connecting) {
                let error = LndError::new(LndErrorKind::Unreachable, "fuzz: all gone");
                self.event(ni, LndEvent::ConnectFailed { peer, lane, error });
            }
            for p in std::mem::take(&mut self.posted) {
                let result = Err(LndError::new(LndErrorKind::Reset, "fuzz: all gone"));
                self.event(
                    p.ni,
                    LndEvent::SendComplete {
                        token: p.token,
                        result,
                    },
                );
            }
            for (ni, handle, _, _) in std::mem::take(&mut self.fetches) {
                let result = Err(LndError::new(LndErrorKind::Reset, "fuzz: all gone"));
                self.event(ni, LndEvent::Fetched { handle, result });
            }
            self.node
                .deliveries_consumed(std::mem::take(&mut self.delivered));
            self.collect();
        }
        let owed: Vec<_> = self.ops.iter().filter(|(_, &n)| n == 0).collect();
        assert!(owed.is_empty(), "never completed: {owed:?}");
        assert_eq!(self.node.live_ops(), 0);
        assert!(
            self.deferred.is_empty(),
            "offered payloads neither fetched nor declined: {:?}",
            self.deferred.keys().collect::<Vec<_>>()
        );
        let held = self.node.footprint();
        if self.trace {
            for (nid, hop) in &self.node.hops {
                for lane in Lane::ALL {
                    let hl = &hop.lanes[lane];
                    let conn = match hl.conn {
                        crate::node::peers::Conn::Down => "down",
                        crate::node::peers::Conn::Connecting => "connecting",
                        crate::node::peers::Conn::Up { .. } => "up",
                    };
                    let kinds: Vec<&str> = hl
                        .queue
                        .iter()
                        .map(|p| match p {
                            crate::node::peers::Pending::Op { .. } => "op",
                            crate::node::peers::Pending::HealthPing { .. } => "health ping",
                            crate::node::peers::Pending::Forward(_) => "forward",
                            crate::node::peers::Pending::Status => "status",
                        })
                        .collect();
                    eprintln!(
                        "{nid} {lane}: {conn}, queued {kinds:?}, answers {}",
                        hl.answers.len()
                    );
                }
            }
        }
        let owed = held.ops
            + held.ops_indexed
            + held.queued
            + held.in_lnd
            + held.fetching
            + held.entry_lists
            + held.pool_buffers
            + held.pool_waiting
            + held.fault_delayed;
        assert_eq!(owed, 0, "still held when nothing is owed: {held:?}");
        // Peer tables: with nothing owed, a sweep leaves what the node still needs: the
        // neighbours and the one far end we send to. Frames from or to forged NIDs may
        // make it keep entries for them meanwhile, but not once idle.
        let neighbours = 2 * PEERS as usize;
        let (initiators, window) = (
            self.node.config().dedup_initiators,
            self.node.config().dedup_window,
        );
        self.node.forget_idle_now();
        let held = self.node.footprint();
        assert!(held.hops <= neighbours, "{held:?}");
        assert!(held.ends <= neighbours + 1, "{held:?}");
        assert!(held.health_peers <= neighbours + 1, "{held:?}");
        assert!(held.gateways <= 4 * neighbours, "{held:?}");
        assert!(held.dedup_initiators <= initiators, "{held:?}");
        assert!(held.dedup_entries <= initiators * window, "{held:?}");
    }
}

/// Runs the instructions `data` spells, then checks what is owed and held.
pub fn node(data: &[u8]) {
    let mut run = Run::new();
    let mut input = Input(data);
    let mut steps = 0;
    while !input.is_empty() && steps < MAX_STEPS {
        run.step(&mut input);
        steps += 1;
    }
    run.quiesce();
}

/// How headers to a fuzzed peer are protected (its driver's say).
fn header_check(byte: u8) -> HeaderCheck {
    match byte % 2 {
        0 => HeaderCheck::Crc32,
        _ => HeaderCheck::Link,
    }
}
