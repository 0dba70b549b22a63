//! Proves Invariant 15 on the real binary (`onceq serve` as a process), with three shipped
//! workers (`onceq_worker::Worker` over the HTTP client), each recording what its handlers saw:
//! - a queue with `rate_limit {per_second: 50, burst: 10}`: over every window of the leases'
//!   own times (the server's clock) the leases are at most 10 + 50 × T; in the first 10 s at
//!   most 510, and at least 90% of that is used;
//! - a queue with `max_in_flight: 5` and slow handlers: at no moment more than 5 live leases
//!   (each from its lease time to the moment its handler returned, before its ack: inside the
//!   lease, so a count over them never overstates the live leases), and 5 is reached;
//! - per key (`rate_limit_by: ordering_key`, `{per_second: 20, burst: 5}`): over every window the
//!   leases of each key are at most 5 + 20 × T, every key gets at least 80% of that in the first
//!   5 s, and the keys together go well past one key's rate;
//! - `max_in_flight_per_key: 2` with slow handlers: at no moment more than 2 live leases of a
//!   key, 2 reached for every key, and more than 2 live across keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use onceq_client::Client;
use onceq_core::flow::RateLimit;
use onceq_core::{Clock, NewJob, QueueConfigPatch, QueueName, Store, SystemClock};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

/// Lease length the workers ask for: a lease's time is its expiry less this.
const VISIBILITY: Duration = Duration::from_secs(30);
const WORKERS: usize = 3;

/// One delivery: its job's ordering key, its lease time and its handler's end, in the server's
/// clock (ms).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Delivery {
    leased_at: i64,
    ended: i64,
    key: Option<String>,
}

/// Runs three workers on `queue` of the server for `run`, each handler sleeping `handler`;
/// returns every delivery, in lease order.
async fn work(server: &Server, queue: &str, run: Duration, handler: Duration, concurrency: usize) -> Vec<Delivery> {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let stop = Arc::new(Notify::new());
    let mut running = Vec::new();
    for _ in 0..WORKERS {
        let client = Arc::new(Client::new(server.url()).unwrap());
        let seen = seen.clone();
        let mut options = QueueOptions::concurrency(concurrency).poll_wait(Duration::from_secs(2));
        options.visibility_timeout = VISIBILITY;
        let worker = Worker::builder(client)
            .handle_with(queue, options, move |ctx: JobContext, _: serde_json::Value| {
                let seen = seen.clone();
                async move {
                    let leased_at = ctx.lease_expires_at.as_millis() - VISIBILITY.as_millis() as i64;
                    tokio::time::sleep(handler).await;
                    // The server runs on this machine's clock: the handler's end is on it too.
                    let ended = SystemClock::default().now().as_millis();
                    seen.lock().unwrap().push(Delivery { leased_at, ended, key: ctx.ordering_key.clone() });
                    Outcome::Done
                }
            })
            .build()
            .unwrap();
        let stopping = stop.clone();
        running.push(tokio::spawn(async move { worker.run(async move { stopping.notified().await }).await }));
    }
    tokio::time::sleep(run).await;
    stop.notify_waiters();
    for worker in running {
        tokio::time::timeout(Duration::from_secs(30), worker).await.expect("a worker did not stop").unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    seen
}

async fn backlog(client: &Client, queue: &QueueName, jobs: usize) {
    for batch in 0..jobs.div_ceil(1000) {
        let n = (jobs - batch * 1000).min(1000);
        let payloads = (0..n).map(|i| NewJob::new(format!("{}", batch * 1000 + i))).collect();
        client.job_enqueue(queue, payloads).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_never_pass_the_rate_limit_and_use_most_of_it() {
    let server = Server::start().await;
    let client = Client::new(server.url()).unwrap();
    let q = QueueName::new("paced").unwrap();
    let (per_second, burst) = (50.0, 10u32);
    let patch = QueueConfigPatch { rate_limit: Some(Some(RateLimit { per_second, burst })), ..Default::default() };
    client.queue_upsert(&q, patch).await.unwrap();
    backlog(&client, &q, 2_000).await;
    let leases: Vec<i64> = work(&server, "paced", Duration::from_millis(11_500), Duration::ZERO, 8)
        .await
        .into_iter()
        .map(|l| l.leased_at)
        .collect();
    for (i, &t0) in leases.iter().enumerate() {
        for (k, &t1) in leases[i..].iter().enumerate() {
            let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
            assert!((k + 1) as f64 <= bound, "{} leases from {t0} to {t1} ms; the limit is {bound}", k + 1);
        }
    }
    let first = leases[0];
    let in_ten_seconds = leases.iter().filter(|&&t| t < first + 10_000).count();
    eprintln!("rate limit 50/s burst 10: {in_ten_seconds} leases in the first 10 s (of {} in all)", leases.len());
    assert!(in_ten_seconds <= 510, "{in_ten_seconds} leases in the first 10 s");
    assert!(in_ten_seconds >= 459, "{in_ten_seconds} leases in the first 10 s: under 90% of the 510 allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_slow_handlers_never_hold_more_than_max_in_flight() {
    let server = Server::start().await;
    let client = Client::new(server.url()).unwrap();
    let q = QueueName::new("bounded").unwrap();
    let max = 5;
    client.queue_upsert(&q, QueueConfigPatch { max_in_flight: Some(Some(max)), ..Default::default() }).await.unwrap();
    backlog(&client, &q, 1_000).await;
    let deliveries = work(&server, "bounded", Duration::from_secs(6), Duration::from_millis(150), 4).await;
    let highest = most_live(&deliveries, max as i32, "max_in_flight");
    eprintln!("max_in_flight {max}: {} deliveries, at most {highest} live at once", deliveries.len());
    assert_eq!(highest, max as i32, "the workers never filled the limit");
    // Slow handlers: about max / 150 ms of work per second, and not much less.
    assert!(deliveries.len() >= 100, "only {} deliveries in 6 s", deliveries.len());
}

/// The most deliveries of `deliveries` live at one moment, asserting it never passes `max`.
fn most_live(deliveries: &[Delivery], max: i32, limit: &str) -> i32 {
    // Every moment a lease starts or a handler ends: count the deliveries live there.
    let mut events: Vec<(i64, i32)> = deliveries.iter().flat_map(|d| [(d.leased_at, 1), (d.ended, -1)]).collect();
    // At one millisecond, ends before starts: a lease that ended at t and one that began at t
    // did not overlap (its ack came after the handler's end anyway).
    events.sort_unstable();
    let (mut live, mut highest) = (0, 0);
    for (at, step) in events {
        live += step;
        assert!(live <= max, "{live} live leases at {at} ms; {limit} is {max}");
        highest = highest.max(live);
    }
    highest
}

/// A backlog of `per_key` jobs for each of `keys` keys (`k0`, `k1`, ...), interleaved.
async fn keyed_backlog(client: &Client, queue: &QueueName, keys: usize, per_key: usize) {
    let jobs: Vec<NewJob> =
        (0..keys * per_key).map(|i| NewJob::new(format!("{i}")).ordering_key(format!("k{}", i % keys))).collect();
    for batch in jobs.chunks(1000) {
        client.job_enqueue(queue, batch.to_vec()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_never_pass_a_keys_rate_limit_and_keys_go_side_by_side() {
    use onceq_core::flow::KeyBy;
    let server = Server::start().await;
    let client = Client::new(server.url()).unwrap();
    let q = QueueName::new("paced-by-key").unwrap();
    let (per_second, burst, keys) = (20.0, 5u32, 3);
    let patch = QueueConfigPatch {
        rate_limit: Some(Some(RateLimit { per_second, burst })),
        rate_limit_by: Some(Some(KeyBy::OrderingKey)),
        ..Default::default()
    };
    client.queue_upsert(&q, patch).await.unwrap();
    keyed_backlog(&client, &q, keys, 300).await;
    let deliveries = work(&server, "paced-by-key", Duration::from_millis(6_500), Duration::ZERO, 8).await;
    let first = deliveries[0].leased_at;
    let mut report = Vec::new();
    for key in (0..keys).map(|k| format!("k{k}")) {
        let leases: Vec<i64> =
            deliveries.iter().filter(|d| d.key.as_deref() == Some(key.as_str())).map(|d| d.leased_at).collect();
        for (i, &t0) in leases.iter().enumerate() {
            for (k, &t1) in leases[i..].iter().enumerate() {
                let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
                assert!(
                    (k + 1) as f64 <= bound,
                    "key {key}: {} leases from {t0} to {t1} ms; the limit is {bound}",
                    k + 1
                );
            }
        }
        let in_five_seconds = leases.iter().filter(|&&t| t < first + 5_000).count();
        report.push(format!("{key}: {in_five_seconds}"));
        // 5 + 20 × 5 = 105 allowed in the first 5 s.
        assert!(in_five_seconds >= 84, "key {key}: {in_five_seconds} leases in the first 5 s, under 80% of 105");
    }
    let in_five_seconds = deliveries.iter().filter(|d| d.leased_at < first + 5_000).count();
    eprintln!("rate limit 20/s burst 5 per key, 3 keys: leases in the first 5 s {report:?}, {in_five_seconds} in all");
    assert!(in_five_seconds > 200, "the keys did not go side by side: {in_five_seconds} leases in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_slow_handlers_never_hold_more_than_max_in_flight_per_key() {
    let server = Server::start().await;
    let client = Client::new(server.url()).unwrap();
    let q = QueueName::new("bounded-by-key").unwrap();
    let (max, keys) = (2, 3);
    let patch = QueueConfigPatch { max_in_flight_per_key: Some(Some(max)), ..Default::default() };
    client.queue_upsert(&q, patch).await.unwrap();
    keyed_backlog(&client, &q, keys, 200).await;
    let deliveries = work(&server, "bounded-by-key", Duration::from_secs(5), Duration::from_millis(150), 4).await;
    for key in (0..keys).map(|k| format!("k{k}")) {
        let of_key: Vec<Delivery> =
            deliveries.iter().filter(|d| d.key.as_deref() == Some(key.as_str())).cloned().collect();
        let highest = most_live(&of_key, max as i32, &format!("max_in_flight_per_key (key {key})"));
        assert_eq!(highest, max as i32, "key {key} never filled its limit");
    }
    let across = most_live(&deliveries, i32::MAX, "nothing");
    eprintln!(
        "max_in_flight_per_key {max}, {keys} keys: {} deliveries, at most {across} live at once",
        deliveries.len()
    );
    assert!(across > max as i32, "the keys never ran side by side");
}
