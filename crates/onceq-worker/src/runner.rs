//! One queue's runner: the fetch loop and a task per job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::commit::{Commit, CommitEnqueue, CommitId};
use onceq_core::limits::{LEASE_BATCH_MAX, VISIBILITY_TIMEOUT_MS_MAX, VISIBILITY_TIMEOUT_MS_MIN, WAIT_MS_MAX};
use onceq_core::{Error, IdempotencyStore, LeaseOptions, LeasedJob, QueueName, Store, StoreExt};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::acker::AckRequest;
use crate::gate::{claim_owner, Claim, Decision, EffectivelyOnce, Gate};
use crate::group::{AskedView, GroupOptions, InFlight, Membership};
use crate::handler::{ErasedHandler, JobContext, Outcome, Produced};
use crate::report::Shared;
use onceq_core::metrics::HANDLER_DURATION;

/// Shortest pause between lease attempts after the store failed; doubles up to the longest.
const ERROR_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between lease attempts after the store failed.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How many times the commit of a job's ack and outputs is sent while the store cannot answer
/// (the same commit id each time, so a try that applied is replayed, not repeated).
const COMMIT_TRIES_MAX: u32 = 5;
/// On shutdown, how long a lease call already under way may take to finish.
const IN_FLIGHT_LEASE_GRACE: Duration = Duration::from_millis(100);
/// Shortest heartbeat interval.
const HEARTBEAT_MIN: Duration = Duration::from_millis(10);

/// How one queue is worked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Jobs run at once (default 10).
    pub concurrency: usize,
    /// Most jobs leased per call, up to the free slots (default: the concurrency, at most 1000).
    pub prefetch: u32,
    /// Lease length asked for each lease and heartbeat (default 30 s).
    pub visibility_timeout: Duration,
    /// The lease is extended every `visibility_timeout × heartbeat_fraction` while the handler
    /// runs (default 1/3, so two heartbeats can fail before the lease expires).
    pub heartbeat_fraction: f64,
    /// Hard deadline per job: then the job's cancellation token fires (default: none).
    pub deadline: Option<Duration>,
    /// After the deadline, how long the handler may take to notice before it is dropped and the
    /// job retried (default 1 s).
    pub deadline_grace: Duration,
    /// Long-poll wait of each lease call (default 5 s).
    pub poll_wait: Duration,
    /// Guard the handler's effect with an idempotency store (effectively-once).
    pub effectively_once: Option<EffectivelyOnce>,
    /// Work the queue (a `per_key` one) as a member of this consumer group: lease only from the
    /// partitions the group gives this worker, heartbeat the membership, call the partition
    /// hooks, leave on shutdown (see [`GroupOptions`]). Default: none, every partition is leased.
    pub group: Option<GroupOptions>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            concurrency: 10,
            prefetch: 10,
            visibility_timeout: Duration::from_secs(30),
            heartbeat_fraction: 1.0 / 3.0,
            deadline: None,
            deadline_grace: Duration::from_secs(1),
            poll_wait: Duration::from_secs(5),
            effectively_once: None,
            group: None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl QueueOptions {
    /// Options with this concurrency (and prefetch), the rest at defaults.
    pub fn concurrency(concurrency: usize) -> Self {
        let prefetch = u32::try_from(concurrency).unwrap_or(LEASE_BATCH_MAX).min(LEASE_BATCH_MAX);
        QueueOptions { concurrency, prefetch, ..QueueOptions::default() }
    }

    /// Guards the handler with an idempotency store.
    pub fn effectively_once(mut self, guard: EffectivelyOnce) -> Self {
        self.effectively_once = Some(guard);
        self
    }

    /// Works the queue as a member of a consumer group.
    pub fn group(mut self, group: GroupOptions) -> Self {
        self.group = Some(group);
        self
    }

    /// Sets the visibility timeout.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Sets the hard deadline per job.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the long-poll wait.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    pub(crate) fn validate(&self) -> onceq_core::Result<()> {
        if self.concurrency == 0 {
            return Err(Error::invalid("concurrency must be at least 1"));
        }
        if !(1..=LEASE_BATCH_MAX).contains(&self.prefetch) {
            return Err(Error::invalid(format!("prefetch must be between 1 and {LEASE_BATCH_MAX}")));
        }
        let vt = millis(self.visibility_timeout);
        if !(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX).contains(&vt) {
            return Err(Error::invalid(format!(
                "visibility_timeout must be between {VISIBILITY_TIMEOUT_MS_MIN} and {VISIBILITY_TIMEOUT_MS_MAX} ms"
            )));
        }
        if !(self.heartbeat_fraction > 0.0 && self.heartbeat_fraction < 1.0) {
            return Err(Error::invalid("heartbeat_fraction must be strictly between 0 and 1"));
        }
        if millis(self.poll_wait) > WAIT_MS_MAX {
            return Err(Error::invalid(format!("poll_wait must be at most {WAIT_MS_MAX} ms")));
        }
        if let Some(once) = &self.effectively_once {
            once.gate()?;
            // A claim that ends while the handler may still run lets another delivery claim the
            // key and run the effect again.
            if let Some(deadline) = self.deadline {
                let longest = deadline.saturating_add(self.deadline_grace);
                if longest >= once.claim_ttl {
                    return Err(Error::invalid(format!(
                        "the effectively-once claim ({:?}) must outlast the handler's deadline and its grace \
                         ({deadline:?} + {:?}): past the claim another delivery may run the effect again; \
                         lengthen the claim or shorten the deadline",
                        once.claim_ttl, self.deadline_grace
                    )));
                }
            }
        }
        Ok(())
    }
}

/// How a handler run ended.
enum End {
    Outcome(Outcome),
    Panicked(String),
    DeadlineExceeded,
    /// The worker's shutdown grace ran out.
    Abandoned,
}

pub(crate) struct Runner<S: ?Sized> {
    pub store: Arc<S>,
    pub queue: QueueName,
    pub options: QueueOptions,
    /// The gate of `options.effectively_once`, made when the worker was built.
    pub gate: Option<Gate>,
    pub handler: ErasedHandler,
    pub shared: Arc<Shared>,
    /// The queue's membership in its consumer group, if `options.group` names one.
    pub membership: Option<Arc<Membership<S>>>,
}

impl<S: Store + ?Sized + 'static> Runner<S> {
    /// Leases and runs jobs until the worker stops, then waits for its jobs to finish.
    pub(crate) async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let mut jobs: JoinSet<()> = JoinSet::new();
        let mut backoff = ERROR_BACKOFF_MIN;
        let stop = self.shared.stop.clone();
        // Fires once every job of this runner is settled: the membership may then leave.
        let drained = CancellationToken::new();
        let membership = self.membership.clone().map(|m| tokio::spawn(m.run(drained.clone())));
        loop {
            while jobs.try_join_next().is_some() {}
            let member = match &self.membership {
                Some(membership) => match membership.member(&stop).await {
                    Some(member) => Some(member),
                    None => break,
                },
                None => None,
            };
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
                () = stop.cancelled() => break,
            };
            let mut permits = vec![first];
            while permits.len() < self.options.prefetch as usize {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let options = LeaseOptions {
                max_jobs: permits.len() as u32,
                visibility_timeout_ms: Some(millis(self.options.visibility_timeout)),
                wait_ms: millis(self.options.poll_wait),
            };
            let this = self.clone();
            let mut lease = Box::pin(async move {
                match (&this.membership, member) {
                    (Some(membership), Some(member)) => {
                        this.store.group_lease(&this.queue, membership.group(), &member, options).await
                    }
                    _ => this.store.job_lease(&this.queue, options).await,
                }
            });
            let leased = tokio::select! {
                leased = &mut lease => leased,
                () = stop.cancelled() => {
                    // A waiting lease call holds nothing and is dropped safely; one caught while
                    // the store hands out jobs would strand them until their lease expires. So it
                    // gets a moment to finish, and whatever it got is given back.
                    if let Ok(Ok(leased)) = tokio::time::timeout(IN_FLIGHT_LEASE_GRACE, &mut lease).await {
                        for job in leased {
                            self.give_back(&job, None).await;
                        }
                    }
                    break;
                }
            };
            match leased {
                Ok(leased) => {
                    backoff = ERROR_BACKOFF_MIN;
                    // Counted in flight at once, so that a revocation waits for them.
                    let in_flight: Vec<Option<InFlight>> = match &self.membership {
                        Some(membership) => leased.iter().map(|job| membership.admit(job.partition)).collect(),
                        None => Vec::new(),
                    };
                    // `group_lease` hands over partitions too: a job may come from one whose
                    // `on_assigned` has not run yet. A heartbeat now learns of it; meanwhile
                    // those jobs wait in their own tasks and the others start, so that a
                    // partition gained never stalls the partitions kept.
                    let asked = self.membership.as_ref().and_then(|membership| {
                        (!membership.knows(leased.iter().map(|job| job.partition))).then(|| membership.ask_for_view())
                    });
                    let mut in_flight = in_flight.into_iter();
                    for (job, permit) in leased.into_iter().zip(permits) {
                        let this = self.clone();
                        let counted = in_flight.next().flatten();
                        let asked = asked.clone();
                        jobs.spawn(async move { this.run_job(job, permit, counted, asked).await });
                    }
                }
                Err(Error::NotMember(_)) if self.membership.is_some() => {
                    // Expired: the membership task learns it too and joins again.
                    drop(permits);
                    if let Some(membership) = &self.membership {
                        membership.refresh(&stop).await;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, queue = %self.queue, "leasing failed; retrying after {backoff:?}");
                    drop(permits);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(ERROR_BACKOFF_MAX);
                }
            }
        }
        while jobs.join_next().await.is_some() {}
        drained.cancel();
        if let Some(membership) = membership {
            if let Err(error) = membership.await {
                tracing::error!(%error, queue = %self.queue, "the group membership task failed");
            }
        }
    }

    /// Releases a job without counting the attempt (shutdown, deferral, store down).
    async fn give_back(&self, job: &LeasedJob, delay: Option<Duration>) {
        match self.store.release(job.lease(), delay.map(millis)).await {
            Ok(()) => self.shared.count(|r| r.released += 1),
            Err(error) => {
                // Its lease expires and redelivers it.
                tracing::warn!(%error, job = %job.id, "could not release a job");
            }
        }
    }

    /// Runs one job and settles it. `counted` is its place among the jobs in flight of its
    /// group partition (queues worked in a group): dropped when the job is settled, and waited
    /// on before each settle while the partition is being revoked.
    async fn run_job(
        &self,
        job: LeasedJob,
        _slot: OwnedSemaphorePermit,
        mut counted: Option<InFlight>,
        asked: Option<AskedView>,
    ) {
        self.shared.count(|r| r.leased += 1);
        if let (Some(membership), Some(asked)) = (&self.membership, &asked) {
            membership.until_known(job.partition, asked, &self.shared.stop).await;
        }
        let revoked = self.membership.as_ref().is_some_and(|m| !m.may_start(job.partition));
        if self.shared.stop.is_cancelled() || revoked {
            ready_to_settle(&mut counted).await;
            self.give_back(&job, None).await;
            return;
        }
        let mut guard: Option<(&Gate, &dyn IdempotencyStore, Claim)> = None;
        if let (Some(gate), Some(once)) = (&self.gate, &self.options.effectively_once) {
            let mut claims: &dyn IdempotencyStore = &*once.store;
            let key = gate.key(&job.queue, job.id, job.dedup_id.as_deref());
            let owner = claim_owner(&self.shared.worker_id, job.lease_token);
            match gate.begin(&mut claims, &job.queue, key, owner).await {
                Ok(Decision::Run(claim)) => guard = Some((gate, claims, claim)),
                Ok(Decision::AlreadyDone) => {
                    self.shared.count(|r| r.duplicates_skipped += 1);
                    ready_to_settle(&mut counted).await;
                    self.ack(&job).await;
                    return;
                }
                Ok(Decision::Defer { after }) => {
                    self.shared.count(|r| r.deferred += 1);
                    ready_to_settle(&mut counted).await;
                    self.give_back(&job, Some(after)).await;
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.id, "could not begin the job's idempotency key");
                    ready_to_settle(&mut counted).await;
                    self.settle(&job, End::Outcome(crate::gate::begin_failed(&error))).await;
                    return;
                }
            }
        }
        let cancellation = self.shared.abandon.child_token();
        let context = JobContext {
            id: job.id,
            queue: job.queue.clone(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            lease_token: job.lease_token,
            dedup_id: job.dedup_id.clone(),
            headers: job.headers.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: job.partition,
            enqueued_at: job.enqueued_at,
            lease_expires_at: job.lease_expires_at,
            worker_id: self.shared.worker_id.clone(),
            cancellation: cancellation.clone(),
            produced: Produced::default(),
        };
        let produced = context.produced.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            job.clone(),
            self.options.visibility_timeout,
            self.options.heartbeat_fraction,
            cancellation.clone(),
            Ended { lost: lost.clone(), cancelled: cancelled.clone() },
        ));
        let started = std::time::Instant::now();
        let end = self.run_handler(context, &job, &cancellation).await;
        metrics::histogram!(HANDLER_DURATION, "queue" => job.queue.to_string()).record(started.elapsed().as_secs_f64());
        // The heartbeat goes on while the gate records the effect: a `complete` sent again
        // while the store is unreachable must not cost the lease meanwhile.
        if let Some((gate, mut claims, claim)) = guard {
            match &end {
                End::Outcome(outcome @ (Outcome::Done | Outcome::DoneWith(_) | Outcome::Acked)) => {
                    // The effect happened: record it even when the lease is lost, so that the
                    // redelivery the lost lease causes is acked without running it again.
                    let result = match outcome {
                        Outcome::DoneWith(value) => value.clone(),
                        _ => serde_json::Value::Null,
                    };
                    if let Err(error) = gate.complete(&mut claims, &claim, &result).await {
                        // The effect happened but is not recorded: acking still makes it once,
                        // unless the ack is lost too; say so.
                        tracing::warn!(%error, job = %job.id, "could not record the result in the idempotency store");
                    }
                }
                _ => gate.release(&mut claims, &claim).await,
            }
        }
        // The heartbeat goes on while a revocation of the job's partition holds the settle back.
        ready_to_settle(&mut counted).await;
        heartbeat.abort();
        if cancelled.load(Ordering::Acquire) {
            // The settle below ends the job: an ack (the handler finished the work anyway)
            // settles it, anything else leaves it cancelled.
            self.shared.count(|r| r.cancelled += 1);
        }
        let lease_lost = lost.load(Ordering::Acquire);
        // A handler's own ack was fenced by the lease token and succeeded, so it stands even when
        // a heartbeat meanwhile found the job gone: it was gone because it was acked.
        if lease_lost && !matches!(end, End::Outcome(Outcome::Acked)) {
            // Someone else may hold the job now: settle nothing of theirs.
            self.shared.count(|r| r.lease_lost += 1);
            return;
        }
        let outputs = std::mem::take(&mut *produced.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        // (A runtime that committed them itself took them already: see `take_produced`.)
        if !outputs.is_empty() && matches!(end, End::Outcome(Outcome::Done | Outcome::DoneWith(_))) {
            self.commit_outputs(&job, outputs).await;
            return;
        }
        self.settle(&job, end).await;
    }

    /// Acks `job` and enqueues what its handler produced in one commit, named after the lease
    /// so that sending it again (after a reply lost to a store that could not answer) replays
    /// it instead of applying it twice.
    async fn commit_outputs(&self, job: &LeasedJob, outputs: Vec<CommitEnqueue>) {
        let jobs: u64 = outputs.iter().map(|e| e.jobs.len() as u64).sum();
        let commit_id = match CommitId::new(format!("lease:{}:{}", job.id, job.lease_token)) {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, job = %job.id, "cannot name the commit of a job's outputs");
                return;
            }
        };
        let commit =
            Commit { commit_id: Some(commit_id), ack: vec![job.lease()], enqueue: outputs, ..Commit::default() };
        let mut backoff = ERROR_BACKOFF_MIN;
        for attempt in 1..=COMMIT_TRIES_MAX {
            match self.store.commit(commit.clone()).await {
                Ok(_) => {
                    self.shared.count(|r| {
                        r.acked += 1;
                        r.produced += jobs;
                    });
                    return;
                }
                Err(Error::LeasesLost(_)) => {
                    // Nothing applied: the job runs again elsewhere and produces again.
                    self.shared.count(|r| r.lease_lost += 1);
                    return;
                }
                Err(Error::RateLimited { message, retry_after_ms }) if attempt < COMMIT_TRIES_MAX => {
                    // A queue it enqueues into is full: nothing applied; come back no sooner than
                    // the store asked, with backoff and jitter.
                    let pause = onceq_core::flow::retry_delay(retry_after_ms, attempt, &mut rand::thread_rng());
                    tracing::warn!(job = %job.id, "committing a job's outputs was refused ({message}); trying again after {pause:?}");
                    tokio::time::sleep(pause).await;
                }
                Err(error @ (Error::Unavailable(_) | Error::Storage(_))) if attempt < COMMIT_TRIES_MAX => {
                    tracing::warn!(%error, job = %job.id, "committing a job's outputs failed; trying again after {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ERROR_BACKOFF_MAX);
                }
                Err(error) => {
                    tracing::warn!(%error, job = %job.id, "committing a job's outputs failed; the lease will redeliver the job");
                    return;
                }
            }
        }
    }

    async fn run_handler(&self, context: JobContext, job: &LeasedJob, cancellation: &CancellationToken) -> End {
        let mut handle = tokio::spawn((self.handler)(context, &job.payload));
        let deadline = async {
            match self.options.deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let joined = tokio::select! {
            joined = &mut handle => joined,
            () = deadline => {
                cancellation.cancel();
                match tokio::time::timeout(self.options.deadline_grace, &mut handle).await {
                    Ok(Ok(outcome @ (Outcome::Done | Outcome::DoneWith(_) | Outcome::Acked))) => Ok(outcome),
                    Ok(_) | Err(_) => {
                        handle.abort();
                        return End::DeadlineExceeded;
                    }
                }
            }
            () = self.shared.abandon.cancelled() => {
                match tokio::time::timeout(self.options.deadline_grace, &mut handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        handle.abort();
                        return End::Abandoned;
                    }
                }
            }
        };
        match joined {
            Ok(outcome) => End::Outcome(outcome),
            Err(error) if error.is_panic() => {
                let panic = error.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                End::Panicked(message)
            }
            Err(_) => End::Abandoned,
        }
    }

    async fn ack(&self, job: &LeasedJob) {
        let (done, result) = oneshot::channel();
        if self.shared.acks.send(AckRequest { lease: job.lease(), done }).await.is_err() {
            return;
        }
        match result.await {
            Ok(Ok(())) => self.shared.count(|r| r.acked += 1),
            Ok(Err(Error::LeaseLost(_) | Error::JobNotFound(_))) => self.shared.count(|r| r.lease_lost += 1),
            Ok(Err(error)) => tracing::warn!(%error, job = %job.id, "ack failed; the lease will redeliver the job"),
            Err(_) => {}
        }
    }

    async fn settle(&self, job: &LeasedJob, end: End) {
        let lease = job.lease();
        let result = match end {
            End::Outcome(Outcome::Done | Outcome::DoneWith(_)) => {
                self.ack(job).await;
                return;
            }
            End::Outcome(Outcome::Acked) => {
                self.shared.count(|r| r.acked += 1);
                return;
            }
            End::Outcome(Outcome::Retry { after, reason }) => {
                self.shared.count(|r| r.retried += 1);
                self.store.nack(lease, after.map(millis), Some(&reason)).await.map(drop)
            }
            End::Outcome(Outcome::Release { after }) => {
                self.shared.count(|r| r.released_by_handler += 1);
                self.give_back(job, after).await;
                return;
            }
            End::Outcome(Outcome::Fail { reason }) => {
                self.shared.count(|r| r.failed += 1);
                self.store.fail(lease, &reason).await
            }
            End::Panicked(message) => {
                self.shared.count(|r| r.panicked += 1);
                self.store.nack(lease, None, Some(&format!("the handler panicked: {message}"))).await.map(drop)
            }
            End::DeadlineExceeded => {
                self.shared.count(|r| r.deadline_exceeded += 1);
                let deadline = self.options.deadline.unwrap_or_default();
                self.store
                    .nack(lease, None, Some(&format!("the handler exceeded its deadline of {deadline:?}")))
                    .await
                    .map(drop)
            }
            End::Abandoned => {
                self.give_back(job, None).await;
                return;
            }
        };
        match result {
            Ok(()) => {}
            Err(Error::LeaseLost(_) | Error::JobNotFound(_)) => self.shared.count(|r| r.lease_lost += 1),
            Err(error) => tracing::warn!(%error, job = %job.id, "settling failed; the lease will redeliver the job"),
        }
    }
}

/// Waits, for a job of a group partition being revoked, until its settle may go ahead.
async fn ready_to_settle(counted: &mut Option<InFlight>) {
    if let Some(counted) = counted {
        counted.ready_to_settle().await;
    }
}

/// What a heartbeat learned that ends a job's run.
struct Ended {
    /// The lease is lost (expired, or the job is gone).
    lost: Arc<AtomicBool>,
    /// The job was cancelled (`Store::job_cancel`); the lease is still held.
    cancelled: Arc<AtomicBool>,
}

/// Extends the lease while the handler runs. A refused extension means the lease is lost, or
/// the job was cancelled: the job's cancellation token fires so the handler can stop.
async fn heartbeat<S: Store + ?Sized>(
    store: Arc<S>,
    job: LeasedJob,
    visibility_timeout: Duration,
    fraction: f64,
    cancellation: CancellationToken,
    ended: Ended,
) {
    let every = visibility_timeout.mul_f64(fraction).max(HEARTBEAT_MIN);
    loop {
        tokio::time::sleep(every).await;
        match store.extend(job.lease(), millis(visibility_timeout)).await {
            Ok(_) => {}
            Err(Error::LeaseLost(_) | Error::JobNotFound(_)) => {
                ended.lost.store(true, Ordering::Release);
                cancellation.cancel();
                return;
            }
            Err(Error::JobCancelled(_)) => {
                tracing::info!(job = %job.id, "the job was cancelled: cancelling its handler");
                ended.cancelled.store(true, Ordering::Release);
                cancellation.cancel();
                return;
            }
            Err(error) => tracing::warn!(%error, job = %job.id, "a heartbeat failed; trying again"),
        }
    }
}
