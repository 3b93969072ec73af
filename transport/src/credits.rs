//! Credit accounting, as in LNet/o2iblnd.
//!
//! Per peer and lane: a send spends one of the peer's receive credits; the receiver returns
//! credits piggybacked on any frame it sends back, or in an explicit CREDIT frame once it owes
//! `credits_hiw` of them. Per NI and lane: a bound on messages in flight in the driver.

use std::collections::VecDeque;

use crate::nid::Nid;

/// A peer broke the credit protocol; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    #[error("peer returned {returned} credits with {have} of {max} already in hand")]
    TooManyReturned { returned: u16, have: u16, max: u16 },
    #[error("peer sent a frame with no credit left ({offered} offered, all in use)")]
    Overrun { offered: u16 },
}

/// Credit state of one connected lane of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneCredits {
    /// Credits we may spend now.
    tx: u16,
    /// Credits the peer offered (its receive buffers for us).
    tx_max: u16,
    /// Credits we offered the peer.
    rx_offered: u16,
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
    /// `peer_offered`: from the peer's HELLO; `we_offered`: from ours.
    pub fn new(peer_offered: u16, we_offered: u16, hiw: u16) -> Self {
        LaneCredits {
            tx: peer_offered,
            tx_max: peer_offered,
            rx_offered: we_offered,
            owed: 0,
            held: 0,
            hiw: hiw.clamp(1, we_offered.max(1)),
            tx_low: peer_offered,
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

    /// Credits the peer offered us: the most we may have in flight to it.
    pub fn max(&self) -> u16 {
        self.tx_max
    }

    /// Credits we offered the peer: the most frames of its own it may have here at once.
    pub fn offered(&self) -> u16 {
        self.rx_offered
    }

    /// The fewest credits we have had since the connection came up.
    pub fn lowest(&self) -> u16 {
        self.tx_low
    }

    /// The peer returned `n` credits.
    pub fn on_returned(&mut self, n: u16) -> Result<(), CreditError> {
        match self.tx.checked_add(n) {
            Some(t) if t <= self.tx_max => {
                self.tx = t;
                Ok(())
            }
            _ => Err(CreditError::TooManyReturned {
                returned: n,
                have: self.tx,
                max: self.tx_max,
            }),
        }
    }

    /// We received and consumed a frame that used one of our receive credits.
    pub fn on_consumed(&mut self) -> Result<(), CreditError> {
        if self.owed + self.held >= self.rx_offered {
            return Err(CreditError::Overrun {
                offered: self.rx_offered,
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

    /// Whether owed credits should go back in a CREDIT frame now.
    pub fn wants_credit_frame(&self) -> bool {
        self.owed >= self.hiw
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
    fn returning_more_than_offered_is_a_protocol_error() {
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
        let mut c = LaneCredits::new(8, 4, 3);
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
        assert_eq!(c.on_consumed(), Err(CreditError::Overrun { offered: 2 }));
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
            Err(CreditError::Overrun { offered: 2 }),
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
