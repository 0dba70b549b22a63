//! Proves the whole job lifecycle over HTTP against the router in-process (docs/api.md, every
//! endpoint): create and update a queue; enqueue in batch and singly, with headers, priority,
//! delay, `run_at` and `Idempotency-Key`; queue stats; lease in priority order; ack, nack (then
//! the re-lease is attempt 2), extend and fail, singly and through the batch endpoints
//! (`/v1/acks`, `/v1/nacks`, `/v1/extends`, `/v1/fails`) with per-item results; a job's state and
//! error history; the dead-letter list paged with `limit` / `after` / `next`; redrive (by ids and
//! by limit, attempts reset, errors kept); purge; pause (no leases) and resume; delete (404
//! afterwards); `/healthz`, `/readyz` and `/metrics` (queue depth of the queue).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::collections::BTreeSet;

use axum::http::Method;
use in_process::{id_of, token_of, Server};
use serde_json::{json, Value};

/// Long enough that no lease of this test expires by itself.
const VISIBILITY_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_lifecycle_over_http() {
    let server = Server::start().await;
    let api = server.api();

    // Operations endpoints.
    let health = api.get("/healthz").await;
    assert_eq!(health.status, 200, "healthz: {}", health.text);
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 200, "readyz: {}", ready.text);

    // Create, then update: the response is the full config, with the patch applied.
    let backoff = json!({"initial_ms": 500, "max_ms": 10_000, "multiplier": 3.0, "jitter": "none"});
    let config = api
        .put(
            "/v1/queues/life",
            json!({"visibility_timeout_ms": VISIBILITY_MS, "max_attempts": 3, "backoff": backoff,
                "dedup_window_ms": 120_000}),
        )
        .await
        .ok(200);
    let expected = json!({"delivery": "at_least_once", "visibility_timeout_ms": VISIBILITY_MS, "max_attempts": 3,
        "backoff": backoff, "dedup_window_ms": 120_000, "ordering": "none", "partitions": 16, "dead_blocks_key": false});
    assert_eq!(config, expected);
    let config = api.put("/v1/queues/life", json!({"max_attempts": 2})).await.ok(200);
    let expected = json!({"delivery": "at_least_once", "visibility_timeout_ms": VISIBILITY_MS, "max_attempts": 2,
        "backoff": backoff, "dedup_window_ms": 120_000, "ordering": "none", "partitions": 16, "dead_blocks_key": false});
    assert_eq!(config, expected);
    let info = api.get("/v1/queues/life").await.ok(200);
    assert_eq!(info["name"], "life");
    assert_eq!(info["config"], expected);
    assert_eq!(info["paused"], false);
    assert_eq!(
        info["stats"],
        json!({"ready": 0, "scheduled": 0, "leased": 0, "dead": 0, "blocked": 0, "cancelled": 0, "oldest_ready_age_ms": null})
    );

    // A batch enqueue: ids in request order, strictly increasing.
    let body = api
        .post(
            "/v1/queues/life/jobs",
            json!({"jobs": [
                {"payload": {"n": 1}, "headers": {"trace": "t-1", "kind": "first"}},
                {"payload": "two", "priority": 5},
                {"payload": [3], "delay_ms": 3_600_000},
            ]}),
        )
        .await
        .ok(200);
    let entries = body["jobs"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{body}");
    assert!(entries.iter().all(|e| e["duplicate"] == false && e.as_object().unwrap().len() == 2), "{body}");
    let (j1, j2, j3) = (id_of(&entries[0]), id_of(&entries[1]), id_of(&entries[2]));
    let n = |id: &str| id.parse::<u64>().unwrap();
    assert!(n(&j1) < n(&j2) && n(&j2) < n(&j3), "ids increase in request order: {body}");

    // A single enqueue with an Idempotency-Key: the second send is a duplicate of the first.
    let keyed = json!({"jobs": [{"payload": {"n": 4}}]}).to_string().into_bytes();
    let send_keyed =
        || api.send(Method::POST, "/v1/queues/life/jobs", Some(keyed.clone()), &[("Idempotency-Key", "key-4")]);
    let first = send_keyed().await.ok(200);
    let j4 = id_of(&first["jobs"][0]);
    assert_eq!(first["jobs"], json!([{"id": j4, "duplicate": false}]));
    assert_eq!(send_keyed().await.ok(200)["jobs"], json!([{"id": j4, "duplicate": true}]));
    // A job due a day from now, and one due in the past (ready at once).
    let tomorrow = rfc3339_utc(unix_ms_now() + 24 * 3600 * 1000);
    let body = api
        .post(
            "/v1/queues/life/jobs",
            json!({"jobs": [
                {"payload": 5, "run_at": tomorrow},
                {"payload": 6, "run_at": "2000-01-01T00:00:00+02:00"},
            ]}),
        )
        .await
        .ok(200);
    let (j5, j6) = (id_of(&body["jobs"][0]), id_of(&body["jobs"][1]));

    let stats = api.get("/v1/queues/life").await.ok(200)["stats"].clone();
    assert_eq!(
        (&stats["ready"], &stats["scheduled"], &stats["leased"], &stats["dead"]),
        (&json!(4), &json!(2), &json!(0), &json!(0)),
        "{stats}"
    );
    assert!(stats["oldest_ready_age_ms"].is_u64(), "four jobs are ready: {stats}");

    // A job as enqueued.
    let job = api.get(&format!("/v1/jobs/{j1}")).await.ok(200);
    assert_eq!(job["id"], j1.as_str());
    assert_eq!(job["queue"], "life");
    assert_eq!(job["state"], "ready");
    assert_eq!(job["attempt"], 0);
    assert_eq!(job["max_attempts"], 2, "the queue's max_attempts at enqueue time");
    assert_eq!(job["payload"], json!({"n": 1}));
    assert_eq!(job["headers"], json!({"trace": "t-1", "kind": "first"}));
    assert_eq!(job["priority"], 0);
    assert_eq!(job["dedup_id"], Value::Null);
    assert_eq!(job["errors"], json!([]));
    assert_eq!(job["lease_expires_at"], Value::Null);
    assert!(is_rfc3339(&job["enqueued_at"]) && is_rfc3339(&job["run_at"]), "{job}");
    assert_eq!(api.get(&format!("/v1/jobs/{j4}")).await.ok(200)["dedup_id"], "key-4");
    let delayed = api.get(&format!("/v1/jobs/{j3}")).await.ok(200);
    assert_eq!(delayed["state"], "scheduled");
    assert!(delayed["run_at"].as_str().unwrap() > delayed["enqueued_at"].as_str().unwrap(), "{delayed}");
    let later = api.get(&format!("/v1/jobs/{j5}")).await.ok(200);
    assert_eq!((&later["state"], &later["run_at"]), (&json!("scheduled"), &json!(tomorrow)));
    let past = api.get(&format!("/v1/jobs/{j6}")).await.ok(200);
    assert_eq!(past["state"], "ready", "a run_at in the past means now: {past}");
    assert_eq!(past["run_at"], past["enqueued_at"], "a run_at in the past means now: {past}");

    // Lease in a batch: highest priority first, then the oldest run_at (j6's is its enqueue time,
    // later than the others'), then enqueue order; the scheduled ones stay.
    let leased = api.lease("life", 10, VISIBILITY_MS).await;
    let ids: Vec<String> = leased.iter().map(id_of).collect();
    assert_eq!(ids, [j2.clone(), j1.clone(), j4.clone(), j6.clone()]);
    for job in &leased {
        assert_eq!(job["attempt"], 1, "{job}");
        assert_eq!(job["queue"], "life", "{job}");
        let token = token_of(job);
        assert!(token.len() == 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "token format: {job}");
        assert!(is_rfc3339(&job["lease_expires_at"]), "{job}");
    }
    assert_eq!(leased[0]["payload"], "two");
    assert_eq!(leased[0]["priority"], 5);
    assert_eq!(leased[1]["headers"], json!({"trace": "t-1", "kind": "first"}));
    assert_eq!(leased[2]["dedup_id"], "key-4");
    let (t2, t1, t4) = (token_of(&leased[0]), token_of(&leased[1]), token_of(&leased[2]));
    api.post(&format!("/v1/jobs/{j6}/ack"), json!({"lease_token": token_of(&leased[3])})).await.no_content();
    assert_eq!(api.get(&format!("/v1/jobs/{j1}")).await.ok(200)["state"], "leased");
    assert!(api.lease("life", 10, VISIBILITY_MS).await.is_empty(), "nothing else is ready");

    // Ack: the job is gone.
    api.post(&format!("/v1/jobs/{j2}/ack"), json!({"lease_token": t2})).await.no_content();
    api.get(&format!("/v1/jobs/{j2}")).await.err(404, "not_found");

    // Nack now: the error is kept, and the next lease is attempt 2 with a new token.
    api.post(&format!("/v1/jobs/{j1}/nack"), json!({"lease_token": t1, "delay_ms": 0, "error": "boom"}))
        .await
        .no_content();
    let job = api.get(&format!("/v1/jobs/{j1}")).await.ok(200);
    assert_eq!((&job["state"], &job["attempt"]), (&json!("ready"), &json!(1)), "{job}");
    let errors = job["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{job}");
    assert_eq!((&errors[0]["attempt"], &errors[0]["error"]), (&json!(1), &json!("boom")));
    assert!(is_rfc3339(&errors[0]["at"]), "{job}");
    let again = api.lease("life", 1, 5_000).await;
    assert_eq!(again.len(), 1);
    assert_eq!((id_of(&again[0]), &again[0]["attempt"]), (j1.clone(), &json!(2)));
    let t1b = token_of(&again[0]);
    assert_ne!(t1b, t1, "a new lease has a new token");

    // Extend: a later expiry, same lease.
    let before = again[0]["lease_expires_at"].as_str().unwrap().to_owned();
    let extended = api
        .post(&format!("/v1/jobs/{j1}/extend"), json!({"lease_token": t1b, "visibility_timeout_ms": VISIBILITY_MS}))
        .await
        .ok(200);
    assert_eq!(extended.as_object().unwrap().len(), 1, "{extended}");
    let after = extended["lease_expires_at"].as_str().unwrap();
    assert!(after > before.as_str(), "extend moves the expiry later: {before} -> {after}");
    let job = api.get(&format!("/v1/jobs/{j1}")).await.ok(200);
    assert_eq!(
        (&job["state"], &job["attempt"], &job["lease_expires_at"]),
        (&json!("leased"), &json!(2), &json!(after))
    );

    // Fail: dead now, with both attempts' errors.
    api.post(&format!("/v1/jobs/{j1}/fail"), json!({"lease_token": t1b, "error": "fatal"})).await.no_content();
    let job = api.get(&format!("/v1/jobs/{j1}")).await.ok(200);
    assert_eq!(job["state"], "dead");
    let errors: Vec<(Value, Value)> =
        job["errors"].as_array().unwrap().iter().map(|e| (e["attempt"].clone(), e["error"].clone())).collect();
    assert_eq!(errors, [(json!(1), json!("boom")), (json!(2), json!("fatal"))]);

    // The batch endpoints, on j4 (leased): extend, nack, then fail after a re-lease.
    let results = api
        .post(
            "/v1/extends",
            json!({"extends": [{"id": j4, "lease_token": t4, "visibility_timeout_ms": VISIBILITY_MS}]}),
        )
        .await
        .ok(200);
    let result = &results["results"][0];
    assert_eq!(
        (results["results"].as_array().unwrap().len(), &result["id"], &result["ok"]),
        (1, &json!(j4), &json!(true))
    );
    assert!(is_rfc3339(&result["lease_expires_at"]), "{results}");
    let results = api
        .post("/v1/nacks", json!({"nacks": [{"id": j4, "lease_token": t4, "delay_ms": 0, "error": "batch boom"}]}))
        .await
        .ok(200);
    let result = &results["results"][0];
    assert_eq!((&result["id"], &result["ok"], &result["outcome"]), (&json!(j4), &json!(true), &json!("retrying")));
    assert!(is_rfc3339(&result["run_at"]), "{results}");
    let again = api.lease("life", 1, VISIBILITY_MS).await;
    assert_eq!((id_of(&again[0]), &again[0]["attempt"]), (j4.clone(), &json!(2)));
    let t4b = token_of(&again[0]);
    let results =
        api.post("/v1/fails", json!({"fails": [{"id": j4, "lease_token": t4b, "error": "batch fatal"}]})).await;
    assert_eq!(results.ok(200), json!({"results": [{"id": j4, "ok": true}]}));
    assert_eq!(api.get(&format!("/v1/jobs/{j4}")).await.ok(200)["state"], "dead");

    // /v1/acks judges each item: acked, stale token (lease_lost), unknown job (not_found).
    let pair = api.enqueue("life", &[json!("a"), json!("b")]).await;
    let leased = api.lease("life", 2, VISIBILITY_MS).await;
    let ids: Vec<String> = leased.iter().map(id_of).collect();
    assert_eq!(ids, pair);
    let results = api
        .post(
            "/v1/acks",
            json!({"acks": [
                {"id": pair[0], "lease_token": token_of(&leased[0])},
                {"id": pair[1], "lease_token": t1},
                {"id": "999999999", "lease_token": t1},
            ]}),
        )
        .await
        .ok(200);
    let results = results["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], json!({"id": pair[0], "ok": true}));
    assert_eq!((&results[1]["id"], &results[1]["ok"]), (&json!(pair[1]), &json!(false)));
    in_process::assert_error_detail("acks item 1", &results[1]["error"], "lease_lost");
    assert_eq!((&results[2]["id"], &results[2]["ok"]), (&json!("999999999"), &json!(false)));
    in_process::assert_error_detail("acks item 2", &results[2]["error"], "not_found");
    api.get(&format!("/v1/jobs/{}", pair[0])).await.err(404, "not_found");
    assert_eq!(
        api.get(&format!("/v1/jobs/{}", pair[1])).await.ok(200)["state"],
        "leased",
        "a refused ack changes nothing"
    );

    // A nack of the last attempt dead-letters: three more dead jobs (max_attempts 1).
    let last = api
        .post(
            "/v1/queues/life/jobs",
            json!({"jobs": [
                {"payload": "d1", "max_attempts": 1},
                {"payload": "d2", "max_attempts": 1},
                {"payload": "d3", "max_attempts": 1},
            ]}),
        )
        .await
        .ok(200);
    let doomed: Vec<String> = last["jobs"].as_array().unwrap().iter().map(id_of).collect();
    let leased = api.lease("life", 3, VISIBILITY_MS).await;
    assert_eq!(leased.iter().map(id_of).collect::<Vec<_>>(), doomed);
    let nacks: Vec<Value> =
        leased.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j), "error": "last try"})).collect();
    let results = api.post("/v1/nacks", json!({"nacks": nacks})).await.ok(200);
    for (result, id) in results["results"].as_array().unwrap().iter().zip(&doomed) {
        assert_eq!(result, &json!({"id": id, "ok": true, "outcome": "dead"}));
    }

    // The dead-letter list, two at a time: j1, j4, d1 | d2, d3 in id order.
    let all_dead = [j1.clone(), j4.clone(), doomed[0].clone(), doomed[1].clone(), doomed[2].clone()];
    let mut seen = Vec::new();
    let mut path = "/v1/queues/life/dead?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = api.get(&path).await.ok(200);
        pages += 1;
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2, "{page}");
        for job in jobs {
            assert_eq!((&job["state"], &job["queue"]), (&json!("dead"), &json!("life")), "{job}");
            seen.push(id_of(job));
        }
        match &page["next"] {
            Value::Null => break,
            Value::String(next) => {
                assert_eq!(next, seen.last().unwrap(), "next is the last id of the page");
                path = format!("/v1/queues/life/dead?limit=2&after={next}");
            }
            other => panic!("next is {other}"),
        }
    }
    assert_eq!((seen.as_slice(), pages), (all_dead.as_slice(), 3));
    let stats = api.get("/v1/queues/life").await.ok(200)["stats"].clone();
    assert_eq!(stats["dead"], 5, "{stats}");
    assert_eq!(stats["leased"], 1, "{stats}");

    // Redrive by id: ready again, attempt reset, errors kept.
    assert_eq!(
        api.post("/v1/queues/life/dead/redrive", json!({"ids": [j1]})).await.ok(200),
        json!({"matched": 1, "redriven": 1, "last": j1})
    );
    let job = api.get(&format!("/v1/jobs/{j1}")).await.ok(200);
    assert_eq!((&job["state"], &job["attempt"]), (&json!("ready"), &json!(0)), "{job}");
    assert_eq!(job["errors"].as_array().unwrap().len(), 2, "{job}");
    // Redrive by limit: the oldest two (j4, d1).
    assert_eq!(
        api.post("/v1/queues/life/dead/redrive", json!({"limit": 2})).await.ok(200),
        json!({"matched": 4, "redriven": 2, "last": doomed[0]}),
        "the dead count matches; the oldest two go"
    );
    assert_eq!(api.get(&format!("/v1/jobs/{j4}")).await.ok(200)["state"], "ready");
    assert_eq!(api.get(&format!("/v1/jobs/{}", doomed[0])).await.ok(200)["state"], "ready");
    // Purge: the other two dead jobs go.
    assert_eq!(api.delete("/v1/queues/life/dead").await.ok(200), json!({"purged": 2}));
    api.get(&format!("/v1/jobs/{}", doomed[2])).await.err(404, "not_found");
    let dead = api.get("/v1/queues/life/dead").await.ok(200);
    assert_eq!(dead, json!({"jobs": [], "next": null}));

    // Pause: enqueues are accepted, leases hand out nothing; resume hands them out again.
    api.post_empty("/v1/queues/life/pause").await.no_content();
    assert_eq!(api.get("/v1/queues/life").await.ok(200)["paused"], true);
    let paused_id = api.enqueue("life", &[json!("while paused")]).await;
    assert!(api.lease("life", 10, VISIBILITY_MS).await.is_empty(), "a paused queue hands out no leases");
    api.post_empty("/v1/queues/life/resume").await.no_content();
    assert_eq!(api.get("/v1/queues/life").await.ok(200)["paused"], false);
    let leased: BTreeSet<String> = api.lease("life", 10, VISIBILITY_MS).await.iter().map(id_of).collect();
    let expected: BTreeSet<String> = [j1.clone(), j4.clone(), doomed[0].clone(), paused_id[0].clone()].into();
    assert_eq!(leased, expected);

    // /metrics: the queue's depth by state, as GET /v1/queues/life counts it.
    let stats = api.get("/v1/queues/life").await.ok(200)["stats"].clone();
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    assert!(metrics.content_type.as_deref().unwrap_or("").starts_with("text/plain"), "{:?}", metrics.content_type);
    for state in ["ready", "scheduled", "leased", "dead", "blocked"] {
        let value = metric_value(&metrics.text, "onceq_queue_depth", &[("queue", "life"), ("state", state)])
            .unwrap_or_else(|| panic!("no onceq_queue_depth for life/{state} in:\n{}", metrics.text));
        assert_eq!(value, stats[state].as_f64().unwrap(), "depth of {state}");
    }

    // The queue list holds it.
    let list = api.get("/v1/queues").await.ok(200);
    let names: Vec<&str> = list["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["life"]);

    // Delete: the queue and its jobs are gone.
    api.delete("/v1/queues/life").await.no_content();
    api.get("/v1/queues/life").await.err(404, "not_found");
    api.get(&format!("/v1/jobs/{j1}")).await.err(404, "not_found");
    api.get(&format!("/v1/jobs/{j5}")).await.err(404, "not_found");
    assert_eq!(api.get("/v1/queues").await.ok(200), json!({"queues": [], "next": null}));
}

/// Milliseconds since the Unix epoch, now.
fn unix_ms_now() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    i64::try_from(elapsed.as_millis()).unwrap()
}

/// `unix_ms` as the API writes times: `YYYY-MM-DDTHH:MM:SS.mmmZ` (civil-from-days, H. Hinnant).
fn rfc3339_utc(unix_ms: i64) -> String {
    let (days, ms_of_day) = (unix_ms.div_euclid(86_400_000), unix_ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

/// Whether `value` is an RFC 3339 UTC time as the API writes it (`2026-01-01T00:00:00.000Z`).
fn is_rfc3339(value: &Value) -> bool {
    let Some(text) = value.as_str() else { return false };
    let bytes = text.as_bytes();
    text.len() == 24
        && text.ends_with('Z')
        && bytes[4] == b'-'
        && bytes[10] == b'T'
        && bytes[19] == b'.'
        && text.chars().filter(char::is_ascii_digit).count() == 17
}

/// The value of the Prometheus sample `name{labels...}` in `text`, labels in any order.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{')?;
        if metric != name {
            return None;
        }
        let label_text = rest.strip_suffix('}')?;
        let present: BTreeSet<String> = label_text.split(',').map(str::to_owned).collect();
        labels.iter().all(|(k, v)| present.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok())?
    })
}
