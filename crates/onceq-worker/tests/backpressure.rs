//! A handler's outputs into a queue at its `max_depth`: the commit of the outputs with the ack is
//! refused whole (`RateLimited`), and the worker sends it again no sooner than the store's
//! retry-after (with backoff and jitter), so it lands once a consumer made room, exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::limits::MAX_DEPTH_RETRY_AFTER_MS;
use onceq_core::{NewJob, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_refused_by_a_full_queue_are_committed_after_the_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    store.queue_upsert(&q("out"), QueueConfigPatch { max_depth: Some(Some(1)), ..Default::default() }).await.unwrap();
    store.enqueue(&q("out"), NewJob::new("\"already there\"")).await.unwrap();
    store.enqueue(&q("in"), NewJob::new("1")).await.unwrap();
    let worker = Worker::builder(store.clone())
        .handle_with(
            "in",
            QueueOptions::concurrency(1).poll_wait(Duration::from_millis(100)),
            |ctx: JobContext, n: u64| async move {
                ctx.produce("out", NewJob::new(format!("{n}"))).unwrap();
                Outcome::Done
            },
        )
        .build()
        .unwrap();
    let stop = Arc::new(Notify::new());
    let stopping = stop.clone();
    let started = Instant::now();
    let running = tokio::spawn(async move { worker.run(async move { stopping.notified().await }).await });
    // The first commit is refused: the input stays leased, nothing reaches `out`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.queue_get(&q("in")).await.unwrap().stats.leased, 1);
    let first = store.lease_one(&q("out")).await.unwrap().unwrap();
    store.ack(first.lease()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.queue_get(&q("out")).await.unwrap().stats.ready == 0 {
        assert!(Instant::now() < deadline, "the worker never committed its output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = started.elapsed();
    stop.notify_one();
    let report = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap();
    assert!(waited >= Duration::from_millis(MAX_DEPTH_RETRY_AFTER_MS), "committed after {waited:?}");
    assert_eq!((report.acked, report.produced), (1, 1));
    let stats = store.queue_get(&q("in")).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased), (0, 0), "the input was acked with its output");
    assert_eq!(store.lease_one(&q("out")).await.unwrap().unwrap().payload, b"1".to_vec());
}
