//! The onceq side of each scenario: concurrent tokio tasks calling the seam, timing every call.
//!
//! Generic over the seam, so the same scenarios measure the embedded store and, with
//! `onceq bench --server`, a server over HTTP through `onceq_client::Client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::commit::{Commit, CommitEnqueue, CommitId};
use onceq_core::{LeaseOptions, LeaseRef, NewJob, QueueConfigPatch, QueueName, Store};
use tokio::task::JoinSet;

use super::error::BenchError;

/// Lease length in the scenarios: far longer than any run, so no job is redelivered and every
/// job is leased and acked exactly once (the scenarios check it).
const VISIBILITY_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// How long an end-to-end worker's lease call waits for a job (long poll) before it looks again
/// whether the run is over.
const LEASE_WAIT_MS: u64 = 50;

/// Producers of the embedded store's batched end-to-end scenario.
pub(crate) const END_TO_END_BATCHED_PRODUCERS: u64 = 4;
/// Workers of that scenario: twice the producers. A worker makes two calls per batch (lease and
/// ack) where a producer makes one, so with as many workers as producers the producers outrun
/// them and the queue fills up: the run then measures a growing backlog, whose leases and
/// enqueues write far apart in the table and its indexes, while the raw SQLite floor runs the
/// steady state of a queue whose workers keep up (what is leased is what was just enqueued). With
/// twice the workers, each side makes the same number of calls and the backlog stays at a few
/// batches, as in the floor. (`--store` keeps 4 + 4: see there.) Measured back to back on the embedded store (fsync, 200,000 jobs): 4 + 4 ran at
/// 67% of the floor, 4 + 8 at 79%.
pub(crate) const END_TO_END_BATCHED_WORKERS: u64 = 2 * END_TO_END_BATCHED_PRODUCERS;

/// The per-call latencies of one kind of call.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    /// `enqueue`, `lease` or `ack`.
    pub kind: &'static str,
    /// One entry per call, sorted once the run is over.
    pub latencies: Vec<Duration>,
}

impl Calls {
    fn new(kind: &'static str) -> Self {
        Calls { kind, latencies: Vec::new() }
    }

    /// The latency below which a fraction `p` of calls finished (nearest rank).
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        debug_assert!(self.latencies.is_sorted(), "percentiles read sorted latencies");
        let n = self.latencies.len();
        if n == 0 {
            return None;
        }
        let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
        self.latencies.get(rank - 1).copied()
    }
}

/// What one scenario did: its jobs, its wall time, and its calls by kind.
#[derive(Debug)]
pub(crate) struct Run {
    /// Jobs through the whole scenario.
    pub jobs: u64,
    /// Wall time from the first call to the last job done.
    pub elapsed: Duration,
    /// Per-call latencies by kind.
    pub calls: Vec<Calls>,
}

impl Run {
    fn new(jobs: u64, elapsed: Duration, mut calls: Vec<Calls>) -> Self {
        for kind in &mut calls {
            kind.latencies.sort_unstable();
        }
        Run { jobs, elapsed, calls }
    }
}

/// Hands out ranges of job numbers to concurrent producers until `total` are taken.
struct Claims {
    next: AtomicU64,
    total: u64,
}

impl Claims {
    /// The number of the next call's first job and the call's size, or `None` when every job
    /// has been claimed.
    fn claim(&self, per_call: u64) -> Option<(u64, u64)> {
        let start = self.next.fetch_add(per_call, Ordering::Relaxed);
        (start < self.total).then(|| (start, per_call.min(self.total - start)))
    }
}

/// Which ordering keys a scenario's jobs carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// None: an unordered queue's jobs.
    None,
    /// Job number `n` carries the key `key-{n mod count}`: `count` keys, taking turns, so each
    /// key's jobs are spread evenly over the run.
    Spread(u64),
}

impl Keys {
    fn of(self, n: u64) -> Option<String> {
        match self {
            Keys::None => None,
            Keys::Spread(count) => Some(format!("key-{}", n % count.max(1))),
        }
    }
}

/// Jobs numbered `start..start + n`.
fn batch(payload: &[u8], start: u64, n: u64, keys: Keys) -> Vec<NewJob> {
    (start..start + n).map(|i| NewJob { ordering_key: keys.of(i), ..NewJob::new(payload.to_vec()) }).collect()
}

/// Makes `queue` ordered per key when the scenario's jobs carry keys.
pub(crate) async fn configure<S: Store>(store: &S, queue: &QueueName, keys: Keys) -> Result<(), BenchError> {
    if keys != Keys::None {
        let patch = QueueConfigPatch { ordering: Some(onceq_core::Ordering::PerKey), ..QueueConfigPatch::default() };
        store.queue_upsert(queue, patch).await?;
    }
    Ok(())
}

/// Enqueues `jobs` jobs, `per_call` at a time, from `producers` concurrent tasks.
pub(crate) async fn enqueue<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    per_call: u64,
    producers: u64,
    keys: Keys,
) -> Result<Run, BenchError> {
    configure(store, queue, keys).await?;
    let claims = Arc::new(Claims { next: AtomicU64::new(0), total: jobs });
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..producers {
        tasks.spawn(producer(store.clone(), queue.clone(), payload.clone(), claims.clone(), per_call, keys));
    }
    let enqueues = join_calls(tasks, "enqueue").await?;
    let elapsed = started.elapsed();
    let enqueued = enqueues.latencies.len() as u64;
    if enqueued != jobs.div_ceil(per_call) {
        return Err(BenchError::Check(format!("{enqueued} enqueue calls for {jobs} jobs at {per_call} per call")));
    }
    Ok(Run::new(jobs, elapsed, vec![enqueues]))
}

/// Enqueues `jobs` jobs untimed, as fast as the store takes them: the backlog of a lease scenario.
pub(crate) async fn fill<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    keys: Keys,
) -> Result<(), BenchError> {
    let per_call = onceq_core::limits::ENQUEUE_BATCH_MAX as u64;
    enqueue(store, queue, payload, jobs, per_call, 4, keys).await.map(drop)
}

async fn producer<S: Store>(
    store: S,
    queue: QueueName,
    payload: Arc<[u8]>,
    claims: Arc<Claims>,
    per_call: u64,
    keys: Keys,
) -> Result<Calls, BenchError> {
    let mut calls = Calls::new("enqueue");
    while let Some((start, n)) = claims.claim(per_call) {
        let jobs = batch(&payload, start, n, keys);
        let started = Instant::now();
        let enqueued = store.job_enqueue(&queue, jobs).await?;
        calls.latencies.push(started.elapsed());
        if enqueued.len() as u64 != n || enqueued.iter().any(|e| e.duplicate) {
            return Err(BenchError::Check(format!("enqueue of {n} jobs returned {enqueued:?}")));
        }
    }
    Ok(calls)
}

/// Joins tasks that each return their calls of one kind, merging them.
async fn join_calls(mut tasks: JoinSet<Result<Calls, BenchError>>, kind: &'static str) -> Result<Calls, BenchError> {
    let mut all = Calls::new(kind);
    while let Some(joined) = tasks.join_next().await {
        let calls = joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}")))??;
        all.latencies.extend(calls.latencies);
    }
    Ok(all)
}

/// Shared by the workers of an end-to-end run: how many jobs are done, and when the last was.
struct Progress {
    jobs: u64,
    acked: AtomicU64,
    /// Set by the worker whose ack completes the run.
    finished_at: Mutex<Option<Instant>>,
}

impl Progress {
    fn done(&self) -> bool {
        self.acked.load(Ordering::Acquire) >= self.jobs
    }

    fn record(&self, n: u64) -> Result<(), BenchError> {
        let before = self.acked.fetch_add(n, Ordering::AcqRel);
        let after = before + n;
        if after > self.jobs {
            return Err(BenchError::Check(format!("{after} acks for {} jobs: a job was delivered twice", self.jobs)));
        }
        if after == self.jobs {
            let mut finished = self.finished_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *finished = Some(Instant::now());
        }
        Ok(())
    }
}

/// How an end-to-end run is driven.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Jobs per enqueue, lease and ack call.
    pub per_call: u64,
    /// Concurrent producers.
    pub producers: u64,
    /// Concurrent workers.
    pub workers: u64,
    /// The jobs' ordering keys.
    pub keys: Keys,
}

/// Enqueue → lease → ack of `jobs` jobs with `producers` producers and `workers` workers running
/// at once, `per_call` jobs per enqueue, lease and ack call. Time runs until the last ack.
pub(crate) async fn end_to_end<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    shape: Shape,
) -> Result<Run, BenchError> {
    let Shape { per_call, producers, workers, keys } = shape;
    configure(store, queue, keys).await?;
    let claims = Arc::new(Claims { next: AtomicU64::new(0), total: jobs });
    let progress = Arc::new(Progress { jobs, acked: AtomicU64::new(0), finished_at: Mutex::new(None) });
    let started = Instant::now();
    let mut worker_tasks = JoinSet::new();
    for _ in 0..workers {
        worker_tasks.spawn(worker(store.clone(), queue.clone(), progress.clone(), per_call));
    }
    let mut producer_tasks = JoinSet::new();
    for _ in 0..producers {
        producer_tasks.spawn(producer(store.clone(), queue.clone(), payload.clone(), claims.clone(), per_call, keys));
    }
    let enqueues = join_calls(producer_tasks, "enqueue").await?;
    let mut leases = Calls::new("lease");
    let mut acks = Calls::new("ack");
    while let Some(joined) = worker_tasks.join_next().await {
        let (lease_calls, ack_calls) = joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}")))??;
        leases.latencies.extend(lease_calls.latencies);
        acks.latencies.extend(ack_calls.latencies);
    }
    let finished_at = *progress.finished_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(finished_at) = finished_at else {
        return Err(BenchError::Check(format!("the workers stopped before {jobs} jobs were acked")));
    };
    Ok(Run::new(jobs, finished_at - started, vec![enqueues, leases, acks]))
}

/// Leases up to `per_call` jobs (long poll), acks them all in one call; until the run is done.
/// Only lease calls that returned jobs are timed: an empty one measures the wait, not the store.
async fn worker<S: Store>(
    store: S,
    queue: QueueName,
    progress: Arc<Progress>,
    per_call: u64,
) -> Result<(Calls, Calls), BenchError> {
    let mut leases = Calls::new("lease");
    let mut acks = Calls::new("ack");
    let options = lease_options(per_call, LEASE_WAIT_MS)?;
    while !progress.done() {
        let started = Instant::now();
        let leased = store.job_lease(&queue, options).await?;
        if leased.is_empty() {
            continue;
        }
        leases.latencies.push(started.elapsed());
        ack_all(&store, &leased.iter().map(|job| job.lease()).collect::<Vec<_>>(), &mut acks).await?;
        progress.record(leased.len() as u64)?;
    }
    Ok((leases, acks))
}

fn lease_options(per_call: u64, wait_ms: u64) -> Result<LeaseOptions, BenchError> {
    let max_jobs =
        u32::try_from(per_call).map_err(|_| BenchError::Options(format!("{per_call} jobs per lease call")))?;
    let options = LeaseOptions { max_jobs, visibility_timeout_ms: Some(VISIBILITY_TIMEOUT_MS), wait_ms };
    options.validate()?;
    Ok(options)
}

async fn ack_all<S: Store>(store: &S, leases: &[LeaseRef], acks: &mut Calls) -> Result<(), BenchError> {
    let started = Instant::now();
    let results = store.job_ack(leases).await?;
    acks.latencies.push(started.elapsed());
    if results.len() != leases.len() {
        return Err(BenchError::Check(format!("{} results for an ack of {} jobs", results.len(), leases.len())));
    }
    for (lease, result) in leases.iter().zip(results) {
        result.map_err(|e| BenchError::Check(format!("ack of job {} failed: {e}", lease.id)))?;
    }
    Ok(())
}

/// `workers` concurrent workers lease up to `per_call` jobs without waiting and ack them, until
/// `jobs` are done. The queue must hold exactly `jobs` ready jobs and have no other consumer:
/// each lease call first claims its share, so every call must get all it claimed, and a short
/// lease means a lost job.
pub(crate) async fn lease_ack<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    jobs: u64,
    per_call: u64,
    workers: u64,
) -> Result<Run, BenchError> {
    let claims = Arc::new(Claims { next: AtomicU64::new(0), total: jobs });
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        tasks.spawn(lease_ack_worker(store.clone(), queue.clone(), claims.clone(), per_call));
    }
    let mut leases = Calls::new("lease");
    let mut acks = Calls::new("ack");
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (jobs_done, lease_calls, ack_calls) =
            joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}")))??;
        done += jobs_done;
        leases.latencies.extend(lease_calls.latencies);
        acks.latencies.extend(ack_calls.latencies);
    }
    let elapsed = started.elapsed();
    if done != jobs {
        return Err(BenchError::Check(format!("{done} jobs leased and acked of {jobs}")));
    }
    Ok(Run::new(done, elapsed, vec![leases, acks]))
}

async fn lease_ack_worker<S: Store>(
    store: S,
    queue: QueueName,
    claims: Arc<Claims>,
    per_call: u64,
) -> Result<(u64, Calls, Calls), BenchError> {
    let mut leases = Calls::new("lease");
    let mut acks = Calls::new("ack");
    let mut done = 0;
    while let Some((_, n)) = claims.claim(per_call) {
        let options = lease_options(n, 0)?;
        let call = Instant::now();
        let leased = store.job_lease(&queue, options).await?;
        leases.latencies.push(call.elapsed());
        if leased.len() as u64 != n {
            return Err(BenchError::Check(format!(
                "a lease of {n} got {} jobs: the queue ran dry after {done} jobs of this worker",
                leased.len()
            )));
        }
        ack_all(&store, &leased.iter().map(|job| job.lease()).collect::<Vec<_>>(), &mut acks).await?;
        done += n;
    }
    Ok((done, leases, acks))
}

/// One side of the pipeline-stage scenario on a fresh `queue`: fills it with `jobs` jobs, then
/// runs the stage (`pipeline`, into `<queue>-next`) or its yardstick, plain lease+ack, both one
/// worker and [`BATCH`](super::options::BATCH) jobs per call.
pub(crate) async fn pipeline_or_plain<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    pipeline: bool,
) -> Result<Run, BenchError> {
    let batch = super::options::BATCH;
    fill(store, queue, payload, jobs, Keys::None).await?;
    if pipeline {
        let next = QueueName::new(format!("{}-next", queue.as_str()))?;
        pipeline_stage(store, queue, &next, payload, jobs, batch).await
    } else {
        lease_ack(store, queue, jobs, batch, 1).await
    }
}

/// Workers of the limiter-cost scenario: enough that the store's limiter is shared, as it is
/// among a queue's consumers.
pub(crate) const LIMITED_WORKERS: u64 = 4;

/// The limiter-cost scenario's row name, in both benches.
pub(crate) fn limited_scenario() -> String {
    format!("lease+ack {}/call, {LIMITED_WORKERS} workers, rate limit far above (1,000,000/s)", super::options::BATCH)
}

/// What the limiter-cost scenario is measured against, in both benches.
pub(crate) const LIMITED_YARDSTICK: &str = "the same on an unlimited queue (the store)";

/// One side of the limiter-cost scenario on a fresh `queue`: fills it with `jobs` jobs, gives it
/// (`limited`) a rate limit far above any rate a machine reaches (the largest allowed: 1,000,000
/// leases a second, burst 100,000), then leases and acks them all, [`BATCH`](super::options::BATCH)
/// per call, with [`LIMITED_WORKERS`] workers. The limit never holds a lease back: what the two
/// sides differ by is what the limiter costs.
pub(crate) async fn limited_or_plain<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    limited: bool,
) -> Result<Run, BenchError> {
    use onceq_core::flow::RateLimit;
    use onceq_core::limits::{RATE_BURST_MAX, RATE_PER_SECOND_MAX};
    fill(store, queue, payload, jobs, Keys::None).await?;
    if limited {
        let rate = RateLimit { per_second: RATE_PER_SECOND_MAX, burst: RATE_BURST_MAX };
        store.queue_upsert(queue, QueueConfigPatch { rate_limit: Some(Some(rate)), ..Default::default() }).await?;
    }
    // However the store starts a new bucket, it is full this long after: 100,000 tokens at
    // 1,000,000 a second take 0.1 s. Both sides pause alike, so that whatever a pause costs the
    // first calls after it (a sleeping core, cold caches) weighs on both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    lease_ack(store, queue, jobs, super::options::BATCH, LIMITED_WORKERS).await
}

/// A pipeline stage, one worker: leases up to `per_call` jobs of `queue` without waiting, then
/// one commit (named after its first lease, as a worker names its commits) acks them and
/// enqueues one job per input into `next`, until `jobs` are done. The queue must hold exactly
/// `jobs` ready jobs and have no other consumer.
pub(crate) async fn pipeline_stage<S: Store>(
    store: &S,
    queue: &QueueName,
    next: &QueueName,
    payload: &[u8],
    jobs: u64,
    per_call: u64,
) -> Result<Run, BenchError> {
    let claims = Claims { next: AtomicU64::new(0), total: jobs };
    let mut leases = Calls::new("lease");
    let mut commits = Calls::new("commit");
    let started = Instant::now();
    let mut done = 0;
    while let Some((_, n)) = claims.claim(per_call) {
        let call = Instant::now();
        let leased = store.job_lease(queue, lease_options(n, 0)?).await?;
        leases.latencies.push(call.elapsed());
        let Some(first) = leased.first() else {
            return Err(BenchError::Check(format!("the queue ran dry after {done} jobs")));
        };
        let commit = Commit {
            commit_id: Some(CommitId::new(format!("lease:{}:{}", first.id, first.lease_token))?),
            ack: leased.iter().map(|job| job.lease()).collect(),
            enqueue: vec![CommitEnqueue {
                queue: next.clone(),
                jobs: leased.iter().map(|_| NewJob::new(payload.to_vec())).collect(),
            }],
            ..Commit::default()
        };
        let call = Instant::now();
        let outcome = store.commit(commit).await?;
        commits.latencies.push(call.elapsed());
        if outcome.replayed || outcome.enqueued[0].jobs.len() != leased.len() {
            return Err(BenchError::Check(format!("a commit of {} jobs did other: {outcome:?}", leased.len())));
        }
        done += leased.len() as u64;
    }
    Ok(Run::new(done, started.elapsed(), vec![leases, commits]))
}

/// Tasks that keep the relaxed neighbour of the mixed-durability scenario busy, each enqueueing,
/// leasing and acking [`BATCH`](super::options::BATCH) jobs per call in a loop.
pub(crate) const NEIGHBOUR_TASKS: u64 = 4;

/// What the paced relaxed neighbour is offered, jobs/s end to end: a busy queue by any
/// measure, and a fixed share of the machine, so that the fsync queue's figure beside it shows
/// what mixing durabilities costs beyond the neighbour's own work.
pub(crate) const NEIGHBOUR_PACED_JOBS_PER_S: u64 = 10_000;

/// The relaxed queue beside the fsync queue in the mixed-durability scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Neighbour {
    /// None: the fsync queue alone.
    None,
    /// Offered this many jobs/s, in batches.
    Paced(u64),
    /// As fast as it goes: it takes what share of the one writer thread and the CPUs it can.
    Unbounded,
}

/// One side of the mixed-durability scenario: `queue` made `fsync`, then an end-to-end batched
/// run of `jobs` jobs on it (as the end-to-end batched scenario runs), with a `relaxed` queue
/// beside it worked by [`NEIGHBOUR_TASKS`] tasks for the whole run as `neighbour` says.
/// Returns the fsync queue's run and the neighbour's jobs/s (0 without one).
pub(crate) async fn fsync_beside_relaxed<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
    neighbour: Neighbour,
) -> Result<(Run, f64), BenchError> {
    use onceq_core::Durability;
    use std::sync::atomic::AtomicBool;
    let durable = |d: Durability| QueueConfigPatch { durability: Some(Some(d)), ..Default::default() };
    store.queue_upsert(queue, durable(Durability::Fsync)).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut neighbours = JoinSet::new();
    let started = Instant::now();
    if neighbour != Neighbour::None {
        let relaxed = QueueName::new(format!("{queue}-relaxed-neighbour"))?;
        store.queue_upsert(&relaxed, durable(Durability::Relaxed)).await?;
        let per_call = super::options::BATCH;
        // Each task's pause between batches when paced: its share of the offered rate.
        let every = match neighbour {
            Neighbour::Paced(rate) => {
                Some(std::time::Duration::from_secs_f64((per_call * NEIGHBOUR_TASKS) as f64 / rate.max(1) as f64))
            }
            _ => None,
        };
        for _ in 0..NEIGHBOUR_TASKS {
            let (store, relaxed, payload) = (store.clone(), relaxed.clone(), payload.clone());
            let (stop, done) = (stop.clone(), done.clone());
            neighbours.spawn(async move {
                let options = lease_options(per_call, 0)?;
                let mut pace = every.map(|every| {
                    let mut pace = tokio::time::interval(every);
                    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    pace
                });
                while !stop.load(Ordering::Relaxed) {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    store.job_enqueue(&relaxed, batch(&payload, 0, per_call, Keys::None)).await?;
                    let leased = store.job_lease(&relaxed, options).await?;
                    let leases: Vec<LeaseRef> = leased.iter().map(|job| job.lease()).collect();
                    for result in store.job_ack(&leases).await? {
                        result?;
                    }
                    done.fetch_add(leased.len() as u64, Ordering::Relaxed);
                }
                Ok::<(), BenchError>(())
            });
        }
    }
    let shape = Shape {
        per_call: super::options::BATCH,
        producers: END_TO_END_BATCHED_PRODUCERS,
        workers: END_TO_END_BATCHED_WORKERS,
        keys: Keys::None,
    };
    let run = end_to_end(store, queue, payload, jobs, shape).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    while let Some(joined) = neighbours.join_next().await {
        joined.map_err(|e| BenchError::Check(format!("a bench task failed: {e}")))??;
    }
    let neighbour_per_s = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok((run?, neighbour_per_s))
}

/// A relaxed queue's end-to-end batched run of `jobs` jobs (the relaxed side of the
/// mixed-durability scenario, against the relaxed floor).
pub(crate) async fn relaxed_end_to_end<S: Store + Clone + 'static>(
    store: &S,
    queue: &QueueName,
    payload: &Arc<[u8]>,
    jobs: u64,
) -> Result<Run, BenchError> {
    let patch = QueueConfigPatch { durability: Some(Some(onceq_core::Durability::Relaxed)), ..Default::default() };
    store.queue_upsert(queue, patch).await?;
    let shape = Shape {
        per_call: super::options::BATCH,
        producers: END_TO_END_BATCHED_PRODUCERS,
        workers: END_TO_END_BATCHED_WORKERS,
        keys: Keys::None,
    };
    end_to_end(store, queue, payload, jobs, shape).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use onceq_core::QueueStats;
    use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

    use super::*;

    /// Runs `test` on a fresh embedded store (relaxed durability: these check counts, not speed).
    fn with_store<F, Fut>(test: F)
    where
        F: FnOnce(SqliteStore, QueueName) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(Durability::Relaxed)).unwrap();
            test(store.clone(), QueueName::new("bench").unwrap()).await;
            store.close().await;
        });
    }

    #[test]
    fn concurrent_workers_lease_and_ack_every_job_once() {
        with_store(|store, queue| async move {
            let payload: Arc<[u8]> = b"{}".to_vec().into();
            fill(&store, &queue, &payload, 1_050, Keys::None).await.unwrap();
            let run = lease_ack(&store, &queue, 1_050, 100, 4).await.unwrap();
            assert_eq!(run.jobs, 1_050);
            let calls: Vec<(&str, usize)> = run.calls.iter().map(|c| (c.kind, c.latencies.len())).collect();
            // Ten calls of 100 and one of the last 50, whichever worker made them.
            assert_eq!(calls, [("lease", 11), ("ack", 11)]);
            assert_eq!(store.queue_get(&queue).await.unwrap().stats, QueueStats::default());
        });
    }

    #[test]
    fn a_queue_that_runs_dry_stops_the_run() {
        with_store(|store, queue| async move {
            let payload: Arc<[u8]> = b"{}".to_vec().into();
            fill(&store, &queue, &payload, 150, Keys::None).await.unwrap();
            let error = lease_ack(&store, &queue, 300, 100, 2).await.err();
            assert!(matches!(&error, Some(BenchError::Check(m)) if m.contains("ran dry")), "{error:?}");
        });
    }

    #[test]
    fn end_to_end_acks_every_job_once() {
        with_store(|store, queue| async move {
            let payload: Arc<[u8]> = b"{}".to_vec().into();
            let run = end_to_end(
                &store,
                &queue,
                &payload,
                500,
                Shape { per_call: 1, producers: 8, workers: 8, keys: Keys::None },
            )
            .await
            .unwrap();
            assert_eq!(run.jobs, 500);
            let calls: Vec<(&str, usize)> = run.calls.iter().map(|c| (c.kind, c.latencies.len())).collect();
            assert_eq!(calls, [("enqueue", 500), ("lease", 500), ("ack", 500)]);
            assert_eq!(store.queue_get(&queue).await.unwrap().stats, QueueStats::default());
        });
    }

    #[test]
    fn an_ordered_end_to_end_run_acks_every_job_once() {
        with_store(|store, queue| async move {
            let payload: Arc<[u8]> = b"{}".to_vec().into();
            let run = end_to_end(
                &store,
                &queue,
                &payload,
                1_000,
                Shape { per_call: 100, producers: 2, workers: 4, keys: Keys::Spread(30) },
            )
            .await
            .unwrap();
            assert_eq!(run.jobs, 1_000);
            let info = store.queue_get(&queue).await.unwrap();
            assert_eq!((info.config.ordering, info.stats), (onceq_core::Ordering::PerKey, QueueStats::default()));
        });
    }

    #[test]
    fn a_pipeline_stage_moves_every_job_to_the_next_queue_once() {
        with_store(|store, queue| async move {
            let next = QueueName::new("next").unwrap();
            fill(&store, &queue, &Arc::from(&b"x"[..]), 250, Keys::None).await.unwrap();
            let run = pipeline_stage(&store, &queue, &next, b"y", 250, 100).await.unwrap();
            assert_eq!(run.jobs, 250);
            let (from, to) =
                (store.queue_get(&queue).await.unwrap().stats, store.queue_get(&next).await.unwrap().stats);
            assert_eq!((from.ready + from.leased, to.ready), (0, 250));
        });
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut calls = Calls::new("x");
        calls.latencies = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(calls.percentile(0.50), Some(Duration::from_millis(50)));
        assert_eq!(calls.percentile(0.99), Some(Duration::from_millis(99)));
        assert_eq!(calls.percentile(1.0), Some(Duration::from_millis(100)));
        assert_eq!(Calls::new("empty").percentile(0.5), None);
    }

    #[test]
    fn claims_split_the_jobs_exactly() {
        let claims = Claims { next: AtomicU64::new(0), total: 250 };
        let sizes: Vec<(u64, u64)> = std::iter::from_fn(|| claims.claim(100)).collect();
        assert_eq!(sizes, vec![(0, 100), (100, 100), (200, 50)]);
    }
}
