//! Counts the stop signals (SIGTERM, SIGINT) delivered. signal-hook's iterator reports
//! each pending signal once however many times it came, so two SIGTERMs sent before the
//! daemon looks (`kill -TERM $p; kill -TERM $p` on a loaded host) read as one; an
//! impatient operator's second one is to stop the router at once, not drain it.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

pub(crate) struct StopCount {
    count: Arc<AtomicUsize>,
    ids: Vec<SigId>,
}

impl StopCount {
    /// Counts from now on, until dropped. Registered before the daemon's `Signals`, so
    /// that a signal is counted before it wakes the daemon (actions run in the order
    /// they were registered).
    pub(crate) fn register() -> io::Result<StopCount> {
        let count = Arc::new(AtomicUsize::new(0));
        let mut ids = Vec::new();
        for signal in [SIGTERM, SIGINT] {
            let counted = count.clone();
            // SAFETY: the action only adds to an atomic integer, which is
            // async-signal-safe (no lock, no allocation, no panic).
            let id = unsafe {
                signal_hook::low_level::register(signal, move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                })
            }?;
            ids.push(id);
        }
        Ok(StopCount { count, ids })
    }

    /// Stop signals delivered so far.
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for StopCount {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
