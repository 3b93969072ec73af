//! The thread behind the control socket and the metrics port: accepts one client at a
//! time and serves it (each server bounds how long a client may take), until dropped.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

pub(crate) struct Acceptor {
    stop: Arc<AtomicBool>,
    /// Connects to the listener, so that a thread blocked in accept sees `stop`.
    wake: Box<dyn Fn() + Send>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Serves what `incoming` yields (a listener's `incoming()`, moved in) with `serve`.
    pub(crate) fn spawn<L, C>(
        name: &str,
        listener: L,
        incoming: impl Fn(&L) -> io::Result<C> + Send + 'static,
        serve: impl Fn(C) -> io::Result<()> + Send + 'static,
        wake: impl Fn() + Send + 'static,
    ) -> io::Result<Acceptor>
    where
        L: Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let what = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let conn = incoming(&listener);
                if stopping.load(Ordering::Acquire) {
                    break;
                }
                match conn {
                    Ok(conn) => {
                        if let Err(e) = serve(conn) {
                            tracing::debug!("{what} client: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("{what}: {e}"),
                }
            })?;
        Ok(Acceptor {
            stop,
            wake: Box::new(wake),
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        (self.wake)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
