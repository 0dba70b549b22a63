//! Proves that a database that is not there, or goes away mid-request, gives `Unavailable` with
//! an actionable message and no panic, and that the store recovers by itself once PostgreSQL
//! serves again: new connections for requests, and a listener that wakes long polls again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use onceq_core::{Error, LeaseOptions, NewJob, QueueName, Store, StoreExt};
use onceq_postgres::{PgOptions, PgStore};
use sqlx::Connection;

#[tokio::test]
async fn an_unreachable_server_is_unavailable_with_advice() {
    // Nothing listens on port 1.
    let started = Instant::now();
    let result = PgStore::connect(PgOptions::new("postgres://postgres@127.0.0.1:1/test")).await;
    let Err(Error::Unavailable(message)) = result else { panic!("expected unavailable, got {result:?}") };
    assert!(message.contains("127.0.0.1:1/test"), "{message}");
    assert!(message.contains("Is the server running"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

/// Ends every session of the store's application name.
async fn terminate(application: &str) -> i64 {
    let mut admin = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
    )
    .bind(application)
    .fetch_one(&mut admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_connection_dies_is_unavailable_and_the_store_recovers() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let application = schema.clone();
    let url = format!("{}?application_name={application}", common::database_url());
    let store = common::connect(PgOptions::new(url).schema(&schema).pool_size(2)).await;
    let q = QueueName::new("q").unwrap();
    store.enqueue(&q, NewJob::new("before")).await.unwrap();

    // Hold a lock the next request needs, so that it is mid-request when its session is killed.
    let mut blocker = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE \"{schema}\".queues IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await.unwrap();
    let blocked = {
        let store = store.clone();
        tokio::spawn(async move { store.queue_list().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(terminate(&application).await >= 1, "the store's sessions should be there to end");
    let result = tokio::time::timeout(Duration::from_secs(10), blocked).await.unwrap().unwrap();
    let Err(Error::Unavailable(message)) = result else { panic!("expected unavailable, got {result:?}") };
    assert!(message.contains("PostgreSQL"), "{message}");
    tx.rollback().await.unwrap();

    // Recovery: requests get fresh connections, and long polls are woken again.
    let listed = store.queue_list().await.unwrap();
    assert_eq!(listed.iter().map(|i| i.stats.ready).collect::<Vec<_>>(), vec![1]);
    assert_eq!(store.lease_one(&q).await.unwrap().map(|j| j.payload), Some(b"before".to_vec()));
    tokio::time::sleep(Duration::from_millis(500)).await; // the listener reconnects
    let waiting = {
        let store = store.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            (store.job_lease(&q, options).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    let id = store.enqueue(&q, NewJob::new("after")).await.unwrap().id;
    let (leased, elapsed) = waiting.await.unwrap();
    assert_eq!(leased.unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert!(elapsed < Duration::from_secs(3), "the long poll took {elapsed:?}: the listener did not come back");
    store.close().await;
}

#[tokio::test]
async fn a_closed_store_is_unavailable() {
    let (store, _guard) = common::fresh_store(None).await;
    store.close().await;
    let result = store.queue_list().await;
    assert!(matches!(result, Err(Error::Unavailable(_))), "{result:?}");
}
