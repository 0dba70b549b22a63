//! Request bodies: JSON parsed with errors in the API's own format (axum's default rejections are
//! plain text), an empty body read as `{}`, the body-size limit answered with 413 (from the
//! `Content-Length` header at once, when it says so), a body declared as anything but JSON
//! answered with 415 (one without a `Content-Type` is read as JSON), a body that has not arrived by
//! its deadline answered with 408, and the memory of bodies being read at once capped by a
//! budget (503 past it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::REQUEST_BODY_BYTES_MAX;

/// Memory that request bodies being read may take at once, in bytes, unless the server says
/// otherwise (`onceq serve --body-memory-mib`): 16 bodies of the largest size.
pub const BODY_MEMORY_BYTES_DEFAULT: usize = 16 * REQUEST_BODY_BYTES_MAX;

/// The memory that request bodies being read may take at once (a request extension). A body
/// holds its declared `Content-Length` of it (the largest body size when it declares none) from
/// before it is read until it is parsed; a body that finds too little left is answered 503.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    pub(crate) fn new(total: usize) -> Self {
        BodyBudget { bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))), total }
    }
}

/// When a request's body must have arrived in full (a request extension, set by `serve`).
#[derive(Clone, Copy)]
pub(crate) struct BodyDeadline {
    pub(crate) at: tokio::time::Instant,
    pub(crate) limit: Duration,
}

/// A JSON request body of type `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(declared) = req.headers().get(header::CONTENT_TYPE).filter(|value| !is_json(value)) {
            return Err(ApiError::unsupported_media_type(format!(
                "the request body must be JSON, and its Content-Type says {}: send `Content-Type: application/json`, \
                 or none (curl's -d sends application/x-www-form-urlencoded unless told otherwise)",
                String::from_utf8_lossy(declared.as_bytes())
            )));
        }
        let too_large = || {
            ApiError::too_large(format!(
                "the request body is over the server's limit of {REQUEST_BODY_BYTES_MAX} bytes; send fewer jobs per \
                 request"
            ))
        };
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let declared = match req.headers().get(header::CONTENT_LENGTH) {
            None => None,
            Some(value) => match value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(length) if length > REQUEST_BODY_BYTES_MAX as u64 => {
                    // A body a little over the limit is read and thrown away first, so that the
                    // client, still sending, gets the 413 rather than a reset connection; one
                    // declared far over it is refused at once.
                    if length <= DRAIN_BYTES_MAX {
                        drain(req.into_body(), deadline).await;
                    }
                    return Err(too_large());
                }
                Some(length) => Some(length as usize),
                None => return Err(ApiError::invalid("the Content-Length header is not a number of bytes")),
            },
        };
        // Held until the body is parsed.
        let _reserved = match req.extensions().get::<BodyBudget>() {
            None => None,
            Some(budget) => {
                let wanted = declared.unwrap_or(REQUEST_BODY_BYTES_MAX).clamp(1, budget.total);
                let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
                match budget.bytes.clone().try_acquire_many_owned(permits) {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        return Err(ApiError::unavailable(format!(
                            "the server is reading as many request bodies at once as its memory for them allows \
                             ({} bytes); retry after Retry-After",
                            budget.total
                        )))
                    }
                }
            }
        };
        let reading = Bytes::from_request(req, state);
        let read = match deadline {
            None => reading.await,
            Some(deadline) => tokio::time::timeout_at(deadline.at, reading)
                .await
                .map_err(|_| ApiError::body_timeout(deadline.limit))?,
        };
        let bytes = read.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::invalid(
                    "the request body could not be read: the connection failed or the body did not match its \
                     Content-Length",
                )
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("the request body is not valid for this endpoint: {e}")))
    }
}

/// A body declared over the limit by at most this much is read (and thrown away) before its 413.
const DRAIN_BYTES_MAX: u64 = 4 * REQUEST_BODY_BYTES_MAX as u64;

/// Reads `body` to its end, keeping nothing, until `deadline` (if any); stops at the first error.
async fn drain(mut body: axum::body::Body, deadline: Option<BodyDeadline>) {
    use hyper::body::Body as _;
    let reading = async {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {}
    };
    match deadline {
        Some(deadline) => {
            let _ = tokio::time::timeout_at(deadline.at, reading).await;
        }
        None => reading.await,
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or a `+json` type, any parameters.
fn is_json(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else { return false };
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_application_json_or_a_json_suffix_with_any_parameters() {
        for json in
            ["application/json", "Application/JSON; charset=utf-8", "application/problem+json", " application/json "]
        {
            assert!(is_json(&HeaderValue::from_static(json)), "{json}");
        }
        for other in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json"]
        {
            assert!(!is_json(&HeaderValue::from_static(other)), "{other}");
        }
    }
}
