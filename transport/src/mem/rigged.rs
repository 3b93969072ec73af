//! An in-memory LND rigged to misbehave on cue, for the driver's and the endpoint's
//! tests: one forwarding wrapper instead of one per test file.

use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::MemLnd;
use crate::lane::Lane;
use crate::lnd::{Lnd, LndError, LndErrorKind, LndEvent, Readiness, RxHandle, Transmit, Wake};
use crate::nid::Nid;

/// What a [`Rigged`] LND does: at its polls once armed (`WakeMidPoll` once, the others
/// from then on), or always (`Gather`).
pub(crate) enum Trick {
    /// What a submitter racing the driver thread does: wakes the thread while it is still
    /// polling, not yet asleep (once).
    WakeMidPoll(Arc<Mutex<Vec<Arc<dyn Wake>>>>),
    /// `poll` fails: the driver is gone for good.
    Fail,
    /// `poll` hands up what it has, then fails (once armed, every poll).
    FailAfterPoll,
    /// `poll` panics: a bug anywhere on the driver thread.
    Panic,
    /// Not armed: holds what is posted until `send_posted`, the next poll or a
    /// `prepare_wait`, as TCP's epoll backend does to write a connection's frames together.
    Gather,
}

/// The error a [`Trick::Fail`] poll returns.
pub(crate) const INJECTED_FAILURE: &str = "injected driver failure";

/// An in-memory LND that plays a [`Trick`].
pub(crate) struct Rigged {
    inner: MemLnd,
    armed: Arc<AtomicBool>,
    trick: Trick,
    /// What `Trick::Gather` holds.
    held: Vec<Transmit>,
}

impl Rigged {
    /// `inner` playing `trick`, and the switch that arms it.
    pub(crate) fn new(inner: MemLnd, trick: Trick) -> (Rigged, Arc<AtomicBool>) {
        let armed = Arc::new(AtomicBool::new(false));
        let rigged = Rigged {
            inner,
            armed: armed.clone(),
            trick,
            held: Vec::new(),
        };
        (rigged, armed)
    }

    fn send_held(&mut self) {
        for tx in self.held.drain(..) {
            self.inner.post(tx);
        }
    }
}

impl Lnd for Rigged {
    fn nid(&self) -> Nid {
        self.inner.nid()
    }
    fn connect(&mut self, peer: Nid, lane: Lane) {
        self.inner.connect(peer, lane)
    }
    fn post(&mut self, tx: Transmit) {
        match self.trick {
            Trick::Gather => self.held.push(tx),
            _ => self.inner.post(tx),
        }
    }
    fn send_posted(&mut self) {
        self.send_held();
        self.inner.send_posted()
    }
    fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        self.inner.take_ready(events)
    }
    fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.inner.close(peer, lane, error)
    }
    fn fetch(&mut self, handle: RxHandle, sink: BytesMut) {
        self.inner.fetch(handle, sink)
    }
    fn decline(&mut self, handle: RxHandle) {
        self.inner.decline(handle)
    }
    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        self.send_held();
        if self.armed.load(Ordering::SeqCst) {
            match &self.trick {
                Trick::WakeMidPoll(wakers) => {
                    self.armed.store(false, Ordering::SeqCst);
                    for w in wakers.lock().unwrap().iter() {
                        w.wake();
                    }
                }
                Trick::Fail => return Err(LndError::new(LndErrorKind::Resource, INJECTED_FAILURE)),
                Trick::FailAfterPoll => {
                    self.inner.poll(events, Some(Duration::ZERO))?;
                    return Err(LndError::new(LndErrorKind::Resource, INJECTED_FAILURE));
                }
                Trick::Panic => panic!("injected panic on the driver thread"),
                Trick::Gather => {}
            }
        }
        self.inner.poll(events, timeout)
    }
    fn waker(&self) -> Arc<dyn Wake> {
        self.inner.waker()
    }
    fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        self.inner.wait_fd()
    }
    fn prepare_wait(&mut self) -> Readiness {
        self.send_held();
        self.inner.prepare_wait()
    }
}
