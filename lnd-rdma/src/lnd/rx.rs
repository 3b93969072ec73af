//! Work completions: received messages, finished sends, WRITEs and READs, and errors.

use bytes::Bytes;
use lanet::lane::Lane;
use lanet::lnd::conns::{ConnMut, Stage};
use lanet::lnd::{LndError, LndErrorKind, LndEvent, RxHandle, RxPayload};
use lanet::wire::{decode_header, Header, Limits, HEADER_LEN};
use rdma_sys::ibv_wc_status as wc;

use super::conn::{self, Ctrl, Mode, SlotUse, WrId, RDV_MAX};
use super::{InRdv, RdmaLnd};
use crate::msg::{Kind, Outcome, Prefix, PREFIX_LEN};
use crate::verbs::Completion;

/// What a failed work completion means for the connection.
fn completion_error(c: &Completion) -> LndError {
    let kind = match c.status {
        wc::IBV_WC_WR_FLUSH_ERR => LndErrorKind::Reset,
        wc::IBV_WC_RETRY_EXC_ERR | wc::IBV_WC_RNR_RETRY_EXC_ERR => LndErrorKind::TimedOut,
        // The peer broke the rules: wrong key or address, oversized message.
        wc::IBV_WC_REM_ACCESS_ERR
        | wc::IBV_WC_REM_INV_REQ_ERR
        | wc::IBV_WC_REM_OP_ERR
        | wc::IBV_WC_LOC_LEN_ERR => LndErrorKind::Protocol,
        wc::IBV_WC_LOC_PROT_ERR | wc::IBV_WC_LOC_QP_OP_ERR | wc::IBV_WC_LOC_ACCESS_ERR => {
            LndErrorKind::Resource
        }
        _ => LndErrorKind::Reset,
    };
    LndError::new(
        kind,
        format!(
            "work request failed: {} (status {})",
            c.status_text(),
            c.status
        ),
    )
}

fn protocol(detail: impl Into<String>) -> LndError {
    LndError::new(LndErrorKind::Protocol, detail)
}

/// A message, parsed and copied out of its receive buffer.
enum Message {
    Eager(Header, Bytes),
    /// A deferred frame's request.
    Request(Header, Prefix),
    /// About one of our deferred payloads (`SinkAck`, `ReadDone`) or one of theirs
    /// (`WriteDone`).
    Ctrl(Prefix),
}

fn parse(b: &[u8], limits: &Limits) -> Result<Message, String> {
    let prefix = Prefix::decode(b)?;
    if !prefix.kind.carries_frame() {
        return Ok(Message::Ctrl(prefix));
    }
    let header_bytes = b
        .get(PREFIX_LEN..PREFIX_LEN + HEADER_LEN)
        .ok_or("frame message shorter than a header")?;
    let header = decode_header(header_bytes, limits).map_err(|e| e.to_string())?;
    let payload = &b[PREFIX_LEN + HEADER_LEN..];
    let declared = header.payload_len as usize;
    match prefix.kind {
        Kind::Eager if payload.len() == declared => {
            Ok(Message::Eager(header, Bytes::copy_from_slice(payload)))
        }
        Kind::Eager => Err(format!(
            "frame declares {declared} payload bytes but carries {}",
            payload.len()
        )),
        _ if !payload.is_empty() || declared != prefix.remote.len as usize || declared == 0 => {
            Err("deferred frame request with a bad length".into())
        }
        _ => Ok(Message::Request(header, prefix)),
    }
}

/// What a successful receive completion brought, parsed from its buffer's first
/// `byte_len` bytes (`bytes`, if the buffer is one of ours); `None` for a failed one.
fn received(
    c: &Completion,
    bytes: Option<&[u8]>,
    limits: &Limits,
) -> Option<Result<Message, String>> {
    if !c.ok() {
        return None;
    }
    if !c.is_recv() {
        // A peer's RDMA WRITE with immediate data (its QP may write: rendezvous sinks)
        // takes a receive without filling it: the buffer still holds the last message
        // received into it, perhaps another peer's, which must not pass for this one's.
        return Some(Err(format!(
            "a receive taken by an operation we never send (work completion opcode {}, an \
             RDMA write with immediate data)",
            c.opcode
        )));
    }
    Some(match bytes {
        Some(b) => parse(b, limits),
        None => Err("completion for an unknown receive buffer".into()),
    })
}

impl RdmaLnd {
    /// A completion from `lane`'s CQ.
    pub(super) fn on_completion(&mut self, lane: Lane, c: Completion) {
        let (id, slot) = match conn::split_wr_id(c.wr_id) {
            WrId::Recv(buf) => return self.on_recv(lane, buf, &c),
            WrId::Send { conn, slot } => (conn, slot),
        };
        if !c.ok() {
            if self.conns.get(id).is_some() {
                self.fail(id, completion_error(&c));
            }
            return; // or flushed from a connection already failed and forgotten
        }
        self.on_send_done(id, slot);
    }

    /// A receive from `lane`'s shared queue, into buffer `buf`: copied out and the buffer
    /// posted again first (whatever the message, or its connection, turns out to be).
    fn on_recv(&mut self, lane: Lane, buf: u32, c: &Completion) {
        let limits = Limits {
            max_payload: self.ctx.local.id.max_payload,
            link_checks_headers: self.ctx.link_checks_headers,
        };
        let recv = &mut self.ctx.recv[lane];
        let parsed = received(c, recv.completed(buf, c.byte_len as usize), &limits);
        if let Err(e) = recv.repost(buf) {
            tracing::warn!(%lane, "cannot post a shared receive again: {e}");
        }
        // A completion of a failed connection's QP (flushed, or destroyed since) finds
        // nothing (or, were its number reused at once, maybe another lane's QP, whose
        // messages never come from this CQ).
        let Some(id) = self
            .qp_conns
            .get(&c.qp_num)
            .filter(|(_, l)| *l == lane)
            .map(|(id, _)| *id)
        else {
            return; // its connection is gone
        };
        // A QP's entry goes with its connection (`retire`): no second lookup to check.
        debug_assert!(
            self.conns.get(id).is_some(),
            "qp_conns outlived connection {id}"
        );
        let Some(parsed) = parsed else {
            let error = if c.status == wc::IBV_WC_LOC_LEN_ERR {
                let size = self.ctx.recv[lane].buf_size();
                protocol(format!(
                    "a message longer than our {size}-byte receive buffers arrived: the peer \
                     ignored the size our HELLO said"
                ))
            } else {
                completion_error(c)
            };
            return self.fail(id, error);
        };
        if self.conns.stage(id) == Some(Stage::Handshake) && !self.conns.is_dialled(id) {
            // Only a connection being set up can owe its AUTH (not one per message).
            if let Some(conn::ConnAuth::AwaitingProof(pending, hello)) =
                self.conns.get(id).map(|c| c.auth)
            {
                let message = match parsed {
                    Ok(Message::Eager(h, data)) => Ok((h, data)),
                    Ok(_) => Err("a driver message before the AUTH".to_owned()),
                    Err(e) => Err(e),
                };
                return self.dialler_proof(id, message, (pending, hello));
            }
            // A message can only come once the connection is established: this is as
            // good as the ESTABLISHED event, which may still be on its way.
            self.mark_up(id);
        }
        let Some(ConnMut {
            stage,
            peer,
            data: conn,
        }) = self.conns.get_mut_with_state(id)
        else {
            return; // marking it up flushed its queue, and a post failed
        };
        let (Some(qp), Some((peer, lane)), Stage::Up) = (conn.qp.as_mut(), peer, stage) else {
            return self.fail(id, protocol("message before the connection was set up"));
        };
        let message = match parsed {
            Ok(m) => m,
            Err(e) => return self.fail(id, protocol(e)),
        };
        match message {
            Message::Eager(header, data) => self.ctx.events.push(LndEvent::Received {
                peer,
                lane,
                header,
                payload: RxPayload::Inline(data),
            }),
            Message::Request(header, prefix) => {
                if qp.incoming >= RDV_MAX {
                    return self.fail(id, protocol("too many deferred payloads at once"));
                }
                qp.incoming += 1;
                let handle = RxHandle(self.next_handle);
                self.next_handle += 1;
                let mode = if prefix.kind == Kind::PutReq {
                    Mode::Write
                } else {
                    Mode::Read
                };
                if self.by_cookie.insert((id, prefix.cookie), handle).is_some() {
                    return self.fail(id, protocol("deferred payload cookie reused"));
                }
                self.incoming.insert(
                    handle,
                    InRdv {
                        conn: id,
                        cookie: prefix.cookie,
                        mode,
                        source: prefix.remote,
                        sink: None,
                    },
                );
                let len = prefix.remote.len;
                self.ctx.events.push(LndEvent::Received {
                    peer,
                    lane,
                    header,
                    payload: RxPayload::Deferred { handle, len },
                });
            }
            Message::Ctrl(prefix) => self.on_ctrl(id, prefix),
        }
    }

    fn on_ctrl(&mut self, id: u32, p: Prefix) {
        let qp = self
            .conns
            .get_mut(id)
            .and_then(|c| c.qp.as_mut())
            .expect("checked by the caller");
        qp.rdv_step(&self.ctx);
        match p.kind {
            Kind::SinkAck | Kind::ReadDone => {
                let want = if p.kind == Kind::SinkAck {
                    Mode::Write
                } else {
                    Mode::Read
                };
                let Some(rdv) = qp.out.get_mut(&p.cookie).filter(|r| r.mode == want) else {
                    return self.fail(id, protocol(format!("{:?} for no payload of ours", p.kind)));
                };
                if rdv.sink_acked {
                    // Its payload is being written already: a repeat would write it again
                    // (and a peer that repeats without end would grow this queue).
                    return self.fail(id, protocol("a second SinkAck for one payload"));
                }
                match (p.kind, p.outcome) {
                    (Kind::SinkAck, Outcome::Ok) => {
                        if p.remote.len as usize != rdv.src.data().len() {
                            return self.fail(id, protocol("sink of the wrong size"));
                        }
                        rdv.sink_acked = true;
                        qp.ctrl.push_back(Ctrl::WriteData {
                            cookie: p.cookie,
                            sink: p.remote,
                        });
                        self.pump(id);
                    }
                    // Taken (READ done), or declined: either way the payload is released.
                    (_, Outcome::Ok | Outcome::Declined) => {
                        let rdv = qp.out.remove(&p.cookie).expect("found above");
                        self.ctx.events.push(LndEvent::SendComplete {
                            token: rdv.token,
                            result: Ok(()),
                        });
                        self.pump(id);
                    }
                    (_, Outcome::Failed) => {
                        let rdv = qp.out.remove(&p.cookie).expect("found above");
                        let error = LndError::new(
                            LndErrorKind::Refused,
                            "the peer could not take the payload",
                        );
                        self.ctx.events.push(LndEvent::SendComplete {
                            token: rdv.token,
                            result: Err(error),
                        });
                        self.pump(id);
                    }
                }
            }
            Kind::WriteDone => {
                let handle = self.by_cookie.get(&(id, p.cookie)).copied();
                let fetching = handle
                    .and_then(|h| self.incoming.get(&h))
                    .is_some_and(|r| r.mode == Mode::Write && r.sink.is_some());
                let Some(handle) = handle.filter(|_| fetching) else {
                    return self.fail(id, protocol("WriteDone for no sink of ours"));
                };
                let result = match p.outcome {
                    Outcome::Ok => Ok(()),
                    _ => Err(LndError::new(
                        LndErrorKind::Refused,
                        "the peer could not write the payload",
                    )),
                };
                self.fetched(handle, result);
            }
            Kind::Eager | Kind::PutReq | Kind::ReadReq => unreachable!("parsed as frames"),
        }
    }

    fn on_send_done(&mut self, id: u32, index: usize) {
        let Some(conn) = self.conns.get_mut(id) else {
            return; // flushed from a connection already failed and forgotten
        };
        let qp = conn
            .qp
            .as_mut()
            .expect("a connection that sent has its queue pair");
        let Some(used) = qp.take_slot(index, &mut self.ctx.send_bufs) else {
            return self.fail(id, protocol("completion for a free send slot"));
        };
        match used {
            // The frame was copied when sent: its completion only frees a slot, so it goes
            // up with the next event (a request's answer, say) rather than costing the
            // core a turn of its own. Unless it is to be reported at once (it ends an
            // operation: held, it would wait out the spin).
            SlotUse::Eager {
                token,
                report_at_once,
            } => {
                let done = LndEvent::SendComplete {
                    token,
                    result: Ok(()),
                };
                match report_at_once {
                    true => self.ctx.events.push(done),
                    false => self.quiet.push(done),
                }
            }
            SlotUse::Request | SlotUse::Write { .. } => qp.rdv_step(&self.ctx),
            // A driver message may be our refusal of the peer's payload: no step of
            // anything under way.
            SlotUse::Ctrl => {}
            SlotUse::WriteDone(cookie) => {
                qp.rdv_step(&self.ctx);
                if let Some(rdv) = qp.out.remove(&cookie) {
                    self.ctx.events.push(LndEvent::SendComplete {
                        token: rdv.token,
                        result: Ok(()),
                    });
                }
            }
            SlotUse::Read(handle) => {
                qp.rdv_step(&self.ctx);
                self.read_done(id, handle)
            }
        }
        // Those waiting for a send buffer before this connection's own queue.
        self.pump_buf_waiters();
        self.pump(id);
    }

    /// Our READ of a deferred payload finished: the core gets it, the sender hears.
    fn read_done(&mut self, id: u32, handle: RxHandle) {
        let Some(cookie) = self.incoming.get(&handle).map(|r| r.cookie) else {
            return;
        };
        self.fetched(handle, Ok(()));
        let done = Prefix::new(Kind::ReadDone, cookie);
        if let Some(qp) = self.conns.get_mut(id).and_then(|c| c.qp.as_mut()) {
            qp.ctrl.push_back(Ctrl::Msg(done));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanet::lane::Lane;
    use lanet::nid::Nid;
    use lanet::wire::{encode_header, Body};

    fn header(payload_len: u32) -> Header {
        Header {
            hop_limit: 8,
            router_gen: 0,
            lane: Lane::Data,
            credits: 0,
            src: "10.0.0.1@o2ib".parse::<Nid>().unwrap(),
            dst: "10.0.0.2@o2ib".parse::<Nid>().unwrap(),
            src_incarnation: 1,
            msg_id: 9,
            payload_len,
            body: Body::Put {
                portal: 4,
                match_bits: 1,
                settled_below: 0,
                ack: true,
            },
            attempt: 0,
        }
    }

    fn message(kind: Kind, len_field: u32, h: &Header, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PREFIX_LEN];
        let remote = crate::mr::RemoteBuf {
            addr: 1,
            rkey: 2,
            len: len_field,
        };
        Prefix::new(kind, 5)
            .with(Outcome::Ok, remote)
            .encode(&mut b);
        b.extend_from_slice(&encode_header(h));
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn messages_are_checked_before_anything_is_trusted() {
        let limits = Limits::new(1 << 20, lanet::wire::HeaderCheck::Link);
        let ok = message(Kind::Eager, 3, &header(3), b"abc");
        assert!(matches!(parse(&ok, &limits), Ok(Message::Eager(_, d)) if &d[..] == b"abc"));
        // Payload shorter or longer than the header says.
        assert!(parse(&message(Kind::Eager, 3, &header(4), b"abc"), &limits).is_err());
        assert!(parse(&ok[..ok.len() - 1], &limits).is_err());
        // A request must carry no payload and agree on the length, which is not zero.
        let req = message(Kind::PutReq, 9000, &header(9000), b"");
        assert!(matches!(parse(&req, &limits), Ok(Message::Request(..))));
        assert!(parse(&message(Kind::PutReq, 9001, &header(9000), b""), &limits).is_err());
        assert!(parse(&message(Kind::ReadReq, 0, &header(0), b""), &limits).is_err());
        // Over the payload limit: refused by the header codec.
        assert!(parse(
            &message(Kind::PutReq, 2 << 20, &header(2 << 20), b""),
            &limits
        )
        .is_err());
        // Truncated header.
        assert!(parse(&req[..PREFIX_LEN + 10], &limits).is_err());
    }

    /// A peer's RDMA WRITE with immediate data completes one of our receives without
    /// writing its buffer, which still holds an earlier message (perhaps another peer's):
    /// refused, never parsed, however good what the buffer holds.
    #[test]
    fn a_receive_taken_by_a_write_with_immediate_data_is_refused_unread() {
        use rdma_sys::{ibv_wc_opcode, ibv_wc_status};
        let limits = Limits::new(1 << 20, lanet::wire::HeaderCheck::Link);
        let left_over = message(Kind::Eager, 3, &header(3), b"abc");
        let completion = |opcode| Completion {
            wr_id: 1,
            status: ibv_wc_status::IBV_WC_SUCCESS,
            opcode,
            byte_len: left_over.len() as u32,
            qp_num: 7,
        };
        let peers_send = completion(ibv_wc_opcode::IBV_WC_RECV);
        assert!(matches!(
            received(&peers_send, Some(&left_over), &limits),
            Some(Ok(Message::Eager(..)))
        ));
        let write = completion(ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM);
        assert!(matches!(
            received(&write, Some(&left_over), &limits),
            Some(Err(e)) if e.contains("RDMA write with immediate data")
        ));
        let failed = Completion {
            status: ibv_wc_status::IBV_WC_WR_FLUSH_ERR,
            ..peers_send
        };
        assert!(received(&failed, Some(&left_over), &limits).is_none());
    }

    proptest::proptest! {
        #[test]
        fn random_messages_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse(&b, &Limits::new(1 << 20, lanet::wire::HeaderCheck::Link));
        }
    }
}
