//! Proves, against the router in-process, that the per-key flow fields travel over HTTP: a
//! `PUT /v1/queues/{queue}` with `rate_limit_by` and `max_in_flight_per_key` is kept and shown by
//! `GET`, `null` clears them, and each bad form is 400 `invalid_request` with a message naming
//! the field (an unknown `rate_limit_by` form, an empty header name, `rate_limit_by` without a
//! `rate_limit`, `max_in_flight_per_key` 0 or past its limit), changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::Server;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_fields_are_kept_shown_cleared_and_validated() {
    let server = Server::start().await;
    let api = server.api();
    let body = json!({
        "rate_limit": {"per_second": 5, "burst": 5},
        "rate_limit_by": "header:account",
        "max_in_flight_per_key": 2
    });
    let config = api.put("/v1/queues/calls", body).await.ok(200);
    assert_eq!(config["rate_limit_by"], json!("header:account"));
    assert_eq!(config["max_in_flight_per_key"], json!(2));
    let shown = api.get("/v1/queues/calls").await.ok(200);
    assert_eq!(shown["config"]["rate_limit_by"], json!("header:account"), "{shown}");
    assert_eq!(shown["config"]["max_in_flight_per_key"], json!(2), "{shown}");

    for (body, names) in [
        (json!({"rate_limit_by": "customer"}), "rate_limit_by"),
        (json!({"rate_limit_by": "header:"}), "rate_limit_by"),
        (json!({"rate_limit_by": 7}), "rate_limit_by"),
        (json!({"max_in_flight_per_key": 0}), "max_in_flight_per_key"),
        (json!({"max_in_flight_per_key": 1_000_001}), "max_in_flight_per_key"),
        (json!({"rate_limit": null}), "rate_limit_by"),
    ] {
        let message = api.put("/v1/queues/calls", body.clone()).await.err(400, "invalid_request");
        assert!(message.contains(names), "{body}: the message names {names}: {message}");
    }
    let message =
        api.put("/v1/queues/plain", json!({"rate_limit_by": "ordering_key"})).await.err(400, "invalid_request");
    assert!(message.contains("rate_limit_by needs a rate_limit"), "{message}");
    let unchanged = api.get("/v1/queues/calls").await.ok(200);
    assert_eq!(unchanged["config"], shown["config"], "a refused patch changed the config");

    let cleared = api
        .put("/v1/queues/calls", json!({"rate_limit": null, "rate_limit_by": null, "max_in_flight_per_key": null}))
        .await
        .ok(200);
    assert!(cleared.get("rate_limit_by").is_none() && cleared.get("max_in_flight_per_key").is_none(), "{cleared}");
}
