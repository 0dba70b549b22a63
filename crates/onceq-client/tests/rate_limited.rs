//! Proves that the client honours a queue's backpressure: an enqueue refused with
//! `429 rate_limited` shows the server's `Retry-After` on the wire, and the client sends it again
//! no sooner than that pause (with backoff and jitter), so it succeeds once consumers made room;
//! past its tries it returns the refusal, with nothing enqueued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_client::Client;
use onceq_core::limits::MAX_DEPTH_RETRY_AFTER_MS;
use onceq_core::{Error, NewJob, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_server::Auth;
use onceq_sqlite::{SqliteOptions, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_retried_after_its_retry_after_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let router = onceq_server::router(Arc::clone(&store) as Arc<dyn Store>, Auth::disabled());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let url = format!("http://{address}");
    let q = QueueName::new("bounded").unwrap();
    store.queue_upsert(&q, QueueConfigPatch { max_depth: Some(Some(1)), ..Default::default() }).await.unwrap();
    store.enqueue(&q, NewJob::new("first")).await.unwrap();

    // On the wire: 429, rate_limited, its pause in the body and in Retry-After.
    let reply = reqwest::Client::new()
        .post(format!("{url}/v1/queues/bounded/jobs"))
        .json(&serde_json::json!({"jobs": [{"payload": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 429);
    assert_eq!(reply.headers()["retry-after"], (MAX_DEPTH_RETRY_AFTER_MS / 1000).to_string().as_str());
    let body: serde_json::Value = reply.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["retry_after_ms"], MAX_DEPTH_RETRY_AFTER_MS);

    // One try only: the refusal comes back at once, nothing enqueued.
    let impatient = Client::builder(url.as_str()).rate_limited_tries(1).build().unwrap();
    let started = Instant::now();
    let refused = impatient.enqueue(&q, NewJob::new("second")).await;
    assert!(matches!(refused, Err(Error::RateLimited { retry_after_ms: MAX_DEPTH_RETRY_AFTER_MS, .. })), "{refused:?}");
    assert!(started.elapsed() < Duration::from_millis(MAX_DEPTH_RETRY_AFTER_MS));
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 1);

    // The default client waits out the pause and gets in once a consumer made room.
    let patient = Client::new(url.as_str()).unwrap();
    let consumer = {
        let store = Arc::clone(&store);
        let q = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let job = store.lease_one(&q).await.unwrap().unwrap();
            store.ack(job.lease()).await.unwrap();
        })
    };
    let started = Instant::now();
    patient.enqueue(&q, NewJob::new("second")).await.unwrap();
    let waited = started.elapsed();
    consumer.await.unwrap();
    assert!(
        waited >= Duration::from_millis(MAX_DEPTH_RETRY_AFTER_MS),
        "the client came back after {waited:?}, sooner than the server's Retry-After"
    );
    assert!(waited < Duration::from_millis(MAX_DEPTH_RETRY_AFTER_MS * 3), "the client waited {waited:?}");
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 1);
    server.abort();
}
