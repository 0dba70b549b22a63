//! Black-box tests of `onceq relay` (the real binary) with onceq as the sink.
//!
//! - Crash: two relays serve one PostgreSQL outbox at once, each started with the fail point
//!   `crash_after_publish`, so that every so often a relay process aborts right after onceq
//!   confirmed a publish and before the row is marked sent (the gap of the classic outbox
//!   poller), and is started again. After the outbox drained, the onceq destination (a
//!   PostgreSQL store) holds each message exactly once, and each ordering key's messages in
//!   staging order; the relays really did die many times.
//! - Sink down: a onceq server is stopped while messages are staged; nothing is lost or marked
//!   sent meanwhile, and the backlog drains once the server is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg_common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, QueueName, Store};
use onceq_outbox::{Message, PgOutbox};
use pg_common::{database_url, Schema};
use tokio::process::{Child, Command};

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

/// Stages `orders` orders over `customers` ordering keys, each in its own committed transaction
/// (with an `orders` row in the outbox's neighbour schema `app`).
async fn stage_orders(pool: &sqlx::PgPool, outbox: &PgOutbox, app: &str, range: std::ops::Range<i64>, customers: i64) {
    for order in range {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(&format!("INSERT INTO \"{app}\".orders (id) VALUES ($1)"))
            .bind(order)
            .execute(&mut *tx)
            .await
            .unwrap();
        let customer = format!("c{}", order % customers);
        let payload = format!("{{\"order\":{order},\"customer\":\"{customer}\"}}");
        outbox.stage(&mut tx, &Message::new("orders", payload).ordering_key(customer)).await.unwrap();
        tx.commit().await.unwrap();
    }
}

async fn pending(pool: &sqlx::PgPool, outbox: &PgOutbox) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".messages WHERE sent_at IS NULL", outbox.schema()))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn relay(args: &[&str], failpoint: Option<&str>, log: &std::path::Path) -> Child {
    let mut command = Command::new(ONCEQ);
    command.arg("relay").args(args).env_remove("ONCEQ_OUTBOX_FAILPOINT");
    if let Some(failpoint) = failpoint {
        command.env("ONCEQ_OUTBOX_FAILPOINT", failpoint);
    }
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(stderr)).kill_on_drop(true);
    command.spawn().expect("spawn onceq relay")
}

/// (order, customer) of each payload, in the queue's order.
fn orders_of(payloads: &[Vec<u8>]) -> Vec<(i64, String)> {
    payloads
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            (v["order"].as_i64().unwrap(), v["customer"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn assert_once_each_in_key_order(orders: &[(i64, String)], expected: usize) {
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (order, customer) in orders {
        if let Some(previous) = last.insert(customer, *order) {
            assert!(previous < *order, "customer {customer}: order {order} after {previous}");
        }
    }
    let mut sorted: Vec<i64> = orders.iter().map(|(o, _)| *o).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), orders.len(), "a message is held more than once");
    assert_eq!(sorted, (0..expected as i64).collect::<Vec<_>>(), "every message is held");
}

async fn leased_payloads(store: &dyn Store) -> Vec<Vec<u8>> {
    let queue = QueueName::new("orders").unwrap();
    let mut out = Vec::new();
    loop {
        let options = LeaseOptions { max_jobs: 1000, visibility_timeout_ms: Some(600_000), wait_ms: 0 };
        let jobs = store.job_lease(&queue, options).await.unwrap();
        if jobs.is_empty() {
            return out;
        }
        out.extend(jobs.into_iter().map(|j| j.payload));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_publish_and_mark_many_times_leaves_each_message_once() {
    const ORDERS: i64 = 300;
    let (outbox_schema, store_schema, app) =
        (Schema::fresh("rc_outbox").await, Schema::fresh("rc_store").await, Schema::fresh("rc_app").await);
    let url = database_url();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let create = format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".orders (id bigint PRIMARY KEY)", app.name);
    sqlx::Executor::execute(&pool, create.as_str()).await.unwrap();
    let outbox = PgOutbox::new(&outbox_schema.name).unwrap();
    outbox.migrate(&mut pool.acquire().await.unwrap()).await.unwrap();
    stage_orders(&pool, &outbox, &app.name, 0..ORDERS / 2, 10).await;

    let logs = tempfile::tempdir().unwrap();
    let args = [
        "--outbox",
        &url,
        "--outbox-schema",
        &outbox_schema.name,
        "--sink",
        "onceq",
        "--store",
        &url,
        "--store-schema",
        &store_schema.name,
        "--batch-size",
        "8",
        "--poll-interval-ms",
        "200",
    ];
    let mut relays: Vec<Option<Child>> = vec![None, None];
    let (mut aborts, mut starts) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut staged_rest = false;
    loop {
        for (slot, child) in relays.iter_mut().enumerate() {
            if let Some(running) = child {
                if let Some(status) = running.try_wait().unwrap() {
                    use std::os::unix::process::ExitStatusExt;
                    assert_eq!(
                        status.signal(),
                        Some(6),
                        "a relay ended other than by the fail point's abort: {status}"
                    );
                    aborts += 1;
                    *child = None;
                }
            }
            if child.is_none() {
                starts += 1;
                let log = logs.path().join(format!("relay-{slot}.log"));
                *child = Some(relay(&args, Some("crash_after_publish:0.04"), &log));
            }
        }
        if !staged_rest {
            // The rest is staged while the relays run and crash.
            stage_orders(&pool, &outbox, &app.name, ORDERS / 2..ORDERS, 10).await;
            staged_rest = true;
        }
        if pending(&pool, &outbox).await == 0 {
            break;
        }
        let logs_text = || {
            (0..2)
                .map(|s| std::fs::read_to_string(logs.path().join(format!("relay-{s}.log"))).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(Instant::now() < deadline, "the outbox did not drain; relay logs:\n{}", logs_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for mut child in relays.into_iter().flatten() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    assert!(aborts >= 5, "the relays crashed only {aborts} times in {starts} starts: the test proved little");

    let store = onceq_postgres::PgStore::connect(onceq_postgres::PgOptions::new(&url).schema(&store_schema.name))
        .await
        .unwrap();
    let orders = orders_of(&leased_payloads(&store).await);
    assert_once_each_in_key_order(&orders, ORDERS as usize);
    eprintln!("{aborts} crashes between publish and mark in {starts} relay starts; {} jobs, once each", orders.len());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_onceq_server_gets_the_backlog_when_it_returns() {
    const ORDERS: i64 = 40;
    let (outbox_schema, app) = (Schema::fresh("rd_outbox").await, Schema::fresh("rd_app").await);
    let url = database_url();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let create = format!("CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".orders (id bigint PRIMARY KEY)", app.name);
    sqlx::Executor::execute(&pool, create.as_str()).await.unwrap();
    let outbox = PgOutbox::new(&outbox_schema.name).unwrap();
    outbox.migrate(&mut pool.acquire().await.unwrap()).await.unwrap();

    let mut server = common::Server::start().await;
    let addr = server.addr().to_string();
    let server_url = server.url();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let mut relay = relay(
        &[
            "--outbox",
            &url,
            "--outbox-schema",
            &outbox_schema.name,
            "--sink",
            "onceq",
            "--server",
            &server_url,
            "--backoff-initial-ms",
            "50",
            "--backoff-max-ms",
            "300",
            "--publish-timeout-ms",
            "2000",
            "--max-attempts",
            "1000",
        ],
        None,
        &log,
    );
    // The startup line names the outbox and the sink.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("onceq relay: outbox postgres") {
            assert!(
                text.contains(&format!("schema {}", outbox_schema.name)) && text.contains("→ sink onceq server"),
                "{text}"
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no startup line: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    server.kill().await;
    stage_orders(&pool, &outbox, &app.name, 0..ORDERS, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts: Vec<(i32, bool)> =
        sqlx::query_as(&format!("SELECT attempts, sent_at IS NOT NULL FROM \"{}\".messages", outbox_schema.name))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts.len(), ORDERS as usize);
    assert!(attempts.iter().all(|&(_, sent)| !sent), "nothing is sent while the server is down");
    assert!(attempts.iter().any(|&(n, _)| n >= 2), "the heads were retried: {attempts:?}");

    server.restart_with(&["--listen", &addr]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&pool, &outbox).await > 0 {
        assert!(Instant::now() < deadline, "the backlog did not drain: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A graceful stop: SIGTERM, exit 0.
    let pid = relay.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(20), relay.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the relay did not stop gracefully: {status}");

    let client: Arc<dyn Store> = Arc::new(onceq_client::Client::new(server.url()).unwrap());
    let orders = orders_of(&leased_payloads(&*client).await);
    assert_once_each_in_key_order(&orders, ORDERS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_with_a_clear_message_and_exit_code() {
    let url = database_url();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--outbox", "mysql://h/db", "--sink", "onceq", "--store", &url], 2, "use postgres://"),
        (vec!["--outbox", &url, "--sink", "onceq"], 2, "--sink onceq needs --server URL"),
        (vec!["--outbox", &url, "--sink", "kafka://h"], 2, "--sink \"kafka://h\""),
        (vec!["--outbox", &url, "--sink", "onceq", "--store", &url, "--batch-size", "0"], 2, "batch size is 0"),
        (
            vec!["--outbox", &url, "--outbox-schema", "no-dashes", "--sink", "onceq", "--store", &url],
            2,
            "SCHEMA_NAME_LEN_MAX",
        ),
        (vec!["--outbox", "sqlite:", "--sink", "onceq", "--store", &url], 2, "needs a path"),
        (vec!["--outbox", "postgres://postgres@127.0.0.1:9/test", "--sink", "http://127.0.0.1:9/"], 3, "unavailable"),
        // A onceq server that is not there is unreachable at start too, as the other sinks are.
        (vec!["--outbox", &url, "--sink", "onceq", "--server", "http://127.0.0.1:9"], 3, "--server"),
    ];
    for (args, code, message) in cases {
        let mut command = Command::new(ONCEQ);
        command.arg("relay").args(&args).env_remove("ONCEQ_OUTBOX_FAILPOINT").kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr:?} should say {message:?}");
    }
    let mut command = Command::new(ONCEQ);
    command.args(["relay", "--outbox", &url, "--sink", "onceq", "--store", &url]);
    command.env("ONCEQ_OUTBOX_FAILPOINT", "crash_sometimes").kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("crash_after_publish:<probability"), "{stderr}");
}
