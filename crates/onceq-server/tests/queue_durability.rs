//! Proves, against the router in-process, that a queue's `durability` goes through
//! `PUT /v1/queues/{queue}` and shows in its answer and in `GET /v1/queues/{queue}`: absent by
//! default (the server's own setting), `"relaxed"` or `"fsync"` once set, absent again after
//! `null`; that an unknown value, or one of the wrong type, is 400 `invalid_request` naming the
//! values it takes and changes nothing; and that a relaxed queue's jobs go through enqueue, lease
//! and ack over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_is_set_shown_cleared_and_checked() {
    let server = Server::start().await;
    let api = server.api();

    let created = api.put("/v1/queues/analytics", json!({})).await.ok(200);
    assert!(created.get("durability").is_none(), "the default shows no durability: {created}");

    let relaxed = api.put("/v1/queues/analytics", json!({"durability": "relaxed"})).await.ok(200);
    assert_eq!(relaxed["durability"], json!("relaxed"), "{relaxed}");
    let shown = api.get("/v1/queues/analytics").await.ok(200);
    assert_eq!(shown["config"]["durability"], json!("relaxed"), "{shown}");

    for (body, wording) in [
        (json!({"durability": "sometimes"}), r#"unknown durability "sometimes"; use fsync or relaxed"#),
        (json!({"durability": "FSYNC"}), r#"unknown durability "FSYNC"; use fsync or relaxed"#),
        (json!({"durability": 1}), r#"expected a durability: "fsync" or "relaxed""#),
    ] {
        let message = api.put("/v1/queues/analytics", body.clone()).await.err(400, "invalid_request");
        assert!(message.contains(wording), "{body}: {message}");
    }
    let unchanged = api.get("/v1/queues/analytics").await.ok(200);
    assert_eq!(unchanged["config"]["durability"], json!("relaxed"), "a refused PUT changed the queue: {unchanged}");

    let ids = api.enqueue("analytics", &[json!({"page": "/"}), json!({"page": "/a"})]).await;
    let leased = api.lease("analytics", 2, 30_000).await;
    assert_eq!(leased.len(), 2);
    for job in &leased {
        assert!(ids.contains(&id_of(job)), "{job}");
        let path = format!("/v1/jobs/{}/ack", id_of(job));
        api.post(&path, json!({"lease_token": token_of(job)})).await.no_content();
    }
    assert_eq!(api.get("/v1/queues/analytics").await.ok(200)["stats"]["ready"], json!(0));

    let fsync = api.put("/v1/queues/analytics", json!({"durability": "fsync"})).await.ok(200);
    assert_eq!(fsync["durability"], json!("fsync"), "{fsync}");
    let cleared = api.put("/v1/queues/analytics", json!({"durability": null})).await.ok(200);
    assert!(cleared.get("durability").is_none(), "null did not go back to the server's setting: {cleared}");
}
