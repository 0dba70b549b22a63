//! Proves that the PostgreSQL store passes the whole onceq conformance suite, unchanged: every
//! behaviour of docs/semantics.md and every invariant of docs/design.md checkable at the seam. Each
//! test runs in a schema of its own, dropped when it ends.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_postgres::PgStore;
use onceq_testkit::{Backend, Opened};

/// Opens each test's store in a fresh schema, on the clock the test chose.
struct PgBackend;

#[async_trait]
impl Backend for PgBackend {
    type Store = PgStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<PgStore> {
        let (store, guard) = common::fresh_store(Some(clock)).await;
        Opened { store, guard: Box::new(guard) }
    }
}

onceq_testkit::conformance_suite!(PgBackend);
