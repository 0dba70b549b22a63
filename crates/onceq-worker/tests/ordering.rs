//! A worker on a `per_key` queue of the embedded store: the handler sees each job's ordering key
//! and partition (the documented hash), and with 8 concurrent handlers the jobs of one key still
//! run one at a time, in enqueue order, while different keys run side by side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::ordering::partition_of;
use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::Notify;

const KEYS: usize = 4;
const JOBS_PER_KEY: usize = 10;
const PARTITIONS: u32 = 8;

/// What the handlers saw: per key, the sequence numbers in the order they ran; the keys running
/// now; the most keys that ran at once.
#[derive(Default)]
struct Seen {
    runs: BTreeMap<String, Vec<usize>>,
    running: Vec<String>,
    overlap_max: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_key_and_partition_and_each_key_runs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let q = QueueName::new("ordered").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    // Interleaved keys, with later jobs of a key at higher priority: order must still hold.
    let mut jobs = Vec::new();
    for seq in 0..JOBS_PER_KEY {
        for key in 0..KEYS {
            jobs.push(NewJob::new(seq.to_string()).ordering_key(format!("key-{key}")).priority(seq as i32));
        }
    }
    let enqueued = store.job_enqueue(&q, jobs).await.unwrap();
    let partitions: BTreeMap<_, _> = enqueued
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id, partition_of(Some(&format!("key-{}", i % KEYS)), e.id, PARTITIONS)))
        .collect();

    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(Notify::new());
    let (s, d, expected) = (seen.clone(), done.clone(), Arc::new(partitions));
    let options = QueueOptions::concurrency(8).poll_wait(Duration::from_millis(100));
    let worker = Worker::builder(store.clone())
        .handle_with("ordered", options, move |ctx: JobContext, seq: usize| {
            let (s, d, expected) = (s.clone(), d.clone(), expected.clone());
            async move {
                let key = ctx.ordering_key.clone().expect("every job has a key");
                assert_eq!(ctx.partition, Some(expected[&ctx.id]), "job {} of {key}", ctx.id);
                {
                    let mut seen = s.lock().unwrap();
                    assert!(!seen.running.contains(&key), "two jobs of {key} ran at once");
                    seen.running.push(key.clone());
                    seen.overlap_max = seen.overlap_max.max(seen.running.len());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut seen = s.lock().unwrap();
                seen.running.retain(|k| *k != key);
                seen.runs.entry(key).or_default().push(seq);
                if seen.runs.values().map(Vec::len).sum::<usize>() == KEYS * JOBS_PER_KEY {
                    d.notify_one();
                }
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let wait = async move {
        tokio::time::timeout(Duration::from_secs(30), done.notified())
            .await
            .expect("the worker did not finish in time");
    };
    let report = worker.run(wait).await;
    assert_eq!((report.leased, report.acked), ((KEYS * JOBS_PER_KEY) as u64, (KEYS * JOBS_PER_KEY) as u64));

    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.blocked, stats.leased), (0, 0, 0));
    let seen = seen.lock().unwrap();
    for key in 0..KEYS {
        assert_eq!(
            seen.runs[&format!("key-{key}")],
            (0..JOBS_PER_KEY).collect::<Vec<_>>(),
            "key-{key} in enqueue order"
        );
    }
    assert!(seen.overlap_max > 1, "different keys ran side by side (at most {} at once)", seen.overlap_max);
}
