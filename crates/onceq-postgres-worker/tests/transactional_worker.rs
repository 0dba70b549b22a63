//! Proves the transactional handler (`PgWorker::handle_in_transaction`): a job's effects, its
//! idempotency record and its ack commit together or not at all. A handler that writes and then
//! asks for a retry leaves no row and its job is redelivered; a handler whose lease was lost
//! meanwhile commits nothing; N jobs run through failures injected at every step (retry, panic,
//! a failed statement, a failed commit) leave exactly N rows and N recorded keys, whether the
//! worker acks each job in its transaction or the handler does; a job whose key an earlier job
//! completed (recorded by `onceq_worker::EffectivelyOnce`, the same keys) is acked without
//! running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The PostgreSQL store's own test helpers (schemas, the orders table), shared rather than copied.
#[path = "../../onceq-postgres/tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::{
    Backoff, Begin, BeginOutcome, Clock, Complete, DeliveryMode, Error, IdempotencyStore, Jitter, JobState,
    ManualClock, NewJob, QueueConfigPatch, QueueName, QueueStats, Store, StoreExt,
};
use onceq_postgres::{PgStore, PgTransaction};
use onceq_postgres_worker::{PgWorker, TransactionalOptions};
use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions};
use tokio::sync::Notify;

/// A store with room in its pool for a few transactional jobs plus leases and heartbeats.
async fn store(clock: Option<Arc<dyn Clock>>) -> (PgStore, common::SchemaGuard) {
    let schema = common::fresh_schema();
    let guard = common::SchemaGuard::of(&schema);
    let store = common::connect(common::options(&schema, clock).pool_size(8)).await;
    common::create_orders(&store).await;
    (store, guard)
}

/// Retries at once, so that redeliveries do not wait for the default backoff.
async fn queue(store: &PgStore, name: &str, delivery: DeliveryMode) -> QueueName {
    let q = QueueName::new(name).unwrap();
    let backoff = Backoff { initial_ms: 1, max_ms: 5, multiplier: 1.0, jitter: Jitter::None };
    let patch = QueueConfigPatch { delivery: Some(delivery), backoff: Some(backoff.into()), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    q
}

fn fast(concurrency: usize) -> QueueOptions {
    QueueOptions::concurrency(concurrency).poll_wait(Duration::from_millis(100))
}

async fn notified(done: Arc<Notify>) {
    tokio::time::timeout(Duration::from_secs(20), done.notified()).await.expect("the worker did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_retries_after_writing_leaves_no_row_and_its_job_is_redelivered() {
    let (store, _guard) = store(None).await;
    let q = queue(&store, "orders", DeliveryMode::AtLeastOnce).await;
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let seen_by_second = Arc::new(Mutex::new(None));
    let done = Arc::new(Notify::new());
    let (s, seen, d) = (store.clone(), seen_by_second.clone(), done.clone());
    let count = format!("SELECT count(*) FROM \"{}\".orders", store.schema());
    let worker = PgWorker::builder(store.clone())
        .handle_in_transaction(
            "orders",
            TransactionalOptions::new(fast(1)),
            move |ctx: JobContext, order: i64, tx: &mut PgTransaction| {
                let (s, seen, d, count) = (s.clone(), seen.clone(), d.clone(), count.clone());
                Box::pin(async move {
                    if ctx.attempt == 2 {
                        let rows: i64 = sqlx::query_scalar(&count).fetch_one(&mut **tx).await.unwrap();
                        *seen.lock().unwrap() = Some(rows);
                    }
                    common::insert_order(&s, tx, order, ctx.attempt).await;
                    if ctx.attempt == 1 {
                        return Outcome::retry_after(Duration::ZERO, "written, then asked for a retry");
                    }
                    d.notify_one();
                    Outcome::Done
                })
            },
        )
        .build()
        .unwrap();
    let report = worker.run(notified(done)).await;

    assert_eq!(*seen_by_second.lock().unwrap(), Some(0), "the first attempt's row was rolled back");
    assert_eq!(common::orders(&store).await, vec![(1, 2)]);
    assert_eq!(store.job_get(id).await, Err(Error::JobNotFound(id)));
    assert_eq!((report.leased, report.retried, report.acked, report.lease_lost), (2, 1, 1, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_lease_was_lost_commits_nothing() {
    let clock = ManualClock::at_default_start();
    let (store, _guard) = store(Some(clock.clone() as Arc<dyn Clock>)).await;
    let q = queue(&store, "orders", DeliveryMode::AtLeastOnce).await;
    let id = store.enqueue(&q, NewJob::new("5")).await.unwrap().id;
    let thief = Arc::new(Mutex::new(None));
    let done = Arc::new(Notify::new());
    let (s, c, t, d, q2) = (store.clone(), clock.clone(), thief.clone(), done.clone(), q.clone());
    let worker = PgWorker::builder(store.clone())
        .handle_in_transaction(
            "orders",
            TransactionalOptions::new(fast(1)),
            move |ctx: JobContext, order: i64, tx: &mut PgTransaction| {
                let (s, c, t, d, q) = (s.clone(), c.clone(), t.clone(), d.clone(), q2.clone());
                Box::pin(async move {
                    common::insert_order(&s, tx, order, ctx.attempt).await;
                    // The store's clock passes the lease's expiry (30 s) and another delivery
                    // takes the job before this one acks.
                    c.advance(60_000);
                    *t.lock().unwrap() = s.lease_one(&q).await.unwrap();
                    d.notify_one();
                    Outcome::Done
                })
            },
        )
        .build()
        .unwrap();
    let report = worker.run(notified(done)).await;

    assert_eq!(common::orders(&store).await, Vec::<(i64, i32)>::new(), "the effect committed without its ack");
    assert_eq!((report.acked, report.lease_lost), (0, 1), "{report:?}");
    let thief = thief.lock().unwrap().clone().expect("the job was delivered again");
    let job = store.job_get(id).await.unwrap();
    assert_eq!((thief.id, job.state, job.attempt), (id, JobState::Leased, 2));
    store.ack(thief.lease()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_jobs_through_injected_failures_leave_exactly_n_rows() {
    const N: i64 = 100;
    let (store, _guard) = store(None).await;
    let schema = store.schema().to_owned();
    let q = queue(&store, "orders", DeliveryMode::EffectivelyOnce).await;
    // Written in a job's transaction, a reference to no order fails that transaction's commit.
    let audit = format!(
        "CREATE TABLE \"{schema}\".audit (order_id bigint REFERENCES \"{schema}\".orders (id) \
         DEFERRABLE INITIALLY DEFERRED)"
    );
    sqlx::query(&audit).execute(store.pool()).await.unwrap();
    let jobs = (0..N).map(|n| NewJob::new(n.to_string()).dedup_id(format!("order-{n}"))).collect();
    store.job_enqueue(&q, jobs).await.unwrap();

    let s = store.clone();
    let bad_audit = format!("INSERT INTO \"{schema}\".audit (order_id) VALUES (-1)");
    let worker = PgWorker::builder(store.clone())
        .handle_in_transaction(
            "orders",
            TransactionalOptions::new(fast(4)).effectively_once(),
            move |ctx: JobContext, order: i64, tx: &mut PgTransaction| {
                let (s, bad_audit) = (s.clone(), bad_audit.clone());
                Box::pin(async move {
                    common::insert_order(&s, tx, order, ctx.attempt).await;
                    match (ctx.attempt, order % 5) {
                        (1, 0) => Outcome::retry_after(Duration::ZERO, "injected: retry after writing"),
                        (1, 1) => panic!("injected: panic after writing"),
                        (1, 2) => {
                            // A failed statement aborts the transaction: nothing after it commits.
                            let failed = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
                            assert!(failed.is_err());
                            Outcome::Done
                        }
                        (1, 3) => {
                            sqlx::query(&bad_audit).execute(&mut **tx).await.unwrap();
                            Outcome::Done // the commit fails
                        }
                        (_, 4) => {
                            // A handler may ack in its transaction itself.
                            let acked = s.job_ack_in(tx, &[ctx.lease()]).await.unwrap();
                            assert_eq!(acked, vec![Ok(())]);
                            Outcome::Acked
                        }
                        _ => Outcome::DoneWith(serde_json::json!({ "order": order })),
                    }
                })
            },
        )
        .build()
        .unwrap();
    let (watch, q2) = (store.clone(), q.clone());
    let report = worker
        .run(async move {
            let drained = async {
                while watch.queue_get(&q2).await.unwrap().stats != QueueStats::default() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), drained).await.expect("the jobs were not all processed");
        })
        .await;

    let orders = common::orders(&store).await;
    let expected: Vec<(i64, i32)> = (0..N).map(|n| (n, if n % 5 == 4 { 1 } else { 2 })).collect();
    assert_eq!(orders, expected, "every order exactly once, by the attempt that committed");
    let n = N as u64;
    assert_eq!(
        (report.leased, report.acked, report.retried, report.panicked, report.lease_lost),
        (n + n * 4 / 5, n, n * 3 / 5, n / 5, 0),
        "{report:?}"
    );
    let recorded: Vec<(String, Vec<u8>)> =
        sqlx::query_as(&format!("SELECT key, result FROM \"{schema}\".idempotency WHERE state = 1 ORDER BY key"))
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(recorded.len(), N as usize, "one completed key per job");
    let result = |key: &str| {
        let (_, bytes) = recorded.iter().find(|(k, _)| k == key).unwrap();
        serde_json::from_slice::<serde_json::Value>(bytes).unwrap()
    };
    assert_eq!(result("onceq:orders:order-7"), serde_json::json!({ "order": 7 }));
    assert_eq!(result("onceq:orders:order-9"), serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_effect_is_recorded_already_is_acked_without_running() {
    let (store, _guard) = store(None).await;
    let q = queue(&store, "orders", DeliveryMode::EffectivelyOnce).await;
    let id = store.enqueue(&q, NewJob::new("9").dedup_id("order-9")).await.unwrap().id;
    // An earlier job with this dedup id had its effect recorded by the worker's own guard.
    let earlier = store.lease_one(&q).await.unwrap().unwrap();
    let key = EffectivelyOnce::new(Arc::new(store.clone()) as Arc<dyn IdempotencyStore>).key(&earlier);
    let begin = Begin { key: key.clone(), owner: "earlier".into(), ttl_ms: 60_000, fingerprint: None };
    assert_eq!(store.idempotency_begin(begin).await.unwrap(), BeginOutcome::Acquired);
    let complete = Complete { key, owner: "earlier".into(), result: b"{}".to_vec(), retention_ms: 60_000 };
    store.idempotency_complete(complete).await.unwrap();
    store.release(earlier.lease(), None).await.unwrap();

    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let worker = PgWorker::builder(store.clone())
        .handle_in_transaction(
            "orders",
            TransactionalOptions::new(fast(1)).effectively_once(),
            move |_ctx: JobContext, _order: i64, _tx: &mut PgTransaction| {
                r.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Outcome::Done })
            },
        )
        .build()
        .unwrap();
    let watch = store.clone();
    let report = worker
        .run(async move {
            let gone = async {
                while watch.job_get(id).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(20), gone).await.expect("the job was not acked");
        })
        .await;

    assert_eq!(ran.load(Ordering::SeqCst), 0, "the handler ran for an effect already recorded");
    assert_eq!((report.leased, report.acked), (1, 1), "{report:?}");
    assert_eq!(common::orders(&store).await, Vec::<(i64, i32)>::new());
}

#[tokio::test]
async fn options_that_would_guard_twice_are_refused_at_build() {
    let (store, _guard) = store(None).await;
    fn handler(_: JobContext, _: i64, _: &mut PgTransaction) -> onceq_postgres_worker::TransactionFuture<'_> {
        Box::pin(async { Outcome::Done })
    }
    let guard = EffectivelyOnce::new(Arc::new(store.clone()) as Arc<dyn IdempotencyStore>);
    let twice = TransactionalOptions::new(QueueOptions::default().effectively_once(guard));
    let refused = PgWorker::builder(store.clone()).handle_in_transaction("orders", twice, handler).build();
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.contains("TransactionalOptions")), "{refused:?}");
    let mut forever = TransactionalOptions::default();
    forever.retention = Duration::ZERO;
    let refused = PgWorker::builder(store.clone()).handle_in_transaction("orders", forever, handler).build();
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.contains("retention")), "{refused:?}");
    let bad_name = PgWorker::builder(store).handle_in_transaction("bad name", TransactionalOptions::default(), handler);
    assert!(matches!(bad_name.build(), Err(Error::InvalidRequest(_))));
}

/// A transactional handler's outputs (`JobContext::produce`) commit in the job's transaction,
/// with its effects and its ack: a first attempt that writes, produces and retries leaves no row
/// and no output; the second leaves one of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_jobs_commit_with_the_effects_and_the_ack() {
    let (store, _guard) = store(None).await;
    let q = queue(&store, "orders", DeliveryMode::AtLeastOnce).await;
    let id = store.enqueue(&q, NewJob::new("7")).await.unwrap().id;
    let emails = QueueName::new("emails").unwrap();
    let done = Arc::new(Notify::new());
    let (s, d) = (store.clone(), done.clone());
    let worker = PgWorker::builder(store.clone())
        .handle_in_transaction(
            "orders",
            TransactionalOptions::new(fast(1)),
            move |ctx: JobContext, order: i64, tx: &mut PgTransaction| {
                let (s, d) = (s.clone(), d.clone());
                Box::pin(async move {
                    common::insert_order(&s, tx, order, ctx.attempt).await;
                    ctx.produce("emails", NewJob::new(format!("\"receipt for {order}\""))).unwrap();
                    if ctx.attempt == 1 {
                        return Outcome::retry_after(Duration::ZERO, "written and produced, then asked for a retry");
                    }
                    d.notify_one();
                    Outcome::Done
                })
            },
        )
        .build()
        .unwrap();
    let report = worker.run(notified(done)).await;

    assert_eq!(common::orders(&store).await, vec![(7, 2)]);
    assert_eq!(store.job_get(id).await, Err(Error::JobNotFound(id)));
    let receipts = store.queue_get(&emails).await.unwrap().stats;
    assert_eq!(receipts.ready, 1, "one receipt: the retried attempt's was rolled back with its row");
    assert_eq!((report.retried, report.acked), (1, 1), "{report:?}");
}
