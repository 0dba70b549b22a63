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
use onceq_core::{IdempotencyStore, Store};
use tokio::sync::watch;

pub use auth::{hash_token, Auth, TokenConfig};
pub use metrics::serve_metrics;
pub use serve::{check_auth_exposure, check_exposure, serve, ServeError, ServeOptions};

/// Largest request body, in bytes (413 beyond). A full enqueue batch of large payloads must be
/// split; the store's own payload limit applies per job.
pub const REQUEST_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    store: Arc<dyn Store>,
    /// The idempotency endpoints answer 503 without one.
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    auth: Auth,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Becomes true when the server starts shutting down: long polls end early.
    shutdown: watch::Receiver<bool>,
}

/// The API over a store: what to serve, before it is served.
#[derive(Clone)]
pub struct Api {
    store: Arc<dyn Store>,
    idempotency: Option<Arc<dyn IdempotencyStore>>,
    auth: Auth,
}

impl Api {
    /// The API over `store`, with auth off and no idempotency store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Api { store, idempotency: None, auth: Auth::disabled() }
    }

    /// Serves the idempotency endpoints from `idempotency`.
    pub fn idempotency(mut self, idempotency: Arc<dyn IdempotencyStore>) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// Requires these tokens.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Whether tokens are configured.
    pub fn auth_enabled(&self) -> bool {
        self.auth.enabled()
    }

    /// The router of every endpoint, with a body limit. Serve it with `axum::serve` (tests,
    /// embedding) or [`serve`] (timeouts and graceful shutdown).
    pub fn router(self) -> Router {
        let (_, shutdown) = watch::channel(false);
        self.router_with(shutdown)
    }

    pub(crate) fn router_with(self, shutdown: watch::Receiver<bool>) -> Router {
        let state = AppState {
            store: self.store,
            idempotency: self.idempotency,
            auth: self.auth,
            metrics: metrics::handle(),
            shutdown,
        };
        routes::routes().layer(axum::extract::DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX)).with_state(state)
    }
}

/// The router of every queue endpoint over `store` (no idempotency endpoints); see [`Api`].
pub fn router(store: Arc<dyn Store>, auth: Auth) -> Router {
    Api::new(store).auth(auth).router()
}

/// The OpenAPI document of the API, as JSON text.
pub fn openapi_json() -> String {
    use utoipa::OpenApi;
    routes::ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::Value;

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(item, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
            _ => {}
        }
    }

    /// Every schema the OpenAPI document refers to is in it (a type nested in a request body,
    /// such as the queue patch's `BackoffPatch`, must be registered too).
    #[test]
    fn every_schema_the_document_refers_to_is_defined() {
        let doc: Value = serde_json::from_str(&super::openapi_json()).unwrap();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.iter().any(|r| r.ends_with("/QueueConfigPatch")), "{found:?}");
        let missing: Vec<&str> = found
            .into_iter()
            .filter(|r| {
                let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
                doc["components"]["schemas"].get(name).is_none()
            })
            .collect();
        assert!(missing.is_empty(), "undefined schemas: {missing:?}");
    }
}
