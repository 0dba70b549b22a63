//! An order service on PostgreSQL, end to end: it writes each order and stages an
//! `order-placed` event in the same transaction; a relay publishes the committed events to a
//! onceq queue; an effectively-once worker consumes them and sends one confirmation email per
//! order. A declined order is rolled back: no row, no event, no email.
//!
//! `cargo run -p onceq-outbox --example order_events` (needs PostgreSQL: `DATABASE_URL`, default
//! postgres://postgres@127.0.0.1:5432/test; the example works in fresh schemas and drops them).

use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::{DeliveryMode, IdempotencyStore, QueueConfigPatch, QueueName, Store};
use onceq_outbox::{Message, OnceqSink, PgOutbox, Relay, RelayOptions};
use onceq_postgres::{PgOptions, PgStore};
use onceq_worker::{EffectivelyOnce, JobContext, Outcome, QueueOptions, Worker};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct OrderPlaced {
    order: i64,
    customer: String,
    total_cents: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    run().await
}

async fn run() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let tag = format!("{:08x}", rand::random::<u32>());
    let (shop, outbox_schema, onceq_schema) =
        (format!("shop_{tag}"), format!("shop_outbox_{tag}"), format!("shop_onceq_{tag}"));
    let pool = sqlx::PgPool::connect(&url).await?;
    let result = demo(&url, &pool, &shop, &outbox_schema, &onceq_schema).await;
    for schema in [&shop, &outbox_schema, &onceq_schema] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).execute(&pool).await?;
    }
    result
}

async fn demo(
    url: &str,
    pool: &sqlx::PgPool,
    shop: &str,
    outbox_schema: &str,
    onceq_schema: &str,
) -> Result<(), Box<dyn Error>> {
    // The order service's own table, and the outbox beside it (once, at deploy time).
    let create = format!(
        "CREATE SCHEMA {shop}; CREATE TABLE {shop}.orders (id bigint PRIMARY KEY, customer text, total_cents bigint)"
    );
    sqlx::Executor::execute(pool, create.as_str()).await?;
    let outbox = PgOutbox::new(outbox_schema)?;
    outbox.migrate(&mut *pool.acquire().await?).await?;

    // onceq, in the same database. The queue deduplicates for an hour: longer than a dead relay
    // takes to be replaced, so an event published twice (a crash between publish and mark) is one job.
    let store = PgStore::connect(PgOptions::new(url).schema(onceq_schema)).await?;
    let queue = QueueName::new("order-placed")?;
    let patch = QueueConfigPatch {
        delivery: Some(DeliveryMode::EffectivelyOnce),
        dedup_window_ms: Some(3_600_000),
        ..Default::default()
    };
    store.queue_upsert(&queue, patch).await?;

    // The order service: the order and its event commit together, or neither does.
    let orders =
        [(1, "ada", 4_200, true), (2, "grace", 1_500, true), (3, "ada", 990, false), (4, "alan", 12_000, true)];
    for (order, customer, total_cents, payment_accepted) in orders {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("INSERT INTO {shop}.orders (id, customer, total_cents) VALUES ($1, $2, $3)"))
            .bind(order)
            .bind(customer)
            .bind(total_cents)
            .execute(&mut *tx)
            .await?;
        let event = serde_json::to_vec(&OrderPlaced { order, customer: customer.into(), total_cents })?;
        let message =
            Message::new("order-placed", event).header("content-type", "application/json").ordering_key(customer); // one customer's events arrive in order
        outbox.stage(&mut tx, &message).await?;
        if payment_accepted {
            tx.commit().await?;
        } else {
            tx.rollback().await?; // declined: no order, no event
        }
    }

    // The relay (in production: `onceq relay --outbox postgres://... --sink onceq --store postgres://...`).
    let sink = Arc::new(OnceqSink::new(Arc::new(store.clone())));
    let relay = Relay::postgres(url, outbox.clone(), sink, RelayOptions::default()).await?;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(relay.run(async move {
        let _ = relay_stopped.await;
    }));

    // The worker: effectively once, guarded by the idempotency store in the same database.
    let emails: Arc<Mutex<Vec<i64>>> = Arc::default();
    let all_sent = Arc::new(tokio::sync::Notify::new());
    let guard = EffectivelyOnce::new(Arc::new(store.clone()) as Arc<dyn IdempotencyStore>);
    let options = QueueOptions::concurrency(2).poll_wait(Duration::from_millis(200)).effectively_once(guard);
    let (sent, done) = (emails.clone(), all_sent.clone());
    let worker = Worker::builder(Arc::new(store.clone()))
        .handle_with("order-placed", options, move |_ctx: JobContext, event: OrderPlaced| {
            let (sent, done) = (sent.clone(), done.clone());
            async move {
                println!("emailing {}: order {} confirmed ({} cents)", event.customer, event.order, event.total_cents);
                let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
                sent.push(event.order);
                if sent.len() == 3 {
                    done.notify_one();
                }
                Outcome::Done
            }
        })
        .build()?;
    let report = worker
        .run(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), all_sent.notified()).await;
        })
        .await;
    let _ = stop_relay.send(());
    relay.await??;
    store.close().await;

    let mut emailed = emails.lock().unwrap_or_else(|p| p.into_inner()).clone();
    emailed.sort_unstable();
    println!("emails sent for orders {emailed:?}; worker {report:?}");
    if emailed != [1, 2, 4] {
        return Err(format!("expected one email for each of orders 1, 2 and 4, got {emailed:?}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_committed_order_gets_one_email_and_the_declined_one_none() {
        if let Err(error) = super::run().await {
            panic!("{error}");
        }
    }
}
