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
//! In debug builds (tests among them) the router passes every response through `check`: a
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

#[cfg(debug_assertions)]
pub(crate) use check::check;

/// The debug builds' check of every response against the document.
#[cfg(debug_assertions)]
mod check {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::LazyLock;

    use axum::extract::{MatchedPath, Request};
    use axum::http::{Method, StatusCode};
    use axum::middleware::Next;
    use axum::response::{IntoResponse, Response};
    use utoipa::OpenApi;

    use crate::error::ApiError;

    /// The declared statuses of each operation, by lowercase method and path template.
    static DECLARED: LazyLock<HashMap<(String, String), BTreeSet<u16>>> = LazyLock::new(|| {
        let document = crate::routes::ApiDoc::openapi();
        let mut declared = HashMap::new();
        for (path, item) in &document.paths.paths {
            let operations = [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let statuses = operation.responses.responses.keys().filter_map(|status| status.parse().ok()).collect();
                declared.insert((method.to_owned(), path.clone()), statuses);
            }
        }
        declared
    });

    /// Replaces a response whose status the document does not declare for its operation with a
    /// 500 that names the method, the path and the status, and logs it. A path no route matched
    /// (the fallback's 404) is not an operation; nor is a route's path with a method it does not
    /// take (405).
    pub(crate) async fn check(request: Request, next: Next) -> Response {
        let Some(path) = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()) else {
            return next.run(request).await;
        };
        let method = request.method().clone();
        let response = next.run(request).await;
        let status = response.status();
        // HEAD is answered by the GET handler.
        let looked_up = if method == Method::HEAD { Method::GET } else { method.clone() };
        let declared = match DECLARED.get(&(looked_up.as_str().to_ascii_lowercase(), path.clone())) {
            Some(statuses) => statuses.contains(&status.as_u16()),
            None => status == StatusCode::METHOD_NOT_ALLOWED,
        };
        if declared {
            return response;
        }
        let message = format!("status {} of {method} {path} is not declared in the OpenAPI document", status.as_u16());
        tracing::error!("{message}");
        ApiError::undeclared_status(message).into_response()
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    /// A router behind the check: `/healthz` answers `status`, `/v1/queues` (which the document
    /// declares for GET only) answers GET, and any other path 418.
    fn router(status: StatusCode) -> Router {
        Router::new()
            .route("/healthz", get(move || async move { status }))
            .route("/v1/queues", get(|| async { StatusCode::OK }))
            .fallback(|| async { StatusCode::IM_A_TEAPOT })
            .layer(axum::middleware::from_fn(super::check))
    }

    async fn answer(router: Router, method: &str, path: &str) -> (StatusCode, String) {
        let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn an_undeclared_status_becomes_a_500_that_names_it() {
        let (status, body) = answer(router(StatusCode::IM_A_TEAPOT), "GET", "/healthz").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "undeclared_status");
        assert_eq!(
            body["error"]["message"], "status 418 of GET /healthz is not declared in the OpenAPI document",
            "{body}"
        );
        // /healthz reaches no store: 503 is not among its statuses.
        let (status, _) = answer(router(StatusCode::SERVICE_UNAVAILABLE), "GET", "/healthz").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn declared_statuses_wrong_methods_and_unrouted_paths_pass() {
        assert_eq!(answer(router(StatusCode::OK), "GET", "/healthz").await.0, StatusCode::OK);
        assert_eq!(answer(router(StatusCode::OK), "HEAD", "/healthz").await.0, StatusCode::OK);
        assert_eq!(answer(router(StatusCode::OK), "POST", "/v1/queues").await.0, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer(router(StatusCode::OK), "GET", "/nowhere").await.0, StatusCode::IM_A_TEAPOT);
    }
}
