//! A damaged data file (issue 25): a page that does not read back as written, found while
//! serving (the checks at open pass, since they read only the header and the schema), stops the
//! embedded store (fail-stop): that request and every later one, reads answered from memory
//! included, get `Error::Corrupt`, never a "retry" that would go on forever; over HTTP a request
//! gets 500 `corrupt`, and `/readyz` answers 503 saying "database corrupt" and to restore from a
//! backup. The damage is made by hand: the chain pointer of an overflow page of one big payload is
//! pointed past the end of the file, which SQLite reports as a malformed database image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use onceq_core::{Error, ErrorKind, IdempotencyStore, JobId, LeaseOptions, NewJob, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore, DATA_FILE_NAME};
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_found_while_serving_stops_the_store_and_says_restore_from_backup() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueName::new("q").unwrap();
    {
        let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
        let big = format!("\"{}\"", "Z".repeat(200_000));
        store.job_enqueue(&q, vec![NewJob::new(big.into_bytes())]).await.unwrap();
        store.job_enqueue(&q, (0..10).map(|n| NewJob::new(n.to_string())).collect()).await.unwrap();
        store.close().await;
    }
    onceq_testkit::damage::overflow_page(&dir.path().join(DATA_FILE_NAME), b'Z');

    // The checks at open pass: the damage is in a page that only reading the big job touches.
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 11);
    let router = onceq_server::Api::new(Arc::new(store.clone()) as Arc<dyn Store>)
        .idempotency(Arc::new(store.clone()) as Arc<dyn IdempotencyStore>)
        .router();
    let ready = router.clone().oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(ready.status(), 200);

    // The lease reads the big job's payload: the damage is found.
    let error = store.job_lease(&q, LeaseOptions { max_jobs: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
    assert!(error.to_string().contains("backup"), "{error}");
    // Stopped: every later call gets the same, also those that would not touch the damaged page.
    let later: Vec<Error> = vec![
        store.job_lease(&q, LeaseOptions { max_jobs: 1, ..Default::default() }).await.unwrap_err(),
        store.job_enqueue(&q, vec![NewJob::new("after")]).await.unwrap_err(),
        store.job_get(JobId::new(5)).await.unwrap_err(),
        store.queue_list().await.unwrap_err(),
        store.queue_get(&q).await.unwrap_err(),
    ];
    for error in later {
        assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
    }

    // Over HTTP: 500 `corrupt` (not a 503 to retry), and not ready, saying why.
    let api = in_process::Api::over(router.clone());
    let reply = api.post("/v1/queues/q/leases", serde_json::json!({"max_jobs": 1})).await;
    let message = reply.err(500, "corrupt");
    assert!(message.contains("backup"), "{message}");
    let reply = api.get("/readyz").await;
    let message = reply.err(503, "unavailable");
    assert!(message.contains("database corrupt") && message.contains("backup"), "{message}");
    store.close().await;

    // The damaged file was left as it is: opening it again works, and finds the damage again.
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let error = store.job_lease(&q, LeaseOptions { max_jobs: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error:?}");
    store.close().await;
}
