//! The connection table every LND keeps, so that the rules of the [driver
//! contract](super) about connections are written once: which connection carries each
//! (peer, lane), which are being set up, connection races, replacement, failures, and
//! handshake deadlines.
//!
//! The table knows no transport. The driver tells it what happened (it dialled, accepted,
//! a HELLO arrived, a connection failed) and the table says what that means: the
//! [`LndEvent`]s for the core (`Connected`, `ConnectFailed`, `Disconnected`, pushed onto
//! the driver's event list) and which connections the driver must now tear down (each
//! comes back as a [`Closed`] with its data and the error that ended it). Each connection
//! carries the driver's own state for it (`T`: a socket's buffers, a queue pair).
//!
//! The rules:
//!
//! * every connect request ends in exactly one `Connected` or `ConnectFailed`; a request
//!   for a lane that is up is answered `Connected` again;
//! * at most one connection per (peer, lane) is up; a newer one replaces it, reported as
//!   `Disconnected` (old) then `Connected` (new);
//! * when both sides dial, the connection dialled by the lower NID wins on both sides; the
//!   loser's dial is refused with a `Race` HELLO, and its request is answered by the
//!   winner's connection (or fails at the handshake deadline if that never comes). With
//!   keys, one exception: a connection the acceptor answered (its dialler took it for up)
//!   wins, once proved, over a dial of the acceptor's started since
//!   ([`ConnTable::incoming_proved`]: that dial is closed quietly). If that dial came up
//!   first, the proved connection is refused after all, and its dialler sees it replaced;
//! * a handshake that does not finish by its deadline fails the connection.
//!
//! Time is the caller's: every call that can start or end a deadline takes `now`, and
//! [`ConnTable::next_deadline`] says when to call [`ConnTable::expire`]. Both cost
//! O(log n) in the number of connections.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::{LndError, LndErrorKind, LndEvent};
use crate::handshake::PeerHello;
use crate::lane::{Lane, PerLane};
use crate::memo_map::MemoMap;
use crate::nid::Nid;
use crate::time::Time;

#[cfg(test)]
mod tests;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Being set up: the transport connecting, or HELLOs being exchanged.
    Handshake,
    /// Reported to the core; it carries frames.
    Up,
    /// Lost a connection race: the driver sends the `Race` refusal, then
    /// [`ConnTable::remove`]s it (or it fails, or its handshake deadline ends it).
    Refused,
}

/// A connection's data, and where it stands ([`ConnTable::get_mut_with_state`]).
#[derive(Debug)]
pub struct ConnMut<'a, T> {
    pub stage: Stage,
    /// Known from the start when dialled; from the HELLO when accepted.
    pub peer: Option<(Nid, Lane)>,
    pub data: &'a mut T,
}

/// What the driver does about the core's connect request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Dial, then report [`ConnTable::dialled`] (or [`ConnTable::dial_failed`]).
    Dial,
    /// Nothing: the answer was given (the lane is up) or comes when the connection being
    /// set up for the lane ends.
    Answered,
}

/// What the driver does with an accepted connection whose HELLO arrived.
#[derive(Debug)]
pub enum Incoming<Id, T> {
    /// Keep it: answer with our HELLO, then [`ConnTable::mark_up`] (at once, or when the
    /// transport says it is established). If we were dialling the same lane, our dial lost
    /// the race: it comes back here to be closed quietly.
    Accept { lost_dial: Option<Closed<Id, T>> },
    /// It lost a connection race: answer with a `Race` HELLO, then remove it.
    Refuse,
}

/// A connection the table has let go, for the driver to tear down: close its socket or
/// queue pair, and fail whatever it still holds with `error`.
#[derive(Debug)]
#[must_use = "a closed connection must be torn down by the driver"]
pub struct Closed<Id, T> {
    pub id: Id,
    pub data: T,
    pub error: LndError,
}

struct Entry<T> {
    data: T,
    /// Known from the start when dialled; from the HELLO when accepted.
    peer: Option<(Nid, Lane)>,
    dialled: bool,
    stage: Stage,
    hello: Option<PeerHello>,
    /// Until when the handshake may take (not once up).
    deadline: Option<Time>,
    /// When it came up.
    up_since: Time,
}

impl<T> Entry<T> {
    /// Accepted, and not up (nor refused as a race's loser, which leaves once its
    /// refusal is out).
    fn is_pending_accept(&self) -> bool {
        !self.dialled && self.stage == Stage::Handshake
    }
}

/// The connections of one (peer, lane).
struct LaneConns<Id> {
    up: Option<Id>,
    /// Our own dial, being set up.
    dialling: Option<Id>,
    /// The peer's connection, HELLO received, not yet up.
    accepting: Option<Id>,
    /// A connect request waits for the peer's connection (our dial lost a race, or theirs
    /// was already under way), until then.
    awaiting: Option<Time>,
}

impl<Id> Default for LaneConns<Id> {
    fn default() -> Self {
        LaneConns {
            up: None,
            dialling: None,
            accepting: None,
            awaiting: None,
        }
    }
}

impl<Id> LaneConns<Id> {
    fn is_empty(&self) -> bool {
        self.up.is_none()
            && self.dialling.is_none()
            && self.accepting.is_none()
            && self.awaiting.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer<Id> {
    Handshake(Id),
    Awaiting(Nid, Lane),
}

/// A driver's connections; see the module documentation.
pub struct ConnTable<Id, T> {
    local: Nid,
    /// What we offer in our HELLOs, reported with each `Connected`.
    credits: PerLane<u16>,
    handshake_timeout: Duration,
    race_window: Duration,
    /// Looked up several times per frame, mostly the same connection: see [`MemoMap`].
    conns: MemoMap<Id, Entry<T>>,
    lanes: FxHashMap<(Nid, Lane), LaneConns<Id>>,
    timers: BTreeSet<(Time, Timer<Id>)>,
    /// Accepted connections not up yet ([`Entry::is_pending_accept`]).
    pending_accepts: usize,
}

fn error(kind: LndErrorKind, detail: &str) -> LndError {
    LndError::new(kind, detail)
}

impl<Id: Copy + Eq + Hash + Ord + Debug, T> ConnTable<Id, T> {
    /// The table of the NI `local`, which offers `credits` per lane in its HELLOs; each
    /// handshake (and each wait for a race's winner) may take `handshake_timeout`.
    pub fn new(local: Nid, credits: PerLane<u16>, handshake_timeout: Duration) -> Self {
        ConnTable {
            local,
            credits,
            handshake_timeout,
            race_window: handshake_timeout,
            conns: MemoMap::default(),
            lanes: FxHashMap::default(),
            timers: BTreeSet::new(),
            pending_accepts: 0,
        }
    }

    /// For transports that never hold two connections for one (peer, lane) at once (the
    /// in-memory fabric pairs dials itself): a peer that dials while a connection is up
    /// has lost it, so its new connection always replaces the old one. By default, a
    /// same-life dial that arrives within the handshake timeout of our own dial coming up
    /// is the losing side of that race, and is refused.
    pub fn without_races(mut self) -> Self {
        self.race_window = Duration::ZERO;
        self
    }

    pub fn local(&self) -> Nid {
        self.local
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accepted connections not up yet (awaiting their HELLO, or the rest of their
    /// handshake, as an AUTH): what a flood of half-open connections grows, and what a
    /// driver caps.
    pub fn pending_accepts(&self) -> usize {
        self.pending_accepts
    }

    /// The accepted connection that has waited longest to come up, removed from the table
    /// (the driver closes it): room for a new one when too many wait. A request that
    /// waited for it (our dial lost the race to it) fails at its own deadline.
    pub fn evict_oldest_pending_accept(&mut self) -> Option<(Id, T)> {
        let id = self.timers.iter().find_map(|(_, t)| match t {
            Timer::Handshake(id) if self.conns.get(id).is_some_and(Entry::is_pending_accept) => {
                Some(*id)
            }
            _ => None,
        })?;
        let error = error(
            LndErrorKind::TimedOut,
            "evicted: too many accepted connections awaiting their handshake",
        );
        self.remove_entry(id, error).map(|c| (c.id, c.data))
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        self.conns.get(&id).map(|e| &e.data)
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.conns.get_mut(&id).map(|e| &mut e.data)
    }

    /// A connection's data with its stage and its (peer, lane): what a driver reads for
    /// each frame it receives, in one lookup rather than three.
    pub fn get_mut_with_state(&mut self, id: Id) -> Option<ConnMut<'_, T>> {
        self.conns.get_mut(&id).map(|e| ConnMut {
            stage: e.stage,
            peer: e.peer,
            data: &mut e.data,
        })
    }

    /// Every connection and its data, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        self.conns.iter().map(|(id, e)| (*id, &e.data))
    }

    pub fn stage(&self, id: Id) -> Option<Stage> {
        self.conns.get(&id).map(|e| e.stage)
    }

    /// The (peer, lane) of a connection, once known.
    pub fn peer(&self, id: Id) -> Option<(Nid, Lane)> {
        self.conns.get(&id)?.peer
    }

    pub fn is_dialled(&self, id: Id) -> bool {
        self.conns.get(&id).is_some_and(|e| e.dialled)
    }

    /// The connection that carries (peer, lane), if it is up.
    pub fn up(&self, peer: Nid, lane: Lane) -> Option<Id> {
        self.lanes.get(&(peer, lane))?.up
    }

    /// When [`ConnTable::expire`] next has something to do.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    // ---- the core's requests ------------------------------------------------------------

    /// The core asks for (peer, lane) ([`super::Lnd::connect`]).
    pub fn connect(
        &mut self,
        peer: Nid,
        lane: Lane,
        now: Time,
        events: &mut Vec<LndEvent>,
    ) -> Connect {
        let Some(conns) = self.lanes.get_mut(&(peer, lane)) else {
            return Connect::Dial;
        };
        let up = conns.up.and_then(|up| self.conns.get(&up)?.hello);
        if let Some(hello) = up {
            // Already up: say so again rather than leave the request unanswered.
            events.push(self.connected(hello));
            return Connect::Answered;
        }
        if conns.dialling.is_some() || conns.awaiting.is_some() {
            return Connect::Answered; // when that attempt ends
        }
        if conns.accepting.is_some() {
            // The peer's connection is being set up: it answers, or the wait times out.
            self.await_until((peer, lane), now + self.handshake_timeout);
            return Connect::Answered;
        }
        Connect::Dial
    }

    /// The driver started dialling connection `id` for (peer, lane).
    pub fn dialled(&mut self, id: Id, peer: Nid, lane: Lane, data: T, now: Time) {
        self.insert(id, data, Some((peer, lane)), true, now);
        self.lanes.entry((peer, lane)).or_default().dialling = Some(id);
    }

    /// Dialling failed before a connection existed: the request's answer.
    pub fn dial_failed(
        &mut self,
        peer: Nid,
        lane: Lane,
        error: LndError,
        events: &mut Vec<LndEvent>,
    ) {
        events.push(LndEvent::ConnectFailed { peer, lane, error });
    }

    /// The driver learned that the peer's connection for (peer, lane) is under way (and
    /// will arrive as an accepted one): a connect request waits for it, until the deadline.
    pub fn await_peer(&mut self, peer: Nid, lane: Lane, now: Time) {
        let conns = self.lanes.entry((peer, lane)).or_default();
        if conns.up.is_none() && conns.awaiting.is_none() {
            self.await_until((peer, lane), now + self.handshake_timeout);
        }
    }

    /// Closes the connection that carries (peer, lane), if one is up.
    pub fn close(
        &mut self,
        peer: Nid,
        lane: Lane,
        error: LndError,
        events: &mut Vec<LndEvent>,
    ) -> Option<Closed<Id, T>> {
        let id = self.up(peer, lane)?;
        self.fail(id, error, events)
    }

    // ---- what the transport reports -----------------------------------------------------

    /// The driver accepted connection `id`; its peer says who it is in its HELLO.
    pub fn accepted(&mut self, id: Id, data: T, now: Time) {
        self.insert(id, data, None, false, now);
    }

    /// The HELLO of accepted connection `id` arrived (checked by the driver): keep it, or
    /// refuse it as the loser of a connection race.
    pub fn incoming(&mut self, id: Id, hello: PeerHello, now: Time) -> Incoming<Id, T> {
        self.take_incoming(id, hello, now, true)
    }

    /// [`ConnTable::incoming`] for a connection whose peer has just proved its key, having
    /// been answered with an Ok HELLO and a challenge when it said HELLO (no race was lost
    /// then: [`ConnTable::loses_race`]). Its dialler took it for up at that answer and may
    /// have sent on it: a dial of ours for the lane, started since, loses the race to it
    /// whatever the NIDs (refused instead, this connection would go down under those
    /// frames). Until the proof, the table knew nothing of it: an impostor changes nothing.
    pub fn incoming_proved(&mut self, id: Id, hello: PeerHello, now: Time) -> Incoming<Id, T> {
        self.take_incoming(id, hello, now, false)
    }

    /// [`ConnTable::incoming`], the connection losing to our dial being set up only if
    /// `to_our_dial` (see [`ConnTable::loses_race_to`]).
    fn take_incoming(
        &mut self,
        id: Id,
        hello: PeerHello,
        now: Time,
        to_our_dial: bool,
    ) -> Incoming<Id, T> {
        let key = (hello.nid, hello.lane);
        let Some(entry) = self.conns.get_mut(&id) else {
            debug_assert!(false, "incoming HELLO on unknown connection {id:?}");
            return Incoming::Refuse;
        };
        entry.peer = Some(key);
        entry.hello = Some(hello);
        if self.loses_race_to(&hello, now, to_our_dial) {
            return self.refuse(id);
        }
        let conns = self.lanes.entry(key).or_default();
        let mut lost_dial = None;
        if let Some(mine) = conns.dialling {
            // Theirs wins, on both sides: our dial goes quietly, and this connection
            // answers the request it was for (or the wait for it times out).
            conns.dialling = None;
            self.await_until(key, now + self.handshake_timeout);
            let lost = error(LndErrorKind::Closed, "lost a connection race");
            lost_dial = self.remove_entry(mine, lost);
        }
        self.lanes.entry(key).or_default().accepting = Some(id);
        Incoming::Accept { lost_dial }
    }

    /// Whether a connection from the peer of `hello` would lose a connection race now
    /// ([`ConnTable::incoming`] would refuse it). Changes nothing: a driver that
    /// authenticates its peers asks this before the peer has proved who it is, and calls
    /// `incoming` only once it has.
    pub fn loses_race(&self, hello: &PeerHello, now: Time) -> bool {
        self.loses_race_to(hello, now, true)
    }

    /// [`ConnTable::loses_race`], to our dial being set up only if `to_our_dial`.
    fn loses_race_to(&self, hello: &PeerHello, now: Time, to_our_dial: bool) -> bool {
        let we_win = self.local < hello.nid;
        let Some(conns) = self.lanes.get(&(hello.nid, hello.lane)) else {
            return false;
        };
        if let Some(up) = conns.up.and_then(|up| self.conns.get(&up)) {
            let same_life = up.hello.is_some_and(|h| h.incarnation == hello.incarnation);
            let fresh = now < up.up_since + self.race_window;
            if same_life && up.dialled && we_win && fresh {
                // Our dial won and just came up: this is the peer's side of that race,
                // its HELLO already on its way. (Later, a same-life dial means the peer
                // lost the connection, and its new one replaces ours when up.)
                return true;
            }
        }
        // Both dialling: the lower NID's dial wins.
        to_our_dial && conns.dialling.is_some() && we_win
    }

    fn refuse(&mut self, id: Id) -> Incoming<Id, T> {
        if let Some(e) = self.conns.get_mut(&id) {
            self.pending_accepts -= usize::from(e.is_pending_accept());
            e.stage = Stage::Refused;
        }
        Incoming::Refuse
    }

    /// Our dial `id` got the peer's HELLO (checked by the driver): it is up.
    pub fn answered(
        &mut self,
        id: Id,
        hello: PeerHello,
        now: Time,
        events: &mut Vec<LndEvent>,
    ) -> Option<Closed<Id, T>> {
        if let Some(e) = self.conns.get_mut(&id) {
            e.hello = Some(hello);
        }
        self.mark_up(id, now, events)
    }

    /// Connection `id` (an accepted one whose HELLO was taken, or an answered dial) is up.
    /// It replaces any other connection of its (peer, lane), which comes back closed.
    pub fn mark_up(
        &mut self,
        id: Id,
        now: Time,
        events: &mut Vec<LndEvent>,
    ) -> Option<Closed<Id, T>> {
        let entry = self.conns.get_mut(&id)?;
        let (Some(key), Some(hello)) = (entry.peer, entry.hello) else {
            debug_assert!(false, "{id:?} marked up before its HELLO");
            return None;
        };
        if entry.stage != Stage::Handshake {
            return None;
        }
        self.pending_accepts -= usize::from(entry.is_pending_accept());
        entry.stage = Stage::Up;
        entry.up_since = now;
        if let Some(d) = entry.deadline.take() {
            self.timers.remove(&(d, Timer::Handshake(id)));
        }
        let conns = self.lanes.entry(key).or_default();
        if conns.dialling == Some(id) {
            conns.dialling = None;
        }
        if conns.accepting == Some(id) {
            conns.accepting = None;
        }
        if let Some(until) = conns.awaiting.take() {
            self.timers.remove(&(until, Timer::Awaiting(key.0, key.1)));
        }
        let old = conns.up.replace(id).filter(|&old| old != id);
        let replaced = old.and_then(|old| {
            // The peer dialled again: it restarted, or believes the old connection dead.
            let error = error(LndErrorKind::Reset, "replaced by a new connection");
            events.push(LndEvent::Disconnected {
                peer: key.0,
                lane: key.1,
                error: error.clone(),
            });
            self.remove_entry(old, error)
        });
        events.push(self.connected(hello));
        replaced
    }

    /// Our dial `id` was refused as the loser of a connection race: it goes quietly, and
    /// the request waits for the peer's connection.
    pub fn lost_race(&mut self, id: Id, now: Time) -> Option<Closed<Id, T>> {
        let key = self.conns.get(&id)?.peer?;
        let conns = self.lanes.entry(key).or_default();
        if conns.dialling == Some(id) {
            conns.dialling = None;
            if conns.up.is_none() && conns.awaiting.is_none() {
                self.await_until(key, now + self.handshake_timeout);
            }
        }
        let lost = error(LndErrorKind::Closed, "lost a connection race");
        self.remove_entry(id, lost)
    }

    /// Connection `id` failed (an I/O error, the peer closed it, a protocol error): the
    /// core hears what it meant (`Disconnected` if it was up, `ConnectFailed` if a
    /// request depended on it).
    pub fn fail(
        &mut self,
        id: Id,
        error: LndError,
        events: &mut Vec<LndEvent>,
    ) -> Option<Closed<Id, T>> {
        let key = self.conns.get(&id)?.peer;
        if let Some((peer, lane)) = key {
            if let Some(conns) = self.lanes.get_mut(&(peer, lane)) {
                let error = error.clone();
                if conns.up == Some(id) {
                    conns.up = None;
                    events.push(LndEvent::Disconnected { peer, lane, error });
                } else if conns.dialling == Some(id) {
                    conns.dialling = None;
                    events.push(LndEvent::ConnectFailed { peer, lane, error });
                } else if conns.accepting == Some(id) {
                    conns.accepting = None;
                    // A request waiting for this connection learns now, not at its deadline.
                    if let Some(until) = conns.awaiting.take() {
                        self.timers.remove(&(until, Timer::Awaiting(peer, lane)));
                        events.push(LndEvent::ConnectFailed { peer, lane, error });
                    }
                }
            }
        }
        self.remove_entry(id, error)
    }

    /// A request waiting for the peer's connection to (peer, lane) fails now with `error`
    /// (the driver learned that connection will not come).
    pub fn wait_failed(
        &mut self,
        peer: Nid,
        lane: Lane,
        error: LndError,
        events: &mut Vec<LndEvent>,
    ) {
        let Some(conns) = self.lanes.get_mut(&(peer, lane)) else {
            return;
        };
        if let Some(until) = conns.awaiting.take() {
            self.timers.remove(&(until, Timer::Awaiting(peer, lane)));
            events.push(LndEvent::ConnectFailed { peer, lane, error });
            self.tidy((peer, lane));
        }
    }

    /// Forgets connection `id` without a word to the core: a refused one once its
    /// refusal is sent, or an accepted one whose HELLO was no good. (A connection the
    /// core knows of, or a request waits on, must [`ConnTable::fail`] instead.)
    pub fn remove(&mut self, id: Id) -> Option<T> {
        debug_assert!(
            self.stage(id) == Some(Stage::Refused) || self.peer(id).is_none(),
            "{id:?} matters to the core: fail it instead"
        );
        let error = error(LndErrorKind::Closed, "removed");
        self.remove_entry(id, error).map(|c| c.data)
    }

    /// Ends every handshake and every wait for a peer's connection that is past its
    /// deadline at `now`, in deadline order; the connections come back to be torn down.
    pub fn expire(&mut self, now: Time, events: &mut Vec<LndEvent>) -> Vec<Closed<Id, T>> {
        let mut closed = Vec::new();
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Handshake(id) => {
                    // The entry's deadline is `at`; `fail` finds the timer gone already.
                    if let Some(e) = self.conns.get_mut(&id) {
                        e.deadline = None;
                    }
                    let error = error(LndErrorKind::TimedOut, "connection handshake timed out");
                    closed.extend(self.fail(id, error, events));
                }
                Timer::Awaiting(peer, lane) => {
                    let conns = self.lanes.get_mut(&(peer, lane));
                    if let Some(conns) = conns.filter(|c| c.awaiting == Some(at)) {
                        conns.awaiting = None;
                        let error = error(
                            LndErrorKind::TimedOut,
                            "lost a connection race, and the peer's own connection never came",
                        );
                        events.push(LndEvent::ConnectFailed { peer, lane, error });
                        self.tidy((peer, lane));
                    }
                }
            }
        }
        closed
    }

    // ---- internals ----------------------------------------------------------------------

    /// A connect request for `key` waits for the peer's connection until `until` (one
    /// wait per lane: a new one replaces the old, timer and all).
    fn await_until(&mut self, key: (Nid, Lane), until: Time) {
        let conns = self.lanes.entry(key).or_default();
        if let Some(old) = conns.awaiting.replace(until) {
            self.timers.remove(&(old, Timer::Awaiting(key.0, key.1)));
        }
        self.timers.insert((until, Timer::Awaiting(key.0, key.1)));
    }

    fn insert(&mut self, id: Id, data: T, peer: Option<(Nid, Lane)>, dialled: bool, now: Time) {
        let deadline = now + self.handshake_timeout;
        self.timers.insert((deadline, Timer::Handshake(id)));
        self.pending_accepts += usize::from(!dialled);
        let entry = Entry {
            data,
            peer,
            dialled,
            stage: Stage::Handshake,
            hello: None,
            deadline: Some(deadline),
            up_since: now,
        };
        if let Some(stale) = self.conns.insert(id, entry) {
            debug_assert!(false, "connection id {id:?} reused while in the table");
            self.pending_accepts -= usize::from(stale.is_pending_accept());
            if let Some(d) = stale.deadline {
                self.timers.remove(&(d, Timer::Handshake(id)));
            }
        }
    }

    /// Removes `id`'s entry and timer (its lane must no longer name it), and hands it back.
    fn remove_entry(&mut self, id: Id, error: LndError) -> Option<Closed<Id, T>> {
        let entry = self.conns.remove(&id)?;
        self.pending_accepts -= usize::from(entry.is_pending_accept());
        if let Some(d) = entry.deadline {
            self.timers.remove(&(d, Timer::Handshake(id)));
        }
        if let Some(key) = entry.peer {
            if let Some(conns) = self.lanes.get_mut(&key) {
                for slot in [&mut conns.up, &mut conns.dialling, &mut conns.accepting] {
                    if *slot == Some(id) {
                        *slot = None;
                    }
                }
            }
            self.tidy(key);
        }
        Some(Closed {
            id,
            data: entry.data,
            error,
        })
    }

    /// Drops the lane's record once nothing is left in it, so idle peers cost nothing.
    fn tidy(&mut self, key: (Nid, Lane)) {
        if self.lanes.get(&key).is_some_and(LaneConns::is_empty) {
            self.lanes.remove(&key);
        }
    }

    fn connected(&self, hello: PeerHello) -> LndEvent {
        LndEvent::Connected {
            peer: hello.nid,
            lane: hello.lane,
            hello,
            local_credits: self.credits[hello.lane],
        }
    }
}
