//! A map keyed by NID that remembers where its last lookup led.
//!
//! The core looks the same peer up several times while it handles one frame or one
//! operation (its hop and credits, its health, its operations), so most lookups repeat
//! the one before. A repeat costs a comparison of two NIDs instead of a hash and a probe
//! (measured: `lanet-bench cost`, bench/RESULTS.md). The subset of `HashMap`'s interface
//! the core uses is kept, so that call sites read as before. Iteration is in no
//! particular order, as a hash map's.

use std::cell::Cell;

use rustc_hash::FxHashMap;

use crate::nid::Nid;

pub(crate) struct NidMap<V> {
    /// Where each NID's entry is in `entries`.
    index: FxHashMap<Nid, usize>,
    /// The entries, packed: a removal moves the last one into the gap.
    entries: Vec<(Nid, V)>,
    /// The position of the entry last found or added. It may be stale (removals move
    /// entries), so the NID there is compared before it is trusted.
    last: Cell<usize>,
}

impl<V> Default for NidMap<V> {
    fn default() -> Self {
        NidMap {
            index: FxHashMap::default(),
            entries: Vec::new(),
            last: Cell::new(0),
        }
    }
}

impl<V> NidMap<V> {
    /// Where `nid`'s entry is, the last hit first.
    #[inline]
    fn position(&self, nid: &Nid) -> Option<usize> {
        let last = self.last.get();
        if let Some((key, _)) = self.entries.get(last) {
            if key == nid {
                return Some(last);
            }
        }
        let at = *self.index.get(nid)?;
        self.last.set(at);
        Some(at)
    }

    pub(crate) fn get(&self, nid: &Nid) -> Option<&V> {
        self.position(nid).map(|at| &self.entries[at].1)
    }

    pub(crate) fn get_mut(&mut self, nid: &Nid) -> Option<&mut V> {
        let at = self.position(nid)?;
        Some(&mut self.entries[at].1)
    }

    pub(crate) fn contains_key(&self, nid: &Nid) -> bool {
        self.position(nid).is_some()
    }

    pub(crate) fn entry(&mut self, nid: Nid) -> Entry<'_, V> {
        Entry { map: self, nid }
    }

    pub(crate) fn remove(&mut self, nid: &Nid) -> Option<V> {
        let at = self.index.remove(nid)?;
        let (_, value) = self.entries.swap_remove(at);
        if let Some((moved, _)) = self.entries.get(at) {
            *self.index.get_mut(moved).expect("every entry is indexed") = at;
        }
        Some(value)
    }

    /// Keeps the entries for which `keep` says so.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Nid, &mut V) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(nid, value)| keep(nid, value));
        if self.entries.len() != before {
            self.index.clear();
            for (at, (nid, _)) in self.entries.iter().enumerate() {
                self.index.insert(*nid, at);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Nid, &V)> {
        self.entries.iter().map(|(nid, value)| (nid, value))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Nid> {
        self.entries.iter().map(|(nid, _)| nid)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, value)| value)
    }
}

impl<V> std::ops::Index<&Nid> for NidMap<V> {
    type Output = V;

    fn index(&self, nid: &Nid) -> &V {
        self.get(nid).expect("no entry for this NID")
    }
}

impl<'a, V> IntoIterator for &'a NidMap<V> {
    type Item = (&'a Nid, &'a V);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (Nid, V)>, fn(&'a (Nid, V)) -> (&'a Nid, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(nid, value)| (nid, value))
    }
}

/// A place in a [`NidMap`], filled or not (`HashMap::entry`'s two uses in the core).
pub(crate) struct Entry<'a, V> {
    map: &'a mut NidMap<V>,
    nid: Nid,
}

impl<'a, V> Entry<'a, V> {
    pub(crate) fn or_insert_with(self, make: impl FnOnce() -> V) -> &'a mut V {
        let map = self.map;
        let at = match map.position(&self.nid) {
            Some(at) => at,
            None => {
                let at = map.entries.len();
                map.entries.push((self.nid, make()));
                map.index.insert(self.nid, at);
                map.last.set(at);
                at
            }
        };
        &mut map.entries[at].1
    }

    pub(crate) fn or_default(self) -> &'a mut V
    where
        V: Default,
    {
        self.or_insert_with(V::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, u32),
        Get(u8),
        Remove(u8),
        RetainOdd,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..12, any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
            (0u8..12).prop_map(Step::Get),
            (0u8..12).prop_map(Step::Remove),
            Just(Step::RetainOdd),
        ]
    }

    proptest! {
        /// Whatever the order of lookups, insertions and removals (which move entries
        /// under the remembered position), it answers as a `HashMap` does.
        #[test]
        fn answers_as_a_hash_map_does(steps in proptest::collection::vec(step(), 1..200)) {
            let nid = |k: u8| Nid::mem(u32::from(k), 0);
            let (mut map, mut model) = (NidMap::default(), HashMap::new());
            for s in steps {
                match s {
                    Step::Insert(k, v) => {
                        *map.entry(nid(k)).or_insert_with(|| 0) = v;
                        model.insert(nid(k), v);
                    }
                    Step::Get(k) => {
                        prop_assert_eq!(map.get(&nid(k)), model.get(&nid(k)));
                        prop_assert_eq!(map.get_mut(&nid(k)).copied(), model.get(&nid(k)).copied());
                    }
                    Step::Remove(k) => prop_assert_eq!(map.remove(&nid(k)), model.remove(&nid(k))),
                    Step::RetainOdd => {
                        map.retain(|_, v| *v % 2 == 1);
                        model.retain(|_, v| *v % 2 == 1);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(map.get(k), Some(v));
                }
                let mut seen: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
                let mut want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
                seen.sort();
                want.sort();
                prop_assert_eq!(seen, want);
            }
        }
    }

    #[test]
    fn or_default_adds_once_and_finds_it_again() {
        let mut map: NidMap<u32> = NidMap::default();
        *map.entry(Nid::mem(1, 0)).or_default() += 1;
        *map.entry(Nid::mem(2, 0)).or_default() += 5;
        *map.entry(Nid::mem(1, 0)).or_default() += 1;
        assert_eq!(map.get(&Nid::mem(1, 0)), Some(&2));
        assert_eq!(map.get(&Nid::mem(2, 0)), Some(&5));
        assert_eq!(map.len(), 2);
        assert!(!map.contains_key(&Nid::mem(3, 0)));
    }
}
