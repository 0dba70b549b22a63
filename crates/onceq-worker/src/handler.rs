//! What a handler sees ([`JobContext`]) and what it chooses ([`Outcome`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::commit::CommitEnqueue;
use onceq_core::limits::ENQUEUE_BATCH_MAX;
use onceq_core::{Error, Headers, JobId, LeaseRef, LeaseToken, NewJob, QueueName, Timestamp};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// What a handler decided about its job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: the job is acked. In an effectively-once queue, `null` is recorded as its result.
    Done,
    /// Done, with a result recorded in the idempotency store (effectively-once queues) and
    /// returned to any later delivery of the same job instead of running it again.
    DoneWith(serde_json::Value),
    /// Try again later: the job is nacked (after `after`, or the queue's backoff).
    Retry {
        /// Delay before the next attempt; `None` lets the queue's backoff decide.
        after: Option<Duration>,
        /// Why, kept in the job's error history.
        reason: String,
    },
    /// Give up now: the job is dead-lettered with this reason, whatever attempts are left.
    Fail {
        /// Why, kept in the job's error history.
        reason: String,
    },
    /// Done, and already acked by the handler itself: typically inside the database
    /// transaction that committed the job's effects, so that effects and ack commit together
    /// (onceq-postgres's transactional handlers return it). The runtime does not ack the job
    /// again and counts it as acked; an effectively-once guard records `null` as its result.
    ///
    /// Return it only after an ack of this job's lease succeeded and is durable: a job reported
    /// `Acked` that was not acked stays leased until its lease expires, then is redelivered.
    Acked,
    /// Not now, and not a failure: the job is released (its lease ends without counting as an
    /// attempt) and runs again after `after` (at once when `None`). The effectively-once gate
    /// uses it for a job whose key another delivery holds.
    Release {
        /// Delay before the job is ready again.
        after: Option<Duration>,
    },
}

impl Outcome {
    /// Retry after the queue's backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry { after: None, reason: reason.into() }
    }

    /// Retry after `after`.
    pub fn retry_after(after: Duration, reason: impl Into<String>) -> Self {
        Outcome::Retry { after: Some(after), reason: reason.into() }
    }

    /// Snooze: not now, and not a failure. The job runs again after `after` without spending an
    /// attempt (an [`Outcome::Release`] with a delay): for work that waits on something outside
    /// it, such as a rate-limited partner or a record not written yet.
    pub fn snooze(after: Duration) -> Self {
        Outcome::Release { after: Some(after) }
    }

    /// Release the job, to run again after `after`, without counting the attempt.
    pub fn release_for(after: Duration) -> Self {
        Outcome::Release { after: Some(after) }
    }

    /// Dead-letter now.
    pub fn fail(reason: impl Into<String>) -> Self {
        Outcome::Fail { reason: reason.into() }
    }
}

impl<E: std::fmt::Display> From<Result<(), E>> for Outcome {
    /// `Ok` is done; `Err` retries after the queue's backoff, with the error as the reason.
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::retry(e.to_string()),
        }
    }
}

/// What a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job.
    pub id: JobId,
    /// Its queue.
    pub queue: QueueName,
    /// This delivery's attempt (1-based).
    pub attempt: u32,
    /// Attempts allowed before dead-lettering.
    pub max_attempts: u32,
    /// The lease token: a handler can fence its own writes with it (store it beside the effect
    /// and refuse writes from an older token).
    pub lease_token: LeaseToken,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Ordering key. In a `per_key` queue no other job of this key runs until this one is acked
    /// or dead (docs/semantics.md, "Ordering per key"): a handler that retries it holds the key.
    pub ordering_key: Option<String>,
    /// Its partition, in a `per_key` queue (`None` elsewhere).
    pub partition: Option<u32>,
    /// When the job was enqueued.
    pub enqueued_at: Timestamp,
    /// When this delivery's lease expires unless extended (the store's clock), as leased; the
    /// worker's heartbeat extends it while the handler runs.
    pub lease_expires_at: Timestamp,
    /// The worker running it ([`WorkerOptions::worker_id`](crate::WorkerOptions::worker_id)).
    pub worker_id: Arc<str>,
    /// Cancelled when the job's lease is lost (a heartbeat was refused), its deadline passes, or
    /// the worker's shutdown grace runs out. A handler doing long work should watch it.
    pub cancellation: CancellationToken,
    /// What the handler produced, committed with the job's ack ([`JobContext::produce`]).
    pub(crate) produced: Produced,
}

/// The jobs a handler produced, by queue in first-produced order.
pub(crate) type Produced = Arc<Mutex<Vec<CommitEnqueue>>>;

impl JobContext {
    /// The (id, token) pair naming this lease.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef { id: self.id, lease_token: self.lease_token }
    }

    /// Produces `job` into `queue` **with this job's ack**: when the handler returns
    /// [`Outcome::Done`] or [`Outcome::DoneWith`], the worker acks this job and enqueues every
    /// job produced in one commit (`Store::commit`), all or nothing, under a commit id derived
    /// from the lease, so a retry after a lost reply applies nothing twice. A crash before the
    /// commit, a lost lease, or any other outcome commits nothing: the job runs again and
    /// produces again. So each output exists exactly once per successful completion, with no
    /// idempotency key of its own. At most [`ENQUEUE_BATCH_MAX`] jobs per delivery; the queue
    /// name and the job are checked here.
    pub fn produce(&self, queue: &str, job: NewJob) -> onceq_core::Result<()> {
        let queue = QueueName::new(queue)?;
        job.validate()?;
        let mut produced = self.produced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count: usize = produced.iter().map(|e| e.jobs.len()).sum();
        if count >= ENQUEUE_BATCH_MAX {
            return Err(Error::invalid(format!(
                "a delivery produces at most {ENQUEUE_BATCH_MAX} jobs; produce fewer, or enqueue the rest yourself"
            )));
        }
        match produced.iter_mut().find(|e| e.queue == queue) {
            Some(batch) => batch.jobs.push(job),
            None => produced.push(CommitEnqueue { queue, jobs: vec![job] }),
        }
        Ok(())
    }

    /// Takes the jobs produced so far (emptying the list), for a runtime that commits them
    /// itself: `onceq-postgres-worker` commits them in the job's own transaction. A handler has
    /// no use for it; what it takes is not committed by this runtime.
    pub fn take_produced(&self) -> Vec<CommitEnqueue> {
        std::mem::take(&mut *self.produced.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Completes when the job is cancelled (see [`JobContext::cancellation`]).
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }

    /// Whether the job is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }
}

/// A boxed future of an outcome: a handler's run, as middleware sees it.
pub type OutcomeFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Middleware around every handler of a worker (see
/// [`WorkerBuilder::middleware`](crate::WorkerBuilder::middleware)): given the job's context and
/// the handler's run, not yet started, it returns the run to use instead. It may act before and
/// after the run, change its outcome, or not run it at all.
pub type Middleware = Arc<dyn Fn(JobContext, OutcomeFuture) -> OutcomeFuture + Send + Sync>;

/// `handler` with `middleware` around it.
pub(crate) fn wrap(handler: ErasedHandler, middleware: Middleware) -> ErasedHandler {
    Arc::new(move |context: JobContext, payload: &[u8]| -> OutcomeFuture {
        let run = handler(context.clone(), payload);
        middleware(context, run)
    })
}

/// A handler with its payload type erased: it parses the payload itself.
pub(crate) type ErasedHandler = Arc<dyn Fn(JobContext, &[u8]) -> OutcomeFuture + Send + Sync>;

/// Erases the payload type of a typed handler. A payload that does not parse as `T` fails the
/// job at once: retrying the same bytes cannot help.
pub(crate) fn erase<T, F, Fut>(handler: F) -> ErasedHandler
where
    T: DeserializeOwned + Send + 'static,
    F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |context: JobContext, payload: &[u8]| -> OutcomeFuture {
        match serde_json::from_slice::<T>(payload) {
            Ok(value) => {
                let handler = handler.clone();
                Box::pin(async move { handler(context, value).await })
            }
            Err(e) => {
                let reason = format!("the payload does not parse as {}: {e}", std::any::type_name::<T>());
                Box::pin(async move { Outcome::Fail { reason } })
            }
        }
    })
}
