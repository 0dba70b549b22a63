//! Proves the wake-up protocol of `wait` ("Sleeping"): a statement that makes jobs ready sends
//! `NOTIFY` only while a lease of its queue sleeps, so busy enqueues do not commit one at a time
//! behind PostgreSQL's notification lock; a lease that sleeps really sleeps (it does not poll);
//! and no wake-up is lost, not even for a transaction that read the sleepers before a lease
//! registered and committed after that lease looked, or one that enqueued while the queue was
//! paused and committed after a resume.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_postgres::PgStore;
use sqlx::postgres::PgListener;

async fn listener(store: &PgStore) -> PgListener {
    let mut listener = PgListener::connect(&common::database_url()).await.unwrap();
    listener.listen(&common::channel(store)).await.unwrap();
    listener
}

/// The next notification within `wait`, if any.
async fn next_notification(listener: &mut PgListener, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, listener.recv()).await {
        Ok(notification) => Some(notification.unwrap().payload().to_owned()),
        Err(_) => None,
    }
}

/// A lease waiting up to 10 s for one job of `q`: the ids it got and when it returned.
fn waiting_lease(store: &PgStore, q: &QueueName) -> tokio::task::JoinHandle<(Vec<onceq_core::JobId>, Instant)> {
    let (store, q) = (store.clone(), q.clone());
    tokio::spawn(async move {
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
        let jobs = store.job_lease(&q, options).await.unwrap();
        (jobs.into_iter().map(|j| j.id).collect(), Instant::now())
    })
}

/// Asserts that no lease of the store is looking at the database: a look reads `jobs`, so with
/// the table locked for a second, one would queue up behind the lock (a lease that may not
/// sleep looks again within a quarter of a second).
async fn assert_asleep(store: &PgStore) {
    let jobs = format!("\"{}\".jobs", store.schema());
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE {jobs} IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{jobs}'::regclass"
    ))
    .fetch_one(store.pool())
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(waiting, 0, "a waiting lease kept looking at the database instead of sleeping");
}

/// Starts a waiting lease of `q` while `tx`, which enqueued job `id`, is open; commits `tx` once
/// the lease had time to go to sleep; asserts that the lease gets the job within a second of
/// the commit (not at its periodic look, 5 s).
async fn commit_under_a_waiting_lease(
    store: &PgStore,
    q: &QueueName,
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    id: onceq_core::JobId,
) {
    let waiting = waiting_lease(store, q);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "a lease found a job of an uncommitted transaction");
    let committed = Instant::now();
    tx.commit().await.unwrap();
    let (leased, at) = waiting.await.unwrap();
    assert_eq!(leased, vec![id]);
    assert!(at - committed < Duration::from_secs(1), "the lease took {:?} after the commit", at - committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueues_notify_only_while_a_lease_of_their_queue_sleeps() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("emails").unwrap();
    let other = QueueName::new("reports").unwrap();
    let mut notifications = listener(&store).await;
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    store.queue_upsert(&other, QueueConfigPatch::default()).await.unwrap();
    // Creating a queue wakes leases waiting for it to exist.
    assert_eq!(
        next_notification(&mut notifications, Duration::from_secs(5)).await.as_deref(),
        Some("r 2147483647 emails")
    );
    assert_eq!(
        next_notification(&mut notifications, Duration::from_secs(5)).await.as_deref(),
        Some("r 2147483647 reports")
    );

    // Nobody sleeps: no NOTIFY.
    store.job_enqueue(&q, vec![NewJob::new("1"), NewJob::new("2")]).await.unwrap();
    assert_eq!(next_notification(&mut notifications, Duration::from_millis(500)).await, None);

    // Drain the queue, then let a lease sleep on it.
    let drain = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    assert_eq!(store.job_lease(&q, drain).await.unwrap().len(), 2);
    let waiting = waiting_lease(&store, &q);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    assert_asleep(&store).await;

    // A sleeper of another queue does not make this one notify.
    store.job_enqueue(&other, vec![NewJob::new("report")]).await.unwrap();
    assert_eq!(next_notification(&mut notifications, Duration::from_millis(500)).await, None);

    let sent = Instant::now();
    let id = store.job_enqueue(&q, vec![NewJob::new("3")]).await.unwrap()[0].id;
    assert_eq!(next_notification(&mut notifications, Duration::from_secs(5)).await.as_deref(), Some("r 1 emails"));
    let (leased, at) = waiting.await.unwrap();
    assert_eq!(leased, vec![id]);
    // Woken by the notification, not by its periodic look (5 s).
    assert!(at - sent < Duration::from_secs(2), "woken after {:?}", at - sent);
}

/// The race the exclusive lock closes: the enqueue's transaction reads the sleepers (none) and
/// stays open; a lease then looks (the job is not committed), registers and would sleep. It must
/// not sleep until its periodic look: it keeps looking while that transaction is open, and
/// gets the job soon after the commit, which sends no notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_never_sleeps_through_a_commit_that_missed_its_registration() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("emails").unwrap();
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let mut notifications = listener(&store).await;

    let mut tx = store.pool().begin().await.unwrap();
    let id = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("1")]).await.unwrap()[0].id;
    commit_under_a_waiting_lease(&store, &q, tx, id).await;
    // The transaction read the sleepers before the lease registered: it sent nothing, and the
    // lease got the job by looking again, not by a wake-up.
    assert_eq!(next_notification(&mut notifications, Duration::from_millis(300)).await, None);
}

/// A lease that sleeps registers its store for a bounded time (about 15 s), renewed only while
/// leases keep sleeping: a queue whose leases went back to work stops costing its enqueues a
/// NOTIFY once the registration lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_lease_registers_its_store_for_a_bounded_time() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("emails").unwrap();
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 200 };
    assert!(store.job_lease(&q, options).await.unwrap().is_empty());
    let count = |min_left_s: u32| {
        let sql = format!(
            "SELECT count(*) FROM \"{}\".sleepers WHERE until > clock_timestamp() + make_interval(secs => {min_left_s})",
            store.schema()
        );
        let pool = store.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count(10).await, 1, "a lease that slept leaves its store's registration, valid for about 15 s");
    assert_eq!(count(16).await, 0, "a registration must lapse by itself");
    // Sleeping again within the registration writes nothing new.
    let before: String = sqlx::query_scalar(&format!("SELECT until::text FROM \"{}\".sleepers", store.schema()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(store.job_lease(&q, options).await.unwrap().is_empty());
    let after: String = sqlx::query_scalar(&format!("SELECT until::text FROM \"{}\".sleepers", store.schema()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(before, after);
}

/// An enqueue made while its queue was paused, committed after the resume, reaches a lease that
/// began waiting after the resume: the enqueue took the queue's wake lock although it sent no
/// wake-up (paused), so the lease could not sleep through its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_after_a_resume_never_sleeps_through_an_enqueue_made_while_paused() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("emails").unwrap();
    store.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    store.queue_pause(&q).await.unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    let id = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("1")]).await.unwrap()[0].id;
    store.queue_resume(&q).await.unwrap();
    commit_under_a_waiting_lease(&store, &q, tx, id).await;
}
