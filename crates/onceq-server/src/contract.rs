//! Debug builds only (tests among them): every response the router gives is held to the OpenAPI
//! document. A status its operation does not declare becomes a 500 that names it, so any test that
//! meets an undeclared status fails loudly (`statuses` says what is declared, and
//! `tests/openapi_statuses.rs` proves the other way: every declared status is answered). Release
//! builds have no such module.

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

#[cfg(test)]
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
