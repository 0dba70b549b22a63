//! onceq-server: the HTTP API of docs/api.md over any [`Store`].
//!
//! # Layout
//!
//! - [`router`]: every endpoint, over a store and an [`Auth`]; use it in-process or behind
//!   [`serve`]. `api`: [`Api`], the API over a store before it is served.
//! - `state`: what every handler shares, and the request body limit.
//! - `routes`: the handlers and the OpenAPI document (`/openapi.json`), generated from them.
//! - `advice`: the lease adviser: from the lease-to-ack times it sees, advice on queues whose
//!   handlers hold their leases for most of the visibility timeout.
//! - `redrives`: the `/v1/redrives` handlers (paced redrives), routed and documented by `routes`.
//! - `schedules`: the `/v1/schedules` handlers, routed and documented by `routes`.
//! - [`auth`]: bearer tokens with per-queue-pattern permissions; `preauth`: the part of them the
//!   path decides, checked before a request body is read.
//! - `body`, `extract`, [`error`]: request parsing and error responses in the API's format.
//! - `metrics`: `/metrics` in Prometheus text.
//! - `statuses`: the statuses the OpenAPI document declares by rule; `contract` (debug builds):
//!   the check that every response's status is declared.
//! - `serve`: the listener — header and body timeouts, body limit, graceful shutdown.
//! - `ui`: the web dashboard at `/ui` (HTML, outside the OpenAPI document).
//! - `parse_errors`: hyper's answers to requests it cannot parse, rewritten in the API's format.

mod advice;
mod api;
pub mod auth;
mod body;
#[cfg(debug_assertions)]
mod contract;
pub mod error;
mod extract;
mod metrics;
mod parse_errors;
mod preauth;
mod redrives;
mod routes;
mod schedules;
mod serve;
mod state;
mod statuses;
mod ui;

use std::sync::Arc;

use axum::Router;
use onceq_core::Store;

pub use api::Api;
pub use auth::{hash_token, Auth, TokenConfig};
pub use body::BODY_MEMORY_BYTES_DEFAULT;
pub use metrics::serve_metrics;
pub use serve::{check_auth_exposure, check_exposure, serve, ServeError, ServeOptions};
pub use state::REQUEST_BODY_BYTES_MAX;

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
