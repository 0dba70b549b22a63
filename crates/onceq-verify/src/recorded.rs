//! The wrappers through which verify runs the shipped worker: a store that records every call in
//! the history and injects the faults that belong between the worker and the target, and an
//! idempotency store that drops what a crashed worker would never have sent.
//!
//! Verify's middleware (in [`crate::workload`]) decides, per delivery, whether the worker
//! crashes or stalls, and marks the delivery's lease with a [`Cut`]. From then on:
//! - a crashed delivery's calls never reach the target and are not recorded: its settles and
//!   extends, and its idempotency `complete` and `release` (except after [`Cut::CrashedAfterComplete`],
//!   where the `complete` came before the crash). The worker sees them fail as unavailable and
//!   moves on, as the rest of a process that died would never know; the lease expires and the
//!   job is redelivered;
//! - a stalled delivery's extends are dropped (its heartbeats are partitioned away, so that the
//!   lease expires while the handler sleeps); its late settle goes through and must be refused.
//!
//! The `drop-ack` fault is here too: an ack reaches the target, and its reply is dropped (the
//! history records the outcome as unknown, the worker sees it fail as unavailable). In a
//! pipeline run the committed stage's commits (one ack and the outputs) pass here as well,
//! recorded as [`Request::Commit`]: a crashed delivery's commit never leaves, a stalled one's
//! goes out late and must be refused, and `drop-ack` drops the reply of the first commit sent
//! for a lease, so that the runtime sends it again under the same commit id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use onceq_core::commit::{Commit, CommitOutcome, ProducerId, Registration};
use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::{
    Begin, BeginOutcome, Complete, DeadList, DeadPage, Enqueued, Error, Extend, Fail, IdempotencyStore, ItemResults,
    Job, JobId, LeaseOptions, LeaseRef, LeasedJob, Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueInfo,
    QueueName, Redrive, Release, Result, Store, Timestamp,
};

use crate::history::{outcome_of, value_of, Lease, Outcome, Recorder, Request, Response};

/// What a simulated fault cut off from a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The worker died: nothing more of this delivery reaches the target.
    Crashed,
    /// The worker died after its idempotency `complete` went out: nothing after it does.
    CrashedAfterComplete,
    /// The worker stalled, partitioned from the target: its extends are dropped.
    Stalled,
}

/// What verify remembers of a lease it saw handed out.
#[derive(Debug, Clone, Copy)]
pub struct Leased {
    /// The job.
    pub job_id: u64,
    /// The value the job carries.
    pub value: u64,
    /// The lease's attempt.
    pub attempt: u32,
    /// When it expires, by the target's clock (Unix ms).
    pub lease_expires_at_ms: i64,
}

/// The leases of a mode's run and the cuts the faults made, by lease token (hex).
#[derive(Debug, Default)]
pub struct Deliveries {
    leased: Mutex<HashMap<String, Leased>>,
    cuts: Mutex<HashMap<String, Cut>>,
    /// Leases whose commit was sent at least once (`drop-ack` drops only the first reply).
    committed: Mutex<HashSet<String>>,
}

impl Deliveries {
    /// Remembers a lease handed out.
    fn leased(&self, token: String, leased: Leased) {
        self.leased.lock().unwrap_or_else(|p| p.into_inner()).insert(token, leased);
    }

    /// The lease handed out with this token, if verify saw it.
    pub fn get(&self, token: &str) -> Option<Leased> {
        self.leased.lock().unwrap_or_else(|p| p.into_inner()).get(token).copied()
    }

    /// Marks what a fault cut off from the delivery of this lease.
    pub fn cut(&self, token: String, cut: Cut) {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).insert(token, cut);
    }

    /// Notes that a commit of this lease is being sent; true the first time.
    fn first_commit(&self, token: &str) -> bool {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).insert(token.to_owned())
    }

    /// What was cut off from the delivery of this lease, if anything.
    pub fn cut_of(&self, token: &str) -> Option<Cut> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner()).get(token).copied()
    }
}

/// The error a call cut off by a fault returns to the worker. Not `Unavailable`: the worker
/// sends again what may not have arrived, and a dead worker sends nothing.
fn cut_off() -> Error {
    Error::Storage("verify: the call was cut off by an injected fault".into())
}

/// What the recording store needs of the mode's run it records.
pub trait Run: Send + Sync {
    /// The target's store.
    fn target(&self) -> &Arc<dyn Store>;
    /// Where calls are recorded.
    fn recorder(&self) -> &Recorder;
    /// The leases handed out and what the faults cut off.
    fn deliveries(&self) -> &Deliveries;
    /// The visibility timeout of a lease that asks for none.
    fn visibility_timeout_ms(&self) -> u64;
    /// Whether the reply to the ack of this delivery is dropped (and the fault counted if so).
    fn drops_ack(&self, value: u64, attempt: u32) -> bool;
    /// An ack landed.
    fn settled(&self);
    /// Stops the run with this error.
    fn fail(&self, message: String);
}

/// Whether an error means verify itself asked something wrong (the run stops).
pub fn is_fatal(error: &Error) -> bool {
    matches!(error.kind(), onceq_core::ErrorKind::InvalidRequest | onceq_core::ErrorKind::PayloadTooLarge)
}

/// The store one verify worker runs on: records every call, injects `drop-ack`, and drops what
/// a crash or stall cut off.
pub struct RecordedStore {
    ctx: Arc<dyn Run>,
    /// The history's process number of this worker.
    process: u32,
}

impl RecordedStore {
    /// The store of worker `process`.
    pub fn new(ctx: Arc<dyn Run>, process: u32) -> Self {
        RecordedStore { ctx, process }
    }

    /// Whether the delivery of `lease` may still reach the target with a settle.
    fn settles_pass(&self, lease: &LeaseRef) -> bool {
        !matches!(
            self.ctx.deliveries().cut_of(&lease.lease_token.to_string()),
            Some(Cut::Crashed | Cut::CrashedAfterComplete)
        )
    }

    /// Sends the items that `passes` lets through in one call, one op each (`request`), and
    /// answers every item: those cut off with [`cut_off`], the others with the target's verdict
    /// as `judge` records it (it returns the outcome and response to record, and what the worker
    /// gets).
    async fn forward<I: Clone, T, Fut>(
        &self,
        items: &[I],
        passes: impl Fn(&I) -> bool,
        request: impl Fn(&I) -> Request,
        send: impl FnOnce(Vec<I>) -> Fut,
        judge: impl Fn(&I, Result<T>) -> (Outcome, Response, Result<T>),
    ) -> Result<ItemResults<T>>
    where
        Fut: std::future::Future<Output = Result<ItemResults<T>>>,
    {
        let passing: Vec<usize> = (0..items.len()).filter(|&i| passes(&items[i])).collect();
        let ops: Vec<u64> =
            passing.iter().map(|&i| self.ctx.recorder().invoke(self.process, request(&items[i]))).collect();
        let mut out: Vec<Result<T>> = (0..items.len()).map(|_| Err(cut_off())).collect();
        if passing.is_empty() {
            return Ok(out);
        }
        match send(passing.iter().map(|&i| items[i].clone()).collect()).await {
            Ok(results) if results.len() == passing.len() => {
                for ((index, op), result) in passing.into_iter().zip(ops).zip(results) {
                    let (outcome, response, answer) = judge(&items[index], result);
                    self.ctx.recorder().complete(op, outcome, response);
                    out[index] = answer;
                }
                Ok(out)
            }
            Ok(results) => {
                for op in ops {
                    self.ctx.recorder().complete(op, Outcome::Unknown, Response::None);
                }
                let message = format!("{} results for {} items", results.len(), passing.len());
                self.ctx.fail(message.clone());
                Err(Error::Storage(message))
            }
            Err(error) => {
                for op in ops {
                    self.ctx.recorder().complete(op, outcome_of(&error), Response::None);
                }
                Err(error)
            }
        }
    }
}

/// The outcome a settle's result stands for, recorded with no response.
fn verdict<T>(result: Result<T>) -> (Outcome, Response, Result<T>) {
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(error) => outcome_of(error),
    };
    (outcome, Response::None, result)
}

impl RecordedStore {
    /// Records one lease call (`job_lease` or `group_lease`): its invoke, then the jobs it
    /// handed out, each noted as a delivery for the faults that act on acks.
    async fn lease_recorded(
        &self,
        options: LeaseOptions,
        call: impl std::future::Future<Output = Result<Vec<LeasedJob>>>,
    ) -> Result<Vec<LeasedJob>> {
        let request = Request::Lease {
            max: options.max_jobs,
            visibility_timeout_ms: options.visibility_timeout_ms.unwrap_or(self.ctx.visibility_timeout_ms()),
        };
        let op = self.ctx.recorder().invoke(self.process, request);
        let jobs = match call.await {
            Ok(jobs) => jobs,
            Err(error) => {
                self.ctx.recorder().complete(op, outcome_of(&error), Response::None);
                if is_fatal(&error) {
                    self.ctx.fail(format!("the target refused a lease: {error}"));
                }
                return Err(error);
            }
        };
        let mut leases = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let Some(value) = value_of(&job.payload) else {
                self.ctx.fail(format!("job {} carries a payload verify never wrote", job.id));
                continue;
            };
            let token = job.lease_token.to_string();
            let expires = job.lease_expires_at.as_millis();
            self.ctx.deliveries().leased(
                token.clone(),
                Leased { job_id: job.id.get(), value, attempt: job.attempt, lease_expires_at_ms: expires },
            );
            leases.push(Lease {
                job_id: job.id.get(),
                value,
                lease_token: token,
                attempt: job.attempt,
                lease_expires_at_ms: expires,
            });
        }
        self.ctx.recorder().complete(op, Outcome::Ok, Response::Leased { jobs: leases });
        Ok(jobs)
    }
}

#[async_trait]
impl Store for RecordedStore {
    /// A pipeline stage's commit (the runtime's: one ack, the outputs, a commit id from the
    /// lease), recorded as one op. A crashed delivery's never leaves; `drop-ack` drops the reply
    /// of the first one sent for a lease after it applied, so the runtime sends it again and the
    /// target must replay it.
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let [lease] = commit.ack.as_slice() else {
            // Not the runtime's commit of a job's outputs: nothing of verify's, passed through.
            return self.ctx.target().commit(commit).await;
        };
        let lease = *lease;
        if !self.settles_pass(&lease) {
            return Err(cut_off());
        }
        let token = lease.lease_token.to_string();
        let first = self.ctx.deliveries().first_commit(&token);
        let op = self
            .ctx
            .recorder()
            .invoke(self.process, Request::Commit { job_id: lease.id.get(), lease_token: token.clone() });
        match self.ctx.target().commit(commit).await {
            Ok(outcome) => {
                let leased = self.ctx.deliveries().get(&token);
                if first && leased.is_some_and(|l| self.ctx.drops_ack(l.value, l.attempt)) {
                    self.ctx.recorder().complete(op, Outcome::Unknown, Response::None);
                    return Err(Error::Unavailable("verify: the commit's reply was dropped".into()));
                }
                self.ctx.recorder().complete(op, Outcome::Ok, Response::Committed { replayed: outcome.replayed });
                self.ctx.settled();
                Ok(outcome)
            }
            Err(error) => {
                self.ctx.recorder().complete(op, outcome_of(&error), Response::None);
                if is_fatal(&error) {
                    self.ctx.fail(format!("the target refused a commit: {error}"));
                }
                Err(error)
            }
        }
    }
    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        self.ctx.target().producer_register(producer).await
    }
    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        self.ctx.target().producer_get(producer).await
    }
    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        self.ctx.target().schedule_delete(name).await
    }
    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        self.ctx.target().schedule_get(name).await
    }
    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        self.ctx.target().schedule_list().await
    }
    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        self.ctx.target().schedule_pause(name).await
    }
    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        self.ctx.target().schedule_resume(name).await
    }
    async fn schedule_tick(&self) -> Result<TickReport> {
        self.ctx.target().schedule_tick().await
    }
    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        self.ctx.target().schedule_upsert(name, spec).await
    }
    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        self.ctx.target().dead_list(queue, page).await
    }
    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        self.ctx.target().dead_purge(queue).await
    }
    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<onceq_core::Redriven> {
        self.ctx.target().dead_redrive(queue, redrive).await
    }
    async fn redrive_get(&self, id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
        self.ctx.target().redrive_get(id).await
    }
    async fn redrive_list(&self) -> Result<Vec<onceq_core::redrive::PacedRedrive>> {
        self.ctx.target().redrive_list().await
    }
    async fn redrive_start(
        &self,
        queue: &QueueName,
        redrive: Redrive,
        rate_per_second: u32,
    ) -> Result<onceq_core::redrive::PacedRedrive> {
        self.ctx.target().redrive_start(queue, redrive, rate_per_second).await
    }
    async fn redrive_stop(&self, id: onceq_core::RedriveId) -> Result<onceq_core::redrive::PacedRedrive> {
        self.ctx.target().redrive_stop(id).await
    }
    async fn redrive_tick(&self) -> Result<u64> {
        self.ctx.target().redrive_tick().await
    }

    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        let store = self.ctx.target().clone();
        self.forward(
            acks,
            |lease| self.settles_pass(lease),
            |lease| Request::Ack { job_id: lease.id.get(), lease_token: lease.lease_token.to_string() },
            |sent| async move { store.job_ack(&sent).await },
            |lease, result| {
                let leased = self.ctx.deliveries().get(&lease.lease_token.to_string());
                if leased.is_some_and(|l| self.ctx.drops_ack(l.value, l.attempt)) {
                    let dropped = Err(Error::Unavailable("verify: the ack's reply was dropped".into()));
                    return (Outcome::Unknown, Response::None, dropped);
                }
                if result.is_ok() {
                    self.ctx.settled();
                }
                verdict(result)
            },
        )
        .await
    }

    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        self.ctx.target().job_enqueue(queue, jobs).await
    }

    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        let store = self.ctx.target().clone();
        self.forward(
            extends,
            |e| self.ctx.deliveries().cut_of(&e.lease_token.to_string()).is_none(),
            |e| Request::Extend {
                job_id: e.id.get(),
                lease_token: e.lease_token.to_string(),
                visibility_timeout_ms: e.visibility_timeout_ms,
            },
            |sent| async move { store.job_extend(&sent).await },
            |_, result| match result {
                Ok(at) => (Outcome::Ok, Response::Extended { lease_expires_at_ms: at.as_millis() }, Ok(at)),
                Err(error) => (outcome_of(&error), Response::None, Err(error)),
            },
        )
        .await
    }

    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        let store = self.ctx.target().clone();
        self.forward(
            fails,
            |f| self.settles_pass(&LeaseRef { id: f.id, lease_token: f.lease_token }),
            |f| Request::Fail { job_id: f.id.get(), lease_token: f.lease_token.to_string() },
            |sent| async move { store.job_fail(&sent).await },
            |_, result| verdict(result),
        )
        .await
    }

    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        self.ctx.target().job_cancel(id).await
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.ctx.target().job_delete(id).await
    }

    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        self.ctx.target().job_kill(id, error).await
    }

    async fn job_get(&self, id: JobId) -> Result<Job> {
        self.ctx.target().job_get(id).await
    }

    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        let target = self.ctx.target().clone();
        self.lease_recorded(options, async move { target.job_lease(queue, options).await }).await
    }

    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        self.ctx.target().group_get(queue, group).await
    }
    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        self.ctx.target().group_heartbeat(queue, group, member).await
    }
    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        self.ctx.target().group_join(queue, group, options).await
    }
    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        let target = self.ctx.target().clone();
        self.lease_recorded(options, async move { target.group_lease(queue, group, member, options).await }).await
    }
    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        self.ctx.target().group_leave(queue, group, member).await
    }
    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        self.ctx.target().group_list(queue).await
    }

    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        let store = self.ctx.target().clone();
        self.forward(
            nacks,
            |n| self.settles_pass(&LeaseRef { id: n.id, lease_token: n.lease_token }),
            |n| Request::Nack { job_id: n.id.get(), lease_token: n.lease_token.to_string() },
            |sent| async move { store.job_nack(&sent).await },
            |_, result| verdict(result),
        )
        .await
    }

    async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>> {
        let store = self.ctx.target().clone();
        self.forward(
            releases,
            |r| self.settles_pass(&LeaseRef { id: r.id, lease_token: r.lease_token }),
            |r| Request::Release { job_id: r.id.get(), lease_token: r.lease_token.to_string() },
            |sent| async move { store.job_release(&sent).await },
            |_, result| verdict(result),
        )
        .await
    }

    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        self.ctx.target().queue_delete(queue).await
    }
    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        self.ctx.target().queue_get(queue).await
    }
    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        self.ctx.target().queue_list().await
    }
    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        self.ctx.target().queue_pause(queue).await
    }
    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        self.ctx.target().queue_resume(queue).await
    }
    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        self.ctx.target().queue_upsert(queue, patch).await
    }
}

/// The idempotency store of verify's workers: what a crashed worker would never have sent is
/// dropped (its claim's owner ends with the lease token).
pub struct CutIdempotency {
    inner: Arc<dyn IdempotencyStore>,
    deliveries: Arc<Deliveries>,
}

impl CutIdempotency {
    /// Wraps the target's idempotency store.
    pub fn new(inner: Arc<dyn IdempotencyStore>, deliveries: Arc<Deliveries>) -> Self {
        CutIdempotency { inner, deliveries }
    }

    fn cut_of(&self, owner: &str) -> Option<Cut> {
        let token = owner.rsplit('/').next().unwrap_or(owner);
        self.deliveries.cut_of(token)
    }
}

#[async_trait]
impl IdempotencyStore for CutIdempotency {
    async fn idempotency_begin(&self, begin: Begin) -> Result<BeginOutcome> {
        self.inner.idempotency_begin(begin).await
    }
    async fn idempotency_complete(&self, complete: Complete) -> Result<()> {
        if self.cut_of(&complete.owner) == Some(Cut::Crashed) {
            return Err(cut_off());
        }
        self.inner.idempotency_complete(complete).await
    }
    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        if matches!(self.cut_of(owner), Some(Cut::Crashed | Cut::CrashedAfterComplete)) {
            return Err(cut_off());
        }
        self.inner.idempotency_release(key, owner).await
    }
}
