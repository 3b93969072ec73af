//! Setting up and tearing down: the driver and its ring with its buffer groups, the ring
//! rebuilt for a thread shared by several LNDs, new sockets, and the `Drop` that stops
//! every operation before the memory they use is freed. Apart from the running driver.

use std::io;
use std::mem::ManuallyDrop;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring, Probe};
use lanet::memo_map::MemoMap;
use lanet::nid::Nid;
use rustc_hash::FxHashMap;

use super::bufring::BufRing;
use super::{sys, user_data, Uring, CANCEL, RING_ENTRIES};
use super::{DATA_GROUP, HEALTH_BUFFERS, HEALTH_BUFFER_SIZE, HEALTH_GROUP};
use super::{RECV_BUFFERS, RECV_BUFFER_SIZE};
use crate::engine::Engine;

/// The first kernel with multishot receive, which the opcode probe cannot see: the flag
/// rides on `IORING_OP_RECV`, there since 5.6, and a 5.19 kernel (which has the buffer
/// rings this backend also needs) refuses it only at the first receive, failing every
/// health-lane connection. A version that cannot be read is left to the probe.
const MULTISHOT_RECV_SINCE: (u32, u32) = (6, 0);

impl Uring {
    /// Sets up a ring on this kernel, or says why it cannot (the caller falls back to epoll).
    pub(crate) fn new(
        engine: Engine,
        listener: io::Result<Option<TcpListener>>,
        zero_copy_min: usize,
        spin: Duration,
        mover_poll: Duration,
    ) -> io::Result<Uring> {
        // Before anything is set up: nothing to undo.
        if let Some((major, minor)) = crate::kernel::version().filter(|&v| v < MULTISHOT_RECV_SINCE)
        {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring's multishot receive came in Linux 6.0; this is {major}.{minor}"),
            ));
        }
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
        // Whatever may fail, before the buffer rings: once registered, they may be freed
        // only after the ring is gone (`BufRing::new`), which an early return here would
        // not ensure (locals drop in reverse order, the ring last).
        let listener = listener?;
        let wake_fd = Arc::new(sys::eventfd()?);
        let (bufs, health_bufs) = new_buffers(&ring)?;
        let mut u = Uring {
            ring,
            bufs: ManuallyDrop::new(bufs),
            health_bufs: ManuallyDrop::new(health_bufs),
            listener,
            wake_fd,
            wake_buf: Box::new(0),
            socks: MemoMap::default(),
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
            if let Err(e) = u.ring.submit() {
                // Our listener is a clone of the one the caller falls back to epoll with:
                // it goes without the shutdown `Drop` gives it, which would stop both,
                // and after the ring, whose queued ACCEPT still names it.
                let listener = u.listener.take();
                // A failed enter took none of the queued entries: nothing reached the
                // kernel, and the drop only frees the buffers (rather than wait 2 s for
                // an accept and a read never submitted, then leak them).
                u.enabled = false;
                drop(u);
                drop(listener);
                return Err(e);
            }
        }
        Ok(u)
    }

    /// Task work runs only when we ask for completions. Deferred task work is only ever
    /// set up together with a single issuer, which the ring's parameters still tell.
    fn defers_task_work(&self) -> bool {
        self.ring.params().is_setup_single_issuer()
    }

    /// Swaps the ring, still disabled and unsubmitted, for one whose task work runs at any
    /// system call and whose completions wake a `poll` on its descriptor.
    pub(super) fn share_thread(&mut self) -> io::Result<()> {
        if !self.defers_task_work() {
            return Ok(());
        }
        if self.enabled {
            return Err(io::Error::other("already running with deferred task work"));
        }
        if !self.socks.is_empty() {
            // Their requests (a dial's CONNECT) are queued in this ring and would go with it.
            return Err(io::Error::other("it has sockets open already"));
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
            sock.close_connection();
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
            let waited = if self.backlog.is_empty() {
                sys::wait_briefly(&self.ring)
            } else {
                Ok(0) // completions reaped already, to be handled first
            };
            if let Err(e) = waited {
                if sys::wrong_thread(&e) {
                    // Dropped on another thread than the one that ran it: the kernel
                    // takes nothing from this one, so nothing can be waited for.
                    tracing::error!("io_uring dropped on another thread than the one that ran it");
                    break;
                }
            }
            self.reap_completions();
        }
        if busy(self) {
            tracing::error!("io_uring operations still pending at close; leaking their buffers");
            // Only what the kernel may still use is leaked: an idle socket is closed.
            for (_, sock) in self.socks.drain() {
                if !sock.idle() {
                    std::mem::forget(sock);
                }
            }
            if self.wake_armed {
                // The wake-up's read may still write into it.
                std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            }
            return; // `bufs` stays leaked: ManuallyDrop
        }
        self.free_buffers();
    }
}

impl Uring {
    /// Unregisters and frees both buffer rings. Only once no operation is pending.
    fn free_buffers(&mut self) {
        let submitter = self.ring.submitter();
        let data_gone = submitter.unregister_buf_ring(self.bufs.bgid()).is_ok();
        let health_gone = submitter
            .unregister_buf_ring(self.health_bufs.bgid())
            .is_ok();
        // SAFETY: called from `drop`, when no operation is pending, or from `share_thread`
        // on a ring that never ran, just before both fields are overwritten, so neither is
        // used after this. Only a group the kernel let go of is freed (it no longer reads
        // its ring or writes its buffers); one it kept is left allocated (leaked).
        unsafe {
            if data_gone {
                ManuallyDrop::drop(&mut self.bufs);
            }
            if health_gone {
                ManuallyDrop::drop(&mut self.health_bufs);
            }
        }
    }
}

pub(super) fn new_socket(local: Nid) -> io::Result<OwnedFd> {
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
    // SAFETY: returned to `Uring::new`, which keeps them until `free_buffers`, run once the
    // groups are unregistered; on the error below, the first is unregistered (or leaked)
    // before it drops.
    let data = unsafe { BufRing::new(&submitter, DATA_GROUP, RECV_BUFFERS, RECV_BUFFER_SIZE)? };
    // SAFETY: as above.
    let health =
        unsafe { BufRing::new(&submitter, HEALTH_GROUP, HEALTH_BUFFERS, HEALTH_BUFFER_SIZE) };
    match health {
        Ok(health) => Ok((data, health)),
        Err(e) => {
            // The kernel lets go of the first group before its memory is freed; if it
            // would not, the memory is leaked rather than freed under it.
            if submitter.unregister_buf_ring(DATA_GROUP).is_err() {
                std::mem::forget(data);
            }
            Err(e)
        }
    }
}
