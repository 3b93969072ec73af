//! How long the machine itself stops running a thread that wants to run: one watcher per CPU,
//! pinned to it at real-time priority, sleeping a millisecond at a time and timing how late
//! it wakes. Nothing of normal priority delays it; what does is the kernel's own
//! non-preemptible work and, in a virtual machine, the hypervisor running something else
//! instead of that virtual CPU ("steal"). A failure detector whose detection time is shorter
//! than such a stall on the watched peer's CPU declares it Down: `detect` prints the
//! longest one beside its verdicts. The watchers cost what they measure a little: each
//! wake (a few microseconds, a thousand a second per CPU) pre-empts whatever runs there,
//! the `--rt-driver` threads included.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pin;

/// The watchers' sleep.
const TICK: Duration = Duration::from_millis(1);

/// Above the benchmarks' `--rt-driver` threads (10), so those delay it no more than others.
const WATCHER_PRIORITY: i32 = 50;

/// One CPU's watcher, while it runs.
struct Watcher {
    cpu: usize,
    thread: JoinHandle<CpuStalls>,
}

/// What one watcher saw.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CpuStalls {
    pub(crate) cpu: usize,
    /// How many times it woke.
    pub(crate) wakes: u64,
    /// The latest it woke after its sleep was over.
    pub(crate) longest: Duration,
    /// Wakes at least `threshold` late.
    pub(crate) over_threshold: u64,
    /// Whether it ran at real-time priority (else normal threads may have delayed it too).
    pub(crate) realtime: bool,
}

pub(crate) struct StallWatch {
    stop: Arc<AtomicBool>,
    watchers: Vec<Watcher>,
}

impl StallWatch {
    /// A watcher on each CPU this process may use, counting wakes at least `threshold` late.
    pub(crate) fn start(threshold: Duration) -> Result<StallWatch, String> {
        // Built first, so that a failure part-way stops the watchers already started.
        let mut watch = StallWatch {
            stop: Arc::new(AtomicBool::new(false)),
            watchers: Vec::new(),
        };
        for cpu in pin::allowed()? {
            let stop = watch.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("stall-watch-{cpu}"))
                .spawn(move || watch_cpu(cpu, threshold, &stop))
                .map_err(|e| format!("no stall watcher thread: {e}"))?;
            watch.watchers.push(Watcher { cpu, thread });
        }
        Ok(watch)
    }

    /// Stops the watchers; what each saw, by CPU.
    pub(crate) fn stop(mut self) -> Result<Vec<CpuStalls>, String> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.watchers)
            .into_iter()
            .map(|w| {
                w.thread
                    .join()
                    .map_err(|_| format!("the stall watcher of CPU {} panicked", w.cpu))
            })
            .collect()
    }
}

impl Drop for StallWatch {
    /// Left running (a benchmark that gave up early), the watchers would go on taking
    /// every CPU a thousand times a second.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn watch_cpu(cpu: usize, threshold: Duration, stop: &AtomicBool) -> CpuStalls {
    let mut seen = CpuStalls {
        cpu,
        // Unpinned or at normal priority it still measures, if less purely: said in `realtime`.
        realtime: pin::pin_to(cpu).is_ok() && set_fifo(WATCHER_PRIORITY).is_ok(),
        ..CpuStalls::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let asleep = Instant::now();
        std::thread::sleep(TICK);
        let late = asleep.elapsed().saturating_sub(TICK);
        seen.wakes += 1;
        seen.longest = seen.longest.max(late);
        if late >= threshold {
            seen.over_threshold += 1;
        }
    }
    seen
}

/// Makes the calling thread `SCHED_FIFO` at `priority`.
fn set_fifo(priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a live sched_param for the duration of the call; pid 0 names the
    // calling thread.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cpu_is_watched_and_its_wakes_are_counted() {
        let watch = StallWatch::start(Duration::from_secs(3600)).expect("started");
        std::thread::sleep(Duration::from_millis(200));
        let seen = watch.stop().expect("stopped");
        let cpus = pin::allowed().expect("affinity");
        assert_eq!(seen.iter().map(|s| s.cpu).collect::<Vec<_>>(), cpus);
        for s in &seen {
            // 200 ms of 1 ms sleeps: far more than 10 wakes, however loaded the machine.
            assert!(s.wakes >= 10, "{s:?}");
            assert!(s.longest < Duration::from_secs(10), "{s:?}");
            assert_eq!(s.over_threshold, 0, "{s:?}");
        }
    }
}
