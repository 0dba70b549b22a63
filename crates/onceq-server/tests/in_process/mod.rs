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

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::http::{assert_error_detail, error_message, Reply, TokenSpec};

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

    /// Auth off, over a data file damaged where only leasing from the queue [`DAMAGED_QUEUE`]
    /// reads (the chain pointer of an overflow page of its one big job points past the end of the
    /// file). It serves as usual until [`Server::trip`].
    pub async fn start_damaged() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let bait = onceq_core::QueueName::new(DAMAGED_QUEUE).unwrap();
        {
            let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
            let big = format!("\"{}\"", "Z".repeat(200_000));
            store.job_enqueue(&bait, vec![onceq_core::NewJob::new(big.into_bytes())]).await.unwrap();
            store.close().await;
        }
        onceq_testkit::damage::overflow_page(&dir.path().join(onceq_sqlite::DATA_FILE_NAME), b'Z');
        let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
        let shared = Arc::new(store.clone());
        let router = onceq_server::Api::new(shared.clone() as Arc<dyn Store>)
            .idempotency(shared as Arc<dyn IdempotencyStore>)
            .router();
        Server { router, store, _dir: dir }
    }

    /// Leases from [`DAMAGED_QUEUE`] of a [`Server::start_damaged`]: the store finds the damage and
    /// stops; every later request that reaches it gets 500 `corrupt`.
    pub async fn trip(&self) {
        let reply = self.api().post(&format!("/v1/queues/{DAMAGED_QUEUE}/leases"), serde_json::json!({})).await;
        reply.err(500, "corrupt");
    }

    /// The router itself, for a request the clients cannot shape (no `Content-Type`).
    pub fn router(&self) -> Router {
        self.router.clone()
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

/// The queue of [`Server::start_damaged`] whose job sits on the damaged page.
pub const DAMAGED_QUEUE: &str = "damaged";

/// A client of one router, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    router: Router,
    token: Option<String>,
}

impl Api {
    /// A client without a token of `router` (for a test that builds its own).
    pub fn over(router: Router) -> Api {
        Api { router, token: None }
    }

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
