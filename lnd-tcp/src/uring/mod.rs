//! The io_uring backend: one ring per driver thread, with deferred task work; multishot
//! accept; receives into provided-buffer rings (the health lane multishot into its own
//! group, the data lane one buffer per receive); `sendmsg` (zero-copy `sendmsg` for large
//! messages) from memory that outlives each operation; everything queued during a turn
//! submitted with one `io_uring_enter`, which also waits. A busy-polling driver sends as
//! soon as the core has handed over (`send_posted`): small frames with a plain `sendmsg`
//! when nothing of the socket's is in the ring ([`Uring::send_direct`]), the rest in one
//! submission; and it reads its hot data connection with a plain `recv`, that connection
//! having no receive in the ring meanwhile (see [`Uring::poll_hot`]).
//!
//! A driver dropped writes what it still holds before it shuts its sockets down, as far
//! as they take it at once (see `Drop`).
//!
//! Bulk bytes do not cross the driver thread: large data-lane sends, and large payloads
//! (received in place, straight into the frame's buffer), are moved by a second thread
//! with a ring of its own ([`mover`]), so the driver thread stays free for the health
//! lane, the core and small messages.

mod bufring;
mod mover;
mod send;
mod sys;

use std::io;
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, Readiness, Transmit, Wake};
use lanet::nid::Nid;
use rustc_hash::FxHashMap;

use crate::engine::{ConnId, Engine};
use crate::io_error;
use bufring::BufRing;
pub(crate) use mover::POLL_WHILE_MOVING;
use mover::{Job, Moved, Mover};
use send::SendSlot;

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
}

struct UringWaker(Arc<OwnedFd>);

impl Wake for UringWaker {
    fn wake(&self) {
        if let Err(e) = sys::signal(self.0.as_fd()) {
            tracing::error!("cannot wake the TCP driver: {e}");
        }
    }
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
    socks: FxHashMap<ConnId, Sock>,
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
    /// Data-lane receives reaped but not yet handled: the budget of their turn ran out.
    backlog: std::collections::VecDeque<(u64, i32, u32)>,
    /// Receives waiting in `backlog`, per socket.
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
    /// Looks at the sockets so far (`poll`, `poll_hot`, `prepare_wait`). Busy-polling, a
    /// socket is written directly (see [`Uring::send_direct`]) once per look at most.
    looks: u64,
    /// Busy-polling: connections written directly in this look that have more to send
    /// since. They are written at the start of the next look, with what else came by then:
    /// one write per socket per look, as one ring send at a time batched them (measured,
    /// 8-byte PUTs, 8 in flight: a write per hand-over sent ~14% fewer a second).
    held: Vec<ConnId>,
}

impl Uring {
    /// Sets up a ring on this kernel, or says why it cannot (the caller falls back to epoll).
    pub(crate) fn new(
        engine: Engine,
        listener: io::Result<Option<TcpListener>>,
        zero_copy_min: usize,
        spin: Duration,
        mover_poll: Duration,
    ) -> io::Result<Uring> {
        let NewRing {
            ring,
            enabled,
            flags_task_work,
        } = new_ring(true)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::RecvMulti::CODE, "multishot recv"),
            (opcode::AcceptMulti::CODE, "multishot accept"),
            (opcode::SendMsg::CODE, "sendmsg"),
            (opcode::Connect::CODE, "connect"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks {name}"),
                ));
            }
        }
        // Zero-copy sends when the kernel has them; `usize::MAX` means never.
        let zero_copy_min = if probe.is_supported(opcode::SendMsgZc::CODE) {
            zero_copy_min
        } else {
            usize::MAX
        };
        let (bufs, health_bufs) = new_buffers(&ring)?;
        let listener = listener?;
        let mut u = Uring {
            ring,
            bufs: ManuallyDrop::new(bufs),
            health_bufs: ManuallyDrop::new(health_bufs),
            listener,
            wake_fd: Arc::new(sys::eventfd()?),
            wake_buf: Box::new(0),
            socks: FxHashMap::default(),
            next_id: 1,
            zero_copy_min,
            engine,
            dirty: Vec::new(),
            accept_armed: false,
            wake_armed: false,
            stopping: false,
            cqes: Vec::with_capacity(RING_ENTRIES as usize),
            backlog: std::collections::VecDeque::new(),
            deferred: FxHashMap::default(),
            enabled,
            flags_task_work,
            enters_skipped: 0,
            looks: 1,
            held: Vec::new(),
            last_reaped: 0,
            shared: None,
            mover: None,
            mover_failed: false,
            spin,
            mover_poll,
            sends_queued: false,
            hot: None,
        };
        u.arm_accept();
        u.arm_wake();
        if u.enabled {
            u.ring.submit()?;
        }
        Ok(u)
    }

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

    /// Task work runs only when we ask for completions. Deferred task work is only ever
    /// set up together with a single issuer, which the ring's parameters still tell.
    fn defers_task_work(&self) -> bool {
        self.ring.params().is_setup_single_issuer()
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

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        if self.stopping {
            return;
        }
        self.accept_armed = true;
        let e = opcode::AcceptMulti::new(Fd(listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(0, ACCEPT));
        // SAFETY: the entry points at no memory; the listener lives as long as the ring.
        unsafe { self.push(e) };
    }

    fn arm_wake(&mut self) {
        if self.stopping {
            return;
        }
        self.wake_armed = true;
        let e =
            sys::wake_read(self.wake_fd.as_fd(), &mut self.wake_buf).user_data(user_data(0, WAKE));
        // SAFETY: `wake_buf` is boxed (stable address) and lives as long as the ring; only
        // one wake read is ever pending.
        unsafe { self.push(e) };
    }

    fn arm_recv(&mut self, conn: ConnId) {
        if self.hot == Some(conn) || !self.socks.get(&conn).is_some_and(|s| !s.recv && !s.closing) {
            return;
        }
        let lane = self.engine.lane_of(conn);
        if lane == Some(Lane::Data) && self.receive_in_place(conn) {
            return;
        }
        if lane == Some(Lane::Data) && self.busy_polling() {
            // Read by this thread from now on; the one it replaces goes back to the ring.
            if let Some(cooled) = self.hot.replace(conn) {
                self.back_to_ring(cooled);
            }
            return;
        }
        self.arm_ring_recv(conn, lane);
    }

    /// Arms a receive in the ring on `conn`, whose lane the engine says is `lane` (see
    /// [`Uring::arm_recv`]).
    fn arm_ring_recv(&mut self, conn: ConnId, lane: Option<Lane>) {
        // Never two readers of a socket: the hot one is read by this thread.
        debug_assert_ne!(self.hot, Some(conn), "a ring receive on the hot connection");
        let Some(sock) = self.socks.get_mut(&conn).filter(|s| !s.recv && !s.closing) else {
            return;
        };
        sock.recv = true;
        // Accepted sockets learn their lane from the HELLO: until then, data buffers.
        let health = lane == Some(Lane::Health);
        let poll_first = if sock.drained { RECV_POLL_FIRST } else { 0 };
        let fd = Fd(sock.fd.as_raw_fd());
        let e = match health {
            true => opcode::RecvMulti::new(fd, self.health_bufs.bgid())
                .build()
                .user_data(user_data(conn, RECV_HEALTH)),
            // Data: one buffer per receive, re-armed when handled. A multishot receive on
            // a socket that never runs dry keeps copying inside one `io_uring_enter` for as
            // long as the sender keeps up (measured: 4 MiB, 1.5 ms), and the health lane
            // waits behind it.
            false => opcode::Recv::new(fd, std::ptr::null_mut(), RECV_BUFFER_SIZE as u32)
                .buf_group(self.bufs.bgid())
                .ioprio(poll_first)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(conn, RECV)),
        };
        // SAFETY: the receive writes into provided buffers, which live as long as the ring;
        // the socket stays open until this operation has completed (see `reap`).
        unsafe { self.push(e) };
    }

    /// When the rest of the frame arriving on `conn` is a large payload, has the bulk
    /// mover receive it in place, straight into the frame's buffer. True if it does.
    fn receive_in_place(&mut self, conn: ConnId) -> bool {
        let rest = self
            .engine
            .conn_mut(conn)
            .map_or(0, |c| c.rx.rest_of_frame());
        if rest < BULK_MIN || self.mover().is_none() {
            return false;
        }
        let (Some(sock), Some(c)) = (self.socks.get_mut(&conn), self.engine.conn_mut(conn)) else {
            return false;
        };
        sock.recv = true;
        sock.mover_recv = true;
        let job = Job::Recv {
            conn,
            fd: sock.fd.as_raw_fd(),
            buf: c.rx.take_tail(rest),
            len: rest,
        };
        if let Err(job) = self.mover.as_mut().expect("started above").submit(job) {
            self.mover_gone(job);
        }
        true
    }

    /// The bulk mover thread died and could not take `job`: see [`Self::retire_mover`].
    fn mover_gone(&mut self, job: Job) {
        drop(job); // never given to the kernel
        self.retire_mover();
    }

    /// The bulk mover thread died (a bug; it said why as it panicked): what it held never
    /// comes back (its memory is leaked, as the kernel may still use it). Each connection
    /// it held bytes of fails, its counts start over, and bulk transfers run on this
    /// thread's ring from now on.
    fn retire_mover(&mut self) {
        tracing::error!("the bulk mover thread died: its connections fail");
        self.mover = None;
        self.mover_failed = true;
        let held: Vec<ConnId> = (self.socks.iter())
            .filter(|(_, s)| s.moving > 0 || s.mover_recv)
            .map(|(&conn, _)| conn)
            .collect();
        for conn in held {
            let sock = self.socks.get_mut(&conn).expect("listed above");
            if sock.mover_recv {
                sock.recv = false;
                sock.mover_recv = false;
            }
            sock.moving = 0;
            sock.moving_bytes = 0;
            sock.send.get_or_insert_with(SendSlot::new);
            let e = LndError::new(LndErrorKind::Resource, "the bulk mover thread died");
            self.engine.fail(conn, e);
            self.reap(conn);
        }
    }

    /// The bulk mover, started on first use. None if it cannot be started (said once);
    /// then bulk transfers run on this thread's ring.
    fn mover(&mut self) -> Option<&Mover> {
        if self.mover.is_none() && !self.mover_failed {
            // Busy-polling is for an NI alone on its thread (whose driver spins too); a
            // thread on several NIs asks for `wait_fd`, and then this one never spins.
            // A mover polls while it moves bytes either way, for `mover_poll` or the
            // NI's spin, the longer (`mover::poll_window`).
            let spin = match self.shared {
                Some(_) => Duration::ZERO,
                None => self.spin,
            };
            match Mover::start(
                "lanet-bulk".into(),
                self.wake_fd.clone(),
                spin,
                self.mover_poll,
            ) {
                Ok(m) => self.mover = Some(m),
                Err(e) => {
                    tracing::warn!(
                        "no bulk mover thread ({e}); bulk copies stay on the driver thread"
                    );
                    self.mover_failed = true;
                }
            }
        }
        self.mover.as_ref()
    }

    /// Sends what `conn` has queued, unless a send (or its notification) is pending, the
    /// bulk mover has [`MOVER_SENDS`] of its messages, or the socket is still connecting
    /// (the completion queues it for a flush again, if anything waits), or it is closing
    /// (nothing more goes out). While the mover sends, only a message it sends too may
    /// follow (after those it has); another waits for them.
    fn flush(&mut self, conn: ConnId) {
        if self.busy_polling() && self.send_direct(conn) {
            return; // written, held for the next look, or failed
        }
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        if sock.sending
            || sock.notif
            || sock.closing
            || sock.connect.is_some()
            || sock.moving >= MOVER_SENDS
        {
            return;
        }
        let Some((c, lane)) = self.engine.conn_and_lane(conn) else {
            return;
        };
        if !c.wants_write() {
            return;
        }
        let behind_mover = sock.moving > 0;
        if behind_mover && !c.tx.unwritten_exceeds(sock.moving_bytes) {
            return; // the mover has it all
        }
        let slot = match sock.send.as_mut() {
            Some(slot) => slot,
            None if behind_mover => sock.spare.get_or_insert_with(SendSlot::new),
            None => unreachable!("the slot is home while nothing is sending"),
        };
        let len = slot.fill(&c.tx, sock.moving_bytes);
        let zero_copy = sock.zero_copy && len >= self.zero_copy_min;
        let data = lane == Some(Lane::Data);
        let bulk = data && !zero_copy && len >= BULK_MIN;
        if behind_mover && (!bulk || self.stopping) {
            // Nothing past the mover's, or too little for it: sent once the mover is done.
            // (A driver being dropped stops its mover: nothing behind it goes.)
            slot.release();
            return;
        }
        // A driver being dropped sends what it holds inline, as far as the socket takes it
        // at once (its sockets are shut down next): neither the mover nor a kernel worker.
        if bulk && !self.stopping && self.mover().is_some() {
            let sock = self.socks.get_mut(&conn).expect("checked above");
            let slot = match sock.send.take() {
                Some(slot) => slot,
                None => sock.spare.take().expect("filled above"),
            };
            sock.moving += 1;
            sock.moving_bytes += len;
            let more = sock.moving < MOVER_SENDS;
            let job = Job::Send {
                conn,
                fd: sock.fd.as_raw_fd(),
                slot,
                broken: sock.broken.get_or_insert_with(Default::default).clone(),
            };
            if let Err(job) = self.mover.as_mut().expect("started above").submit(job) {
                return self.mover_gone(job);
            }
            if more {
                self.flush(conn); // the next message, for the mover to start as this ends
            }
            return;
        }
        let sock = self.socks.get_mut(&conn).expect("checked above");
        let slot = sock.send.as_ref().expect("home");
        let fd = Fd(sock.fd.as_raw_fd());
        // MSG_WAITALL: the kernel keeps sending until the whole message is out, instead of
        // completing after the first partial write when the socket buffer is full.
        // MSG_NOSIGNAL, which the kernel adds to io_uring's sends anyway: a socket shut
        // down under a send fails it with EPIPE, no SIGPIPE.
        let flags = (libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32;
        let e = if zero_copy {
            opcode::SendMsgZc::new(fd, slot.msghdr())
                .flags(flags)
                .build()
        } else {
            opcode::SendMsg::new(fd, slot.msghdr()).flags(flags).build()
        };
        // Without a mover, large data-lane sends run on a kernel worker thread: inline, a
        // loopback send of 512 KiB held this thread in `io_uring_enter` for ~1 ms (it also
        // runs the receiver's TCP input), and the health lane waited behind it.
        let e = match data && len >= BULK_MIN && !self.stopping {
            true => e.flags(squeue::Flags::ASYNC),
            false => e,
        };
        sock.sending = true;
        self.sends_queued = true;
        // SAFETY: the message lives in the boxed send slot, whose staging copies and held
        // `Bytes` are not touched or released until the send (and any notification)
        // completes: `sending`/`notif` guard refills, and `reap` keeps the slot until then.
        unsafe { self.push(e.user_data(user_data(conn, SEND))) };
    }

    /// Busy-polling: writes what `conn` has queued with a plain `sendmsg`, if its unsent
    /// frames come to less than [`BULK_MIN`] and nothing of the socket's is in the ring
    /// (so its bytes stay in order); if the socket was written so in this look already,
    /// holds it for the next (see [`Uring::held`]). True if that was the end of it: all
    /// written, held, or the connection failed; false leaves the rest (or all, if the
    /// socket was full) to the ring. The busy-polling loop then makes one system call per
    /// message sent, as for one received ([`Self::poll_hot`]), and a cheaper one than the
    /// `io_uring_enter` that would submit and complete the send (measured:
    /// bench/RESULTS.md, "2026-12-06 (dusk)").
    fn send_direct(&mut self, conn: ConnId) -> bool {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return false;
        };
        if sock.sending || sock.notif || sock.closing || sock.connect.is_some() || sock.moving > 0 {
            return false;
        }
        let Some(c) = self.engine.conn_mut(conn) else {
            return false;
        };
        if !c.wants_write() || c.tx.unwritten_exceeds(BULK_MIN - 1) {
            return false;
        }
        if sock.written_look == self.looks {
            self.held.push(conn);
            return true;
        }
        sock.written_look = self.looks;
        match crate::direct::write_queue(&sock.fd, &c.tx, BULK_MIN) {
            Ok(n) => !self.engine.wrote(conn, n),
            Err(e) if crate::direct::nothing_now(&e) => false,
            Err(e) => {
                self.engine.fail(conn, io_error(&e, "send"));
                true
            }
        }
    }

    /// A look begins: what [`Self::send_direct`] held is flushed with it.
    fn new_look(&mut self) {
        self.looks += 1;
        self.dirty.append(&mut self.held);
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

    /// Sends for every connection that may have something queued. Most calls find none (a
    /// poll asks before and after it reaps): that look is made where it is called.
    #[inline]
    fn flush_dirty(&mut self) {
        if !self.dirty.is_empty() {
            self.flush_each_dirty();
        }
    }

    /// [`Self::flush_dirty`]'s work. The list keeps its capacity: no allocation per turn.
    fn flush_each_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &conn in &dirty {
            self.flush(conn); // never adds to `dirty`
        }
        dirty.clear();
        self.dirty = dirty;
    }

    pub(crate) fn post(&mut self, tx: Transmit) {
        // Sent with the next submission: everything posted in a turn goes out together.
        if let Some(conn) = self.engine.post(tx) {
            self.dirty.push(conn);
        }
    }

    /// The hand-over is complete. Busy-polling, its sends go now (written directly, see
    /// [`Self::send_direct`], or in one submission), rather than with the next poll's,
    /// after the core has run the application's callbacks (8-byte message rate with ACK:
    /// 1.17-1.22x UCX's before, 1.37-1.50x after). Sleeping, they still go with the
    /// `io_uring_enter` that also waits: one system call per turn.
    pub(crate) fn send_posted(&mut self) {
        if !self.busy_polling() || self.enable().is_err() {
            return; // the poll says why
        }
        self.flush_dirty();
        self.submit_sends();
    }

    /// What is known without polling: the sends [`Self::send_direct`] wrote (and a
    /// connection it found failed), for the core at once rather than at the next poll.
    pub(crate) fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        self.drop_closed();
        events.append(&mut self.engine.events);
    }

    /// Whether this driver busy-polls: a thread on several NIs (`shared`) sleeps on them
    /// all, and never spins.
    fn busy_polling(&self) -> bool {
        self.shared.is_none() && !self.spin.is_zero()
    }

    /// Busy-polling: one look that reads the hot connection with a plain `recv` and
    /// takes the completions already in the ring, without entering the kernel for them.
    /// A frame on the hot connection then takes one system call from its arrival to its
    /// handling (the `recv`), where a receive in the ring takes an `io_uring_enter` that
    /// runs the kernel's task work for it, and the copy out of a provided buffer after
    /// (measured: `lanet-bench latency --spin`, bench/RESULTS.md). The busy-polling loop
    /// still polls in full every few looks, for the task work of the other sockets
    /// (the health lane's among them).
    ///
    /// False, having read nothing from the hot connection, where a full poll is wanted
    /// (what it reaped, and the events of that, go up with the full poll): no hot connection;
    /// receives held back or events to hand over; or frames of the hot connection not
    /// yet written out (a send in the kernel, whose completion may need the task work
    /// only an `io_uring_enter` runs; frames behind the mover's sends or a zero-copy
    /// send's notification): a sender whose socket is full would otherwise see it free
    /// up to eight looks late.
    pub(crate) fn poll_hot(&mut self, events: &mut Vec<LndEvent>) -> bool {
        if self.hot.is_none() || self.enable().is_err() {
            return false; // (the full poll says why it cannot enable)
        }
        self.new_look();
        self.flush_dirty();
        self.submit_sends();
        // Sends that completed as they were submitted are in the ring already; what the
        // mover finished is taken with them, as after every reap (its wake may be among
        // them). A burst the last full poll reaped still counts (`can_skip_enter`).
        if !self.ring.completion().is_empty() {
            let burst = self.last_reaped;
            self.reap_completions();
            self.collect_moved();
            self.last_reaped = self.last_reaped.max(burst);
        }
        // (That reap may have made another connection hot.)
        let Some(hot) = self.hot else {
            return false;
        };
        let writing = self.engine.conn_mut(hot).is_some_and(|c| c.wants_write());
        if writing || !self.backlog.is_empty() || !self.engine.events.is_empty() {
            return false;
        }
        // A look that does not enter the kernel, as a skipped one: the forced enters
        // (`can_skip_enter`) count these too.
        self.enters_skipped = self.enters_skipped.saturating_add(1);
        self.read_hot();
        self.finish_turn(events);
        true
    }

    /// Reads what the hot connection has (one `recv`); a large frame starting goes to the
    /// bulk mover, which receives it in place.
    fn read_hot(&mut self) {
        let Some(conn) = self.hot else {
            return;
        };
        let (Some(sock), Some(c)) = (self.socks.get(&conn), self.engine.conn_mut(conn)) else {
            self.hot = None;
            return;
        };
        if sock.closing {
            self.hot = None;
            return;
        }
        let res = match crate::direct::recv_into(&sock.fd, c.rx.read_buf()) {
            Ok(n) => n as i32,
            Err(e) if crate::direct::nothing_now(&e) => return,
            Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
        };
        if res == -libc::ENOBUFS || res == -libc::ECANCELED {
            // Not a plain receive's errors, and `after_recv` would take them for a ring
            // receive's end: back to the ring, rather than no reader at all.
            return self.cool_hot();
        }
        // (`drained` is left as it is: nothing reads it until the connection goes back
        // to the ring, which sets it.)
        self.after_recv(conn, res, true);
        if res <= 0 {
            self.hot = None; // the connection failed (after_recv said so)
            return;
        }
        // The rest of a large frame is the mover's to receive, in place.
        let rest = self
            .engine
            .conn_mut(conn)
            .map_or(0, |c| c.rx.rest_of_frame());
        if rest >= BULK_MIN && self.mover().is_some() {
            self.hot = None;
            self.arm_recv(conn);
        }
    }

    /// Before the thread sleeps (or when a read of it fails as only a ring receive
    /// should): the hot connection goes back to a receive in the ring, which wakes it.
    fn cool_hot(&mut self) {
        if let Some(conn) = self.hot.take() {
            self.back_to_ring(conn);
        }
    }

    /// A connection this thread read (no longer `hot`) gets a receive in the ring again,
    /// flagged drained (it polls first): what came since the last read fires it at once.
    fn back_to_ring(&mut self, conn: ConnId) {
        if let Some(sock) = self.socks.get_mut(&conn) {
            sock.drained = true;
        }
        let lane = self.engine.lane_of(conn);
        self.arm_ring_recv(conn, lane);
    }

    /// Submits the sends queued since the last submission, if any (what else is queued
    /// goes with them).
    fn submit_sends(&mut self) {
        if self.sends_queued && !self.ring.submission().is_empty() {
            match self.ring.submit() {
                Ok(_) => self.sends_queued = false,
                Err(e) => tracing::warn!("io_uring submit failed: {e}"),
            }
        }
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
            sys::shutdown(sock.fd.as_fd());
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

    /// Whether the bulk mover is moving bytes for this LND: a busy-polling driver thread
    /// then sleeps instead, or it would take the CPU the mover needs (on 2 cores, two
    /// spinning drivers cut a 1 MiB stream from ~5 GB/s to 0.2).
    pub(crate) fn bulk_busy(&self) -> bool {
        self.mover.as_ref().is_some_and(Mover::busy)
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

    /// Swaps the ring, still disabled and unsubmitted, for one whose task work runs at any
    /// system call and whose completions wake a `poll` on its descriptor.
    fn share_thread(&mut self) -> io::Result<()> {
        if !self.defers_task_work() {
            return Ok(());
        }
        if self.enabled {
            return Err(io::Error::other("already running with deferred task work"));
        }
        let NewRing {
            ring,
            enabled,
            flags_task_work,
        } = new_ring(false)?;
        let (bufs, health_bufs) = new_buffers(&ring)?;
        // The old ring never ran: the entries queued in it (accept, wake) go with it and
        // are armed anew; its buffers were never handed to the kernel.
        self.free_buffers();
        self.ring = ring;
        self.bufs = ManuallyDrop::new(bufs);
        self.health_bufs = ManuallyDrop::new(health_bufs);
        self.enabled = enabled;
        self.flags_task_work = flags_task_work;
        self.accept_armed = false;
        self.wake_armed = false;
        self.arm_accept();
        self.arm_wake();
        self.ring.submit()?;
        Ok(())
    }

    /// Before the thread sleeps on [`Uring::wait_fd`]: submits what is queued (`poll`
    /// leaves re-armed receives for this) and says whether anything is there to handle
    /// already.
    pub(crate) fn prepare_wait(&mut self) -> Readiness {
        if self.enable().is_err() {
            return Readiness::Ready; // the poll says why
        }
        self.new_look(); // (a shared thread never busy-polls: nothing is held)
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
        self.enable().map_err(|e| {
            LndError::new(
                LndErrorKind::Resource,
                format!("cannot enable the io_uring: {e}"),
            )
        })?;
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
            if !benign.contains(&e.raw_os_error().unwrap_or(0)) {
                return Err(LndError::new(
                    LndErrorKind::Resource,
                    format!("io_uring_enter failed: {e}"),
                ));
            }
        }
        if submitted.is_ok() {
            // What was queued went in (an error submits nothing): sends queued from here
            // on are this poll's answers.
            self.sends_queued = false;
        }
        self.reap_completions();
        self.collect_moved();
        self.read_hot();
        self.finish_turn(events);
        Ok(())
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
            // A socket's receives stay in order: once one waits, the later ones wait too
            // (an accepted socket's lane is only known after its HELLO is handled).
            let kind = ud & 0xf;
            let defer = (kind == RECV && self.engine.lane_of(conn) != Some(Lane::Health))
                || ((kind == RECV || kind == RECV_HEALTH) && self.deferred.contains_key(&conn));
            if defer {
                *self.deferred.entry(conn).or_default() += 1;
                self.backlog.push_back((ud, res, flags));
            } else {
                self.handle(ud, res, flags);
            }
        }
        cqes.clear();
        self.cqes = cqes;
        let mut budget = DATA_RECV_PER_TURN;
        while budget > 0 {
            let Some((ud, res, flags)) = self.backlog.pop_front() else {
                break;
            };
            let conn = (ud >> 4) as ConnId;
            if let Some(n) = self.deferred.get_mut(&conn) {
                *n -= 1;
                if *n == 0 {
                    self.deferred.remove(&conn);
                }
            }
            budget = budget.saturating_sub(res.max(1) as usize);
            self.handle(ud, res, flags);
        }
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

    fn on_accept(&mut self, res: i32, flags: u32) {
        if res >= 0 {
            let fd = sys::own(res);
            match crate::tune_socket(&fd) {
                Ok(()) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let peer = socket2::SockRef::from(&fd)
                        .peer_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .map(|a| a.ip());
                    self.socks.insert(id, Sock::new(fd, peer));
                    // May close the oldest awaiting its HELLO (see `drop_closed`).
                    self.engine.accepted(id, peer, Instant::now());
                    self.arm_recv(id);
                }
                Err(e) => tracing::warn!("dropping an accepted connection: {e}"),
            }
        } else if !self.stopping && res != -libc::ECANCELED {
            tracing::warn!("accept failed: {}", io::Error::from_raw_os_error(-res));
        }
        if !cqueue::more(flags) {
            self.accept_armed = false;
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, conn: ConnId, res: i32, flags: u32, health_bufs: bool) {
        let bid = cqueue::buffer_select(flags);
        let alive = match self.socks.get_mut(&conn) {
            Some(s) => {
                if !health_bufs {
                    s.drained = res > 0 && !cqueue::sock_nonempty(flags);
                }
                !s.closing
            }
            None => false,
        };
        let ring = match health_bufs {
            true => &mut self.health_bufs,
            false => &mut self.bufs,
        };
        if let Some(bid) = bid {
            if let (true, Some(c)) = (res > 0 && alive, self.engine.conn_mut(conn)) {
                c.rx.extend(ring.data(bid, res as usize));
            }
            ring.recycle(bid);
        }
        self.after_recv(conn, res, alive);
        if !cqueue::more(flags) {
            self.recv_ended(conn);
        }
    }

    /// The bytes of a receive are in `conn`'s framer (`res > 0`), or it failed.
    fn after_recv(&mut self, conn: ConnId, res: i32, alive: bool) {
        if !alive {
            return;
        }
        if res > 0 {
            self.engine.received(conn, Instant::now);
            // A handshake's frames may have answers to send (an up connection's frames
            // queue none; frames of its own already wait for their send's completion).
            if self.engine.conn_mut(conn).is_some_and(|c| c.wants_write()) {
                self.dirty.push(conn);
            }
        } else if res == 0 {
            self.engine.fail(
                conn,
                LndError::new(LndErrorKind::Reset, "connection closed by the peer"),
            );
        } else if res != -libc::ENOBUFS && res != -libc::ECANCELED {
            let e = io::Error::from_raw_os_error(-res);
            self.engine.fail(conn, io_error(&e, "receive"));
        }
    }

    /// No receive is armed on `conn` any more: arm the next, unless the socket is going
    /// away (ENOBUFS ends a multishot receive too).
    fn recv_ended(&mut self, conn: ConnId) {
        if let Some(sock) = self.socks.get_mut(&conn) {
            sock.recv = false;
        }
        self.arm_recv(conn);
        self.reap(conn);
    }

    /// Takes back what the bulk mover finished: send slots and received payloads; and
    /// retires it if it died.
    fn collect_moved(&mut self) {
        // Read first: once it says so, all the mover handed back is there to take.
        let died = self.mover.as_ref().is_some_and(Mover::died);
        while let Some(done) = self.mover.as_mut().and_then(Mover::try_done) {
            let conn = done.conn;
            match done.moved {
                Moved::Send(slot) => self.on_moved_send(conn, done.res, slot),
                Moved::Recv(buf) => {
                    let alive = match self.socks.get_mut(&conn) {
                        Some(s) => {
                            // The mover read a whole payload; what follows may be there.
                            s.drained = false;
                            s.mover_recv = false;
                            !s.closing
                        }
                        None => false,
                    };
                    if let (true, Some(c)) = (done.res > 0 && alive, self.engine.conn_mut(conn)) {
                        c.rx.append_tail(buf);
                    }
                    self.after_recv(conn, done.res, alive);
                    self.recv_ended(conn);
                }
            }
        }
        if died {
            self.retire_mover();
        }
    }

    fn on_send(&mut self, conn: ConnId, res: i32, flags: u32) {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        let slot = sock.send.as_mut().expect("a finished send's slot is home");
        if cqueue::notif(flags) {
            sock.notif = false;
            slot.release();
            self.dirty.push(conn);
            return self.reap(conn);
        }
        sock.sending = false;
        if cqueue::more(flags) {
            sock.notif = true; // zero-copy: the memory is in use until the notification
        } else {
            slot.release();
        }
        let closing = sock.closing;
        if res > 0 && !closing {
            if self.engine.wrote(conn, res as usize) {
                self.dirty.push(conn); // more waits: the rest, or frames posted meanwhile
            }
        } else if !closing {
            let e = if res == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "send wrote nothing")
            } else {
                io::Error::from_raw_os_error(-res)
            };
            self.engine.fail(conn, io_error(&e, "send"));
        }
        self.reap(conn);
    }

    /// The bulk mover sent a message (`res`: its bytes, or a negated errno), or failed to.
    /// Anything short of the whole message fails the connection: the mover may already
    /// be sending the next one, so the rest cannot be sent again in its place.
    fn on_moved_send(&mut self, conn: ConnId, res: i32, mut slot: Box<SendSlot>) {
        let Some(sock) = self.socks.get_mut(&conn) else {
            return;
        };
        let len = slot.len;
        slot.release();
        sock.moving -= 1;
        sock.moving_bytes -= len;
        match &mut sock.send {
            home @ None => *home = Some(slot),
            Some(_) => sock.spare = Some(slot),
        }
        if sock.closing {
            return self.reap(conn);
        }
        if res >= 0 && res as usize == len {
            if self.engine.wrote(conn, len) {
                // More is queued: the mover's other message, or frames past it.
                self.dirty.push(conn);
            }
        } else {
            let e = match res {
                ..0 => io::Error::from_raw_os_error(-res),
                _ => io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("the send ended after {res} of {len} bytes"),
                ),
            };
            self.engine.fail(conn, io_error(&e, "send"));
        }
        self.reap(conn);
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

impl Drop for Uring {
    /// Writes what the core handed over last, as far as the sockets take it at once; then
    /// stops every operation and waits for the kernel to let go of their memory before it
    /// is freed; if the kernel does not answer in time, the memory is leaked, not freed.
    fn drop(&mut self) {
        self.stopping = true;
        if !self.enabled {
            // Nothing was ever submitted: only the buffer rings to unregister.
            self.free_buffers();
            return;
        }
        // What the core handed over last still goes, as far as the sockets take it now:
        // frames held for the next look, or queued for a poll that will not come (a node's
        // last turn is not followed by one). Sends the ring cannot finish at once are
        // cancelled below with everything else. Not while unwinding from a panic, which
        // may have left the queues inconsistent (a second panic would abort).
        if !std::thread::panicking() {
            self.new_look();
            self.flush_dirty();
            if let Err(e) = self.ring.submit() {
                tracing::warn!("io_uring submit failed at close: {e}");
            }
        }
        // The listener too: a pending accept would keep it listening after we are gone, and
        // peers would connect to a node that never answers.
        if let Some(listener) = &self.listener {
            sys::shutdown(listener.as_fd());
        }
        for sock in self.socks.values_mut() {
            sock.closing = true;
            sys::shutdown(sock.fd.as_fd());
        }
        let cancel_all = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any())
            .build()
            .user_data(user_data(0, CANCEL));
        // SAFETY: a cancel request points at no memory.
        unsafe { self.push(cancel_all) };
        self.collect_moved(); // a mover that died is retired, not stopped
        if let Some(mover) = self.mover.as_mut() {
            mover.stop();
            self.collect_moved();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let busy =
            |u: &Uring| u.accept_armed || u.wake_armed || u.socks.values().any(|s| !s.idle());
        while busy(self) && Instant::now() < deadline {
            sys::wait_briefly(&self.ring);
            self.reap_completions();
        }
        if busy(self) {
            tracing::error!("io_uring operations still pending at close; leaking their buffers");
            for (_, sock) in self.socks.drain() {
                std::mem::forget(sock);
            }
            return; // `bufs` stays leaked: ManuallyDrop
        }
        self.free_buffers();
    }
}

impl Uring {
    /// Unregisters and frees both buffer rings. Only once no operation is pending.
    fn free_buffers(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(self.bufs.bgid());
        let _ = self
            .ring
            .submitter()
            .unregister_buf_ring(self.health_bufs.bgid());
        // SAFETY: called from `drop`, when no operation is pending, or from `share_thread`
        // on a ring that never ran, just before both fields are overwritten; both buffer
        // groups are unregistered, so the kernel no longer reads the rings or writes the
        // buffers, and neither is used after this.
        unsafe {
            ManuallyDrop::drop(&mut self.bufs);
            ManuallyDrop::drop(&mut self.health_bufs);
        }
    }
}

fn new_socket(local: Nid) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(crate::dial_socket(local)?);
    crate::tune_socket(&fd)?;
    Ok(fd)
}

/// A new ring and what it was set up with.
struct NewRing {
    ring: IoUring,
    /// Whether it is enabled already.
    enabled: bool,
    /// Whether the kernel flags pending task work in the ring (5.19+).
    flags_task_work: bool,
}

/// A ring. With `defer`, deferred task work (6.1+): the kernel's receive copies run only
/// inside our own `io_uring_enter`, a bounded batch at a time, not at whatever system call
/// this thread makes next. It needs a single issuer, and the issuer is the thread that
/// enables the ring: the driver thread, at its first poll, not the one creating us. Older
/// kernels get a plain ring.
fn new_ring(defer: bool) -> io::Result<NewRing> {
    if defer {
        let deferred = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(RING_ENTRIES);
        if let Ok(ring) = deferred {
            return Ok(NewRing {
                ring,
                enabled: false,
                flags_task_work: true,
            });
        }
    }
    let flagged = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES);
    let (ring, flags_task_work) = match flagged {
        Ok(ring) => (ring, true),
        Err(_) => (IoUring::new(RING_ENTRIES)?, false),
    };
    Ok(NewRing {
        ring,
        enabled: true,
        flags_task_work,
    })
}

/// The receive buffer groups, registered with `ring`: data lane and health lane.
fn new_buffers(ring: &IoUring) -> io::Result<(BufRing, BufRing)> {
    let submitter = ring.submitter();
    let data = BufRing::new(&submitter, DATA_GROUP, RECV_BUFFERS, RECV_BUFFER_SIZE)?;
    match BufRing::new(&submitter, HEALTH_GROUP, HEALTH_BUFFERS, HEALTH_BUFFER_SIZE) {
        Ok(health) => Ok((data, health)),
        Err(e) => {
            // The kernel lets go of the first group before its memory is freed.
            let _ = submitter.unregister_buf_ring(DATA_GROUP);
            Err(e)
        }
    }
}
