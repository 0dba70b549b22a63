//! Ordered delivery per key (docs/semantics.md, "Ordering"; Invariant 9): in a `per_key` queue
//! only the head of each ordering key is ever ready, scheduled or leased; the jobs behind it are
//! `blocked` until every earlier job of the key is gone (acked, dead without `dead_blocks_key`,
//! or purged). Partitions follow the documented hash. Changing the ordering or the partition
//! count is refused while the queue holds jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use onceq_core::limits::{ORDERING_KEY_LEN_MAX, PARTITIONS_DEFAULT, PARTITIONS_MAX};
use onceq_core::ordering::partition_of;
use onceq_core::{
    Error, JobId, JobState, LeaseOptions, NackOutcome, NewJob, Ordering, QueueConfigPatch, QueueStats, Redrive, Store,
    StoreExt,
};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use super::{counts, ids_of, open_manual, open_system, queue, within, Fixture};
use crate::Backend;

/// A patch making a queue `per_key` with this many partitions.
fn per_key(partitions: Option<u32>) -> QueueConfigPatch {
    QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions, ..QueueConfigPatch::default() }
}

/// A job of key `key`.
fn keyed(key: &str, payload: &str) -> NewJob {
    NewJob::new(payload.to_owned()).ordering_key(key)
}

impl<S: Store + 'static> Fixture<S> {
    /// The states of these jobs, in order.
    async fn states(&self, ids: &[JobId]) -> Vec<JobState> {
        let mut out = Vec::new();
        for id in ids {
            out.push(self.get(*id).await.state);
        }
        out
    }
}

/// Only the first job of each key is ready; the rest are `blocked` (and counted so). Acking the
/// head makes the next job of its key ready. Key-less jobs in the same queue are not ordered.
pub async fn ordered_keys_lease_one_at_a_time_in_enqueue_order<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("ordered");
    f.upsert(&q, per_key(None)).await;
    let ids = f
        .enqueue(
            &q,
            vec![
                keyed("k1", "a"),
                keyed("k2", "x"),
                keyed("k1", "b"),
                NewJob::new("free"),
                keyed("k1", "c"),
                keyed("k2", "y"),
            ],
        )
        .await;
    let [a, x, b, free, c, y] = ids[..] else { unreachable!() };
    use JobState::{Blocked, Ready};
    assert_eq!(f.states(&ids).await, vec![Ready, Ready, Blocked, Ready, Blocked, Blocked]);
    assert_eq!(f.stats(&q).await, QueueStats { blocked: 3, ..counts(3, 0, 0, 0, Some(0)) });
    let leased = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&leased), vec![a, x, free], "only the head of each key, and the key-less job");
    f.lease_none(&q).await;
    assert_eq!(f.store.ack(leased[0].lease()).await, Ok(()));
    assert_eq!(f.states(&[b, c]).await, vec![Ready, Blocked]);
    let next = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&next), vec![b]);
    for job in leased[1..].iter().chain(&next) {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }
    // Both became ready at the same instant (the clock stands still): the lower id leases first.
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![c, y], "y's head x and c's head b are gone");
    let job = f.get(c).await;
    assert_eq!(
        (job.ordering_key.as_deref(), job.partition),
        (Some("k1"), Some(partition_of(Some("k1"), c, PARTITIONS_DEFAULT)))
    );
}

/// A later job of a key never overtakes an earlier one: not with a higher priority, not with an
/// earlier `run_at`; a scheduled head keeps its key waiting until it is due.
pub async fn a_later_job_of_a_key_never_overtakes_an_earlier_one<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("no-overtaking");
    f.upsert(&q, per_key(None)).await;
    let first = f.enqueue_one(&q, keyed("k", "first").delay_ms(10_000)).await;
    let urgent = f.enqueue_one(&q, keyed("k", "urgent").priority(100)).await;
    assert_eq!(f.states(&[first, urgent]).await, vec![JobState::Scheduled, JobState::Blocked]);
    f.lease_none(&q).await;
    clock.advance(10_000);
    let leased = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&leased), vec![first]);
    assert_eq!(f.store.ack(leased[0].lease()).await, Ok(()));
    // The job behind becomes ready at once: its own run_at is long past.
    let job = f.get(urgent).await;
    assert_eq!((job.state, job.run_at <= f.now()), (JobState::Ready, true));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![urgent]);
}

/// A job behind its key keeps its own delay: when its turn comes before its `run_at`, it is
/// scheduled, not ready.
pub async fn a_promoted_job_keeps_its_own_delay<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("promoted-delay");
    f.upsert(&q, per_key(None)).await;
    let head = f.enqueue_one(&q, keyed("k", "head")).await;
    let later = f.enqueue_one(&q, keyed("k", "later").delay_ms(5_000)).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, head);
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));
    assert_eq!(f.get(later).await.state, JobState::Scheduled);
    f.lease_none(&q).await;
    clock.advance(5_000);
    assert_eq!(f.lease_one(&q, None).await.id, later);
}

/// A nacked, released or expired head keeps its key blocked until it runs again
/// (head-of-line blocking).
pub async fn a_nacked_released_or_expired_head_keeps_its_key_blocked<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("head-of-line");
    f.upsert(&q, per_key(None)).await;
    let ids = f.enqueue(&q, vec![keyed("k", "head"), keyed("k", "next")]).await;
    let (head, next) = (ids[0], ids[1]);

    let lease = f.lease_one(&q, None).await;
    assert!(matches!(f.store.nack(lease.lease(), Some(1_000), Some("boom")).await, Ok(NackOutcome::Retrying { .. })));
    assert_eq!(f.states(&ids).await, vec![JobState::Scheduled, JobState::Blocked]);
    f.lease_none(&q).await;
    clock.advance(1_000);

    let lease = f.lease_one(&q, None).await;
    assert_eq!((lease.id, lease.attempt), (head, 2));
    assert_eq!(f.store.release(lease.lease(), None).await, Ok(()));
    assert_eq!(f.states(&ids).await, vec![JobState::Ready, JobState::Blocked]);

    let lease = f.lease_one(&q, Some(500)).await;
    assert_eq!(lease.id, head);
    clock.advance(500);
    // Expired: the head is leasable again, and still nothing behind it is.
    let again = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&again), vec![head]);
    assert_eq!(f.get(next).await.state, JobState::Blocked);
    assert_eq!(f.store.ack(again[0].lease()).await, Ok(()));
    assert_eq!(f.lease_one(&q, None).await.id, next);
}

/// A head that goes dead (failed, or nacked past its attempts) lets the next job of its key go
/// on, when the queue does not set `dead_blocks_key`.
pub async fn a_dead_head_lets_its_key_go_on<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("dead-head");
    f.upsert(&q, per_key(None)).await;
    let ids = f.enqueue(&q, vec![keyed("k", "a").max_attempts(1), keyed("k", "b"), keyed("k", "c")]).await;
    let lease = f.lease_one(&q, None).await;
    assert_eq!(f.store.nack(lease.lease(), Some(0), None).await, Ok(NackOutcome::Dead));
    assert_eq!(f.states(&ids).await, vec![JobState::Dead, JobState::Ready, JobState::Blocked]);
    let lease = f.lease_one(&q, None).await;
    assert_eq!(lease.id, ids[1]);
    assert_eq!(f.store.fail(lease.lease(), "no").await, Ok(()));
    assert_eq!(f.lease_one(&q, None).await.id, ids[2]);
    assert_eq!(f.stats(&q).await, counts(0, 0, 1, 2, None));
}

/// With `dead_blocks_key`, a dead head keeps its key blocked until it is redriven (it runs again
/// first) or purged (the next job goes on).
pub async fn dead_blocks_key_holds_the_key_until_redrive_or_purge<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("dead-blocks");
    f.upsert(&q, QueueConfigPatch { dead_blocks_key: Some(true), ..per_key(None) }).await;
    let ids = f.enqueue(&q, vec![keyed("k", "a"), keyed("k", "b"), keyed("other", "o")]).await;
    let leased = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&leased), vec![ids[0], ids[2]]);
    assert_eq!(f.store.fail(leased[0].lease(), "poison").await, Ok(()));
    assert_eq!(f.store.ack(leased[1].lease()).await, Ok(()));
    assert_eq!(f.states(&ids[..2]).await, vec![JobState::Dead, JobState::Blocked]);
    f.lease_none(&q).await;

    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(1));
    assert_eq!(f.states(&ids[..2]).await, vec![JobState::Ready, JobState::Blocked]);
    let lease = f.lease_one(&q, None).await;
    assert_eq!(lease.id, ids[0]);
    assert_eq!(f.store.fail(lease.lease(), "poison again").await, Ok(()));
    f.lease_none(&q).await;

    assert_eq!(f.store.dead_purge(&q).await, Ok(1));
    assert_eq!(f.lease_one(&q, None).await.id, ids[1]);
}

/// A dead job that no longer holds its key (the key went on) and is redriven waits behind the
/// key's current head, and runs before the key's later jobs: keys advance in id order.
pub async fn a_redriven_job_rejoins_its_key_in_id_order<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-rejoins");
    f.upsert(&q, per_key(None)).await;
    let ids = f.enqueue(&q, vec![keyed("k", "a"), keyed("k", "b"), keyed("k", "c")]).await;
    let a = f.lease_one(&q, None).await;
    assert_eq!(f.store.fail(a.lease(), "first try").await, Ok(()));
    let b = f.lease_one(&q, None).await;
    assert_eq!(b.id, ids[1]);
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(1));
    assert_eq!(f.states(&ids).await, vec![JobState::Blocked, JobState::Leased, JobState::Blocked]);
    assert_eq!(f.store.ack(b.lease()).await, Ok(()));
    assert_eq!(f.lease_one(&q, None).await.id, ids[0]);
}

/// In an unordered queue an ordering key is kept and shown, and orders nothing; jobs carry no
/// partition.
pub async fn ordering_keys_order_nothing_in_an_unordered_queue<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("unordered-keys");
    let ids = f.enqueue(&q, vec![keyed("k", "a"), keyed("k", "b")]).await;
    let leased = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&leased), ids);
    assert_eq!((leased[1].ordering_key.as_deref(), leased[1].partition), (Some("k"), None));
    let job = f.get(ids[0]).await;
    assert_eq!((job.ordering_key.as_deref(), job.partition), (Some("k"), None));
}

/// Partitions are the documented hash: FNV-1a (32-bit) of the key's UTF-8 bytes modulo the
/// partition count, or the id modulo the count for a key-less job. Leases and reads show them.
pub async fn partitions_follow_the_documented_hash<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("partitioned");
    assert_eq!(f.upsert(&q, per_key(Some(64))).await.partitions, 64);
    let ids = f.enqueue(&q, vec![keyed("a", "1"), keyed("foobar", "2"), keyed("é", "3"), NewJob::new("none")]).await;
    let expected = [
        Some(44),
        Some(0xbf9c_f968 % 64),
        Some(partition_of(Some("é"), ids[2], 64)),
        Some(partition_of(None, ids[3], 64)),
    ];
    for (id, want) in ids.iter().zip(expected) {
        assert_eq!(f.get(*id).await.partition, want, "job {id}");
    }
    let leased = f.lease(&q, 10, None).await;
    assert_eq!(leased.iter().map(|j| j.partition).collect::<Vec<_>>(), expected.to_vec());
    for bad in [0, PARTITIONS_MAX + 1] {
        let patch = QueueConfigPatch { partitions: Some(bad), ..QueueConfigPatch::default() };
        assert!(matches!(f.store.queue_upsert(&queue("bad-partitions"), patch).await, Err(Error::InvalidRequest(_))));
    }
}

/// Changing the ordering or the partition count is refused with `QueueNotEmpty` while the queue holds
/// any job (dead ones included), and allowed once it is empty; other fields change freely.
pub async fn ordering_and_partitions_change_only_while_the_queue_is_empty<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("reshaping");
    f.upsert(&q, per_key(Some(8))).await;
    f.enqueue_dead(&q, 1).await;
    let before = f.store.queue_get(&q).await.unwrap().config;
    for patch in [per_key(Some(9)), QueueConfigPatch { ordering: Some(Ordering::None), ..QueueConfigPatch::default() }]
    {
        assert!(matches!(f.store.queue_upsert(&q, patch).await, Err(Error::QueueNotEmpty(_))));
    }
    assert_eq!(f.store.queue_get(&q).await.unwrap().config, before, "a refused change changed nothing");
    let same = f.upsert(&q, QueueConfigPatch { max_attempts: Some(9), ..per_key(Some(8)) }).await;
    assert_eq!((same.partitions, same.max_attempts), (8, 9));
    assert_eq!(f.store.dead_purge(&q).await, Ok(1));
    assert_eq!(f.upsert(&q, per_key(Some(9))).await.partitions, 9);
    let unordered =
        f.upsert(&q, QueueConfigPatch { ordering: Some(Ordering::None), ..QueueConfigPatch::default() }).await;
    assert_eq!(unordered.ordering, Ordering::None);
}

/// A duplicate enqueue (same dedup id) creates nothing, so it blocks nothing; deleting a queue
/// forgets its keys; an ordering key is 1 to ORDERING_KEY_LEN_MAX bytes.
pub async fn duplicates_deleted_queues_and_key_limits<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("ordered-dedup");
    f.upsert(&q, per_key(None)).await;
    let first = f.enqueue_one(&q, keyed("k", "a").dedup_id("d")).await;
    let again = f.store.job_enqueue(&q, vec![keyed("k", "a").dedup_id("d")]).await.unwrap();
    assert_eq!((again[0].id, again[0].duplicate), (first, true));
    assert_eq!(f.stats(&q).await.blocked, 0);
    assert_eq!(f.lease_one(&q, None).await.id, first);

    assert_eq!(f.store.queue_delete(&q).await, Ok(()));
    f.upsert(&q, per_key(None)).await;
    let fresh = f.enqueue_one(&q, keyed("k", "after delete")).await;
    assert_eq!(f.get(fresh).await.state, JobState::Ready, "the deleted queue's leased head holds no key");

    let too_long = keyed(&"k".repeat(ORDERING_KEY_LEN_MAX + 1), "x");
    assert!(matches!(f.store.job_enqueue(&q, vec![too_long]).await, Err(Error::InvalidRequest(_))));
    let empty = keyed("", "x");
    assert!(matches!(f.store.job_enqueue(&q, vec![empty]).await, Err(Error::InvalidRequest(_))));
    f.enqueue_one(&q, keyed(&"k".repeat(ORDERING_KEY_LEN_MAX), "longest")).await;
}

/// Invariant 9 under concurrency: many workers lease, ack, nack and let leases expire on an
/// ordered queue; no two jobs of a key are ever leased at once, and each key's jobs complete in
/// enqueue order.
pub async fn invariant_9_per_key_order_under_concurrent_workers<B: Backend>(backend: &B) {
    const KEYS: usize = 8;
    const PER_KEY: usize = 12;
    const WORKERS: usize = 6;
    let f = open_system(backend).await;
    let q = queue("ordered-concurrent");
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(100), ..per_key(Some(4)) }).await;
    let mut order: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
    for round in 0..PER_KEY {
        let jobs: Vec<NewJob> = (0..KEYS).map(|k| keyed(&format!("key-{k}"), &format!("{round}"))).collect();
        let ids = f.enqueue(&q, jobs).await;
        for (k, id) in ids.into_iter().enumerate() {
            order.entry(format!("key-{k}")).or_default().push(id);
        }
    }
    // Keys with a live lease, and every completion, as workers saw them.
    let in_flight: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let done: Arc<Mutex<BTreeMap<String, Vec<JobId>>>> = Arc::default();
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        let (store, q, in_flight, done) = (Arc::clone(&f.store), q.clone(), Arc::clone(&in_flight), Arc::clone(&done));
        workers.spawn(async move {
            let mut turn = 0usize;
            loop {
                let total: usize = done.lock().await.values().map(Vec::len).sum();
                if total == KEYS * PER_KEY {
                    return;
                }
                turn += 1;
                let options = LeaseOptions { max_jobs: 3, visibility_timeout_ms: Some(30_000), wait_ms: 50 };
                let leased = store.job_lease(&q, options).await.unwrap();
                for job in leased {
                    let key = job.ordering_key.clone().unwrap();
                    assert!(in_flight.lock().await.insert(key.clone()), "two jobs of {key} leased at once");
                    tokio::task::yield_now().await;
                    // Every fifth delivery fails once and is retried; the rest complete.
                    if (turn + w).is_multiple_of(5) && job.attempt == 1 {
                        in_flight.lock().await.remove(&key);
                        store.nack(job.lease(), Some(0), Some("retry")).await.unwrap();
                    } else {
                        let mut done = done.lock().await;
                        in_flight.lock().await.remove(&key);
                        store.ack(job.lease()).await.unwrap();
                        done.entry(key).or_default().push(job.id);
                    }
                }
            }
        });
    }
    while let Some(joined) = within("ordered workers", workers.join_next()).await {
        joined.unwrap();
    }
    assert_eq!(*done.lock().await, order, "each key's jobs completed in enqueue order");
}

/// A lease waiting on an ordered queue whose only jobs are blocked wakes when the key's head is
/// acked and the next job becomes ready.
pub async fn long_poll_wakes_when_a_key_moves_on<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("ordered-long-poll");
    f.upsert(&q, per_key(None)).await;
    let ids = f.enqueue(&q, vec![keyed("k", "head"), keyed("k", "next")]).await;
    let head = f.lease_one(&q, None).await;
    let waiting = super::spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(super::NUDGE).await;
    assert_eq!(f.store.ack(head.lease()).await, Ok(()));
    let (jobs, elapsed) = within("the waiting lease", waiting).await.unwrap();
    assert_eq!(ids_of(&jobs), vec![ids[1]]);
    assert!(elapsed < super::PROMPTLY, "the lease took {elapsed:?} to wake up");
}
