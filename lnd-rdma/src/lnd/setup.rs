//! Connection set-up over rdma_cm: dialling, accepting, HELLOs in private data, races,
//! and handshake deadlines.

use std::net::SocketAddrV4;

use lanet::handshake::{check_hello, decode_compact, HandshakeError};
use lanet::lane::Lane;
use lanet::lnd::conns::{Connect, Incoming, Stage};
use lanet::lnd::{LndError, LndErrorKind};
use lanet::nid::Nid;
use lanet::wire::HelloStatus;

use super::conn::Conn;
use super::{peer_addr, verbs_error, RdmaLnd, LISTENER_TAG};
use crate::cm::{CmEvent, CmEventKind, CmId};

fn err(kind: LndErrorKind, detail: impl Into<String>) -> LndError {
    LndError::new(kind, detail)
}

/// `id`'s HELLO for (peer, lane), in rdma_cm's private data.
fn compact_hello(
    id: &lanet::handshake::Identity,
    peer: Nid,
    lane: Lane,
    status: HelloStatus,
) -> [u8; lanet::handshake::COMPACT_HELLO_LEN] {
    id.hello(lane).encode_compact(peer, status)
}

impl RdmaLnd {
    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.ctx.local.connect_timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// The core asks for (peer, lane).
    pub(super) fn dial(&mut self, peer: Nid, lane: Lane) {
        let now = self.now();
        if self.conns.connect(peer, lane, now, &mut self.ctx.events) == Connect::Answered {
            return;
        }
        let failed = |kind, detail: String| err(kind, detail);
        let Some(addr) = peer_addr(peer).filter(|_| peer.net == self.ctx.local.id.nid.net) else {
            let e = failed(
                LndErrorKind::Unreachable,
                format!("{peer} is not on {}", self.ctx.local.id.nid.net),
            );
            return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
        };
        let id = self.new_conn_id();
        let cm = match CmId::with_tag(&self.channel, u64::from(id)) {
            Ok(cm) => cm,
            Err(e) => {
                let e = failed(LndErrorKind::Resource, e.to_string());
                return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
            }
        };
        let src = SocketAddrV4::new(self.ctx.local.ip, 0);
        if let Err(e) = cm.resolve_addr(Some(src), addr, self.timeout_ms()) {
            let e = failed(LndErrorKind::Unreachable, format!("{addr}: {e}"));
            return self.conns.dial_failed(peer, lane, e, &mut self.ctx.events);
        }
        tracing::debug!(%peer, %lane, "dialling {addr}");
        self.conns
            .dialled(id, peer, lane, Conn { cm, qp: None }, now);
    }

    pub(super) fn on_cm_event(&mut self, ev: CmEvent) {
        if ev.tag == LISTENER_TAG {
            if ev.kind == CmEventKind::ConnectRequest {
                self.on_connect_request(ev);
            }
            return;
        }
        let Ok(id) = u32::try_from(ev.tag) else {
            return;
        };
        let timeout_ms = self.timeout_ms();
        let Some((peer, lane)) = self.conns.peer(id) else {
            return; // for a connection already failed and forgotten
        };
        let dialled = self.conns.is_dialled(id);
        tracing::trace!(id, kind = ?ev.kind, status = ev.status, "rdma_cm event");
        match ev.kind {
            CmEventKind::AddrResolved => {
                let conn = self.conns.get_mut(id).expect("known above");
                if let Err(e) = conn.cm.resolve_route(timeout_ms) {
                    self.fail(id, err(LndErrorKind::Unreachable, e.to_string()));
                }
            }
            CmEventKind::RouteResolved => {
                if let Err(e) = self.qp_and_hello(id, peer, lane, CmId::connect) {
                    self.fail(id, e);
                }
            }
            CmEventKind::Established if dialled => self.dial_answered(id, &ev.private_data),
            CmEventKind::Established => {
                if self.conns.stage(id) == Some(Stage::Handshake) {
                    self.mark_up(id);
                }
            }
            CmEventKind::Rejected => self.rejected(id, &ev),
            CmEventKind::Unreachable | CmEventKind::Error(_) => {
                let e = err(
                    LndErrorKind::Unreachable,
                    format!("rdma_cm: {:?} (status {})", ev.kind, ev.status),
                );
                self.fail(id, e);
            }
            CmEventKind::Disconnected => {
                self.fail(id, err(LndErrorKind::Reset, "the peer disconnected"));
            }
            CmEventKind::ConnectRequest | CmEventKind::Other(_) => {}
        }
    }

    /// Our connect was accepted: the reply's private data is the peer's HELLO.
    fn dial_answered(&mut self, id: u32, private: &[u8]) {
        let Some((peer, lane)) = self.conns.peer(id) else {
            return;
        };
        let checked = decode_compact(private, self.ctx.local.id.nid)
            .map(|c| c.header)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                check_hello(&self.ctx.local.id.hello(lane), Some(peer), &h)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(hello) => {
                let now = self.now();
                let old = self.conns.answered(id, hello, now, &mut self.ctx.events);
                self.retire(old);
                tracing::debug!(%peer, %lane, "connection up");
                self.pump(id);
            }
            Err(e) => self.fail(id, err(LndErrorKind::Refused, e)),
        }
    }

    /// Our connect was refused: a lost race (the peer's own connection will come), or a
    /// real refusal.
    fn rejected(&mut self, id: u32, ev: &CmEvent) {
        let Some((peer, lane)) = self.conns.peer(id).filter(|_| self.conns.is_dialled(id)) else {
            return self.fail(id, err(LndErrorKind::Refused, "rejected"));
        };
        let local = self.ctx.local.id.nid;
        let race = decode_compact(&ev.private_data, local).is_ok_and(|c| {
            check_hello(&self.ctx.local.id.hello(lane), Some(peer), &c.header)
                == Err(HandshakeError::LostRace)
        });
        if !race {
            let why = format!(
                "connection refused by {peer} (rdma_cm reject, status {})",
                ev.status
            );
            return self.fail(id, err(LndErrorKind::Refused, why));
        }
        // Our dial goes quietly (its QP with it); the peer's dial answers the request.
        let now = self.now();
        let lost = self.conns.lost_race(id, now);
        self.retire(lost);
    }

    fn on_connect_request(&mut self, ev: CmEvent) {
        let Some(mut cm) = CmId::adopt(&self.channel, &ev) else {
            return;
        };
        let hello = decode_compact(&ev.private_data, self.ctx.local.id.nid)
            .map(|c| c.header)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                check_hello(&self.ctx.local.id.hello(h.lane), None, &h).map_err(|e| e.to_string())
            });
        let hello = match hello {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(nid = %self.ctx.local.id.nid, "refusing a connection: {e}");
                if let Err(e) = cm.reject(&[]) {
                    tracing::warn!("rdma_reject: {e}");
                }
                return;
            }
        };
        let (peer, lane) = (hello.nid, hello.lane);
        let id = self.new_conn_id();
        cm.set_tag(u64::from(id));
        let now = self.now();
        self.conns.accepted(id, Conn { cm, qp: None }, now);
        match self.conns.incoming(id, hello, now) {
            Incoming::Refuse => {
                tracing::debug!(%peer, %lane, "refusing a connection: lost a connection race");
                let race = compact_hello(&self.ctx.local.id, peer, lane, HelloStatus::Race);
                if let Some(conn) = self.conns.remove(id) {
                    if let Err(e) = conn.cm.reject(&race) {
                        tracing::warn!("rdma_reject: {e}");
                    }
                }
            }
            Incoming::Accept { lost_dial } => {
                self.retire(lost_dial);
                if let Err(e) = self.qp_and_hello(id, peer, lane, CmId::accept) {
                    tracing::warn!(%peer, %lane, "cannot accept: {e}");
                    self.fail(id, e);
                }
            }
        }
    }

    /// Creates connection `id`'s queue pair, then hands our HELLO to `send` (rdma_connect
    /// for our dial, rdma_accept for the peer's).
    fn qp_and_hello(
        &mut self,
        id: u32,
        peer: Nid,
        lane: Lane,
        send: fn(&CmId, &[u8]) -> Result<(), crate::verbs::VerbsError>,
    ) -> Result<(), LndError> {
        let hello = compact_hello(&self.ctx.local.id, peer, lane, HelloStatus::Ok);
        let cq_in_use = self.cq_in_use(lane);
        let conn = self.conns.get_mut(id).expect("the caller found it");
        conn.create_qp(id, lane, cq_in_use, &mut self.ctx)?;
        send(&conn.cm, &hello).map_err(verbs_error)
    }

    /// Accepted connection `id` is established: it replaces any older one to the same
    /// (peer, lane).
    pub(super) fn mark_up(&mut self, id: u32) {
        let now = self.now();
        let old = self.conns.mark_up(id, now, &mut self.ctx.events);
        self.retire(old);
        tracing::debug!(id, "connection up");
        self.pump(id);
    }
}
