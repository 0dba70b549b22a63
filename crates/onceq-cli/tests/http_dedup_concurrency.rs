//! Invariant 6 (dedup window) over HTTP, under concurrency: 32 clients enqueueing one job with
//! the same dedup id at the same moment — through the body's `dedup_id`, through the
//! `Idempotency-Key` header, or half and half — all get the same job id, exactly one of them
//! `duplicate: false`, and exactly one job exists per dedup id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{id_of, Api, Server};
use serde_json::json;
use tokio::sync::Barrier;

const CLIENTS: usize = 32;

/// How a client names the dedup id.
#[derive(Clone, Copy)]
enum Via {
    Body,
    Header,
    /// Even clients the body, odd ones the header.
    Both,
}

/// `CLIENTS` concurrent one-job enqueues of `key` to `queue`, each on its own client (its own
/// connection), released together; returns each reply's (id, duplicate).
async fn race(server: &Server, queue: &str, key: &str, via: Via) -> Vec<(String, bool)> {
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let api: Api = server.api();
        let barrier = barrier.clone();
        let (queue, key) = (queue.to_owned(), key.to_owned());
        tasks.spawn(async move {
            // A first request opens the connection, so the racing ones start together.
            assert_eq!(api.get("/healthz").await.status, 200);
            let in_body = match via {
                Via::Body => true,
                Via::Header => false,
                Via::Both => client % 2 == 0,
            };
            let mut job = json!({"payload": {"client": client}});
            let mut headers = Vec::new();
            if in_body {
                job["dedup_id"] = json!(key);
            } else {
                headers.push(("Idempotency-Key", key.as_str()));
            }
            let body = json!({ "jobs": [job] }).to_string().into_bytes();
            barrier.wait().await;
            let path = format!("/v1/queues/{queue}/jobs");
            let reply = api.send(reqwest::Method::POST, &path, Some(body), &headers).await.ok(200);
            let entries = reply["jobs"].as_array().unwrap();
            assert_eq!(entries.len(), 1, "{reply}");
            (id_of(&entries[0]), entries[0]["duplicate"].as_bool().expect("duplicate is a boolean"))
        });
    }
    let mut replies = Vec::with_capacity(CLIENTS);
    while let Some(joined) = tasks.join_next().await {
        replies.push(joined.expect("a client task failed"));
    }
    replies
}

/// Every reply names one id, and exactly one reply created it.
fn assert_one_job(replies: &[(String, bool)], what: &str) -> String {
    assert_eq!(replies.len(), CLIENTS);
    let ids: BTreeSet<&String> = replies.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1, "{what}: every client gets the same id, got {ids:?}");
    let created = replies.iter().filter(|(_, duplicate)| !duplicate).count();
    assert_eq!(created, 1, "{what}: exactly one duplicate:false, got {created}");
    replies[0].0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_with_one_dedup_id_make_one_job() {
    let server = Server::start().await;
    let api = server.api();

    let by_body = assert_one_job(&race(&server, "dedup", "order-1", Via::Body).await, "dedup_id in the body");
    let by_header = assert_one_job(&race(&server, "dedup", "order-2", Via::Header).await, "Idempotency-Key header");
    let mixed = assert_one_job(&race(&server, "dedup", "order-3", Via::Both).await, "body and header mixed");
    assert_eq!(BTreeSet::from([&by_body, &by_header, &mixed]).len(), 3, "one job per dedup id");

    // Exactly three jobs exist, each with its dedup id.
    let stats = api.get("/v1/queues/dedup").await.ok(200)["stats"].clone();
    assert_eq!(stats["ready"], 3, "{stats}");
    for (id, key) in [(&by_body, "order-1"), (&by_header, "order-2"), (&mixed, "order-3")] {
        let job = api.get(&format!("/v1/jobs/{id}")).await.ok(200);
        assert_eq!(job["dedup_id"], key, "{job}");
    }
    let leased: BTreeSet<String> = api.lease("dedup", 1000, 60_000).await.iter().map(id_of).collect();
    assert_eq!(leased, BTreeSet::from([by_body.clone(), by_header, mixed]));

    // The same dedup id in another queue is another job.
    let other = assert_one_job(&race(&server, "dedup-other", "order-1", Via::Body).await, "another queue");
    assert_ne!(other, by_body);
}
