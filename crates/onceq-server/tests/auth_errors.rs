//! Proves, against the router in-process with auth on, that a missing, unknown or non-bearer
//! token is 401 `unauthorized` (before anything else is judged, with a message saying how to
//! authenticate) while `/healthz` and `/readyz` need none, and that a known token without the
//! permission is 403 `forbidden`, naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use axum::http::Method;
use in_process::{Server, TokenSpec};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_are_401_unauthorized_and_403_forbidden() {
    let server = Server::start_with_tokens(&[TokenSpec {
        name: "producer",
        secret: "producer-secret",
        produce: &["jobs.*"],
        consume: &[],
        admin: &[],
    }])
    .await;
    let anonymous = server.api();
    // Missing, unknown, or not a bearer token: 401 on /v1.
    let message = anonymous.get("/v1/queues").await.err(401, "unauthorized");
    assert!(message.contains("Bearer"), "the message says how to authenticate: {message}");
    anonymous.post("/v1/queues/jobs.a/jobs", json!({"jobs": [{"payload": 1}]})).await.err(401, "unauthorized");
    server.api_with_token("wrong-secret").get("/v1/queues").await.err(401, "unauthorized");
    let basic = anonymous.send(Method::GET, "/v1/queues", None, &[("Authorization", "Basic cHJvZHVjZXI6eA==")]).await;
    basic.err(401, "unauthorized");
    // Auth comes before everything else: an unknown job or bad body is still 401 without a token.
    anonymous.get("/v1/jobs/1").await.err(401, "unauthorized");
    // Health, readiness and metrics need no token.
    assert_eq!(anonymous.get("/healthz").await.status, 200);
    assert_eq!(anonymous.get("/readyz").await.status, 200);

    // A known token without the permission: 403, naming what is missing.
    let producer = server.api_with_token("producer-secret");
    producer.enqueue("jobs.a", &[json!(1)]).await;
    let message = producer.post("/v1/queues/other/jobs", json!({"jobs": [{"payload": 1}]})).await.err(403, "forbidden");
    assert!(message.contains("other"), "the message names the queue: {message}");
    producer.post("/v1/queues/jobs.a/leases", json!({})).await.err(403, "forbidden");
    producer.put("/v1/queues/jobs.a", json!({})).await.err(403, "forbidden");
    producer.post_empty("/v1/queues/jobs.a/pause").await.err(403, "forbidden");
    producer.get("/v1/queues/jobs.a/dead").await.err(403, "forbidden");
}
