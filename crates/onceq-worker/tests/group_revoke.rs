//! A partition revoked while a job of it runs: the worker stops starting its jobs, waits for the
//! running one, calls `on_revoked`, and only then acks the job, so the store cannot hand the
//! partition to the new member before `on_revoked` returned. The old owner's `on_revoked` is
//! slow (300 ms); the new owner's `on_assigned` for the partition must still come after it
//! ended, and its jobs of the partition run after that.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_core::group::GroupName;
use onceq_core::ordering::partition_of;
use onceq_core::{JobId, NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
use tokio::sync::{watch, Notify};

/// A hook call: worker, assigned?, partitions, started, ended.
type Hook = (&'static str, bool, Vec<u32>, Instant, Instant);
/// A handler run: worker, partition, started, ended.
type Run = (&'static str, u32, Instant, Instant);

const SLOW_REVOKE: Duration = Duration::from_millis(300);

struct Recorder(&'static str, Arc<Mutex<Vec<Hook>>>);

#[async_trait]
impl PartitionHooks for Recorder {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        let at = Instant::now();
        self.1.lock().unwrap().push((self.0, true, partitions.to_vec(), at, Instant::now()));
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        let at = Instant::now();
        tokio::time::sleep(SLOW_REVOKE).await;
        self.1.lock().unwrap().push((self.0, false, partitions.to_vec(), at, Instant::now()));
    }
}

fn worker(
    store: Arc<SqliteStore>,
    name: &'static str,
    hooks: Arc<Mutex<Vec<Hook>>>,
    runs: Arc<Mutex<Vec<Run>>>,
    gate: watch::Receiver<bool>,
) -> Worker<SqliteStore> {
    let group = GroupOptions::new("g").session_timeout(Duration::from_millis(600)).hooks(Recorder(name, hooks));
    let options = QueueOptions::concurrency(4).poll_wait(Duration::from_millis(100)).group(group);
    Worker::builder(store)
        .handle_with("q", options, move |ctx: JobContext, _: String| {
            let (runs, mut gate) = (runs.clone(), gate.clone());
            async move {
                let start = Instant::now();
                // The first jobs wait to be let go, so that they run across the rebalance.
                let _ = gate.wait_for(|open| *open).await;
                runs.lock().unwrap().push((name, ctx.partition.unwrap(), start, Instant::now()));
                Outcome::Done
            }
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_revoked_returns_before_the_partition_moves() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let q = QueueName::new("q").unwrap();
    let patch =
        QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(2), ..QueueConfigPatch::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    // One key in each partition.
    let key_of =
        |p: u32| (0..).map(|k| format!("k{k}")).find(|k| partition_of(Some(k), JobId::new(0), 2) == p).unwrap();
    let keys = [key_of(0), key_of(1)];

    let hooks: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let (gate, gated) = watch::channel(false);
    let (stop_a, stop_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = worker(store.clone(), "a", hooks.clone(), runs.clone(), gated.clone());
    let s = stop_a.clone();
    let a = tokio::spawn(a.run(async move { s.notified().await }));
    // A joins alone and gets both partitions; a job of each starts and waits at the gate.
    let first: Vec<NewJob> = keys.iter().map(|k| NewJob::new("\"1\"").ordering_key(k.clone())).collect();
    store.job_enqueue(&q, first).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.queue_get(&q).await.unwrap().stats.leased < 2 {
        assert!(Instant::now() < deadline, "A did not lease both jobs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B joins: one partition is to move to it, and stays A's while A's job in it runs.
    let b = worker(store.clone(), "b", hooks.clone(), runs.clone(), gated);
    let s = stop_b.clone();
    let b = tokio::spawn(b.run(async move { s.notified().await }));
    let group = GroupName::new("g").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let moving = loop {
        let info = store.group_get(&q, &group).await.unwrap();
        if let Some(p) = info.partitions.iter().find(|p| p.moving_to.is_some()) {
            break p.partition;
        }
        assert!(Instant::now() < deadline, "no partition started moving to B: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A second job of the moving partition, for B to run once it gets it.
    store.job_enqueue(&q, vec![NewJob::new("\"2\"").ordering_key(keys[moving as usize].clone())]).await.unwrap();
    // A heartbeats every 200 ms: it learns of the revocation, then the jobs are let go.
    tokio::time::sleep(Duration::from_millis(600)).await;
    gate.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the jobs did not all run: {:?}", runs.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_a.notify_one();
    stop_b.notify_one();
    let (report_a, report_b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(report_a.acked + report_b.acked, 3, "{report_a:?} {report_b:?}");

    let hooks = hooks.lock().unwrap();
    let revoked_by_a =
        hooks.iter().find(|h| h.0 == "a" && !h.1 && h.2.contains(&moving)).expect("A revoked the moving partition");
    let assigned_to_b =
        hooks.iter().find(|h| h.0 == "b" && h.1 && h.2.contains(&moving)).expect("B was assigned the moving partition");
    assert_eq!(revoked_by_a.2, vec![moving], "A revoked only the moving partition before stopping");
    assert!(
        revoked_by_a.4 <= assigned_to_b.3,
        "B was assigned partition {moving} {:?} before A's on_revoked returned",
        revoked_by_a.4.saturating_duration_since(assigned_to_b.3)
    );
    let runs = runs.lock().unwrap();
    let by_b: Vec<&Run> = runs.iter().filter(|r| r.0 == "b").collect();
    assert_eq!(by_b.len(), 1, "B ran the second job of the moving partition: {runs:?}");
    assert_eq!(by_b[0].1, moving);
    assert!(by_b[0].2 >= revoked_by_a.4, "B ran a job of the partition before A's on_revoked returned");
    let by_a_in_moving = runs.iter().find(|r| r.0 == "a" && r.1 == moving).expect("A ran the first job");
    assert!(by_a_in_moving.3 <= revoked_by_a.3, "A's job of the partition ended before on_revoked was called");
}
