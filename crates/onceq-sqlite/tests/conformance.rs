//! Proves that the embedded SQLite store passes the whole onceq conformance suite: every
//! behaviour of docs/semantics.md and every invariant of docs/design.md checkable at the seam.

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::{Backend, Opened};

/// Opens each test's store in its own temporary directory, on the clock the test chose.
struct SqliteBackend;

#[async_trait]
impl Backend for SqliteBackend {
    type Store = SqliteStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<SqliteStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let mut options = SqliteOptions::new(dir.path());
        options.clock = Some(clock);
        let store = SqliteStore::open(options).unwrap_or_else(|e| panic!("cannot open the store: {e}"));
        Opened { store, guard: Box::new(dir) }
    }
}

onceq_testkit::conformance_suite!(SqliteBackend);
