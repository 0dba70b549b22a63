//! Proves, against the router in-process, that what does not exist is 404 `not_found` with a
//! message naming it: an unknown queue on every queue endpoint that does not create one (a lease
//! from it is empty and creates nothing), an unknown or acked job on every job endpoint, and an
//! unknown route.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{token_of, Server};
use serde_json::json;

/// A well-formed lease token that no lease has.
const FOREIGN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_queues_jobs_and_routes_are_404_not_found() {
    let server = Server::start().await;
    let api = server.api();
    // Unknown queue: everything but PUT, enqueue and lease.
    for reply in [
        api.get("/v1/queues/nope").await,
        api.post_empty("/v1/queues/nope/pause").await,
        api.post_empty("/v1/queues/nope/resume").await,
        api.delete("/v1/queues/nope").await,
        api.get("/v1/queues/nope/dead").await,
        api.post("/v1/queues/nope/dead/redrive", json!({})).await,
        api.delete("/v1/queues/nope/dead").await,
    ] {
        let message = reply.err(404, "not_found");
        assert!(message.contains("nope"), "the message names the queue: {message}");
    }
    // Leasing from a queue that does not exist is an empty queue, and does not create it.
    assert_eq!(api.post("/v1/queues/nope/leases", json!({})).await.ok(200), json!({"jobs": []}));
    api.get("/v1/queues/nope").await.err(404, "not_found");

    // Unknown job, on every job endpoint.
    let missing = "424242";
    api.get(&format!("/v1/jobs/{missing}")).await.err(404, "not_found");
    for (action, body) in [
        ("ack", json!({"lease_token": FOREIGN_TOKEN})),
        ("nack", json!({"lease_token": FOREIGN_TOKEN})),
        ("extend", json!({"lease_token": FOREIGN_TOKEN, "visibility_timeout_ms": 1000})),
        ("fail", json!({"lease_token": FOREIGN_TOKEN, "error": "x"})),
    ] {
        let message = api.post(&format!("/v1/jobs/{missing}/{action}"), body).await.err(404, "not_found");
        assert!(message.contains(missing), "the message names the job: {message}");
    }
    // An acked job is 404 too.
    let id = api.enqueue("q", &[json!("x")]).await.remove(0);
    let job = api.lease("q", 1, 60_000).await.remove(0);
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": token_of(&job)})).await.no_content();
    api.get(&format!("/v1/jobs/{id}")).await.err(404, "not_found");
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": token_of(&job)})).await.err(404, "not_found");

    // Unknown routes.
    for path in ["/v2/queues", "/v1", "/v1/queues/q/jobs/1", "/nothing-here"] {
        api.get(path).await.err(404, "not_found");
    }
    api.post("/v1/queue/q/jobs", json!({})).await.err(404, "not_found");
}
