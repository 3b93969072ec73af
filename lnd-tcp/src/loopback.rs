//! Free loopback ports, for tests, benchmarks and tools that start several nodes on one
//! host.
//!
//! A port is free when it binds, but it is used only later (a router binds once it is up,
//! in another process), so two callers could draw the same one. Within a process the walk
//! of the range never repeats a port within a lap. Between processes, a port drawn is
//! claimed until the process exits, by a lock on that port's byte of a shared file
//! ([`CLAIMS_FILE`]); other processes skip claimed ports. The locks are
//! open-file-description locks on a descriptor the process never closes: the kernel drops
//! them when the process exits, however it exits, so nothing is ever left to clean up.
//! Where the file or the locks are not to be had, ports are drawn unclaimed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use lanet::nid::Nid;

/// The file whose bytes stand for ports (byte `p` for port `p`); it stays empty. A fixed
/// path, not `TMPDIR`'s: processes with different temporary directories share the ports.
const CLAIMS_FILE: &str = "/tmp/lanet-loopback-ports";
/// The lowest port drawn.
const LOW: u64 = 10_000;
/// Ports tried with a bind before giving up on the range (claimed ones are skipped, not
/// counted).
const BIND_TRIES: usize = 32;

/// A loopback NID on a port that was free a moment ago and that no other process drawing
/// ports this way holds (see the module docs); another program may still take it first.
///
/// The port is below the kernel's ephemeral range where it can be: a port the kernel
/// hands out (port 0) may next be taken as the source port of any outgoing connection on
/// the host, between the probe and the caller's bind.
pub fn free_loopback_nid() -> io::Result<Nid> {
    let port = match free_port_below_ephemeral(walk()) {
        Some(port) => port,
        None => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
    };
    Ok(format!("127.0.0.1:{port}@tcp")
        .parse()
        .expect("a loopback NID is valid"))
}

/// A walk of the range: where it starts, and how far it has gone.
struct Walk {
    start: u64,
    steps: AtomicU64,
}

impl Walk {
    /// The port `step` steps into the walk, in a range of `span` ports.
    fn port(&self, step: u64, span: u64) -> Option<u16> {
        u16::try_from(LOW + (self.start % span + step % span) % span).ok()
    }
}

/// This process's walk, from a random start.
fn walk() -> &'static Walk {
    static WALK: OnceLock<Walk> = OnceLock::new();
    WALK.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
        Walk {
            start: lanet::rng::SplitMix64::new(seed).next_u64(),
            steps: AtomicU64::new(0),
        }
    })
}

/// Ports from [`LOW`] up to the ephemeral range, if that holds at least 1,000.
fn span() -> Option<u64> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let first_ephemeral: u64 = range.split_whitespace().next()?.parse().ok()?;
    first_ephemeral.checked_sub(LOW).filter(|s| *s >= 1_000)
}

/// A loopback port from 10,000 up to the ephemeral range that binds now and that no other
/// process claimed; None if the range is small or no port was found.
///
/// A process walks the range from a random start, so within a lap of it it never hands
/// out the same port twice; it claims each port it hands out (module docs). A draw looks
/// at most one lap of the range.
fn free_port_below_ephemeral(walk: &Walk) -> Option<u16> {
    let span = span()?;
    let mut binds = 0;
    for _ in 0..span {
        let step = walk.steps.fetch_add(1, Ordering::Relaxed);
        let port = walk.port(step, span)?;
        let claimed = match claims() {
            Some(file) => match claim(file, port) {
                Ok(true) => true,
                Ok(false) => continue, // another process drew it
                Err(e) => {
                    tracing::debug!("cannot claim port {port}: {e}");
                    false
                }
            },
            None => false,
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Some(port); // if claimed, for as long as this process lives
        }
        if claimed {
            let _ = unclaim(claims()?, port);
        }
        binds += 1;
        if binds == BIND_TRIES {
            break;
        }
    }
    None
}

/// This process's handle on the claims file; None where it cannot be opened for writing
/// or locked (ports are then drawn unclaimed, as before claims existed).
fn claims() -> Option<&'static File> {
    static CLAIMS: OnceLock<Option<File>> = OnceLock::new();
    CLAIMS
        .get_or_init(|| {
            open_claims()
                .and_then(|file| {
                    // Kernels before 3.15 and some file systems have no OFD locks.
                    lock_byte(&file, 0, libc::F_WRLCK as libc::c_short)?;
                    lock_byte(&file, 0, libc::F_UNLCK as libc::c_short)?;
                    Ok(file)
                })
                .map_err(|e| tracing::debug!("loopback ports drawn unclaimed: {CLAIMS_FILE}: {e}"))
                .ok()
        })
        .as_ref()
}

/// Opens the claims file, never through a link, creating it if there is none. Only a file
/// this process created is made writable by all (other users draw ports on this host too):
/// opening one that another user made with `O_CREAT` would fail where the kernel protects
/// files in sticky directories (`fs.protected_regular`).
fn open_claims() -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let open = |create: bool| {
        File::options()
            .read(true)
            .write(true)
            .create_new(create)
            .custom_flags(libc::O_NOFOLLOW)
            .open(CLAIMS_FILE)
    };
    match open(false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => match open(true) {
            Ok(file) => {
                file.set_permissions(std::fs::Permissions::from_mode(0o666))?;
                Ok(file)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false),
            Err(e) => Err(e),
        },
        other => other,
    }
}

/// Claims `port` through `file`'s open file description: false if another description
/// (another process's) holds it.
fn claim(file: &File, port: u16) -> io::Result<bool> {
    match lock_byte(file, port, libc::F_WRLCK as libc::c_short) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

fn unclaim(file: &File, port: u16) -> io::Result<()> {
    lock_byte(file, port, libc::F_UNLCK as libc::c_short)
}

/// Sets (or clears, with `F_UNLCK`) an open-file-description lock on byte `port` of `file`,
/// without waiting.
fn lock_byte(file: &File, port: u16, kind: libc::c_short) -> io::Result<()> {
    // SAFETY: `flock` is plain data; all-zero is a valid value, and OFD locks require
    // `l_pid` to be 0.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = libc::off_t::from(port);
    lock.l_len = 1;
    // SAFETY: the descriptor is open for as long as `file` lives, and `lock` is a valid
    // `flock` that outlives the call, which only reads it.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_loopback_ports_stay_out_of_the_ephemeral_range_and_bind() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let first: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let nid = free_loopback_nid().unwrap();
            let port = nid.socket_addr(0).unwrap().port();
            if first > 11_000 {
                assert!(
                    (10_000..first).contains(&port),
                    "{port} (ephemeral from {first})"
                );
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("free");
            seen.insert(port);
        }
        assert!(seen.len() > 15, "spread, not one port: {seen:?}");
    }

    /// Tests in one binary draw ports at once and bind them later (a router binds when it
    /// is up): a port drawn twice in a process made two of them collide (CI, 2026-12-05).
    #[test]
    fn a_process_never_draws_the_same_port_twice() {
        if free_port_below_ephemeral(walk()).is_none() {
            eprintln!("no usable range below the ephemeral ports here: the kernel picks");
            return;
        }
        let ports: Vec<u16> = (0..500)
            .map(|_| free_loopback_nid().unwrap().socket_addr(0).unwrap().port())
            .collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port came back twice");
    }

    /// Two test processes whose walks met drew the same port, and a router could not
    /// listen (CI, 2026-12-05). Another open file description stands for the other
    /// process here: the lock does not tell them apart. The test walks on its own, so the
    /// other tests of this binary, drawing at the same time, do not move it.
    #[test]
    fn ports_another_process_drew_are_skipped() {
        let (Some(span), Some(ours)) = (span(), claims()) else {
            eprintln!("no usable range below the ephemeral ports, or no claims, here");
            return;
        };
        let other = open_claims().unwrap();
        let walk = Walk {
            start: 7_919,
            steps: AtomicU64::new(0),
        };
        // The next ports of the walk, as far as the other tests have not claimed them.
        let n = (span / 2).min(2_000);
        let block: std::collections::HashSet<u16> = (0..n)
            .map(|step| walk.port(step, span).unwrap())
            .filter(|&port| claim(&other, port).unwrap())
            .collect();
        assert!(
            block.len() as u64 > n / 2,
            "only {} of {n} claimed",
            block.len()
        );
        for _ in 0..10 {
            let port = free_port_below_ephemeral(&walk).expect("a port past the block");
            assert!(!block.contains(&port), "drew {port}, claimed by another");
        }
        // A claim holds against this process's own description too.
        let port = *block.iter().next().unwrap();
        assert!(!claim(ours, port).unwrap());
    }
}
