//! A handler producing jobs through its context (`JobContext::produce`): the outputs are
//! committed with the job's ack, all or nothing. A stage turns each input into one job of each
//! of two queues; a delivery that retries, or whose lease is lost, commits nothing of what it
//! produced; a bad queue name or job is refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker, WorkerReport};
use tokio::sync::Notify;

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

async fn ready(store: &SqliteStore, queue: &str) -> u64 {
    store.queue_get(&q(queue)).await.map(|i| i.stats.ready).unwrap_or(0)
}

/// Runs `worker` until `done` says so (checked every 20 ms, for 20 s at most), then stops it.
async fn run_until<F, Fut>(worker: Worker<SqliteStore>, done: F) -> WorkerReport
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let stop = Arc::new(Notify::new());
    let stopping = stop.clone();
    let running = tokio::spawn(async move { worker.run(async move { stopping.notified().await }).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "the worker did not finish in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("the worker did not stop").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_commits_its_outputs_with_its_ack_and_a_retry_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let inputs = 20u64;
    let jobs = (0..inputs).map(|i| NewJob::new(i.to_string())).collect();
    store.job_enqueue(&q("a"), jobs).await.unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let worker = Worker::builder(store.clone())
        .handle_with(
            "a",
            QueueOptions::concurrency(4).poll_wait(Duration::from_millis(100)),
            move |ctx: JobContext, n: u64| {
                let runs = counted.clone();
                async move {
                    ctx.produce("b", NewJob::new(format!("{n}"))).unwrap();
                    ctx.produce("c", NewJob::new(format!("{n}"))).unwrap();
                    ctx.produce("b", NewJob::new(format!("{}", n + 1000))).unwrap();
                    runs.fetch_add(1, AtomicOrdering::SeqCst);
                    // Every third input fails its first attempt after producing: nothing of it commits.
                    if n.is_multiple_of(3) && ctx.attempt == 1 {
                        return Outcome::retry_after(Duration::ZERO, "not yet");
                    }
                    Outcome::Done
                }
            },
        )
        .build()
        .unwrap();
    let report = run_until(worker, || async { ready(&store, "c").await >= inputs }).await;
    assert_eq!(ready(&store, "b").await, 2 * inputs, "two jobs into b per input, once");
    assert_eq!(ready(&store, "c").await, inputs, "one job into c per input, once");
    assert_eq!(store.queue_get(&q("a")).await.unwrap().stats.ready, 0);
    let retried = (0..inputs).filter(|n| n.is_multiple_of(3)).count() as u64;
    assert_eq!(u64::from(runs.load(AtomicOrdering::SeqCst)), inputs + retried);
    assert_eq!((report.acked, report.produced, report.retried), (inputs, 3 * inputs, retried));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_lease_is_lost_commits_nothing_and_bad_outputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    store.enqueue(&q("a"), NewJob::new("1")).await.unwrap();
    let outside = store.clone();
    let worker = Worker::builder(store.clone())
        .handle_with(
            "a",
            QueueOptions::concurrency(1).poll_wait(Duration::from_millis(100)),
            move |ctx: JobContext, _: u64| {
                let outside = outside.clone();
                async move {
                    assert!(ctx.produce("not a queue", NewJob::new("x")).is_err());
                    assert!(ctx.produce("b", NewJob::new("x").priority(i32::MAX)).is_err());
                    ctx.produce("b", NewJob::new("out")).unwrap();
                    // Someone else settles this delivery's lease meanwhile (as if it had expired and
                    // another worker acked the redelivery): the commit must apply nothing.
                    outside.ack(ctx.lease()).await.unwrap();
                    Outcome::Done
                }
            },
        )
        .build()
        .unwrap();
    let report = run_until(worker, || async {
        let stats = store.queue_get(&q("a")).await.unwrap().stats;
        stats.leased + stats.ready == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((report.lease_lost, report.produced), (1, 0), "{report:?}");
    assert_eq!(ready(&store, "b").await, 0, "nothing of the lost delivery was committed");
}
