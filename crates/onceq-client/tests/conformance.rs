//! Proves that the HTTP client, talking to a real `onceq serve` router over TCP, passes the whole
//! onceq conformance suite: code written against the seam sees the same results remotely as it
//! sees from the embedded store (every behaviour of docs/semantics.md, every invariant of
//! docs/design.md checkable at the seam, the same errors for the same bad input).
//!
//! Each test gets its own server: an embedded SQLite store in a temporary directory on the test's
//! clock, the server's router on an ephemeral loopback port, and a client of it.

use std::sync::Arc;

use async_trait::async_trait;
use onceq_client::Client;
use onceq_core::{Clock, Store};
use onceq_server::Auth;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::{Backend, Opened};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// Serves a fresh embedded store over HTTP for each test and hands the suite a client of it.
struct RemoteBackend;

/// Everything a test's server needs, kept alive as long as the client under test; dropping it
/// stops the server before the store closes and its directory goes.
struct Server {
    /// The task serving the router; aborted on drop.
    task: JoinHandle<()>,
    /// The store behind the server.
    _store: Arc<SqliteStore>,
    /// The store's data directory; dropped last (fields drop in declaration order).
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Backend for RemoteBackend {
    type Store = Client;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<Client> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock))
            .unwrap_or_else(|e| panic!("cannot open the store: {e}"));
        let store = Arc::new(store);
        let router = onceq_server::router(Arc::clone(&store) as Arc<dyn Store>, Auth::disabled());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot listen on a loopback port: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}"));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                panic!("the server stopped: {e}");
            }
        });
        // The seam's exact answers: a refusal by a limit comes back at once, as every store gives it.
        let client = Client::builder(format!("http://{address}"))
            .rate_limited_tries(1)
            .build()
            .unwrap_or_else(|e| panic!("cannot make the client: {e}"));
        Opened { store: client, guard: Box::new(Server { task, _store: store, _dir: dir }) }
    }
}

onceq_testkit::conformance_suite!(RemoteBackend);
