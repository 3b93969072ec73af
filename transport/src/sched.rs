//! Scheduling of the driver thread: the one place in the core's crate that calls the OS.

use std::io;

/// Makes the calling thread real-time (`SCHED_RR` at `priority`, 1..=99), with
/// `SCHED_RESET_ON_FORK`, so threads it starts (an LND's bulk mover, io_uring workers) come
/// up at normal priority instead of inheriting it. Needs `CAP_SYS_NICE` or an
/// `RLIMIT_RTPRIO` of at least `priority`.
pub(crate) fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    let policy = libc::SCHED_RR | libc::SCHED_RESET_ON_FORK;
    // SAFETY: `param` is a live sched_param for the duration of the call; pid 0 names the
    // calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
