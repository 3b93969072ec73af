//! Failure detection, sans-IO: which peers are watched, when to PING them, and the verdicts.
//!
//! * A peer is monitored while it is *interesting*: operations to it are outstanding, or
//!   the application watches it. Nobody else is pinged or judged. An entry whose
//!   operations ended *lingers*, unseen, until the look it had booked (at most an
//!   interval), so that a peer sent one operation after another is not set up and torn
//!   down for each, and its silence goes on across them (a dead peer whose operations
//!   each time out before the detection time is still found Down); then it goes, and
//!   costs nothing more. At most
//!   [`LINGER_WHILE_PEERS_AT_MOST`] entries are kept for that: past it, one goes at once.
//! * Any frame from a peer proves it alive ([`Monitor::heard`]). A monitored peer silent for
//!   one `interval` gets a PING on the health lane, at most one per interval.
//! * Verdicts, BFD-style: silent for one interval, **Suspect**; for `detect_mult` intervals,
//!   **Down**. Health values (0..1000, LNet's) drop by `sensitivity` per unanswered ping and
//!   climb back as the peer answers; they rank peers and routes.
//! * Down peers that stay interesting are probed with a PING after one interval, then with
//!   doubling gaps up to `probe_max`; anything heard brings them back Up.
//! * Local health (Lifeguard): when this node itself falls behind, the silence it measured
//!   includes its own stall, so every peer's silence is shortened by the lag instead of
//!   accusing them, and none is judged Down the moment the node is back: each has at least
//!   one more interval to be heard (once per silence), as a stall of the whole machine
//!   stopped the peer too. Each such stretch is counted. Two signs: its loop runs late (a
//!   timer fires more than [`HealthConfig::lag_limit`] after it was due: `lag_tolerance`,
//!   at most half an interval), or its health lane is backed up (a health frame handed to
//!   the driver has not left after `lag_tolerance`). A stuck frame is forgiven for at most
//!   one detection time (and the interval of grace, once per silence): past that, the
//!   driver may be stuck *on* the peer (an RDMA send completes only when the peer
//!   acknowledges it).
//!
//! The node owns a [`Monitor`], feeds it frames and interest, and carries out its
//! [`Action`]s (send a PING, flush a dead peer, announce a recovery).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::memo_map::NidMap;
use crate::nid::Nid;
use crate::time::Time;

/// Failure-detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Silence after which a monitored peer is pinged (and suspected).
    pub interval: Duration,
    /// Intervals of silence after which a peer is declared Down.
    pub detect_mult: u32,
    /// Longest gap between probes of a Down peer (never less than `interval` in effect:
    /// a Down peer is not probed more often than a silent one is pinged).
    pub probe_max: Duration,
    /// Health lost per unanswered ping, and regained per answer (LNet: 100 of 1000).
    pub sensitivity: u16,
    /// How late this node's own timer may fire before it counts as local lag (at most half
    /// an interval whatever it says: [`HealthConfig::lag_limit`]), and how long a health
    /// frame may wait in the driver before its wait does.
    pub lag_tolerance: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(100),
            detect_mult: 3,
            probe_max: Duration::from_secs(10),
            sensitivity: 100,
            lag_tolerance: Duration::from_millis(50),
        }
    }
}

impl HealthConfig {
    /// Silence that makes a peer Down.
    pub fn detect_time(&self) -> Duration {
        self.interval * self.detect_mult
    }

    /// How late a timer of this node may fire before the stall is forgiven to its peers:
    /// `lag_tolerance`, but never more than half an interval (nor less than a millisecond,
    /// the granularity of an epoll wait). At a 3 ms interval a stall of 5 ms is most of a
    /// detection time (9 ms): were the default 50 ms kept, it would count against the
    /// peers and make false Downs.
    pub fn lag_limit(&self) -> Duration {
        self.lag_tolerance
            .min((self.interval / 2).max(Duration::from_millis(1)))
    }
}

/// The best health value.
pub const HEALTH_MAX: u16 = 1000;

/// What this node believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Up,
    /// Silent for at least one interval; pinged.
    Suspect,
    /// Silent for `detect_mult` intervals: its operations were failed; probed with backoff.
    Down,
}

/// A monitored peer, as reported to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHealth {
    pub state: PeerState,
    /// 0..=1000.
    pub health: u16,
    pub last_heard: Time,
}

/// Round trips of the health monitor's own PINGs (sent to PONG), in buckets: what the
/// metrics export as a histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttHistogram {
    /// `counts[i]`: round trips of at most `RttHistogram::BOUNDS[i]` (and above the bound
    /// before); the last one, those above every bound.
    pub counts: [u64; RttHistogram::BOUNDS.len() + 1],
    pub sum: Duration,
}

impl RttHistogram {
    pub const BOUNDS: [Duration; 16] = [
        Duration::from_micros(20),
        Duration::from_micros(50),
        Duration::from_micros(100),
        Duration::from_micros(200),
        Duration::from_micros(500),
        Duration::from_millis(1),
        Duration::from_millis(2),
        Duration::from_millis(5),
        Duration::from_millis(10),
        Duration::from_millis(20),
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_millis(200),
        Duration::from_millis(500),
        Duration::from_secs(1),
        Duration::from_secs(5),
    ];

    pub fn record(&mut self, rtt: Duration) {
        let i = Self::BOUNDS.partition_point(|&b| b < rtt);
        self.counts[i] += 1;
        self.sum += rtt;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Counters of the monitor's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthStats {
    pub pings_sent: u64,
    pub downs: u64,
    pub recoveries: u64,
    /// Times this node found itself lagging (a look of its own came late, or its health
    /// lane backed up) and stretched the silence of the peers it monitors, if any.
    pub lag_stretches: u64,
    /// Of those, the ones found from its own health lane backed up.
    pub backlog_stretches: u64,
    /// The longest such lag.
    pub max_lag: Duration,
    /// The longest silence of a peer that was Suspect and then heard again, as the
    /// detector judged it: how near it came to a false Down, against
    /// [`HealthConfig::detect_time`]. This node's own stall is forgiven from the look it
    /// made late; so a value at the detection time means the last look before Down came
    /// late, and the answer was already waiting. Zero until a peer was silent for a whole
    /// interval and then heard.
    pub longest_silence: Duration,
}

/// What the node must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send a PING to the peer on the health lane.
    Ping(Nid),
    /// The peer is Down, after `silent` without a word.
    Down { peer: Nid, silent: Duration },
    /// A Down peer was heard again.
    Recovered(Nid),
}

/// Entries whose operations ended linger only while the table holds at most this many:
/// past it, they go at once, as if lingering were not, so a flood of operations to
/// ever-new peers (with a long interval) cannot grow it.
pub(crate) const LINGER_WHILE_PEERS_AT_MOST: usize = 4096;

struct Watch {
    /// Outstanding operations to the peer.
    interest: u32,
    watched: bool,
    state: PeerState,
    last_heard: Time,
    /// When the last PING went out, while unanswered.
    ping_sent: Option<Time>,
    health: u16,
    /// Probes sent since it went Down (the backoff exponent).
    probes: u32,
    /// When the last of those went out.
    probed_at: Time,
    /// When the peer next needs looking at (a lingering entry: when it goes); `None` while
    /// it needs nothing (remembered Down, unprobed).
    due: Option<Time>,
    /// Something came from it since this entry was made: its silence is measured, not
    /// merely assumed from when monitoring started.
    heard: bool,
    /// This silence of its was already cut short once after a stall of this node's own
    /// (see [`Monitor::stretch`]): once per silence, so that a node whose looks keep
    /// coming late still finds a dead peer Down.
    graced: bool,
}

impl Watch {
    /// Monitoring starts now: silence is counted from here.
    fn new(now: Time) -> Watch {
        Watch {
            interest: 0,
            watched: false,
            state: PeerState::Up,
            last_heard: now,
            ping_sent: None,
            health: HEALTH_MAX,
            probes: 0,
            probed_at: Time::ZERO,
            due: None,
            heard: false,
            graced: false,
        }
    }

    fn interesting(&self) -> bool {
        self.interest > 0 || self.watched
    }

    /// Kept only until its timer comes: nobody's interest, and not remembered Down.
    /// Nothing outside the monitor sees such an entry.
    fn lingering(&self) -> bool {
        !self.interesting() && self.state != PeerState::Down
    }

    /// Taken up again before the look it lingers for (at most an interval after its last
    /// operation ended): monitoring goes on with the same silence, judged at that look,
    /// rather than starting afresh. Afresh, a dead peer sent one operation after another,
    /// each ending (timed out) before the detection time, would never be found Down.
    fn resumable(&self) -> bool {
        self.lingering() && self.due.is_some()
    }
}

/// The looks booked at peers, soonest first. An entry whose time no longer matches its
/// peer's `due` is stale, and is dropped when it comes to the top.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Time, Nid)>>,
    /// The top as [`Monitor::next_deadline`] last found it current. It stays so until that
    /// peer's `due` changes or its entry goes, which every such change tells
    /// ([`Timers::changed`]): the driver asks every turn, and would look the peer up each
    /// time.
    current_top: Option<(Time, Nid)>,
}

impl Timers {
    fn len(&self) -> usize {
        self.heap.len()
    }

    /// `nid`'s `due` changed or its entry went.
    fn changed(&mut self, nid: Nid) {
        if self.current_top.is_some_and(|(_, n)| n == nid) {
            self.current_top = None;
        }
    }

    fn forget_all_current(&mut self) {
        self.current_top = None;
    }
}

/// Books a look at `w` (the watch of `nid`) at `at`, unless an earlier one is booked
/// (it reschedules).
fn book(timers: &mut Timers, nid: Nid, w: &mut Watch, at: Time) {
    if w.due.is_some_and(|d| d <= at) {
        return;
    }
    w.due = Some(at);
    timers.changed(nid);
    timers.heap.push(Reverse((at, nid)));
}

/// A peer became interesting: count its silence from now (a Down one is probed now).
fn start(timers: &mut Timers, interval: Duration, nid: Nid, w: &mut Watch, now: Time) {
    if w.state == PeerState::Down {
        w.probes = 0;
        book(timers, nid, w, now);
    } else {
        w.last_heard = w.last_heard.max(now);
        book(timers, nid, w, now + interval);
    }
}

/// Whether nobody needs the entry any more, so that it may go (at once, or after lingering).
/// A Down one is still needed: remembered (unprobed) so that new operations to it fail
/// fast; each such attempt [pokes](Monitor::poke) it into another probe, on its backoff.
fn unneeded(timers: &mut Timers, nid: Nid, w: &mut Watch) -> bool {
    if w.interesting() {
        return false;
    }
    if w.state == PeerState::Down {
        w.due = None;
        timers.changed(nid);
        return false;
    }
    true
}

/// The wait after a Down peer's `probes`-th probe before the next: doubling from an
/// interval, up to `probe_max`. At least an interval: a `probe_max` of zero would book
/// the next probe now, and the tick would run it at once, for ever.
fn probe_gap(cfg: &HealthConfig, probes: u32) -> Duration {
    cfg.interval
        .saturating_mul(1u32 << probes.min(20))
        .min(cfg.probe_max)
        .max(cfg.interval)
}

/// What any frame from the peer of `w` tells: it is alive now.
fn refresh(w: &mut Watch, now: Time, sensitivity: u16) {
    w.last_heard = w.last_heard.max(now);
    w.heard = true;
    w.graced = false;
    w.ping_sent = None;
    w.health = w.health.saturating_add(sensitivity).min(HEALTH_MAX);
}

pub(crate) struct Monitor {
    cfg: HealthConfig,
    peers: NidMap<Watch>,
    timers: Timers,
    /// The deadline last reported to the node's driver: firing much later means local lag.
    promised: Option<Time>,
    /// Silence up to here has already been forgiven: overlapping signs of one stall (a late
    /// timer and a stuck frame) stretch it once.
    forgiven_until: Time,
    stats: HealthStats,
}

impl Monitor {
    /// Entries (monitored, remembered Down, or lingering), and timers pending (stale ones
    /// included).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.peers.len(), self.timers.len())
    }

    pub(crate) fn new(mut cfg: HealthConfig) -> Monitor {
        // What validation refuses, for a node built without it (a release build checks
        // it only where a driver loop starts): an interval of zero would book each look
        // at the instant of the last, which the same tick would run again, for ever.
        cfg.interval = cfg.interval.max(crate::config::MIN_HEALTH_INTERVAL);
        Monitor {
            cfg,
            peers: NidMap::default(),
            timers: Timers::default(),
            promised: None,
            forgiven_until: Time::ZERO,
            stats: HealthStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> HealthStats {
        self.stats
    }

    /// Drops `nid`'s entry, and the timer top known current if it was its.
    fn forget(&mut self, nid: Nid) {
        self.peers.remove(&nid);
        self.timers.changed(nid);
    }

    /// The entry of a monitored (or remembered Down) peer; not a lingering one.
    fn watch_of(&self, nid: Nid) -> Option<&Watch> {
        self.peers.get(&nid).filter(|w| !w.lingering())
    }

    pub(crate) fn peer(&self, nid: Nid) -> Option<PeerHealth> {
        self.watch_of(nid).map(|w| PeerHealth {
            state: w.state,
            health: w.health,
            last_heard: w.last_heard,
        })
    }

    pub(crate) fn is_down(&self, nid: Nid) -> bool {
        self.peers
            .get(&nid)
            .is_some_and(|w| w.state == PeerState::Down)
    }

    /// Whether this node can say, from what it heard, that it reaches `nid`: monitored, Up,
    /// and heard from since monitoring began (or since the lingering entry it resumed
    /// began: at most about an interval before).
    pub(crate) fn vouches_for(&self, nid: Nid) -> bool {
        self.watch_of(nid)
            .is_some_and(|w| w.heard && w.state == PeerState::Up)
    }

    /// Every peer it has an entry for (monitored, or remembered Down), in NID order.
    pub(crate) fn all(&self) -> Vec<(Nid, PeerHealth)> {
        let mut v: Vec<(Nid, PeerHealth)> = self
            .peers
            .keys()
            .filter_map(|&n| self.peer(n).map(|h| (n, h)))
            .collect();
        v.sort_unstable_by_key(|(n, _)| *n);
        v
    }

    /// The peers held Down, in NID order.
    pub(crate) fn down_peers(&self) -> Vec<Nid> {
        let mut v: Vec<Nid> = self
            .peers
            .iter()
            .filter(|(_, w)| w.state == PeerState::Down)
            .map(|(n, _)| *n)
            .collect();
        v.sort_unstable();
        v
    }

    /// Peers currently monitored (interesting), for tests and tools.
    pub(crate) fn monitored(&self) -> usize {
        self.peers.values().filter(|w| w.interesting()).count()
    }

    fn schedule(&mut self, nid: Nid, at: Time) {
        if let Some(w) = self.peers.get_mut(&nid) {
            book(&mut self.timers, nid, w, at);
        }
    }

    /// An operation to `nid` started. One lookup: it runs once per operation.
    pub(crate) fn interest_started(&mut self, nid: Nid, now: Time) {
        let w = self.peers.entry(nid).or_insert_with(|| Watch::new(now));
        let (was, resumed) = (w.interesting(), w.resumable());
        w.interest += 1;
        if !was && !resumed {
            start(&mut self.timers, self.cfg.interval, nid, w, now);
        }
    }

    /// An operation to `nid` ended. One lookup: it runs once per operation. An entry
    /// nobody needs any more lingers until its timer (see the module's documentation).
    pub(crate) fn interest_ended(&mut self, nid: Nid) {
        let crowded = self.peers.len() > LINGER_WHILE_PEERS_AT_MOST;
        if let Some(w) = self.peers.get_mut(&nid) {
            w.interest = w.interest.saturating_sub(1);
            if unneeded(&mut self.timers, nid, w) && crowded {
                self.forget(nid);
            }
        }
    }

    /// The application watches (or stops watching) `nid`.
    pub(crate) fn watch(&mut self, nid: Nid, now: Time, on: bool) {
        let w = self.peers.entry(nid).or_insert_with(|| Watch::new(now));
        let (was, resumed) = (w.interesting(), w.resumable());
        w.watched = on;
        if !was && on && !resumed {
            start(&mut self.timers, self.cfg.interval, nid, w, now);
        }
        if unneeded(&mut self.timers, nid, w) {
            self.forget(nid);
        }
    }

    /// Whether `nid` is monitored for someone: an operation's, or the application's or the
    /// router's watch (not merely remembered Down).
    pub(crate) fn wants(&self, nid: Nid) -> bool {
        self.peers.get(&nid).is_some_and(Watch::interesting)
    }

    /// Forgets every entry nobody is interested in: the lingering ones, and the Down peers
    /// remembered for nobody (see `unneeded`), to which operations then no longer fail
    /// fast but try a connection first. What keeps a flood of NIDs that never answer from
    /// growing the table without bound. Those `keep` names stay (a bounded set: our
    /// gateways, whose routes are down while they are).
    pub(crate) fn forget_uninteresting(&mut self, keep: impl Fn(&Nid) -> bool) {
        self.peers.retain(|nid, w| w.interesting() || keep(nid));
        self.timers.forget_all_current();
    }

    /// Someone wanted a Down peer nobody monitors (an operation to it, a frame a router
    /// would pass to it, a route through it): probe it again, so that its return is
    /// noticed. On its backoff, as if monitored: wanted at every turn, by an application
    /// retrying or a stream of frames, it is probed no more often than that.
    pub(crate) fn poke(&mut self, nid: Nid, now: Time) {
        let cfg = self.cfg;
        if let Some(w) = self
            .peers
            .get_mut(&nid)
            .filter(|w| w.state == PeerState::Down && w.due.is_none())
        {
            let at = if w.probes == 0 {
                now
            } else {
                (w.probed_at + probe_gap(&cfg, w.probes)).max(now)
            };
            book(&mut self.timers, nid, w, at);
        }
    }

    /// A frame came from `nid`. Returns `Recovered` if it was Down.
    pub(crate) fn heard(&mut self, nid: Nid, now: Time) -> Option<Action> {
        // A lingering entry hears too: its silence goes on if it is taken up again.
        let w = self.peers.get_mut(&nid)?;
        if w.state == PeerState::Suspect {
            return self.suspect_heard(nid, now);
        }
        refresh(w, now, self.cfg.sensitivity);
        match w.state {
            PeerState::Up | PeerState::Suspect => None,
            PeerState::Down => {
                w.state = PeerState::Up;
                w.probes = 0;
                self.stats.recoveries += 1;
                if w.interesting() {
                    w.due = None;
                    book(&mut self.timers, nid, w, now + self.cfg.interval);
                } else {
                    self.forget(nid); // back, and nobody's business: no entry
                }
                Some(Action::Recovered(nid))
            }
        }
    }

    /// [`Monitor::heard`] of a Suspect peer: Up again, and its silence measured as the
    /// detector judged it. A stall of this node's own that ends with this frame (a look
    /// due while it was stopped) is forgiven first, as that late look would forgive it;
    /// otherwise the node's own stall would count as the peer's.
    fn suspect_heard(&mut self, nid: Nid, now: Time) -> Option<Action> {
        self.forgive_own_stall(now);
        let w = self
            .peers
            .get_mut(&nid)
            .expect("a Suspect peer has an entry");
        let silence = now.saturating_since(w.last_heard);
        self.stats.longest_silence = self.stats.longest_silence.max(silence);
        refresh(w, now, self.cfg.sensitivity);
        w.state = PeerState::Up;
        None
    }

    /// When the monitor next needs [`Monitor::tick`].
    pub(crate) fn next_deadline(&mut self) -> Option<Time> {
        while let Some(Reverse(top)) = self.timers.heap.peek().copied() {
            let (t, nid) = top;
            if self.timers.current_top == Some(top)
                || self.peers.get(&nid).is_some_and(|w| w.due == Some(t))
            {
                self.timers.current_top = Some(top);
                self.promised = Some(t);
                return Some(t);
            }
            self.timers.heap.pop();
        }
        self.promised = None;
        None
    }

    /// Runs what is due at `now`, appending the actions to `out`.
    pub(crate) fn tick(&mut self, now: Time, out: &mut Vec<Action>) {
        self.check_lag(now);
        while let Some(Reverse((t, nid))) = self.timers.heap.peek().copied() {
            if t > now {
                break;
            }
            self.timers.heap.pop();
            let current = self.peers.get(&nid).is_some_and(|w| w.due == Some(t));
            if current {
                self.peers.get_mut(&nid).expect("checked").due = None;
                self.timers.changed(nid);
                self.evaluate(nid, now, out);
            }
        }
    }

    /// Lifeguard's local health: a timer that fires late means this node was not
    /// listening; its peers' silence is shortened by the lag rather than held against them.
    fn check_lag(&mut self, now: Time) {
        self.forgive_own_stall(now);
        self.promised = None; // the look came: the next promise is the next deadline's
    }

    /// [`Monitor::check_lag`] between looks: forgives the stall `now` shows, if any, and
    /// keeps the promise (moved to `now`), so that the look to come still measures any
    /// stall after this one, and not this one twice.
    fn forgive_own_stall(&mut self, now: Time) {
        let Some(promised) = self.promised else {
            return;
        };
        if now.saturating_since(promised) > self.cfg.lag_limit() {
            self.stretch(promised, now);
            self.promised = Some(now);
        }
    }

    /// This node's health lane is backed up: a health frame handed to the driver at `since`
    /// had not left by `now`. Past `lag_tolerance`, that time is the node's own lag, up to
    /// one detection time per frame. Call it before [`Monitor::tick`] while a frame is
    /// stuck, and once more when it leaves.
    pub(crate) fn backlog(&mut self, since: Time, now: Time) {
        // Not `lag_limit`: a frame stuck on a dead peer (an RDMA send completes only when
        // the peer acknowledges it) would forgive every peer's silence at short intervals.
        if now.saturating_since(since) <= self.cfg.lag_tolerance {
            return;
        }
        let until = now.min(since + self.cfg.detect_time());
        if self.stretch(since, until) {
            self.stats.backlog_stretches += 1;
        }
    }

    /// Shortens every peer's silence by the part of `from..until` not yet forgiven.
    fn stretch(&mut self, from: Time, until: Time) -> bool {
        let lag = until.saturating_since(from.max(self.forgiven_until));
        if lag.is_zero() {
            return false;
        }
        self.forgiven_until = until;
        self.stats.lag_stretches += 1;
        self.stats.max_lag = self.stats.max_lag.max(lag);
        // Pushed forward by the lag, but never past the stall's end, nor backwards.
        let shift = |t: Time| t.max((t + lag).min(until));
        // And no peer still Up or Suspect is left more silent than one interval short of
        // Down: this node was not listening, so a peer whose Down look fell in the stall
        // (the peer stopped with it, when the whole machine did) has an interval more to
        // be heard, rather than being judged the moment the node is back. Once per
        // silence: a node whose every look comes late must still find a dead peer Down.
        let judged_from = Time::from_duration(
            until
                .as_duration()
                .saturating_sub(self.cfg.detect_time().saturating_sub(self.cfg.interval)),
        );
        for w in self.peers.values_mut() {
            w.last_heard = shift(w.last_heard);
            if w.state != PeerState::Down && !w.graced && w.last_heard < judged_from {
                w.last_heard = judged_from;
                w.graced = true;
            }
            w.ping_sent = w.ping_sent.map(shift);
        }
        true
    }

    fn evaluate(&mut self, nid: Nid, now: Time, out: &mut Vec<Action>) {
        let cfg = self.cfg;
        let Some(w) = self.peers.get_mut(&nid) else {
            return;
        };
        if w.lingering() {
            self.forget(nid); // its time is up: nobody came back to it
            return;
        }
        if w.state == PeerState::Down {
            out.push(Action::Ping(nid));
            self.stats.pings_sent += 1;
            w.probes += 1;
            w.probed_at = now;
            if !w.interesting() {
                return; // a poked probe: the next one waits for the next poke
            }
            let gap = probe_gap(&cfg, w.probes);
            self.schedule(nid, now + gap);
            return;
        }
        let silent = now.saturating_since(w.last_heard);
        if silent >= cfg.detect_time() {
            w.state = PeerState::Down;
            w.ping_sent = None;
            w.probes = 0;
            self.stats.downs += 1;
            out.push(Action::Down { peer: nid, silent });
            self.schedule(nid, now + cfg.interval);
            return;
        }
        let mut next = w.last_heard + cfg.interval;
        if silent >= cfg.interval {
            w.state = PeerState::Suspect;
            let ping_due = w
                .ping_sent
                .is_none_or(|p| now.saturating_since(p) >= cfg.interval);
            if ping_due {
                if w.ping_sent.is_some() {
                    // The last one went unanswered for a whole interval.
                    w.health = w.health.saturating_sub(cfg.sensitivity);
                }
                w.ping_sent = Some(now);
                out.push(Action::Ping(nid));
                self.stats.pings_sent += 1;
            }
            let ping_next = w.ping_sent.expect("set above") + cfg.interval;
            next = ping_next.min(w.last_heard + cfg.detect_time());
        }
        self.schedule(nid, next.max(now + Duration::from_micros(1)));
    }
}

#[cfg(test)]
mod tests;
