//! The PostgreSQL fixture of every crate's tests (feature `postgres`): the database to use, how
//! to get one when it is not there, a schema per test, and dropping a test's schemas when it ends.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

/// The server the tests use unless `ONCEQ_TEST_DATABASE_URL` names another.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database's URL: `ONCEQ_TEST_DATABASE_URL`, or [`DEFAULT_URL`].
pub fn database_url() -> String {
    std::env::var("ONCEQ_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// How to get a PostgreSQL for the tests, for failures that come from not having one.
pub fn how_to_get_postgres() -> String {
    format!(
        "these tests need a PostgreSQL server at {} (set ONCEQ_TEST_DATABASE_URL to use another). Run the tests \
         with `scripts/test`, which starts the local server, or start it yourself with \
         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`; without one, install it \
         (Debian: `apt-get install postgresql`), allow trust auth for 127.0.0.1 and create the database `test`",
        database_url()
    )
}

/// Drops `schemas` (and everything in them) from the test database, waiting until done. It runs
/// on a thread and runtime of its own, so that it works from `Drop` inside or outside any runtime.
/// A failure is printed, not raised: a guard being dropped must not panic.
pub fn drop_schemas(schemas: &[String]) {
    let (url, owned) = (database_url(), schemas.to_vec());
    let dropped = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&url).await.map_err(|e| e.to_string())?;
            for schema in &owned {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", schema.replace('"', "\"\"")))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join();
    if let Ok(Err(e)) | Err(e) = dropped.map_err(|_| "the thread panicked".to_owned()) {
        eprintln!("could not drop test schemas {schemas:?}: {e}");
    }
}

/// A schema name starting with `label` that no other test (in this or another process) uses.
/// Keep `label` short: a schema name, and the store's `NOTIFY` channel made from it, are
/// identifiers of at most 63 bytes.
pub fn fresh_schema(label: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}_{}_{}_{:06x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() >> 8
    )
}

/// Drops its schemas (and everything in them) when dropped, also when the test fails.
pub struct SchemaGuard {
    /// The schemas to drop.
    pub schemas: Vec<String>,
}

impl SchemaGuard {
    /// A guard of one schema.
    pub fn of(schema: &str) -> SchemaGuard {
        SchemaGuard { schemas: vec![schema.to_owned()] }
    }

    /// The first schema it guards (the only one, for a guard made with [`SchemaGuard::of`]).
    pub fn schema(&self) -> &str {
        self.schemas.first().map_or("", String::as_str)
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        drop_schemas(&self.schemas);
    }
}

/// A pool of at most `max_connections` on the test database; fails the test with
/// [`how_to_get_postgres`] when the server is not there.
pub async fn pool(max_connections: u32) -> sqlx::PgPool {
    match sqlx::postgres::PgPoolOptions::new().max_connections(max_connections).connect(&database_url()).await {
        Ok(pool) => pool,
        Err(e) => panic!("cannot connect to PostgreSQL: {e}\n{}", how_to_get_postgres()),
    }
}
