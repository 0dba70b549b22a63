//! The embedded idempotency store passes the idempotency conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::idempotency::IdempotencyBackend;
use onceq_testkit::Opened;

struct Embedded;

#[async_trait]
impl IdempotencyBackend for Embedded {
    type Store = SqliteStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<SqliteStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock)).unwrap_or_else(|e| panic!("{e}"));
        Opened { store, guard: Box::new(dir) }
    }
}

onceq_testkit::idempotency_suite!(Embedded);
