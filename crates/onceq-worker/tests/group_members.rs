//! Three workers share a `per_key` queue of the embedded store as one consumer group, the third
//! joining mid-run: every job runs once, each key's jobs run in enqueue order, no two workers
//! ever run jobs of one partition at the same time, and every job a worker ran lies between
//! that worker's `on_assigned` and `on_revoked` of its partition; the late worker takes some
//! partitions and runs jobs in them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_core::group::GroupName;
use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker, WorkerOptions};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 8;
const KEYS: usize = 48;
const JOBS_PER_KEY: usize = 12;
const JOBS: usize = KEYS * JOBS_PER_KEY;
/// Jobs run before the third worker starts.
const THIRD_JOINS_AFTER: usize = JOBS / 3;

/// One handler run.
#[derive(Debug, Clone)]
struct Run {
    worker: usize,
    partition: u32,
    key: String,
    seq: usize,
    start: Instant,
    end: Instant,
}

/// A hook call.
#[derive(Debug, Clone)]
struct Hook {
    worker: usize,
    assigned: bool,
    partitions: Vec<u32>,
    at: Instant,
}

#[derive(Default)]
struct Log {
    runs: Vec<Run>,
    hooks: Vec<Hook>,
    /// Job ids run so far, to catch a second run.
    ran: BTreeSet<onceq_core::JobId>,
}

struct Recorder {
    worker: usize,
    log: Arc<Mutex<Log>>,
}

#[async_trait]
impl PartitionHooks for Recorder {
    async fn on_assigned(&self, queue: &QueueName, partitions: &[u32]) {
        assert_eq!(queue.as_str(), "orders");
        let hook = Hook { worker: self.worker, assigned: true, partitions: partitions.to_vec(), at: Instant::now() };
        self.log.lock().unwrap().hooks.push(hook);
    }

    async fn on_revoked(&self, queue: &QueueName, partitions: &[u32]) {
        assert_eq!(queue.as_str(), "orders");
        let hook = Hook { worker: self.worker, assigned: false, partitions: partitions.to_vec(), at: Instant::now() };
        self.log.lock().unwrap().hooks.push(hook);
    }
}

fn worker(
    store: Arc<SqliteStore>,
    index: usize,
    log: Arc<Mutex<Log>>,
    progress: Arc<watch::Sender<usize>>,
) -> Worker<SqliteStore> {
    let group = GroupOptions::new("billing")
        .member_name(&format!("worker-{index}"))
        .session_timeout(Duration::from_millis(600))
        .hooks(Recorder { worker: index, log: log.clone() });
    let options = QueueOptions::concurrency(4).poll_wait(Duration::from_millis(200)).group(group);
    let mut worker_options = WorkerOptions::default();
    worker_options.worker_id = format!("worker-{index}");
    Worker::builder(store)
        .options(worker_options)
        .handle_with("orders", options, move |ctx: JobContext, seq: usize| {
            let (log, progress) = (log.clone(), progress.clone());
            async move {
                let start = Instant::now();
                // The jobs running when the third worker joins outlast a heartbeat interval
                // (200 ms), so that revocations find jobs of the partition still running here
                // and must wait for them.
                let ms = if (4..6).contains(&seq) { 300 } else { 15 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let run = Run {
                    worker: index,
                    partition: ctx.partition.expect("a per_key job has a partition"),
                    key: ctx.ordering_key.clone().expect("every job has a key"),
                    seq,
                    start,
                    end: Instant::now(),
                };
                let mut log = log.lock().unwrap();
                assert!(log.ran.insert(ctx.id), "job {} ran twice", ctx.id);
                log.runs.push(run);
                progress.send_replace(log.runs.len());
                Outcome::Done
            }
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_the_partitions_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let q = QueueName::new("orders").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let mut jobs = Vec::new();
    for seq in 0..JOBS_PER_KEY {
        for key in 0..KEYS {
            jobs.push(NewJob::new(seq.to_string()).ordering_key(format!("key-{key}")));
        }
    }
    store.job_enqueue(&q, jobs).await.unwrap();

    let log = Arc::new(Mutex::new(Log::default()));
    let (progress, _) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let stop = Arc::new(Notify::new());
    let start = |index: usize| {
        let worker = worker(store.clone(), index, log.clone(), progress.clone());
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(async move { stop.notified().await }).await })
    };
    let (first, second) = (start(0), start(1));
    let mut watching = progress.subscribe();
    tokio::time::timeout(Duration::from_secs(30), watching.wait_for(|n| *n >= THIRD_JOINS_AFTER))
        .await
        .expect("the first two workers did not get going")
        .unwrap();
    let third = start(2);
    tokio::time::timeout(Duration::from_secs(60), watching.wait_for(|n| *n >= JOBS))
        .await
        .expect("the jobs were not all run in time")
        .unwrap();
    stop.notify_waiters();
    let mut reports = Vec::new();
    for handle in [first, second, third] {
        reports
            .push(tokio::time::timeout(Duration::from_secs(30), handle).await.expect("a worker did not stop").unwrap());
    }
    for (index, report) in reports.iter().enumerate() {
        assert_eq!((report.group_joins, report.group_expired), (1, 0), "worker {index}: {report:?}");
        assert_eq!(report.acked, report.leased - report.released, "worker {index}: {report:?}");
    }
    assert_eq!(reports.iter().map(|r| r.acked).sum::<u64>(), JOBS as u64);

    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.blocked, stats.leased, stats.dead), (0, 0, 0, 0));
    // Every member left on shutdown.
    let group = store.group_get(&q, &GroupName::new("billing").unwrap()).await.unwrap();
    assert!(group.members.is_empty(), "members left behind: {:?}", group.members);

    let log = log.lock().unwrap();
    assert_eq!(log.runs.len(), JOBS, "every job ran once");

    // Per key, the jobs ran in enqueue order.
    let mut by_key: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in &log.runs {
        by_key.entry(&run.key).or_default().push(run);
    }
    for (key, runs) in &mut by_key {
        runs.sort_by_key(|r| r.start);
        assert_eq!(runs.iter().map(|r| r.seq).collect::<Vec<_>>(), (0..JOBS_PER_KEY).collect::<Vec<_>>(), "{key}");
    }

    // No two workers ran jobs of one partition at the same time: by start, a run of one worker
    // begins after every earlier run of the others in that partition ended.
    let mut by_partition: BTreeMap<u32, Vec<&Run>> = BTreeMap::new();
    for run in &log.runs {
        by_partition.entry(run.partition).or_default().push(run);
    }
    let mut owners_over_time = 0;
    for (partition, runs) in &mut by_partition {
        runs.sort_by_key(|r| r.start);
        let mut last_end: BTreeMap<usize, Instant> = BTreeMap::new();
        for run in runs.iter() {
            for (other, end) in &last_end {
                if *other != run.worker {
                    assert!(
                        *end <= run.start,
                        "partition {partition}: worker {} started a job while worker {other} still ran one",
                        run.worker
                    );
                }
            }
            let end = last_end.entry(run.worker).or_insert(run.end);
            *end = (*end).max(run.end);
        }
        owners_over_time += last_end.len();
    }
    assert!(owners_over_time > PARTITIONS as usize, "some partitions moved between workers");

    // Every run lies inside an assignment of its partition to its worker, from `on_assigned` to
    // `on_revoked`; a worker is never assigned a partition twice without a revocation between,
    // nor revoked one it does not have, and at the end every worker revoked all it had.
    let mut spans: BTreeMap<(usize, u32), Vec<(Instant, Instant)>> = BTreeMap::new();
    for index in 0..3 {
        let mut open: BTreeMap<u32, Instant> = BTreeMap::new();
        for hook in log.hooks.iter().filter(|h| h.worker == index) {
            assert!(!hook.partitions.is_empty(), "worker {index}: a hook with no partition");
            for p in &hook.partitions {
                if hook.assigned {
                    assert!(open.insert(*p, hook.at).is_none(), "worker {index} was assigned {p} twice");
                } else {
                    let since = open.remove(p).unwrap_or_else(|| panic!("worker {index} revoked {p} it did not have"));
                    spans.entry((index, *p)).or_default().push((since, hook.at));
                }
            }
        }
        assert!(open.is_empty(), "worker {index} ended with partitions {open:?} not revoked");
    }
    for run in &log.runs {
        let inside = spans
            .get(&(run.worker, run.partition))
            .is_some_and(|s| s.iter().any(|(from, to)| *from <= run.start && run.end <= *to));
        assert!(inside, "worker {} ran a job of partition {} outside its assignment", run.worker, run.partition);
    }
    // The late worker took some partitions, and ran jobs in them.
    let third_ran: BTreeSet<u32> = log.runs.iter().filter(|r| r.worker == 2).map(|r| r.partition).collect();
    assert!(!third_ran.is_empty(), "the third worker ran nothing");
    assert!(third_ran.len() < PARTITIONS as usize);
}
