//! Proves that every status `/openapi.json` declares for an operation is one the server answers:
//! for each (method, path, status) of the document, a request against a real in-process server
//! (an embedded store in a temporary directory) provokes it at least once, and an error status
//! comes with the API's error body. The test is driven by the document: the statuses every
//! operation has by its shape are provoked by rule (400 with malformed JSON or a bad path
//! parameter, 401 without a token, 403 with a token without permission, 413 with a body over the
//! limit, 415 with `text/plain`, 503 with the store closed, 408 through `serve` with a short
//! request timeout and a body that never ends), the successes by one well-formed request per
//! operation, and the rest (404, 409, 429) by a small table per path. It fails listing every
//! declared status it could not provoke, so a declaration nobody can observe is caught too.
//! (The other direction, that no response has an undeclared status, is held by the router itself
//! in debug builds, across every black-box test.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use in_process::{id_of, token_of, Api, Server, TokenSpec};
use onceq_core::{Clock, ManualClock};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// A token allowed everything: it sets up the fixtures of the server with auth on.
const ROOT: TokenSpec =
    TokenSpec { name: "root", secret: "root-secret", produce: &["*"], consume: &["*"], admin: &["*"] };
/// A token allowed nothing on the fixtures' queues, keys and producers.
const NOBODY: TokenSpec =
    TokenSpec { name: "nobody", secret: "nobody-secret", produce: &["nothing"], consume: &[], admin: &[] };

/// A well-formed lease token that no lease has.
const FOREIGN_TOKEN: &str = "0123456789abcdef0123456789abcdef";
/// A well-formed member id that no member has.
const STRANGER: &str = "fedcba9876543210fedcba9876543210";

/// One operation of the document.
#[derive(Debug)]
struct Operation {
    method: Method,
    /// The path template, as the document and the router spell it.
    path: String,
    declared: BTreeSet<u16>,
    reads_body: bool,
    reads_path: bool,
}

/// The operations of the document.
fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let declared = operation["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|status| status.parse().unwrap_or_else(|_| panic!("{method} {path}: status {status}")))
                .collect();
            let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
            out.push(Operation {
                method: Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path: path.clone(),
                declared,
                reads_body: operation.get("requestBody").is_some(),
                reads_path: parameters.iter().any(|p| p["in"] == "path"),
            });
        }
    }
    out
}

/// A well-formed request of each operation, which succeeds on a server with [`Fixtures`]:
/// method, path template, concrete path and body (`$JOB`, `$TOKEN`, `$MEMBER` and `$REDRIVE` stand for the
/// fixtures, `$FOREIGN` for [`FOREIGN_TOKEN`] and `$STRANGER` for [`STRANGER`]).
const WELL_FORMED: &[(&str, &str, &str, Option<&str>)] = &[
    ("GET", "/v1/queues", "/v1/queues", None),
    ("GET", "/v1/queues/{queue}", "/v1/queues/probe", None),
    ("PUT", "/v1/queues/{queue}", "/v1/queues/probe", Some(r#"{"max_attempts": 5}"#)),
    ("DELETE", "/v1/queues/{queue}", "/v1/queues/probe", None),
    ("POST", "/v1/queues/{queue}/pause", "/v1/queues/probe/pause", None),
    ("POST", "/v1/queues/{queue}/resume", "/v1/queues/probe/resume", None),
    ("POST", "/v1/queues/{queue}/jobs", "/v1/queues/probe/jobs", Some(r#"{"jobs": [{"payload": 1}]}"#)),
    ("POST", "/v1/queues/{queue}/leases", "/v1/queues/probe/leases", Some("{}")),
    ("GET", "/v1/queues/{queue}/dead", "/v1/queues/probe/dead?limit=10", None),
    ("DELETE", "/v1/queues/{queue}/dead", "/v1/queues/probe/dead", None),
    ("POST", "/v1/queues/{queue}/dead/redrive", "/v1/queues/probe/dead/redrive", Some("{}")),
    ("GET", "/v1/queues/{queue}/groups", "/v1/queues/keyed/groups", None),
    ("GET", "/v1/queues/{queue}/groups/{group}", "/v1/queues/keyed/groups/g", None),
    ("POST", "/v1/queues/{queue}/groups/{group}/members", "/v1/queues/keyed/groups/g/members", Some("{}")),
    (
        "POST",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat",
        "/v1/queues/keyed/groups/g/members/$MEMBER/heartbeat",
        None,
    ),
    (
        "DELETE",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}",
        "/v1/queues/keyed/groups/g/members/$MEMBER",
        None,
    ),
    ("GET", "/v1/jobs/{id}", "/v1/jobs/$JOB", None),
    ("POST", "/v1/jobs/{id}/cancel", "/v1/jobs/$JOB/cancel", None),
    ("DELETE", "/v1/jobs/{id}", "/v1/jobs/$DEAD", None),
    ("POST", "/v1/jobs/{id}/kill", "/v1/jobs/$DEAD/kill", Some(r#"{"error": "bad data"}"#)),
    ("POST", "/v1/jobs/{id}/ack", "/v1/jobs/$JOB/ack", Some(r#"{"lease_token": "$TOKEN"}"#)),
    ("POST", "/v1/jobs/{id}/nack", "/v1/jobs/$JOB/nack", Some(r#"{"lease_token": "$TOKEN"}"#)),
    (
        "POST",
        "/v1/jobs/{id}/extend",
        "/v1/jobs/$JOB/extend",
        Some(r#"{"lease_token": "$TOKEN", "visibility_timeout_ms": 1000}"#),
    ),
    ("POST", "/v1/jobs/{id}/fail", "/v1/jobs/$JOB/fail", Some(r#"{"lease_token": "$TOKEN", "error": "x"}"#)),
    ("POST", "/v1/jobs/{id}/release", "/v1/jobs/$JOB/release", Some(r#"{"lease_token": "$TOKEN"}"#)),
    ("POST", "/v1/acks", "/v1/acks", Some(r#"{"acks": [{"id": "$JOB", "lease_token": "$TOKEN"}]}"#)),
    ("POST", "/v1/nacks", "/v1/nacks", Some(r#"{"nacks": [{"id": "$JOB", "lease_token": "$TOKEN"}]}"#)),
    (
        "POST",
        "/v1/extends",
        "/v1/extends",
        Some(r#"{"extends": [{"id": "$JOB", "lease_token": "$TOKEN", "visibility_timeout_ms": 1000}]}"#),
    ),
    ("POST", "/v1/fails", "/v1/fails", Some(r#"{"fails": [{"id": "$JOB", "lease_token": "$TOKEN", "error": "x"}]}"#)),
    ("POST", "/v1/releases", "/v1/releases", Some(r#"{"releases": [{"id": "$JOB", "lease_token": "$TOKEN"}]}"#)),
    ("POST", "/v1/commits", "/v1/commits", Some(r#"{"enqueue": [{"queue": "probe", "jobs": [{"payload": 1}]}]}"#)),
    ("POST", "/v1/producers/{id}", "/v1/producers/probe", None),
    ("GET", "/v1/producers/{id}", "/v1/producers/probe", None),
    ("GET", "/v1/schedules", "/v1/schedules", None),
    ("GET", "/v1/schedules/{name}", "/v1/schedules/probe", None),
    ("PUT", "/v1/schedules/{name}", "/v1/schedules/probe", Some(r#"{"queue": "probe", "cron": "0 * * * *"}"#)),
    ("DELETE", "/v1/schedules/{name}", "/v1/schedules/probe", None),
    ("POST", "/v1/schedules/{name}/pause", "/v1/schedules/probe/pause", None),
    ("POST", "/v1/schedules/{name}/resume", "/v1/schedules/probe/resume", None),
    ("POST", "/v1/schedule-ticks", "/v1/schedule-ticks", None),
    ("GET", "/v1/redrives", "/v1/redrives", None),
    ("GET", "/v1/redrives/{id}", "/v1/redrives/$REDRIVE", None),
    ("POST", "/v1/redrives/{id}/stop", "/v1/redrives/$REDRIVE/stop", None),
    ("POST", "/v1/redrive-ticks", "/v1/redrive-ticks", None),
    ("POST", "/v1/idempotency/{key}/begin", "/v1/idempotency/probe/begin", Some(r#"{"owner": "a", "ttl_ms": 60000}"#)),
    (
        "POST",
        "/v1/idempotency/{key}/complete",
        "/v1/idempotency/probe/complete",
        Some(r#"{"owner": "a", "result": 1, "retention_ms": 60000}"#),
    ),
    ("POST", "/v1/idempotency/{key}/release", "/v1/idempotency/probe/release", Some(r#"{"owner": "a"}"#)),
    ("GET", "/healthz", "/healthz", None),
    ("GET", "/readyz", "/readyz", None),
    ("GET", "/metrics", "/metrics", None),
    ("GET", "/openapi.json", "/openapi.json", None),
];

/// A request: method, concrete path (placeholders allowed) and body.
type Step = (&'static str, &'static str, Option<&'static str>);

/// A paced redrive of queue `crowded`: the eleventh running on one queue is refused (409).
const CROWD: Step = ("POST", "/v1/queues/crowded/dead/redrive", Some(r#"{"rate_per_second": 1}"#));

/// The statuses particular to a path, each provoked on a server with [`Fixtures`] by a request
/// after some setup: method, path template, status, setup, request.
const PARTICULAR: &[(&str, &str, u16, &[Step], Step)] = &[
    ("GET", "/v1/queues", 400, &[], ("GET", "/v1/queues?limit=0", None)),
    ("GET", "/v1/queues/{queue}", 404, &[], ("GET", "/v1/queues/nope", None)),
    ("PUT", "/v1/queues/{queue}", 409, &[], ("PUT", "/v1/queues/probe", Some(r#"{"ordering": "per_key"}"#))),
    ("DELETE", "/v1/queues/{queue}", 404, &[], ("DELETE", "/v1/queues/nope", None)),
    ("POST", "/v1/queues/{queue}/pause", 404, &[], ("POST", "/v1/queues/nope/pause", None)),
    ("POST", "/v1/queues/{queue}/resume", 404, &[], ("POST", "/v1/queues/nope/resume", None)),
    (
        "POST",
        "/v1/queues/{queue}/jobs",
        409,
        &[("POST", "/v1/producers/fenced", None), ("POST", "/v1/producers/fenced", None)],
        (
            "POST",
            "/v1/queues/probe/jobs",
            Some(r#"{"jobs": [{"payload": 1}], "producer": {"id": "fenced", "epoch": 1}}"#),
        ),
    ),
    (
        "POST",
        "/v1/queues/{queue}/jobs",
        429,
        &[("PUT", "/v1/queues/full", Some(r#"{"max_depth": 1}"#))],
        ("POST", "/v1/queues/full/jobs", Some(r#"{"jobs": [{"payload": 1}, {"payload": 2}]}"#)),
    ),
    (
        "POST",
        "/v1/queues/{queue}/leases",
        409,
        &[],
        ("POST", "/v1/queues/keyed/leases", Some(r#"{"group": "g", "member_id": "$STRANGER"}"#)),
    ),
    (
        "POST",
        "/v1/queues/{queue}/leases",
        404,
        &[],
        ("POST", "/v1/queues/nope/leases", Some(r#"{"group": "g", "member_id": "$STRANGER"}"#)),
    ),
    (
        "POST",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat",
        404,
        &[],
        ("POST", "/v1/queues/nope/groups/g/members/$STRANGER/heartbeat", None),
    ),
    (
        "DELETE",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}",
        404,
        &[],
        ("DELETE", "/v1/queues/nope/groups/g/members/$STRANGER", None),
    ),
    ("GET", "/v1/queues/{queue}/dead", 404, &[], ("GET", "/v1/queues/nope/dead", None)),
    ("DELETE", "/v1/queues/{queue}/dead", 404, &[], ("DELETE", "/v1/queues/nope/dead", None)),
    ("POST", "/v1/queues/{queue}/dead/redrive", 404, &[], ("POST", "/v1/queues/nope/dead/redrive", Some("{}"))),
    ("GET", "/v1/queues/{queue}/groups", 404, &[], ("GET", "/v1/queues/nope/groups", None)),
    ("GET", "/v1/queues/{queue}/groups/{group}", 404, &[], ("GET", "/v1/queues/nope/groups/g", None)),
    (
        "POST",
        "/v1/queues/{queue}/groups/{group}/members",
        404,
        &[],
        ("POST", "/v1/queues/nope/groups/g/members", Some("{}")),
    ),
    (
        "POST",
        "/v1/queues/{queue}/groups/{group}/members",
        409,
        &[],
        ("POST", "/v1/queues/keyed/groups/other/members", Some("{}")),
    ),
    (
        "POST",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat",
        409,
        &[],
        ("POST", "/v1/queues/keyed/groups/g/members/$STRANGER/heartbeat", None),
    ),
    (
        "DELETE",
        "/v1/queues/{queue}/groups/{group}/members/{member_id}",
        409,
        &[],
        ("DELETE", "/v1/queues/keyed/groups/g/members/$STRANGER", None),
    ),
    ("GET", "/v1/jobs/{id}", 404, &[], ("GET", "/v1/jobs/424242", None)),
    ("POST", "/v1/jobs/{id}/cancel", 404, &[], ("POST", "/v1/jobs/424242/cancel", None)),
    ("POST", "/v1/jobs/{id}/cancel", 409, &[], ("POST", "/v1/jobs/$DEAD/cancel", None)),
    ("DELETE", "/v1/jobs/{id}", 404, &[], ("DELETE", "/v1/jobs/424242", None)),
    ("DELETE", "/v1/jobs/{id}", 409, &[], ("DELETE", "/v1/jobs/$JOB", None)),
    ("POST", "/v1/jobs/{id}/kill", 404, &[], ("POST", "/v1/jobs/424242/kill", Some("{}"))),
    ("POST", "/v1/jobs/{id}/kill", 409, &[], ("POST", "/v1/jobs/$JOB/kill", Some("{}"))),
    ("POST", "/v1/jobs/{id}/ack", 404, &[], ("POST", "/v1/jobs/424242/ack", Some(r#"{"lease_token": "$FOREIGN"}"#))),
    ("POST", "/v1/jobs/{id}/ack", 409, &[], ("POST", "/v1/jobs/$JOB/ack", Some(r#"{"lease_token": "$FOREIGN"}"#))),
    ("POST", "/v1/jobs/{id}/nack", 404, &[], ("POST", "/v1/jobs/424242/nack", Some(r#"{"lease_token": "$FOREIGN"}"#))),
    ("POST", "/v1/jobs/{id}/nack", 409, &[], ("POST", "/v1/jobs/$JOB/nack", Some(r#"{"lease_token": "$FOREIGN"}"#))),
    (
        "POST",
        "/v1/jobs/{id}/extend",
        404,
        &[],
        ("POST", "/v1/jobs/424242/extend", Some(r#"{"lease_token": "$FOREIGN", "visibility_timeout_ms": 1000}"#)),
    ),
    (
        "POST",
        "/v1/jobs/{id}/extend",
        409,
        &[],
        ("POST", "/v1/jobs/$JOB/extend", Some(r#"{"lease_token": "$FOREIGN", "visibility_timeout_ms": 1000}"#)),
    ),
    (
        "POST",
        "/v1/jobs/{id}/fail",
        404,
        &[],
        ("POST", "/v1/jobs/424242/fail", Some(r#"{"lease_token": "$FOREIGN", "error": "x"}"#)),
    ),
    (
        "POST",
        "/v1/jobs/{id}/fail",
        409,
        &[],
        ("POST", "/v1/jobs/$JOB/fail", Some(r#"{"lease_token": "$FOREIGN", "error": "x"}"#)),
    ),
    (
        "POST",
        "/v1/jobs/{id}/release",
        404,
        &[],
        ("POST", "/v1/jobs/424242/release", Some(r#"{"lease_token": "$FOREIGN"}"#)),
    ),
    (
        "POST",
        "/v1/jobs/{id}/release",
        409,
        &[],
        ("POST", "/v1/jobs/$JOB/release", Some(r#"{"lease_token": "$FOREIGN"}"#)),
    ),
    (
        "POST",
        "/v1/commits",
        409,
        &[],
        ("POST", "/v1/commits", Some(r#"{"ack": [{"id": "$JOB", "lease_token": "$FOREIGN"}]}"#)),
    ),
    (
        "POST",
        "/v1/commits",
        429,
        &[("PUT", "/v1/queues/full", Some(r#"{"max_depth": 1}"#))],
        ("POST", "/v1/commits", Some(r#"{"enqueue": [{"queue": "full", "jobs": [{"payload": 1}, {"payload": 2}]}]}"#)),
    ),
    ("GET", "/v1/schedules/{name}", 404, &[], ("GET", "/v1/schedules/nope", None)),
    ("GET", "/v1/redrives/{id}", 404, &[], ("GET", "/v1/redrives/999999", None)),
    ("POST", "/v1/redrives/{id}/stop", 404, &[], ("POST", "/v1/redrives/999999/stop", None)),
    (
        "POST",
        "/v1/queues/{queue}/dead/redrive",
        202,
        &[("PUT", "/v1/queues/paced", Some("{}"))],
        ("POST", "/v1/queues/paced/dead/redrive", Some(r#"{"rate_per_second": 1}"#)),
    ),
    (
        "POST",
        "/v1/queues/{queue}/dead/redrive",
        409,
        &[
            ("PUT", "/v1/queues/crowded", Some("{}")),
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
            CROWD,
        ],
        CROWD,
    ),
    ("DELETE", "/v1/schedules/{name}", 404, &[], ("DELETE", "/v1/schedules/nope", None)),
    ("POST", "/v1/schedules/{name}/pause", 404, &[], ("POST", "/v1/schedules/nope/pause", None)),
    ("POST", "/v1/schedules/{name}/resume", 404, &[], ("POST", "/v1/schedules/nope/resume", None)),
    (
        "POST",
        "/v1/idempotency/{key}/begin",
        409,
        &[("POST", "/v1/idempotency/printed/begin", Some(r#"{"owner": "a", "ttl_ms": 60000, "fingerprint": "one"}"#))],
        ("POST", "/v1/idempotency/printed/begin", Some(r#"{"owner": "b", "ttl_ms": 60000, "fingerprint": "two"}"#)),
    ),
    (
        "POST",
        "/v1/idempotency/{key}/complete",
        409,
        &[],
        ("POST", "/v1/idempotency/probe/complete", Some(r#"{"owner": "b", "result": 1, "retention_ms": 60000}"#)),
    ),
    (
        "POST",
        "/v1/idempotency/{key}/release",
        409,
        &[],
        ("POST", "/v1/idempotency/probe/release", Some(r#"{"owner": "b"}"#)),
    ),
];

/// Declared statuses no request of this test can provoke, by rule, with the reason.
fn excepted(operation: &Operation, status: u16) -> Option<&'static str> {
    (status == 408 && !operation.reads_body).then_some(
        "a request without a body does not wait on its client: only a handler slower than the request timeout \
         makes it 408, and no handler of a test's server can be made that slow on demand",
    )
}

/// What the fixtures of a server are: a leased job of queue `probe`, a dead job of queue
/// `graveyard`, a member of group `g` of the `per_key` queue `keyed`, a schedule `probe`, and the
/// idempotency key `probe` claimed by owner `a`.
struct Fixtures {
    job: String,
    dead: String,
    lease_token: String,
    member: String,
    /// A paced redrive of queue `probe`.
    redrive: String,
}

impl Fixtures {
    async fn make(api: &Api) -> Fixtures {
        let job = api.enqueue("probe", &[json!("x")]).await.remove(0);
        let leased = api.lease("probe", 1, 60_000).await.remove(0);
        assert_eq!(id_of(&leased), job);
        let dead = api.enqueue("graveyard", &[json!("doomed")]).await.remove(0);
        let doomed = api.lease("graveyard", 1, 60_000).await.remove(0);
        let failed = json!({"lease_token": token_of(&doomed), "error": "doomed"});
        assert_eq!(api.post(&format!("/v1/jobs/{dead}/fail"), failed).await.status, 204);
        api.put("/v1/queues/keyed", json!({"ordering": "per_key"})).await.ok(200);
        let member = api.post("/v1/queues/keyed/groups/g/members", json!({})).await.ok(201);
        api.put("/v1/schedules/probe", json!({"queue": "probe", "cron": "0 * * * *"})).await.ok(200);
        let begun = api.post("/v1/idempotency/probe/begin", json!({"owner": "a", "ttl_ms": 60_000})).await.ok(200);
        assert_eq!(begun["state"], "acquired");
        let paced = api.post("/v1/queues/probe/dead/redrive", json!({"rate_per_second": 1})).await.ok(202);
        Fixtures {
            job,
            dead,
            lease_token: token_of(&leased),
            member: member["member_id"].as_str().unwrap().to_owned(),
            redrive: paced["id"].as_str().unwrap().to_owned(),
        }
    }

    /// `text` with the placeholders replaced by these fixtures.
    fn fill(&self, text: &str) -> String {
        text.replace("$JOB", &self.job)
            .replace("$DEAD", &self.dead)
            .replace("$TOKEN", &self.lease_token)
            .replace("$MEMBER", &self.member)
            .replace("$REDRIVE", &self.redrive)
            .replace("$FOREIGN", FOREIGN_TOKEN)
            .replace("$STRANGER", STRANGER)
    }
}

/// A server with its fixtures.
struct Fixed {
    server: Server,
    fixtures: Fixtures,
}

impl Fixed {
    async fn open() -> Fixed {
        let server = Server::start().await;
        let fixtures = Fixtures::make(&server.api()).await;
        Fixed { server, fixtures }
    }

    /// Sends a request: `token` as the bearer token, `content_type` if any, the placeholders of
    /// `path` and of a text body filled in. Returns the status and the body.
    async fn send(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, String) {
        let path = self.fixtures.fill(path);
        // (An oversized body has no placeholder, and is not copied.)
        let body = body.map(|bytes| match bytes.contains(&b'$') {
            true => self.fixtures.fill(&String::from_utf8(bytes).unwrap()).into_bytes(),
            false => bytes,
        });
        send(&self.server.router(), token, method, &path, content_type, body).await
    }
}

async fn send(
    router: &Router,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let request = builder.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
    let response = router.clone().oneshot(request).await.unwrap_or_else(|e| match e {});
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `text` is the API's error body.
fn is_error_body(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|body| body["error"]["code"].is_string() && body["error"]["message"].is_string())
}

/// What the provocations found.
#[derive(Default)]
struct Findings {
    /// (method, path, status) provoked as declared.
    provoked: BTreeSet<(String, String, u16)>,
    /// Provocations that got something else, with what.
    wrong: Vec<String>,
}

impl Findings {
    /// Records that `request` meant to provoke `status` of `operation` and got `got`.
    fn record(&mut self, operation: &Operation, status: u16, request: &str, got: (u16, String)) {
        let (got_status, text) = got;
        let key = (operation.method.to_string(), operation.path.clone(), status);
        if got_status != status {
            self.wrong.push(format!("{} {} {status}: {request} answered {got_status} {text}", key.0, key.1));
        } else if status >= 400 && status != 408 && !is_error_body(&text) {
            self.wrong.push(format!("{} {} {status}: {request} answered without the error body: {text}", key.0, key.1));
        } else {
            self.provoked.insert(key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_declared_status_is_provoked() {
    let doc = Server::start().await.api().get("/openapi.json").await.ok(200);
    let operations = operations(&doc);
    let well_formed: BTreeMap<(&str, &str), (&str, Option<&str>)> =
        WELL_FORMED.iter().map(|(method, template, path, body)| ((*method, *template), (*path, *body))).collect();
    let mut findings = Findings::default();
    let mut unprovokable = Vec::new();

    // Auth on: 401 without a token, 403 with a token that may do nothing here.
    let authed = {
        let server = Server::start_with_tokens(&[ROOT, NOBODY]).await;
        let fixtures = Fixtures::make(&server.api_with_token(ROOT.secret)).await;
        Fixed { server, fixtures }
    };
    // A closed store: every read and write it is asked is refused. Its clock is past the fixture
    // lease's expiry, so that reads too must reach the closed store (to apply what is due).
    let clock = ManualClock::at_default_start();
    let closed = {
        let server = Server::start_on(clock.clone() as Arc<dyn Clock>).await;
        let fixtures = Fixtures::make(&server.api()).await;
        server.store.close().await;
        clock.advance(120_000);
        Fixed { server, fixtures }
    };
    // A store that found its data file damaged: stopped, every request reaching it is refused.
    let damaged = {
        let server = Server::start_damaged().await;
        let fixtures = Fixtures::make(&server.api()).await;
        server.trip().await;
        Fixed { server, fixtures }
    };
    let oversized = vec![b' '; onceq_server::REQUEST_BODY_BYTES_MAX + 1];

    for operation in &operations {
        let method = operation.method.as_str();
        let Some(&(path, body)) = well_formed.get(&(method, operation.path.as_str())) else {
            unprovokable.push(format!("{method} {}: no well-formed request in WELL_FORMED", operation.path));
            continue;
        };
        let body = body.map(|b| b.as_bytes().to_vec());
        let json = body.as_ref().map(|_| "application/json");
        let request = format!("{method} {path}");
        // Each operation gets a server of its own: its provocations may change what they touch.
        let open = Fixed::open().await;
        for &status in &operation.declared {
            let got = match status {
                400 if operation.reads_body => {
                    Some(open.send(None, method, path, json, Some(b"{\"jobs\": [".to_vec())).await)
                }
                400 if operation.reads_path => {
                    let bad = bad_path_parameters(&operation.path);
                    Some(open.send(None, method, &bad, json, body.clone()).await)
                }
                401 => Some(authed.send(None, method, path, json, body.clone()).await),
                403 => Some(authed.send(Some(NOBODY.secret), method, path, json, body.clone()).await),
                413 if operation.reads_body => Some(open.send(None, method, path, json, Some(oversized.clone())).await),
                415 if operation.reads_body => {
                    Some(open.send(None, method, path, Some("text/plain"), body.clone()).await)
                }
                503 => Some(closed.send(None, method, path, json, body.clone()).await),
                500 => Some(damaged.send(None, method, path, json, body.clone()).await),
                _ => None,
            };
            if let Some(got) = got {
                findings.record(operation, status, &request, got);
            }
        }
        // The particular statuses, then the success (last: it may delete the fixtures).
        for (_, _, status, setup, (method, path, body)) in
            PARTICULAR.iter().filter(|(m, p, ..)| *m == operation.method.as_str() && *p == operation.path)
        {
            for (method, path, body) in setup.iter() {
                let (status, text) =
                    open.send(None, method, path, body.map(|_| "application/json"), body.map(Vec::from)).await;
                assert!(status < 300, "setup {method} {path}: {status} {text}");
            }
            let got = open.send(None, method, path, body.map(|_| "application/json"), body.map(Vec::from)).await;
            findings.record(operation, *status, &format!("{method} {path}"), got);
        }
        let got = open.send(None, method, path, json, body.clone()).await;
        let success = operation.declared.iter().copied().find(|s| (200..300).contains(s));
        match success {
            Some(success) => findings.record(operation, success, &request, got),
            None => unprovokable.push(format!("{method} {}: no success declared", operation.path)),
        }
    }

    // 408: through `serve`, whose request timeout ends a request whose body never arrives.
    for (operation, status) in timed_out(&operations, &well_formed).await {
        let path = operation.path.clone();
        findings.record(operation, 408, &format!("{} {path} with a body that never ends", operation.method), status);
    }

    let mut missing = Vec::new();
    let mut unproved: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for operation in &operations {
        for &status in &operation.declared {
            let key = (operation.method.to_string(), operation.path.clone(), status);
            if findings.provoked.contains(&key) {
                continue;
            }
            match excepted(operation, status) {
                Some(reason) => unproved.entry(reason).or_default().push(format!("{} {} {status}", key.0, key.1)),
                None => missing.push(format!("{} {} {status}", key.0, key.1)),
            }
        }
    }
    // Said in the test's output, so that what goes unproved is never silent.
    for (reason, statuses) in &unproved {
        eprintln!("not provoked ({reason}): {}", statuses.join(", "));
    }
    assert!(
        unprovokable.is_empty() && findings.wrong.is_empty() && missing.is_empty(),
        "operations this test cannot drive:\n  {}\nprovocations that got another answer:\n  {}\ndeclared statuses \
         not provoked:\n  {}",
        unprovokable.join("\n  "),
        findings.wrong.join("\n  "),
        missing.join("\n  ")
    );
    // The test saw the statuses every rule is about (a document that lost them would pass above).
    let seen: BTreeSet<u16> = findings.provoked.iter().map(|(_, _, status)| *status).collect();
    assert_eq!(
        seen,
        BTreeSet::from([200, 201, 202, 204, 400, 401, 403, 404, 408, 409, 413, 415, 429, 500, 503]),
        "statuses provoked"
    );
}

/// `template` with every path parameter one that no parameter accepts.
fn bad_path_parameters(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map(|e| start + e + 1).unwrap();
        out.push_str(&rest[..start]);
        out.push_str("not%20valid");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Serves a fresh store with a short request timeout, and sends every operation that reads a
/// body the head of its well-formed request and half its body; returns each operation with what
/// the server answered.
async fn timed_out<'a>(
    operations: &'a [Operation],
    well_formed: &BTreeMap<(&str, &str), (&str, Option<&str>)>,
) -> Vec<(&'a Operation, (u16, String))> {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(onceq_sqlite::SqliteStore::open(onceq_sqlite::SqliteOptions::new(dir.path())).unwrap());
    let api = onceq_server::Api::new(store.clone() as Arc<dyn onceq_core::Store>);
    let mut options = onceq_server::ServeOptions::default();
    options.request_timeout = Duration::from_millis(300);
    options.shutdown_grace = Duration::from_secs(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(onceq_server::serve(api, listener, options, async {
        let _ = stopped.await;
    }));
    let mut requests = Vec::new();
    for operation in operations.iter().filter(|o| o.reads_body) {
        let Some((path, _)) = well_formed.get(&(operation.method.as_str(), operation.path.as_str())) else {
            continue;
        };
        // Any well-formed values: the request ends before the handler looks them up.
        let path = path.replace("$JOB", "1").replace("$DEAD", "1").replace("$MEMBER", STRANGER);
        let head = format!(
            "{} {path} HTTP/1.1\r\nhost: onceq\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{",
            operation.method
        );
        requests.push((
            operation,
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
                stream.write_all(head.as_bytes()).await.unwrap();
                let mut answer = Vec::new();
                let mut buffer = [0u8; 1024];
                // The answer's head is all this needs; a server that never answers fails the test
                // by its timeout, not by hanging.
                while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
                        .await
                        .expect("an answer within 10 s")
                        .unwrap();
                    if read == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buffer[..read]);
                }
                let text = String::from_utf8_lossy(&answer).into_owned();
                let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                (status, text)
            }),
        ));
    }
    let mut out = Vec::new();
    for (operation, request) in requests {
        out.push((operation, request.await.unwrap()));
    }
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    store.close().await;
    out
}
