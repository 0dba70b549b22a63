//! The lease adviser (docs/api.md, "GET /v1/queues/{queue}"): handlers that hold their leases for
//! more than 80% of the visibility timeout bring advice, naming the likely effect (duplicate
//! deliveries), in the queue's reply and in `/metrics`; fast handlers take it away again, and a
//! queue below the threshold never gets it. The clock is the store's manual one, so the hold
//! times are exact. The recorder is the process's: each test keeps to its own queues.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use onceq_core::{LeaseOptions, ManualClock, NewJob, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_server::{router, Auth};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use serde_json::Value;
use tower::ServiceExt;

async fn get(app: &axum::Router, path: &str) -> String {
    let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn advice(app: &axum::Router, queue: &str) -> Vec<Value> {
    let reply: Value = serde_json::from_str(&get(app, &format!("/v1/queues/{queue}")).await).unwrap();
    assert_eq!(reply["name"], queue, "the queue's own fields stay: {reply}");
    reply["advice"].as_array().unwrap_or_else(|| panic!("no advice list: {reply}")).clone()
}

/// The value of the adviser's gauge for `queue` in a scrape.
async fn gauge(app: &axum::Router, queue: &str) -> String {
    let text = get(app, "/metrics").await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("onceq_queue_advice{")
                && l.contains(&format!("queue=\"{queue}\""))
                && l.contains("advice=\"lease_timeout\"")
        })
        .unwrap_or_else(|| panic!("no advice gauge for {queue}:\n{text}"));
    line.rsplit(' ').next().unwrap().to_owned()
}

/// Leases `n` jobs of `queue`, holds them `held_ms` on the store's clock, and acks them.
async fn work(store: &SqliteStore, clock: &ManualClock, queue: &QueueName, n: u32, held_ms: u64) {
    store.job_enqueue(queue, (0..n).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    let leased = store.job_lease(queue, LeaseOptions { max_jobs: n, ..Default::default() }).await.unwrap();
    assert_eq!(leased.len(), n as usize);
    clock.advance(held_ms);
    for job in leased {
        store.ack(job.lease()).await.unwrap();
    }
}

#[tokio::test]
async fn slow_handlers_bring_advice_and_fast_ones_take_it_away() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone())).unwrap();
    let app = router(Arc::new(store.clone()), Auth::disabled());
    let slow = QueueName::new("advised-slow").unwrap();
    let calm = QueueName::new("advised-calm").unwrap();
    for q in [&slow, &calm] {
        let patch = QueueConfigPatch { visibility_timeout_ms: Some(1000), ..Default::default() };
        store.queue_upsert(q, patch).await.unwrap();
    }
    assert_eq!(advice(&app, "advised-slow").await, Vec::<Value>::new(), "nothing seen yet");

    // Five acks after 900 ms of a 1000 ms lease: 90%.
    work(&store, &clock, &slow, 5, 900).await;
    let given = advice(&app, "advised-slow").await;
    assert_eq!(given.len(), 1, "{given:?}");
    assert_eq!(given[0]["kind"], "lease_timeout");
    let message = given[0]["message"].as_str().unwrap();
    for part in ["900 ms", "90%", "1000 ms", "duplicate deliveries", "visibility_timeout_ms"] {
        assert!(message.contains(part), "{part:?} missing from {message:?}");
    }
    assert_eq!(gauge(&app, "advised-slow").await, "1");

    // Seventy percent is below the threshold.
    work(&store, &clock, &calm, 5, 700).await;
    assert_eq!(advice(&app, "advised-calm").await, Vec::<Value>::new());
    assert_eq!(gauge(&app, "advised-calm").await, "0");

    // A hundred fast acks: the slow five leave the window, and the advice goes.
    work(&store, &clock, &slow, 100, 10).await;
    assert_eq!(advice(&app, "advised-slow").await, Vec::<Value>::new());
    assert_eq!(gauge(&app, "advised-slow").await, "0");
}
