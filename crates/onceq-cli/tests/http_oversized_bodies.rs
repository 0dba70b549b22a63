//! The size limits through the real binary and its HTTP stack: a payload of exactly 1 MiB is
//! accepted and one byte more is 413 `payload_too_large`, refusing its whole batch; a request
//! body of exactly 16 MiB is served and one byte more is 413, with the reply delivered (not lost
//! to a connection reset). The other HTTP errors are proved against the router in-process, in
//! onceq-server's tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{id_of, Server};
use reqwest::Method;
use serde_json::{json, Value};

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
