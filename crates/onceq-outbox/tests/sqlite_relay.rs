//! Proves the SQLite outbox end to end, with the embedded onceq store (in a temporary
//! directory) as the destination: messages staged in committed transactions of the
//! application's own database file are published exactly once and those of rolled-back ones
//! never; republishing (as after a crash between publish and mark) leaves one job each; each
//! key's order is kept; a second relay on the same file is refused; bad input is refused with
//! named limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use onceq_core::{QueueName, Store};
use onceq_outbox::{sqlite, Message, OnceqSink, OutboxError, Relay, RelayOptions};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn order(conn: &mut rusqlite::Connection, id: i64, customer: &str, commit: bool) {
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO orders (id, customer) VALUES (?1, ?2)", rusqlite::params![id, customer]).unwrap();
    let message =
        Message::new("orders", format!("{{\"order\":{id},\"customer\":\"{customer}\"}}")).ordering_key(customer);
    sqlite::stage(&tx, &message).unwrap();
    if commit {
        tx.commit().unwrap();
    } else {
        tx.rollback().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_staging_publishes_committed_messages_once() {
    let dir = tempfile::tempdir().unwrap();
    let app_path = dir.path().join("app.db");
    let mut app = rusqlite::Connection::open(&app_path).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
        .unwrap();
    // Staging before the migration names the fix.
    let missing = sqlite::stage(&app, &Message::new("orders", "x"));
    assert!(matches!(&missing, Err(OutboxError::Storage(m)) if m.contains("migrate")), "{missing:?}");
    sqlite::migrate(&app).unwrap();
    sqlite::migrate(&app).unwrap(); // again: nothing to do
    let refused = sqlite::stage(&app, &Message::new("orders", "x").header("h", "v".repeat(5000)));
    assert!(
        matches!(&refused, Err(OutboxError::InvalidMessage(m)) if m.contains("HEADER_VALUE_LEN_MAX")),
        "{refused:?}"
    );

    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("onceq"))).unwrap();
    let sink = Arc::new(OnceqSink::new(Arc::new(store.clone())));
    let options = RelayOptions { poll_interval: Some(Duration::from_millis(20)), ..RelayOptions::default() };
    let relay = Relay::sqlite(&app_path, sink.clone(), options.clone()).await.unwrap();
    assert_eq!(relay.outbox_name(), "app");
    let second = Relay::sqlite(&app_path, sink.clone(), options.clone()).await;
    assert!(matches!(&second, Err(OutboxError::Busy(m)) if m.contains("one relay per SQLite outbox")), "{second:?}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stop_rx.await;
    }));
    let mut committed = Vec::new();
    for id in 1..=40 {
        let commit = id % 5 != 0;
        order(&mut app, id, &format!("c{}", id % 4), commit);
        if commit {
            committed.push(id);
        }
    }
    let queue = QueueName::new("orders").unwrap();
    let expected = committed.len() as u64;
    eventually(Duration::from_secs(20), "every committed order at the destination", || {
        let (store, queue) = (store.clone(), queue.clone());
        async move { store.queue_get(&queue).await.map(|i| i.stats.ready == expected).unwrap_or(false) }
    })
    .await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();

    let jobs = drain_queue(&store, "orders").await;
    let payloads: Vec<String> = jobs.iter().map(|(_, _, p)| p.clone()).collect();
    assert_order_per_customer(&payloads);
    let mut orders: Vec<i64> = payloads.iter().map(|p| order_of(p)).collect();
    orders.sort_unstable();
    assert_eq!(orders, committed);
    assert!(jobs.iter().all(|(_, dedup, _)| dedup.starts_with("app-")), "{jobs:?}");

    // The relay's lock went with it: a new relay may start. Rows made unsent again (as after a
    // crash between publish and mark) are republished and absorbed by the queue's dedup.
    app.execute("UPDATE onceq_outbox_messages SET sent_at = NULL", []).unwrap();
    let relay = Relay::sqlite(&app_path, sink, options).await.unwrap();
    let again = relay.run_until_idle().await.unwrap();
    assert_eq!(again.sent, committed.len());
    let info = store.queue_get(&queue).await.unwrap();
    assert_eq!((info.stats.ready, info.stats.leased), (0, expected));
    let sent: i64 = app
        .query_row("SELECT count(*) FROM onceq_outbox_messages WHERE sent_at IS NOT NULL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sent, committed.len() as i64);
    relay.close().await;
    store.close().await;
}

/// A sink that is down: every publish fails, to be retried.
struct DownSink;

#[async_trait::async_trait]
impl onceq_outbox::Sink for DownSink {
    fn kind(&self) -> &'static str {
        "down"
    }

    async fn publish(&self, _: &onceq_outbox::OutboxMessage, _: &str) -> Result<(), onceq_outbox::PublishError> {
        Err(onceq_outbox::PublishError::Transient("connection refused".into()))
    }
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A sink that keeps failing shows in the log at once, as one warning with a count and the
/// error, not a line per message, and not again for every round.
#[tokio::test]
async fn failing_publishes_are_warned_of_with_a_count_not_once_each() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap();
    let app_path = dir.path().join("app.db");
    let mut app = rusqlite::Connection::open(&app_path).unwrap();
    app.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL)")
        .unwrap();
    sqlite::migrate(&app).unwrap();
    for id in 1..=3 {
        order(&mut app, id, &format!("c{id}"), true);
    }
    // Backoff caps of a day: with full jitter a retry's delay is anywhere below the cap, and one
    // near zero would have the second round retry a first-round message again.
    let day = Duration::from_millis(onceq_outbox::limits::BACKOFF_MS_MAX);
    let options = RelayOptions { backoff_initial: day, backoff_max: day, ..RelayOptions::default() };
    let relay = Relay::sqlite(&app_path, Arc::new(DownSink), options).await.unwrap();
    assert_eq!(relay.run_round().await.unwrap().retried, 3);
    for id in 4..=5 {
        order(&mut app, id, &format!("c{id}"), true);
    }
    assert_eq!(relay.run_round().await.unwrap().retried, 2);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("publishes are failing")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("failed=3") && warnings[0].contains("connection refused"), "{text}");
    relay.close().await;
}
