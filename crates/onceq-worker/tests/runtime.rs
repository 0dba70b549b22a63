//! The worker runtime on the embedded store: every outcome settles the job as documented,
//! heartbeats keep a slow job's lease, a lost lease is learned and nothing is acked for it, the
//! deadline cancels, panics retry with their message, shutdown releases what it cannot finish, and
//! a cancel reaches the running handler.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Clock, JobState, ManualClock, NewJob, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker, WorkerOptions};
use serde::Deserialize;
use tokio::sync::Notify;

fn store(dir: &tempfile::TempDir, clock: Option<Arc<dyn Clock>>) -> Arc<SqliteStore> {
    let mut options = SqliteOptions::new(dir.path());
    if let Some(clock) = clock {
        options = options.clock(clock);
    }
    Arc::new(SqliteStore::open(options).unwrap())
}

#[derive(Deserialize)]
struct Email {
    to: String,
}

fn fast(options: QueueOptions) -> QueueOptions {
    options.poll_wait(Duration::from_millis(200))
}

/// Runs `worker` until `done` is notified (or 20 s pass, which fails the test).
async fn until(done: Arc<Notify>) {
    tokio::time::timeout(Duration::from_secs(20), done.notified()).await.expect("the worker did not finish in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_every_job_once_and_acks_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("emails").unwrap();
    let jobs = (0..200).map(|i| NewJob::new(format!(r#"{{"to":"user{i}@example.com"}}"#))).collect();
    store.job_enqueue(&q, jobs).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("emails", fast(QueueOptions::concurrency(16)), move |ctx: JobContext, email: Email| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                assert_eq!(ctx.attempt, 1);
                let mut seen = s.lock().unwrap();
                seen.push(email.to);
                if seen.len() == 200 {
                    d.notify_one();
                }
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    assert_eq!((report.leased, report.acked), (200, 200));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200, "every job ran exactly once");
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased, stats.scheduled, stats.dead), (0, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_fail_panic_and_bad_payloads_settle_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("work").unwrap();
    store.queue_upsert(&q, QueueConfigPatch { max_attempts: Some(2), ..Default::default() }).await.unwrap();
    let ids: Vec<_> = store
        .job_enqueue(
            &q,
            vec![
                NewJob::new(r#""retry""#),
                NewJob::new(r#""fail""#),
                NewJob::new(r#""panic""#),
                NewJob::new("not json"),
            ],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let runs = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (r, d) = (runs.clone(), done.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("work", fast(QueueOptions::concurrency(4)), move |ctx: JobContext, what: String| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                // retry: twice (attempts 1, 2 → dead); fail: once; panic: twice.
                if r.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                    d.notify_one();
                }
                match what.as_str() {
                    "retry" => Outcome::retry_after(Duration::ZERO, format!("not yet (attempt {})", ctx.attempt)),
                    "fail" => Outcome::fail("permanently broken"),
                    _ => panic!("boom on attempt {}", ctx.attempt),
                }
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    assert_eq!((report.retried, report.failed, report.panicked), (2, 2, 2), "{report:?}");
    let errors = |job: onceq_core::Job| job.errors.into_iter().map(|e| (e.attempt, e.error)).collect::<Vec<_>>();
    let retried = store.job_get(ids[0]).await.unwrap();
    assert_eq!(retried.state, JobState::Dead);
    assert_eq!(errors(retried), vec![(1, "not yet (attempt 1)".into()), (2, "not yet (attempt 2)".into())]);
    let failed = store.job_get(ids[1]).await.unwrap();
    assert_eq!((failed.state, errors(failed)), (JobState::Dead, vec![(1, "permanently broken".into())]));
    let panicked = store.job_get(ids[2]).await.unwrap();
    assert_eq!(panicked.state, JobState::Dead);
    assert_eq!(
        errors(panicked),
        vec![
            (1, "the handler panicked: boom on attempt 1".into()),
            (2, "the handler panicked: boom on attempt 2".into())
        ]
    );
    let unparsable = store.job_get(ids[3]).await.unwrap();
    assert_eq!(unparsable.state, JobState::Dead);
    assert!(
        unparsable.errors[0].error.starts_with("the payload does not parse as alloc::string::String"),
        "{:?}",
        unparsable.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_slow_jobs_lease() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("slow").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let done = Arc::new(Notify::new());
    let d = done.clone();
    let options = fast(QueueOptions::concurrency(1)).visibility_timeout(Duration::from_millis(300));
    let worker = Worker::builder(store.clone())
        .handle_with("slow", options, move |ctx: JobContext, _: u32| {
            let d = d.clone();
            async move {
                // Four visibility timeouts long: only heartbeats keep the lease.
                tokio::time::sleep(Duration::from_millis(1200)).await;
                assert!(!ctx.is_cancelled());
                d.notify_one();
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    assert_eq!((report.leased, report.acked, report.lease_lost), (1, 1, 0));
    assert_eq!(store.job_get(id).await, Err(onceq_core::Error::JobNotFound(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_cancels_the_handler_and_nothing_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = store(&dir, Some(clock.clone()));
    let q = QueueName::new("lost").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let started = Arc::new(Notify::new());
    let done = Arc::new(Notify::new());
    let (s, d) = (started.clone(), done.clone());
    let options = fast(QueueOptions::concurrency(1)).visibility_timeout(Duration::from_millis(600));
    let worker = Worker::builder(store.clone())
        .handle_with("lost", options, move |ctx: JobContext, _: u32| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                s.notify_one();
                ctx.cancelled().await; // the heartbeat finds the lease gone
                d.notify_one();
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let clock2 = clock.clone();
    let report = worker
        .run(async move {
            started.notified().await;
            clock2.advance(10_000); // the store's clock passes the lease's expiry
            until(done).await;
        })
        .await;
    assert_eq!((report.acked, report.lease_lost), (0, 1), "{report:?}");
    let job = store.job_get(id).await.unwrap();
    assert_eq!((job.state, job.errors[0].error.as_str()), (JobState::Ready, "lease expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_running_handler_at_its_next_heartbeat_and_the_job_ends_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("cancelled").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let started = Arc::new(Notify::new());
    let done = Arc::new(Notify::new());
    let (s, d) = (started.clone(), done.clone());
    let options = fast(QueueOptions::concurrency(1)).visibility_timeout(Duration::from_millis(600));
    let worker = Worker::builder(store.clone())
        .handle_with("cancelled", options, move |ctx: JobContext, _: u32| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                s.notify_one();
                ctx.cancelled().await; // the heartbeat hears job_cancelled
                d.notify_one();
                Outcome::Retry { after: None, reason: "stopped: cancelled".into() }
            }
        })
        .build()
        .unwrap();
    let canceller = store.clone();
    let report = worker
        .run(async move {
            started.notified().await;
            let marked = canceller.job_cancel(id).await.unwrap();
            assert_eq!(marked.state, JobState::Leased, "a running job is marked, not taken away");
            until(done).await;
        })
        .await;
    assert_eq!((report.acked, report.lease_lost, report.cancelled), (0, 0, 1), "{report:?}");
    let job = store.job_get(id).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    assert_eq!(job.errors.last().map(|e| e.error.as_str()), Some("stopped: cancelled"));
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.leased, stats.cancelled), (0, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_cancels_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("deadline").unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let done = Arc::new(Notify::new());
    let d = done.clone();
    let mut options = fast(QueueOptions::concurrency(1)).deadline(Duration::from_millis(200));
    options.deadline_grace = Duration::from_millis(100);
    let worker = Worker::builder(store.clone())
        .handle_with("deadline", options, move |_ctx: JobContext, _: u32| {
            let d = d.clone();
            async move {
                d.notify_one();
                // Ignores its cancellation token: the worker drops it after the grace.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let report = worker
        .run(async move {
            until(done).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
        })
        .await;
    assert!(report.deadline_exceeded >= 1, "{report:?}");
    let job = store.job_get(id).await.unwrap();
    assert!(job.errors[0].error.starts_with("the handler exceeded its deadline"), "{:?}", job.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_what_the_grace_cannot_finish() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("stubborn").unwrap();
    let ids: Vec<_> = store
        .job_enqueue(&q, vec![NewJob::new("1"), NewJob::new("2")])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    let started = Arc::new(AtomicUsize::new(0));
    let all_started = Arc::new(Notify::new());
    let (s, a) = (started.clone(), all_started.clone());
    let mut options = fast(QueueOptions::concurrency(2));
    options.deadline_grace = Duration::from_millis(100);
    let worker = Worker::builder(store.clone())
        .options({
            let mut o = WorkerOptions::default();
            o.shutdown_grace = Duration::from_millis(300);
            o
        })
        .handle_with("stubborn", options, move |_ctx: JobContext, _: u32| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                if s.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                    a.notify_one();
                }
                tokio::time::sleep(Duration::from_secs(3600)).await; // never finishes by itself
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(all_started)).await;
    assert_eq!((report.acked, report.released), (0, 2), "{report:?}");
    for id in ids {
        let job = store.job_get(id).await.unwrap();
        // Ready at once, and the interrupted attempt does not count.
        assert_eq!((job.state, job.attempt, job.errors.len()), (JobState::Ready, 0, 0));
    }
}

#[tokio::test]
async fn bad_options_are_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let handler = |_: JobContext, _: u32| async { Outcome::Done };
    let zero = QueueOptions::concurrency(0);
    assert!(matches!(
        Worker::builder(store.clone()).handle_with("q", zero, handler).build().err(),
        Some(onceq_core::Error::InvalidRequest(_))
    ));
    assert!(matches!(
        Worker::builder(store.clone()).handle("bad name", handler).build().err(),
        Some(onceq_core::Error::InvalidRequest(_))
    ));
    assert!(matches!(
        Worker::builder(store.clone()).handle("q", handler).handle("q", handler).build().err(),
        Some(onceq_core::Error::InvalidRequest(_))
    ));
    // Issue 22: an effectively-once claim that would end while the handler may still run.
    let mut guard = onceq_worker::EffectivelyOnce::new(store.clone());
    guard.claim_ttl = Duration::from_secs(10);
    let short_claim = QueueOptions::concurrency(1).deadline(Duration::from_secs(9)).effectively_once(guard.clone());
    let refused = Worker::builder(store.clone()).handle_with("q", short_claim, handler).build().err();
    assert!(
        matches!(&refused, Some(onceq_core::Error::InvalidRequest(m)) if m.contains("must outlast the handler's deadline")),
        "{refused:?}"
    );
    let fits = QueueOptions::concurrency(1).deadline(Duration::from_secs(5)).effectively_once(guard);
    assert!(Worker::builder(store.clone()).handle_with("q", fits, handler).build().is_ok());
    assert!(matches!(Worker::builder(store).build().err(), Some(onceq_core::Error::InvalidRequest(_))));
}

/// Snooze (issue 22): the job comes back after the delay and its attempt is not spent, however
/// often it snoozes; its attempts stay for real failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snoozed_job_runs_again_after_its_delay_without_spending_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, None);
    let q = QueueName::new("snoozing").unwrap();
    store.queue_upsert(&q, QueueConfigPatch { max_attempts: Some(2), ..Default::default() }).await.unwrap();
    let id = store.enqueue(&q, NewJob::new("1")).await.unwrap().id;
    let seen: Arc<std::sync::Mutex<Vec<(u32, std::time::Instant)>>> = Arc::default();
    let done = Arc::new(Notify::new());
    let (s, d) = (seen.clone(), done.clone());
    let worker = Worker::builder(store.clone())
        .handle_with("snoozing", fast(QueueOptions::concurrency(1)), move |ctx: JobContext, _: u32| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let runs = {
                    let mut seen = s.lock().unwrap();
                    seen.push((ctx.attempt, std::time::Instant::now()));
                    seen.len()
                };
                // Three snoozes: more than max_attempts allows leases that count.
                if runs <= 3 {
                    return Outcome::snooze(Duration::from_millis(150));
                }
                d.notify_one();
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let report = worker.run(until(done)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|(attempt, _)| *attempt == 1), "a snooze spent an attempt: {seen:?}");
    for pair in seen.windows(2) {
        assert!(pair[1].1 - pair[0].1 >= Duration::from_millis(150), "ran again before its delay: {seen:?}");
    }
    assert_eq!((report.acked, report.retried, report.failed, report.released_by_handler), (1, 0, 0, 3), "{report:?}");
    assert!(store.job_get(id).await.is_err(), "the job is acked and gone");
}
