//! Proves, against the router in-process, that every malformed or out-of-range request is 400
//! `invalid_request` with the API's error body (`{"error": {"code", "message"}}`, a non-empty
//! message, a JSON content type) and changes nothing: malformed JSON on each kind of body, wrong
//! types, values past their limits (`max_jobs` 0 / 1001, `wait_ms` 20001, visibility timeout 0,
//! batch sizes, redrive limit, dead page limit), bad queue names (`a b`, 129 characters), unknown
//! fields, bad lease-token and job-id formats, an `Idempotency-Key` on a batch or against another
//! dedup id, an `effectively_once` enqueue without a dedup id, `delay_ms` with `run_at`; and 405
//! (code `invalid_request`) for a known path with the wrong method.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use axum::http::Method;
use in_process::{id_of, token_of, Api, Server};
use serde_json::{json, Value};

/// A well-formed lease token that no lease has.
const FOREIGN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A raw request body (not necessarily JSON).
async fn raw(api: &Api, method: Method, path: &str, body: &str) -> in_process::Reply {
    api.send(method, path, Some(body.as_bytes().to_vec()), &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_invalid_request() {
    let server = Server::start().await;
    let api = server.api();
    api.enqueue("q", &[json!(1)]).await;

    // Malformed JSON, on each kind of body.
    for (method, path) in [
        (Method::POST, "/v1/queues/q/jobs"),
        (Method::POST, "/v1/queues/q/leases"),
        (Method::PUT, "/v1/queues/q"),
        (Method::POST, "/v1/jobs/1/ack"),
        (Method::POST, "/v1/acks"),
        (Method::POST, "/v1/queues/q/dead/redrive"),
    ] {
        raw(&api, method.clone(), path, r#"{"jobs": ["#).await.err(400, "invalid_request");
        raw(&api, method, path, "not json at all").await.err(400, "invalid_request");
    }

    // Wrong types.
    api.post("/v1/queues/q/leases", json!({"max_jobs": "ten"})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/leases", json!({"wait_ms": -1})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/jobs", json!({"jobs": {"payload": 1}})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1, "priority": "high"}]}))
        .await
        .err(400, "invalid_request");
    api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1, "headers": {"k": 1}}]}))
        .await
        .err(400, "invalid_request");
    api.put("/v1/queues/q", json!({"delivery": "exactly_once"})).await.err(400, "invalid_request");
    api.put("/v1/queues/q", json!({"visibility_timeout_ms": "30s"})).await.err(400, "invalid_request");
    api.post("/v1/acks", json!({"acks": [{"id": 1, "lease_token": FOREIGN_TOKEN}]})).await.err(400, "invalid_request");

    // Values out of their limits.
    for body in [
        json!({"max_jobs": 0}),
        json!({"max_jobs": 1001}),
        json!({"wait_ms": 20_001}),
        json!({"visibility_timeout_ms": 0}),
        json!({"visibility_timeout_ms": 12 * 3600 * 1000 + 1}),
    ] {
        let message = api.post("/v1/queues/q/leases", body.clone()).await.err(400, "invalid_request");
        let field = body.as_object().unwrap().keys().next().unwrap().clone();
        assert!(message.contains(&field), "the message names {field}: {message}");
    }
    api.post("/v1/queues/q/jobs", json!({"jobs": []})).await.err(400, "invalid_request");
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"payload": i})).collect();
    api.post("/v1/queues/q/jobs", json!({"jobs": too_many})).await.err(400, "invalid_request");
    for job in [
        json!({"payload": 1, "priority": 1_000_001}),
        json!({"payload": 1, "max_attempts": 0}),
        json!({"payload": 1, "delay_ms": 365u64 * 24 * 3600 * 1000 + 1}),
        json!({"payload": 1, "dedup_id": ""}),
        json!({"payload": 1, "dedup_id": "d".repeat(257)}),
        json!({"payload": 1, "headers": {"k": "v".repeat(4097)}}),
        json!({"payload": 1, "run_at": "tomorrow"}),
        json!({"payload": 1, "payload_base64": "AA=="}),
        json!({"delay_ms": 5}),
    ] {
        api.post("/v1/queues/q/jobs", json!({"jobs": [job]})).await.err(400, "invalid_request");
    }
    let both = api
        .post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1, "delay_ms": 5, "run_at": "2026-01-01T00:00:00Z"}]}))
        .await
        .err(400, "invalid_request");
    assert!(both.contains("delay_ms") && both.contains("run_at"), "{both}");
    api.put("/v1/queues/q", json!({"max_attempts": 0})).await.err(400, "invalid_request");
    api.put("/v1/queues/q", json!({"backoff": {"initial_ms": 10, "max_ms": 5, "multiplier": 2.0, "jitter": "none"}}))
        .await
        .err(400, "invalid_request");
    api.post("/v1/acks", json!({"acks": []})).await.err(400, "invalid_request");
    api.get("/v1/queues/q/dead?limit=0").await.err(400, "invalid_request");
    api.get("/v1/queues/q/dead?limit=1001").await.err(400, "invalid_request");
    api.get("/v1/queues/q/dead?limit=many").await.err(400, "invalid_request");
    api.get("/v1/queues/q/dead?after=x").await.err(400, "invalid_request");
    api.get("/v1/queues/q/dead?colour=red").await.err(400, "invalid_request");
    api.post("/v1/queues/q/dead/redrive", json!({"limit": 0})).await.err(400, "invalid_request");

    // Bad queue names, on every queue endpoint; 128 characters is fine.
    let long = "x".repeat(129);
    for name in ["a%20b", "a*b", "%C3%A9", long.as_str()] {
        let message = api.put(&format!("/v1/queues/{name}"), json!({})).await.err(400, "invalid_request");
        assert!(message.contains("queue name"), "{message}");
        api.get(&format!("/v1/queues/{name}")).await.err(400, "invalid_request");
        api.post(&format!("/v1/queues/{name}/jobs"), json!({"jobs": [{"payload": 1}]}))
            .await
            .err(400, "invalid_request");
        api.post(&format!("/v1/queues/{name}/leases"), json!({})).await.err(400, "invalid_request");
        api.post_empty(&format!("/v1/queues/{name}/pause")).await.err(400, "invalid_request");
        api.delete(&format!("/v1/queues/{name}")).await.err(400, "invalid_request");
        api.get(&format!("/v1/queues/{name}/dead")).await.err(400, "invalid_request");
    }
    api.put(&format!("/v1/queues/{}", "x".repeat(128)), json!({})).await.ok(200);
    let names: Vec<String> = api.get("/v1/queues").await.ok(200)["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["q".to_owned(), "x".repeat(128)], "no invalid name created a queue");

    // Unknown fields.
    api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1, "colour": "red"}]})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1}], "atomic": true})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/leases", json!({"max_jobs": 1, "bogus": 1})).await.err(400, "invalid_request");
    api.put("/v1/queues/q", json!({"visibility": 1})).await.err(400, "invalid_request");
    api.post("/v1/queues/q/dead/redrive", json!({"all": true})).await.err(400, "invalid_request");

    // Lease tokens and job ids that are not well-formed.
    let job = api.lease("q", 1, 60_000).await.pop().expect("the job enqueued at the start");
    let id = id_of(&job);
    for bad in ["xyz", "0123456789abcdef0123456789abcdeg", "0123456789abcdef0123456789abcdef00", ""] {
        api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": bad})).await.err(400, "invalid_request");
    }
    api.post(&format!("/v1/jobs/{id}/ack"), json!({})).await.err(400, "invalid_request");
    api.post(&format!("/v1/jobs/{id}/fail"), json!({"lease_token": token_of(&job)})).await.err(400, "invalid_request");
    api.post(&format!("/v1/jobs/{id}/extend"), json!({"lease_token": token_of(&job), "visibility_timeout_ms": 0}))
        .await
        .err(400, "invalid_request");
    for bad in ["abc", "-1", "1.5", "18446744073709551616"] {
        api.get(&format!("/v1/jobs/{bad}")).await.err(400, "invalid_request");
        api.post(&format!("/v1/jobs/{bad}/ack"), json!({"lease_token": FOREIGN_TOKEN}))
            .await
            .err(400, "invalid_request");
    }
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).await.ok(200)["state"], "leased", "refused calls changed nothing");
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": token_of(&job)})).await.no_content();

    // Idempotency-Key: one-job requests only, and not against a different dedup_id.
    let two = json!({"jobs": [{"payload": 1}, {"payload": 2}]}).to_string().into_bytes();
    api.send(Method::POST, "/v1/queues/q/jobs", Some(two), &[("Idempotency-Key", "k")])
        .await
        .err(400, "invalid_request");
    let other = json!({"jobs": [{"payload": 1, "dedup_id": "d"}]}).to_string().into_bytes();
    api.send(Method::POST, "/v1/queues/q/jobs", Some(other), &[("Idempotency-Key", "k")])
        .await
        .err(400, "invalid_request");

    // An effectively_once queue refuses a job without a dedup id, and the whole batch with it.
    api.put("/v1/queues/eo", json!({"delivery": "effectively_once"})).await.ok(200);
    let message = api.post("/v1/queues/eo/jobs", json!({"jobs": [{"payload": 1}]})).await.err(400, "invalid_request");
    assert!(message.contains("dedup"), "{message}");
    api.post("/v1/queues/eo/jobs", json!({"jobs": [{"payload": 1, "dedup_id": "a"}, {"payload": 2}]}))
        .await
        .err(400, "invalid_request");
    assert_eq!(api.get("/v1/queues/eo").await.ok(200)["stats"]["ready"], 0, "nothing of a refused batch is written");
    api.post("/v1/queues/eo/jobs", json!({"jobs": [{"payload": 1, "dedup_id": "a"}]})).await.ok(200);

    // A known path with the wrong method.
    api.get("/v1/queues/q/jobs").await.err(405, "invalid_request");
    api.delete("/v1/acks").await.err(405, "invalid_request");
    api.put("/v1/jobs/1", json!({})).await.err(405, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_as_another_type_is_415_and_changes_nothing() {
    let server = Server::start().await;
    let api = server.api();
    api.enqueue("q", &[json!(1)]).await;
    let enqueue = br#"{"jobs": [{"payload": 2}]}"#.to_vec();
    for declared in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let reply =
            api.send(Method::POST, "/v1/queues/q/jobs", Some(enqueue.clone()), &[("content-type", declared)]).await;
        let message = reply.err(415, "unsupported_media_type");
        assert!(message.contains(declared) && message.contains("application/json"), "{message}");
    }
    let reply = api.send(Method::PUT, "/v1/queues/q", Some(b"{}".to_vec()), &[("content-type", "text/plain")]).await;
    reply.err(415, "unsupported_media_type");
    let stats = api.get("/v1/queues/q").await.ok(200);
    assert_eq!(stats["stats"]["ready"], json!(1), "a refused enqueue enqueued nothing: {stats}");
    // JSON with parameters, a +json type, and no type at all are read.
    for declared in ["application/json; charset=utf-8", "application/vnd.onceq+json"] {
        api.send(Method::POST, "/v1/queues/q/jobs", Some(enqueue.clone()), &[("content-type", declared)]).await.ok(200);
    }
    let bare = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/v1/queues/q/jobs")
        .body(axum::body::Body::from(enqueue))
        .unwrap();
    let status = tower::ServiceExt::oneshot(server.router(), bare).await.unwrap().status();
    assert_eq!(status.as_u16(), 200, "a body without Content-Type is read as JSON");
}

/// Issue 27: a query string or a path segment that does not parse is answered in onceq's own
/// words (never the framework's, such as "Failed to deserialize query string"), with the API's
/// error body, on every extractor: queue, job, group, schedule and idempotency-key paths alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_and_path_segments_that_do_not_parse_are_refused_in_onceq_s_words() {
    let server = Server::start().await;
    let api = server.api();
    api.enqueue("q", &[json!(1)]).await;
    for (query, says) in [("limit=many", "limit=many"), ("limit=-1", "limit=-1"), ("sort=age", "unknown field")] {
        let reply = api.get(&format!("/v1/queues/q/dead?{query}")).await;
        let message = reply.err(400, "invalid_request");
        assert!(message.contains("query string") && message.contains(says), "{query}: {message}");
        assert!(!message.contains("Failed to deserialize"), "{query}: the framework's words: {message}");
    }
    // %FF is not UTF-8 once decoded.
    for (method, path) in [
        (Method::GET, "/v1/queues/%FF"),
        (Method::GET, "/v1/jobs/%FF"),
        (Method::GET, "/v1/queues/q/groups/%FF"),
        (Method::GET, "/v1/schedules/%FF"),
        (Method::POST, "/v1/idempotency/%FF/begin"),
    ] {
        let body = (method == Method::POST).then(|| br#"{"owner": "w", "lease_ms": 1000}"#.to_vec());
        let reply = api.send(method.clone(), path, body, &[]).await;
        let message = reply.err(400, "invalid_request");
        assert!(message.contains("not valid UTF-8"), "{method} {path}: {message}");
        assert!(!message.contains("Invalid URL"), "{method} {path}: the framework's words: {message}");
    }
}

/// Issue 25: a job id has one spelling (decimal digits, no sign, no leading zero, not
/// percent-encoded), and an enqueue with two `Idempotency-Key` headers is refused rather than
/// using one of them silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_have_one_spelling_and_idempotency_keys_one_header() {
    let server = Server::start().await;
    let api = server.api();
    let ids = api.enqueue("q", &[json!(1)]).await;
    assert_eq!(ids, ["1"]);
    api.get("/v1/jobs/1").await.ok(200);
    for spelling in ["+1", "01", "%31", "1.0", "0x1", "%2B1"] {
        let message = api.get(&format!("/v1/jobs/{spelling}")).await.err(400, "invalid_request");
        assert!(message.contains("not a job id"), "{spelling}: {message}");
    }
    let message = api.get("/v1/queues/q/dead?after=01").await.err(400, "invalid_request");
    assert!(message.contains("not a job id"), "{message}");
    let leased = api.lease("q", 1, 30_000).await;
    let message = api
        .post("/v1/acks", json!({"acks": [{"id": "+1", "lease_token": token_of(&leased[0])}]}))
        .await
        .err(400, "invalid_request");
    assert!(message.contains("not a job id"), "{message}");

    let body = br#"{"jobs": [{"payload": 2}]}"#.to_vec();
    let headers = [("content-type", "application/json"), ("idempotency-key", "a"), ("idempotency-key", "b")];
    let message = api.send(Method::POST, "/v1/queues/q/jobs", Some(body), &headers).await.err(400, "invalid_request");
    assert!(message.contains("more than one Idempotency-Key"), "{message}");
    assert_eq!(api.get("/v1/queues/q").await.ok(200)["stats"]["ready"], 0, "nothing enqueued");
}
