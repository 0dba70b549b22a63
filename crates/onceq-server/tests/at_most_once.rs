//! Proves, against the router in-process, that in an `at_most_once` queue the lease is the ack:
//! the job is gone once handed out, and settling it finds no job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Server};
use serde_json::json;

/// Long enough that no lease of this test expires by itself.
const VISIBILITY_MS: u64 = 60_000;

/// At-most-once: the lease is the ack, so the job is gone once handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_most_once_lease_removes_the_job() {
    let server = Server::start().await;
    let api = server.api();
    let config = api.put("/v1/queues/amo", json!({"delivery": "at_most_once"})).await.ok(200);
    assert_eq!(config["delivery"], "at_most_once");
    let ids = api.enqueue("amo", &[json!("once")]).await;
    let leased = api.lease("amo", 1, VISIBILITY_MS).await;
    assert_eq!(leased.iter().map(id_of).collect::<Vec<_>>(), ids);
    api.get(&format!("/v1/jobs/{}", ids[0])).await.err(404, "not_found");
    api.post(&format!("/v1/jobs/{}/ack", ids[0]), json!({"lease_token": token_of(&leased[0])}))
        .await
        .err(404, "not_found");
}
