//! Joining a consumer group at start: a queue that does not exist yet is waited for (the join is
//! retried with backoff until a producer creates it), while a group the store refuses for good
//! (an unordered queue) leaves that queue unworked without stopping the worker's other queues.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

fn counting(
    count: Arc<AtomicUsize>,
    done: Arc<Notify>,
    total: usize,
) -> impl Fn(JobContext, String) -> std::future::Ready<Outcome> {
    move |_ctx, _payload| {
        if count.fetch_add(1, AtomicOrdering::SeqCst) + 1 == total {
            done.notify_one();
        }
        std::future::ready(Outcome::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_created_after_the_worker_started_is_joined_then() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let (count, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let options = QueueOptions::concurrency(2).poll_wait(Duration::from_millis(100)).group(GroupOptions::new("late"));
    let worker = Worker::builder(store.clone())
        .handle_with("later", options, counting(count.clone(), done.clone(), 10))
        .build()
        .unwrap();
    let finished = done.clone();
    let worker = tokio::spawn(worker.run(async move { finished.notified().await }));
    // The worker's first joins find no queue.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = QueueName::new("later").unwrap();
    let patch =
        QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(4), ..QueueConfigPatch::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    let jobs = (0..10).map(|i| NewJob::new("\"x\"").ordering_key(format!("k{i}"))).collect();
    store.job_enqueue(&q, jobs).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(15), worker).await.expect("the jobs were not run").unwrap();
    assert_eq!((report.group_joins, report.acked), (1, 10), "{report:?}");
    assert_eq!(count.load(AtomicOrdering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_group_leaves_its_queue_unworked_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let (plain, other) = (QueueName::new("plain").unwrap(), QueueName::new("other").unwrap());
    store.job_enqueue(&plain, (0..5).map(|_| NewJob::new("\"p\"")).collect()).await.unwrap();
    store.job_enqueue(&other, (0..5).map(|_| NewJob::new("\"o\"")).collect()).await.unwrap();
    let (plain_count, other_count) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (never, done) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let grouped = QueueOptions::concurrency(2).poll_wait(Duration::from_millis(100)).group(GroupOptions::new("g"));
    let worker = Worker::builder(store.clone())
        .handle_with("plain", grouped, counting(plain_count.clone(), never, 5))
        .handle_with(
            "other",
            QueueOptions::concurrency(2).poll_wait(Duration::from_millis(100)),
            counting(other_count.clone(), done.clone(), 5),
        )
        .build()
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(15), worker.run(async move { done.notified().await }))
        .await
        .expect("the other queue was not worked, or the worker did not stop");
    assert_eq!((report.group_joins, report.acked), (0, 5), "{report:?}");
    assert_eq!((plain_count.load(AtomicOrdering::SeqCst), other_count.load(AtomicOrdering::SeqCst)), (0, 5));
    let stats = store.queue_get(&plain).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased), (5, 0), "the unordered queue's jobs were left alone");
}
