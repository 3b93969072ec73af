//! The contract between the core and a network driver (LND).
//!
//! # For driver authors: the one page to read
//!
//! An LND moves frames between this node and its peers on one net. It knows nothing of
//! operations, matching, credits or health: the core decides what to send and when; the LND
//! only connects, moves bytes, and reports what happened, as [`LndEvent`]s.
//!
//! **Connections.** A connection carries one [`Lane`] between this node and one peer, and
//! every lane has its own connection (a TCP socket, an RDMA queue pair), so that bulk data
//! can never sit in front of a health frame in some buffer. [`Lnd::connect`] asks for one;
//! connections may also be accepted from peers at any time. Before a connection is reported,
//! the two sides exchange HELLO frames ([`crate::handshake`]): NID, incarnation, lane, the
//! receive credits each offers and its largest payload. Where the node has keys
//! (`NodeConfig::auth`), the HELLOs carry the challenge of [`crate::handshake::auth`]: a
//! driver reports an accepted connection only once the dialler's AUTH checks out, and
//! tells the connection table of it only then ([`conns::ConnTable::loses_race`] answers a
//! race before); a driver that cannot authenticate refuses to open with keys. Rules:
//!
//! * every `connect(peer, lane)` call ends in exactly one `Connected` or `ConnectFailed` for
//!   that (peer, lane) (an accepted connection that satisfies it counts); a call for a lane
//!   that is up is answered with `Connected` again, which the core takes as "still up"
//!   (the lane keeps its credits);
//! * at most one connection per (peer, lane) is reported up at a time; one that replaces
//!   another (the peer dialled again) is reported as `Disconnected` for the old, then
//!   `Connected` for the new; simultaneous connects from both sides are resolved inside
//!   the LND, deterministically, without failing either side's request;
//! * `Received` frames of a connection come after its `Connected` and before its
//!   `Disconnected`, in the order the peer sent them.
//!
//! Keep connections in a [`conns::ConnTable`]: it applies these rules (races settled by
//! the lower NID, or with keys by [`conns::ConnTable::incoming_proved`] for a connection
//! answered before its proof; replacement, failures, handshake deadlines) for any
//! transport, so a driver only moves bytes and tells it what happened.
//!
//! **Sending.** [`Lnd::post`] hands over a [`Transmit`]: an encoded header and a payload
//! (`Bytes`, so nothing is copied to hand it over; keep the `Bytes` until the send is done and
//! the memory stays valid). Every posted frame ends in exactly one `SendComplete` with its
//! token: `Ok` once the frame is handed to the network (the buffer may be reused), or the
//! error that stopped it (including the connection going away). Frames posted to the same
//! (peer, lane) go out in order. Post never blocks and never fails synchronously. The core
//! posts in batches (a hand-over: every frame it has ready), then calls
//! [`Lnd::send_posted`]; a driver may hold a batch's frames until then, to send a
//! connection's frames together (epoll: one `writev`), or until its next `poll`, but never
//! longer. A driver that knows without polling that a frame went out (written whole to its
//! socket, copied into its peer's memory) may hand the `SendComplete` over in
//! [`Lnd::take_ready`], which the core calls next, so that it need not go round its loop
//! again for it. A driver may also hold a completion back while it busy-polls, to report
//! it with the next event (the core then takes both in one pass), but it hands over what
//! it holds before it sleeps or its `poll` returns; and it holds no completion of a frame
//! marked [`Transmit::report_at_once`].
//!
//! **Receiving.** Decode headers with [`crate::wire::decode_header`] (it checks lengths
//! against limits before anything is allocated; a driver whose link protects headers as
//! well as a CRC-32 does, and that told its peers so, sets
//! [`crate::wire::Limits::link_checks_headers`]), and report each frame as `Received` with
//! its payload as `Bytes`. A frame that does not decode is an error for that connection:
//! close it and report `Disconnected` with [`LndErrorKind::Protocol`]. Never panic on
//! input. Credits are the core's business: it returns them piggybacked or in CREDIT frames,
//! and closes a connection whose peer overruns them. An LND must keep buffers for the
//! credits it offered, plus room for CREDIT frames, which need no credit.
//!
//! **Zero-copy bulk (optional).** A driver with an RDMA-style path may hold a large payload
//! back: it reports the frame as `Received` with [`RxPayload::Deferred`] and keeps the
//! payload at the sender. The core matches the header (as LNet does before `lnd_recv`) and
//! then calls [`Lnd::fetch`] with the buffer the payload belongs in (the driver moves it there
//! with RDMA READ/WRITE into registered memory), or [`Lnd::decline`] if nobody wants it. Each
//! deferred payload gets exactly one of the two; a fetch ends in exactly one `Fetched`. On the
//! sender, the frame's `SendComplete` comes once the payload was fetched or declined (its
//! buffer is free then), or the connection died. Drivers without such a path always deliver
//! [`RxPayload::Inline`] and never see `fetch`/`decline`. Rendezvous messages are the driver's
//! own business and spend no core credits (o2iblnd's PUT_ACK and DONE likewise).
//!
//! **Errors** carry an [`LndErrorKind`], which says where the failure happened (refused:
//! remote; reset/timeout/unreachable: network; out of resources: local) and so which
//! completion the core gives the operations involved.
//!
//! **Progress.** The core's driver calls [`Lnd::poll`] to collect events; it may block up to
//! its timeout, and [`Lnd::waker`] must be able to cut that wait short from any thread.
//! Everything else is called from the driver's thread only. A thread serving several LNDs
//! (a router's NIs) polls each without waiting, then sleeps on all of them at once: each
//! offers a descriptor that turns readable when it may have work ([`Lnd::wait_fd`]) and
//! gets ready before the thread sleeps ([`Lnd::prepare_wait`]). An LND that offers none is
//! polled every millisecond instead. If `poll` fails, that NI goes down; the node carries
//! on with the others.

pub mod conns;
pub mod spin;

use std::fmt;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::handshake::PeerHello;
use crate::lane::Lane;
use crate::nid::Nid;
use crate::op::{FailurePlace, OpError};
use crate::wire::{Header, HEADER_LEN};

/// Counts the connections a driver refused at their handshake (a bad HELLO or AUTH), and
/// logs the 1st, 2nd, 4th, 8th, ... and, while refusals go on, the first that comes
/// [`Refusals::EVERY`] or more after the last line: a peer dialling in a loop, or a
/// scanner, must not flood the log, yet the log goes on saying that refusals happen, and
/// a refusal after a quiet spell (a new misconfiguration, weeks after a scanner's burst)
/// is logged at once. Each line names its own refusal's reason and says how many went
/// unlogged since the last: while one peer is refused again and again, another's reason
/// may not appear (its dialler logs its own refusals).
#[derive(Debug, Default)]
pub struct Refusals {
    total: u64,
    /// Refused since the last line.
    unlogged: u64,
    logged_at: Option<crate::time::Time>,
}

impl Refusals {
    /// How long at least between lines past the powers of two.
    pub const EVERY: Duration = Duration::from_secs(600);

    /// Counts one refusal by `local` at `now`, and logs it if it is due.
    pub fn refused(&mut self, now: crate::time::Time, local: Nid, why: &str) {
        self.total += 1;
        let due = self
            .logged_at
            .is_none_or(|at| now.saturating_since(at) >= Self::EVERY);
        if !self.total.is_power_of_two() && !due {
            self.unlogged += 1;
            return;
        }
        let (total, unlogged) = (self.total, std::mem::take(&mut self.unlogged));
        self.logged_at = Some(now);
        tracing::warn!(
            nid = %local,
            "refusing a connection ({total} refused since the start, {unlogged} of them not \
             logged since the last line): {why}"
        );
    }
}

/// Names one posted frame; echoed in its `SendComplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxToken(pub u64);

/// Names a deferred payload at the receiving driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RxHandle(pub u64);

/// The payload of a received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RxPayload {
    /// Arrived with the header.
    Inline(Bytes),
    /// Still at the sender: `len` bytes, to be fetched (or declined) by handle.
    Deferred { handle: RxHandle, len: u32 },
}

impl RxPayload {
    pub fn len(&self) -> usize {
        match self {
            RxPayload::Inline(b) => b.len(),
            RxPayload::Deferred { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame to send: an encoded header followed by a payload of `header.payload_len` bytes.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub peer: Nid,
    pub lane: Lane,
    pub header: [u8; HEADER_LEN],
    pub payload: Bytes,
    pub token: TxToken,
    /// Its `SendComplete` is awaited for itself: the frame is a request nothing answers (a
    /// PUT without ACK), whose sending ends its operation at its initiator. A driver that
    /// holds completions back, to report them with the next event, hands this one over
    /// at once.
    pub report_at_once: bool,
}

impl Transmit {
    /// `header` (encoded with its CRC) and `payload` for the neighbour `peer`, on the
    /// header's lane: a frame as a tool or test hands it to a driver directly (the node
    /// builds its own, protected as the link allows).
    pub fn new(peer: Nid, header: &crate::wire::Header, payload: Bytes, token: u64) -> Transmit {
        Transmit {
            peer,
            lane: header.lane,
            header: crate::wire::encode_header(header),
            payload,
            token: TxToken(token),
            report_at_once: header.is_put_without_ack(),
        }
    }
}

/// The kind of a driver failure, which decides where it is blamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LndErrorKind {
    /// The peer refused the connection or the handshake (remote).
    Refused,
    /// The connection was reset or closed under us (network).
    Reset,
    /// The network did not answer in time (network).
    TimedOut,
    /// No path to the peer (network).
    Unreachable,
    /// The peer sent something that breaks the protocol (remote).
    Protocol,
    /// We ran out of something, or lost it: memory, buffers, descriptors, the device
    /// (local).
    Resource,
    /// We closed the connection ourselves (local).
    Closed,
}

impl LndErrorKind {
    pub fn place(self) -> FailurePlace {
        match self {
            LndErrorKind::Refused | LndErrorKind::Protocol => FailurePlace::Remote,
            LndErrorKind::Reset | LndErrorKind::TimedOut | LndErrorKind::Unreachable => {
                FailurePlace::Network
            }
            LndErrorKind::Resource | LndErrorKind::Closed => FailurePlace::Local,
        }
    }
}

/// A driver failure: its kind and what happened, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LndError {
    pub kind: LndErrorKind,
    pub detail: String,
}

impl LndError {
    pub fn new(kind: LndErrorKind, detail: impl Into<String>) -> Self {
        LndError {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for LndError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for LndError {}

impl From<LndError> for OpError {
    fn from(e: LndError) -> OpError {
        let text = e.to_string();
        match e.kind.place() {
            FailurePlace::Local => OpError::Local(text),
            FailurePlace::Network => OpError::Network(text),
            FailurePlace::Remote => OpError::Remote(text),
        }
    }
}

/// What a driver reports to the core.
#[derive(Debug, Clone)]
pub enum LndEvent {
    /// A connection for (peer, lane) finished its handshake. `local_credits` is what this
    /// side offered in its HELLO.
    Connected {
        peer: Nid,
        lane: Lane,
        hello: PeerHello,
        local_credits: u16,
    },
    ConnectFailed {
        peer: Nid,
        lane: Lane,
        error: LndError,
    },
    Disconnected {
        peer: Nid,
        lane: Lane,
        error: LndError,
    },
    Received {
        peer: Nid,
        lane: Lane,
        header: Header,
        payload: RxPayload,
    },
    /// A fetch of a deferred payload finished: the sink, filled, or why not.
    Fetched {
        handle: RxHandle,
        result: Result<Bytes, LndError>,
    },
    SendComplete {
        token: TxToken,
        result: Result<(), LndError>,
    },
}

/// What an LND says before the driver thread sleeps on its [`Lnd::wait_fd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// It has work already: poll it again rather than sleep.
    Ready,
    /// Sleep, until its descriptor is readable or, at the latest, for this long (its own
    /// deadlines, e.g. handshakes; `None`: none).
    Sleep(Option<Duration>),
}

/// Interrupts a blocking [`Lnd::poll`] from any thread. A wake that comes before the poll
/// starts must make that poll return at once.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// A network driver. See the module documentation for the contract.
pub trait Lnd: Send {
    /// This node's NID on the driver's net.
    fn nid(&self) -> Nid;

    /// Start connecting `lane` to `peer`; the result comes as an event.
    fn connect(&mut self, peer: Nid, lane: Lane);

    /// Send a frame on the (peer, lane) connection; the result comes as `SendComplete`.
    /// A driver may hold it until [`Lnd::send_posted`] or its next `poll`, to send a
    /// connection's frames together.
    fn post(&mut self, tx: Transmit);

    /// The core has posted a batch of frames (a hand-over) and calls this before it does
    /// anything else: send what was posted and not sent yet, e.g. one `writev` per
    /// connection for a window of small frames instead of a system call each. A driver may
    /// instead hold them for its next `poll` (as one that sends with its `poll` does; the
    /// TCP LND holds those of a second hand-over in one look, to send them together), but
    /// never longer; and one dropped sends what it holds, as far as it can at once. A
    /// driver that sends as frames are posted, or with its next `poll`, needs nothing here
    /// (the default).
    fn send_posted(&mut self) {}

    /// Close the (peer, lane) connection, e.g. after a protocol error. A `Disconnected`
    /// event follows if it was up.
    fn close(&mut self, peer: Nid, lane: Lane, error: LndError);

    /// Collect events into `events`, waiting up to `timeout` (`None`: until woken) if there
    /// are none. An `Err` means the driver itself failed and cannot continue: the core
    /// handles the events it collected first, then fails what the driver still held (its
    /// sends, fetches and connections) with the error.
    fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError>;

    /// Moves into `events` what the driver already holds for the core, without looking at
    /// the network and without waiting: above all the `SendComplete`s of frames that went
    /// out as they were posted, or in `send_posted`. Only what `poll` would have returned
    /// first, in that order. The core asks after handing over its frames, a few times at
    /// most: what a driver still holds after that (completions of the last frames posted),
    /// its next `poll` must return without waiting, and `prepare_wait` must say `Ready`
    /// for. The default holds nothing.
    fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        let _ = events;
    }

    /// A handle that interrupts `poll`.
    fn waker(&self) -> Arc<dyn Wake>;

    /// A descriptor that is readable whenever this LND may have something for `poll`, for
    /// a thread that sleeps on several LNDs at once (its waker must make it readable
    /// too). `None`: such a thread polls this LND every millisecond instead. Such a thread
    /// asks once before its first `poll`, so an LND may set itself up for sharing then.
    fn wait_fd(&mut self) -> Option<RawFd> {
        None
    }

    /// The thread is about to sleep on [`Lnd::wait_fd`]: send what it holds of what was
    /// posted (as `send_posted` would: nothing posted waits for a sleep), make sure the
    /// descriptor will turn readable for anything new (arm notifications, drain what
    /// signalled before), and say whether there is work already.
    fn prepare_wait(&mut self) -> Readiness {
        Readiness::Sleep(None)
    }

    /// Moves a deferred payload into `sink` (capacity at least its length) and reports
    /// `Fetched`. Only called for handles this driver reported as deferred.
    fn fetch(&mut self, handle: RxHandle, sink: BytesMut) {
        let _ = (handle, sink);
        debug_assert!(false, "fetch called on a driver that defers no payloads");
    }

    /// Releases a deferred payload nobody wants. Only called for deferred handles.
    fn decline(&mut self, handle: RxHandle) {
        let _ = handle;
        debug_assert!(false, "decline called on a driver that defers no payloads");
    }
}
