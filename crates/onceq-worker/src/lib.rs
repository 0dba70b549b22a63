//! onceq-worker: a reliable worker in a few lines, and an effectively-once worker in one more.
//!
//! # Layout
//!
//! - [`Worker`] and [`WorkerBuilder`]: register typed handlers per queue, then [`Worker::run`]
//!   until a shutdown signal.
//! - `handler`: [`JobContext`] (what a handler sees: id, attempt, lease token, a cancellation
//!   token) and [`Outcome`] (what it chooses: done, retry, fail — values, not strings).
//! - `runner`: one queue's fetch loop and job tasks: prefetched batches, per-queue concurrency,
//!   heartbeats that extend the lease, a hard deadline, panics caught as retries.
//! - `acker`: acks batched across jobs, each job acked at most once.
//! - `once`: the effectively-once wrapper over an [`IdempotencyStore`](onceq_core::IdempotencyStore).
//!
//! Generic over the seam: the same worker runs in-process on the embedded store, on PostgreSQL,
//! or against a remote server through `onceq-client`.

mod acker;
mod handler;
mod once;
mod runner;
mod worker;

pub use handler::{JobContext, Outcome};
pub use once::EffectivelyOnce;
pub use runner::QueueOptions;
pub use worker::{Worker, WorkerBuilder, WorkerOptions, WorkerReport};
