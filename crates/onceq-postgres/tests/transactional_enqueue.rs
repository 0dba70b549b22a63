//! Proves transactional enqueue (`PgStore::job_enqueue_in`): jobs enqueued in a caller's
//! transaction exist exactly when it commits. A rollback leaves no job, no claimed dedup id, no
//! queue it created, the stats unchanged, and wakes no waiting lease (`NOTIFY` is
//! transactional); a commit makes the jobs visible together with the caller's own writes and
//! wakes a waiting lease at once. Dedup and the `effectively_once` rule hold inside a
//! transaction, and a concurrent enqueue of a dedup id an open transaction claimed waits for
//! its outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{
    DeliveryMode, Enqueued, Error, LeaseOptions, NewJob, QueueConfigPatch, QueueName, QueueStats, Store, StoreExt,
};
use onceq_postgres::PgStore;
use sqlx::postgres::PgListener;

/// A lease waiting up to `wait_ms` for one job of `q`: the ids it got and how long it waited.
fn waiting_lease(
    store: &PgStore,
    q: &QueueName,
    wait_ms: u64,
) -> tokio::task::JoinHandle<(Vec<onceq_core::JobId>, Duration)> {
    let (store, q) = (store.clone(), q.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms };
        let jobs = store.job_lease(&q, options).await.unwrap();
        (jobs.into_iter().map(|j| j.id).collect(), started.elapsed())
    })
}

async fn listener(store: &PgStore) -> PgListener {
    let mut listener = PgListener::connect(&common::database_url()).await.unwrap();
    listener.listen(&common::channel(store)).await.unwrap();
    listener
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_enqueue_leaves_no_job_and_wakes_no_one() {
    let (store, _guard) = common::fresh_store(None).await;
    common::create_orders(&store).await;
    let q = QueueName::new("emails").unwrap();
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let fresh = QueueName::new("created_in_the_transaction").unwrap();
    let mut notifications = listener(&store).await;
    let waiting = waiting_lease(&store, &q, 800);
    tokio::time::sleep(Duration::from_millis(100)).await; // the lease is waiting

    let mut tx = store.pool().begin().await.unwrap();
    common::insert_order(&store, &mut tx, 1, 0).await;
    let enqueued =
        store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("1").dedup_id("order-1"), NewJob::new("2")]).await.unwrap();
    let ids: Vec<_> = enqueued.iter().map(|e| e.id).collect();
    assert!(enqueued.iter().all(|e| !e.duplicate), "{enqueued:?}");
    store.job_enqueue_in(&mut tx, &fresh, vec![NewJob::new("3")]).await.unwrap();
    // Not visible outside the transaction while it is open.
    assert_eq!(store.job_get(ids[0]).await, Err(Error::JobNotFound(ids[0])));
    assert_eq!(store.queue_get(&fresh).await.err(), Some(Error::QueueNotFound(fresh.clone())));
    tx.rollback().await.unwrap();

    let notified = tokio::time::timeout(Duration::from_millis(300), notifications.recv()).await;
    assert!(notified.is_err(), "a rolled-back enqueue sent a wake-up: {notified:?}");
    let (leased, waited) = waiting.await.unwrap();
    assert!(leased.is_empty() && waited >= Duration::from_millis(700), "{leased:?} after {waited:?}");
    for id in ids {
        assert_eq!(store.job_get(id).await, Err(Error::JobNotFound(id)));
    }
    assert_eq!(store.queue_get(&q).await.unwrap().stats, QueueStats::default());
    assert_eq!(store.queue_get(&fresh).await.err(), Some(Error::QueueNotFound(fresh.clone())));
    assert_eq!(common::orders(&store).await, Vec::<(i64, i32)>::new());
    // The dedup id went with the rollback: enqueued again, it makes a new job.
    let again = store.enqueue(&q, NewJob::new("1").dedup_id("order-1")).await.unwrap();
    assert!(!again.duplicate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_enqueue_is_visible_with_the_callers_writes_and_wakes_a_waiting_lease() {
    let (store, _guard) = common::fresh_store(None).await;
    common::create_orders(&store).await;
    let q = QueueName::new("emails").unwrap();
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let mut notifications = listener(&store).await;
    let waiting = waiting_lease(&store, &q, 10_000);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut tx = store.pool().begin().await.unwrap();
    common::insert_order(&store, &mut tx, 7, 0).await;
    let first = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("7").dedup_id("order-7")]).await.unwrap();
    // A second enqueue of the dedup id in the same transaction is its duplicate.
    let second = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("7").dedup_id("order-7")]).await.unwrap();
    assert_eq!(second, vec![Enqueued { id: first[0].id, duplicate: true }]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a lease found a job of an uncommitted transaction");
    let committed = Instant::now();
    tx.commit().await.unwrap();

    let notification = tokio::time::timeout(Duration::from_secs(5), notifications.recv()).await.unwrap().unwrap();
    assert_eq!(notification.payload(), "r 1 emails");
    let (leased, _) = waiting.await.unwrap();
    // Woken by the commit's notification, not by the waiter's periodic look (5 s).
    assert!(committed.elapsed() < Duration::from_secs(2), "woken after {:?}", committed.elapsed());
    assert_eq!(leased, vec![first[0].id]);
    assert_eq!(common::orders(&store).await, vec![(7, 0)]);
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enqueue_rules_hold_inside_a_transaction() {
    let (store, _guard) = common::fresh_store(None).await;
    let store = Arc::new(store);
    let payments = QueueName::new("payments").unwrap();
    let patch = QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() };
    store.queue_upsert(&payments, patch).await.unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    let refused = store.job_enqueue_in(&mut tx, &payments, vec![NewJob::new("1")]).await;
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.contains("effectively_once")), "{refused:?}");
    let empty = store.job_enqueue_in(&mut tx, &payments, Vec::new()).await;
    assert!(matches!(&empty, Err(Error::InvalidRequest(_))), "{empty:?}");
    let claimed = store.job_enqueue_in(&mut tx, &payments, vec![NewJob::new("1").dedup_id("pay-1")]).await.unwrap();

    // Another enqueue of the same dedup id waits for the open transaction's outcome...
    let (s, q) = (store.clone(), payments.clone());
    let concurrent = tokio::spawn(async move { s.enqueue(&q, NewJob::new("1").dedup_id("pay-1")).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!concurrent.is_finished(), "an enqueue did not wait for the claim of an open transaction");
    tx.commit().await.unwrap();
    // ... and, once it committed, is its duplicate (Invariant 6).
    let duplicate = concurrent.await.unwrap().unwrap();
    assert_eq!(duplicate, Enqueued { id: claimed[0].id, duplicate: true });
    let stats = store.queue_get(&payments).await.unwrap().stats;
    assert_eq!(stats.ready, 1);
}

/// Inside a caller's transaction, an enqueue into a queue this store remembers, but which
/// another store deleted and created again, goes into the new queue: the one-statement enqueue
/// inserts nothing into the old id, raises no error that would abort the caller's transaction,
/// and the lookup that follows finds the new queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_in_a_transaction_into_a_queue_recreated_elsewhere_lands_in_the_new_one() {
    let (store, guard) = common::fresh_store(None).await;
    let other = common::connect(common::options(guard.schema(), None)).await;
    let q = QueueName::new("recreated").unwrap();
    store.enqueue(&q, NewJob::new("creates")).await.unwrap();
    store.enqueue(&q, NewJob::new("remembered")).await.unwrap();
    other.queue_delete(&q).await.unwrap();
    other.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    let enqueued = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("in the new queue")]).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.expect("the caller's transaction is still usable");
    tx.commit().await.unwrap();

    assert_eq!(other.queue_get(&q).await.unwrap().stats.ready, 1);
    let leased = other.lease_one(&q).await.unwrap().expect("the job is in the new queue");
    assert_eq!(leased.id, enqueued[0].id);
}
