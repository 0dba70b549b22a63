//! The one error type of the seam, and its portable kinds.

use crate::{JobId, QueueName, RedriveId};

/// Result of a seam operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a caller can react to.
///
/// Every backend maps its own failures onto these variants, the way sqlx maps a driver's
/// errors onto `DatabaseError::kind()`. The HTTP layer maps [`ErrorKind`] onto status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or a value is outside its limit. Nothing was changed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A payload or body is over its size limit. Nothing was changed.
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// The queue does not exist.
    #[error("queue '{0}' not found")]
    QueueNotFound(QueueName),
    /// The schedule does not exist.
    #[error("schedule '{0}' not found")]
    ScheduleNotFound(String),
    /// The paced redrive does not exist.
    #[error("redrive {0} not found")]
    RedriveNotFound(RedriveId),
    /// The job does not exist: it was acked, deleted, purged, deleted with its queue, or never existed.
    #[error("job {0} not found (acked, deleted, purged, or never existed)")]
    JobNotFound(JobId),
    /// The token is not the job's current lease: the lease expired, or the job was leased again,
    /// settled, or dead-lettered. Nothing was changed (Invariant 3).
    #[error("lease lost on job {0}: the token is not the job's current lease (it expired, or the job was settled or leased again)")]
    LeaseLost(JobId),
    /// The job was cancelled while leased (`POST /v1/jobs/{id}/cancel`): an extend of its lease
    /// is refused with this, and the lease stays as it was. Its holder should stop the handler:
    /// an ack still settles the job (the work was done), and any other end of the lease (nack,
    /// release, fail, expiry) ends it `cancelled`. It never runs again.
    #[error("job {0} was cancelled: stop its handler; an ack still settles it, any other end of its lease leaves it cancelled")]
    JobCancelled(JobId),
    /// Some of a commit's leases are not current (expired, settled, or leased again): nothing
    /// of the commit applied. Lists those jobs, ascending.
    #[error("lease lost on jobs {}: nothing of the commit applied (each token is not its job's current lease)", list(.0))]
    LeasesLost(Vec<JobId>),
    /// A producer instance whose epoch a newer registration of the same producer replaced:
    /// nothing was changed, and it must stop (its successor owns the producer's work).
    #[error("fenced: {0}")]
    Fenced(String),
    /// The request conflicts with the current state (e.g. an idempotency key held elsewhere).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A change of a queue's ordering or partition count while it holds jobs (their keys' order
    /// and partitions were decided under the old layout). Nothing was changed.
    #[error("queue not empty: {0}")]
    QueueNotEmpty(String),
    /// The consumer-group member is unknown: it never joined, left, or its session expired.
    /// It must join again (and gets new partitions).
    #[error("not a member: {0}")]
    NotMember(String),
    /// A limit of the queue refused the request (an enqueue past `max_depth`): nothing was
    /// changed; retry after `retry_after_ms`, with backoff.
    #[error("rate limited: {message} (retry after {retry_after_ms} ms)")]
    RateLimited {
        /// What was refused and why.
        message: String,
        /// How long to wait before retrying, in milliseconds.
        retry_after_ms: u64,
    },
    /// The store cannot serve now (shutting down, unreachable); retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The store failed or its data cannot be used (I/O error, unknown version).
    #[error("storage error: {0}")]
    Storage(String),
    /// The store's data is damaged (a page that does not read back as written). The store stops
    /// serving: retrying cannot help; restore the data from a backup.
    #[error("database corrupt: {0}")]
    Corrupt(String),
}

/// The portable kind of an [`Error`]; the HTTP API's error codes are these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// See [`Error::InvalidRequest`].
    InvalidRequest,
    /// See [`Error::PayloadTooLarge`].
    PayloadTooLarge,
    /// See [`Error::QueueNotFound`], [`Error::JobNotFound`] and [`Error::ScheduleNotFound`].
    NotFound,
    /// See [`Error::LeaseLost`].
    LeaseLost,
    /// See [`Error::JobCancelled`].
    JobCancelled,
    /// See [`Error::Conflict`].
    Conflict,
    /// See [`Error::QueueNotEmpty`].
    QueueNotEmpty,
    /// See [`Error::NotMember`].
    NotMember,
    /// See [`Error::Fenced`].
    Fenced,
    /// See [`Error::RateLimited`].
    RateLimited,
    /// See [`Error::Unavailable`].
    Unavailable,
    /// See [`Error::Storage`].
    Storage,
    /// See [`Error::Corrupt`].
    Corrupt,
}

impl Error {
    /// The portable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Error::PayloadTooLarge(_) => ErrorKind::PayloadTooLarge,
            Error::QueueNotFound(_)
            | Error::JobNotFound(_)
            | Error::ScheduleNotFound(_)
            | Error::RedriveNotFound(_) => ErrorKind::NotFound,
            Error::LeaseLost(_) | Error::LeasesLost(_) => ErrorKind::LeaseLost,
            Error::JobCancelled(_) => ErrorKind::JobCancelled,
            Error::Fenced(_) => ErrorKind::Fenced,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::QueueNotEmpty(_) => ErrorKind::QueueNotEmpty,
            Error::NotMember(_) => ErrorKind::NotMember,
            Error::RateLimited { .. } => ErrorKind::RateLimited,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Storage(_) => ErrorKind::Storage,
            Error::Corrupt(_) => ErrorKind::Corrupt,
        }
    }

    /// What went wrong, without the kind's prefix (`"x" is not a lease token` where the error
    /// reads `invalid request: "x" is not a lease token`): for a message that already says its
    /// kind, such as a serde error or a batch item's `item 3: ...`.
    pub fn detail(&self) -> String {
        match self {
            Error::InvalidRequest(m)
            | Error::PayloadTooLarge(m)
            | Error::Conflict(m)
            | Error::QueueNotEmpty(m)
            | Error::NotMember(m)
            | Error::Fenced(m)
            | Error::Unavailable(m)
            | Error::Storage(m)
            | Error::Corrupt(m)
            | Error::RateLimited { message: m, .. } => m.clone(),
            other => other.to_string(),
        }
    }

    /// How long to wait before retrying an [`Error::RateLimited`] (`None` for any other error).
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        }
    }

    /// The jobs of an [`Error::LeasesLost`] (empty for any other error).
    pub fn stale_jobs(&self) -> &[JobId] {
        match self {
            Error::LeasesLost(jobs) => jobs,
            _ => &[],
        }
    }

    /// Shorthand for [`Error::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidRequest(message.into())
    }

    /// The refusal of an operator's delete or kill (`what`: "deleted") of job `id`, which is
    /// leased: the same words on every store.
    pub fn leased_job(id: JobId, what: &str) -> Self {
        Error::Conflict(format!(
            "job {id} is leased: it is not {what} under a running handler; cancel it (its holder's next extend \
             learns of it), or let its holder settle it"
        ))
    }

    /// The refusal of an operator's kill of job `id`, which was cancelled.
    pub fn cancelled_job_not_failed(id: JobId) -> Self {
        Error::Conflict(format!("job {id} is cancelled: it ended already, and is not failed"))
    }
}

/// `1, 2, 3` for an error message.
fn list(jobs: &[JobId]) -> String {
    jobs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
