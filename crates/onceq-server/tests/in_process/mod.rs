//! Drives the router in-process: [`Server`] is the API over a fresh embedded store (with its
//! idempotency store, as `onceq serve` runs it) in a temporary directory, and [`Api`] sends it
//! requests with `tower::ServiceExt::oneshot` and checks the API's response shapes. No process,
//! no socket: these tests see exactly what the router answers.
//!
//! Each test makes its own [`Server`], so tests run in parallel without sharing anything. Not
//! every test uses every helper.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use onceq_core::{Clock, IdempotencyStore, Store};
use onceq_server::{Auth, TokenConfig};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;
use tempfile::TempDir;
use tower::ServiceExt;

/// A bearer token of a test: its secret and its permissions (queue-name patterns).
pub struct TokenSpec {
    /// Name (for the server's logs).
    pub name: &'static str,
    /// The secret the client sends.
    pub secret: &'static str,
    /// Patterns it may enqueue to.
    pub produce: &'static [&'static str],
    /// Patterns it may lease and settle on.
    pub consume: &'static [&'static str],
    /// Patterns it may administer.
    pub admin: &'static [&'static str],
}

/// The router over a fresh embedded store; the store's directory goes when it is dropped.
pub struct Server {
    router: Router,
    /// The store behind the router, for tests that arrange or inspect state directly.
    pub store: SqliteStore,
    /// The store's data directory; dropped after the store (fields drop in declaration order).
    _dir: TempDir,
}

impl Server {
    /// Auth off, on the system clock.
    pub async fn start() -> Server {
        Server::build(None, &[]).await
    }

    /// Auth off, on `clock`: a test that must make a lease expire advances it instead of sleeping.
    pub async fn start_on(clock: Arc<dyn Clock>) -> Server {
        Server::build(Some(clock), &[]).await
    }

    /// Auth on, with these tokens.
    pub async fn start_with_tokens(tokens: &[TokenSpec]) -> Server {
        Server::build(None, tokens).await
    }

    async fn build(clock: Option<Arc<dyn Clock>>, tokens: &[TokenSpec]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut options = SqliteOptions::new(dir.path());
        options.clock = clock;
        let store = SqliteStore::open(options).unwrap();
        let auth = if tokens.is_empty() {
            Auth::disabled()
        } else {
            let list = |patterns: &[&str]| patterns.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
            let configs: Vec<TokenConfig> = tokens
                .iter()
                .map(|t| TokenConfig {
                    name: t.name.to_owned(),
                    sha256: onceq_server::hash_token(t.secret),
                    produce: list(t.produce),
                    consume: list(t.consume),
                    admin: list(t.admin),
                })
                .collect();
            Auth::from_tokens(&configs).unwrap()
        };
        let shared = Arc::new(store.clone());
        let router = onceq_server::Api::new(shared.clone() as Arc<dyn Store>)
            .idempotency(shared as Arc<dyn IdempotencyStore>)
            .auth(auth)
            .router();
        Server { router, store, _dir: dir }
    }

    /// A client without a token.
    pub fn api(&self) -> Api {
        Api { router: self.router.clone(), token: None }
    }

    /// A client with this bearer token.
    pub fn api_with_token(&self, token: &str) -> Api {
        Api { router: self.router.clone(), token: Some(token.to_owned()) }
    }
}

/// A client of one router, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: Option<String>,
}

/// One HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Request line, for failure messages.
    pub request: String,
    /// Status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The body.
    pub text: String,
}

impl Reply {
    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.request, self.text))
    }

    /// Asserts `status` and a JSON body; returns the body.
    #[track_caller]
    pub fn ok(self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}: unexpected status; body: {}", self.request, self.text);
        assert_json_content_type(&self);
        self.json()
    }

    /// Asserts 204 and an empty body.
    #[track_caller]
    pub fn no_content(self) {
        assert_eq!(self.status, 204, "{}: unexpected status; body: {}", self.request, self.text);
        assert_eq!(self.text, "", "{}: a 204 has no body", self.request);
    }

    /// Asserts an error response of the API: this status, a JSON content type, and the body
    /// `{"error": {"code": code, "message": <non-empty>}}` with nothing else. Returns the message.
    #[track_caller]
    pub fn err(self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{}: unexpected status; body: {}", self.request, self.text);
        assert_json_content_type(&self);
        error_message(&self.request, &self.json(), code)
    }
}

/// Asserts that `body` is exactly `{"error": {"code": code, "message": <non-empty>}}`; returns
/// the message.
#[track_caller]
pub fn error_message(context: &str, body: &Value, code: &str) -> String {
    let object = body.as_object().unwrap_or_else(|| panic!("{context}: error body is not an object: {body}"));
    assert_eq!(object.keys().collect::<Vec<_>>(), ["error"], "{context}: error body has other keys: {body}");
    assert_error_detail(context, &body["error"], code)
}

/// Asserts that `detail` is exactly `{"code": code, "message": <non-empty>}`; returns the message.
#[track_caller]
pub fn assert_error_detail(context: &str, detail: &Value, code: &str) -> String {
    let object = detail.as_object().unwrap_or_else(|| panic!("{context}: error detail is not an object: {detail}"));
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort();
    assert_eq!(keys, ["code", "message"], "{context}: error detail keys: {detail}");
    assert_eq!(detail["code"], code, "{context}: error code; detail: {detail}");
    let message = detail["message"].as_str().unwrap_or_else(|| panic!("{context}: message is not a string: {detail}"));
    assert!(!message.trim().is_empty(), "{context}: empty error message");
    message.to_owned()
}

#[track_caller]
fn assert_json_content_type(reply: &Reply) {
    let content_type = reply.content_type.as_deref().unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "{}: content type is {content_type:?}, not JSON; body: {}",
        reply.request,
        reply.text
    );
}

impl Api {
    /// A request with a raw body and extra headers.
    pub async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>, headers: &[(&str, &str)]) -> Reply {
        let request_line = format!("{method} {path}");
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = match body {
            Some(body) => builder.header("content-type", "application/json").body(Body::from(body)),
            None => builder.body(Body::empty()),
        }
        .unwrap_or_else(|e| panic!("{request_line}: cannot build the request: {e}"));
        let response = self.router.clone().oneshot(request).await.unwrap_or_else(|e| match e {});
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, retry_after) = (header("content-type"), header("retry-after"));
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|e| panic!("{request_line}: cannot read the body: {e}"));
        let text = String::from_utf8(bytes.to_vec()).unwrap_or_else(|e| panic!("{request_line}: body not UTF-8: {e}"));
        Reply { request: request_line, status, content_type, retry_after, text }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// `POST path` without a body.
    pub async fn post_empty(&self, path: &str) -> Reply {
        self.send(Method::POST, path, None, &[]).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(body.to_string().into_bytes()), &[]).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Enqueues one job per payload to `queue` in one request; returns the new ids.
    pub async fn enqueue(&self, queue: &str, payloads: &[Value]) -> Vec<String> {
        let jobs: Vec<Value> = payloads.iter().map(|p| serde_json::json!({ "payload": p })).collect();
        let body = self.post(&format!("/v1/queues/{queue}/jobs"), serde_json::json!({ "jobs": jobs })).await.ok(200);
        let entries = body["jobs"].as_array().expect("jobs array");
        assert_eq!(entries.len(), payloads.len(), "one entry per job: {body}");
        entries
            .iter()
            .map(|entry| {
                assert_eq!(entry["duplicate"], false, "fresh jobs: {body}");
                id_of(entry)
            })
            .collect()
    }

    /// Leases up to `max_jobs` from `queue` with this visibility timeout; returns the jobs.
    pub async fn lease(&self, queue: &str, max_jobs: u32, visibility_timeout_ms: u64) -> Vec<Value> {
        let body = self
            .post(
                &format!("/v1/queues/{queue}/leases"),
                serde_json::json!({ "max_jobs": max_jobs, "visibility_timeout_ms": visibility_timeout_ms }),
            )
            .await
            .ok(200);
        body["jobs"].as_array().expect("jobs array").clone()
    }
}

/// The `id` string of a JSON object.
#[track_caller]
pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap_or_else(|| panic!("no string id in {value}")).to_owned()
}

/// The `lease_token` string of a leased job.
#[track_caller]
pub fn token_of(value: &Value) -> String {
    value["lease_token"].as_str().unwrap_or_else(|| panic!("no lease token in {value}")).to_owned()
}
