//! The layer's behaviours, end to end: an axum app whose handlers count their invocations, behind
//! the layer, over real stores (the embedded SQLite store on a manual clock, an HTTP client of a
//! real `onceq serve` router, and a client of a closed port for an unreachable store). Requests go
//! through the app as a tower service; no mocks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use onceq_core::{IdempotencyStore, ManualClock, Timestamp};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

use super::limits::KEY_LEN_MAX;
use super::{IdempotencyLayer, Rejection};

/// How long any one step of a test may take before the test fails instead of hanging.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(STEP_TIMEOUT, future).await.unwrap_or_else(|_| panic!("{what} took over {STEP_TIMEOUT:?}"))
}

/// What the handlers share: the invocation count, and a gate that holds the first invocation.
#[derive(Default)]
struct Handlers {
    calls: AtomicUsize,
    /// When set, the first invocation signals `entered` and waits for `proceed`.
    hold_first: bool,
    entered: Notify,
    proceed: Notify,
}

impl Handlers {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts an invocation and returns its number, holding the first one if asked to.
    async fn invoke(&self) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.hold_first && n == 1 {
            self.entered.notify_one();
            self.proceed.notified().await;
        }
        n
    }
}

/// `POST /payments`: charges (counts) and answers 201 with the count, the request body, and
/// headers that are (`x-charge`, a repeated `x-tag`) and are not (`set-cookie`) replayed.
async fn charge(State(handlers): State<Arc<Handlers>>, body: String) -> Response<Body> {
    let n = handlers.invoke().await;
    Response::builder()
        .status(StatusCode::CREATED)
        .header(CONTENT_TYPE, "application/json")
        .header("x-charge", n.to_string())
        .header("x-tag", "a")
        .header("x-tag", "b")
        .header(SET_COOKIE, format!("session=s{n}"))
        .body(Body::from(format!(r#"{{"charge":{n},"request":{body:?}}}"#)))
        .unwrap()
}

/// `POST /flaky`: answers 500 on its first invocation, 201 afterwards.
async fn flaky(State(handlers): State<Arc<Handlers>>) -> (StatusCode, String) {
    match handlers.invoke().await {
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "database down".to_owned()),
        n => (StatusCode::CREATED, format!("charge {n}")),
    }
}

/// `POST /report`: a 64-byte body, over the limit the tests that use it configure.
async fn report(State(handlers): State<Arc<Handlers>>) -> String {
    let n = handlers.invoke().await;
    format!("{n:064}")
}

/// `GET|PUT /payments/{id}` and `POST /webhooks`: count and answer 200.
async fn plain(State(handlers): State<Arc<Handlers>>) -> String {
    format!("call {}", handlers.invoke().await)
}

fn app(handlers: Arc<Handlers>, layer: IdempotencyLayer) -> Router {
    Router::new()
        .route("/payments", post(charge))
        .route("/payments/{id}", get(plain).put(plain))
        .route("/flaky", post(flaky))
        .route("/report", post(report))
        .route("/webhooks", post(plain))
        .with_state(handlers)
        .layer(layer)
}

/// An embedded store in a temporary directory on a manual clock that starts at the real time.
struct Embedded {
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    _dir: TempDir,
}

impl Embedded {
    fn open() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let clock = ManualClock::new(Timestamp::from_millis(now));
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone())).unwrap();
        Embedded { store: Arc::new(store), clock, _dir: dir }
    }

    fn layer(&self) -> IdempotencyLayer {
        IdempotencyLayer::new(self.store.clone() as Arc<dyn IdempotencyStore>)
    }

    async fn close(self) {
        self.store.close().await;
    }
}

fn request(method: Method, uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

/// A response read whole.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The error code of a JSON error body, after checking the body's shape.
    fn error_code(&self) -> String {
        assert_eq!(self.headers.get(CONTENT_TYPE).unwrap(), "application/json");
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.len() > 20, "an actionable message: {message}");
        json["error"]["code"].as_str().unwrap().to_owned()
    }

    fn replayed(&self) -> bool {
        self.headers.get("idempotent-replayed").is_some_and(|v| v == "true")
    }
}

async fn read(response: Response<super::ResponseBody>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = within("reading a body", body.collect()).await.unwrap().to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

async fn send(app: &Router<()>, request: Request<Body>) -> Answer {
    let response = within("a request", app.clone().oneshot(request)).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = within("reading a body", body.collect()).await.unwrap().to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

/// Proves: the first request with a key runs the handler; a retry gets the identical response
/// (status, headers in order, body) marked as a replay, without running the handler, and without
/// the first caller's cookie.
#[tokio::test]
async fn a_retry_replays_the_stored_response_without_running_the_handler() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer());

    let first = send(&app, request(Method::POST, "/payments", Some("pay-1"), r#"{"amount":500}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), r#"{"charge":1,"request":"{\"amount\":500}"}"#);
    assert!(!first.replayed());
    assert_eq!(first.headers.get(SET_COOKIE).unwrap(), "session=s1");
    assert_eq!(handlers.calls(), 1);

    let retry = send(&app, request(Method::POST, "/payments", Some("pay-1"), r#"{"amount":500}"#)).await;
    assert_eq!(handlers.calls(), 1, "the handler did not run again");
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    assert!(retry.replayed());
    let mut expected = first.headers.clone();
    expected.remove(SET_COOKIE);
    expected.remove(CONTENT_LENGTH);
    let mut replayed = retry.headers.clone();
    replayed.remove("idempotent-replayed");
    replayed.remove(CONTENT_LENGTH);
    assert_eq!(replayed, expected);
    assert_eq!(retry.headers.get_all("x-tag").iter().collect::<Vec<_>>(), ["a", "b"]);

    // A second retry replays the same again; a new key runs.
    let again = send(&app, request(Method::POST, "/payments", Some("pay-1"), r#"{"amount":500}"#)).await;
    assert_eq!((again.status, again.body.clone(), again.replayed()), (first.status, first.body.clone(), true));
    let other = send(&app, request(Method::POST, "/payments", Some("pay-2"), r#"{"amount":500}"#)).await;
    assert_eq!(other.text(), r#"{"charge":2,"request":"{\"amount\":500}"}"#);
    assert_eq!(handlers.calls(), 2);
    embedded.close().await;
}

/// Proves: a duplicate that arrives while the first request is still running gets 409 with a
/// JSON error and `Retry-After`, and does not run the handler; once the first finishes, the
/// duplicate's retry gets the first's response.
#[tokio::test]
async fn a_concurrent_duplicate_gets_409_while_the_first_runs() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers { hold_first: true, ..Handlers::default() });
    let app = app(handlers.clone(), embedded.layer());

    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await }
    });
    within("the first request to reach the handler", handlers.entered.notified()).await;

    let duplicate = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT);
    assert_eq!(duplicate.error_code(), "idempotency_key_in_progress");
    let retry_after: u64 = duplicate.headers.get(RETRY_AFTER).unwrap().to_str().unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry_after), "until the 60 s claim ends: {retry_after}");
    assert_eq!(handlers.calls(), 1);

    handlers.proceed.notify_one();
    let first = within("the first request", first).await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.text(), r#"{"charge":1,"request":"{}"}"#);

    let retry = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!((retry.status, retry.body.clone(), retry.replayed()), (first.status, first.body.clone(), true));
    assert_eq!(handlers.calls(), 1);
    embedded.close().await;
}

/// Proves: a key reused for another request — another body, query, path or method — gets 422
/// with a JSON error and runs nothing; the original request still replays.
#[tokio::test]
async fn a_key_reused_for_another_request_gets_422() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer());

    let first = send(&app, request(Method::POST, "/payments", Some("pay-1"), r#"{"amount":500}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for (method, uri, body) in [
        (Method::POST, "/payments", r#"{"amount":501}"#),
        (Method::POST, "/payments?currency=eur", r#"{"amount":500}"#),
        (Method::POST, "/webhooks", r#"{"amount":500}"#),
        (Method::PUT, "/payments/1", r#"{"amount":500}"#),
    ] {
        let reused = send(&app, request(method.clone(), uri, Some("pay-1"), body)).await;
        assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY, "{method} {uri} {body}");
        assert_eq!(reused.error_code(), "idempotency_key_reused");
    }
    assert_eq!(handlers.calls(), 1);
    let retry = send(&app, request(Method::POST, "/payments", Some("pay-1"), r#"{"amount":500}"#)).await;
    assert!(retry.replayed());
    embedded.close().await;
}

/// Proves: a required route without a key gets 400 and runs nothing; a request the layer does not
/// guard (a safe method, an optional route without a key, a path outside the predicate) passes
/// through untouched, every time.
#[tokio::test]
async fn keys_are_required_where_configured_and_other_requests_pass_through() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let layer = embedded.layer().required_for_paths(|path| path != "/webhooks");
    let app = app(handlers.clone(), layer);

    let missing = send(&app, request(Method::POST, "/payments", None, "{}")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.error_code(), "idempotency_key_missing");
    assert!(missing.text().contains("idempotency-key"), "{}", missing.text());
    assert_eq!(handlers.calls(), 0);

    for expected in 1..=2 {
        let webhook = send(&app, request(Method::POST, "/webhooks", None, "{}")).await;
        assert_eq!((webhook.status, webhook.text()), (StatusCode::OK, format!("call {expected}").as_str()));
        assert!(!webhook.replayed());
    }
    for expected in 3..=4 {
        // PUT is not required by default: without a key it passes through.
        let put = send(&app, request(Method::PUT, "/payments/1", None, "{}")).await;
        assert_eq!((put.status, put.text()), (StatusCode::OK, format!("call {expected}").as_str()));
    }
    for expected in 5..=6 {
        // GET is safe: even with a key it passes through, every time.
        let read = send(&app, request(Method::GET, "/payments/1", Some("read-1"), "")).await;
        assert_eq!((read.status, read.text()), (StatusCode::OK, format!("call {expected}").as_str()));
        assert!(!read.replayed());
    }
    assert_eq!(handlers.calls(), 6);
    embedded.close().await;
}

/// Proves: an invalid key gets 400 with a JSON error and runs nothing.
#[tokio::test]
async fn an_invalid_key_gets_400() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer());
    let long = "k".repeat(KEY_LEN_MAX + 1);
    let answer = send(&app, request(Method::POST, "/payments", Some(&long), "{}")).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "idempotency_key_invalid");
    assert_eq!(handlers.calls(), 0);
    embedded.close().await;
}

/// Proves: a 5xx from the handler is passed to the client and releases the key, so the retry
/// runs the handler again; its success is then stored and replayed.
#[tokio::test]
async fn a_server_error_releases_the_key_so_the_retry_runs() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer());

    let failed = send(&app, request(Method::POST, "/flaky", Some("flaky-1"), "")).await;
    assert_eq!((failed.status, failed.text()), (StatusCode::INTERNAL_SERVER_ERROR, "database down"));
    let retry = send(&app, request(Method::POST, "/flaky", Some("flaky-1"), "")).await;
    assert_eq!((retry.status, retry.text(), retry.replayed()), (StatusCode::CREATED, "charge 2", false));
    let again = send(&app, request(Method::POST, "/flaky", Some("flaky-1"), "")).await;
    assert_eq!((again.status, again.text(), again.replayed()), (StatusCode::CREATED, "charge 2", true));
    assert_eq!(handlers.calls(), 2);
    embedded.close().await;
}

/// Proves: when the inner service fails (an error, no response), the error reaches the caller
/// and the key is released, so the retry runs; this works for any tower service over
/// `http::Request`, not only axum.
#[tokio::test]
async fn an_inner_service_error_releases_the_key() {
    let embedded = Embedded::open();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::service_fn({
        let calls = calls.clone();
        move |_request: Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    Err("connection to the ledger lost")
                } else {
                    Ok(Response::new(Full::new(Bytes::from(format!("charge {n}")))))
                }
            }
        }
    });
    let service = embedded.layer().layer(service);
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri("/charge")
            .header("idempotency-key", "svc-1")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };

    let error = within("a request", service.clone().oneshot(request())).await.unwrap_err();
    assert_eq!(error, "connection to the ledger lost");
    let retry = read(within("a request", service.clone().oneshot(request())).await.unwrap()).await;
    assert_eq!((retry.status, retry.text(), retry.replayed()), (StatusCode::OK, "charge 2", false));
    let again = read(within("a request", service.clone().oneshot(request())).await.unwrap()).await;
    assert_eq!((again.text(), again.replayed()), ("charge 2", true));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    embedded.close().await;
}

/// Proves: an in-progress claim whose holder is stuck past the ttl expires, and a later request
/// with the key acquires it and runs; the stuck request's late response still reaches its
/// client but is not stored over the newer one.
#[tokio::test]
async fn an_expired_claim_lets_a_later_request_acquire_the_key() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers { hold_first: true, ..Handlers::default() });
    let layer = embedded.layer().in_progress_ttl(Duration::from_millis(300));
    let app = app(handlers.clone(), layer);

    let stuck = tokio::spawn({
        let app = app.clone();
        async move { send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await }
    });
    within("the first request to reach the handler", handlers.entered.notified()).await;
    let early = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!(early.status, StatusCode::CONFLICT, "the claim is live");

    embedded.clock.advance(301);
    let later = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!(
        (later.status, later.text(), later.replayed()),
        (StatusCode::CREATED, r#"{"charge":2,"request":"{}"}"#, false)
    );

    handlers.proceed.notify_one();
    let stuck = within("the stuck request", stuck).await.unwrap();
    assert_eq!((stuck.status, stuck.text()), (StatusCode::CREATED, r#"{"charge":1,"request":"{}"}"#));

    let retry = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!((retry.text(), retry.replayed()), (later.text(), true), "the later request's response is kept");
    assert_eq!(handlers.calls(), 2);
    embedded.close().await;
}

/// Proves: a stored response is replayed for its retention and forgotten after it: the key then
/// runs again.
#[tokio::test]
async fn a_stored_response_is_forgotten_after_its_retention() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer().retention(Duration::from_secs(10)));

    send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    embedded.clock.advance(9_999);
    assert!(send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await.replayed());
    embedded.clock.advance(2);
    let after = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!((after.text(), after.replayed()), (r#"{"charge":2,"request":"{}"}"#, false));
    assert_eq!(handlers.calls(), 2);
    embedded.close().await;
}

/// Proves: with the store unreachable (a client of a closed port), the layer fails closed by
/// default — 503 with a JSON error and `Retry-After`, the handler not run — and, configured to
/// fail open, runs the request without idempotency every time.
#[tokio::test]
async fn an_unreachable_store_fails_closed_by_default_and_open_when_configured() {
    let unreachable: Arc<dyn IdempotencyStore> = Arc::new(onceq_client::Client::new("http://127.0.0.1:1").unwrap());
    let handlers = Arc::new(Handlers::default());

    let closed = app(handlers.clone(), IdempotencyLayer::new(unreachable.clone()));
    let refused = send(&closed, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "unavailable");
    assert_eq!(refused.headers.get(RETRY_AFTER).unwrap(), "2");
    assert_eq!(handlers.calls(), 0);

    let open = app(handlers.clone(), IdempotencyLayer::new(unreachable).fail_open(true));
    for expected in 1..=2 {
        let ran = send(&open, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
        assert_eq!(ran.status, StatusCode::CREATED);
        assert_eq!(ran.text(), format!(r#"{{"charge":{expected},"request":"{{}}"}}"#));
        assert!(!ran.replayed());
    }
    assert_eq!(handlers.calls(), 2);
}

/// Proves: a request body over the buffer limit gets 413 with a JSON error and runs nothing,
/// whether its length is declared or only found by reading.
#[tokio::test]
async fn a_request_body_over_the_buffer_limit_gets_413() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer().request_body_bytes_max(16));

    let at_limit = send(&app, request(Method::POST, "/payments", Some("pay-1"), &"x".repeat(16))).await;
    assert_eq!(at_limit.status, StatusCode::CREATED);
    let streamed = send(&app, request(Method::POST, "/payments", Some("pay-2"), &"x".repeat(17))).await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(streamed.error_code(), "payload_too_large");
    let mut declared = request(Method::POST, "/payments", Some("pay-3"), "");
    declared.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from_static("1000000"));
    let declared = send(&app, declared).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(handlers.calls(), 1);
    embedded.close().await;
}

/// Proves: a response over the storage limit reaches its client in full, and its key stays
/// completed: a retry gets 500 `response_not_stored` marked as a replay, and the handler does
/// not run a second time.
#[tokio::test]
async fn a_response_over_the_storage_limit_is_sent_but_not_replayed() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), embedded.layer().response_body_bytes_max(16));

    let first = send(&app, request(Method::POST, "/report", Some("report-1"), "")).await;
    assert_eq!((first.status, first.text()), (StatusCode::OK, format!("{:064}", 1).as_str()));
    let retry = send(&app, request(Method::POST, "/report", Some("report-1"), "")).await;
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.error_code(), "response_not_stored");
    assert!(retry.replayed());
    assert_eq!(handlers.calls(), 1);
    embedded.close().await;
}

/// Proves: the namespace separates layers sharing a store: the same key under two namespaces is
/// two keys.
#[tokio::test]
async fn namespaces_keep_equal_keys_of_two_services_apart() {
    let embedded = Embedded::open();
    let handlers = Arc::new(Handlers::default());
    let billing = app(handlers.clone(), embedded.layer().namespace("billing:"));
    let shipping = app(handlers.clone(), embedded.layer().namespace("shipping:"));
    let a = send(&billing, request(Method::POST, "/payments", Some("k"), "{}")).await;
    let b = send(&shipping, request(Method::POST, "/payments", Some("k"), "{}")).await;
    assert_eq!((a.replayed(), b.replayed()), (false, false));
    assert_eq!(handlers.calls(), 2);
    embedded.close().await;
}

/// Proves: the layer works over a remote store — an HTTP client of a real `onceq serve` router —
/// whose results must be JSON text: the response is stored, replayed and refused as over HTTP.
#[tokio::test]
async fn the_layer_works_over_a_remote_store() {
    let dir = tempfile::tempdir().unwrap();
    let backing = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let api = onceq_server::Api::new(backing.clone() as Arc<dyn onceq_core::Store>)
        .idempotency(backing.clone() as Arc<dyn IdempotencyStore>)
        .router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, api).await });
    let remote = Arc::new(onceq_client::Client::new(format!("http://{address}")).unwrap());

    let handlers = Arc::new(Handlers::default());
    let app = app(handlers.clone(), IdempotencyLayer::new(remote));
    let first = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    let retry = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{}")).await;
    assert_eq!((retry.status, retry.body.clone(), retry.replayed()), (first.status, first.body.clone(), true));
    let reused = send(&app, request(Method::POST, "/payments", Some("pay-1"), "{\"other\":1}")).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(handlers.calls(), 1);

    server.abort();
    let _ = server.await;
    backing.close().await;
}

/// Proves: the rejection rides in the response's extensions, so outer layers can tell it.
#[tokio::test]
async fn rejections_are_in_the_response_extensions() {
    let embedded = Embedded::open();
    let app = app(Arc::new(Handlers::default()), embedded.layer());
    let response = within("a request", app.oneshot(request(Method::POST, "/payments", None, ""))).await.unwrap();
    assert_eq!(
        response.extensions().get::<Rejection>(),
        Some(&Rejection::KeyMissing { header: http::HeaderName::from_static("idempotency-key") })
    );
    embedded.close().await;
}

/// A response body that yields `part` and then fails, as a handler streaming from a source that
/// breaks off does.
struct BreaksOff {
    sent: bool,
}

impl http_body::Body for BreaksOff {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.sent, true) {
            std::task::Poll::Ready(Some(Err(std::io::Error::other("upstream closed"))))
        } else {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"part")))))
        }
    }
}

/// Proves: a response whose body fails midway reaches its client as far as it got, then the
/// error; its key is released, so the retry runs the handler again.
#[tokio::test]
async fn a_response_body_that_fails_releases_the_key() {
    let embedded = Embedded::open();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::service_fn({
        let calls = calls.clone();
        move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(Response::new(BreaksOff { sent: false })) }
        }
    });
    let service = embedded.layer().layer(service);
    let request = || {
        Request::builder()
            .method(Method::POST)
            .uri("/export")
            .header("idempotency-key", "export-1")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for expected_calls in 1..=2 {
        let response = within("a request", service.clone().oneshot(request())).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let first = within("a frame", body.frame()).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"part"));
        let error = within("a frame", body.frame()).await.unwrap().unwrap_err();
        assert_eq!(error.to_string(), "upstream closed");
        assert_eq!(calls.load(Ordering::SeqCst), expected_calls, "every attempt runs: nothing was stored");
    }
    embedded.close().await;
}
