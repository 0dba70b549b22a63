//! Proves the paths of ordering per key that the conformance suite does not reach, in the
//! PostgreSQL store: a key moves on when its head is leased from an `at_most_once` queue and when
//! its lease expires on the last attempt (or stays held, with `dead_blocks_key`, until a purge);
//! a job promoted to `scheduled` wakes a waiting lease when it comes due; inside a caller's
//! transaction an enqueue and an ack follow the same rules and a rollback undoes the key's move;
//! a queue delete forgets its keys; a change of ordering is refused with a message that says
//! why; an ordering key PostgreSQL cannot store is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{
    Clock, DeliveryMode, Error, JobId, JobState, LeaseOptions, ManualClock, NewJob, Ordering, QueueConfigPatch,
    QueueName, Store, StoreExt,
};
use onceq_postgres::PgStore;

fn per_key() -> QueueConfigPatch {
    QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() }
}

fn keyed(key: &str, payload: &str) -> NewJob {
    NewJob::new(payload.to_owned()).ordering_key(key)
}

async fn states(store: &PgStore, ids: &[JobId]) -> Vec<JobState> {
    let mut out = Vec::new();
    for id in ids {
        out.push(store.job_get(*id).await.unwrap().state);
    }
    out
}

async fn enqueue(store: &PgStore, q: &QueueName, jobs: Vec<NewJob>) -> Vec<JobId> {
    store.job_enqueue(q, jobs).await.unwrap().into_iter().map(|e| e.id).collect()
}

async fn lease_ids(store: &PgStore, q: &QueueName, visibility_timeout_ms: Option<u64>) -> Vec<JobId> {
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms, wait_ms: 0 };
    store.job_lease(q, options).await.unwrap().into_iter().map(|j| j.id).collect()
}

/// Keys held in the store's schema.
async fn keys_held(store: &PgStore) -> i64 {
    let sql = format!("SELECT count(*) FROM \"{}\".ordering_keys", store.schema());
    sqlx::query_scalar(&sql).fetch_one(store.pool()).await.unwrap()
}

#[tokio::test]
async fn an_at_most_once_lease_and_a_last_expiry_move_the_key_on() {
    let clock = ManualClock::at_default_start();
    let (store, _guard) = common::fresh_store(Some(clock.clone() as Arc<dyn Clock>)).await;

    let once = QueueName::new("at-most-once").unwrap();
    store
        .queue_upsert(&once, QueueConfigPatch { delivery: Some(DeliveryMode::AtMostOnce), ..per_key() })
        .await
        .unwrap();
    let ids = enqueue(&store, &once, vec![keyed("k", "a"), keyed("k", "b"), keyed("k", "c")]).await;
    assert_eq!(lease_ids(&store, &once, None).await, vec![ids[0]], "only the head, which goes as it is leased");
    assert_eq!(states(&store, &ids[1..]).await, vec![JobState::Ready, JobState::Blocked]);
    assert_eq!(lease_ids(&store, &once, None).await, vec![ids[1]]);
    assert_eq!(lease_ids(&store, &once, None).await, vec![ids[2]]);
    assert_eq!(keys_held(&store).await, 0);

    let expiring = QueueName::new("expiring").unwrap();
    store.queue_upsert(&expiring, QueueConfigPatch { max_attempts: Some(1), ..per_key() }).await.unwrap();
    let ids = enqueue(&store, &expiring, vec![keyed("k", "a"), keyed("k", "b")]).await;
    assert_eq!(lease_ids(&store, &expiring, Some(500)).await, vec![ids[0]]);
    clock.advance(500);
    assert_eq!(lease_ids(&store, &expiring, None).await, vec![ids[1]], "the head expired on its last attempt");
    assert_eq!(store.job_get(ids[0]).await.unwrap().state, JobState::Dead);

    // With dead_blocks_key the expired head keeps the key until it is purged.
    let held = QueueName::new("held").unwrap();
    let patch = QueueConfigPatch { max_attempts: Some(1), dead_blocks_key: Some(true), ..per_key() };
    store.queue_upsert(&held, patch).await.unwrap();
    let ids = enqueue(&store, &held, vec![keyed("k", "a"), keyed("k", "b")]).await;
    assert_eq!(lease_ids(&store, &held, Some(500)).await, vec![ids[0]]);
    clock.advance(500);
    assert_eq!(lease_ids(&store, &held, None).await, Vec::<JobId>::new());
    assert_eq!(states(&store, &ids).await, vec![JobState::Dead, JobState::Blocked]);
    assert_eq!(store.dead_purge(&held).await, Ok(1));
    assert_eq!(lease_ids(&store, &held, None).await, vec![ids[1]]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_promoted_to_scheduled_wakes_a_waiting_lease_when_it_comes_due() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("delayed").unwrap();
    store.queue_upsert(&q, per_key()).await.unwrap();
    let head = store.enqueue(&q, keyed("k", "head")).await.unwrap().id;
    let later = store.enqueue(&q, keyed("k", "later").delay_ms(3_000)).await.unwrap().id;
    let leased = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(leased.id, head);
    // Waits with its timer at the longest (nothing is scheduled while `later` is blocked).
    let waiting = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move {
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            let jobs = store.job_lease(&q, options).await.unwrap();
            (jobs.into_iter().map(|j| j.id).collect::<Vec<_>>(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.ack(leased.lease()).await, Ok(()));
    let acked = Instant::now();
    let job = store.job_get(later).await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    let due_in = Duration::from_millis(job.run_at.ms_since(store_now(&store).await));
    assert!(due_in > Duration::from_millis(1_000), "{due_in:?}: the test needs the job due well after the ack");
    let (jobs, woke) = waiting.await.unwrap();
    assert_eq!(jobs, vec![later]);
    // Without the wake-up the lease would sleep on until its periodic look, 5 s after it began
    // to wait: later than this.
    let waited = woke - acked;
    assert!(waited < due_in + Duration::from_millis(1_000), "woken {waited:?} after the ack, due {due_in:?} after it");
    store.close().await;
}

/// The database's "now", as the store reads it.
async fn store_now(store: &PgStore) -> onceq_core::Timestamp {
    let ms: i64 = sqlx::query_scalar("SELECT floor(extract(epoch FROM statement_timestamp()) * 1000)::int8")
        .fetch_one(store.pool())
        .await
        .unwrap();
    onceq_core::Timestamp::from_millis(ms)
}

#[tokio::test]
async fn inside_a_transaction_enqueue_and_ack_keep_the_order_and_a_rollback_undoes_them() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("transactional").unwrap();
    store.queue_upsert(&q, per_key()).await.unwrap();

    let mut tx = store.transaction().await.unwrap();
    let ids: Vec<JobId> = store
        .job_enqueue_in(&mut tx, &q, vec![keyed("k", "a"), keyed("k", "b"), NewJob::new("free")])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    tx.commit().await.unwrap();
    assert_eq!(states(&store, &ids).await, vec![JobState::Ready, JobState::Blocked, JobState::Ready]);
    let leased = store.job_lease(&q, LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 }).await;
    let leased = leased.unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[0], ids[2]]);
    let head = leased.iter().find(|j| j.id == ids[0]).unwrap();

    let mut tx = store.transaction().await.unwrap();
    assert!(store.job_ack_in(&mut tx, &[head.lease()]).await.unwrap()[0].is_ok());
    tx.rollback().await.unwrap();
    assert_eq!(states(&store, &ids[..2]).await, vec![JobState::Leased, JobState::Blocked]);

    let mut tx = store.transaction().await.unwrap();
    assert!(store.job_ack_in(&mut tx, &[head.lease()]).await.unwrap()[0].is_ok());
    tx.commit().await.unwrap();
    assert_eq!(lease_ids(&store, &q, None).await, vec![ids[1]]);
    store.close().await;
}

#[tokio::test]
async fn a_deleted_queue_forgets_its_keys_and_a_reorder_says_why_it_is_refused() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("deleted").unwrap();
    store.queue_upsert(&q, per_key()).await.unwrap();
    enqueue(&store, &q, vec![keyed("k1", "a"), keyed("k1", "b"), keyed("k2", "c")]).await;
    assert_eq!(keys_held(&store).await, 2);
    let refused = store.queue_upsert(&q, QueueConfigPatch { partitions: Some(3), ..per_key() }).await;
    assert_eq!(
        refused,
        Err(Error::QueueNotEmpty(
            "queue deleted holds 3 jobs; its ordering and partitions change only while it holds none: let it drain \
             and purge its dead jobs, or move the work to a new queue, then retry"
                .into()
        ))
    );
    assert_eq!(store.queue_delete(&q).await, Ok(()));
    assert_eq!(keys_held(&store).await, 0);

    let nul = store.job_enqueue(&q, vec![keyed("a\0b", "x")]).await;
    assert!(matches!(&nul, Err(Error::InvalidRequest(m)) if m.contains("ordering key contains NUL")), "{nul:?}");
    store.close().await;
}
