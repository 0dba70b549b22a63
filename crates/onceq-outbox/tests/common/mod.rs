//! What the outbox tests share: the PostgreSQL to use, schemas per test (dropped at the end),
//! the business table, a onceq destination store, reading back what a queue holds, and a real
//! HTTP endpoint for the webhook sink whose answers a test scripts.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::{LeaseOptions, QueueName, Store};
use onceq_outbox::{Message, PgOutbox};
use onceq_postgres::{PgOptions, PgStore};
use sqlx::PgPool;

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::postgres::{database_url, SchemaGuard, DEFAULT_URL};

/// A schema name for `what` no other test (in this or another process) uses.
pub fn fresh_schema(what: &str) -> String {
    onceq_testkit::postgres::fresh_schema(&format!("t_{what}"))
}

/// One test's world on PostgreSQL: the application's pool with an `orders` table in schema
/// `app`, a migrated outbox in its own schema, and a onceq store (the destination) in a third.
pub struct World {
    pub pool: PgPool,
    pub app: String,
    pub outbox: PgOutbox,
    pub store: PgStore,
    pub guard: SchemaGuard,
}

impl World {
    pub async fn new(test: &str) -> World {
        let (app, outbox_schema, onceq) =
            (fresh_schema(&format!("{test}_app")), fresh_schema(&format!("{test}_ob")), fresh_schema(test));
        let guard = SchemaGuard { schemas: vec![app.clone(), outbox_schema.clone(), onceq.clone()] };
        let pool = onceq_testkit::postgres::pool(8).await;
        let create = format!(
            "CREATE SCHEMA \"{app}\"; CREATE TABLE \"{app}\".orders (id bigint PRIMARY KEY, customer text NOT NULL)"
        );
        sqlx::Executor::execute(&pool, create.as_str()).await.unwrap();
        let outbox = PgOutbox::new(outbox_schema).unwrap();
        outbox.migrate(&mut pool.acquire().await.unwrap()).await.unwrap();
        let store = PgStore::connect(PgOptions::new(database_url()).schema(&onceq).pool_size(8)).await.unwrap();
        World { pool, app, outbox, store, guard }
    }

    /// Writes an order and stages its event in one transaction; commits or rolls back.
    pub async fn order(&self, id: i64, customer: &str, commit: bool) -> i64 {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query(&format!("INSERT INTO \"{}\".orders (id, customer) VALUES ($1, $2)", self.app))
            .bind(id)
            .bind(customer)
            .execute(&mut *tx)
            .await
            .unwrap();
        let message = Message::new("orders", format!("{{\"order\":{id},\"customer\":\"{customer}\"}}"))
            .header("content-type", "application/json")
            .ordering_key(customer);
        let row = onceq_outbox::postgres::stage(&mut tx, &self.outbox, &message).await.unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        row
    }

    /// The outbox rows, as (id, attempts, sent).
    pub async fn rows(&self) -> Vec<(i64, i32, bool)> {
        sqlx::query_as(&format!(
            "SELECT id, attempts, sent_at IS NOT NULL FROM {}.messages ORDER BY id",
            quoted(self.outbox.schema())
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

pub fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Every job of `queue`, leased (and left leased) in the queue's order (onceq job ids are in
/// enqueue order): (job id, dedup id, payload).
pub async fn drain_queue(store: &dyn Store, queue: &str) -> Vec<(u64, String, String)> {
    let queue = QueueName::new(queue).unwrap();
    let mut out = Vec::new();
    loop {
        let options = LeaseOptions { max_jobs: 1000, visibility_timeout_ms: Some(600_000), wait_ms: 0 };
        let jobs = store.job_lease(&queue, options).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            let dedup = job.dedup_id.clone().unwrap_or_default();
            out.push((job.id.get(), dedup, String::from_utf8(job.payload.clone()).unwrap()));
        }
    }
    out.sort_by_key(|(id, _, _)| *id);
    out
}

/// The number in `"order":N` of a payload.
pub fn order_of(payload: &str) -> i64 {
    let value: serde_json::Value = serde_json::from_str(payload).unwrap();
    value["order"].as_i64().unwrap()
}

/// Checks that for each customer (ordering key), orders arrived in increasing order.
pub fn assert_order_per_customer(payloads: &[String]) {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for payload in payloads {
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        let (order, customer) = (value["order"].as_i64().unwrap(), value["customer"].as_str().unwrap().to_owned());
        if let Some(previous) = last.insert(customer.clone(), order) {
            assert!(previous < order, "customer {customer}: order {order} arrived after {previous}");
        }
    }
}

/// A real HTTP endpoint for the webhook sink: records every request, and answers with the
/// status `answer` returns for it.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub status: Arc<Mutex<u16>>,
    /// Answers for particular paths, over `status`.
    pub overrides: Arc<Mutex<BTreeMap<String, u16>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Endpoint {
    /// Starts answering every request with `status` (change it with [`Endpoint::answer`]).
    pub async fn start(status: u16) -> Endpoint {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        type Shared = (Arc<Mutex<Vec<Request>>>, Arc<Mutex<u16>>, Arc<Mutex<BTreeMap<String, u16>>>);
        async fn handle(
            State((requests, status, overrides)): State<Shared>,
            uri: Uri,
            headers: HeaderMap,
            body: String,
        ) -> StatusCode {
            let answer = overrides.lock().unwrap().get(uri.path()).copied().unwrap_or(*status.lock().unwrap());
            let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let all = headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
            requests.lock().unwrap().push(Request {
                path: uri.path().to_owned(),
                idempotency_key: get("idempotency-key"),
                content_type: get("content-type"),
                headers: all,
                body,
                status: answer,
            });
            StatusCode::from_u16(answer).unwrap()
        }
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(status));
        let overrides = Arc::new(Mutex::new(BTreeMap::new()));
        let app =
            axum::Router::new().fallback(handle).with_state((requests.clone(), status.clone(), overrides.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint { addr, requests, status, overrides, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/", self.addr)
    }

    pub fn answer(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }

    /// Answers requests to `path` (e.g. `/hooks/bad`) with `status`.
    pub fn answer_path(&self, path: &str, status: u16) {
        self.overrides.lock().unwrap().insert(path.to_owned(), status);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it holds, at most `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
