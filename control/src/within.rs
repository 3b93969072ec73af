//! Commands and answers written and read within a deadline for the whole of each, not
//! for each write or read: a peer that takes or gives a few bytes now and then would
//! otherwise keep a socket's timeout from ever passing, and hold one of the few client
//! slots (and a daemon's exit), or lanetctl, for as long as it likes.

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Why [`read_line_before`] has no line.
#[derive(Debug)]
pub(crate) enum LineError {
    /// More than its bound came before a newline.
    TooLong,
    /// The deadline passed first.
    TimedOut,
    Io(io::Error),
}

/// One read from `conn` into `buf`, before `deadline`: `TimedOut` once it has passed
/// (a socket's timeout, or a signal's interruption, is read through until then).
pub(crate) fn read_before(
    mut conn: &UnixStream,
    deadline: Instant,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(buf) {
            Err(e) if try_again(&e) => {}
            read => return read,
        }
    }
}

/// One line from `conn`, read before `deadline` and at most `max` bytes before its newline
/// (dropped): the line, and whether its newline came (else the stream ended first).
/// Bytes after the newline are not kept.
pub(crate) fn read_line_before(
    conn: &UnixStream,
    deadline: Instant,
    max: usize,
) -> Result<(Vec<u8>, bool), LineError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match read_before(conn, deadline, &mut chunk) {
            Ok(0) => return Ok((line, false)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(LineError::TimedOut),
            Err(e) => return Err(LineError::Io(e)),
        };
        let had = line.len();
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line[had..].iter().position(|&b| b == b'\n') {
            line.truncate(had + end);
            return match line.len() > max {
                true => Err(LineError::TooLong),
                false => Ok((line, true)),
            };
        }
        if line.len() > max {
            return Err(LineError::TooLong);
        }
    }
}

/// Writes all of `bytes` with `write`, before `deadline`: `TimedOut` once it has passed.
/// `set_timeout` bounds each write by what is left (the socket's send timeout), so a write
/// that blocks wakes at the deadline.
pub(crate) fn write_all_before(
    mut bytes: &[u8],
    deadline: Instant,
    set_timeout: impl Fn(Duration) -> io::Result<()>,
    mut write: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the other end did not take it in time",
            ));
        }
        set_timeout(left)?;
        match write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if try_again(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A socket timeout (EAGAIN) or a stop and continue (EINTR): the deadline decides whether
/// to go on.
pub(crate) fn try_again(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// A reader that takes a little now and then keeps every single write short of its
    /// timeout; the answer as a whole is still cut off at the deadline.
    #[test]
    fn a_trickling_reader_is_cut_off_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_done = done.clone();
        let reader = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let mut chunk = [0u8; 1024];
            // A kilobyte every 20 ms, until the writer is done.
            while !writer_done.load(std::sync::atomic::Ordering::SeqCst) {
                if !matches!(c.read(&mut chunk), Ok(1..)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (conn, _) = listener.accept().unwrap();
        let answer = vec![b'x'; 8 << 20];
        let t0 = Instant::now();
        let sent = write_all_before(
            &answer,
            t0 + Duration::from_millis(500),
            |t| conn.set_write_timeout(Some(t)),
            |b| (&conn).write(b),
        );
        let took = t0.elapsed();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(conn);
        reader.join().unwrap();
        assert_eq!(sent.map_err(|e| e.kind()), Err(io::ErrorKind::TimedOut));
        // 8 MiB at a kilobyte per 20 ms would take minutes; the deadline is 0.5 s.
        assert!(took < Duration::from_secs(20), "{took:?}");
    }

    #[test]
    fn a_reader_that_takes_it_all_gets_it_all() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all).unwrap();
            all.len()
        });
        let (conn, _) = listener.accept().unwrap();
        let answer = vec![b'y'; 1 << 20];
        write_all_before(
            &answer,
            Instant::now() + Duration::from_secs(30),
            |t| conn.set_write_timeout(Some(t)),
            |b| (&conn).write(b),
        )
        .unwrap();
        drop(conn);
        assert_eq!(reader.join().unwrap(), 1 << 20);
    }
}
