//! Operations, their completions, and the events a node reports to its application.
//!
//! Every operation handed to a node ends in exactly one [`Completion`]: `Ok` with an
//! [`OpOutcome`], or an [`OpError`] saying where it failed.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::lane::Lane;
use crate::nid::{Net, Nid};
use crate::time::Time;

/// Names one operation; chosen by the submitter, unique among its live operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// What an operation does when its peer is declared Down: LNet's "failout" (fail at once
/// with `PeerDead`: the default, so upper layers can recover elsewhere) or "failover" (stay
/// queued until the peer is back, or the operation's own deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PeerDownPolicy {
    #[default]
    Fail,
    Wait,
}

/// Send `payload` to (`dst`, `portal`, `match_bits`); completes when the target ACKs, or
/// without `ack` once the payload has left.
#[derive(Debug, Clone)]
pub struct PutRequest {
    pub dst: Nid,
    /// The lane to send on. PUT and GET travel on data lanes (today `Lane::Data`); the health
    /// lane refuses them, so nobody can use it as a fast path for data.
    pub lane: Lane,
    pub portal: u32,
    pub match_bits: u64,
    pub payload: Bytes,
    /// Time allowed from submission; the node's `op_timeout` when `None`.
    pub timeout: Option<Duration>,
    /// What happens if the peer is (or is declared) Down before this is sent.
    pub on_peer_down: PeerDownPolicy,
    /// Whether the target answers with an ACK (LNet's `LNET_ACK_REQ`): the PUT completes
    /// with [`OpOutcome::Put`] once it does, telling how many bytes it accepted.
    ///
    /// Without (`LNET_NOACK_REQ`, what RPC layers use for requests and replies, which
    /// answer themselves) it completes with [`OpOutcome::Sent`] once its driver is done
    /// with it, and the target sends nothing back, not even a refusal: half the frames,
    /// for a sender that learns of delivery some other way. It is sent at most once past
    /// our own queues: a router's refusal (NACK, even one that says it passed nothing on)
    /// or failure before its send completed fails it, where a PUT with ACK would be sent
    /// again another way. A refusal after that only counts in `late_responses`. Nothing
    /// waits for the target, so a silent one is not suspected on its account (watch it to
    /// learn it is Down), and failover groups refuse such PUTs (an answer is how a group
    /// learns its member failed).
    ///
    /// Targets and routers from before this option refuse such a PUT (a protocol error
    /// that closes the connection): upgrade them first.
    pub ack: bool,
}

impl PutRequest {
    /// Checks what can be checked before sending; the error says what is wrong.
    pub fn validate(&self, max_payload: u32) -> Result<(), String> {
        check_data_lane("PUT", self.lane)?;
        if self.payload.len() > max_payload as usize {
            return Err(format!(
                "payload of {} bytes exceeds max_payload ({max_payload})",
                self.payload.len()
            ));
        }
        Ok(())
    }
}

/// Fetch up to `want_len` bytes from (`dst`, `portal`, `match_bits`).
#[derive(Debug, Clone)]
pub struct GetRequest {
    pub dst: Nid,
    /// The lane to send on; see [`PutRequest::lane`].
    pub lane: Lane,
    pub portal: u32,
    pub match_bits: u64,
    pub want_len: u32,
    pub timeout: Option<Duration>,
    /// What happens if the peer is (or is declared) Down before this is sent.
    pub on_peer_down: PeerDownPolicy,
}

impl GetRequest {
    pub fn validate(&self, max_payload: u32) -> Result<(), String> {
        check_data_lane("GET", self.lane)?;
        if self.want_len > max_payload {
            return Err(format!(
                "want_len of {} bytes exceeds max_payload ({max_payload})",
                self.want_len
            ));
        }
        Ok(())
    }
}

fn check_data_lane(what: &str, lane: Lane) -> Result<(), String> {
    let ty = match what {
        "PUT" => crate::wire::FrameType::Put,
        _ => crate::wire::FrameType::Get,
    };
    if ty.allowed_on(lane) {
        Ok(())
    } else {
        Err(format!(
            "{what} cannot travel on the {lane} lane; use a data lane"
        ))
    }
}

/// Measure a round trip to `dst`: a PING answered by a PONG. On the health lane normally;
/// on the data lane only to measure what the health lane saves.
#[derive(Debug, Clone)]
pub struct PingRequest {
    pub dst: Nid,
    pub lane: Lane,
    pub timeout: Option<Duration>,
    /// What happens if the peer is (or is declared) Down before this is sent.
    pub on_peer_down: PeerDownPolicy,
}

/// What an attached entry does with a matching message.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// Accepts PUTs of up to `max_len` bytes.
    Sink { max_len: u32 },
    /// Answers GETs with (a prefix of) `data`.
    Source { data: Bytes },
}

/// A posted receive buffer or GET source, matched LNet-style: an incoming message on
/// `portal` matches when `(bits ^ match_bits) & !ignore_bits == 0`, the length fits and,
/// if `source` is set, it comes from that NID. Entries of a portal are tried in the order
/// they were attached. Completes (`Unlinked`) after its first match if `once`, otherwise
/// only when cancelled.
#[derive(Debug, Clone)]
pub struct MatchEntry {
    pub portal: u32,
    pub match_bits: u64,
    pub ignore_bits: u64,
    pub source: Option<Nid>,
    pub kind: EntryKind,
    pub once: bool,
}

impl MatchEntry {
    pub fn sink(portal: u32, match_bits: u64, max_len: u32) -> Self {
        MatchEntry {
            portal,
            match_bits,
            ignore_bits: 0,
            source: None,
            kind: EntryKind::Sink { max_len },
            once: false,
        }
    }

    pub fn source(portal: u32, match_bits: u64, data: Bytes) -> Self {
        MatchEntry {
            portal,
            match_bits,
            ignore_bits: 0,
            source: None,
            kind: EntryKind::Source { data },
            once: false,
        }
    }

    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    pub fn matches(&self, from: Nid, match_bits: u64) -> bool {
        (match_bits ^ self.match_bits) & !self.ignore_bits == 0
            && self.source.is_none_or(|s| s == from)
    }
}

/// What a successful operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutcome {
    /// The target accepted `mlen` bytes.
    Put {
        mlen: u32,
    },
    /// A PUT without ACK ([`PutRequest::ack`] false) of `len` bytes left: its driver is
    /// done with it, the next hop having taken it (over RDMA, that hop's adapter has it)
    /// or, for a payload it would have fetched, declined it. Whether the target accepted
    /// it is not known.
    Sent {
        len: u32,
    },
    Get {
        data: Bytes,
    },
    /// Round trip from submitting the PING to receiving the PONG.
    Pong {
        rtt: Duration,
    },
    /// An entry was unlinked: after its single match, or never matched and cancelled is an
    /// error (`Cancelled`) instead.
    Unlinked,
}

/// Why the target refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    NoMatch,
    Busy,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::NoMatch => "no posted entry matched",
            RejectReason::Busy => "the receiver has too many undelivered messages",
        })
    }
}

/// Where a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePlace {
    Local,
    Network,
    Remote,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("local timeout: still queued on this node (waiting for credits) at its deadline")]
    LocalTimeout,
    #[error("network timeout: not delivered to the network (no connection, or the driver did not finish sending) by its deadline")]
    NetworkTimeout,
    #[error("remote timeout: sent, but no answer from the peer by its deadline")]
    RemoteTimeout,
    #[error("peer is dead")]
    PeerDead,
    #[error("peer restarted (new incarnation); the operation was lost with the old one")]
    PeerRestarted,
    #[error("no route to {0}")]
    NoRoute(Nid),
    #[error("rejected by the peer: {0}")]
    Rejected(RejectReason),
    #[error("cancelled")]
    Cancelled,
    #[error("local error: {0}")]
    Local(String),
    #[error("network error: {0}")]
    Network(String),
    #[error("remote error: {0}")]
    Remote(String),
    /// The peer's answer broke the protocol (e.g. more bytes than the operation asked
    /// for); the connection it came on was closed.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl OpError {
    /// Where the failure happened (`None` for cancellation).
    pub fn place(&self) -> Option<FailurePlace> {
        use OpError::*;
        match self {
            LocalTimeout | NoRoute(_) | Local(_) | Invalid(_) => Some(FailurePlace::Local),
            NetworkTimeout | Network(_) => Some(FailurePlace::Network),
            RemoteTimeout | PeerDead | PeerRestarted | Rejected(_) | Remote(_) | Protocol(_) => {
                Some(FailurePlace::Remote)
            }
            Cancelled => None,
        }
    }
}

/// The one completion of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub op: OpId,
    pub result: Result<OpOutcome, OpError>,
}

/// A PUT that landed in an attached entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub entry: OpId,
    pub from: Nid,
    pub portal: u32,
    pub match_bits: u64,
    pub payload: Bytes,
}

/// An incoming message that was refused (the sender got the reason too, unless its PUT
/// wanted no ACK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub from: Nid,
    pub portal: u32,
    pub match_bits: u64,
    pub len: u32,
    pub reason: RejectReason,
}

/// Why a peer was declared Down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerDownReason {
    /// Nothing heard from it for this long (the detect time, or more).
    Silent(Duration),
}

/// What a node reports to its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Completed(Completion),
    Delivered(Delivery),
    /// An incoming PUT or GET matched nothing. Counted against `max_undelivered`; past it,
    /// refusals are only counted in the node's statistics.
    Refused(Refused),
    /// A monitored peer was silent for the detect time: its operations failed with
    /// `PeerDead` (those that chose to wait stay queued).
    PeerDown {
        peer: Nid,
        reason: PeerDownReason,
        at: Time,
    },
    /// A peer that was Down answered again, with the same incarnation.
    PeerUp {
        peer: Nid,
        at: Time,
    },
    /// A peer came back with a new incarnation: whatever the old one held is lost.
    PeerRestarted {
        peer: Nid,
        old: u64,
        new: u64,
        at: Time,
    },
    /// A connection was closed because the peer broke the protocol.
    ProtocolError {
        peer: Nid,
        lane: Lane,
        error: String,
    },
    /// The endpoint stopped working (a driver failed for good, or the driver thread
    /// panicked): every operation it held has completed with an error, and later
    /// submissions are refused. The last event an endpoint reports.
    EndpointFailed {
        reason: String,
    },
    /// An NI went down for good (its driver failed): nothing goes through it any more;
    /// the node carries on with its other NIs.
    NiDown {
        nid: Nid,
        reason: String,
        at: Time,
    },
    /// A route became usable again: frames to `net` may go through `gateway`.
    RouteUp {
        net: Net,
        gateway: Nid,
        at: Time,
    },
    /// This node, as a router, changed what it says of itself: forwarding or absent (and
    /// why), or degraded (it cannot deliver somewhere, yet stays: it is the last router of
    /// a pair of its nets). `cause` says why, in words.
    RouterChanged {
        state: crate::wire::RouterState,
        degraded: bool,
        cause: String,
        at: Time,
    },
    /// Failover group `group` moved from member `from` (declared Down) to `to`: its
    /// operations go there from now on.
    FailoverMoved {
        group: String,
        from: Nid,
        to: Nid,
        at: Time,
    },
    /// A route stopped being usable: frames to `net` go through other gateways (or, with
    /// none left, fail with `NoRoute`).
    RouteDown {
        net: Net,
        gateway: Nid,
        reason: RouteDownReason,
        at: Time,
    },
}

/// Why a route is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteDownReason {
    /// The gateway itself is silent: declared Down by failure detection.
    GatewayDown,
    /// The gateway says it does not forward, and why.
    Absent(crate::wire::AbsentReason),
    /// The gateway says its NI on the route's net is down.
    NetDown,
    /// Our own NI on the gateway's net is down: we cannot reach it.
    LocalNiDown,
}

impl fmt::Display for RouteDownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteDownReason::GatewayDown => f.write_str("the gateway is down"),
            RouteDownReason::Absent(why) => write!(f, "the gateway is absent: {why}"),
            RouteDownReason::NetDown => f.write_str("the gateway's NI on that net is down"),
            RouteDownReason::LocalNiDown => f.write_str("our NI on the gateway's net is down"),
        }
    }
}

impl Event {
    /// Whether this event counts against the node's `max_undelivered` budget.
    pub fn is_delivery(&self) -> bool {
        matches!(self, Event::Delivered(_) | Event::Refused(_))
    }

    /// Whether it is news of the network (a peer, a route, an NI, a router, a protocol
    /// error), which its peers cause, not the application: an endpoint whose application
    /// leaves `max_undelivered` events untaken drops such news, counted
    /// ([`crate::node::NodeStats::notices_dropped`]), rather than let it pile up.
    /// Completions, deliveries and the endpoint's failure are never dropped.
    pub fn is_notice(&self) -> bool {
        !matches!(
            self,
            Event::Completed(_)
                | Event::Delivered(_)
                | Event::Refused(_)
                | Event::EndpointFailed { .. }
        )
    }
}
