//! Proves Invariant 9 across servers: three stores (three pools, three listeners) on one schema
//! hammer one ordering key with concurrent enqueues (on the pool, and inside transactions that
//! hold the key a moment before they commit; batches that name other keys too, in varying order)
//! while workers on every store lease and ack it (on the pool, and inside transactions). Every
//! job runs exactly once; no two jobs of a key are ever leased at once; a job whose enqueue
//! returned before another's began runs first; and at the end no job is left blocked and no key
//! is left held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as Atomic};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::{JobId, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, QueueStats, Store};
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

const STORES: usize = 3;
/// Producers per store: the first enqueues on the pool, the second inside transactions.
const PRODUCERS_PER_STORE: usize = 2;
/// Enqueue calls per producer; each enqueues one job of the hammered key, and up to two of others.
const CALLS_PER_PRODUCER: usize = 30;
/// Workers per store: the first acks on the pool, the second inside transactions.
const WORKERS_PER_STORE: usize = 2;
/// The hammered key.
const HOT: &str = "hot";
/// The other keys batches name.
const OTHERS: [&str; 3] = ["a", "b", "c"];
/// How long the whole run may take before jobs count as stranded.
const RUN_MAX: Duration = Duration::from_secs(90);

/// A job as its producer saw it: its key, and when its enqueue call began and returned.
#[derive(Debug, Clone)]
struct Enqueued {
    key: String,
    began: Instant,
    returned: Instant,
}

/// What the workers share: the keys with a live lease, and every completion in order.
#[derive(Default)]
struct Seen {
    in_flight: BTreeSet<String>,
    completed: Vec<JobId>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_hammered_from_three_stores_runs_every_job_once_in_order() {
    let (first, guard) = common::fresh_store(None).await;
    let mut stores = vec![first];
    for _ in 1..STORES {
        stores.push(common::connect(common::options(guard.schema(), None).pool_size(6)).await);
    }
    let q = QueueName::new("hammered").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(4),
        max_attempts: Some(100),
        visibility_timeout_ms: Some(60_000),
        ..QueueConfigPatch::default()
    };
    stores[0].queue_upsert(&q, patch).await.unwrap();

    let jobs: Arc<Mutex<HashMap<JobId, Enqueued>>> = Arc::default();
    let producing = Arc::new(AtomicUsize::new(STORES * PRODUCERS_PER_STORE));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (s, store) in stores.iter().enumerate() {
        for p in 0..PRODUCERS_PER_STORE {
            let (store, q, jobs, producing) = (store.clone(), q.clone(), Arc::clone(&jobs), Arc::clone(&producing));
            let in_transaction = p == 1;
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64((s * 10 + p) as u64);
                for call in 0..CALLS_PER_PRODUCER {
                    let mut keys = vec![HOT.to_owned()];
                    keys.extend(OTHERS.iter().filter(|_| rng.gen_bool(0.3)).map(|k| (*k).to_owned()));
                    // Varying order, so that batches would deadlock if keys were not locked sorted.
                    let turn = rng.gen_range(0..keys.len());
                    keys.rotate_left(turn);
                    let batch: Vec<NewJob> =
                        keys.iter().map(|k| NewJob::new(format!("{s}-{p}-{call}")).ordering_key(k.clone())).collect();
                    let began = Instant::now();
                    let ids = if in_transaction {
                        let mut tx = store.transaction().await.unwrap();
                        let ids = store.job_enqueue_in(&mut tx, &q, batch).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3))).await;
                        tx.commit().await.unwrap();
                        ids
                    } else {
                        store.job_enqueue(&q, batch).await.unwrap()
                    };
                    let returned = Instant::now();
                    let mut jobs = jobs.lock().unwrap();
                    for (e, key) in ids.iter().zip(keys) {
                        assert!(!e.duplicate);
                        jobs.insert(e.id, Enqueued { key, began, returned });
                    }
                }
                producing.fetch_sub(1, Atomic::AcqRel);
            });
        }
        for w in 0..WORKERS_PER_STORE {
            let (store, q, jobs, producing, seen, failed) = (
                store.clone(),
                q.clone(),
                Arc::clone(&jobs),
                Arc::clone(&producing),
                Arc::clone(&seen),
                Arc::clone(&failed),
            );
            let in_transaction = w == 1;
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64((100 + s * 10 + w) as u64);
                loop {
                    let done = producing.load(Atomic::Acquire) == 0
                        && seen.lock().unwrap().completed.len() == jobs.lock().unwrap().len();
                    if done || failed.load(Atomic::Acquire) {
                        return;
                    }
                    let options = LeaseOptions { max_jobs: 4, visibility_timeout_ms: None, wait_ms: 100 };
                    let leased = store.job_lease(&q, options).await.unwrap();
                    if leased.is_empty() {
                        continue;
                    }
                    {
                        let mut seen = seen.lock().unwrap();
                        for job in &leased {
                            let key = job.ordering_key.clone().unwrap();
                            if !seen.in_flight.insert(key.clone()) {
                                failed.store(true, Atomic::Release);
                                panic!("two jobs of {key} leased at once (the second: {})", job.id);
                            }
                        }
                        // The next job of each key can be leased only once these acks commit.
                        for job in &leased {
                            seen.in_flight.remove(job.ordering_key.as_deref().unwrap());
                            seen.completed.push(job.id);
                        }
                    }
                    let leases: Vec<_> = leased.iter().map(|j| j.lease()).collect();
                    let acked = if in_transaction {
                        let mut tx = store.transaction().await.unwrap();
                        let acked = store.job_ack_in(&mut tx, &leases).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3))).await;
                        tx.commit().await.unwrap();
                        acked
                    } else {
                        store.job_ack(&leases).await.unwrap()
                    };
                    assert!(acked.iter().all(Result::is_ok), "an ack of a live lease failed: {acked:?}");
                }
            });
        }
    }
    let run = async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    };
    if tokio::time::timeout(RUN_MAX, run).await.is_err() {
        let stats = stores[0].queue_get(&q).await.unwrap().stats;
        panic!(
            "the run did not end in {RUN_MAX:?}: {} of {} jobs completed; stats {stats:?}",
            seen.lock().unwrap().completed.len(),
            jobs.lock().unwrap().len()
        );
    }

    let jobs = jobs.lock().unwrap().clone();
    let completed = seen.lock().unwrap().completed.clone();
    let unique: BTreeSet<JobId> = completed.iter().copied().collect();
    assert_eq!(unique.len(), completed.len(), "a job ran twice");
    assert_eq!(unique, jobs.keys().copied().collect::<BTreeSet<_>>(), "every job ran");
    // Per key, a job whose enqueue returned before another's began ran first.
    let mut by_key: BTreeMap<&str, Vec<JobId>> = BTreeMap::new();
    for id in &completed {
        by_key.entry(jobs[id].key.as_str()).or_default().push(*id);
    }
    for (key, order) in &by_key {
        for (i, earlier) in order.iter().enumerate() {
            for later in &order[i + 1..] {
                let (e, l) = (&jobs[earlier], &jobs[later]);
                assert!(
                    l.returned >= e.began,
                    "job {later} of {key} was enqueued before job {earlier} began to be, and ran after it"
                );
            }
        }
    }
    assert_eq!(by_key[HOT].len(), STORES * PRODUCERS_PER_STORE * CALLS_PER_PRODUCER);
    assert_eq!(stores[0].queue_get(&q).await.unwrap().stats, QueueStats::default(), "no job is left, blocked or not");
    let held: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{}\".ordering_keys", guard.schema()))
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(held, 0, "a key is still held with no job left");
    for store in &stores {
        store.close().await;
    }
}
