//! The io_uring backend: one ring per driver thread, with deferred task work; multishot
//! accept; receives into provided-buffer rings (the health lane multishot into its own
//! group, the data lane one buffer per receive); `sendmsg` (zero-copy `sendmsg` for large
//! messages) from memory that outlives each operation. A socket's small frames are
//! written with a plain `sendmsg` as soon as the core has handed them over
//! (`send_posted`), when nothing of the socket's is in the ring, once per look
//! ([`Uring::send_direct`]; a sleeping driver only where what waits is all for one
//! socket): their completions go back with the hand-over. The rest is submitted
//! together: sleeping, by the `io_uring_enter` that also waits (on a thread shared by
//! several LNDs, before it sleeps on their descriptors); busy-polling, at once. A
//! busy-polling driver also reads its hot data connection with a plain `recv`, that
//! connection having no receive in the ring meanwhile (see [`Uring::poll_hot`]).
//!
//! A driver dropped writes what it still holds before it shuts its sockets down, as far
//! as they take it at once (see `Drop`).
//!
//! Bulk bytes do not cross the driver thread: large data-lane sends, and large payloads
//! (received in place, straight into the frame's buffer), are moved by a second thread
//! with a ring of its own ([`mover`]), so the driver thread stays free for the health
//! lane, the core and small messages.

mod bufring;
mod bulk;
mod hot;
mod mover;
mod recv;
mod send;
mod setup;
mod sys;
mod write;

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{opcode, squeue, IoUring};
use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, Readiness, Wake};
use lanet::memo_map::MemoMap;
use lanet::nid::Nid;
use rustc_hash::FxHashMap;

use crate::engine::{ConnId, Engine};
use crate::io_error;
use bufring::BufRing;
use mover::Mover;
pub(crate) use mover::POLL_WHILE_MOVING;
use send::SendSlot;
use setup::new_socket;

/// Default for `TcpConfig::zero_copy_min`: messages at least this large go to non-loopback
/// peers by `IORING_OP_SENDMSG_ZC` (pages pinned, not copied). On loopback, zero-copy lost
/// at every size measured (bench/RESULTS.md: the kernel copies at delivery anyway), so
/// loopback peers never get it. No real NIC can be measured on these machines: 64 KiB
/// follows the kernel's MSG_ZEROCOPY guidance (worth it from roughly 10 KB) with margin.
pub(crate) const ZC_THRESHOLD: usize = 64 * 1024;
const RING_ENTRIES: u32 = 512;
/// A look that finds nothing flagged still enters the kernel at least this often (task
/// work the kernel holds but no longer flags waits at most this many looks, and the hot
/// looks up to the next full one: `Uring::poll_hot`) ...
const ENTER_AT_LEAST_EVERY: u32 = 16;
/// ... and always after a reap of this many completions: a burst may have left some.
const BURST: usize = 8;
const RECV_BUFFERS: u16 = 256;
const RECV_BUFFER_SIZE: usize = 64 * 1024;
/// The health lane's receive buffers: its own group, so a data backlog holding every data
/// buffer can never leave a PING without one. Health frames are small.
const HEALTH_BUFFERS: u16 = 64;
const HEALTH_BUFFER_SIZE: usize = 4096;
/// Buffer group ids.
const DATA_GROUP: u16 = 0;
const HEALTH_GROUP: u16 = 1;
/// `IORING_RECVSEND_POLL_FIRST` (linux/io_uring.h, since 5.19; the crate keeps its `sys`
/// private): a receive that arms its poll at once instead of first trying the socket.
const RECV_POLL_FIRST: u16 = 1;

// Operation kinds, in the low bits of user_data; the connection id is above them.
const ACCEPT: u64 = 1;
const WAKE: u64 = 2;
const RECV: u64 = 3;
const SEND: u64 = 4;
const CONNECT: u64 = 5;
const CANCEL: u64 = 6;
/// A multishot receive into the health lane's own buffers.
const RECV_HEALTH: u64 = 7;

/// Data-lane sends, and payload receives, at least this large go to the bulk mover thread
/// (or, if it cannot be started, sends go to a kernel worker with `IOSQE_ASYNC`).
const BULK_MIN: usize = 64 * 1024;
/// Sends of one socket the bulk mover may hold at once. With two, it starts the next
/// message as one ends, without waiting for this thread to take the first back and hand
/// over the next: a round of wake-ups between the two threads per message.
const MOVER_SENDS: usize = 2;
/// Bytes of data-lane receives handled per turn, so the health lane and the core get a
/// turn every few hundred microseconds under bulk load (measured: `lanet-bench lanes`).
const DATA_RECV_PER_TURN: usize = 256 << 10;

fn user_data(conn: ConnId, kind: u64) -> u64 {
    (conn as u64) << 4 | kind
}

/// One socket and the operations outstanding on it.
struct Sock {
    fd: OwnedFd,
    /// The send slot: here unless the bulk mover has it (a send of this ring uses it in
    /// place, guarded by `sending`), so always here while nothing is `moving`.
    send: Option<Box<SendSlot>>,
    /// A second slot, made at the first send handed to the mover while it still had one
    /// of this socket; home unless the mover has it.
    spare: Option<Box<SendSlot>>,
    /// A send of this ring is pending.
    sending: bool,
    /// Sends the bulk mover has of this socket (at most [`MOVER_SENDS`]), and their bytes:
    /// the first of the connection's queue, which the next send starts past. It sends them
    /// in order.
    moving: usize,
    moving_bytes: usize,
    /// Set by the mover when a send of this socket did not get all out: those handed over
    /// after it then come back unstarted. Made at the first send handed over.
    broken: Option<Arc<AtomicBool>>,
    /// A zero-copy send's notification is pending: its memory is still in use.
    notif: bool,
    /// A receive is armed (multishot on the health lane, single-shot on the data lane, or
    /// a payload received in place by the bulk mover).
    recv: bool,
    /// That receive is the bulk mover's.
    mover_recv: bool,
    /// The address a pending connect reads.
    connect: Option<Box<libc::sockaddr_in>>,
    /// Shut down; removed once nothing is pending.
    closing: bool,
    /// Large messages may go zero-copy (the peer is not on loopback).
    zero_copy: bool,
    /// The last data receive left the socket empty (the kernel did not flag it
    /// `SOCK_NONEMPTY`): the next one waits for data before it tries, rather than fail a
    /// try first. A request-answer exchange re-arms on an empty socket every time. (Every
    /// kernel this backend runs on flags it: both came in 5.19, multishot receives, which
    /// `new` requires, in 6.0. Were it never flagged, each receive would wait for its poll
    /// first: a poll arm more per 64 KiB while streaming, never a receive missed, as a
    /// poll armed on a readable socket fires at once.) A connection that stops being read
    /// by this thread ([`Uring::poll_hot`]) goes back to the ring flagged drained without
    /// a look: its poll fires at once if data came meanwhile.
    drained: bool,
    /// The look ([`Uring::looks`]) it was last written directly in.
    written_look: u64,
}

impl Sock {
    fn new(fd: OwnedFd, peer: Option<std::net::IpAddr>) -> Sock {
        Sock {
            zero_copy: peer.is_some_and(|ip| !ip.is_loopback()),
            fd,
            send: Some(SendSlot::new()),
            spare: None,
            sending: false,
            moving: 0,
            moving_bytes: 0,
            broken: None,
            notif: false,
            recv: false,
            mover_recv: false,
            connect: None,
            closing: false,
            drained: false,
            written_look: 0,
        }
    }

    fn idle(&self) -> bool {
        !self.sending && self.moving == 0 && !self.notif && !self.recv && self.connect.is_none()
    }

    /// Shuts the connection down both ways, so that operations pending on it complete. A
    /// zero-copy send's memory stays the kernel's until the peer acknowledges its bytes,
    /// which from a dead peer takes TCP's retries (some 15 minutes, the socket held too):
    /// while one may be out, bytes unacknowledged for [`CLOSING_UNACKED_MAX`] are given up
    /// (the connection aborted). Others keep TCP's own patience: a live peer that reads
    /// slowly still gets what the socket took.
    fn close_connection(&self) {
        if self.zero_copy && (self.sending || self.notif) {
            sys::give_up_unacked_after(self.fd.as_fd(), CLOSING_UNACKED_MAX);
        }
        sys::shutdown(self.fd.as_fd());
    }
}

/// See [`Sock::close_connection`]. Counted from the first send of the oldest bytes not
/// acknowledged (a retransmission timer already backed off runs out first, up to TCP's
/// 120 s).
const CLOSING_UNACKED_MAX: Duration = Duration::from_secs(1);

struct UringWaker(Arc<OwnedFd>);

impl Wake for UringWaker {
    fn wake(&self) {
        if let Err(e) = sys::signal(self.0.as_fd()) {
            tracing::error!("cannot wake the TCP driver: {e}");
        }
    }
}

/// A completion reaped but left for a later turn (see `Uring::backlog`).
struct Deferred {
    ud: u64,
    res: i32,
    flags: u32,
    /// Counted in `Uring::deferred`.
    counted: bool,
}

pub(crate) struct Uring {
    // Declared first so it is dropped before the memory its operations point at.
    ring: IoUring,
    /// Freed by hand in `drop`, after the kernel has let go of it (or leaked if it will not).
    bufs: ManuallyDrop<BufRing>,
    /// The health lane's buffers (same rules).
    health_bufs: ManuallyDrop<BufRing>,
    /// None where the NI accepts no connections.
    listener: Option<TcpListener>,
    wake_fd: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    /// Looked up several times per completion, mostly the same socket.
    socks: MemoMap<ConnId, Sock>,
    next_id: usize,
    zero_copy_min: usize,
    pub(crate) engine: Engine,
    /// Connections that may have something to send.
    dirty: Vec<ConnId>,
    accept_armed: bool,
    wake_armed: bool,
    /// Set in `drop`: operations that end are not re-armed.
    stopping: bool,
    cqes: Vec<(u64, i32, u32)>,
    /// Receives reaped and waiting their turn: every data-lane one (handled in order, up
    /// to a turn's byte budget), and any other of a socket with one here already. Each
    /// says whether `deferred` counts it.
    backlog: std::collections::VecDeque<Deferred>,
    /// Receives waiting in `backlog`, per socket; not a data socket's, all of whose
    /// receives wait there (so their order is kept without it). An accepted socket's
    /// lane is only known after its HELLO: until then its receives are counted.
    deferred: FxHashMap<ConnId, usize>,
    /// The ring accepts submissions (a deferred-task-work ring starts disabled).
    enabled: bool,
    /// The kernel flags task work it holds for us (`IORING_SETUP_TASKRUN_FLAG`, 5.19+), so
    /// a look that finds nothing to submit, reap or run mostly needs no system call: what
    /// lets a busy-polling driver spin in user space.
    flags_task_work: bool,
    /// Zero-timeout looks in a row that skipped the kernel (see `can_skip_enter`); a wait
    /// that enters does not reset it, which only makes the next forced enter come sooner.
    enters_skipped: u32,
    /// Completions the last reap found.
    last_reaped: usize,
    /// Whether the driver thread sleeps on several LNDs, on the ring's descriptor (see
    /// `wait_fd`); `Some(false)`: it cannot, and polls this LND instead. None: not asked.
    shared: Option<bool>,
    /// Started at the first bulk transfer; None until then, or if it could not be.
    mover: Option<Mover>,
    mover_failed: bool,
    /// The NI's busy-polling, which its bulk mover does too while it moves bytes.
    spin: Duration,
    /// How long the bulk mover polls after it last moved bytes, if longer than `spin`
    /// ([`crate::TcpConfig::mover_poll`]).
    mover_poll: Duration,
    /// A send was queued in the ring since the last `io_uring_enter` that submitted it (a
    /// poll's, or `send_posted`'s).
    sends_queued: bool,
    /// Busy-polling: the data connection this thread reads with plain `recv`s instead of
    /// a receive in the ring (it has none then): the last one a receive was to be armed
    /// on, after a receive completed or a dial connected (see [`Uring::poll_hot`]). Back
    /// to the ring before the thread sleeps.
    hot: Option<ConnId>,
    /// Looks at the sockets so far (`poll`, `poll_hot`, `prepare_wait`). A socket is
    /// written directly (see [`Uring::send_direct`]) once per look at most.
    looks: u64,
    /// Connections written directly in this look that have more to send since. They are
    /// sent at the start of the next look, with what else came by then: one write per
    /// socket per look, as one ring send at a time batched them (measured, 8-byte PUTs, 8
    /// in flight, busy-polling: a write per hand-over sent ~14% fewer a second). Every
    /// look that can precede a sleep starts with them (`poll`, `prepare_wait`).
    held: Vec<ConnId>,
}

impl Uring {
    /// Enables a ring created disabled; the calling thread becomes its only submitter.
    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    /// Whether a look that waits for nothing may skip `io_uring_enter`: nothing queued to
    /// submit, no task work flagged, no completions held back by an overflow, the last
    /// reap no burst, and not too many skips in a row. The flag alone is not proof: a
    /// kernel runs a bounded batch of task work per enter (20 items since 6.13) and keeps
    /// the rest without flagging it again, so after a burst, and every
    /// [`ENTER_AT_LEAST_EVERY`] looks anyway, the driver enters. Never with entries queued:
    /// `poll` leaves re-armed receives for the next look to submit.
    fn can_skip_enter(&mut self) -> bool {
        let sq = self.ring.submission();
        let idle = sq.is_empty() && !sq.taskrun() && !sq.cq_overflow();
        let skip = self.flags_task_work
            && idle
            && self.last_reaped < BURST
            && self.enters_skipped < ENTER_AT_LEAST_EVERY;
        self.enters_skipped = if skip { self.enters_skipped + 1 } else { 0 };
        skip
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::listener_addr(self.listener.as_ref())
    }

    pub(crate) fn waker(&self) -> Arc<dyn Wake> {
        Arc::new(UringWaker(self.wake_fd.clone()))
    }

    /// Queues an entry, submitting first if the queue is full.
    ///
    /// # Safety
    /// Everything the entry points at must stay valid until its completion (and, for a
    /// zero-copy send, its notification) has been reaped.
    unsafe fn push(&mut self, e: squeue::Entry) {
        // SAFETY: the caller vouches for the entry's memory.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            if let Err(err) = self.enable().and_then(|()| self.ring.submit()) {
                tracing::error!("io_uring submit failed: {err}");
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn connect(&mut self, peer: Nid, lane: Lane) {
        let Some(addr) = self.engine.dial_target(peer, lane, Instant::now()) else {
            return;
        };
        match new_socket(self.engine.local().id.nid) {
            Ok(fd) => self.dial(fd, addr, peer, lane),
            Err(e) => {
                self.engine
                    .dial_failed(peer, lane, io_error(&e, &format!("socket for {addr}")))
            }
        }
    }

    fn dial(&mut self, fd: OwnedFd, addr: SocketAddrV4, peer: Nid, lane: Lane) {
        let id = self.next_id;
        self.next_id += 1;
        let mut sock = Sock::new(fd, Some((*addr.ip()).into()));
        let sa = sys::sockaddr(addr);
        let e = opcode::Connect::new(
            Fd(sock.fd.as_raw_fd()),
            (&*sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
        .build()
        .user_data(user_data(id, CONNECT));
        sock.connect = Some(sa);
        self.socks.insert(id, sock);
        self.engine.dialled(id, peer, lane, Instant::now());
        // SAFETY: the address is boxed in the socket's `connect` field, which is cleared only
        // when this operation completes; the socket lives at least as long (see `reap`).
        unsafe { self.push(e) };
    }

    pub(crate) fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.engine.close(peer, lane, error);
        self.drop_closed();
    }

    /// Shuts down the sockets the engine let go; each is removed once idle.
    fn drop_closed(&mut self) {
        if !self.engine.has_closes() {
            return;
        }
        for id in self.engine.take_closes() {
            let Some(sock) = self.socks.get_mut(&id) else {
                continue;
            };
            sock.closing = true;
            sock.close_connection();
            if sock.connect.is_some() {
                let e = opcode::AsyncCancel::new(user_data(id, CONNECT))
                    .build()
                    .user_data(user_data(id, CANCEL));
                // SAFETY: a cancel request points at no memory.
                unsafe { self.push(e) };
            }
            self.reap(id);
        }
    }

    /// Removes a closing socket once no operation uses it or its memory any more.
    fn reap(&mut self, id: ConnId) {
        if self.socks.get(&id).is_some_and(|s| s.closing && s.idle()) {
            self.socks.remove(&id);
        }
    }

    /// For a thread sleeping on several LNDs: the ring's own descriptor, readable while
    /// completions wait in it. Deferred task work cannot wake a thread that sleeps outside
    /// `io_uring_enter` (neither the ring's descriptor nor a registered eventfd turns
    /// readable reliably; measured on 6.18), so at the first call the ring is rebuilt
    /// without it, which is possible only before its first submission. After that there is
    /// no descriptor to offer and the thread polls this LND every millisecond instead.
    pub(crate) fn wait_fd(&mut self) -> Option<std::os::fd::RawFd> {
        match self.shared {
            Some(true) => Some(self.ring.as_raw_fd()),
            Some(false) => None,
            None => {
                let shared = self.share_thread();
                if let Err(e) = &shared {
                    tracing::warn!("this io_uring cannot share its thread, polled instead: {e}");
                }
                self.shared = Some(shared.is_ok());
                self.wait_fd()
            }
        }
    }

    /// Before the thread sleeps on [`Uring::wait_fd`]: submits what is queued (`poll`
    /// leaves re-armed receives for this) and says whether anything is there to handle
    /// already.
    pub(crate) fn prepare_wait(&mut self) -> Readiness {
        if self.enable().is_err() {
            return Readiness::Ready; // the poll says why
        }
        // What `send_direct` held in the last look goes now: nothing waits through a sleep.
        self.new_look();
        self.flush_dirty();
        if let Err(e) = self.ring.submit() {
            tracing::warn!("io_uring submit failed: {e}");
        }
        self.engine
            .readiness(!self.ring.completion().is_empty() || !self.backlog.is_empty())
    }

    pub(crate) fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        if let Err(e) = self.enable() {
            let e = format!("cannot enable the io_uring: {e}");
            return self.fail_poll(events, LndError::new(LndErrorKind::Resource, e));
        }
        self.new_look();
        self.flush_dirty();
        let wait = self.engine.wait(timeout, !self.backlog.is_empty());
        if !wait.is_some_and(|d| d.is_zero()) {
            self.cool_hot(); // a sleep: the ring must hear the hot connection
        }
        let submitted = match wait {
            // Nothing to submit and no task work flagged: the completions there are can be
            // reaped without entering the kernel (a busy-polling driver spins here).
            Some(d) if d.is_zero() && self.can_skip_enter() => Ok(0),
            // Ask for events, waiting for none: the kernel runs the task work it holds,
            // deferred or not. (Every ring that defers task work flags it too.)
            Some(d) if d.is_zero() && self.flags_task_work => sys::enter_for_events(&mut self.ring),
            Some(d) if d.is_zero() => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
            Some(d) => {
                let ts = Timespec::new().sec(d.as_secs()).nsec(d.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        if let Err(e) = &submitted {
            // Timed out, interrupted, or completions to reap first: all fine.
            let benign = [libc::ETIME, libc::EINTR, libc::EBUSY, libc::EAGAIN];
            if sys::wrong_thread(e) {
                let error = LndError::new(
                    LndErrorKind::Resource,
                    "polled from another thread than the one that first polled it: an \
                     io_uring TCP LND belongs to that thread (move the worker before its \
                     first progress, or use LANET_TCP_BACKEND=epoll)",
                );
                return self.fail_poll(events, error);
            }
            if !benign.contains(&e.raw_os_error().unwrap_or(0)) {
                let e = format!("io_uring_enter failed: {e}");
                return self.fail_poll(events, LndError::new(LndErrorKind::Resource, e));
            }
        }
        if submitted.is_ok() {
            // What was queued went in (an error submits nothing): sends queued from here
            // on are this poll's answers.
            self.sends_queued = false;
        }
        self.reap_completions();
        if self.engine.accept_pause.take_due(Instant::now) && !self.accept_armed {
            self.arm_accept();
        }
        self.collect_moved();
        self.read_hot();
        self.finish_turn(events);
        Ok(())
    }

    /// A poll that fails hands over what the driver had gathered first (frames a hot look
    /// reaped, sends that completed), as the driver contract asks: the core handles them,
    /// then fails what the driver still holds.
    fn fail_poll(&mut self, events: &mut Vec<LndEvent>, error: LndError) -> Result<(), LndError> {
        events.append(&mut self.engine.events);
        Err(error)
    }

    /// The end of a look: answers written, deadlines, closed sockets, the core's events.
    fn finish_turn(&mut self, events: &mut Vec<LndEvent>) {
        self.flush_dirty();
        self.engine.expire_due();
        self.drop_closed();
        // Answers produced in this turn leave now, not a turn later. Receives, accepts and
        // the waker's read re-armed here (and cancels) wait for the next look, which
        // submits them before it waits or skips nothing (`can_skip_enter`, `prepare_wait`):
        // one `io_uring_enter` fewer per message received.
        self.submit_sends();
        events.append(&mut self.engine.events);
    }

    /// Handles what completed: everything but data-lane receives at once (health first,
    /// so a PONG is not stuck behind megabytes), then data-lane receives in order, up to
    /// [`DATA_RECV_PER_TURN`] bytes; the rest wait for the next turn, which does not block.
    fn reap_completions(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        self.last_reaped = cqes.len();
        for &(ud, res, flags) in &cqes {
            let conn = (ud >> 4) as ConnId;
            // A socket's receives stay in order: once one waits, the later ones wait too.
            // A data socket's always wait, so the queue keeps their order; the others are
            // counted in `deferred` while they wait (an accepted socket's lane is only
            // known after its HELLO is handled), and the later ones wait behind them.
            let kind = ud & 0xf;
            let lane = match kind {
                RECV => self.engine.lane_of(conn),
                _ => None,
            };
            let defer = (kind == RECV && lane != Some(Lane::Health))
                || ((kind == RECV || kind == RECV_HEALTH)
                    && !self.deferred.is_empty()
                    && self.deferred.contains_key(&conn));
            if defer {
                let counted = lane != Some(Lane::Data);
                if counted {
                    *self.deferred.entry(conn).or_default() += 1;
                }
                self.backlog.push_back(Deferred {
                    ud,
                    res,
                    flags,
                    counted,
                });
            } else {
                self.handle(ud, res, flags);
            }
        }
        cqes.clear();
        self.cqes = cqes;
        // Stopping, no turn follows: the whole backlog goes now (each handler only gives
        // its buffer back), or a large one would outlast the drop's wait and be leaked.
        let mut budget = if self.stopping {
            usize::MAX
        } else {
            DATA_RECV_PER_TURN
        };
        while budget > 0 {
            let Some(Deferred {
                ud,
                res,
                flags,
                counted,
            }) = self.backlog.pop_front()
            else {
                break;
            };
            let conn = (ud >> 4) as ConnId;
            if counted {
                if let Some(n) = self.deferred.get_mut(&conn) {
                    *n -= 1;
                    if *n == 0 {
                        self.deferred.remove(&conn);
                    }
                }
            }
            budget = budget.saturating_sub(res.max(1) as usize);
            self.handle(ud, res, flags);
        }
    }

    /// Fails `conn` for an error on its sending side, after handling its receives still
    /// set aside in the backlog: the kernel delivered those bytes before the failure (a
    /// peer's last frames, an answer among them), and the core hears them first, as it
    /// would have had they not waited. (Bytes not reaped yet, still in the socket or in a
    /// completion of this look to come, are not: a failed direct write, before this look's
    /// completions are reaped, loses them still. Epoll reads the socket first instead.)
    pub(super) fn fail_sending(&mut self, conn: ConnId, error: LndError) {
        let of_conn = |d: &Deferred| (d.ud >> 4) as ConnId == conn;
        if self.backlog.iter().any(of_conn) {
            let (waiting, others) = std::mem::take(&mut self.backlog)
                .into_iter()
                .partition::<std::collections::VecDeque<_>, _>(of_conn);
            self.backlog = others;
            self.deferred.remove(&conn);
            for d in waiting {
                self.handle(d.ud, d.res, d.flags);
            }
        }
        self.engine.fail(conn, error);
    }

    fn handle(&mut self, ud: u64, res: i32, flags: u32) {
        {
            let conn = (ud >> 4) as ConnId;
            match ud & 0xf {
                ACCEPT => self.on_accept(res, flags),
                WAKE => {
                    self.wake_armed = false;
                    self.arm_wake();
                }
                RECV => self.on_recv(conn, res, flags, false),
                RECV_HEALTH => self.on_recv(conn, res, flags, true),
                SEND => self.on_send(conn, res, flags),
                CONNECT => self.on_connect(conn, res),
                _ => {} // CANCEL
            }
        }
    }

    fn on_connect(&mut self, conn: ConnId, res: i32) {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        sock.connect = None;
        if sock.closing {
            return self.reap(conn);
        }
        if res == 0 {
            self.engine.established(conn);
            self.arm_recv(conn);
            self.dirty.push(conn);
        } else {
            let e = io::Error::from_raw_os_error(-res);
            self.engine.fail(conn, io_error(&e, "connect"));
        }
    }
}
