//! Proves that the hot statements keep a cached plan: PostgreSQL plans a prepared statement
//! afresh on every run while its generic plan looks dearer than the custom ones, and planning
//! the lease, or a one-job ack or enqueue, cost more CPU than running it while the batch size
//! was known only from a parameter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use onceq_core::{LeaseOptions, NewJob, QueueName, Store};

#[tokio::test]
async fn single_job_enqueues_leases_and_acks_run_on_a_cached_generic_plan() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    // One pooled connection (the listener has its own), so every statement is prepared there.
    let store = common::connect(common::options(&schema, None).pool_size(1)).await;
    let q = QueueName::new("q").unwrap();
    for _ in 0..20 {
        store.job_enqueue(&q, (0..500).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    }
    sqlx::query(&format!("ANALYZE \"{schema}\".jobs")).execute(store.pool()).await.unwrap();
    for i in 0..20 {
        store.job_enqueue(&q, vec![NewJob::new(format!("single {i}"))]).await.unwrap();
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
        let leased = store.job_lease(&q, options).await.unwrap();
        assert_eq!(leased.len(), 1);
        let acked = store.job_ack(&leased.iter().map(|j| j.lease()).collect::<Vec<_>>()).await.unwrap();
        assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE custom_plans + generic_plans >= 20",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (what, marker) in [("lease", "WITH picked AS"), ("ack", "acked AS"), ("enqueue", "\ninput AS (")] {
        assert!(plans.iter().any(|(sql, _, _)| sql.contains(marker)), "no {what} statement ran 20 times: {plans:?}");
    }
    // An enqueue into a queue the store knows is one statement: the lookup ran twice (the first
    // enqueue created the queue, the second remembered it), not 40 times. The marker is checked
    // against the lookup's own text, so that this cannot pass by missing it.
    let lookup =
        onceq_postgres::statements::hot_statement(&schema, onceq_postgres::statements::HotStatement::QueueLookup)
            .unwrap();
    assert!(lookup.contains("q.config::text AS config FROM (SELECT"), "{lookup}");
    assert!(
        !plans.iter().any(|(sql, _, _)| sql.contains("q.config::text AS config FROM (SELECT")),
        "the queue lookup ran on every enqueue: {plans:?}"
    );
    for (sql, generic, custom) in &plans {
        assert!(*generic >= 10, "{generic} generic, {custom} custom plans of {sql}");
    }
    store.close().await;
}

/// Statistics taken while the queue was nearly empty once made the delete of a queue scan every
/// job once per job (100,000 jobs took more than ten minutes); it now deletes by primary key.
/// The timeout only guards against that hang: here the delete takes well under a second, and
/// took 47 s before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_big_queue_after_stale_statistics_does_not_hang() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let store = common::connect(common::options(&schema, None)).await;
    let q = QueueName::new("big").unwrap();
    let fill = |q: QueueName| {
        let store = store.clone();
        async move {
            for _ in 0..50 {
                store.job_enqueue(&q, (0..1000).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
            }
        }
    };
    // A table full of dead rows and one live one when analyzed: drained, then filled again.
    let drained = QueueName::new("drained").unwrap();
    fill(drained.clone()).await;
    store.queue_delete(&drained).await.unwrap();
    store.job_enqueue(&q, vec![NewJob::new("first")]).await.unwrap();
    sqlx::query(&format!("ANALYZE \"{schema}\".jobs")).execute(store.pool()).await.unwrap();
    for _ in 0..50 {
        store.job_enqueue(&q, (0..1000).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(30), store.queue_delete(&q))
        .await
        .expect("deleting the queue hung")
        .unwrap();
    let left: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".jobs")).fetch_one(store.pool()).await.unwrap();
    assert_eq!(left, 0);
    store.close().await;
}

/// The sweep deletes expired dedup ids (it only logs its failures, so a broken statement would
/// show nowhere else): after the window and a second of store time, an enqueue sweeps them.
#[tokio::test]
async fn an_enqueue_sweeps_expired_dedup_ids() {
    let clock = onceq_core::ManualClock::at_default_start();
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let store =
        common::connect(common::options(&schema, Some(clock.clone() as std::sync::Arc<dyn onceq_core::Clock>))).await;
    let q = QueueName::new("q").unwrap();
    let patch = onceq_core::QueueConfigPatch { dedup_window_ms: Some(1_000), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    store.job_enqueue(&q, (0..500).map(|i| NewJob::new("x").dedup_id(format!("d{i}"))).collect()).await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM \"{schema}\".dedup"))
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(count().await, 500);
    clock.advance(5_000);
    store.job_enqueue(&q, vec![NewJob::new("y").dedup_id("fresh")]).await.unwrap();
    assert_eq!(count().await, 1, "the expired dedup ids should be gone, the fresh one kept");
    store.close().await;
}

/// A queue in a jobs table that has never been analyzed and holds many dead rows (a queue
/// drained and filled again before autovacuum came by): PostgreSQL guesses its ready jobs at
/// a handful, and with bitmap scans allowed it planned the lease as a bitmap scan of every
/// ready job and a sort of them all (an external merge sort on disk at 70,000 ready jobs:
/// 150–250 ms per lease of 100, until autovacuum analyzed the table). The store's sessions turn
/// bitmap scans off, so the lease walks the `jobs_ready` index in lease order and stops after
/// its batch, whatever the statistics say.
#[tokio::test]
async fn leasing_before_statistics_exist_walks_the_ready_index() {
    let schema = common::fresh_schema();
    let _guard = common::SchemaGuard::of(&schema);
    let store = common::connect(common::options(&schema, None)).await;
    let q = QueueName::new("q").unwrap();
    store.job_enqueue(&q, vec![NewJob::new("first")]).await.unwrap();
    // The table as the end-to-end benchmark left it: 200,000 jobs done (dead rows), 75,000
    // ready, never analyzed (autovacuum would analyze at a moment of its choosing: here never).
    let s = format!("\"{schema}\"");
    let insert = |n: i64| {
        format!(
            "INSERT INTO {s}.jobs (id, queue_id, run_at, enqueued_at, state, priority, attempt, max_attempts, payload) \
             SELECT nextval('{s}.job_ids'), q.id, g, g, 1, 0, 0, 3, '\\x00'::bytea \
             FROM {s}.queues q, generate_series(1, {n}) g WHERE q.name = 'q'"
        )
    };
    for sql in [
        format!("ALTER TABLE {s}.jobs SET (autovacuum_enabled = off)"),
        insert(200_000),
        format!("DELETE FROM {s}.jobs"),
        insert(75_000),
    ] {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }

    let lease = onceq_postgres::statements::hot_statement(
        &schema,
        onceq_postgres::statements::HotStatement::Lease { max_jobs: 100 },
    )
    .unwrap();
    let queue_id: i64 = sqlx::query_scalar(&format!("SELECT id FROM {s}.queues WHERE name = 'q'"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    let tokens: Vec<Vec<u8>> = (0..100).map(|_| vec![0u8; 16]).collect();
    // The plan a prepared lease settles on after its first runs: the generic one, planned
    // without the parameters' values. On a connection of the store's pool, with its settings;
    // detached, so that the setting below goes with it.
    let mut conn = store.pool().acquire().await.unwrap().detach();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {lease}"))
        .bind(0_i64)
        .bind(queue_id)
        .bind(&tokens)
        .bind(60_000_i64)
        .bind(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let text = plan.to_string();
    assert!(text.contains("\"Index Name\":\"jobs_ready\""), "the lease does not walk jobs_ready: {plan:#}");
    for node in ["\"Sort\"", "Bitmap Heap Scan"] {
        assert!(!text.contains(node), "the lease plan has a {node} node: {plan:#}");
    }

    // The other statements of a lease and an ack, on the same table: no scan of the whole of it.
    use onceq_postgres::statements::{hot_statement, HotStatement};
    let due = hot_statement(&schema, HotStatement::ApplyDue).unwrap();
    let due_plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {due}"))
        .bind(None::<i64>)
        .bind("q")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let ack = hot_statement(&schema, HotStatement::Ack { items: 100 }).unwrap();
    let ack_plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {ack}"))
        .bind(None::<i64>)
        .bind((1..=100).collect::<Vec<i64>>())
        .bind(&tokens)
        .bind(true)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    for (what, plan) in [("apply-due", &due_plan), ("ack", &ack_plan)] {
        let mut scans = Vec::new();
        scans_of(plan, &mut scans);
        for (node, relation) in &scans {
            let whole_table = node == "Seq Scan" && relation.starts_with("jobs");
            assert!(
                !whole_table && !node.starts_with("Bitmap"),
                "the {what} plan has a {node} on {relation}: {plan:#}"
            );
        }
    }
    store.close().await;
}

/// Every scan node of an `EXPLAIN (FORMAT JSON)` plan, as (node type, relation or index name).
fn scans_of(plan: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match plan {
        serde_json::Value::Object(node) => {
            if let Some(serde_json::Value::String(kind)) = node.get("Node Type") {
                if kind.contains("Scan") {
                    let on = node.get("Relation Name").or_else(|| node.get("Index Name"));
                    out.push((kind.clone(), on.and_then(|v| v.as_str()).unwrap_or("").to_owned()));
                }
            }
            node.values().for_each(|v| scans_of(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| scans_of(v, out)),
        _ => {}
    }
}
