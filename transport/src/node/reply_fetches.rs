//! The REPLY payloads our GETs are fetching (left at the hop that brought them, as a
//! driver's deferred payload): one per GET and hop. Copies of a GET resent through other
//! routers are answered by way of those, so a GET may have a REPLY fetched from each; a
//! hop that brings a second while its first is fetched brings it for nothing (a peer's
//! error, or a hostile one making us take a buffer of its length for each).

use rustc_hash::{FxHashMap, FxHashSet};

use crate::nid::Nid;

#[derive(Default)]
pub(crate) struct ReplyFetches {
    /// By GET (its seq) and hop.
    by_hop: FxHashSet<(u64, Nid)>,
    /// Fetches under way per GET, so that a failed one learns of the others at once (a
    /// failed NI fails every fetch of its own in turn).
    per_get: FxHashMap<u64, u32>,
}

impl ReplyFetches {
    /// Books the fetch of GET `seq`'s REPLY from `hop`: false if one from there is under
    /// way already.
    pub(crate) fn start(&mut self, seq: u64, hop: Nid) -> bool {
        if !self.by_hop.insert((seq, hop)) {
            return false;
        }
        *self.per_get.entry(seq).or_default() += 1;
        true
    }

    /// The fetch of GET `seq`'s REPLY from `hop` ended: whether another of its REPLYs is
    /// still being fetched.
    pub(crate) fn end(&mut self, seq: u64, hop: Nid) -> bool {
        if !self.by_hop.remove(&(seq, hop)) {
            return self.per_get.contains_key(&seq);
        }
        match self.per_get.get_mut(&seq) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            _ => {
                self.per_get.remove(&seq);
                false
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(
            self.by_hop.len(),
            self.per_get.values().map(|&n| n as usize).sum::<usize>()
        );
        self.by_hop.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fetch_per_get_and_hop_and_each_end_tells_of_the_others() {
        let (b, c) = (Nid::mem(2, 1), Nid::mem(3, 1));
        let mut f = ReplyFetches::default();
        assert!(f.start(7, b));
        assert!(!f.start(7, b), "a second from the same hop");
        assert!(f.start(7, c));
        assert!(f.start(8, b));
        assert_eq!(f.len(), 3);
        assert!(f.end(7, b), "the one from C is under way");
        assert!(!f.end(7, c));
        assert!(!f.end(7, c), "ended twice: nothing else under way");
        assert!(!f.end(8, b));
        assert_eq!(f.len(), 0);
    }
}
