//! The configuration file every lanet node reads: servers that link lanet, clients, and the
//! router daemon. TOML, with the names an LNet administrator knows from lnetctl's YAML
//! (`net`, `peer_credits`, `credits`, `route` with `gateway`/`hop`/`priority`, `routing`
//! with `enable` and `buffers`). Every key has a default; `config/example-*.toml` in the
//! repository shows each one, commented.
//!
//! ```toml
//! [[net]]
//! net = "tcp1"
//! interface = "eth1"        # or: address = "10.0.1.5"
//!
//! [[route]]
//! net = "tcp2"
//! gateway = ["10.0.1.1@tcp1", "10.0.1.2@tcp1"]
//! ```
//!
//! Errors name the file, the line and the key, and say what was expected.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

use super::{NodeConfig, RouterConfig};
use crate::handshake::auth::{Accept, Auth, Keys};
use crate::lane::Lane;
use crate::nid::{LndKind, Net, Nid, NidAddr};
use crate::node::{PoolSizes, Route, RouteUnfit};

/// A configuration file, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The node's settings, with a fresh incarnation.
    pub node: NodeConfig,
    /// One NI per net, in file order.
    pub nets: Vec<NetSection>,
    /// Routes to the nets this node is not on, one per gateway.
    pub routes: Vec<Route>,
    /// Services reached at any of several NIDs (Lustre's failnode lists).
    pub failover: Vec<crate::node::FailoverGroup>,
    /// What only the router daemon uses.
    pub daemon: DaemonSettings,
    /// `[auth] key_file`, resolved against the file's directory (the keys themselves are
    /// in `node.auth`).
    pub key_file: Option<PathBuf>,
}

/// One `[[net]]`: an NI of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSection {
    /// Its address on the net (from `address` or `interface`, and `port`).
    pub nid: Nid,
    /// The interface it was found on, if it was given by interface.
    pub interface: Option<String>,
    /// Data-lane receive credits offered to each peer on this net (lnetctl's
    /// `peer_credits`; on a router, `routing.peer_buffer_credits` when set). A
    /// connection's window, both ways, is the smaller of its two ends' offers.
    pub peer_credits: u16,
    /// Data-lane messages in flight in this NI's driver at once (lnetctl's `credits`).
    pub credits: u32,
    /// Accepted connections awaiting the end of their handshake (HELLO, or AUTH) at most
    /// (a flood of half-open connections past it closes the oldest).
    pub pending_accepts: usize,
    /// Whether an accepted connection's HELLO must name a NID at the address the
    /// connection comes from (off only where peers dial from elsewhere: NAT).
    pub check_source_address: bool,
    /// How long the driver busy-polls before it sleeps (`spin`): latency for a CPU. None:
    /// the driver's default (TCP: none; RDMA: 50 us), or its `LANET_*_SPIN_US` variable.
    /// Only on a node of one NI (its driver thread's only one); TCP on io_uring sleeps
    /// instead while its bulk mover thread moves bytes.
    pub spin: Option<Duration>,
    /// tcp, io_uring backend: how long its bulk mover thread polls after it last moved
    /// bytes before it sleeps (`mover_poll`, at most [`MAX_MOVER_POLL`]; zero: it sleeps
    /// between pieces, unless the NI busy-polls: a busy-polling NI's mover polls within
    /// its `spin` if that is longer). None: the driver's default (200 us), or
    /// `LANET_TCP_MOVER_POLL_US`.
    /// Polling keeps a stream fast on loopback and fast links; on a slower link it costs
    /// up to about half a CPU while a stream moves.
    pub mover_poll: Option<Duration>,
    /// o2ib: payloads up to at least this many bytes travel inside the message, larger
    /// ones by RDMA (`eager_max`; the driver rounds it up to fill whole-KiB buffers, at
    /// least its default). None: the driver's default (3,968 bytes: 4 KiB messages).
    pub eager_max: Option<u32>,
}

/// The largest [`NetSection::eager_max`]: 64 KiB messages, header and prefix included.
pub const MAX_EAGER: u32 = 65_408;

/// The longest `mover_poll` a tcp net may ask for: the TCP LND's bulk mover counts as
/// busy for 2 ms after it last moved bytes, and a mover that moved nothing that long is
/// done with its stream (it polls no longer than that whatever is asked).
pub const MAX_MOVER_POLL: Duration = Duration::from_millis(2);

/// [`NetSection::pending_accepts`] by default.
pub const DEFAULT_PENDING_ACCEPTS: usize = 1024;
/// [`NetSection::pending_accepts`] by default on o2ib nets: each pending accept holds a
/// queue pair and grows the CQ (message buffers are the NI's, not the connection's).
pub const DEFAULT_PENDING_ACCEPTS_RDMA: usize = 64;

/// Settings of the router daemon's process, not of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
    /// Longest a stopping router forwards what it holds before it exits anyway.
    pub drain: Duration,
    /// Where it answers status queries.
    pub control_socket: PathBuf,
}

/// The default control socket of `lanet-router`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/lanet/router.sock";

/// Why a configuration file was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ConfigFileError {
    pub path: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
    /// The file is sound, but this host lacks what it names (an interface, or its IPv4
    /// address) or an NI it names did not open: unlike a mistake in the file, this may
    /// mend itself (an interface configured late at boot), so trying again can help.
    pub on_this_host: bool,
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<ConfigFile, ConfigFileError> {
        let path = path.as_ref();
        let text = super::read_config_text(path).map_err(|e| ConfigFileError {
            path: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read it: {e}"),
            on_this_host: false,
        })?;
        ConfigFile::parse(path, &text)
    }

    /// Checks `text`, as read from `path`. Not pure: the node gets a fresh incarnation
    /// (from the wall clock), and `interface` keys are looked up on this host.
    pub fn parse(path: impl AsRef<Path>, text: &str) -> Result<ConfigFile, ConfigFileError> {
        let located = Located {
            path: path.as_ref(),
            text,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|s| key_at(text, s, e.message()));
            located.error(e.span(), key, e.message().trim_end().to_owned())
        })?;
        raw.check(&located)
    }

    /// The endpoint this file describes: one NI per `[[net]]`, each opened by the first of
    /// `drivers` that serves its kind, with the file's routes. Start it with
    /// [`crate::EndpointBuilder::start`] (after adding an event callback, if wanted).
    pub fn endpoint(
        &self,
        drivers: &[&dyn OpenLnd],
    ) -> Result<crate::EndpointBuilder, ConfigFileError> {
        let mut builder = crate::Endpoint::builder(self.node.clone());
        for net in &self.nets {
            let kind = net.nid.net().kind;
            let Some(driver) = drivers.iter().find(|d| d.serves(kind)) else {
                let why = format!("this program has no driver for {} nets", kind.name());
                return Err(self.error_about_net(net, why, false));
            };
            let lnd = driver
                .open(net, &self.node)
                .map_err(|e| self.error_about_net(net, format!("cannot open it: {e}"), true))?;
            builder = builder.boxed_lnd(lnd);
        }
        for route in &self.routes {
            builder = builder.route(*route);
        }
        for group in &self.failover {
            builder = builder.failover_group(group.clone());
        }
        Ok(builder)
    }

    /// About `net`; whether about what this host lacks (see
    /// [`ConfigFileError::on_this_host`]).
    fn error_about_net(
        &self,
        net: &NetSection,
        message: String,
        on_this_host: bool,
    ) -> ConfigFileError {
        ConfigFileError {
            path: self.path.clone(),
            line: None,
            key: Some(format!("net {}", net.nid)),
            message,
            on_this_host,
        }
    }
}

/// Opens the driver (LND) of one net of a configuration file. Each LND crate provides one
/// (`lanet_lnd_tcp::OpenTcp`, `lanet_lnd_rdma::OpenRdma`), so the core needs none of them.
pub trait OpenLnd {
    /// Whether it drives nets of this kind.
    fn serves(&self, kind: LndKind) -> bool;
    fn open(
        &self,
        net: &NetSection,
        node: &NodeConfig,
    ) -> Result<Box<dyn crate::lnd::Lnd>, crate::lnd::LndError>;
}

/// The file's text, for turning byte spans into line numbers.
struct Located<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Located<'_> {
    fn error(
        &self,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: String,
    ) -> ConfigFileError {
        ConfigFileError {
            path: self.path.to_owned(),
            line: span.map(|s| line_of(self.text, s.start)),
            key,
            message,
            on_this_host: false,
        }
    }

    fn at<T>(&self, item: &Spanned<T>, key: &str, message: String) -> ConfigFileError {
        self.error(Some(item.span()), Some(key.to_owned()), message)
    }

    /// What this host lacks (see [`ConfigFileError::on_this_host`]), at `item`.
    fn missing_here<T>(&self, item: &Spanned<T>, key: &str, message: String) -> ConfigFileError {
        ConfigFileError {
            on_this_host: true,
            ..self.at(item, key, message)
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    1 + text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The key a parse error is about: the one assigned on its line, or the field it names.
fn key_at(text: &str, span: Range<usize>, message: &str) -> Option<String> {
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field `"));
    if let Some(field) = named {
        return Some(field.to_owned());
    }
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_owned())
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    net: Vec<Spanned<RawNet>>,
    #[serde(default)]
    route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    failover: Vec<Spanned<RawFailover>>,
    auth: Option<Spanned<RawAuth>>,
    /// Default deadline of an operation (LNet's `transaction_timeout`).
    #[serde(default, deserialize_with = "duration")]
    transaction_timeout: Option<Duration>,
    /// Times an operation is resent after a router failed with it in flight (LNet's
    /// `retry_count`).
    retry_count: Option<u8>,
    max_payload: Option<u32>,
    hop_limit: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    #[serde(deserialize_with = "net")]
    net: Net,
    address: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    port: Option<u16>,
    peer_credits: Option<Spanned<u16>>,
    credits: Option<Spanned<u32>>,
    pending_accepts: Option<Spanned<usize>>,
    check_source_address: Option<bool>,
    spin: Option<Spanned<String>>,
    mover_poll: Option<Spanned<String>>,
    eager_max: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(deserialize_with = "net")]
    net: Net,
    gateway: Spanned<OneOrMany>,
    #[serde(default = "one")]
    hop: u8,
    #[serde(default)]
    priority: u8,
}

fn one() -> u8 {
    1
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    name: String,
    nids: Spanned<Vec<String>>,
    #[serde(default)]
    mode: RawFailoverMode,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawFailoverMode {
    #[default]
    Failover,
    Failout,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Duration>,
    detect_mult: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    probe_max: Option<Duration>,
    sensitivity: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    #[serde(default)]
    enable: bool,
    buffers: Option<RawBuffers>,
    peer_buffer_credits: Option<u16>,
    #[serde(default, deserialize_with = "duration")]
    buffer_patience: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    forward_patience: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    hold_down: Option<Duration>,
    damping: Option<RawDamping>,
    #[serde(default)]
    fellows: Vec<Spanned<String>>,
    max_served: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    warm_up: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    drain: Option<Duration>,
    control_socket: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    key_file: Option<Spanned<PathBuf>>,
    accept: Option<Spanned<String>>,
}

impl RawAuth {
    /// The keys (read now, so that a bad key file stops the node from starting) and the
    /// accept policy.
    fn check(
        &self,
        raw: &Spanned<RawAuth>,
        at: &Located,
    ) -> Result<(Auth, Option<PathBuf>), ConfigFileError> {
        let key_file = self.key_file.as_ref().map(|p| {
            let dir = at.path.parent().unwrap_or(Path::new("."));
            // Absolute, so that an export names the same file from anywhere.
            let path = dir.join(p.get_ref());
            (p, std::path::absolute(&path).unwrap_or(path))
        });
        let keys = match &key_file {
            None => None,
            Some((raw_path, path)) => {
                Some(Keys::load(path).map_err(|e| at.at(*raw_path, "key_file", e.to_string()))?)
            }
        };
        let accept = match &self.accept {
            None => None,
            Some(a) => Some(
                a.get_ref()
                    .parse::<Accept>()
                    .map_err(|e| at.at(a, "accept", e))?,
            ),
        };
        let auth = Auth::new(keys, accept).map_err(|e| at.at(raw, "accept", e))?;
        Ok((auth, key_file.map(|(_, p)| p)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffers {
    tiny: Option<u32>,
    small: Option<u32>,
    large: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDamping {
    #[serde(default, deserialize_with = "duration")]
    half_life: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    max_hold_down: Option<Duration>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map(Some).map_err(|e| {
        de::Error::custom(format!(
            "expected a duration such as \"100ms\", \"2s\" or \"1m\", got {s:?} ({e})"
        ))
    })
}

fn net<'de, D: Deserializer<'de>>(d: D) -> Result<Net, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<Net>().map_err(|e| {
        de::Error::custom(format!(
            "expected a net such as \"tcp\", \"tcp1\" or \"o2ib3\", got {s:?} ({e})"
        ))
    })
}

fn nid(s: &str) -> Result<Nid, String> {
    s.parse::<Nid>().map_err(|e| e.to_string())
}

// ---- checking -------------------------------------------------------------------------------

impl RawFile {
    fn check(self, at: &Located) -> Result<ConfigFile, ConfigFileError> {
        let mut node = NodeConfig::new(fresh_incarnation());
        if let Some(t) = self.transaction_timeout {
            node.op_timeout = t;
        }
        if let Some(n) = self.retry_count {
            node.resend_budget = n;
        }
        if let Some(n) = self.max_payload {
            node.max_payload = n;
        }
        if let Some(n) = self.hop_limit {
            node.hop_limit = n;
        }
        self.health.apply(&mut node);
        let key_file = match &self.auth {
            Some(raw) => {
                let (auth, key_file) = raw.get_ref().check(raw, at)?;
                node.auth = auth;
                key_file
            }
            None => None,
        };
        let peer_buffer_credits = self.routing.apply(&mut node, at)?;

        let mut nets: Vec<NetSection> = Vec::with_capacity(self.net.len());
        for raw in &self.net {
            let section = raw.get_ref().check(raw, node.lanes[Lane::Data], at)?;
            if nets.iter().any(|n| n.nid.same_net(&section.nid)) {
                return Err(at.at(
                    raw,
                    "net",
                    format!("{} is configured twice: one NI per net", section.nid.net()),
                ));
            }
            nets.push(section);
        }
        // Its NIs share one driver thread, which sleeps on all of them at once: no single
        // NI's driver can spin there, and a setting that does nothing must not look set.
        if let Some(raw) = self.net.iter().find(|r| r.get_ref().spin.is_some()) {
            if nets.len() > 1 {
                let spin = raw.get_ref().spin.as_ref().expect("found by it");
                return Err(at.at(
                    spin,
                    "spin",
                    format!(
                        "busy-polling applies to a node with one NI, and this file has {} \
                         (they share a driver thread that sleeps on all of them)",
                        nets.len()
                    ),
                ));
            }
        }
        if node.forwarding && nets.len() < 2 {
            return Err(at.error(
                None,
                Some("routing.enable".into()),
                format!(
                    "a router needs NIs on at least two nets, this file has {}",
                    nets.len()
                ),
            ));
        }
        if let (true, Some(credits)) = (node.forwarding, peer_buffer_credits) {
            for n in &mut nets {
                n.peer_credits = credits;
            }
        }
        // Credits are returned once half of the smallest offer is owed, so no peer of any
        // net waits for them. A `lo` net has no peers (its tunables are not exported).
        let offers = nets.iter().filter(|n| n.nid.net().kind != LndKind::Lo);
        if let Some(least) = offers.map(|n| n.peer_credits).min() {
            let data = &mut node.lanes[Lane::Data];
            data.peer_credits = least;
            data.credits_hiw = data.credits_hiw.min(least.div_ceil(2)).max(1);
        }
        node.net_credits = nets.iter().map(|n| (n.nid.net(), n.credits)).collect();

        let mut routes = Vec::new();
        let own: Vec<Nid> = nets.iter().map(|n| n.nid).collect();
        for raw in &self.route {
            let r = raw.get_ref();
            let gateways = match r.gateway.get_ref() {
                OneOrMany::One(g) => vec![g.clone()],
                OneOrMany::Many(v) => v.clone(),
            };
            if gateways.is_empty() {
                return Err(at.at(&r.gateway, "gateway", "expected at least one NID".into()));
            }
            for g in gateways {
                let gateway = nid(&g).map_err(|e| at.at(&r.gateway, "gateway", e))?;
                let route = Route {
                    net: r.net,
                    gateway,
                    hops: r.hop,
                    priority: r.priority,
                };
                // The node's own rule, told here at the field it comes from.
                if let Some(unfit) = route.unfit_for(&own) {
                    let why = format!("route to {} through {gateway}: {unfit}", r.net);
                    return Err(match unfit {
                        RouteUnfit::OwnNet => at.at(raw, "route", why),
                        RouteUnfit::NoHops => at.at(raw, "hop", why),
                        RouteUnfit::GatewayIsSelf | RouteUnfit::GatewayOffNet => {
                            at.at(&r.gateway, "gateway", why)
                        }
                    });
                }
                // The node keeps one route per net and gateway: a second would silently
                // replace the first (and a reload would swap them at every SIGHUP).
                if routes
                    .iter()
                    .any(|x: &Route| x.net == r.net && x.gateway == gateway)
                {
                    return Err(at.at(
                        &r.gateway,
                        "gateway",
                        format!(
                            "a second route to {} through {gateway} (one per net and gateway)",
                            r.net
                        ),
                    ));
                }
                routes.push(route);
            }
        }
        for fellow in &self.routing.fellows {
            let f = nid(fellow.get_ref()).map_err(|e| at.at(fellow, "fellows", e))?;
            if !nets.iter().any(|n| n.nid.same_net(&f)) {
                return Err(at.at(
                    fellow,
                    "fellows",
                    format!("{f} is not on any net of this router"),
                ));
            }
            // The router itself: one list of a site's routers may serve each of them.
            if nets.iter().any(|n| n.nid == f) {
                continue;
            }
            node.router.fellows.push(f);
        }
        let mut failover: Vec<crate::node::FailoverGroup> = Vec::new();
        for raw in &self.failover {
            let g = raw.get_ref();
            if failover.iter().any(|f| f.name == g.name) {
                return Err(at.at(
                    raw,
                    "name",
                    format!("failover group {:?} is named twice", g.name),
                ));
            }
            if g.nids.get_ref().is_empty() {
                return Err(at.at(&g.nids, "nids", "expected at least one NID".into()));
            }
            let mut members = Vec::new();
            for n in g.nids.get_ref() {
                let m = nid(n).map_err(|e| at.at(&g.nids, "nids", e))?;
                if !crate::node::reachable(m, &own, &routes) {
                    return Err(at.at(
                        &g.nids,
                        "nids",
                        format!("{m} is on no net of this node, and no route reaches its net"),
                    ));
                }
                if nets.iter().any(|x| x.nid == m) {
                    return Err(at.at(&g.nids, "nids", format!("{m} is this node itself")));
                }
                members.push(m);
            }
            failover.push(crate::node::FailoverGroup {
                name: g.name.clone(),
                members,
                mode: match g.mode {
                    RawFailoverMode::Failover => crate::node::FailoverMode::Failover,
                    RawFailoverMode::Failout => crate::node::FailoverMode::Failout,
                },
            });
        }
        node.validate().map_err(|e| at.error(None, None, e.0))?;
        if let Some(socket) = &self.routing.control_socket {
            check_socket_path(socket)
                .map_err(|e| at.error(None, Some("routing.control_socket".into()), e))?;
        }
        Ok(ConfigFile {
            path: at.path.to_owned(),
            node,
            nets,
            routes,
            failover,
            daemon: DaemonSettings {
                drain: self.routing.drain.unwrap_or(Duration::from_secs(10)),
                control_socket: self
                    .routing
                    .control_socket
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            },
            key_file,
        })
    }
}

/// Longest path a Unix socket binds at (`sun_path` holds 108 bytes, its NUL included).
pub const MAX_SOCKET_PATH: usize = 107;

/// Bytes a control socket's staging path adds to its directory's: the socket is bound
/// first at `DIR/.lXXXXXX/s`, then linked into place (`lanet_control`), so that it is
/// never open to others.
pub const CONTROL_SOCKET_STAGING: usize = "/.lXXXXXX/s".len();

/// What is wrong with `path` as a control socket's, if anything.
fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(1, |d| d.as_os_str().len()); // "."
    let staging = dir + CONTROL_SOCKET_STAGING;
    if path.file_name().is_none() {
        Err(format!("{:?} names no file", path.display().to_string()))
    } else if len.max(staging) > MAX_SOCKET_PATH {
        Err(format!(
            "{} is {len} bytes long, and the socket is bound first at {staging} bytes \
             (DIR/.lXXXXXX/s); a Unix socket's path takes at most {MAX_SOCKET_PATH}",
            path.display()
        ))
    } else {
        Ok(())
    }
}

impl RawNet {
    fn check(
        &self,
        raw: &Spanned<RawNet>,
        data: super::LaneConfig,
        at: &Located,
    ) -> Result<NetSection, ConfigFileError> {
        let ip = match (&self.address, &self.interface) {
            (Some(_), Some(i)) => {
                return Err(at.at(i, "interface", "give address or interface, not both".into()))
            }
            (None, None) if self.net.kind == LndKind::Lo => Ipv4Addr::UNSPECIFIED,
            (None, None) => {
                return Err(at.at(
                    raw,
                    "net",
                    format!(
                        "net {} needs an address (address = \"10.0.0.1\") or an interface \
                         (interface = \"eth0\")",
                        self.net
                    ),
                ))
            }
            (Some(a), None) => a.get_ref().parse::<Ipv4Addr>().map_err(|_| {
                at.at(
                    a,
                    "address",
                    format!(
                        "expected an IPv4 address such as \"10.0.0.1\", got {:?}",
                        a.get_ref()
                    ),
                )
            })?,
            (None, Some(i)) => match crate::sys::interface_ipv4(i.get_ref()) {
                Ok(Some(ip)) => ip,
                Ok(None) => {
                    return Err(at.missing_here(
                        i,
                        "interface",
                        format!(
                            "interface {:?} has no IPv4 address (or does not exist)",
                            i.get_ref()
                        ),
                    ))
                }
                Err(e) => {
                    return Err(at.missing_here(
                        i,
                        "interface",
                        format!("cannot list interfaces: {e}"),
                    ))
                }
            },
        };
        let addr = match (self.net.kind, self.port) {
            (LndKind::Lo | LndKind::Mem, Some(_)) => {
                return Err(at.at(raw, "port", format!("{} nets have no ports", self.net)))
            }
            (LndKind::Lo | LndKind::Mem, None) => NidAddr::Num(0),
            (_, Some(port)) => NidAddr::IpPort(std::net::SocketAddrV4::new(ip, port)),
            (_, None) => NidAddr::Ip(ip),
        };
        let nid = Nid::new(addr, self.net).map_err(|e| at.at(raw, "net", e.to_string()))?;
        let peer_credits = match &self.peer_credits {
            Some(c) if *c.get_ref() == 0 => {
                return Err(at.at(c, "peer_credits", "expected at least 1".into()))
            }
            Some(c) => *c.get_ref(),
            None => data.peer_credits,
        };
        let credits = match &self.credits {
            Some(c) if *c.get_ref() == 0 => {
                return Err(at.at(c, "credits", "expected at least 1".into()))
            }
            Some(c) => *c.get_ref(),
            None => data.ni_credits,
        };
        let pending_accepts = match &self.pending_accepts {
            Some(c) if *c.get_ref() == 0 => {
                return Err(at.at(
                    c,
                    "pending_accepts",
                    "expected at least 1 (else no connection could be accepted)".into(),
                ))
            }
            Some(c) => *c.get_ref(),
            None if self.net.kind == LndKind::O2ib => DEFAULT_PENDING_ACCEPTS_RDMA,
            None => DEFAULT_PENDING_ACCEPTS,
        };
        let spin = match &self.spin {
            None => None,
            Some(_) if matches!(self.net.kind, LndKind::Lo | LndKind::Mem) => {
                return Err(at.at(
                    raw,
                    "spin",
                    format!("{} nets do not busy-poll (tcp and o2ib do)", self.net),
                ))
            }
            Some(text) => Some(duration_at_most(
                at,
                text,
                "spin",
                crate::lnd::spin::MAX_SPIN,
                "a driver spinning longer holds a core for nothing",
            )?),
        };
        let mover_poll = match &self.mover_poll {
            None => None,
            Some(text) if self.net.kind != LndKind::Tcp => {
                return Err(at.at(
                    text,
                    "mover_poll",
                    format!("{} nets have no bulk mover (mover_poll is tcp's)", self.net),
                ))
            }
            Some(text) => Some(duration_at_most(
                at,
                text,
                "mover_poll",
                MAX_MOVER_POLL,
                "a mover idle that long is done with its stream",
            )?),
        };
        let eager_max = match &self.eager_max {
            None => None,
            Some(_) if self.net.kind != LndKind::O2ib => {
                return Err(at.at(
                    raw,
                    "eager_max",
                    format!(
                        "{} nets send every payload whole (eager_max is o2ib's)",
                        self.net
                    ),
                ))
            }
            Some(e) if !(1..=MAX_EAGER).contains(e.get_ref()) => {
                return Err(at.at(e, "eager_max", format!("expected 1 to {MAX_EAGER} bytes")))
            }
            Some(e) => Some(*e.get_ref()),
        };
        Ok(NetSection {
            nid,
            interface: self.interface.as_ref().map(|i| i.get_ref().clone()),
            peer_credits,
            credits,
            pending_accepts,
            check_source_address: self.check_source_address.unwrap_or(true),
            spin,
            mover_poll,
            eager_max,
        })
    }
}

/// `text` as a duration of at most `max` (`why` says why not more), or the error at `key`.
fn duration_at_most(
    at: &Located,
    text: &Spanned<String>,
    key: &str,
    max: Duration,
    why: &str,
) -> Result<Duration, ConfigFileError> {
    match humantime::parse_duration(text.get_ref()) {
        Ok(d) if d <= max => Ok(d),
        Ok(_) => Err(at.at(
            text,
            key,
            format!("at most {} ({why})", humantime::format_duration(max)),
        )),
        Err(e) => Err(at.at(
            text,
            key,
            format!(
                "expected a duration such as \"50us\" or \"1ms\", got {:?} ({e})",
                text.get_ref()
            ),
        )),
    }
}

impl RawHealth {
    fn apply(&self, node: &mut NodeConfig) {
        let h = &mut node.health;
        h.interval = self.interval.unwrap_or(h.interval);
        h.detect_mult = self.detect_mult.unwrap_or(h.detect_mult);
        h.probe_max = self.probe_max.unwrap_or(h.probe_max);
        h.sensitivity = self.sensitivity.unwrap_or(h.sensitivity);
    }
}

impl RawRouting {
    /// Applies the routing settings; returns `peer_buffer_credits` if set (0: unset).
    fn apply(&self, node: &mut NodeConfig, at: &Located) -> Result<Option<u16>, ConfigFileError> {
        node.forwarding = self.enable;
        if let Some(b) = &self.buffers {
            let d = PoolSizes::default();
            node.router_buffers = PoolSizes {
                tiny: b.tiny.unwrap_or(d.tiny),
                small: b.small.unwrap_or(d.small),
                large: b.large.unwrap_or(d.large),
            };
        }
        if let Some(p) = self.buffer_patience {
            node.router_patience = p;
        }
        node.forward_patience = self.forward_patience.unwrap_or(node.forward_patience);
        let r: &mut RouterConfig = &mut node.router;
        r.hold_down = self.hold_down.unwrap_or(r.hold_down);
        r.warm_up = self.warm_up.unwrap_or(r.warm_up);
        r.max_served = self.max_served.unwrap_or(r.max_served);
        if let Some(d) = &self.damping {
            r.half_life = d.half_life.unwrap_or(r.half_life);
            r.max_hold_down = d.max_hold_down.unwrap_or(r.max_hold_down);
        }
        if r.max_hold_down < r.hold_down {
            return Err(at.error(
                None,
                Some("routing.damping.max_hold_down".into()),
                format!(
                    "expected at least hold_down ({:?}), got {:?}",
                    r.hold_down, r.max_hold_down
                ),
            ));
        }
        Ok(self.peer_buffer_credits.filter(|&c| c > 0))
    }
}

/// An incarnation for a node starting now: the wall clock in nanoseconds, which differs
/// at every start (and grows, so a restart is never mistaken for an older life).
fn fresh_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .max(1)
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
