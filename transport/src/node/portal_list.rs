//! A portal's attached entries, in attach order: matched by a walk from the oldest, and
//! taken out where they are, moving the shorter side (as a `VecDeque` does). Entries
//! usually go oldest first (use-once entries matched, a shutdown in submission order):
//! taking the first is O(1) (the list's start moves, and the taken prefix is dropped
//! once it is half the list), where a `Vec` shifted the rest and `retain` walked it all
//! (a shutdown of 100,000 entries took 5.5 s). Unlike a `VecDeque`, the live entries are
//! one slice, walked as fast as a `Vec`'s (the match runs for every PUT and GET;
//! `lanet-bench cost`).

use crate::op::OpId;

#[derive(Debug, Default)]
pub(crate) struct PortalList {
    ids: Vec<OpId>,
    /// Where the live entries start in `ids`: those before were taken.
    start: usize,
}

impl PortalList {
    pub(crate) fn push(&mut self, id: OpId) {
        self.ids.push(id);
    }

    /// The entries, oldest first.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[OpId] {
        &self.ids[self.start..]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.ids.len()
    }

    /// Takes `id` out, if it is there.
    pub(crate) fn remove(&mut self, id: OpId) {
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
        let mut l = PortalList::default();
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
}
