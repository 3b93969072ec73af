//! The CPU time a process has spent, user and system, from `/proc/PID/stat`: what each side
//! of a ping-pong costs per round trip, beside how long the round trip takes. Counted in
//! clock ticks (10 ms here), so a run of a few seconds reads it to within a percent or so.

use std::ops::Sub;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct CpuTime {
    /// Seconds in user space and in the kernel.
    pub(crate) user: f64,
    pub(crate) sys: f64,
}

impl Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, rhs: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - rhs.user,
            sys: self.sys - rhs.sys,
        }
    }
}

/// Process `pid`'s CPU time so far, its threads that ended included.
pub(crate) fn of(pid: u32) -> Result<CpuTime, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    parse(&text, ticks_per_second()).ok_or_else(|| format!("{path}: unexpected contents"))
}

/// Seconds this virtual machine's CPUs, together, were ready to run but the hypervisor ran
/// something else ("steal", the eighth figure of `/proc/stat`'s `cpu` line); 0 on bare
/// metal. What no thread inside can schedule around: it stalls every process at once.
pub(crate) fn host_steal() -> Result<f64, String> {
    let path = "/proc/stat";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    parse_steal(&text, ticks_per_second()).ok_or_else(|| format!("{path}: unexpected contents"))
}

fn parse_steal(stat: &str, ticks: f64) -> Option<f64> {
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let steal: u64 = cpu.split_whitespace().nth(7)?.parse().ok()?;
    Some(steal as f64 / ticks)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0 // USER_HZ on every Linux
    }
}

/// utime and stime, fields 14 and 15 of `stat`; counted after the command name, which is
/// in parentheses and may hold spaces and parentheses of its own.
fn parse(stat: &str, ticks: f64) -> Option<CpuTime> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let sys: u64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user: user as f64 / ticks,
        sys: sys as f64 / ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_times_are_read_past_a_name_with_spaces_and_parentheses() {
        let line = "4242 (lanet (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 3";
        let t = parse(line, 100.0).expect("parsed");
        assert_eq!(
            t,
            CpuTime {
                user: 2.5,
                sys: 0.75
            }
        );
        assert_eq!(parse("4242 (truncated) S 1 2", 100.0), None);
    }

    #[test]
    fn steal_is_the_eighth_figure_of_the_cpu_line() {
        let stat =
            "cpu  1646423 0 1054501 2775587 549705 0 297024 2360 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_steal(stat, 100.0), Some(23.6));
        assert_eq!(parse_steal("cpu0 1 2 3\n", 100.0), None);
        assert_eq!(parse_steal("cpu  1 2 3 4 5 6 7\n", 100.0), None);
        assert!(
            host_steal().is_ok(),
            "this machine's /proc/stat is readable"
        );
    }

    #[test]
    fn this_process_counts_the_work_it_does() {
        let pid = std::process::id();
        let before = of(pid).expect("readable");
        let spent = || {
            let t = of(pid).unwrap() - before;
            t.user + t.sys
        };
        // Spin until 50 ms of CPU time are counted (five 10 ms ticks): a reader that counted
        // nothing, or the wrong fields, never gets there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        while spent() < 0.05 {
            assert!(std::time::Instant::now() < deadline, "no CPU time counted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }
}
