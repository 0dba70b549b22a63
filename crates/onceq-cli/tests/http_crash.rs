//! Crash safety of `onceq serve` under `kill -9`, seen only through HTTP (docs/design.md Invariants 1
//! and 4, end to end through the server).
//!
//! Proves that, after the server process is killed with SIGKILL in the middle of concurrent
//! enqueues and acks and restarted on the same data directory:
//! - every enqueue that got a 2xx reply is still there (`GET /v1/jobs/{id}` → 200, same payload),
//!   unless an ack of it was sent (an ack may commit even when the kill lands before its reply);
//! - every job whose ack got a 2xx reply (204, or `ok: true` in `/v1/acks`) is 404, and is never
//!   delivered again: leasing everything the queue holds never returns it, in this cycle or any
//!   later one;
//! - jobs leased but not acked at the kill come back once their (short) visibility timeout ends:
//!   leasing everything returns every job known to exist;
//! - no payload is stored under two ids, and every stored payload is one a producer sent.
//!
//! How: producers enqueue batches of unique payloads and workers lease (300 ms leases) and ack
//! most of what they get (singly and in batches), leaving some leases to expire. Each records
//! what got a 2xx reply, and marks an ack as attempted before sending it. After a random delay the
//! server is killed; once every client has seen its connection fail, the server is restarted on
//! the same data directory and the record is checked as above. Then the state is known exactly
//! (the jobs leased in the check are all that exist), so the record is reconciled, half of the
//! jobs are acked and the rest nacked back to ready, and the next cycle begins. Odd cycles run
//! with `--durability relaxed` (which must survive a process crash too), even ones with `fsync`.
//!
//! `ONCEQ_HTTP_CRASH_CYCLES` sets the number of cycles (default 5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{id_of, token_of, Api, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const QUEUE: &str = "crash";
const PRODUCERS: usize = 4;
const WORKERS: usize = 3;
/// Leases of the workers: short, so jobs leased at the kill are ready again soon after.
const VISIBILITY_MS: u64 = 300;
/// Leases of the checker: long enough to outlast the check.
const CHECK_VISIBILITY_MS: u64 = 120_000;
/// The kill comes this long after the clients start, drawn uniformly.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 150..=600;
const CYCLES_DEFAULT: u32 = 5;
/// Concurrent GETs while checking.
const CHECKERS: usize = 8;

/// What the clients saw, across all cycles.
#[derive(Default)]
struct Ledger {
    /// Every payload a producer sent, whether or not the enqueue got a reply.
    sent: BTreeSet<String>,
    /// Jobs whose enqueue got a 2xx reply (or that the check found), with their payloads.
    enqueued: BTreeMap<String, String>,
    /// Jobs an ack was sent for, with no 2xx reply yet: they may or may not be gone.
    ack_unknown: BTreeSet<String>,
    /// Jobs whose ack got a 2xx reply: gone for good.
    acked: BTreeSet<String>,
    /// Jobs acked (2xx) since the last restart: checked one by one with GET.
    acked_this_cycle: BTreeSet<String>,
    /// Jobs under a worker's lease that no ack was sent for.
    leased_unsettled: BTreeSet<String>,
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Enqueues batches of 1 to 4 unique payloads until the server is gone.
async fn produce(api: Api, ledger: Shared, cycle: u32, producer: usize) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    for seq in 0u64.. {
        let payloads: Vec<String> =
            (0..rng.gen_range(1..=4)).map(|k| format!("c{cycle}-p{producer}-{seq}-{k}")).collect();
        lock(&ledger).sent.extend(payloads.iter().cloned());
        let jobs: Vec<Value> = payloads.iter().map(|p| json!({ "payload": p })).collect();
        let Ok(reply) = api.try_post(&format!("/v1/queues/{QUEUE}/jobs"), json!({ "jobs": jobs })).await else {
            return;
        };
        let body = reply.ok(200);
        let entries = body["jobs"].as_array().unwrap();
        assert_eq!(entries.len(), payloads.len(), "{body}");
        let mut ledger = lock(&ledger);
        for (entry, payload) in entries.iter().zip(payloads) {
            assert_eq!(entry["duplicate"], false, "{body}");
            let previous = ledger.enqueued.insert(id_of(entry), payload);
            assert_eq!(previous, None, "an id was handed out twice: {body}");
        }
    }
}

/// Leases and acks (most) jobs until the server is gone.
async fn work(api: Api, ledger: Shared, worker: usize) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    for round in 0u64.. {
        let lease = json!({"max_jobs": 8, "visibility_timeout_ms": VISIBILITY_MS});
        let Ok(reply) = api.try_post(&format!("/v1/queues/{QUEUE}/leases"), lease).await else {
            return;
        };
        let jobs = reply.ok(200)["jobs"].as_array().unwrap().clone();
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        // Most are acked; the rest are left to expire.
        let (to_ack, to_leave): (Vec<Value>, Vec<Value>) = jobs.into_iter().partition(|_| rng.gen_bool(0.85));
        {
            let mut ledger = lock(&ledger);
            ledger.leased_unsettled.extend(to_leave.iter().map(id_of));
            for job in &to_ack {
                let id = id_of(job);
                ledger.leased_unsettled.remove(&id);
                ledger.ack_unknown.insert(id);
            }
        }
        if (round + worker as u64).is_multiple_of(2) {
            let acks: Vec<Value> = to_ack.iter().map(|j| json!({"id": id_of(j), "lease_token": token_of(j)})).collect();
            if acks.is_empty() {
                continue;
            }
            let Ok(reply) = api.try_post("/v1/acks", json!({ "acks": acks })).await else {
                return;
            };
            let body = reply.ok(200);
            for result in body["results"].as_array().unwrap() {
                if result["ok"] == true {
                    record_ack(&ledger, id_of(result));
                } else {
                    // Only a lease that outlived its 300 ms on a loaded machine may be refused.
                    common::assert_error_detail("a batch ack", &result["error"], "lease_lost");
                }
            }
        } else {
            for job in &to_ack {
                let id = id_of(job);
                let path = format!("/v1/jobs/{id}/ack");
                let Ok(reply) = api.try_post(&path, json!({"lease_token": token_of(job)})).await else {
                    return;
                };
                if reply.status == 204 {
                    record_ack(&ledger, id);
                } else {
                    reply.err(409, "lease_lost");
                }
            }
        }
    }
}

fn record_ack(ledger: &Shared, id: String) {
    let mut ledger = lock(ledger);
    ledger.ack_unknown.remove(&id);
    ledger.acked_this_cycle.insert(id.clone());
    ledger.acked.insert(id);
}

/// GETs every id in `ids` (concurrently); returns each one's status and body.
async fn get_all(api: &Api, ids: Vec<String>) -> HashMap<String, (u16, Value)> {
    let mut tasks = tokio::task::JoinSet::new();
    let chunk = ids.len().div_ceil(CHECKERS).max(1);
    for part in ids.chunks(chunk) {
        let (api, part) = (api.clone(), part.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(part.len());
            for id in part {
                let reply = api.get(&format!("/v1/jobs/{id}")).await;
                let body = if reply.text.is_empty() { Value::Null } else { reply.json() };
                out.push((id, (reply.status, body)));
            }
            out
        });
    }
    let mut all = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.expect("a checker failed"));
    }
    all
}

/// Checks the ledger against the restarted server, then leaves the queue with every job ready
/// or acked, and the ledger exact.
async fn check(api: &Api, ledger: &Shared, cycle: u32) {
    let (expected, acked_now) = {
        let ledger = lock(ledger);
        let expected: BTreeMap<String, String> = ledger
            .enqueued
            .iter()
            .filter(|(id, _)| !ledger.ack_unknown.contains(*id) && !ledger.acked.contains(*id))
            .map(|(id, payload)| (id.clone(), payload.clone()))
            .collect();
        (expected, ledger.acked_this_cycle.iter().cloned().collect::<Vec<_>>())
    };

    // Every acknowledged enqueue not acked since is there, with its payload.
    let found = get_all(api, expected.keys().cloned().collect()).await;
    for (id, payload) in &expected {
        let (status, body) = &found[id];
        assert_eq!(*status, 200, "cycle {cycle}: job {id} ({payload}), enqueued with a 2xx reply, is lost: {body}");
        assert_eq!(body["payload"], json!(payload), "cycle {cycle}: job {id}");
    }
    // Every job acked with a 2xx since the last restart is gone.
    let found = get_all(api, acked_now).await;
    for (id, (status, body)) in &found {
        assert_eq!(*status, 404, "cycle {cycle}: job {id}, acked with a 2xx reply, is back: {body}");
        common::error_message(&format!("GET /v1/jobs/{id}"), body, "not_found");
    }

    // Lease everything: what comes back is every job that exists, never an acked one, and
    // includes the jobs leased but not acked at the kill (their leases have expired).
    let mut drained: BTreeMap<String, String> = BTreeMap::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let jobs = api.lease(QUEUE, 1000, CHECK_VISIBILITY_MS).await;
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            let (id, payload) = (id_of(&job), job["payload"].as_str().expect("a string payload").to_owned());
            tokens.insert(id.clone(), token_of(&job));
            assert_eq!(drained.insert(id.clone(), payload), None, "cycle {cycle}: job {id} leased twice in the drain");
        }
    }
    let stats = api.get(&format!("/v1/queues/{QUEUE}")).await.ok(200)["stats"].clone();
    assert_eq!(
        (&stats["ready"], &stats["scheduled"], &stats["dead"], &stats["leased"]),
        (&json!(0), &json!(0), &json!(0), &json!(drained.len())),
        "cycle {cycle}: everything is leased by the check: {stats}"
    );

    {
        let mut book = lock(ledger);
        let mut payloads = BTreeSet::new();
        for (id, payload) in &drained {
            assert!(
                !book.acked.contains(id),
                "cycle {cycle}: job {id} ({payload}) was acked with a 2xx and is delivered again"
            );
            assert!(book.sent.contains(payload), "cycle {cycle}: job {id} holds a payload nobody sent: {payload}");
            assert!(payloads.insert(payload.clone()), "cycle {cycle}: payload {payload} is stored twice");
            if let Some(known) = book.enqueued.get(id) {
                assert_eq!(known, payload, "cycle {cycle}: job {id}");
            }
        }
        // Among them the jobs leased but not acked at the kill: their leases have expired.
        let missing: Vec<&String> = expected.keys().filter(|id| !drained.contains_key(*id)).collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: jobs that exist were not delivered by leasing everything: {missing:?}"
        );
        let unsettled_back = book.leased_unsettled.iter().filter(|id| drained.contains_key(*id)).count();

        // Reconcile: what the drain found is all that exists. An unknown ack that left its job in
        // place did not commit; one whose job is gone did. An enqueue whose reply was lost but
        // committed is a job like any other.
        let ack_unknown = std::mem::take(&mut book.ack_unknown);
        let committed: Vec<String> = ack_unknown.into_iter().filter(|id| !drained.contains_key(id)).collect();
        book.acked.extend(committed);
        for (id, payload) in &drained {
            book.enqueued.entry(id.clone()).or_insert_with(|| payload.clone());
        }
        book.acked_this_cycle.clear();
        book.leased_unsettled.clear();
        eprintln!(
            "cycle {cycle}: {} jobs sent so far, {} enqueued, {} acked; {} present after the restart, \
             {unsettled_back} of them leased and unsettled at the kill",
            book.sent.len(),
            book.enqueued.len(),
            book.acked.len(),
            drained.len(),
        );
    }

    // Ack half of what exists, nack the rest back to ready for the next cycle's workers.
    let entries: Vec<(&String, &String)> = tokens.iter().collect();
    for chunk in entries.chunks(500) {
        let (to_ack, to_nack): (Vec<_>, Vec<_>) = chunk.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        if !to_ack.is_empty() {
            let acks: Vec<Value> =
                to_ack.iter().map(|(_, (id, token))| json!({"id": id, "lease_token": token})).collect();
            let body = api.post("/v1/acks", json!({ "acks": acks })).await.ok(200);
            let mut book = lock(ledger);
            for result in body["results"].as_array().unwrap() {
                assert_eq!(result["ok"], true, "cycle {cycle}: the check's ack: {result}");
                // Checked one by one after the next restart, as the workers' acks are.
                book.acked_this_cycle.insert(id_of(result));
                book.acked.insert(id_of(result));
            }
        }
        if !to_nack.is_empty() {
            let nacks: Vec<Value> =
                to_nack.iter().map(|(_, (id, token))| json!({"id": id, "lease_token": token, "delay_ms": 0})).collect();
            let body = api.post("/v1/nacks", json!({ "nacks": nacks })).await.ok(200);
            for result in body["results"].as_array().unwrap() {
                assert_eq!((&result["ok"], &result["outcome"]), (&json!(true), &json!("retrying")), "{result}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_and_nothing_acked_comes_back_after_kill_9() {
    let cycles: u32 = std::env::var("ONCEQ_HTTP_CRASH_CYCLES").ok().map_or(CYCLES_DEFAULT, |v| v.parse().unwrap());
    let durability = |cycle: u32| if cycle % 2 == 1 { "relaxed" } else { "fsync" };
    let args = |cycle: u32| ["--listen", "127.0.0.1:0", "--durability", durability(cycle)];
    let mut server = Server::start_with(&args(0), None).await;
    // Many attempts: jobs go through many leases (expiries, nacks) across cycles, never dead.
    server.api().put(&format!("/v1/queues/{QUEUE}"), json!({"max_attempts": 1000})).await.ok(200);
    let ledger: Shared = Arc::default();
    let mut rng = rand::rngs::StdRng::from_entropy();

    for cycle in 0..cycles {
        let mut clients = tokio::task::JoinSet::new();
        for producer in 0..PRODUCERS {
            clients.spawn(produce(server.api(), ledger.clone(), cycle, producer));
        }
        for worker in 0..WORKERS {
            clients.spawn(work(server.api(), ledger.clone(), worker));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(KILL_AFTER_MS))).await;
        server.kill().await;
        // Every client stops at its first failed request; none may talk to the next process.
        while let Some(joined) = clients.join_next().await {
            joined.expect("a client task failed");
        }
        let next = cycle + 1;
        server.restart_with(&args(next)).await;
        // Leases taken before the kill end within VISIBILITY_MS of it.
        tokio::time::sleep(Duration::from_millis(VISIBILITY_MS + 100)).await;
        check(&server.api(), &ledger, cycle).await;
    }
    let ledger = lock(&ledger);
    assert!(ledger.acked.len() > 100 && ledger.enqueued.len() > 100, "the clients got work done between the kills");
}
