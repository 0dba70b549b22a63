//! onceq-client: the storage seam over HTTP, so code written against [`onceq_core::Store`] runs
//! against a remote `onceq serve` unchanged.
//!
//! # Layout
//!
//! - `client`: [`Client`] and [`ClientBuilder`]: the base URL, the bearer token, timeouts, the one
//!   pooled keep-alive HTTP client, building endpoint URLs and exchanging one request.
//! - `error`: how a failed exchange becomes a seam [`Error`](onceq_core::Error), so a caller
//!   sees the same errors as from the embedded store (and `Unavailable` when the server is not
//!   there).
//! - `idempotency`: `impl IdempotencyStore for Client`, the idempotency endpoints.
//! - `store`: `impl Store for Client`: each seam operation as its endpoint of `docs/api.md`, with the
//!   store's own input validation run first, so bad input fails fast and identically.
//!
//! # Use
//!
//! ```no_run
//! # async fn demo() -> onceq_core::Result<()> {
//! use std::time::Duration;
//! use onceq_client::Client;
//! use onceq_core::{NewJob, QueueName, StoreExt};
//!
//! let client = Client::builder("http://127.0.0.1:7700")
//!     .token(std::env::var("ONCEQ_TOKEN").ok())
//!     .timeout(Duration::from_secs(10))
//!     .build()?;
//! let emails = QueueName::new("emails")?;
//! client.enqueue(&emails, NewJob::new(r#"{"to":"ada@example.com"}"#).dedup_id("welcome-ada")).await?;
//! if let Some(job) = client.lease_one(&emails).await? {
//!     client.ack(job.lease()).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # What differs from an embedded store
//!
//! The results are the same; the network adds one outcome: [`Error::Unavailable`] when the
//! server cannot be reached, does not answer in time, or says it is unavailable. Such a call may or may not have been applied (the reply may
//! be what was lost): retrying an enqueue is safe when its jobs carry dedup ids, and retrying a
//! settle is safe because a settle that already happened is rejected with `LeaseLost` or
//! `JobNotFound` and changes nothing (Invariant 3). Dropping a waiting lease call abandons its
//! request; jobs the server leased for it meanwhile are redelivered when their lease expires.
//!
//! [`Error::Unavailable`]: onceq_core::Error::Unavailable

mod client;
mod error;
mod idempotency;
mod store;

pub use client::{Client, ClientBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT};
