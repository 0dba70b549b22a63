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
//! - [`message`](Message): what an application stages, and its validation against [`limits`].
//! - [`postgres`]: the outbox tables in the application's PostgreSQL (own schema, versioned
//!   migrations under an advisory lock), [`PgOutbox::stage`] (with a `NOTIFY` that wakes the
//!   relays on commit), the dead letters; and the relay's side: claiming heads with
//!   `FOR UPDATE SKIP LOCKED` in a transaction held across publish and mark.
//! - [`sqlite`]: the outbox tables in an SQLite application's own database file, [`sqlite::stage`]
//!   for a rusqlite transaction, the dead letters; and the relay's side (one relay per file,
//!   polling).
//! - `source`: the seam between the relay and either database.
//! - [`relay`]: [`Relay`] and [`RelayOptions`]: rounds of claim, publish, settle; per-key order;
//!   backoff with full jitter; parking; waiting on notifications; retention; the crash fail point.
//! - [`sink`]: the [`Sink`] seam and the sinks: [`OnceqSink`] (any onceq store, in-process or
//!   remote), [`WebhookSink`] (HTTP POST with `Idempotency-Key`), and NATS JetStream and RabbitMQ.
//! - [`metrics`]: the names of the relay's metrics.
//! - [`limits`]: every bound, as named constants; `error`: [`OutboxError`].

mod error;
pub mod limits;
mod message;
pub mod metrics;
pub mod postgres;
pub mod relay;
pub mod sink;
mod source;
pub mod sqlite;

pub use error::{OutboxError, Result};
pub use message::Message;
pub use postgres::{ParkedMessage, PgOutbox};
pub use relay::{Relay, RelayOptions, RoundReport};
pub use sink::onceq::OnceqSink;
pub use sink::webhook::WebhookSink;
pub use sink::{OutboxMessage, PublishError, Sink};
pub use source::Backlog;
