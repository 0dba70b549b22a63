//! Proves that blocked jobs cost a lease nothing: with 100,000 ordering keys, each holding a
//! leased head and nine blocked jobs behind it (a backlog of 1,000,000 jobs), the lease of a
//! `per_key` queue finds its jobs by walking `jobs_ready` alone (two or three pages of it) and
//! reads no blocked job, and neither do the due transitions before it: so its cost does not
//! grow with the blocked backlog. Read from the plans `EXPLAIN (ANALYZE, BUFFERS)` reports, not
//! timed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use onceq_core::limits::PARTITIONS_DEFAULT;
use onceq_core::ordering::partition_of;
use onceq_core::{LeaseOptions, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_postgres::statements::{hot_statement, HotStatement};

const KEYS: i64 = 100_000;
/// Jobs per key: one leased head, the rest blocked behind it.
const PER_KEY: i64 = 10;
/// Key-less ready jobs, the only ones a lease can take.
const READY: i64 = 20;
/// Most pages (8 KiB) one statement may touch: a lease of 10 touches about 130 (a few to find the
/// jobs, the rest to update them and their index entries), where a plan that read the blocked
/// jobs would touch thousands.
const PAGES_MAX: i64 = 200;
/// Most pages the walk of `jobs_ready` that finds a lease's 10 jobs may touch.
const READY_WALK_PAGES_MAX: i64 = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_reads_no_blocked_job_behind_a_million_job_backlog() {
    let (store, guard) = common::fresh_store(None).await;
    let q = QueueName::new("ordered").unwrap();
    let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    let s = format!("\"{}\"", guard.schema());
    let queue_id: i64 = sqlx::query_scalar(&format!("SELECT id FROM {s}.queues WHERE name = 'ordered'"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    // Heads leased (state 2) until far ahead, the rest blocked (4); then a few key-less ready jobs.
    let backlog = format!(
        "INSERT INTO {s}.jobs (id, queue_id, run_at, enqueued_at, state, priority, attempt, max_attempts, payload, \
                               ordering_key, partition, lease_expires_at, lease_token) \
         SELECT nextval('{s}.job_ids'), {queue_id}, 0, 0, CASE WHEN g % {PER_KEY} = 0 THEN 2 ELSE 4 END, 0, \
                (g % {PER_KEY} = 0)::int, 3, '\\x00'::bytea, 'key-' || (g / {PER_KEY}), 0, \
                CASE WHEN g % {PER_KEY} = 0 THEN 9000000000000000 END, \
                CASE WHEN g % {PER_KEY} = 0 THEN '\\x00000000000000000000000000000000'::bytea END \
         FROM generate_series(0, {KEYS} * {PER_KEY} - 1) g"
    );
    let heads = format!(
        "INSERT INTO {s}.ordering_keys (queue_id, ordering_key, head_id) \
         SELECT queue_id, ordering_key, id FROM {s}.jobs WHERE state = 2"
    );
    // A key-less job's partition is its id modulo the partition count (the keyed ones above are
    // all in partition 0, whatever their key hashes to: none of them is ever leased here).
    let ready = format!(
        "INSERT INTO {s}.jobs (id, queue_id, run_at, enqueued_at, state, priority, attempt, max_attempts, payload, \
                               partition) \
         SELECT id, {queue_id}, 0, 0, 1, 0, 0, 3, '\\x00'::bytea, id % {PARTITIONS_DEFAULT} \
         FROM (SELECT nextval('{s}.job_ids') AS id FROM generate_series(1, {READY})) ids"
    );
    for sql in [backlog, heads, ready, format!("ANALYZE {s}.jobs")] {
        sqlx::query(&sql).execute(store.pool()).await.unwrap();
    }
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased, stats.blocked), (READY as u64, KEYS as u64, (KEYS * (PER_KEY - 1)) as u64));

    // The plans the store's prepared statements settle on (generic), run for real and rolled back.
    let mut conn = store.pool().acquire().await.unwrap().detach();
    sqlx::query("SET plan_cache_mode = force_generic_plan").execute(&mut conn).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let due = hot_statement(guard.schema(), HotStatement::ApplyDue).unwrap();
    let due_plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {due}"))
        .bind(None::<i64>)
        .bind("ordered")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let lease = hot_statement(guard.schema(), HotStatement::Lease { max_jobs: 10 }).unwrap();
    let tokens: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 16]).collect();
    let lease_plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {lease}"))
        .bind(1_i64)
        .bind(queue_id)
        .bind(&tokens)
        .bind(60_000_i64)
        .bind(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    drop(conn);

    let mut scans = Vec::new();
    nodes_of(&lease_plan, &mut scans);
    let on_jobs: Vec<&Node> = scans.iter().filter(|n| n.kind.contains("Scan") && n.relation == "jobs").collect();
    assert!(
        !on_jobs.is_empty() && on_jobs.iter().all(|n| n.index == "jobs_ready" || n.index == "jobs_pkey"),
        "the lease reads jobs other than through jobs_ready and the primary key: {on_jobs:?}\n{lease_plan:#}"
    );
    let ready_scan = on_jobs.iter().find(|n| n.index == "jobs_ready").unwrap();
    assert!(
        ready_scan.rows <= 10 && ready_scan.removed == 0 && ready_scan.pages <= READY_WALK_PAGES_MAX,
        "{ready_scan:?}\n{lease_plan:#}"
    );
    for (what, plan) in [("lease", &lease_plan), ("apply-due", &due_plan)] {
        let mut nodes = Vec::new();
        nodes_of(plan, &mut nodes);
        for node in &nodes {
            assert!(
                node.index != "jobs_blocked" && !(node.kind == "Seq Scan" && node.relation == "jobs"),
                "the {what} reads blocked jobs: {node:?}\n{plan:#}"
            );
        }
        let pages = pages_of(plan);
        assert!(pages <= PAGES_MAX, "the {what} touched {pages} pages, more than {PAGES_MAX}:\n{plan:#}");
    }

    // And the store's own lease hands out the ready jobs, none of the blocked ones.
    let options = LeaseOptions { max_jobs: 100, visibility_timeout_ms: None, wait_ms: 0 };
    let leased = store.job_lease(&q, options).await.unwrap();
    assert_eq!(leased.len(), READY as usize);
    for job in &leased {
        assert_eq!((&job.ordering_key, job.partition), (&None, Some(partition_of(None, job.id, PARTITIONS_DEFAULT))));
    }
    store.close().await;
}

/// One node of a plan, as the assertions need it.
#[derive(Debug)]
struct Node {
    kind: String,
    relation: String,
    index: String,
    /// Rows it returned (over all its loops).
    rows: i64,
    /// Rows it read and dropped for its filter.
    removed: i64,
    /// Pages it (and the nodes under it) touched.
    pages: i64,
}

/// Every node of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan.
fn nodes_of(plan: &serde_json::Value, out: &mut Vec<Node>) {
    match plan {
        serde_json::Value::Object(node) => {
            if let Some(serde_json::Value::String(kind)) = node.get("Node Type") {
                let text = |key: &str| node.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                let number = |key: &str| node.get(key).and_then(serde_json::Value::as_i64).unwrap_or(0);
                out.push(Node {
                    kind: kind.clone(),
                    relation: text("Relation Name"),
                    index: text("Index Name"),
                    rows: number("Actual Rows") * number("Actual Loops").max(1),
                    removed: number("Rows Removed by Filter"),
                    pages: number("Shared Hit Blocks") + number("Shared Read Blocks"),
                });
            }
            node.values().for_each(|v| nodes_of(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| nodes_of(v, out)),
        _ => {}
    }
}

/// The pages the whole statement touched (shared buffers hit or read, at its top node, which
/// counts its children's), planning excluded.
fn pages_of(plan: &serde_json::Value) -> i64 {
    let top = &plan[0]["Plan"];
    let number = |key: &str| top.get(key).and_then(serde_json::Value::as_i64).unwrap_or(0);
    number("Shared Hit Blocks") + number("Shared Read Blocks")
}
