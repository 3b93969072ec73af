//! The attached entries of every portal. An incoming PUT or GET is matched against its
//! portal's entries in attach order, the oldest that takes it winning; a portal may hold
//! thousands (a client's use-once reply buffers, one per request in flight), so the match
//! must not walk them all. As LNet hashes match entries that ignore no bits, entries that
//! match their bits exactly are kept by portal and bits (a match looks at those of the
//! message's portal and bits only, in one lookup), and the others, wildcards, in a list
//! per portal; a match takes the older of the first of each that takes the message.
//!
//! Each list keeps attach order and takes its first entry in O(1): entries usually go
//! oldest first (use-once entries matched, a shutdown in submission order). The list's
//! start moves, and the taken prefix is dropped once it is half the list, where a `Vec`
//! shifted the rest and `retain` walked it all (a shutdown of 100,000 entries took
//! 5.5 s). Unlike a `VecDeque`, the live entries are one slice, walked as fast as a
//! `Vec`'s (the match runs for every PUT and GET; `lanet-bench cost`).

use rustc_hash::FxHashMap;

use crate::op::OpId;

/// Every portal's entries (see the module).
#[derive(Debug, Default)]
pub(crate) struct Portals {
    /// Entries that ignore no bits, by portal and match bits, each list in attach order.
    exact: FxHashMap<(u32, u64), Bucket>,
    /// Entries that ignore some bits, by portal, in attach order.
    wildcards: FxHashMap<u32, IdQueue>,
}

impl Portals {
    /// Adds the entry `id`, the newest of `portal`, which matches `match_bits` but for
    /// `ignore_bits`.
    pub(crate) fn push(&mut self, portal: u32, id: OpId, match_bits: u64, ignore_bits: u64) {
        if ignore_bits != 0 {
            return self.wildcards.entry(portal).or_default().push(id);
        }
        match self.exact.get_mut(&(portal, match_bits)) {
            Some(bucket) => bucket.push(id),
            None => {
                self.exact.insert((portal, match_bits), Bucket::One(id));
            }
        }
    }

    /// The entries of `portal` that match exactly `match_bits`, oldest first.
    #[inline]
    pub(crate) fn exact(&self, portal: u32, match_bits: u64) -> &[OpId] {
        self.exact
            .get(&(portal, match_bits))
            .map_or(&[], Bucket::as_slice)
    }

    /// The entries of `portal` that ignore some bits, oldest first.
    #[inline]
    pub(crate) fn wildcards(&self, portal: u32) -> &[OpId] {
        // Most nodes have none: no lookup then.
        if self.wildcards.is_empty() {
            return &[];
        }
        self.wildcards.get(&portal).map_or(&[], IdQueue::as_slice)
    }

    /// Takes out the entry `id`, pushed with these bits, if it is there.
    pub(crate) fn remove(&mut self, portal: u32, id: OpId, match_bits: u64, ignore_bits: u64) {
        if ignore_bits != 0 {
            if let Some(list) = self.wildcards.get_mut(&portal) {
                list.remove(id);
                if list.is_empty() {
                    self.wildcards.remove(&portal);
                }
            }
        } else if let Some(bucket) = self.exact.get_mut(&(portal, match_bits)) {
            if bucket.remove(id) {
                self.exact.remove(&(portal, match_bits));
                // The room of a burst of entries (50,000 reply buffers) goes back.
                if super::room::mostly_idle(self.exact.len(), self.exact.capacity()) {
                    self.shrink_exact();
                }
            }
        }
    }

    /// Shrinks the exact entries' map (see [`super::room`]).
    #[cold]
    #[inline(never)]
    fn shrink_exact(&mut self) {
        self.exact.shrink_to(super::room::to_keep(self.exact.len()));
    }

    /// Lists held: each portal's wildcards, and each portal's and bits' exact entries.
    pub(crate) fn lists(&self) -> usize {
        self.exact.len() + self.wildcards.len()
    }

    /// Room the exact entries' map keeps, in entries.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.exact.capacity()
    }
}

/// The exact entries of one set of bits: usually one (a use-once reply buffer), held
/// without a heap allocation of its own.
#[derive(Debug)]
enum Bucket {
    One(OpId),
    Many(IdQueue),
}

impl Bucket {
    fn as_slice(&self) -> &[OpId] {
        match self {
            Bucket::One(id) => std::slice::from_ref(id),
            Bucket::Many(ids) => ids.as_slice(),
        }
    }

    fn push(&mut self, id: OpId) {
        match self {
            Bucket::One(first) => {
                let mut ids = IdQueue::default();
                ids.push(*first);
                ids.push(id);
                *self = Bucket::Many(ids);
            }
            Bucket::Many(ids) => ids.push(id),
        }
    }

    /// Takes `id` out, if it is there; true if none is left.
    fn remove(&mut self, id: OpId) -> bool {
        match self {
            Bucket::One(only) => *only == id,
            Bucket::Many(ids) => {
                ids.remove(id);
                ids.is_empty()
            }
        }
    }
}

/// Ids in attach order, the first taken in O(1) (see the module).
#[derive(Debug, Default)]
struct IdQueue {
    ids: Vec<OpId>,
    /// Where the live entries start in `ids`: those before were taken.
    start: usize,
}

impl IdQueue {
    fn push(&mut self, id: OpId) {
        self.ids.push(id);
    }

    #[inline]
    fn as_slice(&self) -> &[OpId] {
        &self.ids[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.start == self.ids.len()
    }

    fn remove(&mut self, id: OpId) {
        let Some(at) = self.as_slice().iter().position(|&e| e == id) else {
            return;
        };
        let live = self.ids.len() - self.start;
        if at < live / 2 {
            // Nearer the front: those before it move up one, and the start with them.
            self.ids
                .copy_within(self.start..self.start + at, self.start + 1);
            self.start += 1;
            if self.start * 2 >= self.ids.len() {
                self.ids.drain(..self.start);
                self.start = 0;
            }
        } else {
            self.ids.remove(self.start + at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_from_anywhere_and_the_rest_keep_their_order() {
        let mut l = IdQueue::default();
        for i in 1..=6 {
            l.push(OpId(i));
        }
        l.remove(OpId(1));
        l.remove(OpId(4));
        l.remove(OpId(9)); // not there
        assert_eq!(l.as_slice(), [OpId(2), OpId(3), OpId(5), OpId(6)]);
        l.remove(OpId(2));
        l.remove(OpId(3));
        assert_eq!(l.as_slice(), [OpId(5), OpId(6)]);
        assert!(l.ids.len() <= 4, "the taken prefix is dropped: {:?}", l.ids);
        l.push(OpId(7));
        l.remove(OpId(5));
        l.remove(OpId(6));
        l.remove(OpId(7));
        assert!(l.is_empty());
        // Near the front, but not first: the ones before it move, the order stays.
        for i in 10..20 {
            l.push(OpId(i));
        }
        l.remove(OpId(12));
        l.remove(OpId(11));
        l.remove(OpId(18));
        let want: Vec<OpId> = [10, 13, 14, 15, 16, 17, 19].map(OpId).to_vec();
        assert_eq!(l.as_slice(), want);
    }

    #[test]
    fn exact_entries_are_kept_by_portal_and_bits_and_wildcards_apart() {
        let mut p = Portals::default();
        p.push(4, OpId(1), 0x10, 0);
        p.push(4, OpId(2), 0x20, 0);
        p.push(4, OpId(3), 0, u64::MAX);
        p.push(4, OpId(4), 0x10, 0);
        p.push(5, OpId(5), 0x10, 0);
        p.push(4, OpId(6), 0x10, 0);
        assert_eq!(p.exact(4, 0x10), [OpId(1), OpId(4), OpId(6)]);
        assert_eq!(p.exact(4, 0x20), [OpId(2)]);
        assert_eq!(p.exact(5, 0x10), [OpId(5)]);
        assert_eq!(p.exact(4, 0x30), []);
        assert_eq!(p.wildcards(4), [OpId(3)]);
        assert_eq!(p.wildcards(5), []);
        p.remove(4, OpId(4), 0x10, 0);
        p.remove(4, OpId(2), 0x10, 0); // not among 0x10's
        assert_eq!(p.exact(4, 0x10), [OpId(1), OpId(6)]);
        assert_eq!(p.exact(4, 0x20), [OpId(2)]);
        assert_eq!(p.lists(), 4);
        for (portal, id, bits) in [(4, 1, 0x10), (4, 6, 0x10), (4, 2, 0x20), (5, 5, 0x10)] {
            p.remove(portal, OpId(id), bits, 0);
        }
        assert_eq!(p.lists(), 1, "emptied lists go");
        p.remove(4, OpId(3), 0, u64::MAX);
        assert_eq!(p.lists(), 0);
    }

    #[test]
    fn the_room_a_burst_took_is_given_back() {
        let mut p = Portals::default();
        for bits in 0..50_000 {
            p.push(4, OpId(bits), bits, 0);
        }
        assert!(p.room() >= 50_000);
        for bits in 0..50_000 {
            p.remove(4, OpId(bits), bits, 0);
        }
        assert_eq!(p.lists(), 0);
        assert!(
            p.room() <= crate::node::room::KEPT_ANYWAY,
            "{} entries of room kept",
            p.room()
        );
    }
}
