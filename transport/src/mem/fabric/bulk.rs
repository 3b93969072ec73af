//! Deferred payloads: staged at the sender until the receiver fetches them (the in-memory
//! stand-in for an RDMA READ/WRITE into registered memory) or declines them.

use bytes::{Bytes, BytesMut};

use super::{ConnId, Item, MemFabric, State, XferId};
use crate::lnd::{LndError, LndErrorKind, RxHandle, TxToken};
use crate::nid::Nid;
use crate::time::Time;
use crate::wire::HEADER_LEN;

/// A payload held at its sender until the receiver fetches or declines it.
pub(super) struct Staged {
    pub(super) owner: Nid,
    pub(super) conn: ConnId,
    pub(super) payload: Bytes,
    pub(super) token: TxToken,
}

impl State {
    /// Payloads staged on a dying connection: their sends end with the connection's error.
    pub(super) fn release_staged(&mut self, now: Time, conn: ConnId, error: &LndError) {
        let mut doomed: Vec<XferId> = self
            .staged
            .iter()
            .filter(|(_, s)| s.conn == conn)
            .map(|(x, _)| *x)
            .collect();
        doomed.sort_unstable();
        for x in doomed {
            let st = self.staged.remove(&x).expect("listed");
            let result = Err(error.clone());
            self.schedule(
                st.owner,
                now,
                Item::Released {
                    token: st.token,
                    result,
                },
            );
        }
    }
}

impl MemFabric {
    /// Sends a header whose payload stays staged here until the receiver fetches or declines
    /// it; `Ok(true)` if staged (the send completes with `Released`), `Ok(false)` if the
    /// frame was lost on the way (the send is done: the sender cannot tell).
    pub(in crate::mem) fn send_deferred(
        &self,
        from: Nid,
        conn: ConnId,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        token: TxToken,
    ) -> Result<bool, LndError> {
        let staged = Staged {
            owner: from,
            conn,
            payload,
            token,
        };
        self.send_frame(from, conn, header, Bytes::new(), false, Some(staged))
    }

    /// Moves staged payload `xfer` into `sink` for `fetcher`: the data "DMA" happens now,
    /// the fetch completes after a round trip, and the sender's buffer is released.
    pub(in crate::mem) fn fetch(
        &self,
        fetcher: Nid,
        handle: RxHandle,
        xfer: XferId,
        mut sink: BytesMut,
    ) {
        let now = self.now();
        let mut st = self.lock();
        let Some(staged) = st.staged.remove(&xfer) else {
            let error = LndError::new(
                LndErrorKind::Reset,
                "the payload is gone with its connection",
            );
            st.schedule(
                fetcher,
                now,
                Item::Fetched {
                    handle,
                    result: Err(error),
                },
            );
            return;
        };
        let link = st.link(fetcher, staged.owner);
        let (done, result, released) = if link.cut {
            let error = LndError::new(LndErrorKind::TimedOut, "zero-copy fetch timed out");
            (now + st.connect_timeout, Err(error.clone()), Err(error))
        } else {
            sink.extend_from_slice(&staged.payload);
            (now + link.delay * 2, Ok(sink.freeze()), Ok(()))
        };
        let release = Item::Released {
            token: staged.token,
            result: released,
        };
        st.schedule(staged.owner, now + link.delay, release);
        st.schedule(fetcher, done, Item::Fetched { handle, result });
    }

    /// Drops staged payload `xfer`; its sender's send completes.
    pub(in crate::mem) fn decline(&self, decliner: Nid, xfer: XferId) {
        let now = self.now();
        let mut st = self.lock();
        if let Some(staged) = st.staged.remove(&xfer) {
            let at = now + st.link(decliner, staged.owner).delay;
            let release = Item::Released {
                token: staged.token,
                result: Ok(()),
            };
            st.schedule(staged.owner, at, release);
        }
    }
}
