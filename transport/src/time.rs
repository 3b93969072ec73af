//! Time as the core sees it: a point on a monotonic timeline that the caller supplies.
//!
//! The core never reads a clock. Drivers read a [`Clock`]: [`MonotonicClock`] in production,
//! [`VirtualClock`] in deterministic tests and simulation.

use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Nanoseconds since an arbitrary per-process origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_duration(d: Duration) -> Time {
        Time(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(Time::from_duration(d).0))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
    /// True when time only moves when someone advances it: waiting for it is pointless.
    fn is_virtual(&self) -> bool;
}

/// The real monotonic clock (CLOCK_MONOTONIC, as `std::time::Instant`).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    /// CLOCK_MONOTONIC at creation, in nanoseconds.
    origin: u64,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: crate::sys::monotonic_nanos(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Time {
        Time(crate::sys::monotonic_nanos().saturating_sub(self.origin))
    }
    fn is_virtual(&self) -> bool {
        false
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock {
    nanos: Arc<AtomicU64>,
}

impl VirtualClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward to `t`; never backwards.
    pub fn advance_to(&self, t: Time) {
        self.nanos.fetch_max(t.0, Ordering::SeqCst);
    }

    pub fn advance(&self, d: Duration) {
        let t = self.now() + d;
        self.advance_to(t);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Time {
        Time(self.nanos.load(Ordering::SeqCst))
    }
    fn is_virtual(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn virtual_clock_moves_only_forward_and_is_shared() {
        let c = VirtualClock::new();
        let c2 = c.clone();
        c.advance(Duration::from_millis(5));
        assert_eq!(c2.now(), Time(5_000_000));
        c.advance_to(Time(1));
        assert_eq!(c.now(), Time(5_000_000));
        assert_eq!(c.now() - Time(1_000_000), Duration::from_millis(4));
        assert_eq!(Time(1) - c.now(), Duration::ZERO);
    }

    #[test]
    fn monotonic_clock_does_not_go_backwards_and_keeps_instants_time() {
        let c = MonotonicClock::new();
        let start = Instant::now();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        std::thread::sleep(Duration::from_millis(20));
        let elapsed = start.elapsed();
        let moved = c.now() - a;
        // The same clock as Instant's: the two agree within what it takes to read them.
        assert!(moved >= Duration::from_millis(20), "{moved:?}");
        assert!(
            moved <= elapsed + Duration::from_millis(20),
            "{moved:?} vs {elapsed:?}"
        );
    }
}
