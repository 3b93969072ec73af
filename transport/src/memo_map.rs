//! A hash map that remembers where its last lookup led.
//!
//! The core looks the same peer up several times while it handles one frame or one
//! operation (its hop and credits, its health, its operations), and an LND its connection
//! and socket, so most lookups repeat the one before. A repeat costs a comparison of two
//! keys instead of a hash and a probe (measured: `lanet-bench cost`, bench/RESULTS.md). The
//! subset of `HashMap`'s interface the callers use is kept, so that call sites read as with
//! one. Iteration is in insertion order disturbed by removals (deterministic, as the
//! simulator needs, but nothing to rely on: callers that need an order sort, as they did
//! with a hash map).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use crate::nid::Nid;

/// The core's map of peers.
pub(crate) type NidMap<V> = MemoMap<Nid, V>;

/// A map from `K` to `V` whose repeated lookups of one key are a comparison (see the
/// module). Entries are kept packed: a removal moves the last entry into the gap.
pub struct MemoMap<K, V> {
    /// Where each key's entry is in `entries`.
    index: FxHashMap<K, usize>,
    /// The entries, packed: a removal moves the last one into the gap.
    entries: Vec<(K, V)>,
    /// The position of the entry last found or added. It may be stale (removals move
    /// entries), so the key there is compared before it is trusted. Atomic only so that
    /// the map, and the node, stay `Sync`: a relaxed load or store is a plain move.
    last: AtomicUsize,
}

impl<K, V> Default for MemoMap<K, V> {
    fn default() -> Self {
        MemoMap {
            index: FxHashMap::default(),
            entries: Vec::new(),
            last: AtomicUsize::new(0),
        }
    }
}

impl<K: Copy + Eq + Hash, V> MemoMap<K, V> {
    /// Where `key`'s entry is, the last hit first.
    #[inline]
    fn position(&self, key: &K) -> Option<usize> {
        let last = self.last.load(Ordering::Relaxed);
        if let Some((k, _)) = self.entries.get(last) {
            if k == key {
                return Some(last);
            }
        }
        let at = *self.index.get(key)?;
        debug_assert!(self.entries[at].0 == *key, "the index is out of step");
        self.last.store(at, Ordering::Relaxed);
        Some(at)
    }

    #[inline]
    pub fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|at| &self.entries[at].1)
    }

    #[inline]
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let at = self.position(key)?;
        Some(&mut self.entries[at].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.position(key).is_some()
    }

    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        Entry { map: self, key }
    }

    /// Sets `key`'s value; the one it replaces, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            None => {
                self.push(key, value);
                None
            }
        }
    }

    /// Adds an entry for a key that has none.
    fn push(&mut self, key: K, value: V) -> usize {
        let at = self.entries.len();
        self.entries.push((key, value));
        self.index.insert(key, at);
        self.last.store(at, Ordering::Relaxed);
        at
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.index.remove(key)?;
        let (_, value) = self.entries.swap_remove(at);
        if let Some((moved, _)) = self.entries.get(at) {
            *self.index.get_mut(moved).expect("every entry is indexed") = at;
        }
        Some(value)
    }

    /// Keeps the entries for which `keep` says so. Should `keep` panic, the map is left
    /// out of step with itself (a lookup may miss an entry, find another key's, or
    /// panic): drop it.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(key, value)| keep(key, value));
        if self.entries.len() != before {
            self.index.clear();
            for (at, (key, _)) in self.entries.iter().enumerate() {
                self.index.insert(*key, at);
            }
        }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }

    /// Empties the map, handing over its entries (all of them go, however many are taken).
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.index.clear();
        self.entries.drain(..)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.into_iter()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(key, _)| key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, value)| value)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, value)| value)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(key, value)| (&*key, value))
    }
}

impl<K: Copy + Eq + Hash + Debug, V> std::ops::Index<&K> for MemoMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key)
            .unwrap_or_else(|| panic!("no entry for {key:?}"))
    }
}

impl<'a, K, V> IntoIterator for &'a MemoMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(key, value)| (key, value))
    }
}

/// A place in a [`MemoMap`], filled or not (`HashMap::entry`'s two common uses).
pub struct Entry<'a, K, V> {
    map: &'a mut MemoMap<K, V>,
    key: K,
}

impl<'a, K: Copy + Eq + Hash, V> Entry<'a, K, V> {
    pub fn or_insert_with(self, make: impl FnOnce() -> V) -> &'a mut V {
        let map = self.map;
        let at = match map.position(&self.key) {
            Some(at) => at,
            None => map.push(self.key, make()),
        };
        &mut map.entries[at].1
    }

    pub fn or_default(self) -> &'a mut V
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
                    Step::Insert(k, v) if v % 2 == 0 => {
                        prop_assert_eq!(map.insert(nid(k), v), model.insert(nid(k), v));
                    }
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
                    Step::Clear if model.len() % 2 == 0 => {
                        map.clear();
                        model.clear();
                    }
                    Step::Clear if model.len() % 3 == 0 => {
                        // A drain dropped after one entry still empties the map.
                        let first = map.drain().next();
                        prop_assert_eq!(first.is_some(), !model.is_empty());
                        model.clear();
                    }
                    Step::Clear => {
                        let mut drained: Vec<_> = map.drain().collect();
                        drained.sort();
                        let want: Vec<_> = std::mem::take(&mut model).into_iter().collect();
                        prop_assert_eq!(drained, want);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.is_empty(), model.is_empty());
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
