//! Proves what several onceq processes sharing one database rely on, with two stores (two
//! pools, two listeners) on one schema: a backlog drained by workers on both is delivered and
//! acked exactly once, never leased twice at once; a lease waiting on one store is woken by an
//! enqueue on the other, and re-arms its timer for a job the other schedules; a job row locked
//! elsewhere for long (an ack inside a caller's transaction) stalls no lease of its queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, NewJob, QueueName, QueueStats, Store, StoreExt};
use onceq_postgres::PgStore;
use sqlx::Connection;
use tokio::task::JoinSet;

async fn two_stores() -> (PgStore, PgStore, common::SchemaGuard) {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    (a, b, guard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drained_through_two_stores_is_acked_exactly_once() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("shared").unwrap();
    let mut ids = Vec::new();
    for batch in 0..20 {
        let jobs = (0..100).map(|i| NewJob::new(format!("{batch}-{i}"))).collect();
        ids.extend(a.job_enqueue(&q, jobs).await.unwrap().into_iter().map(|e| e.id));
    }
    let mut workers = JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for _ in 0..4 {
            let (store, q) = (store.clone(), q.clone());
            workers.spawn(async move {
                let mut acked = Vec::new();
                loop {
                    let options = LeaseOptions { max_jobs: 25, visibility_timeout_ms: Some(60_000), wait_ms: 200 };
                    let jobs = store.job_lease(&q, options).await.unwrap();
                    if jobs.is_empty() {
                        return acked;
                    }
                    assert!(jobs.iter().all(|j| j.attempt == 1), "a job was delivered twice");
                    let leases: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                    let results = store.job_ack(&leases).await.unwrap();
                    assert!(results.iter().all(Result::is_ok), "an ack of a live lease failed: {results:?}");
                    acked.extend(jobs.iter().map(|j| j.id));
                }
            });
        }
    }
    let mut acks: HashMap<onceq_core::JobId, usize> = HashMap::new();
    while let Some(acked) = workers.join_next().await {
        for id in acked.unwrap() {
            *acks.entry(id).or_default() += 1;
        }
    }
    assert_eq!(acks.len(), ids.len(), "every job is acked");
    assert!(acks.values().all(|&n| n == 1), "a job was acked twice");
    assert_eq!(b.queue_get(&q).await.unwrap().stats, QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waiting_on_one_store_is_woken_by_the_other() {
    let (a, b, _guard) = two_stores().await;
    let b = Arc::new(b);
    let q = QueueName::new("wake").unwrap();
    let wait = |store: Arc<PgStore>, q: QueueName| {
        tokio::spawn(async move {
            let started = Instant::now();
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            let jobs = store.job_lease(&q, options).await.unwrap();
            (jobs.into_iter().map(|j| j.id).collect::<Vec<_>>(), started.elapsed())
        })
    };

    let waiting = wait(b.clone(), q.clone());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let id = a.enqueue(&q, NewJob::new("now")).await.unwrap().id;
    let (got, elapsed) = waiting.await.unwrap();
    assert_eq!(got, vec![id]);
    assert!(elapsed < Duration::from_secs(2), "woken after {elapsed:?}");

    // The waiter's timer knows of no job; the other store schedules one 400 ms ahead.
    let waiting = wait(b.clone(), q.clone());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let id = a.enqueue(&q, NewJob::new("soon").delay_ms(400)).await.unwrap().id;
    let (got, elapsed) = waiting.await.unwrap();
    assert_eq!(got, vec![id]);
    assert!(elapsed >= Duration::from_millis(600), "returned after {elapsed:?}, before the job was due");
    assert!(elapsed < Duration::from_millis(2_500), "woken after {elapsed:?}: the timer was not re-armed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_row_locked_elsewhere_stalls_no_lease() {
    let (store, guard) = common::fresh_store(None).await;
    let q = QueueName::new("locked").unwrap();
    let ids: Vec<_> = store
        .job_enqueue(&q, vec![NewJob::new("held"), NewJob::new("free")])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let held = store.job_lease(&q, LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(100), wait_ms: 0 }).await;
    assert_eq!(held.unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), vec![ids[0]]);

    let mut other = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query(&format!("SELECT 1 FROM \"{}\".jobs WHERE id = $1 FOR UPDATE", guard.schema()))
        .bind(i64::try_from(ids[0].get()).unwrap())
        .execute(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the held lease has expired
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(3), store.lease_one(&q)).await.expect("the lease stalled");
    assert_eq!(got.unwrap().map(|j| j.id), Some(ids[1]));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    tx.rollback().await.unwrap();

    // Once free, the expired lease is redelivered as usual.
    let again = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (ids[0], 2));
}

/// An enqueue into a queue the store has looked up before skips the lookup (one statement), so
/// it must still see what another store changed since: the queue's config (its default max
/// attempts, its delivery mode) and the queue itself, deleted and created again under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_that_skips_the_lookup_still_sees_what_another_store_changed() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("changing").unwrap();
    // The first enqueue creates the queue; the second looks it up, and the store remembers it.
    a.enqueue(&q, NewJob::new("first")).await.unwrap();
    let known = a.enqueue(&q, NewJob::new("known")).await.unwrap();
    assert_eq!(a.job_get(known.id).await.unwrap().max_attempts, onceq_core::QueueConfig::default().max_attempts);

    // Another store changes the default max attempts: the next enqueue here takes the new one.
    let patch = onceq_core::QueueConfigPatch { max_attempts: Some(3), ..Default::default() };
    b.queue_upsert(&q, patch).await.unwrap();
    let after = a.enqueue(&q, NewJob::new("after the change")).await.unwrap();
    assert_eq!(a.job_get(after.id).await.unwrap().max_attempts, 3);

    // ...and makes the queue effectively_once: a job without a dedup id is refused, and writes
    // nothing.
    let patch = onceq_core::QueueConfigPatch {
        delivery: Some(onceq_core::DeliveryMode::EffectivelyOnce),
        ..Default::default()
    };
    b.queue_upsert(&q, patch).await.unwrap();
    let ready_before = a.queue_get(&q).await.unwrap().stats.ready;
    let refused = a.enqueue(&q, NewJob::new("no dedup id")).await.unwrap_err();
    assert_eq!(refused.kind(), onceq_core::ErrorKind::InvalidRequest, "{refused}");
    assert_eq!(a.queue_get(&q).await.unwrap().stats.ready, ready_before);

    // Deleted and created again by the other store: the job goes into the new queue, not into
    // the old id (which would leave it in no queue). It carries a dedup id, so that it passes
    // the effectively_once config this store remembers and tries the remembered id first.
    b.queue_delete(&q).await.unwrap();
    b.queue_upsert(&q, onceq_core::QueueConfigPatch::default()).await.unwrap();
    let moved = a.enqueue(&q, NewJob::new("into the new queue").dedup_id("moved")).await.unwrap();
    assert!(!moved.duplicate);
    let stats = b.queue_get(&q).await.unwrap().stats;
    assert_eq!(stats.ready, 1, "{stats:?}");
    let leased = b.lease_one(&q).await.unwrap().expect("the job is in the new queue");
    assert_eq!(leased.id, moved.id);
}
