//! A worker gaining partitions keeps running the ones it had: while `on_assigned` for the gained
//! partitions has not returned, jobs of those wait, and jobs of the kept partitions leased in
//! the same batch (and after it) start and finish. Found by `onceq verify-groups`: the runtime
//! used to hold the whole batch until the worker's next view, so every partition of a member
//! paused when it gained one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::group::{GroupName, JoinOptions};
use onceq_core::ordering::partition_of;
use onceq_core::{JobId, NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 8;

/// Records the partitions held; once `slow` is set, `on_assigned` waits for `release`.
struct Hooks {
    held: Arc<watch::Sender<BTreeSet<u32>>>,
    slow: Arc<AtomicBool>,
    in_slow_hook: Arc<watch::Sender<bool>>,
    release: Arc<Notify>,
}

#[async_trait]
impl PartitionHooks for Hooks {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        if self.slow.load(AtomicOrdering::SeqCst) {
            self.in_slow_hook.send_replace(true);
            // Bounded, so that a broken runtime fails the test's assertion rather than hanging.
            let _ = tokio::time::timeout(Duration::from_secs(20), self.release.notified()).await;
            self.in_slow_hook.send_replace(false);
        }
        self.held.send_modify(|held| held.extend(partitions.iter().copied()));
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        self.held.send_modify(|held| {
            for p in partitions {
                held.remove(p);
            }
        });
    }
}

/// A key of each partition in `wanted`.
fn keys_in(wanted: &BTreeSet<u32>) -> Vec<String> {
    let mut keys = Vec::new();
    let mut found = BTreeSet::new();
    for k in 0.. {
        let key = format!("account-{k}");
        let p = partition_of(Some(&key), JobId::new(1), PARTITIONS);
        if wanted.contains(&p) && found.insert(p) {
            keys.push(key);
        }
        if found.len() == wanted.len() {
            break;
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_kept_partitions_run_while_gained_ones_are_being_assigned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let q = QueueName::new("ledger").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let group = GroupName::new("posting").unwrap();

    let held = Arc::new(watch::channel(BTreeSet::new()).0);
    let slow = Arc::new(AtomicBool::new(false));
    let in_slow_hook = Arc::new(watch::channel(false).0);
    let release = Arc::new(Notify::new());
    let hooks =
        Hooks { held: held.clone(), slow: slow.clone(), in_slow_hook: in_slow_hook.clone(), release: release.clone() };
    let ran: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(Vec::new()));
    let options = QueueOptions::concurrency(8)
        .poll_wait(Duration::from_millis(200))
        .group(GroupOptions::new("posting").session_timeout(Duration::from_millis(600)).hooks(hooks));
    let recorded = ran.clone();
    let worker = Worker::builder(store.clone())
        .handle_with("ledger", options, move |ctx: JobContext, _: String| {
            let ran = recorded.clone();
            async move {
                ran.lock().unwrap().push(ctx.partition.unwrap());
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let stop = Arc::new(Notify::new());
    let stopping = stop.clone();
    let running = tokio::spawn(async move { worker.run(async move { stopping.notified().await }).await });
    let mut watch_held = held.subscribe();
    tokio::time::timeout(Duration::from_secs(10), watch_held.wait_for(|h| h.len() == PARTITIONS as usize))
        .await
        .expect("the worker did not get every partition")
        .unwrap();

    // Another member takes half, then leaves: the worker gains that half back.
    let other = store
        .group_join(&q, &group, JoinOptions { name: Some("other".into()), session_timeout_ms: Some(30_000) })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), watch_held.wait_for(|h| h.len() == PARTITIONS as usize / 2))
        .await
        .expect("the worker did not give up half")
        .unwrap();
    let kept: BTreeSet<u32> = held.borrow().clone();
    let gained: BTreeSet<u32> = (0..PARTITIONS).filter(|p| !kept.contains(p)).collect();
    slow.store(true, AtomicOrdering::SeqCst);
    // One job in each gained partition first, then four in each kept one: a lease batch holds
    // both kinds.
    let mut jobs: Vec<NewJob> = keys_in(&gained).into_iter().map(|k| NewJob::new("\"g\"").ordering_key(k)).collect();
    for _ in 0..4 {
        jobs.extend(keys_in(&kept).into_iter().map(|k| NewJob::new("\"k\"").ordering_key(k)));
    }
    let kept_jobs = 4 * kept.len();
    store.group_leave(&q, &group, &other.member_id).await.unwrap();
    store.job_enqueue(&q, jobs).await.unwrap();

    // The gained partitions' `on_assigned` is held; the kept partitions' jobs all run meanwhile.
    let mut watch_hook = in_slow_hook.subscribe();
    tokio::time::timeout(Duration::from_secs(10), watch_hook.wait_for(|inside| *inside))
        .await
        .expect("the worker never began assigning the gained partitions")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (kept_ran, gained_ran) = {
            let ran = ran.lock().unwrap();
            (ran.iter().filter(|p| kept.contains(p)).count(), ran.iter().filter(|p| gained.contains(p)).count())
        };
        assert_eq!(gained_ran, 0, "a job of a gained partition ran before its on_assigned returned");
        if kept_ran == kept_jobs {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "while the gained partitions were being assigned, {kept_ran} of {kept_jobs} jobs of kept partitions ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(*in_slow_hook.borrow(), "the hook was still held while the kept partitions' jobs ran");

    // Released: the gained partitions' jobs run too.
    release.notify_one();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ran.lock().unwrap().iter().filter(|p| gained.contains(p)).count() < gained.len() {
        assert!(tokio::time::Instant::now() < deadline, "the gained partitions' jobs did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.notify_one();
    let report =
        tokio::time::timeout(Duration::from_secs(10), running).await.expect("the worker did not stop").unwrap();
    assert_eq!(report.acked, (kept_jobs + gained.len()) as u64);
}
