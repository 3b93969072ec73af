//! The bulk mover: a thread with a ring of its own that runs the data lane's large sends
//! and in-place payload receives, so the kernel copies bulk bytes on that thread, not on
//! the driver thread. The driver thread keeps the health lane, the core and small frames;
//! under a saturating stream it used to spend most of its time copying (measured: 92% of
//! a CPU, 63% in the kernel), and a PONG waited for it.
//!
//! The driver hands over the memory with each job (the send slot, the receive buffer) and
//! gets it back with the result, so the memory an operation points at is owned by the
//! mover for as long as the kernel may touch it. The socket stays open meanwhile: the
//! driver keeps a socket until every operation on it has come back.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use io_uring::types::Fd;
use io_uring::{opcode, squeue, IoUring};
use rustc_hash::FxHashMap;

use super::send::SendSlot;
use super::sys;
use crate::engine::ConnId;

/// The ring's submission queue: entries queued between two submissions at most (every
/// job is started as it is taken; a full queue is submitted before more are queued).
const RING_ENTRIES: u32 = 256;
/// Bytes per receive at most: a frame's payload of up to 1 MiB in one receive and one copy.
/// Under a raised mark (a rest of 128 KiB or more, see `crate::low_water`) the receive
/// waits for the mark before it tries; below, it waits for all it asks (MSG_WAITALL).
const RECV_PIECE: usize = 1024 * 1024;
const _: () = assert!(
    RECV_PIECE <= u32::MAX as usize,
    "a receive's length is a u32"
);
/// A job counts as busy (see [`Mover::busy`]) while the mover moved bytes, or was handed
/// a job, this recently: long enough to span a piece on loopback (a few hundred
/// microseconds) and a scheduling delay, short enough that a receive waiting on a stalled
/// peer soon stops counting. (A piece outlasts it on links slower than ~250 MB/s for a
/// send, ~500 MB/s for a receive; the mover then needs little CPU anyway.)
const ACTIVE_WINDOW: Duration = Duration::from_millis(2);
const _: () = assert!(
    ACTIVE_WINDOW.as_nanos() == lanet::config::MAX_MOVER_POLL.as_nanos(),
    "a configuration's longest mover_poll is the window past which the mover idles"
);
/// How long a mover polls its ring after it last moved bytes (or was handed a job)
/// rather than sleep, whether or not its NI busy-polls, by default
/// ([`crate::TcpConfig::mover_poll`]; a net's `mover_poll`). Each sleep between two pieces
/// of a stream cost the mover (and the driver it woke) context switches: measured on two
/// cores, 1 MiB PUTs on loopback between sleeping NIs, 8.2-8.6 GB/s against 5.9-6.2,
/// health PINGs under that load at p50 40-47 us against 82, no false Down at a 3 ms
/// health interval (bench/RESULTS.md, "2026-12-06 (afternoon)"). The price: while a
/// stream moves, the mover keeps polling between its pieces; on a link slower than
/// loopback (a 512 KiB message takes ~420 us at 10 Gb/s) that is up to about half a CPU
/// per mover. Rules that poll only while pieces come fast kept most of the bandwidth but
/// not the health gains (same section). Short, so that a stream that stops soon lets the
/// mover sleep. A node on a slow link that must not spend the CPU sets `mover_poll` to
/// zero.
pub(crate) const POLL_WHILE_MOVING: Duration = Duration::from_micros(200);
const WAKE: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;

/// Work for the mover.
pub(crate) enum Job {
    /// Send the message described in `slot`, all of it (MSG_WAITALL), after the sends of
    /// `conn` handed over before it; unless one of them did not get all of its message out
    /// (`broken`, the socket's, set here): then it comes back unstarted.
    Send {
        conn: ConnId,
        fd: RawFd,
        slot: Box<SendSlot>,
        broken: Arc<AtomicBool>,
    },
    /// Receive `len` bytes (at most the spare capacity of `buf`) into that spare capacity,
    /// in pieces.
    Recv {
        conn: ConnId,
        fd: RawFd,
        buf: BytesMut,
        len: usize,
    },
}

/// The memory of a finished job, back to the driver.
pub(crate) enum Moved {
    Send(Box<SendSlot>),
    /// The buffer holds what was received (`res` bytes when `res > 0`).
    Recv(BytesMut),
}

/// A finished job: the operation's result (bytes, or a negated errno) and its memory.
pub(crate) struct Done {
    pub(crate) conn: ConnId,
    pub(crate) res: i32,
    pub(crate) moved: Moved,
}

pub(crate) struct Mover {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<Done>,
    /// Set by the thread, after the last job it hands back, if it dies (panics).
    dead: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Jobs submitted whose results have not been taken back.
    outstanding: usize,
    /// When the worker last moved bytes.
    moved: Progress,
    /// When the last job was handed over (on `moved`'s clock).
    handed: u64,
}

impl Mover {
    /// Starts the thread. It signals `notify` (the driver's eventfd) whenever jobs finish.
    /// While jobs are out it polls for completions instead of sleeping, within
    /// `mover_poll` of its last bytes moved, or `spin` (the NI's busy-polling) if that is
    /// longer; [`ACTIVE_WINDOW`] at most, never on a machine with one CPU (see
    /// [`poll_window`]).
    pub(crate) fn start(
        name: String,
        notify: Arc<OwnedFd>,
        spin: Duration,
        mover_poll: Duration,
    ) -> io::Result<Mover> {
        let (jobs, job_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let wake = Arc::new(sys::eventfd()?);
        let stop = Arc::new(AtomicBool::new(false));
        let moved = Progress::new();
        let (ready_tx, ready) = mpsc::channel();
        let dead = Arc::new(AtomicBool::new(false));
        let thread = {
            let (wake, stop, moved, dead) =
                (wake.clone(), stop.clone(), moved.clone(), dead.clone());
            std::thread::Builder::new().name(name).spawn(move || {
                // Waking the mover (with a job) must not hand it the driver's CPU: measured,
                // the driver was preempted by the mover it had just woken and waited
                // ~550 us behind a bulk copy with a PONG to handle.
                sys::set_thread_batch();
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                let window = poll_window(spin, mover_poll, cpus);
                match Worker::new(wake, notify, job_rx, done_tx, stop, moved, window) {
                    Ok(mut w) => {
                        let _ = ready_tx.send(Ok(()));
                        if std::panic::catch_unwind(AssertUnwindSafe(|| w.run())).is_err() {
                            // A bug: the jobs in flight never come back. The kernel may
                            // still use their memory, so it is leaked, not freed; the
                            // driver, woken, finds the mover dead (`Mover::died`), after
                            // what it had handed back before.
                            let notify = w.notify.clone();
                            std::mem::forget(w);
                            dead.store(true, Ordering::Release);
                            let _ = sys::signal(notify.as_fd());
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?
        };
        let started = ready
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("the mover thread died at start")));
        if let Err(e) = started {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Mover {
            jobs,
            done,
            dead,
            wake,
            stop,
            thread: Some(thread),
            outstanding: 0,
            moved,
            handed: 0,
        })
    }

    /// Whether it is moving bulk bytes, on a thread that needs a CPU for it: it has jobs
    /// out and moved bytes (or was handed one) within [`ACTIVE_WINDOW`]. A receive that
    /// waits on a stalled peer soon stops counting: it needs no CPU.
    pub(crate) fn busy(&self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        let last = self.handed.max(self.moved.last());
        within(self.moved.now(), last, ACTIVE_WINDOW)
    }

    /// Hands `job` over; it comes back through [`Mover::try_done`]. `Err` with the job if
    /// the thread is gone (it died), so that the caller can end what the job was for.
    pub(crate) fn submit(&mut self, job: Job) -> Result<(), Job> {
        // The thread outlives every sender: it stops only when this mover is dropped, or
        // dies. A job it could not take would never come back: not counted, returned.
        // (One handed over as it dies is lost with it: the driver, woken, retires the
        // mover and fails every connection it held, this one's too.)
        if self.died() {
            return Err(job);
        }
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            tracing::error!("the bulk mover thread is gone");
            return Err(job);
        }
        self.outstanding += 1;
        self.handed = self.moved.now();
        if let Err(e) = sys::signal(self.wake.as_fd()) {
            tracing::error!("cannot wake the bulk mover: {e}");
        }
        Ok(())
    }

    /// Whether the thread died (it panicked): the jobs it still held will not come back,
    /// nor will it take more. What it handed back before is in [`Mover::try_done`] by
    /// the time this says so.
    pub(crate) fn died(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    pub(crate) fn try_done(&mut self) -> Option<Done> {
        let done = self.done.try_recv().ok()?;
        debug_assert!(self.outstanding > 0, "a job came back that was not counted");
        self.outstanding = self.outstanding.saturating_sub(1);
        Some(done)
    }

    /// Cancels what is in flight and waits for the thread to end; every job's memory is
    /// then back (or, if the kernel would not let go of it, leaked) and [`Mover::try_done`]
    /// returns the rest of the results. Shut the sockets down first, so that everything
    /// in flight ends promptly.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = sys::signal(self.wake.as_fd());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When the worker last moved bytes or started a job (see [`Mover::busy`]), in
/// nanoseconds on a clock the mover and its worker share.
#[derive(Clone)]
struct Progress {
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The shared clock's time.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Bytes moved, or a job started, now.
    fn mark(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// Says what an `io_uring_enter` failed with, but for what only means "look again"
/// (interrupted, completions to reap first), and pauses so that a failing ring does not
/// flood the log.
fn enter_failed(result: io::Result<()>) {
    if let Err(e) = result {
        if ![libc::EINTR, libc::EBUSY, libc::EAGAIN].contains(&e.raw_os_error().unwrap_or(0)) {
            tracing::error!("bulk mover: io_uring_enter failed: {e}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether `now` is within `window` of `last` activity (both [`Progress`] times).
fn within(now: u64, last: u64, window: Duration) -> bool {
    now.saturating_sub(last) < window.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// A finished job's result: the bytes it moved if any (a receive of more than `i32::MAX`,
/// a payload over 2 GiB, says `i32::MAX`: its buffer holds the count), else the last
/// operation's `res`.
fn reported(done: usize, res: i32) -> i32 {
    match done {
        0 => res,
        n => i32::try_from(n).unwrap_or(i32::MAX),
    }
}

/// A job being moved, piece by piece.
struct InFlight {
    conn: ConnId,
    fd: RawFd,
    /// The memory: while in flight, the kernel may read or write it.
    moved: Moved,
    /// Bytes moved so far, of `len`.
    done: usize,
    len: usize,
    /// A receive's socket's low-water mark, as last set here (1: the socket's default).
    low_water: usize,
    /// A send's socket's mark that a send of it did not get all out (see [`Job::Send`]).
    broken: Option<Arc<AtomicBool>>,
}

struct Worker {
    // Declared first: dropped before the memory its operations point at.
    ring: IoUring,
    wake: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    notify: Arc<OwnedFd>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    stop: Arc<AtomicBool>,
    moved: Progress,
    /// Jobs in flight, by user_data, with the memory their operation points at.
    inflight: FxHashMap<u64, InFlight>,
    /// The connections a send is in flight for, each with the sends handed over since,
    /// which wait for it: one stream, so one send at a time, in order.
    sends_waiting: FxHashMap<ConnId, VecDeque<Job>>,
    next: u64,
    wake_armed: bool,
    cqes: Vec<(u64, i32)>,
    /// How recently it must have moved bytes (or been handed a job) to poll rather than
    /// sleep: see [`poll_window`].
    poll_window: Duration,
}

/// How recently a mover must have moved bytes (or been handed a job) to poll rather than
/// sleep, for an NI that busy-polls for `spin` (zero: it sleeps) and asks its mover to
/// poll for `mover_poll`, on a machine with `cpus` CPUs (the thread's own: affinity,
/// cgroup quota): the longer of the two, [`ACTIVE_WINDOW`] at most (past which the driver
/// no longer counts it busy, and may spin itself); nothing on one CPU, where its polls
/// would take the CPU from the threads it waits for (the driver, the peer's sender).
fn poll_window(spin: Duration, mover_poll: Duration, cpus: usize) -> Duration {
    if cpus < 2 {
        return Duration::ZERO;
    }
    spin.max(mover_poll).min(ACTIVE_WINDOW)
}

impl Worker {
    fn new(
        wake: Arc<OwnedFd>,
        notify: Arc<OwnedFd>,
        jobs: mpsc::Receiver<Job>,
        done: mpsc::Sender<Done>,
        stop: Arc<AtomicBool>,
        moved: Progress,
        poll_window: Duration,
    ) -> io::Result<Worker> {
        // Created on its own thread, which is then its only submitter.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        let mut w = Worker {
            ring,
            wake,
            wake_buf: Box::new(0),
            notify,
            jobs,
            done,
            stop,
            moved,
            inflight: FxHashMap::default(),
            sends_waiting: FxHashMap::default(),
            next: 0,
            wake_armed: false,
            cqes: Vec::with_capacity(RING_ENTRIES as usize),
            poll_window,
        };
        w.arm_wake();
        Ok(w)
    }

    /// Queues an entry, submitting first if the queue is full.
    ///
    /// # Safety
    /// Everything the entry points at must stay valid until its completion is reaped.
    unsafe fn push(&mut self, e: squeue::Entry) {
        // SAFETY: the caller vouches for the entry's memory.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            if let Err(err) = self.ring.submit() {
                tracing::error!("bulk mover: io_uring submit failed: {err}");
                std::thread::yield_now();
            }
        }
    }

    fn arm_wake(&mut self) {
        self.wake_armed = true;
        let e = sys::wake_read(self.wake.as_fd(), &mut self.wake_buf).user_data(WAKE);
        // SAFETY: `wake_buf` is boxed and lives as long as the ring; one read at a time.
        unsafe { self.push(e) };
    }

    /// Starts `job`, or for a send behind another of its connection, queues it; a send
    /// on a socket whose stream broke comes back unstarted.
    fn take_job(&mut self, job: Job) {
        #[cfg(test)]
        if let Job::Recv {
            conn: tests::PANIC_CONN,
            ..
        } = job
        {
            panic!("a test makes the bulk mover die");
        }
        if let Job::Send { conn, broken, .. } = &job {
            if broken.load(Ordering::Relaxed) {
                self.cancelled(job);
                return self.notify_driver();
            }
            let conn = *conn;
            match self.sends_waiting.entry(conn) {
                Entry::Occupied(mut waiting) => return waiting.get_mut().push_back(job),
                Entry::Vacant(none) => {
                    none.insert(VecDeque::new());
                }
            }
        }
        self.start_job(job);
    }

    fn start_job(&mut self, job: Job) {
        self.moved.mark();
        let ud = self.next;
        self.next += 1;
        let job = match job {
            Job::Send {
                conn,
                fd,
                slot,
                broken,
            } => InFlight {
                conn,
                fd,
                len: slot.len,
                moved: Moved::Send(slot),
                done: 0,
                low_water: 1,
                broken: Some(broken),
            },
            Job::Recv { conn, fd, buf, len } => InFlight {
                conn,
                fd,
                len: len.min(buf.capacity() - buf.len()),
                moved: Moved::Recv(buf),
                done: 0,
                low_water: 1,
                broken: None,
            },
        };
        self.inflight.insert(ud, job);
        // (A first piece only raises the mark, which cannot fail this way: handled all
        // the same.)
        if let Err(res) = self.next_piece(ud) {
            self.finish(ud, res);
            self.notify_driver();
        }
    }

    /// Submits the next piece of job `ud`; `Err` (a negated errno) if it cannot go.
    ///
    /// A send is one operation per message (at most about [`super::send::MESSAGE_MAX`]);
    /// only what a short send left goes again. A receive takes up to [`RECV_PIECE`].
    ///
    /// Pieces were smaller once (256 KiB sends, 128 KiB receives), so that this thread came
    /// out of a `PREEMPT_NONE` kernel every ~300 us for a driver thread woken on its CPU.
    /// Since the mover holds two sends of a socket, measured on loopback (`lanet-bench
    /// bandwidth`, `lanes --secs 24`, alternating; bench/RESULTS.md "2026-12-06 (late)"):
    /// whole sends and 1 MiB receives moved a 1 MiB stream at 3.8-5.6 GB/s against
    /// 2.8-4.2, and the health lane's loaded p99 stayed where it was (335-432 us against
    /// 389-424).
    fn next_piece(&mut self, ud: u64) -> Result<(), i32> {
        let job = self.inflight.get_mut(&ud).expect("in flight");
        let left = job.len - job.done;
        let entry = match &mut job.moved {
            Moved::Send(slot) => {
                slot.describe_rest(job.done);
                // MSG_NOSIGNAL, which the kernel adds to io_uring's sends anyway: a
                // socket shut down under it fails the send with EPIPE, no SIGPIPE.
                opcode::SendMsg::new(Fd(job.fd), slot.part_msghdr())
                    .flags((libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32)
                    .build()
            }
            Moved::Recv(buf) => {
                // Woken once a good part of the rest is in, not for every segment (see
                // `crate::low_water`); set before every piece, so never above what is
                // still to come.
                let mark = crate::low_water::mark_for(left);
                if job.low_water != mark {
                    match crate::low_water::change(job.fd, job.low_water, mark) {
                        Ok(now) => job.low_water = now,
                        Err(e) => {
                            tracing::error!("bulk mover: cannot lower SO_RCVLOWAT: {e}");
                            return Err(-e.raw_os_error().unwrap_or(libc::EIO));
                        }
                    }
                }
                let spare = buf.spare_capacity_mut();
                let want = left.min(RECV_PIECE) as u32;
                // Under a raised mark: wait for it before trying (a first try would take
                // whatever is queued, a receive and a mark more per frame), and no
                // MSG_WAITALL (the kernel would retry a short receive for the rest of the
                // piece with the mark unchanged, waiting for bytes that may never come).
                // At 1 any byte wakes it: the kernel may finish the piece itself.
                let (flags, poll_first) = match job.low_water {
                    1 => (libc::MSG_WAITALL, 0),
                    _ => (0, super::RECV_POLL_FIRST),
                };
                opcode::Recv::new(Fd(job.fd), spare.as_mut_ptr().cast(), want)
                    .flags(flags)
                    .ioprio(poll_first)
                    .build()
            }
        };
        // SAFETY: the slot with its part (boxed), or the buffer (heap memory of the
        // BytesMut, which moving the handle does not move), stay in `inflight` until
        // this operation's completion is reaped; the driver keeps the socket open until the
        // job comes back.
        unsafe { self.push(entry.user_data(ud)) };
        Ok(())
    }

    /// Job `ud` ends with `res` (bytes moved, or a negated errno if none were): its memory
    /// goes back to the driver, and its socket's mark back to 1 first, as the driver's own
    /// receive may follow and the next frame's header may be all that comes. After a send,
    /// the next of its connection starts, or if this one did not get all out, none does.
    fn finish(&mut self, ud: u64, res: i32) {
        let job = self.inflight.remove(&ud).expect("in flight");
        // Bytes moved before a failure are reported (a socket's failure shows at the
        // driver's next operation on it); a mark that could not be reset is reported
        // instead, below.
        let mut res = reported(job.done, res);
        if job.low_water != 1 {
            if let Err(e) = crate::low_water::change(job.fd, job.low_water, 1) {
                tracing::error!("bulk mover: cannot reset SO_RCVLOWAT: {e}");
                // The connection must go: a mark left raised may stall it.
                res = -e.raw_os_error().unwrap_or(libc::EIO);
            }
        }
        let (conn, sent_all) = (job.conn, job.done == job.len);
        let was_send = matches!(job.moved, Moved::Send(_));
        if let (false, Some(broken)) = (sent_all, &job.broken) {
            // A send the driver hands over before it hears of this must not go.
            broken.store(true, Ordering::Relaxed);
        }
        let _ = self.done.send(Done {
            conn,
            res,
            moved: job.moved,
        });
        if was_send {
            self.next_send(conn, sent_all);
        }
    }

    /// A send of `conn` ended: the next waiting one starts; or, if that send did not get
    /// all of its message out, none does (the stream has a gap), and each comes back
    /// cancelled.
    fn next_send(&mut self, conn: ConnId, sent_all: bool) {
        let Entry::Occupied(mut waiting) = self.sends_waiting.entry(conn) else {
            return;
        };
        let Some(next) = waiting.get_mut().pop_front() else {
            waiting.remove();
            return;
        };
        if sent_all && !self.stop.load(Ordering::Acquire) {
            return self.start_job(next);
        }
        let rest = waiting.remove();
        for job in std::iter::once(next).chain(rest) {
            self.cancelled(job);
        }
    }

    /// Hands `job` back unstarted.
    fn cancelled(&self, job: Job) {
        let (conn, moved) = match job {
            Job::Send { conn, slot, .. } => (conn, Moved::Send(slot)),
            Job::Recv { conn, buf, .. } => (conn, Moved::Recv(buf)),
        };
        let res = -libc::ECANCELED;
        let _ = self.done.send(Done { conn, res, moved });
    }

    /// Wakes the driver for what [`Self::finish`] handed back.
    fn notify_driver(&self) {
        if let Err(e) = sys::signal(self.notify.as_fd()) {
            tracing::error!("bulk mover: cannot wake the driver: {e}");
        }
    }

    fn run(&mut self) {
        while !self.stop.load(Ordering::Acquire) {
            while let Ok(job) = self.jobs.try_recv() {
                self.take_job(job);
            }
            if self.spins() {
                // The receives' copies and the sends' next pieces run as the ring's task
                // work, in this call: socket readiness meanwhile wakes nobody. Asleep,
                // every arrival was a wake-up (on a VM an interrupt between CPUs):
                // measured, a 1 MiB stream between spinning NIs went from ~5 to ~8 GB/s.
                let polled = sys::enter_for_events(&mut self.ring);
                enter_failed(polled.map(drop));
                self.reap();
                continue;
            }
            enter_failed(self.ring.submit_and_wait(1).map(drop));
            self.reap();
        }
        self.cancel_all();
    }

    /// Whether to poll rather than sleep: with jobs out, and bytes moved (or a job came)
    /// within [`Worker::poll_window`]. A receive waiting on a silent peer moves nothing:
    /// it soon stops.
    fn spins(&self) -> bool {
        !self.poll_window.is_zero()
            && !self.inflight.is_empty()
            && within(self.moved.now(), self.moved.last(), self.poll_window)
    }

    /// Hands finished jobs back; one wake-up for the driver per batch.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let mut finished = false;
        if cqes.iter().any(|&(ud, res)| ud < CANCEL && res > 0) {
            self.moved.mark();
        }
        for &(ud, res) in &cqes {
            match ud {
                WAKE => {
                    self.wake_armed = false;
                    if !self.stop.load(Ordering::Acquire) {
                        self.arm_wake();
                    }
                }
                CANCEL => {}
                _ => {
                    let Some(job) = self.inflight.get_mut(&ud) else {
                        continue;
                    };
                    if res > 0 {
                        if let Moved::Recv(buf) = &mut job.moved {
                            // SAFETY: the kernel wrote `res` bytes into the spare capacity
                            // this receive was given, starting at the buffer's end.
                            unsafe { buf.set_len(buf.len() + res as usize) };
                        }
                        job.done += res as usize;
                        if job.done < job.len && !self.stop.load(Ordering::Acquire) {
                            match self.next_piece(ud) {
                                Ok(()) => continue,
                                Err(failed) => {
                                    self.finish(ud, failed);
                                    finished = true;
                                    continue;
                                }
                            }
                        }
                    }
                    self.finish(ud, res);
                    finished = true;
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
        if finished {
            self.notify_driver();
        }
    }

    /// Stops everything in flight and waits until the kernel has let go of its memory; if
    /// it does not within two seconds, that memory is leaked rather than freed.
    fn cancel_all(&mut self) {
        // Jobs never started come back as cancelled: every job returns to the driver.
        while let Ok(job) = self.jobs.try_recv() {
            self.cancelled(job);
        }
        for (_, waiting) in std::mem::take(&mut self.sends_waiting) {
            waiting.into_iter().for_each(|job| self.cancelled(job));
        }
        let e = opcode::AsyncCancel2::new(io_uring::types::CancelBuilder::any())
            .build()
            .user_data(CANCEL);
        // SAFETY: a cancel request points at no memory.
        unsafe { self.push(e) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while (self.wake_armed || !self.inflight.is_empty()) && Instant::now() < deadline {
            let _ = sys::wait_briefly(&self.ring); // its own thread: nothing to tell apart
            self.reap();
        }
        if !self.inflight.is_empty() || self.wake_armed {
            tracing::error!("bulk mover: operations still pending at close; leaking their memory");
            for (_, job) in self.inflight.drain() {
                std::mem::forget(job);
            }
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use bytes::Bytes;
    use lanet::wire::HEADER_LEN;

    use super::super::send::MESSAGE_MAX;
    use super::*;
    use crate::framing::TxQueue;

    /// A receive job for this connection makes the mover thread panic.
    pub(super) const PANIC_CONN: ConnId = ConnId::MAX;

    fn connected_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// A mover polling as a sleeping NI's does by default.
    fn mover() -> Mover {
        polling_mover(POLL_WHILE_MOVING)
    }

    fn submit(m: &mut Mover, job: Job) {
        assert!(m.submit(job).is_ok(), "the mover thread runs");
    }

    /// A mover that polls for `poll` after it last moved bytes (its NI sleeps).
    fn polling_mover(poll: Duration) -> Mover {
        let notify = Arc::new(sys::eventfd().unwrap());
        Mover::start("test-mover".into(), notify, Duration::ZERO, poll).unwrap()
    }

    #[test]
    fn a_mover_polls_as_long_as_asked_or_its_ni_spins_up_to_its_active_window_never_on_one_cpu() {
        let (us, zero) = (Duration::from_micros, Duration::ZERO);
        assert_eq!(poll_window(zero, POLL_WHILE_MOVING, 2), POLL_WHILE_MOVING);
        assert_eq!(poll_window(zero, zero, 8), zero, "asked not to");
        assert_eq!(poll_window(zero, us(1_000), 2), us(1_000));
        assert_eq!(poll_window(us(1_000), zero, 2), us(1_000), "the NI's spin");
        assert_eq!(poll_window(us(50), us(200), 2), us(200), "the longer");
        assert_eq!(poll_window(us(1_500), us(200), 2), us(1_500), "the longer");
        assert_eq!(poll_window(Duration::MAX, zero, 2), ACTIVE_WINDOW);
        assert_eq!(poll_window(zero, Duration::MAX, 2), ACTIVE_WINDOW);
        assert_eq!(poll_window(zero, POLL_WHILE_MOVING, 1), zero);
        assert_eq!(poll_window(us(1_000), us(1_000), 1), zero);
    }

    #[test]
    fn a_mover_spins_only_within_its_spin_of_the_last_activity() {
        let ms = 1_000_000;
        assert!(within(10 * ms, 9 * ms, Duration::from_millis(2)));
        assert!(!within(12 * ms, 9 * ms, Duration::from_millis(2)));
        assert!(!within(10 * ms, 10 * ms, Duration::ZERO));
        assert!(
            within(10 * ms, 0, Duration::MAX),
            "a spin of years saturates"
        );
    }

    fn next_done(m: &mut Mover) -> Done {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(d) = m.try_done() {
                return d;
            }
            assert!(Instant::now() < until, "no job came back within 20 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A payload larger than a send message: the slot takes part of it.
    const LARGE: usize = MESSAGE_MAX + 88 * 1024;

    #[test]
    fn a_job_reports_its_bytes_even_past_two_gib_or_else_its_error() {
        assert_eq!(reported(0, -libc::ECONNRESET), -libc::ECONNRESET);
        assert_eq!(reported(4096, -libc::ECONNRESET), 4096);
        // Wrapped, 3 GiB would read as an errno.
        assert_eq!(reported(3 << 30, 0), i32::MAX);
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_payload_trickling_in_is_received_whole_and_in_place() {
        // Sleeping between arrivals, and busy-polling through them. The last piece's mark
        // is 1 (a receive that waits for all it asks), or raised but below the first
        // pieces' (lowered from theirs, or the mover would wait for bytes that never come).
        for spin in [Duration::ZERO, Duration::from_secs(1)] {
            for len in [3 * RECV_PIECE + 1234, 3 * RECV_PIECE + (300 << 10)] {
                trickle_in(polling_mover(spin), len);
            }
        }
    }

    fn trickle_in(mut m: Mover, len: usize) {
        let (mut tx, rx) = connected_pair();
        let data = pattern(len);
        let buf = BytesMut::with_capacity(data.len());
        let at = buf.as_ptr();
        let fd = rx.as_raw_fd();
        submit(
            &mut m,
            Job::Recv {
                conn: 7,
                fd,
                buf,
                len: data.len(),
            },
        );
        assert_eq!(
            m.outstanding, 1,
            "the receive is counted until it comes back"
        );
        let marks = crate::low_water::kernel_wakes_early();
        let until = Instant::now() + Duration::from_secs(10);
        while marks && crate::low_water::get(fd).unwrap() == 1 {
            assert!(Instant::now() < until, "the mover never raised the mark");
            std::thread::sleep(Duration::from_millis(1));
        }
        if marks {
            assert_eq!(
                crate::low_water::get(fd).unwrap(),
                // low_water's cap. (The kernel takes marks up to half of tcp_rmem's
                // largest buffer: 3 MiB with the default 6 MiB.)
                data.len().min(1 << 20),
                "the mark asks for the whole rest (up to 1 MiB) before a wake-up"
            );
        }
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for chunk in sent.chunks(50_000) {
                tx.write_all(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            tx
        });
        let done = next_done(&mut m);
        assert_eq!(
            m.outstanding, 0,
            "its result taken back, nothing is counted"
        );
        assert!(!m.busy(), "with nothing out, the mover is not busy");
        let _tx = writer.join().unwrap();
        assert_eq!((done.conn, done.res), (7, data.len() as i32));
        let Moved::Recv(buf) = done.moved else {
            panic!("a receive came back as a send")
        };
        assert_eq!(
            buf.as_ptr(),
            at,
            "received in place, not into another buffer"
        );
        assert!(buf[..] == data[..], "the bytes arrived intact and in order");
        assert_eq!(
            crate::low_water::get(fd).unwrap(),
            1,
            "the next frame's header may be all that comes"
        );
    }

    #[test]
    fn a_message_larger_than_the_socket_takes_at_once_is_sent_whole() {
        let mut m = mover();
        let (tx, mut rx) = connected_pair();
        crate::sockopt::set_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 64 << 10)
            .unwrap();
        let mut q = TxQueue::default();
        let payload = Bytes::from(pattern(LARGE));
        q.push([0xa5; HEADER_LEN], payload.clone(), None);
        let mut slot = SendSlot::new();
        let len = slot.fill(&q, 0);
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            rx.read_exact(&mut got).unwrap();
            got
        });
        submit(
            &mut m,
            Job::Send {
                conn: 3,
                fd: tx.as_raw_fd(),
                slot,
                broken: Default::default(),
            },
        );
        let done = next_done(&mut m);
        assert_eq!((done.conn, done.res), (3, len as i32));
        assert!(matches!(done.moved, Moved::Send(_)));
        let got = reader.join().unwrap();
        assert!(got[..HEADER_LEN].iter().all(|&b| b == 0xa5));
        assert!(got[HEADER_LEN..] == payload[..len - HEADER_LEN]);
    }

    /// Messages of one connection handed over at once (as the driver hands over its
    /// second while the mover sends the first) arrive one after another, each whole and
    /// in the order handed over: the mover sends one at a time per connection, even to
    /// a slow reader.
    #[test]
    fn sends_of_one_connection_handed_over_together_arrive_in_order() {
        let mut m = mover();
        let (tx, mut rx) = connected_pair();
        let mut q = TxQueue::default();
        for i in 0..3 {
            let mut payload = pattern(LARGE);
            payload[0] = i as u8;
            q.push([0xa0 + i as u8; HEADER_LEN], Bytes::from(payload), None);
        }
        let whole: Vec<u8> = q.pieces().flat_map(|(p, _)| p.iter().copied()).collect();
        let broken = Arc::new(AtomicBool::new(false));
        let mut lens = Vec::new();
        while lens.iter().sum::<usize>() < whole.len() {
            let mut slot = SendSlot::new();
            lens.push(slot.fill(&q, lens.iter().sum()));
            let (fd, broken) = (tx.as_raw_fd(), broken.clone());
            submit(
                &mut m,
                Job::Send {
                    conn: 5,
                    fd,
                    slot,
                    broken,
                },
            );
        }
        assert!(lens.len() > 2, "several messages: {lens:?}");
        let total = whole.len();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; total];
            for chunk in got.chunks_mut(100_000) {
                rx.read_exact(chunk).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            got
        });
        for &len in &lens {
            let done = next_done(&mut m);
            assert_eq!(
                (done.conn, done.res),
                (5, len as i32),
                "back in order, whole"
            );
        }
        assert!(
            reader.join().unwrap() == whole,
            "the stream arrived in order"
        );
        assert!(!broken.load(Ordering::Relaxed));
    }

    /// A send that fails takes those waiting behind it on its connection with it, unsent
    /// (a stream with a gap is worse than none), and so does one handed over after the
    /// failure, before the driver heard of it; another connection's carry on.
    #[test]
    fn a_failed_send_cancels_those_behind_it_on_its_connection_only() {
        let mut m = mover();
        let (tx, rx) = connected_pair();
        let (tx2, mut rx2) = connected_pair();
        // Small buffers and a peer that does not read: the first send blocks, so those
        // after it wait behind it.
        let small = 64 * 1024;
        crate::sockopt::set_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, small).unwrap();
        crate::sockopt::set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, small).unwrap();
        let mut q = TxQueue::default();
        q.push([1; HEADER_LEN], Bytes::from(pattern(4 * MESSAGE_MAX)), None);
        let broken = Arc::new(AtomicBool::new(false));
        let mut handed = 0;
        let mut hand_over = |m: &mut Mover| {
            let mut slot = SendSlot::new();
            let len = slot.fill(&q, handed);
            handed += len;
            let (fd, broken) = (tx.as_raw_fd(), broken.clone());
            submit(
                m,
                Job::Send {
                    conn: 1,
                    fd,
                    slot,
                    broken,
                },
            );
            len
        };
        let first = hand_over(&mut m);
        for _ in 0..2 {
            hand_over(&mut m);
        }
        let mut other = TxQueue::default();
        other.push([2; HEADER_LEN], Bytes::from(pattern(256 << 10)), None);
        let mut slot = SendSlot::new();
        let other_len = slot.fill(&other, 0);
        let (fd, other_broken) = (tx2.as_raw_fd(), Default::default());
        submit(
            &mut m,
            Job::Send {
                conn: 2,
                fd,
                slot,
                broken: other_broken,
            },
        );
        let mut got = vec![0u8; other_len];
        rx2.read_exact(&mut got).unwrap();
        let done = next_done(&mut m);
        assert_eq!((done.conn, done.res), (2, other_len as i32));
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.try_done().is_none(), "the first send waits for its peer");
        // The first send fails: the socket is shut down under it.
        tx.shutdown(std::net::Shutdown::Both).unwrap();
        let results: Vec<(ConnId, i32)> = (0..3)
            .map(|_| next_done(&mut m))
            .map(|d| (d.conn, d.res))
            .collect();
        assert!(
            results[0].0 == 1 && results[0].1 < first as i32,
            "{results:?}"
        );
        assert_eq!(
            &results[1..],
            &[(1, -libc::ECANCELED), (1, -libc::ECANCELED)],
            "those behind a failed send are never started"
        );
        assert!(
            broken.load(Ordering::Relaxed),
            "the socket's stream is marked broken"
        );
        // Handed over after the failure came back: not started either.
        hand_over(&mut m);
        assert_eq!(next_done(&mut m).res, -libc::ECANCELED);
    }

    /// Stopping hands back sends still waiting behind another of their connection.
    #[test]
    fn stopping_gives_back_sends_waiting_behind_another() {
        let mut m = mover();
        let (tx, rx) = connected_pair();
        let small = 64 * 1024;
        crate::sockopt::set_int(tx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, small).unwrap();
        crate::sockopt::set_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, small).unwrap();
        let mut q = TxQueue::default();
        q.push([1; HEADER_LEN], Bytes::from(pattern(4 * MESSAGE_MAX)), None);
        let mut handed = 0;
        for _ in 0..3 {
            let mut slot = SendSlot::new();
            handed += slot.fill(&q, handed);
            let (fd, broken) = (tx.as_raw_fd(), Default::default());
            submit(
                &mut m,
                Job::Send {
                    conn: 1,
                    fd,
                    slot,
                    broken,
                },
            );
        }
        std::thread::sleep(Duration::from_millis(20)); // the first blocks, two wait
        m.stop();
        let mut back: Vec<i32> = std::iter::from_fn(|| m.try_done()).map(|d| d.res).collect();
        back.sort();
        assert_eq!(back.len(), 3, "every job comes back: {back:?}");
        // The first may have started (it says what it sent, or cancelled if nothing was)
        // or not, on a machine busy enough that the mover took no job within 20 ms.
        assert_eq!(
            back[..2],
            [-libc::ECANCELED, -libc::ECANCELED],
            "those never started come back cancelled: {back:?}"
        );
        assert!(back[2] > 0 || back[2] == -libc::ECANCELED, "{back:?}");
    }

    /// A mover whose thread dies says so, wakes the driver to find out, and hands back
    /// the jobs it can no longer take.
    #[test]
    fn a_mover_that_died_wakes_the_driver_and_takes_no_more_jobs() {
        let notify = Arc::new(sys::eventfd().unwrap());
        let mut m = Mover::start(
            "test-mover".into(),
            notify.clone(),
            Duration::ZERO,
            Duration::ZERO,
        )
        .unwrap();
        assert!(!m.died());
        let (_tx, rx) = connected_pair();
        let fd = rx.as_raw_fd();
        let buf = BytesMut::with_capacity(64);
        submit(
            &mut m,
            Job::Recv {
                conn: PANIC_CONN,
                fd,
                buf,
                len: 64,
            },
        );
        let until = Instant::now() + Duration::from_secs(10);
        while !m.died() {
            assert!(Instant::now() < until, "the thread did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut woken = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from an eventfd this test owns.
        let n = unsafe { libc::read(notify.as_raw_fd(), (&raw mut woken).cast(), 8) };
        assert_eq!((n, woken), (8, 1), "the driver was woken once");
        let buf = BytesMut::with_capacity(64);
        let job = Job::Recv {
            conn: 1,
            fd,
            buf,
            len: 64,
        };
        assert!(
            matches!(m.submit(job), Err(Job::Recv { conn: 1, .. })),
            "handed back"
        );
    }

    #[test]
    fn stopping_gives_back_every_job_even_one_waiting_for_a_silent_peer() {
        let mut m = mover();
        let (_tx, rx) = connected_pair();
        let (_tx2, rx2) = connected_pair();
        for (conn, fd) in [(1, rx.as_raw_fd()), (2, rx2.as_raw_fd())] {
            submit(
                &mut m,
                Job::Recv {
                    conn,
                    fd,
                    buf: BytesMut::with_capacity(1 << 20),
                    len: 1 << 20,
                },
            );
        }
        std::thread::sleep(Duration::from_millis(50)); // both receives are waiting
        assert_eq!(m.outstanding, 2);
        assert!(
            !m.busy(),
            "receives waiting on silent peers need no CPU: a spinning driver may spin"
        );
        m.stop();
        let mut back: Vec<(ConnId, i32)> = std::iter::from_fn(|| m.try_done())
            .map(|d| (d.conn, d.res))
            .collect();
        back.sort();
        assert_eq!(back.len(), 2, "{back:?}");
        for (i, (conn, res)) in back.into_iter().enumerate() {
            assert_eq!(conn, i + 1);
            assert!(
                res < 0,
                "nothing was received, so the result is an error: {res}"
            );
        }
        for fd in [rx.as_raw_fd(), rx2.as_raw_fd()] {
            assert_eq!(
                crate::low_water::get(fd).unwrap(),
                1,
                "a receive that ends early leaves the socket's mark as it found it"
            );
        }
    }
}
