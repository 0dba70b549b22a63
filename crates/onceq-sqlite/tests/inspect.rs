//! The embedded store passes the `Inspect` conformance suite (the dashboard's bounded reads).

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::inspect::InspectBackend;
use onceq_testkit::Opened;

struct Embedded;

#[async_trait]
impl InspectBackend for Embedded {
    type Store = SqliteStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<SqliteStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock)).unwrap_or_else(|e| panic!("{e}"));
        Opened { store, guard: Box::new(dir) }
    }
}

onceq_testkit::inspect_suite!(Embedded);
