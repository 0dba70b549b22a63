//! Proves that the client presents its bearer token on every call, including the batch settles:
//! a server with auth on refuses a client without a token or with an unknown one, serves the
//! calls the token permits, and refuses a queue outside the token's patterns.

use std::sync::Arc;

use onceq_client::Client;
use onceq_core::{Error, LeaseRef, LeaseToken, NewJob, QueueName, Store, StoreExt};
use onceq_server::{hash_token, Auth, TokenConfig};
use onceq_sqlite::{SqliteOptions, SqliteStore};

/// The token the server knows.
const TOKEN: &str = "orders-worker-3f9a1c";

#[tokio::test]
async fn the_token_goes_with_every_call() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}")));
    let auth = Auth::from_tokens(&[TokenConfig {
        name: "orders".into(),
        sha256: hash_token(TOKEN),
        produce: vec!["orders.*".into()],
        consume: vec!["orders.*".into()],
        admin: vec![],
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    let router = onceq_server::router(store as Arc<dyn Store>, auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = |token: Option<&str>| {
        Client::builder(url.as_str()).token(token.map(str::to_owned)).build().unwrap_or_else(|e| panic!("{e}"))
    };
    let q = QueueName::new("orders.eu").unwrap_or_else(|e| panic!("{e}"));

    for stranger in [client(None), client(Some("guessed"))] {
        let refused = stranger.enqueue(&q, NewJob::new("x")).await;
        assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.starts_with("unauthorized")), "{refused:?}");
        let refused = stranger.ack(LeaseRef { id: onceq_core::JobId::new(1), lease_token: LeaseToken::random() }).await;
        assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.starts_with("unauthorized")), "{refused:?}");
    }

    let worker = client(Some(TOKEN));
    let id = worker.enqueue(&q, NewJob::new("paid")).await.unwrap_or_else(|e| panic!("{e}")).id;
    let leased = worker.lease_one(&q).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(leased.as_ref().map(|j| j.id), Some(id));
    if let Some(job) = leased {
        assert_eq!(worker.extend(job.lease(), 60_000).await.map(|_| ()), Ok(()));
        assert_eq!(worker.ack(job.lease()).await, Ok(()));
    }
    let elsewhere = QueueName::new("billing").unwrap_or_else(|e| panic!("{e}"));
    let refused = worker.enqueue(&elsewhere, NewJob::new("x")).await;
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.starts_with("forbidden")), "{refused:?}");
    let refused = worker.queue_pause(&q).await;
    assert!(matches!(&refused, Err(Error::InvalidRequest(m)) if m.starts_with("forbidden")), "{refused:?}");
    server.abort();
}
