//! Proves how a consumer group member's lease waits and looks: a waiting member is woken by a
//! job enqueued through another store and leases it; a member whose session ends while it waits
//! gets `NotMember` at its next look, not a job; and a member's lease reads its own partitions
//! along `jobs_ready_partition`, never walking the ready jobs of the rest of the queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use onceq_core::group::{GroupName, JoinOptions};
use onceq_core::ordering::partition_of;
use onceq_core::{Error, JobId, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_postgres::statements::{hot_statement, HotStatement};
use onceq_postgres::PgStore;

async fn ordered(store: &PgStore, partitions: u32) -> QueueName {
    let q = QueueName::new("waiting").unwrap();
    let patch =
        QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(partitions), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    q
}

fn session(ms: u64) -> JoinOptions {
    JoinOptions { name: None, session_timeout_ms: Some(ms) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_member_is_woken_by_a_job_enqueued_through_another_store() {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    let q = ordered(&a, 2).await;
    let g = GroupName::new("g").unwrap();
    let member = a.group_join(&q, &g, session(60_000)).await.unwrap();
    let waiting = {
        let (a, q, g, m) = (a.clone(), q.clone(), g.clone(), member.member_id.clone());
        tokio::spawn(async move {
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            a.group_lease(&q, &g, &m, options).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let id = b.enqueue(&q, NewJob::new("x").ordering_key("k")).await.unwrap().id;
    let leased = waiting.await.unwrap().unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < Duration::from_secs(2), "woken after {:?}", started.elapsed());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_session_ends_while_it_waits_is_told_at_its_next_look() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = ordered(&store, 2).await;
    let g = GroupName::new("g").unwrap();
    let member = store.group_join(&q, &g, session(300)).await.unwrap();
    let started = Instant::now();
    let waiting = {
        let (store, q, g, m) = (store.clone(), q.clone(), g.clone(), member.member_id.clone());
        tokio::spawn(async move {
            let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 10_000 };
            store.group_lease(&q, &g, &m, options).await
        })
    };
    // The session ends at 300 ms; the job enqueued after that wakes the lease, which looks again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.enqueue(&q, NewJob::new("x").ordering_key("k")).await.unwrap();
    let result = waiting.await.unwrap();
    assert!(matches!(result, Err(Error::NotMember(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "told after {:?}", started.elapsed());
    store.close().await;
}

#[tokio::test]
async fn a_member_lease_reads_its_own_partitions_only() {
    let (store, _guard) = common::fresh_store(None).await;
    let partitions = 8;
    let q = ordered(&store, partitions).await;
    // 4,000 ready jobs, none in partition 0.
    for batch in 0..4 {
        let jobs = (0..1000)
            .map(|i| format!("b{batch}-{i}"))
            .filter(|k| partition_of(Some(k), JobId::new(1), partitions) != 0)
            .map(|k| NewJob::new("x").ordering_key(k))
            .collect();
        store.job_enqueue(&q, jobs).await.unwrap();
    }
    let schema = store.schema().to_owned();
    sqlx::query(&format!("ANALYZE \"{schema}\".jobs")).execute(store.pool()).await.unwrap();
    let queue_id: i64 =
        sqlx::query_scalar(&format!("SELECT id FROM \"{schema}\".queues")).fetch_one(store.pool()).await.unwrap();
    let lease = hot_statement(&schema, HotStatement::GroupLease { max_jobs: 10 }).unwrap();
    let explain = format!("EXPLAIN (ANALYZE, COSTS OFF) {lease}");
    let mut tx = store.pool().begin().await.unwrap();
    // As the store's sessions run (see `SESSION_SETTINGS`).
    sqlx::query("SET LOCAL enable_bitmapscan = off").execute(&mut *tx).await.unwrap();
    let tokens: Vec<Vec<u8>> = (0..10).map(|i| vec![i; 16]).collect();
    let plan: Vec<String> = sqlx::query_scalar(&explain)
        .bind(None::<i64>)
        .bind(queue_id)
        .bind(&tokens)
        .bind(i64::MAX)
        .bind(vec![0i32])
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("using jobs_ready_partition on jobs"), "the lease did not read the partition index: {plan}");
    assert!(!plan.contains("using jobs_ready on"), "the lease walked the queue's ready jobs: {plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");

    // And through the store: a member owning only partition 0 (of 8 members) finds nothing.
    let g = GroupName::new("g").unwrap();
    let mut members = Vec::new();
    for _ in 0..partitions {
        members.push(store.group_join(&q, &g, session(60_000)).await.unwrap().member_id);
    }
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    for m in &members {
        let view = store.group_heartbeat(&q, &g, m).await.unwrap();
        let leased = store.group_lease(&q, &g, m, options).await.unwrap();
        assert!(leased.iter().all(|j| view.partitions.contains(&j.partition.unwrap())));
        if view.partitions == vec![0] {
            assert!(leased.is_empty());
        } else {
            assert_eq!(leased.len(), 10);
        }
    }
    store.close().await;
}
