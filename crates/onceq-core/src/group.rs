//! Consumer groups: members that share a `per_key` queue's partitions (docs/design.md,
//! Invariants 10 and 11).
//!
//! A group's whole state is a [`GroupState`]: its members, and for each partition who owns it now
//! and who should own it ([`crate::ordering::assign`]'s decision). Every operation here is a pure
//! function of that state, the time and which partitions have a live lease, so that each store
//! only keeps the state (one record per group, read and written under the store's lock or row
//! lock) and answers "which of these partitions has a live lease".
//!
//! - **Balanced and sticky**: a membership change re-runs `assign` with the current targets, so
//!   only the partitions balance needs move.
//! - **Cooperative**: a partition whose target changed stays with its owner, listed as
//!   `revoking`, until no live lease is left in it; only then does the new member own it. A member
//!   leases only from the partitions it owns and is not giving up. So a partition has at most one
//!   owner at any moment, and changes owner only when no lease in it is live (Invariant 10); with
//!   one lease per key at a time (Invariant 9), no key is worked by two members at once.
//! - **Sessions**: a member that does not heartbeat within its session timeout is removed at the
//!   next operation on the group; its partitions move once its leases are settled or expired.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::limits::{
    GROUP_NAME_LEN_MAX, MEMBER_NAME_LEN_MAX, SESSION_TIMEOUT_MS_DEFAULT, SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN,
};
use crate::ordering::{assign, Assignment};
use crate::{Error, Result, Timestamp};

/// A consumer group's name: 1 to [`GROUP_NAME_LEN_MAX`] bytes of `[A-Za-z0-9._-]`, not only dots.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() || name.len() > GROUP_NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "group name is {} bytes; it must be 1 to {GROUP_NAME_LEN_MAX}",
                name.len()
            )));
        }
        if name.chars().all(|c| c == '.') {
            return Err(Error::invalid(format!("group name {name:?} is only dots; add a letter or digit")));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(Error::invalid(format!(
                "group name {name:?} contains {bad:?}; only [A-Za-z0-9._-] is allowed"
            )));
        }
        Ok(GroupName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for GroupName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        GroupName::new(s)
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        GroupName::new(String::deserialize(deserializer)?).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

/// A member's id: 32 hex digits from the operating system's CSPRNG, given at join. It is the
/// member's credential: unguessable, never reused.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MemberId(String);

impl MemberId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        MemberId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for MemberId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(Error::invalid(format!("{s:?} is not a member id (32 lowercase hex digits)")));
        }
        Ok(MemberId(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(|e: Error| serde::de::Error::custom(e.detail()))
    }
}

/// What a member asks for when it joins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinOptions {
    /// A name for people to read (host, process), 1 to [`MEMBER_NAME_LEN_MAX`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Removed when no heartbeat arrives for this long; [`SESSION_TIMEOUT_MS_MIN`] to
    /// [`SESSION_TIMEOUT_MS_MAX`], default [`SESSION_TIMEOUT_MS_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u64>,
}

impl JoinOptions {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            if name.is_empty() || name.len() > MEMBER_NAME_LEN_MAX {
                return Err(Error::invalid(format!(
                    "member name is {} bytes; it must be 1 to {MEMBER_NAME_LEN_MAX}",
                    name.len()
                )));
            }
        }
        if let Some(ms) = self.session_timeout_ms {
            if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&ms) {
                return Err(Error::invalid(format!(
                    "session_timeout_ms is {ms}; it must be between {SESSION_TIMEOUT_MS_MIN} and {SESSION_TIMEOUT_MS_MAX}"
                )));
            }
        }
        Ok(())
    }

    /// The session timeout this asks for.
    pub fn session_timeout_ms(&self) -> u64 {
        self.session_timeout_ms.unwrap_or(SESSION_TIMEOUT_MS_DEFAULT)
    }
}

/// How often a member should heartbeat: a third of its session timeout, so two may be lost.
pub fn heartbeat_interval_ms(session_timeout_ms: u64) -> u64 {
    (session_timeout_ms / 3).max(1)
}

/// One member as the group keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// Its name, if it gave one.
    pub name: Option<String>,
    /// Its session timeout.
    pub session_timeout_ms: u64,
    /// When it joined.
    pub joined_at: Timestamp,
    /// Its last join or heartbeat.
    pub seen_at: Timestamp,
}

impl MemberState {
    fn expired(&self, now: Timestamp) -> bool {
        now.ms_since(self.seen_at) >= self.session_timeout_ms
    }
}

/// One partition as the group keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Who owns it now: the only member that may lease from it.
    pub owner: Option<MemberId>,
    /// Who should own it, by the last assignment.
    pub target: Option<MemberId>,
    /// Since when it has had no owner that may lease from it (unowned or revoking), if so.
    pub idle_since: Option<Timestamp>,
}

/// What changed in one call, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Rebalances (membership changes that re-ran the assignment).
    pub rebalances: u64,
    /// Partitions handed from one member to another (or from a departed one): real moves, not
    /// first assignments, nor plans changed before the partition moved.
    pub moved: u64,
    /// Milliseconds each partition handed over in this call sat without a leasing owner.
    pub idle_ms: Vec<u64>,
    /// Members removed because their session expired.
    pub expired: u64,
}

/// A group's whole state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The number of the current assignment; it grows with every rebalance.
    pub generation: u64,
    /// Members by id.
    pub members: BTreeMap<MemberId, MemberState>,
    /// Partitions `0..P` of the queue.
    pub partitions: Vec<PartitionState>,
}

/// What a member learns from a join or a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// The member's id (present it on heartbeats, leases and leave).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub member_id: MemberId,
    /// The group's generation.
    pub generation: u64,
    /// Partitions it owns and may lease from, ascending.
    pub partitions: Vec<u32>,
    /// Partitions it owns but is giving up: finish what is in flight there, lease no more.
    pub revoking: Vec<u32>,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
}

/// One member as `group_get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberInfo {
    /// Its id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub member_id: MemberId,
    /// Its name, if it gave one.
    pub name: Option<String>,
    /// Partitions it owns and may lease from.
    pub partitions: Vec<u32>,
    /// Partitions it owns but is giving up.
    pub revoking: Vec<u32>,
    /// Its session timeout.
    pub session_timeout_ms: u64,
    /// When it joined (RFC 3339 on the wire, as every time of the API).
    #[serde(with = "crate::api::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub joined_at: Timestamp,
    /// Its last join or heartbeat.
    #[serde(with = "crate::api::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub last_heartbeat_at: Timestamp,
}

/// One partition as `group_get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u32,
    /// The member that owns it now, if any.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub owner: Option<MemberId>,
    /// The member it is moving to, while it moves (its owner still has live leases in it).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub moving_to: Option<MemberId>,
    /// Jobs of the partition not yet done: ready, scheduled, blocked or leased (its lag).
    pub lag: u64,
    /// Ready jobs of the partition.
    pub ready: u64,
    /// How long its oldest ready job has waited; `None` when none is ready.
    pub oldest_ready_age_ms: Option<u64>,
}

/// A consumer group as `group_get` and `group_list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupInfo {
    /// The group's name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub group: GroupName,
    /// Its generation.
    pub generation: u64,
    /// Its members, by id.
    pub members: Vec<MemberInfo>,
    /// Every partition of the queue, in order.
    pub partitions: Vec<PartitionInfo>,
}

/// Per-partition figures a store reads for [`GroupState::info`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionLoad {
    /// Jobs not yet done (ready, scheduled, blocked, leased).
    pub lag: u64,
    /// Ready jobs.
    pub ready: u64,
    /// The oldest ready job's `run_at`.
    pub oldest_ready: Option<Timestamp>,
}

impl GroupState {
    /// The group as `group_get` shows it, with each partition's load (`load[p]`; missing
    /// entries read as empty).
    pub fn info(&self, group: &GroupName, load: &BTreeMap<u32, PartitionLoad>, now: Timestamp) -> GroupInfo {
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberInfo {
                member_id: id.clone(),
                name: m.name.clone(),
                partitions: self.leasable(id),
                revoking: self.revoking(id),
                session_timeout_ms: m.session_timeout_ms,
                joined_at: m.joined_at,
                last_heartbeat_at: m.seen_at,
            })
            .collect();
        let partitions = (0u32..)
            .zip(&self.partitions)
            .map(|(p, part)| {
                let load = load.get(&p).copied().unwrap_or_default();
                PartitionInfo {
                    partition: p,
                    owner: part.owner.clone(),
                    moving_to: part.target.clone().filter(|t| part.owner.as_ref() != Some(t)),
                    lag: load.lag,
                    ready: load.ready,
                    oldest_ready_age_ms: load.oldest_ready.map(|at| now.ms_since(at)),
                }
            })
            .collect();
        GroupInfo { group: group.clone(), generation: self.generation, members, partitions }
    }

    /// Readies the state for an operation at `now`, under the store's lock: fits it to the
    /// queue's `partitions` and removes expired members. Then the store asks which of
    /// [`in_transition`](Self::in_transition) hold a live lease and calls
    /// [`hand_over`](Self::hand_over).
    pub fn refresh(&mut self, partitions: u32, now: Timestamp) -> Changes {
        let fitted = self.fit(partitions, now);
        let expired = self.expire(now);
        Changes {
            rebalances: fitted.rebalances + expired.rebalances,
            moved: fitted.moved + expired.moved,
            idle_ms: [fitted.idle_ms, expired.idle_ms].concat(),
            expired: expired.expired,
        }
    }

    /// Whether nobody is a member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Makes the state fit a queue of `partitions` partitions: a changed count (only possible
    /// while the queue held no job) starts the partitions afresh and re-runs the assignment.
    pub fn fit(&mut self, partitions: u32, now: Timestamp) -> Changes {
        let count = usize::try_from(partitions).unwrap_or(usize::MAX);
        if self.partitions.len() == count {
            return Changes::default();
        }
        self.partitions = vec![PartitionState { idle_since: Some(now), ..PartitionState::default() }; count];
        self.rebalance(now)
    }

    /// Removes members whose session expired; re-runs the assignment if any was.
    pub fn expire(&mut self, now: Timestamp) -> Changes {
        let before = self.members.len();
        self.members.retain(|_, m| !m.expired(now));
        let expired = (before - self.members.len()) as u64;
        if expired == 0 {
            return Changes::default();
        }
        Changes { expired, ..self.rebalance(now) }
    }

    /// Adds a member; returns its id.
    pub fn join(&mut self, options: &JoinOptions, now: Timestamp) -> (MemberId, Changes) {
        let id = MemberId::random();
        let member = MemberState {
            name: options.name.clone(),
            session_timeout_ms: options.session_timeout_ms(),
            joined_at: now,
            seen_at: now,
        };
        self.members.insert(id.clone(), member);
        let changes = self.rebalance(now);
        (id, changes)
    }

    /// Records a heartbeat; `NotMember` for an unknown or expired member.
    pub fn heartbeat(&mut self, member: &MemberId, now: Timestamp) -> Result<()> {
        let state = self.member_mut(member)?;
        state.seen_at = now;
        Ok(())
    }

    /// Removes a member (a graceful leave); `NotMember` if it is not one. Its partitions move
    /// once its leases in them are settled.
    pub fn leave(&mut self, member: &MemberId, now: Timestamp) -> Result<Changes> {
        self.member_mut(member)?;
        self.members.remove(member);
        Ok(self.rebalance(now))
    }

    /// The member, or `NotMember`.
    pub fn member_mut(&mut self, member: &MemberId) -> Result<&mut MemberState> {
        self.members.get_mut(member).ok_or_else(|| not_member(member))
    }

    /// Re-runs the assignment over the current members, starting from who *owns* each partition
    /// (a partition still moving counts as its owner's, so a second change during a first one
    /// moves no more than the fewest from where partitions really are); a partition whose owner
    /// is gone keeps heading where it was going.
    fn rebalance(&mut self, now: Timestamp) -> Changes {
        let mut previous = Assignment::new();
        for (p, part) in (0u32..).zip(&self.partitions) {
            let member = |m: &&MemberId| self.members.contains_key(*m);
            if let Some(holder) = part.owner.as_ref().filter(member).or_else(|| part.target.as_ref().filter(member)) {
                previous.entry(holder.as_str().to_owned()).or_default().push(p);
            }
        }
        let members: BTreeSet<String> = self.members.keys().map(|m| m.as_str().to_owned()).collect();
        let count = u32::try_from(self.partitions.len()).unwrap_or(u32::MAX);
        let next = assign(count, &previous, &members);
        let mut target_of: Vec<Option<MemberId>> = vec![None; self.partitions.len()];
        for (member, parts) in next {
            let id = MemberId(member);
            for p in parts {
                if let Some(slot) = target_of.get_mut(p as usize) {
                    *slot = Some(id.clone());
                }
            }
        }
        for (part, target) in self.partitions.iter_mut().zip(target_of) {
            part.target = target;
            // An owner that is gone, or giving the partition up, leases nothing from it.
            let leasing = part.owner.is_some() && part.owner == part.target;
            if !leasing && part.idle_since.is_none() {
                part.idle_since = Some(now);
            }
        }
        self.generation += 1;
        Changes { rebalances: 1, ..Changes::default() }
    }

    /// Hands over every partition whose owner differs from its target and that holds no live
    /// lease (`busy` says which do): the cooperative step. Call it before reading ownership.
    pub fn hand_over(&mut self, busy: &BTreeSet<u32>, now: Timestamp) -> Changes {
        let mut changes = Changes::default();
        for (p, part) in (0u32..).zip(self.partitions.iter_mut()) {
            if part.owner != part.target && !busy.contains(&p) {
                if part.owner.is_some() && part.target.is_some() {
                    changes.moved += 1;
                }
                part.owner = part.target.clone();
            }
            if part.owner.is_some() && part.owner == part.target {
                if let Some(since) = part.idle_since.take() {
                    changes.idle_ms.push(now.ms_since(since));
                }
            }
        }
        changes
    }

    /// Partitions whose owner is about to change: the ones `hand_over` needs `busy` for.
    pub fn in_transition(&self) -> Vec<u32> {
        (0u32..).zip(&self.partitions).filter(|(_, part)| part.owner != part.target).map(|(p, _)| p).collect()
    }

    /// The partitions this member may lease from.
    pub fn leasable(&self, member: &MemberId) -> Vec<u32> {
        (0u32..)
            .zip(&self.partitions)
            .filter(|(_, part)| part.owner.as_ref() == Some(member) && part.target.as_ref() == Some(member))
            .map(|(p, _)| p)
            .collect()
    }

    /// The partitions this member owns but is giving up.
    pub fn revoking(&self, member: &MemberId) -> Vec<u32> {
        (0u32..)
            .zip(&self.partitions)
            .filter(|(_, part)| part.owner.as_ref() == Some(member) && part.target.as_ref() != Some(member))
            .map(|(p, _)| p)
            .collect()
    }

    /// What `member` learns from a join or a heartbeat.
    pub fn view(&self, member: &MemberId) -> Result<MemberView> {
        let state = self.members.get(member).ok_or_else(|| not_member(member))?;
        Ok(MemberView {
            member_id: member.clone(),
            generation: self.generation,
            partitions: self.leasable(member),
            revoking: self.revoking(member),
            heartbeat_interval_ms: heartbeat_interval_ms(state.session_timeout_ms),
        })
    }
}

/// The error a call naming an unknown or expired member gets.
pub fn not_member(member: &MemberId) -> Error {
    Error::NotMember(format!(
        "{member} is not a member of the group (it never joined, left, or missed heartbeats for its session timeout); join again"
    ))
}

/// Metrics of one call's changes, with the queue and group as labels.
pub fn record(changes: &Changes, queue: &str, group: &str) {
    use crate::metrics as names;
    let labels = [("queue", queue.to_owned()), ("group", group.to_owned())];
    if changes.rebalances > 0 {
        metrics::counter!(names::GROUP_REBALANCES, &labels).increment(changes.rebalances);
    }
    if changes.moved > 0 {
        metrics::counter!(names::GROUP_PARTITIONS_MOVED, &labels).increment(changes.moved);
    }
    if changes.expired > 0 {
        metrics::counter!(names::GROUP_MEMBERS_EXPIRED, &labels).increment(changes.expired);
    }
    if !changes.idle_ms.is_empty() {
        let histogram = metrics::histogram!(names::GROUP_PARTITION_IDLE, &labels);
        for ms in &changes.idle_ms {
            histogram.record(*ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    fn group(partitions: u32) -> GroupState {
        let mut g = GroupState::default();
        g.fit(partitions, T0);
        g
    }

    fn join(g: &mut GroupState, timeout: u64, now: Timestamp) -> MemberId {
        let options = JoinOptions { name: None, session_timeout_ms: Some(timeout) };
        g.join(&options, now).0
    }

    #[test]
    fn a_revoked_partition_moves_only_once_it_holds_no_live_lease() {
        let mut g = group(4);
        let a = join(&mut g, 10_000, T0);
        g.hand_over(&BTreeSet::new(), T0);
        assert_eq!(g.view(&a).unwrap().partitions, vec![0, 1, 2, 3]);
        let b = join(&mut g, 10_000, T0);
        // A has live leases in partitions 2 and 3, which now go to B.
        let busy: BTreeSet<u32> = [2, 3].into();
        g.hand_over(&busy, T0);
        let (va, vb) = (g.view(&a).unwrap(), g.view(&b).unwrap());
        assert_eq!((va.partitions, va.revoking), (vec![0, 1], vec![2, 3]));
        assert_eq!((vb.partitions, vb.revoking), (vec![], vec![]));
        // 3 settles; 2 is still busy.
        g.hand_over(&[2].into(), T0.plus_ms(50));
        assert_eq!(g.view(&b).unwrap().partitions, vec![3]);
        let changes = g.hand_over(&BTreeSet::new(), T0.plus_ms(80));
        assert_eq!(changes.idle_ms, vec![80]);
        assert_eq!(g.view(&b).unwrap().partitions, vec![2, 3]);
        assert!(g.view(&a).unwrap().revoking.is_empty());
    }

    #[test]
    fn an_expired_member_is_removed_and_its_partitions_wait_for_its_leases() {
        let mut g = group(2);
        let a = join(&mut g, 1_000, T0);
        let b = join(&mut g, 5_000, T0);
        g.hand_over(&BTreeSet::new(), T0);
        assert_eq!(g.heartbeat(&b, T0.plus_ms(900)), Ok(()));
        assert_eq!(g.expire(T0.plus_ms(999)).expired, 0);
        let changes = g.expire(T0.plus_ms(1_000));
        assert_eq!((changes.expired, changes.moved), (1, 0));
        assert!(matches!(g.heartbeat(&a, T0.plus_ms(1_000)), Err(Error::NotMember(_))));
        assert!(matches!(g.view(&a), Err(Error::NotMember(_))));
        // A's lease in partition 0 is still live: B does not get it yet.
        g.hand_over(&[0].into(), T0.plus_ms(1_000));
        assert_eq!(g.view(&b).unwrap().partitions, vec![1]);
        assert_eq!(g.hand_over(&BTreeSet::new(), T0.plus_ms(2_000)).moved, 1);
        assert_eq!(g.view(&b).unwrap().partitions, vec![0, 1]);
    }

    #[test]
    fn members_joining_one_after_another_move_the_fewest_from_where_partitions_are() {
        let mut g = group(16);
        let a = join(&mut g, 10_000, T0);
        assert_eq!(g.hand_over(&BTreeSet::new(), T0).moved, 0, "a first assignment is no move");
        // B joins while A works in every partition, then C, before anything moved: the plan is
        // made again from A holding all 16, so A keeps 6 and 10 move, not 8 to B and then more.
        let all: BTreeSet<u32> = (0..16).collect();
        join(&mut g, 10_000, T0);
        g.hand_over(&all, T0);
        join(&mut g, 10_000, T0);
        let moved = g.hand_over(&BTreeSet::new(), T0.plus_ms(10)).moved;
        assert_eq!(moved, 10);
        assert_eq!(g.leasable(&a).len(), 6);
    }

    #[test]
    fn a_changed_partition_count_starts_afresh() {
        let mut g = group(4);
        let a = join(&mut g, 10_000, T0);
        g.hand_over(&BTreeSet::new(), T0);
        let generation = g.generation;
        assert_eq!(g.fit(4, T0), Changes::default());
        g.fit(6, T0);
        g.hand_over(&BTreeSet::new(), T0);
        assert_eq!(g.view(&a).unwrap().partitions, vec![0, 1, 2, 3, 4, 5]);
        assert!(g.generation > generation);
    }

    #[test]
    fn names_and_options_are_validated() {
        assert!(GroupName::new("billing.v2").is_ok());
        assert!(GroupName::new("").is_err() && GroupName::new("..").is_err() && GroupName::new("a b").is_err());
        assert!(GroupName::new("g".repeat(GROUP_NAME_LEN_MAX + 1)).is_err());
        let id = MemberId::random();
        assert_eq!(id.as_str().parse::<MemberId>(), Ok(id));
        assert!("xyz".parse::<MemberId>().is_err());
        let bad = JoinOptions { name: None, session_timeout_ms: Some(SESSION_TIMEOUT_MS_MIN - 1) };
        assert!(bad.validate().is_err());
        let long = JoinOptions { name: Some("n".repeat(MEMBER_NAME_LEN_MAX + 1)), session_timeout_ms: None };
        assert!(long.validate().is_err());
        assert_eq!(JoinOptions::default().session_timeout_ms(), SESSION_TIMEOUT_MS_DEFAULT);
        assert_eq!(heartbeat_interval_ms(9_000), 3_000);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Join,
        Leave(usize),
        Lease(u32),
        Settle(u32),
        Advance(u64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            2 => Just(Step::Join),
            1 => (0usize..8).prop_map(Step::Leave),
            3 => (0u32..8).prop_map(Step::Lease),
            3 => (0u32..8).prop_map(Step::Settle),
            1 => (0u64..3_000).prop_map(Step::Advance),
        ];
        proptest::collection::vec(step, 1..60)
    }

    proptest! {
        /// Invariant 10: whatever members do, a partition has at most one owner, it changes
        /// owner only while no lease is live in it, and a member leases only where it owns.
        #[test]
        fn ownership_changes_only_when_no_lease_is_live(steps in steps()) {
            let mut g = group(8);
            let mut now = T0;
            // Live leases: partition -> the member that leased there.
            let mut live: BTreeMap<u32, MemberId> = BTreeMap::new();
            let mut joined: Vec<MemberId> = Vec::new();
            for step in steps {
                g.expire(now);
                let busy: BTreeSet<u32> = live.keys().copied().collect();
                let owners_before: Vec<Option<MemberId>> = g.partitions.iter().map(|p| p.owner.clone()).collect();
                g.hand_over(&busy, now);
                for (p, (before, part)) in owners_before.iter().zip(&g.partitions).enumerate() {
                    if *before != part.owner {
                        prop_assert!(!busy.contains(&(p as u32)), "partition {p} changed owner with a live lease");
                    }
                }
                match step {
                    Step::Join => joined.push(join(&mut g, 1_000, now)),
                    Step::Leave(i) => {
                        if let Some(m) = joined.get(i) {
                            let _ = g.leave(m, now);
                        }
                    }
                    Step::Lease(p) => {
                        // The one member allowed to lease from p, if any, does.
                        if let Some(m) = joined.iter().find(|m| g.view(m).is_ok_and(|v| v.partitions.contains(&p))) {
                            if let Some(holder) = live.get(&p) {
                                prop_assert_eq!(holder, m, "two members leased in one partition");
                            }
                            live.insert(p, m.clone());
                        }
                    }
                    Step::Settle(p) => {
                        live.remove(&p);
                    }
                    Step::Advance(ms) => {
                        now = now.plus_ms(ms);
                        for m in &joined {
                            if g.members.contains_key(m) && ms < 500 {
                                let _ = g.heartbeat(m, now);
                            }
                        }
                        // Leases expire after 1.5 s of this test's time.
                        if ms > 1_500 {
                            live.clear();
                        }
                    }
                }
                let owners: usize = g.members.keys().map(|m| g.leasable(m).len() + g.revoking(m).len()).sum();
                prop_assert!(owners <= 8);
            }
        }
    }
}
