//! The frames a node has handed to its drivers, by the token each driver hands back with
//! the frame's completion: a slab, since a token is looked up once per frame sent, where a
//! hash map cost a few hundred instructions per round trip. A token carries its slot's
//! generation, so one handed back twice, or late, finds nothing rather than the frame now
//! in its slot; a slot whose generation has run out is retired, never reused, so no token
//! comes round again.

/// A slot's generation and index, as one token.
fn token(generation: u32, index: u32) -> u64 {
    u64::from(generation) << 32 | u64::from(index)
}

fn split(token: u64) -> (u32, usize) {
    ((token >> 32) as u32, (token & u64::from(u32::MAX)) as usize)
}

struct Slot<T> {
    /// Bumped at every insert into the slot: tokens of earlier frames no longer match.
    generation: u32,
    value: Option<T>,
}

pub(crate) struct InFlight<T> {
    slots: Vec<Slot<T>>,
    /// Empty slots, reused last-freed first (the hottest in cache).
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> InFlight<T> {
    /// Holds `value` until its token comes back; returns the token.
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 frames in flight");
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                i
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.value = Some(value);
        self.len += 1;
        token(slot.generation, index)
    }

    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let (generation, index) = split(token);
        self.slots
            .get_mut(index)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.value.as_mut())
    }

    /// Takes back what `token` was given for, if it is still held.
    pub(crate) fn remove(&mut self, token: u64) -> Option<T> {
        let (generation, index) = split(token);
        let slot = self
            .slots
            .get_mut(index)
            .filter(|s| s.generation == generation)?;
        let value = slot.value.take()?;
        if slot.generation != u32::MAX {
            self.free.push(index as u32);
        }
        self.len -= 1;
        Some(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every value held, with its token, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.value.as_ref().map(|v| (token(s.generation, i as u32), v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_finds_its_value_once_and_a_reused_slot_refuses_old_tokens() {
        let mut f = InFlight::default();
        let a = f.insert("a");
        let b = f.insert("b");
        assert_ne!(a, b);
        assert_eq!(f.len(), 2);
        assert_eq!(f.get_mut(a).map(|v| *v), Some("a"));
        assert_eq!(f.remove(a), Some("a"));
        assert_eq!(f.remove(a), None, "handed back twice");
        // The slot is reused, under a new generation: the old token finds nothing.
        let c = f.insert("c");
        assert_eq!(split(c).1, split(a).1, "the freed slot is reused");
        assert_ne!(c, a);
        assert!(f.get_mut(a).is_none());
        assert_eq!(f.remove(a), None);
        assert_eq!(f.len(), 2);
        let mut held: Vec<_> = f.iter().map(|(t, v)| (t, *v)).collect();
        held.sort_unstable();
        let mut want = vec![(b, "b"), (c, "c")];
        want.sort_unstable();
        assert_eq!(held, want);
        // Tokens from nowhere: an index beyond the slots, a generation never given.
        assert_eq!(f.remove(token(1, 99)), None);
        assert_eq!(f.remove(c ^ (1 << 40)), None);
        // An empty slot is skipped.
        assert_eq!(f.remove(b), Some("b"));
        assert_eq!(
            f.iter().map(|(t, v)| (t, *v)).collect::<Vec<_>>(),
            vec![(c, "c")]
        );
        assert_eq!((f.remove(c), f.len()), (Some("c"), 0));
    }

    #[test]
    fn a_slot_whose_generation_ran_out_is_never_reused() {
        let mut f = InFlight::default();
        f.insert(1);
        f.slots[0].generation = u32::MAX - 1; // as after 2^32 - 2 frames through slot 0
        assert_eq!(f.remove(token(u32::MAX - 1, 0)), Some(1));
        let last = f.insert(2);
        assert_eq!(split(last), (u32::MAX, 0));
        assert_eq!(f.remove(last), Some(2));
        // The next frame takes a new slot: slot 0's tokens cannot come round again.
        let next = f.insert(3);
        assert_eq!(split(next).1, 1, "slot 0 retired");
        assert_eq!(f.remove(last), None);
    }
}
