//! A map keyed by NID that remembers where its last lookup led.
//!
//! The core looks the same peer up several times while it handles one frame or one
//! operation (its hop and credits, its health, its operations), so most lookups repeat
//! the one before. A repeat costs a comparison of two NIDs instead of a hash and a probe
//! (measured: `lanet-bench cost`, bench/RESULTS.md). The subset of `HashMap`'s interface
//! the core uses is kept, so that call sites read as before. Iteration is in insertion
//! order disturbed by removals (deterministic, as the simulator needs, but nothing to rely
//! on: callers that need an order sort, as they did with a hash map).

use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use crate::nid::Nid;

pub(crate) struct NidMap<V> {
    /// Where each NID's entry is in `entries`.
    index: FxHashMap<Nid, usize>,
    /// The entries, packed: a removal moves the last one into the gap.
    entries: Vec<(Nid, V)>,
    /// The position of the entry last found or added. It may be stale (removals move
    /// entries), so the NID there is compared before it is trusted. Atomic only so that
    /// the map, and the node, stay `Sync`: a relaxed load or store is a plain move.
    last: AtomicUsize,
}

impl<V> Default for NidMap<V> {
    fn default() -> Self {
        NidMap {
            index: FxHashMap::default(),
            entries: Vec::new(),
            last: AtomicUsize::new(0),
        }
    }
}

impl<V> NidMap<V> {
    /// Where `nid`'s entry is, the last hit first.
    #[inline]
    fn position(&self, nid: &Nid) -> Option<usize> {
        let last = self.last.load(Ordering::Relaxed);
        if let Some((key, _)) = self.entries.get(last) {
            if key == nid {
                return Some(last);
            }
        }
        let at = *self.index.get(nid)?;
        debug_assert!(self.entries[at].0 == *nid, "the index is out of step");
        self.last.store(at, Ordering::Relaxed);
        Some(at)
    }

    #[inline]
    pub(crate) fn get(&self, nid: &Nid) -> Option<&V> {
        self.position(nid).map(|at| &self.entries[at].1)
    }

    #[inline]
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
        self.into_iter()
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
        self.get(nid)
            .unwrap_or_else(|| panic!("no entry for {nid}"))
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
                map.last.store(at, Ordering::Relaxed);
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
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, u32),
        Get(u8),
        Add(u8, u32),
        Remove(u8),
        RetainOdd,
        AddToAll(u32),
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..12, any::<u32>()).prop_map(|(k, v)| Step::Insert(k, v)),
            4 => (0u8..12).prop_map(Step::Get),
            2 => (0u8..12, any::<u32>()).prop_map(|(k, v)| Step::Add(k, v)),
            3 => (0u8..12).prop_map(Step::Remove),
            1 => Just(Step::RetainOdd),
            1 => any::<u32>().prop_map(Step::AddToAll),
            1 => Just(Step::Clear),
        ]
    }

    /// Twelve NIDs that differ in address, in net, or in both.
    fn nid(k: u8) -> Nid {
        Nid::mem(u32::from(k % 6), u16::from(k / 6))
    }

    proptest! {
        /// Whatever the order of lookups, insertions and removals (which move entries
        /// under the remembered position), it answers as a map does, and its index stays
        /// in step with its entries.
        #[test]
        fn answers_as_a_map_does(steps in proptest::collection::vec(step(), 1..300)) {
            let (mut map, mut model) = (NidMap::default(), BTreeMap::new());
            for s in steps {
                match s {
                    Step::Insert(k, v) => {
                        *map.entry(nid(k)).or_insert_with(|| 0) = v;
                        model.insert(nid(k), v);
                    }
                    Step::Get(k) => {
                        prop_assert_eq!(map.get(&nid(k)), model.get(&nid(k)));
                        prop_assert_eq!(map.contains_key(&nid(k)), model.contains_key(&nid(k)));
                        if let Some(v) = model.get(&nid(k)) {
                            prop_assert_eq!(map[&nid(k)], *v);
                        }
                    }
                    Step::Add(k, v) => {
                        if let Some(x) = map.get_mut(&nid(k)) {
                            *x = x.wrapping_add(v);
                        }
                        if let Some(x) = model.get_mut(&nid(k)) {
                            *x = x.wrapping_add(v);
                        }
                        *map.entry(nid(k)).or_default() ^= 1;
                        *model.entry(nid(k)).or_default() ^= 1;
                    }
                    Step::Remove(k) => prop_assert_eq!(map.remove(&nid(k)), model.remove(&nid(k))),
                    Step::RetainOdd => {
                        map.retain(|_, v| *v % 2 == 1);
                        model.retain(|_, v| *v % 2 == 1);
                    }
                    Step::AddToAll(v) => {
                        map.values_mut().for_each(|x| *x = x.wrapping_add(v));
                        model.values_mut().for_each(|x| *x = x.wrapping_add(v));
                    }
                    Step::Clear => {
                        map.clear();
                        model.clear();
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.index.len(), map.entries.len());
                for (at, (key, _)) in map.entries.iter().enumerate() {
                    prop_assert_eq!(map.index[key], at);
                }
                for (k, v) in &model {
                    prop_assert_eq!(map.get(k), Some(v));
                }
                let mut seen: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
                seen.sort();
                let want: Vec<_> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(seen, want);
            }
        }
    }
}
