//! The few system calls the core makes itself (the driver thread's wait on several LNDs at
//! once, the monotonic clock, an interface's address for the configuration file). Kept
//! here, small, each with its safety argument.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
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
        // ppoll, not poll: its timeout is in nanoseconds, so a deadline 50 us away is not
        // rounded up to a millisecond.
        let limit = timeout.map(|t| libc::timespec {
            tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
        });
        let limit_ptr = limit
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `self.0` is a live, writable array of `self.0.len()` pollfd structures
        // for the duration of the call (the kernel writes only their `revents` fields);
        // `limit_ptr` is null or points at `limit`, alive until the call returns; a null
        // signal mask leaves the thread's mask as it is.
        let rc = unsafe {
            libc::ppoll(
                self.0.as_mut_ptr(),
                self.0.len() as libc::nfds_t,
                limit_ptr,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `std::time::Instant` reads, without the
/// checked `Timespec` arithmetic `Instant::elapsed` does on top: the driver thread reads
/// it several times per message.
pub(crate) fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec at `&mut ts`, which lives for the call;
    // CLOCK_MONOTONIC exists on every Linux, so the call cannot fail (checked anyway).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    // Never negative for CLOCK_MONOTONIC; u64 nanoseconds last 584 years of uptime.
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
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

/// The IPv4 address of network interface `name` (the first, if it has several); `None` if
/// it has none or does not exist.
pub fn interface_ipv4(name: &str) -> io::Result<Option<Ipv4Addr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() && found.is_none() {
        // SAFETY: `cur` is an entry of the live list.
        let entry = unsafe { &*cur };
        // SAFETY: every entry has a NUL-terminated interface name.
        let entry_name = unsafe { CStr::from_ptr(entry.ifa_name) };
        let addr = entry.ifa_addr;
        // SAFETY: a non-null address is at least a sockaddr.
        let is_ipv4 = !addr.is_null() && i32::from(unsafe { (*addr).sa_family }) == libc::AF_INET;
        if is_ipv4 && entry_name.to_bytes() == name.as_bytes() {
            // SAFETY: an AF_INET address is a sockaddr_in.
            let sin = unsafe { &*(addr as *const libc::sockaddr_in) };
            found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        }
        cur = entry.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
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
