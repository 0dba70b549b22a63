//! Proves that connecting migrates safely: stores starting at once on a fresh schema all succeed
//! and record the version once; a reconnect keeps the data; a schema written by a newer onceq,
//! or one holding tables that are not onceq's, is refused with a clear error and left as it was;
//! a bad schema name is refused before anything is touched; an older schema is brought up to
//! date in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use onceq_core::{Error, NewJob, QueueName, Store, StoreExt};
use onceq_postgres::PgStore;
use sqlx::Connection;

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&common::database_url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}\n{}", common::how_to_get_postgres()))
}

fn storage_message(result: onceq_core::Result<PgStore>) -> String {
    match result {
        Err(Error::Storage(message)) => message,
        Err(other) => panic!("expected a storage error, got {other:?}"),
        Ok(_) => panic!("expected the connect to be refused"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_at_once_on_a_fresh_schema_all_succeed() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let connects: Vec<_> = (0..4).map(|_| tokio::spawn(PgStore::connect(common::options(&schema, None)))).collect();
    let mut stores = Vec::new();
    for connect in connects {
        stores.push(connect.await.unwrap().unwrap_or_else(|e| panic!("a concurrent connect failed: {e}")));
    }
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin().await)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], "each version is applied and recorded once");
    // They share one schema: a job enqueued through one is leased through another.
    let q = QueueName::new("shared").unwrap();
    let id = stores[0].enqueue(&q, NewJob::new("hello")).await.unwrap().id;
    assert_eq!(stores[3].lease_one(&q).await.unwrap().map(|j| j.id), Some(id));
    for store in &stores {
        store.close().await;
    }
}

#[tokio::test]
async fn a_reconnect_keeps_the_jobs_and_never_reuses_an_id() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("q").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let a = store.enqueue(&q, NewJob::new("a")).await.unwrap().id;
    let b = store.enqueue(&q, NewJob::new("b")).await.unwrap().id;
    let leased = store.lease_one(&q).await.unwrap().unwrap();
    store.ack(leased.lease()).await.unwrap();
    store.close().await;
    let store = common::connect(common::options(&schema, None)).await;
    assert_eq!(store.job_get(a).await, Err(Error::JobNotFound(a)));
    assert_eq!(store.job_get(b).await.unwrap().payload, b"b".to_vec());
    let c = store.enqueue(&q, NewJob::new("c")).await.unwrap().id;
    assert!(c > b, "{c} should be above {b}");
    store.close().await;
}

#[tokio::test]
async fn a_schema_from_a_newer_onceq_is_refused_and_left_unchanged() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let id = store.enqueue(&q, NewJob::new("kept")).await.unwrap().id;
    store.close().await;
    let mut admin = admin().await;
    sqlx::query(&format!("INSERT INTO \"{schema}\".migrations (version) VALUES (99)"))
        .execute(&mut admin)
        .await
        .unwrap();
    let message = storage_message(PgStore::connect(common::options(&schema, None)).await);
    assert!(message.contains("newer onceq (schema version 99)"), "{message}");
    assert!(message.contains(&schema), "{message}");
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 99]);
    let payload: Vec<u8> = sqlx::query_scalar(&format!("SELECT payload FROM \"{schema}\".jobs WHERE id = $1"))
        .bind(i64::try_from(id.get()).unwrap())
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(payload, b"kept".to_vec());
}

/// A schema at version 2 (before the `sleepers` of v3) is brought up to date in place: its jobs
/// stay, and a lease waiting on it is woken by an enqueue, through v3's `wake`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_schema_is_migrated_in_place_and_wakes_leases() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let kept = store.enqueue(&q, NewJob::new("kept")).await.unwrap().id;
    store.close().await;
    // Back to version 2: what v4 and v3 added goes.
    let mut admin = admin().await;
    let downgrade = format!(
        "{} DROP TABLE \"{schema}\".sleepers; DROP FUNCTION \"{schema}\".wake; \
         DROP FUNCTION \"{schema}\".may_sleep; DELETE FROM \"{schema}\".migrations WHERE version = 3;",
        undo_v4(&schema)
    );
    sqlx::raw_sql(&downgrade).execute(&mut admin).await.unwrap();

    let store = common::connect(common::options(&schema, None)).await;
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    assert_eq!(store.lease_one(&q).await.unwrap().map(|j| j.id), Some(kept));
    let waiting = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move {
            let options = onceq_core::LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            store.job_lease(&q, options).await.unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let id = store.enqueue(&q, NewJob::new("new")).await.unwrap().id;
    let leased = waiting.await.unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "woken after {:?}", started.elapsed());
    store.close().await;
}

/// SQL that takes a schema at version 13 back to version 12: v13's unique keys go.
fn undo_v13(schema: &str) -> String {
    format!("DROP TABLE \"{schema}\".unique_keys; DELETE FROM \"{schema}\".migrations WHERE version = 13;")
}

/// SQL that takes a schema at version 13 back to version 11: what v13 and v12 (cancelled jobs:
/// a column, and a sixth state in the check) added go.
fn undo_v12(schema: &str) -> String {
    format!(
        "{} ALTER TABLE \"{schema}\".jobs DROP COLUMN cancelled_at; \
         ALTER TABLE \"{schema}\".jobs DROP CONSTRAINT jobs_state_check; \
         ALTER TABLE \"{schema}\".jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 0 AND 4) NOT VALID; \
         DELETE FROM \"{schema}\".migrations WHERE version = 12;",
        undo_v13(schema)
    )
}

/// SQL that takes a schema at version 13 back to version 10: what v13, v12 and v11's index (a
/// queue's jobs by state) added go.
fn undo_v11(schema: &str) -> String {
    format!(
        "{} DROP INDEX \"{schema}\".jobs_state; DELETE FROM \"{schema}\".migrations WHERE version = 11;",
        undo_v12(schema)
    )
}

/// A schema at version 11 (before cancelled and unique jobs) is brought up to date in place: its
/// jobs stay and can be cancelled, and a unique job's duplicate gets its id.
#[tokio::test]
async fn a_version_11_schema_is_migrated_in_place_and_takes_unique_jobs() {
    use onceq_core::{Enqueued, Unique, UniqueBy, UniqueWhile};
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let kept = store.enqueue(&q, NewJob::new("kept")).await.unwrap().id;
    store.close().await;
    let mut admin = admin().await;
    sqlx::raw_sql(&undo_v12(&schema)).execute(&mut admin).await.unwrap();

    let store = common::connect(common::options(&schema, None)).await;
    assert_eq!(store.job_get(kept).await.unwrap().payload, b"kept".to_vec());
    let unique = || NewJob::new("{}").unique(Unique::new(UniqueBy::Payload, UniqueWhile::Pending));
    let first = store.enqueue(&q, unique()).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(store.enqueue(&q, unique()).await.unwrap(), Enqueued { id: first.id, duplicate: true });
    assert_eq!(store.job_cancel(kept).await.unwrap().state, onceq_core::JobState::Cancelled);
    assert_eq!(store.queue_get(&q).await.unwrap().stats.cancelled, 1);
    store.close().await;
}

/// SQL that takes a schema at version 11 back to version 9: what v11 and v10 (paced redrives)
/// added go.
fn undo_v10(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".redrives; DELETE FROM \"{schema}\".migrations WHERE version = 10;",
        undo_v11(schema)
    )
}

/// SQL that takes a schema at version 10 back to version 8: what v10 and v9 (per-key flow
/// buckets) added go.
fn undo_v9(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".flow_key_buckets; ALTER TABLE \"{schema}\".flow_buckets DROP COLUMN key_floor; \
         DELETE FROM \"{schema}\".migrations WHERE version = 9;",
        undo_v10(schema)
    )
}

/// SQL that takes a schema at version 9 back to version 7: what v9 and v8 (schedules) added go.
fn undo_v8(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".schedules; DELETE FROM \"{schema}\".migrations WHERE version = 8;",
        undo_v9(schema)
    )
}

/// A schema at version 8 (before per-key flow buckets) is brought up to date in place: its jobs
/// stay, and a queue limited per key leases one burst per key.
#[tokio::test]
async fn a_version_8_schema_is_migrated_in_place_and_limits_per_key() {
    use onceq_core::flow::{KeyBy, RateLimit};
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let kept = store.enqueue(&q, NewJob::new("kept")).await.unwrap().id;
    store.close().await;
    let mut admin = admin().await;
    sqlx::raw_sql(&undo_v9(&schema)).execute(&mut admin).await.unwrap();

    let clock = onceq_core::ManualClock::at_default_start();
    let store = common::connect(common::options(&schema, Some(clock.clone()))).await;
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    assert_eq!(store.job_get(kept).await.unwrap().payload, b"kept".to_vec());
    let patch = onceq_core::QueueConfigPatch {
        rate_limit: Some(Some(RateLimit { per_second: 1.0, burst: 1 })),
        rate_limit_by: Some(Some(KeyBy::OrderingKey)),
        ..Default::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let jobs = ["a", "a", "b"].iter().map(|k| NewJob::new("x").ordering_key(*k)).collect();
    store.job_enqueue(&q, jobs).await.unwrap();
    let options = onceq_core::LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    let got = store.job_lease(&q, options).await.unwrap();
    let mut keys: Vec<_> = got.iter().map(|j| j.ordering_key.clone()).collect();
    keys.sort();
    assert_eq!(keys, vec![None, Some("a".to_string()), Some("b".to_string())], "one job of each key");
    store.close().await;
}

/// SQL that takes a schema at version 9 back to version 5: what v9, v8, v7 (flow buckets) and v6
/// (commits) added goes.
fn undo_v6(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".producers; DROP TABLE \"{schema}\".commits; \
         DELETE FROM \"{schema}\".migrations WHERE version = 6;",
        undo_v7(schema)
    )
}

/// SQL that takes a schema at version 9 back to version 6: v9's and v7's flow buckets and v8's
/// schedules go.
fn undo_v7(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".flow_buckets; DELETE FROM \"{schema}\".migrations WHERE version = 7;",
        undo_v8(schema)
    )
}

/// A schema at version 7 (before schedules) is brought up to date in place: its jobs stay, and
/// a schedule created on it fires its ticks.
#[tokio::test]
async fn a_version_7_schema_is_migrated_in_place_and_fires_schedules() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let kept = store.enqueue(&q, NewJob::new("kept")).await.unwrap().id;
    store.close().await;
    let mut admin = admin().await;
    sqlx::raw_sql(&undo_v8(&schema)).execute(&mut admin).await.unwrap();

    let clock = onceq_core::ManualClock::at_default_start();
    let store = common::connect(common::options(&schema, Some(clock.clone()))).await;
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    let name = onceq_core::schedule::ScheduleName::new("minutely").unwrap();
    store.schedule_upsert(&name, onceq_core::schedule::ScheduleSpec::new(q.clone(), "* * * * *")).await.unwrap();
    clock.advance(60_000);
    store.schedule_tick().await.unwrap();
    assert_eq!(store.schedule_get(&name).await.unwrap().last_tick.map(|t| t.as_millis()), Some(1_767_225_660_000));
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 2, "the kept job and the tick's");
    assert_eq!(store.job_get(kept).await.unwrap().payload, b"kept".to_vec());
    store.close().await;
}

/// SQL that takes a schema at version 6 back to version 4: what v6 and v5 (consumer groups)
/// added goes.
fn undo_v5(schema: &str) -> String {
    format!(
        "{} DROP TABLE \"{schema}\".groups; DROP INDEX \"{schema}\".jobs_ready_partition; \
         DELETE FROM \"{schema}\".migrations WHERE version = 5;",
        undo_v6(schema)
    )
}

/// SQL that takes a schema at version 6 back to version 3: what v6, v5 and v4 (ordering per key)
/// added goes. The counter functions keep v4's text, which the migration replaces anyway.
fn undo_v4(schema: &str) -> String {
    format!(
        "{} DROP FUNCTION \"{schema}\".keys_move_on; DROP TABLE \"{schema}\".ordering_keys; \
         DROP INDEX \"{schema}\".jobs_blocked; \
         ALTER TABLE \"{schema}\".jobs DROP COLUMN ordering_key, DROP COLUMN partition, \
             DROP CONSTRAINT jobs_state_check; \
         ALTER TABLE \"{schema}\".jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 0 AND 3); \
         ALTER TABLE \"{schema}\".queue_counts DROP COLUMN blocked; \
         DELETE FROM \"{schema}\".migrations WHERE version = 4;",
        undo_v5(schema)
    )
}

/// A schema at version 4 (before consumer groups) is brought up to date in place: the ready jobs
/// of its `per_key` queues are indexed by partition, and a group's member leases them.
#[tokio::test]
async fn a_version_4_schema_is_migrated_in_place_and_serves_groups() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let per_key = onceq_core::QueueConfigPatch {
        ordering: Some(onceq_core::Ordering::PerKey),
        partitions: Some(4),
        ..Default::default()
    };
    store.queue_upsert(&q, per_key).await.unwrap();
    let jobs = (0..8).map(|i| NewJob::new("x").ordering_key(format!("k{i}"))).collect();
    let mut kept: Vec<_> = store.job_enqueue(&q, jobs).await.unwrap().into_iter().map(|e| e.id).collect();
    store.close().await;
    let mut admin = admin().await;
    sqlx::raw_sql(&undo_v5(&schema)).execute(&mut admin).await.unwrap();

    let store = common::connect(common::options(&schema, None)).await;
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND indexname = 'jobs_ready_partition'",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(indexes, vec!["jobs_ready_partition".to_owned()]);
    let g = onceq_core::group::GroupName::new("g").unwrap();
    let member = store.group_join(&q, &g, onceq_core::group::JoinOptions::default()).await.unwrap();
    assert_eq!(member.partitions, vec![0, 1, 2, 3]);
    let options = onceq_core::LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    let mut leased: Vec<_> =
        store.group_lease(&q, &g, &member.member_id, options).await.unwrap().into_iter().map(|j| j.id).collect();
    leased.sort();
    kept.sort();
    assert_eq!(leased, kept);
    store.close().await;
}

/// A schema at version 3 (before ordering per key) is brought up to date in place: its jobs and
/// their counts stay, they carry no key and no partition, and its queues can become `per_key`
/// once empty.
#[tokio::test]
async fn a_version_3_schema_is_migrated_in_place_and_orders_keys() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("kept").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let kept = store.job_enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await.unwrap();
    store.close().await;
    let mut admin = admin().await;
    sqlx::raw_sql(&undo_v4(&schema)).execute(&mut admin).await.unwrap();

    let store = common::connect(common::options(&schema, None)).await;
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations ORDER BY version"))
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.blocked), (2, 0));
    let job = store.job_get(kept[0].id).await.unwrap();
    assert_eq!((job.ordering_key, job.partition), (None, None));
    let per_key = onceq_core::QueueConfigPatch { ordering: Some(onceq_core::Ordering::PerKey), ..Default::default() };
    assert!(matches!(store.queue_upsert(&q, per_key.clone()).await, Err(Error::QueueNotEmpty(_))));
    for _ in 0..2 {
        let leased = store.lease_one(&q).await.unwrap().unwrap();
        store.ack(leased.lease()).await.unwrap();
    }
    store.queue_upsert(&q, per_key).await.unwrap();
    let ids = store
        .job_enqueue(&q, vec![NewJob::new("1").ordering_key("k"), NewJob::new("2").ordering_key("k")])
        .await
        .unwrap();
    assert_eq!(store.job_get(ids[1].id).await.unwrap().state, onceq_core::JobState::Blocked);
    assert_eq!(store.queue_get(&q).await.unwrap().stats.blocked, 1);
    store.close().await;
}

#[tokio::test]
async fn a_schema_holding_foreign_tables_is_refused_and_left_unchanged() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let mut admin = admin().await;
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\"")).execute(&mut admin).await.unwrap();
    sqlx::query(&format!("CREATE TABLE \"{schema}\".invoices (id int)")).execute(&mut admin).await.unwrap();
    let message = storage_message(PgStore::connect(common::options(&schema, None)).await);
    assert!(message.contains("not onceq's"), "{message}");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
    )
    .bind(&schema)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(tables, vec!["invoices".to_owned()]);
}

#[tokio::test]
async fn a_bad_schema_name_or_pool_size_is_refused_before_connecting() {
    for bad in ["", "1abc", "has space", "quote\"d", &"x".repeat(64)] {
        let result = PgStore::connect(common::options(bad, None)).await;
        assert!(matches!(result, Err(Error::InvalidRequest(_))), "{bad:?}: {result:?}");
    }
    let result = PgStore::connect(common::options(&common::fresh_schema(), None).pool_size(0)).await;
    assert!(matches!(result, Err(Error::InvalidRequest(_))), "{result:?}");
}

/// The lease reads ready jobs in lease order straight from `jobs_ready`, even when the planner's
/// statistics are stale (here: taken while every job was leased, then all became ready again).
/// Before migration v2 a second index on ready jobs made this plan sort every ready job per lease.
#[tokio::test]
async fn the_lease_order_comes_from_the_index_whatever_the_statistics_say() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let q = QueueName::new("big").unwrap();
    let store = common::connect(common::options(&schema, None)).await;
    let jobs: Vec<NewJob> = (0..1000).map(|i| NewJob::new(format!("{i}")).priority(i % 3)).collect();
    for _ in 0..5 {
        store.job_enqueue(&q, jobs.clone()).await.unwrap();
    }
    store.close().await;
    let mut admin = admin().await;
    for sql in [
        format!("ALTER TABLE \"{schema}\".jobs DISABLE TRIGGER USER"),
        format!("UPDATE \"{schema}\".jobs SET state = 2, lease_expires_at = 0 WHERE id % 1000 <> 0"),
        format!("ANALYZE \"{schema}\".jobs"),
        format!("UPDATE \"{schema}\".jobs SET state = 1, lease_expires_at = NULL"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN SELECT id FROM \"{schema}\".jobs WHERE queue_id = 1 AND state = 1 \
         ORDER BY priority DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED"
    ))
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("jobs_ready") && !plan.contains("Sort"), "{plan}");
}
