//! [`IdempotencyLayer`]: the configuration, and which requests it guards.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use onceq_core::IdempotencyStore;
use tower::Layer;

use super::config::Config;
use super::limits::{
    IN_PROGRESS_TTL_DEFAULT, IN_PROGRESS_TTL_MAX, KEY_HEADER_DEFAULT, NAMESPACE_DEFAULT, NAMESPACE_LEN_MAX,
    REQUEST_BODY_BYTES_DEFAULT, REQUEST_BODY_BYTES_MAX, RESPONSE_BODY_BYTES_DEFAULT, RESPONSE_BODY_BYTES_MAX,
    RETENTION_DEFAULT, RETENTION_MAX,
};
use super::service::IdempotencyService;

/// Whether a response with this status gives its key back (so a retry runs the handler again)
/// instead of being stored: the default of [`IdempotencyLayer::release_on`].
///
/// True for server errors (5xx), `408 Request Timeout` and `429 Too Many Requests`: statuses
/// that tell the client to try again, which only helps if the retry runs.
pub fn retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS
}

/// Makes a tower HTTP service idempotent by key: see the [module docs](super) for the behaviour.
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn onceq_core::IdempotencyStore>) {
/// use std::time::Duration;
/// use http::Method;
/// use onceq_layer::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::new(store)
///     .required_for_methods([Method::POST])
///     .required_for_paths(|path| path.starts_with("/payments"))
///     .retention(Duration::from_secs(7 * 24 * 60 * 60));
/// # let _ = layer; }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Config,
}

/// A duration in milliseconds, checked to be 1 ms to `max`.
fn millis_within(what: &str, duration: Duration, max: Duration) -> u64 {
    assert!(
        !duration.is_zero() && duration <= max,
        "{what} must be between 1 ms and {} ms (got {duration:?})",
        max.as_millis()
    );
    // Within `max`, which is a u64 of milliseconds; sub-millisecond parts round up to 1 ms.
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl IdempotencyLayer {
    /// A layer over `store` with the defaults: key in `Idempotency-Key`, required on POST and
    /// PATCH (every path), claims of [`IN_PROGRESS_TTL_DEFAULT`], responses kept for
    /// [`RETENTION_DEFAULT`], request bodies up to [`REQUEST_BODY_BYTES_DEFAULT`], responses
    /// stored up to [`RESPONSE_BODY_BYTES_DEFAULT`], key released on [`retryable_status`]es,
    /// and fail-closed.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        IdempotencyLayer {
            config: Config {
                store,
                key_header: HeaderName::from_static(KEY_HEADER_DEFAULT),
                namespace: NAMESPACE_DEFAULT.to_owned(),
                required_methods: vec![Method::POST, Method::PATCH],
                required_paths: None,
                in_progress_ttl_ms: millis_within("in_progress_ttl", IN_PROGRESS_TTL_DEFAULT, IN_PROGRESS_TTL_MAX),
                retention_ms: millis_within("retention", RETENTION_DEFAULT, RETENTION_MAX),
                request_body_bytes_max: REQUEST_BODY_BYTES_DEFAULT,
                response_body_bytes_max: RESPONSE_BODY_BYTES_DEFAULT,
                fail_open: false,
                release_on: retryable_status,
            },
        }
    }

    /// Reads the key from `header` instead of `Idempotency-Key`.
    pub fn key_header(mut self, header: HeaderName) -> Self {
        self.config.key_header = header;
        self
    }

    /// Puts `namespace` before every key in the store (default `"http:"`). Give each service
    /// sharing a store its own, so equal keys of two services never meet.
    ///
    /// # Panics
    /// When `namespace` is over [`NAMESPACE_LEN_MAX`] bytes.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        assert!(
            namespace.len() <= NAMESPACE_LEN_MAX,
            "the namespace must be at most {NAMESPACE_LEN_MAX} bytes (got {})",
            namespace.len()
        );
        self.config.namespace = namespace;
        self
    }

    /// The methods on which a request must carry a key (default POST and PATCH): one without
    /// gets 400. An empty list makes the key optional everywhere. Requests with other unsafe
    /// methods (PUT, DELETE, ...) are still guarded when they carry a key.
    pub fn required_for_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.required_methods = methods.into_iter().collect();
        self
    }

    /// Requires the key only on paths for which `required` returns true (default: every path),
    /// for the methods of [`required_for_methods`](Self::required_for_methods). The path is the
    /// request's, without its query.
    pub fn required_for_paths(mut self, required: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.config.required_paths = Some(Arc::new(required));
        self
    }

    /// How long a request holds its key while the handler runs (default
    /// [`IN_PROGRESS_TTL_DEFAULT`]). Make it longer than the slowest handler: a claim that
    /// expires while its handler still runs lets a retry run the handler a second time. It is
    /// also the longest a crashed request blocks retries of its key.
    ///
    /// # Panics
    /// When `ttl` is under 1 ms or over [`IN_PROGRESS_TTL_MAX`].
    pub fn in_progress_ttl(mut self, ttl: Duration) -> Self {
        self.config.in_progress_ttl_ms = millis_within("in_progress_ttl", ttl, IN_PROGRESS_TTL_MAX);
        self
    }

    /// How long a stored response is replayed (default [`RETENTION_DEFAULT`]). After it, the
    /// key is forgotten and a request with it runs again.
    ///
    /// # Panics
    /// When `retention` is under 1 ms or over [`RETENTION_MAX`].
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention_ms = millis_within("retention", retention, RETENTION_MAX);
        self
    }

    /// The largest request body buffered to fingerprint a guarded request (default
    /// [`REQUEST_BODY_BYTES_DEFAULT`]); a larger one gets 413.
    ///
    /// # Panics
    /// When `limit` is over [`REQUEST_BODY_BYTES_MAX`].
    pub fn request_body_bytes_max(mut self, limit: usize) -> Self {
        assert!(limit <= REQUEST_BODY_BYTES_MAX, "request_body_bytes_max must be at most {REQUEST_BODY_BYTES_MAX}");
        self.config.request_body_bytes_max = limit;
        self
    }

    /// The largest response body stored for replay (default [`RESPONSE_BODY_BYTES_DEFAULT`]).
    /// A larger response is sent in full, and its key is completed without it: retries get
    /// [`Rejection::ResponseNotStored`] instead of running the handler again.
    ///
    /// # Panics
    /// When `limit` is over [`RESPONSE_BODY_BYTES_MAX`].
    pub fn response_body_bytes_max(mut self, limit: usize) -> Self {
        assert!(limit <= RESPONSE_BODY_BYTES_MAX, "response_body_bytes_max must be at most {RESPONSE_BODY_BYTES_MAX}");
        self.config.response_body_bytes_max = limit;
        self
    }

    /// When the store is unreachable: `false` (the default) answers 503 and runs nothing;
    /// `true` runs the request without idempotency and logs a warning. Fail open only where a
    /// duplicate effect is cheaper than an outage.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.config.fail_open = fail_open;
        self
    }

    /// Which statuses release the key instead of storing the response (default
    /// [`retryable_status`]): a retry of such a request runs the handler again.
    pub fn release_on(mut self, release: fn(StatusCode) -> bool) -> Self {
        self.config.release_on = release;
        self
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, Arc::new(self.config.clone()))
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyLayer").field(&self.config).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::idempotency::config::Decision;
    use crate::idempotency::error::Rejection;
    use http::{HeaderMap, HeaderValue};

    /// A store that is never called: `decide` does not touch the store.
    fn layer() -> IdempotencyLayer {
        let store = onceq_client::Client::new("http://127.0.0.1:1").unwrap();
        IdempotencyLayer::new(Arc::new(store))
    }

    fn with_key(key: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_static(key));
        headers
    }

    #[test]
    fn by_default_post_and_patch_require_a_key_and_other_unsafe_methods_may_carry_one() {
        let config = layer().config;
        let none = HeaderMap::new();
        let missing = Decision::Reject(Rejection::KeyMissing { header: HeaderName::from_static("idempotency-key") });
        assert_eq!(config.decide(&Method::POST, "/payments", &none), missing);
        assert_eq!(config.decide(&Method::PATCH, "/payments/1", &none), missing);
        assert_eq!(config.decide(&Method::POST, "/payments", &with_key("k1")), Decision::Guard("k1".into()));
        assert_eq!(config.decide(&Method::PUT, "/payments/1", &none), Decision::PassThrough);
        assert_eq!(config.decide(&Method::DELETE, "/payments/1", &with_key("k2")), Decision::Guard("k2".into()));
        assert_eq!(config.decide(&Method::GET, "/payments/1", &with_key("k3")), Decision::PassThrough);
        assert_eq!(config.decide(&Method::HEAD, "/payments/1", &none), Decision::PassThrough);
    }

    #[test]
    fn the_path_predicate_narrows_where_the_key_is_required() {
        let config = layer().required_for_paths(|path| path.starts_with("/payments")).config;
        let none = HeaderMap::new();
        assert!(matches!(config.decide(&Method::POST, "/payments", &none), Decision::Reject(_)));
        assert_eq!(config.decide(&Method::POST, "/webhooks", &none), Decision::PassThrough);
        assert_eq!(config.decide(&Method::POST, "/webhooks", &with_key("k")), Decision::Guard("k".into()));
    }

    #[test]
    fn listed_methods_are_required_even_when_safe_and_an_empty_list_requires_none() {
        let config = layer().required_for_methods([Method::GET]).config;
        assert!(matches!(config.decide(&Method::GET, "/", &HeaderMap::new()), Decision::Reject(_)));
        assert_eq!(config.decide(&Method::POST, "/", &HeaderMap::new()), Decision::PassThrough);
        let optional = layer().required_for_methods([]).config;
        assert_eq!(optional.decide(&Method::POST, "/", &HeaderMap::new()), Decision::PassThrough);
    }

    #[test]
    fn the_key_header_name_is_configurable() {
        let config = layer().key_header(HeaderName::from_static("x-request-key")).config;
        let mut headers = HeaderMap::new();
        headers.insert("x-request-key", HeaderValue::from_static("abc"));
        assert_eq!(config.decide(&Method::POST, "/", &headers), Decision::Guard("abc".into()));
        assert_eq!(
            config.decide(&Method::POST, "/", &with_key("abc")),
            Decision::Reject(Rejection::KeyMissing { header: HeaderName::from_static("x-request-key") })
        );
    }

    #[test]
    fn retryable_statuses_are_server_errors_timeouts_and_rate_limits() {
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(retryable_status(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [200, 201, 204, 301, 400, 404, 409, 422] {
            assert!(!retryable_status(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }

    #[test]
    fn durations_are_kept_in_milliseconds_and_bounded() {
        let config = layer().in_progress_ttl(Duration::from_micros(10)).retention(Duration::from_secs(2)).config;
        assert_eq!(config.in_progress_ttl_ms, 1);
        assert_eq!(config.retention_ms, 2000);
        let too_long =
            std::panic::catch_unwind(|| layer().in_progress_ttl(IN_PROGRESS_TTL_MAX + Duration::from_millis(1)));
        assert!(too_long.is_err());
        let zero = std::panic::catch_unwind(|| layer().retention(Duration::ZERO));
        assert!(zero.is_err());
        let long_namespace = std::panic::catch_unwind(|| layer().namespace("n".repeat(NAMESPACE_LEN_MAX + 1)));
        assert!(long_namespace.is_err());
    }
}
