//! Proves that payload bytes travel through the server exactly, whatever they are: JSON (kept
//! as its text, inner whitespace and number spelling included), JSON `null`, text that is not
//! JSON, and binary bytes; read back by `job_get` and by a lease.

use std::sync::Arc;

use onceq_client::Client;
use onceq_core::{NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};

#[tokio::test]
async fn payloads_come_back_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}")));
    let router = onceq_server::router(Arc::clone(&store) as Arc<dyn Store>, onceq_server::Auth::disabled());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::new(url).unwrap_or_else(|e| panic!("{e}"));
    let q = QueueName::new("payloads").unwrap_or_else(|e| panic!("{e}"));

    let payloads: Vec<Vec<u8>> = vec![
        br#"{"to": "ada@example.com", "amount": 1.50, "note": "caf\u00e9"}"#.to_vec(),
        b"[1,2,3]".to_vec(),
        b"42".to_vec(),
        b"null".to_vec(),
        b"\"a JSON string\"".to_vec(),
        b"plain text, not JSON".to_vec(),
        vec![0x00, 0xff, 0x10, 0x80],
    ];
    for payload in payloads {
        let shown = String::from_utf8_lossy(&payload).into_owned();
        let id = client.enqueue(&q, NewJob::new(payload.clone())).await.unwrap_or_else(|e| panic!("{shown}: {e}")).id;
        assert_eq!(store.job_get(id).await.map(|j| j.payload), Ok(payload.clone()), "{shown}: stored");
        assert_eq!(client.job_get(id).await.map(|j| j.payload), Ok(payload.clone()), "{shown}: read back");
        let leased = client.lease_one(&q).await.unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(leased.map(|j| (j.id, j.payload)), Some((id, payload)), "{shown}: leased");
    }
    server.abort();
}
