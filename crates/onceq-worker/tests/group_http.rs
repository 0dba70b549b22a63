//! Two workers in one consumer group over HTTP (`onceq-client` against the server's router on
//! a loopback port, the embedded store behind it), the second starting mid-run: every job runs
//! once, each key in order, no two workers run jobs of one partition at the same time, each ran
//! jobs only inside its own assignments (`on_assigned` to `on_revoked`), and both leave on
//! shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod group_log;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use group_log::{Log, Recorder, Run};
use onceq_client::Client;
use onceq_core::group::GroupName;
use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, QueueOptions, Worker};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 6;
const KEYS: usize = 24;
const JOBS_PER_KEY: usize = 10;
const JOBS: usize = KEYS * JOBS_PER_KEY;

fn worker(
    client: Arc<Client>,
    index: usize,
    log: Arc<Mutex<Log>>,
    progress: Arc<watch::Sender<usize>>,
) -> Worker<Client> {
    let group = GroupOptions::new("resizers").session_timeout(Duration::from_millis(600)).hooks(Recorder {
        worker: index,
        queue: "images",
        log: log.clone(),
    });
    let options = QueueOptions::concurrency(4).poll_wait(Duration::from_millis(200)).group(group);
    Worker::builder(client)
        .handle_with("images", options, move |ctx: JobContext, seq: usize| {
            let (log, progress) = (log.clone(), progress.clone());
            async move {
                let start = Instant::now();
                // Longer than a heartbeat interval (200 ms) now and then, so that a revocation
                // can find a job of its partition running.
                let ms = if seq == JOBS_PER_KEY / 2 { 250 } else { 15 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let run = Run {
                    worker: index,
                    partition: ctx.partition.unwrap(),
                    key: ctx.ordering_key.clone().unwrap(),
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
async fn two_members_over_http_share_the_partitions_without_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let router = onceq_server::Api::new(store.clone() as Arc<dyn Store>).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Arc::new(Client::builder(&url).build().unwrap());

    let q = QueueName::new("images").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    client.queue_upsert(&q, patch).await.unwrap();
    let mut jobs = Vec::new();
    for seq in 0..JOBS_PER_KEY {
        for key in 0..KEYS {
            jobs.push(NewJob::new(seq.to_string()).ordering_key(format!("album-{key}")));
        }
    }
    client.job_enqueue(&q, jobs).await.unwrap();

    let log = Arc::new(Mutex::new(Log::default()));
    let progress = Arc::new(watch::channel(0usize).0);
    let stop = Arc::new(Notify::new());
    let start = |index: usize| {
        let worker = worker(client.clone(), index, log.clone(), progress.clone());
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(async move { stop.notified().await }).await })
    };
    let first = start(0);
    let mut watching = progress.subscribe();
    tokio::time::timeout(Duration::from_secs(20), watching.wait_for(|n| *n >= JOBS / 4))
        .await
        .expect("the first worker did not get going")
        .unwrap();
    let second = start(1);
    tokio::time::timeout(Duration::from_secs(60), watching.wait_for(|n| *n >= JOBS))
        .await
        .expect("the jobs were not all run in time")
        .unwrap();
    stop.notify_waiters();
    for handle in [first, second] {
        let report =
            tokio::time::timeout(Duration::from_secs(20), handle).await.expect("a worker did not stop").unwrap();
        assert_eq!((report.group_joins, report.group_expired), (1, 0), "{report:?}");
    }
    let group = client.group_get(&q, &GroupName::new("resizers").unwrap()).await.unwrap();
    assert!(group.members.is_empty(), "members left behind: {:?}", group.members);
    let stats = client.queue_get(&q).await.unwrap().stats;
    assert_eq!((stats.ready, stats.blocked, stats.leased), (0, 0, 0));
    server.abort();

    let log = log.lock().unwrap();
    assert_eq!(log.runs.len(), JOBS);
    log.assert_per_key_order(JOBS_PER_KEY);
    log.assert_partitions_never_shared();
    let second_ran = log.partitions_run_by(1);
    assert!(!second_ran.is_empty() && second_ran.len() < PARTITIONS as usize, "the second worker ran {second_ran:?}");
    log.assert_runs_inside_assignments(2);
}
