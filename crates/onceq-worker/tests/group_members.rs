//! Three workers share a `per_key` queue of the embedded store as one consumer group, the third
//! joining mid-run: every job runs once, each key's jobs run in enqueue order, no two workers
//! ever run jobs of one partition at the same time, and every job a worker ran lies between
//! that worker's `on_assigned` and `on_revoked` of its partition; the late worker takes some
//! partitions and runs jobs in them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod group_log;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use group_log::{Log, Recorder, Run};
use onceq_core::group::GroupName;
use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, QueueOptions, Worker, WorkerOptions};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 8;
const KEYS: usize = 48;
const JOBS_PER_KEY: usize = 12;
const JOBS: usize = KEYS * JOBS_PER_KEY;
/// Jobs run before the third worker starts.
const THIRD_JOINS_AFTER: usize = JOBS / 3;

fn worker(
    store: Arc<SqliteStore>,
    index: usize,
    log: Arc<Mutex<Log>>,
    progress: Arc<watch::Sender<usize>>,
) -> Worker<SqliteStore> {
    let group = GroupOptions::new("billing")
        .member_name(&format!("worker-{index}"))
        .session_timeout(Duration::from_millis(600))
        .hooks(Recorder { worker: index, queue: "orders", log: log.clone() });
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
                let runs = log.lock().unwrap().record(ctx.id, run);
                progress.send_replace(runs);
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

    log.assert_per_key_order(JOBS_PER_KEY);
    let owners_over_time = log.assert_partitions_never_shared();
    assert!(owners_over_time > PARTITIONS as usize, "some partitions moved between workers");
    log.assert_runs_inside_assignments(3);
    // The late worker took some partitions, and ran jobs in them.
    let third_ran = log.partitions_run_by(2);
    assert!(!third_ran.is_empty(), "the third worker ran nothing");
    assert!(third_ran.len() < PARTITIONS as usize);
}
