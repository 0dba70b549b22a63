//! A handler that acks its own job (as a transactional handler does, in the transaction of its
//! effects) and returns `Outcome::Acked`: the runtime counts it as acked and never acks it again,
//! even when a heartbeat found the job gone before the handler returned; an effectively-once
//! guard records the effect as completed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Begin, BeginOutcome, IdempotencyStore, NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

fn open(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap())
}

async fn until(done: Arc<Notify>) {
    tokio::time::timeout(Duration::from_secs(20), done.notified()).await.expect("the worker did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_handler_acked_is_counted_once_and_not_acked_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = QueueName::new("self_acked").unwrap();
    store.job_enqueue(&q, (0..20).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    let (ran, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let (s, r, d) = (store.clone(), ran.clone(), done.clone());
    let options = QueueOptions::concurrency(4).poll_wait(Duration::from_millis(100));
    let worker = Worker::builder(store.clone())
        .handle_with("self_acked", options, move |ctx: JobContext, _: u32| {
            let (s, r, d) = (s.clone(), r.clone(), d.clone());
            async move {
                s.ack(ctx.lease()).await.unwrap();
                if r.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    d.notify_one();
                }
                Outcome::Acked
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    // A second ack by the runtime would find each job gone and count a lost lease.
    assert_eq!((report.leased, report.acked, report.lease_lost, report.retried), (20, 20, 0, 0), "{report:?}");
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased, stats.scheduled, stats.dead), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_finds_the_job_acked_by_its_handler_does_not_make_it_a_lost_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = QueueName::new("slow_after_ack").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let done = Arc::new(Notify::new());
    let (s, d) = (store.clone(), done.clone());
    // Heartbeats every 100 ms; the handler keeps going for 350 ms after its own ack.
    let options = QueueOptions::concurrency(1)
        .poll_wait(Duration::from_millis(100))
        .visibility_timeout(Duration::from_millis(300));
    let worker = Worker::builder(store.clone())
        .handle_with("slow_after_ack", options, move |ctx: JobContext, _: u32| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                s.ack(ctx.lease()).await.unwrap();
                tokio::select! {
                    () = ctx.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(350)) => {}
                }
                assert!(ctx.is_cancelled(), "a heartbeat ran after the ack and found the job gone");
                d.notify_one();
                Outcome::Acked
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    assert_eq!((report.acked, report.lease_lost), (1, 0), "{report:?}");
    assert_eq!(store.job_get(id).await, Err(onceq_core::Error::JobNotFound(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effectively_once_guard_records_a_job_its_handler_acked_as_completed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let q = QueueName::new("guarded").unwrap();
    let job = NewJob::new("7").dedup_id("order-7");
    store.enqueue(&q, job).await.unwrap();
    let done = Arc::new(Notify::new());
    let (s, d) = (store.clone(), done.clone());
    let guard = EffectivelyOnce::new(store.clone() as Arc<dyn IdempotencyStore>);
    let options = QueueOptions::concurrency(1).poll_wait(Duration::from_millis(100)).effectively_once(guard);
    let worker = Worker::builder(store.clone())
        .handle_with("guarded", options, move |ctx: JobContext, _: u32| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                s.ack(ctx.lease()).await.unwrap();
                d.notify_one();
                Outcome::Acked
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    assert_eq!((report.acked, report.lease_lost), (1, 0), "{report:?}");
    let begin =
        Begin { key: "onceq:guarded:order-7".into(), owner: "someone-else".into(), ttl_ms: 1000, fingerprint: None };
    assert_eq!(store.idempotency_begin(begin).await.unwrap(), BeginOutcome::Completed { result: b"null".to_vec() });
}
