//! Ordering per key in the embedded store, beyond the conformance suite: an at_most_once lease,
//! a lease expiring past its attempts and a purge each move a key on (or not) as
//! docs/semantics.md says; several dead jobs of one key redriven together rejoin it oldest first;
//! jobs with dedup ids block in batch order; key heads survive close and reopen; and a refused
//! change of ordering says why. After each, the data file's key heads and blocked lists agree
//! with its jobs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use onceq_core::ordering::partition_of;
use onceq_core::{
    Clock, DeliveryMode, Error, JobId, JobState, LeaseOptions, ManualClock, NewJob, Ordering, QueueConfigPatch,
    QueueName, Redrive, Store, StoreExt,
};
use onceq_sqlite::{SqliteOptions, SqliteStore, DATA_FILE_NAME};

fn per_key() -> QueueConfigPatch {
    QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() }
}

fn keyed(key: &str, payload: &str) -> NewJob {
    NewJob::new(payload.to_owned()).ordering_key(key)
}

/// Checks, in a closed store's data file, what the store keeps beside its jobs: the `blocked`
/// list holds exactly the blocked jobs (with their key and `run_at`), each key's head is a job of
/// that key that is ready, scheduled, leased or dead, and every blocked job has a head to wait on.
fn assert_keys_agree_with_jobs(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join(DATA_FILE_NAME)).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let blocked = count("SELECT count(*) FROM jobs WHERE state = 4");
    let listed = count(
        "SELECT count(*) FROM blocked b JOIN jobs j ON j.id = b.job_id AND j.state = 4 AND j.queue_id = b.queue_id \
         AND j.ordering_key = b.ordering_key AND j.run_at = b.run_at",
    );
    assert_eq!((count("SELECT count(*) FROM blocked"), listed), (blocked, blocked), "blocked list and jobs differ");
    let heads = count("SELECT count(*) FROM keys");
    let live_heads = count(
        "SELECT count(*) FROM keys k JOIN jobs j ON j.id = k.head_id AND j.queue_id = k.queue_id \
         AND j.ordering_key = k.ordering_key AND j.state IN (0, 1, 2, 3)",
    );
    assert_eq!(live_heads, heads, "a key's head is not a waiting job of the key");
    let headless = count(
        "SELECT count(*) FROM blocked b WHERE NOT EXISTS \
         (SELECT 1 FROM keys k WHERE k.queue_id = b.queue_id AND k.ordering_key = b.ordering_key)",
    );
    assert_eq!(headless, 0, "a blocked job waits behind no head");
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(dir).clock(clock.clone() as Arc<dyn Clock>)).unwrap()
}

async fn enqueue(store: &SqliteStore, queue: &QueueName, jobs: Vec<NewJob>) -> Vec<JobId> {
    store.job_enqueue(queue, jobs).await.unwrap().into_iter().map(|e| e.id).collect()
}

async fn lease(store: &SqliteStore, queue: &QueueName, visibility_timeout_ms: Option<u64>) -> Vec<JobId> {
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms, wait_ms: 0 };
    store.job_lease(queue, options).await.unwrap().into_iter().map(|j| j.id).collect()
}

async fn states(store: &SqliteStore, ids: &[JobId]) -> Vec<JobState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(store.job_get(*id).await.unwrap().state);
    }
    out
}

/// In an at_most_once queue the lease removes the head, so its key moves on at once: one lease
/// hands out the head, the next lease the job behind it.
#[tokio::test]
async fn an_at_most_once_lease_moves_the_key_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = open(dir.path(), &clock);
    let q = QueueName::new("at-most-once").unwrap();
    store.queue_upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::AtMostOnce), ..per_key() }).await.unwrap();
    let ids = enqueue(&store, &q, vec![keyed("k", "a"), keyed("k", "b"), keyed("k", "c")]).await;
    assert_eq!(lease(&store, &q, None).await, vec![ids[0]]);
    assert_eq!(states(&store, &ids[1..]).await, vec![JobState::Ready, JobState::Blocked]);
    assert_eq!(lease(&store, &q, None).await, vec![ids[1]]);
    assert_eq!(lease(&store, &q, None).await, vec![ids[2]]);
    assert_eq!(lease(&store, &q, None).await, Vec::<JobId>::new());
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}

/// A lease that expires on its last attempt dead-letters the head: the key moves on, unless the
/// queue has `dead_blocks_key`, where the dead head holds it.
#[tokio::test]
async fn a_lease_expiring_past_its_attempts_moves_the_key_on_unless_dead_blocks_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = open(dir.path(), &clock);
    let (moves, holds) = (QueueName::new("moves-on").unwrap(), QueueName::new("holds").unwrap());
    store.queue_upsert(&moves, per_key()).await.unwrap();
    store.queue_upsert(&holds, QueueConfigPatch { dead_blocks_key: Some(true), ..per_key() }).await.unwrap();
    let moving = enqueue(&store, &moves, vec![keyed("k", "a").max_attempts(1), keyed("k", "b")]).await;
    let holding = enqueue(&store, &holds, vec![keyed("k", "a").max_attempts(1), keyed("k", "b")]).await;
    assert_eq!(lease(&store, &moves, Some(1_000)).await, vec![moving[0]]);
    assert_eq!(lease(&store, &holds, Some(1_000)).await, vec![holding[0]]);
    clock.advance(1_000);
    assert_eq!(states(&store, &moving).await, vec![JobState::Dead, JobState::Ready]);
    assert_eq!(states(&store, &holding).await, vec![JobState::Dead, JobState::Blocked]);
    let stats = store.queue_get(&holds).await.unwrap().stats;
    assert_eq!((stats.ready, stats.dead, stats.blocked), (0, 1, 1));
    assert_eq!(lease(&store, &moves, None).await, vec![moving[1]]);
    assert_eq!(lease(&store, &holds, None).await, Vec::<JobId>::new());
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}

/// Purging a dead job the key already moved past leaves the key's head alone; several dead jobs
/// of one key redriven together rejoin it oldest first, behind the live head.
#[tokio::test]
async fn purge_and_redrive_of_jobs_the_key_moved_past() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = open(dir.path(), &clock);
    let q = QueueName::new("moved-past").unwrap();
    store.queue_upsert(&q, per_key()).await.unwrap();
    let ids = enqueue(&store, &q, vec![keyed("k", "a"), keyed("k", "b"), keyed("k", "c"), keyed("k", "d")]).await;
    // a and b die in turn; c becomes the head and is leased.
    for expected in &ids[..2] {
        let job = store.lease_one(&q).await.unwrap().unwrap();
        assert_eq!(job.id, *expected);
        assert_eq!(store.fail(job.lease(), "no").await, Ok(()));
    }
    let c = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(c.id, ids[2]);
    assert_eq!(store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(2));
    assert_eq!(
        states(&store, &ids).await,
        vec![JobState::Blocked, JobState::Blocked, JobState::Leased, JobState::Blocked]
    );
    assert_eq!(store.ack(c.lease()).await, Ok(()));
    // a (lowest id) is next, then b, then d.
    for expected in [ids[0], ids[1]] {
        let job = store.lease_one(&q).await.unwrap().unwrap();
        assert_eq!(job.id, expected);
        assert_eq!(store.fail(job.lease(), "again").await, Ok(()));
    }
    assert_eq!(states(&store, &[ids[3]]).await, vec![JobState::Ready]);
    let d = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(store.dead_purge(&q).await, Ok(2));
    assert_eq!(states(&store, &[ids[3]]).await, vec![JobState::Leased], "the purge left the live head alone");
    assert_eq!(store.ack(d.lease()).await, Ok(()));
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased, stats.dead, stats.blocked), (0, 0, 0, 0));
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}

/// Jobs with dedup ids go in one by one; in a per_key queue they still block in batch order, get
/// their partitions, and a duplicate in the same batch creates (and blocks) nothing.
#[tokio::test]
async fn jobs_with_dedup_ids_block_in_batch_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = open(dir.path(), &clock);
    let q = QueueName::new("dedup-ordered").unwrap();
    let patch = QueueConfigPatch { partitions: Some(7), ..per_key() };
    store.queue_upsert(&q, patch).await.unwrap();
    let batch = vec![
        keyed("k", "a").dedup_id("a"),
        keyed("k", "b").dedup_id("b"),
        keyed("k", "a again").dedup_id("a"),
        NewJob::new("free").dedup_id("free"),
    ];
    let enqueued = store.job_enqueue(&q, batch).await.unwrap();
    assert_eq!(enqueued.iter().map(|e| e.duplicate).collect::<Vec<_>>(), vec![false, false, true, false]);
    assert_eq!(enqueued[2].id, enqueued[0].id);
    let (a, b, free) = (enqueued[0].id, enqueued[1].id, enqueued[3].id);
    assert_eq!(states(&store, &[a, b, free]).await, vec![JobState::Ready, JobState::Blocked, JobState::Ready]);
    for (id, key) in [(a, Some("k")), (b, Some("k")), (free, None)] {
        assert_eq!(store.job_get(id).await.unwrap().partition, Some(partition_of(key, id, 7)), "job {id}");
    }
    assert_eq!(store.queue_get(&q).await.unwrap().stats.blocked, 1);
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}

/// Key heads and blocked jobs are on disk: after close and reopen the order goes on, and a job
/// with a delay that reaches the head of its key before its time is scheduled, and due on time.
#[tokio::test]
async fn keys_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let q = QueueName::new("reopened").unwrap();
    let store = open(dir.path(), &clock);
    store.queue_upsert(&q, per_key()).await.unwrap();
    let ids = enqueue(&store, &q, vec![keyed("k", "a"), keyed("k", "b").delay_ms(5_000), keyed("k", "c")]).await;
    let a = store.lease_one(&q).await.unwrap().unwrap();
    store.close().await;

    let store = open(dir.path(), &clock);
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.leased, stats.blocked), (1, 2));
    assert_eq!(store.ack(a.lease()).await, Ok(()));
    assert_eq!(states(&store, &ids[1..]).await, vec![JobState::Scheduled, JobState::Blocked]);
    assert_eq!(lease(&store, &q, None).await, Vec::<JobId>::new());
    clock.advance(5_000);
    assert_eq!(lease(&store, &q, None).await, vec![ids[1]]);
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}

/// A change of ordering or partitions while the queue holds jobs is a `Conflict` that says how
/// many jobs it holds and when the change is possible.
#[tokio::test]
async fn a_refused_reordering_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = open(dir.path(), &clock);
    let q = QueueName::new("busy").unwrap();
    enqueue(&store, &q, vec![keyed("k", "a"), NewJob::new("b")]).await;
    assert_eq!(
        store.queue_upsert(&q, per_key()).await,
        Err(Error::QueueNotEmpty(
            "queue busy holds 2 jobs; its ordering and partitions change only while it holds none: let it drain and \
             purge its dead jobs, or move the work to a new queue, then retry"
                .to_owned()
        ))
    );
    store.close().await;
    assert_keys_agree_with_jobs(dir.path());
}
