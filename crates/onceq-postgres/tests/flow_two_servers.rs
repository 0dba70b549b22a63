//! Proves Invariant 15 across servers: two stores (two pools, as two `onceq serve` processes
//! would have) on one schema lease one limited queue at once, with four workers each. Every
//! window of the leases' own store times holds burst + rate × T, and together they still use
//! most of the rate; live leases of a queue with `max_in_flight`, sampled all along from a third
//! connection, never pass it, and reach it. The same for per-key limits: each ordering key's
//! bucket holds over every window, and each key's live leases stay within
//! `max_in_flight_per_key`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::flow::{KeyBy, RateLimit};
use onceq_core::{LeaseOptions, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_postgres::PgStore;
use sqlx::Connection;
use tokio::task::JoinSet;

/// Lease length in these tests: no lease expires while they run.
const VISIBILITY_MS: u64 = 60_000;

async fn two_stores() -> (PgStore, PgStore, common::SchemaGuard) {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    (a, b, guard)
}

async fn backlog(store: &PgStore, q: &QueueName, jobs: usize) {
    for batch in 0..jobs.div_ceil(1000) {
        let n = (jobs - batch * 1000).min(1000);
        store.job_enqueue(q, (0..n).map(|i| NewJob::new(format!("{batch}-{i}"))).collect()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_bucket() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("paced").unwrap();
    let (per_second, burst) = (100.0, 5);
    let patch =
        QueueConfigPatch { rate_limit: Some(Some(RateLimit { per_second, burst })), ..QueueConfigPatch::default() };
    a.queue_upsert(&q, patch).await.unwrap();
    backlog(&a, &q, 2_000).await;
    let mut workers = JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for w in 0..4u32 {
            let (store, q) = (store.clone(), q.clone());
            workers.spawn(async move {
                // Each lease's store time: its expiry less the lease length it asked for.
                let mut leases: Vec<(i64, usize)> = Vec::new();
                let started = Instant::now();
                let mut i = 0u32;
                while started.elapsed() < Duration::from_secs(3) {
                    i += 1;
                    let max_jobs = 1 + (w + i) % 5;
                    let options = LeaseOptions { max_jobs, visibility_timeout_ms: Some(VISIBILITY_MS), wait_ms: 300 };
                    let jobs = store.job_lease(&q, options).await.unwrap();
                    if let Some(first) = jobs.first() {
                        let at = first.lease_expires_at.as_millis() - VISIBILITY_MS as i64;
                        leases.push((at, jobs.len()));
                        let acks: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                        assert!(store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
                    }
                }
                leases
            });
        }
    }
    let mut leases = Vec::new();
    while let Some(mine) = workers.join_next().await {
        leases.extend(mine.unwrap());
    }
    leases.sort_unstable();
    for (i, &(t0, _)) in leases.iter().enumerate() {
        let mut count = 0;
        for &(t1, n) in &leases[i..] {
            count += n;
            let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
            assert!(count as f64 <= bound + 1e-9, "{count} jobs leased from {t0} to {t1} ms; the limit is {bound}");
        }
    }
    let total: usize = leases.iter().map(|l| l.1).sum();
    let span_ms = leases.last().unwrap().0 - leases[0].0;
    let allowed = f64::from(burst) + per_second * span_ms as f64 / 1000.0;
    assert!(
        total as f64 >= 0.9 * allowed,
        "{total} jobs leased in {span_ms} ms where {allowed} were allowed: the servers starve each other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_in_flight_limit() {
    let (a, b, guard) = two_stores().await;
    let q = QueueName::new("bounded").unwrap();
    let max = 4;
    let patch = QueueConfigPatch { max_in_flight: Some(Some(max)), ..QueueConfigPatch::default() };
    a.queue_upsert(&q, patch).await.unwrap();
    backlog(&a, &q, 3_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for w in 0..4u64 {
            let (store, q, stop) = (store.clone(), q.clone(), stop.clone());
            workers.spawn(async move {
                let mut leased = 0;
                while !stop.load(Ordering::Relaxed) {
                    let options =
                        LeaseOptions { max_jobs: 3, visibility_timeout_ms: Some(VISIBILITY_MS), wait_ms: 200 };
                    let jobs = store.job_lease(&q, options).await.unwrap();
                    leased += jobs.len();
                    tokio::time::sleep(Duration::from_millis(w * 3)).await;
                    if !jobs.is_empty() {
                        let acks: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                        assert!(store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
                    }
                }
                leased
            });
        }
    }
    // Live leases as the database sees them, sampled from a connection of neither store.
    let mut watcher = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let count = format!(
        "SELECT count(*) FROM \"{}\".jobs WHERE state = 2 AND lease_expires_at > \
         (extract(epoch FROM clock_timestamp()) * 1000)::int8",
        guard.schema()
    );
    let (mut samples, mut highest) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let live: i64 = sqlx::query_scalar(&count).fetch_one(&mut watcher).await.unwrap();
        assert!(live <= i64::from(max), "{live} live leases; max_in_flight is {max}");
        highest = highest.max(live);
        samples += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut leased = 0;
    while let Some(n) = workers.join_next().await {
        leased += n.unwrap();
    }
    assert_eq!(highest, i64::from(max), "the workers never filled the limit in {samples} samples");
    assert!(leased > 100, "only {leased} jobs leased in 3 s");
}

/// A backlog of `jobs` jobs whose ordering keys take turns among `keys` keys.
async fn keyed_backlog(store: &PgStore, q: &QueueName, jobs: usize, keys: usize) {
    for batch in 0..jobs.div_ceil(1000) {
        let n = (jobs - batch * 1000).min(1000);
        let batch_jobs = (0..n).map(|i| NewJob::new(format!("{batch}-{i}")).ordering_key(format!("k{}", i % keys)));
        store.job_enqueue(q, batch_jobs.collect()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_each_keys_bucket() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("accounts").unwrap();
    let (per_second, burst, keys) = (20.0, 3, 3);
    let patch = QueueConfigPatch {
        rate_limit: Some(Some(RateLimit { per_second, burst })),
        rate_limit_by: Some(Some(KeyBy::OrderingKey)),
        ..QueueConfigPatch::default()
    };
    a.queue_upsert(&q, patch).await.unwrap();
    keyed_backlog(&a, &q, 2_000, keys).await;
    let mut workers = JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for w in 0..4u32 {
            let (store, q) = (store.clone(), q.clone());
            workers.spawn(async move {
                // Each lease's store time and key of each job.
                let mut leases: Vec<(i64, String)> = Vec::new();
                let started = Instant::now();
                let mut i = 0u32;
                while started.elapsed() < Duration::from_secs(3) {
                    i += 1;
                    let max_jobs = 1 + (w + i) % 5;
                    let options = LeaseOptions { max_jobs, visibility_timeout_ms: Some(VISIBILITY_MS), wait_ms: 300 };
                    let jobs = store.job_lease(&q, options).await.unwrap();
                    for job in &jobs {
                        let at = job.lease_expires_at.as_millis() - VISIBILITY_MS as i64;
                        leases.push((at, job.ordering_key.clone().unwrap()));
                    }
                    if !jobs.is_empty() {
                        let acks: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                        assert!(store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
                    }
                }
                leases
            });
        }
    }
    let mut leases = Vec::new();
    while let Some(mine) = workers.join_next().await {
        leases.extend(mine.unwrap());
    }
    for key in (0..keys).map(|k| format!("k{k}")) {
        let mut times: Vec<i64> = leases.iter().filter(|(_, k)| *k == key).map(|(t, _)| *t).collect();
        times.sort_unstable();
        assert!(!times.is_empty(), "{key} was never leased");
        for (i, &t0) in times.iter().enumerate() {
            for (j, &t1) in times.iter().enumerate().skip(i) {
                let count = j - i + 1;
                let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
                assert!(count as f64 <= bound + 1e-9, "{key}: {count} jobs from {t0} to {t1} ms; the limit is {bound}");
            }
        }
        let span_ms = times.last().unwrap() - times[0];
        let allowed = f64::from(burst) + per_second * span_ms as f64 / 1000.0;
        assert!(
            // Three keys share one queue lock and each worker's lease waits for the earliest key's
            // token: most of each key's rate, with room for the shared test machine.
            times.len() as f64 >= 0.8 * allowed,
            "{key}: {} jobs leased in {span_ms} ms where {allowed} were allowed",
            times.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_each_keys_in_flight_limit() {
    let (a, b, guard) = two_stores().await;
    let q = QueueName::new("bounded").unwrap();
    let (max, keys) = (2, 3);
    let patch = QueueConfigPatch { max_in_flight_per_key: Some(Some(max)), ..QueueConfigPatch::default() };
    a.queue_upsert(&q, patch).await.unwrap();
    keyed_backlog(&a, &q, 3_000, keys).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for store in [a.clone(), b.clone()] {
        for w in 0..4u64 {
            let (store, q, stop) = (store.clone(), q.clone(), stop.clone());
            workers.spawn(async move {
                let mut leased = 0;
                while !stop.load(Ordering::Relaxed) {
                    let options =
                        LeaseOptions { max_jobs: 3, visibility_timeout_ms: Some(VISIBILITY_MS), wait_ms: 200 };
                    let jobs = store.job_lease(&q, options).await.unwrap();
                    leased += jobs.len();
                    tokio::time::sleep(Duration::from_millis(w * 3)).await;
                    if !jobs.is_empty() {
                        let acks: Vec<_> = jobs.iter().map(|j| j.lease()).collect();
                        assert!(store.job_ack(&acks).await.unwrap().iter().all(Result::is_ok));
                    }
                }
                leased
            });
        }
    }
    let mut watcher = sqlx::PgConnection::connect(&common::database_url()).await.unwrap();
    let count = format!(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM \"{}\".jobs WHERE state = 2 AND \
         lease_expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::int8 GROUP BY ordering_key) per_key",
        guard.schema()
    );
    let (mut samples, mut highest) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let live: i64 = sqlx::query_scalar(&count).fetch_one(&mut watcher).await.unwrap();
        assert!(live <= i64::from(max), "{live} live leases of one key; max_in_flight_per_key is {max}");
        highest = highest.max(live);
        samples += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut leased = 0;
    while let Some(n) = workers.join_next().await {
        leased += n.unwrap();
    }
    assert_eq!(highest, i64::from(max), "the workers never filled a key's limit in {samples} samples");
    assert!(leased > 100, "only {leased} jobs leased in 3 s");
}
