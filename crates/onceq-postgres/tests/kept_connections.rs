//! Proves what the store's kept connections (connections it keeps out of sqlx's pool between
//! its statements, to spare the pool's test round trip on every release) must never cost: a
//! caller of the pool waiting on them, a call cancelled half-way leaving its connection
//! mid-statement for the next call, or statements that no longer reuse a connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use onceq_core::{NewJob, QueueName, Store, StoreExt};
use onceq_postgres::PgOptions;
use sqlx::Connection;

/// How long the pool waits for a free connection in these tests: a caller starved by kept
/// connections would fail after it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_never_starve_the_pools_other_callers() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let options = PgOptions::new(common::database_url()).schema(&schema).pool_size(3).acquire_timeout(ACQUIRE_TIMEOUT);
    let store = common::connect(options).await;
    let q = QueueName::new("q").unwrap();
    // Many calls at once: every connection of the pool is used by the store at some point.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (store, q) = (store.clone(), q.clone());
        calls.spawn(async move { store.enqueue(&q, NewJob::new(format!("job {i}"))).await });
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap();
    }
    // With the store quiet, its kept connections go back to the pool: a caller of `pool()` gets
    // every connection the store used, without waiting for any timeout.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(store.pool().acquire().await.expect("a connection kept by the store should come back"));
    }
    assert!(started.elapsed() < ACQUIRE_TIMEOUT / 2, "took {:?}", started.elapsed());
    drop(held);
    // A transaction opened while the store keeps a connection, and the pool holds the others,
    // gets the kept one.
    store.enqueue(&q, NewJob::new("one more")).await.unwrap();
    let others = [store.pool().acquire().await.unwrap(), store.pool().acquire().await.unwrap()];
    let started = Instant::now();
    let mut tx = store.transaction().await.expect("a transaction gets a connection");
    assert!(started.elapsed() < ACQUIRE_TIMEOUT / 2, "took {:?}", started.elapsed());
    drop(others);
    let (ready,): (i64,) =
        sqlx::query_as(&format!("SELECT count(*) FROM \"{schema}\".jobs")).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(ready, 25);
    tx.rollback().await.unwrap();
    // And the store's own calls go on beside a caller holding a connection for good.
    let held = store.pool().acquire().await.unwrap();
    for _ in 0..25 {
        assert!(store.lease_one(&q).await.unwrap().is_some());
    }
    drop(held);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_mid_statement_leaves_the_next_calls_right_answers() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    // Room to keep a connection: the next call would get the cancelled one's, were it kept.
    let store = common::connect(PgOptions::new(common::database_url()).schema(&schema).pool_size(2)).await;
    let q = QueueName::new("q").unwrap();
    let first = store.enqueue(&q, NewJob::new("first")).await.unwrap().id;

    // Hold a lock the next call's statement needs, so that it is mid-statement when cancelled.
    let mut blocker = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE \"{schema}\".queues IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await.unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(300), store.queue_list()).await;
    assert!(cancelled.is_err(), "the call should still be waiting for the lock");
    tx.rollback().await.unwrap();

    // The next calls read their own answers, not the cancelled statement's.
    let second = store.enqueue(&q, NewJob::new("second")).await.unwrap().id;
    assert!(second > first);
    let job = store.job_get(first).await.unwrap();
    assert_eq!(job.payload, b"first");
    let listed = store.queue_list().await.unwrap();
    assert_eq!(
        listed.iter().map(|i| (i.name.as_str().to_owned(), i.stats.ready)).collect::<Vec<_>>(),
        vec![("q".to_owned(), 2)]
    );
    let leased = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!((leased.id, leased.payload), (first, b"first".to_vec()));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_calls_run_on_one_session() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let url = format!("{}?application_name={schema}", common::database_url());
    let store = common::connect(PgOptions::new(url).schema(&schema).pool_size(4)).await;
    let q = QueueName::new("q").unwrap();
    for i in 0..50 {
        store.enqueue(&q, NewJob::new(format!("job {i}"))).await.unwrap();
        let job = store.lease_one(&q).await.unwrap().unwrap();
        store.ack(job.lease()).await.unwrap();
    }
    // One caller, one call at a time: each statement ran on the session kept from the one before,
    // and no other session was opened beside the listener's.
    let mut admin = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity WHERE application_name = $1 AND query NOT LIKE 'LISTEN%'",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(sessions.len(), 1, "the store's sessions, by last statement: {sessions:#?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_pool_itself_ends_the_stores_calls_promptly() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = QueueName::new("q").unwrap();
    for i in 0..10 {
        store.enqueue(&q, NewJob::new(format!("job {i}"))).await.unwrap();
    }
    // The pool waits for every connection to come back, the kept ones too.
    tokio::time::timeout(Duration::from_secs(5), store.pool().close()).await.expect("the pool should close promptly");
    let result = store.enqueue(&q, NewJob::new("after")).await;
    assert!(matches!(result, Err(onceq_core::Error::Unavailable(_))), "{result:?}");
}
