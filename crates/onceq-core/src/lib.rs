//! onceq-core: the types, limits, errors and storage seam of onceq.
//!
//! # Layout
//!
//! - [`limits`]: every bound onceq enforces, as named constants (Invariant 8).
//! - [`metrics`]: the names of the metrics stores emit.
//! - [`flow`]: rate, in-flight and depth limits of a queue: the GCRA bucket and the grant a
//!   lease gets (Invariant 15).
//! - [`error`]: the seam's [`Error`] and its portable [`ErrorKind`].
//! - [`time`]: [`Timestamp`] and the store's one [`Clock`] (Invariant 7).
//! - `id`: [`JobId`], [`QueueName`] and [`RedriveId`], the names the seam's [`Error`] carries; what makes them
//!   valid, and reading them, lives with the job and the queue.
//! - `queue`: what makes a [`QueueName`] valid, [`QueueConfig`], [`DeliveryMode`], [`QueueStats`].
//! - `job`: reading a [`JobId`], [`LeaseToken`], [`NewJob`], [`Job`], [`LeasedJob`].
//! - [`group`]: consumer groups: [`GroupState`](group::GroupState), the pure state machine of
//!   members, sessions and the cooperative hand-over of partitions that every store keeps.
//! - [`ordering`]: [`Ordering`], a key's partition (the hash clients compute) and the sticky,
//!   balanced assignment of a group's partitions.
//! - `retry`: [`Backoff`] and [`Jitter`], the retry policy, and [`BackoffPatch`], a partial update of it.
//! - [`schedule`]: schedules: [`ScheduleName`](schedule::ScheduleName), the spec, what a read
//!   returns, and the pure tick computation (cron, time zones, DST, catch-up; Invariant 14).
//! - [`unique`]: unique jobs: [`Unique`], what holds a job's unique key and for how long, and
//!   the canonical form of a JSON payload that `by: payload` hashes.
//! - [`store`]: the seam, [`Store`], its request types and shared validation.
//! - [`redrive`]: a redrive's filters ([`Redrive`]), what it did ([`Redriven`]), and paced
//!   redrives: their row, state and pace (`RedriveId` lives in `id`).
//! - [`api`]: the HTTP API's wire types, shared by the server and the client.
//! - [`idempotency`]: the idempotency store, the consumer half of effectively-once.
//! - [`inspect`]: [`Inspect`], the bounded reads of an operator's view (jobs by state, a dedup
//!   id's job), a capability beside the seam.
//!
//! See docs/design.md for the vocabulary, the job lifecycle and the invariants these types serve.

pub mod api;
pub mod commit;
pub mod error;
pub mod flow;
pub mod group;
mod id;
pub mod idempotency;
pub mod inspect;
mod job;
pub mod limits;
pub mod metrics;
pub mod ordering;
mod queue;
pub mod redrive;
mod retry;
pub mod schedule;
mod settle;
pub mod store;
pub mod time;
pub mod unique;

pub use error::{Error, ErrorKind, Result};
pub use id::{JobId, QueueName, RedriveId};
pub use idempotency::{Begin, BeginOutcome, Complete, IdempotencyStore};
pub use inspect::{IdempotencyRecord, Inspect, JobList, JobPage};
pub use job::{
    truncate_error_text, AttemptError, Enqueued, Headers, Job, JobState, LeaseRef, LeaseToken, LeasedJob, NewJob,
    Schedule,
};
pub use ordering::Ordering;
pub use queue::{DeliveryMode, Durability, QueueConfig, QueueConfigPatch, QueueInfo, QueueStats};
pub use retry::{Backoff, BackoffPatch, Jitter};
pub use store::{
    DeadList, DeadPage, Extend, Fail, ItemResults, LeaseOptions, Nack, NackOutcome, Redrive, Redriven, Release, Store,
    StoreExt,
};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use unique::{Unique, UniqueBy, UniqueWhile};
