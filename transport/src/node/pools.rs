//! A router's buffer pools: how many frames it holds at once, by size, as LNet's router
//! buffers (tiny: no payload; small: up to 4 KiB; large: up to the largest payload).
//!
//! A frame passing through takes a buffer of its class from arrival until it has left the
//! next hop's driver (or is refused). With none free, it waits, first come first served,
//! its upstream credit held, so the sender is slowed rather than this node's memory
//! growing; past its patience it is refused (NACK: out of buffers). Each upstream peer
//! holds at most its connection's credits of them, so no one peer can take every buffer.
//! Inline payloads pass through as the same bytes: a buffer here is the right to hold one,
//! counted; deferred (RDMA) payloads are fetched into memory of that class.

use std::collections::VecDeque;
use std::time::Duration;

use crate::time::Time;

/// Payload bytes a small buffer holds.
pub const SMALL_MAX: u32 = 4096;

/// Buffers of each class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    pub tiny: u32,
    pub small: u32,
    pub large: u32,
}

impl Default for PoolSizes {
    /// LNet's router defaults.
    fn default() -> Self {
        PoolSizes {
            tiny: 2048,
            small: 16384,
            large: 1024,
        }
    }
}

/// A buffer class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    Tiny = 0,
    Small = 1,
    Large = 2,
}

impl PoolKind {
    pub const ALL: [PoolKind; 3] = [PoolKind::Tiny, PoolKind::Small, PoolKind::Large];

    /// The class a frame with `payload_len` bytes needs.
    pub fn for_len(payload_len: u32) -> PoolKind {
        match payload_len {
            0 => PoolKind::Tiny,
            1..=SMALL_MAX => PoolKind::Small,
            _ => PoolKind::Large,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Tiny => "tiny",
            PoolKind::Small => "small",
            PoolKind::Large => "large",
        }
    }
}

/// Counters of one pool (LNet's `routing show`: buffers, credits, min credits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub buffers: u32,
    pub in_use: u32,
    /// The fewest free buffers seen.
    pub min_free: u32,
    /// Frames that had to wait for a buffer.
    pub waits: u64,
    /// Frames refused because none came within their patience.
    pub refused: u64,
}

/// The pools, and the frames waiting for a buffer (each a `T`, with its deadline).
pub(crate) struct Pools<T> {
    stats: [PoolStats; 3],
    waiting: [VecDeque<(Time, T)>; 3],
    patience: Duration,
    /// Frames that just got a buffer, to go on in order (see [`Pools::hand_off`]).
    handoffs: VecDeque<T>,
    handing_off: bool,
}

impl<T> Pools<T> {
    pub(crate) fn new(sizes: PoolSizes, patience: Duration) -> Pools<T> {
        let pool = |buffers| PoolStats {
            buffers,
            min_free: buffers,
            ..PoolStats::default()
        };
        Pools {
            stats: [pool(sizes.tiny), pool(sizes.small), pool(sizes.large)],
            waiting: Default::default(),
            patience,
            handoffs: VecDeque::new(),
            handing_off: false,
        }
    }

    /// Queues a frame that got a buffer; true if the caller is to take the queue's frames
    /// on ([`Pools::next_handoff`]). Going on may free another buffer (a refusal), which
    /// hands it to the next frame waiting: queued, not recursed into, so thousands of
    /// waiting frames refused in a row cost no stack.
    pub(crate) fn hand_off(&mut self, frame: T) -> bool {
        self.handoffs.push_back(frame);
        !std::mem::replace(&mut self.handing_off, true)
    }

    /// The next frame handed a buffer; None (and the queue idle) once there is none.
    pub(crate) fn next_handoff(&mut self) -> Option<T> {
        let next = self.handoffs.pop_front();
        self.handing_off = next.is_some();
        next
    }

    /// Frames waiting for a buffer or handed off, over all classes.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum::<usize>() + self.handoffs.len()
    }

    pub(crate) fn stats(&self) -> [PoolStats; 3] {
        self.stats
    }

    /// Takes a buffer of `kind` for `frame`; with none free (or frames already waiting),
    /// `frame` waits and comes back from [`Pools::release`] or [`Pools::expire`].
    pub(crate) fn take(&mut self, kind: PoolKind, frame: T, now: Time) -> Option<T> {
        let k = kind as usize;
        let s = &mut self.stats[k];
        if s.in_use < s.buffers && self.waiting[k].is_empty() {
            s.in_use += 1;
            s.min_free = s.min_free.min(s.buffers - s.in_use);
            return Some(frame);
        }
        s.waits += 1;
        s.min_free = 0;
        self.waiting[k].push_back((now + self.patience, frame));
        None
    }

    /// A buffer of `kind` is free again: the first frame waiting for one gets it.
    pub(crate) fn release(&mut self, kind: PoolKind) -> Option<T> {
        let k = kind as usize;
        match self.waiting[k].pop_front() {
            Some((_, frame)) => Some(frame), // the buffer changes hands
            None => {
                let s = &mut self.stats[k];
                debug_assert!(s.in_use > 0, "{} buffer released twice", kind.name());
                s.in_use = s.in_use.saturating_sub(1);
                None
            }
        }
    }

    /// After an abort, nothing moves any more: the buffers of the frames dropped (`kinds`)
    /// are free, and frames waiting for one are dropped too.
    pub(crate) fn abandon(&mut self, kinds: impl IntoIterator<Item = PoolKind>) {
        for kind in kinds {
            let s = &mut self.stats[kind as usize];
            s.in_use = s.in_use.saturating_sub(1);
        }
        for waiting in &mut self.waiting {
            waiting.clear();
        }
        self.handoffs.clear();
    }

    /// Takes the frames waiting for a buffer that `pick` picks (their connection is gone:
    /// not counted as `refused`).
    pub(crate) fn take_waiting_where(&mut self, pick: impl Fn(&T) -> bool) -> Vec<T> {
        let mut picked = Vec::new();
        for queue in &mut self.waiting {
            if !queue.iter().any(|(_, f)| pick(f)) {
                continue;
            }
            for (deadline, frame) in std::mem::take(queue) {
                if pick(&frame) {
                    picked.push(frame);
                } else {
                    queue.push_back((deadline, frame));
                }
            }
        }
        picked
    }

    /// The frames that waited past their patience at `now`, to be refused.
    pub(crate) fn expire(&mut self, now: Time) -> Vec<T> {
        let mut late = Vec::new();
        for (k, queue) in self.waiting.iter_mut().enumerate() {
            while queue.front().is_some_and(|(t, _)| *t <= now) {
                late.push(queue.pop_front().expect("front checked").1);
                self.stats[k].refused += 1;
            }
        }
        late
    }

    /// When the first waiting frame runs out of patience.
    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.waiting
            .iter()
            .filter_map(|q| q.front().map(|(t, _)| *t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Pools<u32> {
        let sizes = PoolSizes {
            tiny: 1,
            small: 2,
            large: 1,
        };
        Pools::new(sizes, Duration::from_millis(10))
    }

    #[test]
    fn frames_take_buffers_of_their_class_and_wait_in_order_when_none_is_free() {
        let mut p = pools();
        assert_eq!(PoolKind::for_len(0), PoolKind::Tiny);
        assert_eq!(PoolKind::for_len(SMALL_MAX), PoolKind::Small);
        assert_eq!(PoolKind::for_len(SMALL_MAX + 1), PoolKind::Large);
        assert_eq!(p.take(PoolKind::Large, 1, Time::ZERO), Some(1));
        assert_eq!(p.take(PoolKind::Large, 2, Time::ZERO), None);
        assert_eq!(p.take(PoolKind::Large, 3, Time::ZERO), None);
        assert_eq!(
            p.take(PoolKind::Small, 4, Time::ZERO),
            Some(4),
            "another class"
        );
        let large = p.stats()[PoolKind::Large as usize];
        assert_eq!((large.in_use, large.min_free, large.waits), (1, 0, 2));
        assert_eq!(
            p.release(PoolKind::Large),
            Some(2),
            "first come, first served"
        );
        assert_eq!(p.release(PoolKind::Large), Some(3));
        assert_eq!(p.release(PoolKind::Large), None);
        assert_eq!(p.stats()[PoolKind::Large as usize].in_use, 0);
    }

    #[test]
    fn frames_taken_from_the_wait_leave_the_others_in_order() {
        let mut p = pools();
        for f in 1..=5 {
            p.take(PoolKind::Tiny, f, Time::ZERO);
        }
        assert_eq!(p.take_waiting_where(|f| f % 2 == 0), vec![2, 4]);
        assert_eq!(p.release(PoolKind::Tiny), Some(3));
        assert_eq!(p.release(PoolKind::Tiny), Some(5));
        assert_eq!(p.release(PoolKind::Tiny), None);
    }

    #[test]
    fn a_frame_waiting_past_its_patience_is_handed_back_to_be_refused() {
        let mut p = pools();
        p.take(PoolKind::Tiny, 1, Time::ZERO);
        p.take(PoolKind::Tiny, 2, Time::ZERO);
        assert_eq!(
            p.next_deadline(),
            Some(Time::ZERO + Duration::from_millis(10))
        );
        assert!(p.expire(Time::ZERO + Duration::from_millis(9)).is_empty());
        assert_eq!(p.expire(Time::ZERO + Duration::from_millis(10)), vec![2]);
        assert_eq!(p.stats()[0].refused, 1);
        assert_eq!(p.next_deadline(), None);
    }
}
