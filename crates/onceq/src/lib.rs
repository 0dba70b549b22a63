//! onceq: a durable job queue that is honest about delivery guarantees — the library facade over
//! the workspace's crates.
//!
//! A program that depends on `onceq` alone needs nothing else, and compiles only what its
//! features ask for. The `onceq` binary (server, operator CLI, bench, relay, verify) is the
//! package `onceq-cli`; none of it is built for a library user.
//!
//! # Features
//!
//! | feature | what it adds | what it compiles |
//! |---|---|---|
//! | `sqlite` (default) | the embedded store: [`SqliteStore`], [`SqliteOptions`], [`Durability`]; the crate as `onceq::sqlite` | bundled SQLite |
//! | `postgres` | the PostgreSQL store: `PgStore`, `PgOptions`; the crate as `onceq::postgres` | sqlx |
//! | `worker` | the worker runtime as `onceq::worker` (`Worker`, `JobContext`, `Outcome`, `EffectivelyOnce`) | tokio-util |
//! | `client` | the seam over HTTP: `Client`; the crate as `onceq::client` | reqwest |
//! | `outbox` | the transactional outbox and its relay as `onceq::outbox`, with the onceq sink, and the outbox tables of the stores chosen (`sqlite`, `postgres`: at least one) | the chosen stores' drivers |
//!
//! An application on the embedded store and the worker (`features = ["worker"]`) compiles no
//! sqlx, reqwest, NATS or RabbitMQ client, and no clap. The outbox's NATS JetStream, RabbitMQ and
//! webhook sinks are features of `onceq-outbox` itself; depend on it directly to use them.
//!
//! # Layout
//!
//! This one file: everything of [`onceq_core`] (the types, limits, errors and the storage seam,
//! [`Store`]) re-exported at the root, with every store of the features chosen; and each optional
//! crate whole, under the module named after its feature. `tests/crash.rs` kills a process using
//! the embedded store with `kill -9`, again and again, and checks what survived (docs/design.md
//! Invariants 1 and 4).

pub use onceq_core::*;

/// The embedded store (`onceq-sqlite`).
#[cfg(feature = "sqlite")]
pub use onceq_sqlite as sqlite;
#[cfg(feature = "sqlite")]
pub use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

/// The PostgreSQL store (`onceq-postgres`): multi-node, transactional enqueue and ack,
/// idempotency store.
#[cfg(feature = "postgres")]
pub use onceq_postgres as postgres;
#[cfg(feature = "postgres")]
pub use onceq_postgres::{PgOptions, PgStore};

/// The worker runtime (`onceq-worker`): typed handlers, heartbeats, batched acks,
/// effectively-once processing.
#[cfg(feature = "worker")]
pub use onceq_worker as worker;

/// The seam over HTTP (`onceq-client`): workers and tools against a remote server, unchanged.
#[cfg(feature = "client")]
pub use onceq_client as client;
#[cfg(feature = "client")]
pub use onceq_client::Client;

/// The transactional outbox and its relay (`onceq-outbox`).
#[cfg(feature = "outbox")]
pub use onceq_outbox as outbox;

/// The README's code runs as a doc test, so its quick-start cannot rot.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "sqlite"))]
pub struct ReadmeDoctests;
