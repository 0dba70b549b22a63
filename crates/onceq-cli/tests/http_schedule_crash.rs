//! One job per tick across `kill -9` of `onceq serve` (docs/design.md Invariant 14, end to end
//! through the server).
//!
//! Proves that two every-second schedules (catch-up `all` and `skip`), whose server is killed
//! with SIGKILL again and again around tick boundaries (each kill lands within 40 ms of a whole
//! second) and restarted on the same data directory, enqueued exactly one job for every tick
//! from their first to their last: no tick doubled, none missing. The queue's dedup window is
//! 1 ms, so a tick fired twice would make two jobs instead of being absorbed by the dedup id:
//! what keeps a tick single is the schedule's `next_tick` committing with the tick's job. Every
//! restart is back well within the 60 s grace, so a tick the downtime delayed is on time and
//! fires under every catch-up policy (what happens past the grace is checked by the conformance
//! area `schedules`). Restarts alternate `--durability fsync` and `relaxed` (which must survive
//! a process crash too).
//!
//! `ONCEQ_SCHEDULE_CRASH_TICKS` sets how many seconds of ticks the test runs (default 30).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use rand::{Rng, SeedableRng};
use serde_json::json;

const QUEUE: &str = "beats";
const SCHEDULES: [(&str, &str); 2] = [("beat-all", "all"), ("beat-skip", "skip")];

fn ticks_to_run() -> u64 {
    std::env::var("ONCEQ_SCHEDULE_CRASH_TICKS").ok().and_then(|v| v.parse().ok()).unwrap_or(30)
}

/// Sleeps until `offset_ms` (may be negative) from the next whole second of the wall clock.
async fn sleep_to_second_boundary(offset_ms: i64) {
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let mut target = (now_ms / 1000 + 1) * 1000 + offset_ms;
    if target <= now_ms {
        target += 1000;
    }
    tokio::time::sleep(Duration::from_millis(u64::try_from(target - now_ms).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_fire_once_each_across_kill_9_around_tick_boundaries() {
    let mut server = Server::start().await;
    let api = server.api();
    api.put(&format!("/v1/queues/{QUEUE}"), json!({"dedup_window_ms": 1})).await.ok(200);
    let mut first_ticks = BTreeMap::new();
    for (name, catch_up) in SCHEDULES {
        let put = api
            .put(&format!("/v1/schedules/{name}"), json!({"queue": QUEUE, "cron": "* * * * * *", "catch_up": catch_up}))
            .await
            .ok(200);
        first_ticks.insert(name, onceq_core::api::parse_time(put["next_tick"].as_str().unwrap()).unwrap().as_millis());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let started = Instant::now();
    let run_for = Duration::from_secs(ticks_to_run());
    let mut kills = 0u32;
    while started.elapsed() < run_for {
        // Let it run for a moment, then kill it within 40 ms of a tick.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        sleep_to_second_boundary(rng.gen_range(-40..=40)).await;
        server.kill().await;
        kills += 1;
        let durability = if kills.is_multiple_of(2) { "fsync" } else { "relaxed" };
        server.restart_with(&["--listen", "127.0.0.1:0", "--durability", durability]).await;
    }
    let api = server.api();
    // Paused, the schedules fire no more: what the queue holds is all they fired.
    let mut last_ticks = BTreeMap::new();
    for (name, _) in SCHEDULES {
        api.post_empty(&format!("/v1/schedules/{name}/pause")).await.no_content();
        let read = api.get(&format!("/v1/schedules/{name}")).await.ok(200);
        last_ticks.insert(name, onceq_core::api::parse_time(read["last_tick"].as_str().unwrap()).unwrap().as_millis());
    }
    let mut fired: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    loop {
        let jobs = api.lease(QUEUE, 1000, 600_000).await;
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            let dedup = job["dedup_id"].as_str().unwrap();
            let (name, tick) = dedup.strip_prefix("schedule:").unwrap().rsplit_once(':').unwrap();
            fired.entry(name.to_owned()).or_default().push(tick.parse().unwrap());
        }
    }
    assert!(kills >= 10, "only {kills} kills in {run_for:?}");
    for (name, _) in SCHEDULES {
        let mut ticks = fired.remove(name).unwrap_or_default();
        ticks.sort_unstable();
        let expected: Vec<i64> = (first_ticks[name]..=last_ticks[name]).step_by(1000).collect();
        let doubled: Vec<i64> = ticks.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        assert!(doubled.is_empty(), "{name}: ticks fired twice across {kills} kills: {doubled:?}");
        let missing: Vec<&i64> = expected.iter().filter(|t| ticks.binary_search(t).is_err()).collect();
        assert!(missing.is_empty(), "{name}: ticks missing across {kills} kills: {missing:?}");
        assert_eq!(ticks, expected, "{name}");
        assert!(ticks.len() as u64 + 5 >= ticks_to_run(), "{name}: only {} ticks in {run_for:?}", ticks.len());
    }
}
