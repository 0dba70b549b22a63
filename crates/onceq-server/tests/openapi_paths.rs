//! Proves, against the router in-process, that `/openapi.json` parses and lists every path of
//! docs/api.md with the methods docs/api.md gives it (plus the batch settle endpoints beside `/v1/acks`),
//! and that any further path it lists is one the router serves (an extension), not a phantom.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeSet;

use axum::http::Method;
use in_process::Server;

/// `/openapi.json` parses and lists every path of docs/api.md with the methods docs/api.md gives it (plus
/// the batch settle endpoints beside `/v1/acks`); any further path it lists is one the server
/// serves (an extension), not a phantom.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_path_of_the_contract() {
    let server = Server::start().await;
    let api = server.api();
    let doc = api.get("/openapi.json").await.ok(200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')), "an OpenAPI 3 document: {}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    let listed: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    // docs/api.md, section by section.
    let contract: BTreeSet<(String, String)> = [
        ("put", "/v1/queues/{queue}"),
        ("get", "/v1/queues"),
        ("get", "/v1/queues/{queue}"),
        ("post", "/v1/queues/{queue}/pause"),
        ("post", "/v1/queues/{queue}/resume"),
        ("delete", "/v1/queues/{queue}"),
        ("post", "/v1/queues/{queue}/jobs"),
        ("get", "/v1/jobs/{id}"),
        ("post", "/v1/queues/{queue}/leases"),
        ("post", "/v1/jobs/{id}/ack"),
        ("post", "/v1/jobs/{id}/nack"),
        ("post", "/v1/jobs/{id}/extend"),
        ("post", "/v1/jobs/{id}/fail"),
        ("post", "/v1/acks"),
        ("post", "/v1/nacks"),
        ("post", "/v1/extends"),
        ("post", "/v1/fails"),
        ("get", "/v1/queues/{queue}/dead"),
        ("post", "/v1/queues/{queue}/dead/redrive"),
        ("delete", "/v1/queues/{queue}/dead"),
        ("get", "/v1/queues/{queue}/groups"),
        ("get", "/v1/queues/{queue}/groups/{group}"),
        ("post", "/v1/queues/{queue}/groups/{group}/members"),
        ("post", "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat"),
        ("delete", "/v1/queues/{queue}/groups/{group}/members/{member_id}"),
        ("get", "/v1/schedules"),
        ("put", "/v1/schedules/{name}"),
        ("get", "/v1/schedules/{name}"),
        ("delete", "/v1/schedules/{name}"),
        ("post", "/v1/schedules/{name}/pause"),
        ("post", "/v1/schedules/{name}/resume"),
        ("post", "/v1/schedule-ticks"),
        ("post", "/v1/idempotency/{key}/begin"),
        ("post", "/v1/idempotency/{key}/complete"),
        ("post", "/v1/idempotency/{key}/release"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    let missing: Vec<_> = contract.difference(&listed).collect();
    assert!(missing.is_empty(), "docs/api.md paths missing from /openapi.json: {missing:?}");
    // Every listed path is routed: the answer is never the router's own 404 (no such path) or 405.
    for (method, path) in &listed {
        let concrete = path
            .replace("{queue}", "openapi-probe")
            .replace("{id}", "1")
            .replace("{key}", "k")
            .replace("{group}", "g")
            .replace("{member_id}", "0123456789abcdef0123456789abcdef")
            .replace("{name}", "openapi-probe");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let reply = api.send(method.clone(), &concrete, Some(b"{}".to_vec()), &[]).await;
        let unrouted = reply.status == 405 || (reply.status == 404 && reply.text.contains("no endpoint"));
        assert!(!unrouted, "/openapi.json lists {method} {path}, which is not served: {} {}", reply.status, reply.text);
    }
}
