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
//! - **Workers** are the shipped ones: `config.workers` instances of `onceq_worker::Worker`,
//!   each running `2 × lease_batch` jobs at once with prefetch `lease_batch`, the run's
//!   visibility timeout (heartbeats included) and long polls. Verify's handler applies the
//!   effect (a row in the [ledger](crate::ledger)). Each worker's store is a
//!   [`RecordedStore`] (it records every call and injects `drop-ack`), and a middleware around
//!   the handler injects the crashes and stalls: see [`crate::recorded`] for how a crash cuts a
//!   delivery off. `at_most_once` jobs are gone once leased; the worker's ack of them is refused
//!   (`not_found`) and changes nothing.
//! - **`effectively_once`** workers guard the effect with the worker's effectively-once gate
//!   (`onceq_worker::gate`), keys prefixed `verify:`:
//!   - With a SQLite ledger (embedded store, servers), the gate uses the target's idempotency
//!     store, and the effect and the record are two commits. A crash after `complete`
//!     (`crash-after-effect`) is guarded: the redelivery finds the key completed and acks
//!     without running. A crash after the claim and before the effect (`crash-mid-handler`) is
//!     guarded: the redelivery is released until the claim expires, then runs once. A stall or
//!     a lost ack after `complete` is guarded the same way. A crash between the effect and
//!     `complete` (`crash-before-complete`) is **not** guarded: the claim expires and the
//!     redelivery applies the effect again. Only a ledger in the idempotency store's database
//!     can close that window.
//!   - On PostgreSQL, the worker is `onceq_postgres_worker::PgWorker`: the gate's claim, the
//!     effect, the record and the ack run in one transaction, so every crash fault leaves either
//!     nothing or everything. Its crashes end the job before the commit (the transaction rolls
//!     back, as when a client dies); its stall comes before the transaction.
//!
//! Every call to the target is recorded in the [`History`]: its invoke (verify clock, Unix ms),
//! and its completion with an outcome: ok; fail for a definite refusal (`lease_lost`, job not
//! found); unknown for timeouts, broken connections or a dropped response. Calls a crash cut
//! off never reach the target and are not recorded. An ack inside a PostgreSQL transaction is
//! recorded by the handler (its invoke) and by a middleware around the whole job (its end: ok
//! when the job's transaction committed).
//!
//! **Ordered runs** (`ordered_keys`): the queues are `per_key` and each value carries the
//! ordering key `k{value mod ordered_keys}`, so the workers see one job of a key at a time, in
//! enqueue order, through every fault; the checker holds them to it.
//!
//! **Pipeline runs** ([`run_pipeline`]) reuse all of this for a consume → produce stage: no
//! modes, two stages side by side on `at_least_once` queues, the same producers, workers,
//! wrappers and faults; the handler makes each input's two outputs (committed with its ack, or
//! enqueued before it), and downstream consumers record every output delivered. What each fault
//! does to each stage is on [`run_pipeline`]; the rules are in [`crate::pipeline`].
//!
//! The run of a mode ends when the producers are done, no worker holds a job, and the queue has
//! nothing ready, scheduled, leased or blocked (every job acked or dead) — or when the drain timeout
//! passes, and whatever is missing is the checker's to report as lost. The dead letters are
//! then read into the history, and the effects from the ledger.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::{
    DeadPage, DeliveryMode, Error, ErrorKind, IdempotencyStore, JobId, LeaseOptions, NewJob, QueueConfig,
    QueueConfigPatch, QueueName, Result, Store,
};
use onceq_postgres::PgStore;
use onceq_postgres_worker::{PgWorker, TransactionalOptions};
use onceq_worker::{
    EffectivelyOnce, JobContext, Outcome as WorkerOutcome, OutcomeFuture, QueueOptions, Worker, WorkerOptions,
};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::faults::{roll, Fault, FaultLog, FaultPlan, TargetKind};
pub use crate::history::{now_ms, outcome_of, Recorder};
use crate::history::{DeadLetter, History, Outcome, Payload, Request, Response};
use crate::ledger::{EffectRow, Ledger, PgLedger};
use crate::pipeline::{OutputDelivery, OutputKind, OutputPayload, Stage, StageHistory};
use crate::recorded::{is_fatal, Cut, CutIdempotency, Deliveries, RecordedStore, Run};
use crate::target::Target;

/// How far past its lease's expiry a stalled worker acks, so the target's clock has surely
/// passed it (above [`crate::history::CLOCK_MARGIN_MS`]).
const STALL_PAST_EXPIRY_MS: i64 = 600;
/// How long a lease call waits for jobs.
const LEASE_WAIT_MS: u64 = 500;
/// How long a worker's running jobs may take to finish once the run stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Prefix of the idempotency keys of verify's workers.
const KEY_PREFIX: &str = "verify:";
/// Pause after a failed call before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(150);
/// Most tries of an enqueue batch whose outcome stays unknown.
const ENQUEUE_TRIES_MAX: u32 = 400;
/// Dedup window of the run's queues: longer than any run's retries.
const DEDUP_WINDOW_MS: u64 = 60 * 60 * 1000;
/// How long a completed idempotency record is kept.
const RETENTION_MS: u64 = 60 * 60 * 1000;
/// The shortest claim (ms): the gate stops trying to record an applied effect up to a second
/// before its claim may end.
const CLAIM_TTL_MS_MIN: u64 = 2_000;
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
    /// Runs the workers with a deliberately broken effectively-once gate (a delivery whose
    /// effect is recorded runs again), to prove that the checker catches it. Tests only.
    #[doc(hidden)]
    #[serde(default)]
    pub broken_gate_for_tests: bool,
    /// An ordered run: the queues are `per_key`, and value `v` carries the ordering key
    /// `k{v mod n}` ([`crate::history::key_of`]); the checker then also checks per-key order and
    /// one job of a key in flight at a time (Invariant 9).
    #[serde(default)]
    pub ordered_keys: Option<u64>,
    /// A pipeline run ([`run_pipeline`]): `modes` are not run; both [`Stage`]s run side by side
    /// on `at_least_once` queues of their own.
    #[serde(default)]
    pub pipeline: bool,
    /// Runs the committed stage of a pipeline run with its commit broken on purpose: its
    /// handler enqueues the outputs itself, outside the commit (which then acks alone), to prove
    /// that the checker and the exit status catch the duplicates. Tests only.
    #[doc(hidden)]
    #[serde(default)]
    pub broken_commit_for_tests: bool,
    /// Runs the workers as processes of this command (`sh -c`), speaking the protocol of
    /// [`crate::external`], instead of the shipped Rust worker: `workers` processes, each
    /// talking to a recording API verify serves for it.
    #[serde(default)]
    pub external_worker: Option<String>,
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
            broken_gate_for_tests: false,
            ordered_keys: None,
            pipeline: false,
            broken_commit_for_tests: false,
            external_worker: None,
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
        if self.pipeline && self.ordered_keys.is_some() {
            return bad("--pipeline and --ordered are separate runs; choose one".into());
        }
        if self.pipeline && self.broken_gate_for_tests {
            return bad("--pipeline runs no idempotency gate to break".into());
        }
        if self.broken_commit_for_tests && !self.pipeline {
            return bad("breaking the commit is for a --pipeline run".into());
        }
        if let Some(command) = &self.external_worker {
            if command.trim().is_empty() {
                return bad("--worker-cmd is empty; give the command that starts one worker process".into());
            }
            if self.pipeline || self.ordered_keys.is_some() {
                return bad(
                    "--worker-cmd runs the modes' workload; --pipeline and --ordered use the Rust worker".into()
                );
            }
        }
        if self.ordered_keys == Some(0) {
            return bad("--ordered-keys must be at least 1".into());
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
        // A pipeline run claims no idempotency key.
        if !self.pipeline && (self.claim_ttl_ms <= self.visibility_timeout_ms || self.claim_ttl_ms < CLAIM_TTL_MS_MIN) {
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
    /// With an external worker: how many times one of its processes exited as the crash faults
    /// told it to (and was started again).
    #[serde(default)]
    pub external_crash_exits: Option<u64>,
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
pub(crate) struct Ctx {
    pub(crate) mode: DeliveryMode,
    kind: TargetKind,
    queue: QueueName,
    /// The target's store (the workers' [`RecordedStore`]s wrap it).
    pub(crate) store: Arc<dyn Store>,
    guard: Guard,
    ledger: Ledger,
    pub(crate) config: WorkloadConfig,
    pub(crate) recorder: Recorder,
    faults: FaultLog,
    progress: Arc<Progress>,
    /// The leases handed out and what the faults cut off.
    pub(crate) deliveries: Arc<Deliveries>,
    /// Acks sent in a transaction and not yet known to have committed: lease token → op.
    transaction_acks: Mutex<HashMap<String, u64>>,
    /// Workers stop leasing.
    stop: AtomicBool,
    /// When the last settle (ack ok, at_most_once effect) happened.
    last_settle_ms: AtomicI64,
    /// The first error that stops the run.
    fatal: Mutex<Option<String>>,
    /// In a pipeline run, the stage this context's workers run and its output queues.
    stage: Option<StageQueues>,
}

/// A pipeline stage and its output queues (its input queue is [`Ctx::queue`]).
#[derive(Debug, Clone)]
struct StageQueues {
    stage: Stage,
    /// B, then C.
    outputs: [QueueName; 2],
}

impl Ctx {
    fn new(
        target: &Target,
        config: &WorkloadConfig,
        mode: DeliveryMode,
        queue: QueueName,
        guard: Guard,
        progress: Arc<Progress>,
        stage: Option<StageQueues>,
    ) -> Ctx {
        Ctx {
            mode,
            kind: target.kind,
            queue,
            store: target.store.clone(),
            guard,
            ledger: target.ledger.clone(),
            config: config.clone(),
            recorder: Recorder::default(),
            faults: FaultLog::new(),
            progress,
            deliveries: Arc::new(Deliveries::default()),
            transaction_acks: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            last_settle_ms: AtomicI64::new(i64::MIN),
            fatal: Mutex::new(None),
            stage,
        }
    }

    pub(crate) fn fail(&self, message: String) {
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

    pub(crate) fn hits(&self, fault: Fault, value: u64, attempt: u32) -> bool {
        let rate = self.rate(fault);
        rate > 0.0 && roll(self.config.seed, self.mode, value, attempt, fault) < rate
    }

    pub(crate) fn fire(&self, fault: Fault) {
        self.faults.fired(fault, now_ms());
        self.progress.faults.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn settled(&self) {
        self.last_settle_ms.fetch_max(now_ms(), Ordering::SeqCst);
        self.progress.settled.fetch_add(1, Ordering::Relaxed);
    }

    /// The history's process number of the worker running `job` (`verify-<process>`).
    fn process_of(&self, job: &JobContext) -> u32 {
        job.worker_id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(WORKER_PROCESS_BASE)
    }

    fn effect_row(&self, job: &JobContext, value: u64) -> EffectRow {
        EffectRow {
            queue: self.queue.to_string(),
            value,
            job_id: job.id.get(),
            lease_token: job.lease_token.to_string(),
            at_ms: now_ms(),
        }
    }
}

impl Run for Ctx {
    fn target(&self) -> &Arc<dyn Store> {
        &self.store
    }
    fn recorder(&self) -> &Recorder {
        &self.recorder
    }
    fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }
    fn visibility_timeout_ms(&self) -> u64 {
        self.config.visibility_timeout_ms
    }
    fn drops_ack(&self, value: u64, attempt: u32) -> bool {
        let dropped = self.hits(Fault::DropAck, value, attempt);
        if dropped {
            self.fire(Fault::DropAck);
        }
        dropped
    }
    fn settled(&self) {
        Ctx::settled(self);
    }
    fn fail(&self, message: String) {
        Ctx::fail(self, message);
    }
}

#[async_trait::async_trait]
impl crate::external::Host for Ctx {
    fn settings(&self) -> crate::external::Settings {
        crate::external::Settings {
            queue: self.queue.to_string(),
            mode: self.mode,
            workers: self.config.workers,
            visibility_timeout_ms: self.config.visibility_timeout_ms,
            claim_ttl_ms: self.config.claim_ttl_ms,
            lease_batch: self.config.lease_batch,
            broken_gate: self.config.broken_gate_for_tests,
            process_base: WORKER_PROCESS_BASE,
            stall_past_expiry_ms: STALL_PAST_EXPIRY_MS,
        }
    }
    fn idempotency(&self) -> Option<Arc<dyn IdempotencyStore>> {
        match &self.guard {
            Guard::Separate(store) => Some(store.clone()),
            // PostgreSQL's gate is in the job's transaction.
            Guard::Postgres(..) => None,
        }
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn crash_of(&self, value: u64, attempt: u32) -> Option<Fault> {
        crash_of(self, value, attempt)
    }
    fn fire(&self, fault: Fault) {
        Ctx::fire(self, fault);
    }
    async fn record(&self, row: EffectRow) -> Result<()> {
        self.ledger.record(row).await
    }
}

/// Runs every mode of `config` against `target`, one after the other.
pub async fn run(target: &Target, config: &WorkloadConfig, progress: Arc<Progress>) -> Result<Vec<ModeRun>> {
    config.validate()?;
    config.faults.check_target(target.kind)?;
    if config.external_worker.is_some() && target.kind == TargetKind::Postgres {
        return Err(Error::invalid(
            "--worker-cmd drives the embedded store or a server (--server, --managed-server); on PostgreSQL the \
             Rust worker puts the effect in the job's transaction, which an external worker cannot join",
        ));
    }
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
        ordering: config.ordered_keys.map(|_| onceq_core::Ordering::PerKey),
        ..QueueConfigPatch::default()
    };
    let queue_config = target.store.queue_upsert(&queue, patch).await?;
    let guard = match (&target.postgres, &target.ledger) {
        (Some(store), Ledger::Postgres(ledger)) => Guard::Postgres(store.clone(), ledger.clone()),
        _ => Guard::Separate(target.idempotency.clone()),
    };
    let ctx = Arc::new(Ctx::new(target, config, mode, queue.clone(), guard, progress.clone(), None));

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..config.producers {
        producers.spawn(produce(ctx.clone(), p));
    }
    let mut workers = tokio::task::JoinSet::new();
    let external = match &config.external_worker {
        Some(command) => Some(tokio::spawn(crate::external::run(ctx.clone(), command.clone()))),
        None => {
            for w in 0..config.workers {
                workers.spawn(work(ctx.clone(), WORKER_PROCESS_BASE + w));
            }
            None
        }
    };
    let busy = Arc::new(AtomicBool::new(true));
    let periodic = tokio::spawn(periodic_faults(
        ctx.clone(),
        Vec::new(),
        target.managed.clone(),
        pg_dropper(target),
        busy.clone(),
    ));

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
        // The periodic faults stop first (a restart may be under way); then the queue must hold
        // nothing ready, scheduled or leased: every job acked or dead.
        if periodic.is_finished() {
            if let Ok(info) = ctx.store.queue_get(&queue).await {
                let s = info.stats;
                if s.ready + s.scheduled + s.leased + s.blocked == 0 {
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
    let external_crash_exits = match external {
        Some(task) => match task.await {
            Ok(exits) => Some(exits),
            Err(e) => {
                ctx.fail(format!("the external workers' task failed: {e}"));
                None
            }
        },
        None => None,
    };
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
        ordered_keys: config.ordered_keys,
    };
    Ok(ModeRun {
        queue: queue.to_string(),
        queue_config,
        history,
        faults_fired: ctx.faults.counts(),
        drained,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        external_crash_exits,
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
// Pipeline runs

/// What one stage of a pipeline run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRun {
    /// Its input queue (A); its outputs are the queues of the same name ending in `.b` and `.c`.
    pub queue: String,
    /// The history, for [`crate::pipeline::check`].
    pub history: StageHistory,
    /// How often each fault fired in the stage (a server kill or a PostgreSQL drop hits both).
    pub faults_fired: BTreeMap<Fault, u64>,
    /// Wall time of the run, ms (both stages run at once).
    pub elapsed_ms: u64,
}

/// Runs both pipeline stages ([`Stage::ALL`]) side by side against `target`, under the faults
/// of `config` (the same schedule for both: faults are drawn per value and attempt, and both
/// stages' inputs are the values `0..jobs`).
///
/// Each stage has its own queues `verify.<run>.pipe.<committed|naive>.{a,b,c}`, all
/// `at_least_once` with the run's visibility timeout and max attempts. Its producers enqueue its
/// inputs into A as a mode's producers do (no dedup ids, retried while the outcome is unknown);
/// its workers ([`pipeline_workers_per_stage`]: the stages share `workers`) are the shipped
/// `onceq_worker::Worker` over a [`RecordedStore`] with verify's
/// fault middleware, whose handler is [`stage_step`]; downstream consumers lease and ack B and C
/// and record every delivery. On PostgreSQL the workers are the same runtime over `PgStore` (no
/// `PgWorker`: the stages have no effect to put in a transaction). The run ends when the
/// producers are done and all six queues hold nothing ready, scheduled or leased, or when the
/// drain timeout passes.
///
/// What each fault does to a stage:
/// - `crash-mid-handler`: the delivery dies before its handler runs: nothing produced or sent.
/// - `crash-after-effect`: the delivery dies after its handler returned and before its commit
///   (committed) or its ack (enqueue-then-ack) leaves. Committed: the produced jobs die with it.
///   Enqueue-then-ack: B and C were enqueued; the redelivery enqueues them again.
/// - `stall`: after the handler, the delivery sleeps past its lease with its heartbeats
///   dropped, then the runtime sends its commit or its ack, which must be refused. Committed:
///   nothing applies. Enqueue-then-ack: B and C stay, and the redelivery makes them again.
/// - `drop-ack`: the reply of the input's ack (enqueue-then-ack) or of the first commit sent
///   for a lease (committed) is lost after it applied. The runtime sends the commit again under
///   the same commit id, and the target must replay it (`commits_replayed`).
/// - `duplicate-enqueue`: a producer sends a batch of inputs twice: each copy is an input of its
///   own, to be turned into outputs once.
/// - `server-kill`, `pg-drop`: calls in flight end unknown. A commit is sent again (replayed if
///   it had applied); an output enqueue that failed makes the handler retry the input, whose
///   redelivery enqueues again.
/// - `crash-before-complete` does not apply (no idempotency store).
pub async fn run_pipeline(target: &Target, config: &WorkloadConfig, progress: Arc<Progress>) -> Result<Vec<StageRun>> {
    config.validate()?;
    config.faults.check_target(target.kind)?;
    let started = Instant::now();
    let run_id = format!("{:x}{:04x}", now_ms(), rand::random::<u16>());
    progress.mode_index.store(1, Ordering::SeqCst);
    let mode = DeliveryMode::AtLeastOnce;
    let patch = QueueConfigPatch {
        delivery: Some(mode),
        visibility_timeout_ms: Some(config.visibility_timeout_ms),
        max_attempts: Some(config.max_attempts),
        dedup_window_ms: Some(DEDUP_WINDOW_MS),
        ..QueueConfigPatch::default()
    };
    let mut ctxs = Vec::with_capacity(Stage::ALL.len());
    for stage in Stage::ALL {
        let base = format!("verify.{run_id}.pipe.{}", stage.queue_segment());
        let queue = QueueName::new(format!("{base}.a"))?;
        let outputs = [QueueName::new(format!("{base}.b"))?, QueueName::new(format!("{base}.c"))?];
        for name in std::iter::once(&queue).chain(&outputs) {
            target.store.queue_upsert(name, patch.clone()).await?;
        }
        let guard = Guard::Separate(target.idempotency.clone());
        let stage = Some(StageQueues { stage, outputs });
        ctxs.push(Arc::new(Ctx::new(target, config, mode, queue, guard, progress.clone(), stage)));
    }

    let mut producers = tokio::task::JoinSet::new();
    let mut workers = tokio::task::JoinSet::new();
    let mut downstream = tokio::task::JoinSet::new();
    let mut outputs = Vec::with_capacity(ctxs.len());
    for ctx in &ctxs {
        for p in 0..config.producers {
            producers.spawn(produce(ctx.clone(), p));
        }
        for w in 0..pipeline_workers_per_stage(config) {
            workers.spawn(work(ctx.clone(), WORKER_PROCESS_BASE + w));
        }
        let seen: Arc<Mutex<Vec<OutputDelivery>>> = Arc::default();
        if let Some(stage) = &ctx.stage {
            for (queue, kind) in stage.outputs.iter().zip(OutputKind::ALL) {
                downstream.spawn(consume_outputs(ctx.clone(), queue.clone(), kind, seen.clone()));
            }
        }
        outputs.push(seen);
    }
    let busy = Arc::new(AtomicBool::new(true));
    let periodic = tokio::spawn(periodic_faults(
        ctxs[0].clone(),
        ctxs[1..].to_vec(),
        target.managed.clone(),
        pg_dropper(target),
        busy.clone(),
    ));

    while let Some(joined) = producers.join_next().await {
        if let Err(e) = joined {
            ctxs[0].fail(format!("a producer task failed: {e}"));
        }
    }
    progress.draining.store(true, Ordering::SeqCst);
    let drain_deadline = Instant::now() + Duration::from_millis(config.drain_timeout_ms);
    let mut drain_seen_ms = i64::MIN;
    let drained = 'drain: loop {
        if ctxs.iter().any(|ctx| ctx.fatal().is_some()) {
            break false;
        }
        // Half of all inputs, both stages together.
        if progress.settled.load(Ordering::Relaxed) >= config.jobs {
            busy.store(false, Ordering::SeqCst);
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        // A first: while an input is leased, its stage may still make outputs.
        if periodic.is_finished() {
            let mut empty = true;
            for ctx in &ctxs {
                let Some(stage) = &ctx.stage else { continue };
                for queue in std::iter::once(&ctx.queue).chain(&stage.outputs) {
                    match ctx.store.queue_get(queue).await {
                        Ok(info) => {
                            let s = info.stats;
                            empty &= s.ready + s.scheduled + s.leased + s.blocked == 0;
                        }
                        Err(_) => empty = false,
                    }
                    if !empty {
                        break;
                    }
                }
            }
            if empty {
                drain_seen_ms = now_ms();
                break 'drain true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    busy.store(false, Ordering::SeqCst);
    for ctx in &ctxs {
        ctx.stop.store(true, Ordering::SeqCst);
    }
    let _ = periodic.await;
    for set in [&mut workers, &mut downstream] {
        while let Some(joined) = set.join_next().await {
            if let Err(e) = joined {
                ctxs[0].fail(format!("a worker or consumer task failed: {e}"));
            }
        }
    }
    for ctx in &ctxs {
        if let Some(message) = ctx.fatal() {
            return Err(Error::Storage(format!("the pipeline run stopped: {message}")));
        }
    }
    let end_ms = now_ms();
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut runs = Vec::with_capacity(ctxs.len());
    for (ctx, seen) in ctxs.iter().zip(outputs) {
        let Some(stage) = &ctx.stage else { continue };
        let dead = read_dead(&*ctx.store, &ctx.queue).await?;
        if !config.keep_queues {
            for queue in std::iter::once(&ctx.queue).chain(&stage.outputs) {
                if let Err(e) = ctx.store.queue_delete(queue).await {
                    tracing::warn!(error = %e, %queue, "could not delete the run's queue");
                }
            }
        }
        let last_settle = ctx.last_settle_ms.load(Ordering::SeqCst);
        let last_fault = ctx.faults.last_at_ms().unwrap_or(i64::MIN);
        let drained_at_ms = match (drained, last_settle) {
            (true, settle) if settle != i64::MIN && settle >= last_fault => settle,
            (true, _) => drain_seen_ms,
            (false, _) => end_ms,
        };
        let inputs = History {
            mode,
            events: ctx.recorder.take(),
            effects: Vec::new(),
            dead,
            last_fault_at_ms: ctx.faults.last_at_ms(),
            drained_at_ms,
            ordered_keys: None,
        };
        let outputs = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        runs.push(StageRun {
            queue: ctx.queue.to_string(),
            history: StageHistory { stage: stage.stage, inputs, outputs, drained },
            faults_fired: ctx.faults.counts(),
            elapsed_ms,
        });
    }
    Ok(runs)
}

/// Workers per stage of a pipeline run: the stages share `config.workers`, so that a run holds
/// as many jobs at once as a mode's run does. Twice that overloads a PostgreSQL pool: the
/// heartbeats of a thousand jobs in hand wait for connections until the leases expire, and the
/// redeliveries feed on themselves.
pub fn pipeline_workers_per_stage(config: &WorkloadConfig) -> u32 {
    config.workers.div_ceil(Stage::ALL.len() as u32).max(1)
}

/// A stage's handler: makes the input's B and C. Committed: produced into the context, for the
/// runtime to commit with the ack. Enqueue-then-ack: enqueued now, one plain enqueue each; a
/// failed enqueue retries the input (its redelivery enqueues both again).
async fn stage_step(ctx: &Ctx, stage: &StageQueues, job: &JobContext, value: u64) -> WorkerOutcome {
    for (queue, kind) in stage.outputs.iter().zip(OutputKind::ALL) {
        let payload = OutputPayload { value, input: job.id.get(), output: kind };
        let output = NewJob::new(serde_json::to_vec(&payload).unwrap_or_default());
        match stage.stage {
            Stage::Committed if !ctx.config.broken_commit_for_tests => {
                if let Err(e) = job.produce(queue.as_str(), output) {
                    ctx.fail(format!("the runtime refused a produced job: {e}"));
                    return WorkerOutcome::retry(format!("produce refused: {e}"));
                }
            }
            Stage::Committed | Stage::EnqueueThenAck => {
                if let Err(e) = ctx.store.job_enqueue(queue, vec![output]).await {
                    if is_fatal(&e) {
                        ctx.fail(format!("the target refused an output enqueue: {e}"));
                    }
                    return WorkerOutcome::retry(format!("enqueueing output {} failed: {e}", kind.name()));
                }
            }
        }
    }
    WorkerOutcome::Done
}

/// A downstream consumer of one output queue: leases, records every job handed out (a
/// redelivery too, with the same job id), acks. A lost ack leaves the job to come back.
async fn consume_outputs(ctx: Arc<Ctx>, queue: QueueName, kind: OutputKind, seen: Arc<Mutex<Vec<OutputDelivery>>>) {
    let options = LeaseOptions {
        max_jobs: ctx.config.lease_batch,
        visibility_timeout_ms: Some(ctx.config.visibility_timeout_ms),
        wait_ms: LEASE_WAIT_MS,
    };
    while !ctx.stop.load(Ordering::SeqCst) {
        let jobs = match ctx.store.job_lease(&queue, options).await {
            Ok(jobs) => jobs,
            Err(e) => {
                if is_fatal(&e) {
                    ctx.fail(format!("the target refused a lease of {queue}: {e}"));
                    return;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let at_ms = now_ms();
        let mut acks = Vec::with_capacity(jobs.len());
        {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            for job in &jobs {
                match serde_json::from_slice::<OutputPayload>(&job.payload) {
                    Ok(p) if p.output == kind => {
                        seen.push(OutputDelivery { kind, job_id: job.id.get(), input: p.input, value: p.value, at_ms })
                    }
                    _ => ctx.fail(format!("output job {} of {queue} carries a payload verify never wrote", job.id)),
                }
                acks.push(job.lease());
            }
        }
        if !acks.is_empty() {
            if let Err(e) = ctx.store.job_ack(&acks).await {
                tracing::debug!(error = %e, %queue, "an output ack failed; its jobs come back");
            }
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
        job.ordering_key = ctx.config.ordered_keys.map(|keys| crate::history::key_of(value, keys));
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
// Workers: the shipped `onceq_worker::Worker` (or `PgWorker`), over verify's wrappers

/// Runs worker `process` until `ctx.stop` is set: `onceq_worker::Worker` over a
/// [`RecordedStore`], with verify's handler (apply the effect) and its fault middleware; in
/// `effectively_once` guarded by the target's idempotency store through the worker's gate, or,
/// on PostgreSQL, by `PgWorker`'s transactional gate.
async fn work(ctx: Arc<Ctx>, process: u32) {
    let store = Arc::new(RecordedStore::new(ctx.clone() as Arc<dyn Run>, process));
    let mut options = WorkerOptions::default();
    options.worker_id = format!("verify-{process}");
    options.shutdown_grace = SHUTDOWN_GRACE;
    let vt = ctx.config.visibility_timeout_ms;
    // Jobs in hand at most: a batch being run and the next one, so that a stalled job holds one
    // slot, not the worker.
    let mut queue = QueueOptions::concurrency(2 * ctx.config.lease_batch as usize)
        .visibility_timeout(Duration::from_millis(vt))
        .poll_wait(Duration::from_millis(LEASE_WAIT_MS));
    queue.prefetch = ctx.config.lease_batch;
    let stop = {
        let ctx = ctx.clone();
        async move {
            while !ctx.stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let built = match (&ctx.guard, ctx.mode) {
        (Guard::Postgres(pg, ledger), DeliveryMode::EffectivelyOnce) => {
            let mut transactional = TransactionalOptions::new(queue).effectively_once();
            transactional.retention = Duration::from_millis(RETENTION_MS);
            transactional.key_prefix = KEY_PREFIX.into();
            let (c, ledger) = (ctx.clone(), ledger.clone());
            let m = ctx.clone();
            PgWorker::builder_over(pg.clone(), store)
                .options(options)
                .handle_in_transaction(ctx.queue.as_str(), transactional, move |job: JobContext, p: Payload, tx| {
                    let (ctx, ledger) = (c.clone(), ledger.clone());
                    Box::pin(async move { in_transaction(&ctx, &ledger, job, p.value, tx).await })
                })
                .middleware(move |job, run| Box::pin(around_transaction(m.clone(), job, run)))
                .build()
                .map(|worker| tokio::spawn(worker.run(stop)))
        }
        (guard, mode) => {
            if mode == DeliveryMode::EffectivelyOnce {
                let Guard::Separate(idempotency) = guard else {
                    ctx.fail("a PostgreSQL guard outside effectively_once".into());
                    return;
                };
                let cut = CutIdempotency::new(idempotency.clone(), ctx.deliveries.clone());
                let mut once = EffectivelyOnce::new(Arc::new(cut));
                once.claim_ttl = Duration::from_millis(ctx.config.claim_ttl_ms);
                once.retention = Duration::from_millis(RETENTION_MS);
                once.key_prefix = KEY_PREFIX.into();
                once.broken_for_tests = ctx.config.broken_gate_for_tests;
                queue = queue.effectively_once(once);
            }
            let (c, m) = (ctx.clone(), ctx.clone());
            Worker::builder(store)
                .options(options)
                .handle_with(ctx.queue.as_str(), queue, move |job: JobContext, p: Payload| {
                    let ctx = c.clone();
                    async move { apply(&ctx, &job, p.value).await }
                })
                .middleware(move |job, run| Box::pin(around(m.clone(), job, run)))
                .build()
                .map(|worker| tokio::spawn(worker.run(stop)))
        }
    };
    match built {
        Ok(running) => {
            if let Err(e) = running.await {
                ctx.fail(format!("a worker failed: {e}"));
            }
        }
        Err(e) => ctx.fail(format!("the worker refused its settings: {e}")),
    }
}

/// The crash or stall this delivery suffers, if any (at most one).
fn crash_of(ctx: &Ctx, value: u64, attempt: u32) -> Option<Fault> {
    [Fault::CrashAfterEffect, Fault::CrashMidHandler, Fault::CrashBeforeComplete, Fault::Stall]
        .into_iter()
        .find(|f| ctx.hits(*f, value, attempt))
}

/// Verify's handler: applies the effect in a commit of its own (the ledger); in a pipeline run,
/// the stage's step instead ([`stage_step`]).
async fn apply(ctx: &Ctx, job: &JobContext, value: u64) -> WorkerOutcome {
    if let Some(stage) = &ctx.stage {
        return stage_step(ctx, stage, job, value).await;
    }
    match ctx.ledger.record(ctx.effect_row(job, value)).await {
        Ok(()) => {
            if ctx.mode == DeliveryMode::AtMostOnce {
                // Leasing removed the job: the effect is its settle.
                ctx.settled();
            }
            WorkerOutcome::Done
        }
        Err(e) => {
            if matches!(ctx.ledger, Ledger::Sqlite(_)) {
                ctx.fail(format!("the SQLite ledger failed: {e}"));
            }
            WorkerOutcome::retry(format!("the ledger refused the effect: {e}"))
        }
    }
}

/// Verify's middleware around the handler (inside the worker's gate): the crash and stall
/// faults. A crash marks the delivery's lease [cut](Cut) so that nothing the dead worker would
/// have sent reaches the target; the outcome returned then only feeds calls that are dropped.
async fn around(ctx: Arc<Ctx>, job: JobContext, run: OutcomeFuture) -> WorkerOutcome {
    let token = job.lease_token.to_string();
    let Some(leased) = ctx.deliveries.get(&token) else {
        return run.await;
    };
    match crash_of(&ctx, leased.value, job.attempt) {
        Some(Fault::CrashMidHandler) => {
            ctx.fire(Fault::CrashMidHandler);
            ctx.deliveries.cut(token, Cut::Crashed);
            WorkerOutcome::retry("crashed before the effect")
        }
        Some(Fault::CrashBeforeComplete) => {
            let outcome = run.await;
            ctx.fire(Fault::CrashBeforeComplete);
            ctx.deliveries.cut(token, Cut::Crashed);
            outcome
        }
        Some(Fault::CrashAfterEffect) => {
            let outcome = run.await;
            ctx.fire(Fault::CrashAfterEffect);
            // In effectively_once the gate's complete still goes out; the ack does not.
            ctx.deliveries.cut(token, Cut::CrashedAfterComplete);
            outcome
        }
        Some(Fault::Stall) => {
            let outcome = run.await;
            stall(&ctx, token, leased.lease_expires_at_ms).await;
            outcome
        }
        _ => run.await,
    }
}

/// Sleeps, partitioned from the target, until the lease is surely expired.
async fn stall(ctx: &Ctx, token: String, lease_expires_at_ms: i64) {
    ctx.fire(Fault::Stall);
    ctx.deliveries.cut(token, Cut::Stalled);
    let until = lease_expires_at_ms + STALL_PAST_EXPIRY_MS;
    let wait = u64::try_from(until - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// Verify's middleware around a whole transactional job on PostgreSQL (the transaction, the
/// gate, the handler, the record, the ack and the commit): the stall comes before it (holding
/// the transaction open would hold the job's row), and the ack the handler recorded is
/// completed with what the commit did. `drop-ack` drops that answer.
async fn around_transaction(ctx: Arc<Ctx>, job: JobContext, run: OutcomeFuture) -> WorkerOutcome {
    let token = job.lease_token.to_string();
    if let Some(leased) = ctx.deliveries.get(&token) {
        if crash_of(&ctx, leased.value, job.attempt) == Some(Fault::Stall) {
            stall(&ctx, token.clone(), leased.lease_expires_at_ms).await;
        }
    }
    let outcome = run.await;
    let op = ctx.transaction_acks.lock().unwrap_or_else(|p| p.into_inner()).remove(&token);
    if let Some(op) = op {
        let dropped = ctx.deliveries.get(&token).is_some_and(|l| ctx.hits(Fault::DropAck, l.value, l.attempt));
        match outcome {
            WorkerOutcome::Acked if dropped => {
                ctx.fire(Fault::DropAck);
                ctx.recorder.complete(op, Outcome::Unknown, Response::None);
                ctx.settled();
            }
            WorkerOutcome::Acked => {
                ctx.recorder.complete(op, Outcome::Ok, Response::None);
                ctx.settled();
            }
            // Refused (the lease was lost) or a failed commit: nobody can tell which here.
            _ => ctx.recorder.complete(op, Outcome::Unknown, Response::None),
        }
    }
    outcome
}

/// Verify's transactional handler: the effect in the job's transaction. The crash faults end
/// the job before its commit: the transaction rolls back, as PostgreSQL does when a client
/// dies, and the rest of the delivery is cut off. Otherwise the ack that `PgWorker` sends in
/// the transaction is recorded from here (its invoke) and [`around_transaction`] (its end).
async fn in_transaction(
    ctx: &Ctx,
    ledger: &PgLedger,
    job: JobContext,
    value: u64,
    tx: &mut onceq_postgres_worker::PgTransaction,
) -> WorkerOutcome {
    let token = job.lease_token.to_string();
    let crash = crash_of(ctx, value, job.attempt);
    if crash == Some(Fault::CrashMidHandler) {
        ctx.fire(Fault::CrashMidHandler);
        ctx.deliveries.cut(token, Cut::Crashed);
        return WorkerOutcome::retry("crashed before the effect");
    }
    if let Err(e) = ledger.record_in(tx, &ctx.effect_row(&job, value)).await {
        return WorkerOutcome::retry(format!("the ledger refused the effect: {e}"));
    }
    if let Some(fault @ (Fault::CrashBeforeComplete | Fault::CrashAfterEffect)) = crash {
        ctx.fire(fault);
        ctx.deliveries.cut(token, Cut::Crashed);
        return WorkerOutcome::retry("crashed before the commit");
    }
    let op =
        ctx.recorder.invoke(ctx.process_of(&job), Request::Ack { job_id: job.id.get(), lease_token: token.clone() });
    ctx.transaction_acks.lock().unwrap_or_else(|p| p.into_inner()).insert(token, op);
    WorkerOutcome::Done
}

// ---------------------------------------------------------------------------------------------
// Periodic faults

/// What `pg-drop` needs from the target: the store and this run's `application_name`.
type PgDropper = Option<(PgStore, String)>;

fn pg_dropper(target: &Target) -> PgDropper {
    Some((target.postgres.clone()?, target.pg_application()?.to_owned()))
}

/// Fires `server-kill` and `pg-drop` with their rates per second (a draw every 250 ms), while
/// the run is busy (producing, and until half the jobs are settled). In a pipeline run one task
/// serves both stages (`also`: the other's context), and each counts every fault it fired. A fault whose rate is above
/// 0 and that has not fired by then fires once at that point, so that a short run still
/// exercises it with jobs in flight.
async fn periodic_faults(
    ctx: Arc<Ctx>,
    also: Vec<Arc<Ctx>>,
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
            also.iter().for_each(|other| other.fire(Fault::ServerKill));
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
                    also.iter().for_each(|other| other.fire(Fault::PgDrop));
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
