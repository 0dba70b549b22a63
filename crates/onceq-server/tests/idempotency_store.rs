//! Proves the idempotency store over HTTP against the router in-process: begin → acquired;
//! another owner → in_progress with the holder and its expiry; the holder renews; complete; then
//! begin → completed with the result; release gives a key up, so the next begin acquires it; a
//! percent-encoded key is the decoded text, one key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::Server;
use serde_json::{json, Value};

/// The idempotency store over HTTP: begin → acquired; another owner → in_progress with the
/// holder and its expiry; the holder renews; complete; then begin → completed with the result.
/// Release gives a key up, so the next begin acquires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_store_over_http() {
    let server = Server::start().await;
    let api = server.api();
    let begin = |key: &str, owner: &str| {
        let body = json!({"owner": owner, "ttl_ms": 60_000, "fingerprint": "charge-42"});
        let path = format!("/v1/idempotency/{key}/begin");
        let api = api.clone();
        async move { api.post(&path, body).await.ok(200) }
    };

    assert_eq!(begin("payments.42", "worker-1").await, json!({"state": "acquired"}));
    let held = begin("payments.42", "worker-2").await;
    assert_eq!(held.as_object().unwrap().len(), 3, "{held}");
    assert_eq!((&held["state"], &held["owner"]), (&json!("in_progress"), &json!("worker-1")), "{held}");
    assert!(is_rfc3339(&held["until"]), "{held}");
    assert_eq!(begin("payments.42", "worker-1").await, json!({"state": "acquired"}), "the holder renews its claim");

    let result = json!({"charged": 42, "receipt": ["r", 1]});
    api.post(
        "/v1/idempotency/payments.42/complete",
        json!({"owner": "worker-1", "result": result, "retention_ms": 60_000}),
    )
    .await
    .no_content();
    assert_eq!(begin("payments.42", "worker-3").await, json!({"state": "completed", "result": result}));

    // Release: the key is free again.
    assert_eq!(begin("payments.43", "worker-1").await, json!({"state": "acquired"}));
    api.post("/v1/idempotency/payments.43/release", json!({"owner": "worker-1"})).await.no_content();
    assert_eq!(begin("payments.43", "worker-2").await, json!({"state": "acquired"}));

    // Keys are path segments: a percent-encoded key is the decoded text, one key.
    assert_eq!(begin("order%2F7", "worker-1").await, json!({"state": "acquired"}));
    assert_eq!(begin("order%2F7", "worker-2").await["owner"], "worker-1");
}

/// Whether `value` is an RFC 3339 UTC time as the API writes it (`2026-01-01T00:00:00.000Z`).
fn is_rfc3339(value: &Value) -> bool {
    let Some(text) = value.as_str() else { return false };
    let bytes = text.as_bytes();
    text.len() == 24
        && text.ends_with('Z')
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && text.chars().filter(char::is_ascii_digit).count() == 17
}
