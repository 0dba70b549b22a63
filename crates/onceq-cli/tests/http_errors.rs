//! Every error of API.md's table that `onceq serve` over the embedded store can produce, with
//! its exact status and code, and the error body `{"error": {"code", "message"}}` (non-empty
//! message, JSON content type, nothing else) — against the real binary:
//! - 400 `invalid_request`: malformed JSON, wrong types, values past their limits (`max_jobs`
//!   0 / 1001, `wait_ms` 20001, visibility timeout 0, batch sizes, redrive limit, dead page
//!   limit), bad queue names (`a b`, 129 characters), unknown fields, bad lease-token and job-id
//!   formats, an `effectively_once` enqueue without a dedup id, `delay_ms` with `run_at`;
//!   and 405 (code `invalid_request`) for a known path with the wrong method;
//! - 401 `unauthorized` and 403 `forbidden` (auth on);
//! - 404 `not_found`: unknown queue on every queue endpoint that does not create, unknown job on
//!   every job endpoint, unknown route;
//! - 409 `lease_lost`: a stale token after a re-lease, an expired lease (1 ms visibility
//!   timeout), a token on a job that is not leased; a refused call changes nothing;
//! - 409 `conflict`: an idempotency key reused with another fingerprint, and complete / release
//!   by an owner that does not hold the key;
//! - 413 `payload_too_large`: a payload one byte over 1 MiB, and a request body one byte over the
//!   16 MiB request limit (exactly 1 MiB and exactly 16 MiB are accepted); an idempotency result
//!   over 1 MiB.
//!
//! Not producible here, so not tested: 429 `rate_limited` (no rate limits are configurable),
//! 503 `unavailable` (`/readyz` says 503 only while shutting down, when no new request reaches
//! the server, or when the store fails, which a live embedded store does not).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{id_of, token_of, tokens_config, Api, Server, TokenSpec};
use reqwest::Method;
use serde_json::{json, Value};

/// A well-formed lease token that no lease has.
const FOREIGN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A raw request body (not necessarily JSON).
async fn raw(api: &Api, method: Method, path: &str, body: &str) -> common::Reply {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_the_current_lease_is_409_lease_lost() {
    let server = Server::start().await;
    let api = server.api();
    let id = api.enqueue("q", &[json!("x")]).await.remove(0);

    // A token on a job that is not leased.
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": FOREIGN_TOKEN})).await.err(409, "lease_lost");

    // An expired lease (1 ms visibility timeout): every settle call is refused.
    let first = api.lease("q", 1, 1).await.remove(0);
    let stale = token_of(&first);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for (action, body) in settle_bodies(&stale) {
        let message = api.post(&format!("/v1/jobs/{id}/{action}"), body).await.err(409, "lease_lost");
        assert!(message.contains(&id), "the message names the job: {message}");
    }

    // Leased again (attempt 2, after the expiry): the old token is refused, the job is untouched.
    let second = api.lease("q", 1, 60_000).await.remove(0);
    assert_eq!((id_of(&second), &second["attempt"]), (id.clone(), &json!(2)));
    for (action, body) in settle_bodies(&stale) {
        api.post(&format!("/v1/jobs/{id}/{action}"), body).await.err(409, "lease_lost");
    }
    // A well-formed token that was never this job's.
    for (action, body) in settle_bodies(FOREIGN_TOKEN) {
        api.post(&format!("/v1/jobs/{id}/{action}"), body).await.err(409, "lease_lost");
    }
    let job = api.get(&format!("/v1/jobs/{id}")).await.ok(200);
    assert_eq!((&job["state"], &job["attempt"]), (&json!("leased"), &json!(2)), "{job}");
    assert_eq!(job["lease_expires_at"], second["lease_expires_at"], "no refused extend moved the lease");
    let errors: Vec<&Value> = job["errors"].as_array().unwrap().iter().map(|e| &e["error"]).collect();
    assert_eq!(errors, [&json!("lease expired")], "no refused nack or fail recorded an error");

    // The batch endpoints say lease_lost per item, with a 200.
    for (path, key, item) in [
        ("/v1/acks", "acks", json!({"id": id, "lease_token": stale})),
        ("/v1/nacks", "nacks", json!({"id": id, "lease_token": stale})),
        ("/v1/extends", "extends", json!({"id": id, "lease_token": stale, "visibility_timeout_ms": 1000})),
        ("/v1/fails", "fails", json!({"id": id, "lease_token": stale, "error": "x"})),
    ] {
        let body = api.post(path, json!({ key: [item] })).await.ok(200);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{body}");
        assert_eq!((&results[0]["id"], &results[0]["ok"]), (&json!(id), &json!(false)), "{body}");
        common::assert_error_detail(path, &results[0]["error"], "lease_lost");
    }

    // The current token still works.
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": token_of(&second)})).await.no_content();
}

/// The four settle calls with `token`.
fn settle_bodies(token: &str) -> [(&'static str, Value); 4] {
    [
        ("ack", json!({"lease_token": token})),
        ("nack", json!({"lease_token": token, "delay_ms": 0})),
        ("extend", json!({"lease_token": token, "visibility_timeout_ms": 60_000})),
        ("fail", json!({"lease_token": token, "error": "late"})),
    ]
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_and_bodies_are_413_payload_too_large() {
    let server = Server::start().await;
    let api = server.api();
    const MIB: usize = 1024 * 1024;

    // The payload limit is on the payload's JSON text: a string of 1 MiB - 2 characters plus its
    // quotes is exactly 1 MiB and is accepted; one more character is refused.
    let at_limit = json!({"jobs": [{"payload": "a".repeat(MIB - 2)}]});
    let id = id_of(&api.post("/v1/queues/big/jobs", at_limit).await.ok(200)["jobs"][0]);
    let job = api.get(&format!("/v1/jobs/{id}")).await.ok(200);
    assert_eq!(job["payload"].as_str().map(str::len), Some(MIB - 2));
    let over = json!({"jobs": [{"payload": "a".repeat(MIB - 1)}]});
    let message = api.post("/v1/queues/big/jobs", over).await.err(413, "payload_too_large");
    assert!(message.contains("payload"), "{message}");
    // One oversized job refuses its whole batch.
    let mixed = json!({"jobs": [{"payload": "small"}, {"payload": "a".repeat(MIB)}]});
    api.post("/v1/queues/big/jobs", mixed).await.err(413, "payload_too_large");
    assert_eq!(api.get("/v1/queues/big").await.ok(200)["stats"]["ready"], 1, "nothing of a refused batch is written");

    // The request body limit (16 MiB), whatever the body holds: a valid enqueue padded with
    // whitespace to exactly the limit is served; one byte more is refused. (A body of exactly
    // limit + 1 bytes is read whole before the refusal, so the server closes the connection with
    // nothing unread and the reply cannot be lost to a reset.)
    let limit = 16 * MIB;
    let jobs: Vec<Value> = (0..16).map(|_| json!({"payload": "b".repeat(MIB - 64)})).collect();
    let mut body = json!({ "jobs": jobs }).to_string().into_bytes();
    assert!(body.len() < limit);
    body.resize(limit, b' ');
    let reply = api.send(Method::POST, "/v1/queues/big/jobs", Some(body.clone()), &[]).await.ok(200);
    assert_eq!(reply["jobs"].as_array().map(Vec::len), Some(16));
    body.push(b' ');
    let message = api.send(Method::POST, "/v1/queues/big/jobs", Some(body), &[]).await.err(413, "payload_too_large");
    assert!(message.contains("request body"), "{message}");
    assert_eq!(api.get("/v1/queues/big").await.ok(200)["stats"]["ready"], 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_are_401_unauthorized_and_403_forbidden() {
    let config = tokens_config(&[TokenSpec {
        name: "producer",
        secret: "producer-secret",
        produce: &["jobs.*"],
        consume: &[],
        admin: &[],
    }]);
    let server = Server::start_with_config(&config).await;
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
