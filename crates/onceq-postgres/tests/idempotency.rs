//! Proves that the PostgreSQL idempotency store passes the idempotency conformance suite: the
//! exact semantics of `onceq_core::idempotency`, concurrent begins of one key included.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_postgres::PgStore;
use onceq_testkit::idempotency::IdempotencyBackend;
use onceq_testkit::Opened;

/// Opens each test's store in a fresh schema, on the test's clock.
struct PgIdempotency;

#[async_trait]
impl IdempotencyBackend for PgIdempotency {
    type Store = PgStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<PgStore> {
        let (store, guard) = common::fresh_store(Some(clock)).await;
        Opened { store, guard: Box::new(guard) }
    }
}

onceq_testkit::idempotency_suite!(PgIdempotency);
