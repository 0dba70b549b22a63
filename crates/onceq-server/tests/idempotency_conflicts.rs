//! Proves, against the router in-process, that an idempotency key reused with another
//! fingerprint, and complete or release by an owner that does not hold the key, are 409
//! `conflict` and change nothing; that bad idempotency requests are 400 `invalid_request`; and
//! that a result over 1 MiB is 413 `payload_too_large`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_held_or_reused_are_409_conflict() {
    let server = Server::start().await;
    let api = server.api();
    let begin = |owner: &str, fingerprint: &str| json!({"owner": owner, "ttl_ms": 60_000, "fingerprint": fingerprint});
    let path = |action: &str| format!("/v1/idempotency/pay.1/{action}");
    assert_eq!(api.post(&path("begin"), begin("w1", "f1")).await.ok(200), json!({"state": "acquired"}));

    // The same key with another fingerprint, while in progress.
    let message = api.post(&path("begin"), begin("w2", "f2")).await.err(409, "conflict");
    assert!(message.contains("pay.1"), "the message names the key: {message}");
    // Complete or release by someone who does not hold the key.
    let complete = |owner: &str| json!({"owner": owner, "result": {"ok": true}, "retention_ms": 60_000});
    api.post(&path("complete"), complete("w2")).await.err(409, "conflict");
    api.post(&path("release"), json!({"owner": "w2"})).await.err(409, "conflict");
    api.post("/v1/idempotency/never-begun/complete", complete("w1")).await.err(409, "conflict");
    api.post("/v1/idempotency/never-begun/release", json!({"owner": "w1"})).await.err(409, "conflict");
    // None of that changed the claim; once completed, another fingerprint is still a conflict.
    assert_eq!(api.post(&path("begin"), begin("w2", "f1")).await.ok(200)["owner"], "w1");
    api.post(&path("complete"), complete("w1")).await.no_content();
    api.post(&path("begin"), begin("w3", "f2")).await.err(409, "conflict");
    api.post(&path("complete"), complete("w1")).await.err(409, "conflict");
    assert_eq!(
        api.post(&path("begin"), begin("w3", "f1")).await.ok(200),
        json!({"state": "completed", "result": {"ok": true}})
    );

    // Bad idempotency requests are 400, an oversized result 413.
    for body in [
        json!({"owner": "w1", "ttl_ms": 0}),
        json!({"owner": "", "ttl_ms": 1000}),
        json!({"owner": "w1", "ttl_ms": 24 * 3600 * 1000 + 1}),
        json!({"owner": "w1", "ttl_ms": 1000, "fingerprint": "f".repeat(257)}),
        json!({"owner": "w1"}),
        json!({"owner": "w1", "ttl_ms": 1000, "colour": "red"}),
    ] {
        api.post("/v1/idempotency/pay.2/begin", body).await.err(400, "invalid_request");
    }
    api.post(&format!("/v1/idempotency/{}/begin", "k".repeat(257)), begin("w1", "f1"))
        .await
        .err(400, "invalid_request");
    api.post("/v1/idempotency/pay.2/begin", begin("w1", "f1")).await.ok(200);
    api.post("/v1/idempotency/pay.2/complete", json!({"owner": "w1", "result": 1, "retention_ms": 0}))
        .await
        .err(400, "invalid_request");
    api.post("/v1/idempotency/pay.2/complete", json!({"owner": "w1", "retention_ms": 1000}))
        .await
        .err(400, "invalid_request");
    let huge = json!({"owner": "w1", "result": "r".repeat(1024 * 1024), "retention_ms": 1000});
    api.post("/v1/idempotency/pay.2/complete", huge).await.err(413, "payload_too_large");
    api.post("/v1/idempotency/pay.2/release", json!({"owner": "w1"})).await.no_content();
}
