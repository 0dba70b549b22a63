//! Proves that a `relaxed` queue's statements commit without waiting for the WAL's flush, and
//! only they: the store's own ack, lease and enqueue statements, run on real rows, turn
//! `synchronous_commit` off for their transaction when (and only when) they are allowed to
//! (the parameter the store binds on the pool) and every queue they touch is relaxed. An ack of
//! a job of an `fsync` queue, or of jobs of both kinds at once, keeps the server's setting. Each
//! statement runs in a transaction that is then rolled back, so that the setting can be read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use onceq_core::{Durability, LeaseOptions, LeasedJob, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_postgres::statements::{hot_statement, HotStatement};
use sqlx::{Connection, Row};

/// Runs `sql` with `bind` in a transaction on `conn`; returns the statement's `relaxed` column
/// (of its first row) and `synchronous_commit` as the transaction then has it.
async fn relaxed_and_setting<'q>(
    conn: &mut sqlx::PgConnection,
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> (Option<String>, String) {
    let mut tx = conn.begin().await.unwrap();
    let row = query.fetch_one(&mut *tx).await.unwrap();
    let relaxed: Option<String> = row.try_get("relaxed").unwrap();
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    (relaxed, setting)
}

#[tokio::test]
async fn only_relaxed_queues_statements_commit_without_waiting_for_the_flush() {
    let (store, guard) = common::fresh_store(None).await;
    let schema = guard.schema().to_owned();
    let (fast, safe) = (QueueName::new("fast").unwrap(), QueueName::new("safe").unwrap());
    for (queue, durability) in [(&fast, Durability::Relaxed), (&safe, Durability::Fsync)] {
        let patch = QueueConfigPatch { durability: Some(Some(durability)), ..QueueConfigPatch::default() };
        store.queue_upsert(queue, patch).await.unwrap();
        store.job_enqueue(queue, vec![NewJob::new("a"), NewJob::new("b")]).await.unwrap();
    }
    let lease = |queue: &QueueName| {
        let (store, queue) = (store.clone(), queue.clone());
        async move {
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
            store.job_lease(&queue, options).await.unwrap().pop().unwrap()
        }
    };
    let (fast_job, safe_job): (LeasedJob, LeasedJob) = (lease(&fast).await, lease(&safe).await);
    let mut conn = store.pool().acquire().await.unwrap().detach();
    let server: String = sqlx::query_scalar("SHOW synchronous_commit").fetch_one(&mut conn).await.unwrap();
    assert_ne!(server, "off", "the test server already commits asynchronously: nothing to see");

    let ack = |jobs: &[&LeasedJob]| {
        let ids: Vec<i64> = jobs.iter().map(|j| i64::try_from(j.id.get()).unwrap()).collect();
        let tokens: Vec<Vec<u8>> = jobs.iter().map(|j| j.lease_token.as_bytes().to_vec()).collect();
        (ids, tokens)
    };
    let ack_sql = |items| hot_statement(&schema, HotStatement::Ack { items }).unwrap();
    for (jobs, relax, expected) in [
        (vec![&fast_job], true, true),
        (vec![&fast_job], false, false),
        (vec![&safe_job], true, false),
        (vec![&fast_job, &safe_job], true, false),
    ] {
        let (ids, tokens) = ack(&jobs);
        let sql = ack_sql(jobs.len());
        let query = sqlx::query(&sql).bind(None::<i64>).bind(&ids).bind(&tokens).bind(relax);
        let (relaxed, setting) = relaxed_and_setting(&mut conn, query).await;
        let queues: Vec<&str> = jobs.iter().map(|j| if j.id == fast_job.id { "fast" } else { "safe" }).collect();
        if expected {
            assert_eq!((relaxed.as_deref(), setting.as_str()), (Some("off"), "off"), "ack of {queues:?}");
        } else {
            assert_eq!((relaxed, setting), (None, server.clone()), "ack of {queues:?}, relax {relax}");
        }
    }

    // The lease: relaxed when the store says so (it binds true for a relaxed queue).
    let lease_sql = hot_statement(&schema, HotStatement::Lease { max_jobs: 1 }).unwrap();
    for relax in [true, false] {
        let queue_id: i64 = sqlx::query_scalar(&format!("SELECT id FROM \"{schema}\".queues WHERE name = 'fast'"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let query =
            sqlx::query(&lease_sql).bind(0_i64).bind(queue_id).bind(vec![vec![7u8; 16]]).bind(60_000_i64).bind(relax);
        let (relaxed, setting) = relaxed_and_setting(&mut conn, query).await;
        let expected = if relax { (Some("off".to_owned()), "off".to_owned()) } else { (None, server.clone()) };
        assert_eq!((relaxed, setting), expected, "lease, relax {relax}");
    }
    drop(conn);

    // Through the store: every operation still works on the relaxed queue.
    store.job_ack(&[fast_job.lease(), safe_job.lease()]).await.unwrap().into_iter().for_each(|r| r.unwrap());
    let rest = lease(&fast).await;
    store.job_ack(&[rest.lease()]).await.unwrap().into_iter().for_each(|r| r.unwrap());
    assert_eq!(store.queue_get(&fast).await.unwrap().stats.ready, 0);
    store.close().await;
}
