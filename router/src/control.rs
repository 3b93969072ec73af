//! The control socket: a Unix stream socket where the daemon answers one command per
//! connection with one line of JSON. `lanetctl` (and the tests) are its clients.
//!
//! Commands: `status` (the node's report), `routing off` (the administrator takes the
//! router out: absent, pushed at once), `routing on` (it may forward again).

use std::io::{self, BufRead, BufReader, Read, Write};

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use lanet::wire::{AbsentReason, RouterState};
use lanet::Endpoint;
use serde_json::json;

/// Longest command line taken; a client sending more is answered with an error.
const MAX_COMMAND: u64 = 256;
/// A client has this long to send its command.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The socket, served by a thread of its own until dropped.
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Listens at `path` (its directory made if missing; a stale socket left by a dead
    /// daemon replaced; a live one is an error) and answers for `endpoint`.
    pub fn serve(path: &Path, endpoint: Endpoint) -> io::Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another daemon answers on {}", path.display()),
                ));
            }
            std::fs::remove_file(path)?; // a dead daemon's
        }
        let listener = UnixListener::bind(path)?;
        // Only its owner (root, on a gateway) may ask or command.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("lanet-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(conn) => {
                            if let Err(e) = answer(conn, &endpoint) {
                                tracing::debug!("control socket client: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("control socket: {e}"),
                    }
                }
            })?;
        Ok(ControlSocket {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accepting thread; it sees the flag and ends.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, endpoint: &Endpoint) -> io::Result<()> {
    // One client at a time: a slow or stuck one is cut off, it cannot hold the socket.
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(READ_TIMEOUT))?;
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut command = Vec::new();
    let mut byte = [0u8; 64];
    let mut reader = (&conn).take(MAX_COMMAND);
    while !command.contains(&b'\n') && std::time::Instant::now() < deadline {
        match reader.read(&mut byte)? {
            0 => break,
            n => command.extend_from_slice(&byte[..n]),
        }
    }
    let line = String::from_utf8_lossy(&command);
    let reply = match line.trim() {
        "" | "status" => match endpoint.report() {
            Ok(r) => crate::json::report(&r),
            Err(e) => json!({ "error": e.to_string() }),
        },
        "routing off" => set(endpoint, RouterState::Absent(AbsentReason::Administrator)),
        "routing on" => set(endpoint, RouterState::Forwarding),
        other => json!({
            "error": format!(
                "unknown command {other:?}: expected \"status\", \"routing on\" or \"routing off\""
            )
        }),
    };
    let mut conn = conn;
    writeln!(conn, "{reply}")?;
    conn.flush()
}

fn set(endpoint: &Endpoint, state: RouterState) -> serde_json::Value {
    match endpoint.set_router_state(state) {
        Ok(()) => {
            tracing::warn!(?state, "set by the administrator");
            json!({ "ok": true })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// Sends `command` to the daemon at `path` and returns its answer (one JSON document).
pub fn query(path: &Path, command: &str) -> io::Result<serde_json::Value> {
    let mut conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(conn, "{command}")?;
    let mut reply = String::new();
    BufReader::new(conn).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
