//! The PostgreSQL store passes the `Inspect` conformance suite (the dashboard's bounded reads).

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_postgres::PgStore;
use onceq_testkit::inspect::InspectBackend;
use onceq_testkit::Opened;

/// Opens each test's store in a fresh schema, on the test's clock.
struct PgInspect;

#[async_trait]
impl InspectBackend for PgInspect {
    type Store = PgStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<PgStore> {
        let (store, guard) = common::fresh_store(Some(clock)).await;
        Opened { store, guard: Box::new(guard) }
    }
}

onceq_testkit::inspect_suite!(PgInspect);
