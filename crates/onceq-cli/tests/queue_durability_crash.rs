//! Per-queue durability under `kill -9` (docs/design.md, "Per-queue durability"): one
//! `onceq serve` holds an `fsync` queue and a `relaxed` queue side by side, both under enqueue
//! load, and is killed with SIGKILL at a random moment, several times.
//!
//! Proves that not one enqueue of the fsync queue whose reply came back (a 2xx) is lost: after each
//! restart on the same data directory, every one of that cycle's is there with its payload, and
//! after the last, every one of all cycles. The server's
//! own durability is `relaxed`, so the fsync queue is synced only because it asks to be. The
//! relaxed queue's replies do not wait for the disk, but a process crash leaves what the kernel
//! was handed (its page cache survives `kill -9`): its loss is measured, printed and must be 0
//! too. (A power loss may take a relaxed queue's last unsynced commits; a process crash cannot
//! reach them, and that is the promise this test checks.)
//!
//! `ONCEQ_DURABILITY_CRASH_CYCLES` sets the number of kills (default 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{id_of, Api, Server};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Producers per queue.
const PRODUCERS: usize = 2;
/// Jobs per enqueue request.
const BATCH: usize = 8;

/// What the producers of one queue were told: (job id, payload) of every enqueue with a 2xx.
type Acknowledged = Arc<Mutex<Vec<(String, String)>>>;

/// Enqueues batches of unique payloads into `queue` until a request fails (the server was
/// killed); records each job whose enqueue got a 2xx reply.
async fn produce(api: Api, queue: &'static str, producer: usize, cycle: usize, acknowledged: Acknowledged) {
    for n in 0.. {
        let payloads: Vec<String> = (0..BATCH).map(|i| format!("{queue}-{cycle}-{producer}-{n}-{i}")).collect();
        let jobs: Vec<Value> = payloads.iter().map(|p| json!({ "payload": p })).collect();
        let body = serde_json::to_vec(&json!({ "jobs": jobs })).unwrap();
        let path = format!("/v1/queues/{queue}/jobs");
        let Ok(reply) = api.try_send(reqwest::Method::POST, &path, Some(body), &[]).await else { return };
        if reply.status != 200 {
            return;
        }
        let answer: Value = serde_json::from_str(&reply.text).unwrap();
        let ids: Vec<String> = answer["jobs"].as_array().unwrap().iter().map(id_of).collect();
        assert_eq!(ids.len(), BATCH, "{answer}");
        acknowledged.lock().unwrap().extend(ids.into_iter().zip(payloads));
    }
}

/// How many of `acknowledged` the server does not hold with their payload.
async fn missing(api: &Api, acknowledged: &[(String, String)]) -> usize {
    let mut missing = 0;
    for (id, payload) in acknowledged {
        let reply = api.get(&format!("/v1/jobs/{id}")).await;
        let kept = reply.status == 200 && reply.json()["payload"] == json!(payload);
        missing += usize::from(!kept);
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_enqueue_of_an_fsync_queue_is_lost_to_kill_9() {
    let cycles: usize = std::env::var("ONCEQ_DURABILITY_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let mut server = Server::start_with(&["--listen", "127.0.0.1:0", "--durability", "relaxed"], None).await;
    let api = server.api();
    for (queue, durability) in [("payments", "fsync"), ("analytics", "relaxed")] {
        let config = api.put(&format!("/v1/queues/{queue}"), json!({ "durability": durability })).await.ok(200);
        assert_eq!(config["durability"], json!(durability));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let (payments, analytics): (Acknowledged, Acknowledged) = Default::default();
    let started = Instant::now();
    for cycle in 0..cycles {
        let api = server.api();
        let mut producers = Vec::new();
        for (queue, acknowledged) in [("payments", &payments), ("analytics", &analytics)] {
            for producer in 0..PRODUCERS {
                producers.push(tokio::spawn(produce(api.clone(), queue, producer, cycle, acknowledged.clone())));
            }
        }
        let before = (payments.lock().unwrap().len(), analytics.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1000))).await;
        server.kill().await;
        for producer in producers {
            producer.await.unwrap();
        }
        server.restart().await;
        let api = server.api();
        let payments_now = payments.lock().unwrap().clone();
        let analytics_now = analytics.lock().unwrap().clone();
        // This cycle's jobs after each kill; every cycle's once more after the last one.
        let from = if cycle + 1 == cycles { (0, 0) } else { before };
        let lost_payments = missing(&api, &payments_now[from.0..]).await;
        let lost_analytics = missing(&api, &analytics_now[from.1..]).await;
        println!(
            "cycle {cycle}: fsync queue {} acknowledged ({} this cycle), {lost_payments} lost; relaxed queue {} \
             acknowledged ({} this cycle), {lost_analytics} lost",
            payments_now.len(),
            payments_now.len() - before.0,
            analytics_now.len(),
            analytics_now.len() - before.1,
        );
        assert!(payments_now.len() > before.0, "cycle {cycle}: no enqueue of the fsync queue got through");
        assert!(analytics_now.len() > before.1, "cycle {cycle}: no enqueue of the relaxed queue got through");
        assert_eq!(lost_payments, 0, "cycle {cycle}: acknowledged enqueues of the fsync queue were lost");
        assert_eq!(lost_analytics, 0, "cycle {cycle}: a process crash lost relaxed enqueues");
    }
    println!("{cycles} kills in {:.1} s", started.elapsed().as_secs_f64());
}
