//! The thread behind the control socket and the metrics port: accepts clients and serves
//! each on a thread of its own, at most `MAX_CLIENTS` at once (more wait in the listen
//! backlog), so that one slow request (a `ping` waits up to 30 s) holds up nobody else.
//! Each server bounds how long a client may take. Until dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Clients served at once.
pub(crate) const MAX_CLIENTS: usize = 8;

/// How long after every slot was busy a client may still have waited in the backlog:
/// the backlog drains in well under this once slots free (each client has 2 s at most).
const BACKLOG_DRAINS: std::time::Duration = std::time::Duration::from_secs(10);

/// Clients being served now, and a wake-up when one is done.
#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    /// Takes a slot, waiting for one if none is free; whether it waited.
    fn take(&self) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let waited = *busy >= MAX_CLIENTS;
        while *busy >= MAX_CLIENTS {
            busy = self.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        waited
    }

    fn give_back(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
    }
}

/// Holds one slot; gives it back when dropped (panics included).
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    /// The listening socket (a duplicate descriptor): shut down to wake a thread blocked
    /// in accept, whatever became of the socket's path or address.
    listening: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Serves what `incoming` yields (a listener's `incoming()`, moved in) with `serve`,
    /// told whether the client may have waited in the backlog for a free slot (and given
    /// up meanwhile): every slot was busy within [`BACKLOG_DRAINS`] before it was taken.
    pub(crate) fn spawn<L, C>(
        name: &str,
        listener: L,
        incoming: impl Fn(&L) -> io::Result<C> + Send + 'static,
        serve: impl Fn(C, bool) -> io::Result<()> + Send + Sync + 'static,
    ) -> io::Result<Acceptor>
    where
        L: AsFd + Send + 'static,
        C: Send + 'static,
    {
        let listening = listener.as_fd().try_clone_to_owned()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let what = name.to_owned();
        let serve = Arc::new(serve);
        let slots = Arc::new(Slots::default());
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut last_wait: Option<std::time::Instant> = None;
                loop {
                    if slots.take() {
                        last_wait = Some(std::time::Instant::now());
                    }
                    let conn = incoming(&listener);
                    // After the accept, which may have waited for a client for hours.
                    let waited = last_wait.is_some_and(|at| at.elapsed() < BACKLOG_DRAINS);
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let conn = match conn {
                        Ok(conn) => conn,
                        Err(e) => {
                            // E.g. out of file descriptors: not in a tight loop.
                            tracing::warn!("{what}: {e}");
                            slots.give_back();
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            continue;
                        }
                    };
                    let (serve, done, who) = (serve.clone(), slots.clone(), what.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("{what}-client"))
                        .spawn(move || {
                            // Given back even if `serve` panics, or the slot would be lost.
                            let _slot = SlotGuard(done);
                            if let Err(e) = serve(conn, waited) {
                                tracing::debug!("{who} client: {e}");
                            }
                        });
                    if let Err(e) = spawned {
                        // Its connection dropped with the closure: the client sees it closed.
                        tracing::warn!("{what}: cannot start a thread for a client: {e}");
                        slots.give_back();
                    }
                }
            })?;
        Ok(Acceptor {
            stop,
            listening,
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    /// Stops accepting. Client threads already started finish on their own (each server
    /// bounds its client's time); when all slots are busy the accept thread is waiting for
    /// one, so this waits until a client is done.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: shutdown takes a descriptor we own (`listening`, open until we drop) and
        // a flag; it makes a blocked or later accept fail at once.
        unsafe { libc::shutdown(self.listening.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_client_whose_server_panics_gives_its_slot_back() {
        let dir = std::env::temp_dir().join(format!("lanet-acceptor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let acceptor = Acceptor::spawn(
            "test-acceptor",
            listener,
            |l: &UnixListener| l.accept().map(|(c, _)| c),
            move |mut c: UnixStream, _| {
                // More panics than there are slots: if a panic kept its slot, the
                // acceptor would stop taking clients before the last one.
                if count.fetch_add(1, Ordering::SeqCst) < MAX_CLIENTS + 2 {
                    panic!("a server that panics (expected in this test)");
                }
                c.write_all(b"ok")
            },
        )
        .unwrap();
        for _ in 0..MAX_CLIENTS + 2 {
            let mut c = UnixStream::connect(&path).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut nothing = Vec::new();
            let _ = c.read_to_end(&mut nothing); // closed when its server unwound
        }
        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "ok");
        drop(acceptor);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_stops_the_acceptor_even_when_its_socket_path_is_gone() {
        let dir = std::env::temp_dir().join(format!("lanet-acceptor-gone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let acceptor = Acceptor::spawn(
            "test-acceptor",
            listener,
            |l: &UnixListener| l.accept().map(|(c, _)| c),
            |_c: UnixStream, _| Ok(()),
        )
        .unwrap();
        // Someone removes the path (a tmp cleaner, an administrator): nothing can connect
        // to the listener any more, yet dropping must not wait for a connection.
        std::fs::remove_dir_all(&dir).unwrap();
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(acceptor);
            let _ = done.send(());
        });
        stopped
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("dropping the acceptor hung");
    }
}
