//! Proves, against the router in-process, that a lease token that is not the job's current lease
//! is 409 `lease_lost` and changes nothing: a token on a job that is not leased, an expired lease
//! (1 ms visibility timeout, the store's clock moved past it), the old token after a re-lease,
//! and a well-formed token that was never the job's, on every settle call; the batch endpoints
//! answer `lease_lost` per item with a 200; the current token still works.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use in_process::{id_of, token_of, Server};
use onceq_core::ManualClock;
use serde_json::{json, Value};

/// A well-formed lease token that no lease has.
const FOREIGN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_the_current_lease_is_409_lease_lost() {
    let clock = ManualClock::at_default_start();
    let server = Server::start_on(clock.clone()).await;
    let api = server.api();
    let id = api.enqueue("q", &[json!("x")]).await.remove(0);

    // A token on a job that is not leased.
    api.post(&format!("/v1/jobs/{id}/ack"), json!({"lease_token": FOREIGN_TOKEN})).await.err(409, "lease_lost");

    // An expired lease (1 ms visibility timeout): every settle call is refused.
    let first = api.lease("q", 1, 1).await.remove(0);
    let stale = token_of(&first);
    clock.advance(50);
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
        in_process::assert_error_detail(path, &results[0]["error"], "lease_lost");
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
