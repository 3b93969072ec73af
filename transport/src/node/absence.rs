//! A router's judgment of itself: does it forward, and if not, why (DESIGN.md, "Black-hole
//! self-absence").
//!
//! * **What it watches.** The peers it forwarded frames to or from lately (*served*), its
//!   *fellows* (the other routers of its nets, configured), and the peers a fellow says it
//!   cannot reach (*asked*: it checks whether it reaches them itself). Watching costs what
//!   any monitored peer costs: a PING when silent.
//! * **Black hole.** Net-level: one of its NIs is down, or every peer it watches on a net is
//!   Down (*silent net*). Peer-level: a peer it serves is Down for it, and a fellow vouches
//!   for that peer (heard from it since it began to watch it, or within about an
//!   interval before, across back-to-back operations). If nobody reaches the peer,
//!   the peer died (maybe a failover in progress): nobody withdraws.
//! * **Advertise, then withdraw.** A Down peer is listed as unreachable (and a silent net
//!   as down) in the status at once, so senders avoid this router for it; then, if fellows
//!   cover for it, the router withdraws from every net: absent (black hole), pushed, routed
//!   frames refused, its own PINGs answered.
//! * **Fail open.** It does not withdraw when that would leave a pair of its nets with no
//!   other forwarding router whose NIs on both are up (as far as its fellows' statuses
//!   say): it stays, *degraded*, its status saying what it cannot reach.
//! * **Return.** After a hold-down of sustained health. Each flap (a withdrawal, or the
//!   cause coming back during the hold-down) adds 1000 to a penalty that halves every
//!   `half_life`; the hold-down is `hold_down` x penalty/1000 (at least once, at most
//!   `max_hold_down`): a flapping router stays out longer. At once, whatever its penalty,
//!   when no fellow covers for it any more (fail open), as when the fellow that vouched
//!   for the peer it could not reach died.
//! * **Warm-up and the operator.** A starting router is absent (warming up) for
//!   `warm_up`; the operator may take it out (administrator) or stop it (stopping). The
//!   operator's word comes first, then warm-up, then a black hole.
//!
//! Every transition is logged with its cause, raised as [`Event::RouterChanged`] and
//! counted ([`AbsenceStats`]).

use std::fmt;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};

use super::Node;
use crate::health::PeerState;
use crate::nid::{Net, Nid};
use crate::op::Event;
use crate::time::Time;
use crate::wire::{AbsentReason, RouterState};

/// Why a router cannot deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlackHole {
    /// Its NI on the net is down (its driver failed).
    NiDown(Net),
    /// Every peer it watches on the net is Down.
    NetSilent(Net),
    /// It cannot reach `peer`, and fellow router `fellow` can.
    PeerUnreachable { peer: Nid, fellow: Nid },
}

impl fmt::Display for BlackHole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlackHole::NiDown(net) => write!(f, "its NI on {net} is down"),
            BlackHole::NetSilent(net) => write!(f, "every peer it watches on {net} is silent"),
            BlackHole::PeerUnreachable { peer, fellow } => {
                write!(f, "it cannot reach {peer}, which {fellow} reaches")
            }
        }
    }
}

/// Counters of a router's judgment of itself.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AbsenceStats {
    /// Times it withdrew for a black hole.
    pub withdrawals: u64,
    /// Times it came back: after its hold-down, or at once when its fellows no longer
    /// covered for it.
    pub returns: u64,
    /// Withdrawals, and causes back during a hold-down.
    pub flaps: u64,
    /// Times it stayed although it could not deliver, being the last router there.
    pub degradations: u64,
    /// The flap penalty now (1000 per flap, decaying).
    pub penalty: f64,
    /// Frames forwarded to or from a peer it did not watch, having `max_served` watched
    /// already (frames, not peers: counting peers would need the table it saves).
    pub unwatched_forwards: u64,
}

/// A router's view of itself, beside its status: why it is absent or degraded.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterCondition {
    pub state: RouterState,
    /// What it cannot deliver to, if anything (absent or not).
    pub black_hole: Option<BlackHole>,
    /// It cannot deliver but stays, being the last router of a pair of its nets.
    pub degraded: bool,
    /// Withdrawn for a black hole: how long the cause has been clear, and the hold-down
    /// it must reach.
    pub hold_down: Option<(Duration, Duration)>,
    pub counters: AbsenceStats,
}

/// What a router keeps to judge itself.
#[derive(Default)]
pub(crate) struct Absence {
    /// Stopping or administrator: the operator's word.
    operator: Option<AbsentReason>,
    /// Absent (warming up) until then; set at the router's first tick.
    warm_until: Option<Time>,
    black_hole: Option<BlackHole>,
    /// Withdrawn for a black hole since then, and clear of its cause since then.
    withdrawn: Option<(Time, Option<Time>)>,
    /// A black hole its fellows cover for was found: it withdraws at this time if they
    /// still do, two intervals on, so that a fellow with the same cause, found at the same
    /// moment, has said so by then (its pushes wait up to an interval behind its last,
    /// then travel); else each would go counting on the other.
    withdraw_at: Option<Time>,
    degraded: bool,
    penalty: f64,
    penalty_at: Time,
    stats: AbsenceStats,
    /// Peers forwarded to or from, and when last.
    served: FxHashMap<Nid, Time>,
    /// Peers a fellow cannot reach, watched here to vouch for them.
    asked: FxHashSet<Nid>,
    /// Fellows watched (once, at the first tick).
    fellows_watched: bool,
    last_sweep: Time,
    /// When the judgment is next due.
    pub(crate) due: Option<Time>,
}

/// Penalty of one flap.
const FLAP: f64 = 1000.0;

impl Absence {
    /// Peers forwarded to or from lately.
    pub(crate) fn served_peers(&self) -> impl Iterator<Item = &Nid> {
        self.served.keys()
    }

    /// Whether `peer` matters to this router's judgment, and its fellows': it serves it,
    /// or watches it for a fellow.
    pub(crate) fn concerns(&self, peer: &Nid) -> bool {
        self.listing_rank(peer) < 2
    }

    /// Where `peer` goes in the list of peers the router cannot reach, which is cut at
    /// [`crate::wire::MAX_UNREACHABLE`]: those it serves first (its senders send to them,
    /// its fellows judge by them), then those it watches for a fellow, then the rest.
    pub(crate) fn listing_rank(&self, peer: &Nid) -> u8 {
        if self.served.contains_key(peer) {
            0
        } else if self.asked.contains(peer) {
            1
        } else {
            2
        }
    }

    /// A router's is judged at its first tick; a plain node's never.
    pub(crate) fn new(forwarding: bool) -> Absence {
        Absence {
            due: forwarding.then_some(Time::ZERO),
            ..Absence::default()
        }
    }

    fn penalty(&self, now: Time, half_life: Duration) -> f64 {
        let age = now.saturating_since(self.penalty_at).as_secs_f64();
        let hl = half_life.as_secs_f64().max(1e-3);
        self.penalty * 0.5f64.powf(age / hl)
    }

    fn flap(&mut self, now: Time, half_life: Duration) {
        self.penalty = self.penalty(now, half_life) + FLAP;
        self.penalty_at = now;
        self.stats.flaps += 1;
    }
}

impl Node {
    /// Whether this router serves `peer` now, and whether it watches it because a fellow
    /// asked (listed it as unreachable).
    #[cfg(test)]
    pub(crate) fn served_and_asked(&self, peer: Nid) -> (bool, bool) {
        let a = &self.router.absence;
        (a.served.contains_key(&peer), a.asked.contains(&peer))
    }

    /// What this node, as a router, says of itself and why.
    pub fn router_condition(&self) -> RouterCondition {
        let a = &self.router.absence;
        let now = self.clock.unwrap_or_default();
        let hold_down = a.withdrawn.map(|(_, clear)| {
            let clear_for = clear.map_or(Duration::ZERO, |c| now.saturating_since(c));
            (clear_for, self.hold_down(now))
        });
        RouterCondition {
            state: self.router.status.state,
            black_hole: a.black_hole,
            degraded: a.degraded,
            hold_down,
            counters: AbsenceStats {
                penalty: a.penalty(now, self.cfg.router.half_life),
                ..a.stats
            },
        }
    }

    /// The operator takes this router out (`Absent(Administrator)`), stops it
    /// (`Absent(Stopping)`: it refuses new frames and forwards what it holds), or lets it
    /// forward again (`Forwarding`: warm-up and black-hole judgment still apply).
    ///
    /// Stopping is final: once stopping, the router stays absent whatever comes next, and
    /// this returns false.
    pub fn set_router_state(&mut self, now: Time, state: RouterState) -> bool {
        self.clock = Some(now);
        if self.router.absence.operator == Some(AbsentReason::Stopping) {
            tracing::warn!(?state, "ignored: the router is stopping");
            return false;
        }
        self.router.absence.operator = match state {
            RouterState::Forwarding => None,
            RouterState::Absent(why) => Some(why),
        };
        self.judge_router(now);
        true
    }

    fn hold_down(&self, now: Time) -> Duration {
        let r = &self.cfg.router;
        let times = (self.router.absence.penalty(now, r.half_life) / FLAP).max(1.0);
        Duration::try_from_secs_f64(r.hold_down.as_secs_f64() * times)
            .map_or(r.max_hold_down, |d| d.min(r.max_hold_down))
    }

    /// A frame passed between `upstream` and `downstream`: both are served, and watched,
    /// up to `max_served` peers (a sender naming made-up NIDs must not grow the tables).
    pub(crate) fn router_served(&mut self, now: Time, peers: [Nid; 2]) {
        let a = &mut self.router.absence;
        let mut unwatched = false;
        for peer in peers {
            if let Some(seen) = a.served.get_mut(&peer) {
                *seen = now;
            } else if a.served.len() < self.cfg.router.max_served {
                a.served.insert(peer, now);
                self.health.interest_started(peer, now);
            } else {
                unwatched = true;
            }
        }
        if unwatched {
            if a.stats.unwatched_forwards == 0 {
                tracing::warn!(
                    max_served = self.cfg.router.max_served,
                    "forwarding for more peers than it watches: new ones go unwatched \
                     (see `unwatched_forwards` in the router's counters)"
                );
            }
            a.stats.unwatched_forwards += 1;
        }
    }

    /// The node stops: it watches no router (nor, as a router, any peer) any more, and
    /// judges itself no more.
    pub(crate) fn router_stop_watching(&mut self) {
        let a = std::mem::take(&mut self.router.absence);
        let polled = std::mem::take(&mut self.gateways.polled);
        for p in a.served.keys().chain(&a.asked).chain(&polled) {
            self.health.interest_ended(*p);
        }
        if a.fellows_watched {
            for f in &self.cfg.router.fellows {
                self.health.interest_ended(*f);
            }
        }
    }

    /// Judges the router again soon (something it depends on changed).
    pub(crate) fn router_judgment_due(&mut self, now: Time) {
        if self.cfg.forwarding && self.shut_down.is_none() {
            self.router.absence.due = Some(now);
        }
    }

    /// A peer a fellow cannot reach was heard: vouching for it may be news.
    pub(crate) fn router_heard(&mut self, now: Time, nid: Nid) {
        if self.router.absence.asked.contains(&nid) && !self.router.status.vouched.contains(&nid) {
            self.router_status_changed(now);
        }
    }

    /// What the router says of its nets: up, unless its NI is down or the net is silent.
    pub(crate) fn router_nets(&self) -> Vec<(Net, bool)> {
        self.nis
            .iter()
            .map(|ni| (ni.nid.net(), ni.up && !self.net_silent(ni.nid.net())))
            .collect()
    }

    /// Peers a fellow cannot reach that this router reaches.
    pub(crate) fn router_vouched(&self) -> Vec<Nid> {
        let mut v: Vec<Nid> = self
            .router
            .absence
            .asked
            .iter()
            .copied()
            .filter(|&p| self.health.vouches_for(p))
            .collect();
        v.sort_unstable();
        v
    }

    /// Every peer watched on `net` is Down, there are at least two (one peer's silence
    /// is judged peer by peer), and the fellows show the net is there: one vouches for a
    /// peer of it, or a fellow silent here on `net` says, by another net, that its NI on
    /// `net` is up. Then this router is cut off. Without such evidence the peers died (a
    /// failover may be under way), which is no fault of this router's; and when every
    /// router loses the net at once, none can tell that from the peers dying.
    fn net_silent(&self, net: Net) -> bool {
        let a = &self.router.absence;
        let watched: FxHashSet<Nid> = a
            .served
            .keys()
            .chain(&a.asked)
            .chain(&self.cfg.router.fellows)
            .filter(|p| p.is_on(net))
            .copied()
            .collect();
        let mut vouched = false;
        for &p in &watched {
            let down = self
                .health
                .peer(p)
                .is_some_and(|h| h.state == PeerState::Down);
            if !down {
                return false;
            }
            vouched |= self.vouched_by_fellow(p).is_some();
            vouched |= self.cfg.router.fellows.contains(&p) && self.fellow_hears(net);
        }
        watched.len() >= 2 && vouched
    }

    /// A fellow alive on another net says its NI on `net` is up.
    fn fellow_hears(&self, net: Net) -> bool {
        self.cfg.router.fellows.iter().any(|&f| {
            !f.is_on(net)
                && self.fellow_alive(f)
                && self
                    .gateways
                    .view(f)
                    .is_some_and(|v| v.net_up(net) == Some(true))
        })
    }

    /// A live fellow that vouches for `peer`, if any.
    fn vouched_by_fellow(&self, peer: Nid) -> Option<Nid> {
        self.cfg.router.fellows.iter().copied().find(|&f| {
            self.fellow_alive(f)
                && self
                    .gateways
                    .view(f)
                    .is_some_and(|v| v.vouched.contains(&peer))
        })
    }

    /// The router's periodic and event-driven judgment of itself.
    pub(crate) fn judge_router(&mut self, now: Time) {
        let a = &mut self.router.absence;
        a.due = None;
        if !self.cfg.forwarding || self.shut_down.is_some() {
            return;
        }
        let cfg = self.cfg.router.clone();
        let warm_until = *a.warm_until.get_or_insert(now + cfg.warm_up);
        if !a.fellows_watched {
            a.fellows_watched = true;
            for &f in &cfg.fellows {
                self.health.interest_started(f, now);
            }
        }
        self.sweep_served(now);
        self.ask_for_fellows(now);

        let cause = self.find_black_hole();
        // Asked also of a withdrawn router whose cause went: a cause that named a fellow
        // (vouching, or hearing a net) goes when that fellow dies, and then nobody may
        // cover for it either.
        let covered =
            (cause.is_some() || self.router.absence.withdrawn.is_some()) && self.fellows_cover();
        let half_life = cfg.half_life;
        let hold = self.hold_down(now);
        let hold_off = self.cfg.health.interval * 2;
        let a = &mut self.router.absence;
        if cause.is_none() || !covered {
            a.withdraw_at = None;
        }
        if cause != a.black_hole {
            match cause {
                Some(c) => tracing::warn!("router: {c}"),
                None => tracing::info!("router: delivers everywhere again"),
            }
        }
        a.black_hole = cause;
        let was_degraded = a.degraded;
        match (cause, a.withdrawn) {
            (Some(_), Some(_)) if !covered => {
                // Its fellows no longer cover for it: it comes back rather than leave a
                // pair of nets with no router (fail-open).
                a.withdrawn = None;
                a.degraded = true;
            }
            (Some(_), Some((since, Some(_)))) => {
                // The cause is back during the hold-down: a flap, and the clock restarts.
                a.withdrawn = Some((since, None));
                a.flap(now, half_life);
            }
            (Some(_), Some((_, None))) => {}
            (Some(_), None) if covered => {
                // Listed as unreachable at once (its senders avoid it for that peer);
                // gone only if its fellows still cover for it two intervals later.
                // (Degraded or not, it stays as it was meanwhile.)
                let at = *a.withdraw_at.get_or_insert(now + hold_off);
                if now >= at {
                    a.withdraw_at = None;
                    a.degraded = false;
                    a.withdrawn = Some((now, None));
                    a.stats.withdrawals += 1;
                    a.flap(now, half_life);
                }
            }
            (Some(_), None) => a.degraded = true,
            (None, Some(_)) if !covered => {
                // Clear of its cause, or of one it can no longer tell (the fellow that
                // vouched died): either way no fellow covers for it, and it comes back
                // now rather than leave a pair of nets with no router for a hold-down.
                a.degraded = false;
                a.withdrawn = None;
                a.stats.returns += 1;
            }
            (None, Some((since, clear))) => {
                a.degraded = false;
                let clear = clear.unwrap_or(now);
                a.withdrawn = Some((since, Some(clear)));
                if now.saturating_since(clear) >= hold {
                    a.withdrawn = None;
                    a.stats.returns += 1;
                }
            }
            (None, None) => a.degraded = false,
        }
        if a.degraded && !was_degraded {
            a.stats.degradations += 1;
        }
        let state = if let Some(why) = a.operator {
            RouterState::Absent(why)
        } else if now < warm_until {
            RouterState::Absent(AbsentReason::WarmingUp)
        } else if a.withdrawn.is_some() {
            RouterState::Absent(AbsentReason::BlackHole)
        } else {
            RouterState::Forwarding
        };
        // Judged again when time alone changes something: warm-up ends, a hold-down
        // passes, served peers go idle. Everything else that matters is an event.
        let sweep = (!a.served.is_empty()).then(|| now + self.cfg.health.detect_time());
        let hold_ends = match a.withdrawn {
            Some((_, Some(clear))) => Some(clear + hold),
            _ => None,
        };
        let warm_ends = (now < warm_until).then_some(warm_until);
        a.due = [sweep, hold_ends, warm_ends, a.withdraw_at]
            .into_iter()
            .flatten()
            .min();
        let degraded = a.degraded;
        if state != self.router.state || degraded != was_degraded {
            let cause_text = match (state, cause) {
                (RouterState::Absent(AbsentReason::BlackHole), Some(c)) => c.to_string(),
                (RouterState::Absent(why), _) => why.to_string(),
                (RouterState::Forwarding, Some(c)) if degraded => {
                    format!("{c}, and it is the last router there (fail-open)")
                }
                (RouterState::Forwarding, _) => "it forwards".to_owned(),
            };
            if state == RouterState::Forwarding && !degraded {
                tracing::info!("router: {cause_text}");
            } else {
                tracing::warn!(?state, degraded, "router: {cause_text}");
            }
            self.out.events.push_back(Event::RouterChanged {
                state,
                degraded,
                cause: cause_text,
                at: now,
            });
        }
        self.router.state = state;
        self.router_status_changed(now);
    }

    /// Forgets served peers idle past the horizon. Not while it is withdrawn: it keeps
    /// judging itself by the peers it served until it is back (else it would return blind,
    /// its silent peers forgotten rather than heard again). Nor, while it knows of a black
    /// hole, the peers that make it one (the Down peer, or those of the silent net); the
    /// others go as ever, or a router degraded for good (an NI lost, and nobody to cover
    /// for it) would watch every peer it ever served, for ever.
    fn sweep_served(&mut self, now: Time) {
        let horizon = self.cfg.health.detect_time() * 10;
        let a = &mut self.router.absence;
        if a.withdrawn.is_some()
            || now.saturating_since(a.last_sweep) < self.cfg.health.detect_time()
        {
            return;
        }
        a.last_sweep = now;
        let cause = a.black_hole;
        let part_of_cause = |p: &Nid| match cause {
            Some(BlackHole::PeerUnreachable { peer, .. }) => *p == peer,
            Some(BlackHole::NetSilent(net)) => p.net() == net,
            Some(BlackHole::NiDown(_)) | None => false,
        };
        let idle: Vec<Nid> = a
            .served
            .iter()
            .filter(|(p, seen)| now.saturating_since(**seen) > horizon && !part_of_cause(p))
            .map(|(p, _)| *p)
            .collect();
        for p in idle {
            a.served.remove(&p);
            self.health.interest_ended(p);
        }
    }

    /// Watches the peers fellows cannot reach (on our nets), to vouch for them or not.
    fn ask_for_fellows(&mut self, now: Time) {
        let mut wanted = FxHashSet::default();
        for f in &self.cfg.router.fellows {
            if let Some(view) = self.gateways.view(*f) {
                wanted.extend(
                    view.unreachable
                        .iter()
                        .filter(|p| self.has_net(p.net()) && !self.is_local(**p))
                        .filter(|p| !self.cfg.router.fellows.contains(p)),
                );
            }
        }
        let a = &mut self.router.absence;
        let gone: Vec<Nid> = a.asked.difference(&wanted).copied().collect();
        let new: Vec<Nid> = wanted.difference(&a.asked).copied().collect();
        for p in gone {
            a.asked.remove(&p);
            self.health.interest_ended(p);
        }
        for p in new {
            self.router.absence.asked.insert(p);
            self.health.interest_started(p, now);
        }
    }

    /// Why this router cannot deliver, if it cannot.
    fn find_black_hole(&self) -> Option<BlackHole> {
        if let Some(ni) = self.nis.iter().find(|ni| !ni.up) {
            return Some(BlackHole::NiDown(ni.nid.net()));
        }
        if let Some(ni) = self.nis.iter().find(|ni| self.net_silent(ni.nid.net())) {
            return Some(BlackHole::NetSilent(ni.nid.net()));
        }
        let fellows = &self.cfg.router.fellows;
        for peer in self.health.down_peers() {
            if fellows.contains(&peer) || !self.router.absence.served.contains_key(&peer) {
                continue;
            }
            if let Some(fellow) = self.vouched_by_fellow(peer) {
                return Some(BlackHole::PeerUnreachable { peer, fellow });
            }
        }
        None
    }

    fn fellow_alive(&self, fellow: Nid) -> bool {
        self.ni_of(fellow).is_some()
            && self
                .health
                .peer(fellow)
                .is_some_and(|h| h.state != PeerState::Down)
    }

    /// Whether, for every pair of this router's nets, some fellow is alive, forwarding,
    /// and up on both (by its last status), and lists as unreachable none of the peers
    /// that are this router's business (served, or watched for a fellow) and that somebody
    /// reaches: this router, or another fellow. A fellow that cannot reach such a peer
    /// cannot take this router's place. (Two routers each missing a peer the other
    /// reaches must both stay, each listing its own; and two missing the same peer, which
    /// a third reaches, must not each go counting on the other. Either way each would go,
    /// come back at once as the last router there, and go again, without end.)
    fn fellows_cover(&self) -> bool {
        let nets: Vec<Net> = self.nis.iter().map(|ni| ni.nid.net()).collect();
        let a = &self.router.absence;
        let stand_in_missing = |p: &Nid| {
            a.concerns(p) && (!self.health.is_down(*p) || self.vouched_by_fellow(*p).is_some())
        };
        let covers = |a: Net, b: Net| {
            self.cfg.router.fellows.iter().any(|&f| {
                self.fellow_alive(f)
                    && self.gateways.view(f).is_some_and(|v| {
                        v.state == RouterState::Forwarding
                            && v.net_up(a) == Some(true)
                            && v.net_up(b) == Some(true)
                            && !v.unreachable.iter().any(stand_in_missing)
                    })
            })
        };
        nets.iter()
            .enumerate()
            .all(|(i, &a)| nets[i + 1..].iter().all(|&b| covers(a, b)))
    }
}
