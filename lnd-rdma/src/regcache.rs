//! A registration cache: payloads sent again (the same `Bytes`, or a clone of it) reuse
//! their memory registration instead of paying `ibv_reg_mr` each time.
//!
//! Safety of reuse is simple here: a cached registration holds a clone of the `Bytes` it
//! covers, so that memory cannot be freed (and its address reused for other pages) while
//! the entry exists. The price is that cached payloads stay allocated until evicted; the
//! cache is bounded by entries and bytes, and evicts the least recently used entries that
//! no transfer is using.

use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Cache bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegCacheLimits {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl RegCacheLimits {
    /// Half of each bound (at least one entry and one byte): one of two caches sharing it.
    pub(crate) fn half(self) -> RegCacheLimits {
        RegCacheLimits {
            max_entries: (self.max_entries / 2).max(1),
            max_bytes: (self.max_bytes / 2).max(1),
        }
    }
}

impl Default for RegCacheLimits {
    fn default() -> Self {
        RegCacheLimits {
            max_entries: 256,
            max_bytes: 256 << 20,
        }
    }
}

/// Hit and miss counts, for tuning and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl std::ops::Add for RegCacheStats {
    type Output = RegCacheStats;

    fn add(self, other: RegCacheStats) -> RegCacheStats {
        RegCacheStats {
            hits: self.hits + other.hits,
            misses: self.misses + other.misses,
            evictions: self.evictions + other.evictions,
        }
    }
}

struct Entry<V> {
    value: Arc<V>,
    len: usize,
    last_use: u64,
}

/// Registrations `V` by (address, length) of the memory they cover.
pub(crate) struct RegCache<V> {
    limits: RegCacheLimits,
    entries: FxHashMap<(usize, usize), Entry<V>>,
    bytes: usize,
    clock: u64,
    stats: RegCacheStats,
}

impl<V> RegCache<V> {
    pub(crate) fn new(limits: RegCacheLimits) -> Self {
        RegCache {
            limits,
            entries: FxHashMap::default(),
            bytes: 0,
            clock: 0,
            stats: RegCacheStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> RegCacheStats {
        self.stats
    }

    /// The registration of `len` bytes at `addr`, made by `register` on a miss.
    pub(crate) fn get_or_register<E>(
        &mut self,
        addr: usize,
        len: usize,
        register: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&(addr, len)) {
            e.last_use = self.clock;
            self.stats.hits += 1;
            return Ok(e.value.clone());
        }
        self.stats.misses += 1;
        self.make_room(len);
        let value = Arc::new(register()?);
        self.bytes += len;
        self.entries.insert(
            (addr, len),
            Entry {
                value: value.clone(),
                len,
                last_use: self.clock,
            },
        );
        Ok(value)
    }

    /// Evicts unused entries, oldest first, until one more of `len` bytes fits. Entries a
    /// transfer still uses stay: the cache may exceed its bounds while they are busy.
    fn make_room(&mut self, len: usize) {
        let full = |c: &Self| {
            c.entries.len() + 1 > c.limits.max_entries || c.bytes + len > c.limits.max_bytes
        };
        if !full(self) {
            return;
        }
        let mut idle: Vec<((usize, usize), u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.value) == 1)
            .map(|(k, e)| (*k, e.last_use))
            .collect();
        idle.sort_unstable_by_key(|&(_, t)| t);
        for (key, _) in idle {
            if !full(self) {
                break;
            }
            let e = self.entries.remove(&key).expect("listed above");
            self.bytes -= e.len;
            self.stats.evictions += 1;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: usize, max_bytes: usize) -> RegCache<String> {
        RegCache::new(RegCacheLimits {
            max_entries,
            max_bytes,
        })
    }

    fn reg(c: &mut RegCache<String>, addr: usize, len: usize) -> Arc<String> {
        c.get_or_register(addr, len, || Ok::<_, ()>(format!("{addr}+{len}")))
            .unwrap()
    }

    #[test]
    fn repeated_buffers_are_registered_once() {
        let mut c = cache(8, 1 << 20);
        let a = reg(&mut c, 0x1000, 100);
        let again = reg(&mut c, 0x1000, 100);
        assert!(Arc::ptr_eq(&a, &again));
        // Same address, other length: another registration.
        reg(&mut c, 0x1000, 50);
        assert_eq!(
            c.stats(),
            RegCacheStats {
                hits: 1,
                misses: 2,
                evictions: 0
            }
        );
    }

    #[test]
    fn the_least_recently_used_idle_entry_goes_first_and_busy_ones_stay() {
        let mut c = cache(2, 1 << 20);
        let busy = reg(&mut c, 1, 10);
        drop(reg(&mut c, 2, 10));
        drop(reg(&mut c, 3, 10)); // evicts 2: 1 is older but in use
        assert_eq!(c.len(), 2);
        assert_eq!(c.stats().evictions, 1);
        reg(&mut c, 1, 10);
        assert_eq!(c.stats().hits, 1, "the busy entry survived");
        drop(busy);
        drop(reg(&mut c, 4, 10)); // now 3 is the oldest idle one
        reg(&mut c, 1, 10);
        assert_eq!(c.stats().hits, 2);
    }

    #[test]
    fn bytes_are_bounded_too_and_failed_registrations_are_not_kept() {
        let mut c = cache(100, 100);
        drop(reg(&mut c, 1, 60));
        drop(reg(&mut c, 2, 60)); // 120 > 100: entry 1 goes
        assert_eq!(c.len(), 1);
        let failed = c.get_or_register(3, 10, || Err::<String, _>("no memory"));
        assert_eq!(failed.err(), Some("no memory"));
        assert_eq!(c.len(), 1);
    }
}
