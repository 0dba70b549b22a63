//! Effectively-once on the embedded store: a delivery whose effect was already recorded is acked
//! without running the handler (a crash after complete and before ack), a delivery whose key
//! another worker holds is deferred without burning an attempt, and every effect happens once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{
    Begin, BeginOutcome, Complete, DeliveryMode, IdempotencyStore, JobState, LeaseOptions, ManualClock, NewJob,
    QueueConfigPatch, QueueName, Store, StoreExt,
};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

async fn setup(clock: Option<Arc<ManualClock>>) -> (tempfile::TempDir, Arc<SqliteStore>, QueueName) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = SqliteOptions::new(dir.path());
    if let Some(clock) = clock {
        options = options.clock(clock);
    }
    let store = Arc::new(SqliteStore::open(options).unwrap());
    let q = QueueName::new("payments").unwrap();
    let patch = QueueConfigPatch {
        delivery: Some(DeliveryMode::EffectivelyOnce),
        visibility_timeout_ms: Some(1000),
        ..Default::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    (dir, store, q)
}

fn guarded(store: &Arc<SqliteStore>) -> QueueOptions {
    QueueOptions::concurrency(4)
        .poll_wait(Duration::from_millis(100))
        .effectively_once(EffectivelyOnce::new(store.clone() as Arc<dyn IdempotencyStore>))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_effect_happens_once_and_its_result_is_recorded() {
    let (_dir, store, q) = setup(None).await;
    let jobs = (0..40).map(|i| NewJob::new(format!("{i}")).dedup_id(format!("payment-{i}"))).collect();
    store.job_enqueue(&q, jobs).await.unwrap();
    let charged = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (c, d) = (charged.clone(), done.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("payments", guarded(&store), move |_ctx: JobContext, amount: u32| {
            let (c, d) = (c.clone(), d.clone());
            async move {
                if c.fetch_add(1, Ordering::SeqCst) + 1 == 40 {
                    d.notify_one();
                }
                Outcome::DoneWith(serde_json::json!({ "charged": amount }))
            }
        })
        .build()
        .unwrap();
    let report = worker.run(async move { done.notified().await }).await;
    assert_eq!((report.acked, report.duplicates_skipped), (40, 0));
    assert_eq!(charged.load(Ordering::SeqCst), 40);
    let outcome = store
        .idempotency_begin(Begin {
            key: "onceq:payments:payment-7".into(),
            owner: "auditor".into(),
            ttl_ms: 1000,
            fingerprint: None,
        })
        .await
        .unwrap();
    assert_eq!(outcome, BeginOutcome::Completed { result: br#"{"charged":7}"#.to_vec() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_complete_is_acked_without_running() {
    let clock = ManualClock::at_default_start();
    let (_dir, store, q) = setup(Some(clock.clone())).await;
    let id = store.enqueue(&q, NewJob::new("42").dedup_id("order-42")).await.unwrap().id;
    // A first worker leases the job, applies the effect, records it, and dies before its ack.
    let first = store.job_lease(&q, LeaseOptions::default()).await.unwrap().pop().unwrap();
    let guard = EffectivelyOnce::new(store.clone() as Arc<dyn IdempotencyStore>);
    let key = guard.key(&first);
    assert_eq!(key, "onceq:payments:order-42");
    let begin = Begin { key: key.clone(), owner: "dead-worker".into(), ttl_ms: 60_000, fingerprint: None };
    assert_eq!(store.idempotency_begin(begin).await.unwrap(), BeginOutcome::Acquired);
    let complete = Complete { key, owner: "dead-worker".into(), result: b"null".to_vec(), retention_ms: 60_000 };
    store.idempotency_complete(complete).await.unwrap();
    clock.advance(1000); // its lease expires: the job is redelivered
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = Worker::builder(store.clone())
        .handle_with("payments", guarded(&store), move |_ctx: JobContext, _: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Outcome::Done }
        })
        .build()
        .unwrap();
    let store2 = store.clone();
    let report = worker
        .run(async move {
            for _ in 0..200 {
                if store2.job_get(id).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the handler must not run again");
    assert_eq!((report.duplicates_skipped, report.acked), (1, 1));
    assert_eq!(store.job_get(id).await, Err(onceq_core::Error::JobNotFound(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_held_elsewhere_defers_the_job_without_burning_an_attempt() {
    let (_dir, store, q) = setup(None).await;
    let id = store.enqueue(&q, NewJob::new("1").dedup_id("order-1")).await.unwrap().id;
    let begin =
        Begin { key: "onceq:payments:order-1".into(), owner: "other".into(), ttl_ms: 60_000, fingerprint: None };
    assert_eq!(store.idempotency_begin(begin).await.unwrap(), BeginOutcome::Acquired);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = Worker::builder(store.clone())
        .handle_with("payments", guarded(&store), move |_ctx: JobContext, _: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            async { Outcome::Done }
        })
        .build()
        .unwrap();
    let store2 = store.clone();
    let report = worker
        .run(async move {
            for _ in 0..200 {
                if store2.job_get(id).await.map(|j| j.state) == Ok(JobState::Scheduled) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!((report.deferred, report.released), (1, 1), "{report:?}");
    let job = store.job_get(id).await.unwrap();
    assert_eq!((job.state, job.attempt, job.errors.len()), (JobState::Scheduled, 0, 0));
}
