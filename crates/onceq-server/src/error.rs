//! HTTP errors: a stable code and an actionable message (docs/api.md, "Errors"). Internal causes are
//! logged here and never returned.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use onceq_core::api::{ErrorBody, ErrorDetail};
use onceq_core::{Error, ErrorKind};

/// Seconds a client is told to wait (`Retry-After`) when the store is unavailable.
const RETRY_AFTER_SECONDS: u64 = 1;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: ErrorDetail {
                    code: code.to_owned(),
                    message: message.into(),
                    jobs: Vec::new(),
                    retry_after_ms: None,
                },
            },
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found` for a path that is no endpoint.
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no endpoint at {path}; see /openapi.json"))
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "this endpoint does not take that method")
    }

    /// 415: a body of a type the endpoint does not read.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message)
    }

    /// 413 `payload_too_large`.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 408 `request_timeout`: the request ran for `limit` without an answer.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request ran for {} s, the most a request may take (long polls wait at most 20 s); nothing \
                 is known of its outcome: read the state back, or retry what is safe to retry",
                limit.as_secs_f64()
            ),
        )
    }

    /// 408 `request_timeout`: the request's body had not arrived in full after `limit`.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive in full within {} s of the request; nothing was done, send it again",
                limit.as_secs_f64()
            ),
        )
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `undeclared_status` (debug builds): a response whose status the OpenAPI document does
    /// not declare for its operation, which is a defect of the server.
    #[cfg(debug_assertions)]
    pub(crate) fn undeclared_status(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "undeclared_status", message)
    }

    /// The error response for a per-item error detail (status from its code).
    pub fn from_detail(detail: ErrorDetail) -> Self {
        let status = match detail.code.as_str() {
            "invalid_request" => StatusCode::BAD_REQUEST,
            "unauthorized" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "lease_lost" | "job_cancelled" | "conflict" | "queue_not_empty" | "not_member" | "fenced" => {
                StatusCode::CONFLICT
            }
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
            "request_timeout" => StatusCode::REQUEST_TIMEOUT,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "corrupt" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, body: ErrorBody { error: detail } }
    }

    /// The response's status.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The body's detail (for per-item results of batch calls).
    pub fn detail(&self) -> ErrorDetail {
        self.body.error.clone()
    }
}

/// The HTTP status of a portable error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::LeaseLost
        | ErrorKind::JobCancelled
        | ErrorKind::Conflict
        | ErrorKind::QueueNotEmpty
        | ErrorKind::NotMember
        | ErrorKind::Fenced => StatusCode::CONFLICT,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Corrupt => StatusCode::INTERNAL_SERVER_ERROR,
        // Unavailable and Storage; a kind added to the seam later must be given its status here.
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error.kind() {
            // Internal causes (addresses, statements) are logged, never returned (docs/api.md).
            ErrorKind::Storage | ErrorKind::Unavailable => {
                tracing::error!(%error, "the store failed or is unavailable");
                ApiError::unavailable(
                    "the store is unavailable right now; retry after Retry-After (the cause is in the server's log)",
                )
            }
            ErrorKind::Corrupt => {
                tracing::error!(%error, "the store's data is damaged: restore it from a backup");
                ApiError { status: status_of(ErrorKind::Corrupt), body: ErrorBody::from_error(&error) }
            }
            kind => ApiError { status: status_of(kind), body: ErrorBody::from_error(&error) },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A refusal by a limit names its own pause (whole seconds, rounded up, at least one);
        // anything else unavailable says a second.
        let retry_after = match self.body.error.retry_after_ms {
            Some(ms) if self.status == StatusCode::TOO_MANY_REQUESTS => Some(ms.div_ceil(1000).max(1)),
            _ if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS => {
                Some(RETRY_AFTER_SECONDS)
            }
            _ => None,
        };
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
