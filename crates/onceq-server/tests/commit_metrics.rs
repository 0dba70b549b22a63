//! `/metrics` counts commits and producers (docs/api.md "Operations"): each commit by outcome,
//! each registration, and each commit or enqueue of a fenced epoch, by producer. A binary of its
//! own: the metrics recorder is the process's, and these counters carry no queue label.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use onceq_core::{NewJob, QueueName, Store, StoreExt};
use onceq_server::{router, Auth};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use tower::ServiceExt;

async fn scrape(app: &axum::Router) -> String {
    let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Commits by outcome, and producers: registrations, and the commits and enqueues of a fenced
/// epoch (the zombie an operator looks for).
#[tokio::test]
async fn commits_and_producers_are_counted() {
    use onceq_core::commit::{Commit, CommitEnqueue, CommitId, Fence, ProducerId};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let app = router(Arc::new(store.clone()), Auth::disabled());
    let q = QueueName::new("committed").unwrap();
    let enqueue = |payload: &str| vec![CommitEnqueue { queue: q.clone(), jobs: vec![NewJob::new(payload.to_owned())] }];
    let named = Commit { commit_id: Some(CommitId::new("c-1").unwrap()), enqueue: enqueue("1"), ..Commit::default() };
    store.commit(named.clone()).await.unwrap();
    assert!(store.commit(named).await.unwrap().replayed);
    let other = Commit { commit_id: Some(CommitId::new("c-1").unwrap()), enqueue: enqueue("2"), ..Commit::default() };
    assert!(matches!(store.commit(other).await, Err(onceq_core::Error::Conflict(_))));
    let options = onceq_core::LeaseOptions { max_jobs: 1, ..Default::default() };
    let leased = store.job_lease(&q, options).await.unwrap().remove(0);
    store.ack(leased.lease()).await.unwrap();
    let stale = Commit { ack: vec![leased.lease()], ..Commit::default() };
    assert!(matches!(store.commit(stale).await, Err(onceq_core::Error::LeasesLost(_))));
    assert!(matches!(store.commit(Commit::default()).await, Err(onceq_core::Error::InvalidRequest(_))));

    let ingest = ProducerId::new("ingest.lines").unwrap();
    store.producer_register(&ingest).await.unwrap();
    store.producer_register(&ingest).await.unwrap();
    let zombie = Commit {
        producer: Some(Fence { producer: ingest.clone(), epoch: 1 }),
        enqueue: enqueue("3"),
        ..Commit::default()
    };
    for _ in 0..3 {
        assert!(matches!(store.commit(zombie.clone()).await, Err(onceq_core::Error::Fenced(_))));
    }
    let live =
        Commit { producer: Some(Fence { producer: ingest, epoch: 2 }), enqueue: enqueue("4"), ..Commit::default() };
    store.commit(live).await.unwrap();

    let text = scrape(&app).await;
    let commits = |outcome: &str| value(&text, &format!("onceq_commits_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(
        ["applied", "replayed", "conflict", "lease_lost", "invalid", "fenced"].map(commits),
        [2.0, 1.0, 1.0, 1.0, 1.0, 3.0]
    );
    assert_eq!(value(&text, "onceq_producer_fenced_total{producer=\"ingest.lines\"}"), 3.0);
    assert_eq!(value(&text, "onceq_producer_registrations_total{producer=\"ingest.lines\"}"), 2.0);
    assert!(text.contains("# HELP onceq_commits_total Commits by outcome"), "{text}");
    store.close().await;
}
