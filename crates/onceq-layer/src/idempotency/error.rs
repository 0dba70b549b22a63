//! Why the layer answered a request itself instead of running the handler: [`Rejection`], and
//! the JSON error response it becomes.
//!
//! The layer never fails as a tower service (its error type is the inner service's): every
//! outcome of its own is an HTTP response with the body docs/api.md uses everywhere,
//! `{"error": {"code": "<code>", "message": "<actionable text>"}}`. The rejection also rides in
//! the response's extensions, so an outer layer (metrics, logging) can tell which one it was.
//! Internal causes (a store's error text) are logged, never returned.

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use onceq_core::api::{ErrorBody, ErrorDetail};

use super::body::ResponseBody;
use super::limits::{REPLAYED_HEADER, UNAVAILABLE_RETRY_AFTER_SECONDS};

/// An answer the layer gives instead of the handler's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 400 `idempotency_key_missing`: the route requires a key and the request has none.
    #[error("this request must carry an idempotency key in the {header} header")]
    KeyMissing {
        /// The header the key is read from.
        header: HeaderName,
    },
    /// 400 `idempotency_key_invalid`: the key is empty, too long, repeated, or not text.
    #[error("the {header} header is invalid: {reason}")]
    KeyInvalid {
        /// The header the key is read from.
        header: HeaderName,
        /// What is wrong with it.
        reason: String,
    },
    /// 413 `payload_too_large`: the request body is over the layer's buffer limit.
    #[error("the request body is over {limit_bytes} bytes, the most this endpoint buffers for an idempotent request")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// 400 `invalid_request`: the request body could not be read (the client went away, a
    /// broken chunked encoding).
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// 409 `idempotency_key_in_progress`: another request with this key is running now.
    #[error("a request with this idempotency key is in progress; retry after {retry_after_seconds} s")]
    InProgress {
        /// When to try again (`Retry-After`), in seconds: when the other request's claim ends.
        retry_after_seconds: u64,
    },
    /// 422 `idempotency_key_reused`: the key was used before for a different request (method,
    /// path, query or body differ).
    #[error("this idempotency key was used for a different request")]
    KeyReused,
    /// 503 `unavailable`: the idempotency store cannot be reached and the layer fails closed.
    #[error("the idempotency store is unavailable")]
    StoreUnavailable,
    /// 500 `response_not_stored`: a retry of a request that was processed, whose response was
    /// not stored (over the layer's limits), so it cannot be replayed.
    #[error("this request was already processed (status {status}), but its response was not stored")]
    ResponseNotStored {
        /// The status the first response had.
        status: StatusCode,
    },
    /// 500 `internal`: the store refused a well-formed call or holds a record the layer cannot
    /// read. The cause is logged.
    #[error("internal error in the idempotency layer")]
    Internal,
}

impl Rejection {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::KeyMissing { .. } | Rejection::KeyInvalid { .. } | Rejection::BodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Rejection::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::InProgress { .. } => StatusCode::CONFLICT,
            Rejection::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Rejection::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::ResponseNotStored { .. } | Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable error code of the response body.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::KeyMissing { .. } => "idempotency_key_missing",
            Rejection::KeyInvalid { .. } => "idempotency_key_invalid",
            Rejection::BodyTooLarge { .. } => "payload_too_large",
            Rejection::BodyUnreadable => "invalid_request",
            Rejection::InProgress { .. } => "idempotency_key_in_progress",
            Rejection::KeyReused => "idempotency_key_reused",
            Rejection::StoreUnavailable => "unavailable",
            Rejection::ResponseNotStored { .. } => "response_not_stored",
            Rejection::Internal => "internal",
        }
    }

    /// The message of the response body: what happened and what the client can do.
    pub fn message(&self) -> String {
        match self {
            Rejection::KeyMissing { header } => format!(
                "this endpoint requires an {header} header: send a unique value (a UUID) for each operation, and \
                 the same value when you retry that operation"
            ),
            Rejection::KeyInvalid { header, reason } => format!("the {header} header is invalid: {reason}"),
            Rejection::BodyTooLarge { limit_bytes } => format!(
                "the request body is over {limit_bytes} bytes, the most this endpoint accepts with an idempotency key"
            ),
            Rejection::BodyUnreadable => "the request body could not be read; send the request again".to_owned(),
            Rejection::InProgress { retry_after_seconds } => format!(
                "a request with this idempotency key is being processed; retry after {retry_after_seconds} s to \
                 get its response"
            ),
            Rejection::KeyReused => "this idempotency key was already used for a different request (another \
                                     method, path, query or body); use a new key for a new operation"
                .to_owned(),
            Rejection::StoreUnavailable => format!(
                "idempotency cannot be checked right now, so the request was not processed; retry after \
                 {UNAVAILABLE_RETRY_AFTER_SECONDS} s with the same key"
            ),
            Rejection::ResponseNotStored { status } => format!(
                "this request was already processed (it answered {}), but its response was too large to keep; \
                 do not retry it: look its result up instead",
                status.as_u16()
            ),
            Rejection::Internal => {
                "the idempotency layer failed; the cause is in the server's log. Retry later with the same key"
                    .to_owned()
            }
        }
    }

    /// The JSON error response, with `Retry-After` when waiting helps, the replay marker when it
    /// answers a retry of a processed request, and the rejection itself in its extensions.
    pub fn into_response(self) -> Response<ResponseBody> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.message(),
                jobs: Vec::new(),
                retry_after_ms: None,
            },
        };
        // Serializing two strings cannot fail; the fallback keeps the function total anyway.
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":{"code":"internal"}}"#.to_vec());
        let mut response = Response::new(ResponseBody::full(json.into(), None));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            Rejection::InProgress { retry_after_seconds } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            Rejection::StoreUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECONDS));
            }
            Rejection::ResponseNotStored { .. } => {
                headers.insert(HeaderName::from_static(REPLAYED_HEADER), HeaderValue::from_static("true"));
            }
            _ => {}
        }
        response.extensions_mut().insert(self);
        response
    }
}
