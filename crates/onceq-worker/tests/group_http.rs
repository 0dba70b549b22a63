//! Two workers in one consumer group over HTTP (`onceq-client` against the server's router on
//! a loopback port, the embedded store behind it), the second starting mid-run: every job runs
//! once, each key in order, no two workers run jobs of one partition at the same time, each ran
//! jobs only inside its own assignments (`on_assigned` to `on_revoked`), and both leave on
//! shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_client::Client;
use onceq_core::group::GroupName;
use onceq_core::{JobId, NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 6;
const KEYS: usize = 24;
const JOBS_PER_KEY: usize = 10;
const JOBS: usize = KEYS * JOBS_PER_KEY;

/// One handler run: worker, partition, key, seq, start, end.
type Run = (usize, u32, String, usize, Instant, Instant);
/// One hook call: worker, assigned?, partitions, when.
type Hook = (usize, bool, Vec<u32>, Instant);

#[derive(Default)]
struct Log {
    runs: Vec<Run>,
    hooks: Vec<Hook>,
    ran: BTreeSet<JobId>,
}

struct Recorder(usize, Arc<Mutex<Log>>);

#[async_trait]
impl PartitionHooks for Recorder {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        self.1.lock().unwrap().hooks.push((self.0, true, partitions.to_vec(), Instant::now()));
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        self.1.lock().unwrap().hooks.push((self.0, false, partitions.to_vec(), Instant::now()));
    }
}

fn worker(
    client: Arc<Client>,
    index: usize,
    log: Arc<Mutex<Log>>,
    progress: Arc<watch::Sender<usize>>,
) -> Worker<Client> {
    let group =
        GroupOptions::new("resizers").session_timeout(Duration::from_millis(600)).hooks(Recorder(index, log.clone()));
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
                let run =
                    (index, ctx.partition.unwrap(), ctx.ordering_key.clone().unwrap(), seq, start, Instant::now());
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
    let mut by_key: BTreeMap<&str, Vec<(Instant, usize)>> = BTreeMap::new();
    let mut by_partition: BTreeMap<u32, Vec<&Run>> = BTreeMap::new();
    for run in &log.runs {
        by_key.entry(&run.2).or_default().push((run.4, run.3));
        by_partition.entry(run.1).or_default().push(run);
    }
    for (key, mut seqs) in by_key {
        seqs.sort();
        assert_eq!(seqs.iter().map(|s| s.1).collect::<Vec<_>>(), (0..JOBS_PER_KEY).collect::<Vec<_>>(), "{key}");
    }
    for (partition, runs) in &mut by_partition {
        runs.sort_by_key(|r| r.4);
        let mut last_end: BTreeMap<usize, Instant> = BTreeMap::new();
        for run in runs.iter() {
            for (other, end) in &last_end {
                assert!(
                    *other == run.0 || *end <= run.4,
                    "partition {partition}: workers {other} and {} overlapped",
                    run.0
                );
            }
            let end = last_end.entry(run.0).or_insert(run.5);
            *end = (*end).max(run.5);
        }
    }
    let second_ran: BTreeSet<u32> = log.runs.iter().filter(|r| r.0 == 1).map(|r| r.1).collect();
    assert!(!second_ran.is_empty() && second_ran.len() < PARTITIONS as usize, "the second worker ran {second_ran:?}");

    let mut spans: BTreeMap<(usize, u32), Vec<(Instant, Instant)>> = BTreeMap::new();
    for index in 0..2 {
        let mut open: BTreeMap<u32, Instant> = BTreeMap::new();
        for (_, assigned, partitions, at) in log.hooks.iter().filter(|h| h.0 == index) {
            for p in partitions {
                if *assigned {
                    assert!(open.insert(*p, *at).is_none(), "worker {index} was assigned {p} twice");
                } else {
                    let since = open.remove(p).unwrap_or_else(|| panic!("worker {index} revoked {p} it did not have"));
                    spans.entry((index, *p)).or_default().push((since, *at));
                }
            }
        }
        assert!(open.is_empty(), "worker {index} ended holding {open:?}");
    }
    for run in &log.runs {
        let inside =
            spans.get(&(run.0, run.1)).is_some_and(|s| s.iter().any(|(from, to)| *from <= run.4 && run.5 <= *to));
        assert!(inside, "worker {} ran a job of partition {} outside its assignment", run.0, run.1);
    }
}
