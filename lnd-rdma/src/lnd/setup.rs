//! Connection set-up over rdma_cm: dialling, accepting, HELLOs in private data, races,
//! and handshake deadlines.

use std::net::SocketAddrV4;
use std::time::Instant;

use lanet::handshake::{check_hello, decode_compact, HandshakeError};
use lanet::lane::Lane;
use lanet::lnd::{expired, LndError, LndErrorKind, LndEvent};
use lanet::nid::Nid;
use lanet::wire::HelloStatus;

use super::conn::{Conn, Stage};
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
        if let Some(hello) = self
            .up
            .get(&(peer, lane))
            .and_then(|id| self.conns[id].hello)
        {
            // Already up: say so again.
            self.ctx.events.push(LndEvent::Connected {
                peer,
                lane,
                hello,
                local_credits: self.ctx.local.id.credits[lane],
            });
            return;
        }
        if self.dialling.contains_key(&(peer, lane)) || self.awaiting.contains(peer, lane) {
            return; // the answer comes when that attempt ends
        }
        let accepting = self
            .conns
            .values()
            .any(|c| c.stage == Stage::Accepting && c.peer == Some((peer, lane)));
        if accepting {
            // The peer's connection is being set up: it answers, or the wait times out.
            let by = Instant::now() + self.ctx.local.connect_timeout;
            self.awaiting.wait(peer, lane, by);
            return;
        }
        let failed = |kind, detail: String| LndEvent::ConnectFailed {
            peer,
            lane,
            error: err(kind, detail),
        };
        let Some(addr) = peer_addr(peer).filter(|_| peer.net == self.ctx.local.id.nid.net) else {
            let e = failed(
                LndErrorKind::Unreachable,
                format!("{peer} is not on {}", self.ctx.local.id.nid.net),
            );
            return self.ctx.events.push(e);
        };
        let id = self.new_conn_id();
        let cm = match CmId::with_tag(&self.channel, u64::from(id)) {
            Ok(cm) => cm,
            Err(e) => {
                return self
                    .ctx
                    .events
                    .push(failed(LndErrorKind::Resource, e.to_string()))
            }
        };
        let src = SocketAddrV4::new(self.ctx.local.ip, 0);
        if let Err(e) = cm.resolve_addr(Some(src), addr, self.timeout_ms()) {
            let e = failed(LndErrorKind::Unreachable, format!("{addr}: {e}"));
            return self.ctx.events.push(e);
        }
        tracing::debug!(%peer, %lane, "dialling {addr}");
        self.dialling.insert((peer, lane), id);
        self.conns.insert(
            id,
            Conn {
                cm,
                qp: None,
                peer: Some((peer, lane)),
                dialled: true,
                stage: Stage::Resolving,
                hello: None,
                deadline: Some(Instant::now() + self.ctx.local.connect_timeout),
            },
        );
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
        let Some(conn) = self.conns.get_mut(&id) else {
            return; // for a connection already failed and forgotten
        };
        tracing::trace!(id, kind = ?ev.kind, status = ev.status, "rdma_cm event");
        let lane = conn.peer.map(|(_, l)| l).unwrap_or(Lane::Data);
        match ev.kind {
            CmEventKind::AddrResolved => {
                if let Err(e) = conn.cm.resolve_route(timeout_ms) {
                    self.fail(id, err(LndErrorKind::Unreachable, e.to_string()));
                }
            }
            CmEventKind::RouteResolved => {
                let (peer, _) = conn.peer.expect("dialled connections know their peer");
                let hello = compact_hello(&self.ctx.local.id, peer, lane, HelloStatus::Ok);
                let res = conn
                    .create_qp(id, lane, &mut self.ctx)
                    .and_then(|()| conn.cm.connect(&hello).map_err(verbs_error));
                match res {
                    Ok(()) => conn.stage = Stage::Connecting,
                    Err(e) => self.fail(id, e),
                }
            }
            CmEventKind::Established if conn.dialled => self.dial_answered(id, &ev.private_data),
            CmEventKind::Established => {
                if conn.stage == Stage::Accepting {
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
        let conn = &self.conns[&id];
        let (peer, lane) = conn.peer.expect("dialled");
        let checked = decode_compact(private)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                check_hello(&self.ctx.local.id.hello(lane), Some(peer), &h)
                    .map_err(|e| e.to_string())
            });
        match checked {
            Ok(hello) => {
                self.conns.get_mut(&id).expect("live").hello = Some(hello);
                self.mark_up(id);
            }
            Err(e) => self.fail(id, err(LndErrorKind::Refused, e)),
        }
    }

    /// Our connect was refused: a lost race (the peer's own connection will come), or a
    /// real refusal.
    fn rejected(&mut self, id: u32, ev: &CmEvent) {
        let conn = &self.conns[&id];
        let Some((peer, lane)) = conn.peer.filter(|_| conn.dialled) else {
            return self.fail(id, err(LndErrorKind::Refused, "rejected"));
        };
        let race = decode_compact(&ev.private_data).is_ok_and(|h| {
            check_hello(&self.ctx.local.id.hello(lane), Some(peer), &h)
                == Err(HandshakeError::LostRace)
        });
        if !race {
            let why = format!(
                "connection refused by {peer} (rdma_cm reject, status {})",
                ev.status
            );
            return self.fail(id, err(LndErrorKind::Refused, why));
        }
        // Forget our dial quietly; the core's request is answered by the peer's dial.
        self.dialling.remove(&(peer, lane));
        self.conns.remove(&id);
        if !self.up.contains_key(&(peer, lane)) {
            let by = Instant::now() + self.ctx.local.connect_timeout;
            self.awaiting.wait(peer, lane, by);
        }
    }

    fn on_connect_request(&mut self, ev: CmEvent) {
        let Some(mut cm) = CmId::adopt(&self.channel, &ev) else {
            return;
        };
        let refuse = |cm: CmId, why: &str, private: &[u8]| {
            tracing::debug!("refusing a connection: {why}");
            if let Err(e) = cm.reject(private) {
                tracing::warn!("rdma_reject: {e}");
            }
        };
        let hello = decode_compact(&ev.private_data)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                check_hello(&self.ctx.local.id.hello(h.lane), None, &h).map_err(|e| e.to_string())
            });
        let hello = match hello {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(nid = %self.ctx.local.id.nid, "refusing a connection: {e}");
                return refuse(cm, &e, &[]);
            }
        };
        let (peer, lane) = (hello.nid, hello.lane);
        let we_win = self.ctx.local.id.nid < peer;
        let race = compact_hello(&self.ctx.local.id, peer, lane, HelloStatus::Race);
        if let Some(current) = self.up.get(&(peer, lane)).map(|id| &self.conns[id]) {
            let same_life = current
                .hello
                .is_some_and(|h| h.incarnation == hello.incarnation);
            if same_life && current.dialled && we_win {
                // Our dial won and is up; this is the peer's side of the race.
                return refuse(cm, "lost a connection race", &race);
            }
        }
        if let Some(&mine) = self.dialling.get(&(peer, lane)) {
            if we_win {
                return refuse(cm, "lost a connection race", &race);
            }
            // Theirs wins: drop our dial quietly; this connection answers our connect.
            self.dialling.remove(&(peer, lane));
            self.conns.remove(&mine);
        }
        let id = self.new_conn_id();
        cm.set_tag(u64::from(id));
        let mut conn = Conn {
            cm,
            qp: None,
            peer: Some((peer, lane)),
            dialled: false,
            stage: Stage::Accepting,
            hello: Some(hello),
            deadline: Some(Instant::now() + self.ctx.local.connect_timeout),
        };
        let reply = compact_hello(&self.ctx.local.id, peer, lane, HelloStatus::Ok);
        let accepted = conn
            .create_qp(id, lane, &mut self.ctx)
            .and_then(|()| conn.cm.accept(&reply).map_err(verbs_error));
        self.conns.insert(id, conn);
        if let Err(e) = accepted {
            tracing::warn!(%peer, %lane, "cannot accept: {e}");
            self.fail(id, e);
        }
    }

    /// The connection is up: it replaces any older one to the same (peer, lane).
    pub(super) fn mark_up(&mut self, id: u32) {
        let conn = self.conns.get_mut(&id).expect("live");
        let (Some((peer, lane)), Some(hello)) = (conn.peer, conn.hello) else {
            return;
        };
        conn.stage = Stage::Up;
        conn.deadline = None;
        self.dialling.remove(&(peer, lane));
        self.awaiting.done(peer, lane);
        if let Some(old) = self.up.insert((peer, lane), id) {
            // The peer dialled again: it restarted, or believes the old connection dead.
            let error = err(
                LndErrorKind::Reset,
                "replaced by a new connection from the peer",
            );
            // Put the old one back for a moment so `fail` reports it down.
            self.up.insert((peer, lane), old);
            self.fail(old, error);
            self.up.insert((peer, lane), id);
        }
        tracing::debug!(%peer, %lane, "connection up");
        self.ctx.events.push(LndEvent::Connected {
            peer,
            lane,
            hello,
            local_credits: self.ctx.local.id.credits[lane],
        });
        self.pump(id);
    }

    /// Handshakes past their deadline fail; so do lanes still awaiting a race winner.
    pub(super) fn expire(&mut self, now: Instant) {
        let late = expired(self.conns.iter().map(|(id, c)| (*id, c.deadline)), now);
        for id in late {
            self.fail(
                id,
                err(LndErrorKind::TimedOut, "connection set-up timed out"),
            );
        }
        self.awaiting.expire(now, &mut self.ctx.events);
    }
}
