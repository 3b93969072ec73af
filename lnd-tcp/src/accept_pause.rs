//! Accepting paused while the process is out of descriptors (or memory). An accept that
//! failed for want of a descriptor fails again at once, before it even looks for a
//! connection: retried at once, it turns the driver into a busy loop that logs a line
//! per turn. So accepting pauses for a while, the connections waiting in the listen
//! backlog meanwhile, and is retried: each backend asks [`AcceptPause::take_due`] every
//! turn, and the engine wakes its wait at [`AcceptPause::until`].

use std::io;
use std::time::{Duration, Instant};

/// How long accepting pauses after it failed for want of descriptors or memory: short
/// beside a dialler's connect timeout (5 s), long beside a turn.
pub(crate) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What a backend does after an accept failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptRetry {
    /// The failure was the one connection's: accept the next at once.
    Now,
    /// Accepting is paused until [`AcceptPause::take_due`] says otherwise.
    Paused,
}

#[derive(Debug, Default)]
pub(crate) struct AcceptPause {
    /// When accepting is retried, while it is paused.
    until: Option<Instant>,
    /// When the failures began, until an accept succeeds: each streak is logged once.
    failing_since: Option<Instant>,
}

impl AcceptPause {
    /// An accept failed with `e` (not `WouldBlock`) at `now`.
    pub(crate) fn failed(&mut self, e: &io::Error, now: Instant) -> AcceptRetry {
        if one_connection_only(e) {
            tracing::debug!("accept failed: {e}");
            return AcceptRetry::Now;
        }
        if self.failing_since.is_none() {
            self.failing_since = Some(now);
            tracing::warn!(
                "accept failed: {e}; new connections wait in the listen backlog, tried \
                 again every {ACCEPT_PAUSE:?}"
            );
        }
        self.until = Some(now + ACCEPT_PAUSE);
        AcceptRetry::Paused
    }

    /// An accept succeeded at `now`.
    pub(crate) fn succeeded(&mut self, now: Instant) {
        if let Some(since) = self.failing_since.take() {
            let failing = now.saturating_duration_since(since);
            tracing::info!("accepting connections again, after {failing:?} of failures");
        }
    }

    /// When accepting is retried, if it is paused.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether a pause is over, so that accepting is to be tried again now; the clock
    /// (`now`) is read only while paused.
    pub(crate) fn take_due(&mut self, now: impl FnOnce() -> Instant) -> bool {
        match self.until {
            Some(until) if now() >= until => {
                self.until = None;
                true
            }
            _ => false,
        }
    }
}

/// Failures of the one connection being accepted (reset or broken before it was taken,
/// or the call interrupted): the next accept may well succeed.
fn one_connection_only(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn out_of_descriptors_pauses_until_the_pause_is_over() {
        let t0 = Instant::now();
        let mut pause = AcceptPause::default();
        assert!(!pause.take_due(|| panic!("not paused: no clock read")));
        assert_eq!(pause.failed(&os(libc::EMFILE), t0), AcceptRetry::Paused);
        assert_eq!(pause.until(), Some(t0 + ACCEPT_PAUSE));
        assert!(!pause.take_due(|| t0 + ACCEPT_PAUSE / 2), "too early");
        assert!(pause.take_due(|| t0 + ACCEPT_PAUSE), "due");
        assert_eq!(pause.until(), None, "taken once");
        assert!(!pause.take_due(|| t0 + ACCEPT_PAUSE * 2));
        // Failing again pauses again, from then.
        let t1 = t0 + ACCEPT_PAUSE * 3;
        assert_eq!(pause.failed(&os(libc::ENFILE), t1), AcceptRetry::Paused);
        assert_eq!(pause.until(), Some(t1 + ACCEPT_PAUSE));
        pause.succeeded(t1);
        assert!(pause.failing_since.is_none());
    }

    #[test]
    fn one_connections_failure_is_retried_at_once() {
        let mut pause = AcceptPause::default();
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EINTR] {
            assert_eq!(pause.failed(&os(errno), Instant::now()), AcceptRetry::Now);
        }
        assert_eq!(pause.until(), None);
        // Anything else, known or not, pauses: at worst a retry comes a pause late.
        for errno in [libc::ENOBUFS, libc::ENOMEM, libc::EINVAL] {
            assert_eq!(
                pause.failed(&os(errno), Instant::now()),
                AcceptRetry::Paused
            );
        }
    }
}
