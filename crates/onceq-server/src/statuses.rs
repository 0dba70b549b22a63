//! The statuses the OpenAPI document declares, and (debug builds) the check that every response
//! has one of them.
//!
//! Each handler's `#[utoipa::path]` declares what is particular to it: its success, and its 403,
//! 404, 409 and 429 (and a 413 or 503 whose cause is its own, such as a payload over its limit).
//! [`CommonStatuses`] adds to every operation what follows from its shape, by rule, so that no
//! handler repeats it and none forgets it:
//!
//! - 400 when it reads a body, a path parameter or a query parameter (each can be malformed);
//! - 401 on every `/v1` path (every `/v1` handler reads the bearer token);
//! - 413 and 415 when it reads a body ([`crate::body::JsonBody`]);
//! - 403 on every `/v1` path that reads a body: what the path decides of the token's permissions
//!   is checked before the body is read (`preauth`), and a token may have none at all;
//! - 503 when it reaches the store (all but [`STORE_FREE_PATHS`]), and 500 `corrupt` too (but for
//!   `/readyz`, which says "database corrupt" in its 503);
//! - 408 everywhere: `serve`'s request timeout answers it for any path, and its body deadline for
//!   any path that reads a body.
//!
//! A status the handler's attribute declares itself keeps the handler's description.
//!
//! In debug builds (tests among them) the router passes every response through `contract::check`: a
//! status its operation does not declare becomes a 500 that names it, so any test that meets an
//! undeclared status fails (`tests/openapi_statuses.rs` proves the other way: every declared
//! status is answered). Release builds have no such layer.

use axum::http::StatusCode;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};
use utoipa::Modify;

/// Paths whose handlers never reach the store, so never answer 503.
const STORE_FREE_PATHS: &[&str] = &["/healthz", "/openapi.json"];

/// Adds the statuses every operation has by its shape (see the module's rules).
pub(crate) struct CommonStatuses;

impl Modify for CommonStatuses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                declare_common(path, operation);
            }
        }
    }
}

fn declare_common(path: &str, operation: &mut Operation) {
    let reads_body = operation.request_body.is_some();
    let reads = |place: ParameterIn| operation.parameters.iter().flatten().any(|p| p.parameter_in == place);
    let (reads_path, reads_query) = (reads(ParameterIn::Path), reads(ParameterIn::Query));
    let responses = &mut operation.responses.responses;
    let mut declare = |status: StatusCode, response: Response| {
        responses.entry(status.as_u16().to_string()).or_insert(RefOr::T(response));
    };
    let mut malformed = Vec::new();
    if reads_body {
        malformed.push("malformed JSON, an unknown or missing field, a wrong type or a value out of its limit");
    }
    if reads_path {
        malformed.push("a bad path parameter");
    }
    if reads_query {
        malformed.push("a bad query parameter");
    }
    if !malformed.is_empty() {
        declare(StatusCode::BAD_REQUEST, error(&format!("invalid_request: {}", malformed.join("; "))));
    }
    if path.starts_with("/v1/") {
        declare(
            StatusCode::UNAUTHORIZED,
            error("unauthorized: auth is on and the Authorization header is missing or names no configured token"),
        );
    }
    if reads_body {
        declare(
            StatusCode::PAYLOAD_TOO_LARGE,
            error("payload_too_large: the request body is over the server's limit of 16 MiB"),
        );
        declare(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error("unsupported_media_type: the body's Content-Type is not JSON (a body without one is read as JSON)"),
        );
    }
    if reads_body && path.starts_with("/v1/") {
        declare(
            StatusCode::FORBIDDEN,
            error("forbidden: the token lacks the permission this path needs (checked before the body is read)"),
        );
    }
    if !STORE_FREE_PATHS.contains(&path) {
        declare(
            StatusCode::SERVICE_UNAVAILABLE,
            error("unavailable: the store failed or cannot be reached; retry after Retry-After"),
        );
        if path != "/readyz" {
            declare(
                StatusCode::INTERNAL_SERVER_ERROR,
                error("corrupt: the store's data is damaged and the server stopped using it; restore from a backup"),
            );
        }
    }
    declare(
        StatusCode::REQUEST_TIMEOUT,
        error(
            "request_timeout: the body did not arrive in full within the body deadline (30 s), or the request ran \
             past the request timeout (60 s)",
        ),
    );
}

/// An error response: `ErrorBody` as JSON.
fn error(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert("application/json".to_owned(), Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    response
}
