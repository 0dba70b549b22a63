//! A onceq sink made with a retry horizon (what `onceq relay` makes: its backoff cap plus its
//! publish timeout) refuses, permanently and with the reason, to publish into a queue whose
//! dedup window is shorter than the horizon (a retry there could enqueue a job twice), and
//! publishes into queues whose window covers it, including a queue that does not exist yet
//! (the default window). A window raised later is seen once the sink reads it again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{QueueConfigPatch, QueueName, Store};
use onceq_outbox::{OnceqSink, OutboxMessage, PublishError, Sink};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn message(id: i64, destination: &str) -> OutboxMessage {
    OutboxMessage {
        id,
        destination: destination.to_owned(),
        payload: b"{}".to_vec(),
        headers: Default::default(),
        ordering_key: None,
        attempt: 1,
    }
}

#[tokio::test]
async fn a_queue_whose_dedup_window_is_shorter_than_the_retry_horizon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let short = QueueName::new("short-window").unwrap();
    let patch = QueueConfigPatch { dedup_window_ms: Some(1000), ..Default::default() };
    store.queue_upsert(&short, patch).await.unwrap();
    let sink = OnceqSink::with_retry_horizon(Arc::new(store.clone()), Duration::from_secs(90));

    match sink.publish(&message(1, "short-window"), "app-1").await {
        Err(PublishError::Permanent(reason)) => {
            for part in ["short-window", "1000 ms", "90000 ms", "twice", "dedup_window_ms"] {
                assert!(reason.contains(part), "{part:?} missing from {reason:?}");
            }
        }
        other => panic!("a short window gave {other:?}"),
    }
    assert_eq!(store.queue_get(&short).await.unwrap().stats.ready, 0, "nothing was enqueued");
    // The default window (5 minutes) covers 90 s: a new queue is created and fed.
    sink.publish(&message(2, "new-queue"), "app-2").await.unwrap();
    let fresh = store.queue_get(&QueueName::new("new-queue").unwrap()).await.unwrap();
    assert_eq!(fresh.stats.ready, 1);
    // Without a horizon (a library user's plain sink) nothing is checked.
    let plain = OnceqSink::new(Arc::new(store.clone()));
    plain.publish(&message(3, "short-window"), "app-3").await.unwrap();
}
