//! Proves that what the network adds shows as `Error::Unavailable` with a message naming the
//! server's URL — nothing listening, a server that never answers, a reply of 5xx without an onceq
//! error body — and that a long poll longer than the client's timeout is not cut short by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use onceq_client::Client;
use onceq_core::{Error, LeaseOptions, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn queue() -> QueueName {
    QueueName::new("anything").unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts that `result` is `Unavailable` and names `url`.
fn assert_unavailable<T: std::fmt::Debug>(result: onceq_core::Result<T>, url: &str) {
    match result {
        Err(Error::Unavailable(message)) => assert!(message.contains(url), "{message:?} does not name {url}"),
        other => panic!("expected Unavailable naming {url}, got {other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    drop(listener);
    let client = Client::new(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    assert_unavailable(client.queue_list().await, &url);
    assert_unavailable(client.lease_one(&queue()).await, &url);
}

#[tokio::test]
async fn a_server_that_never_answers_is_unavailable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    // Accepts connections and reads nothing, answers nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client =
        Client::builder(url.as_str()).timeout(Duration::from_millis(300)).build().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    assert_unavailable(client.queue_get(&queue()).await, &url);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3), "gave up after {elapsed:?}");
    silent.abort();
}

#[tokio::test]
async fn a_5xx_without_an_error_body_is_unavailable() {
    // What a proxy in front of a restarting server says.
    let router = axum::Router::new()
        .fallback(|| async { (StatusCode::BAD_GATEWAY, [(header::RETRY_AFTER, "7")], "<html>bad gateway</html>") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}/", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let proxy = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::new(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
    let result = client.queue_list().await;
    assert!(
        matches!(&result, Err(Error::Unavailable(m)) if m.contains("502") && m.contains("retry after 7 s")),
        "{result:?}"
    );
    assert_unavailable(result, &url);
    proxy.abort();
}

#[tokio::test]
async fn a_long_poll_outlasts_the_client_timeout() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}")));
    let router = onceq_server::router(store as Arc<dyn Store>, onceq_server::Auth::disabled());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::builder(url).timeout(Duration::from_millis(300)).build().unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 1_000 };
    assert_eq!(client.job_lease(&queue(), options).await, Ok(vec![]));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "the lease returned after {elapsed:?}, before its wait ended");
    server.abort();
}
