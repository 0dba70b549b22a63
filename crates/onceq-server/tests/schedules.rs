//! Proves, against the router in-process, the HTTP contract of schedules (docs/api.md
//! "Schedules"): `PUT` fills the defaults and answers the schedule as `GET` shows it; a bad cron,
//! time zone or job field is 400 naming the field, and stores nothing; an unknown schedule is 404
//! on every endpoint; pause, resume and delete are 204; `POST /v1/schedule-ticks` fires the due
//! ticks on the store's clock and returns them, once. The auth matrix: a schedule needs admin on
//! its queue, a listing shows only readable ones, firing needs admin everywhere. And `/metrics`
//! counts ticks enqueued and skipped and their lateness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod in_process;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use in_process::{Server, TokenSpec};
use onceq_core::{Clock, ManualClock};
use serde_json::{json, Value};
use tower::ServiceExt;

/// 2026-01-01T00:00:00Z plus `minutes`, as the API writes times.
fn at_minute(minutes: u32) -> String {
    format!("2026-01-01T{:02}:{:02}:00.000Z", minutes / 60, minutes % 60)
}

#[tokio::test]
async fn schedules_are_created_read_fired_paused_and_deleted() {
    let clock = ManualClock::at_default_start();
    let server = Server::start_on(clock.clone() as Arc<dyn Clock>).await;
    let api = server.api();
    let put = api.put("/v1/schedules/reports.hourly", json!({"queue": "reports", "cron": "0 * * * *"})).await.ok(200);
    assert_eq!(
        put,
        json!({
            "name": "reports.hourly", "queue": "reports", "cron": "0 * * * *", "timezone": "UTC",
            "payload": null, "job": {"priority": 0}, "catch_up": "one", "paused": false,
            "next_tick": at_minute(60),
            "next_ticks": [at_minute(60), at_minute(120), at_minute(180), at_minute(240), at_minute(300)],
            "last_tick": null, "last_job_id": null
        })
    );
    assert_eq!(api.get("/v1/schedules/reports.hourly").await.ok(200), put);
    let full = json!({"queue": "reports", "cron": "*/30 * * * * *", "timezone": "Europe/Berlin",
        "payload": {"kind": "beat"}, "job": {"priority": 5, "headers": {"source": "cron"}, "max_attempts": 3,
        "ordering_key": "beat"}, "catch_up": "all", "paused": true});
    let beat = api.put("/v1/schedules/beat", full.clone()).await.ok(200);
    for field in ["queue", "cron", "timezone", "payload", "job", "catch_up", "paused"] {
        assert_eq!(beat[field], full[field], "{field}");
    }
    assert_eq!(beat["next_tick"], json!(null), "paused");
    let names: Vec<Value> = api.get("/v1/schedules").await.ok(200)["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("beat"), json!("reports.hourly")]);

    // Nothing due, then the hour: one job, returned once.
    assert_eq!(api.post_empty("/v1/schedule-ticks").await.ok(200), json!({"fired": [], "skipped": 0}));
    clock.advance(60 * 60_000);
    let fired = api.post_empty("/v1/schedule-ticks").await.ok(200);
    let fired_now = fired["fired"].as_array().unwrap();
    // The store's own housekeeping may have fired it first; either way it is one job.
    let job_id = if let Some(tick) = fired_now.first() {
        assert_eq!(
            (&tick["schedule"], &tick["tick"], &tick["duplicate"]),
            (&json!("reports.hourly"), &json!(at_minute(60)), &json!(false))
        );
        tick["job_id"].as_str().unwrap().to_owned()
    } else {
        api.get("/v1/schedules/reports.hourly").await.ok(200)["last_job_id"].as_str().unwrap().to_owned()
    };
    assert_eq!(api.post_empty("/v1/schedule-ticks").await.ok(200)["fired"], json!([]));
    let job = api.get(&format!("/v1/jobs/{job_id}")).await.ok(200);
    assert_eq!((&job["queue"], &job["dedup_id"]), (&json!("reports"), &json!("schedule:reports.hourly:1767229200000")));
    let read = api.get("/v1/schedules/reports.hourly").await.ok(200);
    assert_eq!((&read["last_tick"], &read["last_job_id"]), (&json!(at_minute(60)), &json!(job_id)));

    api.post_empty("/v1/schedules/reports.hourly/pause").await.no_content();
    assert_eq!(api.get("/v1/schedules/reports.hourly").await.ok(200)["paused"], json!(true));
    api.post_empty("/v1/schedules/reports.hourly/resume").await.no_content();
    api.delete("/v1/schedules/reports.hourly").await.no_content();
    for (method, path) in [
        ("GET", "/v1/schedules/reports.hourly"),
        ("DELETE", "/v1/schedules/reports.hourly"),
        ("POST", "/v1/schedules/reports.hourly/pause"),
        ("POST", "/v1/schedules/reports.hourly/resume"),
    ] {
        let reply = match method {
            "GET" => api.get(path).await,
            "DELETE" => api.delete(path).await,
            _ => api.post_empty(path).await,
        };
        assert_eq!(reply.err(404, "not_found"), "schedule 'reports.hourly' not found", "{method} {path}");
    }
}

#[tokio::test]
async fn bad_schedules_are_400_naming_the_field_and_store_nothing() {
    let server = Server::start().await;
    let api = server.api();
    for (body, starts) in [
        (json!({"queue": "q", "cron": "61 * * * *"}), "cron: "),
        (json!({"queue": "q", "cron": "* * * *"}), "cron: "),
        (json!({"queue": "q", "cron": "0 0 30 2 *"}), "cron: "),
        (json!({"queue": "q", "cron": "* * * * *", "timezone": "Mars/Base"}), "timezone: "),
        (json!({"queue": "q", "cron": "* * * * *", "job": {"priority": 2_000_000}}), "job: "),
    ] {
        let message = api.put("/v1/schedules/s", body.clone()).await.err(400, "invalid_request");
        assert!(message.starts_with(starts), "{body}: {message:?}");
    }
    for body in [
        json!({"queue": "q"}),
        json!({"queue": "q", "cron": "* * * * *", "every": 5}),
        json!({"queue": "bad name", "cron": "* * * * *"}),
        json!({"queue": "q", "cron": "* * * * *", "catch_up": "some"}),
        json!({"queue": "q", "cron": "* * * * *", "payload": 1, "payload_base64": "AA=="}),
    ] {
        api.put("/v1/schedules/s", body).await.err(400, "invalid_request");
    }
    api.put("/v1/schedules/..", json!({"queue": "q", "cron": "* * * * *"})).await.err(400, "invalid_request");
    assert_eq!(api.get("/v1/schedules").await.ok(200), json!({"schedules": []}));
}

#[tokio::test]
async fn schedules_follow_the_permissions_of_their_queue() {
    const TOKENS: &[TokenSpec] = &[
        TokenSpec { name: "ops", secret: "ops-secret", produce: &[], consume: &[], admin: &["reports*"] },
        TokenSpec { name: "root", secret: "root-secret", produce: &[], consume: &[], admin: &["*"] },
        TokenSpec { name: "worker", secret: "worker-secret", produce: &[], consume: &["reports"], admin: &[] },
    ];
    let server = Server::start_with_tokens(TOKENS).await;
    let (ops, root, worker) = (
        server.api_with_token("ops-secret"),
        server.api_with_token("root-secret"),
        server.api_with_token("worker-secret"),
    );
    ops.put("/v1/schedules/daily", json!({"queue": "reports", "cron": "0 6 * * *"})).await.ok(200);
    ops.put("/v1/schedules/other", json!({"queue": "billing", "cron": "0 6 * * *"})).await.err(403, "forbidden");
    root.put("/v1/schedules/billing", json!({"queue": "billing", "cron": "0 6 * * *"})).await.ok(200);
    // Moving a schedule needs admin on the queue it leaves too.
    ops.put("/v1/schedules/billing", json!({"queue": "reports", "cron": "0 6 * * *"})).await.err(403, "forbidden");
    ops.delete("/v1/schedules/billing").await.err(403, "forbidden");
    worker.get("/v1/schedules/daily").await.ok(200);
    worker.get("/v1/schedules/billing").await.err(403, "forbidden");
    worker.post_empty("/v1/schedules/daily/pause").await.err(403, "forbidden");
    let listed = worker.get("/v1/schedules").await.ok(200);
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["schedules"][0]["name"], json!("daily"));
    ops.post_empty("/v1/schedule-ticks").await.err(403, "forbidden");
    root.post_empty("/v1/schedule-ticks").await.ok(200);
    server.api().get("/v1/schedules").await.err(401, "unauthorized");
}

#[tokio::test]
async fn metrics_count_ticks_enqueued_skipped_and_their_lateness() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let store =
        onceq_sqlite::SqliteStore::open(onceq_sqlite::SqliteOptions::new(dir.path()).clock(clock.clone())).unwrap();
    let app = onceq_server::router(Arc::new(store.clone()), onceq_server::Auth::disabled());
    let put = |name: &str, catch_up: &str| {
        Request::put(format!("/v1/schedules/{name}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({"queue": "metered-ticks", "cron": "0 * * * *", "catch_up": catch_up}).to_string()))
            .unwrap()
    };
    assert_eq!(app.clone().oneshot(put("metered-all", "all")).await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.clone().oneshot(put("metered-skip", "skip")).await.unwrap().status(), StatusCode::OK);
    clock.advance(3 * 60 * 60_000 + 30 * 60_000); // 03:30: three missed hourly ticks
    let tick = Request::post("/v1/schedule-ticks").body(Body::empty()).unwrap();
    assert_eq!(app.clone().oneshot(tick).await.unwrap().status(), StatusCode::OK);
    let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap().to_vec()).unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("onceq_schedule_ticks_enqueued_total{schedule=\"metered-all\"}"), 3.0);
    assert_eq!(value("onceq_schedule_ticks_skipped_total{schedule=\"metered-skip\"}"), 3.0);
    assert_eq!(value("onceq_schedule_tick_lateness_seconds_count{schedule=\"metered-all\"}"), 3.0);
    // 2.5 h, 1.5 h and 0.5 h late.
    assert_eq!(value("onceq_schedule_tick_lateness_seconds_sum{schedule=\"metered-all\"}"), 4.5 * 3600.0);
}
