//! Failover groups (seeds 002 and 004): a service addressed by several NIDs, Lustre's
//! failnode list. An operation to a group goes to its current member; when that member is
//! declared Down (end to end, through the routers: a router is judged only by its own
//! answers) the group moves to the next member that is not, with an event, and the
//! operations that failed on the old one go again there.
//!
//! * **Failover** mode: an operation keeps trying, member after member, until one answers
//!   or its deadline passes (Lustre's "retry until an answer", bounded). While every
//!   member is Down it waits, retrying each health interval (which also probes them).
//! * **Failout** mode: a member's failure fails the operation at once (Lustre's EIO).
//!
//! Each attempt is an ordinary operation of the node (a *child*, with an id of its own
//! that the application never sees); the application's operation (the *parent*) completes
//! exactly once, with the last attempt's result. Each attempt is a new request (a message
//! id of its own): one that failed after it left (a connection reset, a router failing
//! with it in flight) may have been delivered, and the next attempt, to the next member
//! or to the same one an interval later, can deliver it again. Delivery is at least once:
//! telling a retry apart is the service's business (Lustre's XIDs and reply
//! reconstruction; its replay for a member that died).

use std::collections::BTreeSet;
use std::time::Duration;

use rustc_hash::FxHashMap;

use super::Node;
use crate::nid::Nid;
use crate::op::{Event, GetRequest, OpError, OpId, OpOutcome, PutRequest};
use crate::time::Time;

/// Ids of attempts: never one the application gives (the node refuses ids with this
/// bit from it).
const ATTEMPT_BIT: u64 = 1 << 62;

/// How a failover group treats a member's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    /// Go on with the next member, until the operation's deadline.
    Failover,
    /// Fail the operation at once.
    Failout,
}

/// A service and the NIDs it may be reached at, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverGroup {
    pub name: String,
    pub members: Vec<Nid>,
    pub mode: FailoverMode,
}

/// A group of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub u32);

/// An operation addressed to a group.
#[derive(Debug, Clone)]
pub enum GroupRequest {
    /// `dst` is ignored: the group's current member is used.
    Put(PutRequest),
    /// `dst` is ignored: the group's current member is used.
    Get(GetRequest),
}

struct Group {
    spec: FailoverGroup,
    current: usize,
    /// A member that failed an attempt, monitored until it answers again or the group
    /// leaves it: attempts that fail at once must not restart its silence each time, or
    /// it would never be declared Down.
    suspect: Option<Nid>,
}

struct Parent {
    group: GroupId,
    req: GroupRequest,
    deadline: Time,
    /// The attempt under way, if any.
    attempt: Option<OpId>,
    /// Attempts since it last waited: after one per member, it waits.
    round: usize,
    last_error: Option<OpError>,
}

#[derive(Default)]
pub(crate) struct Groups {
    groups: Vec<Group>,
    parents: FxHashMap<OpId, Parent>,
    /// Attempt -> its parent.
    attempts: FxHashMap<OpId, OpId>,
    /// Attempt -> the member it went to.
    attempt_member: FxHashMap<OpId, Nid>,
    /// Parents waiting to try again, by when.
    waiting: BTreeSet<(Time, OpId)>,
    next_attempt: u64,
}

impl Groups {
    pub(crate) fn is_attempt(id: OpId) -> bool {
        id.0 & ATTEMPT_BIT != 0
    }

    /// An attempt being submitted now (its id reserved for it).
    pub(crate) fn is_live_attempt(&self, id: OpId) -> bool {
        self.attempts.contains_key(&id)
    }

    pub(crate) fn has_parent(&self, id: OpId) -> bool {
        self.parents.contains_key(&id)
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        self.waiting.first().map(|(t, _)| *t)
    }
}

/// A failure that says the member may be gone, rather than the request being wrong.
fn member_failure(e: &OpError) -> bool {
    matches!(
        e,
        OpError::PeerDead
            | OpError::PeerRestarted
            | OpError::NoRoute(_)
            | OpError::Network(_)
            | OpError::Remote(_)
    )
}

impl Node {
    /// Adds a failover group; its members must be reachable (a net or a route of ours).
    pub fn add_failover_group(&mut self, group: FailoverGroup) -> Result<GroupId, OpError> {
        if group.members.is_empty() {
            return Err(OpError::Invalid(format!(
                "failover group {:?} has no members",
                group.name
            )));
        }
        for &m in &group.members {
            self.check_reachable(m)?;
        }
        if let Some(i) = self
            .groups
            .groups
            .iter()
            .position(|g| g.spec.name == group.name)
        {
            return Err(OpError::Invalid(format!(
                "failover group {:?} exists already (group {i})",
                group.name
            )));
        }
        self.groups.groups.push(Group {
            spec: group,
            current: 0,
            suspect: None,
        });
        Ok(GroupId(self.groups.groups.len() as u32 - 1))
    }

    /// The group's member that operations go to now.
    pub fn group_member(&self, group: GroupId) -> Option<Nid> {
        let g = self.groups.groups.get(group.0 as usize)?;
        Some(g.spec.members[g.current])
    }

    /// Sends a PUT or GET to `group`'s current member, going on with the next ones as
    /// the group's mode says. It completes once, as op `id`.
    pub fn group_submit(
        &mut self,
        now: Time,
        id: OpId,
        group: GroupId,
        req: GroupRequest,
    ) -> Result<(), super::SubmitError> {
        self.clock = Some(now);
        self.check_id(id)?;
        let invalid = match &req {
            // Its answer is how a group learns that its member failed; and a failed one
            // may still have got through, which a retry would deliver again.
            GroupRequest::Put(r) if !r.ack => Some(
                "a failover group's PUTs must want an ACK: the answer is how it learns its \
                 member failed"
                    .to_owned(),
            ),
            GroupRequest::Put(r) => r.validate(self.cfg.max_payload).err(),
            GroupRequest::Get(r) => r.validate(self.cfg.max_payload).err(),
        };
        let early = if let Some(e) = &self.shut_down {
            Some(e.clone())
        } else if let Some(why) = invalid {
            Some(OpError::Invalid(why))
        } else if self.groups.groups.get(group.0 as usize).is_none() {
            Some(OpError::Invalid(format!("no failover group {}", group.0)))
        } else {
            None
        };
        if let Some(error) = early {
            self.push_completion(id, Err(error));
            return Ok(());
        }
        let timeout = match &req {
            GroupRequest::Put(r) => r.timeout,
            GroupRequest::Get(r) => r.timeout,
        };
        let deadline = now + timeout.unwrap_or(self.cfg.op_timeout);
        self.groups.parents.insert(
            id,
            Parent {
                group,
                req,
                deadline,
                attempt: None,
                round: 0,
                last_error: None,
            },
        );
        self.attempt(now, id);
        Ok(())
    }

    /// Starts an attempt of `parent` at its group's current member.
    fn attempt(&mut self, now: Time, parent: OpId) {
        let Some(p) = self.groups.parents.get_mut(&parent) else {
            return;
        };
        let g = &self.groups.groups[p.group.0 as usize];
        let member = g.spec.members[g.current];
        p.round += 1;
        let left = p
            .deadline
            .saturating_since(now)
            .max(Duration::from_millis(1));
        self.groups.next_attempt += 1;
        let child = OpId(ATTEMPT_BIT | self.groups.next_attempt);
        p.attempt = Some(child);
        self.groups.attempts.insert(child, parent);
        self.groups.attempt_member.insert(child, member);
        let submitted = match p.req.clone() {
            GroupRequest::Put(mut r) => {
                r.dst = member;
                r.timeout = Some(left);
                self.put(now, child, r)
            }
            GroupRequest::Get(mut r) => {
                r.dst = member;
                r.timeout = Some(left);
                self.get(now, child, r)
            }
        };
        debug_assert!(submitted.is_ok(), "attempt ids are fresh");
    }

    /// An attempt ended (instead of reporting it, which only its parent is).
    pub(crate) fn attempt_done(&mut self, child: OpId, result: Result<OpOutcome, OpError>) {
        let Some(parent) = self.groups.attempts.remove(&child) else {
            return;
        };
        let now = self.clock.unwrap_or_default();
        let Some(p) = self.groups.parents.get_mut(&parent) else {
            return;
        };
        p.attempt = None;
        let group = p.group;
        let member = self.groups.attempt_member.remove(&child);
        let error = match result {
            Ok(outcome) => {
                if self.groups.groups[group.0 as usize].suspect == member {
                    self.suspect(now, group, None); // it answers
                }
                return self.finish_parent(parent, Ok(outcome));
            }
            Err(e) => e,
        };
        let mode = self.groups.groups[group.0 as usize].spec.mode;
        let retry = member_failure(&error)
            && self.shut_down.is_none()
            && mode == FailoverMode::Failover
            && now < p.deadline;
        p.last_error = Some(error.clone());
        let g = &self.groups.groups[group.0 as usize];
        let current = g.spec.members[g.current];
        if member_failure(&error) && self.shut_down.is_none() && member == Some(current) {
            // Only the current member: a late failure of one the group already left
            // must not take the monitoring away from the one it uses now.
            self.suspect(now, group, Some(current));
            self.follow_member_health(now, group);
        }
        if !retry {
            return self.finish_parent(parent, Err(error));
        }
        let g = &self.groups.groups[group.0 as usize];
        // Moved off the member this attempt went to (by this failure or an earlier one).
        let tried = member.unwrap_or(current);
        let (members, moved) = (g.spec.members.len(), g.spec.members[g.current] != tried);
        let p = self
            .groups
            .parents
            .get_mut(&parent)
            .expect("looked up above");
        if moved && p.round < members {
            // The group moved on: the next member may answer, at once.
            self.attempt(now, parent);
        } else {
            // Still the member that failed (not yet declared Down), or every member
            // failed since the last wait: wait an interval (probes go on), then again.
            p.round = 0;
            let at = (now + self.cfg.health.interval).min(p.deadline);
            self.groups.waiting.insert((at, parent));
        }
    }

    /// Moves `group` off its current member if that member is Down and another is not.
    fn follow_member_health(&mut self, now: Time, group: GroupId) {
        let g = &self.groups.groups[group.0 as usize];
        let members = &g.spec.members;
        let from = members[g.current];
        if !self.health.is_down(from) {
            return;
        }
        let next = (1..members.len())
            .map(|k| (g.current + k) % members.len())
            .find(|&i| !self.health.is_down(members[i]));
        let Some(next) = next else {
            return; // all Down: it stays, and waits for one to answer
        };
        let to = members[next];
        let name = g.spec.name.clone();
        self.suspect(now, group, None);
        self.groups.groups[group.0 as usize].current = next;
        tracing::info!(group = %name, %from, %to, "failover: {from} is down, now {to}");
        self.out.events.push_back(Event::FailoverMoved {
            group: name,
            from,
            to,
            at: now,
        });
    }

    fn finish_parent(&mut self, parent: OpId, result: Result<OpOutcome, OpError>) {
        let Some(p) = self.groups.parents.remove(&parent) else {
            return; // ended already: exactly one completion
        };
        if let Some(child) = p.attempt {
            self.groups.attempts.remove(&child);
            self.groups.attempt_member.remove(&child);
        }
        self.push_completion(parent, result);
    }

    /// Makes `member` the group's suspect (monitored), or none.
    fn suspect(&mut self, now: Time, group: GroupId, member: Option<Nid>) {
        let g = &mut self.groups.groups[group.0 as usize];
        if g.suspect == member {
            return;
        }
        if let Some(old) = std::mem::replace(&mut g.suspect, member) {
            self.health.interest_ended(old);
        }
        if let Some(new) = member {
            self.health.interest_started(new, now);
        }
    }

    /// Parents whose wait is over try again (or end, past their deadline).
    pub(crate) fn groups_timeout(&mut self, now: Time) {
        while let Some(&(at, parent)) = self.groups.waiting.first() {
            if at > now {
                break;
            }
            self.groups.waiting.remove(&(at, parent));
            let Some(p) = self.groups.parents.get(&parent) else {
                continue;
            };
            if now >= p.deadline {
                let error = p.last_error.clone().unwrap_or(OpError::NetworkTimeout);
                self.finish_parent(parent, Err(error));
            } else {
                let group = p.group;
                self.follow_member_health(now, group);
                self.attempt(now, parent);
            }
        }
    }

    /// Cancels a group operation: its attempt (if one is under way) and itself.
    pub(crate) fn cancel_group_op(&mut self, parent: OpId) -> bool {
        let Some(p) = self.groups.parents.get(&parent) else {
            return false;
        };
        match p.attempt {
            // Its completion ends the parent (Cancelled is no member failure).
            Some(child) => self.complete(child, Err(OpError::Cancelled)),
            None => {
                self.groups.waiting.retain(|(_, w)| *w != parent);
                self.finish_parent(parent, Err(OpError::Cancelled));
            }
        }
        true
    }

    /// At shutdown: parents waiting between attempts end with `error` (those with an
    /// attempt under way end with it).
    pub(crate) fn abort_group_ops(&mut self, error: &OpError) {
        let waiting: Vec<OpId> = self.groups.waiting.iter().map(|(_, p)| *p).collect();
        self.groups.waiting.clear();
        for parent in waiting {
            self.finish_parent(parent, Err(error.clone()));
        }
        for i in 0..self.groups.groups.len() {
            self.suspect(Time::ZERO, GroupId(i as u32), None);
        }
    }

    /// For [`Node::take_live_ops`]: the application's ids of the group operations live,
    /// in place of their attempts; all forgotten.
    pub(crate) fn take_group_ops(&mut self, live: Vec<OpId>) -> Vec<OpId> {
        let mut out: Vec<OpId> = live
            .into_iter()
            .filter(|id| !Groups::is_attempt(*id))
            .collect();
        let mut parents: Vec<OpId> = self.groups.parents.keys().copied().collect();
        parents.sort_unstable();
        out.extend(parents);
        for g in &mut self.groups.groups {
            if let Some(s) = g.suspect.take() {
                self.health.interest_ended(s);
            }
        }
        self.groups.parents.clear();
        self.groups.attempts.clear();
        self.groups.attempt_member.clear();
        self.groups.waiting.clear();
        out
    }
}
