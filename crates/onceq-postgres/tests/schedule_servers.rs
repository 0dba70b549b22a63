//! Proves one job per tick (Invariant 14) with two stores (two "servers": two pools, two ticker
//! tasks) on one schema, both firing the same schedules at once:
//! - on a shared manual clock, stepped a second at a time, with four concurrent
//!   `schedule_tick` calls on each store per step besides each store's own ticker: every tick of
//!   every schedule enqueued exactly one job, and no call ever planned a tick another had fired
//!   (no fired tick came back as a dedup duplicate: the schedule row's lock kept them apart,
//!   not only the dedup id);
//! - on the database's clock, with only the stores' own tickers for a few real seconds: every
//!   tick that came due fired once, none twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use onceq_core::schedule::{CatchUp, FiredTick, ScheduleName, ScheduleSpec};
use onceq_core::{Clock, LeaseOptions, ManualClock, QueueName, Store, StoreExt, Timestamp};
use onceq_postgres::PgStore;
use tokio::task::JoinSet;

const SCHEDULES: usize = 10;
const STEPS: u64 = 30;

/// Every job of `q` as (schedule, tick), acked; asserts that no (schedule, tick) has two jobs.
async fn take_ticks(store: &PgStore, q: &QueueName) -> BTreeSet<(String, i64)> {
    let mut seen = BTreeSet::new();
    loop {
        let jobs =
            store.job_lease(q, LeaseOptions { max_jobs: 1000, visibility_timeout_ms: None, wait_ms: 0 }).await.unwrap();
        if jobs.is_empty() {
            return seen;
        }
        for job in jobs {
            let dedup = job.dedup_id.clone().unwrap();
            let rest = dedup.strip_prefix("schedule:").unwrap();
            let (name, ms) = rest.rsplit_once(':').unwrap();
            assert!(seen.insert((name.to_owned(), ms.parse().unwrap())), "two jobs for tick {dedup}");
            store.ack(job.lease()).await.unwrap();
        }
    }
}

async fn create_schedules(store: &PgStore, q: &QueueName) {
    for i in 0..SCHEDULES {
        let mut spec = ScheduleSpec::new(q.clone(), "* * * * * *");
        spec.catch_up = CatchUp::All;
        store.schedule_upsert(&ScheduleName::new(format!("s{i}")).unwrap(), spec).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_ticking_at_once_enqueue_one_job_per_tick() {
    let manual = ManualClock::at_default_start();
    let clock: Arc<dyn Clock> = manual.clone();
    let (a, guard) = common::fresh_store(Some(clock.clone())).await;
    let b = common::connect(common::options(guard.schema(), Some(clock.clone()))).await;
    let q = QueueName::new("ticks").unwrap();
    create_schedules(&a, &q).await;
    let start = manual.now();
    let mut reported: Vec<FiredTick> = Vec::new();
    for _ in 0..STEPS {
        manual.advance(1000);
        let mut calls = JoinSet::new();
        for store in [&a, &b] {
            for _ in 0..4 {
                let store = store.clone();
                calls.spawn(async move { store.schedule_tick().await.unwrap() });
            }
        }
        while let Some(report) = calls.join_next().await {
            reported.extend(report.unwrap().fired);
        }
    }
    // The stores' own tickers may still hold a schedule: one more pass each settles it.
    a.schedule_tick().await.unwrap();
    b.schedule_tick().await.unwrap();
    assert!(reported.iter().all(|f| !f.duplicate), "a pass planned a tick another had fired: {reported:?}");
    let mut reported_ticks: Vec<(String, i64)> =
        reported.iter().map(|f| (f.schedule.to_string(), f.tick.as_millis())).collect();
    reported_ticks.sort();
    let before = reported_ticks.len();
    reported_ticks.dedup();
    assert_eq!(before, reported_ticks.len(), "a tick was reported fired twice");
    let expected: BTreeSet<(String, i64)> = (0..SCHEDULES)
        .flat_map(|i| (1..=STEPS).map(move |s| (format!("s{i}"), start.as_millis() + i64::try_from(s * 1000).unwrap())))
        .collect();
    assert_eq!(take_ticks(&a, &q).await, expected, "every tick once, no other");
    for i in 0..SCHEDULES {
        let info = b.schedule_get(&ScheduleName::new(format!("s{i}")).unwrap()).await.unwrap();
        assert_eq!(info.last_tick, Some(Timestamp::from_millis(start.as_millis() + 30_000)));
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_own_tickers_fire_each_tick_once_in_real_time() {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    let q = QueueName::new("real-ticks").unwrap();
    create_schedules(&a, &q).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    // Paused, they fire no more: the reader's own ticker cannot add a tick under the checks.
    for i in 0..SCHEDULES {
        a.schedule_pause(&ScheduleName::new(format!("s{i}")).unwrap()).await.unwrap();
    }
    a.close().await;
    b.close().await;
    let reader = common::connect(common::options(guard.schema(), None)).await;
    let infos = reader.schedule_list().await.unwrap();
    let taken = take_ticks(&reader, &q).await;
    // Each schedule fired every second from its creation to its last tick, with no gap.
    for info in infos {
        let name = info.name.to_string();
        let ticks: Vec<i64> = taken.iter().filter(|(n, _)| *n == name).map(|(_, t)| *t).collect();
        assert!(ticks.len() >= 3, "{name} fired {} ticks in 4.5 s", ticks.len());
        assert!(ticks.windows(2).all(|w| w[1] - w[0] == 1000), "{name} skipped or doubled a tick: {ticks:?}");
        assert_eq!(info.last_tick.map(|t| t.as_millis()), ticks.last().copied(), "{name}");
    }
    reader.close().await;
}
