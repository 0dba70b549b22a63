//! Proves that two relays serving one PostgreSQL outbox at once, while the application keeps
//! staging, never publish one message twice (each row reaches the sink exactly once, counted at
//! the sink, and the onceq destination holds one job per message), and keep the order of each
//! ordering key at the destination — though a naive `SKIP LOCKED` claim would let the second
//! relay take the row behind a key's locked head.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use onceq_outbox::{OnceqSink, OutboxMessage, PublishError, Relay, RelayOptions, Sink};

/// The real onceq sink, counting every publish per dedup id and per relay.
struct Counting {
    inner: OnceqSink,
    relay: usize,
    seen: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

#[async_trait]
impl Sink for Counting {
    fn kind(&self) -> &'static str {
        "onceq"
    }
    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError> {
        self.seen.lock().unwrap().entry(dedup_id.to_owned()).or_default().push(self.relay);
        // Give the other relay time to try to claim behind a head held here.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.inner.publish(message, dedup_id).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_message_once_and_keep_each_keys_order() {
    let world = World::new("two").await;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let mut stops = Vec::new();
    let mut running = Vec::new();
    for relay in 0..2 {
        let sink = Counting { inner: OnceqSink::new(Arc::new(world.store.clone())), relay, seen: seen.clone() };
        let options = RelayOptions { batch_size: 16, ..RelayOptions::default() };
        let relay = Relay::postgres(&database_url(), world.outbox.clone(), Arc::new(sink), options).await.unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop_tx);
        running.push(tokio::spawn(relay.run(async move {
            let _ = stop_rx.await;
        })));
    }
    // Four producers stage while the relays run: 6 customers (ordering keys), each customer's
    // orders staged by one producer in order.
    let world = Arc::new(world);
    let mut producers = Vec::new();
    for producer in 0..4i64 {
        let world = world.clone();
        producers.push(tokio::spawn(async move {
            for n in 0..60i64 {
                let order = producer * 1000 + n;
                let customer = format!("c{}", (order % 3) + producer * 10);
                world.order(order, &customer, n % 7 != 3).await;
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    let committed: Vec<i64> =
        (0..4i64).flat_map(|p| (0..60i64).filter(|n| n % 7 != 3).map(move |n| p * 1000 + n)).collect();
    let rows = world.outbox.schema().to_owned();
    let pool = world.pool.clone();
    eventually(Duration::from_secs(60), "every committed message sent", || {
        let (pool, rows) = (pool.clone(), rows.clone());
        async move {
            let pending: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {}.messages WHERE sent_at IS NULL", quoted(&rows)))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            pending == 0
        }
    })
    .await;
    for stop in stops {
        stop.send(()).unwrap();
    }
    for relay in running {
        tokio::time::timeout(Duration::from_secs(30), relay).await.unwrap().unwrap().unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), committed.len(), "every committed message reached the sink");
    let twice: Vec<_> = seen.iter().filter(|(_, relays)| relays.len() != 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let by_relay = |r: usize| seen.values().filter(|relays| relays[0] == r).count();
    assert!(by_relay(0) > 0 && by_relay(1) > 0, "both relays worked: {} and {}", by_relay(0), by_relay(1));

    let jobs = drain_queue(&world.store, "orders").await;
    let mut orders: Vec<i64> = jobs.iter().map(|(_, _, p)| order_of(p)).collect();
    assert_order_per_customer(&jobs.iter().map(|(_, _, p)| p.clone()).collect::<Vec<_>>());
    orders.sort_unstable();
    let mut expected = committed.clone();
    expected.sort_unstable();
    assert_eq!(orders, expected, "the destination holds each committed order once");
}
