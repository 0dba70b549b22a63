//! Fuzzing the HTTP request decoding of every endpoint (issue 25), on the stable toolchain: a
//! proptest-driven stream of requests against the router over a real embedded store, in-process.
//! Every operation of the OpenAPI document is a target; each request has a path whose parameters
//! are well-formed or arbitrary text, an arbitrary query string, an optional `Content-Type` (JSON,
//! another, none), and a body that is arbitrary bytes, arbitrary JSON, or an object made of the
//! API's field names with arbitrary values (the shapes that reach deepest).
//!
//! Properties: no request panics, none is answered 5xx (on a healthy store every bad input is the
//! client's error), and every 4xx carries the API's error body. `FUZZ_CASES` sets the number of
//! requests (default 2,000, about a second); a long run is, for instance, `FUZZ_CASES=200000`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use in_process::Server;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Number, Value};
use tower::ServiceExt;

/// Field names of the API's bodies and queries: objects made of these get past the first checks.
const FIELDS: &[&str] = &[
    "jobs",
    "payload",
    "payload_base64",
    "max_jobs",
    "wait_ms",
    "visibility_timeout_ms",
    "lease_token",
    "id",
    "acks",
    "nacks",
    "extends",
    "fails",
    "releases",
    "delay_ms",
    "error",
    "dedup_id",
    "headers",
    "ordering_key",
    "priority",
    "run_at",
    "max_attempts",
    "backoff",
    "initial_ms",
    "max_ms",
    "multiplier",
    "jitter",
    "ordering",
    "partitions",
    "delivery",
    "dead_blocks_key",
    "rate_limit",
    "rate_limit_by",
    "max_in_flight",
    "max_in_flight_per_key",
    "max_depth",
    "producer",
    "epoch",
    "commit_id",
    "ack",
    "nack",
    "fail",
    "release",
    "enqueue",
    "queue",
    "checkpoint",
    "owner",
    "lease_ms",
    "result",
    "fingerprint",
    "cron",
    "timezone",
    "catch_up",
    "job",
    "name",
    "session_timeout_ms",
    "member_id",
    "ids",
    "limit",
    "after",
    "unique",
];

/// Values for path parameters: well-formed ones and hostile ones.
const PATH_VALUES: &[&str] = &[
    "q",
    "1",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "billing.x",
    "g",
    "nightly",
    "00000000-0000-0000-0000-000000000000",
    "%FF",
    "%2F",
    "a%20b",
    "..",
    ".",
    "-",
    "%00",
    "x%0Ay",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(1000), Just(1001), Just(20_000), Just(i64::MAX)]
            .prop_map(|n| Value::Number(n.into())),
        ".{0,40}".prop_map(Value::String),
        "[0-9a-f]{32}".prop_map(Value::String),
        "[0-9]{1,21}".prop_map(Value::String),
        Just(Value::String("x".repeat(70_000))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner.clone()), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            prop::collection::btree_map(".{0,10}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object of API field names: the body most likely to reach a handler's own checks.
fn api_object() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6).prop_map(|fields| {
        let mut map = Map::new();
        for (key, value) in fields {
            map.insert(key.to_owned(), value);
        }
        Value::Object(map)
    })
}

#[derive(Debug, Clone)]
struct Fuzzed {
    operation: usize,
    params: Vec<String>,
    query: Option<String>,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
}

fn fuzzed(operations: usize) -> impl Strategy<Value = Fuzzed> {
    let param =
        prop_oneof![3 => prop::sample::select(PATH_VALUES).prop_map(str::to_owned), 1 => "[a-zA-Z0-9._~-]{0,20}"];
    let body = prop_oneof![
        1 => Just(None),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
        2 => json_value().prop_map(|v| Some(v.to_string().into_bytes())),
        4 => api_object().prop_map(|v| Some(v.to_string().into_bytes())),
    ];
    let query = prop::option::of(
        prop::collection::vec((prop::sample::select(&["limit", "after", "x", ""][..]), "[ -~]{0,12}"), 0..3).prop_map(
            |pairs| {
                pairs
                    .into_iter()
                    .map(|(k, v)| format!("{k}={}", v.replace(['#', ' ', '&'], "%20")))
                    .collect::<Vec<_>>()
                    .join("&")
            },
        ),
    );
    let content_type = prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/merge-patch+json; charset=utf-8")),
    ];
    (0..operations, prop::collection::vec(param, 3), query, content_type, body).prop_map(
        |(operation, params, query, content_type, body)| Fuzzed { operation, params, query, content_type, body },
    )
}

/// Every (method, path template) of the OpenAPI document.
fn operations() -> &'static [(String, String)] {
    static OPERATIONS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    OPERATIONS.get_or_init(|| {
        let doc: Value = serde_json::from_str(&onceq_server::openapi_json()).unwrap();
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if item.get(method).is_some() {
                    out.push((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        out
    })
}

/// `template` with each `{param}` replaced by the next of `params`.
fn fill(template: &str, params: &[String]) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut next = params.iter();
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&rest[..start]);
        out.push_str(next.next().map_or("q", String::as_str));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A long poll would make a case wait up to 20 s: its wait is cut to nothing (the value's own
/// checks are fuzzed through the out-of-range ones, which are refused at once).
fn no_long_waits(body: Option<Vec<u8>>) -> Option<Vec<u8>> {
    let bytes = body?;
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&bytes) else { return Some(bytes) };
    if let Some(wait) = map.get("wait_ms").and_then(Value::as_u64) {
        if (1..=20_000).contains(&wait) {
            map.insert("wait_ms".into(), Value::from(0));
        }
    }
    Some(Value::Object(map).to_string().into_bytes())
}

#[test]
fn no_request_panics_reaches_5xx_or_answers_outside_the_error_format() {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(Server::start());
    let router = server.router();
    let operations = operations();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let started = std::time::Instant::now();
    runner
        .run(&fuzzed(operations.len()), |case| {
            let (method, template) = &operations[case.operation];
            let mut uri = fill(template, &case.params);
            if let Some(query) = &case.query {
                uri = format!("{uri}?{query}");
            }
            let mut builder = Request::builder().method(method.as_str()).uri(&uri);
            if let Some(content_type) = case.content_type {
                builder = builder.header("content-type", content_type);
            }
            let body = no_long_waits(case.body.clone()).unwrap_or_default();
            let Ok(request) = builder.body(Body::from(body)) else {
                // Not a URI at all: nothing a client could send.
                return Ok(());
            };
            let (status, text) = runtime.block_on(async {
                let response =
                    tokio::time::timeout(std::time::Duration::from_secs(10), router.clone().oneshot(request))
                        .await
                        .expect("an answer within 10 s")
                        .unwrap_or_else(|e| match e {});
                let status = response.status();
                let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            });
            prop_assert!(status.as_u16() < 500, "{method} {uri} answered {status}: {text}");
            if status.as_u16() >= 400 {
                let body: Result<Value, _> = serde_json::from_str(&text);
                prop_assert!(
                    body.as_ref().is_ok_and(|b| b["error"]["code"].is_string() && b["error"]["message"].is_string()),
                    "{method} {uri} answered {status} outside the error format: {text}"
                );
            }
            Ok(())
        })
        .unwrap();
    eprintln!("fuzzed {cases} requests in {:.1} s", started.elapsed().as_secs_f64());
    runtime.block_on(server.store.close());
}
