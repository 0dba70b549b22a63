//! onceq-server: the HTTP API of API.md over any [`Store`].
//!
//! # Layout
//!
//! - [`router`]: every endpoint, over a store and an [`Auth`]; use it in-process or behind
//!   [`serve`].
//! - `routes`: the handlers and the OpenAPI document (`/openapi.json`), generated from them.
//! - [`auth`]: bearer tokens with per-queue-pattern permissions.
//! - `body`, `extract`, [`error`]: request parsing and error responses in the API's format.
//! - `metrics`: `/metrics` in Prometheus text.
//! - `serve`: the listener — header and body timeouts, body limit, graceful shutdown.

pub mod auth;
mod body;
pub mod error;
mod extract;
mod metrics;
mod routes;
mod serve;

use std::sync::Arc;

use axum::Router;
use onceq_core::Store;
use tokio::sync::watch;

pub use auth::{hash_token, Auth, TokenConfig};
pub use serve::{serve, ServeError, ServeOptions};

/// Largest request body, in bytes (413 beyond). A full enqueue batch of large payloads must be
/// split; the store's own payload limit applies per job.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    store: Arc<dyn Store>,
    auth: Auth,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Becomes true when the server starts shutting down: long polls end early.
    shutdown: watch::Receiver<bool>,
}

/// The router of every endpoint over `store`, with a body limit. Serve it with `axum::serve`
/// (tests, embedding) or [`serve`] (timeouts and graceful shutdown).
pub fn router(store: Arc<dyn Store>, auth: Auth) -> Router {
    let (_, shutdown) = watch::channel(false);
    router_with(store, auth, shutdown)
}

pub(crate) fn router_with(store: Arc<dyn Store>, auth: Auth, shutdown: watch::Receiver<bool>) -> Router {
    let state = AppState { store, auth, metrics: metrics::handle(), shutdown };
    routes::routes().layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX)).with_state(state)
}

/// The OpenAPI document of the API, as JSON text.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    routes::ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}
