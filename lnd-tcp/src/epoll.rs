//! The epoll backend (through mio): edge-triggered readiness, non-blocking sockets,
//! gathering writes (`sendmsg`) straight from the frames' own buffers, one per connection
//! for the data frames posted to it in a look's first hand-over that has any (later ones'
//! wait for the next look: see [`Epoll::wrote_this_look`]); health frames as they are
//! posted. A busy-polling driver reads its hot data connection without an `epoll_wait`
//! most turns (see [`Epoll::poll_hot`]). Dropped, it writes what it still holds.

use std::io;
use std::os::fd::AsRawFd;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanet::lane::Lane;
use lanet::lnd::{LndError, LndErrorKind, LndEvent, Readiness, Transmit, Wake};
use lanet::nid::Nid;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustc_hash::FxHashMap;

use crate::accept_pause::AcceptRetry;
use crate::direct::{recv_into, write_queue};
use crate::engine::{ConnId, Engine};
use crate::low_water;
use crate::{io_error, tune_socket};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Reads per socket per round: a peer streaming bulk data cannot keep the thread from its
/// other sockets (the health lane's above all) or from the core's commands.
const READS_PER_ROUND: usize = 4;
/// Bytes written to a data socket per round, and per system call. On loopback a write
/// also runs the receiver's TCP input, so one unbounded write of a few MiB keeps this
/// thread away from the health lane for milliseconds (measured: `lanet-bench lanes`).
const DATA_WRITE_PER_ROUND: usize = 256 << 10;

struct MioWaker(Waker);

impl Wake for MioWaker {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            tracing::error!("cannot wake the TCP driver: {e}");
        }
    }
}

pub(crate) struct Epoll {
    poll: Poll,
    mio_events: Events,
    /// None where the NI accepts no connections.
    listener: Option<TcpListener>,
    sockets: FxHashMap<ConnId, TcpStream>,
    waker: Arc<MioWaker>,
    next_id: usize,
    pub(crate) engine: Engine,
    /// Sockets reported ready by the last wait: (lane, socket, readable, writable).
    ready: Vec<(Lane, ConnId, bool, bool)>,
    accept_pending: bool,
    /// Sockets that had more to read when their round's budget ran out.
    unread: Vec<ConnId>,
    /// Data sockets that had more to write when their round's budget ran out.
    unwritten: Vec<ConnId>,
    /// The last poll handed over events without looking at the sockets.
    skipped_wait: bool,
    /// Data-lane connections with frames posted since the last write: written together
    /// by the next `send_posted` (the end of the driver's hand-over) unless one wrote in
    /// this look already, else by the next `poll`, `poll_hot` or `prepare_wait`. May
    /// repeat one.
    posted_to: Vec<ConnId>,
    /// A `send_posted` wrote (or tried to write) data frames since the last look at the
    /// sockets began. The core hands over several times a look (what a hand-over
    /// completed may free more to send): the data frames it posts after that write wait
    /// for the next look's, to any connection, and go with whatever else came by then
    /// (measured, 8-byte PUTs, 8 in flight, busy-polling: 375-459k a second against
    /// 335-376k with a write per hand-over). The next look comes at once where the driver
    /// busy-polls, and before a sleeping one waits; a [`crate::TcpLnd`] driven by a
    /// `lanet::Worker` may hold them until the application's next `progress`, as a
    /// sleeping io_uring holds what it does not write directly.
    wrote_this_look: bool,
    /// Sockets whose receive low-water mark is raised above 1, and to what (see
    /// [`crate::low_water`]).
    low_water: FxHashMap<ConnId, usize>,
    /// The data connection the last wait that read anything read from, if it read from no
    /// other: where a busy-polling loop looks without waiting ([`Epoll::poll_hot`]).
    hot: Option<ConnId>,
    /// Sockets whose peer closed (or that failed), by their last event: read to the end,
    /// never left at a short read, since the close raises no edge of its own after the
    /// data that came with it.
    peer_closed: rustc_hash::FxHashSet<ConnId>,
}

impl Epoll {
    pub(crate) fn new(
        engine: Engine,
        listener: Option<std::net::TcpListener>,
    ) -> io::Result<Epoll> {
        let poll = Poll::new()?;
        let listener = match listener {
            Some(listener) => {
                listener.set_nonblocking(true)?;
                let mut listener = TcpListener::from_std(listener);
                poll.registry()
                    .register(&mut listener, LISTENER, Interest::READABLE)?;
                Some(listener)
            }
            None => None,
        };
        let waker = Arc::new(MioWaker(Waker::new(poll.registry(), WAKER)?));
        Ok(Epoll {
            poll,
            mio_events: Events::with_capacity(256),
            listener,
            sockets: FxHashMap::default(),
            waker,
            next_id: FIRST_CONN,
            engine,
            ready: Vec::new(),
            accept_pending: false,
            unread: Vec::new(),
            unwritten: Vec::new(),
            skipped_wait: false,
            posted_to: Vec::new(),
            wrote_this_look: false,
            low_water: FxHashMap::default(),
            hot: None,
            peer_closed: Default::default(),
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        crate::listener_addr(self.listener.as_ref())
    }

    pub(crate) fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn add(&mut self, mut stream: TcpStream) -> io::Result<ConnId> {
        let id = self.next_id;
        self.next_id += 1;
        self.poll.registry().register(
            &mut stream,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.sockets.insert(id, stream);
        Ok(id)
    }

    pub(crate) fn connect(&mut self, peer: Nid, lane: Lane) {
        let Some(addr) = self.engine.dial_target(peer, lane, Instant::now()) else {
            return;
        };
        let local = self.engine.local().id.nid;
        let dialled = crate::dial_socket(local)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                match s.connect(&SocketAddr::V4(addr).into()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    Err(e) => return Err(e),
                }
                Ok(TcpStream::from_std(std::net::TcpStream::from(s)))
            })
            .and_then(|s| {
                tune_socket(&s)?;
                self.add(s)
            });
        match dialled {
            Ok(id) => self.engine.dialled(id, peer, lane, Instant::now()),
            Err(e) => {
                self.engine
                    .dial_failed(peer, lane, io_error(&e, &format!("connect to {addr}")))
            }
        }
    }

    pub(crate) fn post(&mut self, tx: Transmit) {
        let lane = tx.lane;
        let Some(conn) = self.engine.post(tx) else {
            return;
        };
        if lane == Lane::Health {
            // At once: a PING or PONG must not wait behind data writes to other sockets,
            // or other NIs', in the same hand-over.
            self.flush(conn);
        } else if self.posted_to.last() != Some(&conn) {
            // Written when the hand-over ends (`send_posted`), with the connection's other
            // frames of this hand-over: one write for a window of small frames, not
            // one each (measured: 0.62x UCX's message rate with a system call per frame).
            self.posted_to.push(conn);
        }
    }

    /// The hand-over is complete: writes what was posted, unless a hand-over of this look
    /// wrote already (see [`Epoll::wrote_this_look`]).
    pub(crate) fn send_posted(&mut self) {
        if self.wrote_this_look || self.posted_to.is_empty() {
            return;
        }
        self.wrote_this_look = true;
        self.write_posted();
    }

    /// A look at the sockets begins (`poll`, `poll_hot`): what the last look's hand-overs
    /// held back is written now (see [`Epoll::wrote_this_look`]).
    fn new_look(&mut self) {
        self.wrote_this_look = false;
        self.write_posted();
    }

    /// Writes what was posted since the last write, as much as each socket takes. The
    /// list keeps its capacity: no allocation per turn.
    fn write_posted(&mut self) {
        let mut posted_to = std::mem::take(&mut self.posted_to);
        for &conn in &posted_to {
            self.flush(conn); // never adds to `posted_to`
        }
        posted_to.clear();
        self.posted_to = posted_to;
    }

    pub(crate) fn close(&mut self, peer: Nid, lane: Lane, error: LndError) {
        self.engine.close(peer, lane, error);
        self.drop_closed();
    }

    /// Events already here (sends that completed as they were written): what `poll` would
    /// hand over first.
    pub(crate) fn take_ready(&mut self, events: &mut Vec<LndEvent>) {
        self.drop_closed();
        events.append(&mut self.engine.events);
    }

    fn drop_closed(&mut self) {
        if !self.engine.has_closes() {
            return;
        }
        for id in self.engine.take_closes() {
            if let Some(mut s) = self.sockets.remove(&id) {
                let _ = self.poll.registry().deregister(&mut s);
            }
            self.low_water.remove(&id);
            self.peer_closed.remove(&id);
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((s, from)) => match tune_socket(&s).and_then(|()| self.add(s)) {
                    Ok(id) => {
                        self.engine.accepted(id, Some(from.ip()), Instant::now());
                        self.drop_closed(); // one evicted to make room, if any
                    }
                    Err(e) => tracing::warn!("dropping a connection from {from}: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // The listener is edge-triggered: what waits in its backlog raises no new
                // edge, so a paused accept is tried again when the pause is over.
                Err(e) => match self.engine.accept_pause.failed(&e, Instant::now()) {
                    AcceptRetry::Now => continue,
                    AcceptRetry::Paused => return,
                },
            }
        }
    }

    /// Writes as much of `conn`'s queue as the socket takes, a data socket's up to the
    /// round's budget.
    fn flush(&mut self, conn: ConnId) {
        self.flush_up_to(conn, DATA_WRITE_PER_ROUND);
    }

    /// Writes as much of `conn`'s queue as the socket takes, up to `data_budget` bytes if
    /// it is a data socket (the rest left to the next round).
    fn flush_up_to(&mut self, conn: ConnId, data_budget: usize) {
        let mut written_now = 0;
        loop {
            let Some((c, lane)) = self.engine.conn_and_lane(conn) else {
                return;
            };
            if !c.wants_write() {
                return;
            }
            let budget = match lane {
                Some(Lane::Data) => data_budget,
                _ => usize::MAX,
            };
            if written_now >= budget {
                if !self.unwritten.contains(&conn) {
                    self.unwritten.push(conn);
                }
                return;
            }
            let Some(sock) = self.sockets.get_mut(&conn) else {
                return;
            };
            // At most the rest of the budget in this call.
            match write_queue(sock, &c.tx, budget - written_now) {
                Ok(0) => {
                    return self.fail(
                        conn,
                        LndErrorKind::Reset,
                        "connection closed (write returned 0)",
                    )
                }
                Ok(written) => {
                    written_now += written;
                    if !self.engine.wrote(conn, written) {
                        return; // all out: no second look at the queue
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // What the peer sent before the failure (its last frames, an answer
                    // among them) is read first: a write may come before the look's read.
                    self.drain(conn);
                    let error = io_error(&e, "send");
                    self.engine.fail(conn, error);
                    return;
                }
            }
        }
    }

    /// Reads what is available on `conn` until it would block (edge-triggered), or until
    /// the round's budget is spent: then `conn` is revisited next round. True if it read
    /// anything.
    fn drain(&mut self, conn: ConnId) -> bool {
        let mut read = false;
        for _ in 0..READS_PER_ROUND {
            let Some(sock) = self.sockets.get_mut(&conn) else {
                return read;
            };
            let Some(c) = self.engine.conn_mut(conn) else {
                return read;
            };
            let buf = c.rx.read_buf();
            let asked = buf.capacity() - buf.len();
            match recv_into(sock, buf) {
                Ok(0) => {
                    self.fail(conn, LndErrorKind::Reset, "connection closed by the peer");
                    return read;
                }
                Ok(n) => {
                    read = true;
                    self.engine.received(conn, Instant::now);
                    if n < asked && !self.peer_closed.contains(&conn) {
                        // A short read emptied the socket; new data reaching the mark
                        // raises a new edge. This saves the read that would only say EAGAIN.
                        self.set_low_water(conn);
                        return read;
                    }
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => {
                        self.set_low_water(conn);
                        return read;
                    }
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        let error = io_error(&e, "receive");
                        self.engine.fail(conn, error);
                        return read;
                    }
                },
            }
        }
        // Revisited next round without waiting for an edge: its mark, perhaps set for more
        // than is left by now, is set again when a drain empties the socket.
        self.unread.push(conn);
        read
    }

    /// Before `conn`'s socket is left to raise its next edge: while a large frame arrives,
    /// the kernel is to wake this thread only once a good part of its rest is in (see
    /// [`crate::low_water`]). Called by every drain that empties the socket, so the mark
    /// is never above what is still to come when the thread waits for it.
    fn set_low_water(&mut self, conn: ConnId) {
        let Some(c) = self.engine.conn_mut(conn) else {
            return;
        };
        let mark = low_water::mark_for(c.rx.rest_of_frame());
        if mark == 1 && self.low_water.is_empty() {
            return; // small frames, no mark raised anywhere: every drain of them
        }
        let was = self.low_water.get(&conn).copied().unwrap_or(1);
        if was == mark {
            return;
        }
        let Some(sock) = self.sockets.get(&conn) else {
            return;
        };
        match low_water::change(sock.as_raw_fd(), was, mark) {
            Ok(1) => {
                self.low_water.remove(&conn);
            }
            Ok(now) => {
                self.low_water.insert(conn, now);
            }
            Err(e) => self.engine.fail(conn, io_error(&e, "lowering SO_RCVLOWAT")),
        }
    }

    fn fail(&mut self, conn: ConnId, kind: LndErrorKind, what: &str) {
        self.engine.fail(conn, LndError::new(kind, what));
    }

    /// A dialled socket became writable: connected, or failed.
    fn finish_connect(&mut self, conn: ConnId) {
        let Some(sock) = self.sockets.get(&conn) else {
            return;
        };
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.engine.fail(conn, io_error(&e, "connect")),
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => self.engine.established(conn),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {} // not yet
            Err(e) => self.engine.fail(conn, io_error(&e, "connect")),
        }
    }

    /// Bulk bytes are copied on the driver thread itself here: nothing to make room for.
    pub(crate) fn bulk_busy(&self) -> bool {
        false
    }

    /// For a thread sleeping on several LNDs: the epoll descriptor itself (readable when
    /// one of its sockets, or its waker, is).
    pub(crate) fn wait_fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }

    /// Sockets left with work by the last round raise no new edge: then do not sleep.
    /// Frames still posted are written first; their completions make it `Ready`.
    pub(crate) fn prepare_wait(&mut self) -> Readiness {
        self.write_posted();
        self.drop_closed();
        self.engine
            .readiness(!self.unread.is_empty() || !self.unwritten.is_empty())
    }

    pub(crate) fn poll(
        &mut self,
        events: &mut Vec<LndEvent>,
        timeout: Option<Duration>,
    ) -> Result<(), LndError> {
        // For callers that post without `send_posted`, and for what a hand-over of the
        // last look held back: nothing posted waits for the wait.
        self.new_look();
        // Sockets with data left from the last round raise no new edge: do not wait for one.
        let busy = !self.unread.is_empty() || !self.unwritten.is_empty();
        // Events already here (left by a connect or a close, or sends that completed as
        // they were written, where the caller did not take them with `take_ready`) go up
        // without an `epoll_wait`, which would not have waited; the next poll looks at the
        // sockets, as a skip is never followed by another. Work carried over from the last
        // round (`busy`) raises no new edge: it is never skipped.
        let skip = !busy && !self.engine.events.is_empty() && !self.skipped_wait;
        self.skipped_wait = skip;
        if skip {
            self.take_ready(events);
            return Ok(());
        }
        let wait = self.engine.wait(timeout, busy);
        if let Err(e) = self.poll.poll(&mut self.mio_events, wait) {
            if e.kind() != io::ErrorKind::Interrupted {
                // What was gathered goes up first, as the driver contract asks.
                self.take_ready(events);
                return Err(LndError::new(
                    LndErrorKind::Resource,
                    format!("epoll_wait failed: {e}"),
                ));
            }
        }
        self.ready.clear();
        for conn in self.unread.drain(..) {
            let lane = self.engine.lane_of(conn).unwrap_or(Lane::Data);
            self.ready.push((lane, conn, true, false));
        }
        for conn in self.unwritten.drain(..) {
            self.ready.push((Lane::Data, conn, false, true));
        }
        for ev in self.mio_events.iter() {
            match ev.token() {
                LISTENER => self.accept_pending = true,
                WAKER => {}
                Token(id) => {
                    // Accepted sockets learn their lane from the HELLO; until then, data.
                    let lane = self.engine.lane_of(id).unwrap_or(Lane::Data);
                    let closed = ev.is_read_closed() || ev.is_error();
                    if closed && self.sockets.contains_key(&id) {
                        self.peer_closed.insert(id);
                    }
                    self.ready.push((
                        lane,
                        id,
                        ev.is_readable() || ev.is_read_closed(),
                        ev.is_writable() || ev.is_error(),
                    ));
                }
            }
        }
        let retry = self.engine.accept_pause.take_due(Instant::now);
        if std::mem::take(&mut self.accept_pending) || retry {
            self.accept();
        }
        // Health-lane sockets first.
        self.ready.sort_unstable_by_key(|(lane, ..)| *lane);
        let ready = std::mem::take(&mut self.ready);
        // The connections read from: the last, and whether there were several.
        let mut read_from: Option<(ConnId, bool)> = None;
        for &(_, conn, readable, writable) in &ready {
            let connecting = writable
                && self
                    .engine
                    .conn_mut(conn)
                    .is_some_and(|c| c.is_connecting());
            if connecting {
                self.finish_connect(conn);
            }
            if readable && self.drain(conn) {
                let several = read_from.is_some_and(|(other, several)| several || other != conn);
                read_from = Some((conn, several));
            }
            self.flush(conn);
        }
        self.ready = ready;
        if let Some((conn, several)) = read_from {
            // The lane as the engine knows it now: an accepted socket's HELLO, read just
            // now, may have made it the health lane's.
            let data = self.engine.lane_of(conn) == Some(Lane::Data);
            self.hot = (data && !several).then_some(conn);
        }
        self.finish_round(events);
        Ok(())
    }

    /// Busy-polling: reads the hot connection (the one data connection the last waits
    /// found something on) without waiting on epoll first. When its peer's next frame is
    /// there, that is one system call from the frame's arrival to its handling rather
    /// than two (the wait, then the read): ~0.4 us of a busy-polling round trip's ~15 on
    /// this machine kind, each way. The busy-polling loop still polls in full every few
    /// turns, for the other sockets (the health lane's among them).
    ///
    /// False, having read nothing, where a full poll is wanted: no hot connection; work
    /// carried over or events to hand over; a large frame arriving (whose reads wait for
    /// a good part of it: [`crate::low_water`]); or frames waiting to be written to the
    /// hot connection, whose socket's turning writable only a full poll sees (a bulk
    /// sender would otherwise notice it up to eight turns late: measured, 1 MiB streams
    /// lost ~10%).
    pub(crate) fn poll_hot(&mut self, events: &mut Vec<LndEvent>) -> bool {
        self.new_look();
        let Some(conn) = self.hot else {
            return false;
        };
        let carried_over = !self.unread.is_empty() || !self.unwritten.is_empty();
        if carried_over || !self.engine.events.is_empty() || !self.low_water.is_empty() {
            return false;
        }
        // Its socket goes with its connection (`drop_closed`, at the end of every round).
        let writing = match self.engine.conn_mut(conn) {
            Some(c) => c.wants_write(),
            None => {
                self.hot = None; // gone
                return false;
            }
        };
        if writing {
            return false;
        }
        // Data read this way still raises its edge: the next full poll reads once more
        // and finds the socket empty.
        self.drain(conn);
        self.flush(conn);
        self.finish_round(events);
        true
    }

    /// The end of a round of reads and writes: handshake deadlines, closed sockets, and
    /// the events for the core.
    fn finish_round(&mut self, events: &mut Vec<LndEvent>) {
        self.engine.expire_due();
        self.drop_closed();
        events.append(&mut self.engine.events);
    }
}

impl Drop for Epoll {
    /// What the core handed over last still goes, as far as the sockets take it now: data
    /// frames held for the next look (see [`Epoll::wrote_this_look`]), which a node's last
    /// turn is not followed by, and what the rounds' write budget left for the next round,
    /// now with no budget (a large frame cut off would be lost whole).
    fn drop(&mut self) {
        // Not while unwinding from a panic, which may have left the queues inconsistent.
        if !std::thread::panicking() {
            let mut held = std::mem::take(&mut self.posted_to);
            held.append(&mut self.unwritten);
            for conn in held {
                self.flush_up_to(conn, usize::MAX);
            }
        }
    }
}
