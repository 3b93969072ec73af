//! The few system calls the io_uring backend makes outside the ring.

use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `IORING_ENTER_GETEVENTS` (linux/io_uring.h; part of the kernel's ABI).
const IORING_ENTER_GETEVENTS: u32 = 1;

/// Submits what `ring` has queued and asks for events without waiting for any: the kernel
/// runs the task work it holds for us (deferred or not) and posts its completions, and
/// returns at once. Cheaper than a wait with a zero timeout, which arms a timer.
pub(crate) fn enter_for_events(ring: &mut io_uring::IoUring) -> io::Result<usize> {
    let queued = ring.submission().len() as u32;
    // SAFETY: io_uring_enter with integer arguments only (no signal mask or extended
    // argument: the pointer is null, the size that of the unused type). The `queued`
    // entries were pushed through the ring's own queue, whose `push` contract vouches for
    // the memory they point at, and whose tail was stored (Release) when `submission()`
    // was dropped above. The ring has no SQPOLL thread (no `SQ_WAKEUP` to handle): the
    // kernel reads the tail only inside this call.
    unsafe {
        ring.submitter()
            .enter::<libc::sigset_t>(queued, 0, IORING_ENTER_GETEVENTS, None)
    }
}

/// A non-blocking, close-on-exec eventfd: the backend's wake-up channel.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A read of an eventfd's counter into `buf`: a ring's wake-up. The caller keeps `buf`
/// (boxed, so it does not move) alive until the read completes.
pub(crate) fn wake_read(fd: BorrowedFd<'_>, buf: &mut u64) -> io_uring::squeue::Entry {
    let buf: *mut u64 = buf;
    io_uring::opcode::Read::new(io_uring::types::Fd(fd.as_raw_fd()), buf.cast(), 8).build()
}

/// Adds one to an eventfd (wakes a ring waiting on a read of it).
pub(crate) fn signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor borrowed for the call.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    match n {
        8 => Ok(()),
        // EAGAIN: the counter is already huge, so a wake-up is pending anyway.
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Has TCP give up bytes its peer has not acknowledged for `after` (`TCP_USER_TIMEOUT`),
/// aborting the connection.
pub(crate) fn give_up_unacked_after(fd: BorrowedFd<'_>, after: std::time::Duration) {
    // A failure leaves TCP's own retries, as before: nothing to undo.
    if let Err(e) = socket2::SockRef::from(&fd).set_tcp_user_timeout(Some(after)) {
        tracing::debug!("TCP_USER_TIMEOUT: {e}");
    }
}

/// Shuts a socket down both ways, so that operations pending on it complete.
pub(crate) fn shutdown(fd: BorrowedFd<'_>) {
    // SAFETY: no pointers; the descriptor is borrowed for the call. Errors (e.g. ENOTCONN on
    // a socket that never connected) leave nothing to undo.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Takes ownership of a descriptor the kernel returned (e.g. from a multishot accept).
pub(crate) fn own(fd: i32) -> OwnedFd {
    assert!(fd >= 0, "not a descriptor: {fd}");
    // SAFETY: the kernel created `fd` for us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A socket address in the kernel's layout, boxed so its address stays put while a
/// connect operation reads it.
pub(crate) fn sockaddr(addr: SocketAddrV4) -> Box<libc::sockaddr_in> {
    Box::new(libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    })
}

/// Marks the calling thread as a batch thread (`SCHED_BATCH`): same CPU share as any
/// other, but its wake-ups never preempt a running thread. Needs no privileges.
pub(crate) fn set_thread_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live struct for the call; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        tracing::warn!(
            "cannot make this thread SCHED_BATCH: {}",
            io::Error::last_os_error()
        );
    }
}

/// Submits what is queued and waits up to 50 ms for a completion: the drain loop at close,
/// which must not block forever on a peer that never answers.
pub(crate) fn wait_briefly(ring: &io_uring::IoUring) -> io::Result<usize> {
    let ts = io_uring::types::Timespec::new().nsec(50_000_000);
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    ring.submitter().submit_with_args(1, &args)
}

/// Whether `io_uring_enter` failed because another thread than the ring's only submitter
/// called it (a ring set up with `SINGLE_ISSUER` belongs to the thread that enabled it).
pub(crate) fn wrong_thread(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EEXIST)
}
