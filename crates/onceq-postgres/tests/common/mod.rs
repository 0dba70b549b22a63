//! What the PostgreSQL store's tests share on top of the testkit's PostgreSQL fixture (the server,
//! a schema per test, a clear failure when the server is not there): a store in a fresh schema,
//! and the business table the transactional tests write to.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use onceq_core::Clock;
use onceq_postgres::{PgOptions, PgStore};

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::postgres::{database_url, how_to_get_postgres, SchemaGuard, DEFAULT_URL};

/// A schema name no other test (in this or another process) uses.
pub fn fresh_schema() -> String {
    onceq_testkit::postgres::fresh_schema("onceq_test")
}

/// Options for a store in `schema` on the test server, on `clock` if given.
pub fn options(schema: &str, clock: Option<Arc<dyn Clock>>) -> PgOptions {
    let mut options = PgOptions::new(database_url()).schema(schema).pool_size(4);
    options.clock = clock;
    options
}

/// Connects, failing the test with instructions when PostgreSQL is not there.
pub async fn connect(options: PgOptions) -> PgStore {
    match PgStore::connect(options).await {
        Ok(store) => store,
        Err(e) => panic!("cannot open the PostgreSQL store: {e}\n{}", how_to_get_postgres()),
    }
}

/// A store in a fresh schema, and the guard that drops the schema.
pub async fn fresh_store(clock: Option<Arc<dyn Clock>>) -> (PgStore, SchemaGuard) {
    let schema = fresh_schema();
    let guard = SchemaGuard::of(&schema);
    (connect(options(&schema, clock)).await, guard)
}

/// Creates the business table the transactional tests write their effects to: `orders`, in the
/// store's schema (so it goes with the schema). `order_no` is not unique, so that an effect
/// applied twice shows as two rows.
pub async fn create_orders(store: &PgStore) {
    let sql = format!(
        "CREATE TABLE \"{0}\".orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_no bigint NOT NULL, \
         attempt integer NOT NULL DEFAULT 0)",
        store.schema()
    );
    sqlx::query(&sql).execute(store.pool()).await.unwrap();
}

/// Writes one order on `conn` (a transaction's, usually).
pub async fn insert_order(store: &PgStore, conn: &mut sqlx::PgConnection, order_no: i64, attempt: u32) {
    let sql = format!("INSERT INTO \"{}\".orders (order_no, attempt) VALUES ($1, $2)", store.schema());
    sqlx::query(&sql).bind(order_no).bind(attempt as i32).execute(conn).await.unwrap();
}

/// The committed orders, as (order_no, attempt), in order.
pub async fn orders(store: &PgStore) -> Vec<(i64, i32)> {
    let sql = format!("SELECT order_no, attempt FROM \"{}\".orders ORDER BY order_no, id", store.schema());
    sqlx::query_as(&sql).fetch_all(store.pool()).await.unwrap()
}

/// The `NOTIFY` channel of the store's schema (as the store names it).
pub fn channel(store: &PgStore) -> String {
    format!("onceq_{}", store.schema())
}
