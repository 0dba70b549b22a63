//! Conformance functions: one per behaviour of `docs/semantics.md` and one per invariant of
//! DESIGN.md that can be checked at the seam. Every backend runs all of them, unchanged, through
//! [`conformance_suite!`](crate::conformance_suite).
//!
//! Each function opens its own store with [`Backend::open`] and depends on no other. Most run on a
//! [`ManualClock`], so every time they assert is exact; the long-poll ones run on a [`SystemClock`]
//! with short real delays, because what they test is waking up in real time.
//!
//! Where `docs/semantics.md` leaves a value open (the `run_at` of a dead job, the wording of an
//! `InvalidRequest` the store phrases itself), the function says so and asserts what is pinned
//! down. Errors that come from the shared validation in `onceq_core` are compared whole.
//!
//! Invariant 1 (durability across `kill -9`) needs a real process to kill; the crash test checks it.

// These functions are tests: a panic is how they report a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::limits::{
    ATTEMPTS_MAX, BACKOFF_MULTIPLIER_MAX, DEAD_PAGE_MAX, DEDUP_ID_LEN_MAX, DEDUP_WINDOW_MS_MAX, DELAY_MS_MAX,
    ENQUEUE_BATCH_MAX, ERROR_TEXT_BYTES_MAX, HEADERS_COUNT_MAX, HEADER_NAME_LEN_MAX, HEADER_VALUE_LEN_MAX,
    LEASE_BATCH_MAX, PAYLOAD_BYTES_MAX, PRIORITY_MAX, PRIORITY_MIN, QUEUE_NAME_LEN_MAX, REDRIVE_IDS_MAX,
    SETTLE_BATCH_MAX, VISIBILITY_TIMEOUT_MS_MAX, WAIT_MS_MAX,
};
use onceq_core::store::validate;
use onceq_core::{
    truncate_error_text, AttemptError, Backoff, BackoffPatch, Clock, DeadList, DeadPage, DeliveryMode, Enqueued, Error,
    ErrorKind, Extend, Fail, Jitter, Job, JobId, JobState, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, ManualClock,
    Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, QueueStats, Redrive, Release,
    Result, Store, StoreExt, SystemClock, Timestamp,
};
use tokio::sync::Barrier;
use tokio::task::{JoinHandle, JoinSet};

use crate::Backend;

// ---------------------------------------------------------------------------------------------
// Fixture and expectations shared by the conformance functions.
// ---------------------------------------------------------------------------------------------

/// A job id no conformance function ever reaches.
const UNKNOWN_ID: JobId = JobId::new(1 << 40);

/// How long a long-poll test lets its lease wait.
const LONG_WAIT_MS: u64 = 10_000;
/// A woken long poll must return well before its wait ends: within this.
const PROMPTLY: Duration = Duration::from_secs(3);
/// Real time a long-poll test lets pass before it acts, so the lease is already waiting.
const NUDGE: Duration = Duration::from_millis(250);
/// Short real delay (scheduled job, nack delay, visibility timeout) in long-poll tests. The
/// waiting lease starts after the call that set the delay returned, and must still wait 200 ms
/// (see `check_woke`): the rest is slack for that call's commit, which on a busy machine's disk
/// took over 100 ms (a 300 ms delay failed there).
const SHORT_MS: u64 = 1_000;
/// Bound on any call a test awaits that could hang on a broken store.
const HANG: Duration = Duration::from_secs(20);

/// One store opened for one conformance function, with its clock.
struct Fixture<S> {
    /// The store under test, shareable with spawned tasks.
    store: Arc<S>,
    /// The store's one clock.
    clock: Arc<dyn Clock>,
    /// Keeps the backend's resources (a temporary directory, a schema) alive; dropped after `store`.
    _guard: Box<dyn Any + Send + Sync>,
}

/// Opens a fresh store on a [`ManualClock`] standing at its default start.
async fn open_manual<B: Backend>(backend: &B) -> (Fixture<B::Store>, Arc<ManualClock>) {
    let manual = ManualClock::at_default_start();
    let clock: Arc<dyn Clock> = manual.clone();
    let opened = backend.open(clock.clone()).await;
    (Fixture { store: Arc::new(opened.store), clock, _guard: opened.guard }, manual)
}

/// Opens a fresh store on a real [`SystemClock`].
async fn open_system<B: Backend>(backend: &B) -> Fixture<B::Store> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let opened = backend.open(clock.clone()).await;
    Fixture { store: Arc::new(opened.store), clock, _guard: opened.guard }
}

impl<S: Store + 'static> Fixture<S> {
    /// The store's current time.
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Enqueues jobs that must all be new; returns their ids.
    async fn enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Vec<JobId> {
        let enqueued = self.store.job_enqueue(queue, jobs).await.unwrap();
        assert!(enqueued.iter().all(|e| !e.duplicate), "expected only new jobs, got {enqueued:?}");
        enqueued.into_iter().map(|e| e.id).collect()
    }

    /// Enqueues one job that must be new; returns its id.
    async fn enqueue_one(&self, queue: &QueueName, job: NewJob) -> JobId {
        let ids = self.enqueue(queue, vec![job]).await;
        assert_eq!(ids.len(), 1, "one job enqueued, ids {ids:?} returned");
        ids[0]
    }

    /// Leases without waiting.
    async fn lease(&self, queue: &QueueName, max_jobs: u32, visibility_timeout_ms: Option<u64>) -> Vec<LeasedJob> {
        self.store.job_lease(queue, LeaseOptions { max_jobs, visibility_timeout_ms, wait_ms: 0 }).await.unwrap()
    }

    /// Leases exactly one job, without waiting.
    async fn lease_one(&self, queue: &QueueName, visibility_timeout_ms: Option<u64>) -> LeasedJob {
        let mut jobs = self.lease(queue, 1, visibility_timeout_ms).await;
        assert_eq!(jobs.len(), 1, "expected one job to lease, got {jobs:?}");
        jobs.remove(0)
    }

    /// Asserts that the queue hands out nothing now.
    async fn lease_none(&self, queue: &QueueName) {
        assert_eq!(self.lease(queue, LEASE_BATCH_MAX, None).await, Vec::<LeasedJob>::new(), "nothing may be leased");
    }

    /// Reads a job that must exist.
    async fn get(&self, id: JobId) -> Job {
        self.store.job_get(id).await.unwrap()
    }

    /// Reads a queue's stats.
    async fn stats(&self, queue: &QueueName) -> QueueStats {
        self.store.queue_get(queue).await.unwrap().stats
    }

    /// Creates or updates a queue.
    async fn upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> QueueConfig {
        self.store.queue_upsert(queue, patch).await.unwrap()
    }

    /// Enqueues `count` jobs into a queue where nothing else is ready, leases and fails each;
    /// returns their ids.
    async fn enqueue_dead(&self, queue: &QueueName, count: usize) -> Vec<JobId> {
        let ids = self.enqueue(queue, (0..count).map(|i| NewJob::new(format!("doomed {i}"))).collect()).await;
        let leased = self.lease(queue, u32::try_from(count).unwrap(), None).await;
        assert_eq!(ids_of(&leased), ids, "enqueue_dead needs a queue with nothing else ready");
        for job in &leased {
            assert_eq!(self.store.fail(job.lease(), "doomed").await, Ok(()));
        }
        ids
    }

    /// Everything a failed call must not change: the queue list (with stats) and these jobs.
    async fn snapshot(&self, ids: &[JobId]) -> (Vec<QueueInfo>, Vec<Result<Job>>) {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(self.store.job_get(*id).await);
        }
        (self.store.queue_list().await.unwrap(), jobs)
    }

    /// Asserts that ack, nack, extend and fail presenting `lease` are each rejected with
    /// `expected`, and that the job reads the same before and after (Invariant 3).
    async fn assert_settles_rejected(&self, lease: LeaseRef, expected: Error) {
        let before = self.store.job_get(lease.id).await;
        assert_eq!(self.store.ack(lease).await, Err(expected.clone()), "ack");
        assert_eq!(self.store.nack(lease, Some(0), Some("late")).await, Err(expected.clone()), "nack");
        assert_eq!(self.store.extend(lease, 60_000).await, Err(expected.clone()), "extend");
        assert_eq!(self.store.fail(lease, "late").await, Err(expected), "fail");
        assert_eq!(self.store.job_get(lease.id).await, before, "a rejected settle changed the job");
    }
}

/// A validated queue name.
fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// Stats with these counts.
fn counts(ready: u64, scheduled: u64, leased: u64, dead: u64, oldest_ready_age_ms: Option<u64>) -> QueueStats {
    QueueStats { ready, scheduled, leased, dead, oldest_ready_age_ms }
}

/// The config of a queue nobody configured.
fn defaults() -> QueueConfig {
    QueueConfig::default()
}

/// A job as it must read right after its enqueue at `enqueued_at`.
fn fresh(
    id: JobId,
    queue: &QueueName,
    job: &NewJob,
    enqueued_at: Timestamp,
    run_at: Timestamp,
    max_attempts: u32,
) -> Job {
    Job {
        id,
        queue: queue.clone(),
        state: if run_at > enqueued_at { JobState::Scheduled } else { JobState::Ready },
        attempt: 0,
        max_attempts,
        priority: job.priority,
        payload: job.payload.clone(),
        headers: job.headers.clone(),
        dedup_id: job.dedup_id.clone(),
        enqueued_at,
        run_at,
        lease_expires_at: None,
        errors: Vec::new(),
    }
}

/// What a lease of `job` (as it read just before) must hand out.
fn leased_from(job: &Job, lease_token: LeaseToken, attempt: u32, lease_expires_at: Timestamp) -> LeasedJob {
    LeasedJob {
        id: job.id,
        queue: job.queue.clone(),
        lease_token,
        attempt,
        max_attempts: job.max_attempts,
        priority: job.priority,
        payload: job.payload.clone(),
        headers: job.headers.clone(),
        dedup_id: job.dedup_id.clone(),
        enqueued_at: job.enqueued_at,
        run_at: job.run_at,
        lease_expires_at,
    }
}

/// `job` under a live lease.
fn leased_state(job: &Job, attempt: u32, lease_expires_at: Timestamp) -> Job {
    Job { state: JobState::Leased, attempt, lease_expires_at: Some(lease_expires_at), ..job.clone() }
}

/// `expected` with the `run_at` of `actual`: docs/semantics.md does not pin a dead job's `run_at`.
fn with_run_at_of(expected: Job, actual: &Job) -> Job {
    Job { run_at: actual.run_at, ..expected }
}

/// One attempt's error.
fn attempt_error(attempt: u32, error: &str, at: Timestamp) -> AttemptError {
    AttemptError { attempt, error: error.to_owned(), at }
}

/// The ids of leased jobs, in order.
fn ids_of(jobs: &[LeasedJob]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// Asserts that ids are strictly increasing.
fn assert_increasing(ids: &[JobId]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are not strictly increasing: {ids:?}");
}

/// Awaits `future`, failing the test instead of hanging when the store never answers.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not return within {HANG:?}"),
    }
}

/// Starts, on its own task, a one-job lease that waits up to [`LONG_WAIT_MS`]; it yields the jobs
/// and how long the call took.
fn spawn_waiting_lease<S: Store + 'static>(
    store: &Arc<S>,
    queue: &QueueName,
) -> JoinHandle<(Vec<LeasedJob>, Duration)> {
    let store = Arc::clone(store);
    let queue = queue.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: LONG_WAIT_MS };
        let jobs = store.job_lease(&queue, options).await.unwrap();
        (jobs, started.elapsed())
    })
}

/// Asserts that a waiting lease returned job `id` at `attempt`, after it had waited (it began
/// before the job was ready) and well before its wait ended.
async fn assert_woke(waiting: JoinHandle<(Vec<LeasedJob>, Duration)>, id: JobId, attempt: u32) {
    check_woke(within("the waiting lease", waiting).await.unwrap(), id, attempt);
}

/// [`assert_woke`] on the output of a waiting lease already joined.
fn check_woke((jobs, elapsed): (Vec<LeasedJob>, Duration), id: JobId, attempt: u32) {
    let got: Vec<(JobId, u32)> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
    assert_eq!(got, vec![(id, attempt)], "the waiting lease must return the job that became ready");
    assert!(elapsed >= Duration::from_millis(200), "the lease returned after {elapsed:?}, before the job was ready");
    assert!(elapsed < PROMPTLY, "the lease took {elapsed:?} to wake up (wait was {LONG_WAIT_MS} ms)");
}

/// Runs `tasks` concurrent one-shot leases; returns every job they got.
async fn lease_concurrently<S: Store + 'static>(
    store: &Arc<S>,
    queue: &QueueName,
    tasks: usize,
    options: LeaseOptions,
) -> Vec<LeasedJob> {
    let barrier = Arc::new(Barrier::new(tasks));
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let (store, queue, barrier) = (Arc::clone(store), queue.clone(), Arc::clone(&barrier));
        set.spawn(async move {
            barrier.wait().await;
            store.job_lease(&queue, options).await.unwrap()
        });
    }
    let mut all = Vec::new();
    while let Some(jobs) = within("concurrent leases", set.join_next()).await {
        all.extend(jobs.unwrap());
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Enqueue
// ---------------------------------------------------------------------------------------------

/// Enqueue assigns ids in request order, strictly increasing across calls and across the store's
/// life (never reused, even after the highest job is acked or its queue deleted), and stores each
/// job exactly as sent.
pub async fn enqueue_returns_ids_in_request_order<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("orders");
    let t0 = f.now();
    let jobs: Vec<NewJob> =
        (0..5).map(|i| NewJob::new(format!("job {i}")).priority(i).header("n", i.to_string())).collect();
    let enqueued = f.store.job_enqueue(&q, jobs.clone()).await.unwrap();
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id).collect();
    assert_eq!(enqueued, ids.iter().map(|&id| Enqueued { id, duplicate: false }).collect::<Vec<_>>());
    assert_eq!(ids.len(), 5);
    assert_increasing(&ids);
    for (id, job) in ids.iter().zip(&jobs) {
        assert_eq!(f.get(*id).await, fresh(*id, &q, job, t0, t0, defaults().max_attempts));
    }

    let more = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    assert_increasing(&[ids.clone(), more.clone()].concat());

    // Gone jobs leave their ids behind: the highest one is not handed out again.
    let all = f.lease(&q, 10, None).await;
    assert_eq!(all.len(), 7);
    for job in &all {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }
    let after_ack = f.enqueue_one(&q, NewJob::new("after ack")).await;
    assert!(after_ack > more[1], "id {after_ack} reuses or precedes {}", more[1]);
    f.store.queue_delete(&q).await.unwrap();
    let after_delete = f.enqueue_one(&q, NewJob::new("after delete")).await;
    assert!(after_delete > after_ack, "id {after_delete} reuses or precedes {after_ack}");
    let elsewhere = f.enqueue_one(&queue("elsewhere"), NewJob::new("other queue")).await;
    assert!(elsewhere > after_delete, "ids are store-wide: {elsewhere} after {after_delete}");
}

/// One invalid job rejects the whole batch with the shared validation's error, and nothing is
/// written: no queue is created, no job and no dedup id is stored.
pub async fn enqueue_batch_is_atomic<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("atomic");

    let bad_priority = vec![NewJob::new("a"), NewJob::new("b").priority(PRIORITY_MAX + 1), NewJob::new("c")];
    let expected = validate::enqueue(&bad_priority).unwrap_err();
    assert_eq!(expected.kind(), ErrorKind::InvalidRequest);
    assert_eq!(f.store.job_enqueue(&q, bad_priority).await, Err(expected));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));

    let too_large = vec![NewJob::new("a").dedup_id("a"), NewJob::new(vec![7u8; PAYLOAD_BYTES_MAX + 1])];
    let expected = validate::enqueue(&too_large).unwrap_err();
    assert_eq!(expected.kind(), ErrorKind::PayloadTooLarge);
    assert_eq!(f.store.job_enqueue(&q, too_large).await, Err(expected));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&q).await, Err(Error::QueueNotFound(q.clone())));

    // The dedup id of the rejected batch was not remembered.
    let id = f.enqueue_one(&q, NewJob::new("a").dedup_id("a")).await;
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));

    // effectively_once: one job without a dedup id rejects the batch, including its valid jobs.
    let strict = queue("strict");
    f.upsert(&strict, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let mixed = vec![NewJob::new("x").dedup_id("x"), NewJob::new("y")];
    let err = f.store.job_enqueue(&strict, mixed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert_eq!(f.stats(&strict).await, QueueStats::default());
    let x = f.enqueue_one(&strict, NewJob::new("x").dedup_id("x")).await;
    assert!(x > id, "a fresh job gets a fresh id");
}

/// Enqueueing to a queue that does not exist creates it with the default config.
pub async fn enqueue_creates_unknown_queue_with_defaults<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("brand-new");
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&q).await, Err(Error::QueueNotFound(q.clone())));
    f.enqueue_one(&q, NewJob::new("first")).await;
    let info = QueueInfo { name: q.clone(), config: defaults(), paused: false, stats: counts(1, 0, 0, 0, Some(0)) };
    assert_eq!(f.store.queue_get(&q).await, Ok(info.clone()));
    assert_eq!(f.store.queue_list().await, Ok(vec![info]));
}

/// A job's `max_attempts` is its own, else the queue's at enqueue time; a later config change
/// does not touch jobs already enqueued.
pub async fn enqueue_max_attempts_from_job_else_queue<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("attempts");
    let t0 = f.now();
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(7), ..Default::default() }).await;
    let (plain, own) = (NewJob::new("plain"), NewJob::new("own").max_attempts(3));
    let ids = f.enqueue(&q, vec![plain.clone(), own.clone()]).await;
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(9), ..Default::default() }).await;
    let later = NewJob::new("later");
    let later_id = f.enqueue_one(&q, later.clone()).await;
    assert_eq!(f.get(ids[0]).await, fresh(ids[0], &q, &plain, t0, t0, 7));
    assert_eq!(f.get(ids[1]).await, fresh(ids[1], &q, &own, t0, t0, 3));
    assert_eq!(f.get(later_id).await, fresh(later_id, &q, &later, t0, t0, 9));
    let leased = f.lease(&q, 3, None).await;
    let max: Vec<(JobId, u32)> = leased.iter().map(|j| (j.id, j.max_attempts)).collect();
    assert_eq!(max, vec![(ids[0], 7), (ids[1], 3), (later_id, 9)]);
}

/// An `effectively_once` queue rejects a job without a dedup id (`InvalidRequest`, nothing
/// written) and accepts and deduplicates jobs that carry one.
pub async fn enqueue_effectively_once_requires_dedup_ids<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("payments");
    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let err = f.store.job_enqueue(&q, vec![NewJob::new("charge")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert_eq!(f.stats(&q).await, QueueStats::default());
    let first = f.store.enqueue(&q, NewJob::new("charge").dedup_id("charge-42")).await.unwrap();
    assert!(!first.duplicate);
    let again = f.store.enqueue(&q, NewJob::new("charge").dedup_id("charge-42")).await;
    assert_eq!(again, Ok(Enqueued { id: first.id, duplicate: true }));
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
}

/// A delayed job is `scheduled` at now + delay and becomes ready (leasable) exactly when due.
pub async fn enqueue_delayed_job_becomes_ready_when_due<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("delayed");
    let t0 = f.now();
    let job = NewJob::new("later").delay_ms(5_000);
    let id = f.enqueue_one(&q, job.clone()).await;
    let scheduled = fresh(id, &q, &job, t0, t0.plus_ms(5_000), defaults().max_attempts);
    assert_eq!(scheduled.state, JobState::Scheduled);
    assert_eq!(f.get(id).await, scheduled);
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));
    f.lease_none(&q).await;

    clock.advance(4_999);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));

    clock.advance(1);
    let ready = Job { state: JobState::Ready, ..scheduled };
    assert_eq!(f.get(id).await, ready);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    let leased = f.lease_one(&q, None).await;
    let expires = f.now().plus_ms(defaults().visibility_timeout_ms);
    assert_eq!(leased, leased_from(&ready, leased.lease_token, 1, expires));
}

/// `Schedule::At` sets `run_at` to that time (`scheduled` until then); a time in the past means
/// now (`ready`); leasing then follows `run_at`, not id.
pub async fn enqueue_run_at_schedules_at_that_time<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("at");
    let t0 = f.now();
    let future = NewJob::new("future").run_at(t0.plus_ms(10_000));
    let past = NewJob::new("past").run_at(Timestamp::from_millis(t0.as_millis() - 60_000));
    let exact = NewJob::new("exact").run_at(t0);
    let ids = f.enqueue(&q, vec![future.clone(), past.clone(), exact.clone()]).await;
    let max = defaults().max_attempts;
    assert_eq!(f.get(ids[0]).await, fresh(ids[0], &q, &future, t0, t0.plus_ms(10_000), max));
    assert_eq!(f.get(ids[1]).await, fresh(ids[1], &q, &past, t0, t0, max));
    assert_eq!(f.get(ids[2]).await, fresh(ids[2], &q, &exact, t0, t0, max));
    assert_eq!(f.stats(&q).await, counts(2, 1, 0, 0, Some(0)));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1], ids[2]]);
    clock.advance(9_999);
    f.lease_none(&q).await;
    clock.advance(1);
    assert_eq!(f.lease_one(&q, None).await.id, ids[0]);
}

/// Within the dedup window the same (queue, dedup id) returns the original id with
/// `duplicate: true` and creates nothing, even after the original was acked or went dead; another
/// queue's dedup ids are its own.
pub async fn enqueue_dedup_returns_original_even_after_ack_or_dead<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("dedup");
    let acked = f.enqueue_one(&q, NewJob::new("a").dedup_id("a")).await;
    assert_eq!(
        f.store.enqueue(&q, NewJob::new("a, again").dedup_id("a")).await,
        Ok(Enqueued { id: acked, duplicate: true })
    );
    assert_eq!(f.get(acked).await.payload, b"a".to_vec(), "a duplicate must not overwrite the original");
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));
    clock.advance(1_000);
    assert_eq!(f.store.enqueue(&q, NewJob::new("a").dedup_id("a")).await, Ok(Enqueued { id: acked, duplicate: true }));
    assert_eq!(f.stats(&q).await, QueueStats::default());
    assert_eq!(f.store.job_get(acked).await, Err(Error::JobNotFound(acked)));

    let dead = f.enqueue_one(&q, NewJob::new("b").dedup_id("b")).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.fail(leased.lease(), "no").await, Ok(()));
    assert_eq!(f.store.enqueue(&q, NewJob::new("b").dedup_id("b")).await, Ok(Enqueued { id: dead, duplicate: true }));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));

    let other = f.store.enqueue(&queue("dedup-other"), NewJob::new("a").dedup_id("a")).await.unwrap();
    assert!(!other.duplicate, "dedup ids are per queue");
    assert!(other.id > dead);
}

/// The dedup window runs from the first enqueue (duplicates do not extend it); once it has
/// passed (now >= first + window) the same dedup id creates a new job, which opens a new window.
/// A window of 0 deduplicates nothing.
pub async fn enqueue_dedup_window_expires<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("window");
    f.upsert(&q, QueueConfigPatch { dedup_window_ms: Some(1_000), ..Default::default() }).await;
    let first = f.enqueue_one(&q, NewJob::new("1").dedup_id("k")).await;
    clock.advance(999);
    assert_eq!(f.store.enqueue(&q, NewJob::new("2").dedup_id("k")).await, Ok(Enqueued { id: first, duplicate: true }));
    clock.advance(1);
    let second = f.enqueue_one(&q, NewJob::new("3").dedup_id("k")).await;
    assert!(second > first);
    clock.advance(999);
    assert_eq!(f.store.enqueue(&q, NewJob::new("4").dedup_id("k")).await, Ok(Enqueued { id: second, duplicate: true }));
    clock.advance(1);
    let third = f.enqueue_one(&q, NewJob::new("5").dedup_id("k")).await;
    assert!(third > second);
    assert_eq!(f.stats(&q).await.ready, 3);

    let none = queue("no-window");
    f.upsert(&none, QueueConfigPatch { dedup_window_ms: Some(0), ..Default::default() }).await;
    let a = f.enqueue_one(&none, NewJob::new("a").dedup_id("k")).await;
    let b = f.enqueue_one(&none, NewJob::new("b").dedup_id("k")).await;
    assert!(b > a);
}

// ---------------------------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------------------------

/// Enqueues six jobs whose lease order differs from their id order; returns their ids in the
/// order they must be leased (priority, then `run_at`, then id).
async fn enqueue_for_order<S: Store + 'static>(f: &Fixture<S>, q: &QueueName) -> Vec<JobId> {
    let ids = f
        .enqueue(
            q,
            vec![
                NewJob::new("x").delay_ms(500),
                NewJob::new("y").delay_ms(100),
                NewJob::new("z"),
                NewJob::new("w").priority(10).delay_ms(300),
                NewJob::new("v"),
                NewJob::new("u").priority(-1),
            ],
        )
        .await;
    let [x, y, z, w, v, u] = ids[..] else { panic!("six ids expected, got {ids:?}") };
    vec![w, z, v, y, x, u]
}

/// Leasing hands out the highest priority first, then the oldest `run_at`, then the lowest id,
/// one by one and within a batch.
pub async fn lease_order_priority_then_run_at_then_id<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let (one_by_one, batch) = (queue("one-by-one"), queue("batch"));
    let expected_single = enqueue_for_order(&f, &one_by_one).await;
    let expected_batch = enqueue_for_order(&f, &batch).await;
    clock.advance(1_000);
    let mut got = Vec::new();
    for _ in 0..expected_single.len() {
        got.push(f.lease_one(&one_by_one, None).await.id);
    }
    assert_eq!(got, expected_single);
    f.lease_none(&one_by_one).await;
    assert_eq!(ids_of(&f.lease(&batch, 3, None).await), expected_batch[..3].to_vec());
    assert_eq!(ids_of(&f.lease(&batch, 10, None).await), expected_batch[3..].to_vec());
}

/// A lease hands out at most `max_jobs` jobs, each with its own token, and no job twice.
pub async fn lease_batch_up_to_max_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("batches");
    let ids = f.enqueue(&q, (0..5).map(|i| NewJob::new(format!("{i}"))).collect()).await;
    let first = f.lease(&q, 3, None).await;
    assert_eq!(ids_of(&first), ids[..3].to_vec());
    let second = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&second), ids[3..].to_vec());
    f.lease_none(&q).await;
    let all: Vec<&LeasedJob> = first.iter().chain(&second).collect();
    assert_eq!(all.iter().map(|j| j.attempt).collect::<Vec<_>>(), vec![1; 5]);
    let tokens: HashSet<LeaseToken> = all.iter().map(|j| j.lease_token).collect();
    assert_eq!(tokens.len(), 5, "every lease gets its own token");
    assert_eq!(f.stats(&q).await, counts(0, 0, 5, 0, None));
}

/// A lease sets `attempt += 1`, a fresh token, state `leased` and
/// `lease_expires_at = now + visibility timeout` (the call's, else the queue's current default).
pub async fn lease_sets_attempt_token_and_expiry<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiry");
    let t0 = f.now();
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c")]).await;
    let before: Vec<Job> = vec![f.get(ids[0]).await, f.get(ids[1]).await, f.get(ids[2]).await];

    let a = f.lease_one(&q, Some(5_000)).await;
    assert_eq!(a, leased_from(&before[0], a.lease_token, 1, t0.plus_ms(5_000)));
    assert_eq!(f.get(ids[0]).await, leased_state(&before[0], 1, t0.plus_ms(5_000)));

    let b = f.lease_one(&q, None).await;
    let queue_default = t0.plus_ms(defaults().visibility_timeout_ms);
    assert_eq!(b, leased_from(&before[1], b.lease_token, 1, queue_default));
    assert_eq!(f.get(ids[1]).await, leased_state(&before[1], 1, queue_default));

    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(20_000), ..Default::default() }).await;
    let c = f.lease_one(&q, None).await;
    assert_eq!(c, leased_from(&before[2], c.lease_token, 1, t0.plus_ms(20_000)));
    assert_eq!(f.stats(&q).await, counts(0, 0, 3, 0, None));

    // The first lease expires; the next lease of the same job gets attempt 2 and a new token.
    clock.advance(5_000);
    let expired = f.get(ids[0]).await;
    let again = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(again, leased_from(&expired, again.lease_token, 2, t0.plus_ms(6_000)));
    let tokens: HashSet<LeaseToken> = [&a, &b, &c, &again].iter().map(|j| j.lease_token).collect();
    assert_eq!(tokens.len(), 4, "every lease gets a fresh token");
}

/// Leasing from a queue that does not exist returns nothing and does not create it.
pub async fn lease_unknown_queue_is_empty_and_not_created<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let ghost = queue("ghost");
    assert_eq!(f.lease(&ghost, LEASE_BATCH_MAX, Some(1_000)).await, Vec::<LeasedJob>::new());
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&ghost).await, Err(Error::QueueNotFound(ghost.clone())));
}

/// A paused queue hands out nothing but still accepts enqueues; resuming restores leasing.
pub async fn lease_paused_queue_hands_out_nothing<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("pausable");
    let first = f.enqueue_one(&q, NewJob::new("1")).await;
    assert_eq!(f.store.queue_pause(&q).await, Ok(()));
    let info = f.store.queue_get(&q).await.unwrap();
    assert_eq!(
        info,
        QueueInfo { name: q.clone(), config: defaults(), paused: true, stats: counts(1, 0, 0, 0, Some(0)) }
    );
    f.lease_none(&q).await;
    let second = f.enqueue_one(&q, NewJob::new("2")).await;
    assert_eq!(f.stats(&q).await, counts(2, 0, 0, 0, Some(0)));
    f.lease_none(&q).await;
    assert_eq!(f.store.queue_resume(&q).await, Ok(()));
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.paused), Ok(false));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![first, second]);
}

/// In an `at_most_once` queue a lease is the ack: the job is removed as it is handed out and is
/// never delivered again; settling it finds no job.
pub async fn lease_at_most_once_removes_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fire-and-forget");
    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::AtMostOnce), ..Default::default() }).await;
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    let before = f.get(ids[0]).await;
    let a = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(a, leased_from(&before, a.lease_token, 1, f.now().plus_ms(1_000)));
    assert_eq!(f.store.job_get(ids[0]).await, Err(Error::JobNotFound(ids[0])));
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    f.assert_settles_rejected(a.lease(), Error::JobNotFound(ids[0])).await;
    clock.advance(60_000);
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1]]);
    clock.advance(60_000);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, QueueStats::default());
}

// ---------------------------------------------------------------------------------------------
// Settling
// ---------------------------------------------------------------------------------------------

/// Ack deletes the job: it cannot be read, settled or leased again.
pub async fn ack_removes_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("acks");
    let id = f.enqueue_one(&q, NewJob::new("done soon")).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(f.store.job_ack(&[leased.lease()]).await, Ok(vec![Ok(())]));
    assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    assert_eq!(f.stats(&q).await, QueueStats::default());
    f.assert_settles_rejected(leased.lease(), Error::JobNotFound(id)).await;
    clock.advance(60_000);
    f.lease_none(&q).await;
}

/// Each item of an ack batch is judged alone: good leases are acked, a wrong token or a job not
/// leased is `LeaseLost`, an unknown id `JobNotFound`, and the rejected jobs are unchanged.
pub async fn ack_batch_judges_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("mixed");
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c"), NewJob::new("r")]).await;
    let leased = f.lease(&q, 3, None).await;
    assert_eq!(ids_of(&leased), ids[..3].to_vec());
    let (a, b, c, r) = (&leased[0], &leased[1], &leased[2], ids[3]);
    let b_before = f.get(b.id).await;
    let r_before = f.get(r).await;
    let acks = [
        a.lease(),
        LeaseRef { id: b.id, lease_token: LeaseToken::random() },
        LeaseRef { id: UNKNOWN_ID, lease_token: LeaseToken::random() },
        LeaseRef { id: r, lease_token: LeaseToken::random() },
        c.lease(),
    ];
    assert_eq!(
        f.store.job_ack(&acks).await,
        Ok(vec![
            Ok(()),
            Err(Error::LeaseLost(b.id)),
            Err(Error::JobNotFound(UNKNOWN_ID)),
            Err(Error::LeaseLost(r)),
            Ok(())
        ])
    );
    assert_eq!(f.store.job_get(a.id).await, Err(Error::JobNotFound(a.id)));
    assert_eq!(f.store.job_get(c.id).await, Err(Error::JobNotFound(c.id)));
    assert_eq!(f.get(b.id).await, b_before);
    assert_eq!(f.get(r).await, r_before);
    assert_eq!(f.store.ack(b.lease()).await, Ok(()), "b's lease survived the batch");
}

/// Each item of a nack, extend or fail batch is judged alone, like an ack batch.
pub async fn nack_extend_fail_batches_judge_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("mixed-settles");
    f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c")]).await;
    let leased = f.lease(&q, 3, None).await;
    let (a, b, c) = (&leased[0], &leased[1], &leased[2]);
    let now = f.now();

    let nacks = [
        Nack { id: a.id, lease_token: a.lease_token, delay_ms: Some(0), error: Some("again".into()) },
        Nack { id: b.id, lease_token: LeaseToken::random(), delay_ms: Some(0), error: None },
        Nack { id: UNKNOWN_ID, lease_token: LeaseToken::random(), delay_ms: None, error: None },
    ];
    assert_eq!(
        f.store.job_nack(&nacks).await,
        Ok(vec![
            Ok(NackOutcome::Retrying { run_at: now }),
            Err(Error::LeaseLost(b.id)),
            Err(Error::JobNotFound(UNKNOWN_ID))
        ])
    );

    let extends = [
        Extend { id: b.id, lease_token: b.lease_token, visibility_timeout_ms: 5_000 },
        Extend { id: a.id, lease_token: a.lease_token, visibility_timeout_ms: 5_000 },
        Extend { id: UNKNOWN_ID, lease_token: LeaseToken::random(), visibility_timeout_ms: 5_000 },
    ];
    assert_eq!(
        f.store.job_extend(&extends).await,
        Ok(vec![Ok(now.plus_ms(5_000)), Err(Error::LeaseLost(a.id)), Err(Error::JobNotFound(UNKNOWN_ID))])
    );

    let fails = [
        Fail { id: c.id, lease_token: c.lease_token, error: "broken".into() },
        Fail { id: b.id, lease_token: LeaseToken::random(), error: "not mine".into() },
        Fail { id: UNKNOWN_ID, lease_token: LeaseToken::random(), error: "nobody".into() },
    ];
    assert_eq!(
        f.store.job_fail(&fails).await,
        Ok(vec![Ok(()), Err(Error::LeaseLost(b.id)), Err(Error::JobNotFound(UNKNOWN_ID))])
    );

    assert_eq!(f.get(a.id).await.state, JobState::Ready);
    assert_eq!(f.get(b.id).await.lease_expires_at, Some(now.plus_ms(5_000)));
    assert_eq!(f.get(b.id).await.errors, vec![]);
    assert_eq!(f.get(c.id).await.state, JobState::Dead);
    assert_eq!(f.stats(&q).await, counts(1, 0, 1, 1, Some(0)));
}

/// A nack with an explicit delay records the error and schedules the job at now + delay; it is
/// leased again, with attempt 2, exactly when due.
pub async fn nack_with_explicit_delay<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("nacks");
    let id = f.enqueue_one(&q, NewJob::new("flaky")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    clock.advance(100);
    let t1 = f.now();
    assert_eq!(
        f.store.nack(leased.lease(), Some(2_000), Some("boom")).await,
        Ok(NackOutcome::Retrying { run_at: t1.plus_ms(2_000) })
    );
    let nacked = Job {
        state: JobState::Scheduled,
        run_at: t1.plus_ms(2_000),
        lease_expires_at: None,
        errors: vec![attempt_error(1, "boom", t1)],
        ..before
    };
    assert_eq!(f.get(id).await, nacked);
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));
    f.lease_none(&q).await;
    clock.advance(1_999);
    f.lease_none(&q).await;
    clock.advance(1);
    let again = f.lease_one(&q, None).await;
    let ready = Job { state: JobState::Ready, ..nacked };
    assert_eq!(again, leased_from(&ready, again.lease_token, 2, f.now().plus_ms(defaults().visibility_timeout_ms)));
    assert_ne!(again.lease_token, leased.lease_token);
}

/// A nack without a delay uses the queue's backoff for the failed attempt (exact with
/// `Jitter::None`, growing and capped; within `[0, base]` with full jitter) and records "nacked"
/// when no error text is given.
pub async fn nack_with_backoff<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("backoff");
    let backoff = Backoff { initial_ms: 1_000, max_ms: 10_000, multiplier: 3.0, jitter: Jitter::None };
    f.upsert(&q, QueueConfigPatch { backoff: Some(backoff.into()), max_attempts: Some(10), ..Default::default() })
        .await;
    let id = f.enqueue_one(&q, NewJob::new("retry me")).await;
    let mut errors = Vec::new();
    for (attempt, delay) in [(1u32, 1_000u64), (2, 3_000), (3, 9_000), (4, 10_000), (5, 10_000)] {
        let leased = f.lease_one(&q, None).await;
        assert_eq!(leased.attempt, attempt);
        let now = f.now();
        assert_eq!(
            f.store.nack(leased.lease(), None, None).await,
            Ok(NackOutcome::Retrying { run_at: now.plus_ms(delay) })
        );
        errors.push(attempt_error(attempt, "nacked", now));
        let job = f.get(id).await;
        assert_eq!(
            (job.state, job.run_at, job.attempt, &job.errors),
            (JobState::Scheduled, now.plus_ms(delay), attempt, &errors)
        );
        clock.advance(delay - 1);
        f.lease_none(&q).await;
        clock.advance(1);
    }

    let jittered = queue("backoff-jittered");
    let base = defaults().backoff.base_delay_ms(1);
    f.enqueue_one(&jittered, NewJob::new("jitter")).await;
    let leased = f.lease_one(&jittered, None).await;
    let now = f.now();
    let Ok(NackOutcome::Retrying { run_at }) = f.store.nack(leased.lease(), None, Some("jitter")).await else {
        panic!("a first nack of a default queue must retry")
    };
    assert!(run_at >= now && run_at <= now.plus_ms(base), "full jitter: {run_at} outside [{now}, {now} + {base}]");
    let expected_state = if run_at > now { JobState::Scheduled } else { JobState::Ready };
    assert_eq!(f.get(leased.id).await.state, expected_state);
}

/// A nack with delay 0 (given, or from a zero backoff) makes the job `ready` at once.
pub async fn nack_zero_delay_is_ready_at_once<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("zero");
    let id = f.enqueue_one(&q, NewJob::new("again")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    let now = f.now();
    assert_eq!(f.store.nack(leased.lease(), Some(0), Some("again")).await, Ok(NackOutcome::Retrying { run_at: now }));
    let ready = Job {
        state: JobState::Ready,
        run_at: now,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "again", now)],
        ..before
    };
    assert_eq!(f.get(id).await, ready);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    let again = f.lease_one(&q, None).await;
    assert_eq!(again.attempt, 2);

    let instant = queue("zero-backoff");
    let backoff = Backoff { initial_ms: 0, max_ms: 0, multiplier: 1.0, jitter: Jitter::None };
    f.upsert(&instant, QueueConfigPatch { backoff: Some(backoff.into()), ..Default::default() }).await;
    f.enqueue_one(&instant, NewJob::new("again")).await;
    let leased = f.lease_one(&instant, None).await;
    assert_eq!(f.store.nack(leased.lease(), None, None).await, Ok(NackOutcome::Retrying { run_at: now }));
    assert_eq!(f.lease_one(&instant, None).await.attempt, 2);
}

/// A release ends the lease without counting it as an attempt: the job is ready at once with its
/// attempt count given back and no error recorded, even on its last attempt.
pub async fn release_returns_the_job_without_burning_an_attempt<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("release");
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(1), ..Default::default() }).await;
    let id = f.enqueue_one(&q, NewJob::new("not yet")).await;
    let before = f.get(id).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.attempt, 1);
    let now = f.now();
    assert_eq!(f.store.release(leased.lease(), None).await, Ok(()));
    assert_eq!(f.get(id).await, Job { run_at: now, ..before });
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    // The released lease is over: its token settles nothing.
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    // The next lease is attempt 1 again, and its nack (the last attempt) dead-letters.
    let again = f.lease_one(&q, None).await;
    assert_eq!(again.attempt, 1);
    assert_eq!(f.store.nack(again.lease(), None, Some("real failure")).await, Ok(NackOutcome::Dead));
}

/// A release with a delay schedules the job that far ahead.
pub async fn release_with_a_delay_schedules_the_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("release-later");
    let id = f.enqueue_one(&q, NewJob::new("later")).await;
    let leased = f.lease_one(&q, None).await;
    let run_at = f.now().plus_ms(500);
    f.store.release(leased.lease(), Some(500)).await.unwrap();
    let job = f.get(id).await;
    assert_eq!((job.state, job.run_at, job.attempt, job.errors.len()), (JobState::Scheduled, run_at, 0, 0));
    f.lease_none(&q).await;
    clock.advance(500);
    assert_eq!(f.lease_one(&q, None).await.attempt, 1);
}

/// A release batch judges each item alone: a stale token is `LeaseLost`, an unknown job
/// `JobNotFound`, and neither changes anything.
pub async fn release_batch_judges_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("release-batch");
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    let leased = f.lease(&q, 2, None).await;
    let stale = Release { id: ids[1], lease_token: LeaseToken::random(), delay_ms: None };
    let unknown = Release { id: UNKNOWN_ID, lease_token: leased[0].lease_token, delay_ms: None };
    let good = Release { id: leased[0].id, lease_token: leased[0].lease_token, delay_ms: None };
    let results = f.store.job_release(&[good, stale, unknown]).await.unwrap();
    assert_eq!(results, vec![Ok(()), Err(Error::LeaseLost(ids[1])), Err(Error::JobNotFound(UNKNOWN_ID))]);
    assert_eq!(f.get(ids[1]).await.state, JobState::Leased);
    assert_eq!(f.stats(&q).await, counts(1, 0, 1, 0, Some(0)));
    let too_far = Release { delay_ms: Some(onceq_core::limits::DELAY_MS_MAX + 1), ..good };
    assert!(matches!(f.store.job_release(&[too_far]).await, Err(Error::InvalidRequest(_))));
}

/// A nack on the job's last attempt dead-letters it (whatever delay it names): outcome `Dead`,
/// state `dead`, every attempt's error kept, never leased again.
pub async fn nack_on_last_attempt_dead_letters<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("last-nack");
    let id = f.enqueue_one(&q, NewJob::new("twice").max_attempts(2)).await;
    let before = f.get(id).await;
    let first = f.lease_one(&q, None).await;
    let t0 = f.now();
    assert_eq!(f.store.nack(first.lease(), Some(0), Some("one")).await, Ok(NackOutcome::Retrying { run_at: t0 }));
    let second = f.lease_one(&q, None).await;
    clock.advance(10);
    let t1 = f.now();
    assert_eq!(f.store.nack(second.lease(), Some(5_000), Some("two")).await, Ok(NackOutcome::Dead));
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        attempt: 2,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "one", t0), attempt_error(2, "two", t1)],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    clock.advance(10_000);
    f.lease_none(&q).await;
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
}

/// Extend moves the expiry to now + the new timeout (longer or shorter) and returns it; the same
/// token keeps working after the old expiry, with the same attempt.
pub async fn extend_moves_expiry_and_keeps_token<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("extend");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("slow")).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    let before = f.get(id).await;
    clock.advance(500);
    assert_eq!(f.store.extend(leased.lease(), 2_000).await, Ok(t0.plus_ms(2_500)));
    assert_eq!(f.get(id).await, Job { lease_expires_at: Some(t0.plus_ms(2_500)), ..before.clone() });
    clock.advance(1_000);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 0, 1, 0, None));
    assert_eq!(f.store.extend(leased.lease(), 1_000).await, Ok(t0.plus_ms(2_500)));
    clock.advance(999);
    assert_eq!(f.get(id).await.attempt, 1);
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));

    // Shortening: the lease now ends 1 ms from now.
    let short = f.enqueue_one(&q, NewJob::new("short")).await;
    let leased = f.lease_one(&q, Some(60_000)).await;
    let now = f.now();
    assert_eq!(f.store.extend(leased.lease(), 1).await, Ok(now.plus_ms(1)));
    clock.advance(1);
    let job = f.get(short).await;
    assert_eq!(
        (job.state, job.run_at, &job.errors),
        (JobState::Ready, now.plus_ms(1), &vec![attempt_error(1, "lease expired", now.plus_ms(1))])
    );
}

/// Fail dead-letters the job now, whatever attempts are left, recording its error; its token is
/// then lost and it is never leased.
pub async fn fail_dead_letters_with_error<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fails");
    let id = f.enqueue_one(&q, NewJob::new("poison")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    clock.advance(10);
    let now = f.now();
    assert_eq!(
        f.store.job_fail(&[Fail { id, lease_token: leased.lease_token, error: "bad input".into() }]).await,
        Ok(vec![Ok(())])
    );
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "bad input", now)],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    clock.advance(3_600_000);
    f.lease_none(&q).await;
}

/// Error texts longer than `ERROR_TEXT_BYTES_MAX` are kept cut (with `truncate_error_text`),
/// not rejected, so a worker reporting a huge panic can still nack or fail.
pub async fn settle_long_error_text_is_cut<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("long-errors");
    let id = f.enqueue_one(&q, NewJob::new("chatty")).await;
    let long = "é".repeat(ERROR_TEXT_BYTES_MAX);
    let leased = f.lease_one(&q, None).await;
    let now = f.now();
    assert_eq!(f.store.nack(leased.lease(), Some(0), Some(&long)).await, Ok(NackOutcome::Retrying { run_at: now }));
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.fail(leased.lease(), &long).await, Ok(()));
    let cut = truncate_error_text(&long);
    assert_eq!(f.get(id).await.errors, vec![attempt_error(1, &cut, now), attempt_error(2, &cut, now)]);
}

// ---------------------------------------------------------------------------------------------
// Lease expiry and error history
// ---------------------------------------------------------------------------------------------

/// When `now >= lease_expires_at` the lease is lost: the job is `ready` with
/// `run_at = lease_expires_at`, "lease expired" is recorded at that time, and the next lease gets
/// attempt 2 with a new token while the old one is rejected.
pub async fn lease_expiry_redelivers_with_next_attempt<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiring");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("slow worker")).await;
    let first = f.lease_one(&q, Some(1_000)).await;
    let leased = f.get(id).await;
    clock.advance(999);
    assert_eq!(f.get(id).await, leased, "a lease is live while now < lease_expires_at");
    f.lease_none(&q).await;
    clock.advance(501);
    let expired = Job {
        state: JobState::Ready,
        run_at: t0.plus_ms(1_000),
        lease_expires_at: None,
        errors: vec![attempt_error(1, "lease expired", t0.plus_ms(1_000))],
        ..leased
    };
    assert_eq!(f.get(id).await, expired);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(500)));
    let second = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(second, leased_from(&expired, second.lease_token, 2, f.now().plus_ms(1_000)));
    assert_ne!(second.lease_token, first.lease_token);
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(id)).await;
    assert_eq!(f.store.ack(second.lease()).await, Ok(()));
}

/// A lease that expires on the job's last attempt dead-letters it, recording "lease expired".
pub async fn lease_expiry_on_last_attempt_dead_letters<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiring-last");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("once").max_attempts(1)).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    let before = f.get(id).await;
    clock.advance(5_000);
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "lease expired", t0.plus_ms(1_000))],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    f.lease_none(&q).await;
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
}

/// The error of every attempt is kept, in order, with its attempt number and time, whichever
/// way the attempt ended (nack with text, expiry, nack without text, fail).
pub async fn error_history_keeps_every_attempt<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("history");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("unlucky").max_attempts(4)).await;
    let one = f.lease_one(&q, Some(1_000)).await;
    clock.advance(10);
    assert_eq!(
        f.store.nack(one.lease(), Some(0), Some("e1")).await,
        Ok(NackOutcome::Retrying { run_at: t0.plus_ms(10) })
    );
    let two = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(two.attempt, 2);
    clock.advance(1_000);
    let three = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(three.attempt, 3);
    assert_eq!(
        f.store.nack(three.lease(), Some(0), None).await,
        Ok(NackOutcome::Retrying { run_at: t0.plus_ms(1_010) })
    );
    let four = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(four.attempt, 4);
    clock.advance(5);
    assert_eq!(f.store.fail(four.lease(), "e4").await, Ok(()));
    let job = f.get(id).await;
    assert_eq!(
        (job.state, job.attempt, job.errors),
        (
            JobState::Dead,
            4,
            vec![
                attempt_error(1, "e1", t0.plus_ms(10)),
                attempt_error(2, "lease expired", t0.plus_ms(1_010)),
                attempt_error(3, "nacked", t0.plus_ms(1_010)),
                attempt_error(4, "e4", t0.plus_ms(1_015)),
            ]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------

/// `dead_list` pages through the queue's dead jobs in id order: at most `limit`, after `after`
/// (exclusive), `next` = the last id on the page when more follow, else `None`; other queues'
/// dead jobs and live jobs are not listed.
pub async fn dead_list_pages<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("graveyard");
    let ids = f.enqueue_dead(&q, 5).await;
    f.enqueue_dead(&queue("other-graveyard"), 2).await;
    f.enqueue_one(&q, NewJob::new("alive")).await;
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(f.get(*id).await);
    }
    assert!(jobs.iter().all(|j| j.state == JobState::Dead && j.errors.len() == 1));
    let page = |after: Option<usize>, limit: u32| DeadPage { after: after.map(|i| ids[i]), limit };
    let list = |from: usize, to: usize, next: Option<usize>| DeadList {
        jobs: jobs[from..to].to_vec(),
        next: next.map(|i| ids[i]),
    };
    assert_eq!(f.store.dead_list(&q, page(None, 2)).await, Ok(list(0, 2, Some(1))));
    assert_eq!(f.store.dead_list(&q, page(Some(1), 2)).await, Ok(list(2, 4, Some(3))));
    assert_eq!(f.store.dead_list(&q, page(Some(3), 2)).await, Ok(list(4, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(None, 5)).await, Ok(list(0, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(None, 4)).await, Ok(list(0, 4, Some(3))));
    assert_eq!(f.store.dead_list(&q, page(None, DEAD_PAGE_MAX)).await, Ok(list(0, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(Some(4), 10)).await, Ok(list(5, 5, None)));
    let before_all = DeadPage { after: Some(JobId::new(0)), limit: 1 };
    assert_eq!(f.store.dead_list(&q, before_all).await, Ok(list(0, 1, Some(0))));
}

/// Redriving all dead jobs makes each `ready` with `attempt = 0` and `run_at = now`, keeping its
/// error history; the next lease is attempt 1; it returns the count, and touches no live job.
pub async fn dead_redrive_all<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("redrive-all");
    let dead = f.enqueue_dead(&q, 3).await;
    let live = f.enqueue_one(&q, NewJob::new("live")).await;
    let live_leased = f.lease_one(&q, None).await;
    assert_eq!(live_leased.id, live);
    let live_before = f.get(live).await;
    clock.advance(100);
    let now = f.now();
    let mut before = Vec::new();
    for id in &dead {
        before.push(f.get(*id).await);
    }
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(3));
    for (id, job) in dead.iter().zip(&before) {
        let redriven = Job { state: JobState::Ready, attempt: 0, run_at: now, lease_expires_at: None, ..job.clone() };
        assert_eq!(f.get(*id).await, redriven);
    }
    assert_eq!(f.get(live).await, live_before);
    assert_eq!(f.stats(&q).await, counts(3, 0, 1, 0, Some(0)));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(0));

    let again = f.lease_one(&q, None).await;
    assert_eq!((again.id, again.attempt, again.max_attempts), (dead[0], 1, before[0].max_attempts));
    assert_eq!(
        f.store.nack(again.lease(), Some(0), Some("still broken")).await,
        Ok(NackOutcome::Retrying { run_at: now })
    );
    let mut errors = before[0].errors.clone();
    errors.push(attempt_error(1, "still broken", now));
    assert_eq!(f.get(dead[0]).await.errors, errors, "the history is kept across a redrive");
}

/// Redriving named ids makes those that are dead in this queue ready; ids of live jobs, of dead
/// jobs of other queues and of unknown jobs are skipped; an empty list redrives nothing.
pub async fn dead_redrive_by_ids_skips_others<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-ids");
    let other = queue("redrive-other");
    let dead = f.enqueue_dead(&q, 3).await;
    let foreign = f.enqueue_dead(&other, 1).await[0];
    let live = f.enqueue_one(&q, NewJob::new("live")).await;
    let untouched = f.snapshot(&[live, foreign, dead[1]]).await;
    let ids = vec![dead[2], live, foreign, UNKNOWN_ID, dead[0]];
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: Some(vec![]), limit: None }).await, Ok(0));
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: Some(ids), limit: None }).await, Ok(2));
    assert_eq!(f.get(dead[0]).await.state, JobState::Ready);
    assert_eq!(f.get(dead[2]).await.state, JobState::Ready);
    let (_, jobs) = f.snapshot(&[live, foreign, dead[1]]).await;
    assert_eq!(jobs, untouched.1);
    assert_eq!(f.stats(&q).await, counts(3, 0, 0, 1, Some(0)));
    assert_eq!(f.stats(&other).await, counts(0, 0, 0, 1, None));
}

/// Redriving with a limit takes at most that many, oldest id first.
pub async fn dead_redrive_with_limit<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-limit");
    let dead = f.enqueue_dead(&q, 5).await;
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: None, limit: Some(2) }).await, Ok(2));
    let mut states = Vec::new();
    for id in &dead {
        states.push(f.get(*id).await.state);
    }
    use JobState::{Dead, Ready};
    assert_eq!(states, vec![Ready, Ready, Dead, Dead, Dead]);
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: None, limit: Some(10) }).await, Ok(3));
    assert_eq!(f.stats(&q).await, counts(5, 0, 0, 0, Some(0)));

    // With ids and a limit, only the count is pinned down.
    let q2 = queue("redrive-limit-ids");
    let dead = f.enqueue_dead(&q2, 3).await;
    let ids = Some(vec![dead[2], dead[0], dead[1]]);
    assert_eq!(f.store.dead_redrive(&q2, Redrive { ids, limit: Some(2) }).await, Ok(2));
    assert_eq!(f.stats(&q2).await, counts(2, 0, 0, 1, Some(0)));
}

/// `dead_purge` deletes the queue's dead jobs (and only them) and returns the count.
pub async fn dead_purge_deletes_dead_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("purge");
    let other = queue("purge-other");
    let dead = f.enqueue_dead(&q, 2).await;
    let foreign = f.enqueue_dead(&other, 1).await[0];
    let leased = f.enqueue_one(&q, NewJob::new("leased")).await;
    assert_eq!(f.lease_one(&q, None).await.id, leased);
    let ready = f.enqueue_one(&q, NewJob::new("ready")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(60_000)).await;
    let (_, before) = f.snapshot(&[leased, ready, scheduled, foreign]).await;
    assert_eq!(f.store.dead_purge(&q).await, Ok(2));
    for id in dead {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    }
    assert_eq!(f.snapshot(&[leased, ready, scheduled, foreign]).await.1, before);
    assert_eq!(f.stats(&q).await, counts(1, 1, 1, 0, Some(0)));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![], next: None }));
    assert_eq!(f.store.dead_purge(&q).await, Ok(0));
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

/// `queue_upsert` on a new queue creates it with the defaults patched, returns that config, and
/// the queue reads back with it; an empty patch gives the defaults.
pub async fn queue_upsert_creates_with_defaults_and_patch<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("configured");
    let backoff = Backoff { initial_ms: 50, max_ms: 5_000, multiplier: 1.5, jitter: Jitter::Equal };
    let patch = QueueConfigPatch {
        delivery: None,
        visibility_timeout_ms: Some(12_345),
        max_attempts: Some(7),
        backoff: Some(backoff.clone().into()),
        dedup_window_ms: Some(600),
    };
    let expected =
        QueueConfig { visibility_timeout_ms: 12_345, max_attempts: 7, backoff, dedup_window_ms: 600, ..defaults() };
    assert_eq!(f.store.queue_upsert(&q, patch).await, Ok(expected.clone()));
    assert_eq!(
        f.store.queue_get(&q).await,
        Ok(QueueInfo { name: q.clone(), config: expected, paused: false, stats: QueueStats::default() })
    );
    let plain = queue("plain");
    assert_eq!(f.store.queue_upsert(&plain, QueueConfigPatch::default()).await, Ok(defaults()));
    assert_eq!(f.store.queue_get(&plain).await.map(|i| i.config), Ok(defaults()));
}

/// `queue_upsert` on an existing queue replaces only the patched fields; the new defaults apply
/// to later enqueues and leases.
pub async fn queue_upsert_updates_existing<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("evolving");
    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(12_345), ..Default::default() }).await;
    let early = f.enqueue_one(&q, NewJob::new("early")).await;
    let updated = f.upsert(&q, QueueConfigPatch { max_attempts: Some(9), ..Default::default() }).await;
    assert_eq!(updated, QueueConfig { visibility_timeout_ms: 12_345, max_attempts: 9, ..defaults() });
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config), Ok(updated.clone()));
    let late = f.enqueue_one(&q, NewJob::new("late")).await;
    assert_eq!((f.get(early).await.max_attempts, f.get(late).await.max_attempts), (defaults().max_attempts, 9));

    let updated = f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(500), ..Default::default() }).await;
    assert_eq!(updated, QueueConfig { visibility_timeout_ms: 500, max_attempts: 9, ..defaults() });
    let leased = f.lease_one(&q, None).await;
    assert_eq!((leased.id, leased.lease_expires_at), (early, f.now().plus_ms(500)));

    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let err = f.store.job_enqueue(&q, vec![NewJob::new("no dedup id")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
}

/// A partial backoff replaces the fields it gives and keeps the queue's others; whether the
/// result is valid depends on the queue's current policy, not on the defaults: `max_ms: 500`
/// alone is refused on a queue whose `initial_ms` is 1,000 (the default) and accepted on one
/// whose `initial_ms` is 100.
pub async fn queue_upsert_merges_a_partial_backoff<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("partial-backoff");
    let start = Backoff { initial_ms: 100, max_ms: 10_000, multiplier: 3.0, jitter: Jitter::Equal };
    f.upsert(&q, QueueConfigPatch { backoff: Some(start.clone().into()), ..Default::default() }).await;
    let patch = |backoff: BackoffPatch| QueueConfigPatch { backoff: Some(backoff), ..Default::default() };
    let lower_cap = patch(BackoffPatch { max_ms: Some(500), ..BackoffPatch::default() });
    let updated = f.upsert(&q, lower_cap.clone()).await;
    assert_eq!(updated.backoff, Backoff { max_ms: 500, ..start.clone() });
    let updated = f.upsert(&q, patch(BackoffPatch { jitter: Some(Jitter::None), ..BackoffPatch::default() })).await;
    assert_eq!(updated.backoff, Backoff { max_ms: 500, jitter: Jitter::None, ..start });
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config.backoff), Ok(updated.backoff.clone()));
    // On a new queue the same partial meets the defaults (initial_ms 1,000): refused, not created.
    let fresh = queue("partial-backoff-fresh");
    let expected = defaults().patched(&lower_cap).unwrap_err();
    assert_eq!(f.store.queue_upsert(&fresh, lower_cap).await, Err(expected));
    assert_eq!(f.store.queue_get(&fresh).await.map(|i| i.name), Err(Error::QueueNotFound(fresh.clone())));
    // A field out of its own range is refused whatever the queue holds.
    let too_big = patch(BackoffPatch { multiplier: Some(BACKOFF_MULTIPLIER_MAX * 2.0), ..BackoffPatch::default() });
    let expected = updated.patched(&too_big).unwrap_err();
    assert_eq!(f.store.queue_upsert(&q, too_big).await, Err(expected));
}

/// An upsert whose resulting config is invalid is rejected with the shared validation's error
/// and changes nothing: a new queue is not created, an existing one keeps its config.
pub async fn queue_upsert_rejects_invalid_config<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("strict-config");
    let invalid = [
        QueueConfigPatch { visibility_timeout_ms: Some(0), ..Default::default() },
        QueueConfigPatch {
            max_attempts: Some(9),
            backoff: Some(Backoff { multiplier: 0.5, ..Backoff::default() }.into()),
            ..Default::default()
        },
        QueueConfigPatch {
            backoff: Some(Backoff { initial_ms: 10, max_ms: 5, ..Backoff::default() }.into()),
            ..Default::default()
        },
        QueueConfigPatch { dedup_window_ms: Some(DEDUP_WINDOW_MS_MAX + 1), ..Default::default() },
    ];
    for patch in &invalid {
        let expected = defaults().patched(patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch.clone()).await, Err(expected), "{patch:?}");
        assert_eq!(f.store.queue_list().await, Ok(vec![]), "{patch:?} created the queue");
    }
    let current = f.upsert(&q, QueueConfigPatch { max_attempts: Some(3), ..Default::default() }).await;
    let before = f.store.queue_get(&q).await;
    for patch in &invalid {
        let expected = current.patched(patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch.clone()).await, Err(expected), "{patch:?}");
        assert_eq!(f.store.queue_get(&q).await, before, "{patch:?} changed the queue");
    }
}

/// Stats count jobs by state as of the clock's current time (scheduled jobs come due, expired
/// leases become ready), and `oldest_ready_age_ms` is now minus the smallest ready `run_at`.
pub async fn queue_stats_count_each_state<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("stats");
    let t0 = f.now();
    let dead = f.enqueue_one(&q, NewJob::new("dead").priority(10)).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, dead);
    assert_eq!(f.store.fail(leased.lease(), "x").await, Ok(()));
    let held = f.enqueue_one(&q, NewJob::new("held")).await;
    assert_eq!(f.lease_one(&q, None).await.id, held);
    clock.advance(100);
    f.enqueue(&q, vec![NewJob::new("b"), NewJob::new("c").delay_ms(50), NewJob::new("d").delay_ms(100_000)]).await;
    assert_eq!(f.stats(&q).await, counts(1, 2, 1, 1, Some(0)));
    clock.advance(900);
    let info = QueueInfo { name: q.clone(), config: defaults(), paused: false, stats: counts(2, 1, 1, 1, Some(900)) };
    assert_eq!(f.store.queue_get(&q).await, Ok(info.clone()));
    assert_eq!(f.store.queue_list().await, Ok(vec![info]));
    // The held lease expires at t0 + 30 s and becomes ready then.
    clock.advance(29_500);
    let age = f.now().ms_since(t0.plus_ms(100));
    assert_eq!(f.stats(&q).await, counts(3, 1, 0, 1, Some(age)));
    clock.advance(70_000);
    let age = f.now().ms_since(t0.plus_ms(100));
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 1, Some(age)));
}

/// `oldest_ready_age_ms` is the age of the oldest ready job whatever its priority, not of the
/// job the next lease would take: the oldest may sit behind newer jobs of higher priority.
pub async fn queue_stats_oldest_ready_spans_priorities<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("oldest");
    f.enqueue_one(&q, NewJob::new("middle").priority(-3)).await;
    clock.advance(10);
    f.enqueue_one(&q, NewJob::new("newest").priority(7)).await;
    clock.advance(10);
    f.enqueue(&q, vec![NewJob::new("a").priority(0), NewJob::new("b").priority(7)]).await;
    clock.advance(5);
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 0, Some(25)));
    // Leasing the two priority-7 jobs and the priority-0 one leaves the oldest, at priority -3.
    let leased = f.lease(&q, 3, None).await;
    assert_eq!(leased.len(), 3);
    assert_eq!(f.stats(&q).await, counts(1, 0, 3, 0, Some(25)));
    for job in &leased {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }
    let last = f.lease_one(&q, None).await;
    assert_eq!(f.store.ack(last.lease()).await, Ok(()));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 0, None));
}

/// `queue_list` lists every queue, by name (byte order), with its config, pause flag and stats.
pub async fn queue_list_lists_by_name<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    f.upsert(&queue("b-queue"), QueueConfigPatch::default()).await;
    f.enqueue_one(&queue("a-queue"), NewJob::new("a")).await;
    f.upsert(&queue("c.queue"), QueueConfigPatch { max_attempts: Some(2), ..Default::default() }).await;
    f.upsert(&queue("B"), QueueConfigPatch::default()).await;
    assert_eq!(f.store.queue_pause(&queue("B")).await, Ok(()));
    let info = |name: &str, config: QueueConfig, paused: bool, stats: QueueStats| QueueInfo {
        name: queue(name),
        config,
        paused,
        stats,
    };
    assert_eq!(
        f.store.queue_list().await,
        Ok(vec![
            info("B", defaults(), true, QueueStats::default()),
            info("a-queue", defaults(), false, counts(1, 0, 0, 0, Some(0))),
            info("b-queue", defaults(), false, QueueStats::default()),
            info("c.queue", QueueConfig { max_attempts: 2, ..defaults() }, false, QueueStats::default()),
        ])
    );
}

/// Every operation that names an existing queue returns `QueueNotFound` for an unknown one, and
/// creates nothing.
pub async fn queue_ops_on_unknown_queue_are_not_found<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let ghost = queue("nowhere");
    let not_found = Error::QueueNotFound(ghost.clone());
    assert_eq!(f.store.queue_get(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_resume(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_delete(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&ghost, DeadPage::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_redrive(&ghost, Redrive::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_purge(&ghost).await, Err(not_found));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
}

/// `queue_delete` removes the queue, every job in it (whatever its state) and its dedup entries;
/// the queue's operations then return `QueueNotFound`, its jobs `JobNotFound`; other queues are
/// untouched; enqueueing again creates a fresh default queue.
pub async fn queue_delete_removes_queue_and_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("doomed");
    let other = queue("survivor");
    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(1_234), ..Default::default() }).await;
    let dead = f.enqueue_dead(&q, 1).await[0];
    let leased_id = f.enqueue_one(&q, NewJob::new("leased")).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, leased_id);
    let ready = f.enqueue_one(&q, NewJob::new("ready").dedup_id("once")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(60_000)).await;
    let survivor = f.enqueue_one(&other, NewJob::new("survivor")).await;
    let survivor_before = f.get(survivor).await;

    assert_eq!(f.store.queue_delete(&q).await, Ok(()));
    for id in [dead, leased_id, ready, scheduled] {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    }
    f.assert_settles_rejected(leased.lease(), Error::JobNotFound(leased_id)).await;
    let not_found = Error::QueueNotFound(q.clone());
    assert_eq!(f.store.queue_get(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_resume(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_delete(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_purge(&q).await, Err(not_found));
    f.lease_none(&q).await;
    assert_eq!(f.store.queue_list().await.map(|l| l.into_iter().map(|i| i.name).collect::<Vec<_>>()), Ok(vec![other]));
    assert_eq!(f.get(survivor).await, survivor_before);

    let reborn = f.store.enqueue(&q, NewJob::new("again").dedup_id("once")).await.unwrap();
    assert!(!reborn.duplicate, "the dedup entries went with the queue");
    assert!(reborn.id > survivor);
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config), Ok(defaults()));
}

/// Every limit accepts its maximum: a full enqueue batch, lease batch and ack batch; a job with
/// the largest payload, most headers, longest names and values, dedup id, delay, priority and
/// attempts; a config at every maximum; a full dead page and redrive id list; the longest wait.
pub async fn limits_accept_their_maximum<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue(&"q".repeat(QUEUE_NAME_LEN_MAX));
    let t0 = f.now();
    let ids = f.enqueue(&q, (0..ENQUEUE_BATCH_MAX).map(|i| NewJob::new(i.to_string())).collect()).await;
    assert_eq!(ids.len(), ENQUEUE_BATCH_MAX);
    assert_increasing(&ids);
    let leased = f.lease(&q, LEASE_BATCH_MAX, Some(VISIBILITY_TIMEOUT_MS_MAX)).await;
    assert_eq!(ids_of(&leased), ids);
    assert!(leased.iter().all(|j| j.lease_expires_at == t0.plus_ms(VISIBILITY_TIMEOUT_MS_MAX)));
    let acks: Vec<LeaseRef> = leased.iter().map(LeasedJob::lease).collect();
    assert_eq!(f.store.job_ack(&acks).await, Ok(vec![Ok(()); acks.len()]));
    assert_eq!(f.stats(&q).await, QueueStats::default());

    let mut big = NewJob::new(vec![0xAB; PAYLOAD_BYTES_MAX])
        .priority(PRIORITY_MAX)
        .max_attempts(ATTEMPTS_MAX)
        .dedup_id("d".repeat(DEDUP_ID_LEN_MAX))
        .delay_ms(DELAY_MS_MAX);
    for i in 0..HEADERS_COUNT_MAX {
        let name = format!("{i:0>width$}", width = HEADER_NAME_LEN_MAX);
        big = big.header(name, "v".repeat(HEADER_VALUE_LEN_MAX));
    }
    let low = NewJob::new("low").priority(PRIORITY_MIN);
    let big_ids = f.enqueue(&q, vec![big.clone(), low.clone()]).await;
    assert_eq!(f.get(big_ids[0]).await, fresh(big_ids[0], &q, &big, t0, t0.plus_ms(DELAY_MS_MAX), ATTEMPTS_MAX));
    assert_eq!(f.get(big_ids[1]).await, fresh(big_ids[1], &q, &low, t0, t0, defaults().max_attempts));

    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: WAIT_MS_MAX };
    let started = Instant::now();
    let got = within("a lease with a ready job", f.store.job_lease(&q, options)).await.unwrap();
    assert_eq!(ids_of(&got), vec![big_ids[1]]);
    assert!(started.elapsed() < PROMPTLY, "a lease with a job ready must not wait");

    let at_max = QueueConfig {
        delivery: DeliveryMode::AtLeastOnce,
        visibility_timeout_ms: VISIBILITY_TIMEOUT_MS_MAX,
        max_attempts: ATTEMPTS_MAX,
        backoff: Backoff {
            initial_ms: DELAY_MS_MAX,
            max_ms: DELAY_MS_MAX,
            multiplier: BACKOFF_MULTIPLIER_MAX,
            jitter: Jitter::None,
        },
        dedup_window_ms: DEDUP_WINDOW_MS_MAX,
    };
    let patch = QueueConfigPatch {
        delivery: Some(at_max.delivery),
        visibility_timeout_ms: Some(at_max.visibility_timeout_ms),
        max_attempts: Some(at_max.max_attempts),
        backoff: Some(at_max.backoff.clone().into()),
        dedup_window_ms: Some(at_max.dedup_window_ms),
    };
    assert_eq!(f.store.queue_upsert(&q, patch).await, Ok(at_max));
    let page = DeadPage { after: None, limit: DEAD_PAGE_MAX };
    assert_eq!(f.store.dead_list(&q, page).await, Ok(DeadList { jobs: vec![], next: None }));
    let all_ids = Some((1..=REDRIVE_IDS_MAX as u64).map(JobId::new).collect());
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: all_ids, limit: None }).await, Ok(0));
}

// ---------------------------------------------------------------------------------------------
// Long poll
// ---------------------------------------------------------------------------------------------

/// A lease waiting on an empty queue returns, promptly, the job another task enqueues during the
/// wait.
pub async fn long_poll_wakes_on_enqueue<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-enqueue");
    f.upsert(&q, QueueConfigPatch::default()).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    let id = f.enqueue_one(&q, NewJob::new("wake up")).await;
    assert_woke(waiting, id, 1).await;
}

/// Several leases waiting on one queue all return, promptly, when one enqueue makes enough jobs
/// ready for all of them: a store that wakes waiters one at a time must pass the wake-up on.
pub async fn long_poll_wakes_every_waiter_a_batch_can_serve<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-many");
    f.upsert(&q, QueueConfigPatch::default()).await;
    let waiting: Vec<_> = (0..4).map(|_| spawn_waiting_lease(&f.store, &q)).collect();
    tokio::time::sleep(NUDGE).await;
    let jobs = (0..4).map(|i| NewJob::new(format!("job {i}"))).collect();
    let enqueued = f.store.job_enqueue(&q, jobs).await.unwrap();
    let mut got = Vec::new();
    for lease in waiting {
        let (jobs, elapsed) = within("a waiting lease", lease).await.unwrap();
        assert!(elapsed < PROMPTLY, "a waiting lease took {elapsed:?} to wake up (wait was {LONG_WAIT_MS} ms)");
        assert_eq!(jobs.len(), 1, "each waiting lease asked for one job and four were ready");
        got.push(jobs[0].id);
    }
    got.sort();
    assert_eq!(got, enqueued.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// A lease waiting on a queue that does not exist yet returns the job whose enqueue creates it.
pub async fn long_poll_on_unknown_queue_wakes_on_enqueue<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-unborn");
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    let id = f.enqueue_one(&q, NewJob::new("first ever")).await;
    assert_woke(waiting, id, 1).await;
}

/// A waiting lease returns a scheduled job as soon as it comes due.
pub async fn long_poll_wakes_when_scheduled_job_is_due<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-scheduled");
    let id = f.enqueue_one(&q, NewJob::new("soon").delay_ms(SHORT_MS)).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 1).await;
}

/// A waiting lease returns a nacked job as soon as its nack delay has elapsed.
pub async fn long_poll_wakes_when_nack_delay_elapses<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-nack");
    let id = f.enqueue_one(&q, NewJob::new("retry soon")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.now();
    let outcome = f.store.nack(leased.lease(), Some(SHORT_MS), None).await.unwrap();
    let after = f.now();
    let NackOutcome::Retrying { run_at } = outcome else { panic!("a first nack must retry, got {outcome:?}") };
    assert!(run_at >= before.plus_ms(SHORT_MS) && run_at <= after.plus_ms(SHORT_MS), "run_at {run_at}");
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 2).await;
}

/// A waiting lease returns a job as soon as its previous lease expires.
pub async fn long_poll_wakes_when_lease_expires<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-expiry");
    let id = f.enqueue_one(&q, NewJob::new("abandoned")).await;
    assert_eq!(f.lease_one(&q, Some(SHORT_MS)).await.id, id);
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 2).await;
}

/// A waiting lease returns a dead job as soon as it is redriven.
pub async fn long_poll_wakes_on_redrive<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-redrive");
    let id = f.enqueue_dead(&q, 1).await[0];
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(1));
    assert_woke(waiting, id, 1).await;
}

/// A lease waiting on a paused queue returns its job as soon as the queue is resumed.
pub async fn long_poll_wakes_on_resume<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-resume");
    let id = f.enqueue_one(&q, NewJob::new("paused")).await;
    assert_eq!(f.store.queue_pause(&q).await, Ok(()));
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    assert_eq!(f.store.queue_resume(&q).await, Ok(()));
    assert_woke(waiting, id, 1).await;
}

/// A lease that finds nothing for its whole wait returns empty after about `wait_ms`, on an
/// existing queue and on an unknown one (which it does not create).
pub async fn long_poll_with_nothing_returns_empty_after_wait<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-quiet");
    f.upsert(&q, QueueConfigPatch::default()).await;
    for name in [q, queue("poll-nobody")] {
        let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 500 };
        let started = Instant::now();
        let jobs = within("an empty long poll", f.store.job_lease(&name, options)).await;
        let elapsed = started.elapsed();
        assert_eq!(jobs, Ok(vec![]));
        assert!(elapsed >= Duration::from_millis(450), "{name}: returned after {elapsed:?}, before its 500 ms wait");
        assert!(elapsed < PROMPTLY, "{name}: returned after {elapsed:?}, long after its 500 ms wait");
    }
    assert_eq!(f.store.queue_list().await.map(|l| l.len()), Ok(1));
}

/// Advancing a [`ManualClock`] wakes a waiting lease (through the callback the store registered
/// with `Clock::on_advance`), which returns the job that came due.
pub async fn long_poll_wakes_on_manual_clock_advance<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("poll-manual");
    let id = f.enqueue_one(&q, NewJob::new("due on advance").delay_ms(1_000)).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    clock.advance(1_000);
    let advanced = Instant::now();
    let output = within("the waiting lease", waiting).await.unwrap();
    let since_advance = advanced.elapsed();
    check_woke(output, id, 1);
    // Tighter than PROMPTLY: a store that only re-checks on a periodic timer (rather than on the
    // clock's callback) would usually miss this.
    assert!(since_advance < Duration::from_millis(500), "woke {since_advance:?} after the clock advanced");
}

// ---------------------------------------------------------------------------------------------
// Invariants (DESIGN.md). Invariant 1 is checked by the crash test, which kills a real process.
// ---------------------------------------------------------------------------------------------

/// Invariant 2: a job has at most one live lease, however many consumers lease at once; every
/// job of a backlog drained by concurrent consumers is handed out exactly once.
pub async fn invariant_2_one_live_lease<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("contended");
    let id = f.enqueue_one(&q, NewJob::new("only one")).await;
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(1_000), wait_ms: 0 };
    let got = lease_concurrently(&f.store, &q, 16, options).await;
    assert_eq!(got.iter().map(|j| (j.id, j.attempt)).collect::<Vec<_>>(), vec![(id, 1)]);
    assert_eq!(lease_concurrently(&f.store, &q, 16, options).await, Vec::<LeasedJob>::new());
    assert_eq!(f.stats(&q).await, counts(0, 0, 1, 0, None));
    clock.advance(1_000);
    let got = lease_concurrently(&f.store, &q, 16, options).await;
    assert_eq!(got.iter().map(|j| (j.id, j.attempt)).collect::<Vec<_>>(), vec![(id, 2)]);

    let backlog = queue("backlog");
    let ids = f.enqueue(&backlog, (0..200).map(|i| NewJob::new(format!("{i}"))).collect()).await;
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let (store, backlog) = (Arc::clone(&f.store), backlog.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let options = LeaseOptions { max_jobs: 7, visibility_timeout_ms: None, wait_ms: 0 };
                let jobs = store.job_lease(&backlog, options).await.unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        });
    }
    let mut handed_out = Vec::new();
    while let Some(mine) = within("concurrent consumers", set.join_next()).await {
        handed_out.extend(mine.unwrap());
    }
    handed_out.sort();
    assert_eq!(handed_out, ids, "each job of the backlog must be leased exactly once");
}

/// Invariant 3: an ack, nack, extend or fail whose token is not the job's current live lease (an
/// expired lease, a superseded one, a stranger's token, another job's token, a settled lease) is
/// rejected with `LeaseLost` (or `JobNotFound` once the job is gone) and changes nothing.
pub async fn invariant_3_fencing<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fenced");
    let a = f.enqueue_one(&q, NewJob::new("a")).await;
    let first = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(first.id, a);

    // Expired, not yet leased again: the lease ended exactly at lease_expires_at.
    clock.advance(1_000);
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(a)).await;

    // Superseded by a new lease, and a random token: both rejected, the new lease untouched.
    let second = f.lease_one(&q, Some(1_000)).await;
    assert_eq!((second.id, second.attempt), (a, 2));
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(a)).await;
    f.assert_settles_rejected(LeaseRef { id: a, lease_token: LeaseToken::random() }, Error::LeaseLost(a)).await;

    // Another job's token.
    let ids = f.enqueue(&q, vec![NewJob::new("b"), NewJob::new("c")]).await;
    let (b, c) = (ids[0], ids[1]);
    let leases = f.lease(&q, 2, Some(10_000)).await;
    assert_eq!(ids_of(&leases), vec![b, c]);
    let (lb, lc) = (leases[0].lease(), leases[1].lease());
    f.assert_settles_rejected(LeaseRef { id: b, lease_token: lc.lease_token }, Error::LeaseLost(b)).await;

    // Settled leases: nacked (job ready again), failed (dead), acked (gone).
    assert_eq!(f.store.nack(lb, Some(0), None).await, Ok(NackOutcome::Retrying { run_at: f.now() }));
    f.assert_settles_rejected(lb, Error::LeaseLost(b)).await;
    assert_eq!(f.store.fail(lc, "no").await, Ok(()));
    f.assert_settles_rejected(lc, Error::LeaseLost(c)).await;
    assert_eq!(f.store.ack(second.lease()).await, Ok(()));
    f.assert_settles_rejected(second.lease(), Error::JobNotFound(a)).await;
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 1, Some(0)));
}

/// Invariant 4: an acked job is never delivered again, however much time passes; a dead job is
/// not delivered until it is redriven.
pub async fn invariant_4_no_resurrection<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("no-zombies");
    let ids = f.enqueue(&q, vec![NewJob::new("acked"), NewJob::new("dead")]).await;
    let leases = f.lease(&q, 2, Some(1_000)).await;
    assert_eq!(ids_of(&leases), ids);
    assert_eq!(f.store.ack(leases[0].lease()).await, Ok(()));
    assert_eq!(f.store.fail(leases[1].lease(), "dead").await, Ok(()));
    for _ in 0..3 {
        clock.advance(86_400_000);
        f.lease_none(&q).await;
    }
    assert_eq!(f.store.job_get(ids[0]).await, Err(Error::JobNotFound(ids[0])));
    assert_eq!(f.get(ids[1]).await.state, JobState::Dead);
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(1));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1]]);
}

/// Invariant 5: a job is dead-lettered exactly once, after its `max_attempts`-th lease fails
/// (nack or expiry), or at once on `fail`; the error of every attempt is kept and nothing more is
/// added while it is dead.
pub async fn invariant_5_bounded_retries<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("bounded-retries");
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(3), ..Default::default() }).await;
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("flaky")).await;
    let one = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(f.store.nack(one.lease(), Some(0), Some("n1")).await, Ok(NackOutcome::Retrying { run_at: t0 }));
    let two = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(two.attempt, 2);
    clock.advance(1_000);
    let three = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(three.attempt, 3);
    assert_eq!(f.store.nack(three.lease(), Some(0), Some("n3")).await, Ok(NackOutcome::Dead));
    let expected_errors = vec![
        attempt_error(1, "n1", t0),
        attempt_error(2, "lease expired", t0.plus_ms(1_000)),
        attempt_error(3, "n3", t0.plus_ms(1_000)),
    ];
    let dead = f.get(id).await;
    assert_eq!((dead.state, dead.attempt, &dead.errors), (JobState::Dead, 3, &expected_errors));
    clock.advance(600_000);
    assert_eq!(f.get(id).await, dead, "a dead job does not change while it waits");
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![dead], next: None }));

    // fail on the first of five attempts: dead at once, one error.
    let early = f.enqueue_one(&q, NewJob::new("hopeless").max_attempts(5)).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, early);
    assert_eq!(f.store.fail(leased.lease(), "hopeless").await, Ok(()));
    let job = f.get(early).await;
    assert_eq!((job.state, job.attempt, job.errors), (JobState::Dead, 1, vec![attempt_error(1, "hopeless", f.now())]));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 2, None));
}

/// Invariant 6: within the window the same (queue, dedup id) yields the same id and
/// `duplicate: true`, however many times and however concurrently it is sent, within a batch too.
pub async fn invariant_6_dedup_window<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("dedup-storm");
    let barrier = Arc::new(Barrier::new(32));
    let mut set = JoinSet::new();
    for i in 0..32 {
        let (store, q, barrier) = (Arc::clone(&f.store), q.clone(), Arc::clone(&barrier));
        set.spawn(async move {
            barrier.wait().await;
            store.job_enqueue(&q, vec![NewJob::new(format!("copy {i}")).dedup_id("same")]).await.unwrap()
        });
    }
    let mut results = Vec::new();
    while let Some(out) = within("concurrent enqueues", set.join_next()).await {
        results.extend(out.unwrap());
    }
    assert_eq!(results.len(), 32);
    let id = results[0].id;
    assert_eq!(results.iter().filter(|e| !e.duplicate).count(), 1, "exactly one enqueue creates the job: {results:?}");
    assert!(results.iter().all(|e| e.id == id), "every duplicate names the original: {results:?}");
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    assert_eq!(f.get(id).await.dedup_id, Some("same".to_owned()));

    for _ in 0..10 {
        assert_eq!(
            f.store.enqueue(&q, NewJob::new("again").dedup_id("same")).await,
            Ok(Enqueued { id, duplicate: true })
        );
    }

    let batch = vec![
        NewJob::new("m").dedup_id("m"),
        NewJob::new("m again").dedup_id("m"),
        NewJob::new("same").dedup_id("same"),
        NewJob::new("n").dedup_id("n"),
        NewJob::new("no dedup id"),
    ];
    let out = f.store.job_enqueue(&q, batch).await.unwrap();
    assert_eq!(out.len(), 5);
    let (m, n, plain) = (out[0].id, out[3].id, out[4].id);
    assert_eq!(
        out,
        vec![
            Enqueued { id: m, duplicate: false },
            Enqueued { id: m, duplicate: true },
            Enqueued { id, duplicate: true },
            Enqueued { id: n, duplicate: false },
            Enqueued { id: plain, duplicate: false },
        ]
    );
    assert_increasing(&[id, m, n, plain]);
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 0, Some(0)));
    let elsewhere = f.store.enqueue(&queue("dedup-elsewhere"), NewJob::new("x").dedup_id("same")).await.unwrap();
    assert!(!elsewhere.duplicate, "dedup ids are per queue");
}

/// Invariant 7: times are judged by the store's one clock. With a [`ManualClock`], nothing
/// expires, comes due or leaves the dedup window while real time passes, and every recorded time
/// is the clock's; advancing the clock is what moves them.
pub async fn invariant_7_one_clock<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("clocked");
    let t0 = f.now();
    f.upsert(&q, QueueConfigPatch { dedup_window_ms: Some(100), ..Default::default() }).await;
    let ids = f.enqueue(&q, vec![NewJob::new("leased"), NewJob::new("dedup").dedup_id("d")]).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(100)).await;
    let leases = f.lease(&q, 2, Some(100)).await;
    assert_eq!(ids_of(&leases), ids);
    assert!(leases.iter().all(|l| l.enqueued_at == t0 && l.lease_expires_at == t0.plus_ms(100)));

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.now(), t0);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 1, 2, 0, None));
    assert_eq!(f.get(scheduled).await.state, JobState::Scheduled);
    assert_eq!(f.get(ids[0]).await.lease_expires_at, Some(t0.plus_ms(100)));
    assert_eq!(
        f.store.enqueue(&q, NewJob::new("dedup").dedup_id("d")).await,
        Ok(Enqueued { id: ids[1], duplicate: true })
    );
    assert_eq!(f.store.ack(leases[0].lease()).await, Ok(()), "the lease is live by the store's clock");

    clock.advance(100);
    let got = f.lease(&q, 10, Some(100)).await;
    assert_eq!(ids_of(&got), vec![ids[1], scheduled], "expired lease (run_at t0 + 100, lower id), then due job");
    let again = f.store.enqueue(&q, NewJob::new("dedup").dedup_id("d")).await.unwrap();
    assert!(!again.duplicate, "the window passed on the store's clock");
    assert_eq!(f.get(again.id).await.enqueued_at, t0.plus_ms(100));
}

/// The enqueue batches that every limit rejects, each with what it breaks.
fn invalid_batches() -> Vec<(&'static str, Vec<NewJob>)> {
    let mut too_many_headers = NewJob::new("headers");
    for i in 0..=HEADERS_COUNT_MAX {
        too_many_headers = too_many_headers.header(format!("h{i}"), "v");
    }
    vec![
        ("empty batch", vec![]),
        ("batch over ENQUEUE_BATCH_MAX", vec![NewJob::new("x"); ENQUEUE_BATCH_MAX + 1]),
        ("payload over PAYLOAD_BYTES_MAX", vec![NewJob::new("ok"), NewJob::new(vec![0u8; PAYLOAD_BYTES_MAX + 1])]),
        ("headers over HEADERS_COUNT_MAX", vec![too_many_headers]),
        (
            "header name over HEADER_NAME_LEN_MAX",
            vec![NewJob::new("x").header("n".repeat(HEADER_NAME_LEN_MAX + 1), "v")],
        ),
        ("empty header name", vec![NewJob::new("x").header("", "v")]),
        (
            "header value over HEADER_VALUE_LEN_MAX",
            vec![NewJob::new("x").header("n", "v".repeat(HEADER_VALUE_LEN_MAX + 1))],
        ),
        ("priority over PRIORITY_MAX", vec![NewJob::new("x").priority(PRIORITY_MAX + 1)]),
        ("priority under PRIORITY_MIN", vec![NewJob::new("x").priority(PRIORITY_MIN - 1)]),
        ("delay over DELAY_MS_MAX", vec![NewJob::new("x").delay_ms(DELAY_MS_MAX + 1)]),
        ("max_attempts 0", vec![NewJob::new("x").max_attempts(0)]),
        ("max_attempts over ATTEMPTS_MAX", vec![NewJob::new("x").max_attempts(ATTEMPTS_MAX + 1)]),
        ("dedup id over DEDUP_ID_LEN_MAX", vec![NewJob::new("x").dedup_id("d".repeat(DEDUP_ID_LEN_MAX + 1))]),
        ("empty dedup id", vec![NewJob::new("x").dedup_id("")]),
    ]
}

/// The queue config patches that every limit rejects, each with what it breaks.
fn invalid_patches() -> Vec<(&'static str, QueueConfigPatch)> {
    let patch = QueueConfigPatch::default;
    vec![
        ("visibility timeout 0", QueueConfigPatch { visibility_timeout_ms: Some(0), ..patch() }),
        (
            "visibility timeout over VISIBILITY_TIMEOUT_MS_MAX",
            QueueConfigPatch { visibility_timeout_ms: Some(VISIBILITY_TIMEOUT_MS_MAX + 1), ..patch() },
        ),
        ("max_attempts 0", QueueConfigPatch { max_attempts: Some(0), ..patch() }),
        ("max_attempts over ATTEMPTS_MAX", QueueConfigPatch { max_attempts: Some(ATTEMPTS_MAX + 1), ..patch() }),
        (
            "dedup window over DEDUP_WINDOW_MS_MAX",
            QueueConfigPatch { dedup_window_ms: Some(DEDUP_WINDOW_MS_MAX + 1), ..patch() },
        ),
        (
            "backoff delay over DELAY_MS_MAX",
            QueueConfigPatch {
                backoff: Some(Backoff { max_ms: DELAY_MS_MAX + 1, ..Backoff::default() }.into()),
                ..patch()
            },
        ),
        (
            "backoff multiplier over BACKOFF_MULTIPLIER_MAX",
            QueueConfigPatch {
                backoff: Some(Backoff { multiplier: BACKOFF_MULTIPLIER_MAX * 2.0, ..Backoff::default() }.into()),
                ..patch()
            },
        ),
    ]
}

/// Invariant 8: every limit of `onceq_core::limits` the seam takes rejects a request past it with
/// a typed error (the shared validation's, compared whole) and changes nothing; unknown jobs are
/// `JobNotFound`, unknown queues `QueueNotFound`.
pub async fn invariant_8_bounded_everything<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;

    // Queue names are checked where they are made, before any store sees them.
    assert_eq!(QueueName::new("").map_err(|e| e.kind()), Err(ErrorKind::InvalidRequest));
    assert_eq!(
        QueueName::new("q".repeat(QUEUE_NAME_LEN_MAX + 1)).map_err(|e| e.kind()),
        Err(ErrorKind::InvalidRequest)
    );
    assert_eq!(QueueName::new("a b").map_err(|e| e.kind()), Err(ErrorKind::InvalidRequest));

    // On an empty store: nothing may be created.
    let q = queue("bounded");
    let empty = Ok(vec![]);
    for (what, batch) in invalid_batches() {
        let expected = validate::enqueue(&batch).unwrap_err();
        assert_eq!(f.store.job_enqueue(&q, batch).await, Err(expected), "{what}");
        assert_eq!(f.store.queue_list().await, empty, "{what} created the queue");
    }
    let too_large = vec![NewJob::new(vec![0u8; PAYLOAD_BYTES_MAX + 1])];
    assert_eq!(f.store.job_enqueue(&q, too_large).await.map_err(|e| e.kind()), Err(ErrorKind::PayloadTooLarge));
    for (what, patch) in invalid_patches() {
        let expected = defaults().patched(&patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch).await, Err(expected), "{what}");
        assert_eq!(f.store.queue_list().await, empty, "{what} created the queue");
    }
    let not_found = Error::QueueNotFound(q.clone());
    assert_eq!(f.store.queue_get(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Err(not_found));
    for id in [UNKNOWN_ID, JobId::new(u64::MAX)] {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
        f.assert_settles_rejected(LeaseRef { id, lease_token: LeaseToken::random() }, Error::JobNotFound(id)).await;
    }
    let no_items = validate::settle_batch(0).unwrap_err();
    assert_eq!(f.store.job_ack(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_nack(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_extend(&[]).await, Err(no_items.clone()));
    assert_eq!(f.store.job_fail(&[]).await, Err(no_items));
    assert_eq!(f.store.queue_list().await, empty);

    // On an existing queue with a leased and a ready job: nothing may change.
    let ids = f.enqueue(&q, vec![NewJob::new("held"), NewJob::new("waiting")]).await;
    let held = f.lease_one(&q, None).await;
    assert_eq!(held.id, ids[0]);
    let before = f.snapshot(&ids).await;

    for (what, batch) in invalid_batches() {
        let expected = validate::enqueue(&batch).unwrap_err();
        assert_eq!(f.store.job_enqueue(&q, batch).await, Err(expected), "{what}");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }
    let config = f.store.queue_get(&q).await.unwrap().config;
    for (what, patch) in invalid_patches() {
        let expected = config.patched(&patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch).await, Err(expected), "{what}");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }
    let options = LeaseOptions::default;
    let invalid_options = [
        ("max_jobs 0", LeaseOptions { max_jobs: 0, ..options() }),
        ("max_jobs over LEASE_BATCH_MAX", LeaseOptions { max_jobs: LEASE_BATCH_MAX + 1, ..options() }),
        ("visibility timeout 0", LeaseOptions { visibility_timeout_ms: Some(0), ..options() }),
        (
            "visibility timeout over VISIBILITY_TIMEOUT_MS_MAX",
            LeaseOptions { visibility_timeout_ms: Some(VISIBILITY_TIMEOUT_MS_MAX + 1), ..options() },
        ),
        ("wait over WAIT_MS_MAX", LeaseOptions { wait_ms: WAIT_MS_MAX + 1, ..options() }),
    ];
    for (what, options) in invalid_options {
        let started = Instant::now();
        assert_eq!(f.store.job_lease(&q, options).await, Err(options.validate().unwrap_err()), "{what}");
        assert!(started.elapsed() < PROMPTLY, "{what}: an invalid lease must not wait");
        assert_eq!(f.snapshot(&ids).await, before, "{what} changed the store");
    }

    let lease = held.lease();
    let nack = |delay_ms| Nack { id: lease.id, lease_token: lease.lease_token, delay_ms, error: None };
    let extend = |ms| Extend { id: lease.id, lease_token: lease.lease_token, visibility_timeout_ms: ms };
    let fail = Fail { id: lease.id, lease_token: lease.lease_token, error: "x".into() };
    let long_nack = [nack(Some(DELAY_MS_MAX + 1))];
    assert_eq!(f.store.job_nack(&long_nack).await, Err(validate::nacks(&long_nack).unwrap_err()));
    for ms in [0, VISIBILITY_TIMEOUT_MS_MAX + 1] {
        let extends = [extend(ms)];
        assert_eq!(f.store.job_extend(&extends).await, Err(validate::extends(&extends).unwrap_err()), "extend {ms}");
    }
    let too_many = validate::settle_batch(SETTLE_BATCH_MAX + 1).unwrap_err();
    assert_eq!(f.store.job_ack(&vec![lease; SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_nack(&vec![nack(Some(0)); SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_extend(&vec![extend(1_000); SETTLE_BATCH_MAX + 1]).await, Err(too_many.clone()));
    assert_eq!(f.store.job_fail(&vec![fail; SETTLE_BATCH_MAX + 1]).await, Err(too_many));
    assert_eq!(f.snapshot(&ids).await, before, "a rejected settle changed the store");

    for limit in [0, DEAD_PAGE_MAX + 1] {
        let page = DeadPage { after: None, limit };
        assert_eq!(f.store.dead_list(&q, page).await, Err(validate::dead_page(&page).unwrap_err()), "page {limit}");
    }
    let ids_over = Redrive { ids: Some((1..=REDRIVE_IDS_MAX as u64 + 1).map(JobId::new).collect()), limit: None };
    let limit_zero = Redrive { ids: None, limit: Some(0) };
    for redrive in [ids_over, limit_zero] {
        let expected = validate::redrive(&redrive).unwrap_err();
        assert_eq!(f.store.dead_redrive(&q, redrive).await, Err(expected));
    }
    assert_eq!(f.snapshot(&ids).await, before, "a rejected call changed the store");
    assert_eq!(f.store.ack(lease).await, Ok(()), "the lease survived every rejected call");
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

/// Expands to one `#[tokio::test]` per conformance function, each running it against `$backend`
/// (an expression whose type implements [`Backend`](crate::Backend), evaluated in each test).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features:
///
/// ```ignore
/// onceq_testkit::conformance_suite!(my_backend::TestBackend);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name(&$backend).await;
            }
        )*
    };
    ($backend:expr) => {
        $crate::conformance_suite!(@tests $backend;
            enqueue_returns_ids_in_request_order,
            enqueue_batch_is_atomic,
            enqueue_creates_unknown_queue_with_defaults,
            enqueue_max_attempts_from_job_else_queue,
            enqueue_effectively_once_requires_dedup_ids,
            enqueue_delayed_job_becomes_ready_when_due,
            enqueue_run_at_schedules_at_that_time,
            enqueue_dedup_returns_original_even_after_ack_or_dead,
            enqueue_dedup_window_expires,
            lease_order_priority_then_run_at_then_id,
            lease_batch_up_to_max_jobs,
            lease_sets_attempt_token_and_expiry,
            lease_unknown_queue_is_empty_and_not_created,
            lease_paused_queue_hands_out_nothing,
            lease_at_most_once_removes_job,
            ack_removes_job,
            ack_batch_judges_each_item_alone,
            nack_extend_fail_batches_judge_each_item_alone,
            nack_with_explicit_delay,
            nack_with_backoff,
            nack_zero_delay_is_ready_at_once,
            release_returns_the_job_without_burning_an_attempt,
            release_with_a_delay_schedules_the_job,
            release_batch_judges_each_item_alone,
            nack_on_last_attempt_dead_letters,
            extend_moves_expiry_and_keeps_token,
            fail_dead_letters_with_error,
            settle_long_error_text_is_cut,
            lease_expiry_redelivers_with_next_attempt,
            lease_expiry_on_last_attempt_dead_letters,
            error_history_keeps_every_attempt,
            dead_list_pages,
            dead_redrive_all,
            dead_redrive_by_ids_skips_others,
            dead_redrive_with_limit,
            dead_purge_deletes_dead_jobs,
            queue_upsert_creates_with_defaults_and_patch,
            queue_upsert_updates_existing,
            queue_upsert_merges_a_partial_backoff,
            queue_upsert_rejects_invalid_config,
            queue_stats_count_each_state,
            queue_stats_oldest_ready_spans_priorities,
            queue_list_lists_by_name,
            queue_ops_on_unknown_queue_are_not_found,
            queue_delete_removes_queue_and_jobs,
            limits_accept_their_maximum,
            long_poll_wakes_on_enqueue,
            long_poll_wakes_every_waiter_a_batch_can_serve,
            long_poll_on_unknown_queue_wakes_on_enqueue,
            long_poll_wakes_when_scheduled_job_is_due,
            long_poll_wakes_when_nack_delay_elapses,
            long_poll_wakes_when_lease_expires,
            long_poll_wakes_on_redrive,
            long_poll_wakes_on_resume,
            long_poll_with_nothing_returns_empty_after_wait,
            long_poll_wakes_on_manual_clock_advance,
            invariant_2_one_live_lease,
            invariant_3_fencing,
            invariant_4_no_resurrection,
            invariant_5_bounded_retries,
            invariant_6_dedup_window,
            invariant_7_one_clock,
            invariant_8_bounded_everything,
        );
    };
}
