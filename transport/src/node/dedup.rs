//! At-most-once delivery across resends: what a target remembers of the requests that
//! reached it through routers.
//!
//! An initiator resends a request whose router failed with the request in flight; the
//! first copy may have been delivered. So the target keeps a window per initiator (and
//! incarnation) and NID of its own the requests were addressed to: the recent message ids
//! with the answer it gave (ptlrpc's reply reconstruction, one layer down). A duplicate
//! gets that answer again and is not delivered twice. Each request also says below which
//! message id the initiator has settled everything it sent to that NID (`settled_below`),
//! so the window holds only what may still be resent. An initiator reckons that per
//! destination NID, hence a window per NID of ours: a floor shared by two would let
//! requests to one drop the copies of older requests to the other. Hard caps bound the
//! windows anyway (entries per window, and windows), and whatever falls out of them is
//! never taken for new: late copies of it are dropped rather than delivered. PUTs without
//! ACK stay out: their initiator never resends one (it fails it instead), and one
//! overtaken on the way may arrive below the floor a later request raised.
//!
//! A full window keeps its oldest quarter and lets go of the next oldest: the oldest
//! requests are the ones an initiator is about to resend (stuck behind a router that
//! failed, they hold `settled_below` down while thousands of later ones complete), and
//! evicting them would drop their resent copies. It remembers exactly which ids it let go
//! of, so an id it never saw (a later request stuck the same way) is never taken for one
//! it forgot. While one request holds a window's floor down, every later one answered is
//! let go of in turn (tens of thousands a second from a fast initiator): so the ids let go
//! of are bounded over all windows together (`dedup_window` x `dedup_initiators`, 8 bytes
//! and a little each), and only past that does a window's oldest become its floor. A whole
//! window evicted (the idlest, when more come than are kept) leaves its floor behind, in
//! a table of [`FLOORS_PER_WINDOW`] x as many entries; only a copy for a window evicted
//! from that too, long idle, could be taken for new.

use std::collections::BTreeMap;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::nid::Nid;
use crate::wire::Body;

/// What the target knows of a request it saw.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    /// Never seen: handle it (it is now recorded as being handled).
    New,
    /// Being handled (its payload on its way): the answer goes when it is done.
    Pending,
    /// Answered with this (ACK or REPLY and its payload): send it again.
    Answered(Body, Bytes),
    /// Below what the window still holds: it may have been delivered, so it is dropped.
    TooOld,
}

#[derive(Debug, Clone)]
enum Entry {
    Pending,
    Answered(Body, Bytes),
}

struct Window {
    entries: BTreeMap<u64, Entry>,
    /// Message ids below this are settled or forgotten.
    floor: u64,
    /// Message ids let go of when it was full: copies of them are dropped.
    evicted: std::collections::BTreeSet<u64>,
    /// When it was last used (a tick of the table), for evicting the idlest.
    used: u64,
}

/// Floors of evicted windows kept, per window kept (a floor is a few words; a window
/// holds up to `dedup_window` answers).
pub(crate) const FLOORS_PER_WINDOW: usize = 4;

/// Whose window: the initiator, the NID of ours its requests were addressed to, and the
/// initiator's incarnation.
type Key = (Nid, Nid, u64);

/// The windows of every initiator that reached this node through routers.
pub(crate) struct Dedup {
    windows: FxHashMap<Key, Window>,
    /// What evicted windows remembered: the lowest message id a copy may still have to
    /// be new, oldest eviction first.
    /// (floor, when it was kept); the order names each by that same tick.
    floors: FxHashMap<Key, (u64, u64)>,
    floors_order: std::collections::VecDeque<(Key, u64)>,
    /// Per initiator that restarted while remembered: the incarnations its lives replaced
    /// (the latest [`super::peers::EARLIER_LIVES`]), whose copies are late.
    replaced: FxHashMap<Nid, Vec<u64>>,
    /// The life of each initiator whose windows or floors are kept. One node's are all of
    /// one life (the first request of a new one drops the others'), so a new window of
    /// that life needs no search for stale ones: with more initiators than windows, one
    /// is made for nearly every request, and the search walks every window and floor. It
    /// may name nodes none of whose windows is left; cleared once it outgrows what the
    /// windows and floors can name.
    life_of: FxHashMap<Nid, u64>,
    /// (last used, window): the idlest first.
    by_use: BTreeMap<(u64, Key), ()>,
    tick: u64,
    /// Entries one window may hold (`dedup_window`).
    per_window: usize,
    /// Windows kept at once (`dedup_initiators`: an initiator that reaches two NIDs of
    /// ours has two).
    max_windows: usize,
    entries: usize,
    /// Ids let go of, over all windows.
    let_go: usize,
}

impl Dedup {
    pub(crate) fn new(per_window: usize, max_windows: usize) -> Dedup {
        Dedup {
            windows: FxHashMap::default(),
            floors: FxHashMap::default(),
            floors_order: std::collections::VecDeque::new(),
            replaced: FxHashMap::default(),
            life_of: FxHashMap::default(),
            by_use: BTreeMap::new(),
            tick: 0,
            per_window: per_window.max(1),
            max_windows: max_windows.max(1),
            entries: 0,
            let_go: 0,
        }
    }

    /// Entries held over all windows.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    pub(crate) fn windows(&self) -> usize {
        self.windows.len()
    }

    /// A request `msg_id` from `from` (as `incarnation`) to our NID `to`, whose initiator
    /// has settled everything to `to` below `settled_below`: what to do with it.
    pub(crate) fn check(
        &mut self,
        from: Nid,
        to: Nid,
        incarnation: u64,
        msg_id: u64,
        settled_below: u64,
    ) -> Seen {
        let key = (from, to, incarnation);
        self.tick += 1;
        if !self.windows.contains_key(&key) {
            // A copy from a life that this node's newer one replaced is late, and may have
            // been handled. (Not merely a lower number: a node's clock may go back between
            // its starts.)
            if self
                .replaced
                .get(&from)
                .is_some_and(|r| r.contains(&incarnation))
            {
                return Seen::TooOld;
            }
            if self.life_of.get(&from) != Some(&incarnation) {
                // Another incarnation of the same node: it restarted, and the old one's windows
                // are moot (dropped before making room, so no unrelated window goes for them).
                let stale: Vec<Key> = self
                    .kept_of(from)
                    .filter(|&(_, _, i)| i != incarnation)
                    .collect();
                if let Some(&(_, _, old)) = stale.first() {
                    let cap = self.max_windows.saturating_mul(FLOORS_PER_WINDOW);
                    if self.replaced.len() >= cap && !self.replaced.contains_key(&from) {
                        // Bounded: one node's memory of its lives goes (a copy of one of them
                        // could pass for new now).
                        if let Some(k) = self.replaced.keys().next().copied() {
                            self.replaced.remove(&k);
                        }
                    }
                    super::peers::remember_earlier_life(
                        self.replaced.entry(from).or_default(),
                        old,
                    );
                }
                for k in stale {
                    self.drop_window(k);
                    self.floors.remove(&k);
                }
                let names = self.max_windows.saturating_mul(1 + FLOORS_PER_WINDOW);
                if self.life_of.len() >= names {
                    self.life_of.clear();
                }
                self.life_of.insert(from, incarnation);
            }
            self.make_room();
            let floor = self.floors.remove(&key).map_or(0, |(floor, _)| floor);
            self.windows.insert(
                key,
                Window {
                    entries: BTreeMap::new(),
                    floor,
                    evicted: std::collections::BTreeSet::new(),
                    used: self.tick,
                },
            );
            self.by_use.insert((self.tick, key), ());
        }
        let w = self.windows.get_mut(&key).expect("inserted above");
        self.by_use.remove(&(w.used, key));
        w.used = self.tick;
        self.by_use.insert((w.used, key), ());
        // What the initiator settled needs no memory any more.
        if settled_below > w.floor {
            w.floor = settled_below;
            let kept = w.entries.split_off(&settled_below);
            self.entries -= w.entries.len();
            w.entries = kept;
            let kept = w.evicted.split_off(&settled_below);
            self.let_go -= w.evicted.len();
            w.evicted = kept;
        }
        if msg_id < w.floor {
            return Seen::TooOld;
        }
        match w.entries.get(&msg_id) {
            Some(Entry::Pending) => return Seen::Pending,
            Some(Entry::Answered(body, payload)) => return Seen::Answered(*body, payload.clone()),
            None => {}
        }
        if w.evicted.contains(&msg_id) {
            return Seen::TooOld;
        }
        w.entries.insert(msg_id, Entry::Pending);
        self.entries += 1;
        if w.entries.len() > self.per_window {
            // Past the cap: the oldest quarter stays, the next oldest goes (and with it
            // any late copy of it).
            let victim = w.entries.keys().nth(self.per_window / 4).copied();
            if let Some(victim) = victim {
                w.entries.remove(&victim);
                w.evicted.insert(victim);
                self.entries -= 1;
                self.let_go += 1;
            }
            if self.let_go > self.per_window.saturating_mul(self.max_windows) {
                // Too many to remember one by one: this window's oldest becomes its floor.
                if let Some(oldest) = w.evicted.pop_first() {
                    // Saturating: an id at the top of the range (never an initiator's,
                    // whose ids count up from its incarnation, below 2^62; a forged one)
                    // must not overflow.
                    w.floor = oldest.saturating_add(1);
                    let kept = w.entries.split_off(&w.floor);
                    self.entries -= w.entries.len();
                    w.entries = kept;
                    let kept = w.evicted.split_off(&w.floor);
                    self.let_go -= 1 + w.evicted.len();
                    w.evicted = kept;
                }
            }
        }
        Seen::New
    }

    /// The answer given to request `msg_id` from `from` to `to`, to give again to a copy
    /// of it.
    pub(crate) fn answered(
        &mut self,
        from: Nid,
        to: Nid,
        incarnation: u64,
        msg_id: u64,
        body: Body,
        payload: Bytes,
    ) {
        if let Some(e) = self
            .windows
            .get_mut(&(from, to, incarnation))
            .and_then(|w| w.entries.get_mut(&msg_id))
        {
            *e = Entry::Answered(body, payload);
        }
    }

    /// Whether `incarnation` is one that a newer life of `from` replaced.
    pub(crate) fn is_replaced(&self, from: Nid, incarnation: u64) -> bool {
        self.replaced
            .get(&from)
            .is_some_and(|lives| lives.contains(&incarnation))
    }

    /// Request `msg_id` from `from` to `to` was not handled after all (its payload never
    /// came): a copy of it is new. Also if it was let go meanwhile (evicted while its
    /// payload was fetched): its copy would otherwise count as too old, and be dropped.
    /// (Below a floor that passed it, it stays too old.)
    pub(crate) fn forget(&mut self, from: Nid, to: Nid, incarnation: u64, msg_id: u64) {
        let Some(w) = self.windows.get_mut(&(from, to, incarnation)) else {
            return;
        };
        if matches!(w.entries.get(&msg_id), Some(Entry::Pending)) {
            w.entries.remove(&msg_id);
            self.entries -= 1;
        } else if w.evicted.remove(&msg_id) {
            self.let_go -= 1;
        }
    }

    /// Whether a window or floor of `from` is kept for another life than `incarnation`.
    pub(crate) fn knows_another_life(&self, from: Nid, incarnation: u64) -> bool {
        match self.life_of.get(&from) {
            Some(&life) => life != incarnation,
            // (The table of lives may have been cleared: the windows and floors say.)
            None => self.kept_of(from).any(|(_, _, i)| i != incarnation),
        }
    }

    /// The keys of every window and floor kept for `from`, of any life.
    fn kept_of(&self, from: Nid) -> impl Iterator<Item = Key> + '_ {
        self.windows
            .keys()
            .chain(self.floors.keys())
            .filter(move |(n, _, _)| *n == from)
            .copied()
    }

    /// Forgets the windows and floors of `from`, without remembering its life as
    /// replaced (when it is not sure that it was: see `Node::routed_life`).
    pub(crate) fn forget_node(&mut self, from: Nid) {
        let keys: Vec<Key> = self.kept_of(from).collect();
        for k in keys {
            self.drop_window(k);
            self.floors.remove(&k);
        }
        self.life_of.remove(&from);
    }

    fn make_room(&mut self) {
        while self.windows.len() >= self.max_windows {
            let Some((&(_, key), _)) = self.by_use.first_key_value() else {
                return;
            };
            // Its copies still to come are at or above what it held: remember where.
            let floor = self.windows.get(&key).map(|w| {
                let past = |id: u64| id.saturating_add(1); // as above: a forged top id
                let top = w.entries.last_key_value().map_or(0, |(&id, _)| past(id));
                let let_go = w.evicted.last().map_or(0, |&id| past(id));
                w.floor.max(top).max(let_go)
            });
            self.drop_window(key);
            if let Some(floor) = floor {
                self.keep_floor(key, floor);
            }
        }
    }

    fn keep_floor(&mut self, key: Key, floor: u64) {
        self.floors.insert(key, (floor, self.tick));
        self.floors_order.push_back((key, self.tick));
        let cap = self.max_windows.saturating_mul(FLOORS_PER_WINDOW);
        // Oldest first; an entry of the order that no longer names the floor kept (it
        // was taken back, or kept again since) is just skipped.
        while self.floors_order.len() > cap {
            let Some((old, kept)) = self.floors_order.pop_front() else {
                break;
            };
            if self.floors.get(&old).is_some_and(|&(_, t)| t == kept) {
                self.floors.remove(&old);
            }
        }
    }

    fn drop_window(&mut self, key: Key) {
        if let Some(w) = self.windows.remove(&key) {
            self.by_use.remove(&(w.used, key));
            self.entries -= w.entries.len();
            self.let_go -= w.evicted.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Status;

    /// This node's NID, the requests' destination.
    const ME: Nid = Nid::LO;

    fn ack() -> Body {
        Body::Ack {
            status: Status::Ok,
            mlen: 3,
        }
    }

    #[test]
    fn a_copy_is_answered_again_once_answered_and_held_while_pending() {
        let mut d = Dedup::new(100, 10);
        let a = Nid::mem(1, 0);
        assert!(matches!(d.check(a, ME, 7, 5, 0), Seen::New));
        assert!(matches!(d.check(a, ME, 7, 5, 0), Seen::Pending));
        d.answered(a, ME, 7, 5, ack(), Bytes::new());
        assert!(matches!(d.check(a, ME, 7, 5, 0), Seen::Answered(b, _) if b == ack()));
        // Another incarnation is another life: nothing in common, and the old one goes.
        assert!(matches!(d.check(a, ME, 8, 5, 0), Seen::New));
        assert_eq!((d.windows(), d.entries()), (1, 1));
        // A late copy from the older life is not new: it may have been handled.
        assert!(matches!(d.check(a, ME, 7, 6, 0), Seen::TooOld));
        assert!(
            matches!(d.check(a, ME, 8, 5, 0), Seen::Pending),
            "the newer window stays"
        );
    }

    /// An initiator reckons its floor per destination NID: each NID of ours keeps its own
    /// window, while incarnations are the initiator's, whichever NID it addressed.
    #[test]
    fn each_nid_of_ours_has_its_own_window_and_incarnations_span_them() {
        let mut d = Dedup::new(100, 10);
        let (a, other) = (Nid::mem(1, 0), Nid::mem(1, 1));
        assert!(matches!(d.check(a, ME, 1, 10, 10), Seen::New));
        assert!(matches!(d.check(a, other, 1, 20, 20), Seen::New));
        // The floor raised at `other` does not reach the window at ME.
        assert!(matches!(d.check(a, ME, 1, 10, 10), Seen::Pending));
        assert_eq!(d.windows(), 2);
        // A newer life seen at `other`: the older one's copies anywhere are late, and its
        // windows go.
        assert!(matches!(d.check(a, other, 2, 1, 0), Seen::New));
        assert!(matches!(d.check(a, ME, 1, 11, 10), Seen::TooOld));
        assert_eq!(d.windows(), 1);
        assert!(
            matches!(d.check(a, ME, 2, 1, 0), Seen::New),
            "a window of its own at ME"
        );
    }

    /// A node whose clock went back between its starts: its new life has a lower number,
    /// and is new all the same; the life it replaced is the late one.
    #[test]
    fn a_new_life_with_a_lower_incarnation_is_new_and_the_one_it_replaced_late() {
        let mut d = Dedup::new(100, 10);
        let a = Nid::mem(1, 0);
        assert!(matches!(d.check(a, ME, 9, 10, 10), Seen::New));
        assert!(matches!(d.check(a, ME, 3, 1, 0), Seen::New));
        assert!(matches!(d.check(a, ME, 3, 1, 0), Seen::Pending));
        assert!(matches!(d.check(a, ME, 9, 11, 10), Seen::TooOld));
        assert_eq!(d.windows(), 1);
        // Restarting again: a copy two lives old is late too.
        assert!(matches!(d.check(a, ME, 1, 1, 0), Seen::New));
        assert!(matches!(d.check(a, ME, 9, 12, 10), Seen::TooOld));
        assert!(matches!(d.check(a, ME, 3, 2, 0), Seen::TooOld));
    }

    #[test]
    fn what_the_initiator_settled_is_forgotten_and_late_copies_of_it_dropped() {
        let mut d = Dedup::new(100, 10);
        let a = Nid::mem(1, 0);
        for m in 1..=10 {
            assert!(matches!(d.check(a, ME, 1, m, 1), Seen::New));
            d.answered(a, ME, 1, m, ack(), Bytes::new());
        }
        assert_eq!(d.entries(), 10);
        assert!(matches!(d.check(a, ME, 1, 11, 8), Seen::New));
        assert_eq!(d.entries(), 4, "8, 9, 10 and 11 remain");
        assert!(matches!(d.check(a, ME, 1, 3, 8), Seen::TooOld));
        assert!(matches!(d.check(a, ME, 1, 9, 8), Seen::Answered(..)));
    }

    /// A request evicted from its window while its payload was fetched, whose fetch then
    /// failed (its router went): forgotten, the copy its initiator sends another way is
    /// new. It was let go for good, and the copy dropped as too old.
    #[test]
    fn a_request_evicted_while_its_payload_was_fetched_can_still_be_forgotten() {
        let mut d = Dedup::new(4, 10);
        let a = Nid::mem(1, 0);
        for m in 1..=4 {
            assert!(matches!(d.check(a, ME, 1, m, 0), Seen::New));
        }
        for m in [1, 3, 4] {
            d.answered(a, ME, 1, m, ack(), Bytes::new());
        }
        assert!(matches!(d.check(a, ME, 1, 5, 0), Seen::New), "evicts 2");
        assert!(matches!(d.check(a, ME, 1, 2, 0), Seen::TooOld));
        d.forget(a, ME, 1, 2);
        assert!(matches!(d.check(a, ME, 1, 2, 0), Seen::New));
    }

    #[test]
    fn caps_bound_memory_and_what_falls_out_is_never_delivered_again() {
        let mut d = Dedup::new(4, 2);
        let (a, b, c) = (Nid::mem(1, 0), Nid::mem(2, 0), Nid::mem(3, 0));
        for m in 1..=6 {
            assert!(matches!(d.check(a, ME, 1, m, 0), Seen::New));
        }
        assert_eq!(d.entries(), 4);
        assert!(
            matches!(d.check(a, ME, 1, 2, 0), Seen::TooOld),
            "evicted: dropped"
        );
        // The oldest stays: it is the one an initiator resends when its router fails.
        assert!(matches!(d.check(a, ME, 1, 1, 0), Seen::Pending));
        d.check(b, ME, 1, 1, 0);
        d.check(a, ME, 1, 7, 0); // a is now the more recently used
        d.check(c, ME, 1, 1, 0); // over two initiators: the idlest (b) goes
        assert_eq!(d.windows(), 2);
        assert!(matches!(d.check(a, ME, 1, 7, 0), Seen::Pending));
        assert_eq!(d.entries(), 4 + 1);
        // b's window went, its floor stayed: a late copy of its request is not new.
        assert!(
            matches!(d.check(b, ME, 1, 1, 0), Seen::TooOld),
            "an evicted initiator's copy must not be delivered again"
        );
        assert!(
            matches!(d.check(b, ME, 1, 2, 0), Seen::New),
            "its next request is"
        );
    }

    /// Message ids come from the wire: one at the very top of the range (forged, as an
    /// initiator's count up from its incarnation, below 2^62) is remembered and let go of like any other, without
    /// overflowing the floor past it.
    #[test]
    fn ids_at_the_top_of_the_range_are_no_overflow() {
        let mut d = Dedup::new(2, 1);
        let (a, b) = (Nid::mem(1, 0), Nid::mem(2, 0));
        for m in [u64::MAX - 3, u64::MAX - 2, u64::MAX - 1, u64::MAX] {
            assert!(matches!(d.check(a, ME, 1, m, 0), Seen::New));
        }
        // Another initiator: a's window goes, its floor kept past everything it held.
        assert!(matches!(d.check(b, ME, 1, 1, 0), Seen::New));
        assert!(matches!(d.check(a, ME, 1, u64::MAX - 3, 0), Seen::TooOld));
    }

    #[test]
    fn what_is_kept_is_found_even_inside_the_range_let_go_of() {
        let mut d = Dedup::new(8, 2);
        let a = Nid::mem(1, 0);
        for m in 1..=20 {
            assert!(matches!(d.check(a, ME, 1, m, 1), Seen::New));
            d.answered(a, ME, 1, m, ack(), Bytes::new());
        }
        // The initiator settles the two oldest kept: the range let go of now lies below
        // entries still held, and grows over them with the next evictions.
        for m in 21..=30 {
            assert!(matches!(d.check(a, ME, 1, m, 3), Seen::New));
            d.answered(a, ME, 1, m, ack(), Bytes::new());
        }
        let held: Vec<u64> = (3..=30)
            .filter(|&m| matches!(d.check(a, ME, 1, m, 3), Seen::Answered(..)))
            .collect();
        assert!(!held.is_empty());
        assert!(d.entries() <= 8 + 1, "{}", d.entries());
        for m in 3..=30 {
            let seen = d.check(a, ME, 1, m, 3);
            assert!(
                matches!(seen, Seen::Answered(..) | Seen::TooOld),
                "{m}: a copy is answered or dropped, never new: {seen:?}"
            );
        }
    }

    #[test]
    fn an_id_never_seen_is_new_even_among_ids_let_go_of() {
        // The initiator's op 1 holds its floor down (stuck behind a router); op 15, sent
        // later, is stuck too and never arrived; 28 others came and overflowed the window.
        let mut d = Dedup::new(16, 2);
        let a = Nid::mem(1, 0);
        for m in (1..=30).filter(|&m| m != 15) {
            assert!(matches!(d.check(a, ME, 1, m, 1), Seen::New));
            d.answered(a, ME, 1, m, ack(), Bytes::new());
        }
        let let_go: Vec<u64> = (1..=30)
            .filter(|&m| m != 15 && matches!(d.check(a, ME, 1, m, 1), Seen::TooOld))
            .collect();
        assert!(!let_go.is_empty(), "the window overflowed");
        // Its resent copy is new: it was never delivered.
        assert!(matches!(d.check(a, ME, 1, 15, 1), Seen::New));
    }

    #[test]
    fn the_floors_of_evicted_windows_are_bounded_too() {
        let mut d = Dedup::new(4, 2);
        for n in 0..1000 {
            d.check(Nid::mem(n, 0), ME, 1, 1, 0);
        }
        assert_eq!(d.windows(), 2);
        assert!(d.floors.len() <= 2 * FLOORS_PER_WINDOW);
        assert!(d.floors_order.len() <= 2 * FLOORS_PER_WINDOW);
        // The most recently evicted still has its floor.
        assert!(matches!(
            d.check(Nid::mem(997, 0), ME, 1, 1, 0),
            Seen::TooOld
        ));
    }
}
