//! Consumer groups (docs/semantics.md, "Consumer groups"; Invariants 10 and 11): members join,
//! heartbeat and leave; the partitions of a `per_key` queue are shared balanced and sticky; a
//! partition moves only once no lease in it is live; a member leases only from the partitions it
//! owns and is not giving up; a member that misses its session timeout is removed.

use std::collections::{BTreeMap, BTreeSet};

use onceq_core::group::{GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::limits::{SESSION_TIMEOUT_MS_DEFAULT, SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN};
use onceq_core::ordering::{assign, moved, Assignment};
use onceq_core::{Error, LeaseOptions, LeasedJob, NewJob, Ordering, QueueConfigPatch, QueueName, Store, StoreExt};

use super::{open_manual, queue, Fixture};
use crate::Backend;

/// A group name.
fn group(name: &str) -> GroupName {
    GroupName::new(name).unwrap()
}

/// Options with this session timeout.
fn session(ms: u64) -> JoinOptions {
    JoinOptions { name: Some("worker".into()), session_timeout_ms: Some(ms) }
}

impl<S: Store + 'static> Fixture<S> {
    /// Makes `q` a `per_key` queue of `partitions` partitions.
    async fn ordered(&self, q: &QueueName, partitions: u32) {
        let patch =
            QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(partitions), ..Default::default() };
        self.upsert(q, patch).await;
    }

    /// Enqueues one job into each partition `0..partitions` (keys found by the documented hash).
    async fn one_per_partition(&self, q: &QueueName, partitions: u32) {
        let mut keys: BTreeMap<u32, String> = BTreeMap::new();
        let mut i = 0u64;
        while keys.len() < partitions as usize {
            let key = format!("key-{i}");
            let p = onceq_core::ordering::partition_of(Some(&key), onceq_core::JobId::new(1), partitions);
            keys.entry(p).or_insert(key);
            i += 1;
        }
        let jobs = keys.values().map(|k| NewJob::new(k.clone()).ordering_key(k.clone())).collect();
        self.enqueue(q, jobs).await;
    }

    async fn join(&self, q: &QueueName, g: &GroupName, options: JoinOptions) -> MemberView {
        self.store.group_join(q, g, options).await.unwrap()
    }

    async fn beat(&self, q: &QueueName, g: &GroupName, m: &MemberId) -> MemberView {
        self.store.group_heartbeat(q, g, m).await.unwrap()
    }

    async fn group_lease(&self, q: &QueueName, g: &GroupName, m: &MemberId, max_jobs: u32) -> Vec<LeasedJob> {
        let options = LeaseOptions { max_jobs, visibility_timeout_ms: Some(10_000), wait_ms: 0 };
        self.store.group_lease(q, g, m, options).await.unwrap()
    }

    /// Who owns which partitions, as `group_get` reports it.
    async fn owners(&self, q: &QueueName, g: &GroupName) -> Assignment {
        let info = self.store.group_get(q, g).await.unwrap();
        let mut out = Assignment::new();
        for member in info.members {
            out.insert(member.member_id.to_string(), member.partitions);
        }
        out
    }
}

/// A first member gets every partition at once; its view names its id, the generation and a
/// heartbeat interval of a third of its session timeout; `group_get` and `group_list` show it.
pub async fn a_first_member_owns_every_partition<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("grouped"), group("billing"));
    f.ordered(&q, 8).await;
    let view = f.join(&q, &g, session(9_000)).await;
    assert_eq!(view.partitions, (0..8).collect::<Vec<_>>());
    assert!(view.revoking.is_empty());
    assert_eq!(view.heartbeat_interval_ms, 3_000);
    assert!(view.generation >= 1);
    let info = f.store.group_get(&q, &g).await.unwrap();
    assert_eq!((info.group.as_str(), info.generation, info.members.len()), ("billing", view.generation, 1));
    assert_eq!(info.members[0].member_id, view.member_id);
    assert_eq!(info.members[0].name.as_deref(), Some("worker"));
    assert_eq!(info.partitions.len(), 8);
    assert!(info.partitions.iter().all(|p| p.owner.as_ref() == Some(&view.member_id) && p.moving_to.is_none()));
    let listed = f.store.group_list(&q).await.unwrap();
    assert_eq!(listed, vec![info]);
    let default = f.join(&q, &g, JoinOptions::default()).await;
    assert_eq!(default.heartbeat_interval_ms, SESSION_TIMEOUT_MS_DEFAULT / 3);
}

/// A member's lease hands out only jobs of the partitions it owns; the members together lease
/// every job; counts and lag show per partition.
pub async fn a_member_leases_only_from_its_partitions<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("grouped-lease"), group("g"));
    f.ordered(&q, 4).await;
    f.one_per_partition(&q, 4).await;
    let a = f.join(&q, &g, session(60_000)).await;
    let b = f.join(&q, &g, session(60_000)).await;
    // Nothing is leased yet: A hands over at once.
    let a = f.beat(&q, &g, &a.member_id).await;
    let b_view = f.beat(&q, &g, &b.member_id).await;
    assert_eq!(a.partitions.len() + b_view.partitions.len(), 4);
    assert_eq!(a.partitions.len(), 2);
    let info = f.store.group_get(&q, &g).await.unwrap();
    assert!(info.partitions.iter().all(|p| (p.lag, p.ready) == (1, 1) && p.oldest_ready_age_ms == Some(0)));
    for view in [&a, &b_view] {
        let got = f.group_lease(&q, &g, &view.member_id, 10).await;
        let partitions: BTreeSet<u32> = got.iter().map(|j| j.partition.unwrap()).collect();
        assert_eq!(partitions, view.partitions.iter().copied().collect(), "each member gets its own partitions");
    }
    f.lease_none(&q).await;
}

/// A group lease shares itself among the member's partitions: each partition's next job before
/// any partition's second, then in lease order; the jobs taken come back in lease order. So a
/// partition with a long backlog (one just handed over from a member that died) holds back
/// none of the member's other partitions.
pub async fn a_group_lease_takes_from_every_partition_before_a_second_from_any<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let (q, g) = (queue("grouped-fair"), group("g"));
    f.ordered(&q, 2).await;
    // Keys of each partition, found by the documented hash.
    let mut keys: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for i in 0u64.. {
        let key = format!("key-{i}");
        let p = onceq_core::ordering::partition_of(Some(&key), onceq_core::JobId::new(1), 2);
        let list = keys.entry(p).or_default();
        if list.len() < 8 {
            list.push(key);
        }
        if keys.values().all(|l| l.len() == 8) {
            break;
        }
    }
    // Partition 0 holds an old backlog of 8 keys' heads; partition 1 gets 2 jobs later, and one
    // of higher priority.
    let old: Vec<NewJob> =
        keys[&0].iter().map(|k| NewJob::new(format!("\"old {k}\"")).ordering_key(k.clone())).collect();
    let old_ids: Vec<_> = f.store.job_enqueue(&q, old).await.unwrap().into_iter().map(|e| e.id).collect();
    clock.advance(1_000);
    let new = vec![
        NewJob::new("\"new\"").ordering_key(keys[&1][0].clone()),
        NewJob::new("\"urgent\"").ordering_key(keys[&1][1].clone()).priority(5),
    ];
    let new_ids: Vec<_> = f.store.job_enqueue(&q, new).await.unwrap().into_iter().map(|e| e.id).collect();
    let member = f.join(&q, &g, session(60_000)).await;
    assert_eq!(member.partitions, [0, 1]);
    let got: Vec<_> = f.group_lease(&q, &g, &member.member_id, 4).await.iter().map(|j| j.id).collect();
    // Each partition's first (partition 1's urgent job, partition 0's oldest), then each one's
    // second (partition 0's second oldest, partition 1's other job), handed out in lease order.
    // Leasing by age alone would have taken a third old job instead of partition 1's second.
    assert_eq!(got, [new_ids[1], old_ids[0], old_ids[1], new_ids[0]]);
    let next: Vec<_> = f.group_lease(&q, &g, &member.member_id, 2).await.iter().map(|j| j.id).collect();
    assert_eq!(next, [old_ids[2], old_ids[3]], "with partition 1 empty, partition 0 fills the lease");
}

/// Cooperative: when a member joins, a partition in which the old owner holds a live lease stays
/// with it (listed as revoking, and not leased from) until that lease is settled; then it moves.
pub async fn a_partition_moves_only_once_its_leases_are_settled<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("cooperative"), group("g"));
    f.ordered(&q, 2).await;
    f.one_per_partition(&q, 2).await;
    f.one_per_partition(&q, 2).await;
    let a = f.join(&q, &g, session(60_000)).await;
    let held = f.group_lease(&q, &g, &a.member_id, 10).await;
    assert_eq!(held.len(), 2, "the head of each partition's key");
    let b = f.join(&q, &g, session(60_000)).await;
    assert!(b.partitions.is_empty(), "both partitions hold A's live leases");
    let a_view = f.beat(&q, &g, &a.member_id).await;
    assert_eq!(a_view.revoking.len(), 1);
    let moving = a_view.revoking[0];
    assert_eq!(a_view.partitions, vec![1 - moving]);
    let info = f.store.group_get(&q, &g).await.unwrap();
    assert_eq!(info.partitions[moving as usize].moving_to.as_ref(), Some(&b.member_id));
    // A leases nothing more from the partition it is giving up, and B nothing yet.
    assert!(f.group_lease(&q, &g, &b.member_id, 10).await.is_empty());
    let in_moving = held.iter().find(|j| j.partition == Some(moving)).unwrap();
    assert_eq!(f.store.ack(in_moving.lease()).await, Ok(()));
    let b_view = f.beat(&q, &g, &b.member_id).await;
    assert_eq!(b_view.partitions, vec![moving]);
    let got = f.group_lease(&q, &g, &b.member_id, 10).await;
    assert_eq!(got.iter().map(|j| j.partition).collect::<Vec<_>>(), vec![Some(moving)]);
    assert!(f.beat(&q, &g, &a.member_id).await.revoking.is_empty());
}

/// A member that misses heartbeats for its session timeout is removed: its heartbeats, leases
/// and leave get `NotMember`; its partitions move to the others once its leases expire.
pub async fn an_expired_member_is_removed_and_fenced<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let (q, g) = (queue("sessions"), group("g"));
    f.ordered(&q, 2).await;
    f.one_per_partition(&q, 2).await;
    let a = f.join(&q, &g, session(1_000)).await;
    let b = f.join(&q, &g, session(60_000)).await;
    let a_partitions = f.beat(&q, &g, &a.member_id).await.partitions;
    assert_eq!(a_partitions.len(), 1);
    let leased = f.group_lease(&q, &g, &a.member_id, 10).await;
    assert_eq!(leased.len(), 1);
    clock.advance(1_000);
    let not_member = |r: Result<_, Error>| matches!(r, Err(Error::NotMember(_)));
    assert!(not_member(f.store.group_heartbeat(&q, &g, &a.member_id).await.map(drop)));
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 0 };
    assert!(not_member(f.store.group_lease(&q, &g, &a.member_id, options).await.map(drop)));
    assert!(not_member(f.store.group_leave(&q, &g, &a.member_id).await));
    // A's lease (10 s) is still live: B waits for that partition.
    assert_eq!(f.beat(&q, &g, &b.member_id).await.partitions.len(), 1);
    clock.advance(9_000);
    assert_eq!(f.beat(&q, &g, &b.member_id).await.partitions, vec![0, 1]);
    assert_eq!(f.store.group_get(&q, &g).await.unwrap().members.len(), 1);
}

/// Leaving rebalances at once; an unknown member id gets `NotMember`; the last member leaving
/// leaves an empty group that a later join takes up.
pub async fn leaving_rebalances_and_unknown_members_are_refused<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("leaving"), group("g"));
    f.ordered(&q, 4).await;
    let a = f.join(&q, &g, session(60_000)).await;
    let b = f.join(&q, &g, session(60_000)).await;
    assert_eq!(f.store.group_leave(&q, &g, &a.member_id).await, Ok(()));
    assert_eq!(f.beat(&q, &g, &b.member_id).await.partitions, vec![0, 1, 2, 3]);
    let stranger = MemberId::random();
    assert!(matches!(f.store.group_heartbeat(&q, &g, &stranger).await, Err(Error::NotMember(_))));
    assert!(matches!(f.store.group_leave(&q, &g, &a.member_id).await, Err(Error::NotMember(_))));
    assert_eq!(f.store.group_leave(&q, &g, &b.member_id).await, Ok(()));
    assert!(f.store.group_get(&q, &g).await.unwrap().members.is_empty());
    assert_eq!(f.join(&q, &g, session(60_000)).await.partitions, vec![0, 1, 2, 3]);
}

/// Groups need an existing `per_key` queue; one group at a time has members on a queue; names
/// and session timeouts are checked; an unknown group reads as `NotMember` for its members and
/// as empty for `group_get`.
pub async fn groups_refuse_what_they_cannot_serve<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let g = group("g");
    assert!(matches!(f.store.group_join(&queue("nowhere"), &g, session(1_000)).await, Err(Error::QueueNotFound(_))));
    let unordered = queue("unordered");
    f.upsert(&unordered, QueueConfigPatch::default()).await;
    assert!(matches!(f.store.group_join(&unordered, &g, session(1_000)).await, Err(Error::InvalidRequest(_))));
    let q = queue("one-group");
    f.ordered(&q, 4).await;
    for bad in [SESSION_TIMEOUT_MS_MIN - 1, SESSION_TIMEOUT_MS_MAX + 1] {
        assert!(matches!(f.store.group_join(&q, &g, session(bad)).await, Err(Error::InvalidRequest(_))));
    }
    f.join(&q, &g, session(60_000)).await;
    assert!(matches!(f.store.group_join(&q, &group("other"), session(1_000)).await, Err(Error::Conflict(_))));
    let empty = f.store.group_get(&q, &group("never")).await.unwrap();
    assert!(empty.members.is_empty());
    assert!(matches!(
        f.store.group_heartbeat(&q, &group("never"), &MemberId::random()).await,
        Err(Error::NotMember(_))
    ));
    assert!(matches!(f.store.group_list(&queue("nowhere")).await, Err(Error::QueueNotFound(_))));
}

/// Invariant 11 through the store: each join and leave moves exactly the partitions the sticky
/// assignor moves, the fewest balance requires, and the result is balanced.
pub async fn invariant_11_membership_changes_move_the_fewest_partitions<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("sticky"), group("g"));
    f.ordered(&q, 12).await;
    let mut members: Vec<MemberId> = Vec::new();
    let mut before = f.owners(&q, &g).await;
    for step in ["join", "join", "join", "join", "leave 1", "join", "leave 0", "leave 2"] {
        match step.split_once(' ') {
            None => members.push(f.join(&q, &g, session(60_000)).await.member_id),
            Some((_, i)) => {
                let m = members.remove(i.parse().unwrap());
                assert_eq!(f.store.group_leave(&q, &g, &m).await, Ok(()));
            }
        }
        // No leases: every hand-over completes at the next read.
        let after = f.owners(&q, &g).await;
        let present: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
        let expected = assign(12, &before, &present);
        assert_eq!(moved(&before, &after), moved(&before, &expected), "{step}: moved more than needed");
        let sizes: BTreeSet<usize> = after.values().map(Vec::len).collect();
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{step}: unbalanced {after:?}");
        before = after;
    }
}

/// Deleting a queue deletes its groups.
pub async fn deleting_a_queue_deletes_its_groups<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let (q, g) = (queue("deleted-groups"), group("g"));
    f.ordered(&q, 2).await;
    let a = f.join(&q, &g, session(60_000)).await;
    assert_eq!(f.store.queue_delete(&q).await, Ok(()));
    f.ordered(&q, 2).await;
    assert!(matches!(f.store.group_heartbeat(&q, &g, &a.member_id).await, Err(Error::NotMember(_))));
    assert!(f.store.group_list(&q).await.unwrap().is_empty());
}
