//! Asking a control socket: what `lanetctl` does, with errors that say what to check.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::command::{Command, MAX_PING_TIMEOUT};
use crate::within::LineError;

/// How long an answer may take, all of it: the longest ping, and some.
const ANSWER_TIMEOUT: Duration = MAX_PING_TIMEOUT.saturating_add(Duration::from_secs(5));

/// The longest answer taken: a router's detailed report of 65,536 peers is tens of MB.
const MAX_ANSWER: usize = 256 << 20;

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
        /// Its start (what shows what it is).
        answer: String,
    },
    #[error(
        "{path}: the node closed the connection without answering (it may be stopping, or \
         out of threads; the command may not have run)"
    )]
    Closed { path: PathBuf },
    #[error("{path}: the answer was cut off after {got} bytes (the node stopped writing it)")]
    CutOff { path: PathBuf, got: usize },
    #[error("{path}: no whole answer within {within:?}")]
    NoAnswer { path: PathBuf, within: Duration },
    #[error("{path}: an answer longer than {max} bytes: not a lanet control socket's")]
    AnswerTooLong { path: PathBuf, max: usize },
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
    query_within(path, line, ANSWER_TIMEOUT, MAX_ANSWER)
}

/// [`query`], the whole answer within `within` and at most `max` bytes.
fn query_within(
    path: &Path,
    line: &str,
    within: Duration,
    max: usize,
) -> Result<Value, ClientError> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(path.to_owned()),
        io::ErrorKind::ConnectionRefused => ClientError::NoDaemon(path.to_owned()),
        io::ErrorKind::PermissionDenied => ClientError::NotPermitted(path.to_owned()),
        _ => ClientError::Io {
            path: path.to_owned(),
            source,
        },
    };
    let deadline = Instant::now() + within;
    let conn = UnixStream::connect(path).map_err(io_error)?;
    // With MSG_NOSIGNAL: lanetctl leaves SIGPIPE at its default.
    crate::within::write_all_before(
        format!("{line}\n").as_bytes(),
        deadline,
        |left| conn.set_write_timeout(Some(left)),
        |bytes| crate::nosignal::send(&conn, bytes),
    )
    .map_err(io_error)?;
    // One line, within the deadline as a whole (a socket timeout bounds each read only,
    // and a peer trickling bytes would hold us for ever); the end of the stream ends it
    // too.
    let reply = match crate::within::read_line_before(&conn, deadline, max) {
        Ok((reply, true)) => reply,
        // The stream ended before the answer's newline.
        Ok((reply, false)) if reply.is_empty() => {
            return Err(ClientError::Closed {
                path: path.to_owned(),
            })
        }
        Ok((reply, false)) => {
            return Err(ClientError::CutOff {
                path: path.to_owned(),
                got: reply.len(),
            })
        }
        Err(LineError::TimedOut) => {
            return Err(ClientError::NoAnswer {
                path: path.to_owned(),
                within,
            })
        }
        Err(LineError::TooLong) => {
            return Err(ClientError::AnswerTooLong {
                path: path.to_owned(),
                max,
            })
        }
        Err(LineError::Io(e)) => return Err(io_error(e)),
    };
    serde_json::from_slice(&reply).map_err(|e| ClientError::BadAnswer {
        path: path.to_owned(),
        why: e.to_string(),
        answer: String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A "socket" at a fresh path whose server reads the command, then does `then`.
    fn server(name: &str, then: impl FnOnce(UnixStream) + Send + 'static) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lanet-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            then(conn);
        });
        path
    }

    /// A server that answers without end, or a little now and then, is given up on.
    #[test]
    fn an_endless_or_trickling_answer_ends_in_a_clear_error() {
        let endless = server(
            "endless",
            |mut c| while c.write_all(&[b'x'; 4096]).is_ok() {},
        );
        let e = query_within(&endless, "status", Duration::from_secs(30), 1 << 20).unwrap_err();
        assert!(matches!(e, ClientError::AnswerTooLong { .. }), "{e}");
        let trickle = server("trickle", |mut c| {
            while c.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let t0 = Instant::now();
        let e = query_within(&trickle, "status", Duration::from_millis(500), 1 << 20).unwrap_err();
        assert!(matches!(e, ClientError::NoAnswer { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        assert!(e.to_string().contains("no whole answer within"), "{e}");
        let fine = server("fine", |mut c| {
            let _ = c.write_all(b"{\"ok\": 1}\n");
        });
        let v = query_within(&fine, "status", Duration::from_secs(30), 1 << 20).unwrap();
        assert_eq!(v["ok"], 1);
    }

    /// A connection closed without an answer, or in the middle of one, says so: not "the
    /// answer is not JSON", which reads as a protocol bug.
    #[test]
    fn an_answer_that_never_came_or_was_cut_off_says_so() {
        let closed = server("closed", drop);
        let e = query_within(&closed, "status", Duration::from_secs(30), 1 << 20).unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
        assert!(e.to_string().contains("without answering"), "{e}");
        let cut = server("cut", |mut c| {
            let _ = c.write_all(b"{\"nets\":[");
        });
        let e = query_within(&cut, "status", Duration::from_secs(30), 1 << 20).unwrap_err();
        assert!(matches!(e, ClientError::CutOff { got: 9, .. }), "{e}");
    }
}
