//! Request bodies: JSON parsed with errors in the API's own format (axum's default rejections are
//! plain text), an empty body read as `{}`, the body-size limit answered with 413, and a body
//! declared as anything but JSON answered with 415 (one without a `Content-Type` is read as JSON).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(format!(
                    "the request body is over the server's limit of {} bytes; send fewer jobs per request",
                    crate::state::REQUEST_BODY_BYTES_MAX
                ))
            } else {
                ApiError::invalid(format!("the request body could not be read: {}", rejection.body_text()))
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid(format!("the request body is not valid for this endpoint: {e}")))
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
