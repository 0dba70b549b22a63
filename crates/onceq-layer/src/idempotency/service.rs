//! [`IdempotencyService`]: one request through the idempotency store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use onceq_core::{Begin, BeginOutcome, Complete, Error, Timestamp};
use tower::Service;

use super::body::{BoxError, ResponseBody};
use super::config::{Config, Decision};
use super::error::Rejection;
use super::limits::REPLAYED_HEADER;
use super::record::{NotStoredReason, Record};
use super::request::{buffer, fingerprint};

/// The future of an [`IdempotencyService`] call. Boxed: it awaits the store around the inner
/// service's future, and naming that state machine by hand buys nothing a caller can use.
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, E>> + Send>>;

/// The service [`IdempotencyLayer`](super::IdempotencyLayer) makes: it runs each guarded request
/// at most once per key and replays its response to retries.
///
/// Its error is the inner service's: every outcome of its own is a response (see
/// [`Rejection`]), so it fits wherever the inner service did (an axum router needs
/// `Infallible`).
#[derive(Clone)]
pub struct IdempotencyService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> IdempotencyService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        IdempotencyService { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for IdempotencyService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyService").field("inner", &self.inner).field("config", &self.config).finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready goes into the future; its clone waits for the next
        // `poll_ready` (tower's guidance for services that call the inner one later).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let config = Arc::clone(&self.config);
        Box::pin(handle(config, inner, request))
    }
}

/// Runs the inner service on `request` and passes its response through untouched.
async fn pass_through<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    Ok(inner.call(request).await?.map(ResponseBody::stream))
}

async fn handle<S, ReqBody, ResBody>(
    config: Arc<Config>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body + From<Bytes>,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let key = match config.decide(request.method(), request.uri().path(), request.headers()) {
        Decision::PassThrough => return pass_through(inner, request).await,
        Decision::Reject(rejection) => return Ok(rejection.into_response()),
        Decision::Guard(key) => key,
    };
    let (parts, body) = request.into_parts();
    let body = match buffer(&parts.headers, body, config.request_body_bytes_max).await {
        Ok(body) => body,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let claim = Claim { key: format!("{}{key}", config.namespace), owner: new_owner(), config: Arc::clone(&config) };
    let begin = Begin {
        key: claim.key.clone(),
        owner: claim.owner.clone(),
        ttl_ms: config.in_progress_ttl_ms,
        fingerprint: Some(fingerprint(&parts.method, &parts.uri, &body)),
    };
    let outcome = config.store.idempotency_begin(begin).await;
    let request = Request::from_parts(parts, ReqBody::from(body));
    match outcome {
        Ok(BeginOutcome::Acquired) => run(claim, inner, request).await,
        Ok(BeginOutcome::Completed { result }) => Ok(replay(&claim.key, &result)),
        Ok(BeginOutcome::InProgress { until, .. }) => {
            Ok(Rejection::InProgress { retry_after_seconds: seconds_until(until) }.into_response())
        }
        Err(Error::Conflict(_)) => Ok(Rejection::KeyReused.into_response()),
        Err(error @ (Error::Unavailable(_) | Error::Storage(_))) if config.fail_open => {
            tracing::warn!(key = %claim.key, %error, "idempotency store unavailable; running the request without idempotency (fail-open)");
            pass_through(inner, request).await
        }
        Err(error @ (Error::Unavailable(_) | Error::Storage(_))) => {
            tracing::error!(key = %claim.key, %error, "idempotency store unavailable; refusing the request (fail-closed)");
            Ok(Rejection::StoreUnavailable.into_response())
        }
        Err(error) => {
            tracing::error!(key = %claim.key, %error, "the idempotency store refused a begin");
            Ok(Rejection::Internal.into_response())
        }
    }
}

/// A key this request holds in the store.
struct Claim {
    /// The store key: namespace and the client's key.
    key: String,
    /// This request's owner id in the store.
    owner: String,
    config: Arc<Config>,
}

impl Claim {
    /// Records `record` under the key. A failure is logged: the response goes out anyway, since
    /// its effect happened; the claim then expires after its ttl and a retry runs again.
    async fn complete(&self, record: &Record) {
        let complete = Complete {
            key: self.key.clone(),
            owner: self.owner.clone(),
            result: record.encode(),
            retention_ms: self.config.retention_ms,
        };
        match self.config.store.idempotency_complete(complete).await {
            Ok(()) => {}
            Err(Error::Conflict(error)) => tracing::warn!(
                key = %self.key, %error,
                "the in-progress claim expired before the handler finished and another request took the key; \
                 its response was not stored (make in_progress_ttl longer than the slowest handler)"
            ),
            Err(error) => tracing::error!(
                key = %self.key, %error,
                "could not store the response; a retry after the claim expires will run the handler again"
            ),
        }
    }

    /// Gives the key up, so a retry runs the handler again. A failure is logged: the claim then
    /// expires after its ttl.
    async fn release(&self) {
        if let Err(error) = self.config.store.idempotency_release(&self.key, &self.owner).await {
            tracing::warn!(key = %self.key, %error, "could not release the idempotency key; it frees itself when its claim expires");
        }
    }
}

/// Runs the request under an acquired claim, then stores its response (or releases the key).
async fn run<S, ReqBody, ResBody>(
    claim: Claim,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<ResponseBody>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            // The service failed without a response: nothing to replay, so a retry should run.
            claim.release().await;
            return Err(error);
        }
    };
    if (claim.config.release_on)(response.status()) {
        claim.release().await;
        return Ok(response.map(ResponseBody::stream));
    }
    let (parts, body) = response.into_parts();
    let body = body.map_err(Into::into).boxed_unsync();
    // The record is completed before the response leaves, so a retry that follows the response
    // finds it completed, never in progress.
    match read_up_to(body, claim.config.response_body_bytes_max).await {
        Read::Whole { data, trailers } => {
            claim.complete(&Record::of_response(parts.status, &parts.headers, data.clone())).await;
            Ok(Response::from_parts(parts, ResponseBody::full(data, trailers)))
        }
        Read::TooLarge { prefix, rest } => {
            tracing::warn!(
                key = %claim.key, limit_bytes = claim.config.response_body_bytes_max,
                "response body over the storage limit; sent but not stored, so retries get 500 response_not_stored"
            );
            claim.complete(&Record::NotStored { status: parts.status, reason: NotStoredReason::BodyTooLarge }).await;
            Ok(Response::from_parts(parts, ResponseBody::prefixed(prefix, rest)))
        }
        Read::Failed { prefix, error } => {
            // A body that broke off is no response to replay; let a retry run.
            tracing::warn!(key = %claim.key, %error, "the response body failed; releasing the key");
            claim.release().await;
            Ok(Response::from_parts(parts, ResponseBody::failed(prefix, error)))
        }
    }
}

/// A response body read up to a limit.
enum Read {
    /// All of it, and its trailers.
    Whole { data: Bytes, trailers: Option<http::HeaderMap> },
    /// More than the limit: what was read, and the rest, unread.
    TooLarge { prefix: Bytes, rest: UnsyncBoxBody<Bytes, BoxError> },
    /// What was read before the body failed, and its error.
    Failed { prefix: Bytes, error: BoxError },
}

async fn read_up_to(mut body: UnsyncBoxBody<Bytes, BoxError>, limit_bytes: usize) -> Read {
    let mut data = BytesMut::new();
    let mut trailers: Option<http::HeaderMap> = None;
    loop {
        // Ends: the body ends (or fails), or the read passes the limit, which bounds the loop.
        match body.frame().await {
            None => return Read::Whole { data: data.freeze(), trailers },
            Some(Err(error)) => return Read::Failed { prefix: data.freeze(), error },
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > limit_bytes {
                        return Read::TooLarge { prefix: data.freeze(), rest: body };
                    }
                }
                Err(frame) => {
                    if let Ok(more) = frame.into_trailers() {
                        trailers.get_or_insert_with(http::HeaderMap::new).extend(more);
                    }
                }
            },
        }
    }
}

/// The response to a retry of a completed request: the stored one, marked as a replay.
fn replay(key: &str, result: &[u8]) -> Response<ResponseBody> {
    match Record::decode(result) {
        Ok(Record::Response { status, headers, body }) => {
            let mut response = Response::new(ResponseBody::full(body, None));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response.headers_mut().insert(HeaderName::from_static(REPLAYED_HEADER), HeaderValue::from_static("true"));
            response
        }
        Ok(record @ Record::NotStored { .. }) => {
            Rejection::ResponseNotStored { status: record.status() }.into_response()
        }
        Err(error) => {
            tracing::error!(%key, %error, "the record under an idempotency key is not a stored response of this layer");
            Rejection::Internal.into_response()
        }
    }
}

/// A fresh owner id for one request: 128 random bits, so no two requests share one.
fn new_owner() -> String {
    format!("http-{:032x}", rand::random::<u128>())
}

/// Whole seconds from now (this machine's clock) until `until`, at least 1: a `Retry-After`.
fn seconds_until(until: Timestamp) -> u64 {
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    until.ms_since(Timestamp::from_millis(now_ms)).div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_distinct_and_fit_the_store() {
        let (a, b) = (new_owner(), new_owner());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 32);
        assert!(a.len() <= onceq_core::idempotency::OWNER_LEN_MAX);
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        assert_eq!(seconds_until(Timestamp::from_millis(now - 5_000)), 1);
        let in_ten = seconds_until(Timestamp::from_millis(now + 9_500));
        assert!((10..=11).contains(&in_ten), "{in_ten}");
    }
}
