//! What a lease's holder sends to settle or keep its lease: nack, extend, fail, release (ack
//! is a bare [`LeaseRef`](crate::LeaseRef)). Used by the single calls of the seam and by
//! commits alike.

use serde::{Deserialize, Serialize};

use crate::{JobId, LeaseToken, Timestamp};

/// A nack: give the job back to be retried later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The job.
    pub id: JobId,
    /// Its current lease token.
    pub lease_token: LeaseToken,
    /// Run again after this delay; `None` lets the queue's backoff decide.
    pub delay_ms: Option<u64>,
    /// Why the attempt failed; kept in the job's error history.
    pub error: Option<String>,
}

/// What became of a nacked job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum NackOutcome {
    /// It will run again at `run_at`.
    Retrying {
        /// When it is ready again.
        run_at: Timestamp,
    },
    /// Its attempts were exhausted: it is dead.
    Dead,
    /// It had been cancelled while leased (`Store::job_cancel`): it ends `cancelled`, and never
    /// runs again.
    Cancelled,
}

/// An extend: keep my lease for longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extend {
    /// The job.
    pub id: JobId,
    /// Its current lease token.
    pub lease_token: LeaseToken,
    /// The lease now expires this long after the call.
    pub visibility_timeout_ms: u64,
}

/// A fail: give up now and dead-letter the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fail {
    /// The job.
    pub id: JobId,
    /// Its current lease token.
    pub lease_token: LeaseToken,
    /// Why; kept in the job's error history.
    pub error: String,
}

/// A release: end my lease without it counting as an attempt, e.g. a worker shutting down
/// before it ran the job, or deferring a job whose effect another worker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// The job.
    pub id: JobId,
    /// Its current lease token.
    pub lease_token: LeaseToken,
    /// Ready again after this delay (0 or `None`: at once).
    pub delay_ms: Option<u64>,
}
