//! [`WebhookSink`]: POSTs each message to an HTTP endpoint with `Idempotency-Key: <dedup id>`.
//!
//! # Destinations
//!
//! The sink has one base URL (`onceq relay --sink https://hooks.example.com/outbox/`); a
//! message's destination is a path relative to it: `orders/created` is POSTed to
//! `https://hooks.example.com/outbox/orders/created`, and `.` to the base URL itself. A
//! destination that is an absolute URL, starts with `/`, or has a `..` segment is refused
//! (parked), so that staged data cannot send requests outside the configured endpoint.
//!
//! # Requests
//!
//! The body is the payload. Every staged header is sent as an HTTP header, except the ones the
//! sink owns (`host`, `content-length`, `transfer-encoding`, `connection`, `idempotency-key`),
//! which park the message. `Content-Type` is the staged `content-type` header, else
//! `application/json` when the payload is JSON, else `application/octet-stream`.
//!
//! # Outcomes
//!
//! A 2xx answer confirms the publish. Retried later (transient): connection failures, timeouts,
//! 408, 429 and every 5xx. Parked (permanent): every other answer (other 4xx, and 1xx or 3xx
//! left after redirects). The endpoint should honour `Idempotency-Key` (e.g. with onceq's
//! `IdempotencyLayer`): a relay that dies between publish and mark sends the message again with
//! the same key.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{StatusCode, Url};

use crate::{OutboxError, OutboxMessage, PublishError, Sink};

/// Headers the sink sets itself: a staged message may not set them.
const RESERVED_HEADERS: &[&str] = &["host", "content-length", "transfer-encoding", "connection", "idempotency-key"];
/// How much of an error answer's body goes into the message's last error.
const ERROR_BODY_BYTES_MAX: usize = 256;
/// Timeout of one request unless told otherwise.
pub const WEBHOOK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// POSTs outbox messages to paths under one base URL.
#[derive(Debug, Clone)]
pub struct WebhookSink {
    client: reqwest::Client,
    base: Url,
}

impl WebhookSink {
    /// A sink posting under `base_url` (`http://` or `https://`; a missing trailing `/` is
    /// added, so destinations are paths under it), each request bounded by `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<WebhookSink, OutboxError> {
        let mut base = Url::parse(base_url)
            .map_err(|e| OutboxError::InvalidOptions(format!("webhook URL {base_url:?} is not valid: {e}")))?;
        match base.scheme() {
            "http" => {}
            "https" if cfg!(feature = "rustls") => {}
            "https" => {
                return Err(OutboxError::InvalidOptions(format!(
                    "webhook URL {base_url:?} needs TLS, and this build has none: build onceq-outbox with the \
                     `rustls` feature, or terminate TLS in a local proxy"
                )))
            }
            other => {
                return Err(OutboxError::InvalidOptions(format!(
                    "webhook URL {base_url:?} has scheme {other:?}; use http:// or https://"
                )))
            }
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(OutboxError::InvalidOptions(format!(
                "webhook URL {base_url:?} has a query or fragment; give a base path only"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| OutboxError::InvalidOptions(format!("cannot build the webhook HTTP client: {e}")))?;
        Ok(WebhookSink { client, base })
    }

    /// The URL a destination is POSTed to, or why it is refused.
    pub fn url_of(&self, destination: &str) -> Result<Url, PublishError> {
        if destination == "." {
            return Ok(self.base.clone());
        }
        let refused = |why: &str| {
            Err(PublishError::Permanent(format!(
                "webhook destination {destination:?} {why}; use a path relative to {}",
                self.base
            )))
        };
        if destination.starts_with('/') || destination.contains("://") || destination.starts_with("//") {
            return refused("is absolute");
        }
        let path = destination.split(['?', '#']).next().unwrap_or_default();
        if path.split('/').any(|segment| segment == ".." || segment.eq_ignore_ascii_case("%2e%2e")) {
            return refused("has a .. segment");
        }
        match self.base.join(destination) {
            Ok(url) if url.as_str().starts_with(self.base.as_str()) => Ok(url),
            Ok(_) => refused("leaves the base URL"),
            Err(e) => refused(&format!("is not a valid path ({e})")),
        }
    }
}

#[async_trait]
impl Sink for WebhookSink {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError> {
        let url = self.url_of(&message.destination)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            let lower = name.to_ascii_lowercase();
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(PublishError::Permanent(format!("header {name:?} is set by the webhook sink itself")));
            }
            let name = HeaderName::from_bytes(lower.as_bytes())
                .map_err(|e| PublishError::Permanent(format!("header name {name:?} is not valid in HTTP: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| PublishError::Permanent(format!("header {name} has a value not valid in HTTP: {e}")))?;
            headers.insert(name, value);
        }
        if !headers.contains_key(CONTENT_TYPE) {
            let json = serde_json::from_slice::<serde::de::IgnoredAny>(&message.payload).is_ok();
            let content_type = if json { "application/json" } else { "application/octet-stream" };
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        let key = HeaderValue::from_str(dedup_id)
            .map_err(|e| PublishError::Permanent(format!("dedup id {dedup_id:?} is not a valid header value: {e}")))?;
        headers.insert(HeaderName::from_static("idempotency-key"), key);
        let response = self.client.post(url.clone()).headers(headers).body(message.payload.clone()).send().await;
        let response = match response {
            Ok(response) => response,
            Err(error) if error.is_builder() => {
                return Err(PublishError::Permanent(format!("cannot build the request to {url}: {error}")))
            }
            Err(error) => return Err(PublishError::Transient(format!("POST {url} failed: {error}"))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.bytes().await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES_MAX)]).into_owned();
        let error = format!("POST {url} answered {status}: {body}");
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(PublishError::Transient(error))
        } else {
            Err(PublishError::Permanent(error))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::strategy::Strategy as _;

    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Fuzzing (issue 25): whatever destination a stored message names, the URL it is posted
        /// to stays under the base URL, or the destination is refused; never a panic.
        #[test]
        fn any_destination_stays_under_the_base_url_or_is_refused(
            destination in proptest::prop_oneof![
                proptest::string::string_regex(".{0,40}").unwrap(),
                proptest::collection::vec(
                    proptest::sample::select(&["a", "..", ".", "%2e%2E", ".%2e", "%2e.", "%2F", "//", "\\", "?x=..", "#f",
                        "http:", "evil.com", "@", ":", "%", "~"][..]),
                    0..8,
                ).prop_map(|parts: Vec<&str>| parts.join("/")),
            ],
        ) {
            let sink = WebhookSink::new("http://127.0.0.1:9/hooks/in", WEBHOOK_TIMEOUT_DEFAULT).unwrap();
            if let Ok(url) = sink.url_of(&destination) {
                proptest::prop_assert!(
                    url.as_str().starts_with("http://127.0.0.1:9/hooks/"),
                    "{destination:?} is posted to {url}"
                );
            }
        }
    }

    #[test]
    fn destinations_stay_under_the_base_url() -> Result<(), OutboxError> {
        let sink = WebhookSink::new("http://127.0.0.1:9/hooks", WEBHOOK_TIMEOUT_DEFAULT)?;
        let url = |d: &str| sink.url_of(d).map(|u| u.to_string()).map_err(|e| e.to_string());
        assert_eq!(url("."), Ok("http://127.0.0.1:9/hooks/".to_owned()));
        assert_eq!(url("orders/created"), Ok("http://127.0.0.1:9/hooks/orders/created".to_owned()));
        assert_eq!(url("orders?x=1"), Ok("http://127.0.0.1:9/hooks/orders?x=1".to_owned()));
        for bad in ["/etc", "http://evil/", "//evil/x", "../x", "a/../../x", "a/%2E%2E/x"] {
            let refused = url(bad);
            assert!(refused.as_ref().is_err_and(|e| e.contains("relative to")), "{bad}: {refused:?}");
        }
        let scheme = WebhookSink::new("ftp://h/", WEBHOOK_TIMEOUT_DEFAULT).map(|_| ());
        assert!(matches!(&scheme, Err(OutboxError::InvalidOptions(m)) if m.contains("scheme")), "{scheme:?}");
        Ok(())
    }
}
