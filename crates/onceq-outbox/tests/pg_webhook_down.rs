//! Proves, with a real HTTP endpoint as the webhook destination: while the endpoint answers 503
//! nothing is lost and nothing is marked sent (each message is retried with backoff); when it
//! comes back, the backlog drains, each message is confirmed once with its `Idempotency-Key`,
//! headers and content type, and each ordering key's messages are confirmed in staging order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use onceq_outbox::{Relay, RelayOptions, WebhookSink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_drains_when_the_endpoint_comes_back() {
    let world = World::new("down").await;
    let endpoint = Endpoint::start(503).await;
    let sink = WebhookSink::new(&endpoint.url(), Duration::from_secs(5)).unwrap();
    let options = RelayOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        max_attempts: 1000,
        ..RelayOptions::default()
    };
    let relay = Relay::postgres(&database_url(), world.outbox.clone(), Arc::new(sink), options).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stop_rx.await;
    }));
    for order in 1..=40 {
        world.order(order, &format!("c{}", order % 5), true).await;
    }
    // Down for a while: requests keep coming (retries), nothing is marked sent.
    eventually(Duration::from_secs(10), "several retries of each head", || async { endpoint.requests().len() >= 20 })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = world.rows().await;
    assert_eq!(rows.len(), 40);
    assert!(rows.iter().all(|&(_, _, sent)| !sent), "nothing is sent while the endpoint is down");
    assert!(rows.iter().any(|&(_, attempts, _)| attempts >= 2), "failed attempts are counted: {rows:?}");

    endpoint.answer(200);
    eventually(Duration::from_secs(30), "the backlog drained", || async {
        world.rows().await.iter().all(|&(_, _, sent)| sent)
    })
    .await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();

    let confirmed: Vec<Request> = endpoint.requests().into_iter().filter(|r| r.status == 200).collect();
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for request in &confirmed {
        *keys.entry(request.idempotency_key.clone().unwrap()).or_default() += 1;
        assert_eq!(request.path, "/hooks/orders");
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(keys.len(), 40, "every message confirmed");
    assert!(keys.values().all(|&n| n == 1), "each confirmed once: {keys:?}");
    assert!(keys.keys().all(|k| k.starts_with(&format!("{}-", world.outbox.schema()))));
    assert_order_per_customer(&confirmed.iter().map(|r| r.body.clone()).collect::<Vec<_>>());
    // Failed attempts carried the same key as the confirmed one.
    let failed = endpoint.requests().into_iter().filter(|r| r.status == 503).collect::<Vec<_>>();
    assert!(failed.iter().all(|r| keys.contains_key(r.idempotency_key.as_deref().unwrap())));
}
