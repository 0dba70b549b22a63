//! What an [`IdempotencyLayer`](super::IdempotencyLayer) is configured with, and which requests
//! it guards ([`Config::decide`]): shared by the layer and the service it makes.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode};
use onceq_core::IdempotencyStore;

use super::error::Rejection;
use super::request::read_key;

/// Decides, from a request's path, whether the key is required there.
type PathPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What an [`IdempotencyService`](super::IdempotencyService) does, shared by its clones.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) store: Arc<dyn IdempotencyStore>,
    /// The header the client's key is read from.
    pub(crate) key_header: HeaderName,
    /// Put before the client's key to make the store key, so keys of other users of the store
    /// (workers, other services) never collide with these.
    pub(crate) namespace: String,
    /// Methods on which a request must carry a key (where `required_paths` also says so).
    pub(crate) required_methods: Vec<Method>,
    /// Paths on which the key is required; `None` is every path.
    pub(crate) required_paths: Option<PathPredicate>,
    pub(crate) in_progress_ttl_ms: u64,
    pub(crate) retention_ms: u64,
    pub(crate) request_body_bytes_max: usize,
    pub(crate) response_body_bytes_max: usize,
    /// Whether requests pass through without idempotency when the store is unreachable.
    pub(crate) fail_open: bool,
    /// Statuses whose responses release the key instead of being stored.
    pub(crate) release_on: fn(StatusCode) -> bool,
}

/// What the layer does with one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Hand it to the inner service untouched.
    PassThrough,
    /// Run it at most once per this key (the client's key, without the namespace).
    Guard(String),
    /// Answer it with this error.
    Reject(Rejection),
}

impl Config {
    /// Which requests the layer guards:
    /// - a method in `required_methods` on a path where the key is required: a key must be
    ///   there (400 without it);
    /// - any other request whose method is not safe (RFC 9110: GET, HEAD, OPTIONS and TRACE
    ///   change nothing, so they have no effect to guard) is guarded when it carries a key and
    ///   passes through untouched when it does not;
    /// - safe methods pass through untouched, key or not, unless listed in `required_methods`.
    pub(crate) fn decide(&self, method: &Method, path: &str, headers: &HeaderMap) -> Decision {
        let method_requires = self.required_methods.contains(method);
        if !method_requires && method.is_safe() {
            return Decision::PassThrough;
        }
        match read_key(headers, &self.key_header) {
            Err(rejection) => Decision::Reject(rejection),
            Ok(Some(key)) => Decision::Guard(key),
            Ok(None) if method_requires && self.required_paths.as_ref().is_none_or(|required| required(path)) => {
                Decision::Reject(Rejection::KeyMissing { header: self.key_header.clone() })
            }
            Ok(None) => Decision::PassThrough,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key_header", &self.key_header)
            .field("namespace", &self.namespace)
            .field("required_methods", &self.required_methods)
            .field("required_paths", &self.required_paths.as_ref().map(|_| "<predicate>"))
            .field("in_progress_ttl_ms", &self.in_progress_ttl_ms)
            .field("retention_ms", &self.retention_ms)
            .field("request_body_bytes_max", &self.request_body_bytes_max)
            .field("response_body_bytes_max", &self.response_body_bytes_max)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}
