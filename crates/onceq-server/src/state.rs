//! What every handler shares ([`AppState`]), and the request body limit.

use std::sync::Arc;

use onceq_core::{IdempotencyStore, Store};
use tokio::sync::watch;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::auth::{Auth, Principal};
use crate::error::ApiError;

/// Largest request body, in bytes (413 beyond). A full enqueue batch of large payloads must be
/// split; the store's own payload limit applies per job.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn Store>,
    /// The idempotency endpoints answer 503 without one.
    pub(crate) idempotency: Option<Arc<dyn IdempotencyStore>>,
    pub(crate) auth: Auth,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Becomes true when the server starts shutting down: long polls end early.
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// The caller of a request, from its bearer token.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        state.auth.authenticate(header)
    }
}
