//! Node configuration with LNet-informed defaults (peer_credits 8, credits 256 per NI),
//! and the configuration file every node reads ([`file`]).

mod export;
pub use export::toml_string;
pub mod file;

use std::time::Duration;

use crate::health::HealthConfig;
use crate::lane::{Lane, PerLane};
use crate::nid::{Net, Nid};

pub use file::{
    ConfigFile, ConfigFileError, DaemonSettings, NetSection, OpenLnd, CONTROL_SOCKET_STAGING,
    DEFAULT_CONTROL_SOCKET, DEFAULT_PENDING_ACCEPTS, DEFAULT_PENDING_ACCEPTS_RDMA, MAX_MOVER_POLL,
    MAX_SOCKET_PATH,
};

/// Largest payload accepted by default: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;

/// The largest configuration (or topology, or `lnetctl export`) file read: far above any
/// real one, and a bound on what a wrong path (a device, a log) makes a tool read.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads the text file at `path`, refusing one over [`MAX_CONFIG_FILE`] bytes.
pub fn read_config_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} KiB: not a configuration file",
                MAX_CONFIG_FILE >> 10
            ),
        ));
    }
    Ok(text)
}

/// The shortest health interval: below it a node would ping each watched peer about as
/// fast as its thread runs, and detection would rest on scheduling noise (a thread that
/// sleeps in epoll wakes at a millisecond's granularity).
pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(1);

/// Credit settings for one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneConfig {
    /// Receive credits offered to each peer (receive buffers we keep for it). A connection's
    /// window, both ways, is the smaller of its two ends' offers.
    pub peer_credits: u16,
    /// Return credits with an explicit CREDIT frame once this many are owed and nothing else
    /// has carried them (or once a whole window is owed, if that is smaller). Must be in
    /// 1..=peer_credits, or the peer could stall.
    pub credits_hiw: u16,
    /// Messages of this lane in flight in the LND at once, over all peers of one NI.
    pub ni_credits: u32,
}

/// Configuration of one node (one endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Differs at every start (the configuration file takes the wall clock's nanoseconds):
    /// peers use it to tell a restart from a reconnection, and a late frame of the life a
    /// restart replaced (through a router) from news. The node numbers its requests
    /// (their message ids) from it too, so that an answer to its old life, late, matches
    /// nothing of the new one: that needs lives further apart than the requests each
    /// sends, as nanoseconds of the clock are (small numbers, as the tests use, are not).
    pub incarnation: u64,
    pub lanes: PerLane<LaneConfig>,
    /// Deadline of an operation that does not set its own.
    pub op_timeout: Duration,
    /// Largest data-lane payload sent or accepted.
    pub max_payload: u32,
    /// Incoming messages delivered to the application but not yet taken by it. Beyond this,
    /// incoming PUTs are refused with `Busy`, so a flood cannot grow memory without bound.
    pub max_undelivered: usize,
    /// Failure detection: ping interval, detect multiplier, probing, local lag.
    pub health: HealthConfig,
    /// Whether this node forwards frames addressed to others (a router). Off: such frames
    /// are refused with a NACK saying the node does not forward.
    pub forwarding: bool,
    /// Routers the frames this node starts may pass (see [`crate::wire::DEFAULT_HOP_LIMIT`]).
    pub hop_limit: u8,
    /// Times one operation is sent again because the router it went through failed with
    /// it in flight (a refusal on the way, NACK, does not count: it is resent at once).
    pub resend_budget: u8,
    /// Answers remembered per initiator that reaches this node through routers, so that
    /// a request resent after a router failed is answered again rather than delivered
    /// twice. Initiators tell how many they may still resend; this caps it.
    pub dedup_window: usize,
    /// Initiators remembered so at once (the idlest is forgotten first); one that reaches
    /// this node at two of its NIDs counts twice.
    pub dedup_initiators: usize,
    /// A router's buffers, by size class (LNet's 2048 tiny / 16384 small / 1024 large).
    pub router_buffers: crate::node::PoolSizes,
    /// How long a frame passing through a router may wait for a buffer before it is
    /// refused (NACK: out of buffers).
    pub router_patience: Duration,
    /// How long a router's frames passing through may wait at a next hop from which
    /// nothing leaves (it is up, but returns no credits) before they are refused (NACK:
    /// next hop stalled), so that their initiators may send them another way and the
    /// upstream credits and buffers they hold come back. Without it, one peer whose data
    /// lane stops while its health lane answers would hold the credits of every sender
    /// behind the router. A hop that takes frames, however slowly, is not stalled.
    pub forward_patience: Duration,
    /// Answers that may wait at one lane to a router, for initiators behind it. A router
    /// carries the answers of every client behind it, so a burst of thousands of them is
    /// normal (a checkpoint); the bound guards memory only against a router that stops
    /// returning credits. (To a peer answered directly the bound is
    /// [`crate::node::ANSWER_BACKLOG_PER_CREDIT`] x the connection's window.)
    pub routed_answer_backlog: usize,
    /// Neighbours, and far ends, remembered while nothing needs them (see
    /// [`crate::node::MAX_IDLE_PEERS`], the default): past this many, they are forgotten,
    /// so that peers passing by, or sources a hostile peer forges, cost bounded memory.
    pub max_idle_peers: usize,
    /// Data-lane NI credits of the NI on a net, where they differ from
    /// `lanes.data.ni_credits` (lnetctl's per-net `credits`).
    pub net_credits: Vec<(Net, u32)>,
    /// Keys its drivers authenticate connections with, and which connections they accept
    /// ([`crate::handshake::auth`]); none and all by default.
    pub auth: crate::handshake::auth::Auth,
    /// How a router takes itself out and comes back (used when `forwarding`).
    pub router: RouterConfig,
}

/// How a router withdraws when it has become a black hole, and how it comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Sustained health needed before an absent router forwards again, after its first
    /// flap; each flap raises it (see `half_life`).
    pub hold_down: Duration,
    /// Half-life of the flap penalty: a router that flapped lately waits longer.
    pub half_life: Duration,
    /// The hold-down never exceeds this, however much it flapped.
    pub max_hold_down: Duration,
    /// A starting router connects and hears its nets for this long before it forwards.
    pub warm_up: Duration,
    /// Other routers of the same nets: they exchange the peers they cannot reach, which
    /// tells a router that has become a black hole from a peer that died.
    pub fellows: Vec<Nid>,
    /// Peers it forwarded for that it watches at most (its *served* peers, by which it
    /// judges whether it is a black hole). Past this, it forwards for new ones without
    /// watching them (counted in [`crate::node::AbsenceStats::unwatched_forwards`]), so frames to
    /// made-up NIDs cannot grow its tables without bound.
    pub max_served: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            hold_down: Duration::from_secs(2),
            half_life: Duration::from_secs(30),
            max_hold_down: Duration::from_secs(60),
            warm_up: Duration::from_secs(1),
            fellows: Vec::new(),
            max_served: 65_536,
        }
    }
}

impl NodeConfig {
    pub fn new(incarnation: u64) -> Self {
        NodeConfig {
            incarnation,
            lanes: PerLane::new(
                LaneConfig {
                    peer_credits: 8,
                    credits_hiw: 4,
                    ni_credits: 64,
                },
                LaneConfig {
                    peer_credits: 8,
                    credits_hiw: 4,
                    ni_credits: 256,
                },
            ),
            op_timeout: Duration::from_secs(10),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_undelivered: 4096,
            health: HealthConfig::default(),
            forwarding: false,
            hop_limit: crate::wire::DEFAULT_HOP_LIMIT,
            resend_budget: 2,
            dedup_window: 1024,
            dedup_initiators: 4096,
            router_buffers: crate::node::PoolSizes::default(),
            router_patience: Duration::from_secs(1),
            // Half the default op timeout: a refused frame can still go another way in
            // time, and a queue that moves at all empties far sooner.
            forward_patience: Duration::from_secs(5),
            routed_answer_backlog: 65536,
            max_idle_peers: crate::node::MAX_IDLE_PEERS,
            net_credits: Vec::new(),
            router: RouterConfig::default(),
            auth: crate::handshake::auth::Auth::default(),
        }
    }

    /// The receive credits a driver offers per lane (in its HELLO).
    pub fn peer_credits(&self) -> PerLane<u16> {
        PerLane::new(
            self.lanes[Lane::Health].peer_credits,
            self.lanes[Lane::Data].peer_credits,
        )
    }

    /// Checks the settings the protocol depends on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (lane, l) in self.lanes.iter() {
            if l.peer_credits == 0 {
                return Err(ConfigError(format!(
                    "{lane} lane: peer_credits must be at least 1"
                )));
            }
            if l.credits_hiw == 0 || l.credits_hiw > l.peer_credits {
                return Err(ConfigError(format!(
                    "{lane} lane: credits_hiw must be in 1..={} (peer_credits), got {}",
                    l.peer_credits, l.credits_hiw
                )));
            }
            if l.ni_credits == 0 {
                return Err(ConfigError(format!(
                    "{lane} lane: ni_credits must be at least 1"
                )));
            }
        }
        // Bounds that keep every product of these (detect times, horizons) far from
        // overflowing a Duration.
        const DAY: Duration = Duration::from_secs(86_400);
        let h = &self.health;
        if h.interval > Duration::from_secs(3600) || h.detect_mult > 1000 || h.probe_max > DAY {
            return Err(ConfigError(
                "health: interval at most 1h, detect_mult at most 1000, probe_max at most 1 day"
                    .into(),
            ));
        }
        let r = &self.router;
        if [
            r.hold_down,
            r.half_life,
            r.max_hold_down,
            r.warm_up,
            self.op_timeout,
        ]
        .iter()
        .any(|d| *d > DAY)
        {
            return Err(ConfigError(
                "routing: hold_down, half_life, max_hold_down, warm_up and the transaction \
                 timeout are each at most 1 day"
                    .into(),
            ));
        }
        if r.max_served == 0 {
            return Err(ConfigError(
                "routing: max_served must be positive (a router watches the peers it serves)"
                    .into(),
            ));
        }
        if r.half_life.is_zero() {
            return Err(ConfigError(
                "routing: damping half_life must be positive".into(),
            ));
        }
        if self.health.interval < MIN_HEALTH_INTERVAL || self.health.detect_mult == 0 {
            return Err(ConfigError(format!(
                "health: interval must be at least {MIN_HEALTH_INTERVAL:?} and detect_mult at \
                 least 1, got {:?} x {}",
                self.health.interval, self.health.detect_mult
            )));
        }
        if h.probe_max.is_zero() {
            return Err(ConfigError(
                "health: probe_max must be positive (a Down peer is probed at most that far \
                 apart, and never more often than once an interval)"
                    .into(),
            ));
        }
        if h.sensitivity > crate::health::HEALTH_MAX {
            return Err(ConfigError(format!(
                "health: sensitivity must be at most {} (the best health), got {}",
                crate::health::HEALTH_MAX,
                h.sensitivity
            )));
        }
        if self.op_timeout.is_zero() {
            return Err(ConfigError("op_timeout must be positive".into()));
        }
        if self.forward_patience < Duration::from_millis(1) || self.forward_patience > DAY {
            return Err(ConfigError(format!(
                "routing: forward_patience must be at least 1ms and at most 1 day, got {:?}",
                self.forward_patience
            )));
        }
        if self.max_undelivered == 0 {
            return Err(ConfigError("max_undelivered must be at least 1".into()));
        }
        if self.dedup_window == 0 || self.dedup_initiators == 0 {
            return Err(ConfigError(
                "dedup_window and dedup_initiators must be at least 1".into(),
            ));
        }
        if self.net_credits.iter().any(|(_, c)| *c == 0) {
            return Err(ConfigError("a net's credits must be at least 1".into()));
        }
        if self.max_idle_peers == 0 {
            return Err(ConfigError(
                "max_idle_peers must be at least 1: else every event sweeps the peer tables".into(),
            ));
        }
        if self.routed_answer_backlog == 0 {
            return Err(ConfigError(
                "routed_answer_backlog must be at least 1: else nothing behind a router is answered"
                    .into(),
            ));
        }
        let b = &self.router_buffers;
        if b.tiny == 0 || b.small == 0 || b.large == 0 {
            return Err(ConfigError(format!(
                "routing.buffers: tiny, small and large must each be at least 1, got {}, {} and \
                 {}: a frame of a class without buffers is held for forward_patience and then \
                 refused, every time",
                b.tiny, b.small, b.large
            )));
        }
        Ok(())
    }

    pub fn lane(&self, lane: Lane) -> &LaneConfig {
        &self.lanes[lane]
    }

    /// The data-lane NI credits of an NI on `net`.
    pub fn data_ni_credits(&self, net: Net) -> u32 {
        self.net_credits
            .iter()
            .find(|(n, _)| *n == net)
            .map_or(self.lanes[Lane::Data].ni_credits, |(_, c)| *c)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_say_why() {
        assert_eq!(NodeConfig::new(1).validate(), Ok(()));
        let mut c = NodeConfig::new(1);
        c.lanes[Lane::Data].credits_hiw = 9;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("data lane: credits_hiw must be in 1..=8"), "{e}");
        let mut c = NodeConfig::new(1);
        c.lanes[Lane::Health].peer_credits = 0;
        assert!(c.validate().is_err());
    }
}
