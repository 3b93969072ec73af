//! `--pin`: each side of a ping-pong on a CPU of its own, as perftest and OSU runs are
//! placed. This process, the client, stays on one CPU; every server it starts (lanet's,
//! whose process also hosts the raw TCP echo, and the baselines' servers) on another. So
//! lanet and each baseline run placed alike, and no run's threads move between CPUs or
//! meet the other side's threads on theirs. The servers take the first CPU this process
//! may use and the client the second: on a large host, choose them with `taskset` around
//! the benchmark (the first is often the one interrupts go to).
//!
//! Measured on this 2-vCPU VM (bench/RESULTS.md, "2026-12-06 (morning)"): pinned, sleeping
//! round trips repeat more closely than unpinned, but the machine's slow phases (seconds
//! long, every process slower) hit pinned runs too.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// The server side's CPU, once `--pin` chose it.
static SERVER_CPU: OnceLock<usize> = OnceLock::new();

/// The CPUs this thread may run on.
pub(crate) fn allowed() -> Result<Vec<usize>, String> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed, written by the kernel.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(format!(
            "sched_getaffinity: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `set` is initialised and `cpu` below `CPU_SETSIZE`; `CPU_ISSET` reads a
        // bit of it.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`; threads it starts later, and processes it spawns,
/// inherit that. Async-signal-safe (a system call on a stack value), so a child may call
/// it between fork and exec.
pub(crate) fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid `cpu_set_t`; `CPU_SET` checks `cpu` against its size (callers
    // pass CPUs `allowed` listed, all below `CPU_SETSIZE`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed, which the kernel only reads.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Which side of a ping-pong this process is, for [`pin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Starts the servers itself (the default).
    Both,
    /// `--connect`: only the client; the servers are someone else's.
    Client,
    /// `--serve`: only the server.
    Server,
}

/// `--pin`: this process (so far one thread: call it before any other starts) on the
/// second CPU it may use, and the servers it starts on the first; a `--serve` process takes
/// the first itself. Returns what was chosen, to note in the report.
pub(crate) fn pin(side: Side) -> Result<String, String> {
    debug_assert!(
        std::fs::read_dir("/proc/self/task").map_or(true, |d| d.count() == 1),
        "pinned after a thread started: it keeps its CPUs"
    );
    let cpus = allowed()?;
    let [server, client, ..] = cpus[..] else {
        return Err(format!(
            "--pin needs two CPUs to put the two sides on; this process may use {cpus:?}"
        ));
    };
    let own = if side == Side::Server { server } else { client };
    pin_to(own).map_err(|e| format!("cannot pin to CPU {own}: {e}"))?;
    Ok(match side {
        Side::Both => {
            let _ = SERVER_CPU.set(server);
            format!(
                "pinned: the client side on CPU {client}, the server side on CPU {server} \
                 (lanet's, whose process hosts the raw TCP echo, and every baseline's)"
            )
        }
        Side::Client => format!("pinned: this process (the client side) on CPU {client}"),
        Side::Server => format!("pinned: this process (the server side) on CPU {server}"),
    })
}

/// The CPUs process `pid` may run on, as the kernel lists them (`Cpus_allowed_list`, e.g.
/// "0" or "0-1"): what a report says placement was, read back rather than assumed.
pub(crate) fn cpus_of(pid: u32) -> Result<String, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| format!("{path}: no Cpus_allowed_list"))
}

/// A server `cmd` to start: on the server side's CPU, if `--pin` chose one.
pub(crate) fn server_side(cmd: &mut Command) -> &mut Command {
    match SERVER_CPU.get() {
        Some(&cpu) => on_cpu(cmd, cpu),
        None => cmd,
    }
}

/// `cmd`, to run on `cpu`.
fn on_cpu(cmd: &mut Command, cpu: usize) -> &mut Command {
    // SAFETY: the hook runs in the child between fork and exec, and only makes a system
    // call on values on its own stack (async-signal-safe), allocating nothing.
    unsafe { cmd.pre_exec(move || pin_to(cpu)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread pinned stays on its CPU, and a process it starts for the other CPU runs
    /// there: read back from the kernel, not from what was asked. (Not through `pin`, whose
    /// choice is for the whole process: other tests here start servers.)
    #[test]
    fn each_side_lands_on_its_cpu() {
        let cpus = allowed().expect("affinity");
        if cpus.len() < 2 {
            return; // nothing to place apart (`pin` refuses, saying so)
        }
        // On a thread of its own, so the test runner's other threads are not pinned.
        std::thread::spawn(move || {
            pin_to(cpus[1]).expect("pinned");
            assert_eq!(allowed().unwrap(), vec![cpus[1]], "this side");
            let mut child = on_cpu(&mut Command::new("sleep"), cpus[0])
                .arg("5")
                .spawn()
                .expect("sleep runs");
            let placed = cpus_of(child.id());
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(placed, Ok(cpus[0].to_string()), "the server side");
        })
        .join()
        .unwrap();
    }
}
