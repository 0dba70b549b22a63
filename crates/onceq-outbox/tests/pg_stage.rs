//! Proves, on a real PostgreSQL with a real onceq PostgreSQL store as the destination: a message
//! staged in a committed business transaction is published exactly once and one staged in a
//! rolled-back transaction never; an invalid message is refused with a named limit and leaves
//! the transaction usable; publishing rows again (as after a crash between publish and mark)
//! leaves one job each at the destination; the relay wakes on the commit's NOTIFY rather than
//! by polling; migrations run safely from many processes at once and refuse a foreign schema;
//! sent rows are purged after the retention, and only those.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use onceq_outbox::{Message, OnceqSink, OutboxError, PgOutbox, Relay, RelayOptions};

fn sink(world: &World) -> Arc<OnceqSink> {
    Arc::new(OnceqSink::new(Arc::new(world.store.clone())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_publish_exactly_once_and_rolled_back_ones_never() {
    let world = World::new("commit").await;
    let mut committed = Vec::new();
    for order in 1..=30 {
        let customer = format!("c{}", order % 3);
        let commit = order % 4 != 0;
        world.order(order, &customer, commit).await;
        if commit {
            committed.push(order);
        }
    }
    // An invalid message is refused before anything is written, and the transaction goes on.
    let mut tx = world.pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO \"{}\".orders (id, customer) VALUES (100, 'c9')", world.app))
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = world.outbox.stage(&mut tx, &Message::new("orders", vec![0u8; 2 * 1024 * 1024])).await;
    assert!(matches!(&refused, Err(OutboxError::InvalidMessage(m)) if m.contains("PAYLOAD_BYTES_MAX")), "{refused:?}");
    world.outbox.stage(&mut tx, &Message::new("orders", r#"{"order":100,"customer":"c9"}"#)).await.unwrap();
    tx.commit().await.unwrap();
    committed.push(100);

    let relay =
        Relay::postgres(&database_url(), world.outbox.clone(), sink(&world), RelayOptions::default()).await.unwrap();
    let report = relay.run_until_idle().await.unwrap();
    assert_eq!((report.claimed, report.sent, report.parked), (committed.len(), committed.len(), 0));
    let jobs = drain_queue(&world.store, "orders").await;
    let mut orders: Vec<i64> = jobs.iter().map(|(_, _, payload)| order_of(payload)).collect();
    orders.sort_unstable();
    assert_eq!(orders, committed, "exactly the committed orders, once each");
    for (_, dedup, _) in &jobs {
        assert!(dedup.starts_with(&format!("{}-", world.outbox.schema())), "dedup id {dedup}");
    }
    assert_order_per_customer(&jobs.iter().map(|(_, _, p)| p.clone()).collect::<Vec<_>>());
    assert!(world.rows().await.iter().all(|&(_, attempts, sent)| sent && attempts == 1));

    // As after a relay crash between publish and mark: the rows are unsent again. They are
    // published again with the same dedup ids, and the destination still holds one job each.
    sqlx::query(&format!("UPDATE {}.messages SET sent_at = NULL", quoted(world.outbox.schema())))
        .execute(&world.pool)
        .await
        .unwrap();
    let again = relay.run_until_idle().await.unwrap();
    assert_eq!(again.sent, committed.len());
    let queue = onceq_core::QueueName::new("orders").unwrap();
    let info = onceq_core::Store::queue_get(&world.store, &queue).await.unwrap();
    assert_eq!(
        (info.stats.ready, info.stats.leased),
        (0, committed.len() as u64),
        "republished messages were absorbed by the queue's dedup"
    );
    relay.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wakes_on_the_commit_not_by_polling() {
    let world = World::new("wake").await;
    let options = RelayOptions { poll_interval: Some(Duration::from_secs(60)), ..RelayOptions::default() };
    let relay = Relay::postgres(&database_url(), world.outbox.clone(), sink(&world), options).await.unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(relay.run(async move {
        let _ = stop_rx.await;
    }));
    // Let the relay finish its first (empty) round and go to sleep for up to a minute.
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.order(1, "ada", false).await;
    let started = Instant::now();
    world.order(2, "ada", true).await;
    let store = world.store.clone();
    eventually(Duration::from_secs(10), "the committed order at the destination", || {
        let store = store.clone();
        async move {
            let queue = onceq_core::QueueName::new("orders").unwrap();
            onceq_core::Store::queue_get(&store, &queue).await.map(|i| i.stats.ready == 1).unwrap_or(false)
        }
    })
    .await;
    let latency = started.elapsed();
    assert!(latency < Duration::from_secs(5), "published after {latency:?}: the NOTIFY did not wake the relay");
    let jobs = drain_queue(&world.store, "orders").await;
    assert_eq!(jobs.iter().map(|(_, _, p)| order_of(p)).collect::<Vec<_>>(), vec![2]);
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_concurrently_and_refuse_foreign_schemas() {
    let schema = fresh_schema("mig");
    let foreign = fresh_schema("foreign");
    let _guard = SchemaGuard { schemas: vec![schema.clone(), foreign.clone()] };
    let outbox = PgOutbox::new(&schema).unwrap();
    // Staging before any migration names the fix.
    let pool = sqlx::PgPool::connect(&database_url()).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let missing = outbox.stage(&mut conn, &Message::new("q", "x")).await;
    assert!(matches!(&missing, Err(OutboxError::Storage(m)) if m.contains("migrat")), "{missing:?}");
    drop(conn);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&database_url()).await.unwrap();
            outbox.migrate(&mut conn).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(()));
    }
    let versions: Vec<i32> =
        sqlx::query_scalar(&format!("SELECT version FROM \"{schema}\".migrations")).fetch_all(&pool).await.unwrap();
    assert_eq!(versions, vec![1]);
    let create = format!("CREATE SCHEMA \"{foreign}\"; CREATE TABLE \"{foreign}\".mine (id int)");
    sqlx::Executor::execute(&pool, create.as_str()).await.unwrap();
    let refused = PgOutbox::new(&foreign).unwrap().migrate(&mut pool.acquire().await.unwrap()).await;
    assert!(matches!(&refused, Err(OutboxError::Storage(m)) if m.contains("not the outbox's")), "{refused:?}");
    // A onceq store's schema and an outbox's both keep a `migrations` table: each refuses the
    // other's, untouched, rather than reading its version as its own.
    let store_schema = fresh_schema("store");
    let outbox_schema = fresh_schema("theirs");
    let _more = SchemaGuard { schemas: vec![store_schema.clone(), outbox_schema.clone()] };
    let options = |schema: &str| onceq_postgres::PgOptions::new(database_url()).schema(schema).pool_size(1);
    onceq_postgres::PgStore::connect(options(&store_schema)).await.unwrap().close().await;
    let refused = PgOutbox::new(&store_schema).unwrap().migrate(&mut pool.acquire().await.unwrap()).await;
    assert!(matches!(&refused, Err(OutboxError::Storage(m)) if m.contains("no outbox in it")), "{refused:?}");
    PgOutbox::new(&outbox_schema).unwrap().migrate(&mut pool.acquire().await.unwrap()).await.unwrap();
    let tables = |schema: String| {
        let pool = pool.clone();
        async move {
            let sql =
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1";
            sqlx::query_scalar::<_, i64>(sql).bind(schema).fetch_one(&pool).await.unwrap()
        }
    };
    let before = tables(outbox_schema.clone()).await;
    let refused = onceq_postgres::PgStore::connect(options(&outbox_schema)).await.err().map(|e| e.to_string());
    assert!(refused.as_deref().is_some_and(|m| m.contains("no onceq store in it")), "{refused:?}");
    assert_eq!(tables(outbox_schema.clone()).await, before, "the store touched the outbox's schema");
    let bad = PgOutbox::new("bad-name");
    assert!(matches!(&bad, Err(OutboxError::InvalidOptions(m)) if m.contains("SCHEMA_NAME_LEN_MAX")), "{bad:?}");
}

use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_notifies_only_while_a_relay_sleeps() {
    let world = World::new("notify").await;
    let mut listener = sqlx::postgres::PgListener::connect(&database_url()).await.unwrap();
    listener.listen(world.outbox.channel()).await.unwrap();
    // No relay sleeps: staging sends no NOTIFY (it would serialize commits under load).
    world.order(1, "ada", true).await;
    assert!(quiet(&mut listener).await, "a NOTIFY was sent though no relay sleeps");
    // A relay registered as sleeping: the commit notifies; a rollback does not.
    let sleepers =
        format!("INSERT INTO {}.sleepers VALUES ('r1', now() + interval '1 hour')", quoted(world.outbox.schema()));
    sqlx::query(&sleepers).execute(&world.pool).await.unwrap();
    world.order(2, "ada", false).await;
    assert!(quiet(&mut listener).await, "a rolled-back transaction notified");
    world.order(3, "ada", true).await;
    let notified = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(notified.is_ok_and(|n| n.is_ok()), "the commit did not notify the sleeping relay");
}

async fn quiet(listener: &mut sqlx::postgres::PgListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.recv()).await.is_err()
}

/// Sent rows past the retention are deleted; unsent ones and those sent within it stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_only_sent_rows_past_the_retention() {
    let world = World::new("purge").await;
    for order in 1..=5 {
        world.order(order, "c1", true).await;
    }
    let options = RelayOptions { retention: Duration::from_secs(3600), ..RelayOptions::default() };
    let relay = Relay::postgres(&database_url(), world.outbox.clone(), sink(&world), options).await.unwrap();
    assert_eq!(relay.run_until_idle().await.unwrap().sent, 5);
    world.order(6, "c1", true).await; // staged, not sent
    let messages = format!("{}.messages", quoted(world.outbox.schema()));
    sqlx::query(&format!("UPDATE {messages} SET sent_at = now() - interval '2 hours' WHERE id IN (SELECT id FROM {messages} WHERE sent_at IS NOT NULL ORDER BY id LIMIT 3)"))
        .execute(&world.pool)
        .await
        .unwrap();
    assert_eq!(relay.purge_sent().await.unwrap(), 3);
    let left: Vec<(bool,)> = sqlx::query_as(&format!("SELECT sent_at IS NOT NULL FROM {messages} ORDER BY id"))
        .fetch_all(&world.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![(true,), (true,), (false,)], "two sent within the retention, one unsent");
    relay.close().await;
}
