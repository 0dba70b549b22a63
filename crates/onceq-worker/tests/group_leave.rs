//! A worker shut down gracefully revokes its partitions and leaves its consumer group: the other
//! member gets those partitions and runs their jobs within seconds, far sooner than the 30 s
//! session timeout after which an unannounced departure would be noticed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_core::group::GroupName;
use onceq_core::ordering::partition_of;
use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
use tokio::sync::{watch, Notify};

const PARTITIONS: u32 = 8;
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon the remaining member must have run the leaver's partitions' jobs.
const PROMPTLY: Duration = Duration::from_secs(5);

/// The partitions a worker holds now (assigned and not revoked), as its hooks saw.
#[derive(Clone)]
struct Holding(Arc<watch::Sender<BTreeSet<u32>>>);

#[async_trait]
impl PartitionHooks for Holding {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        self.0.send_modify(|held| held.extend(partitions.iter().copied()));
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        self.0.send_modify(|held| {
            for p in partitions {
                assert!(held.remove(p), "revoked {p}, which was not assigned");
            }
        });
    }
}

fn worker(store: Arc<SqliteStore>, holding: Holding, ran: Arc<Mutex<Vec<u32>>>) -> Worker<SqliteStore> {
    let group = GroupOptions::new("mailers").session_timeout(SESSION_TIMEOUT).hooks(holding);
    let options = QueueOptions::concurrency(4).poll_wait(Duration::from_millis(500)).group(group);
    Worker::builder(store)
        .handle_with("mail", options, move |ctx: JobContext, _: String| {
            let ran = ran.clone();
            async move {
                ran.lock().unwrap().push(ctx.partition.unwrap());
                Outcome::Done
            }
        })
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_hands_its_partitions_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path())).unwrap());
    let q = QueueName::new("mail").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let group = GroupName::new("mailers").unwrap();

    let (held_a, held_b) = (Arc::new(watch::channel(BTreeSet::new()).0), Arc::new(watch::channel(BTreeSet::new()).0));
    let (ran_a, ran_b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let (stop_a, stop_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = worker(store.clone(), Holding(held_a.clone()), ran_a.clone());
    let sa = stop_a.clone();
    let a = tokio::spawn(async move { a.run(async move { sa.notified().await }).await });
    let mut watch_a = held_a.subscribe();
    tokio::time::timeout(Duration::from_secs(10), watch_a.wait_for(|held| held.len() == PARTITIONS as usize))
        .await
        .expect("the first member did not get every partition")
        .unwrap();
    let b = worker(store.clone(), Holding(held_b.clone()), ran_b.clone());
    let sb = stop_b.clone();
    let b = tokio::spawn(async move { b.run(async move { sb.notified().await }).await });
    // Both must hold half: B learns of its partitions on a heartbeat or a lease, A gives them up
    // once it holds no lease in them (it holds none). Jobs in every partition wake both up.
    let keys: Vec<String> = (0..64).map(|k| format!("customer-{k}")).collect();
    let warmup: Vec<NewJob> = keys.iter().map(|k| NewJob::new("\"hello\"").ordering_key(k.clone())).collect();
    store.job_enqueue(&q, warmup).await.unwrap();
    let mut watch_b = held_b.subscribe();
    // The first heartbeats come a third of the session timeout (10 s) after joining at the
    // latest: a lease from a partition not yet assigned makes the worker heartbeat at once.
    tokio::time::timeout(Duration::from_secs(15), watch_b.wait_for(|held| held.len() == PARTITIONS as usize / 2))
        .await
        .expect("the second member did not get its share")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), watch_a.wait_for(|held| held.len() == PARTITIONS as usize / 2))
        .await
        .expect("the first member did not give up half")
        .unwrap();
    let leaving: BTreeSet<u32> = held_a.borrow().clone();

    // A stops: its report shows one join and no expiry; its hooks revoked everything.
    stop_a.notify_one();
    let stopped = Instant::now();
    let report_a = tokio::time::timeout(Duration::from_secs(10), a).await.expect("A did not stop").unwrap();
    assert_eq!((report_a.group_joins, report_a.group_expired), (1, 0));
    assert!(held_a.borrow().is_empty(), "A still holds {:?} after stopping", held_a.borrow());
    let members = store.group_get(&q, &group).await.unwrap().members;
    assert_eq!(members.len(), 1, "A left the group: {members:?}");

    // Jobs in A's former partitions: B gets the partitions and runs them promptly.
    ran_b.lock().unwrap().clear();
    let after: Vec<NewJob> = keys.iter().map(|k| NewJob::new("\"again\"").ordering_key(k.clone())).collect();
    let enqueued = store.job_enqueue(&q, after).await.unwrap();
    let in_leaving =
        keys.iter().zip(&enqueued).filter(|(k, e)| leaving.contains(&partition_of(Some(k), e.id, PARTITIONS))).count();
    assert!(in_leaving > 0);
    tokio::time::timeout(PROMPTLY, watch_b.wait_for(|held| held.len() == PARTITIONS as usize))
        .await
        .expect("B did not get A's partitions promptly")
        .unwrap();
    let deadline = Instant::now() + PROMPTLY;
    while ran_b.lock().unwrap().len() < keys.len() {
        assert!(Instant::now() < deadline, "B ran {} of {} jobs", ran_b.lock().unwrap().len(), keys.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken_over = ran_b.lock().unwrap().iter().filter(|p| leaving.contains(p)).count();
    assert_eq!(taken_over, in_leaving, "B ran the jobs of A's former partitions");
    assert!(stopped.elapsed() < SESSION_TIMEOUT / 2, "the hand-over took {:?}", stopped.elapsed());

    stop_b.notify_one();
    let report_b = tokio::time::timeout(Duration::from_secs(10), b).await.expect("B did not stop").unwrap();
    assert_eq!((report_b.group_joins, report_b.group_expired), (1, 0));
    assert_eq!(report_a.acked + report_b.acked, 2 * keys.len() as u64);
    assert_eq!(ran_a.lock().unwrap().len() as u64, report_a.acked);
    assert!(store.group_get(&q, &group).await.unwrap().members.is_empty());
}
