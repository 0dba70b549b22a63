//! Consumer groups in the embedded store, beyond the conformance suite: a group (members,
//! owners, partitions in hand-over) survives closing and reopening the store, and after the
//! reopen a member still leases only what it owns, never from a partition it lost in between; a
//! group lease returns the jobs it takes in the queue's lease order across its partitions; a
//! waiting group lease wakes when a job of its partitions becomes ready, when a partition it
//! waits for is handed to it, and answers `NotMember` when its member leaves or expires mid-wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::group::{GroupName, JoinOptions, MemberId};
use onceq_core::ordering::partition_of;
use onceq_core::{
    Clock, Error, JobId, LeaseOptions, LeasedJob, ManualClock, NewJob, Ordering, QueueConfigPatch, QueueName, Store,
    StoreExt,
};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn per_key(partitions: u32) -> QueueConfigPatch {
    QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(partitions), ..QueueConfigPatch::default() }
}

fn session(ms: u64) -> JoinOptions {
    JoinOptions { name: None, session_timeout_ms: Some(ms) }
}

fn lease(max_jobs: u32, wait_ms: u64) -> LeaseOptions {
    LeaseOptions { max_jobs, visibility_timeout_ms: Some(30_000), wait_ms }
}

/// A key of `partition` (of `partitions`) not among the first `skip` such keys.
fn key_in(partition: u32, partitions: u32, skip: usize) -> String {
    (0u64..)
        .map(|i| format!("key-{i}"))
        .filter(|k| partition_of(Some(k), JobId::new(1), partitions) == partition)
        .nth(skip)
        .unwrap()
}

/// One job of a fresh key in each partition; `round` picks keys no earlier round used.
async fn one_per_partition(store: &SqliteStore, q: &QueueName, partitions: u32, round: usize) {
    let jobs =
        (0..partitions).map(|p| NewJob::new(format!("{p}")).ordering_key(key_in(p, partitions, round))).collect();
    store.job_enqueue(q, jobs).await.unwrap();
}

fn partitions_of(jobs: &[LeasedJob]) -> Vec<u32> {
    let mut out: Vec<u32> = jobs.iter().map(|j| j.partition.unwrap()).collect();
    out.sort_unstable();
    out
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> SqliteStore {
    let clock: Arc<dyn Clock> = clock.clone();
    SqliteStore::open(SqliteOptions::new(dir).clock(clock)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_a_reopen_and_a_lost_partition_stays_lost() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let (q, g) = (QueueName::new("persisted").unwrap(), GroupName::new("g").unwrap());
    let store = open(dir.path(), &clock);
    store.queue_upsert(&q, per_key(4)).await.unwrap();
    one_per_partition(&store, &q, 4, 0).await;
    let a = store.group_join(&q, &g, session(60_000)).await.unwrap().member_id;
    let held = store.group_lease(&q, &g, &a, lease(10, 0)).await.unwrap();
    assert_eq!(partitions_of(&held), vec![0, 1, 2, 3]);
    // B joins while A holds a live lease in every partition: B's two wait, A is giving them up.
    let b = store.group_join(&q, &g, session(60_000)).await.unwrap().member_id;
    let before = store.group_get(&q, &g).await.unwrap();
    let a_view = store.group_heartbeat(&q, &g, &a).await.unwrap();
    assert_eq!((a_view.partitions.len(), a_view.revoking.len()), (2, 2));
    store.close().await;

    let store = open(dir.path(), &clock);
    assert_eq!(store.group_get(&q, &g).await.unwrap(), before, "the group reads as it was before the reopen");
    assert_eq!(store.group_list(&q).await.unwrap(), vec![before]);
    assert_eq!(store.group_heartbeat(&q, &g, &a).await.unwrap(), a_view);
    // A settles its leases in the partitions it gives up: they pass to B.
    for job in held.iter().filter(|j| a_view.revoking.contains(&j.partition.unwrap())) {
        store.ack(job.lease()).await.unwrap();
    }
    let b_view = store.group_heartbeat(&q, &g, &b).await.unwrap();
    assert_eq!(b_view.partitions, a_view.revoking);
    assert!(store.group_heartbeat(&q, &g, &a).await.unwrap().revoking.is_empty());
    // New work, of fresh keys, in every partition: A leases only from the partitions it kept,
    // never from the ones it lost; B gets those.
    one_per_partition(&store, &q, 4, 1).await;
    assert_eq!(partitions_of(&store.group_lease(&q, &g, &a, lease(10, 0)).await.unwrap()), a_view.partitions);
    assert_eq!(partitions_of(&store.group_lease(&q, &g, &b, lease(10, 0)).await.unwrap()), b_view.partitions);
    store.close().await;

    // And the state on disk is the group's, members and all, after a second reopen.
    let store = open(dir.path(), &clock);
    let info = store.group_get(&q, &g).await.unwrap();
    let owners: BTreeMap<MemberId, Vec<u32>> =
        info.members.iter().map(|m| (m.member_id.clone(), m.partitions.clone())).collect();
    assert_eq!(owners, BTreeMap::from([(a, a_view.partitions), (b, b_view.partitions)]));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lease_returns_the_jobs_it_takes_in_lease_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let (q, g) = (QueueName::new("ordered").unwrap(), GroupName::new("g").unwrap());
    let store = open(dir.path(), &clock);
    store.queue_upsert(&q, per_key(4)).await.unwrap();
    // Keys in every partition, with priorities and run_at times that interleave across them.
    let mut jobs = Vec::new();
    for i in 0..12usize {
        let p = (i % 4) as u32;
        let job = NewJob::new(format!("{i}")).ordering_key(key_in(p, 4, i)).priority((i % 3) as i32);
        jobs.push(job);
    }
    store.job_enqueue(&q, jobs).await.unwrap();
    clock.advance(5);
    store.job_enqueue(&q, vec![NewJob::new("late").ordering_key(key_in(2, 4, 50)).priority(2)]).await.unwrap();
    let a = store.group_join(&q, &g, session(60_000)).await.unwrap().member_id;
    let got: Vec<String> = store
        .group_lease(&q, &g, &a, lease(5, 0))
        .await
        .unwrap()
        .iter()
        .map(|j| String::from_utf8(j.payload.clone()).unwrap())
        .collect();
    // Priority 2 first (oldest run_at, then id), then priority 1.
    assert_eq!(got, vec!["2", "5", "8", "11", "late"]);
    let rest = store.group_lease(&q, &g, &a, lease(100, 0)).await.unwrap();
    let payloads: Vec<String> = rest.iter().map(|j| String::from_utf8(j.payload.clone()).unwrap()).collect();
    assert_eq!(payloads, vec!["1", "4", "7", "10", "0", "3", "6", "9"]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_group_lease_wakes_for_its_jobs_its_partitions_and_its_removal() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let (q, g) = (QueueName::new("waiting").unwrap(), GroupName::new("g").unwrap());
    store.queue_upsert(&q, per_key(2)).await.unwrap();
    let a = store.group_join(&q, &g, session(60_000)).await.unwrap().member_id;

    // A job of A's partitions becomes ready: the waiting lease takes it at once.
    let started = Instant::now();
    let waiting = {
        let (store, q, g, a) = (store.clone(), q.clone(), g.clone(), a.clone());
        tokio::spawn(async move { store.group_lease(&q, &g, &a, lease(1, 10_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.enqueue(&q, NewJob::new("first").ordering_key(key_in(0, 2, 0))).await.unwrap();
    let first = waiting.await.unwrap().unwrap();
    assert_eq!(first.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5), "woke at once, not at the deadline");

    // A holds a live lease in partition 0 and a job waits there. B joins and waits; once A
    // settles its lease, partition 0 or 1 (whichever is B's) passes to B and B's lease wakes.
    store.enqueue(&q, NewJob::new("held").ordering_key(key_in(1, 2, 0))).await.unwrap();
    let held = store.group_lease(&q, &g, &a, lease(10, 0)).await.unwrap();
    store
        .job_enqueue(
            &q,
            vec![NewJob::new("p0").ordering_key(key_in(0, 2, 1)), NewJob::new("p1").ordering_key(key_in(1, 2, 1))],
        )
        .await
        .unwrap();
    let b = store.group_join(&q, &g, session(60_000)).await.unwrap();
    assert!(b.partitions.is_empty(), "both partitions hold A's live leases");
    let moving = store.group_heartbeat(&q, &g, &a).await.unwrap().revoking;
    assert_eq!(moving.len(), 1);
    let started = Instant::now();
    let waiting = {
        let (store, q, g, b) = (store.clone(), q.clone(), g.clone(), b.member_id.clone());
        tokio::spawn(async move { store.group_lease(&q, &g, &b, lease(10, 10_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let in_moving = [&first[0]].into_iter().chain(&held).find(|j| j.partition == Some(moving[0])).unwrap();
    store.ack(in_moving.lease()).await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(partitions_of(&got), moving, "B leases the job of the partition handed to it");
    assert!(started.elapsed() < Duration::from_secs(5), "woke when the lease ended, not at the deadline");

    // A leaves while its own lease waits (once it has taken the job left in the partition it
    // kept): the lease answers NotMember at once.
    let kept = store.group_lease(&q, &g, &a, lease(10, 0)).await.unwrap();
    assert_eq!(partitions_of(&kept), vec![1 - moving[0]]);
    let waiting = {
        let (store, q, g, a) = (store.clone(), q.clone(), g.clone(), a.clone());
        tokio::spawn(async move { store.group_lease(&q, &g, &a, lease(1, 10_000)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    store.group_leave(&q, &g, &a).await.unwrap();
    assert!(matches!(waiting.await.unwrap(), Err(Error::NotMember(_))));
    assert!(started.elapsed() < Duration::from_secs(5));

    // A member whose session ends mid-wait learns it then, though nobody touches the group.
    let c = store.group_join(&q, &g, session(300)).await.unwrap().member_id;
    let started = Instant::now();
    let result = store.group_lease(&q, &g, &c, lease(1, 10_000)).await;
    assert!(matches!(result, Err(Error::NotMember(_))), "{result:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "waited {waited:?}");
    store.close().await;
}
