//! Busy-polling, for drivers that offer it (`spin` in a net's configuration): poll without
//! sleeping for a while before sleeping, trading a CPU for the wake-up latency of a sleep.
//!
//! A spinning driver learns of a wake without a system call of its own: [`SpinWaker`]
//! raises a flag that the loop reads, and also wakes the driver's own waker (a write to its
//! descriptor, by the waking thread), for when it sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Wake;

/// The longest spin a net may ask for: beyond it a driver would hold a core for nothing
/// a sleep would not do as well.
pub const MAX_SPIN: Duration = Duration::from_secs(10);

/// How long to spin by an environment variable of microseconds (the LNDs' `*_SPIN_US`),
/// at most [`MAX_SPIN`]; `default` where it is unset, or not a number (said in the log).
pub fn from_env(var: &str, default: Duration) -> Duration {
    parse_env(var, std::env::var(var).ok().as_deref(), default)
}

fn parse_env(var: &str, value: Option<&str>, default: Duration) -> Duration {
    let Some(text) = value else {
        return default;
    };
    match text.trim().parse::<u64>() {
        Ok(us) => Duration::from_micros(us).min(MAX_SPIN),
        Err(_) => {
            tracing::warn!("{var}={text:?} is not a number of microseconds: ignored");
            default
        }
    }
}

/// A waker that a busy-polling loop can check cheaply.
pub struct SpinWaker {
    woken: AtomicBool,
    sleeping: Arc<dyn Wake>,
}

impl SpinWaker {
    /// Wraps the driver's waker for its sleeps.
    pub fn new(sleeping: Arc<dyn Wake>) -> Arc<SpinWaker> {
        Arc::new(SpinWaker {
            woken: AtomicBool::new(false),
            sleeping,
        })
    }

    /// Whether a wake came since the last call (and forgets it).
    pub fn take(&self) -> bool {
        // A load first: the common case (no wake) then writes nothing to a line the
        // waking thread also writes.
        self.woken.load(Ordering::Relaxed) && self.woken.swap(false, Ordering::Acquire)
    }
}

impl Wake for SpinWaker {
    fn wake(&self) {
        // Release: what the waker did before (a command queued) is seen by the loop that
        // takes the flag.
        self.woken.store(true, Ordering::Release);
        self.sleeping.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_environment_sets_a_spin_within_bounds() {
        let (var, d) = ("LANET_X_SPIN_US", Duration::from_micros(7));
        assert_eq!(parse_env(var, None, d), d, "unset");
        assert_eq!(parse_env(var, Some("250"), d), Duration::from_micros(250));
        assert_eq!(
            parse_env(var, Some("99999999999"), d),
            MAX_SPIN,
            "at most MAX_SPIN"
        );
        assert_eq!(parse_env(var, Some("fast"), d), d, "not a number");
    }

    #[test]
    fn a_wake_is_seen_once_by_the_spinner_and_reaches_the_sleeper() {
        let sleeper = Arc::new(Counted(AtomicUsize::new(0)));
        let w = SpinWaker::new(sleeper.clone());
        assert!(!w.take());
        w.wake();
        w.wake();
        assert!(w.take(), "seen");
        assert!(!w.take(), "once");
        assert_eq!(
            sleeper.0.load(Ordering::SeqCst),
            2,
            "each wake reaches a sleep"
        );
        // From another thread.
        let w2 = w.clone();
        std::thread::spawn(move || w2.wake()).join().unwrap();
        assert!(w.take());
    }
}
