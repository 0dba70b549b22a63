//! Proves, against the router in-process, that `unique` on an enqueue (and on a commit's
//! enqueue) works over HTTP and that every bad `unique` is 400 `invalid_request` naming the
//! field, changing nothing: an unknown `by` or `while`, a missing `by` or `while`, an unknown
//! field, `window_ms` missing, 0, past its limit, or given without `while: window`, `by: dedup_id`
//! without a dedup id, `by: payload` with a payload that is not JSON, and `by: dedup_id` while
//! pending or active in an `effectively_once` queue.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::Server;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_over_http_and_its_bad_requests() {
    let server = Server::start().await;
    let api = server.api();

    // A duplicate gets the holder's id with `duplicate: true`, in request order.
    let pending = json!({"by": "payload", "while": "pending"});
    let body = api
        .post(
            "/v1/queues/q/jobs",
            json!({"jobs": [
                {"payload": {"a": 1, "b": 2}, "unique": pending},
                {"payload": {"b": 2, "a": 1}, "unique": pending},
            ]}),
        )
        .await
        .ok(200);
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs[0]["duplicate"], json!(false));
    assert_eq!(jobs[1], json!({"id": jobs[0]["id"], "duplicate": true}));
    let commit = api
        .post(
            "/v1/commits",
            json!({"enqueue": [{"queue": "q", "jobs": [{"payload": {"a": 1, "b": 2}, "unique": pending}]}]}),
        )
        .await
        .ok(200);
    assert_eq!(commit["enqueued"][0]["jobs"][0], json!({"id": jobs[0]["id"], "duplicate": true}), "{commit}");

    let limit = onceq_core::limits::UNIQUE_WINDOW_MS_MAX;
    let bad: Vec<(Value, &str)> = vec![
        (json!({"payload": 1, "unique": {"by": "args", "while": "pending"}}), "unique.by"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "running"}}), "unique.while"),
        (json!({"payload": 1, "unique": {"while": "pending"}}), "by"),
        (json!({"payload": 1, "unique": {"by": "payload"}}), "while"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "pending", "states": []}}), "states"),
        (json!({"payload": 1, "unique": "payload"}), "unique"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "window"}}), "window_ms"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "window", "window_ms": 0}}), "window_ms"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "window", "window_ms": limit + 1}}), "window_ms"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "window", "window_ms": -1}}), "-1"),
        (json!({"payload": 1, "unique": {"by": "payload", "while": "active", "window_ms": 5}}), "window_ms"),
        (json!({"payload": 1, "unique": {"by": "dedup_id", "while": "active"}}), "dedup_id"),
        (json!({"payload_base64": "AAEC", "unique": {"by": "payload", "while": "active"}}), "JSON"),
    ];
    for (job, field) in bad {
        let message =
            api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 0}, job]})).await.err(400, "invalid_request");
        let names = |message: &str| message.to_lowercase().contains(&field.to_lowercase());
        assert!(names(&message), "{job}: the message names {field}: {message}");
        let message = api
            .post("/v1/commits", json!({"enqueue": [{"queue": "q", "jobs": [job]}]}))
            .await
            .err(400, "invalid_request");
        assert!(names(&message), "{job} in a commit: the message names {field}: {message}");
    }
    // The window's limit itself is fine.
    let at_limit = json!({"payload": 2, "unique": {"by": "payload", "while": "window", "window_ms": limit}});
    api.post("/v1/queues/q/jobs", json!({"jobs": [at_limit]})).await.ok(200);

    api.put("/v1/queues/strict", json!({"delivery": "effectively_once"})).await.ok(200);
    for rule in ["pending", "active"] {
        let job = json!({"payload": 1, "dedup_id": "d", "unique": {"by": "dedup_id", "while": rule}});
        let message = api.post("/v1/queues/strict/jobs", json!({"jobs": [job]})).await.err(400, "invalid_request");
        assert!(message.contains("effectively_once"), "{message}");
    }
    let stats = api.get("/v1/queues/q").await.ok(200);
    assert_eq!(stats["stats"]["ready"], json!(2), "nothing refused was written: {stats}");
    let strict = api.get("/v1/queues/strict").await.ok(200);
    assert_eq!(strict["stats"]["ready"], json!(0), "{strict}");
}
