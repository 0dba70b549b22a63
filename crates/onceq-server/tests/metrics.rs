//! `/metrics` reports what happened, exactly: each counter of docs/design.md's Observability section
//! moves by the number of events, labelled by queue (and reason), and the depth gauges match the
//! queue's stats at the scrape; commits count by outcome, producers by registrations and fenced
//! calls; flow limits count the jobs each limit held back and the enqueues max_depth refused.
//! The recorder is the process's: each test keeps to its own queues and series.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use onceq_core::{ManualClock, NewJob, QueueConfigPatch, QueueName, Store, StoreExt};
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

#[tokio::test]
async fn counters_and_gauges_follow_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone())).unwrap();
    let app = router(Arc::new(store.clone()), Auth::disabled());
    let q = QueueName::new("metered").unwrap();
    let patch = QueueConfigPatch { max_attempts: Some(2), visibility_timeout_ms: Some(1000), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();

    // 4 jobs, one of them a duplicate.
    let jobs = vec![NewJob::new("1"), NewJob::new("2").dedup_id("d"), NewJob::new("3").dedup_id("d"), NewJob::new("4")];
    store.job_enqueue(&q, jobs).await.unwrap();
    store.job_enqueue(&q, vec![NewJob::new("5")]).await.unwrap();
    // Lease all 4: ack one, nack one (retry), fail one, let one expire; then a stale ack.
    let leased = store.job_lease(&q, onceq_core::LeaseOptions { max_jobs: 4, ..Default::default() }).await.unwrap();
    assert_eq!(leased.len(), 4);
    store.ack(leased[0].lease()).await.unwrap();
    store.nack(leased[1].lease(), Some(0), Some("try again")).await.unwrap();
    store.fail(leased[2].lease(), "broken").await.unwrap();
    store.extend(leased[3].lease(), 500).await.unwrap();
    clock.advance(600); // leased[3] expires: redelivered (attempt 1 of 2)
    assert_eq!(store.ack(leased[0].lease()).await.map_err(|e| e.kind()), Err(onceq_core::ErrorKind::NotFound));
    let again = store.job_lease(&q, onceq_core::LeaseOptions { max_jobs: 4, ..Default::default() }).await.unwrap();
    assert_eq!(again.len(), 2); // the nacked one and the expired one, attempt 2
    for job in &again {
        store.nack(job.lease(), None, None).await.unwrap(); // last attempt: dead
    }
    store.dead_redrive(&q, onceq_core::Redrive { ids: None, limit: Some(1), ..Default::default() }).await.unwrap();

    let text = scrape(&app).await;
    let series = |name: &str| format!("{name}{{queue=\"metered\"}}");
    assert_eq!(value(&text, &series("onceq_jobs_enqueued_total")), 4.0);
    assert_eq!(value(&text, &series("onceq_duplicates_suppressed_total")), 1.0);
    assert_eq!(value(&text, &series("onceq_deliveries_total")), 6.0);
    assert_eq!(value(&text, &series("onceq_acks_total")), 1.0);
    assert_eq!(value(&text, &series("onceq_lease_extensions_total")), 1.0);
    assert_eq!(value(&text, &series("onceq_redriven_total")), 1.0);
    assert_eq!(value(&text, "onceq_stale_lease_rejections_total{queue=\"\"}"), 1.0);
    let reason = |name: &str, queue: &str, reason: &str| format!("{name}{{queue=\"{queue}\",reason=\"{reason}\"}}");
    assert_eq!(value(&text, &reason("onceq_redeliveries_total", "metered", "nack")), 1.0);
    assert_eq!(value(&text, &reason("onceq_redeliveries_total", "metered", "lease_expired")), 1.0);
    assert_eq!(value(&text, &reason("onceq_dead_lettered_total", "metered", "failed")), 1.0);
    assert_eq!(value(&text, &reason("onceq_dead_lettered_total", "metered", "attempts_exhausted")), 2.0);
    assert_eq!(value(&text, &series("onceq_lease_to_ack_seconds_count")), 1.0);
    assert_eq!(value(&text, &series("onceq_enqueue_to_lease_seconds_count")), 4.0);
    // Depth at the scrape: the one redriven job is ready; two stay dead.
    let depth = |state: &str| format!("onceq_queue_depth{{queue=\"metered\",state=\"{state}\"}}");
    assert_eq!(value(&text, &depth("ready")), 1.0);
    assert_eq!(value(&text, &depth("dead")), 2.0);
    assert_eq!(value(&text, &depth("leased")), 0.0);
    assert!(text.contains("# HELP onceq_acks_total Acks."), "{text}");
    store.close().await;
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
    // A stale lease: a live job with a token not its lease's (a job gone would count in the
    // other test's `stale_lease_rejections_total{queue=""}`: the recorder is the process's).
    let options = onceq_core::LeaseOptions { max_jobs: 1, ..Default::default() };
    let leased = store.job_lease(&q, options).await.unwrap().remove(0);
    let forged = onceq_core::LeaseRef { id: leased.id, lease_token: onceq_core::LeaseToken::from_bytes([7; 16]) };
    let stale = Commit { ack: vec![forged], ..Commit::default() };
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

#[tokio::test]
async fn flow_limits_count_what_they_held_back_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone())).unwrap();
    let app = router(Arc::new(store.clone()), Auth::disabled());
    let (paced, bounded, full) =
        (QueueName::new("paced").unwrap(), QueueName::new("slots").unwrap(), QueueName::new("full").unwrap());
    let rate = onceq_core::flow::RateLimit { per_second: 1.0, burst: 2 };
    store.queue_upsert(&paced, QueueConfigPatch { rate_limit: Some(Some(rate)), ..Default::default() }).await.unwrap();
    store
        .queue_upsert(&bounded, QueueConfigPatch { max_in_flight: Some(Some(1)), ..Default::default() })
        .await
        .unwrap();
    store.queue_upsert(&full, QueueConfigPatch { max_depth: Some(Some(1)), ..Default::default() }).await.unwrap();
    for q in [&paced, &bounded] {
        store.job_enqueue(q, (0..5).map(|i| NewJob::new(format!("{i}"))).collect()).await.unwrap();
    }
    let ask = |max_jobs| onceq_core::LeaseOptions { max_jobs, ..Default::default() };
    // 4 asked, 5 ready, 2 tokens: 2 held back by the rate; 3 asked with 1 slot: 2 by in_flight.
    assert_eq!(store.job_lease(&paced, ask(4)).await.unwrap().len(), 2);
    assert_eq!(store.job_lease(&bounded, ask(3)).await.unwrap().len(), 1);
    store.enqueue(&full, NewJob::new("1")).await.unwrap();
    for _ in 0..2 {
        let refused = store.enqueue(&full, NewJob::new("2")).await;
        assert!(matches!(refused, Err(onceq_core::Error::RateLimited { .. })), "{refused:?}");
    }

    let text = scrape(&app).await;
    let held = |queue: &str, limit: &str| format!("onceq_flow_held_back_total{{queue=\"{queue}\",limit=\"{limit}\"}}");
    assert_eq!(value(&text, &held("paced", "rate")), 2.0);
    assert_eq!(value(&text, &held("slots", "in_flight")), 2.0);
    assert_eq!(value(&text, "onceq_max_depth_refusals_total{queue=\"full\"}"), 2.0);
}

/// Issue 27: a known queue shows every series from the start, at 0, so dashboards and alerts see
/// zeros rather than gaps; a deleted queue's series are gone, while other queues keep theirs.
#[tokio::test]
async fn every_known_queue_has_its_series_from_the_start_and_a_deleted_one_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let app = router(Arc::new(store.clone()), Auth::disabled());
    let fresh = QueueName::new("zeroes-fresh").unwrap();
    let other = QueueName::new("zeroes-other").unwrap();
    store.queue_upsert(&fresh, QueueConfigPatch::default()).await.unwrap();
    store.queue_upsert(&other, QueueConfigPatch::default()).await.unwrap();

    let text = scrape(&app).await;
    for series in [
        r#"onceq_jobs_enqueued_total{queue="zeroes-fresh"}"#,
        r#"onceq_duplicates_suppressed_total{queue="zeroes-fresh"}"#,
        r#"onceq_deliveries_total{queue="zeroes-fresh"}"#,
        r#"onceq_acks_total{queue="zeroes-fresh"}"#,
        r#"onceq_lease_extensions_total{queue="zeroes-fresh"}"#,
        r#"onceq_stale_lease_rejections_total{queue="zeroes-fresh"}"#,
        r#"onceq_redriven_total{queue="zeroes-fresh"}"#,
        r#"onceq_max_depth_refusals_total{queue="zeroes-fresh"}"#,
        r#"onceq_redeliveries_total{queue="zeroes-fresh",reason="nack"}"#,
        r#"onceq_redeliveries_total{queue="zeroes-fresh",reason="lease_expired"}"#,
        r#"onceq_redeliveries_total{queue="zeroes-fresh",reason="released"}"#,
        r#"onceq_dead_lettered_total{queue="zeroes-fresh",reason="attempts_exhausted"}"#,
        r#"onceq_dead_lettered_total{queue="zeroes-fresh",reason="failed"}"#,
        r#"onceq_flow_held_back_total{queue="zeroes-fresh",limit="rate"}"#,
        r#"onceq_flow_held_back_total{queue="zeroes-fresh",limit="in_flight_per_key"}"#,
        r#"onceq_enqueue_to_lease_seconds_count{queue="zeroes-fresh"}"#,
        r#"onceq_lease_to_ack_seconds_count{queue="zeroes-fresh"}"#,
        r#"onceq_queue_depth{queue="zeroes-fresh",state="ready"}"#,
        r#"onceq_queue_paused{queue="zeroes-fresh"}"#,
    ] {
        assert_eq!(value(&text, series), 0.0, "{series}");
    }

    // Events move the series as before; the next scrape's registration leaves them as they are.
    store.job_enqueue(&fresh, vec![NewJob::new("1")]).await.unwrap();
    let leased = store.job_lease(&fresh, onceq_core::LeaseOptions::default()).await.unwrap();
    store.ack(leased[0].lease()).await.unwrap();
    store.job_enqueue(&other, vec![NewJob::new("2")]).await.unwrap();
    let text = scrape(&app).await;
    assert_eq!(value(&text, r#"onceq_jobs_enqueued_total{queue="zeroes-fresh"}"#), 1.0);
    assert_eq!(value(&text, r#"onceq_acks_total{queue="zeroes-fresh"}"#), 1.0);
    assert_eq!(value(&text, r#"onceq_lease_to_ack_seconds_count{queue="zeroes-fresh"}"#), 1.0);
    let text = scrape(&app).await;
    assert_eq!(value(&text, r#"onceq_acks_total{queue="zeroes-fresh"}"#), 1.0);

    // Deleted: none of its series remain; the other queue's do.
    store.queue_delete(&fresh).await.unwrap();
    let text = scrape(&app).await;
    let left: Vec<&str> = text.lines().filter(|line| line.contains(r#"queue="zeroes-fresh""#)).collect();
    assert!(left.is_empty(), "series of a deleted queue remain: {left:#?}");
    assert_eq!(value(&text, r#"onceq_jobs_enqueued_total{queue="zeroes-other"}"#), 1.0);
    assert_eq!(value(&text, r#"onceq_queue_depth{queue="zeroes-other",state="ready"}"#), 1.0);
    store.close().await;
}
