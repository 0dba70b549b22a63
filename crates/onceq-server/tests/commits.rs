//! Proves, against the router in-process, the HTTP contract of commits and producers
//! (docs/api.md "Commits"): a fenced enqueue (`producer` on `POST /v1/queues/{q}/jobs`) lands while
//! its epoch is current and is 409 `fenced` once a newer one registered, creating nothing; an epoch
//! never issued is 400. A commit's stale lease is 409 `lease_lost` whose `jobs` lists every stale
//! one, and nothing applies; a reused commit id with other content is 409 `conflict`; malformed or
//! empty commits and a checkpoint without a producer are 400. The auth matrix: a commit needs
//! `produce` on every queue it enqueues into and `consume` on every job it settles; a refused one
//! changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Api, Server, TokenSpec};
use serde_json::{json, Value};

async fn ready(api: &Api, queue: &str) -> u64 {
    api.get(&format!("/v1/queues/{queue}")).await.ok(200)["stats"]["ready"].as_u64().unwrap()
}

fn fenced_enqueue(producer: &str, epoch: u64, payload: Value) -> Value {
    json!({"jobs": [{"payload": payload}], "producer": {"id": producer, "epoch": epoch}})
}

#[tokio::test]
async fn a_fenced_enqueue_lands_while_its_epoch_is_current_only() {
    let server = Server::start().await;
    let api = server.api();
    let first = api.post_empty("/v1/producers/ingest.orders").await.ok(200);
    assert_eq!(first, json!({"id": "ingest.orders", "epoch": 1, "checkpoint": null}));

    let body = api.post("/v1/queues/orders/jobs", fenced_enqueue("ingest.orders", 1, json!(1))).await.ok(200);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["jobs"][0]["duplicate"], false);
    let job = api.get(&format!("/v1/jobs/{}", id_of(&body["jobs"][0]))).await.ok(200);
    assert_eq!((job["queue"].as_str(), &job["payload"]), (Some("orders"), &json!(1)));

    // The Idempotency-Key header still names the job's dedup id.
    let keyed = serde_json::to_vec(&fenced_enqueue("ingest.orders", 1, json!(2))).unwrap();
    let headers = [("content-type", "application/json"), ("idempotency-key", "line-2")];
    let once =
        api.send(axum::http::Method::POST, "/v1/queues/orders/jobs", Some(keyed.clone()), &headers).await.ok(200);
    let again = api.send(axum::http::Method::POST, "/v1/queues/orders/jobs", Some(keyed), &headers).await.ok(200);
    assert_eq!(again["jobs"][0]["id"], once["jobs"][0]["id"]);
    assert_eq!(again["jobs"][0]["duplicate"], true);
    assert_eq!(ready(&api, "orders").await, 2);

    // A second instance registers: the first instance's enqueues are refused and create nothing.
    assert_eq!(api.post_empty("/v1/producers/ingest.orders").await.ok(200)["epoch"], 2);
    let message =
        api.post("/v1/queues/orders/jobs", fenced_enqueue("ingest.orders", 1, json!(3))).await.err(409, "fenced");
    assert!(message.contains("producer ingest.orders epoch 1 was fenced: epoch 2 registered since"), "{message}");
    assert_eq!(ready(&api, "orders").await, 2, "a fenced enqueue created nothing");
    api.post("/v1/queues/orders/jobs", fenced_enqueue("ingest.orders", 2, json!(3))).await.ok(200);
    assert_eq!(ready(&api, "orders").await, 3);

    // An epoch never issued, a producer never registered, and a bad producer id are 400.
    let message = api
        .post("/v1/queues/orders/jobs", fenced_enqueue("ingest.orders", 3, json!(4)))
        .await
        .err(400, "invalid_request");
    assert!(message.contains("epoch 3 was never issued"), "{message}");
    api.post("/v1/queues/orders/jobs", fenced_enqueue("nobody", 1, json!(4))).await.err(400, "invalid_request");
    api.post("/v1/queues/orders/jobs", fenced_enqueue("no spaces", 1, json!(4))).await.err(400, "invalid_request");
    let wrong_shape = json!({"jobs": [{"payload": 4}], "producer": {"id": "ingest.orders"}});
    api.post("/v1/queues/orders/jobs", wrong_shape).await.err(400, "invalid_request");
    assert_eq!(ready(&api, "orders").await, 3, "no refused enqueue created a job");
}

#[tokio::test]
async fn a_commit_with_a_stale_lease_names_every_stale_one_and_applies_nothing() {
    let server = Server::start().await;
    let api = server.api();
    api.enqueue("a", &[json!("x"), json!("y"), json!("z")]).await;
    let leased = api.lease("a", 3, 60_000).await;
    let lease = |job: &Value| json!({"id": id_of(job), "lease_token": token_of(job)});
    let forged = |job: &Value| json!({"id": id_of(job), "lease_token": "0123456789abcdef0123456789abcdef"});
    // Ack the first on its own, so its token is stale in the commit below.
    api.post("/v1/acks", json!({"acks": [lease(&leased[0])]})).await.ok(200);
    let commit = json!({
        "ack": [lease(&leased[0]), lease(&leased[1])],
        "release": [forged(&leased[2])],
        "enqueue": [{"queue": "b", "jobs": [{"payload": "out"}]}],
    });
    let reply = api.post("/v1/commits", commit).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    let body = reply.json();
    let detail = &body["error"];
    assert_eq!(detail["code"], "lease_lost", "{body}");
    let mut stale = vec![id_of(&leased[0]), id_of(&leased[2])];
    stale.sort_by_key(|id| id.parse::<u64>().unwrap());
    assert_eq!(detail["jobs"], json!(stale), "{body}");
    assert!(detail["message"].as_str().unwrap().contains("nothing of the commit applied"), "{body}");
    // Nothing applied: the live lease is still live, and b was never created.
    let job = api.get(&format!("/v1/jobs/{}", id_of(&leased[1]))).await.ok(200);
    assert_eq!(job["state"], "leased", "{job}");
    api.get("/v1/queues/b").await.err(404, "not_found");

    // A commit id with other content is a conflict; the same content replays.
    let first = json!({"commit_id": "stage:1", "ack": [lease(&leased[1])], "enqueue": [{"queue": "b", "jobs": [{"payload": 1}]}]});
    let applied = api.post("/v1/commits", first.clone()).await.ok(200);
    assert_eq!(applied["replayed"], false, "{applied}");
    let replayed = api.post("/v1/commits", first).await.ok(200);
    assert_eq!((replayed["replayed"].clone(), &replayed["enqueued"]), (json!(true), &applied["enqueued"]));
    let other = json!({"commit_id": "stage:1", "ack": [lease(&leased[1])], "enqueue": [{"queue": "b", "jobs": [{"payload": 2}]}]});
    api.post("/v1/commits", other).await.err(409, "conflict");
    assert_eq!(ready(&api, "b").await, 1);
}

#[tokio::test]
async fn malformed_commits_are_400_and_change_nothing() {
    let server = Server::start().await;
    let api = server.api();
    api.enqueue("a", &[json!("x")]).await;
    let leased = api.lease("a", 1, 60_000).await.remove(0);
    let ack = json!([{"id": id_of(&leased), "lease_token": token_of(&leased)}]);
    let cases = [
        (json!({}), "the commit is empty"),
        (json!({"ack": ack, "checkpoint": {"offset": 1}}), "checkpoint"),
        (json!({"ack": ack, "frobnicate": 1}), "frobnicate"),
        (json!({"ack": ack, "commit_id": ""}), "commit_id"),
        (json!({"ack": ack, "enqueue": [{"queue": "bad name", "jobs": [{"payload": 1}]}]}), "bad name"),
        (json!({"ack": ack, "enqueue": [{"queue": "b", "jobs": [{}]}]}), "payload"),
        (json!({"ack": [{"id": "not-a-number", "lease_token": token_of(&leased)}]}), "not-a-number"),
    ];
    for (body, needle) in cases {
        let message = api.post("/v1/commits", body.clone()).await.err(400, "invalid_request");
        assert!(message.to_lowercase().contains(needle), "{body}: {message}");
    }
    let reply = api
        .send(
            axum::http::Method::POST,
            "/v1/commits",
            Some(b"{\"ack\": [".to_vec()),
            &[("content-type", "application/json")],
        )
        .await;
    reply.err(400, "invalid_request");
    let job = api.get(&format!("/v1/jobs/{}", id_of(&leased))).await.ok(200);
    assert_eq!(job["state"], "leased", "no malformed commit settled the job: {job}");
    api.get("/v1/queues/b").await.err(404, "not_found");
}

const TOKENS: &[TokenSpec] = &[
    TokenSpec {
        name: "stage",
        secret: "stage-secret",
        produce: &["out.*"],
        consume: &["in.*"],
        admin: &["in.*", "out.*"],
    },
    TokenSpec { name: "reader", secret: "reader-secret", produce: &[], consume: &["in.*"], admin: &[] },
    TokenSpec { name: "writer", secret: "writer-secret", produce: &["out.*", "in.*"], consume: &[], admin: &[] },
];

#[tokio::test]
async fn a_commit_needs_consume_on_what_it_settles_and_produce_on_where_it_enqueues() {
    let server = Server::start_with_tokens(TOKENS).await;
    let stage = server.api_with_token("stage-secret");
    let reader = server.api_with_token("reader-secret");
    let writer = server.api_with_token("writer-secret");
    writer.enqueue("in.a", &[json!("x")]).await;
    let leased = stage.lease("in.a", 1, 60_000).await.remove(0);
    let commit = json!({
        "ack": [{"id": id_of(&leased), "lease_token": token_of(&leased)}],
        "enqueue": [{"queue": "out.b", "jobs": [{"payload": "out"}]}],
    });
    reader.post("/v1/commits", commit.clone()).await.err(403, "forbidden");
    writer.post("/v1/commits", commit.clone()).await.err(403, "forbidden");
    server.api().post("/v1/commits", commit.clone()).await.err(401, "unauthorized");
    let job = stage.get(&format!("/v1/jobs/{}", id_of(&leased))).await.ok(200);
    assert_eq!(job["state"], "leased", "no refused commit settled the job: {job}");
    stage.get("/v1/queues/out.b").await.err(404, "not_found");
    stage.post("/v1/commits", commit).await.ok(200);
    assert_eq!(ready(&stage, "out.b").await, 1);

    // Registering needs produce on the producer's name; reading it, any permission.
    writer.post_empty("/v1/producers/out.ingest").await.ok(200);
    reader.post_empty("/v1/producers/out.ingest").await.err(403, "forbidden");
    stage.get("/v1/producers/out.ingest").await.ok(200);
    reader.get("/v1/producers/out.ingest").await.err(403, "forbidden");
    // A fenced enqueue needs produce on its queue, as any enqueue does.
    let fenced = fenced_enqueue("out.ingest", 1, json!(1));
    reader.post("/v1/queues/in.a/jobs", fenced.clone()).await.err(403, "forbidden");
    writer.post("/v1/queues/out.b/jobs", fenced).await.ok(200);
}
