//! The gate submissions pass on their way to the driver thread, so that an endpoint that
//! stops (shut down, or failed) can promise that every command it accepted is handled.
//!
//! Without it there is a window: a submitter puts its command in the channel after the
//! driver thread's last look and before it drops the channel, and the operation is never
//! completed. With it, the driver thread closes the gate, then waits until no submitter is
//! inside (emptying the channel meanwhile, since a submitter may be blocked on a full one),
//! and only then takes its last look: every command that got in is in the channel by then.
//! A submission from the driver thread itself (a callback's) cannot overlap a close, which
//! runs on that thread, and passes without the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

use super::EndpointError;

#[derive(Default)]
pub(super) struct Gate {
    /// Held shared by each submitter from another thread while it hands a command over.
    inside: RwLock<()>,
    closed: AtomicBool,
    /// Why it closed; set before `closed`.
    why: OnceLock<EndpointError>,
    /// The application asked the driver thread to stop. A flag rather than a command, so
    /// that asking never waits for (or fails on) room in the channel.
    stop: AtomicBool,
}

impl Gate {
    /// Runs `send` unless the gate is closed, in which case the error says why.
    pub(super) fn pass<T>(
        &self,
        send: impl FnOnce() -> Result<T, EndpointError>,
    ) -> Result<T, EndpointError> {
        let _inside = self.inside.read().unwrap_or_else(|e| e.into_inner());
        self.pass_on_closing_thread(send)
    }

    /// [`Gate::pass`] on the thread that closes the gate (the driver thread, from a
    /// callback): no close can run while it passes, so it takes no lock. (`pass` is this,
    /// inside the lock.)
    pub(super) fn pass_on_closing_thread<T>(
        &self,
        send: impl FnOnce() -> Result<T, EndpointError>,
    ) -> Result<T, EndpointError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(self.refusal());
        }
        send()
    }

    /// Asks the driver thread to stop at its next turn (wake it to make that now).
    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// What submissions are refused with once the gate is closed.
    pub(super) fn refusal(&self) -> EndpointError {
        self.why.get().cloned().unwrap_or(EndpointError::ShutDown)
    }

    /// Closes the gate for `why` (the first reason given stays). When this returns, no
    /// submission can get in any more and every one that got in has finished handing its
    /// command over. `drain` empties the channel while submitters are still inside.
    pub(super) fn close(&self, why: EndpointError, mut drain: impl FnMut()) {
        let _ = self.why.set(why);
        self.closed.store(true, Ordering::Release);
        for spins in 0u32.. {
            drain();
            if self.inside.try_write().is_ok() {
                return;
            }
            // Submitters leave at once now that it is closed; one blocked on a full
            // channel leaves once `drain` made room. Yield, then back off a little.
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_with_the_first_reason() {
        let gate = Gate::default();
        assert_eq!(gate.pass(|| Ok(1)), Ok(1));
        assert_eq!(gate.pass_on_closing_thread(|| Ok(1)), Ok(1));
        gate.close(EndpointError::Failed("the LND failed".into()), || {});
        gate.close(EndpointError::ShutDown, || {});
        let failed = Err(EndpointError::Failed("the LND failed".into()));
        assert_eq!(gate.pass(|| Ok(2)), failed);
        assert_eq!(gate.pass_on_closing_thread(|| Ok(2)), failed);
    }

    #[test]
    fn closing_waits_for_a_submitter_inside_and_drains_meanwhile() {
        let gate = std::sync::Arc::new(Gate::default());
        let (tx, rx) = crossbeam_channel::bounded::<u32>(1);
        tx.send(0).unwrap(); // full: the submitter below blocks inside the gate
        let submitter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.pass(|| tx.send(1).map_err(|_| EndpointError::ShutDown))
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut taken = Vec::new();
        gate.close(EndpointError::ShutDown, || taken.extend(rx.try_iter()));
        taken.extend(rx.try_iter());
        // Either it got in (and its command was taken) or it was refused: never lost.
        match submitter.join().unwrap() {
            Ok(()) => assert_eq!(taken, vec![0, 1]),
            Err(e) => assert_eq!((e, taken), (EndpointError::ShutDown, vec![0])),
        }
    }
}
