//! The request body limit through the real binary and its HTTP stack: a body of exactly 16 MiB is
//! served and one byte more is 413 `payload_too_large`, with the reply delivered (not lost to a
//! connection reset). The payload limit and the other HTTP errors are proved against the router
//! in-process, in onceq-server's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Server;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_request_limit_is_413_and_its_reply_arrives() {
    let server = Server::start().await;
    let api = server.api();
    const MIB: usize = 1024 * 1024;

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
    assert_eq!(api.get("/v1/queues/big").await.ok(200)["stats"]["ready"], 16, "nothing of the refused body is written");
}
