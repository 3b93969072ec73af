//! The in-memory network shared by every [`super::MemLnd`] of a topology.
//!
//! Frames travel as encoded headers plus `Bytes` payloads (no copies), arrive after the link's
//! delay (plus jitter, never reordering a connection), and can be lost, cut off or reset on
//! purpose. Time comes from a [`Clock`]: real for demos, virtual for deterministic runs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rustc_hash::FxHashMap;

use crate::lane::Lane;
use crate::lnd::{LndError, LndErrorKind, RxHandle, TxToken};
use crate::nid::Nid;
use crate::rng::SplitMix64;
use crate::time::{Clock, Time};
use crate::wire::HEADER_LEN;

mod bulk;
use bulk::Staged;

/// Faults and timing of the link between two nodes (both directions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// One-way delay of every frame.
    pub delay: Duration,
    /// Extra random delay, uniform in `[0, jitter]`; a connection still never reorders.
    pub jitter: Duration,
    /// Probability that a frame on an established connection vanishes.
    pub loss: f64,
    /// Cut: frames vanish and new connections time out; established ones stay "up", as a
    /// TCP connection does across a pulled cable until something notices.
    pub cut: bool,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            delay: Duration::from_micros(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            cut: false,
        }
    }
}

/// Counters of what the fabric did with frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FabricStats {
    pub delivered: u64,
    pub lost: u64,
    pub cut: u64,
}

pub(super) type ConnId = u64;
pub(super) type XferId = u64;

/// What arrives at a port.
pub(super) enum Item {
    /// `from` and `lane` are the fabric's own record of the connection, not the frame's claim.
    /// With `deferred`, the payload stays staged at the sender under that transfer id.
    Frame {
        conn: ConnId,
        from: Nid,
        lane: Lane,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        deferred: Option<XferId>,
    },
    /// A fetch of a staged payload finished.
    Fetched {
        handle: RxHandle,
        result: Result<Bytes, LndError>,
    },
    /// A staged payload was fetched or declined (or its connection died): the send is done.
    Released {
        token: TxToken,
        result: Result<(), LndError>,
    },
    /// The other side closed or reset the connection.
    Reset { conn: ConnId, error: LndError },
    /// A connect attempt failed before any connection existed.
    ConnectFailed {
        peer: Nid,
        lane: Lane,
        error: LndError,
    },
}

struct Arrival {
    at: Time,
    seq: u64,
    item: Item,
}

impl PartialEq for Arrival {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Arrival {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct Port {
    inbox: BinaryHeap<Reverse<Arrival>>,
    woken: bool,
    cond: Arc<Condvar>,
    /// Signalled too, for a driver thread that sleeps on several LNDs (made on demand).
    event: Option<Arc<crate::sys::EventFd>>,
}

struct ConnRec {
    ends: [Nid; 2],
    lane: Lane,
    /// Latest arrival time scheduled towards each end, to keep the connection FIFO.
    last_at: [Time; 2],
}

impl ConnRec {
    fn end_of(&self, nid: Nid) -> Option<usize> {
        self.ends.iter().position(|&e| e == nid)
    }
}

struct State {
    ports: FxHashMap<Nid, Port>,
    conns: FxHashMap<ConnId, ConnRec>,
    /// Connection per unordered node pair and lane.
    by_pair: FxHashMap<(Nid, Nid, Lane), ConnId>,
    links: FxHashMap<(Nid, Nid), LinkFaults>,
    default_link: LinkFaults,
    connect_timeout: Duration,
    rng: SplitMix64,
    staged: FxHashMap<XferId, Staged>,
    next_xfer: XferId,
    next_conn: ConnId,
    next_seq: u64,
    stats: FabricStats,
    /// (arrival time, port) of every item scheduled, for drivers of the virtual clock that
    /// visit only the ports with something due. Entries of items already taken are stale
    /// and skipped. Kept on a virtual clock only: on a real one nobody takes them, and
    /// they would grow with every frame for as long as the fabric lives.
    arrivals: BinaryHeap<Reverse<(Time, Nid)>>,
    /// Whether `arrivals` is kept (the clock is virtual).
    tracks_arrivals: bool,
}

fn pair(a: Nid, b: Nid) -> (Nid, Nid) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl State {
    fn link(&self, a: Nid, b: Nid) -> LinkFaults {
        self.links
            .get(&pair(a, b))
            .copied()
            .unwrap_or(self.default_link)
    }

    fn schedule(&mut self, to: Nid, at: Time, item: Item) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(port) = self.ports.get_mut(&to) {
            port.inbox.push(Reverse(Arrival { at, seq, item }));
            port.cond.notify_one();
            if let Some(e) = &port.event {
                e.signal();
            }
            if self.tracks_arrivals {
                self.arrivals.push(Reverse((at, to)));
            }
        }
    }

    /// Arrival time of the next frame from `from` on `conn`: delay plus jitter, no earlier
    /// than the previous one in the same direction.
    fn arrival_time(&mut self, now: Time, conn: ConnId, from: Nid) -> Option<(Nid, Time)> {
        let rec = self.conns.get(&conn)?;
        let to_end = 1 - rec.end_of(from)?;
        let to = rec.ends[to_end];
        let link = self.link(from, to);
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.unit())
        };
        let rec = self.conns.get_mut(&conn)?;
        let at = (now + link.delay + jitter).max(rec.last_at[to_end]);
        rec.last_at[to_end] = at;
        Some((to, at))
    }

    fn remove_conn(&mut self, conn: ConnId) -> Option<ConnRec> {
        let rec = self.conns.remove(&conn)?;
        let (a, b) = pair(rec.ends[0], rec.ends[1]);
        self.by_pair.remove(&(a, b, rec.lane));
        Some(rec)
    }

    /// Tears `conn` down from `from`'s side; the other end hears `error` after in-flight
    /// frames.
    fn reset(&mut self, now: Time, conn: ConnId, from: Nid, error: LndError) {
        if let Some((to, at)) = self.arrival_time(now, conn, from) {
            self.remove_conn(conn).expect("arrival_time found it");
            self.release_staged(now, conn, &error);
            let item = Item::Reset { conn, error };
            self.schedule(to, at, item);
        }
    }
}

pub(super) struct Shared {
    state: Mutex<State>,
    pub(super) clock: Arc<dyn Clock>,
}

/// The shared in-memory network. Cheap to clone; all clones are the same network.
#[derive(Clone)]
pub struct MemFabric {
    pub(super) shared: Arc<Shared>,
}

/// What a new connection attempt turned into.
pub(super) enum Dial {
    /// A new connection; the caller sends its HELLO on it.
    New(ConnId),
    /// A connection for this pair and lane is already being set up or is up.
    Joined,
    /// The attempt failed; its `ConnectFailed` is scheduled.
    Failed,
}

impl MemFabric {
    /// A network on `clock`, with random faults drawn from `seed`.
    pub fn new(clock: Arc<dyn Clock>, seed: u64) -> MemFabric {
        MemFabric {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ports: FxHashMap::default(),
                    conns: FxHashMap::default(),
                    by_pair: FxHashMap::default(),
                    links: FxHashMap::default(),
                    default_link: LinkFaults::default(),
                    connect_timeout: Duration::from_secs(1),
                    rng: SplitMix64::new(seed),
                    staged: FxHashMap::default(),
                    next_xfer: 1,
                    next_conn: 1,
                    next_seq: 0,
                    stats: FabricStats::default(),
                    arrivals: BinaryHeap::new(),
                    tracks_arrivals: clock.is_virtual(),
                }),
                clock,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now(&self) -> Time {
        self.shared.clock.now()
    }

    /// Faults for links with no setting of their own.
    pub fn set_default_link(&self, faults: LinkFaults) {
        self.lock().default_link = faults;
    }

    pub fn set_link(&self, a: Nid, b: Nid, faults: LinkFaults) {
        self.lock().links.insert(pair(a, b), faults);
    }

    pub fn link(&self, a: Nid, b: Nid) -> LinkFaults {
        self.lock().link(a, b)
    }

    /// Cuts or heals the link between `a` and `b`, keeping its other settings.
    pub fn set_cut(&self, a: Nid, b: Nid, cut: bool) {
        let mut st = self.lock();
        let mut l = st.link(a, b);
        l.cut = cut;
        st.links.insert(pair(a, b), l);
    }

    /// How long a connection attempt across a cut link takes to fail.
    pub fn set_connect_timeout(&self, d: Duration) {
        self.lock().connect_timeout = d;
    }

    /// Resets every connection between `a` and `b`, as a middlebox sending RSTs would.
    pub fn reset_connections(&self, a: Nid, b: Nid) {
        let now = self.now();
        let mut st = self.lock();
        let (x, y) = pair(a, b);
        for lane in Lane::ALL {
            if let Some(conn) = st.by_pair.get(&(x, y, lane)).copied() {
                let err = || LndError::new(LndErrorKind::Reset, "connection reset (injected)");
                // Both ends hear of it; remove the record only once both are scheduled.
                if let Some((to, at)) = st.arrival_time(now, conn, a) {
                    let item = Item::Reset { conn, error: err() };
                    st.schedule(to, at, item);
                }
                st.reset(now, conn, b, err());
            }
        }
    }

    pub fn stats(&self) -> FabricStats {
        self.lock().stats
    }

    /// Arrivals booked for [`MemFabric::next_arrival`] and [`MemFabric::due_ports`], stale
    /// ones included.
    #[cfg(test)]
    pub(crate) fn arrivals_booked(&self) -> usize {
        self.lock().arrivals.len()
    }

    /// When the next item is due at any port (for a virtual-clock driver loop; on a real
    /// clock, none is booked).
    pub fn next_arrival(&self) -> Option<Time> {
        let mut st = self.lock();
        let st = &mut *st;
        while let Some(&Reverse((at, nid))) = st.arrivals.peek() {
            let head = st
                .ports
                .get(&nid)
                .and_then(|p| p.inbox.peek())
                .map(|Reverse(a)| a.at);
            if head.is_some_and(|h| h <= at) {
                return Some(at);
            }
            // Taken already (or the port is gone); its head, if later, has its own entry.
            st.arrivals.pop();
        }
        None
    }

    /// Ports with an item due at or before `now`, each once, in NID order (on a virtual
    /// clock; on a real one, none).
    pub fn due_ports(&self, now: Time) -> Vec<Nid> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut due = Vec::new();
        while let Some(&Reverse((at, nid))) = st.arrivals.peek() {
            if at > now {
                break;
            }
            st.arrivals.pop();
            let ready = st
                .ports
                .get(&nid)
                .and_then(|p| p.inbox.peek())
                .is_some_and(|Reverse(a)| a.at <= now);
            if ready {
                due.push(nid);
            }
        }
        due.sort_unstable();
        due.dedup();
        due
    }

    /// Whether `nid` is attached.
    pub fn is_attached(&self, nid: Nid) -> bool {
        self.lock().ports.contains_key(&nid)
    }

    pub(super) fn attach(&self, nid: Nid) -> Result<Arc<Condvar>, LndError> {
        let mut st = self.lock();
        if st.ports.contains_key(&nid) {
            return Err(LndError::new(
                LndErrorKind::Resource,
                format!("{nid} is already attached to this fabric"),
            ));
        }
        let port = Port::default();
        let cond = port.cond.clone();
        st.ports.insert(nid, port);
        Ok(cond)
    }

    /// Removes `nid` as if its process died: its connections are reset at their other ends,
    /// after the frames it already sent.
    pub(super) fn detach(&self, nid: Nid) {
        let now = self.now();
        let mut st = self.lock();
        st.ports.remove(&nid);
        let mut mine: Vec<ConnId> = st
            .conns
            .iter()
            .filter(|(_, r)| r.end_of(nid).is_some())
            .map(|(c, _)| *c)
            .collect();
        mine.sort_unstable();
        for conn in mine {
            let err = LndError::new(
                LndErrorKind::Reset,
                format!("connection reset: {nid} went away"),
            );
            st.reset(now, conn, nid, err);
        }
    }

    pub(super) fn dial(&self, from: Nid, to: Nid, lane: Lane) -> Dial {
        let now = self.now();
        let mut st = self.lock();
        let (x, y) = pair(from, to);
        if st.by_pair.contains_key(&(x, y, lane)) {
            return Dial::Joined;
        }
        let link = st.link(from, to);
        let failure = if !st.ports.contains_key(&to) {
            Some((
                now + link.delay * 2,
                LndError::new(
                    LndErrorKind::Refused,
                    format!("connection refused: nothing at {to}"),
                ),
            ))
        } else if link.cut {
            let t = st.connect_timeout;
            Some((
                now + t,
                LndError::new(
                    LndErrorKind::TimedOut,
                    format!("connection to {to} timed out"),
                ),
            ))
        } else {
            None
        };
        if let Some((at, error)) = failure {
            st.schedule(
                from,
                at,
                Item::ConnectFailed {
                    peer: to,
                    lane,
                    error,
                },
            );
            return Dial::Failed;
        }
        let conn = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(
            conn,
            ConnRec {
                ends: [from, to],
                lane,
                last_at: [now; 2],
            },
        );
        st.by_pair.insert((x, y, lane), conn);
        Dial::New(conn)
    }

    /// Sends a frame on `conn`. Handshake frames (`reliable`) ignore loss and cuts, so that a
    /// connect always ends in a result; later frames may vanish. Err if the connection is gone.
    pub(super) fn send(
        &self,
        from: Nid,
        conn: ConnId,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        reliable: bool,
    ) -> Result<(), LndError> {
        self.send_frame(from, conn, header, payload, reliable, None)
            .map(|_| ())
    }

    fn send_frame(
        &self,
        from: Nid,
        conn: ConnId,
        header: [u8; HEADER_LEN],
        payload: Bytes,
        reliable: bool,
        staged: Option<Staged>,
    ) -> Result<bool, LndError> {
        let now = self.now();
        let mut st = self.lock();
        let Some((to, at)) = st.arrival_time(now, conn, from) else {
            return Err(LndError::new(LndErrorKind::Reset, "connection is gone"));
        };
        if !reliable {
            let link = st.link(from, to);
            if link.cut {
                st.stats.cut += 1;
                return Ok(false);
            }
            if link.loss > 0.0 && st.rng.unit() < link.loss {
                st.stats.lost += 1;
                return Ok(false);
            }
        }
        st.stats.delivered += 1;
        let lane = st.conns[&conn].lane;
        let deferred = staged.map(|s| {
            let x = st.next_xfer;
            st.next_xfer += 1;
            st.staged.insert(x, s);
            x
        });
        let item = Item::Frame {
            conn,
            from,
            lane,
            header,
            payload,
            deferred,
        };
        st.schedule(to, at, item);
        Ok(deferred.is_some())
    }

    /// Closes `conn` from `from`'s side.
    pub(super) fn close(&self, from: Nid, conn: ConnId, error: LndError) {
        let now = self.now();
        self.lock().reset(now, conn, from, error);
    }

    /// Takes the items due at `nid`, waiting up to `timeout` for one on a real clock.
    pub(super) fn take_due(&self, nid: Nid, timeout: Option<Duration>, out: &mut Vec<Item>) {
        let clock = &self.shared.clock;
        let deadline = timeout.map(|t| clock.now() + t);
        let mut st = self.lock();
        loop {
            let now = clock.now();
            let Some(port) = st.ports.get_mut(&nid) else {
                return;
            };
            while port.inbox.peek().is_some_and(|Reverse(a)| a.at <= now) {
                out.push(port.inbox.pop().expect("peeked").0.item);
            }
            let woken = std::mem::take(&mut port.woken);
            if !out.is_empty() || woken || clock.is_virtual() {
                return;
            }
            let next_due = port.inbox.peek().map(|Reverse(a)| a.at);
            let wake_at = match (deadline, next_due) {
                (Some(d), Some(n)) => d.min(n),
                (Some(d), None) => d,
                (None, Some(n)) => n,
                (None, None) => Time(u64::MAX),
            };
            if wake_at <= now {
                return;
            }
            let cond = port.cond.clone();
            let wait = (wake_at - now).min(Duration::from_secs(3600));
            st = cond
                .wait_timeout(st, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if deadline.is_some_and(|d| clock.now() >= d) && out.is_empty() {
                // One last look for anything that became due while waiting.
                let now = clock.now();
                if let Some(port) = st.ports.get_mut(&nid) {
                    while port.inbox.peek().is_some_and(|Reverse(a)| a.at <= now) {
                        out.push(port.inbox.pop().expect("peeked").0.item);
                    }
                }
                return;
            }
        }
    }

    pub(super) fn wake(&self, nid: Nid) {
        let mut st = self.lock();
        if let Some(port) = st.ports.get_mut(&nid) {
            port.woken = true;
            port.cond.notify_one();
            if let Some(e) = &port.event {
                e.signal();
            }
        }
    }

    /// `nid`'s descriptor for a thread sleeping on several LNDs (readable when something
    /// was scheduled for it or it was woken), made the first time it is asked for. None on
    /// a virtual clock: nobody sleeps there, time moves only when advanced.
    pub(super) fn event(&self, nid: Nid) -> Option<Arc<crate::sys::EventFd>> {
        if self.shared.clock.is_virtual() {
            return None;
        }
        let mut st = self.lock();
        let port = st.ports.get_mut(&nid)?;
        if port.event.is_none() {
            match crate::sys::EventFd::new() {
                Ok(e) => port.event = Some(Arc::new(e)),
                Err(e) => tracing::warn!(%nid, "no eventfd for the in-memory LND: {e}"),
            }
        }
        port.event.clone()
    }

    /// When the next item is due at `nid` (what a thread sleeping on it waits for).
    pub(super) fn next_due(&self, nid: Nid) -> Option<Time> {
        let st = self.lock();
        let port = st.ports.get(&nid)?;
        if port.woken {
            return Some(Time(0)); // a wake not yet seen by `take_due`: due now
        }
        port.inbox.peek().map(|Reverse(a)| a.at)
    }
}
