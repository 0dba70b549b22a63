//! Every dashboard page renders in under 300 ms with a queue of 1,000,000 jobs and a dead-letter
//! queue of 100,000 (issue 23), on the embedded store: the pages read only what they show (an
//! index per state; a filter or payload lookup stops at its named scan limit). The data is built
//! with batch enqueues and batch fails, the way a busy server would hold it; each page's time (the
//! best of three reads after a warming one) is printed, and the test fails when one takes 300 ms
//! or more. `onceq-cli`'s `dashboard_postgres_speed` does the same on the PostgreSQL store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use onceq_core::limits::{ENQUEUE_BATCH_MAX, LEASE_BATCH_MAX};
use onceq_core::{Fail, LeaseOptions, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_server::Api;
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};
use tower::ServiceExt;

const JOBS: usize = 1_000_000;
const DEAD: usize = 100_000;
/// What the issue asks of every page at these sizes.
const PAGE_TIME_MAX: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_in_under_300_ms_at_a_million_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(Durability::Relaxed)).unwrap();
    let big = QueueName::new("big").unwrap();
    let dead = QueueName::new("graveyard").unwrap();
    let started = Instant::now();
    let payload = br#"{"to":"someone@example.com","template":"welcome","locale":"en"}"#.to_vec();
    for batch in 0..JOBS / ENQUEUE_BATCH_MAX {
        let jobs = (0..ENQUEUE_BATCH_MAX)
            .map(|i| {
                let n = batch * ENQUEUE_BATCH_MAX + i;
                match n {
                    n if n == JOBS / 2 => NewJob::new(br#"{"to":"needle@example.com"}"#.to_vec()),
                    n if n == JOBS - 1 => NewJob::new(payload.clone()).dedup_id("the-last-one"),
                    _ => NewJob::new(payload.clone()),
                }
            })
            .collect();
        store.job_enqueue(&big, jobs).await.unwrap();
    }
    store.queue_upsert(&dead, QueueConfigPatch { max_attempts: Some(1), ..Default::default() }).await.unwrap();
    for _ in 0..DEAD / ENQUEUE_BATCH_MAX {
        let jobs = (0..ENQUEUE_BATCH_MAX).map(|_| NewJob::new(payload.clone())).collect();
        store.job_enqueue(&dead, jobs).await.unwrap();
        let options = LeaseOptions { max_jobs: LEASE_BATCH_MAX, visibility_timeout_ms: None, wait_ms: 0 };
        let leased = store.job_lease(&dead, options).await.unwrap();
        let fails: Vec<Fail> = leased
            .iter()
            .map(|j| Fail { id: j.id, lease_token: j.lease_token, error: "smtp 550: mailbox unavailable".into() })
            .collect();
        store.job_fail(&fails).await.unwrap();
    }
    let stats = store.queue_get(&dead).await.unwrap().stats;
    assert_eq!(stats.dead, DEAD as u64);
    println!("built {JOBS} jobs and {DEAD} dead in {:?}", started.elapsed());

    let shared = Arc::new(store.clone());
    let router = Api::new(shared.clone()).inspect(shared).router();
    let login = router.clone().oneshot(Request::get("/ui/login").body(Body::empty()).unwrap()).await.unwrap();
    let cookie = login.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let some_job = store.job_page_first(&big).await;
    let dead_job = store.job_page_first_dead(&dead).await;
    let pages = [
        "/ui".to_owned(),
        "/ui/overview.json".to_owned(),
        "/ui/queues/big".to_owned(),
        "/ui/queues/big?state=ready&after=500000".to_owned(),
        "/ui/queues/graveyard?state=dead".to_owned(),
        format!("/ui/jobs/{some_job}"),
        format!("/ui/jobs/{dead_job}"),
        "/ui/queues/big/find?by=dedup&value=the-last-one".to_owned(),
        "/ui/queues/big/find?by=payload&value=needle&state=ready&after=499000".to_owned(),
        "/ui/queues/big/find?by=payload&value=nowhere&state=ready".to_owned(),
        "/ui/queues/graveyard/dead".to_owned(),
        "/ui/queues/graveyard/dead?error=mailbox".to_owned(),
        "/ui/queues/graveyard/dead?error=nowhere".to_owned(),
        "/ui/queues/graveyard/dead?since=2000-01-01T00:00&until=2001-01-01T00:00".to_owned(),
    ];
    let mut slow = Vec::new();
    for path in &pages {
        let mut best = Duration::MAX;
        // The first read warms the connection and statement caches, as any running server has
        // them; the page's time is the best of the next three (a read on a machine busy with
        // other work is slowed by that work, not by what the page reads).
        for round in 0..4 {
            let request = Request::get(path.as_str()).header(header::COOKIE, &cookie).body(Body::empty()).unwrap();
            let started = Instant::now();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let took = started.elapsed();
            assert!(
                status == StatusCode::OK || status == StatusCode::SEE_OTHER,
                "{path}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            if round > 0 {
                best = best.min(took);
            }
        }
        println!("{path:<80} {:>8.1} ms", best.as_secs_f64() * 1000.0);
        if best >= PAGE_TIME_MAX {
            slow.push(format!("{path}: {best:?}"));
        }
    }
    assert!(slow.is_empty(), "pages at or over {PAGE_TIME_MAX:?}: {slow:?}");
    store.close().await;
}

/// The ids the pages are asked about.
trait FirstIds {
    async fn job_page_first(&self, queue: &QueueName) -> onceq_core::JobId;
    async fn job_page_first_dead(&self, queue: &QueueName) -> onceq_core::JobId;
}

impl FirstIds for SqliteStore {
    async fn job_page_first(&self, queue: &QueueName) -> onceq_core::JobId {
        use onceq_core::Inspect;
        let page = onceq_core::JobPage { state: onceq_core::JobState::Ready, after: None, limit: 1 };
        self.job_page(queue, page).await.unwrap().jobs[0].id
    }

    async fn job_page_first_dead(&self, queue: &QueueName) -> onceq_core::JobId {
        let page = onceq_core::DeadPage { after: None, limit: 1 };
        self.dead_list(queue, page).await.unwrap().jobs[0].id
    }
}
