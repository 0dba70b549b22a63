//! Long-poll leases over HTTP (`wait_ms`): a waiting lease returns a job promptly (well under
//! 2 s) after another client enqueues it, even on a queue that did not exist when the wait began;
//! several waiters are each woken by their own job; and a wait with nothing to lease returns an
//! empty list after about `wait_ms` — not early, not much later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{id_of, Api, Server};
use serde_json::{json, Value};

/// How soon after the enqueue's reply a waiting lease must have its job.
const PROMPT: Duration = Duration::from_secs(2);

/// Leases one job from `queue`, waiting up to `wait_ms`; returns the jobs and when the reply came.
async fn wait_for_job(api: &Api, queue: &str, wait_ms: u64) -> (Vec<Value>, Instant) {
    let body = api
        .post(
            &format!("/v1/queues/{queue}/leases"),
            json!({"max_jobs": 1, "wait_ms": wait_ms, "visibility_timeout_ms": 60_000}),
        )
        .await
        .ok(200);
    (body["jobs"].as_array().unwrap().clone(), Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lease_gets_a_job_as_soon_as_it_is_enqueued() {
    let server = Server::start().await;
    let (waiter, producer) = (server.api(), server.api());
    let started = Instant::now();
    let waiting = tokio::spawn(async move { wait_for_job(&waiter, "lp", 10_000).await });
    // Let the lease reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the lease waits while the queue is empty");
    let id = producer.enqueue("lp", &[json!("wake up")]).await.remove(0);
    let enqueued = Instant::now();
    let (jobs, replied) = waiting.await.unwrap();
    assert_eq!(jobs.iter().map(id_of).collect::<Vec<_>>(), [id]);
    assert_eq!(jobs[0]["payload"], "wake up");
    let after_enqueue = replied.saturating_duration_since(enqueued);
    assert!(after_enqueue < PROMPT, "the lease returned {after_enqueue:?} after the enqueue");
    assert!(started.elapsed() < Duration::from_secs(5), "well before wait_ms ended: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_waiting_lease_is_woken_by_its_own_job() {
    const WAITERS: usize = 4;
    let server = Server::start().await;
    let producer = server.api();
    let mut waiting = Vec::new();
    for _ in 0..WAITERS {
        let api = server.api();
        waiting.push(tokio::spawn(async move { wait_for_job(&api, "many", 10_000).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids = BTreeSet::new();
    let mut last_enqueue = Instant::now();
    for i in 0..WAITERS {
        ids.insert(producer.enqueue("many", &[json!(i)]).await.remove(0));
        last_enqueue = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut leased = BTreeSet::new();
    for task in waiting {
        let (jobs, replied) = task.await.unwrap();
        assert_eq!(jobs.len(), 1, "every waiter gets one job: {jobs:?}");
        assert!(leased.insert(id_of(&jobs[0])), "no job is handed to two waiters");
        let late = replied.saturating_duration_since(last_enqueue);
        assert!(late < PROMPT, "a waiter returned {late:?} after the last enqueue");
    }
    assert_eq!(leased, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_with_nothing_to_lease_ends_empty_after_wait_ms() {
    const WAIT_MS: u64 = 800;
    let server = Server::start().await;
    let api = server.api();
    // A queue that exists and is empty, and one that does not exist.
    api.put("/v1/queues/empty", json!({})).await.ok(200);
    for queue in ["empty", "nonexistent"] {
        let started = Instant::now();
        let (jobs, replied) = wait_for_job(&api, queue, WAIT_MS).await;
        let waited = replied - started;
        assert!(jobs.is_empty(), "{jobs:?}");
        assert!(waited >= Duration::from_millis(WAIT_MS - 50), "{queue}: returned after {waited:?}, before wait_ms");
        assert!(
            waited < Duration::from_millis(WAIT_MS + 1_500),
            "{queue}: returned after {waited:?}, long after wait_ms"
        );
    }
    // wait_ms 0 (the default) does not wait.
    let started = Instant::now();
    assert_eq!(api.post("/v1/queues/empty/leases", json!({})).await.ok(200), json!({"jobs": []}));
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
}
