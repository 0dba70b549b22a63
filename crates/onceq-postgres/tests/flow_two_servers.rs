//! Proves Invariant 15 across servers: two stores (two pools, as two `onceq serve` processes
//! would have) on one schema lease one limited queue at once, with four workers each. Every
//! window of the leases' own store times holds burst + rate × T, and together they still use
//! most of the rate; live leases of a queue with `max_in_flight`, sampled all along from a third
//! connection, never pass it, and reach it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::flow::RateLimit;
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
