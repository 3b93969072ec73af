//! What stands in for a driver that failed for good: the real one is dropped at once, so
//! that its listener and connections close (peers dialling the NI are refused, rather than
//! left to their handshake deadline) and what it held is let go, while the NI keeps its
//! index among the driver loop's NIs.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use crate::lane::Lane;
use crate::lnd::{Lnd, LndError, LndEvent, RxHandle, Transmit, Wake};
use crate::nid::Nid;

/// A failed NI's driver: whatever is asked of it fails with the failure's error. (The
/// driver loop asks nothing of an NI that is down; this answers all the same.)
pub(crate) struct Failed {
    nid: Nid,
    error: LndError,
    events: Vec<LndEvent>,
}

impl Failed {
    pub(crate) fn new(nid: Nid, error: LndError) -> Failed {
        Failed {
            nid,
            error,
            events: Vec::new(),
        }
    }
}

struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

impl Lnd for Failed {
    fn nid(&self) -> Nid {
        self.nid
    }

    fn connect(&mut self, peer: Nid, lane: Lane) {
        let error = self.error.clone();
        self.events
            .push(LndEvent::ConnectFailed { peer, lane, error });
    }

    fn post(&mut self, tx: Transmit) {
        let result = Err(self.error.clone());
        self.events.push(LndEvent::SendComplete {
            token: tx.token,
            result,
        });
    }

    fn close(&mut self, _peer: Nid, _lane: Lane, _error: LndError) {}

    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        _timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        events.append(&mut self.events);
        Err(self.error.clone())
    }

    fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        events.append(&mut self.events);
    }

    fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(NoWake)
    }

    fn fetch(&mut self, handle: RxHandle, _sink: BytesMut) {
        let result = Err(self.error.clone());
        self.events.push(LndEvent::Fetched { handle, result });
    }

    fn decline(&mut self, _handle: RxHandle) {}
}
