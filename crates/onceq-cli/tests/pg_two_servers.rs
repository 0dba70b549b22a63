//! Two `onceq serve` processes on one PostgreSQL schema, with producers and consumers on both
//! (docs/design.md, "PostgreSQL store (multi-node)"; issue 5's "two server processes plus workers on
//! both, sharing one database").
//!
//! Proves that, with N jobs enqueued and consumed concurrently through both servers:
//! - none is lost: every enqueued job is leased and acked;
//! - none is acked twice: each job has exactly one successful ack, and no refused one;
//! - none is leased twice at once: lease tokens are unique, a job's attempts go 1, 2, ..., and
//!   each lease starts only after the one before ended (its successful settle was sent, or its
//!   server-reported expiry passed), judged conservatively from times read around each call;
//! - redelivery crosses servers correctly: jobs nacked on their first lease, and jobs whose first
//!   lease was extended to 200 ms and left to expire, come back exactly once more (attempt 2);
//!   every other job is delivered exactly once;
//! - the queue's stats end at zero on both servers, and acked jobs are gone (404) on both.
//!
//! How: 2 producers per server enqueue unique payloads in batches of 100; 3 consumers per
//! server lease batches of 100 and settle each batch through one server or the other in turn
//! (acks, nacks and extends of leases the other server handed out), recording every lease
//! (id, token, attempt, server, when asked, when answered, reported expiry) and every settle.
//!
//! N is `ONCEQ_PG_JOBS`; by default issue 5's 100,000 in release builds and 20,000 in debug
//! builds (CI). The full-size runs, which also print their timings:
//! `cargo test --release -p onceq-cli --test pg_two_servers --test pg_kill_one_server -- --nocapture`
//! (or `ONCEQ_PG_JOBS=100000 cargo test -p onceq-cli --test pg_two_servers -- --nocapture` in debug).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_client::Client;
use onceq_core::{JobId, NewJob, QueueConfigPatch, QueueName, QueueStats, Store};
use pg_common::{Outcome, Plan, SettleKind, WorkerPlan};

const QUEUE: &str = "shared";
const SERVERS: usize = 2;
const PRODUCERS_PER_SERVER: usize = 2;
const CONSUMERS_PER_SERVER: usize = 3;
const BATCH: usize = 100;
/// No lease of a consumer expires by itself in this test (only planned abandons do).
const TIMEOUT_MS: u64 = 60_000;
/// GETs of acked jobs, per server, at the end.
const GONE_SAMPLE: usize = 200;

/// The first lease of every 89th job is nacked; of every 97th job (from another offset),
/// extended to 200 ms and left to expire. Every other lease is acked.
fn first_lease(index: u64) -> Plan {
    if index % 97 == 5 {
        Plan::Abandon
    } else if index % 89 == 7 {
        Plan::Nack
    } else {
        Plan::Ack
    }
}

/// Enqueues the batches `producer`, `producer + producers`, ... of jobs `0..jobs`; returns
/// (id, job number) of each.
async fn produce(client: Client, queue: QueueName, producer: usize, producers: usize, jobs: u64) -> Vec<(JobId, u64)> {
    let mut out = Vec::new();
    let batches = jobs.div_ceil(BATCH as u64);
    for batch in (producer as u64..batches).step_by(producers) {
        let indexes: Vec<u64> = (batch * BATCH as u64..((batch + 1) * BATCH as u64).min(jobs)).collect();
        let new_jobs = indexes.iter().map(|&i| NewJob::new(pg_common::payload(i))).collect();
        let enqueued = client.job_enqueue(&queue, new_jobs).await.unwrap_or_else(|e| panic!("enqueue: {e}"));
        assert_eq!(enqueued.len(), indexes.len(), "one result per job");
        for (entry, index) in enqueued.into_iter().zip(indexes) {
            assert!(!entry.duplicate, "job {index} reported as a duplicate without a dedup id");
            out.push((entry.id, index));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_share_one_schema_and_lose_nothing_and_lease_nothing_twice_at_once() {
    let jobs = pg_common::jobs_from_env() as u64;
    let schema = pg_common::Schema::fresh("two").await;
    let mut servers = Vec::new();
    for _ in 0..SERVERS {
        servers.push(pg_common::start_server(&schema).await);
    }
    let clients: Vec<Client> = servers.iter().map(pg_common::client).collect();
    let queue = QueueName::new(QUEUE).unwrap();
    let patch =
        QueueConfigPatch { max_attempts: Some(10), visibility_timeout_ms: Some(TIMEOUT_MS), ..Default::default() };
    clients[0].queue_upsert(&queue, patch).await.unwrap();

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for (server, client) in clients.iter().enumerate() {
        for k in 0..PRODUCERS_PER_SERVER {
            let producer = server * PRODUCERS_PER_SERVER + k;
            let (client, queue) = (client.clone(), queue.clone());
            producers.push(tokio::spawn(produce(client, queue, producer, SERVERS * PRODUCERS_PER_SERVER, jobs)));
        }
    }
    let mut consumers = Vec::new();
    for server in 0..SERVERS {
        for _ in 0..CONSUMERS_PER_SERVER {
            let plan = WorkerPlan {
                queue: queue.clone(),
                lease_via: (server, clients[server].clone()),
                // Settles alternate between this server and the other one.
                settle_via: (0..SERVERS)
                    .map(|k| ((server + k) % SERVERS, clients[(server + k) % SERVERS].clone()))
                    .collect(),
                timeout_ms: TIMEOUT_MS,
                batch: BATCH as u32,
                hold_ms: 0,
                first_lease,
                stop: stop.clone(),
                acked: acked.clone(),
                killed: None,
            };
            consumers.push(tokio::spawn(pg_common::work(plan)));
        }
    }

    let mut enqueued: BTreeMap<JobId, u64> = BTreeMap::new();
    for producer in producers {
        for (id, index) in producer.await.unwrap() {
            assert_eq!(enqueued.insert(id, index), None, "id {id} was handed out twice");
        }
    }
    let enqueue_time = started.elapsed();
    assert_eq!(enqueued.len() as u64, jobs, "one id per job");
    assert_eq!(enqueued.values().copied().collect::<BTreeSet<u64>>().len() as u64, jobs, "one id per payload");

    // Everything acked, or a bound that fails the test with what is left.
    let deadline = Instant::now() + Duration::from_secs(120 + jobs / 200);
    while acked.load(Ordering::SeqCst) < jobs {
        if Instant::now() > deadline {
            stop.store(true, Ordering::SeqCst);
            let info = clients[0].queue_get(&queue).await;
            panic!("only {} of {jobs} jobs were acked in time; queue: {info:?}", acked.load(Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total_time = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for consumer in consumers {
        records.extend(consumer.await.unwrap());
    }

    // The invariants, whatever the plan.
    let leases_total = records.len();
    let by_server: Vec<usize> = (0..SERVERS).map(|s| records.iter().filter(|r| r.server == s).count()).collect();
    let crossed = records.iter().filter(|r| r.settle.as_ref().is_some_and(|s| s.via != r.server)).count();
    let history = pg_common::check_history(records);

    // None lost, nothing unknown delivered.
    assert_eq!(
        history.keys().copied().collect::<BTreeSet<JobId>>(),
        enqueued.keys().copied().collect::<BTreeSet<JobId>>(),
        "the jobs leased are exactly the jobs enqueued"
    );
    // Each job delivered exactly as planned, and acked exactly once.
    let (mut nacked, mut abandoned) = (0u64, 0u64);
    for (id, leases) in &history {
        let index = enqueued[id];
        assert_eq!(leases[0].index, index, "job {id} carries the payload it was enqueued with");
        let plan = first_lease(index);
        let attempts: Vec<u32> = leases.iter().map(|l| l.attempt).collect();
        let expected: &[u32] = if plan == Plan::Ack { &[1] } else { &[1, 2] };
        assert_eq!(attempts, expected, "job {id} (number {index}, plan {plan:?}) leases: {leases:#?}");
        let settles: Vec<(Option<SettleKind>, Option<Outcome>)> = leases
            .iter()
            .map(|l| (l.settle.as_ref().map(|s| s.kind), l.settle.as_ref().map(|s| s.outcome.clone())))
            .collect();
        let acked_once = (Some(SettleKind::Ack), Some(Outcome::Ok));
        let expected = match plan {
            Plan::Ack => vec![acked_once],
            Plan::Nack => {
                nacked += 1;
                vec![(Some(SettleKind::Nack), Some(Outcome::Ok)), acked_once]
            }
            Plan::Abandon => {
                abandoned += 1;
                assert!(leases[0].extension.is_some(), "job {id}: the abandoned lease was extended");
                vec![(None, None), acked_once]
            }
        };
        assert_eq!(settles, expected, "job {id} (number {index}, plan {plan:?}) settles: {leases:#?}");
    }
    let planned_nacks = (0..jobs).filter(|&i| first_lease(i) == Plan::Nack).count() as u64;
    let planned_abandons = (0..jobs).filter(|&i| first_lease(i) == Plan::Abandon).count() as u64;
    assert_eq!((nacked, abandoned), (planned_nacks, planned_abandons));
    assert_eq!(leases_total as u64, jobs + planned_nacks + planned_abandons, "deliveries in all");
    assert_eq!(acked.load(Ordering::SeqCst), jobs, "successful acks in all");
    assert!(by_server.iter().all(|&n| n > 0), "both servers handed out leases: {by_server:?}");
    assert!(crossed > 0, "some leases were settled through the other server");

    // The queue is empty, seen from either server; acked jobs are gone from both.
    for (server, client) in clients.iter().enumerate() {
        let stats = client.queue_get(&queue).await.unwrap().stats;
        assert_eq!(stats, QueueStats::default(), "stats through server {server}");
        let api = servers[server].api();
        for id in enqueued.keys().step_by((enqueued.len() / GONE_SAMPLE).max(1)) {
            api.get(&format!("/v1/jobs/{id}")).await.err(404, "not_found");
        }
    }
    eprintln!(
        "pg_two_servers: {jobs} jobs through {SERVERS} servers: enqueued in {enqueue_time:?}, all acked after \
         {total_time:?} ({:.0} jobs/s end to end); {leases_total} deliveries ({planned_nacks} after a nack, \
         {planned_abandons} after an expiry), leases per server {by_server:?}, {crossed} settled through the other server",
        jobs as f64 / total_time.as_secs_f64()
    );
    drop(servers);
    drop(schema);
}

/// A PostgreSQL store that cannot be opened says why, with the exit code of its kind: a bad
/// schema name or pool size is usage (2), a database nobody answers at is unavailable (3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exits_2_for_a_bad_schema_name_and_3_for_an_unreachable_database() {
    let url = pg_common::database_url();
    let cases = [
        (url.as_str(), "bad;name", "10", 2, "schema name"),
        (url.as_str(), "onceq", "0", 2, "pool size is 0; it must be between 1 and 1000"),
        (url.as_str(), "onceq", "1001", 2, "pool size is 1001"),
        ("postgres://postgres@127.0.0.1:9/test", "onceq", "10", 3, "unavailable"),
    ];
    for (store, schema, pool, code, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args =
            ["serve", "--listen", "127.0.0.1:0", "--store", store, "--pg-schema", schema, "--pg-pool-size", pool];
        let output =
            common::run_onceq(&[&args[..], &["--data-dir", data.to_str().unwrap()]].concat(), Duration::from_secs(60))
                .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{store} {schema}: {stderr}");
        assert!(stderr.contains(message), "{store} {schema}: {stderr:?} should say {message:?}");
    }
}

/// A schema that held no store is never a silent empty one: the start that creates it says so
/// in one line on stderr, and a start on the store it made says nothing.
#[tokio::test]
async fn serve_says_when_it_created_an_empty_store() {
    let schema = pg_common::Schema::fresh("created").await;
    let mut server = pg_common::start_server(&schema).await;
    let said = format!("onceq: schema {} held no onceq store; created an empty one (no queues, no jobs)", schema.name);
    let stderr = server.stderr();
    assert!(stderr.contains(&said) && stderr.contains("check --pg-schema"), "{stderr}");
    server.terminate(Duration::from_secs(30)).await;
    server.restart().await;
    let stderr = server.stderr();
    assert!(!stderr.contains("held no onceq store"), "a start on an existing store is quiet: {stderr}");
}
