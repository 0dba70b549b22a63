//! The workload: producers, workers, the periodic faults, and the record of it all.
//!
//! For each delivery mode a run makes a queue of its own (`verify.<run>.<mode>`), configured
//! with the run's visibility timeout and max attempts, a one-hour dedup window, and its mode.
//! Then, at once:
//!
//! - **Producers** enqueue the values `0..jobs` (each payload is `{"value": N}`), in batches.
//!   `at_most_once` and `effectively_once` jobs carry the dedup id `v<N>`; `at_least_once` jobs
//!   carry none, as most at-least-once producers send. An enqueue whose outcome is unknown is
//!   sent again until one succeeds, with the same dedup ids: in `at_least_once` such a retry may
//!   create a second job with the same value, which the checker sees as a duplicate delivery
//!   (allowed there), never as a loss.
//! - **Workers** lease batches (long polls), and run each job of a batch as its own task: apply
//!   the effect (a row in the [ledger](crate::ledger)), then ack. `at_most_once` jobs are gone
//!   once leased: workers apply the effect and send nothing back.
//! - **`effectively_once`** workers guard the effect with the target's idempotency store, the
//!   protocol of `onceq_worker::EffectivelyOnce`: `begin` the key `verify:<queue>:<dedup id>`
//!   (owner: the delivery's lease) → completed: ack without running; in progress elsewhere:
//!   nack with a delay until the claim's expiry; acquired: effect → `complete` → ack.
//!   - With a SQLite ledger (embedded store, servers), the effect and the record are two
//!     commits. A crash after `complete` (the `crash-after-effect` fault) is guarded: the
//!     redelivery finds the key completed and acks without running. A crash after the claim and
//!     before the effect (`crash-mid-handler`) is guarded: the redelivery waits out the claim,
//!     then runs once. A stall or a lost ack after `complete` is guarded the same way. A crash
//!     between the effect and `complete` (`crash-before-complete`) is **not** guarded: the claim
//!     expires and the redelivery applies the effect again. Only a ledger in the idempotency
//!     store's database can close that window. A `complete` whose outcome is unknown (the
//!     server died) is sent again while the claim lasts; a `begin` by the same owner tells
//!     whether it landed.
//!   - On PostgreSQL, the effect, `idempotency_complete_in` and `job_ack_in` run in one
//!     transaction (after `idempotency_begin_in` in it): all of them commit, or none. Every crash
//!     fault then leaves either nothing or everything.
//!
//! Every call to the target is recorded in the [`History`]: its invoke (verify clock, Unix ms),
//! and its completion with an outcome: ok; fail for a definite refusal (`lease_lost`, job not
//! found); unknown for timeouts, broken connections, a dropped response, or a crash fault.
//!
//! The run of a mode ends when the producers are done, no worker holds a job, and the queue has
//! nothing ready, scheduled or leased (every job acked or dead) — or when the drain timeout
//! passes, and whatever is missing is the checker's to report as lost. The dead letters are
//! then read into the history, and the effects from the ledger.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onceq_core::{
    Begin, BeginOutcome, Complete, DeadPage, DeliveryMode, Error, ErrorKind, IdempotencyStore, JobId, LeaseOptions,
    LeasedJob, Nack, NewJob, QueueConfig, QueueConfigPatch, QueueName, Result, Store,
};
use onceq_postgres::PgStore;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::faults::{roll, Fault, FaultLog, FaultPlan, TargetKind};
use crate::history::{DeadLetter, Event, History, Lease, Outcome, Request, Response};
use crate::ledger::{EffectRow, Ledger, PgLedger};
use crate::target::Target;

/// How far past its lease's expiry a stalled worker acks, so the target's clock has surely
/// passed it (above [`crate::history::CLOCK_MARGIN_MS`]).
const STALL_PAST_EXPIRY_MS: i64 = 600;
/// How long a lease call waits for jobs.
const LEASE_WAIT_MS: u64 = 500;
/// Pause after a failed call before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(150);
/// Most tries of an enqueue batch whose outcome stays unknown.
const ENQUEUE_TRIES_MAX: u32 = 400;
/// Dedup window of the run's queues: longer than any run's retries.
const DEDUP_WINDOW_MS: u64 = 60 * 60 * 1000;
/// How long a completed idempotency record is kept.
const RETENTION_MS: u64 = 60 * 60 * 1000;
/// How long before its claim ends a worker stops trying to record an applied effect.
const CLAIM_MARGIN_MS: i64 = 1_000;
/// Process numbers of workers start here (producers are 0..).
const WORKER_PROCESS_BASE: u32 = 1000;

/// The settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// The modes to run, one after the other.
    pub modes: Vec<DeliveryMode>,
    /// Jobs (distinct values) per mode.
    pub jobs: u64,
    /// Producer tasks.
    pub producers: u32,
    /// Worker tasks (each runs its leased batch's jobs concurrently).
    pub workers: u32,
    /// Jobs per enqueue call.
    pub enqueue_batch: u32,
    /// Most jobs per lease call.
    pub lease_batch: u32,
    /// The queues' visibility timeout, and every lease's.
    pub visibility_timeout_ms: u64,
    /// The queues' max attempts.
    pub max_attempts: u32,
    /// How long an `effectively_once` claim on a key lasts.
    pub claim_ttl_ms: u64,
    /// Longest wait for a mode's queue to drain after its producers are done.
    pub drain_timeout_ms: u64,
    /// The faults and their rates.
    pub faults: FaultPlan,
    /// Fixes the fault schedule.
    pub seed: u64,
    /// Leave each mode's queue (its dead letters) on the target at the end; by default it is
    /// deleted once read.
    pub keep_queues: bool,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            modes: vec![DeliveryMode::AtMostOnce, DeliveryMode::AtLeastOnce, DeliveryMode::EffectivelyOnce],
            jobs: 20_000,
            producers: 4,
            workers: 8,
            enqueue_batch: 100,
            lease_batch: 32,
            visibility_timeout_ms: 1_500,
            max_attempts: 10,
            claim_ttl_ms: 10_000,
            drain_timeout_ms: 120_000,
            faults: FaultPlan::default(),
            seed: 0,
            keep_queues: false,
        }
    }
}

impl WorkloadConfig {
    /// Checks every setting; a bad one is a clear error.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(m));
        if self.modes.is_empty() {
            return bad("no mode to run; name at least one of at_most_once, at_least_once, effectively_once".into());
        }
        if self.jobs == 0 {
            return bad("--jobs must be at least 1".into());
        }
        if self.producers == 0 || self.workers == 0 {
            return bad("--producers and --workers must be at least 1".into());
        }
        if !(1..=onceq_core::limits::ENQUEUE_BATCH_MAX as u32).contains(&self.enqueue_batch) {
            return bad(format!("--enqueue-batch must be 1 to {}", onceq_core::limits::ENQUEUE_BATCH_MAX));
        }
        if !(1..=onceq_core::limits::LEASE_BATCH_MAX).contains(&self.lease_batch) {
            return bad(format!("--lease-batch must be 1 to {}", onceq_core::limits::LEASE_BATCH_MAX));
        }
        if !(100..=600_000).contains(&self.visibility_timeout_ms) {
            return bad("--visibility-timeout-ms must be 100 to 600000 (short leases drain a run quickly)".into());
        }
        if self.claim_ttl_ms <= self.visibility_timeout_ms || self.claim_ttl_ms < 2 * CLAIM_MARGIN_MS as u64 {
            return bad("--claim-ttl-ms must be longer than the visibility timeout, and at least 2000".into());
        }
        onceq_core::QueueConfig { max_attempts: self.max_attempts, ..QueueConfig::default() }.validate()?;
        Ok(())
    }
}

/// Live figures of a run, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    /// The mode running now (its index in [`WorkloadConfig::modes`]), plus one; 0 before.
    pub mode_index: AtomicU64,
    /// Jobs whose enqueue succeeded, in the current mode.
    pub enqueued: AtomicU64,
    /// Jobs settled (acked, or effected in at_most_once), in the current mode.
    pub settled: AtomicU64,
    /// Faults fired, in the current mode.
    pub faults: AtomicU64,
    /// True while the current mode drains (producers done).
    pub draining: AtomicBool,
}

/// What one mode's run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeRun {
    /// The queue it used.
    pub queue: String,
    /// Its config.
    pub queue_config: QueueConfig,
    /// The history, for the checker.
    pub history: History,
    /// How often each fault fired.
    pub faults_fired: BTreeMap<Fault, u64>,
    /// False when the drain timeout passed first.
    pub drained: bool,
    /// Wall time of the mode's run, ms.
    pub elapsed_ms: u64,
}

/// The verify clock: Unix milliseconds, read once from the system clock and advanced by the
/// monotonic clock since, so a completion is never recorded before its invoke (a step of the
/// system clock during a run cannot reorder events).
pub fn now_ms() -> i64 {
    static BASE: std::sync::OnceLock<(i64, Instant)> = std::sync::OnceLock::new();
    let (unix_ms, at) = BASE.get_or_init(|| {
        let unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        (unix, Instant::now())
    });
    unix_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

/// Records operations as they happen.
#[derive(Debug, Default)]
pub struct Recorder {
    next_op: AtomicU64,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    /// Records an invoke now; returns its op number.
    pub fn invoke(&self, process: u32, request: Request) -> u64 {
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        self.push(Event::Invoke { op, process, at_ms: now_ms(), request });
        op
    }

    /// Records the completion of `op` now.
    pub fn complete(&self, op: u64, outcome: Outcome, response: Response) {
        self.push(Event::Complete { op, at_ms: now_ms(), outcome, response });
    }

    /// The events so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The outcome an error stands for: a definite refusal, or unknown.
pub fn outcome_of(error: &Error) -> Outcome {
    match error.kind() {
        ErrorKind::LeaseLost | ErrorKind::NotFound => Outcome::Fail,
        ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge | ErrorKind::Conflict => Outcome::Fail,
        _ => Outcome::Unknown,
    }
}

/// Whether an error means verify itself asked something wrong (the run stops).
fn is_fatal(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge)
}

/// The payload of a job.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    value: u64,
}

fn payload(value: u64) -> Vec<u8> {
    serde_json::to_vec(&Payload { value }).unwrap_or_default()
}

fn dedup_id(value: u64) -> String {
    format!("v{value}")
}

/// How `effectively_once` effects are guarded on this target.
#[derive(Clone)]
enum Guard {
    /// The target's idempotency store, and a ledger of its own (two commits).
    Separate(Arc<dyn IdempotencyStore>),
    /// Effect, idempotency record and ack in one PostgreSQL transaction.
    Postgres(PgStore, PgLedger),
}

/// What every task of a mode's run shares.
struct Ctx {
    mode: DeliveryMode,
    kind: TargetKind,
    queue: QueueName,
    store: Arc<dyn Store>,
    guard: Guard,
    ledger: Ledger,
    config: WorkloadConfig,
    recorder: Recorder,
    faults: FaultLog,
    progress: Arc<Progress>,
    /// Workers stop leasing.
    stop: AtomicBool,
    /// Jobs leased and not finished by a worker task.
    in_hand: AtomicI64,
    /// When the last settle (ack ok, at_most_once effect) happened.
    last_settle_ms: AtomicI64,
    /// The first error that stops the run.
    fatal: Mutex<Option<String>>,
}

impl Ctx {
    fn fail(&self, message: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            *fatal = Some(message);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn rate(&self, fault: Fault) -> f64 {
        self.config.faults.rate(fault, self.kind, self.mode)
    }

    fn hits(&self, fault: Fault, value: u64, attempt: u32) -> bool {
        let rate = self.rate(fault);
        rate > 0.0 && roll(self.config.seed, self.mode, value, attempt, fault) < rate
    }

    fn fire(&self, fault: Fault) {
        self.faults.fired(fault, now_ms());
        self.progress.faults.fetch_add(1, Ordering::Relaxed);
    }

    fn settled(&self) {
        self.last_settle_ms.fetch_max(now_ms(), Ordering::SeqCst);
        self.progress.settled.fetch_add(1, Ordering::Relaxed);
    }

    fn effect_row(&self, job: &LeasedJob, value: u64) -> EffectRow {
        EffectRow {
            queue: self.queue.to_string(),
            value,
            job_id: job.id.get(),
            lease_token: job.lease_token.to_string(),
            at_ms: now_ms(),
        }
    }
}

/// Runs every mode of `config` against `target`, one after the other.
pub async fn run(target: &Target, config: &WorkloadConfig, progress: Arc<Progress>) -> Result<Vec<ModeRun>> {
    config.validate()?;
    config.faults.check_target(target.kind)?;
    let run_id = format!("{:x}{:04x}", now_ms(), rand::random::<u16>());
    let mut runs = Vec::new();
    for (i, mode) in config.modes.iter().enumerate() {
        progress.mode_index.store(i as u64 + 1, Ordering::SeqCst);
        progress.enqueued.store(0, Ordering::SeqCst);
        progress.settled.store(0, Ordering::SeqCst);
        progress.faults.store(0, Ordering::SeqCst);
        progress.draining.store(false, Ordering::SeqCst);
        runs.push(run_mode(target, config, *mode, &run_id, progress.clone()).await?);
    }
    Ok(runs)
}

async fn run_mode(
    target: &Target,
    config: &WorkloadConfig,
    mode: DeliveryMode,
    run_id: &str,
    progress: Arc<Progress>,
) -> Result<ModeRun> {
    let started = Instant::now();
    let queue = QueueName::new(format!("verify.{run_id}.{}", mode.as_str()))?;
    let patch = QueueConfigPatch {
        delivery: Some(mode),
        visibility_timeout_ms: Some(config.visibility_timeout_ms),
        max_attempts: Some(config.max_attempts),
        dedup_window_ms: Some(DEDUP_WINDOW_MS),
        ..QueueConfigPatch::default()
    };
    let queue_config = target.store.queue_upsert(&queue, patch).await?;
    let guard = match (&target.postgres, &target.ledger) {
        (Some(store), Ledger::Postgres(ledger)) => Guard::Postgres(store.clone(), ledger.clone()),
        _ => Guard::Separate(target.idempotency.clone()),
    };
    let ctx = Arc::new(Ctx {
        mode,
        kind: target.kind,
        queue: queue.clone(),
        store: target.store.clone(),
        guard,
        ledger: target.ledger.clone(),
        config: config.clone(),
        recorder: Recorder::default(),
        faults: FaultLog::new(),
        progress: progress.clone(),
        stop: AtomicBool::new(false),
        in_hand: AtomicI64::new(0),
        last_settle_ms: AtomicI64::new(i64::MIN),
        fatal: Mutex::new(None),
    });

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..config.producers {
        producers.spawn(produce(ctx.clone(), p));
    }
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..config.workers {
        workers.spawn(work(ctx.clone(), WORKER_PROCESS_BASE + w));
    }
    let busy = Arc::new(AtomicBool::new(true));
    let periodic = tokio::spawn(periodic_faults(ctx.clone(), target.managed.clone(), pg_dropper(target), busy.clone()));

    while let Some(joined) = producers.join_next().await {
        if let Err(e) = joined {
            ctx.fail(format!("a producer task failed: {e}"));
        }
    }
    progress.draining.store(true, Ordering::SeqCst);
    let drain_deadline = Instant::now() + Duration::from_millis(config.drain_timeout_ms);
    let half = config.jobs / 2;
    let mut drain_seen_ms = i64::MIN;
    let drained = loop {
        if ctx.fatal().is_some() {
            break false;
        }
        if progress.settled.load(Ordering::Relaxed) >= half {
            busy.store(false, Ordering::SeqCst);
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        if ctx.in_hand.load(Ordering::SeqCst) == 0 && !periodic.is_finished() && !busy.load(Ordering::SeqCst) {
            // The periodic faults stop first (a restart may be under way).
        } else if ctx.in_hand.load(Ordering::SeqCst) == 0 && periodic.is_finished() {
            if let Ok(info) = ctx.store.queue_get(&queue).await {
                let s = info.stats;
                if s.ready + s.scheduled + s.leased == 0 && ctx.in_hand.load(Ordering::SeqCst) == 0 {
                    drain_seen_ms = now_ms();
                    break true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    busy.store(false, Ordering::SeqCst);
    ctx.stop.store(true, Ordering::SeqCst);
    let _ = periodic.await;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined {
            ctx.fail(format!("a worker task failed: {e}"));
        }
    }
    if let Some(message) = ctx.fatal() {
        return Err(Error::Storage(format!("the {} run stopped: {message}", mode.as_str())));
    }
    let end_ms = now_ms();
    let dead = read_dead(&*ctx.store, &queue).await?;
    let effects = ctx.ledger.effects(queue.as_str()).await?;
    if !config.keep_queues {
        if let Err(e) = ctx.store.queue_delete(&queue).await {
            tracing::warn!(error = %e, %queue, "could not delete the run's queue");
        }
    }
    let last_settle = ctx.last_settle_ms.load(Ordering::SeqCst);
    // The last settle; but when a fault came after it (a server kill once every job was
    // settled), the moment the queue was seen empty after that fault.
    let last_fault = ctx.faults.last_at_ms().unwrap_or(i64::MIN);
    let drained_at_ms = match (drained, last_settle) {
        (true, settle) if settle != i64::MIN && settle >= last_fault => settle,
        (true, _) => drain_seen_ms,
        (false, _) => end_ms,
    };
    let history = History {
        mode,
        events: ctx.recorder.take(),
        effects,
        dead,
        last_fault_at_ms: ctx.faults.last_at_ms(),
        drained_at_ms,
    };
    Ok(ModeRun {
        queue: queue.to_string(),
        queue_config,
        history,
        faults_fired: ctx.faults.counts(),
        drained,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Reads every dead letter of `queue` (retrying while the target is unavailable).
async fn read_dead(store: &dyn Store, queue: &QueueName) -> Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    let mut after: Option<JobId> = None;
    let mut tries = 0;
    loop {
        let page = match store.dead_list(queue, DeadPage { after, limit: 1000 }).await {
            Ok(page) => page,
            Err(e) if e.kind() == ErrorKind::Unavailable && tries < 50 => {
                tries += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        for job in &page.jobs {
            let value = serde_json::from_slice::<Payload>(&job.payload)
                .map_err(|e| Error::Storage(format!("dead job {} has a payload verify never wrote: {e}", job.id)))?
                .value;
            out.push(DeadLetter { job_id: job.id.get(), value, errors: job.errors.len() as u32 });
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Producers

async fn produce(ctx: Arc<Ctx>, producer: u32) {
    let step = u64::from(ctx.config.producers);
    let batch = u64::from(ctx.config.enqueue_batch);
    let batches = ctx.config.jobs.div_ceil(batch);
    let mut b = u64::from(producer);
    while b < batches && !ctx.stop.load(Ordering::SeqCst) {
        let values: Vec<u64> = (b * batch..((b + 1) * batch).min(ctx.config.jobs)).collect();
        let mut tries = 0;
        loop {
            tries += 1;
            match enqueue(&ctx, producer, &values).await {
                Outcome::Ok => {
                    ctx.progress.enqueued.fetch_add(values.len() as u64, Ordering::Relaxed);
                    break;
                }
                Outcome::Fail => return,
                Outcome::Unknown if tries >= ENQUEUE_TRIES_MAX => break,
                Outcome::Unknown => tokio::time::sleep(RETRY_PAUSE).await,
            }
            if ctx.stop.load(Ordering::SeqCst) {
                return;
            }
        }
        // A producer that retries an enqueue which had in fact succeeded.
        let again: Vec<u64> = values.iter().copied().filter(|v| ctx.hits(Fault::DuplicateEnqueue, *v, 0)).collect();
        if !again.is_empty() {
            ctx.fire(Fault::DuplicateEnqueue);
            let _ = enqueue(&ctx, producer, &again).await;
        }
        b += step;
    }
}

/// One enqueue call of `values`, recorded one op per value.
async fn enqueue(ctx: &Ctx, producer: u32, values: &[u64]) -> Outcome {
    let with_dedup = ctx.mode != DeliveryMode::AtLeastOnce;
    let mut ops = Vec::with_capacity(values.len());
    let mut jobs = Vec::with_capacity(values.len());
    for &value in values {
        let dedup = with_dedup.then(|| dedup_id(value));
        ops.push(ctx.recorder.invoke(producer, Request::Enqueue { value, dedup_id: dedup.clone() }));
        let mut job = NewJob::new(payload(value));
        job.dedup_id = dedup;
        jobs.push(job);
    }
    match ctx.store.job_enqueue(&ctx.queue, jobs).await {
        Ok(entries) if entries.len() == ops.len() => {
            for (op, entry) in ops.into_iter().zip(entries) {
                let response = Response::Enqueued { job_id: entry.id.get(), duplicate: entry.duplicate };
                ctx.recorder.complete(op, Outcome::Ok, response);
            }
            Outcome::Ok
        }
        Ok(entries) => {
            for op in ops {
                ctx.recorder.complete(op, Outcome::Unknown, Response::None);
            }
            ctx.fail(format!("an enqueue of {} jobs returned {} results", values.len(), entries.len()));
            Outcome::Fail
        }
        Err(e) => {
            let outcome = outcome_of(&e);
            for op in ops {
                ctx.recorder.complete(op, outcome, Response::None);
            }
            if outcome == Outcome::Fail {
                ctx.fail(format!("the target refused an enqueue: {e}"));
            }
            outcome
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

async fn work(ctx: Arc<Ctx>, process: u32) {
    let vt = ctx.config.visibility_timeout_ms;
    // Jobs in hand at most: a batch being run and the next one, so that a stalled job holds
    // one slot, not the worker.
    let slots = Arc::new(tokio::sync::Semaphore::new(2 * ctx.config.lease_batch as usize));
    let mut tasks = tokio::task::JoinSet::new();
    while !ctx.stop.load(Ordering::SeqCst) {
        while let Some(joined) = tasks.try_join_next() {
            if let Err(e) = joined {
                ctx.fail(format!("a job task failed: {e}"));
            }
        }
        let free = slots.available_permits().min(ctx.config.lease_batch as usize);
        if free == 0 {
            // Wait for a job to finish (bounded: every job task ends).
            let _ = tasks.join_next().await;
            continue;
        }
        let max = u32::try_from(free).unwrap_or(1);
        let op = ctx.recorder.invoke(process, Request::Lease { max, visibility_timeout_ms: vt });
        let options = LeaseOptions { max_jobs: max, visibility_timeout_ms: Some(vt), wait_ms: LEASE_WAIT_MS };
        let jobs = match ctx.store.job_lease(&ctx.queue, options).await {
            Ok(jobs) => jobs,
            Err(e) => {
                ctx.recorder.complete(op, outcome_of(&e), Response::None);
                if is_fatal(&e) {
                    ctx.fail(format!("the target refused a lease: {e}"));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let mut leases = Vec::with_capacity(jobs.len());
        let mut valued = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Ok(Payload { value }) = serde_json::from_slice::<Payload>(&job.payload) else {
                ctx.fail(format!("job {} carries a payload verify never wrote", job.id));
                continue;
            };
            leases.push(Lease {
                job_id: job.id.get(),
                value,
                lease_token: job.lease_token.to_string(),
                attempt: job.attempt,
                lease_expires_at_ms: job.lease_expires_at.as_millis(),
            });
            valued.push((job, value));
        }
        ctx.recorder.complete(op, Outcome::Ok, Response::Leased { jobs: leases });
        ctx.in_hand.fetch_add(valued.len() as i64, Ordering::SeqCst);
        for (job, value) in valued {
            let ctx = ctx.clone();
            // Only this worker takes slots, and it asked for no more than were free.
            let slot = slots.clone().try_acquire_owned().ok();
            tasks.spawn(async move {
                handle(&ctx, process, &job, value).await;
                ctx.in_hand.fetch_sub(1, Ordering::SeqCst);
                drop(slot);
            });
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            ctx.fail(format!("a job task failed: {e}"));
        }
    }
}

/// The crash or stall this delivery suffers, if any (at most one).
fn crash_of(ctx: &Ctx, value: u64, attempt: u32) -> Option<Fault> {
    [Fault::CrashAfterEffect, Fault::CrashMidHandler, Fault::CrashBeforeComplete, Fault::Stall]
        .into_iter()
        .find(|f| ctx.hits(*f, value, attempt))
}

/// One delivery, start to end.
async fn handle(ctx: &Ctx, process: u32, job: &LeasedJob, value: u64) {
    let crash = crash_of(ctx, value, job.attempt);
    let drop_ack = ctx.hits(Fault::DropAck, value, job.attempt);
    match ctx.mode {
        DeliveryMode::AtMostOnce => {
            if crash == Some(Fault::CrashMidHandler) {
                ctx.fire(Fault::CrashMidHandler);
                return;
            }
            if apply(ctx, job, value).await {
                ctx.settled();
            }
        }
        DeliveryMode::AtLeastOnce => {
            if crash == Some(Fault::CrashMidHandler) {
                ctx.fire(Fault::CrashMidHandler);
                return;
            }
            if !apply(ctx, job, value).await {
                return;
            }
            finish(ctx, process, job, crash, drop_ack).await;
        }
        DeliveryMode::EffectivelyOnce => match &ctx.guard {
            Guard::Separate(idempotency) => guarded(ctx, process, job, value, idempotency, crash, drop_ack).await,
            Guard::Postgres(store, ledger) => {
                transactional(ctx, process, job, value, store, ledger, crash, drop_ack).await
            }
        },
    }
}

/// Applies the effect in a commit of its own; false when it failed (the job is then abandoned:
/// its lease expires and it is redelivered).
async fn apply(ctx: &Ctx, job: &LeasedJob, value: u64) -> bool {
    match ctx.ledger.record(ctx.effect_row(job, value)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, job = %job.id, "the ledger refused an effect; abandoning the delivery");
            if matches!(ctx.ledger, Ledger::Sqlite(_)) {
                ctx.fail(format!("the SQLite ledger failed: {e}"));
            }
            false
        }
    }
}

/// After the effect: the crash-after-effect and stall faults, then the ack.
async fn finish(ctx: &Ctx, process: u32, job: &LeasedJob, crash: Option<Fault>, drop_ack: bool) {
    match crash {
        Some(Fault::CrashAfterEffect) => {
            ctx.fire(Fault::CrashAfterEffect);
            return;
        }
        Some(Fault::Stall) => stall(ctx, job).await,
        _ => {}
    }
    ack(ctx, process, job, drop_ack).await;
}

/// Sleeps until the lease is surely expired.
async fn stall(ctx: &Ctx, job: &LeasedJob) {
    ctx.fire(Fault::Stall);
    let until = job.lease_expires_at.as_millis() + STALL_PAST_EXPIRY_MS;
    let wait = u64::try_from(until - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Acks the delivery, recorded; retried while its outcome is unknown and the lease may be live
/// (unless the response is dropped on purpose).
async fn ack(ctx: &Ctx, process: u32, job: &LeasedJob, drop_ack: bool) {
    let request = || Request::Ack { job_id: job.id.get(), lease_token: job.lease_token.to_string() };
    loop {
        let op = ctx.recorder.invoke(process, request());
        let result = ctx.store.job_ack(&[job.lease()]).await;
        if drop_ack {
            ctx.fire(Fault::DropAck);
            ctx.recorder.complete(op, Outcome::Unknown, Response::None);
            return;
        }
        let item = result.and_then(|mut items| items.pop().unwrap_or_else(|| Err(Error::Storage("no result".into()))));
        match item {
            Ok(()) => {
                ctx.recorder.complete(op, Outcome::Ok, Response::None);
                ctx.settled();
                return;
            }
            Err(e) => {
                let outcome = outcome_of(&e);
                ctx.recorder.complete(op, outcome, Response::None);
                if is_fatal(&e) {
                    ctx.fail(format!("the target refused an ack: {e}"));
                }
                if outcome != Outcome::Unknown || now_ms() >= job.lease_expires_at.as_millis() {
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Nacks the delivery until `until_ms`, recorded (a key held by another delivery).
async fn nack_until(ctx: &Ctx, process: u32, job: &LeasedJob, until_ms: i64) {
    let op =
        ctx.recorder.invoke(process, Request::Nack { job_id: job.id.get(), lease_token: job.lease_token.to_string() });
    let delay = u64::try_from(until_ms - now_ms() + 50).unwrap_or(1).max(1);
    let nack = Nack {
        id: job.id,
        lease_token: job.lease_token,
        delay_ms: Some(delay),
        error: Some("the job's idempotency key is held by another delivery".into()),
    };
    let item = ctx
        .store
        .job_nack(&[nack])
        .await
        .and_then(|mut items| items.pop().unwrap_or_else(|| Err(Error::Storage("no result".into()))));
    match item {
        Ok(_) => ctx.recorder.complete(op, Outcome::Ok, Response::None),
        Err(e) => ctx.recorder.complete(op, outcome_of(&e), Response::None),
    }
}

fn key_of(ctx: &Ctx, value: u64) -> String {
    format!("verify:{}:{}", ctx.queue, dedup_id(value))
}

fn owner_of(job: &LeasedJob) -> String {
    format!("{}/{}", job.id, job.lease_token)
}

/// `begin`, sent again while its outcome is unknown (the same owner re-acquires its own claim).
async fn begin(
    ctx: &Ctx,
    idempotency: &dyn IdempotencyStore,
    key: &str,
    owner: &str,
    deadline_ms: i64,
) -> Result<BeginOutcome> {
    loop {
        let request =
            Begin { key: key.to_owned(), owner: owner.to_owned(), ttl_ms: ctx.config.claim_ttl_ms, fingerprint: None };
        match idempotency.idempotency_begin(request).await {
            Err(e) if e.kind() == ErrorKind::Unavailable && now_ms() < deadline_ms => {
                tokio::time::sleep(RETRY_PAUSE).await
            }
            other => return other,
        }
    }
}

/// `effectively_once` with the target's idempotency store and a ledger of its own.
async fn guarded(
    ctx: &Ctx,
    process: u32,
    job: &LeasedJob,
    value: u64,
    idempotency: &Arc<dyn IdempotencyStore>,
    crash: Option<Fault>,
    drop_ack: bool,
) {
    let key = key_of(ctx, value);
    let owner = owner_of(job);
    let lease_end = job.lease_expires_at.as_millis();
    let began_ms = now_ms();
    match begin(ctx, &**idempotency, &key, &owner, lease_end).await {
        Ok(BeginOutcome::Completed { .. }) => {
            // The effect was applied by an earlier delivery: ack without running.
            ack(ctx, process, job, drop_ack).await;
            return;
        }
        Ok(BeginOutcome::InProgress { until, .. }) => {
            nack_until(ctx, process, job, until.as_millis()).await;
            return;
        }
        Ok(BeginOutcome::Acquired) => {}
        Err(e) => {
            // Fail closed: the effect never runs unguarded; the lease expires and redelivers.
            if is_fatal(&e) {
                ctx.fail(format!("the idempotency store refused a begin: {e}"));
            }
            return;
        }
    }
    if crash == Some(Fault::CrashMidHandler) {
        ctx.fire(Fault::CrashMidHandler);
        return;
    }
    if !apply(ctx, job, value).await {
        let _ = idempotency.idempotency_release(&key, &owner).await;
        return;
    }
    if crash == Some(Fault::CrashBeforeComplete) {
        ctx.fire(Fault::CrashBeforeComplete);
        return;
    }
    // The claim lasts claim_ttl from the begin: keep trying to record the effect until shortly
    // before it may end (a redelivery could take the key after that). A store unreachable for
    // longer than the claim can make the effect run twice: that is what the claim ttl is for.
    let claim_end = began_ms + i64::try_from(ctx.config.claim_ttl_ms).unwrap_or(i64::MAX) - CLAIM_MARGIN_MS;
    if !complete(ctx, &**idempotency, &key, &owner, claim_end).await {
        return;
    }
    finish(ctx, process, job, crash, drop_ack).await;
}

/// Records the effect under the key; true when it is recorded. An unknown outcome is sent
/// again; a conflict after one means it may have landed, which a `begin` by the same owner tells.
async fn complete(ctx: &Ctx, idempotency: &dyn IdempotencyStore, key: &str, owner: &str, deadline_ms: i64) -> bool {
    loop {
        let request = Complete {
            key: key.to_owned(),
            owner: owner.to_owned(),
            result: b"{}".to_vec(),
            retention_ms: RETENTION_MS,
        };
        match idempotency.idempotency_complete(request).await {
            Ok(()) => return true,
            Err(e) if e.kind() == ErrorKind::Unavailable && now_ms() < deadline_ms => {
                tokio::time::sleep(RETRY_PAUSE).await
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                return match begin(ctx, idempotency, key, owner, deadline_ms).await {
                    Ok(BeginOutcome::Completed { .. }) => true,
                    // Still ours (the earlier complete did not land): record it now.
                    Ok(BeginOutcome::Acquired) => Box::pin(complete(ctx, idempotency, key, owner, deadline_ms)).await,
                    other => {
                        tracing::warn!(?other, key, "lost the idempotency claim after applying the effect");
                        false
                    }
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, key, "could not record an applied effect");
                return false;
            }
        }
    }
}

/// `effectively_once` on PostgreSQL: claim, effect, record and ack in one transaction.
#[allow(clippy::too_many_arguments)]
async fn transactional(
    ctx: &Ctx,
    process: u32,
    job: &LeasedJob,
    value: u64,
    store: &PgStore,
    ledger: &PgLedger,
    crash: Option<Fault>,
    drop_ack: bool,
) {
    if crash == Some(Fault::Stall) {
        // Before the transaction: holding one open would hold the job's row lock.
        stall(ctx, job).await;
    }
    let Ok(mut tx) = store.transaction().await else { return };
    let key = key_of(ctx, value);
    let owner = owner_of(job);
    let begin = Begin { key: key.clone(), owner: owner.clone(), ttl_ms: ctx.config.claim_ttl_ms, fingerprint: None };
    match store.idempotency_begin_in(&mut tx, begin).await {
        Ok(BeginOutcome::Acquired) => {}
        Ok(BeginOutcome::Completed { .. }) => {
            drop(tx);
            ack(ctx, process, job, drop_ack).await;
            return;
        }
        Ok(BeginOutcome::InProgress { until, .. }) => {
            drop(tx);
            nack_until(ctx, process, job, until.as_millis()).await;
            return;
        }
        Err(e) => {
            if is_fatal(&e) {
                ctx.fail(format!("the idempotency store refused a begin: {e}"));
            }
            return;
        }
    }
    if crash == Some(Fault::CrashMidHandler) {
        ctx.fire(Fault::CrashMidHandler);
        return; // the transaction is dropped: rolled back
    }
    if ledger.record_in(&mut tx, &ctx.effect_row(job, value)).await.is_err() {
        return;
    }
    if crash == Some(Fault::CrashBeforeComplete) {
        ctx.fire(Fault::CrashBeforeComplete);
        return;
    }
    let complete = Complete { key, owner, result: b"{}".to_vec(), retention_ms: RETENTION_MS };
    if let Err(e) = store.idempotency_complete_in(&mut tx, complete).await {
        tracing::warn!(error = %e, "could not record the effect in the transaction");
        return;
    }
    let op =
        ctx.recorder.invoke(process, Request::Ack { job_id: job.id.get(), lease_token: job.lease_token.to_string() });
    let item = store
        .job_ack_in(&mut tx, &[job.lease()])
        .await
        .and_then(|mut items| items.pop().unwrap_or_else(|| Err(Error::Storage("no result".into()))));
    if let Err(e) = item {
        // Refused: the effect must not commit without the ack.
        let _ = tx.rollback().await;
        ctx.recorder.complete(op, outcome_of(&e), Response::None);
        return;
    }
    if crash == Some(Fault::CrashAfterEffect) {
        ctx.fire(Fault::CrashAfterEffect);
        drop(tx);
        ctx.recorder.complete(op, Outcome::Unknown, Response::None);
        return;
    }
    let committed = tx.commit().await;
    if drop_ack {
        ctx.fire(Fault::DropAck);
        ctx.recorder.complete(op, Outcome::Unknown, Response::None);
        if committed.is_ok() {
            ctx.settled();
        }
        return;
    }
    match committed {
        Ok(()) => {
            ctx.recorder.complete(op, Outcome::Ok, Response::None);
            ctx.settled();
        }
        Err(_) => ctx.recorder.complete(op, Outcome::Unknown, Response::None),
    }
}

// ---------------------------------------------------------------------------------------------
// Periodic faults

/// What `pg-drop` needs from the target: the store and this run's `application_name`.
type PgDropper = Option<(PgStore, String)>;

fn pg_dropper(target: &Target) -> PgDropper {
    Some((target.postgres.clone()?, target.pg_application()?.to_owned()))
}

/// Fires `server-kill` and `pg-drop` with their rates per second (a draw every 250 ms), while
/// the run is busy (producing, and until half the jobs are settled). A fault whose rate is above
/// 0 and that has not fired by then fires once at that point, so that a short run still
/// exercises it with jobs in flight.
async fn periodic_faults(
    ctx: Arc<Ctx>,
    managed: Option<Arc<crate::target::ManagedServer>>,
    pg_drop: PgDropper,
    busy: Arc<AtomicBool>,
) {
    const TICKS_PER_SECOND: f64 = 4.0;
    let kill_rate = ctx.rate(Fault::ServerKill);
    let drop_rate = ctx.rate(Fault::PgDrop);
    if kill_rate == 0.0 && drop_rate == 0.0 {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(ctx.config.seed ^ (ctx.mode as u64).wrapping_mul(0x9e37_79b9));
    let (mut killed, mut dropped) = (false, false);
    loop {
        let last = !busy.load(Ordering::SeqCst);
        if ctx.stop.load(Ordering::SeqCst) {
            return;
        }
        if !last {
            tokio::time::sleep(Duration::from_secs_f64(1.0 / TICKS_PER_SECOND)).await;
        }
        let kill = rng.gen::<f64>() < kill_rate / TICKS_PER_SECOND || (last && kill_rate > 0.0 && !killed);
        if let Some(server) = managed.as_ref().filter(|_| kill) {
            if let Err(e) = server.kill().await {
                ctx.fail(e.to_string());
                return;
            }
            ctx.fire(Fault::ServerKill);
            killed = true;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Err(e) = server.restart().await {
                ctx.fail(format!("the managed server did not restart after kill -9: {e}"));
                return;
            }
        }
        let drop = rng.gen::<f64>() < drop_rate / TICKS_PER_SECOND || (last && drop_rate > 0.0 && !dropped);
        if let Some((store, application)) = pg_drop.as_ref().filter(|_| drop) {
            match crate::target::pg_terminate(store, application).await {
                Ok(n) => {
                    tracing::debug!(connections = n, "pg-drop");
                    ctx.fire(Fault::PgDrop);
                    dropped = true;
                }
                Err(e) => tracing::warn!(error = %e, "pg-drop could not terminate connections"),
            }
        }
        if last {
            return;
        }
    }
}
