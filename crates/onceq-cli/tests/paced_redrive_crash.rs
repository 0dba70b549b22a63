//! A paced redrive keeps its pace and survives `kill -9` of `onceq serve` without redriving a
//! job twice (docs/api.md, "Paced redrives").
//!
//! 1,000 dead jobs are redriven at 100 per second. Halfway, at about 5 s, the progress must be
//! 500 ± 10% (the pace: 1,000 at 100/s takes 10 s ± 10%); then the server is killed with SIGKILL
//! and restarted on the same data directory. The redrive resumes by itself from its cursor and
//! finishes: `redriven` is exactly 1,000 (a step and its progress commit together), every job is
//! ready again with one error in its history, none is left dead, and the second half also goes
//! at the pace (not a burst after the restart).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{id_of, token_of, Server};
use serde_json::{json, Value};

const QUEUE: &str = "paced";
const JOBS: usize = 1000;
const RATE: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_redrive_keeps_its_pace_and_resumes_after_kill_9_without_redriving_twice() {
    let mut server = Server::start().await;
    let api = server.api();
    api.put(&format!("/v1/queues/{QUEUE}"), json!({"max_attempts": 1})).await.ok(200);
    let ids = api.enqueue(QUEUE, &(0..JOBS).map(|i| json!(i)).collect::<Vec<_>>()).await;
    let leased = api.lease(QUEUE, JOBS as u32, 60_000).await;
    assert_eq!(leased.len(), JOBS);
    let fails: Vec<Value> =
        leased.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j), "error": "poison"})).collect();
    api.post("/v1/fails", json!({ "fails": fails })).await.ok(200);
    assert_eq!(api.get(&format!("/v1/queues/{QUEUE}")).await.ok(200)["stats"]["dead"], JOBS as u64);

    let started = api.post(&format!("/v1/queues/{QUEUE}/dead/redrive"), json!({"rate_per_second": RATE})).await.ok(202);
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!((started["state"].as_str(), started["matched"].as_u64()), (Some("running"), Some(JOBS as u64)));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(5000).saturating_sub(t0.elapsed())).await;
    let half = api.get(&format!("/v1/redrives/{id}")).await.ok(200);
    let elapsed = t0.elapsed().as_secs_f64();
    let redriven = half["redriven"].as_u64().unwrap();
    let expected = elapsed * RATE as f64;
    assert!(
        (redriven as f64 - expected).abs() <= expected * 0.1,
        "after {elapsed:.2} s at {RATE}/s: {redriven} redriven, expected {expected:.0} ± 10%"
    );

    server.kill().await;
    server.restart().await;
    let api = server.api();
    let restarted = Instant::now();
    let at_restart = api.get(&format!("/v1/redrives/{id}")).await.ok(200)["redriven"].as_u64().unwrap();
    let done = loop {
        let now = api.get(&format!("/v1/redrives/{id}")).await.ok(200);
        if now["state"] != "running" {
            break now;
        }
        assert!(restarted.elapsed() < Duration::from_secs(30), "the redrive did not finish after the restart: {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let second_half = restarted.elapsed().as_secs_f64();
    let left = (JOBS as u64 - at_restart) as f64;
    assert!(
        second_half >= left / RATE as f64 * 0.9,
        "{left} jobs after the restart went in {second_half:.2} s: faster than {RATE}/s"
    );
    assert_eq!((done["state"].as_str(), done["redriven"].as_u64()), (Some("done"), Some(JOBS as u64)), "{done}");
    let stats = api.get(&format!("/v1/queues/{QUEUE}")).await.ok(200)["stats"].clone();
    assert_eq!((stats["dead"].as_u64(), stats["ready"].as_u64()), (Some(0), Some(JOBS as u64)), "{stats}");
    for id in ids.iter().step_by(37) {
        let job = api.get(&format!("/v1/jobs/{id}")).await.ok(200);
        assert_eq!((job["state"].as_str(), job["attempt"].as_u64()), (Some("ready"), Some(0)), "{job}");
        assert_eq!(job["errors"].as_array().unwrap().len(), 1, "{job}");
    }
}
