//! onceq-outbox: the transactional outbox and its relay.
//!
//! An application writes its business state and "publish this message" in one local
//! transaction ([`Message`], staged with [`PgOutbox::stage`] or [`sqlite::stage`]); a
//! [`Relay`] claims committed rows, publishes each through a [`Sink`] with
//! `<outbox name>-<row id>` as the message's dedup id, and only then marks it sent. A message is
//! published if and only if its transaction committed. A relay that crashes between publish and
//! mark publishes the row again after restart — with the same dedup id, so a destination that
//! deduplicates (onceq, NATS JetStream, an HTTP endpoint honouring `Idempotency-Key`) holds it
//! once.
//!
//! # Layout
//!
//! - [`message`](Message): what an application stages, and its validation against [`limits`];
//!   [`ParkedMessage`], what either database's dead letters give back.
//! - [`postgres`] (feature `postgres`): the outbox tables in the application's PostgreSQL (own
//!   schema, versioned migrations under an advisory lock), [`PgOutbox::stage`] (with a `NOTIFY`
//!   that wakes the relays on commit), the dead letters; and the relay's side: claiming heads
//!   with `FOR UPDATE SKIP LOCKED` in a transaction held across publish and mark.
//! - [`sqlite`] (feature `sqlite`): the outbox tables in an SQLite application's own database
//!   file, [`sqlite::stage`] for a rusqlite transaction, the dead letters; and the relay's side
//!   (one relay per file, polling).
//! - `source`: the seam between the relay and either database.
//! - [`relay`]: [`Relay`] and [`RelayOptions`]: rounds of claim, publish, settle; per-key order;
//!   backoff with full jitter; parking; waiting on notifications; retention; the crash fail point.
//! - [`sink`]: the [`Sink`] seam and the sinks: [`OnceqSink`] (any onceq store, in-process or
//!   remote; always built), [`WebhookSink`] (feature `webhook`: HTTP POST with
//!   `Idempotency-Key`), NATS JetStream (feature `nats`) and RabbitMQ (feature `rabbitmq`).
//! - [`metrics`]: the names of the relay's metrics.
//! - [`limits`]: every bound, as named constants; `error`: [`OutboxError`].
//!
//! # Features
//!
//! Each source and each sink but onceq's is a cargo feature, so that an application compiles
//! only the clients it uses: `postgres` (sqlx) and `sqlite` (rusqlite) are the sources, `nats`
//! (async-nats), `rabbitmq` (lapin) and `webhook` (reqwest; `rustls` adds TLS) the sinks. The
//! onceq sink needs only the seam and is always built. At least one source is required: without
//! one nothing can stage or relay, and the crate says so at compile time.
//!
//! All of them are default features, on purpose: the workspace's tests (`cargo test
//! --workspace`) build each package with its default features, and a test behind a feature left
//! out of them would be skipped without a word. So every test and example here runs in that one
//! run, and users choose with `default-features = false` plus the features they need (the
//! `onceq` facade takes the onceq sink and the sources of its own store features).

#[cfg(not(any(feature = "postgres", feature = "sqlite")))]
compile_error!("onceq-outbox needs a source: enable its `postgres` or `sqlite` feature (or both)");

mod error;
pub mod limits;
mod message;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod relay;
pub mod sink;
mod source;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use error::{OutboxError, Result};
pub use message::{Message, ParkedMessage};
#[cfg(feature = "postgres")]
pub use postgres::PgOutbox;
pub use relay::{Relay, RelayOptions, RoundReport};
pub use sink::onceq::OnceqSink;
#[cfg(feature = "webhook")]
pub use sink::webhook::WebhookSink;
pub use sink::{OutboxMessage, PublishError, Sink};
pub use source::Backlog;
