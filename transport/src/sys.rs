//! The few system calls the core's own loop makes (the driver thread's wait on several
//! LNDs at once). Kept here, small, each with its safety argument.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// The descriptors a thread sleeps on until one is readable. Kept from one sleep to the
/// next, so that sleeping allocates nothing.
#[derive(Default)]
pub(crate) struct WaitSet(Vec<libc::pollfd>);

impl WaitSet {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn add(&mut self, fd: RawFd) {
        self.0.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// Sleeps until one of the descriptors is readable, or `timeout` passes (`None`: no
    /// limit). A signal cutting the wait short is not an error: the caller looks and
    /// waits again.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let ms = timeout.map_or(-1, |t| {
            // Round up: a 100 us deadline must not become a busy loop of zero waits.
            let ms = t.as_micros().div_ceil(1000);
            i32::try_from(ms).unwrap_or(i32::MAX)
        });
        // SAFETY: `self.0` is a live, writable array of `self.0.len()` pollfd structures
        // for the duration of the call; the kernel writes only their `revents` fields.
        let rc = unsafe { libc::poll(self.0.as_mut_ptr(), self.0.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// An eventfd: a counter that is readable while non-zero. Signalled from any thread;
/// drained by its owner before it sleeps on it.
#[derive(Debug)]
pub(crate) struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(EventFd(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    pub(crate) fn fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// Makes it readable.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to a descriptor we own. A full counter
        // (EAGAIN) is still readable, which is all a signal needs.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes it unreadable until the next signal.
    pub(crate) fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; non-blocking, so an empty
        // counter just fails with EAGAIN.
        unsafe { libc::read(self.fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl crate::lnd::Wake for EventFd {
    fn wake(&self) {
        self.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_wakes_a_wait_until_drained() {
        let e = EventFd::new().unwrap();
        let mut set = WaitSet::default();
        set.add(e.fd());
        let start = std::time::Instant::now();
        set.wait(Some(Duration::from_millis(20))).unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "nothing to wake it"
        );
        e.signal();
        let start = std::time::Instant::now();
        set.wait(Some(Duration::from_secs(10))).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "signalled: no wait"
        );
        e.drain();
        let start = std::time::Instant::now();
        set.wait(Some(Duration::from_millis(20))).unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "drained: waits again"
        );
    }
}
