//! The control socket: a Unix stream socket where a node (`lanet-router`, or any program
//! that serves one for its endpoint) answers one command per connection with one line of
//! JSON. A command is one line, its newline included at most 256 bytes, sent within 2 s;
//! anything else is answered with an error, never run in part. `lanetctl` (and the tests)
//! are its clients; the commands are in [`crate::command`].

use std::io;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::within::LineError;
use std::time::Duration;

use lanet::config::ConfigFile;
use lanet::op::PingRequest;
use lanet::wire::{AbsentReason, RouterState};
use lanet::{Endpoint, Lane, OpOutcome};
use serde_json::{json, Value};

use crate::acceptor::Acceptor;
use crate::command::Command;

/// Longest command line taken; a client sending more is answered with an error.
const MAX_COMMAND: u64 = 256;
/// A client has this long to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket, served by a thread of its own until dropped.
pub struct ControlSocket {
    path: PathBuf,
    acceptor: Option<Acceptor>,
    /// What `export` prints (with the routes of the moment): the running configuration,
    /// which its daemon may change (a reload).
    config: Arc<Mutex<Option<Arc<ConfigFile>>>>,
    /// The socket file we linked (device, inode): removed at the end only if still ours.
    linked: (u64, u64),
    /// Held locked while we serve: only one daemon at a time looks at, removes or binds
    /// `path` (see [`lock_beside`]).
    _lock: std::fs::File,
}

impl ControlSocket {
    /// Listens at `path` (its directory made if missing; a stale socket left by a dead
    /// daemon replaced; a live one is an error) and answers for `endpoint`. `config`, the
    /// file it was started from, is what `export` prints (with the routes of the moment),
    /// until [`ControlSocket::set_config`].
    pub fn serve(
        path: &Path,
        endpoint: Endpoint,
        config: Option<ConfigFile>,
    ) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let lock = lock_beside(path)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            match UnixStream::connect(path) {
                // Nobody listens: a dead daemon's (and, under the lock, no live one's).
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?
                }
                // Gone since we looked (under the lock, only a hand could remove it).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another daemon answers on {}", path.display()),
                    ))
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{} exists and cannot be checked: {e}", path.display()),
                    ))
                }
            }
        }
        let listener = bind_private(path)?;
        let linked = std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))?;
        let config = Arc::new(Mutex::new(config.map(Arc::new)));
        let answering = config.clone();
        let acceptor = Acceptor::spawn(
            "lanet-control",
            listener,
            |l: &UnixListener| l.accept().map(|(c, _)| c),
            move |conn, waited| {
                let config = answering.lock().unwrap_or_else(|e| e.into_inner()).clone();
                answer(conn, waited, &endpoint, config.as_deref())
            },
        )?;
        Ok(ControlSocket {
            path: path.to_owned(),
            acceptor: Some(acceptor),
            config,
            linked,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What `export` prints from now on (a daemon's configuration after a reload).
    pub fn set_config(&self, config: ConfigFile) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(config));
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        drop(self.acceptor.take());
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.linked);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens `<path>.lock` (made 0600 if missing) and holds an exclusive lock on it, or fails
/// with `AddrInUse` if another process holds it: the daemon that holds it owns `path`.
/// The file stays; the lock goes with the process.
fn lock_beside(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(PathBuf::from(&name))?;
    // SAFETY: flock takes a descriptor we own (open for the call's length) and flags.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let e = io::Error::last_os_error();
        let held = e.kind() == io::ErrorKind::WouldBlock;
        return Err(io::Error::new(
            if held {
                io::ErrorKind::AddrInUse
            } else {
                e.kind()
            },
            format!(
                "{}: {}: {e}",
                PathBuf::from(name).display(),
                if held {
                    "held by another daemon"
                } else {
                    "cannot lock"
                }
            ),
        ));
    }
    Ok(file)
}

/// Binds a socket at `path` that only its owner (root, on a gateway) may ask or command.
/// It is made in a fresh directory of mode 0700 beside `path`, restricted to 0600, then
/// linked into place: never open to others, and `link` fails rather than replace a socket
/// another daemon bound at `path` since we looked. The directory goes in every case.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let base = dir.unwrap_or(Path::new(".")).to_path_buf();
    // A fresh name (someone may have made one we would pick): short, since a socket's
    // whole path must fit in 108 bytes, and the socket is bound here first: `.lXXXXXX/s`
    // is no longer than `router.sock`.
    let mut attempt = 0;
    let private = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let fresh = (std::process::id().wrapping_mul(0x9e37_79b9) ^ nanos) & 0xff_ffff;
        let private = base.join(format!(".l{fresh:06x}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => break private,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let making = private.join("s");
    // (One less directly under "/", which needs no separator of its own.)
    debug_assert!(
        making.as_os_str().len() <= base.as_os_str().len() + lanet::config::CONTROL_SOCKET_STAGING,
        "the staging path is no longer than the config file's check reckons it"
    );
    let linked = (|| {
        let listener = UnixListener::bind(&making).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => io::Error::new(
                e.kind(),
                format!(
                    "the socket is bound at {} first, {} bytes: a Unix socket's path takes \
                     at most {} (a shorter directory)",
                    making.display(),
                    making.as_os_str().len(),
                    lanet::config::MAX_SOCKET_PATH
                ),
            ),
            _ => e,
        })?;
        std::fs::set_permissions(&making, std::fs::Permissions::from_mode(0o600))?;
        std::fs::hard_link(&making, path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} was bound by another process meanwhile", path.display()),
            ),
            _ => e,
        })?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&making);
    let _ = std::fs::remove_dir(&private);
    linked
}

/// Answers `conn`'s command. One whose client hung up when it may have `waited` for a
/// slot is not run: the client gave up on it. (A client that writes its command and
/// closes at once, `nc -q0`, still has it run, unless every slot was busy lately.)
fn answer(
    conn: UnixStream,
    waited: bool,
    endpoint: &Endpoint,
    config: Option<&ConfigFile>,
) -> io::Result<()> {
    // A slow or stuck client is cut off: it cannot hold one of the few client slots.
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(READ_TIMEOUT))?;
    let reply = match read_command(&conn) {
        Ok(line) if waited && crate::hangup::hung_up(&conn) => {
            tracing::info!(
                "control client gone before its command ran (it waited for a slot?): {:?} \
                 not run",
                line.trim_end()
            );
            return Ok(());
        }
        Ok(line) => match Command::parse(&line) {
            Ok(c) => run(c, endpoint, config),
            Err(e) => json!({ "error": e }),
        },
        Err(ReadCommandError::Io(e)) => return Err(e),
        Err(why) => json!({ "error": why.to_string() }),
    };
    // The whole answer within READ_TIMEOUT, not each send.
    crate::within::write_all_before(
        format!("{reply}\n").as_bytes(),
        std::time::Instant::now() + READ_TIMEOUT,
        |left| conn.set_write_timeout(Some(left)),
        |bytes| crate::nosignal::send(&conn, bytes),
    )?;
    // Closed with input unread, a Unix socket resets, and the client loses the answer
    // (to a line too long, above all): what it sent beyond is read and dropped first, a
    // little and briefly (the client closes once it has the answer).
    conn.shutdown(std::net::Shutdown::Write)?;
    let until = std::time::Instant::now() + LINGER;
    let mut left = LINGER_BYTES;
    let mut dropped = [0u8; 4096];
    while left > 0 {
        let room = dropped.len().min(left);
        match crate::within::read_before(&conn, until, &mut dropped[..room]) {
            Ok(n @ 1..) => left -= n,
            _ => break,
        }
    }
    Ok(())
}

/// How long at most, and how much, a client's input beyond its command is read and
/// dropped after the answer.
const LINGER: Duration = Duration::from_millis(200);
const LINGER_BYTES: usize = 64 * 1024;

/// Why no command was taken from a client.
#[derive(Debug, thiserror::Error)]
enum ReadCommandError {
    #[error("a command is one line of at most {MAX_COMMAND} bytes, its newline included")]
    TooLong,
    #[error("no whole command (a line ending in a newline) within {READ_TIMEOUT:?}")]
    TimedOut,
    #[error("the connection closed before the command's newline")]
    Unfinished,
    #[error(transparent)]
    Io(io::Error),
}

/// The client's command: its line, up to the newline. Never a part of a line: one cut
/// short by the length limit, the timeout or the client's end (killed as it wrote) might
/// be another command (a route's gateway or hop count cut off).
fn read_command(conn: &UnixStream) -> Result<String, ReadCommandError> {
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    // The bound counts the newline.
    match crate::within::read_line_before(conn, deadline, MAX_COMMAND as usize - 1) {
        Ok((command, true)) => Ok(String::from_utf8_lossy(&command).into_owned()),
        Ok((_, false)) => Err(ReadCommandError::Unfinished),
        Err(LineError::TooLong) => Err(ReadCommandError::TooLong),
        Err(LineError::TimedOut) => Err(ReadCommandError::TimedOut),
        Err(LineError::Io(e)) => Err(ReadCommandError::Io(e)),
    }
}

fn error(e: impl std::fmt::Display) -> Value {
    json!({ "error": e.to_string() })
}

fn run(command: Command, endpoint: &Endpoint, config: Option<&ConfigFile>) -> Value {
    match command {
        Command::Status => match endpoint.report() {
            Ok(r) => crate::json::report(&r),
            Err(e) => error(e),
        },
        Command::Routing(false) => set(endpoint, RouterState::Absent(AbsentReason::Administrator)),
        Command::Routing(true) => set(endpoint, RouterState::Forwarding),
        Command::RouteAdd(route) => match endpoint.add_route(route) {
            Ok(()) => {
                tracing::info!(net = %route.net, gateway = %route.gateway, "route added by the administrator");
                json!({ "ok": true })
            }
            Err(e) => error(e),
        },
        Command::RouteDel { net, gateway } => match endpoint.remove_route(net, gateway) {
            Ok(true) => {
                tracing::info!(%net, %gateway, "route removed by the administrator");
                json!({ "ok": true })
            }
            Ok(false) => error(format!("no route to {net} through {gateway}")),
            Err(e) => error(e),
        },
        Command::Ping { nid, timeout } => {
            let req = PingRequest {
                dst: nid,
                lane: Lane::Health,
                timeout: Some(timeout),
                on_peer_down: Default::default(),
            };
            match endpoint.ping_and_wait(req) {
                Ok(done) => match done.result {
                    Ok(OpOutcome::Pong { rtt }) => json!({
                        "nid": nid.to_string(),
                        "rtt_us": rtt.as_secs_f64() * 1e6,
                    }),
                    Ok(other) => error(format!("unexpected outcome {other:?}")),
                    Err(e) => error(format!("{nid}: {e}")),
                },
                Err(e) => error(e),
            }
        }
        Command::FaultAdd(rule) => match endpoint.add_fault_rule(rule) {
            Ok(id) => json!({ "ok": true, "id": id }),
            Err(e) => error(e),
        },
        Command::FaultDel(id) => match endpoint.remove_fault_rule(id) {
            Ok(true) => json!({ "ok": true }),
            Ok(false) => error(format!("no fault rule {id}")),
            Err(e) => error(e),
        },
        Command::Export => {
            let Some(config) = config else {
                return error("this node was not started from a configuration file");
            };
            let mut running = config.clone();
            match endpoint.routes() {
                Ok(routes) => running.routes = routes,
                Err(e) => return error(e),
            }
            let toml = running.to_toml();
            // A file that does not load back is a trap for whoever restarts from it (a
            // failover member no route reaches since a `route del`, say): refused, saying
            // why, rather than written.
            if let Err(e) = ConfigFile::parse(&running.path, &toml) {
                return error(format!(
                    "the running configuration would not load back as a file: {}{}",
                    e.key.map(|k| format!("{k}: ")).unwrap_or_default(),
                    e.message
                ));
            }
            json!({ "toml": toml })
        }
    }
}

fn set(endpoint: &Endpoint, state: RouterState) -> Value {
    match endpoint.set_router_state(state) {
        Ok(()) => {
            tracing::warn!(?state, "set by the administrator");
            json!({ "ok": true })
        }
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_owner_only_leaves_nothing_behind_and_never_replaces_another() {
        let dir = std::env::temp_dir().join(format!("lanet-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let _listener = bind_private(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        UnixStream::connect(&path).expect("the linked socket answers");
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the socket is left: {entries:?}");
        // Bound by another meanwhile: an error, and that socket stays as it was.
        let e = bind_private(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        UnixStream::connect(&path).expect("the first socket still answers");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A path a socket can be bound at directly (100 bytes here) is one the control
    /// socket binds at too: its staging path beside it is no longer.
    #[test]
    fn a_long_socket_path_that_fits_binds() {
        // Not the temporary directory, which may be longer than 100 bytes itself.
        let mut dir = Path::new("/tmp").join(format!("lanet-long-{}-", std::process::id()));
        let pad = 100 - dir.as_os_str().len() - "/router.sock".len();
        dir.as_mut_os_string().push("x".repeat(pad));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("router.sock");
        assert_eq!(path.as_os_str().len(), 100);
        let bound = bind_private(&path);
        let _ = std::fs::remove_dir_all(&dir);
        bound.expect("a 100-byte path binds");
    }

    #[test]
    fn one_daemon_at_a_time_holds_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("lanet-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let held = lock_beside(&path).unwrap();
        let e = lock_beside(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        drop(held);
        lock_beside(&path).expect("free again once its holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
