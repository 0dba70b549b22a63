//! A worker whose group member expires joins again and carries on. The store's heartbeats are
//! held back (a store wrapper delays `group_heartbeat` while told to, as a network partition
//! would) past the 500 ms session timeout, so the group really expires the member: the worker's
//! leases get `NotMember`, it stops starting jobs, and once a heartbeat gets through and is
//! refused it revokes every partition, joins again as a new member, gets them back and runs
//! the remaining jobs: each once, each key in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_core::commit::{Commit, CommitOutcome, ProducerId, Registration};
use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::{
    DeadList, DeadPage, Enqueued, Extend, Fail, ItemResults, Job, JobId, LeaseOptions, LeaseRef, LeasedJob, Nack,
    NackOutcome, NewJob, Ordering, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, Redrive, Release, Result,
    Store, Timestamp,
};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
use tokio::sync::watch;

const PARTITIONS: u32 = 8;
const KEYS: usize = 16;
const JOBS_PER_KEY: usize = 20;
const JOBS: usize = KEYS * JOBS_PER_KEY;
const SESSION_TIMEOUT: Duration = Duration::from_millis(500);

/// The embedded store, with `group_heartbeat` held back while `hold` is true.
struct HeldHeartbeats {
    inner: SqliteStore,
    hold: watch::Sender<bool>,
}

#[async_trait]
impl Store for HeldHeartbeats {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        self.inner.commit(commit).await
    }
    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        self.inner.producer_register(producer).await
    }
    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        self.inner.producer_get(producer).await
    }
    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        self.inner.schedule_delete(name).await
    }
    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        self.inner.schedule_get(name).await
    }
    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        self.inner.schedule_list().await
    }
    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        self.inner.schedule_pause(name).await
    }
    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        self.inner.schedule_resume(name).await
    }
    async fn schedule_tick(&self) -> Result<TickReport> {
        self.inner.schedule_tick().await
    }
    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        self.inner.schedule_upsert(name, spec).await
    }
    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        self.inner.dead_list(queue, page).await
    }
    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        self.inner.dead_purge(queue).await
    }
    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<onceq_core::Redriven> {
        self.inner.dead_redrive(queue, redrive).await
    }
    async fn redrive_get(&self, id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
        self.inner.redrive_get(id).await
    }
    async fn redrive_list(&self) -> Result<Vec<onceq_core::redrive::PacedRedrive>> {
        self.inner.redrive_list().await
    }
    async fn redrive_start(
        &self,
        queue: &QueueName,
        redrive: Redrive,
        rate_per_second: u32,
    ) -> Result<onceq_core::redrive::PacedRedrive> {
        self.inner.redrive_start(queue, redrive, rate_per_second).await
    }
    async fn redrive_stop(&self, id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
        self.inner.redrive_stop(id).await
    }
    async fn redrive_tick(&self) -> Result<u64> {
        self.inner.redrive_tick().await
    }
    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        self.inner.group_get(queue, group).await
    }
    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        let mut hold = self.hold.subscribe();
        let _ = hold.wait_for(|held| !*held).await;
        self.inner.group_heartbeat(queue, group, member).await
    }
    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        self.inner.group_join(queue, group, options).await
    }
    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        self.inner.group_lease(queue, group, member, options).await
    }
    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        self.inner.group_leave(queue, group, member).await
    }
    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        self.inner.group_list(queue).await
    }
    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        self.inner.job_ack(acks).await
    }
    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.inner.job_enqueue(queue, jobs).await
    }
    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        self.inner.job_extend(extends).await
    }
    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        self.inner.job_fail(fails).await
    }
    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        self.inner.job_cancel(id).await
    }
    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.inner.job_delete(id).await
    }
    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        self.inner.job_kill(id, error).await
    }
    async fn job_get(&self, id: JobId) -> Result<Job> {
        self.inner.job_get(id).await
    }
    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        self.inner.job_lease(queue, options).await
    }
    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        self.inner.job_nack(nacks).await
    }
    async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>> {
        self.inner.job_release(releases).await
    }
    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        self.inner.queue_delete(queue).await
    }
    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        self.inner.queue_get(queue).await
    }
    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        self.inner.queue_list().await
    }
    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        self.inner.queue_pause(queue).await
    }
    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        self.inner.queue_resume(queue).await
    }
    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        self.inner.queue_upsert(queue, patch).await
    }
}

/// Hook calls in order: (assigned?, partitions).
type HookLog = Arc<Mutex<Vec<(bool, Vec<u32>)>>>;
/// Handler runs: job, key, seq, start.
type RunLog = Arc<Mutex<Vec<(JobId, String, usize, Instant)>>>;

struct Hooks(HookLog);

#[async_trait]
impl PartitionHooks for Hooks {
    async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
        self.0.lock().unwrap().push((true, partitions.to_vec()));
    }

    async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
        self.0.lock().unwrap().push((false, partitions.to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_member_joins_again_and_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let store = Arc::new(HeldHeartbeats { inner, hold: watch::channel(false).0 });
    let q = QueueName::new("ledger").unwrap();
    let group = GroupName::new("posting").unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(PARTITIONS),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    let mut jobs = Vec::new();
    for seq in 0..JOBS_PER_KEY {
        for key in 0..KEYS {
            jobs.push(NewJob::new(seq.to_string()).ordering_key(format!("account-{key}")));
        }
    }
    store.job_enqueue(&q, jobs).await.unwrap();

    let runs: RunLog = Arc::default();
    let hooks: HookLog = Arc::default();
    let (progress, mut watching) = watch::channel(0usize);
    let (stop, stopped) = watch::channel(false);
    let options = QueueOptions::concurrency(4)
        .poll_wait(Duration::from_millis(100))
        .group(GroupOptions::new("posting").session_timeout(SESSION_TIMEOUT).hooks(Hooks(hooks.clone())));
    let r = runs.clone();
    let worker = Worker::builder(store.clone())
        .handle_with("ledger", options, move |ctx: JobContext, seq: usize| {
            let (r, progress) = (r.clone(), progress.clone());
            async move {
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let mut runs = r.lock().unwrap();
                runs.push((ctx.id, ctx.ordering_key.clone().unwrap(), seq, start));
                progress.send_replace(runs.len());
                Outcome::Done
            }
        })
        .build()
        .unwrap();
    let worker = tokio::spawn(worker.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));

    tokio::time::timeout(Duration::from_secs(20), watching.wait_for(|n| *n >= JOBS / 4))
        .await
        .expect("the worker did not get going")
        .unwrap();
    store.hold.send_replace(true);
    // The group expires the member at the first operation a session timeout after its last
    // heartbeat; `group_get` is one.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if store.group_get(&q, &group).await.unwrap().members.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the member did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired_at = Instant::now();
    let ran_at_expiry = runs.lock().unwrap().len();
    assert!(ran_at_expiry < JOBS, "every job ran before the member expired; make the jobs slower");
    // Without a member, no job starts: a lease poll already under way may still hand out what
    // was ready (its poll wait, 100 ms), and those run (10 ms each); later, nothing.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let late: Vec<_> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, _, start)| *start > expired_at + Duration::from_millis(400))
        .map(|(id, ..)| *id)
        .collect();
    assert!(late.is_empty(), "jobs started long after the member expired: {late:?}");
    assert_eq!(hooks.lock().unwrap().len(), 1, "nothing is revoked before the worker learns of the expiry");

    store.hold.send_replace(false);
    tokio::time::timeout(Duration::from_secs(20), watching.wait_for(|n| *n >= JOBS))
        .await
        .expect("the worker did not carry on after joining again")
        .unwrap();
    stop.send_replace(true);
    let report = tokio::time::timeout(Duration::from_secs(10), worker).await.expect("the worker did not stop").unwrap();
    assert_eq!((report.group_joins, report.group_expired), (2, 1), "{report:?}");
    assert_eq!(report.acked, JOBS as u64, "{report:?}");

    let all: Vec<u32> = (0..PARTITIONS).collect();
    assert_eq!(
        *hooks.lock().unwrap(),
        vec![(true, all.clone()), (false, all.clone()), (true, all.clone()), (false, all)],
        "assigned at join, revoked on expiry, assigned at the new join, revoked on shutdown"
    );
    let info = store.group_get(&q, &group).await.unwrap();
    assert!(info.members.is_empty(), "the new member left on shutdown");
    let runs = runs.lock().unwrap();
    let mut ids: Vec<JobId> = runs.iter().map(|(id, ..)| *id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), JOBS, "every job ran once");
    let mut by_key: BTreeMap<&str, Vec<(Instant, usize)>> = BTreeMap::new();
    for (_, key, seq, start) in runs.iter() {
        by_key.entry(key).or_default().push((*start, *seq));
    }
    for (key, mut seqs) in by_key {
        seqs.sort();
        assert_eq!(seqs.iter().map(|(_, s)| *s).collect::<Vec<_>>(), (0..JOBS_PER_KEY).collect::<Vec<_>>(), "{key}");
    }
}
