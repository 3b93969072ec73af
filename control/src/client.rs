//! Asking a control socket: what `lanetctl` does, with errors that say what to check.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::command::{Command, MAX_PING_TIMEOUT};

/// How long an answer may take: the longest ping, and some.
const ANSWER_TIMEOUT: Duration = MAX_PING_TIMEOUT.saturating_add(Duration::from_secs(5));

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no control socket at {0}: is lanet-router (or the program) running, and is this the \
         control_socket its configuration names? (--socket PATH)"
    )]
    NoSocket(PathBuf),
    #[error("nothing answers at {0}: the daemon that made this socket is gone")]
    NoDaemon(PathBuf),
    #[error("not permitted to use {0}: it is its owner's only (mode 0600; usually root's)")]
    NotPermitted(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: the answer is not JSON ({why}): {answer:?}")]
    BadAnswer {
        path: PathBuf,
        why: String,
        answer: String,
    },
    /// The node understood and refused (or could not do it).
    #[error("{0}")]
    Refused(String),
}

/// Sends `command` to the socket at `path`; its answer, or what went wrong (an answer
/// `{"error": ...}` included).
pub fn request(path: &Path, command: &Command) -> Result<Value, ClientError> {
    let answer = query(path, &command.to_string())?;
    match answer.get("error").and_then(Value::as_str) {
        Some(e) => Err(ClientError::Refused(e.to_owned())),
        None => Ok(answer),
    }
}

/// Sends one command line as it is; the answer as it is.
pub fn query(path: &Path, line: &str) -> Result<Value, ClientError> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(path.to_owned()),
        io::ErrorKind::ConnectionRefused => ClientError::NoDaemon(path.to_owned()),
        io::ErrorKind::PermissionDenied => ClientError::NotPermitted(path.to_owned()),
        _ => ClientError::Io {
            path: path.to_owned(),
            source,
        },
    };
    let mut conn = UnixStream::connect(path).map_err(io_error)?;
    conn.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(io_error)?;
    writeln!(conn, "{line}").map_err(io_error)?;
    let mut reply = String::new();
    BufReader::new(conn)
        .read_line(&mut reply)
        .map_err(io_error)?;
    serde_json::from_str(&reply).map_err(|e| ClientError::BadAnswer {
        path: path.to_owned(),
        why: e.to_string(),
        answer: reply,
    })
}
