//! Proves bearer-token auth (docs/api.md "Auth") against the router in-process: with token A allowed
//! everything on `a.*` and token B everything on `b.*`, each token can do every queue and job
//! operation on its own queue (2xx) and none on the other's (403 `forbidden`, the job untouched):
//! enqueue, lease, ack / nack / extend / fail (single and batch, where a foreign job is a per-item
//! `forbidden`), GET job, GET / PUT / pause / resume / delete queue, dead list / redrive / purge,
//! and the idempotency keys its consume patterns cover (begin / complete / release); no token or
//! an unknown token is 401 `unauthorized`; `GET /v1/queues` lists only the queues a token may
//! read; any one permission on a queue lets a token read it, and no more.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Api, Server, TokenSpec};
use serde_json::{json, Value};

const TOKEN_A: &str = "secret-of-a";
const TOKEN_B: &str = "secret-of-b";
/// Only `produce` on `a.*`.
const TOKEN_PRODUCER: &str = "secret-of-a-producer";

/// Token A may do everything on `a.*`, token B everything on `b.*`, and the producer only
/// enqueue to `a.*`.
const TOKENS: &[TokenSpec] = &[
    TokenSpec { name: "a", secret: TOKEN_A, produce: &["a.*"], consume: &["a.*"], admin: &["a.*"] },
    TokenSpec { name: "b", secret: TOKEN_B, produce: &["b.*"], consume: &["b.*"], admin: &["b.*"] },
    TokenSpec { name: "a-producer", secret: TOKEN_PRODUCER, produce: &["a.*"], consume: &[], admin: &[] },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_works_on_its_own_queues_only() {
    let server = Server::start_with_tokens(TOKENS).await;
    let a = server.api_with_token(TOKEN_A);
    let b = server.api_with_token(TOKEN_B);
    a.put("/v1/queues/a.x", json!({"max_attempts": 10})).await.ok(200);
    b.put("/v1/queues/b.x", json!({"max_attempts": 10})).await.ok(200);
    owner_and_stranger(&a, "a.x", &b).await;
    owner_and_stranger(&b, "b.x", &a).await;

    // The queue list shows each token its own queues only.
    a.put("/v1/queues/a.y", json!({})).await.ok(200);
    b.put("/v1/queues/b.y", json!({})).await.ok(200);
    assert_eq!(queue_names(&a).await, ["a.x", "a.y"]);
    assert_eq!(queue_names(&b).await, ["b.x", "b.y"]);

    // Idempotency keys are scoped by the consume patterns, matched against the key.
    let begin = |owner: &str| json!({"owner": owner, "ttl_ms": 60_000});
    assert_eq!(a.post("/v1/idempotency/a.pay-1/begin", begin("a")).await.ok(200), json!({"state": "acquired"}));
    b.post("/v1/idempotency/a.pay-1/begin", begin("b")).await.err(403, "forbidden");
    b.post("/v1/idempotency/a.pay-1/release", json!({"owner": "a"})).await.err(403, "forbidden");
    let complete = json!({"owner": "a", "result": "stolen", "retention_ms": 60_000});
    b.post("/v1/idempotency/a.pay-1/complete", complete).await.err(403, "forbidden");
    a.post("/v1/idempotency/b.pay-1/begin", begin("a")).await.err(403, "forbidden");
    assert_eq!(b.post("/v1/idempotency/b.pay-1/begin", begin("b")).await.ok(200), json!({"state": "acquired"}));
    let complete = json!({"owner": "a", "result": "done", "retention_ms": 60_000});
    a.post("/v1/idempotency/a.pay-1/complete", complete).await.no_content();
    assert_eq!(
        a.post("/v1/idempotency/a.pay-1/begin", begin("a2")).await.ok(200),
        json!({"state": "completed", "result": "done"}),
        "none of b's calls touched the key"
    );
    server.api_with_token(TOKEN_PRODUCER).post("/v1/idempotency/a.pay-2/begin", begin("p")).await.err(403, "forbidden");

    // No token, or one the server does not know: 401 everywhere under /v1.
    for api in [server.api(), server.api_with_token("secret-of-nobody"), server.api_with_token(&TOKEN_A[1..])] {
        api.get("/v1/queues").await.err(401, "unauthorized");
        api.get("/v1/queues/a.x").await.err(401, "unauthorized");
        api.post("/v1/queues/a.x/jobs", json!({"jobs": [{"payload": 1}]})).await.err(401, "unauthorized");
        api.post("/v1/queues/a.x/leases", json!({})).await.err(401, "unauthorized");
        api.post_empty("/v1/queues/a.x/pause").await.err(401, "unauthorized");
        api.delete("/v1/queues/a.x/dead").await.err(401, "unauthorized");
        api.post("/v1/idempotency/a.pay-3/begin", begin("x")).await.err(401, "unauthorized");
    }
    assert_eq!(a.get("/v1/queues/a.x").await.ok(200)["paused"], false, "no refused call paused a.x");

    // One permission (produce) lets a token read a queue, not lease from or administer it.
    let producer = server.api_with_token(TOKEN_PRODUCER);
    let id = producer.enqueue("a.x", &[json!("from the producer")]).await.remove(0);
    assert_eq!(producer.get("/v1/queues/a.x").await.ok(200)["name"], "a.x");
    assert_eq!(queue_names(&producer).await, ["a.x", "a.y"]);
    producer.post("/v1/queues/a.x/leases", json!({})).await.err(403, "forbidden");
    producer.get(&format!("/v1/jobs/{id}")).await.err(403, "forbidden");
    producer.get("/v1/queues/a.x/dead").await.err(403, "forbidden");
    producer.put("/v1/queues/a.x", json!({})).await.err(403, "forbidden");
    producer.post("/v1/queues/b.x/jobs", json!({"jobs": [{"payload": 1}]})).await.err(403, "forbidden");
    producer.get("/v1/queues/b.x").await.err(403, "forbidden");
}

/// `owner` may do everything on `queue`; `stranger` nothing, and nothing it tries changes it.
async fn owner_and_stranger(owner: &Api, queue: &str, stranger: &Api) {
    let q = format!("/v1/queues/{queue}");

    // Enqueue and lease.
    stranger.post(&format!("{q}/jobs"), json!({"jobs": [{"payload": "intruder"}]})).await.err(403, "forbidden");
    stranger.post(&format!("{q}/leases"), json!({"max_jobs": 10})).await.err(403, "forbidden");
    let ids = owner.enqueue(queue, &[json!(1), json!(2), json!(3)]).await;
    let leased = owner.lease(queue, 10, 60_000).await;
    assert_eq!(leased.iter().map(id_of).collect::<Vec<_>>(), ids, "the stranger enqueued and leased nothing");
    let tokens: Vec<String> = leased.iter().map(token_of).collect();

    // The stranger cannot settle or read the owner's jobs, singly or in a batch, even with the
    // right lease token.
    let (id, token) = (&ids[0], &tokens[0]);
    for (action, body) in [
        ("ack", json!({"lease_token": token})),
        ("nack", json!({"lease_token": token, "delay_ms": 0})),
        ("extend", json!({"lease_token": token, "visibility_timeout_ms": 1})),
        ("fail", json!({"lease_token": token, "error": "sabotage"})),
    ] {
        stranger.post(&format!("/v1/jobs/{id}/{action}"), body).await.err(403, "forbidden");
    }
    stranger.get(&format!("/v1/jobs/{id}")).await.err(403, "forbidden");
    for (path, key, item) in [
        ("/v1/acks", "acks", json!({"id": id, "lease_token": token})),
        ("/v1/nacks", "nacks", json!({"id": id, "lease_token": token})),
        ("/v1/extends", "extends", json!({"id": id, "lease_token": token, "visibility_timeout_ms": 1})),
        ("/v1/fails", "fails", json!({"id": id, "lease_token": token, "error": "sabotage"})),
    ] {
        let body = stranger.post(path, json!({ key: [item] })).await.ok(200);
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{body}");
        assert_eq!((&results[0]["id"], &results[0]["ok"]), (&json!(id), &json!(false)), "{body}");
        in_process::assert_error_detail(path, &results[0]["error"], "forbidden");
    }
    let job = owner.get(&format!("/v1/jobs/{id}")).await.ok(200);
    assert_eq!((&job["state"], &job["attempt"], &job["errors"]), (&json!("leased"), &json!(1), &json!([])), "{job}");
    assert_eq!(job["lease_expires_at"], leased[0]["lease_expires_at"], "no extend of the stranger's went through");

    // The owner can: extend, ack, nack, fail (single), and the batch forms.
    owner
        .post(&format!("/v1/jobs/{id}/extend"), json!({"lease_token": token, "visibility_timeout_ms": 60_000}))
        .await
        .ok(200);
    owner.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": token})).await.no_content();
    owner
        .post(&format!("/v1/jobs/{}/nack", ids[1]), json!({"lease_token": tokens[1], "delay_ms": 0}))
        .await
        .no_content();
    owner
        .post(&format!("/v1/jobs/{}/fail", ids[2]), json!({"lease_token": tokens[2], "error": "no"}))
        .await
        .no_content();
    let again = owner.lease(queue, 10, 60_000).await;
    assert_eq!(again.iter().map(id_of).collect::<Vec<_>>(), [ids[1].clone()]);
    let (id1, token1) = (ids[1].clone(), token_of(&again[0]));
    for (path, key, item) in [
        ("/v1/extends", "extends", json!({"id": id1, "lease_token": token1, "visibility_timeout_ms": 60_000})),
        ("/v1/nacks", "nacks", json!({"id": id1, "lease_token": token1, "delay_ms": 0})),
    ] {
        let body = owner.post(path, json!({ key: [item] })).await.ok(200);
        assert_eq!(body["results"][0]["ok"], true, "{path}: {body}");
    }
    let again = owner.lease(queue, 10, 60_000).await;
    let token1 = token_of(&again[0]);
    let body = owner.post("/v1/fails", json!({"fails": [{"id": id1, "lease_token": token1, "error": "no"}]})).await;
    assert_eq!(body.ok(200), json!({"results": [{"id": id1, "ok": true}]}));
    let id3 = owner.enqueue(queue, &[json!(4)]).await.remove(0);
    let leased = owner.lease(queue, 10, 60_000).await;
    let body = owner.post("/v1/acks", json!({"acks": [{"id": id3, "lease_token": token_of(&leased[0])}]})).await;
    assert_eq!(body.ok(200), json!({"results": [{"id": id3, "ok": true}]}));
    assert_eq!(owner.get(&format!("/v1/jobs/{}", ids[2])).await.ok(200)["state"], "dead");

    // Queue administration and dead letters: two dead jobs now (ids[1], ids[2]).
    stranger.get(&q).await.err(403, "forbidden");
    stranger.put(&q, json!({"max_attempts": 1})).await.err(403, "forbidden");
    stranger.post_empty(&format!("{q}/pause")).await.err(403, "forbidden");
    stranger.post_empty(&format!("{q}/resume")).await.err(403, "forbidden");
    stranger.get(&format!("{q}/dead")).await.err(403, "forbidden");
    stranger.post(&format!("{q}/dead/redrive"), json!({})).await.err(403, "forbidden");
    stranger.delete(&format!("{q}/dead")).await.err(403, "forbidden");
    stranger.delete(&q).await.err(403, "forbidden");
    let info = owner.get(&q).await.ok(200);
    assert_eq!((&info["config"]["max_attempts"], &info["paused"]), (&json!(10), &json!(false)), "{info}");
    assert_eq!(info["stats"]["dead"], 2, "{info}");

    let dead = owner.get(&format!("{q}/dead")).await.ok(200);
    let dead_ids: Vec<String> = dead["jobs"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(dead_ids, [ids[1].clone(), ids[2].clone()]);
    assert_eq!(
        owner.post(&format!("{q}/dead/redrive"), json!({"ids": [ids[1]]})).await.ok(200),
        json!({"matched": 1, "redriven": 1, "last": ids[1]})
    );
    assert_eq!(owner.delete(&format!("{q}/dead")).await.ok(200), json!({"purged": 1}));
    owner.post_empty(&format!("{q}/pause")).await.no_content();
    owner.post_empty(&format!("{q}/resume")).await.no_content();
    assert_eq!(owner.put(&q, json!({"max_attempts": 7})).await.ok(200)["max_attempts"], 7);
    // A name the stranger has no pattern for is 403 even when no such queue exists: no probing.
    let prefix = queue.split('.').next().unwrap();
    stranger.get(&format!("/v1/queues/{prefix}.nonexistent")).await.err(403, "forbidden");
    owner.get(&format!("/v1/queues/{prefix}.nonexistent")).await.err(404, "not_found");

    // Delete, then make it again for the list check.
    stranger.delete(&q).await.err(403, "forbidden");
    owner.delete(&q).await.no_content();
    owner.get(&q).await.err(404, "not_found");
    owner.put(&q, json!({})).await.ok(200);
}

async fn queue_names(api: &Api) -> Vec<String> {
    let body = api.get("/v1/queues").await.ok(200);
    body["queues"].as_array().unwrap().iter().map(|q: &Value| q["name"].as_str().unwrap().to_owned()).collect()
}
