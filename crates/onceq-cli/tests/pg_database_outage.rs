//! PostgreSQL stopped and started again under a running `onceq serve` (issue 5: "PostgreSQL
//! restarted or unreachable mid-run → clear errors (503 over HTTP) and recovery without
//! restarting onceq"; docs/api.md, "Errors" and "Operations").
//!
//! Proves that, with producers and a consumer running through the server:
//! - while PostgreSQL is down, every store-backed request (enqueue, lease, ack, batch ack, job
//!   and queue reads) answers 503 with the error body `unavailable`, a message naming
//!   PostgreSQL, and `Retry-After: 1`; `/readyz` answers 503 `unavailable` and `/healthz` 200;
//!   and each answer comes within 2 s (the store stops waiting for connections once one failed),
//!   not after the pool's whole acquire timeout, nor a hang;
//! - once PostgreSQL is back, the same server process (never restarted) recovers by itself:
//!   `/readyz` 200, and enqueue, lease and ack work again, as do long polls woken by an enqueue;
//! - nothing acknowledged before the outage is lost: leases taken before it are still live
//!   and ackable, the jobs enqueued before it are all there exactly once, and the jobs acked
//!   before it stay gone;
//! - the producers and the consumer that ran through the outage, retrying on 503, end with
//!   every payload enqueued once (dedup ids), every job processed, and nothing acked twice.
//!
//! PostgreSQL is stopped with `pg_ctlcluster ... stop` and started with `... start`; a guard
//! starts it again whatever happens, since every other test needs it. The test needs the local
//! cluster that `scripts/test` uses; with `ONCEQ_TEST_DATABASE_URL` pointing elsewhere it is
//! skipped (it cannot stop another server). It must not run beside other PostgreSQL tests:
//! `cargo test` runs test binaries one at a time, and this file holds a single test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{id_of, token_of, Api, Reply};
use serde_json::{json, Value};

/// The queue filled before the outage and checked exactly after it.
const QUEUE: &str = "before";
/// The queue of the load that runs through the outage.
const LOAD_QUEUE: &str = "through";
/// Jobs enqueued before the outage; of these, `ACKED_BEFORE` are acked and `HELD` kept leased.
const BEFORE: usize = 1_000;
const ACKED_BEFORE: usize = 400;
const HELD: usize = 200;
/// Long enough for the leases held across the outage.
const HELD_TIMEOUT_MS: u64 = 300_000;
/// Jobs of the load through the outage, in batches of `LOAD_BATCH`.
const LOAD_JOBS: usize = 2_000;
const LOAD_BATCH: usize = 20;
/// The load's leases: short, so a lease whose reply was lost in the outage comes back soon.
const LOAD_TIMEOUT_MS: u64 = 3_000;
/// Longest a request may take while PostgreSQL is down: once a connection failed, the store
/// waits at most `SUSPECT_ACQUIRE_TIMEOUT` (750 ms) for a connection, not its whole acquire
/// timeout (5 s); the rest is a margin for a loaded machine.
const UNAVAILABLE_WITHIN: Duration = Duration::from_secs(2);
/// The listener of wake-ups reconnects with pauses doubling up to 5 s.
const LISTENER_BACK_WITHIN: Duration = Duration::from_secs(6);

/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action>`.
fn pg_ctl(action: &str) -> std::process::Output {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|dir| dir.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).min())
        .unwrap_or_else(|| panic!("no cluster under /etc/postgresql\n{}", pg_common::how_to_get_postgres()));
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pg_ctlcluster {action}: {e}\n{}", pg_common::how_to_get_postgres()))
}

/// Starts PostgreSQL again when dropped (at the end, or on a failure while it is down).
struct StartPostgresAgain;

impl Drop for StartPostgresAgain {
    fn drop(&mut self) {
        // "already running" is a failure of `start`, and fine.
        let output = pg_ctl("start");
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() && !said.contains("already running") {
            eprintln!("could not start PostgreSQL again: {said}\n{}", pg_common::how_to_get_postgres());
        }
    }
}

/// Asserts the 503 of an unavailable store: `unavailable`, `Retry-After: 1`, a message naming
/// PostgreSQL (for `/readyz`: any message).
#[track_caller]
fn assert_unavailable(reply: Reply, names_postgres: bool) {
    let request = reply.request.clone();
    assert_eq!(reply.retry_after.as_deref(), Some("1"), "{request}: Retry-After; body {}", reply.text);
    let message = reply.err(503, "unavailable");
    if names_postgres {
        // The cause (PostgreSQL, its address) is logged, never returned (docs/api.md).
        assert!(
            message.contains("store is unavailable"),
            "{request}: the message does not say what is unavailable: {message}"
        );
        assert!(!message.contains("127.0.0.1"), "{request}: the message leaks an internal address: {message}");
    }
}

/// What the load through the outage saw.
#[derive(Default)]
struct Load {
    /// Payload number → job id, from 200 replies.
    enqueued: BTreeMap<u64, String>,
    /// 503s seen, by the producers and by the consumer.
    unavailable: u64,
    /// Job id → successful acks.
    acked: BTreeMap<String, u32>,
    /// Jobs whose ack got a 503 before its final answer refused it (it may have committed).
    ack_in_doubt: BTreeSet<String>,
    /// Leases handed out: (id, token, attempt).
    leases: Vec<(String, String, u64)>,
}

type Shared = Arc<Mutex<Load>>;

fn lock(load: &Shared) -> std::sync::MutexGuard<'_, Load> {
    load.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `body` to `path` until it gets an answer other than 503 (asserting each 503's shape).
async fn until_available(api: &Api, load: &Shared, path: &str, body: &Value) -> Reply {
    loop {
        let reply = api.try_post(path, body.clone()).await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        if reply.status != 503 {
            return reply;
        }
        assert_unavailable(reply, true);
        lock(load).unavailable += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enqueues the load's payloads `first, first + step, ...` in batches, with dedup ids, retrying
/// each batch on 503 until it is accepted.
async fn produce(api: Api, load: Shared, first: usize, step: usize) {
    let batches: Vec<usize> = (0..LOAD_JOBS / LOAD_BATCH).skip(first).step_by(step).collect();
    for batch in batches {
        let numbers: Vec<u64> = (batch * LOAD_BATCH..(batch + 1) * LOAD_BATCH).map(|n| n as u64).collect();
        let jobs: Vec<Value> =
            numbers.iter().map(|n| json!({"payload": format!("l{n}"), "dedup_id": format!("l{n}")})).collect();
        let path = format!("/v1/queues/{LOAD_QUEUE}/jobs");
        let body = until_available(&api, &load, &path, &json!({ "jobs": jobs })).await.ok(200);
        let entries = body["jobs"].as_array().unwrap();
        assert_eq!(entries.len(), numbers.len(), "{body}");
        {
            let mut load = lock(&load);
            for (entry, n) in entries.iter().zip(numbers) {
                assert_eq!(load.enqueued.insert(n, id_of(entry)), None, "payload {n} answered twice");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Leases and acks the load until told to stop, retrying on 503.
async fn consume(api: Api, load: Shared, stop: Arc<AtomicBool>, acks_ok: Arc<AtomicU64>) {
    while !stop.load(Ordering::SeqCst) {
        let lease = json!({"max_jobs": 50, "visibility_timeout_ms": LOAD_TIMEOUT_MS, "wait_ms": 200});
        let body = until_available(&api, &load, &format!("/v1/queues/{LOAD_QUEUE}/leases"), &lease).await.ok(200);
        let jobs = body["jobs"].as_array().unwrap().clone();
        if jobs.is_empty() {
            continue;
        }
        {
            let mut load = lock(&load);
            for job in &jobs {
                let attempt = job["attempt"].as_u64().unwrap();
                load.leases.push((id_of(job), token_of(job), attempt));
            }
        }
        let acks: Vec<Value> = jobs.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j)})).collect();
        let body = json!({ "acks": acks });
        let mut doubtful = false;
        let reply = loop {
            let reply = api.try_post("/v1/acks", body.clone()).await.unwrap_or_else(|e| panic!("POST /v1/acks: {e}"));
            if reply.status != 503 {
                break reply;
            }
            assert_unavailable(reply, true);
            lock(&load).unavailable += 1;
            doubtful = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let results = reply.ok(200)["results"].as_array().unwrap().clone();
        assert_eq!(results.len(), jobs.len());
        let mut load = lock(&load);
        for result in results {
            let id = id_of(&result);
            if result["ok"] == true {
                *load.acked.entry(id).or_default() += 1;
                acks_ok.fetch_add(1, Ordering::SeqCst);
            } else {
                // Refused: the lease expired during the outage (the job comes back), or an
                // earlier try that got a 503 did commit.
                let code = result["error"]["code"].as_str().unwrap_or_default().to_owned();
                assert!(code == "lease_lost" || code == "not_found", "an ack failed: {result}");
                if doubtful {
                    load.ack_in_doubt.insert(id);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_answers_503_while_postgres_is_down_and_recovers_without_a_restart() {
    if !pg_common::database_is_local_default() {
        eprintln!("skipped: ONCEQ_TEST_DATABASE_URL names another PostgreSQL, which this test cannot stop and start");
        return;
    }
    let schema = pg_common::Schema::fresh("outage").await;
    let mut server = pg_common::start_server(&schema).await;
    let pid = server.pid();
    let api = server.api();
    api.put(&format!("/v1/queues/{QUEUE}"), json!({"max_attempts": 20})).await.ok(200);
    api.put(&format!("/v1/queues/{LOAD_QUEUE}"), json!({"max_attempts": 20})).await.ok(200);

    // Before: enqueue, ack some, hold some leases.
    let mut before: BTreeMap<String, String> = BTreeMap::new();
    for batch in 0..BEFORE / 100 {
        let payloads: Vec<Value> = (0..100).map(|k| json!(format!("b{}", batch * 100 + k))).collect();
        let ids = api.enqueue(QUEUE, &payloads).await;
        for (id, payload) in ids.into_iter().zip(payloads) {
            before.insert(id, payload.as_str().unwrap().to_owned());
        }
    }
    let mut leased = Vec::new();
    while leased.len() < ACKED_BEFORE + HELD {
        leased.extend(api.lease(QUEUE, 100, HELD_TIMEOUT_MS).await);
    }
    assert_eq!(leased.len(), ACKED_BEFORE + HELD);
    let (to_ack, held) = leased.split_at(ACKED_BEFORE);
    let acks: Vec<Value> = to_ack.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j)})).collect();
    let results = api.post("/v1/acks", json!({ "acks": acks })).await.ok(200);
    assert!(results["results"].as_array().unwrap().iter().all(|r| r["ok"] == true), "{results}");
    let acked_before: BTreeSet<String> = to_ack.iter().map(id_of).collect();
    let held_acks: Vec<Value> = held.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j)})).collect();
    let expected_stats = json!({"ready": BEFORE - ACKED_BEFORE - HELD, "scheduled": 0, "leased": HELD, "dead": 0, "blocked": 0, "cancelled": 0});

    // The load runs through everything that follows.
    let load: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acks_ok = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..2).map(|k| tokio::spawn(produce(api.clone(), load.clone(), k, 2))).collect();
    let consumer = tokio::spawn(consume(api.clone(), load.clone(), stop.clone(), acks_ok.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks_ok.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A store in this process too, for `PgStore::transaction` (the `*_in` calls' way in), with a
    // connection that has just been used.
    let options = onceq_postgres::PgOptions::new(pg_common::database_url()).schema(schema.name.clone());
    let library = onceq_postgres::PgStore::connect(options).await.expect("a store beside the server");
    drop(library.transaction().await.expect("a transaction while PostgreSQL is up"));

    // PostgreSQL goes away.
    let _start_again = StartPostgresAgain;
    let stopping = Instant::now();
    let output = pg_ctl("stop");
    assert!(output.status.success(), "pg_ctlcluster stop: {}", String::from_utf8_lossy(&output.stderr));
    let stop_took = stopping.elapsed();
    let outage = Instant::now();
    let health = api.get("/healthz").await;
    assert_eq!(health.status, 200, "/healthz while PostgreSQL is down: {}", health.text);
    // Every kind of request at once (each may take the store's connection timeout).
    let job = json!({"jobs": [{"payload": "during"}]});
    let lease = json!({"max_jobs": 10, "visibility_timeout_ms": 1000});
    let held_id = id_of(&held[0]);
    let requests: Vec<(String, Option<Value>)> = vec![
        (format!("/v1/queues/{QUEUE}/jobs"), Some(job)),
        (format!("/v1/queues/{QUEUE}/leases"), Some(lease)),
        (format!("/v1/jobs/{held_id}/ack"), Some(json!({"lease_token": token_of(&held[0])}))),
        ("/v1/acks".to_owned(), Some(json!({ "acks": held_acks }))),
        (format!("/v1/jobs/{held_id}"), None),
        (format!("/v1/queues/{QUEUE}"), None),
        ("/readyz".to_owned(), None),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for (path, body) in requests {
        let api = api.clone();
        calls.spawn(async move {
            let sent = Instant::now();
            let reply = match body {
                Some(body) => api.post(&path, body).await,
                None => api.get(&path).await,
            };
            (path, sent.elapsed(), reply)
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(call) = calls.join_next().await {
        let (path, took, reply) = call.unwrap();
        slowest = slowest.max(took);
        assert!(took < UNAVAILABLE_WITHIN, "{} took {took:?} while PostgreSQL was down", reply.request);
        assert_unavailable(reply, path != "/readyz");
    }
    assert!(server.is_running(), "the server process died with PostgreSQL");
    // A library caller opening transactions hears the same within the same bound, once the store
    // has seen the database fail (the first try may meet a pooled connection that just broke).
    for attempt in 0..3 {
        let sent = Instant::now();
        let result = library.transaction().await;
        let took = sent.elapsed();
        let error = result.err().unwrap_or_else(|| panic!("transaction {attempt} opened while PostgreSQL was down"));
        assert!(matches!(error, onceq_core::Error::Unavailable(_)), "transaction {attempt}: {error:?}");
        if attempt > 0 {
            assert!(took < UNAVAILABLE_WITHIN, "transaction {attempt} took {took:?} while PostgreSQL was down");
        }
    }

    // PostgreSQL comes back; the same process recovers.
    let output = pg_ctl("start");
    assert!(output.status.success(), "pg_ctlcluster start: {}", String::from_utf8_lossy(&output.stderr));
    let down_for = outage.elapsed();
    let back = Instant::now();
    loop {
        let reply = api.get("/readyz").await;
        if reply.status == 200 {
            break;
        }
        assert_unavailable(reply, false);
        assert!(back.elapsed() < Duration::from_secs(30), "/readyz is still 503 30 s after PostgreSQL came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_after = back.elapsed();
    assert_eq!(server.pid(), pid, "the same server process");
    assert!(server.is_running());

    // Nothing acknowledged before the outage is lost: the state is exactly what it was.
    let info = api.get(&format!("/v1/queues/{QUEUE}")).await.ok(200);
    let mut stats = info["stats"].clone();
    stats.as_object_mut().unwrap().remove("oldest_ready_age_ms");
    assert_eq!(stats, expected_stats, "{info}");
    let results = api.post("/v1/acks", json!({ "acks": held_acks })).await.ok(200);
    let results = results["results"].as_array().unwrap();
    assert_eq!(results.len(), HELD);
    for (result, job) in results.iter().zip(held) {
        assert_eq!(result, &json!({"id": id_of(job), "ok": true}), "a lease taken before the outage");
    }
    let rest = api.lease(QUEUE, 1000, 60_000).await;
    let expected_rest: BTreeSet<String> = before
        .keys()
        .filter(|id| !acked_before.contains(*id) && !held.iter().any(|j| &id_of(j) == *id))
        .cloned()
        .collect();
    assert_eq!(rest.iter().map(id_of).collect::<BTreeSet<_>>(), expected_rest, "the jobs never leased");
    for job in &rest {
        assert_eq!(job["attempt"], 1, "{job}");
        assert_eq!(job["payload"], json!(before[&id_of(job)]), "{job}");
    }
    let acks: Vec<Value> = rest.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j)})).collect();
    let results = api.post("/v1/acks", json!({ "acks": acks })).await.ok(200);
    assert!(results["results"].as_array().unwrap().iter().all(|r| r["ok"] == true), "{results}");
    for id in &acked_before {
        api.get(&format!("/v1/jobs/{id}")).await.err(404, "not_found");
    }
    let info = api.get(&format!("/v1/queues/{QUEUE}")).await.ok(200);
    assert_eq!(
        info["stats"],
        json!({"ready": 0, "scheduled": 0, "leased": 0, "dead": 0, "blocked": 0, "cancelled": 0, "oldest_ready_age_ms": null})
    );

    // The load through the outage finishes: every payload once, every job processed once.
    for producer in producers {
        producer.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = api.get(&format!("/v1/queues/{LOAD_QUEUE}")).await.ok(200);
        if info["stats"]
            == json!({"ready": 0, "scheduled": 0, "leased": 0, "dead": 0, "blocked": 0, "cancelled": 0, "oldest_ready_age_ms": null})
        {
            break;
        }
        assert!(Instant::now() < deadline, "the load was not drained in time: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    let load = std::mem::take(&mut *lock(&load));
    assert_eq!(load.enqueued.len(), LOAD_JOBS, "every payload of the load was enqueued");
    let ids: BTreeSet<&String> = load.enqueued.values().collect();
    assert_eq!(ids.len(), LOAD_JOBS, "one job per payload, though batches were sent again after 503s");
    let leased_ids: BTreeSet<&String> = load.leases.iter().map(|(id, _, _)| id).collect();
    assert_eq!(leased_ids, ids, "every job of the load was delivered, and only those");
    let tokens: BTreeSet<&String> = load.leases.iter().map(|(_, token, _)| token).collect();
    assert_eq!(tokens.len(), load.leases.len(), "no lease token handed out twice");
    let attempts: BTreeSet<(&String, u64)> = load.leases.iter().map(|(id, _, attempt)| (id, *attempt)).collect();
    assert_eq!(attempts.len(), load.leases.len(), "no job leased twice with one attempt number");
    assert!(load.acked.values().all(|&n| n == 1), "a job of the load was acked twice");
    for id in &ids {
        if !load.acked.contains_key(*id) {
            assert!(load.ack_in_doubt.contains(*id), "job {id} of the load was never acked");
            api.get(&format!("/v1/jobs/{id}")).await.err(404, "not_found");
        }
    }
    assert!(load.unavailable > 0, "the load met no 503: the outage did not happen under it");

    // Long polls are woken by an enqueue again once the listener is back.
    if let Some(wait) = LISTENER_BACK_WITHIN.checked_sub(back.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    for round in 0..3 {
        let waiting = {
            let api = api.clone();
            tokio::spawn(async move {
                let body = json!({"max_jobs": 1, "wait_ms": 10_000});
                let jobs = api.post("/v1/queues/wake/leases", body).await.ok(200)["jobs"].as_array().unwrap().clone();
                (jobs, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let enqueued = Instant::now();
        let ids = api.enqueue("wake", &[json!(format!("wake-{round}"))]).await;
        let (jobs, woken) = waiting.await.unwrap();
        assert_eq!(jobs.iter().map(id_of).collect::<Vec<_>>(), ids);
        let took = woken.duration_since(enqueued);
        assert!(took < Duration::from_millis(1_500), "a long poll took {took:?} to see an enqueue: no wake-up");
        api.post(&format!("/v1/jobs/{}/ack", ids[0]), json!({"lease_token": token_of(&jobs[0])})).await.no_content();
    }
    assert_eq!(server.pid(), pid, "never restarted");

    eprintln!(
        "pg_database_outage: stop took {stop_took:?}; PostgreSQL down for {down_for:?}, slowest 503 {slowest:?}; \
         /readyz 200 {ready_after:?} after it came back; the load met {} 503s, {} of its acks were in doubt",
        load.unavailable,
        load.ack_in_doubt.len()
    );
    server.terminate(Duration::from_secs(30)).await;
    drop(schema);
}
