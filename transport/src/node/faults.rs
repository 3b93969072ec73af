//! Fault injection, as LNet's `lctl net_drop_add` and `net_delay_add`: rules that drop or
//! delay frames arriving at this node, chosen by their source and destination (end to end,
//! a NID or a whole net), their lane, and a rate (every Nth frame that matches; counted,
//! not random, so a test knows exactly what happens).
//!
//! A dropped frame is lost as if the network lost it: the node never hears it (no sign of
//! life from its sender, no delivery, no answer). Its credit goes back all the same, as the
//! LND below would give it back in LNet: a lost message must not shrink a connection's
//! window for good. A delayed frame keeps its credit while it waits, as a slow network
//! does, and is handled when its time comes, unless its connection went meanwhile (then it
//! is lost with it). Frames that are the connection's own business (HELLO, CREDIT) pass;
//! but where a rule drops everything from a node on a lane, its HELLO is not taken as a
//! sign of life either.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::lane::Lane;
use crate::lnd::RxPayload;
use crate::nid::{Net, Nid};
use crate::time::Time;
use crate::wire::Header;

use super::{NiId, Node};

/// Rules a node takes at most: a tool for tests and drills, not a firewall.
pub const MAX_FAULT_RULES: usize = 64;
/// The longest delay a rule may add.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(60);

/// Which NIDs a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NidPattern {
    Any,
    Net(Net),
    Nid(Nid),
}

impl NidPattern {
    fn matches(self, nid: Nid) -> bool {
        match self {
            NidPattern::Any => true,
            NidPattern::Net(net) => nid.is_on(net),
            NidPattern::Nid(n) => n == nid,
        }
    }
}

impl FromStr for NidPattern {
    type Err = String;

    /// `*`, a net (`tcp1`) or a NID (`10.0.0.1@tcp1`).
    fn from_str(s: &str) -> Result<NidPattern, String> {
        if s == "*" {
            return Ok(NidPattern::Any);
        }
        if s.contains('@') {
            return s
                .parse()
                .map(NidPattern::Nid)
                .map_err(|e| format!("{s:?}: {e}"));
        }
        s.parse()
            .map(NidPattern::Net)
            .map_err(|e| format!("{s:?}: expected *, a net or a NID ({e})"))
    }
}

impl fmt::Display for NidPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NidPattern::Any => write!(f, "*"),
            NidPattern::Net(n) => write!(f, "{n}"),
            NidPattern::Nid(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Drop,
    Delay(Duration),
}

/// One rule: what it does to which frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRule {
    pub action: FaultAction,
    /// The frame's source (its initiator or answerer, not the hop it came from).
    pub src: NidPattern,
    pub dst: NidPattern,
    /// Either lane if None.
    pub lane: Option<Lane>,
    /// Every `rate`th matching frame is hit (1: all of them).
    pub rate: u32,
}

impl FaultRule {
    /// Whether a node would take it: a rate of at least 1, a delay within bounds.
    pub fn check(&self) -> Result<(), FaultError> {
        if self.rate == 0 {
            return Err(FaultError::ZeroRate);
        }
        if let FaultAction::Delay(d) = self.action {
            if d.is_zero() || d > MAX_FAULT_DELAY {
                return Err(FaultError::BadDelay(d));
            }
        }
        Ok(())
    }
}

/// A rule as it stands: its number and what it has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRuleReport {
    pub id: u32,
    pub rule: FaultRule,
    /// Frames that matched it.
    pub matched: u64,
    /// Of those, the ones dropped or delayed.
    pub hit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("a rate of 0: expected 1 (every frame) or more (every Nth)")]
    ZeroRate,
    #[error("a delay of {0:?}: expected more than 0 and at most {MAX_FAULT_DELAY:?}")]
    BadDelay(Duration),
    #[error("this node has {MAX_FAULT_RULES} fault rules already: delete some first")]
    TooMany,
}

/// A frame held by a delay rule.
pub(crate) struct Delayed {
    pub(crate) ni: NiId,
    pub(crate) hop: Nid,
    pub(crate) lane: Lane,
    /// The connection it came on: if another has replaced it by release, it is lost.
    pub(crate) serial: u64,
    pub(crate) header: Header,
    pub(crate) payload: RxPayload,
}

/// What a rule does to a frame arriving now.
pub(crate) enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

#[derive(Default)]
pub(crate) struct Faults {
    rules: Vec<FaultRuleReport>,
    next_id: u32,
    /// Held frames by release time (and arrival order).
    delayed: BTreeMap<(Time, u64), Delayed>,
    /// How many of them each connection has there: never more than it has credits for.
    held: rustc_hash::FxHashMap<(Nid, Lane), u16>,
    arrivals: u64,
}

impl Faults {
    pub(crate) fn add(&mut self, rule: FaultRule) -> Result<u32, FaultError> {
        rule.check()?;
        if self.rules.len() >= MAX_FAULT_RULES {
            return Err(FaultError::TooMany);
        }
        self.next_id += 1;
        self.rules.push(FaultRuleReport {
            id: self.next_id,
            rule,
            matched: 0,
            hit: 0,
        });
        Ok(self.next_id)
    }

    /// Removes rule `id` (frames it holds are still released on time); false if none.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        self.rules.len() < before
    }

    pub(crate) fn rules(&self) -> Vec<FaultRuleReport> {
        self.rules.clone()
    }

    /// The first rule that matches the frame decides; each rule counts what it matched.
    pub(crate) fn judge(&mut self, lane: Lane, h: &Header) -> Verdict {
        for r in &mut self.rules {
            let f = &r.rule;
            if !(f.src.matches(h.src) && f.dst.matches(h.dst) && f.lane.is_none_or(|l| l == lane)) {
                continue;
            }
            r.matched += 1;
            if r.matched % u64::from(f.rate) != 0 {
                return Verdict::Pass;
            }
            r.hit += 1;
            return match f.action {
                FaultAction::Drop => Verdict::Drop,
                FaultAction::Delay(d) => Verdict::Delay(d),
            };
        }
        Verdict::Pass
    }

    /// Whether every frame from `from` on `lane` is dropped: the first rule that can
    /// match them (as in [`Faults::judge`], the first match decides) drops every one, for
    /// any destination. Then a new connection's HELLO is no sign of life either, since all
    /// that would follow it is lost. A rule for one destination, or a rule before it that
    /// lets some through (a delay, a rate), never silences a node.
    pub(crate) fn silences(&self, from: Nid, lane: Lane) -> bool {
        self.rules
            .iter()
            .map(|r| &r.rule)
            .find(|f| f.src.matches(from) && f.lane.is_none_or(|l| l == lane))
            .is_some_and(|f| {
                f.action == FaultAction::Drop && f.rate == 1 && f.dst == NidPattern::Any
            })
    }

    /// Holds `frame` until `until`; gives it back, refused, if its connection already has
    /// `credits` frames held (what it sent beyond them is an overrun, as on the normal path).
    pub(crate) fn hold(&mut self, until: Time, frame: Delayed, credits: u16) -> Option<Delayed> {
        let key = (frame.hop, frame.lane);
        if self.held.get(&key).copied().unwrap_or(0) >= credits {
            return Some(frame); // no empty entry left behind when `credits` is 0
        }
        *self.held.entry(key).or_default() += 1;
        self.arrivals += 1;
        self.delayed.insert((until, self.arrivals), frame);
        None
    }

    /// Whether delay rules hold frames that came from `hop`.
    pub(crate) fn holds_from(&self, hop: Nid) -> bool {
        self.held.keys().any(|(h, _)| *h == hop)
    }

    /// Frames held back by delay rules.
    pub(crate) fn held_frames(&self) -> usize {
        self.delayed.len()
    }

    fn unheld(&mut self, hop: Nid, lane: Lane) {
        if let Some(n) = self.held.get_mut(&(hop, lane)) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&(hop, lane));
            }
        }
    }

    /// The (hop, lane) connection went: the frames it had held go with it.
    pub(crate) fn forget(&mut self, hop: Nid, lane: Lane) -> Vec<Delayed> {
        if self.held.remove(&(hop, lane)).is_none() {
            return Vec::new();
        }
        let keys: Vec<(Time, u64)> = self
            .delayed
            .iter()
            .filter(|(_, d)| d.hop == hop && d.lane == lane)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter_map(|k| self.delayed.remove(k)).collect()
    }

    pub(crate) fn next_release(&self) -> Option<Time> {
        self.delayed.keys().next().map(|&(t, _)| t)
    }

    /// The next held frame due at `now`, if any.
    pub(crate) fn release(&mut self, now: Time) -> Option<Delayed> {
        let (&key, _) = self.delayed.iter().next().filter(|(&(t, _), _)| t <= now)?;
        let frame = self.delayed.remove(&key)?;
        self.unheld(frame.hop, frame.lane);
        Some(frame)
    }

    /// Everything held, released at once (the node is stopping).
    pub(crate) fn take_all(&mut self) -> Vec<Delayed> {
        self.held.clear();
        std::mem::take(&mut self.delayed).into_values().collect()
    }
}

impl Node {
    /// Adds a fault rule; its number, for [`Node::remove_fault_rule`].
    pub fn add_fault_rule(&mut self, rule: FaultRule) -> Result<u32, FaultError> {
        let id = self.faults.add(rule)?;
        tracing::warn!(
            id,
            ?rule,
            "fault rule added: frames will be lost or late on purpose"
        );
        Ok(id)
    }

    /// Removes rule `id` (frames it delays are still handled on time); false if none.
    pub fn remove_fault_rule(&mut self, id: u32) -> bool {
        let removed = self.faults.remove(id);
        if removed {
            tracing::info!(id, "fault rule removed");
        }
        removed
    }

    pub fn fault_rules(&self) -> Vec<FaultRuleReport> {
        self.faults.rules()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_read_as_written() {
        for s in ["*", "tcp1", "10.0.0.1@tcp1", "10.0.0.1:7000@tcp"] {
            let p: NidPattern = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert!("not a net".parse::<NidPattern>().is_err());
        assert!("1.2.3@tcp".parse::<NidPattern>().is_err());
    }

    #[test]
    fn a_node_is_silenced_only_if_the_first_rule_for_it_drops_everything() {
        let a: Nid = "10.0.0.1@tcp".parse().unwrap();
        let rule = |action, dst, rate| FaultRule {
            action,
            src: "10.0.0.1@tcp".parse().unwrap(),
            dst,
            lane: None,
            rate,
        };
        let delay = FaultAction::Delay(Duration::from_millis(5));
        let one: NidPattern = "10.0.0.9@tcp".parse().unwrap();
        let cases = [
            (vec![rule(FaultAction::Drop, NidPattern::Any, 1)], true),
            (vec![rule(FaultAction::Drop, NidPattern::Any, 2)], false),
            (vec![rule(FaultAction::Drop, one, 1)], false),
            // The delay matches first: its frames arrive, late, and are signs of life.
            (
                vec![
                    rule(delay, NidPattern::Any, 1),
                    rule(FaultAction::Drop, NidPattern::Any, 1),
                ],
                false,
            ),
            (
                vec![
                    rule(FaultAction::Drop, NidPattern::Any, 1),
                    rule(delay, NidPattern::Any, 1),
                ],
                true,
            ),
        ];
        for (i, (rules, silenced)) in cases.into_iter().enumerate() {
            let mut f = Faults::default();
            for r in rules {
                f.add(r).unwrap();
            }
            assert_eq!(f.silences(a, Lane::Data), silenced, "case {i}");
        }
        assert!(!Faults::default().silences(a, Lane::Data));
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let mut f = Faults::default();
        let rule = |action, rate| FaultRule {
            action,
            src: NidPattern::Any,
            dst: NidPattern::Any,
            lane: None,
            rate,
        };
        assert_eq!(f.add(rule(FaultAction::Drop, 0)), Err(FaultError::ZeroRate));
        let zero = FaultAction::Delay(Duration::ZERO);
        assert!(matches!(f.add(rule(zero, 1)), Err(FaultError::BadDelay(_))));
        let long = FaultAction::Delay(Duration::from_secs(61));
        assert!(matches!(f.add(rule(long, 1)), Err(FaultError::BadDelay(_))));
        for _ in 0..MAX_FAULT_RULES {
            f.add(rule(FaultAction::Drop, 1)).unwrap();
        }
        assert_eq!(f.add(rule(FaultAction::Drop, 1)), Err(FaultError::TooMany));
        assert!(f.remove(3));
        assert!(!f.remove(3));
        assert_eq!(
            f.add(rule(FaultAction::Drop, 1)),
            Ok(MAX_FAULT_RULES as u32 + 1)
        );
    }
}
