//! Proves, against the router in-process, ordering per key over HTTP: `PUT /v1/queues/{q}` takes
//! `ordering`, `partitions` and `dead_blocks_key` and returns them; enqueue takes `ordering_key`;
//! job views and leases show the key and the partition (the documented FNV-1a hash: "a" with 64
//! partitions is 44, "foobar" with 16 is 8), later jobs of a key are `blocked` and counted so in
//! the stats, and only the head is leased; changing the ordering or partition count of a queue
//! that holds jobs is 409 `queue_not_empty` (and changes nothing) while other fields change
//! freely; out-of-range values (partitions 0 and 257, an unknown ordering, an empty or 257-byte
//! key, a key that is not a string) are 400 `invalid_request` naming the field, and change
//! nothing; and the OpenAPI document lists the new fields and the `blocked` state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Server};
use serde_json::{json, Value};

/// The ids of a lease reply's jobs.
fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter().map(id_of).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_queue_over_http() {
    let server = Server::start().await;
    let api = server.api();

    let config = api.put("/v1/queues/orders", json!({"ordering": "per_key", "partitions": 64})).await.ok(200);
    assert_eq!(
        (&config["ordering"], &config["partitions"], &config["dead_blocks_key"]),
        (&json!("per_key"), &json!(64), &json!(false))
    );

    let body = json!({"jobs": [
        {"payload": 1, "ordering_key": "a"},
        {"payload": 2, "ordering_key": "foobar"},
        {"payload": 3, "ordering_key": "a", "priority": 100},
        {"payload": 4},
    ]});
    let enqueued = api.post("/v1/queues/orders/jobs", body).await.ok(200);
    let all: Vec<String> = enqueued["jobs"].as_array().unwrap().iter().map(id_of).collect();
    let [a1, foobar, a2, free] = &all[..] else { panic!("four ids: {enqueued}") };

    let view = api.get(&format!("/v1/jobs/{a1}")).await.ok(200);
    assert_eq!((&view["state"], &view["ordering_key"], &view["partition"]), (&json!("ready"), &json!("a"), &json!(44)));
    let view = api.get(&format!("/v1/jobs/{a2}")).await.ok(200);
    assert_eq!(
        (&view["state"], &view["ordering_key"], &view["partition"]),
        (&json!("blocked"), &json!("a"), &json!(44))
    );
    let view = api.get(&format!("/v1/jobs/{foobar}")).await.ok(200);
    // FNV-1a("foobar") = 0xbf9cf968 = 3214735720; mod 64 = 40.
    assert_eq!(view["partition"], json!(3_214_735_720u64 % 64));
    let view = api.get(&format!("/v1/jobs/{free}")).await.ok(200);
    let free_id: u64 = free.parse().unwrap();
    assert_eq!((view.get("ordering_key"), &view["partition"]), (None, &json!(free_id % 64)), "a key-less job: {view}");

    let stats = api.get("/v1/queues/orders").await.ok(200)["stats"].clone();
    assert_eq!((&stats["ready"], &stats["blocked"]), (&json!(3), &json!(1)), "{stats}");

    // The later job of "a" does not pass its head, priority 100 notwithstanding.
    let leased = api.lease("orders", 10, 60_000).await;
    assert_eq!(ids(&leased), vec![a1.clone(), foobar.clone(), free.clone()]);
    assert_eq!((&leased[0]["ordering_key"], &leased[0]["partition"]), (&json!("a"), &json!(44)));
    assert!(api.lease("orders", 10, 60_000).await.is_empty(), "a2 waits for a1");

    // Reordering a queue that holds jobs is refused, and changes nothing; other fields change.
    for patch in
        [json!({"ordering": "none"}), json!({"partitions": 16}), json!({"ordering": "none", "max_attempts": 9})]
    {
        let message = api.put("/v1/queues/orders", patch.clone()).await.err(409, "queue_not_empty");
        assert!(message.contains("holds 4 jobs") && message.contains("partitions"), "{patch}: {message}");
    }
    let config = api
        .put("/v1/queues/orders", json!({"dead_blocks_key": true, "ordering": "per_key", "partitions": 64}))
        .await
        .ok(200);
    assert_eq!(
        (&config["ordering"], &config["partitions"], &config["dead_blocks_key"]),
        (&json!("per_key"), &json!(64), &json!(true))
    );
    assert_eq!(config["max_attempts"], json!(5), "the refused patch changed nothing");

    // Acking the head lets the key go on.
    for job in &leased {
        api.post(&format!("/v1/jobs/{}/ack", id_of(job)), json!({"lease_token": token_of(job)})).await.no_content();
    }
    let next = api.lease("orders", 10, 60_000).await;
    assert_eq!(ids(&next), vec![a2.clone()]);
    api.post(&format!("/v1/jobs/{a2}/ack"), json!({"lease_token": token_of(&next[0])})).await.no_content();

    // Empty now: the ordering changes, and the jobs of an unordered queue have no partition.
    let config = api.put("/v1/queues/orders", json!({"ordering": "none"})).await.ok(200);
    assert_eq!(config["ordering"], json!("none"));
    let id = api.post("/v1/queues/orders/jobs", json!({"jobs": [{"payload": 5, "ordering_key": "a"}]})).await.ok(200)
        ["jobs"][0]
        .clone();
    let view = api.get(&format!("/v1/jobs/{}", id_of(&id))).await.ok(200);
    assert_eq!((&view["ordering_key"], view.get("partition")), (&json!("a"), None), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ordering_values_are_400_and_change_nothing() {
    let server = Server::start().await;
    let api = server.api();
    api.put("/v1/queues/q", json!({"ordering": "per_key", "partitions": 8})).await.ok(200);

    for (patch, names) in [
        (json!({"partitions": 0}), "partitions"),
        (json!({"partitions": 257}), "partitions"),
        (json!({"ordering": "fifo"}), "fifo"),
        (json!({"ordering": "per_key", "partitions": 300}), "partitions"),
    ] {
        let message = api.put("/v1/queues/q", patch.clone()).await.err(400, "invalid_request");
        assert!(message.contains(names), "{patch}: the message names {names}: {message}");
    }
    // Wrong types: serde's message says what was expected.
    for patch in [json!({"partitions": -1}), json!({"dead_blocks_key": "yes"}), json!({"ordering": 1})] {
        let message = api.put("/v1/queues/q", patch.clone()).await.err(400, "invalid_request");
        assert!(message.contains("expected"), "{patch}: {message}");
    }
    let message = api.put("/v1/queues/fresh", json!({"partitions": 257})).await.err(400, "invalid_request");
    assert!(message.contains("256"), "the message gives the limit: {message}");
    api.get("/v1/queues/fresh").await.err(404, "not_found");
    let config = api.get("/v1/queues/q").await.ok(200)["config"].clone();
    assert_eq!((&config["ordering"], &config["partitions"]), (&json!("per_key"), &json!(8)));
    // 256 partitions is the limit, and allowed.
    api.put("/v1/queues/q", json!({"partitions": 256})).await.ok(200);

    for (job, names) in [
        (json!({"payload": 1, "ordering_key": ""}), "ordering key"),
        (json!({"payload": 1, "ordering_key": "k".repeat(257)}), "ordering key"),
        (json!({"payload": 1, "ordering_key": 7}), "expected a string"),
    ] {
        let message = api.post("/v1/queues/q/jobs", json!({"jobs": [job.clone()]})).await.err(400, "invalid_request");
        assert!(message.contains(names), "{job}: the message names {names}: {message}");
    }
    // One bad key refuses the whole batch.
    api.post(
        "/v1/queues/q/jobs",
        json!({"jobs": [{"payload": 1, "ordering_key": "ok"}, {"payload": 2, "ordering_key": ""}]}),
    )
    .await
    .err(400, "invalid_request");
    let stats = api.get("/v1/queues/q").await.ok(200)["stats"].clone();
    assert_eq!((&stats["ready"], &stats["blocked"]), (&json!(0), &json!(0)), "nothing was written: {stats}");
    // 256 bytes of UTF-8 is the limit, and allowed (64 four-byte characters).
    let long = "😀".repeat(64);
    let id = api.post("/v1/queues/q/jobs", json!({"jobs": [{"payload": 1, "ordering_key": long}]})).await.ok(200)
        ["jobs"][0]
        .clone();
    assert_eq!(api.get(&format!("/v1/jobs/{}", id_of(&id))).await.ok(200)["ordering_key"], json!(long));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_ordering_fields() {
    let server = Server::start().await;
    let doc = server.api().get("/openapi.json").await.ok(200);
    let schemas = &doc["components"]["schemas"];
    let properties = |schema: &str| -> Vec<String> {
        schemas[schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} has properties: {}", schemas[schema]))
            .keys()
            .cloned()
            .collect()
    };
    for (schema, fields) in [
        ("QueueConfig", &["ordering", "partitions", "dead_blocks_key"][..]),
        ("QueueConfigPatch", &["ordering", "partitions", "dead_blocks_key"][..]),
        ("QueueStats", &["blocked"][..]),
        ("EnqueueJob", &["ordering_key"][..]),
        ("JobView", &["ordering_key", "partition"][..]),
        ("LeasedJobView", &["ordering_key", "partition"][..]),
    ] {
        let listed = properties(schema);
        for field in fields {
            assert!(listed.iter().any(|l| l == field), "{schema} lists {field}: {listed:?}");
        }
    }
    assert_eq!(schemas["Ordering"]["enum"], json!(["none", "per_key"]), "{}", schemas["Ordering"]);
    let states = schemas["JobState"]["enum"].as_array().unwrap_or_else(|| panic!("{}", schemas["JobState"]));
    assert!(states.contains(&json!("blocked")), "{states:?}");
}
