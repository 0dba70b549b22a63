//! The embedded store's cap on per-key rate buckets (`FLOW_KEY_BUCKETS_MAX` per queue, issue 21):
//! with every bucket still refilling, a key that has none waits (its job is held back, never
//! leased past the cap), and once buckets refill they are dropped to make room and the waiting
//! keys lease. Memory stays bounded however many distinct keys a queue sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use onceq_core::flow::{KeyBy, RateLimit};
use onceq_core::limits::{FLOW_KEY_BUCKETS_MAX, LEASE_BATCH_MAX};
use onceq_core::{Clock, LeaseOptions, ManualClock, NewJob, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bucket_cap_new_keys_wait_until_buckets_refill() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_default_start();
    let options = SqliteOptions::new(dir.path()).durability(Durability::Relaxed).clock(clock.clone() as Arc<dyn Clock>);
    let store = SqliteStore::open(options).unwrap();
    let q = QueueName::new("many-keys").unwrap();
    // One lease per key every 100 s: no bucket refills while the test leases.
    let rate = RateLimit { per_second: 0.01, burst: 1 };
    let patch = QueueConfigPatch {
        rate_limit: Some(Some(rate)),
        rate_limit_by: Some(Some(KeyBy::OrderingKey)),
        ..Default::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let extra = 5;
    let keys = FLOW_KEY_BUCKETS_MAX + extra;
    for start in (0..keys).step_by(1000) {
        let jobs =
            (start..(start + 1000).min(keys)).map(|k| NewJob::new(k.to_string()).ordering_key(format!("key-{k}")));
        store.job_enqueue(&q, jobs.collect()).await.unwrap();
    }

    let lease =
        LeaseOptions { max_jobs: LEASE_BATCH_MAX, visibility_timeout_ms: Some(3_600_000), ..Default::default() };
    let mut leased_keys = BTreeSet::new();
    loop {
        let jobs = store.job_lease(&q, lease).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            assert!(leased_keys.insert(job.ordering_key.clone().unwrap()), "a key leased twice within its interval");
        }
    }
    assert_eq!(leased_keys.len(), FLOW_KEY_BUCKETS_MAX, "leased past the cap, or short of it");
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, extra as u64);

    // One interval later every bucket has refilled: they make room, and the waiting keys lease.
    clock.advance(100_000);
    let jobs = store.job_lease(&q, lease).await.unwrap();
    assert_eq!(jobs.len(), extra, "the keys past the cap did not lease once buckets refilled");
    for job in jobs {
        assert!(!leased_keys.contains(job.ordering_key.as_deref().unwrap()));
    }
    store.close().await;
}
