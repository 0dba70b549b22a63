//! The effectively-once gate on its own, over the real embedded idempotency store: one key
//! derivation (a dedup id too long for a key is keyed by its digest, so its job is guarded
//! instead of refused forever); a `complete` whose reply is lost is sent again and lands once,
//! and one that is conflicted after a lost reply asks the store whether it landed; what a
//! failed begin makes of the delivery; and a handler's `Release` gives the job back without
//! burning its attempt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::idempotency::KEY_LEN_MAX;
use onceq_core::{
    Begin, BeginOutcome, Complete, Error, IdempotencyStore, JobId, NewJob, QueueName, Result, Store, StoreExt,
};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::gate::{begin_failed, idempotency_key, Claims, Decision, Gate, UNAVAILABLE_RETRY};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};

fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    (dir, store)
}

#[test]
fn keys_name_the_queue_and_the_dedup_id_or_its_digest() {
    let q = QueueName::new("payments").unwrap();
    assert_eq!(idempotency_key("onceq:", &q, JobId::new(7), Some("order-42")), "onceq:payments:order-42");
    assert_eq!(idempotency_key("onceq:", &q, JobId::new(7), None), "onceq:payments:#7");
    let long_queue = QueueName::new("q".repeat(128)).unwrap();
    let long_dedup = "d".repeat(256);
    let key = idempotency_key(&"p".repeat(56), &long_queue, JobId::new(7), Some(&long_dedup));
    assert!(key.len() <= KEY_LEN_MAX, "{} bytes", key.len());
    assert!(key.contains(":~"), "{key}");
    let other = idempotency_key(&"p".repeat(56), &long_queue, JobId::new(7), Some(&"e".repeat(256)));
    assert_ne!(key, other, "distinct dedup ids keep distinct keys");
    assert!(Gate::new(&"p".repeat(57), Duration::from_secs(1), Duration::from_secs(1)).is_err());
}

/// The real store, with the replies of the first `lose` completes lost after they landed.
struct LostReplies {
    store: Arc<SqliteStore>,
    lose: AtomicUsize,
    completes: AtomicUsize,
}

#[async_trait]
impl Claims for LostReplies {
    async fn begin(&mut self, begin: Begin) -> Result<BeginOutcome> {
        self.store.idempotency_begin(begin).await
    }
    async fn complete(&mut self, complete: Complete) -> Result<()> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        let landed = self.store.idempotency_complete(complete).await;
        if self.lose.load(Ordering::SeqCst) > 0 {
            self.lose.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Unavailable("the reply was lost".into()));
        }
        landed
    }
    async fn release(&mut self, key: &str, owner: &str) -> Result<()> {
        self.store.idempotency_release(key, owner).await
    }
    fn retries_unknown(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_complete_whose_reply_is_lost_is_resolved_and_lands_once() {
    let (_dir, store) = open();
    let q = QueueName::new("payments").unwrap();
    let gate = Gate::new("onceq:", Duration::from_secs(10), Duration::from_secs(60)).unwrap();
    let mut claims = LostReplies { store: store.clone(), lose: AtomicUsize::new(1), completes: AtomicUsize::new(0) };
    let key = gate.key(&q, JobId::new(1), Some("a"));
    let Decision::Run(claim) = gate.begin(&mut claims, &q, key.clone(), "w/1".into()).await.unwrap() else {
        panic!("a fresh key is acquired");
    };
    // The first complete lands and its reply is lost; the second is refused (not in progress any
    // more); a begin of the same owner finds it completed.
    gate.complete(&mut claims, &claim, &serde_json::json!({"receipt": 9})).await.unwrap();
    assert_eq!(claims.completes.load(Ordering::SeqCst), 2);
    let again = Begin { key, owner: "w/2".into(), ttl_ms: 1000, fingerprint: None };
    assert_eq!(
        store.idempotency_begin(again).await.unwrap(),
        BeginOutcome::Completed { result: br#"{"receipt":9}"#.to_vec() }
    );
}

#[tokio::test]
async fn a_failed_begin_releases_when_the_store_is_down_and_retries_when_it_refuses() {
    assert_eq!(begin_failed(&Error::Unavailable("down".into())), Outcome::Release { after: Some(UNAVAILABLE_RETRY) });
    assert!(matches!(begin_failed(&Error::invalid("bad key")), Outcome::Retry { after: None, .. }));
}

#[tokio::test]
async fn a_handler_release_gives_the_job_back_without_burning_its_attempt() {
    let (_dir, store) = open();
    let q = QueueName::new("later").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let options = QueueOptions::concurrency(1).poll_wait(Duration::from_millis(50));
    let worker = Worker::builder(store.clone())
        .handle_with("later", options, move |ctx: JobContext, _: u32| {
            let mut seen = seen.lock().unwrap();
            seen.push(ctx.attempt);
            let outcome = if seen.len() < 3 { Outcome::release_for(Duration::from_millis(10)) } else { Outcome::Done };
            async move { outcome }
        })
        .build()
        .unwrap();
    let s = store.clone();
    let report = worker
        .run(async move {
            for _ in 0..200 {
                if matches!(s.job_get(id).await, Err(Error::JobNotFound(_))) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    assert_eq!(*attempts.lock().unwrap(), vec![1, 1, 1], "a released lease does not count as an attempt");
    assert_eq!(report.released_by_handler, 2);
    assert_eq!(report.acked, 1);
    assert!(matches!(store.job_get(id).await, Err(Error::JobNotFound(_))), "acked and gone");
}

#[test]
fn a_worker_id_too_long_for_a_claim_owner_is_refused_at_build() {
    let (_dir, store) = open();
    let mut options = onceq_worker::WorkerOptions::default();
    options.worker_id = "w".repeat(224);
    let built = Worker::builder(store.clone())
        .options(options)
        .handle("q", |_: JobContext, _: u32| async { Outcome::Done })
        .build();
    assert!(matches!(built, Err(Error::InvalidRequest(ref m)) if m.contains("worker_id")), "{:?}", built.err());
    let mut options = onceq_worker::WorkerOptions::default();
    options.worker_id = "w".repeat(223);
    assert!(Worker::builder(store)
        .options(options)
        .handle("q", |_: JobContext, _: u32| async { Outcome::Done })
        .build()
        .is_ok());
}
