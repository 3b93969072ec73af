//! Credit accounting, as in LNet/o2iblnd.
//!
//! Per peer and lane: a send spends one of the peer's receive credits; the receiver returns
//! credits piggybacked on any frame it sends back, or in an explicit CREDIT frame once it owes
//! `credits_hiw` of them. Per NI and lane: a bound on messages in flight in the driver.
//!
//! Both ends of a connection use the same window, the smaller of their two HELLO offers,
//! as o2iblnd's queue depth is the smaller of its two ends' (and LNet's `peer_tx_credits`
//! are the node's own `peer_credits`): a peer offering thousands of credits and reading
//! nothing holds no more of our NI's credits than we offer it. The receiver returns
//! credits once it owes `credits_hiw`, or half the window if that is less, so a sender
//! whose window is below the receiver's `credits_hiw` is neither left waiting for a CREDIT
//! frame never sent nor made to stop and wait once per window; and once every credit of
//! the window is owed or held (a router's, for frames it forwards), since the sender then
//! has none (protocol version 4; earlier nodes took each other's offer at its word).

use std::collections::VecDeque;

use crate::nid::Nid;

/// A peer broke the credit protocol; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    #[error("peer returned {returned} credits with {have} of {max} already in hand")]
    TooManyReturned { returned: u16, have: u16, max: u16 },
    #[error("peer sent a frame with no credit left (a window of {window}, all in use)")]
    Overrun { window: u16 },
}

/// Credit state of one connected lane of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneCredits {
    /// Credits we may spend now.
    tx: u16,
    /// The smaller of the two ends' offers: the most frames in flight either way.
    window: u16,
    /// Frames of the peer we consumed and have not yet returned credit for.
    owed: u16,
    /// Frames of the peer still using our buffer: a router holds the credit of a frame
    /// it forwards until the frame has left downstream, so that backpressure reaches the
    /// sender instead of memory growing.
    held: u16,
    hiw: u16,
    /// The fewest credits we have had since the connection came up (lnetctl's "min_tx_credits"):
    /// how close the peer's window came to stalling us.
    tx_low: u16,
}

impl LaneCredits {
    /// `peer_offered`: from the peer's HELLO; `we_offered`: from ours; `hiw`: our
    /// `credits_hiw` (see the module on the window both ends use).
    pub fn new(peer_offered: u16, we_offered: u16, hiw: u16) -> Self {
        let window = peer_offered.min(we_offered);
        LaneCredits {
            tx: window,
            window,
            owed: 0,
            held: 0,
            hiw: hiw.clamp(1, window.div_ceil(2).max(1)),
            tx_low: window,
        }
    }

    pub fn available(&self) -> u16 {
        self.tx
    }

    /// Spends one credit; false (and nothing spent) when none is left.
    pub fn try_spend(&mut self) -> bool {
        if self.tx == 0 {
            return false;
        }
        self.tx -= 1;
        self.tx_low = self.tx_low.min(self.tx);
        true
    }

    /// The smaller of the two offers: the most frames we may have in flight to the peer,
    /// and the most of its own it may have here at once.
    pub fn window(&self) -> u16 {
        self.window
    }

    /// The fewest credits we have had since the connection came up.
    pub fn lowest(&self) -> u16 {
        self.tx_low
    }

    /// The peer returned `n` credits.
    pub fn on_returned(&mut self, n: u16) -> Result<(), CreditError> {
        match self.tx.checked_add(n) {
            Some(t) if t <= self.window => {
                self.tx = t;
                Ok(())
            }
            _ => Err(CreditError::TooManyReturned {
                returned: n,
                have: self.tx,
                max: self.window,
            }),
        }
    }

    /// We received and consumed a frame that used one of our receive credits.
    pub fn on_consumed(&mut self) -> Result<(), CreditError> {
        if self.owed + self.held >= self.window {
            return Err(CreditError::Overrun {
                window: self.window,
            });
        }
        self.owed += 1;
        Ok(())
    }

    /// The frame just consumed keeps its buffer for now: its credit goes back only at
    /// [`LaneCredits::release_held`].
    pub fn hold_last(&mut self) {
        debug_assert!(self.owed > 0, "hold_last without a consumed frame");
        if self.owed > 0 {
            self.owed -= 1;
            self.held += 1;
        }
    }

    /// A held frame let go of its buffer: its credit is owed to the peer now.
    pub fn release_held(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.owed += 1;
        }
    }

    pub fn held(&self) -> u16 {
        self.held
    }

    /// Takes every owed credit, to piggyback on a frame being sent.
    pub fn take_owed(&mut self) -> u16 {
        std::mem::take(&mut self.owed)
    }

    pub fn owed(&self) -> u16 {
        self.owed
    }

    /// Whether owed credits should go back in a CREDIT frame now: at the high-water mark,
    /// or when the peer has no credit left at all (what it is not owed, we hold).
    pub fn wants_credit_frame(&self) -> bool {
        self.owed >= self.hiw || (self.owed > 0 && self.owed + self.held >= self.window)
    }
}

/// Messages of one lane in flight in one NI's driver, and the peers waiting for room.
#[derive(Debug, Clone)]
pub struct NiCredits {
    available: u32,
    max: u32,
    /// Peers with a sendable message but no NI credit, served in arrival order.
    waiting: VecDeque<Nid>,
}

impl NiCredits {
    pub fn new(max: u32) -> Self {
        NiCredits {
            available: max,
            max,
            waiting: VecDeque::new(),
        }
    }

    pub fn available(&self) -> u32 {
        self.available
    }

    pub fn try_take(&mut self) -> bool {
        if self.available == 0 {
            return false;
        }
        self.available -= 1;
        true
    }

    pub fn release(&mut self) {
        debug_assert!(self.available < self.max, "NI credit released twice");
        self.available = (self.available + 1).min(self.max);
    }

    /// Queues `peer` to be pumped when a credit comes back (once, however often it asks).
    pub fn wait(&mut self, peer: Nid) {
        if !self.waiting.contains(&peer) {
            self.waiting.push_back(peer);
        }
    }

    pub fn next_waiter(&mut self) -> Option<Nid> {
        if self.available == 0 {
            return None;
        }
        self.waiting.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_use_the_smaller_offer_and_the_high_water_mark_fits_in_it() {
        for (peer, we) in [(1000, 8), (8, 1000), (2, 8)] {
            let c = LaneCredits::new(peer, we, 4);
            assert_eq!((c.available(), c.window()), (peer.min(we), peer.min(we)));
        }
        // A window of 4 under a high-water mark of 4: credits go back at half the window,
        // 2, not once the sender has none left.
        let mut c = LaneCredits::new(4, 8, 4);
        c.on_consumed().unwrap();
        assert!(!c.wants_credit_frame());
        c.on_consumed().unwrap();
        assert!(c.wants_credit_frame());
        c.on_consumed().unwrap();
        c.on_consumed().unwrap();
        assert_eq!(c.on_consumed(), Err(CreditError::Overrun { window: 4 }));
    }

    #[test]
    fn a_credit_goes_back_below_the_high_water_mark_when_the_rest_are_held() {
        // A router holds 7 of a window of 8 for frames it forwards, and owes 1: the
        // sender has no credit left, so the one owed must go back now.
        let mut c = LaneCredits::new(8, 8, 4);
        for _ in 0..7 {
            c.on_consumed().unwrap();
            c.hold_last();
        }
        assert!(!c.wants_credit_frame(), "nothing owed");
        c.on_consumed().unwrap();
        assert!(c.wants_credit_frame());
    }

    #[test]
    fn spending_stops_at_zero_and_returns_restore() {
        let mut c = LaneCredits::new(2, 8, 4);
        assert!(c.try_spend());
        assert!(c.try_spend());
        assert!(!c.try_spend());
        assert_eq!(c.available(), 0);
        c.on_returned(1).unwrap();
        assert!(c.try_spend());
    }

    #[test]
    fn returning_more_than_the_window_is_a_protocol_error() {
        let mut c = LaneCredits::new(2, 8, 4);
        assert!(c.try_spend());
        assert_eq!(
            c.on_returned(2),
            Err(CreditError::TooManyReturned {
                returned: 2,
                have: 1,
                max: 2
            })
        );
        assert!(c.on_returned(u16::MAX).is_err());
        assert_eq!(c.available(), 1, "a refused return changes nothing");
    }

    #[test]
    fn owed_credits_trigger_a_credit_frame_at_the_high_water_mark() {
        let mut c = LaneCredits::new(8, 8, 3);
        c.on_consumed().unwrap();
        c.on_consumed().unwrap();
        assert!(!c.wants_credit_frame());
        c.on_consumed().unwrap();
        assert!(c.wants_credit_frame());
        assert_eq!(c.take_owed(), 3);
        assert_eq!(c.owed(), 0);
        assert!(!c.wants_credit_frame());
    }

    #[test]
    fn a_peer_that_overruns_its_credits_is_caught() {
        let mut c = LaneCredits::new(8, 2, 2);
        c.on_consumed().unwrap();
        c.on_consumed().unwrap();
        assert_eq!(c.on_consumed(), Err(CreditError::Overrun { window: 2 }));
        c.take_owed();
        c.on_consumed().unwrap();
    }

    #[test]
    fn a_held_credit_goes_back_only_when_released_and_still_counts_against_overrun() {
        let mut c = LaneCredits::new(8, 2, 1);
        c.on_consumed().unwrap();
        c.hold_last();
        assert_eq!((c.owed(), c.held()), (0, 1));
        assert!(!c.wants_credit_frame(), "nothing to return while held");
        c.on_consumed().unwrap();
        assert_eq!(
            c.on_consumed(),
            Err(CreditError::Overrun { window: 2 }),
            "the held buffer is still in use"
        );
        assert_eq!(c.take_owed(), 1);
        c.release_held();
        assert_eq!((c.owed(), c.held()), (1, 0));
        assert!(c.wants_credit_frame());
    }

    #[test]
    fn ni_credits_serve_waiters_in_order_only_when_free() {
        let mut ni = NiCredits::new(1);
        let (a, b) = (Nid::mem(1, 0), Nid::mem(2, 0));
        assert!(ni.try_take());
        assert!(!ni.try_take());
        ni.wait(a);
        ni.wait(b);
        ni.wait(a);
        assert_eq!(ni.next_waiter(), None, "no credit, no waiter served");
        ni.release();
        assert_eq!(ni.next_waiter(), Some(a));
        assert_eq!(ni.next_waiter(), Some(b));
        assert_eq!(ni.next_waiter(), None);
    }
}
