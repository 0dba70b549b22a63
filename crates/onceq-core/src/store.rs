//! The seam: the one trait through which the rest of onceq touches storage.
//!
//! Batch operations are the primitive; [`StoreExt`] offers single-item shorthands.
//! Settle operations (ack, nack, extend, fail) judge each item on its own: the outer `Result`
//! is the store's (unavailable, I/O), the inner one the item's (lease lost, job not found).

use async_trait::async_trait;

use crate::commit::{Commit, CommitOutcome, ProducerId, Registration};
use crate::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use crate::job::check_delay;
use crate::limits::*;
use crate::queue::check_visibility_timeout;
use crate::redrive::PacedRedrive;
pub use crate::redrive::{Redrive, Redriven};
use crate::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
pub use crate::settle::{Extend, Fail, Nack, NackOutcome, Release};
use crate::{
    DeliveryMode, Enqueued, Error, Job, JobId, LeaseRef, LeasedJob, NewJob, QueueConfig, QueueConfigPatch, QueueInfo,
    QueueName, RedriveId, Result, Timestamp,
};

/// Per-item results of a batch settle call, in request order.
pub type ItemResults<T> = Vec<Result<T>>;

/// Options of a lease call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseOptions {
    /// Most jobs to hand out, 1 to [`LEASE_BATCH_MAX`].
    pub max_jobs: u32,
    /// Lease length; `None` uses the queue's default.
    pub visibility_timeout_ms: Option<u64>,
    /// How long to wait for a job when none is ready (long poll), at most [`WAIT_MS_MAX`].
    pub wait_ms: u64,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 0 }
    }
}

impl LeaseOptions {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        if !(1..=LEASE_BATCH_MAX).contains(&self.max_jobs) {
            return Err(Error::invalid(format!(
                "max_jobs is {}; it must be between 1 and {LEASE_BATCH_MAX}",
                self.max_jobs
            )));
        }
        if let Some(ms) = self.visibility_timeout_ms {
            check_visibility_timeout(ms)?;
        }
        if self.wait_ms > WAIT_MS_MAX {
            return Err(Error::invalid(format!("wait_ms is {}; the limit is {WAIT_MS_MAX}", self.wait_ms)));
        }
        Ok(())
    }
}

/// One page request of a dead-letter listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadPage {
    /// Start after this id (exclusive); `None` starts at the beginning.
    pub after: Option<JobId>,
    /// Most jobs on the page, 1 to [`DEAD_PAGE_MAX`].
    pub limit: u32,
}

impl Default for DeadPage {
    fn default() -> Self {
        DeadPage { after: None, limit: 100 }
    }
}

/// One page of dead jobs, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadList {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next: Option<JobId>,
}

/// The storage seam. Every backend implements it; the conformance suite in `onceq-testkit`
/// checks each behaviour and invariant of docs/design.md against it.
#[async_trait]
pub trait Store: Send + Sync {
    /// Applies a commit: its settles (ack, nack, fail, release, each by lease token) and its
    /// enqueues into any queues, all or nothing (Invariant 12; `onceq_core::commit`). Any lease
    /// not current: [`Error::LeasesLost`] with those jobs, and nothing applied. A commit id seen
    /// within its window: the first outcome again, `replayed`, if the content is the same, else
    /// `Conflict`. A producer whose epoch a newer registration replaced: [`Error::Fenced`].
    /// A producer's fenced enqueue (HTTP's enqueue with `producer`) is a commit of those jobs
    /// alone.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome>;
    /// Lists a page of a queue's dead jobs, in id order.
    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList>;
    /// Deletes every dead job of a queue; returns how many.
    async fn dead_purge(&self, queue: &QueueName) -> Result<u64>;
    /// Makes dead jobs ready again with their attempt count reset; returns how many.
    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven>;

    // Paced redrives (`onceq_core::redrive`): stepped by the store itself.

    /// Reads a paced redrive. `RedriveNotFound` if there is none.
    async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive>;
    /// Lists paced redrives, newest first: every running one and the latest finished ones, at
    /// most [`REDRIVE_LIST_MAX`] in all.
    async fn redrive_list(&self) -> Result<Vec<PacedRedrive>>;
    /// Starts a paced redrive of `queue`'s dead letters: the jobs `redrive` matches that died
    /// before now, at most `rate_per_second` per second, oldest id first. At most
    /// [`REDRIVES_RUNNING_MAX`] run at once (`Conflict` past it).
    async fn redrive_start(&self, queue: &QueueName, redrive: Redrive, rate_per_second: u32) -> Result<PacedRedrive>;
    /// Stops a running paced redrive; one already stopped or done is returned as it is.
    async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive>;
    /// Steps every running paced redrive as of the store's clock; returns the jobs redriven.
    /// Stores step by themselves every [`REDRIVE_STEP_INTERVAL_MS`]; this is for a caller that
    /// wants it now (and for tests on a manual clock).
    async fn redrive_tick(&self) -> Result<u64>;
    /// Reads a consumer group of a queue: its members, and each partition's owner and load.
    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo>;
    /// Records a member's heartbeat; returns its partitions and those it is giving up.
    /// `NotMember` when it is not a member (it left, or missed heartbeats for its session).
    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView>;
    /// Joins a consumer group of a `per_key` queue as a new member (creating the group): the
    /// group rebalances, and the member gets its partitions as they are handed over.
    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView>;
    /// Leases like `job_lease`, from the partitions `member` owns and is not giving up only.
    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>>;
    /// Leaves a group: the group rebalances; the member's partitions move once its leases in
    /// them are settled or expired.
    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()>;
    /// Lists a queue's consumer groups, by name.
    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>>;
    /// Acks leased jobs: they are done and gone for good (Invariant 4).
    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>>;
    /// Enqueues jobs atomically (all or none), creating the queue with defaults if needed.
    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>>;
    /// Extends leases; returns each lease's new expiry.
    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>>;
    /// Fails leased jobs: they go dead now.
    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>>;
    /// Cancels a job, and returns it as it is then. A scheduled, ready or blocked job ends in
    /// state `Cancelled` at once (an ordered key moves on, as when it is acked); a leased one is
    /// marked (`cancelled_at`, state still `Leased`): an extend of its lease is refused with
    /// [`Error::JobCancelled`], an ack settles it as usual, and any other end of the lease
    /// (nack, release, fail, expiry) ends it `Cancelled`. A cancelled job stays as it is
    /// (cancelling again changes nothing). A dead job: `Conflict` (redrive or purge it).
    async fn job_cancel(&self, id: JobId) -> Result<Job>;
    /// Deletes a job that is not leased, with its error history: a scheduled, ready, blocked,
    /// dead or cancelled job is gone for good (an ordered key it heads moves on; a blocked one
    /// leaves the line), and reads of it answer `JobNotFound`. A leased job: `Conflict` (cancel it,
    /// or let its holder settle it; deleting under a running handler would turn its ack into
    /// `lease_lost` after the work took effect). What the job took stays: its dedup id answers
    /// duplicates with its id until the window ends, as an acked job's does.
    async fn job_delete(&self, id: JobId) -> Result<()>;
    /// Fails a job that is not leased, now, by an operator: a scheduled, ready or blocked job
    /// goes dead whatever attempts it has left, with `error` recorded as the error of its
    /// current attempt, and is counted in `onceq_dead_lettered_total{reason="killed"}`. In a
    /// `per_key` queue it leaves its key as any job that dies does (`dead_blocks_key` decides).
    /// A dead job stays as it is (no second error). A leased job: `Conflict` (its holder fails
    /// it, or cancel it); a cancelled one: `Conflict`. Returns the job as it is then.
    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job>;
    /// Reads one job.
    async fn job_get(&self, id: JobId) -> Result<Job>;
    /// Leases up to `max_jobs` ready jobs: highest priority first, then oldest `run_at`, then
    /// enqueue order. Waits up to `wait_ms` when none is ready. A queue that does not exist yet
    /// is not an error: it behaves as an empty queue.
    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>>;
    /// Nacks leased jobs: they run again after a delay, or go dead when attempts are exhausted.
    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>>;
    /// Releases leased jobs: the lease ends and does not count as an attempt (the attempt count
    /// goes back down, no error is recorded); the job is ready again after the delay.
    async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>>;
    /// Deletes a queue and all its jobs.
    async fn queue_delete(&self, queue: &QueueName) -> Result<()>;
    /// Reads a queue's config, pause flag and stats.
    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo>;
    /// Lists every queue, by name.
    async fn queue_list(&self) -> Result<Vec<QueueInfo>>;
    /// Lists at most `limit` queues whose names come after `after` (all when `None`), by name: a
    /// page of [`Store::queue_list`]. The default reads the whole list; a store that can read a
    /// page alone does.
    async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        let all = self.queue_list().await?;
        Ok(all.into_iter().filter(|q| after.is_none_or(|after| q.name > *after)).take(limit as usize).collect())
    }
    /// Pauses leasing from a queue; enqueues are still accepted.
    async fn queue_pause(&self, queue: &QueueName) -> Result<()>;
    /// Resumes leasing from a queue.
    async fn queue_resume(&self, queue: &QueueName) -> Result<()>;
    /// Creates a queue (defaults patched) or updates one; returns the resulting config.
    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig>;
    /// Registers a producer, or registers it again: a new epoch, which fences every older one
    /// (Invariant 13), and the checkpoint its last commit saved.
    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration>;
    /// Reads a producer without registering it: its current epoch and checkpoint, epoch 0 (an
    /// epoch never issued) when it never registered.
    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration>;

    // Schedules (`onceq_core::schedule`; Invariant 14: one job per tick).

    /// Deletes a schedule; jobs its ticks enqueued stay. `ScheduleNotFound` if there is none.
    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()>;
    /// Reads a schedule: its spec, next ticks, last tick and last job.
    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo>;
    /// Lists every schedule (up to [`SCHEDULE_LIST_MAX`]), by name.
    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>>;
    /// Pauses a schedule: it fires nothing until resumed, and its ticks meanwhile are not caught up.
    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()>;
    /// Resumes a schedule from its first tick after now (and after its last tick).
    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()>;
    /// Fires every due tick of every schedule as of the store's clock, each tick's job enqueued
    /// in the transaction that advances its schedule; returns what this call fired. Stores also
    /// fire due ticks by themselves; this is for a caller that wants it now (and for tests on a
    /// manual clock). Ticks another pass already fired are not returned again.
    async fn schedule_tick(&self) -> Result<TickReport>;
    /// Creates or replaces a schedule (validated with [`ScheduleSpec::validate`]). A new
    /// schedule, or one whose cron or time zone changed, fires from its first tick after now
    /// (and after its last tick); otherwise its next tick stays, so re-applying the same spec
    /// (a deploy at every start) loses no tick that is due.
    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo>;
}

#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        (**self).commit(commit).await
    }
    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        (**self).producer_register(producer).await
    }
    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        (**self).producer_get(producer).await
    }
    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        (**self).schedule_delete(name).await
    }
    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        (**self).schedule_get(name).await
    }
    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        (**self).schedule_list().await
    }
    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        (**self).schedule_pause(name).await
    }
    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        (**self).schedule_resume(name).await
    }
    async fn schedule_tick(&self) -> Result<TickReport> {
        (**self).schedule_tick().await
    }
    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        (**self).schedule_upsert(name, spec).await
    }
    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        (**self).dead_list(queue, page).await
    }
    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        (**self).dead_purge(queue).await
    }
    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven> {
        (**self).dead_redrive(queue, redrive).await
    }
    async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive> {
        (**self).redrive_get(id).await
    }
    async fn redrive_list(&self) -> Result<Vec<PacedRedrive>> {
        (**self).redrive_list().await
    }
    async fn redrive_start(&self, queue: &QueueName, redrive: Redrive, rate_per_second: u32) -> Result<PacedRedrive> {
        (**self).redrive_start(queue, redrive, rate_per_second).await
    }
    async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive> {
        (**self).redrive_stop(id).await
    }
    async fn redrive_tick(&self) -> Result<u64> {
        (**self).redrive_tick().await
    }
    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        (**self).group_get(queue, group).await
    }
    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        (**self).group_heartbeat(queue, group, member).await
    }
    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        (**self).group_join(queue, group, options).await
    }
    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        (**self).group_lease(queue, group, member, options).await
    }
    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        (**self).group_leave(queue, group, member).await
    }
    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        (**self).group_list(queue).await
    }
    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        (**self).job_ack(acks).await
    }
    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        (**self).job_enqueue(queue, jobs).await
    }
    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        (**self).job_extend(extends).await
    }
    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        (**self).job_fail(fails).await
    }
    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        (**self).job_cancel(id).await
    }
    async fn job_delete(&self, id: JobId) -> Result<()> {
        (**self).job_delete(id).await
    }
    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        (**self).job_kill(id, error).await
    }
    async fn job_get(&self, id: JobId) -> Result<Job> {
        (**self).job_get(id).await
    }
    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        (**self).job_lease(queue, options).await
    }
    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        (**self).job_nack(nacks).await
    }
    async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>> {
        (**self).job_release(releases).await
    }
    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        (**self).queue_delete(queue).await
    }
    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        (**self).queue_get(queue).await
    }
    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        (**self).queue_list().await
    }
    async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        (**self).queue_list_page(after, limit).await
    }
    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        (**self).queue_pause(queue).await
    }
    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        (**self).queue_resume(queue).await
    }
    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        (**self).queue_upsert(queue, patch).await
    }
}

/// Single-item shorthands over the batch primitives of [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    /// Acks one lease.
    async fn ack(&self, lease: LeaseRef) -> Result<()> {
        single(self.job_ack(&[lease]).await?)
    }
    /// Enqueues one job.
    async fn enqueue(&self, queue: &QueueName, job: NewJob) -> Result<Enqueued> {
        let mut out = self.job_enqueue(queue, vec![job]).await?;
        out.pop().ok_or_else(|| Error::Storage("enqueue returned no result".into()))
    }
    /// Extends one lease.
    async fn extend(&self, lease: LeaseRef, visibility_timeout_ms: u64) -> Result<Timestamp> {
        let extend = Extend { id: lease.id, lease_token: lease.lease_token, visibility_timeout_ms };
        single(self.job_extend(&[extend]).await?)
    }
    /// Fails one lease.
    async fn fail(&self, lease: LeaseRef, error: &str) -> Result<()> {
        let fail = Fail { id: lease.id, lease_token: lease.lease_token, error: error.to_owned() };
        single(self.job_fail(&[fail]).await?)
    }
    /// Leases up to one job without waiting.
    async fn lease_one(&self, queue: &QueueName) -> Result<Option<LeasedJob>> {
        Ok(self.job_lease(queue, LeaseOptions::default()).await?.pop())
    }
    /// Releases one lease without counting it as an attempt.
    async fn release(&self, lease: LeaseRef, delay_ms: Option<u64>) -> Result<()> {
        let release = Release { id: lease.id, lease_token: lease.lease_token, delay_ms };
        single(self.job_release(&[release]).await?)
    }
    /// Nacks one lease.
    async fn nack(&self, lease: LeaseRef, delay_ms: Option<u64>, error: Option<&str>) -> Result<NackOutcome> {
        let nack = Nack { id: lease.id, lease_token: lease.lease_token, delay_ms, error: error.map(str::to_owned) };
        single(self.job_nack(&[nack]).await?)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

fn single<T>(mut results: ItemResults<T>) -> Result<T> {
    match (results.pop(), results.is_empty()) {
        (Some(result), true) => result,
        _ => Err(Error::Storage("a one-item batch returned other than one result".into())),
    }
}

/// Validation every backend applies before touching storage, so that all of them reject the
/// same inputs with the same errors.
pub mod validate {
    use super::*;

    /// Checks an enqueue batch.
    pub fn enqueue(jobs: &[NewJob]) -> Result<()> {
        if jobs.is_empty() {
            return Err(Error::invalid("enqueue needs at least one job"));
        }
        if jobs.len() > ENQUEUE_BATCH_MAX {
            return Err(Error::invalid(format!(
                "{} jobs in one enqueue; the limit is {ENQUEUE_BATCH_MAX}",
                jobs.len()
            )));
        }
        jobs.iter().enumerate().try_for_each(|(i, job)| {
            job.validate().map_err(|e| match e {
                Error::PayloadTooLarge(m) => Error::PayloadTooLarge(format!("item {i}: {m}")),
                Error::InvalidRequest(m) => Error::InvalidRequest(format!("item {i}: {m}")),
                other => other,
            })
        })
    }

    /// Checks a commit against its limits: something to do; at most [`SETTLE_BATCH_MAX`]
    /// settles, no job settled twice; at most [`ENQUEUE_BATCH_MAX`] jobs over at most
    /// [`COMMIT_QUEUES_MAX`] queues, each queue once, every job valid, payloads together at
    /// most [`COMMIT_PAYLOAD_BYTES_MAX`]; a checkpoint only with a producer, at most
    /// [`CHECKPOINT_BYTES_MAX`] as JSON.
    pub fn commit(commit: &Commit) -> Result<()> {
        let settles = commit.ack.len() + commit.nack.len() + commit.fail.len() + commit.release.len();
        let jobs: usize = commit.enqueue.iter().map(|e| e.jobs.len()).sum();
        if settles == 0 && jobs == 0 && commit.checkpoint.is_none() {
            return Err(Error::invalid("the commit is empty: give ack, nack, fail, release, enqueue or checkpoint"));
        }
        if settles > SETTLE_BATCH_MAX {
            return Err(Error::invalid(format!("{settles} settles in one commit; the limit is {SETTLE_BATCH_MAX}")));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = commit.leases().find(|l| !seen.insert(l.id)) {
            return Err(Error::invalid(format!("job {} is settled twice in one commit", twice.id)));
        }
        if !commit.nack.is_empty() {
            nacks(&commit.nack)?;
        }
        if !commit.release.is_empty() {
            releases(&commit.release)?;
        }
        if jobs > ENQUEUE_BATCH_MAX {
            return Err(Error::invalid(format!("{jobs} jobs in one commit; the limit is {ENQUEUE_BATCH_MAX}")));
        }
        if commit.enqueue.len() > COMMIT_QUEUES_MAX {
            return Err(Error::invalid(format!(
                "{} queues in one commit; the limit is {COMMIT_QUEUES_MAX}",
                commit.enqueue.len()
            )));
        }
        let mut queues = std::collections::BTreeSet::new();
        for batch in &commit.enqueue {
            if !queues.insert(&batch.queue) {
                return Err(Error::invalid(format!(
                    "queue {} appears twice in the commit's enqueue; put its jobs in one entry",
                    batch.queue
                )));
            }
            enqueue(&batch.jobs).map_err(|e| match e {
                Error::InvalidRequest(m) => Error::InvalidRequest(format!("enqueue into {}: {m}", batch.queue)),
                Error::PayloadTooLarge(m) => Error::PayloadTooLarge(format!("enqueue into {}: {m}", batch.queue)),
                other => other,
            })?;
        }
        let bytes: usize = commit.enqueue.iter().flat_map(|e| &e.jobs).map(|j| j.payload.len()).sum();
        if bytes > COMMIT_PAYLOAD_BYTES_MAX {
            return Err(Error::PayloadTooLarge(format!(
                "the commit's payloads are {bytes} bytes together; the limit is {COMMIT_PAYLOAD_BYTES_MAX}"
            )));
        }
        if let Some(checkpoint) = &commit.checkpoint {
            if commit.producer.is_none() {
                return Err(Error::invalid("a checkpoint belongs to a producer: give \"producer\" with it"));
            }
            let size = serde_json::to_vec(checkpoint).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > CHECKPOINT_BYTES_MAX {
                return Err(Error::PayloadTooLarge(format!(
                    "the checkpoint is {size} bytes as JSON; the limit is {CHECKPOINT_BYTES_MAX}"
                )));
            }
        }
        if let Some(fence) = &commit.producer {
            if fence.epoch == 0 {
                return Err(Error::invalid("producer epoch 0 was never issued: register the producer first"));
            }
        }
        Ok(())
    }

    /// Checks the size of a settle batch (ack, nack, extend, fail).
    pub fn settle_batch(len: usize) -> Result<()> {
        if len == 0 {
            return Err(Error::invalid("the batch is empty"));
        }
        if len > SETTLE_BATCH_MAX {
            return Err(Error::invalid(format!("{len} items in one batch; the limit is {SETTLE_BATCH_MAX}")));
        }
        Ok(())
    }

    /// Checks a nack batch.
    pub fn nacks(nacks: &[Nack]) -> Result<()> {
        settle_batch(nacks.len())?;
        nacks.iter().filter_map(|n| n.delay_ms).try_for_each(check_delay)
    }

    /// Checks a release batch.
    pub fn releases(releases: &[Release]) -> Result<()> {
        settle_batch(releases.len())?;
        releases.iter().filter_map(|r| r.delay_ms).try_for_each(check_delay)
    }

    /// Checks an extend batch.
    pub fn extends(extends: &[Extend]) -> Result<()> {
        settle_batch(extends.len())?;
        extends.iter().try_for_each(|e| check_visibility_timeout(e.visibility_timeout_ms))
    }

    /// Checks a dead-letter page request.
    pub fn dead_page(page: &DeadPage) -> Result<()> {
        if !(1..=DEAD_PAGE_MAX).contains(&page.limit) {
            return Err(Error::invalid(format!("limit is {}; it must be between 1 and {DEAD_PAGE_MAX}", page.limit)));
        }
        Ok(())
    }

    /// Checks that no job of an enqueue batch becomes due more than [`DELAY_MS_MAX`] after
    /// `now`, the store's clock reading for the enqueue (Invariant 7): a backend calls it once
    /// it has read its clock, before it writes anything.
    pub fn run_at_horizon(jobs: &[NewJob], now: Timestamp) -> Result<()> {
        let latest = now.plus_ms(DELAY_MS_MAX);
        if let Some(i) = jobs.iter().position(|j| j.ready_at(now) > latest) {
            return Err(Error::invalid(format!(
                "item {i}: run_at is more than {DELAY_MS_MAX} ms ahead; that is the limit"
            )));
        }
        Ok(())
    }

    /// Checks an enqueue batch against the config of the queue it goes to: every job of an
    /// `effectively_once` queue needs a dedup id, since that mode's promise rests on dedup. A
    /// backend calls it once it has read the queue's config, before it writes anything; a queue
    /// the enqueue creates has the default config, which asks for nothing.
    ///
    /// Nor may a job of an `effectively_once` queue be unique by its dedup id while pending or
    /// active: that rule replaces the dedup window for the id, so a producer's retry after the
    /// job finished would run it again.
    pub fn enqueue_into(queue: &QueueName, config: &QueueConfig, jobs: &[NewJob]) -> Result<()> {
        if config.delivery == DeliveryMode::EffectivelyOnce {
            if let Some(i) = jobs.iter().position(|j| j.dedup_id.is_none()) {
                return Err(Error::invalid(format!(
                    "item {i}: queue {queue} is effectively_once, so every job needs a dedup id"
                )));
            }
            let by_id_while_state = |j: &NewJob| {
                j.unique.is_some_and(|u| u.by == crate::UniqueBy::DedupId && u.held_while != crate::UniqueWhile::Window)
            };
            if let Some(i) = jobs.iter().position(by_id_while_state) {
                return Err(Error::invalid(format!(
                    "item {i}: queue {queue} is effectively_once, so a dedup id holds for the dedup window: \
                     unique by dedup_id while pending or active would let a producer's retry run the job again \
                     once it finished; use unique while window, or unique by payload"
                )));
            }
        }
        Ok(())
    }

    /// Checks a change of `queue`'s config from `old` to `new` while it holds `jobs` jobs (dead
    /// ones included): its ordering and partition count change only while it holds none.
    pub fn reshape(queue: &QueueName, old: &QueueConfig, new: &QueueConfig, jobs: u64) -> Result<()> {
        if jobs > 0 && old.reorders(new) {
            return Err(Error::QueueNotEmpty(format!(
                "queue {queue} holds {jobs} jobs; its ordering and partitions change only while it holds none: \
                 let it drain and purge its dead jobs, or move the work to a new queue, then retry"
            )));
        }
        Ok(())
    }

    /// Checks that `queue` (with `config`) can have consumer groups: it must be `per_key`.
    pub fn grouped(queue: &QueueName, config: &QueueConfig) -> Result<()> {
        if config.ordering != crate::Ordering::PerKey {
            return Err(Error::invalid(format!(
                "queue {queue} is not per_key: consumer groups share the partitions of a per_key queue \
                 (set \"ordering\": \"per_key\" while it is empty)"
            )));
        }
        Ok(())
    }

    /// Checks that `group` may take members on `queue`, where `busy` is another group of the
    /// queue that has members, if any: a queue's jobs are consumed once, so one group at a time
    /// owns its partitions.
    pub fn one_group(queue: &QueueName, group: &GroupName, busy: Option<&GroupName>) -> Result<()> {
        match busy {
            Some(other) if other != group => Err(Error::Conflict(format!(
                "queue {queue} is consumed by group {other}, which has members; a queue's jobs are consumed once, \
                 so one group at a time shares its partitions"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks a redrive request.
    pub fn redrive(redrive: &Redrive) -> Result<()> {
        if let Some(ids) = &redrive.ids {
            if ids.len() > REDRIVE_IDS_MAX {
                return Err(Error::invalid(format!(
                    "{} ids in one redrive; the limit is {REDRIVE_IDS_MAX}",
                    ids.len()
                )));
            }
        }
        if redrive.limit == Some(0) {
            return Err(Error::invalid("redrive limit must be at least 1"));
        }
        if let Some(text) = &redrive.error_contains {
            if text.is_empty() || text.len() > REDRIVE_FILTER_BYTES_MAX {
                return Err(Error::invalid(format!(
                    "error_contains is {} bytes; it must be 1 to {REDRIVE_FILTER_BYTES_MAX}",
                    text.len()
                )));
            }
        }
        if let (Some(after), Some(before)) = (redrive.dead_after, redrive.dead_before) {
            if after >= before {
                return Err(Error::invalid(format!("dead_after ({after}) must be before dead_before ({before})")));
            }
        }
        if redrive.min_attempts == Some(0) {
            return Err(Error::invalid("min_attempts must be at least 1 (every dead job was attempted or failed)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::validate;
    use crate::limits::DELAY_MS_MAX;
    use crate::{DeliveryMode, Error, NewJob, QueueConfig, QueueName, Timestamp};

    #[test]
    fn run_at_horizon_allows_the_limit_and_names_the_first_job_past_it() {
        let now = Timestamp::from_millis(1_000_000);
        let at_limit = NewJob::new("a").delay_ms(DELAY_MS_MAX);
        let past = NewJob::new("b").run_at(now.plus_ms(DELAY_MS_MAX + 1));
        assert_eq!(validate::run_at_horizon(&[at_limit.clone(), NewJob::new("now")], now), Ok(()));
        assert_eq!(
            validate::run_at_horizon(&[at_limit, past], now),
            Err(Error::InvalidRequest(format!(
                "item 1: run_at is more than {DELAY_MS_MAX} ms ahead; that is the limit"
            )))
        );
    }

    #[test]
    fn an_effectively_once_queue_needs_a_dedup_id_on_every_job() {
        let queue = QueueName::new("payments").unwrap();
        let once = QueueConfig { delivery: DeliveryMode::EffectivelyOnce, ..QueueConfig::default() };
        let jobs = [NewJob::new("a").dedup_id("a"), NewJob::new("b")];
        assert_eq!(validate::enqueue_into(&queue, &QueueConfig::default(), &jobs), Ok(()));
        assert_eq!(validate::enqueue_into(&queue, &once, &jobs[..1]), Ok(()));
        assert_eq!(
            validate::enqueue_into(&queue, &once, &jobs),
            Err(Error::InvalidRequest(
                "item 1: queue payments is effectively_once, so every job needs a dedup id".into()
            ))
        );
    }
}
