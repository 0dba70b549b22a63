//! [`Inspect`]: what an operator's view reads beside the seam — a queue's jobs in one state, a
//! page at a time, the job a dedup id names, and an idempotency key's record.
//!
//! A capability of its own, not part of [`Store`](crate::Store): the embedded and PostgreSQL
//! stores have it (the dashboard reads through it); a client of the HTTP API does not.
//! Every read is bounded: a page reads at most `limit + 1` jobs, through an index on
//! (queue, state, id), so a page never scans jobs it does not show.

use async_trait::async_trait;

use crate::limits::JOB_PAGE_MAX;
use crate::{Error, Job, JobId, JobState, QueueName, Result, Timestamp};

/// One page request of a queue's jobs in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPage {
    /// The state the jobs are in.
    pub state: JobState,
    /// Start after this id (exclusive); `None` starts at the lowest id.
    pub after: Option<JobId>,
    /// Most jobs on the page, 1 to [`JOB_PAGE_MAX`].
    pub limit: u32,
}

impl JobPage {
    /// Checks the page's limit.
    pub fn validate(&self) -> Result<()> {
        if !(1..=JOB_PAGE_MAX).contains(&self.limit) {
            return Err(Error::invalid(format!("limit is {}; it must be between 1 and {JOB_PAGE_MAX}", self.limit)));
        }
        Ok(())
    }
}

/// One page of jobs, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Pass as `after` for the next page; `None` when this was the last. (Not always the last
    /// job's id: a page that ended short at its store's bound gives where it stopped.)
    pub next: Option<JobId>,
}

/// An idempotency key's record as stored (`onceq_core::idempotency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key.
    pub key: String,
    /// Whether the effect was applied and its result recorded (else a claim is in progress).
    pub completed: bool,
    /// Who claimed it (and completed it, when completed).
    pub owner: String,
    /// When the claim (in progress) or the record (completed) expires; a record past it is
    /// gone for `begin`, and swept later.
    pub until: Timestamp,
    /// The recorded result, once completed.
    pub result: Option<Vec<u8>>,
}

/// Reads for an operator's view; see the module docs.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// The job that `dedup_id` names in `queue` while its dedup entry lasts (the queue's
    /// `dedup_window_ms` after the enqueue); `None` when no entry holds it. The job itself may
    /// be gone (acked) while its entry lasts. An unknown queue is [`Error::QueueNotFound`].
    async fn job_by_dedup(&self, queue: &QueueName, dedup_id: &str) -> Result<Option<JobId>>;

    /// A page of `queue`'s jobs in `page.state`, by id. A store may bound the rows one page
    /// reads: a page may then hold fewer jobs than `limit`, even none, with a `next` to go on
    /// from (the embedded store walks at most 100,000 ids for a page of ready or leased jobs,
    /// which no index lists by queue and id). An unknown queue is [`Error::QueueNotFound`].
    async fn job_page(&self, queue: &QueueName, page: JobPage) -> Result<JobList>;

    /// The record of idempotency key `key` as stored, expired or not; `None` when there is none.
    async fn idempotency_get(&self, key: &str) -> Result<Option<IdempotencyRecord>>;
}

#[async_trait]
impl<S: Inspect + ?Sized> Inspect for std::sync::Arc<S> {
    async fn job_by_dedup(&self, queue: &QueueName, dedup_id: &str) -> Result<Option<JobId>> {
        (**self).job_by_dedup(queue, dedup_id).await
    }

    async fn job_page(&self, queue: &QueueName, page: JobPage) -> Result<JobList> {
        (**self).job_page(queue, page).await
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<IdempotencyRecord>> {
        (**self).idempotency_get(key).await
    }
}
