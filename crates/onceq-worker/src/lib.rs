//! onceq-worker: a reliable worker in a few lines, and an effectively-once worker in one more.
//!
//! # Layout
//!
//! - [`Worker`] and [`WorkerBuilder`]: register typed handlers per queue, then [`Worker::run`]
//!   until a shutdown signal.
//! - `handler`: [`JobContext`] (what a handler sees: id, attempt, lease token, a cancellation
//!   token) and [`Outcome`] (what it chooses: done, retry, fail, release — values, not
//!   strings; or acked already, by a handler that acks in its own transaction); middleware
//!   around handlers.
//! - `runner`: one queue's fetch loop and job tasks: prefetched batches, per-queue concurrency,
//!   heartbeats that extend the lease, a hard deadline, panics caught as retries.
//! - `group`: a queue worked as a member of a consumer group ([`GroupOptions`]): joining,
//!   heartbeats on their own task, leasing only from the member's partitions, and the
//!   [`PartitionHooks`] called when partitions are assigned and revoked (a revocation waits for
//!   the partition's jobs in flight here to settle); leaving on shutdown.
//! - `acker`: acks batched across jobs, each job acked at most once.
//! - `report`: [`WorkerReport`], and the state the runners of one worker share.
//! - `gate`: the effectively-once gate over an [`IdempotencyStore`](onceq_core::IdempotencyStore):
//!   key derivation, begin → decision → complete or release. The one copy of the protocol: the
//!   transactional PostgreSQL worker uses it too, with claims made in the job's transaction.
//!
//! Generic over the seam: the same worker runs in-process on the embedded store, on PostgreSQL,
//! or against a remote server through `onceq-client`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use onceq_core::IdempotencyStore;
//! use onceq_sqlite::{SqliteOptions, SqliteStore};
//! use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions, Worker};
//!
//! #[derive(serde::Deserialize)]
//! struct Charge { order: u64, cents: u64 }
//!
//! # async fn demo() -> onceq_core::Result<()> {
//! let store = Arc::new(SqliteStore::open(SqliteOptions::new("./onceq-data"))?);
//! let guard = EffectivelyOnce::new(store.clone() as Arc<dyn IdempotencyStore>);
//! let worker = Worker::builder(store.clone())
//!     .handle("emails", |ctx: JobContext, to: String| async move {
//!         println!("welcome {to} (attempt {})", ctx.attempt);
//!         Outcome::Done
//!     })
//!     .handle_with("payments", QueueOptions::concurrency(4).effectively_once(guard), |_ctx, c: Charge| async move {
//!         // charge the card once per order, however often the job is delivered
//!         Outcome::DoneWith(serde_json::json!({ "order": c.order, "charged": c.cents }))
//!     })
//!     .build()?;
//! let report = worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

mod acker;
pub mod gate;
mod group;
mod handler;
mod report;
mod runner;
mod worker;

pub use gate::EffectivelyOnce;
pub use group::{GroupOptions, PartitionHooks};
pub use handler::{JobContext, Middleware, Outcome, OutcomeFuture};
pub use report::WorkerReport;
pub use runner::QueueOptions;
pub use worker::{Worker, WorkerBuilder, WorkerOptions};
