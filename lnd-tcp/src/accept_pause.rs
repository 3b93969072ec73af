//! Accepting paused while the process is out of descriptors (or memory). An accept that
//! failed for want of a descriptor fails again at once, before it even looks for a
//! connection: retried at once, it turns the driver into a busy loop that logs a line
//! per turn. So accepting pauses for a while, the connections waiting in the listen
//! backlog meanwhile, and is retried: each backend asks [`AcceptPause::take_due`] at
//! every full poll (busy-polling's looks at its hot connection skip it, but a full poll
//! comes every few), and the engine wakes its wait at [`AcceptPause::until`]. (epoll also
//! tries, paused or not, whenever a new connection makes its listener readable: bounded
//! by how fast connections come, each failure pushing the pause back.)

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
    /// When the failures began, and the last of them: each streak is logged once. A
    /// streak ends when an accept succeeds, or when none has failed for two pauses (a
    /// retry that found the backlog empty tells nobody).
    streak: Option<(Instant, Instant)>,
    /// One-connection failures retried at once since the last success or pause (but
    /// aborted connections and interrupted calls): past [`AT_ONCE`] the failure is taken
    /// for the listener's (a seccomp rule answering EPERM to every accept), which would
    /// otherwise spin the driver thread for good.
    at_once: u32,
}

/// One-connection failures in a row retried at once before accepting pauses anyway.
const AT_ONCE: u32 = 64;

impl AcceptPause {
    /// An accept failed with `e` (not `WouldBlock`) at `now`.
    pub(crate) fn failed(&mut self, e: &io::Error, now: Instant) -> AcceptRetry {
        // A connection reset before it was taken, or a signal, is that connection's or
        // that call's for sure (a scan's bursts of them must not pause accepting).
        let surely_its_own = matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR));
        if surely_its_own || (one_connection_only(e) && self.at_once < AT_ONCE) {
            self.at_once += u32::from(!surely_its_own);
            tracing::debug!("accept failed: {e}");
            return AcceptRetry::Now;
        }
        self.at_once = 0;
        let since = match self.streak {
            Some((since, last)) if now.saturating_duration_since(last) <= 2 * ACCEPT_PAUSE => since,
            _ => {
                tracing::warn!(
                    "accept failed: {e}; new connections wait in the listen backlog, tried \
                     again every {ACCEPT_PAUSE:?}"
                );
                now
            }
        };
        self.streak = Some((since, now));
        self.until = Some(now + ACCEPT_PAUSE);
        AcceptRetry::Paused
    }

    /// An accept succeeded at `now`.
    pub(crate) fn succeeded(&mut self, now: Instant) {
        self.at_once = 0;
        if let Some((since, last)) = self.streak.take() {
            if now.saturating_duration_since(last) <= 2 * ACCEPT_PAUSE {
                let failing = now.saturating_duration_since(since);
                tracing::info!("accepting connections again, after {failing:?} of failures");
            }
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
/// its network errors, which accept(2) passes on, a firewall's refusal), or of the call
/// (interrupted): the next accept may well succeed.
fn one_connection_only(e: &io::Error) -> bool {
    const ITS_OWN: [i32; 11] = [
        libc::ECONNABORTED,
        libc::EINTR,
        libc::EPROTO,
        libc::EPERM,
        libc::ENETDOWN,
        libc::ENOPROTOOPT,
        libc::EHOSTDOWN,
        libc::ENONET,
        libc::EHOSTUNREACH,
        libc::EOPNOTSUPP,
        libc::ENETUNREACH,
    ];
    e.raw_os_error()
        .is_some_and(|errno| ITS_OWN.contains(&errno))
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
        assert_eq!(
            pause.streak,
            Some((t1, t1)),
            "a new streak: t0's ended unseen"
        );
        let t2 = t1 + ACCEPT_PAUSE;
        assert_eq!(pause.failed(&os(libc::EMFILE), t2), AcceptRetry::Paused);
        assert_eq!(pause.streak, Some((t1, t2)), "the same streak goes on");
        pause.succeeded(t2);
        assert!(pause.streak.is_none());
    }

    #[test]
    fn one_connections_failure_is_retried_at_once() {
        let mut pause = AcceptPause::default();
        for errno in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EINTR,
            libc::ENETUNREACH,
            libc::EPERM,
        ] {
            assert_eq!(pause.failed(&os(errno), Instant::now()), AcceptRetry::Now);
        }
        assert_eq!(pause.until(), None);
        // The same failure over and over is the listener's, not each connection's (a
        // seccomp rule answering EPERM to every accept): it pauses, not spins.
        let t0 = Instant::now();
        let retried = std::iter::repeat_with(|| pause.failed(&os(libc::EPERM), t0))
            .take_while(|r| *r == AcceptRetry::Now)
            .take(1_000)
            .count();
        assert!(retried < 100, "{retried} retried at once");
        assert_eq!(pause.until(), Some(t0 + ACCEPT_PAUSE));
        assert_eq!(pause.failed(&os(libc::EPERM), t0), AcceptRetry::Now, "anew");
        // A scan's burst of connections reset before they were taken never pauses.
        for _ in 0..1_000 {
            assert_eq!(pause.failed(&os(libc::ECONNABORTED), t0), AcceptRetry::Now);
        }
        // Anything else, known or not, pauses: at worst a retry comes a pause late.
        for errno in [libc::ENOBUFS, libc::ENOMEM, libc::EINVAL] {
            assert_eq!(
                pause.failed(&os(errno), Instant::now()),
                AcceptRetry::Paused
            );
        }
    }
}
