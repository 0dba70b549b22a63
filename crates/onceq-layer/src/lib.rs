//! onceq-layer: tower middleware that brings onceq's effectively-once tools to users' own HTTP
//! services (axum, or any tower service over `http::Request` → `http::Response`).
//!
//! # Layout
//!
//! - [`idempotency`]: [`IdempotencyLayer`], which runs each request at most once per
//!   `Idempotency-Key` over any [`onceq_core::IdempotencyStore`] (embedded, PostgreSQL, Redis,
//!   or a remote `onceq serve` through `onceq_client::Client`) and replays its response to
//!   retries. Its module docs state the behaviour and its decisions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use axum::{routing::post, Router};
//! use onceq_layer::IdempotencyLayer;
//! use onceq_sqlite::{SqliteOptions, SqliteStore};
//!
//! let store = SqliteStore::open(SqliteOptions::new("./data"))?;
//! let app: Router = Router::new()
//!     .route("/payments", post(|| async { "charged" }))
//!     .layer(IdempotencyLayer::new(Arc::new(store)));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

pub mod idempotency;

pub use idempotency::{IdempotencyLayer, IdempotencyService, Rejection, ResponseBody};
