//! Proves that the HTTP client, talking to a real server's idempotency endpoints over TCP, passes
//! the idempotency conformance suite: a consumer in any language gets the embedded store's
//! semantics through `POST /v1/idempotency/{key}/begin|complete|release`.

use std::sync::Arc;

use async_trait::async_trait;
use onceq_client::Client;
use onceq_core::{Clock, IdempotencyStore, Store};
use onceq_server::Api;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::idempotency::IdempotencyBackend;
use onceq_testkit::Opened;
use tempfile::TempDir;
use tokio::task::JoinHandle;

struct RemoteIdempotency;

/// The test's server; dropping it stops the server before the store closes and its directory goes.
struct Server {
    task: JoinHandle<()>,
    _store: Arc<SqliteStore>,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl IdempotencyBackend for RemoteIdempotency {
    type Store = Client;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<Client> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"));
        let store = Arc::new(
            SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock))
                .unwrap_or_else(|e| panic!("cannot open the store: {e}")),
        );
        let router = Api::new(Arc::clone(&store) as Arc<dyn Store>)
            .idempotency(Arc::clone(&store) as Arc<dyn IdempotencyStore>)
            .router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("cannot listen on a loopback port: {e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("no local address: {e}"));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                panic!("the server stopped: {e}");
            }
        });
        let client = Client::new(format!("http://{address}")).unwrap_or_else(|e| panic!("cannot make the client: {e}"));
        Opened { store: client, guard: Box::new(Server { task, _store: store, _dir: dir }) }
    }
}

onceq_testkit::idempotency_suite!(RemoteIdempotency);
