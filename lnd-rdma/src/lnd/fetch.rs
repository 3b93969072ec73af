//! The receiving side of deferred payloads: fetching one into the core's buffer (our
//! READ, or the sender's WRITE into our registered sink), declining one, and finishing.

use bytes::BytesMut;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, RxHandle};

use super::conn::{Ctrl, Mode};
use super::{verbs_error, RdmaLnd};
use crate::mr::{RemoteBuf, SinkMr};
use crate::msg::{Kind, Outcome, Prefix};

impl RdmaLnd {
    /// The core wants deferred payload `handle` in `sink`: register the sink, then ask
    /// the sender to WRITE into it, or READ it ourselves.
    pub(super) fn start_fetch(&mut self, handle: RxHandle, sink: BytesMut) {
        let Some(rdv) = self.incoming.get_mut(&handle) else {
            let error = LndError::new(
                LndErrorKind::Reset,
                "the connection that offered this payload is gone",
            );
            self.ctx.events.push(LndEvent::Fetched {
                handle,
                result: Err(error),
            });
            return;
        };
        if rdv.sink.is_some() {
            // Asked twice (a caller's bug): the first fetch goes on, its buffer still the
            // NIC's until it completes, and ends in the handle's one `Fetched` (a second,
            // for the same handle, would be taken for the first's). This sink is dropped.
            tracing::warn!(
                ?handle,
                "a payload already being fetched was asked for again: ignored"
            );
            return;
        }
        let id = rdv.conn;
        let len = rdv.source.len as usize;
        let remote_write = rdv.mode == Mode::Write || self.ctx.read_sinks_take_writes;
        let ctrl = match SinkMr::new(&self.ctx.pd, sink, len, remote_write) {
            Ok(mut sink) => {
                let ctrl = match rdv.mode {
                    Mode::Write => Ctrl::Msg(
                        Prefix::new(Kind::SinkAck, rdv.cookie).with(Outcome::Ok, sink.remote()),
                    ),
                    Mode::Read => Ctrl::Read {
                        handle,
                        sink: sink.sge(),
                        source: rdv.source,
                    },
                };
                rdv.sink = Some(sink);
                ctrl
            }
            Err(e) => {
                self.ctx.events.push(LndEvent::Fetched {
                    handle,
                    result: Err(verbs_error(e)),
                });
                self.refuse(handle, Outcome::Failed);
                return;
            }
        };
        let conn = self
            .conns
            .get_mut(id)
            .expect("offers go with their connection");
        let qp = conn.qp.as_mut().expect("up");
        qp.ctrl.push_back(ctrl);
        qp.rdv_begin(&mut self.ctx);
        self.pump(id);
    }

    /// Tells the sender of deferred payload `handle` that it will not be taken, and
    /// forgets it.
    pub(super) fn refuse(&mut self, handle: RxHandle, outcome: Outcome) {
        let Some(rdv) = self.incoming.remove(&handle) else {
            return; // its connection is gone, and with it the sender's wait
        };
        self.by_cookie.remove(&(rdv.conn, rdv.cookie));
        let kind = match rdv.mode {
            Mode::Write => Kind::SinkAck,
            Mode::Read => Kind::ReadDone,
        };
        let msg = Prefix::new(kind, rdv.cookie).with(
            outcome,
            RemoteBuf {
                addr: 0,
                rkey: 0,
                len: 0,
            },
        );
        if let Some(qp) = self.conns.get_mut(rdv.conn).and_then(|c| c.qp.as_mut()) {
            qp.incoming -= 1;
            qp.ctrl.push_back(Ctrl::Msg(msg));
        }
        self.pump(rdv.conn);
    }

    /// Ends a fetch: the payload (or why not) to the core, and the sink released.
    pub(super) fn fetched(&mut self, handle: RxHandle, result: Result<(), LndError>) {
        let Some(rdv) = self.incoming.remove(&handle) else {
            return;
        };
        self.by_cookie.remove(&(rdv.conn, rdv.cookie));
        if let Some(qp) = self.conns.get_mut(rdv.conn).and_then(|c| c.qp.as_mut()) {
            qp.incoming -= 1;
        }
        let result = match (result, rdv.sink) {
            (Ok(()), Some(sink)) => Ok(sink.into_bytes()),
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(LndError::new(
                LndErrorKind::Protocol,
                "the peer finished a transfer that was never fetched",
            )),
        };
        self.ctx.events.push(LndEvent::Fetched { handle, result });
    }
}
