//! `--pin`: each side of a ping-pong on a CPU of its own. This process, the client, stays
//! on one CPU; every server it starts (lanet's, and the baselines' servers) on another. So
//! lanet and each baseline run placed alike, and no run's threads move between CPUs or meet
//! the other side's threads on theirs.
//!
//! Why: on a 2-vCPU VM, unpinned blocking round trips come out bimodal, the p50 of one run
//! 26 us and of the next 32 us, as the scheduler happens to place the two sides; pinned,
//! the same runs agree within a few percent (bench/RESULTS.md, 2026-12-06).

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

/// The server side's CPU, once `--pin` chose it.
static SERVER_CPU: OnceLock<usize> = OnceLock::new();

/// The CPUs this thread may run on.
fn allowed() -> Result<Vec<usize>, String> {
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
    // SAFETY: `set` is initialised; `CPU_ISSET` reads a bit of it.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to `cpu`; threads it starts later, and processes it spawns,
/// inherit that. Async-signal-safe (a system call on a stack value), so a child may call
/// it between fork and exec.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set; `CPU_SET` sets a bit below
    // `CPU_SETSIZE` (callers pass CPUs `allowed` listed).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed, which the kernel only reads.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `--pin`: this process (so far one thread: call it before any other starts) on the
/// second CPU it may use, and the servers it starts on the first. `serving`: this is a
/// server process (`--serve`), which takes the first itself. Returns what was chosen, to
/// note in the report.
pub(crate) fn pin(serving: bool) -> Result<String, String> {
    let cpus = allowed()?;
    let [server, client, ..] = cpus[..] else {
        return Err(format!(
            "--pin needs two CPUs to put the two sides on; this process may use {cpus:?}"
        ));
    };
    let own = if serving { server } else { client };
    pin_to(own).map_err(|e| format!("cannot pin to CPU {own}: {e}"))?;
    let _ = SERVER_CPU.set(server);
    Ok(format!(
        "pinned: the client side on CPU {client}, the server side on CPU {server} \
         (lanet's and every baseline's)"
    ))
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
            let out = on_cpu(&mut Command::new("sh"), cpus[0])
                .args(["-c", "grep Cpus_allowed_list /proc/self/status"])
                .output()
                .expect("sh runs");
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text.split_whitespace().last(),
                Some(cpus[0].to_string().as_str()),
                "the server side: {text}"
            );
        })
        .join()
        .unwrap();
    }
}
