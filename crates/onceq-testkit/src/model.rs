//! A simple, synchronous, in-memory reference model of one queue, and a harness that checks a
//! real [`Store`] against it op by op.
//!
//! # Layout
//!
//! - [`Model`]: the reference model. It follows `docs/semantics.md` line by line, with no
//!   indexes, no batching tricks and no concurrency, so that it is obviously right. Its job ids
//!   are its own ([`ModelId`], assigned in enqueue order); its lease tokens are the index of the
//!   lease among all leases ever handed out. It models an unordered queue ([`model_config`]) or a
//!   `per_key` one ([`ordered_config`]): heads, blocked jobs, keys moving on, `dead_blocks_key`.
//!   It models commits ([`Model::commit`], docs/api.md "Commits") on that queue too: validation,
//!   the replay of a remembered commit id (for the longest dedup window of the queues touched,
//!   and at least `COMMIT_REPLAY_MS_MIN`) or its `Conflict`, the producer fence (`Fenced`), all
//!   or nothing (`LeasesLost` listing every stale job), then the settles, the enqueue and the
//!   checkpoint; and producers ([`Model::producer_register`], [`Model::producer_get`]).
//! - [`Op`], [`ops`] and [`ordered_case`]: the operations a state-machine test applies, and
//!   proptest strategies producing sequences of them (stale tokens, forged tokens, unknown ids and
//!   clock advances of every relevant size included). Ordered cases draw ordering keys from three
//!   values so that keys block, move on and die often, and change the queue's config mid-run.
//!   Commits settle leases picked as the single settles pick theirs and enqueue into the one
//!   queue, under commit ids from a small set (so ids are reused, with the same content or not),
//!   fenced by one of two producers at its current, an older or a never-issued epoch, with a
//!   small checkpoint; [`Op::CommitAgain`] sends an earlier commit again as a retry would, and
//!   [`Op::AdvanceToCommitEnd`] moves the clock to a millisecond around the end of a commit id's
//!   window.
//! - [`check_against`] and [`check_against_config`]: apply ops to the model and to a real store
//!   side by side, map ids and tokens between them, and compare every outcome (a commit's
//!   enqueued ids, duplicate flags and `replayed`, or its refusal) and every observation after
//!   each op (the queue, every job ever created, both producers' epochs and checkpoints).
//!
//! The queue config is fixed per case ([`model_config`], or [`ordered_config`] for ordered
//! cases): no jitter, so backoff delays are exact.

use std::collections::{BTreeMap, BTreeSet};

use onceq_core::commit::{Commit, CommitEnqueue, CommitId, Fence, ProducerId, Registration};
use onceq_core::limits::COMMIT_REPLAY_MS_MIN;
use onceq_core::ordering::{fnv1a32, partition_of};
use onceq_core::Clock;
use onceq_core::{
    AttemptError, Backoff, DeadPage, DeliveryMode, Enqueued, Error, ErrorKind, Extend, Fail, Headers, Jitter, Job,
    JobId, JobState, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, ManualClock, Nack, NackOutcome, NewJob, Ordering,
    QueueConfig, QueueConfigPatch, QueueName, QueueStats, Redrive, Release, Schedule, Store, Timestamp,
};
use proptest::prelude::*;
use proptest::sample::Index;

/// The name of the one queue the harness drives.
pub const MODEL_QUEUE: &str = "model";

/// The error text a nack records when it names none (docs/semantics.md).
const NACK_ERROR_DEFAULT: &str = "nacked";
/// The error text a lease expiry records (docs/semantics.md).
const EXPIRY_ERROR: &str = "lease expired";

/// The fixed config of the model's queue: short timeouts so that small clock advances cross
/// every boundary, no jitter so that backoff is exact.
pub fn model_config() -> QueueConfig {
    QueueConfig {
        delivery: DeliveryMode::AtLeastOnce,
        visibility_timeout_ms: 1_000,
        max_attempts: 3,
        backoff: Backoff { initial_ms: 200, max_ms: 800, multiplier: 2.0, jitter: Jitter::None },
        dedup_window_ms: 5_000,
        ..QueueConfig::default()
    }
}

/// [`model_config`] made `per_key` with `partitions` partitions (small, so that keys share them)
/// and `dead_blocks_key`.
pub fn ordered_config(partitions: u32, dead_blocks_key: bool) -> QueueConfig {
    QueueConfig { ordering: Ordering::PerKey, partitions, dead_blocks_key, ..model_config() }
}

/// The ordering keys ordered cases draw from: few, so that most keys have a head and a queue.
pub const MODEL_KEYS: [&str; 3] = ["k0", "k1", "k2"];

/// A job id in the model: the job's position in enqueue order (0-based), counting created jobs
/// only. The store's ids are strictly increasing, so model id order is real id order.
pub type ModelId = u64;

/// Why a settle item was rejected (the two per-item errors of the seam).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `JobNotFound`: the job does not exist.
    JobNotFound,
    /// `LeaseLost`: the job exists, but the token is not its current live lease.
    LeaseLost,
}

/// The outcome of one settle item.
pub type ItemOutcome<T> = std::result::Result<T, Rejection>;

/// Where a model job is in its lifecycle. Ready and scheduled are one phase: which of the two a
/// waiting job is follows from its `run_at` and the model's time.
///
/// In a `per_key` queue a keyed job that is waiting, leased, or dead holding its key is its
/// key's **head**; there is at most one per key, and a key has blocked jobs only while it has a
/// head (Invariant 9, checked by [`Model::check_keys`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Behind its key's head, in a `per_key` queue; its `run_at` is its own (it is judged when
    /// the job becomes the head).
    Blocked,
    /// Ready or scheduled, by `run_at`.
    Waiting,
    /// Under a live lease (the model expires leases as soon as its time reaches their expiry).
    Leased {
        /// Index of the lease among all leases ever handed out.
        token: u64,
        /// The lease is live while `now < expires_at`.
        expires_at: Timestamp,
    },
    /// Dead-lettered. `holds_key`: it died as its key's head in a queue with `dead_blocks_key`,
    /// so it stays the head until it is redriven or purged (whatever the flag says later).
    Dead { holds_key: bool },
}

/// One job of the model.
#[derive(Debug, Clone)]
struct ModelJob {
    phase: Phase,
    attempt: u32,
    max_attempts: u32,
    priority: i32,
    payload: Vec<u8>,
    headers: Headers,
    dedup_id: Option<String>,
    ordering_key: Option<String>,
    enqueued_at: Timestamp,
    run_at: Timestamp,
    errors: Vec<AttemptError>,
}

/// What the model says a job looks like to `job_get` and `dead_list`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// The job.
    pub id: ModelId,
    /// Its state as of the model's time.
    pub state: JobState,
    /// Leases so far.
    pub attempt: u32,
    /// Leases allowed.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Payload, as text (the harness's payloads are JSON; invalid UTF-8 shows as U+FFFD).
    pub payload: String,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Partition, in a `per_key` queue. A key-less job's partition is the store's id modulo the
    /// count, which the model cannot know: [`Model`] leaves it `None` and the harness, which
    /// knows the store's ids, fills it in ([`Model::partition`]).
    pub partition: Option<u32>,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When it became or becomes ready (a blocked job's own, judged when it becomes the head);
    /// `None` for a dead job, whose `run_at` the semantics leave open.
    pub run_at: Option<Timestamp>,
    /// When its lease expires, while leased.
    pub lease_expires_at: Option<Timestamp>,
    /// The error of every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

impl JobView {
    /// The view of a real job, with its id mapped to a model id.
    pub fn of_job(job: &Job, id: ModelId) -> Self {
        JobView {
            id,
            state: job.state,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            payload: String::from_utf8_lossy(&job.payload).into_owned(),
            headers: job.headers.clone(),
            dedup_id: job.dedup_id.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: job.partition,
            enqueued_at: job.enqueued_at,
            run_at: (job.state != JobState::Dead).then_some(job.run_at),
            lease_expires_at: job.lease_expires_at,
            errors: job.errors.clone(),
        }
    }
}

/// What the model says a lease call hands out, per job.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedView {
    /// The job.
    pub id: ModelId,
    /// This lease's attempt number.
    pub attempt: u32,
    /// Leases allowed.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Payload, as text.
    pub payload: String,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Partition, in a `per_key` queue (for a key-less job, filled in as in [`JobView`]).
    pub partition: Option<u32>,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When it became ready.
    pub run_at: Timestamp,
    /// When this lease expires.
    pub lease_expires_at: Timestamp,
}

impl LeasedView {
    /// The view of a real leased job, with its id mapped to a model id.
    pub fn of_leased(job: &LeasedJob, id: ModelId) -> Self {
        LeasedView {
            id,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            payload: String::from_utf8_lossy(&job.payload).into_owned(),
            headers: job.headers.clone(),
            dedup_id: job.dedup_id.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: job.partition,
            enqueued_at: job.enqueued_at,
            run_at: job.run_at,
            lease_expires_at: job.lease_expires_at,
        }
    }
}

/// One job of an enqueue batch, as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelNewJob {
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Headers,
    /// Priority.
    pub priority: i32,
    /// When it becomes ready.
    pub schedule: Schedule,
    /// Its own max attempts, else the queue's.
    pub max_attempts: Option<u32>,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
}

impl From<NewJob> for ModelNewJob {
    fn from(job: NewJob) -> Self {
        ModelNewJob {
            payload: job.payload,
            headers: job.headers,
            priority: job.priority,
            schedule: job.schedule,
            max_attempts: job.max_attempts,
            dedup_id: job.dedup_id,
            ordering_key: job.ordering_key,
        }
    }
}

impl ModelNewJob {
    /// The same job as the seam's [`NewJob`].
    pub fn to_new_job(&self) -> NewJob {
        NewJob {
            payload: self.payload.clone(),
            headers: self.headers.clone(),
            priority: self.priority,
            schedule: self.schedule,
            max_attempts: self.max_attempts,
            dedup_id: self.dedup_id.clone(),
            ordering_key: self.ordering_key.clone(),
            unique: None,
        }
    }
}

/// One nack item, as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNack {
    /// The job.
    pub id: ModelId,
    /// The presented lease token; `None` is a token never handed out.
    pub token: Option<u64>,
    /// Run again after this delay; `None` lets the backoff decide.
    pub delay_ms: Option<u64>,
    /// Why; `None` records "nacked".
    pub error: Option<String>,
}

/// One commit as the model sees it: its settles by model id and model token (`None`: a token
/// never handed out), the jobs it enqueues into the model's queue, its producer fence and
/// checkpoint. Two commits have the same content ([`ModelCommit::content`]) when they are equal
/// but for their ids: the model's view of `Commit::digest`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCommit {
    /// Names the commit for retries.
    pub commit_id: Option<String>,
    /// The producer and the epoch the commit presents.
    pub producer: Option<(String, u64)>,
    /// `(job, token)` to ack.
    pub ack: Vec<(ModelId, Option<u64>)>,
    /// Leases to nack.
    pub nack: Vec<ModelNack>,
    /// `(job, token, error)` to fail.
    pub fail: Vec<(ModelId, Option<u64>, String)>,
    /// `(job, token, delay_ms)` to release.
    pub release: Vec<(ModelId, Option<u64>, Option<u64>)>,
    /// Jobs to enqueue into the model's queue (`Some` of an empty batch is invalid).
    pub enqueue: Option<Vec<ModelNewJob>>,
    /// Saved as the producer's checkpoint.
    pub checkpoint: Option<serde_json::Value>,
}

impl ModelCommit {
    /// What a retry under the same commit id must repeat: everything but the id.
    pub fn content(&self) -> ModelCommit {
        ModelCommit { commit_id: None, ..self.clone() }
    }

    /// Every settle's `(job, token)`, in the order ack, nack, fail, release (as `Commit::leases`).
    pub fn leases(&self) -> Vec<(ModelId, Option<u64>)> {
        let nack = self.nack.iter().map(|n| (n.id, n.token));
        let fail = self.fail.iter().map(|f| (f.0, f.1));
        let release = self.release.iter().map(|r| (r.0, r.1));
        self.ack.iter().copied().chain(nack).chain(fail).chain(release).collect()
    }
}

/// What a commit did, in model ids: the jobs it enqueued (`None` when it enqueued nothing), and
/// whether it is the replay of an earlier one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCommitOutcome {
    /// `(id, duplicate)` per job enqueued, in request order.
    pub enqueued: Option<Vec<(ModelId, bool)>>,
    /// The first outcome returned again: nothing applied now.
    pub replayed: bool,
}

/// Why the model refuses a commit; nothing of it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitRefusal {
    /// `InvalidRequest` (validation, or a producer epoch never issued): why.
    Invalid(&'static str),
    /// `Conflict`: the commit id names another commit within its window.
    Conflict,
    /// `Fenced`: a newer epoch of the producer registered.
    Fenced,
    /// `LeasesLost`: these jobs' leases are not current (ascending model ids).
    LeasesLost(Vec<ModelId>),
}

/// A commit id the model remembers.
#[derive(Debug, Clone)]
struct CommitRecord {
    /// What the first commit did, without its id.
    content: ModelCommit,
    /// Its outcome, returned to a retry.
    outcome: ModelCommitOutcome,
    /// The id is remembered while `now < expires_at`.
    expires_at: Timestamp,
}

/// The reference model of one at-least-once queue (docs/semantics.md), unordered or `per_key`.
#[derive(Debug, Clone)]
pub struct Model {
    /// The model's clock.
    now: Timestamp,
    config: QueueConfig,
    paused: bool,
    /// Id of the next created job.
    next_id: ModelId,
    /// Live jobs (acked and purged jobs are removed).
    jobs: BTreeMap<ModelId, ModelJob>,
    /// Dedup id → (the job first enqueued with it, when the entry expires).
    dedup: BTreeMap<String, (ModelId, Timestamp)>,
    /// Every lease ever handed out, by token: the job it was on.
    leases: Vec<ModelId>,
    /// Commit ids, remembered for their replay window (whatever happens to the queue).
    commits: BTreeMap<String, CommitRecord>,
    /// Producer → (its current epoch, its checkpoint).
    producers: BTreeMap<String, (u64, Option<serde_json::Value>)>,
}

impl Model {
    /// An empty queue with [`model_config`], its clock standing at `now`.
    pub fn new(now: Timestamp) -> Self {
        Model::with_config(now, model_config())
    }

    /// An empty queue with `config`, its clock standing at `now`.
    pub fn with_config(now: Timestamp, config: QueueConfig) -> Self {
        Model {
            now,
            config,
            paused: false,
            next_id: 0,
            jobs: BTreeMap::new(),
            dedup: BTreeMap::new(),
            leases: Vec::new(),
            commits: BTreeMap::new(),
            producers: BTreeMap::new(),
        }
    }

    /// The model's current time.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The queue's config.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Whether leasing is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// How many jobs have been created (model ids `0..created()` have been assigned).
    pub fn created(&self) -> u64 {
        self.next_id
    }

    /// Every lease ever handed out, by token: the job each was on.
    pub fn leases(&self) -> &[ModelId] {
        &self.leases
    }

    /// The partition of a job with this key and this store id: none in an unordered queue, else
    /// `partition_of` (the store's id matters only to a key-less job).
    pub fn partition(&self, key: Option<&str>, store_id: JobId) -> Option<u32> {
        (self.config.ordering == Ordering::PerKey).then(|| partition_of(key, store_id, self.config.partitions))
    }

    /// A keyed job's partition in a `per_key` queue: FNV-1a-32 of the key's bytes modulo the
    /// count. `None` otherwise: a key-less job's partition is the store's id modulo the count,
    /// which only the caller knows ([`JobView::partition`]).
    fn key_partition(&self, job: &ModelJob) -> Option<u32> {
        let key = self.key_of(job)?;
        Some(fnv1a32(key.as_bytes()) % self.config.partitions)
    }

    /// The key `job` waits on: its ordering key in a `per_key` queue; none otherwise.
    fn key_of<'a>(&self, job: &'a ModelJob) -> Option<&'a str> {
        match self.config.ordering {
            Ordering::PerKey => job.ordering_key.as_deref(),
            Ordering::None => None,
        }
    }

    /// Whether `key` has a head: a job of the key that is waiting, leased, or dead holding it.
    fn has_head(&self, key: &str) -> bool {
        self.jobs.values().any(|job| {
            self.key_of(job) == Some(key)
                && matches!(job.phase, Phase::Waiting | Phase::Leased { .. } | Phase::Dead { holds_key: true })
        })
    }

    /// How a job dies now: holding its key when it is a head of a `per_key` queue with
    /// `dead_blocks_key` (every keyed job that can die, being leased, is its key's head).
    fn dead_phase(&self, job: &ModelJob) -> Phase {
        Phase::Dead { holds_key: self.key_of(job).is_some() && self.config.dead_blocks_key }
    }

    /// Moves on every key that has blocked jobs and no head (its head left the queue or died
    /// without holding it): the key's blocked job with the lowest id becomes the head, scheduled
    /// if its own `run_at` is still ahead, else ready with `run_at = now`.
    fn move_keys_on(&mut self) {
        let now = self.now;
        let keys: BTreeSet<String> = self
            .jobs
            .values()
            .filter(|job| job.phase == Phase::Blocked)
            .filter_map(|job| self.key_of(job).map(str::to_owned))
            .collect();
        for key in keys {
            if self.has_head(&key) {
                continue;
            }
            let lowest = self
                .jobs
                .iter()
                .find(|(_, job)| job.phase == Phase::Blocked && self.key_of(job) == Some(key.as_str()))
                .map(|(&id, _)| id);
            if let Some(job) = lowest.and_then(|id| self.jobs.get_mut(&id)) {
                job.phase = Phase::Waiting;
                job.run_at = job.run_at.max(now);
            }
        }
        self.check_keys();
    }

    /// Invariant 9 as the model holds it: at most one head per key; blocked jobs only behind a
    /// head, only with a key, only in a `per_key` queue.
    fn check_keys(&self) {
        let mut heads: BTreeMap<&str, u32> = BTreeMap::new();
        for job in self.jobs.values() {
            let Some(key) = self.key_of(job) else {
                assert!(job.phase != Phase::Blocked, "model bug: a blocked job without a key in a per_key queue");
                continue;
            };
            if matches!(job.phase, Phase::Waiting | Phase::Leased { .. } | Phase::Dead { holds_key: true }) {
                *heads.entry(key).or_default() += 1;
            }
        }
        for job in self.jobs.values() {
            if let Some(key) = self.key_of(job) {
                let count = heads.get(key).copied().unwrap_or(0);
                assert!(count <= 1, "model bug: key {key} has {count} heads");
                assert!(job.phase != Phase::Blocked || count == 1, "model bug: key {key} has blocked jobs and no head");
            }
        }
    }

    /// Moves the clock forward by `ms` and applies every transition that became due: expired
    /// leases record "lease expired" at their expiry, then go dead or ready (with `run_at` =
    /// the expiry); keys whose head died move on as of the new time. Scheduled jobs need
    /// nothing: readiness follows from `run_at`.
    pub fn advance(&mut self, ms: u64) {
        self.now = self.now.plus_ms(ms);
        let now = self.now;
        let ids: Vec<ModelId> = self.jobs.keys().copied().collect();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let Phase::Leased { expires_at, .. } = job.phase else { continue };
            if now < expires_at {
                continue;
            }
            let dead = self.dead_phase(job);
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            job.errors.push(AttemptError { attempt: job.attempt, error: EXPIRY_ERROR.into(), at: expires_at });
            if job.attempt >= job.max_attempts {
                job.phase = dead;
            } else {
                job.phase = Phase::Waiting;
                job.run_at = expires_at;
            }
        }
        self.move_keys_on();
    }

    /// Enqueues a batch; returns `(id, duplicate)` per job, in request order. In a `per_key`
    /// queue a keyed job whose key has a head (perhaps an earlier job of this batch) is blocked.
    pub fn enqueue(&mut self, batch: &[ModelNewJob]) -> Vec<(ModelId, bool)> {
        let now = self.now;
        let mut out = Vec::with_capacity(batch.len());
        for new in batch {
            if let Some(dedup_id) = &new.dedup_id {
                if let Some(&(original, expires_at)) = self.dedup.get(dedup_id) {
                    if now < expires_at {
                        out.push((original, true));
                        continue;
                    }
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            if let Some(dedup_id) = &new.dedup_id {
                self.dedup.insert(dedup_id.clone(), (id, now.plus_ms(self.config.dedup_window_ms)));
            }
            let run_at = match new.schedule {
                Schedule::Now => now,
                Schedule::Delay { delay_ms } => now.plus_ms(delay_ms),
                Schedule::At(at) => at.max(now),
            };
            let blocked = self.config.ordering == Ordering::PerKey
                && new.ordering_key.as_deref().is_some_and(|key| self.has_head(key));
            self.jobs.insert(
                id,
                ModelJob {
                    phase: if blocked { Phase::Blocked } else { Phase::Waiting },
                    attempt: 0,
                    max_attempts: new.max_attempts.unwrap_or(self.config.max_attempts),
                    priority: new.priority,
                    payload: new.payload.clone(),
                    headers: new.headers.clone(),
                    dedup_id: new.dedup_id.clone(),
                    ordering_key: new.ordering_key.clone(),
                    enqueued_at: now,
                    run_at,
                    errors: Vec::new(),
                },
            );
            out.push((id, false));
        }
        self.check_keys();
        out
    }

    /// Leases up to `max_jobs` ready jobs: priority desc, `run_at` asc, id asc. Each gets the
    /// next token (its index in [`Model::leases`]). Blocked jobs are not ready.
    pub fn lease(&mut self, max_jobs: u32, visibility_timeout_ms: Option<u64>) -> Vec<LeasedView> {
        if self.paused {
            return Vec::new();
        }
        let now = self.now;
        let mut ready: Vec<(i32, Timestamp, ModelId)> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.phase == Phase::Waiting && job.run_at <= now)
            .map(|(&id, job)| (job.priority, job.run_at, id))
            .collect();
        ready.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let expires_at = now.plus_ms(visibility_timeout_ms.unwrap_or(self.config.visibility_timeout_ms));
        let mut out = Vec::new();
        for (_, _, id) in ready.into_iter().take(max_jobs as usize) {
            let key_partition = self.jobs.get(&id).and_then(|job| self.key_partition(job));
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            let token = self.leases.len() as u64;
            self.leases.push(id);
            job.attempt += 1;
            job.phase = Phase::Leased { token, expires_at };
            out.push(LeasedView {
                id,
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                priority: job.priority,
                payload: String::from_utf8_lossy(&job.payload).into_owned(),
                headers: job.headers.clone(),
                dedup_id: job.dedup_id.clone(),
                ordering_key: job.ordering_key.clone(),
                partition: key_partition,
                enqueued_at: job.enqueued_at,
                run_at: job.run_at,
                lease_expires_at: expires_at,
            });
        }
        self.check_keys();
        out
    }

    /// The job under lease `token` (`None`: a token never handed out), or the rejection.
    fn leased_job(&mut self, id: ModelId, token: Option<u64>) -> ItemOutcome<&mut ModelJob> {
        let now = self.now;
        let job = self.jobs.get_mut(&id).ok_or(Rejection::JobNotFound)?;
        match (job.phase, token) {
            (Phase::Leased { token: current, expires_at }, Some(presented))
                if current == presented && now < expires_at =>
            {
                Ok(job)
            }
            _ => Err(Rejection::LeaseLost),
        }
    }

    /// How job `id` would die now (see [`Model::dead_phase`]); for a job that does not exist
    /// (then nothing dies), not holding a key.
    fn dead_phase_of(&self, id: ModelId) -> Phase {
        self.jobs.get(&id).map_or(Phase::Dead { holds_key: false }, |job| self.dead_phase(job))
    }

    /// Acks `(job, token)` items, each judged on the state the earlier ones left. A keyed head
    /// leaving the queue moves its key on.
    pub fn ack(&mut self, items: &[(ModelId, Option<u64>)]) -> Vec<ItemOutcome<()>> {
        let out = items
            .iter()
            .map(|&(id, token)| {
                self.leased_job(id, token)?;
                self.jobs.remove(&id);
                Ok(())
            })
            .collect();
        self.move_keys_on();
        out
    }

    /// Nacks items, each judged on the state the earlier ones left. A head nacked past its
    /// attempts dies (moving its key on unless it holds it); otherwise it stays the head.
    pub fn nack(&mut self, items: &[ModelNack]) -> Vec<ItemOutcome<NackOutcome>> {
        let now = self.now;
        let backoff = self.config.backoff.clone();
        let out = items
            .iter()
            .map(|ModelNack { id, token, delay_ms, error }| {
                let dead = self.dead_phase_of(*id);
                let job = self.leased_job(*id, *token)?;
                let error = error.clone().unwrap_or_else(|| NACK_ERROR_DEFAULT.into());
                job.errors.push(AttemptError { attempt: job.attempt, error, at: now });
                if job.attempt >= job.max_attempts {
                    job.phase = dead;
                    return Ok(NackOutcome::Dead);
                }
                let delay = delay_ms.unwrap_or_else(|| backoff.base_delay_ms(job.attempt));
                job.phase = Phase::Waiting;
                job.run_at = now.plus_ms(delay);
                Ok(NackOutcome::Retrying { run_at: job.run_at })
            })
            .collect();
        self.move_keys_on();
        out
    }

    /// Extends `(job, token, visibility_timeout_ms)` items; returns each new expiry.
    pub fn extend(&mut self, items: &[(ModelId, Option<u64>, u64)]) -> Vec<ItemOutcome<Timestamp>> {
        let now = self.now;
        items
            .iter()
            .map(|&(id, token, visibility_timeout_ms)| {
                let job = self.leased_job(id, token)?;
                let Phase::Leased { token, .. } = job.phase else { return Err(Rejection::LeaseLost) };
                let expires_at = now.plus_ms(visibility_timeout_ms);
                job.phase = Phase::Leased { token, expires_at };
                Ok(expires_at)
            })
            .collect()
    }

    /// Fails `(job, token, error)` items: dead now, whatever the attempts left (moving its key
    /// on unless it holds it).
    pub fn fail(&mut self, items: &[(ModelId, Option<u64>, String)]) -> Vec<ItemOutcome<()>> {
        let now = self.now;
        let out = items
            .iter()
            .map(|(id, token, error)| {
                let dead = self.dead_phase_of(*id);
                let job = self.leased_job(*id, *token)?;
                job.errors.push(AttemptError { attempt: job.attempt, error: error.clone(), at: now });
                job.phase = dead;
                Ok(())
            })
            .collect();
        self.move_keys_on();
        out
    }

    /// Releases `(job, token, delay_ms)` items: the lease ends without counting as an attempt
    /// (`attempt - 1`, no error), the job waits until `now + delay`, still its key's head.
    pub fn release(&mut self, items: &[(ModelId, Option<u64>, Option<u64>)]) -> Vec<ItemOutcome<()>> {
        let now = self.now;
        items
            .iter()
            .map(|(id, token, delay_ms)| {
                let job = self.leased_job(*id, *token)?;
                job.attempt = job.attempt.saturating_sub(1);
                job.phase = Phase::Waiting;
                job.run_at = now.plus_ms(delay_ms.unwrap_or(0));
                Ok(())
            })
            .collect()
    }

    /// Makes dead jobs run again (`attempt = 0`, `run_at = now`, errors kept): the named ones
    /// (others skipped) or all, oldest id first, at most `limit`. Returns how many.
    ///
    /// In a `per_key` queue a dead head holding its key becomes ready, still the head; any other
    /// keyed job becomes the head if its key has none, else it is blocked behind the head (and,
    /// with the lowest id, runs next).
    pub fn redrive(&mut self, ids: Option<&[ModelId]>, limit: Option<u64>) -> u64 {
        let now = self.now;
        let chosen: Vec<ModelId> = self
            .jobs
            .iter()
            .filter(|(id, job)| matches!(job.phase, Phase::Dead { .. }) && ids.is_none_or(|named| named.contains(id)))
            .map(|(&id, _)| id)
            .take(limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)))
            .collect();
        for id in &chosen {
            let Some(job) = self.jobs.get(id) else { continue };
            let holds_key = job.phase == Phase::Dead { holds_key: true };
            let blocked = !holds_key && self.key_of(job).is_some_and(|key| self.has_head(key));
            if let Some(job) = self.jobs.get_mut(id) {
                job.phase = if blocked { Phase::Blocked } else { Phase::Waiting };
                job.attempt = 0;
                job.run_at = now;
            }
        }
        self.check_keys();
        chosen.len() as u64
    }

    /// Deletes every dead job; returns how many. Keys whose dead head held them move on. Dedup
    /// entries stay until their window ends.
    pub fn purge(&mut self) -> u64 {
        let before = self.jobs.len();
        self.jobs.retain(|_, job| !matches!(job.phase, Phase::Dead { .. }));
        self.move_keys_on();
        (before - self.jobs.len()) as u64
    }

    /// Pauses leasing.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resumes leasing.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// `queue_upsert` on the existing queue: the config with `patch` applied, or the error. An
    /// invalid result is `InvalidRequest`; changing the ordering or the partition count while
    /// the queue holds any job (dead ones included) is `QueueNotEmpty`. Nothing changes on an error.
    /// A new `dead_blocks_key` applies to heads that die from now on.
    pub fn configure(&mut self, patch: &QueueConfigPatch) -> onceq_core::Result<QueueConfig> {
        let next = self.config.patched(patch)?;
        if self.config.reorders(&next) && !self.jobs.is_empty() {
            return Err(Error::QueueNotEmpty(format!("the queue holds {} jobs", self.jobs.len())));
        }
        self.config = next;
        Ok(self.config.clone())
    }

    /// Deletes the queue with its jobs and dedup entries, then creates it again, unpaused, with
    /// `config`. Model ids and tokens keep counting: the store never reuses an id.
    pub fn delete_and_recreate(&mut self, config: QueueConfig) {
        self.jobs.clear();
        self.dedup.clear();
        self.paused = false;
        self.config = config;
    }

    /// One job as `job_get` shows it; `None` when it does not exist (acked, purged, never
    /// created). A key-less job's partition is left to the caller ([`JobView::partition`]).
    pub fn job(&self, id: ModelId) -> Option<JobView> {
        let job = self.jobs.get(&id)?;
        let (state, lease_expires_at) = match job.phase {
            Phase::Blocked => (JobState::Blocked, None),
            Phase::Waiting if job.run_at <= self.now => (JobState::Ready, None),
            Phase::Waiting => (JobState::Scheduled, None),
            Phase::Leased { expires_at, .. } => (JobState::Leased, Some(expires_at)),
            Phase::Dead { .. } => (JobState::Dead, None),
        };
        Some(JobView {
            id,
            state,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            payload: String::from_utf8_lossy(&job.payload).into_owned(),
            headers: job.headers.clone(),
            dedup_id: job.dedup_id.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: self.key_partition(job),
            enqueued_at: job.enqueued_at,
            run_at: (state != JobState::Dead).then_some(job.run_at),
            lease_expires_at,
            errors: job.errors.clone(),
        })
    }

    /// One page of dead jobs in id order after `after` (exclusive), at most `limit`; `next` is
    /// the last id on the page when more follow.
    pub fn dead_list(&self, after: Option<ModelId>, limit: u32) -> (Vec<JobView>, Option<ModelId>) {
        let dead: Vec<JobView> = self
            .jobs
            .keys()
            .filter(|&&id| after.is_none_or(|a| id > a))
            .filter_map(|&id| self.job(id))
            .filter(|view| view.state == JobState::Dead)
            .collect();
        let limit = limit as usize;
        let more = dead.len() > limit;
        let page: Vec<JobView> = dead.into_iter().take(limit).collect();
        let next = if more { page.last().map(|view| view.id) } else { None };
        (page, next)
    }

    /// Whether `token` is job `id`'s live lease now.
    fn lease_is_live(&self, id: ModelId, token: Option<u64>) -> bool {
        self.jobs.get(&id).is_some_and(|job| {
            matches!(job.phase, Phase::Leased { token: current, expires_at }
                if Some(current) == token && self.now < expires_at)
        })
    }

    /// Applies `commit`, all of it or nothing (docs/api.md "Commits"), judged in this order:
    /// 1. validation (something to do; no job settled twice; no empty batch; a checkpoint only
    ///    with a producer; no epoch 0) → `Invalid`;
    /// 2. a commit id remembered (`now < expires_at`): the same content returns the first
    ///    outcome, `replayed`; other content is a `Conflict`;
    /// 3. the fence: a newer epoch registered → `Fenced`; an epoch never issued → `Invalid`;
    /// 4. every lease live, else `LeasesLost` listing every stale one, ascending;
    /// 5. then the settles in the order ack, nack, fail, release (a head acked or dead moves its
    ///    key on), the enqueue, the record of the commit id for the longest dedup window of
    ///    the queues it touched and at least `COMMIT_REPLAY_MS_MIN`, and the checkpoint.
    pub fn commit(&mut self, commit: &ModelCommit) -> Result<ModelCommitOutcome, CommitRefusal> {
        let leases = commit.leases();
        if leases.is_empty() && commit.enqueue.is_none() && commit.checkpoint.is_none() {
            return Err(CommitRefusal::Invalid("the commit is empty"));
        }
        let mut seen = BTreeSet::new();
        if !leases.iter().all(|(id, _)| seen.insert(*id)) {
            return Err(CommitRefusal::Invalid("a job is settled twice"));
        }
        if commit.enqueue.as_ref().is_some_and(Vec::is_empty) {
            return Err(CommitRefusal::Invalid("an enqueue of no jobs"));
        }
        if commit.checkpoint.is_some() && commit.producer.is_none() {
            return Err(CommitRefusal::Invalid("a checkpoint without a producer"));
        }
        if commit.producer.as_ref().is_some_and(|(_, epoch)| *epoch == 0) {
            return Err(CommitRefusal::Invalid("producer epoch 0"));
        }
        if let Some(record) = commit.commit_id.as_ref().and_then(|id| self.commits.get(id)) {
            if self.now < record.expires_at {
                if record.content != commit.content() {
                    return Err(CommitRefusal::Conflict);
                }
                return Ok(ModelCommitOutcome { replayed: true, ..record.outcome.clone() });
            }
        }
        if let Some((producer, epoch)) = &commit.producer {
            match self.producers.get(producer).map(|(current, _)| *current) {
                Some(current) if current > *epoch => return Err(CommitRefusal::Fenced),
                Some(current) if current == *epoch => {}
                _ => return Err(CommitRefusal::Invalid("a producer epoch never issued")),
            }
        }
        let mut stale: Vec<ModelId> =
            leases.iter().filter(|(id, token)| !self.lease_is_live(*id, *token)).map(|(id, _)| *id).collect();
        if !stale.is_empty() {
            stale.sort_unstable();
            return Err(CommitRefusal::LeasesLost(stale));
        }

        // Checked: apply. Every item is live and names a job of its own, so none is refused.
        let applied = [
            self.ack(&commit.ack).iter().all(Result::is_ok),
            self.nack(&commit.nack).iter().all(Result::is_ok),
            self.fail(&commit.fail).iter().all(Result::is_ok),
            self.release(&commit.release).iter().all(Result::is_ok),
        ];
        assert!(applied.iter().all(|ok| *ok), "model bug: a commit's item was refused after its check");
        let enqueued = commit.enqueue.as_ref().map(|batch| self.enqueue(batch));
        let outcome = ModelCommitOutcome { enqueued, replayed: false };
        if let Some(id) = &commit.commit_id {
            // The queues it touched: the model's, when it settled or enqueued anything.
            let touched = !leases.is_empty() || commit.enqueue.is_some();
            let window =
                if touched { COMMIT_REPLAY_MS_MIN.max(self.config.dedup_window_ms) } else { COMMIT_REPLAY_MS_MIN };
            let record = CommitRecord {
                content: commit.content(),
                outcome: outcome.clone(),
                expires_at: self.now.plus_ms(window),
            };
            self.commits.insert(id.clone(), record);
        }
        if let (Some((producer, _)), Some(checkpoint)) = (&commit.producer, &commit.checkpoint) {
            if let Some(entry) = self.producers.get_mut(producer) {
                entry.1 = Some(checkpoint.clone());
            }
        }
        Ok(outcome)
    }

    /// When commit id `id` is forgotten, if it is remembered at all (perhaps already past).
    pub fn commit_expiry(&self, id: &str) -> Option<Timestamp> {
        self.commits.get(id).map(|record| record.expires_at)
    }

    /// Every commit id ever remembered (expired ones included), by id.
    pub fn commit_ids(&self) -> Vec<String> {
        self.commits.keys().cloned().collect()
    }

    /// Registers `producer` again: a new epoch (1 the first time), which fences every older one;
    /// returns it with the checkpoint of its last commit that carried one.
    pub fn producer_register(&mut self, producer: &str) -> (u64, Option<serde_json::Value>) {
        let entry = self.producers.entry(producer.to_owned()).or_insert((0, None));
        entry.0 += 1;
        entry.clone()
    }

    /// A producer's epoch (0 when it never registered) and checkpoint.
    pub fn producer_get(&self, producer: &str) -> (u64, Option<serde_json::Value>) {
        self.producers.get(producer).cloned().unwrap_or((0, None))
    }

    /// The queue's stats as of the model's time.
    pub fn stats(&self) -> QueueStats {
        let mut stats = QueueStats::default();
        let mut oldest_ready: Option<Timestamp> = None;
        for id in self.jobs.keys() {
            let Some(view) = self.job(*id) else { continue };
            match view.state {
                JobState::Ready => {
                    stats.ready += 1;
                    if let Some(run_at) = view.run_at {
                        oldest_ready = Some(oldest_ready.map_or(run_at, |oldest| oldest.min(run_at)));
                    }
                }
                JobState::Scheduled => stats.scheduled += 1,
                JobState::Leased => stats.leased += 1,
                JobState::Dead => stats.dead += 1,
                JobState::Blocked => stats.blocked += 1,
                JobState::Cancelled => stats.cancelled += 1,
            }
        }
        stats.oldest_ready_age_ms = oldest_ready.map(|run_at| self.now.ms_since(run_at));
        stats
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and their strategy
// ---------------------------------------------------------------------------------------------

/// When a generated job becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSchedule {
    /// `Schedule::Now`.
    Now,
    /// `Schedule::Delay`.
    Delay(u64),
    /// `Schedule::At(now + offset)`: a negative offset is a time in the past.
    AtOffset(i64),
}

/// One generated job of an enqueue op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Distinguishes payloads (and, when even, adds a header).
    pub tag: u16,
    /// Priority.
    pub priority: i32,
    /// Schedule.
    pub schedule: SpecSchedule,
    /// Its own max attempts.
    pub max_attempts: Option<u32>,
    /// Dedup id `d<n>` from a small set, so that duplicates happen.
    pub dedup: Option<u8>,
    /// Ordering key: [`MODEL_KEYS`]`[n % 3]`.
    pub key: Option<u8>,
}

impl JobSpec {
    /// The job, judged at `now` (for `AtOffset`).
    pub fn to_model(&self, now: Timestamp) -> ModelNewJob {
        let schedule = match self.schedule {
            SpecSchedule::Now => Schedule::Now,
            SpecSchedule::Delay(delay_ms) => Schedule::Delay { delay_ms },
            SpecSchedule::AtOffset(offset) => Schedule::At(Timestamp::from_millis(now.as_millis() + offset)),
        };
        let mut headers = Headers::new();
        if self.tag.is_multiple_of(2) {
            headers.insert("tag".into(), self.tag.to_string());
        }
        ModelNewJob {
            payload: format!("{{\"tag\":{}}}", self.tag).into_bytes(),
            headers,
            priority: self.priority,
            schedule,
            max_attempts: self.max_attempts,
            dedup_id: self.dedup.map(|n| format!("d{n}")),
            ordering_key: self.key.map(|n| MODEL_KEYS[usize::from(n) % MODEL_KEYS.len()].to_owned()),
        }
    }
}

/// A job named by an op.
#[derive(Debug, Clone)]
pub enum JobPick {
    /// One of the jobs created so far (acked and purged ones included), by index.
    Known(Index),
    /// An id the store never assigned.
    Missing(u8),
}

/// The lease a settle item presents.
#[derive(Debug, Clone)]
pub enum Target {
    /// The k-th lease ever handed out (mostly stale ones: expired, settled, superseded).
    Lease(Index),
    /// The n-th most recent lease handed out (0 is the latest; mostly live ones).
    Recent(u8),
    /// A job with a token that was never handed out.
    Forged(JobPick),
    /// The latest lease of the n-th most recently leased job (0 is the latest; mostly live
    /// ones, each of another job), or never-created job n when fewer jobs were leased.
    RecentJob(u8),
}

/// One step of a state-machine test.
#[derive(Debug, Clone)]
pub enum Op {
    /// `job_enqueue` of a batch.
    Enqueue(Vec<JobSpec>),
    /// `job_lease` without waiting.
    Lease {
        /// Most jobs.
        max_jobs: u32,
        /// Lease length; `None` uses the queue's.
        visibility_timeout_ms: Option<u64>,
    },
    /// `job_ack`.
    Ack(Vec<Target>),
    /// `job_nack` with `(delay_ms, error)` per item.
    Nack(Vec<(Target, Option<u64>, Option<String>)>),
    /// `job_extend` with a visibility timeout per item.
    Extend(Vec<(Target, u64)>),
    /// `job_fail` with an error per item.
    Fail(Vec<(Target, String)>),
    /// `job_release` with a delay per item.
    Release(Vec<(Target, Option<u64>)>),
    /// Moves the clock forward.
    Advance(u64),
    /// `dead_redrive`: the named jobs (`None`: all), at most `limit`.
    Redrive {
        /// Named jobs.
        ids: Option<Vec<JobPick>>,
        /// Most jobs.
        limit: Option<u64>,
    },
    /// `dead_purge`.
    Purge,
    /// `dead_list` of one page.
    DeadList {
        /// Start after this job.
        after: Option<JobPick>,
        /// Page size.
        limit: u32,
    },
    /// `queue_pause`.
    Pause,
    /// `queue_resume`.
    Resume,
    /// `queue_delete`, then `queue_upsert` with the case's config again.
    DeleteQueue,
    /// `queue_upsert` changing one field (ordered cases only).
    Configure(ConfigChange),
    /// `commit`: settles, jobs for the model's queue, a fence, a checkpoint.
    Commit(CommitSpec),
    /// One of the commits sent so far, by index, sent again exactly as it was: a retry after a
    /// lost reply (replayed under a remembered id; refused once its leases are gone).
    CommitAgain(Index),
    /// `producer_register` of [`MODEL_PRODUCERS`]`[n % 2]`.
    ProducerRegister(u8),
    /// Moves the clock to the end of a remembered commit id's replay window plus `offset_ms`
    /// (-1, 0 or 1); no move when that time is past (or no id is remembered).
    AdvanceToCommitEnd {
        /// Which remembered id, among all in id order.
        pick: Index,
        /// From the window's end.
        offset_ms: i64,
    },
}

/// The producers commits and registrations name: two, so that one is fenced while the other
/// goes on.
pub const MODEL_PRODUCERS: [&str; 2] = ["p0", "p1"];

/// How a commit settles one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleSpec {
    /// Ack.
    Ack,
    /// Nack.
    Nack {
        /// Run again after this delay; `None` lets the backoff decide.
        delay_ms: Option<u64>,
        /// Why.
        error: Option<String>,
    },
    /// Fail, with the error.
    Fail(String),
    /// Release, with the delay.
    Release(Option<u64>),
}

/// The epoch a commit's fence presents, relative to its producer's current one when the commit
/// is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochPick {
    /// The current epoch (0, never issued, when the producer never registered).
    Current,
    /// That many epochs older (down to 0).
    Older(u8),
    /// One past the current: never issued.
    Ahead,
}

/// One generated commit.
#[derive(Debug, Clone)]
pub struct CommitSpec {
    /// Commit id `c<n>` from a small set, so that ids are reused, same or not.
    pub commit_id: Option<u8>,
    /// Producer [`MODEL_PRODUCERS`]`[n % 2]` and the epoch presented.
    pub producer: Option<(u8, EpochPick)>,
    /// Leases to settle, in order (a job named twice makes the commit invalid).
    pub settles: Vec<(Target, SettleSpec)>,
    /// Jobs for the model's queue (`Some` of none is invalid).
    pub enqueue: Option<Vec<JobSpec>>,
    /// Checkpoint `{"offset": n}`.
    pub checkpoint: Option<u8>,
}

/// A config change an ordered case makes mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    /// Sets `dead_blocks_key`: it applies to heads that die from then on.
    DeadBlocksKey(bool),
    /// Sets the partition count: refused while the queue holds any job.
    Partitions(u32),
    /// Sets the ordering: refused while the queue holds any job.
    Ordering(Ordering),
    /// Sets the dedup window: it applies to dedup ids first enqueued from then on, and a
    /// window longer than `COMMIT_REPLAY_MS_MIN` makes commits on the queue remembered longer.
    DedupWindow(u64),
}

impl ConfigChange {
    /// The patch that makes the change.
    pub fn patch(self) -> QueueConfigPatch {
        match self {
            ConfigChange::DeadBlocksKey(v) => {
                QueueConfigPatch { dead_blocks_key: Some(v), ..QueueConfigPatch::default() }
            }
            ConfigChange::Partitions(v) => QueueConfigPatch { partitions: Some(v), ..QueueConfigPatch::default() },
            ConfigChange::Ordering(v) => QueueConfigPatch { ordering: Some(v), ..QueueConfigPatch::default() },
            ConfigChange::DedupWindow(v) => {
                QueueConfigPatch { dedup_window_ms: Some(v), ..QueueConfigPatch::default() }
            }
        }
    }
}

/// Generated jobs. For an unordered case one job in four has an ordering key; for an ordered
/// case three in four do, and more run out of attempts at once (`max_attempts` 1), so that heads
/// die, by nack too, while jobs wait behind them.
fn job_spec(ordered: bool) -> impl Strategy<Value = JobSpec> {
    let (keyed, last_attempt) = if ordered { (3, 3) } else { (1, 1) };
    let schedule = prop_oneof![
        4 => Just(SpecSchedule::Now),
        1 => Just(SpecSchedule::Delay(0)),
        2 => (1u64..3_000).prop_map(SpecSchedule::Delay),
        1 => (-2_000i64..2_000).prop_map(SpecSchedule::AtOffset),
    ];
    (
        any::<u16>(),
        prop_oneof![3 => Just(0), 1 => -2i32..=2],
        schedule,
        prop_oneof![4 => Just(None), last_attempt => Just(Some(1)), 1 => (1u32..=4).prop_map(Some)],
        prop_oneof![2 => Just(None), 1 => (0u8..4).prop_map(Some)],
        prop_oneof![4 - keyed => Just(None), keyed => (0u8..3).prop_map(Some)],
    )
        .prop_map(|(tag, priority, schedule, max_attempts, dedup, key)| JobSpec {
            tag,
            priority,
            schedule,
            max_attempts,
            dedup,
            key,
        })
}

fn job_pick() -> impl Strategy<Value = JobPick> {
    prop_oneof![6 => any::<Index>().prop_map(JobPick::Known), 1 => (0u8..3).prop_map(JobPick::Missing)]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => any::<Index>().prop_map(Target::Lease),
        8 => (0u8..3).prop_map(Target::Recent),
        1 => job_pick().prop_map(Target::Forged),
    ]
}

/// Settle batches: mostly one item, sometimes two or three (possibly naming one lease twice).
fn batch<T: std::fmt::Debug + 'static>(item: impl Strategy<Value = T> + 'static) -> impl Strategy<Value = Vec<T>> {
    let item = item.boxed();
    prop_oneof![4 => prop::collection::vec(item.clone(), 1..=1), 1 => prop::collection::vec(item, 2..=3)]
}

/// Generated commits: mostly one live lease settled (an ack mostly) with jobs for the queue,
/// often under a reused commit id, sometimes fenced by a producer with a checkpoint; now and
/// then an invalid one (a job settled twice, an empty batch, a checkpoint without a producer).
fn commit_spec(ordered: bool) -> impl Strategy<Value = CommitSpec> {
    let settle = prop_oneof![
        5 => Just(SettleSpec::Ack),
        1 => (prop_oneof![Just(None), Just(Some(0u64)), (1u64..=600).prop_map(Some)], prop_oneof![Just(None), (0u8..3).prop_map(|n| Some(format!("boom {n}")))])
            .prop_map(|(delay_ms, error)| SettleSpec::Nack { delay_ms, error }),
        1 => (0u8..3).prop_map(|n| SettleSpec::Fail(format!("fatal {n}"))),
        1 => prop_oneof![Just(None), (1u64..=600).prop_map(Some)].prop_map(SettleSpec::Release),
    ];
    // Settles name the latest leases of the latest leased jobs mostly (live ones, a job each:
    // a job named twice makes the whole commit invalid), and now and then any lease or a
    // forged one.
    let one = prop_oneof![
        8 => (0u8..3).prop_map(Target::RecentJob),
        2 => any::<Index>().prop_map(Target::Lease),
        1 => job_pick().prop_map(Target::Forged),
    ];
    let several = (prop::sample::subsequence(vec![0u8, 1, 2], 2..=3), prop::collection::vec(settle.clone(), 3))
        .prop_map(|(recent, settles)| recent.into_iter().map(Target::RecentJob).zip(settles).collect());
    let settles = prop_oneof![
        3 => Just(Vec::new()),
        5 => prop::collection::vec((one, settle), 1..=1),
        2 => several,
        1 => prop::collection::vec((target(), Just(SettleSpec::Ack)), 2..=2),
    ];
    let enqueue = prop_oneof![
        3 => Just(None),
        10 => prop::collection::vec(job_spec(ordered), 1..=2).prop_map(Some),
        1 => Just(Some(Vec::new())),
    ];
    let epoch = prop_oneof![8 => Just(EpochPick::Current), 3 => (1u8..=2).prop_map(EpochPick::Older), 1 => Just(EpochPick::Ahead)];
    // Producer p0 mostly, so that its epochs climb and fence its older commits.
    let producer =
        prop_oneof![2 => Just(None), 1 => (prop_oneof![4 => Just(0u8), 1 => Just(1u8)], epoch).prop_map(Some)];
    (
        prop_oneof![1 => Just(None), 2 => (0u8..3).prop_map(Some)],
        producer,
        settles,
        enqueue,
        prop_oneof![Just(None), (0u8..4).prop_map(Some)],
        prop_oneof![12 => Just(false), 1 => Just(true)],
    )
        .prop_map(|(commit_id, producer, settles, enqueue, checkpoint, orphan)| CommitSpec {
            commit_id,
            // A checkpoint goes with a producer, but now and then without one (invalid).
            checkpoint: if producer.is_some() || orphan { checkpoint } else { None },
            producer,
            settles,
            enqueue,
        })
}

/// The commit ops of every case, by weight: commits, retries of them, producer registrations,
/// and clock moves to the end of a commit id's replay window.
fn commit_ops(ordered: bool) -> Vec<(u32, BoxedStrategy<Op>)> {
    vec![
        (4, commit_spec(ordered).prop_map(Op::Commit).boxed()),
        (2, any::<Index>().prop_map(Op::CommitAgain).boxed()),
        (3, prop_oneof![4 => Just(0u8), 1 => Just(1u8)].prop_map(Op::ProducerRegister).boxed()),
        (
            1,
            (any::<Index>(), prop::sample::select(vec![-1i64, 0, 1]))
                .prop_map(|(pick, offset_ms)| Op::AdvanceToCommitEnd { pick, offset_ms })
                .boxed(),
        ),
    ]
}

/// Clock advances of every size that matters to [`model_config`]: none, a little, right at and
/// around the visibility timeout, past backoff delays, past the dedup window.
fn advance_ms() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        4 => 1u64..=300,
        2 => prop::sample::select(vec![199u64, 200, 400, 800, 999, 1_000, 1_001]),
        2 => 300u64..=3_000,
        1 => prop::sample::select(vec![4_999u64, 5_000, 5_001]),
        1 => 3_000u64..=8_000,
    ]
}

/// The ops of every case, by weight. Ordered cases ack and purge more, so that keys move on.
fn weighted_ops(ordered: bool) -> Vec<(u32, BoxedStrategy<Op>)> {
    let jobs = job_spec(ordered);
    let (ack, purge) = if ordered { (5, 2) } else { (3, 1) };
    let error = || prop_oneof![Just(None), (0u8..3).prop_map(|n| Some(format!("boom {n}")))];
    vec![
        (4, prop::collection::vec(jobs, 1..=3).prop_map(Op::Enqueue).boxed()),
        (
            5,
            (1u32..=4, prop_oneof![3 => Just(None), 1 => prop::sample::select(vec![1u64, 300, 1_000, 3_000]).prop_map(Some)])
                .prop_map(|(max_jobs, visibility_timeout_ms)| Op::Lease { max_jobs, visibility_timeout_ms })
                .boxed(),
        ),
        (ack, batch(target()).prop_map(Op::Ack).boxed()),
        (
            4,
            batch((
                target(),
                prop_oneof![2 => Just(None), 1 => Just(Some(0u64)), 1 => (1u64..=600).prop_map(Some), 1 => Just(Some(5_000u64))],
                error(),
            ))
            .prop_map(Op::Nack)
            .boxed(),
        ),
        (2, batch((target(), prop::sample::select(vec![1u64, 300, 2_000]))).prop_map(Op::Extend).boxed()),
        (2, batch((target(), (0u8..3).prop_map(|n| format!("fatal {n}")))).prop_map(Op::Fail).boxed()),
        (
            2,
            batch((target(), prop_oneof![Just(None), Just(Some(0u64)), (1u64..=600).prop_map(Some)]))
                .prop_map(Op::Release)
                .boxed(),
        ),
        (5, advance_ms().prop_map(Op::Advance).boxed()),
        (
            2,
            (
                prop_oneof![2 => Just(None), 1 => prop::collection::vec(job_pick(), 0..=3).prop_map(Some)],
                prop_oneof![Just(None), (1u64..=3).prop_map(Some)],
            )
                .prop_map(|(ids, limit)| Op::Redrive { ids, limit })
                .boxed(),
        ),
        (purge, Just(Op::Purge).boxed()),
        (2, (prop::option::of(job_pick()), 1u32..=3).prop_map(|(after, limit)| Op::DeadList { after, limit }).boxed()),
        (1, prop_oneof![Just(Op::Pause), Just(Op::Resume)].boxed()),
        (1, Just(Op::DeleteQueue).boxed()),
    ]
    .into_iter()
    .chain(commit_ops(ordered))
    .collect()
}

/// One op of an unordered case. One job in four carries an ordering key, which the queue keeps
/// and shows and which orders nothing.
pub fn op() -> impl Strategy<Value = Op> {
    proptest::strategy::Union::new_weighted(weighted_ops(false))
}

/// Sequences of 1 to 69 ops on a queue with [`model_config`].
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..70)
}

/// One op of an ordered case: three jobs in four carry one of the [`MODEL_KEYS`], and the
/// queue's config changes now and then (`dead_blocks_key` mostly; the ordering and the partition
/// count, refused unless the queue is empty).
pub fn ordered_op() -> impl Strategy<Value = Op> {
    let mut weighted = weighted_ops(true);
    let change = prop_oneof![
        4 => any::<bool>().prop_map(ConfigChange::DeadBlocksKey),
        1 => prop::sample::select(vec![1u32, 3, 4]).prop_map(ConfigChange::Partitions),
        1 => prop::sample::select(vec![Ordering::None, Ordering::PerKey]).prop_map(ConfigChange::Ordering),
        1 => prop::sample::select(vec![5_000u64, COMMIT_REPLAY_MS_MIN + 60_000]).prop_map(ConfigChange::DedupWindow),
    ];
    weighted.push((2, change.prop_map(Op::Configure).boxed()));
    proptest::strategy::Union::new_weighted(weighted)
}

/// An ordered case: a `per_key` config ([`ordered_config`] with 1 or 4 partitions and either
/// `dead_blocks_key`) and 1 to 79 ops on it (longer than unordered cases: a key's stories, such
/// as a head dying, holding its key, and the flag being cleared behind it, take more steps).
pub fn ordered_case() -> impl Strategy<Value = (QueueConfig, Vec<Op>)> {
    (prop::sample::select(vec![1u32, 4]), any::<bool>(), prop::collection::vec(ordered_op(), 1..80))
        .prop_map(|(partitions, dead_blocks_key, ops)| (ordered_config(partitions, dead_blocks_key), ops))
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// Real ids for model ids that name no job: far above anything a test store assigns, and
/// within `i64` so that SQL backends can take them.
const MISSING_ID_BASE: u64 = 1 << 50;

/// A patch that sets every field of `config`.
fn model_patch(config: &QueueConfig) -> QueueConfigPatch {
    let config = config.clone();
    QueueConfigPatch {
        delivery: Some(config.delivery),
        visibility_timeout_ms: Some(config.visibility_timeout_ms),
        max_attempts: Some(config.max_attempts),
        backoff: Some(config.backoff.into()),
        dedup_window_ms: Some(config.dedup_window_ms),
        ordering: Some(config.ordering),
        partitions: Some(config.partitions),
        dead_blocks_key: Some(config.dead_blocks_key),
        rate_limit: Some(config.rate_limit),
        rate_limit_by: Some(config.rate_limit_by),
        max_in_flight_per_key: Some(config.max_in_flight_per_key),
        max_in_flight: Some(config.max_in_flight),
        max_depth: Some(config.max_depth),
        durability: Some(config.durability),
    }
}

/// The model, the store's ids and tokens, and how each maps to the other.
struct Harness {
    model: Model,
    queue: QueueName,
    /// The case's config: the queue is created, and created again after a delete, with it.
    config: QueueConfig,
    /// Real id of each created model job, by model id.
    real_ids: Vec<JobId>,
    /// Real token of each lease ever handed out, by model token.
    real_tokens: Vec<LeaseToken>,
    /// The model's time when the run began: the trace shows times relative to it.
    start: Timestamp,
    /// Each op applied so far, resolved into model terms with the model's outcome, so that a
    /// failure reads without decoding proptest's `Index` values.
    trace: Vec<String>,
    /// Every commit sent so far, in both worlds, for [`Op::CommitAgain`].
    sent: Vec<(ModelCommit, Commit)>,
}

/// A settle item resolved to both worlds.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    model_id: ModelId,
    model_token: Option<u64>,
    real_id: JobId,
    real_token: LeaseToken,
}

/// A token the store never handed out (its tokens are 128 random bits).
const FORGED_TOKEN: LeaseToken = LeaseToken::from_bytes([0x5a; 16]);

impl Harness {
    /// `t+<ms since the start>`.
    fn at(&self, t: Timestamp) -> String {
        format!("t+{}", t.ms_since(self.start))
    }

    fn job_name(&self, id: ModelId) -> String {
        if id < self.model.created() {
            format!("job {id}")
        } else {
            format!("never-created job {}", self.real_id(id))
        }
    }

    fn item_name(&self, item: &Resolved) -> String {
        match item.model_token {
            Some(k) => format!("{} lease #{k}", self.job_name(item.model_id)),
            None => format!("{} forged token", self.job_name(item.model_id)),
        }
    }

    fn items_name(&self, items: &[Resolved]) -> String {
        items.iter().map(|i| self.item_name(i)).collect::<Vec<_>>().join(", ")
    }

    fn real_id(&self, id: ModelId) -> JobId {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.real_ids.get(i).copied())
            .unwrap_or_else(|| JobId::new(MISSING_ID_BASE + id.saturating_sub(u64::MAX / 2)))
    }

    fn model_id(&self, real: JobId) -> Result<ModelId, String> {
        // Real ids grow with model ids, so the map is sorted.
        self.real_ids
            .binary_search(&real)
            .map(|i| i as ModelId)
            .map_err(|_| format!("the store returned job id {real}, which it never assigned in this run"))
    }

    /// The partition the model gives a job, or for a key-less job, which the model cannot
    /// know, the store's id modulo the count (none in an unordered queue).
    fn expected_partition(&self, id: ModelId, key: Option<&str>, model_partition: Option<u32>) -> Option<u32> {
        match key {
            Some(_) => model_partition,
            None => self.model.partition(None, self.real_id(id)),
        }
    }

    /// What the model says a job looks like, a key-less job's partition filled in.
    fn expected_job(&self, view: Option<JobView>) -> Option<JobView> {
        view.map(|view| JobView {
            partition: self.expected_partition(view.id, view.ordering_key.as_deref(), view.partition),
            ..view
        })
    }

    /// Model ids of never-created jobs: `u64::MAX / 2 + n`, mapped to `MISSING_ID_BASE + n`.
    fn pick(&self, pick: &JobPick) -> ModelId {
        match pick {
            JobPick::Known(index) if self.model.created() > 0 => index.index(self.model.created() as usize) as ModelId,
            JobPick::Known(_) => u64::MAX / 2,
            JobPick::Missing(n) => u64::MAX / 2 + u64::from(*n),
        }
    }

    fn resolve(&self, target: &Target) -> Resolved {
        let leases = self.model.leases();
        let token = match target {
            Target::Lease(index) if !leases.is_empty() => Some(index.index(leases.len())),
            Target::Recent(n) if !leases.is_empty() => Some(leases.len() - 1 - usize::from(*n).min(leases.len() - 1)),
            Target::RecentJob(n) => {
                let mut jobs_seen = BTreeSet::new();
                (0..leases.len()).rev().filter(|&k| jobs_seen.insert(leases[k])).nth(usize::from(*n))
            }
            _ => None,
        };
        match token {
            Some(k) => Resolved {
                model_id: leases[k],
                model_token: Some(k as u64),
                real_id: self.real_id(leases[k]),
                real_token: self.real_tokens[k],
            },
            None => {
                let model_id = match target {
                    Target::Forged(pick) => self.pick(pick),
                    Target::RecentJob(n) => u64::MAX / 2 + u64::from(*n),
                    _ => u64::MAX / 2,
                };
                Resolved { model_id, model_token: None, real_id: self.real_id(model_id), real_token: FORGED_TOKEN }
            }
        }
    }

    /// Maps a real settle result onto the model's terms; any error but the two item errors on
    /// the item's own id is a mismatch.
    fn item<T>(&self, real: &onceq_core::Result<T>, item: &Resolved) -> Result<ItemOutcome<T>, String>
    where
        T: Clone,
    {
        match real {
            Ok(value) => Ok(Ok(value.clone())),
            Err(Error::JobNotFound(id)) if *id == item.real_id => Ok(Err(Rejection::JobNotFound)),
            Err(Error::LeaseLost(id)) if *id == item.real_id => Ok(Err(Rejection::LeaseLost)),
            Err(other) => Err(format!("item on job {} (model {}) failed with {other:?}", item.real_id, item.model_id)),
        }
    }

    fn items<T: Clone>(
        &self,
        real: &[onceq_core::Result<T>],
        items: &[Resolved],
    ) -> Result<Vec<ItemOutcome<T>>, String> {
        if real.len() != items.len() {
            return Err(format!("{} items sent, {} results returned", items.len(), real.len()));
        }
        real.iter().zip(items).map(|(r, item)| self.item(r, item)).collect()
    }

    /// A batch in model terms, with what became of each job when `outcome` is known.
    fn batch_name(&self, batch: &[ModelNewJob], outcome: Option<&[(ModelId, bool)]>) -> String {
        let jobs: Vec<String> = batch
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let schedule = match job.schedule {
                    Schedule::Now => "now".to_owned(),
                    Schedule::Delay { delay_ms } => format!("delay {delay_ms}"),
                    Schedule::At(at) => format!("at {}", self.at(at)),
                };
                let became = match outcome.and_then(|o| o.get(i)) {
                    Some(&(id, duplicate)) => format!(
                        " -> job {id}{}{}",
                        if duplicate { " (duplicate)" } else { "" },
                        match self.model.job(id).map(|j| j.state) {
                            Some(JobState::Blocked) if !duplicate => " blocked",
                            _ => "",
                        }
                    ),
                    None => String::new(),
                };
                format!(
                    "{{priority {}, {schedule}, max_attempts {:?}, dedup {:?}, key {:?}}}{became}",
                    job.priority, job.max_attempts, job.dedup_id, job.ordering_key,
                )
            })
            .collect();
        jobs.join(", ")
    }

    /// Learns the store's ids of the jobs a batch created (in request order), which must
    /// strictly increase; `expected` is the model's outcome of the batch, `created_before` the
    /// model's count of jobs before it.
    fn learn_ids(
        &mut self,
        call: &str,
        real: &[Enqueued],
        expected: &[(ModelId, bool)],
        created_before: u64,
    ) -> Result<(), String> {
        if real.len() != expected.len() {
            return Err(format!("{call} returned {} results for {} jobs: {real:?}", real.len(), expected.len()));
        }
        for (r, &(id, duplicate)) in real.iter().zip(expected) {
            if !duplicate && id >= created_before {
                if self.real_ids.last().is_some_and(|last| *last >= r.id) {
                    return Err(format!(
                        "{call} assigned id {} after id {:?}: ids must strictly increase ({real:?})",
                        r.id,
                        self.real_ids.last()
                    ));
                }
                self.real_ids.push(r.id);
            }
        }
        Ok(())
    }

    /// A batch's results in model ids.
    fn model_enqueued(&self, real: &[Enqueued]) -> Result<Vec<(ModelId, bool)>, String> {
        real.iter().map(|Enqueued { id, duplicate }| self.model_id(*id).map(|m| (m, *duplicate))).collect()
    }

    /// A generated commit in both worlds: targets resolved as for the single settles, the
    /// fence's epoch relative to the producer's current one, jobs judged at the model's time.
    fn resolve_commit(&self, spec: &CommitSpec) -> Result<(ModelCommit, Commit), String> {
        let invalid = |e: Error| format!("the harness built an invalid commit: {e}");
        let mut model = ModelCommit {
            commit_id: spec.commit_id.map(|n| format!("c{n}")),
            producer: None,
            ack: Vec::new(),
            nack: Vec::new(),
            fail: Vec::new(),
            release: Vec::new(),
            enqueue: None,
            checkpoint: spec.checkpoint.map(|n| serde_json::json!({ "offset": n })),
        };
        let mut real = Commit {
            commit_id: model.commit_id.clone().map(CommitId::new).transpose().map_err(invalid)?,
            checkpoint: model.checkpoint.clone(),
            ..Commit::default()
        };
        if let Some((n, pick)) = spec.producer {
            let name = MODEL_PRODUCERS[usize::from(n) % MODEL_PRODUCERS.len()];
            let current = self.model.producer_get(name).0;
            let epoch = match pick {
                EpochPick::Current => current,
                EpochPick::Older(back) => current.saturating_sub(u64::from(back)),
                EpochPick::Ahead => current + 1,
            };
            model.producer = Some((name.to_owned(), epoch));
            real.producer = Some(Fence { producer: ProducerId::new(name).map_err(invalid)?, epoch });
        }
        for (target, settle) in &spec.settles {
            let r = self.resolve(target);
            let (id, lease_token) = (r.real_id, r.real_token);
            match settle {
                SettleSpec::Ack => {
                    model.ack.push((r.model_id, r.model_token));
                    real.ack.push(LeaseRef { id, lease_token });
                }
                SettleSpec::Nack { delay_ms, error } => {
                    let (delay_ms, error) = (*delay_ms, error.clone());
                    model.nack.push(ModelNack { id: r.model_id, token: r.model_token, delay_ms, error: error.clone() });
                    real.nack.push(Nack { id, lease_token, delay_ms, error });
                }
                SettleSpec::Fail(error) => {
                    model.fail.push((r.model_id, r.model_token, error.clone()));
                    real.fail.push(Fail { id, lease_token, error: error.clone() });
                }
                SettleSpec::Release(delay_ms) => {
                    model.release.push((r.model_id, r.model_token, *delay_ms));
                    real.release.push(Release { id, lease_token, delay_ms: *delay_ms });
                }
            }
        }
        if let Some(specs) = &spec.enqueue {
            let batch: Vec<ModelNewJob> = specs.iter().map(|s| s.to_model(self.model.now())).collect();
            let jobs = batch.iter().map(ModelNewJob::to_new_job).collect();
            real.enqueue.push(CommitEnqueue { queue: self.queue.clone(), jobs });
            model.enqueue = Some(batch);
        }
        Ok((model, real))
    }

    /// A commit in model terms.
    fn commit_name(&self, commit: &ModelCommit) -> String {
        let lease = |id: ModelId, token: Option<u64>| match token {
            Some(k) => format!("{} lease #{k}", self.job_name(id)),
            None => format!("{} forged token", self.job_name(id)),
        };
        let mut parts = Vec::new();
        if let Some(id) = &commit.commit_id {
            parts.push(format!("id {id}"));
        }
        if let Some((producer, epoch)) = &commit.producer {
            parts.push(format!("producer {producer} epoch {epoch}"));
        }
        let list = |items: Vec<String>| items.join(", ");
        if !commit.ack.is_empty() {
            parts.push(format!("ack [{}]", list(commit.ack.iter().map(|&(id, t)| lease(id, t)).collect())));
        }
        if !commit.nack.is_empty() {
            let items = commit.nack.iter().map(|n| format!("{} delay_ms {:?}", lease(n.id, n.token), n.delay_ms));
            parts.push(format!("nack [{}]", list(items.collect())));
        }
        if !commit.fail.is_empty() {
            parts.push(format!("fail [{}]", list(commit.fail.iter().map(|f| lease(f.0, f.1)).collect())));
        }
        if !commit.release.is_empty() {
            let items = commit.release.iter().map(|r| format!("{} delay_ms {:?}", lease(r.0, r.1), r.2));
            parts.push(format!("release [{}]", list(items.collect())));
        }
        if let Some(batch) = &commit.enqueue {
            parts.push(format!("enqueue [{}]", self.batch_name(batch, None)));
        }
        if let Some(checkpoint) = &commit.checkpoint {
            parts.push(format!("checkpoint {checkpoint}"));
        }
        parts.join("; ")
    }

    /// How far [`Op::AdvanceToCommitEnd`] moves the clock: to the end of the picked commit id's
    /// window plus `offset_ms`, or not at all when that is past or no id is remembered.
    fn commit_end_ms(&self, pick: &Index, offset_ms: i64) -> (Option<String>, u64) {
        let ids = self.model.commit_ids();
        if ids.is_empty() {
            return (None, 0);
        }
        let id = ids[pick.index(ids.len())].clone();
        let ms = self.model.commit_expiry(&id).map_or(0, |end| {
            Timestamp::from_millis(end.as_millis().saturating_add(offset_ms)).ms_since(self.model.now())
        });
        (Some(id), ms)
    }

    /// Sends a commit to the store and applies it to the model; compares the outcomes: the jobs
    /// enqueued (ids mapped, duplicate flags) and `replayed`, or the refusal (the stale jobs of
    /// `LeasesLost` exactly, the kind of any other).
    async fn apply_commit<S: Store + ?Sized>(
        &mut self,
        store: &S,
        model_commit: &ModelCommit,
        real_commit: &Commit,
        again: bool,
    ) -> Result<(), String> {
        let real = store.commit(real_commit.clone()).await;
        let created_before = self.model.created();
        let name = self.commit_name(model_commit);
        let expected = self.model.commit(model_commit);
        let outcome = match &expected {
            Ok(ModelCommitOutcome { enqueued: Some(jobs), replayed }) => {
                let batch = model_commit.enqueue.as_deref().unwrap_or_default();
                format!("enqueued [{}] replayed {replayed}", self.batch_name(batch, Some(jobs)))
            }
            Ok(ModelCommitOutcome { enqueued: None, replayed }) => format!("ok, replayed {replayed}"),
            Err(refusal) => format!("{refusal:?}"),
        };
        self.trace.push(format!("{} {{{name}}} -> {outcome}", if again { "commit again" } else { "commit" }));
        match (real, expected) {
            (Ok(got), Ok(want)) => {
                if got.replayed != want.replayed {
                    return Err(format!("commit returned {got:?}; the model says {want:?}"));
                }
                let got_jobs = match got.enqueued.as_slice() {
                    [] => None,
                    [one] if one.queue == self.queue => Some(&one.jobs),
                    _ => return Err(format!("commit returned {got:?}; it enqueued into {} only", self.queue)),
                };
                match (got_jobs, &want.enqueued) {
                    (None, None) => {}
                    (Some(real), Some(expected)) => {
                        self.learn_ids("commit", real, expected, created_before)?;
                        let mapped = self.model_enqueued(real)?;
                        if mapped != *expected {
                            return Err(format!("commit enqueued {mapped:?} (model ids); the model says {expected:?}"));
                        }
                    }
                    _ => return Err(format!("commit returned {got:?}; the model says {want:?}")),
                }
            }
            (Err(error), Err(refusal)) => {
                let same = match &refusal {
                    CommitRefusal::Invalid(_) => error.kind() == ErrorKind::InvalidRequest,
                    CommitRefusal::Conflict => error.kind() == ErrorKind::Conflict,
                    CommitRefusal::Fenced => error.kind() == ErrorKind::Fenced,
                    CommitRefusal::LeasesLost(ids) => {
                        error == Error::LeasesLost(ids.iter().map(|&m| self.real_id(m)).collect())
                    }
                };
                if !same {
                    return Err(format!("commit {real_commit:?} failed with {error:?}; the model says {refusal:?}"));
                }
            }
            (real, expected) => {
                return Err(format!("commit {real_commit:?} returned {real:?}; the model says {expected:?}"));
            }
        }
        Ok(())
    }

    /// Applies one op to both; compares its outcome.
    async fn apply<S: Store + ?Sized>(&mut self, store: &S, clock: &ManualClock, op: &Op) -> Result<(), String> {
        let queue = &self.queue;
        match op {
            Op::Enqueue(specs) => {
                let batch: Vec<ModelNewJob> = specs.iter().map(|s| s.to_model(self.model.now())).collect();
                let real = store
                    .job_enqueue(queue, batch.iter().map(ModelNewJob::to_new_job).collect())
                    .await
                    .map_err(|e| format!("job_enqueue failed: {e:?}"))?;
                let created_before = self.model.created();
                let expected = self.model.enqueue(&batch);
                self.learn_ids("job_enqueue", &real, &expected, created_before)?;
                let got = self.model_enqueued(&real)?;
                self.trace.push(format!("enqueue [{}]", self.batch_name(&batch, Some(&expected))));
                if got != expected {
                    return Err(format!("job_enqueue returned {got:?} (model ids); the model says {expected:?}"));
                }
            }
            Op::Lease { max_jobs, visibility_timeout_ms } => {
                let options =
                    LeaseOptions { max_jobs: *max_jobs, visibility_timeout_ms: *visibility_timeout_ms, wait_ms: 0 };
                let real = store.job_lease(queue, options).await.map_err(|e| format!("job_lease failed: {e:?}"))?;
                let first_token = self.model.leases().len();
                let expected: Vec<LeasedView> = self
                    .model
                    .lease(*max_jobs, *visibility_timeout_ms)
                    .into_iter()
                    .map(|l| LeasedView {
                        partition: self.expected_partition(l.id, l.ordering_key.as_deref(), l.partition),
                        ..l
                    })
                    .collect();
                let leased: Vec<String> = expected
                    .iter()
                    .zip(first_token..)
                    .map(|(l, k)| {
                        format!("job {} attempt {} lease #{k} expires {}", l.id, l.attempt, self.at(l.lease_expires_at))
                    })
                    .collect();
                self.trace.push(format!(
                    "lease max_jobs {max_jobs}, visibility_timeout_ms {visibility_timeout_ms:?} -> [{}]",
                    leased.join(", ")
                ));
                let mut got = Vec::with_capacity(real.len());
                for job in &real {
                    if job.queue != *queue {
                        return Err(format!("job_lease returned job {} of queue {}", job.id, job.queue));
                    }
                    got.push(LeasedView::of_leased(job, self.model_id(job.id)?));
                }
                if got != expected {
                    return Err(format!("job_lease returned {got:#?}\nthe model says {expected:#?}"));
                }
                debug_assert_eq!(self.model.leases().len(), first_token + real.len());
                self.real_tokens.extend(real.iter().map(|job| job.lease_token));
                let mut seen = std::collections::HashSet::new();
                if !self.real_tokens.iter().all(|t| seen.insert(*t)) {
                    return Err("job_lease handed out a token it had handed out before".into());
                }
            }
            Op::Ack(targets) => {
                let items: Vec<Resolved> = targets.iter().map(|t| self.resolve(t)).collect();
                let refs: Vec<LeaseRef> =
                    items.iter().map(|i| LeaseRef { id: i.real_id, lease_token: i.real_token }).collect();
                let real = store.job_ack(&refs).await.map_err(|e| format!("job_ack failed: {e:?}"))?;
                let got = self.items(&real, &items)?;
                let expected = self.model.ack(&items.iter().map(|i| (i.model_id, i.model_token)).collect::<Vec<_>>());
                self.trace.push(format!("ack [{}] -> {expected:?}", self.items_name(&items)));
                if got != expected {
                    return Err(format!("job_ack on {items:?} returned {got:?}; the model says {expected:?}"));
                }
            }
            Op::Nack(specs) => {
                let items: Vec<Resolved> = specs.iter().map(|(t, _, _)| self.resolve(t)).collect();
                let nacks: Vec<Nack> = items
                    .iter()
                    .zip(specs)
                    .map(|(i, (_, delay_ms, error))| Nack {
                        id: i.real_id,
                        lease_token: i.real_token,
                        delay_ms: *delay_ms,
                        error: error.clone(),
                    })
                    .collect();
                let real = store.job_nack(&nacks).await.map_err(|e| format!("job_nack failed: {e:?}"))?;
                let got = self.items(&real, &items)?;
                let model_items: Vec<_> = items
                    .iter()
                    .zip(specs)
                    .map(|(i, (_, delay_ms, error))| ModelNack {
                        id: i.model_id,
                        token: i.model_token,
                        delay_ms: *delay_ms,
                        error: error.clone(),
                    })
                    .collect();
                let expected = self.model.nack(&model_items);
                let described: Vec<String> = items
                    .iter()
                    .zip(&model_items)
                    .map(|(i, n)| format!("{} delay_ms {:?}", self.item_name(i), n.delay_ms))
                    .collect();
                self.trace.push(format!("nack [{}] -> {expected:?}", described.join(", ")));
                if got != expected {
                    return Err(format!("job_nack on {nacks:?} returned {got:?}; the model says {expected:?}"));
                }
            }
            Op::Extend(specs) => {
                let items: Vec<Resolved> = specs.iter().map(|(t, _)| self.resolve(t)).collect();
                let extends: Vec<Extend> = items
                    .iter()
                    .zip(specs)
                    .map(|(i, (_, ms))| Extend { id: i.real_id, lease_token: i.real_token, visibility_timeout_ms: *ms })
                    .collect();
                let real = store.job_extend(&extends).await.map_err(|e| format!("job_extend failed: {e:?}"))?;
                let got = self.items(&real, &items)?;
                let model_items: Vec<_> =
                    items.iter().zip(specs).map(|(i, (_, ms))| (i.model_id, i.model_token, *ms)).collect();
                let expected = self.model.extend(&model_items);
                let described: Vec<String> =
                    items.iter().zip(specs).map(|(i, (_, ms))| format!("{} by {ms} ms", self.item_name(i))).collect();
                let outcomes: Vec<_> = expected.iter().map(|o| o.map(|t| self.at(t))).collect();
                self.trace.push(format!("extend [{}] -> {outcomes:?}", described.join(", ")));
                if got != expected {
                    return Err(format!("job_extend on {extends:?} returned {got:?}; the model says {expected:?}"));
                }
            }
            Op::Fail(specs) => {
                let items: Vec<Resolved> = specs.iter().map(|(t, _)| self.resolve(t)).collect();
                let fails: Vec<Fail> = items
                    .iter()
                    .zip(specs)
                    .map(|(i, (_, error))| Fail { id: i.real_id, lease_token: i.real_token, error: error.clone() })
                    .collect();
                let real = store.job_fail(&fails).await.map_err(|e| format!("job_fail failed: {e:?}"))?;
                let got = self.items(&real, &items)?;
                let model_items: Vec<_> =
                    items.iter().zip(specs).map(|(i, (_, error))| (i.model_id, i.model_token, error.clone())).collect();
                let expected = self.model.fail(&model_items);
                self.trace.push(format!("fail [{}] -> {expected:?}", self.items_name(&items)));
                if got != expected {
                    return Err(format!("job_fail on {fails:?} returned {got:?}; the model says {expected:?}"));
                }
            }
            Op::Release(specs) => {
                let items: Vec<Resolved> = specs.iter().map(|(t, _)| self.resolve(t)).collect();
                let releases: Vec<Release> = items
                    .iter()
                    .zip(specs)
                    .map(|(i, (_, delay_ms))| Release { id: i.real_id, lease_token: i.real_token, delay_ms: *delay_ms })
                    .collect();
                let real = store.job_release(&releases).await.map_err(|e| format!("job_release failed: {e:?}"))?;
                let got = self.items(&real, &items)?;
                let model_items: Vec<_> =
                    items.iter().zip(specs).map(|(i, (_, delay_ms))| (i.model_id, i.model_token, *delay_ms)).collect();
                let expected = self.model.release(&model_items);
                self.trace.push(format!("release [{}] -> {expected:?}", self.items_name(&items)));
                if got != expected {
                    return Err(format!("job_release on {releases:?} returned {got:?}; the model says {expected:?}"));
                }
            }
            Op::Advance(ms) => {
                clock.advance(*ms);
                self.model.advance(*ms);
                self.trace.push(format!("advance {ms} ms -> {}", self.at(self.model.now())));
            }
            Op::Redrive { ids, limit } => {
                let model_ids: Option<Vec<ModelId>> = ids.as_ref().map(|picks| {
                    let mut named: Vec<ModelId> = Vec::new();
                    for pick in picks {
                        let id = self.pick(pick);
                        if !named.contains(&id) {
                            named.push(id);
                        }
                    }
                    named
                });
                let redrive = Redrive {
                    ids: model_ids.as_ref().map(|named| named.iter().map(|&m| self.real_id(m)).collect()),
                    limit: *limit,
                    ..Redrive::default()
                };
                let real = store
                    .dead_redrive(queue, redrive.clone())
                    .await
                    .map_err(|e| format!("dead_redrive({redrive:?}) failed: {e:?}"))?
                    .redriven;
                let expected = self.model.redrive(model_ids.as_deref(), *limit);
                let named = model_ids.as_ref().map(|ids| ids.iter().map(|&m| self.job_name(m)).collect::<Vec<_>>());
                self.trace.push(format!("redrive ids {named:?} limit {limit:?} -> {expected}"));
                if real != expected {
                    return Err(format!("dead_redrive({redrive:?}) returned {real}; the model says {expected}"));
                }
            }
            Op::Purge => {
                let real = store.dead_purge(queue).await.map_err(|e| format!("dead_purge failed: {e:?}"))?;
                let expected = self.model.purge();
                self.trace.push(format!("purge -> {expected}"));
                if real != expected {
                    return Err(format!("dead_purge returned {real}; the model says {expected}"));
                }
            }
            Op::DeadList { after, limit } => {
                let after = after.as_ref().map(|pick| self.pick(pick));
                let page = DeadPage { after: after.map(|m| self.real_id(m)), limit: *limit };
                let real =
                    store.dead_list(queue, page).await.map_err(|e| format!("dead_list({page:?}) failed: {e:?}"))?;
                let mut jobs = Vec::with_capacity(real.jobs.len());
                for job in &real.jobs {
                    jobs.push(JobView::of_job(job, self.model_id(job.id)?));
                }
                let next = real.next.map(|id| self.model_id(id)).transpose()?;
                // A never-created `after` is above every id in both worlds: the page is empty.
                let (views, next_expected) = self.model.dead_list(after, *limit);
                let expected: (Vec<JobView>, Option<ModelId>) =
                    (views.into_iter().filter_map(|view| self.expected_job(Some(view))).collect(), next_expected);
                let ids: Vec<ModelId> = expected.0.iter().map(|j| j.id).collect();
                let after_name = after.map(|m| self.job_name(m));
                self.trace
                    .push(format!("dead_list after {after_name:?} limit {limit} -> {ids:?} next {:?}", expected.1));
                if (&jobs, next) != (&expected.0, expected.1) {
                    return Err(format!(
                        "dead_list({page:?}) returned {jobs:#?} next {next:?}\nthe model says {:#?} next {:?}",
                        expected.0, expected.1
                    ));
                }
            }
            Op::Pause => {
                store.queue_pause(queue).await.map_err(|e| format!("queue_pause failed: {e:?}"))?;
                self.model.pause();
                self.trace.push("pause".into());
            }
            Op::Resume => {
                store.queue_resume(queue).await.map_err(|e| format!("queue_resume failed: {e:?}"))?;
                self.model.resume();
                self.trace.push("resume".into());
            }
            Op::DeleteQueue => {
                store.queue_delete(queue).await.map_err(|e| format!("queue_delete failed: {e:?}"))?;
                match store.queue_get(queue).await {
                    Err(Error::QueueNotFound(name)) if name == *queue => {}
                    other => return Err(format!("queue_get after queue_delete returned {other:?}")),
                }
                let upserted = store
                    .queue_upsert(queue, model_patch(&self.config))
                    .await
                    .map_err(|e| format!("queue_upsert failed: {e:?}"))?;
                if upserted != self.config {
                    return Err(format!("queue_upsert returned {upserted:?}; expected {:?}", self.config));
                }
                self.model.delete_and_recreate(self.config.clone());
                self.trace.push("queue_delete, queue_upsert".into());
            }
            Op::Configure(change) => {
                let real = store.queue_upsert(queue, change.patch()).await;
                let expected = self.model.configure(&change.patch());
                let outcome = expected.as_ref().map(|_| "ok").map_err(Error::kind);
                self.trace.push(format!("queue_upsert {change:?} -> {outcome:?}"));
                let same = match (&real, &expected) {
                    (Ok(got), Ok(want)) => got == want,
                    (Err(got), Err(want)) => got.kind() == want.kind(),
                    _ => false,
                };
                if !same {
                    return Err(format!("queue_upsert {change:?} returned {real:?}; the model says {expected:?}"));
                }
            }
            Op::Commit(spec) => {
                let (model_commit, real_commit) = self.resolve_commit(spec)?;
                self.sent.push((model_commit.clone(), real_commit.clone()));
                self.apply_commit(store, &model_commit, &real_commit, false).await?;
            }
            Op::CommitAgain(index) => {
                if self.sent.is_empty() {
                    self.trace.push("commit again: none sent yet".into());
                } else {
                    let (model_commit, real_commit) = self.sent[index.index(self.sent.len())].clone();
                    self.apply_commit(store, &model_commit, &real_commit, true).await?;
                }
            }
            Op::ProducerRegister(n) => {
                let name = MODEL_PRODUCERS[usize::from(*n) % MODEL_PRODUCERS.len()];
                let producer = ProducerId::new(name).map_err(|e| e.to_string())?;
                let real = store
                    .producer_register(&producer)
                    .await
                    .map_err(|e| format!("producer_register({name}) failed: {e:?}"))?;
                let (epoch, checkpoint) = self.model.producer_register(name);
                self.trace.push(format!("producer_register {name} -> epoch {epoch}, checkpoint {checkpoint:?}"));
                let expected = Registration { producer, epoch, checkpoint };
                if real != expected {
                    return Err(format!("producer_register returned {real:?}; the model says {expected:?}"));
                }
            }
            Op::AdvanceToCommitEnd { pick, offset_ms } => {
                let (id, ms) = self.commit_end_ms(pick, *offset_ms);
                clock.advance(ms);
                self.model.advance(ms);
                self.trace.push(format!(
                    "advance to the end of commit {id:?}'s window {offset_ms:+} ms: {ms} ms -> {}",
                    self.at(self.model.now())
                ));
            }
        }
        Ok(())
    }

    /// Compares every observation: the clock, the queue (config, pause flag, stats) and every
    /// job ever created.
    async fn observe<S: Store + ?Sized>(&self, store: &S, clock: &ManualClock) -> Result<(), String> {
        if clock.now() != self.model.now() {
            return Err(format!("the clock reads {}, the model {}", clock.now(), self.model.now()));
        }
        let info = store.queue_get(&self.queue).await.map_err(|e| format!("queue_get failed: {e:?}"))?;
        if info.config != *self.model.config() {
            return Err(format!("queue config is {:?}; the model's is {:?}", info.config, self.model.config()));
        }
        if info.paused != self.model.paused() {
            return Err(format!("queue paused is {}; the model says {}", info.paused, self.model.paused()));
        }
        for (m, &real_id) in self.real_ids.iter().enumerate() {
            let m = m as ModelId;
            let expected = self.expected_job(self.model.job(m));
            match (store.job_get(real_id).await, expected) {
                (Ok(job), Some(expected)) => {
                    if job.id != real_id || job.queue != self.queue {
                        return Err(format!("job_get({real_id}) returned job {} of queue {}", job.id, job.queue));
                    }
                    let got = JobView::of_job(&job, m);
                    if got != expected {
                        return Err(format!(
                            "job_get({real_id}) (model {m}) returned {got:#?}\nthe model says {expected:#?}"
                        ));
                    }
                }
                (Err(Error::JobNotFound(id)), None) if id == real_id => {}
                (got, expected) => {
                    return Err(format!("job_get({real_id}) (model {m}) returned {got:?}; the model says {expected:?}"))
                }
            }
        }
        for name in MODEL_PRODUCERS {
            let producer = ProducerId::new(name).map_err(|e| e.to_string())?;
            let got = store.producer_get(&producer).await.map_err(|e| format!("producer_get({name}) failed: {e:?}"))?;
            let (epoch, checkpoint) = self.model.producer_get(name);
            let expected = Registration { producer, epoch, checkpoint };
            if got != expected {
                return Err(format!("producer_get({name}) returned {got:?}; the model says {expected:?}"));
            }
        }
        // Stats last: a job-level mismatch says more than a count.
        let expected = self.model.stats();
        if info.stats != expected {
            return Err(format!("queue stats are {:?}; the model says {expected:?}", info.stats));
        }
        Ok(())
    }
}

/// Applies `ops` to a fresh [`Model`] and to `store` side by side, on the queue [`MODEL_QUEUE`]
/// (created first with [`model_config`]), and compares, after each op, its outcome (ids and
/// duplicate flags, leased jobs, each settle item's result, counts, pages, a commit's outcome or
/// refusal, a registration) and every observation (queue config, pause flag and stats, `job_get`
/// of every job ever created, `producer_get` of [`MODEL_PRODUCERS`]).
///
/// `store` must be empty (no job, queue, commit id or producer) and judge time by `clock`, which
/// only this function advances. Returns a description of the first mismatch, naming the op's
/// index.
pub async fn check_against<S: Store + ?Sized>(store: &S, clock: &ManualClock, ops: &[Op]) -> Result<(), String> {
    check_against_config(store, clock, &model_config(), ops).await
}

/// [`check_against`] on a queue created with `config` (and created with it again after a
/// delete): [`model_config`], or an [`ordered_config`] from [`ordered_case`].
pub async fn check_against_config<S: Store + ?Sized>(
    store: &S,
    clock: &ManualClock,
    config: &QueueConfig,
    ops: &[Op],
) -> Result<(), String> {
    let queue = QueueName::new(MODEL_QUEUE).map_err(|e| e.to_string())?;
    let upserted =
        store.queue_upsert(&queue, model_patch(config)).await.map_err(|e| format!("queue_upsert failed: {e:?}"))?;
    if upserted != *config {
        return Err(format!("queue_upsert returned {upserted:?}; expected {config:?}"));
    }
    let mut harness = Harness {
        model: Model::with_config(clock.now(), config.clone()),
        queue,
        config: config.clone(),
        real_ids: Vec::new(),
        real_tokens: Vec::new(),
        start: clock.now(),
        trace: Vec::new(),
        sent: Vec::new(),
    };
    harness.observe(store, clock).await.map_err(|e| format!("before op 0: {e}"))?;
    for (i, op) in ops.iter().enumerate() {
        let result = match harness.apply(store, clock, op).await {
            Ok(()) => harness.observe(store, clock).await.map_err(|e| format!("after op {i}: {e}")),
            Err(e) => Err(format!("op {i}: {e}")),
        };
        if let Err(mismatch) = result {
            let trace: Vec<String> = harness.trace.iter().enumerate().map(|(i, t)| format!("  op {i}: {t}")).collect();
            return Err(format!(
                "{mismatch}\n\nThe ops in model terms (job n = the n-th job created, lease #k = the k-th lease \
                 handed out, t+ms = time since the start; outcomes are the model's):\n{}",
                trace.join("\n")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The harness checked against the model itself, served through the seam: every sequence
    //! must pass, and a store with one boundary off by a millisecond must be caught.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use onceq_core::commit::{CommitEnqueued, CommitOutcome};
    use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
    use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
    use onceq_core::{DeadList, ItemResults, QueueInfo, Result};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// The model behind the seam. `late_by_ms` makes it judge time that much late: a bug.
    struct ModelStore {
        clock: Arc<ManualClock>,
        late_by_ms: u64,
        /// A bug of its commits, for the self-tests that the harness catches it.
        commit_bug: Option<CommitBug>,
        inner: Mutex<(Model, HashMap<LeaseToken, u64>)>,
        /// Between a `queue_delete` and the next `queue_upsert`.
        deleted: Mutex<bool>,
    }

    /// A commit bug a store could have.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum CommitBug {
        /// Forgets a commit id a millisecond before its window ends.
        ForgetsIdsEarly,
        /// Lists only the first stale lease of a refused commit.
        ListsOneStaleLease,
        /// Lets the commit of a fenced producer instance through.
        IgnoresFences,
        /// Never saves a checkpoint.
        DropsCheckpoints,
        /// Applies the acks of a commit refused for a stale lease.
        AppliesAcksOfARefusedCommit,
    }

    impl ModelStore {
        fn new(clock: Arc<ManualClock>, late_by_ms: u64) -> Self {
            let model = Model::new(clock.now());
            ModelStore {
                clock,
                late_by_ms,
                commit_bug: None,
                inner: Mutex::new((model, HashMap::new())),
                deleted: Mutex::new(false),
            }
        }

        /// Runs `f` on the model brought up to the clock's time.
        fn with<T>(&self, f: impl FnOnce(&mut Model, &mut HashMap<LeaseToken, u64>) -> T) -> T {
            let mut guard = self.inner.lock().unwrap();
            let (model, tokens) = &mut *guard;
            let target = Timestamp::from_millis(self.clock.now().as_millis() - self.late_by_ms as i64);
            model.advance(target.ms_since(model.now()));
            f(model, tokens)
        }
    }

    fn model_id(id: JobId) -> ModelId {
        id.get() - 1
    }

    fn real_id(id: ModelId) -> JobId {
        JobId::new(id + 1)
    }

    /// The job `view` shows, as the store would return it (a key-less job's partition from its
    /// store id).
    fn to_job(model: &Model, view: JobView) -> Job {
        let partition = model.partition(view.ordering_key.as_deref(), real_id(view.id));
        Job {
            id: real_id(view.id),
            queue: QueueName::new(MODEL_QUEUE).unwrap(),
            state: view.state,
            attempt: view.attempt,
            max_attempts: view.max_attempts,
            priority: view.priority,
            payload: view.payload.into_bytes(),
            headers: view.headers,
            dedup_id: view.dedup_id,
            ordering_key: view.ordering_key,
            partition,
            enqueued_at: view.enqueued_at,
            run_at: view.run_at.unwrap_or(view.enqueued_at),
            lease_expires_at: view.lease_expires_at,
            cancelled_at: None,
            errors: view.errors,
        }
    }

    fn settled<T>(ids: impl Iterator<Item = JobId>, outcomes: Vec<ItemOutcome<T>>) -> ItemResults<T> {
        ids.zip(outcomes)
            .map(|(id, outcome)| match outcome {
                Ok(value) => Ok(value),
                Err(Rejection::JobNotFound) => Err(Error::JobNotFound(id)),
                Err(Rejection::LeaseLost) => Err(Error::LeaseLost(id)),
            })
            .collect()
    }

    /// The model covers one queue's jobs; consumer groups are checked by the conformance suite.
    fn no_groups<T>() -> Result<T> {
        Err(Error::invalid("the reference model's store has no consumer groups"))
    }

    /// The model covers one queue's jobs; schedules are checked by the conformance suite.
    fn no_schedules<T>() -> Result<T> {
        Err(Error::invalid("the reference model's store has no schedules"))
    }

    fn no_paced_redrives<T>() -> Result<T> {
        Err(Error::invalid("the reference model's store has no paced redrives"))
    }

    #[async_trait]
    impl Store for ModelStore {
        async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
            // The harness enqueues into the model's queue alone.
            let queue = commit.enqueue.first().map(|e| e.queue.clone());
            self.with(|model, tokens| {
                let token = |t: &LeaseToken| tokens.get(t).copied();
                let model_commit = ModelCommit {
                    commit_id: commit.commit_id.as_ref().map(|id| id.as_str().to_owned()),
                    producer: commit.producer.as_ref().map(|f| (f.producer.as_str().to_owned(), f.epoch)),
                    ack: commit.ack.iter().map(|a| (model_id(a.id), token(&a.lease_token))).collect(),
                    nack: commit
                        .nack
                        .iter()
                        .map(|n| ModelNack {
                            id: model_id(n.id),
                            token: token(&n.lease_token),
                            delay_ms: n.delay_ms,
                            error: n.error.clone(),
                        })
                        .collect(),
                    fail: commit
                        .fail
                        .iter()
                        .map(|f| (model_id(f.id), token(&f.lease_token), f.error.clone()))
                        .collect(),
                    release: commit
                        .release
                        .iter()
                        .map(|r| (model_id(r.id), token(&r.lease_token), r.delay_ms))
                        .collect(),
                    enqueue: commit.enqueue.first().map(|e| e.jobs.iter().cloned().map(ModelNewJob::from).collect()),
                    checkpoint: commit.checkpoint.clone(),
                };
                let mut model_commit = model_commit;
                let checkpoints = model.producers.clone();
                match self.commit_bug {
                    Some(CommitBug::ForgetsIdsEarly) => {
                        let now = model.now();
                        let id = model_commit.commit_id.clone().unwrap_or_default();
                        if model.commits.get(&id).is_some_and(|record| now.plus_ms(1) == record.expires_at) {
                            model.commits.remove(&id);
                        }
                    }
                    Some(CommitBug::IgnoresFences) => {
                        if let Some((producer, epoch)) = &mut model_commit.producer {
                            *epoch = (*epoch).max(model.producer_get(producer).0);
                        }
                    }
                    _ => {}
                }
                let result = model.commit(&model_commit);
                match (self.commit_bug, &result) {
                    (Some(CommitBug::DropsCheckpoints), _) => {
                        for (producer, (_, checkpoint)) in &mut model.producers {
                            *checkpoint = checkpoints.get(producer).and_then(|(_, c)| c.clone());
                        }
                    }
                    (Some(CommitBug::AppliesAcksOfARefusedCommit), Err(CommitRefusal::LeasesLost(_))) => {
                        model.ack(&model_commit.ack);
                    }
                    _ => {}
                }
                match result {
                    Err(CommitRefusal::LeasesLost(mut ids))
                        if self.commit_bug == Some(CommitBug::ListsOneStaleLease) =>
                    {
                        ids.truncate(1);
                        Err(Error::LeasesLost(ids.into_iter().map(real_id).collect()))
                    }
                    Ok(outcome) => Ok(CommitOutcome {
                        enqueued: outcome
                            .enqueued
                            .zip(queue)
                            .map(|(jobs, queue)| {
                                let jobs = jobs
                                    .into_iter()
                                    .map(|(id, duplicate)| Enqueued { id: real_id(id), duplicate })
                                    .collect();
                                vec![CommitEnqueued { queue, jobs }]
                            })
                            .unwrap_or_default(),
                        replayed: outcome.replayed,
                    }),
                    Err(CommitRefusal::Invalid(why)) => Err(Error::invalid(why)),
                    Err(CommitRefusal::Conflict) => Err(Error::Conflict("the commit id names another commit".into())),
                    Err(CommitRefusal::Fenced) => Err(Error::Fenced("a newer epoch registered".into())),
                    Err(CommitRefusal::LeasesLost(ids)) => {
                        Err(Error::LeasesLost(ids.into_iter().map(real_id).collect()))
                    }
                }
            })
        }
        async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
            let (epoch, checkpoint) = self.with(|model, _| model.producer_register(producer.as_str()));
            Ok(Registration { producer: producer.clone(), epoch, checkpoint })
        }
        async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
            let (epoch, checkpoint) = self.with(|model, _| model.producer_get(producer.as_str()));
            Ok(Registration { producer: producer.clone(), epoch, checkpoint })
        }
        async fn schedule_delete(&self, _name: &ScheduleName) -> Result<()> {
            no_schedules()
        }
        async fn schedule_get(&self, _name: &ScheduleName) -> Result<ScheduleInfo> {
            no_schedules()
        }
        async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
            no_schedules()
        }
        async fn schedule_pause(&self, _name: &ScheduleName) -> Result<()> {
            no_schedules()
        }
        async fn schedule_resume(&self, _name: &ScheduleName) -> Result<()> {
            no_schedules()
        }
        async fn schedule_tick(&self) -> Result<TickReport> {
            no_schedules()
        }
        async fn schedule_upsert(&self, _name: &ScheduleName, _spec: ScheduleSpec) -> Result<ScheduleInfo> {
            no_schedules()
        }
        async fn group_get(&self, _queue: &QueueName, _group: &GroupName) -> Result<GroupInfo> {
            no_groups()
        }
        async fn group_heartbeat(
            &self,
            _queue: &QueueName,
            _group: &GroupName,
            _member: &MemberId,
        ) -> Result<MemberView> {
            no_groups()
        }
        async fn group_join(
            &self,
            _queue: &QueueName,
            _group: &GroupName,
            _options: JoinOptions,
        ) -> Result<MemberView> {
            no_groups()
        }
        async fn group_lease(
            &self,
            _queue: &QueueName,
            _group: &GroupName,
            _member: &MemberId,
            _options: LeaseOptions,
        ) -> Result<Vec<LeasedJob>> {
            no_groups()
        }
        async fn group_leave(&self, _queue: &QueueName, _group: &GroupName, _member: &MemberId) -> Result<()> {
            no_groups()
        }
        async fn group_list(&self, _queue: &QueueName) -> Result<Vec<GroupInfo>> {
            no_groups()
        }
        async fn dead_list(&self, _queue: &QueueName, page: DeadPage) -> Result<DeadList> {
            self.with(|model, _| {
                let (jobs, next) = model.dead_list(page.after.map(model_id), page.limit);
                Ok(DeadList {
                    jobs: jobs.into_iter().map(|view| to_job(model, view)).collect(),
                    next: next.map(real_id),
                })
            })
        }
        async fn dead_purge(&self, _queue: &QueueName) -> Result<u64> {
            self.with(|model, _| Ok(model.purge()))
        }
        async fn dead_redrive(&self, _queue: &QueueName, redrive: Redrive) -> Result<onceq_core::Redriven> {
            let ids: Option<Vec<ModelId>> = redrive.ids.map(|ids| ids.into_iter().map(model_id).collect());
            // The model knows no filters: it answers what the property test asks (ids, limit).
            self.with(|model, _| {
                let redriven = model.redrive(ids.as_deref(), redrive.limit);
                Ok(onceq_core::Redriven { matched: redriven, redriven, last: None })
            })
        }
        async fn redrive_get(&self, _id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
            no_paced_redrives()
        }
        async fn redrive_list(&self) -> Result<Vec<onceq_core::redrive::PacedRedrive>> {
            no_paced_redrives()
        }
        async fn redrive_start(
            &self,
            _queue: &QueueName,
            _redrive: Redrive,
            _rate_per_second: u32,
        ) -> Result<onceq_core::redrive::PacedRedrive> {
            no_paced_redrives()
        }
        async fn redrive_stop(&self, _id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
            no_paced_redrives()
        }
        async fn redrive_tick(&self) -> Result<u64> {
            no_paced_redrives()
        }
        async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
            self.with(|model, tokens| {
                let items: Vec<_> =
                    acks.iter().map(|a| (model_id(a.id), tokens.get(&a.lease_token).copied())).collect();
                Ok(settled(acks.iter().map(|a| a.id), model.ack(&items)))
            })
        }
        async fn job_enqueue(&self, _queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
            let batch: Vec<ModelNewJob> = jobs.into_iter().map(ModelNewJob::from).collect();
            self.with(|model, _| {
                Ok(model
                    .enqueue(&batch)
                    .into_iter()
                    .map(|(id, duplicate)| Enqueued { id: real_id(id), duplicate })
                    .collect())
            })
        }
        async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
            self.with(|model, tokens| {
                let items: Vec<_> = extends
                    .iter()
                    .map(|e| (model_id(e.id), tokens.get(&e.lease_token).copied(), e.visibility_timeout_ms))
                    .collect();
                Ok(settled(extends.iter().map(|e| e.id), model.extend(&items)))
            })
        }
        async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>> {
            self.with(|model, tokens| {
                let items: Vec<_> = releases
                    .iter()
                    .map(|r| (model_id(r.id), tokens.get(&r.lease_token).copied(), r.delay_ms))
                    .collect();
                Ok(settled(releases.iter().map(|r| r.id), model.release(&items)))
            })
        }
        async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
            self.with(|model, tokens| {
                let items: Vec<_> = fails
                    .iter()
                    .map(|f| (model_id(f.id), tokens.get(&f.lease_token).copied(), f.error.clone()))
                    .collect();
                Ok(settled(fails.iter().map(|f| f.id), model.fail(&items)))
            })
        }
        async fn job_cancel(&self, id: JobId) -> Result<Job> {
            // Cancels are not modelled: the conformance suite checks them on every store.
            Err(Error::invalid(format!("the reference model does not cancel jobs (job {id})")))
        }
        async fn job_delete(&self, id: JobId) -> Result<()> {
            // Operator deletes and kills are not modelled either: the conformance suite checks them.
            Err(Error::invalid(format!("the reference model does not delete jobs (job {id})")))
        }
        async fn job_kill(&self, id: JobId, _error: &str) -> Result<Job> {
            Err(Error::invalid(format!("the reference model does not kill jobs (job {id})")))
        }
        async fn job_get(&self, id: JobId) -> Result<Job> {
            self.with(|model, _| model.job(model_id(id)).map(|view| to_job(model, view)).ok_or(Error::JobNotFound(id)))
        }
        async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
            self.with(|model, tokens| {
                let first = model.leases().len() as u64;
                let leased = model.lease(options.max_jobs, options.visibility_timeout_ms);
                Ok(leased
                    .into_iter()
                    .zip(first..)
                    .map(|(view, k)| {
                        let token = LeaseToken::random();
                        tokens.insert(token, k);
                        let partition = model.partition(view.ordering_key.as_deref(), real_id(view.id));
                        LeasedJob {
                            id: real_id(view.id),
                            queue: queue.clone(),
                            lease_token: token,
                            attempt: view.attempt,
                            max_attempts: view.max_attempts,
                            priority: view.priority,
                            payload: view.payload.into_bytes(),
                            headers: view.headers,
                            dedup_id: view.dedup_id,
                            ordering_key: view.ordering_key,
                            partition,
                            enqueued_at: view.enqueued_at,
                            run_at: view.run_at,
                            lease_expires_at: view.lease_expires_at,
                        }
                    })
                    .collect())
            })
        }
        async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
            self.with(|model, tokens| {
                let items: Vec<_> = nacks
                    .iter()
                    .map(|n| ModelNack {
                        id: model_id(n.id),
                        token: tokens.get(&n.lease_token).copied(),
                        delay_ms: n.delay_ms,
                        error: n.error.clone(),
                    })
                    .collect();
                Ok(settled(nacks.iter().map(|n| n.id), model.nack(&items)))
            })
        }
        async fn queue_delete(&self, _queue: &QueueName) -> Result<()> {
            // The next `queue_upsert` creates it again, from the defaults.
            self.with(|model, _| model.delete_and_recreate(QueueConfig::default()));
            *self.deleted.lock().unwrap() = true;
            Ok(())
        }
        async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
            if *self.deleted.lock().unwrap() {
                return Err(Error::QueueNotFound(queue.clone()));
            }
            self.with(|model, _| {
                Ok(QueueInfo {
                    name: queue.clone(),
                    config: model.config().clone(),
                    paused: model.paused(),
                    stats: model.stats(),
                })
            })
        }
        async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
            Ok(Vec::new())
        }
        async fn queue_pause(&self, _queue: &QueueName) -> Result<()> {
            self.with(|model, _| model.pause());
            Ok(())
        }
        async fn queue_resume(&self, _queue: &QueueName) -> Result<()> {
            self.with(|model, _| model.resume());
            Ok(())
        }
        async fn queue_upsert(&self, _queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
            *self.deleted.lock().unwrap() = false;
            self.with(|model, _| model.configure(&patch))
        }
    }

    fn run(ops: &[Op], late_by_ms: u64) -> std::result::Result<(), String> {
        run_config(&model_config(), ops, late_by_ms)
    }

    fn run_config(config: &QueueConfig, ops: &[Op], late_by_ms: u64) -> std::result::Result<(), String> {
        run_with(config, ops, late_by_ms, None)
    }

    fn run_with(
        config: &QueueConfig,
        ops: &[Op],
        late_by_ms: u64,
        commit_bug: Option<CommitBug>,
    ) -> std::result::Result<(), String> {
        let clock = ManualClock::at_default_start();
        let store = ModelStore { commit_bug, ..ModelStore::new(clock.clone(), late_by_ms) };
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(check_against_config(&store, &clock, config, ops))
    }

    #[test]
    fn stores_with_a_commit_bug_are_caught() {
        use proptest::test_runner::{RngAlgorithm, TestError, TestRng};
        let bugs = [
            CommitBug::ForgetsIdsEarly,
            CommitBug::ListsOneStaleLease,
            CommitBug::IgnoresFences,
            CommitBug::DropsCheckpoints,
            CommitBug::AppliesAcksOfARefusedCommit,
        ];
        for bug in bugs {
            // Deterministic, so that the assertion is about the generator, not about luck.
            let config = Config { cases: 512, failure_persistence: None, ..Config::default() };
            let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
            let result = runner.run(&ops(), |ops| {
                run_with(&model_config(), &ops, 0, Some(bug)).map_err(proptest::test_runner::TestCaseError::fail)?;
                Ok(())
            });
            let Err(TestError::Fail(reason, minimal)) = result else {
                panic!("the harness missed a store with {bug:?}: {result:?}");
            };
            assert!(reason.message().contains("op "), "{bug:?}: the mismatch names no op: {reason}");
            assert!(minimal.len() <= 8, "{bug:?}: shrinking left {} ops: {minimal:?}", minimal.len());
        }
    }

    #[test]
    fn the_ordered_model_served_through_the_seam_matches_itself() {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner
            .run(&ordered_case(), |(config, ops)| {
                run_config(&config, &ops, 0).map_err(proptest::test_runner::TestCaseError::fail)?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn an_ordered_store_that_judges_time_a_millisecond_late_is_caught() {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        let result = runner.run(&ordered_case(), |(config, ops)| {
            run_config(&config, &ops, 1).map_err(proptest::test_runner::TestCaseError::fail)?;
            Ok(())
        });
        let Err(proptest::test_runner::TestError::Fail(reason, (_, minimal))) = result else {
            panic!("the harness missed a store judging time 1 ms late: {result:?}");
        };
        assert!(reason.message().contains("op "), "the mismatch names no op: {reason}");
        assert!(minimal.len() <= 4, "shrinking left {} ops: {minimal:?}", minimal.len());
    }

    #[test]
    fn the_model_served_through_the_seam_matches_itself() {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        runner
            .run(&ops(), |ops| {
                run(&ops, 0).map_err(proptest::test_runner::TestCaseError::fail)?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_store_that_judges_time_a_millisecond_late_is_caught() {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        let result = runner.run(&ops(), |ops| {
            run(&ops, 1).map_err(proptest::test_runner::TestCaseError::fail)?;
            Ok(())
        });
        let Err(proptest::test_runner::TestError::Fail(reason, minimal)) = result else {
            panic!("the harness missed a store judging time 1 ms late: {result:?}");
        };
        assert!(reason.message().contains("op "), "the mismatch names no op: {reason}");
        assert!(minimal.len() <= 4, "shrinking left {} ops: {minimal:?}", minimal.len());
    }

    /// Drives the model alone through `ops` (resolving targets as the harness does) and counts
    /// the outcomes that matter.
    fn tally(config: &QueueConfig, ops: &[Op], counts: &mut BTreeMap<&'static str, u64>) {
        let mut harness = Harness {
            model: Model::with_config(Timestamp::from_millis(1_000_000), config.clone()),
            queue: QueueName::new(MODEL_QUEUE).unwrap(),
            config: config.clone(),
            real_ids: Vec::new(),
            real_tokens: Vec::new(),
            start: Timestamp::from_millis(1_000_000),
            trace: Vec::new(),
            sent: Vec::new(),
        };
        let mut dedup_ids_seen = std::collections::HashSet::new();
        let mut count = |key: &'static str| *counts.entry(key).or_default() += 1;
        for op in ops {
            let before: Vec<Option<JobView>> = (0..harness.model.created()).map(|m| harness.model.job(m)).collect();
            match op {
                Op::Enqueue(specs) => {
                    let batch: Vec<_> = specs.iter().map(|s| s.to_model(harness.model.now())).collect();
                    for (id, duplicate) in harness.model.enqueue(&batch) {
                        count(if duplicate { "enqueue duplicate" } else { "enqueue new" });
                        if !duplicate && id as usize == harness.real_ids.len() {
                            harness.real_ids.push(real_id(id));
                            let dedup_id = harness.model.job(id).and_then(|j| j.dedup_id);
                            if dedup_id.is_some_and(|d| !dedup_ids_seen.insert(d)) {
                                count("dedup id reused after its window");
                            }
                        }
                    }
                }
                Op::Lease { max_jobs, visibility_timeout_ms } => {
                    let leased = harness.model.lease(*max_jobs, *visibility_timeout_ms);
                    count(if leased.is_empty() { "lease empty" } else { "lease some" });
                    if leased.iter().any(|l| l.attempt > 1) {
                        count("redelivery");
                    }
                    harness.real_tokens.extend(leased.iter().map(|_| LeaseToken::random()));
                }
                Op::Ack(targets) => {
                    let items: Vec<_> =
                        targets.iter().map(|t| harness.resolve(t)).map(|r| (r.model_id, r.model_token)).collect();
                    for outcome in harness.model.ack(&items) {
                        count(match outcome {
                            Ok(()) => "ack ok",
                            Err(Rejection::LeaseLost) => "ack lease lost",
                            Err(Rejection::JobNotFound) => "ack job not found",
                        });
                    }
                }
                Op::Nack(specs) => {
                    let items: Vec<_> = specs
                        .iter()
                        .map(|(t, d, e)| {
                            let r = harness.resolve(t);
                            ModelNack { id: r.model_id, token: r.model_token, delay_ms: *d, error: e.clone() }
                        })
                        .collect();
                    for outcome in harness.model.nack(&items) {
                        count(match outcome {
                            Ok(NackOutcome::Dead) => "nack dead",
                            Ok(NackOutcome::Retrying { .. }) => "nack retrying",
                            Ok(NackOutcome::Cancelled) => "nack cancelled (never modelled)",
                            Err(_) => "nack rejected",
                        });
                    }
                }
                Op::Extend(specs) => {
                    let items: Vec<_> = specs
                        .iter()
                        .map(|(t, ms)| {
                            let r = harness.resolve(t);
                            (r.model_id, r.model_token, *ms)
                        })
                        .collect();
                    for outcome in harness.model.extend(&items) {
                        count(if outcome.is_ok() { "extend ok" } else { "extend rejected" });
                    }
                }
                Op::Fail(specs) => {
                    let items: Vec<_> = specs
                        .iter()
                        .map(|(t, e)| {
                            let r = harness.resolve(t);
                            (r.model_id, r.model_token, e.clone())
                        })
                        .collect();
                    for outcome in harness.model.fail(&items) {
                        count(if outcome.is_ok() { "fail ok" } else { "fail rejected" });
                    }
                }
                Op::Release(specs) => {
                    let items: Vec<_> = specs
                        .iter()
                        .map(|(t, delay)| {
                            let r = harness.resolve(t);
                            (r.model_id, r.model_token, *delay)
                        })
                        .collect();
                    for outcome in harness.model.release(&items) {
                        count(if outcome.is_ok() { "release ok" } else { "release rejected" });
                    }
                }
                Op::Advance(ms) => {
                    harness.model.advance(*ms);
                    for (m, was) in before.iter().enumerate() {
                        let now = harness.model.job(m as ModelId);
                        let (Some(was), Some(now)) = (was, now) else { continue };
                        if was.state == JobState::Leased && now.state == JobState::Dead {
                            count("expiry to dead");
                        }
                        if was.state == JobState::Leased && now.state == JobState::Ready {
                            count("expiry to ready");
                        }
                        if was.state == JobState::Scheduled && now.state == JobState::Ready {
                            count("scheduled to ready");
                        }
                    }
                }
                Op::Redrive { ids, limit } => {
                    let named: Option<Vec<ModelId>> = ids.as_ref().map(|p| p.iter().map(|p| harness.pick(p)).collect());
                    if harness.model.redrive(named.as_deref(), *limit) > 0 {
                        count("redrive some");
                    }
                }
                Op::Purge => {
                    if harness.model.purge() > 0 {
                        count("purge some");
                    }
                }
                Op::DeadList { after, limit } => {
                    let after = after.as_ref().map(|p| harness.pick(p));
                    let (page, next) = harness.model.dead_list(after, *limit);
                    if !page.is_empty() {
                        count("dead list some");
                    }
                    if next.is_some() {
                        count("dead list next");
                    }
                }
                Op::Pause => harness.model.pause(),
                Op::Resume => harness.model.resume(),
                Op::DeleteQueue => {
                    if harness.model.stats() != QueueStats::default() {
                        count("delete a queue with jobs");
                    }
                    harness.model.delete_and_recreate(config.clone());
                }
                Op::Commit(spec) => {
                    let (model_commit, real_commit) = harness.resolve_commit(spec).unwrap();
                    harness.sent.push((model_commit.clone(), real_commit));
                    tally_commit(&mut harness, &model_commit, false, &mut count);
                }
                Op::CommitAgain(index) => {
                    if !harness.sent.is_empty() {
                        let (model_commit, _) = harness.sent[index.index(harness.sent.len())].clone();
                        tally_commit(&mut harness, &model_commit, true, &mut count);
                    }
                }
                Op::ProducerRegister(n) => {
                    let (_, checkpoint) = harness.model.producer_register(MODEL_PRODUCERS[usize::from(*n) % 2]);
                    if checkpoint.is_some() {
                        count("registration returns a checkpoint");
                    }
                }
                Op::AdvanceToCommitEnd { pick, offset_ms } => {
                    let (id, ms) = harness.commit_end_ms(pick, *offset_ms);
                    harness.model.advance(ms);
                    if let Some(id) = id {
                        let end = harness.model.commit_expiry(&id);
                        if end.is_some_and(|end| harness.model.now() == end) {
                            count("clock at the end of a commit id's window");
                        }
                    }
                }
                Op::Configure(change) => {
                    let holding = harness.model.jobs.values().any(|j| j.phase == Phase::Dead { holds_key: true });
                    if *change == ConfigChange::DeadBlocksKey(false) && holding {
                        count("dead_blocks_key cleared while a dead head holds its key");
                    }
                    count(match (change, harness.model.configure(&change.patch())) {
                        (ConfigChange::DeadBlocksKey(_), Ok(_)) => "dead_blocks_key changed",
                        (ConfigChange::DedupWindow(_), Ok(_)) => "dedup window changed",
                        (_, Ok(_)) => "ordering or partitions changed",
                        (_, Err(_)) => "ordering or partitions change refused",
                    });
                }
            }
            // How each job's state moved, for the transitions of ordered queues.
            let after: Vec<Option<JobView>> = (0..harness.model.created()).map(|m| harness.model.job(m)).collect();
            let key_blocked = |key: &Option<String>| {
                key.is_some() && after.iter().flatten().any(|j| j.state == JobState::Blocked && j.ordering_key == *key)
            };
            for (m, now) in after.iter().enumerate() {
                let Some(now) = now else { continue };
                let was = before.get(m).cloned().flatten().map(|j| j.state);
                let op_name = match op {
                    Op::Ack(_) => "ack",
                    Op::Nack(_) => "nack",
                    Op::Fail(_) => "fail",
                    Op::Advance(_) => "expiry",
                    Op::Purge => "purge",
                    Op::Commit(_) | Op::CommitAgain(_) => "commit",
                    _ => "other",
                };
                match (was, now.state) {
                    (None, JobState::Blocked) => count("enqueue blocked"),
                    (Some(JobState::Blocked), JobState::Ready | JobState::Scheduled) => {
                        count(match op_name {
                            "ack" => "key moves on after ack",
                            "nack" => "key moves on after nack",
                            "fail" => "key moves on after fail",
                            "expiry" => "key moves on after expiry",
                            "purge" => "key moves on after purge",
                            "commit" => "key moves on after commit",
                            _ => "key moves on after another op",
                        });
                        if now.state == JobState::Scheduled {
                            count("promoted to scheduled");
                        }
                    }
                    (Some(JobState::Leased), JobState::Ready | JobState::Scheduled)
                        if key_blocked(&now.ordering_key) =>
                    {
                        count("head retried keeps its key");
                    }
                    (Some(JobState::Leased), JobState::Dead) if key_blocked(&now.ordering_key) => {
                        count("dead head holds its key");
                    }
                    (Some(JobState::Dead), JobState::Blocked) => count("redrive behind a head"),
                    (Some(JobState::Dead), JobState::Ready) if key_blocked(&now.ordering_key) => {
                        count("redrive of a head holding its key");
                    }
                    _ => {}
                }
            }
        }
    }

    /// Applies a commit to the model alone (learning the ids it creates) and counts its outcome.
    fn tally_commit(harness: &mut Harness, commit: &ModelCommit, again: bool, count: &mut impl FnMut(&'static str)) {
        let model = &mut harness.model;
        let end = commit.commit_id.as_ref().and_then(|id| model.commit_expiry(id));
        let window_ended = end.is_some_and(|end| model.now() >= end);
        let now = model.now();
        let long_window = model.config().dedup_window_ms > COMMIT_REPLAY_MS_MIN;
        let fenced_since = commit.producer.as_ref().is_some_and(|(p, epoch)| model.producer_get(p).0 > *epoch);
        match model.commit(commit) {
            Ok(outcome) => {
                if outcome.replayed {
                    count("commit replayed");
                    if fenced_since {
                        count("commit replayed though its producer was fenced since");
                    }
                    if end == Some(now.plus_ms(1)) {
                        count("commit replayed in the last millisecond of its window");
                    }
                    return;
                }
                count("commit applied");
                if window_ended {
                    count("commit id reused after its window");
                }
                if end == Some(now) {
                    count("commit id reused as its window ends");
                }
                if commit.checkpoint.is_some() {
                    count("commit saves a checkpoint");
                }
                if commit.commit_id.is_some() && long_window && (!commit.ack.is_empty() || commit.enqueue.is_some()) {
                    count("commit id kept for the queue's longer dedup window");
                }
                for (id, duplicate) in outcome.enqueued.into_iter().flatten() {
                    count(if duplicate { "commit enqueue duplicate" } else { "commit enqueue new" });
                    if !duplicate && id as usize == harness.real_ids.len() {
                        harness.real_ids.push(real_id(id));
                    }
                }
            }
            Err(CommitRefusal::Invalid(why)) => {
                count("commit invalid");
                count(why);
            }
            Err(CommitRefusal::Conflict) => count("commit conflict"),
            Err(CommitRefusal::Fenced) => count("commit fenced"),
            Err(CommitRefusal::LeasesLost(stale)) => {
                count("commit leases lost");
                if stale.len() > 1 {
                    count("commit leases lost on several jobs");
                }
                if again && commit.commit_id.is_none() {
                    count("commit sent again without an id refused");
                }
            }
        }
    }

    #[test]
    fn generated_ops_reach_every_transition() {
        // Deterministic, so that the assertion is about the generator, not about luck.
        const SEQUENCES: usize = 512;
        let mut runner = TestRunner::deterministic();
        let mut counts = BTreeMap::new();
        for _ in 0..SEQUENCES {
            let ops = ops().new_tree(&mut runner).unwrap().current();
            tally(&model_config(), &ops, &mut counts);
        }
        let expected = [
            "ack job not found",
            "ack lease lost",
            "ack ok",
            "dead list next",
            "dead list some",
            "dedup id reused after its window",
            "enqueue duplicate",
            "enqueue new",
            "expiry to dead",
            "expiry to ready",
            "extend ok",
            "extend rejected",
            "fail ok",
            "fail rejected",
            "lease empty",
            "lease some",
            "nack dead",
            "nack rejected",
            "nack retrying",
            "purge some",
            "redelivery",
            "redrive some",
            "release ok",
            "release rejected",
            "scheduled to ready",
            "delete a queue with jobs",
            "clock at the end of a commit id's window",
            "commit applied",
            "commit conflict",
            "commit enqueue duplicate",
            "commit enqueue new",
            "commit fenced",
            "commit id reused after its window",
            "commit invalid",
            "commit leases lost",
            "commit replayed",
            "commit replayed in the last millisecond of its window",
            "commit replayed though its producer was fenced since",
            "commit leases lost on several jobs",
            "commit id reused as its window ends",
            "commit saves a checkpoint",
            "commit sent again without an id refused",
            "registration returns a checkpoint",
        ];
        let missing: Vec<_> = expected.iter().filter(|key| !counts.contains_key(*key)).collect();
        assert!(missing.is_empty(), "{SEQUENCES} generated sequences never reached {missing:?}; counts: {counts:#?}");
        assert!(!counts.contains_key("enqueue blocked"), "an unordered queue blocked a job: {counts:#?}");
    }

    #[test]
    fn generated_ordered_cases_reach_every_transition() {
        const CASES: usize = 512;
        let mut runner = TestRunner::deterministic();
        let mut counts = BTreeMap::new();
        let mut configs = BTreeSet::new();
        for _ in 0..CASES {
            let (config, ops) = ordered_case().new_tree(&mut runner).unwrap().current();
            configs.insert((config.partitions, config.dead_blocks_key));
            tally(&config, &ops, &mut counts);
        }
        assert_eq!(configs, BTreeSet::from([(1, false), (1, true), (4, false), (4, true)]));
        let expected = [
            "ack ok",
            "dead_blocks_key changed",
            "dead_blocks_key cleared while a dead head holds its key",
            "dead head holds its key",
            "enqueue blocked",
            "expiry to dead",
            "head retried keeps its key",
            "key moves on after ack",
            "key moves on after expiry",
            "key moves on after fail",
            "key moves on after nack",
            "key moves on after purge",
            "ordering or partitions change refused",
            "ordering or partitions changed",
            "promoted to scheduled",
            "redrive behind a head",
            "redrive of a head holding its key",
            "redrive some",
            "commit id kept for the queue's longer dedup window",
            "dedup window changed",
            "key moves on after commit",
        ];
        let missing: Vec<_> = expected.iter().filter(|key| !counts.contains_key(*key)).collect();
        assert!(missing.is_empty(), "{CASES} generated cases never reached {missing:?}; counts: {counts:#?}");
    }

    #[test]
    fn a_lease_expiring_at_its_last_attempt_dead_letters_the_job() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::new(start);
        let job =
            JobSpec { tag: 1, priority: 0, schedule: SpecSchedule::Now, max_attempts: Some(2), dedup: None, key: None };
        assert_eq!(model.enqueue(&[job.to_model(start)]), vec![(0, false)]);
        let first = model.lease(1, None);
        assert_eq!(first.iter().map(|l| (l.id, l.attempt)).collect::<Vec<_>>(), vec![(0, 1)]);
        model.advance(999);
        assert_eq!(model.job(0).map(|j| j.state), Some(JobState::Leased));
        model.advance(1);
        let after_expiry = model.job(0).unwrap();
        assert_eq!(after_expiry.state, JobState::Ready);
        assert_eq!(after_expiry.run_at, Some(start.plus_ms(1_000)));
        assert_eq!(model.ack(&[(0, Some(0))]), vec![Err(Rejection::LeaseLost)]);
        assert_eq!(model.lease(1, Some(10)).len(), 1);
        let nack = ModelNack { id: 0, token: Some(1), delay_ms: None, error: None };
        assert_eq!(model.nack(&[nack]), vec![Ok(NackOutcome::Dead)]);
        let dead = model.job(0).unwrap();
        assert_eq!(dead.state, JobState::Dead);
        assert_eq!(
            dead.errors,
            vec![
                AttemptError { attempt: 1, error: EXPIRY_ERROR.into(), at: start.plus_ms(1_000) },
                AttemptError { attempt: 2, error: NACK_ERROR_DEFAULT.into(), at: start.plus_ms(1_000) },
            ]
        );
        assert_eq!(model.stats(), QueueStats { dead: 1, ..QueueStats::default() });
        assert_eq!(model.redrive(None, None), 1);
        assert_eq!(model.job(0).map(|j| (j.state, j.attempt, j.errors.len())), Some((JobState::Ready, 0, 2)));
    }

    #[test]
    fn dedup_ids_are_remembered_for_the_window_from_the_first_enqueue() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::new(start);
        let job =
            JobSpec { tag: 2, priority: 0, schedule: SpecSchedule::Now, max_attempts: None, dedup: Some(0), key: None };
        let new = job.to_model(start);
        assert_eq!(model.enqueue(&[new.clone(), new.clone()]), vec![(0, false), (0, true)]);
        model.advance(4_999);
        assert_eq!(model.enqueue(std::slice::from_ref(&new)), vec![(0, true)]);
        model.advance(1);
        assert_eq!(model.enqueue(&[new]), vec![(1, false)]);
    }

    /// A keyed job of the ordered unit tests.
    fn keyed(tag: u16, key: u8, schedule: SpecSchedule) -> JobSpec {
        JobSpec { tag, priority: 0, schedule, max_attempts: None, dedup: None, key: Some(key) }
    }

    fn states(model: &Model, ids: &[ModelId]) -> Vec<Option<JobState>> {
        ids.iter().map(|&id| model.job(id).map(|j| j.state)).collect()
    }

    fn enqueue(model: &mut Model, specs: &[JobSpec]) -> Vec<ModelId> {
        let now = model.now();
        let batch: Vec<ModelNewJob> = specs.iter().map(|s| s.to_model(now)).collect();
        model
            .enqueue(&batch)
            .into_iter()
            .map(|(id, duplicate)| {
                assert!(!duplicate);
                id
            })
            .collect()
    }

    #[test]
    fn keyed_jobs_wait_blocked_behind_their_head() {
        use JobState::{Blocked, Ready, Scheduled};
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        let free = JobSpec { key: None, ..keyed(9, 0, SpecSchedule::Now) };
        let ids = enqueue(
            &mut model,
            &[
                keyed(0, 0, SpecSchedule::Delay(500)),
                keyed(1, 0, SpecSchedule::Now),
                free,
                keyed(2, 1, SpecSchedule::Now),
            ],
        );
        assert_eq!(states(&model, &ids), vec![Some(Scheduled), Some(Blocked), Some(Ready), Some(Ready)]);
        assert_eq!(
            model.stats(),
            QueueStats { ready: 2, scheduled: 1, blocked: 1, oldest_ready_age_ms: Some(0), ..QueueStats::default() }
        );
        // A blocked job keeps its own run_at, and a later job of its key queues behind it too.
        assert_eq!(model.job(1).and_then(|j| j.run_at), Some(start));
        let more = enqueue(&mut model, &[JobSpec { priority: 2, ..keyed(3, 0, SpecSchedule::Now) }]);
        assert_eq!(states(&model, &more), vec![Some(Blocked)]);
        // Priority and run_at let no later job of a key pass its head; key-less jobs and other
        // keys' heads lease as usual.
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![2, 3]);
        model.advance(500);
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![0]);
        assert!(model.lease(10, None).is_empty());
        // The partition of a keyed job is FNV-1a-32 of its key modulo the count; the model leaves
        // a key-less job's to whoever knows its store id.
        let head = model.job(0).unwrap();
        assert_eq!((head.ordering_key.as_deref(), head.partition), (Some("k0"), Some(fnv1a32(b"k0") % 4)));
        assert_eq!(model.job(2).unwrap().partition, None);
        assert_eq!(model.partition(None, JobId::new(7)), Some(3));
        assert_eq!(Model::new(start).partition(Some("k0"), JobId::new(7)), None);
    }

    #[test]
    fn in_an_unordered_queue_keys_are_kept_and_order_nothing() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::new(start);
        let ids = enqueue(&mut model, &[keyed(0, 0, SpecSchedule::Now), keyed(1, 0, SpecSchedule::Now)]);
        let leased = model.lease(10, None);
        assert_eq!(
            leased.iter().map(|l| (l.id, l.ordering_key.as_deref(), l.partition)).collect::<Vec<_>>(),
            vec![(ids[0], Some("k0"), None), (ids[1], Some("k0"), None)]
        );
    }

    #[test]
    fn acking_the_head_promotes_the_next_job_of_its_key() {
        use JobState::{Blocked, Ready, Scheduled};
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        let ids = enqueue(
            &mut model,
            &[keyed(0, 0, SpecSchedule::Now), keyed(1, 0, SpecSchedule::Now), keyed(2, 0, SpecSchedule::Delay(5_000))],
        );
        assert_eq!(model.lease(10, None).len(), 1);
        model.advance(300);
        assert_eq!(model.ack(&[(0, Some(0))]), vec![Ok(())]);
        // Its run_at is long past: ready as of now, not as of its enqueue.
        let next = model.job(1).unwrap();
        assert_eq!((next.state, next.run_at), (Ready, Some(start.plus_ms(300))));
        assert_eq!(model.stats().oldest_ready_age_ms, Some(0));
        assert_eq!(states(&model, &ids), vec![None, Some(Ready), Some(Blocked)]);
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(model.ack(&[(1, Some(1))]), vec![Ok(())]);
        // Its own run_at is still ahead: scheduled, with it.
        let last = model.job(2).unwrap();
        assert_eq!((last.state, last.run_at), (Scheduled, Some(start.plus_ms(5_000))));
    }

    #[test]
    fn a_nacked_released_or_expired_head_keeps_blocking_its_key() {
        use JobState::{Blocked, Ready, Scheduled};
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        let ids = enqueue(&mut model, &[keyed(0, 0, SpecSchedule::Now), keyed(1, 0, SpecSchedule::Now)]);
        assert_eq!(model.lease(10, None).len(), 1);
        let nack = ModelNack { id: 0, token: Some(0), delay_ms: Some(100), error: None };
        assert_eq!(model.nack(&[nack]), vec![Ok(NackOutcome::Retrying { run_at: start.plus_ms(100) })]);
        assert_eq!(states(&model, &ids), vec![Some(Scheduled), Some(Blocked)]);
        assert!(model.lease(10, None).is_empty());
        model.advance(100);
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![0]);
        assert_eq!(model.release(&[(0, Some(1), None)]), vec![Ok(())]);
        assert_eq!(states(&model, &ids), vec![Some(Ready), Some(Blocked)]);
        assert_eq!(model.lease(10, Some(300)).iter().map(|l| l.id).collect::<Vec<_>>(), vec![0]);
        model.advance(300);
        assert_eq!(states(&model, &ids), vec![Some(Ready), Some(Blocked)]);
        assert_eq!(model.job(0).map(|j| (j.attempt, j.errors.len())), Some((2, 2)));
    }

    #[test]
    fn a_dead_head_moves_its_key_on_unless_dead_blocks_key() {
        use JobState::{Blocked, Dead, Ready};
        let start = Timestamp::from_millis(1_000_000);
        for dead_blocks_key in [false, true] {
            let mut model = Model::with_config(start, ordered_config(4, dead_blocks_key));
            let last_try = JobSpec { max_attempts: Some(1), ..keyed(0, 0, SpecSchedule::Now) };
            let ids = enqueue(&mut model, &[last_try, keyed(1, 0, SpecSchedule::Now), keyed(2, 0, SpecSchedule::Now)]);
            assert_eq!(model.lease(10, None).len(), 1);
            let nack = ModelNack { id: 0, token: Some(0), delay_ms: None, error: None };
            assert_eq!(model.nack(&[nack]), vec![Ok(NackOutcome::Dead)]);
            if !dead_blocks_key {
                assert_eq!(states(&model, &ids), vec![Some(Dead), Some(Ready), Some(Blocked)]);
                assert_eq!(
                    model.stats(),
                    QueueStats { ready: 1, dead: 1, blocked: 1, oldest_ready_age_ms: Some(0), ..QueueStats::default() }
                );
                continue;
            }
            assert_eq!(states(&model, &ids), vec![Some(Dead), Some(Blocked), Some(Blocked)]);
            assert!(model.lease(10, None).is_empty());
            // Clearing the flag frees nothing: it applies to heads that die from then on.
            let clear = ConfigChange::DeadBlocksKey(false).patch();
            assert_eq!(model.configure(&clear).map(|c| c.dead_blocks_key), Ok(false));
            assert_eq!(states(&model, &ids), vec![Some(Dead), Some(Blocked), Some(Blocked)]);
            // Redriven, the dead head runs again first, still the head.
            assert_eq!(model.redrive(None, None), 1);
            assert_eq!(states(&model, &ids), vec![Some(Ready), Some(Blocked), Some(Blocked)]);
            let set = ConfigChange::DeadBlocksKey(true).patch();
            assert_eq!(model.configure(&set).map(|c| c.dead_blocks_key), Ok(true));
            assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![0]);
            assert_eq!(model.fail(&[(0, Some(1), "poison".into())]), vec![Ok(())]);
            assert_eq!(states(&model, &ids), vec![Some(Dead), Some(Blocked), Some(Blocked)]);
            // Purged, it lets the key move on; the key's lowest blocked id goes first.
            assert_eq!(model.purge(), 1);
            assert_eq!(states(&model, &ids), vec![None, Some(Ready), Some(Blocked)]);
        }
    }

    #[test]
    fn a_redriven_job_that_is_not_the_head_rejoins_its_key() {
        use JobState::{Blocked, Dead, Leased, Ready};
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        let ids = enqueue(
            &mut model,
            &[keyed(0, 0, SpecSchedule::Now), keyed(1, 0, SpecSchedule::Now), keyed(2, 0, SpecSchedule::Now)],
        );
        assert_eq!(model.lease(10, None).len(), 1);
        assert_eq!(model.fail(&[(0, Some(0), "first try".into())]), vec![Ok(())]);
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![1]);
        model.advance(100);
        assert_eq!(model.redrive(None, None), 1);
        assert_eq!(states(&model, &ids), vec![Some(Blocked), Some(Leased), Some(Blocked)]);
        let redriven = model.job(0).unwrap();
        assert_eq!((redriven.attempt, redriven.run_at, redriven.errors.len()), (0, Some(start.plus_ms(100)), 1));
        // It has the lowest id behind the head, so it runs next.
        assert_eq!(model.ack(&[(1, Some(1))]), vec![Ok(())]);
        assert_eq!(states(&model, &ids), vec![Some(Ready), None, Some(Blocked)]);

        // A key with no head takes a redriven job as its head at once.
        let mut model = Model::with_config(start, ordered_config(4, false));
        let ids = enqueue(&mut model, &[keyed(0, 1, SpecSchedule::Now)]);
        assert_eq!(model.lease(10, None).len(), 1);
        assert_eq!(model.fail(&[(0, Some(0), "no".into())]), vec![Ok(())]);
        assert_eq!(states(&model, &ids), vec![Some(Dead)]);
        assert_eq!(model.redrive(Some(&[0]), None), 1);
        assert_eq!(states(&model, &ids), vec![Some(Ready)]);
    }

    /// A commit of nothing but `jobs` for the queue.
    fn enqueue_commit(id: Option<&str>, jobs: &[JobSpec], now: Timestamp) -> ModelCommit {
        ModelCommit {
            commit_id: id.map(str::to_owned),
            producer: None,
            ack: Vec::new(),
            nack: Vec::new(),
            fail: Vec::new(),
            release: Vec::new(),
            enqueue: Some(jobs.iter().map(|j| j.to_model(now)).collect()),
            checkpoint: None,
        }
    }

    #[test]
    fn a_commit_with_a_stale_lease_applies_nothing_and_names_every_stale_one() {
        use JobState::{Blocked, Leased, Ready};
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        let ids = enqueue(
            &mut model,
            &[keyed(0, 0, SpecSchedule::Now), keyed(1, 0, SpecSchedule::Now), keyed(2, 1, SpecSchedule::Now)],
        );
        assert_eq!(model.lease(10, None).iter().map(|l| l.id).collect::<Vec<_>>(), vec![0, 2]);
        let mut commit = enqueue_commit(None, &[keyed(3, 0, SpecSchedule::Now)], start);
        // Job 2's lease #1 is live; #0 of job 0 is presented with a forged token, and a job
        // that never existed.
        commit.ack = vec![(2, Some(1)), (0, None), (u64::MAX / 2, Some(0))];
        assert_eq!(model.commit(&commit), Err(CommitRefusal::LeasesLost(vec![0, u64::MAX / 2])));
        assert_eq!(states(&model, &ids), vec![Some(Leased), Some(Blocked), Some(Leased)]);
        assert_eq!(model.created(), 3);
        // With live leases it applies: the head acked, its key moves on before the new job
        // queues behind the new head.
        commit.ack = vec![(0, Some(0))];
        commit.nack = vec![ModelNack { id: 2, token: Some(1), delay_ms: Some(0), error: None }];
        let applied = model.commit(&commit);
        assert_eq!(applied, Ok(ModelCommitOutcome { enqueued: Some(vec![(3, false)]), replayed: false }));
        assert_eq!(states(&model, &[0, 1, 2, 3]), vec![None, Some(Ready), Some(Ready), Some(Blocked)]);
        // The same commit again, without an id: its leases are gone.
        assert_eq!(model.commit(&commit), Err(CommitRefusal::LeasesLost(vec![0, 2])));
    }

    #[test]
    fn a_commit_id_replays_its_first_outcome_until_its_window_ends() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::new(start);
        let job =
            JobSpec { tag: 7, priority: 0, schedule: SpecSchedule::Now, max_attempts: None, dedup: None, key: None };
        let commit = enqueue_commit(Some("c0"), std::slice::from_ref(&job), start);
        let first = ModelCommitOutcome { enqueued: Some(vec![(0, false)]), replayed: false };
        assert_eq!(model.commit(&commit), Ok(first.clone()));
        let replayed = ModelCommitOutcome { replayed: true, ..first };
        assert_eq!(model.commit(&commit), Ok(replayed.clone()));
        let other = enqueue_commit(Some("c0"), &[JobSpec { tag: 8, ..job.clone() }], start);
        assert_eq!(model.commit(&other), Err(CommitRefusal::Conflict));
        // The model's queue has a 5 s dedup window: the id lasts COMMIT_REPLAY_MS_MIN.
        assert_eq!(model.commit_expiry("c0"), Some(start.plus_ms(COMMIT_REPLAY_MS_MIN)));
        model.advance(COMMIT_REPLAY_MS_MIN - 1);
        assert_eq!(model.commit(&commit), Ok(replayed));
        model.advance(1);
        assert_eq!(model.commit(&other), Ok(ModelCommitOutcome { enqueued: Some(vec![(1, false)]), replayed: false }));
        assert_eq!(model.created(), 2);
        // A queue whose dedup window is longer keeps the id that long.
        let long = COMMIT_REPLAY_MS_MIN + 60_000;
        assert!(model.configure(&ConfigChange::DedupWindow(long).patch()).is_ok());
        let third = enqueue_commit(Some("c1"), &[job], model.now());
        assert!(model.commit(&third).is_ok());
        assert_eq!(model.commit_expiry("c1"), Some(model.now().plus_ms(long)));
    }

    #[test]
    fn a_registration_fences_the_older_epoch_and_returns_the_last_checkpoint() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::new(start);
        assert_eq!(model.producer_get("p0"), (0, None));
        let mut commit = enqueue_commit(None, &[], start);
        commit.enqueue = None;
        commit.producer = Some(("p0".into(), 1));
        commit.checkpoint = Some(serde_json::json!({ "offset": 1 }));
        assert_eq!(model.commit(&commit), Err(CommitRefusal::Invalid("a producer epoch never issued")));
        assert_eq!(model.producer_register("p0"), (1, None));
        assert_eq!(model.commit(&commit), Ok(ModelCommitOutcome { enqueued: None, replayed: false }));
        assert_eq!(model.producer_register("p0"), (2, Some(serde_json::json!({ "offset": 1 }))));
        commit.checkpoint = Some(serde_json::json!({ "offset": 2 }));
        assert_eq!(model.commit(&commit), Err(CommitRefusal::Fenced));
        assert_eq!(model.producer_get("p0"), (2, Some(serde_json::json!({ "offset": 1 }))));
        assert_eq!(model.producer_get("p1"), (0, None));
        commit.producer = None;
        assert_eq!(model.commit(&commit), Err(CommitRefusal::Invalid("a checkpoint without a producer")));
    }

    #[test]
    fn ordering_and_partitions_change_only_while_the_queue_is_empty() {
        let start = Timestamp::from_millis(1_000_000);
        let mut model = Model::with_config(start, ordered_config(4, false));
        enqueue(&mut model, &[keyed(0, 0, SpecSchedule::Now)]);
        let before = model.config().clone();
        for change in [ConfigChange::Partitions(3), ConfigChange::Ordering(Ordering::None)] {
            assert!(matches!(model.configure(&change.patch()), Err(Error::QueueNotEmpty(_))), "{change:?}");
        }
        assert_eq!(model.configure(&ConfigChange::Partitions(4).patch()), Ok(before.clone()));
        assert!(matches!(model.configure(&ConfigChange::Partitions(0).patch()), Err(Error::InvalidRequest(_))));
        assert_eq!(*model.config(), before);
        model.delete_and_recreate(before.clone());
        assert_eq!(model.configure(&ConfigChange::Partitions(3).patch()).map(|c| c.partitions), Ok(3));
    }
}
