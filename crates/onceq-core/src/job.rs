//! Jobs: reading ids, lease tokens, what producers send, and what consumers and operators see.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::{Error, JobId, QueueName, Result, Timestamp, Unique};

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(|e: crate::Error| serde::de::Error::custom(e.detail()))
    }
}

impl FromStr for JobId {
    type Err = Error;
    /// Only the canonical form: decimal digits, no sign, no leading zero (`+1` and `01` are not
    /// the id `1`), so that one job has one spelling.
    fn from_str(s: &str) -> Result<Self> {
        let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
        canonical.then(|| s.parse::<u64>().ok()).flatten().map(JobId::new).ok_or_else(|| {
            Error::invalid(format!(
                "{s:?} is not a job id: a job id is its decimal digits, with no sign or leading zero"
            ))
        })
    }
}

/// The unguessable id of one lease: 128 random bits from the operating system's CSPRNG.
/// Every ack, nack, extend and fail must present the job's current one (Invariant 3).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken([u8; 16]);

impl LeaseToken {
    /// A fresh random token.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        LeaseToken(bytes)
    }

    /// The token with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        LeaseToken(bytes)
    }

    /// The token's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({self})")
    }
}

impl FromStr for LeaseToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::invalid(format!("{s:?} is not a lease token (32 hex digits)"));
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(LeaseToken(bytes))
    }
}

impl Serialize for LeaseToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LeaseToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(|e: crate::Error| serde::de::Error::custom(e.detail()))
    }
}

/// When a new job becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Ready at once.
    #[default]
    Now,
    /// Ready after this many milliseconds.
    Delay {
        /// The delay, at most [`DELAY_MS_MAX`].
        delay_ms: u64,
    },
    /// Ready at this time (a time in the past means now).
    At(Timestamp),
}

/// Headers of a job: short string pairs, at most [`HEADERS_COUNT_MAX`].
pub type Headers = BTreeMap<String, String>;

/// A job a producer enqueues.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewJob {
    /// Opaque bytes, usually JSON; at most [`PAYLOAD_BYTES_MAX`].
    pub payload: Vec<u8>,
    /// String headers.
    pub headers: Headers,
    /// Higher runs first; between [`PRIORITY_MIN`] and [`PRIORITY_MAX`].
    pub priority: i32,
    /// When it becomes ready.
    pub schedule: Schedule,
    /// Overrides the queue's `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Producer dedup key: within the queue's dedup window, a second enqueue with the same id
    /// returns the first job's id and creates nothing (Invariant 6).
    pub dedup_id: Option<String>,
    /// Ordering key, 1 to [`ORDERING_KEY_LEN_MAX`] bytes: in a `per_key` queue, the jobs of one
    /// key run one at a time, in enqueue order (Invariant 9). Kept, with no effect, elsewhere.
    pub ordering_key: Option<String>,
    /// Uniqueness ([`crate::unique`]): while the key this names is held by another job of the
    /// queue, an enqueue creates nothing and returns that job's id as a duplicate. With
    /// `by: dedup_id` the unique rule replaces the queue's dedup window for this job's dedup id.
    pub unique: Option<Unique>,
}

impl NewJob {
    /// A job with this payload and every other field at its default.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        NewJob { payload: payload.into(), ..NewJob::default() }
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Delays the job by `delay_ms`.
    pub fn delay_ms(mut self, delay_ms: u64) -> Self {
        self.schedule = Schedule::Delay { delay_ms };
        self
    }

    /// Schedules the job at `run_at`.
    pub fn run_at(mut self, run_at: Timestamp) -> Self {
        self.schedule = Schedule::At(run_at);
        self
    }

    /// Sets the job's own max attempts.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Sets the dedup id.
    pub fn dedup_id(mut self, dedup_id: impl Into<String>) -> Self {
        self.dedup_id = Some(dedup_id.into());
        self
    }

    /// Sets the ordering key.
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }

    /// Asks for uniqueness.
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        if self.payload.len() > PAYLOAD_BYTES_MAX {
            return Err(Error::PayloadTooLarge(format!(
                "payload is {} bytes; the limit is {PAYLOAD_BYTES_MAX}",
                self.payload.len()
            )));
        }
        if self.headers.len() > HEADERS_COUNT_MAX {
            return Err(Error::invalid(format!("{} headers; the limit is {HEADERS_COUNT_MAX}", self.headers.len())));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || name.len() > HEADER_NAME_LEN_MAX {
                return Err(Error::invalid(format!("header name {name:?} must be 1 to {HEADER_NAME_LEN_MAX} bytes")));
            }
            if value.len() > HEADER_VALUE_LEN_MAX {
                return Err(Error::invalid(format!(
                    "header {name:?} is {} bytes; the limit is {HEADER_VALUE_LEN_MAX}",
                    value.len()
                )));
            }
        }
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&self.priority) {
            return Err(Error::invalid(format!(
                "priority is {}; it must be between {PRIORITY_MIN} and {PRIORITY_MAX}",
                self.priority
            )));
        }
        if let Schedule::Delay { delay_ms } = self.schedule {
            check_delay(delay_ms)?;
        }
        if let Some(n) = self.max_attempts {
            crate::queue::check_max_attempts(n)?;
        }
        if let Some(id) = &self.dedup_id {
            if id.is_empty() || id.len() > DEDUP_ID_LEN_MAX {
                return Err(Error::invalid(format!("dedup id must be 1 to {DEDUP_ID_LEN_MAX} bytes")));
            }
        }
        if let Some(key) = &self.ordering_key {
            if key.is_empty() || key.len() > ORDERING_KEY_LEN_MAX {
                return Err(Error::invalid(format!(
                    "ordering key is {} bytes; it must be 1 to {ORDERING_KEY_LEN_MAX}",
                    key.len()
                )));
            }
        }
        if let Some(unique) = &self.unique {
            unique.validate(self)?;
        }
        Ok(())
    }

    /// When the job becomes ready, judged at `now`.
    pub fn ready_at(&self, now: Timestamp) -> Timestamp {
        match self.schedule {
            Schedule::Now => now,
            Schedule::Delay { delay_ms } => now.plus_ms(delay_ms),
            Schedule::At(at) => at.max(now),
        }
    }
}

/// What enqueue returns for each job, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enqueued {
    /// The new job's id, or the original job's id for a duplicate.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// True when nothing was created: the dedup id was seen within the window, or the job's
    /// unique key is held by the job `id` names.
    pub duplicate: bool,
}

/// Where a job is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum JobState {
    /// Waiting for its `run_at`.
    Scheduled,
    /// Can be leased.
    Ready,
    /// Under a live lease.
    Leased,
    /// Dead-lettered; delivered again only after a redrive.
    Dead,
    /// In a `per_key` queue, waiting behind an earlier job of its ordering key; it becomes ready
    /// or scheduled when every earlier job of the key is gone (Invariant 9).
    Blocked,
    /// Cancelled (`POST /v1/jobs/{id}/cancel`): never delivered again, kept for inspection.
    Cancelled,
}

/// The error one attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt (1-based) that failed; for an operator's kill (`Store::job_kill`), the attempts
    /// spent so far (0 for a job that never ran).
    pub attempt: u32,
    /// What went wrong, as reported (cut at [`ERROR_TEXT_BYTES_MAX`]).
    pub error: String,
    /// When it was recorded.
    pub at: Timestamp,
}

/// A job as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: QueueName,
    /// Its state.
    pub state: JobState,
    /// Leases so far (1-based once leased; reset by a redrive).
    pub attempt: u32,
    /// Leases allowed before dead-lettering.
    pub max_attempts: u32,
    /// Priority (higher first).
    pub priority: i32,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Its partition, in a `per_key` queue (see [`crate::ordering`]).
    pub partition: Option<u32>,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When it became, or becomes, ready.
    pub run_at: Timestamp,
    /// When its lease expires, while leased.
    pub lease_expires_at: Option<Timestamp>,
    /// When it was cancelled: with state `Cancelled`, when it ended; with state `Leased`, when
    /// the cancel was asked for (its holder learns of it at its next extend).
    pub cancelled_at: Option<Timestamp>,
    /// The error of every failed attempt, oldest first.
    pub errors: Vec<AttemptError>,
}

/// A job handed to a consumer by a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: QueueName,
    /// The token every settle call must present.
    pub lease_token: LeaseToken,
    /// This lease's attempt number (1-based).
    pub attempt: u32,
    /// Leases allowed before dead-lettering.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key.
    pub ordering_key: Option<String>,
    /// Its partition, in a `per_key` queue (see [`crate::ordering`]).
    pub partition: Option<u32>,
    /// When it was enqueued.
    pub enqueued_at: Timestamp,
    /// When it became ready.
    pub run_at: Timestamp,
    /// When this lease expires unless extended.
    pub lease_expires_at: Timestamp,
}

impl LeasedJob {
    /// The (id, token) pair that names this lease.
    pub fn lease(&self) -> LeaseRef {
        LeaseRef { id: self.id, lease_token: self.lease_token }
    }
}

pub(crate) fn check_delay(delay_ms: u64) -> Result<()> {
    if delay_ms > DELAY_MS_MAX {
        return Err(Error::invalid(format!("delay is {delay_ms} ms; the limit is {DELAY_MS_MAX}")));
    }
    Ok(())
}

/// One lease, named by its job and token: what an ack presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    /// The job.
    pub id: JobId,
    /// The lease's token.
    pub lease_token: LeaseToken,
}

/// Cuts an error text to [`ERROR_TEXT_BYTES_MAX`] at a character boundary, marking the cut.
pub fn truncate_error_text(text: &str) -> String {
    if text.len() <= ERROR_TEXT_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = ERROR_TEXT_BYTES_MAX - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

// Unique jobs' rules as they apply to jobs: here, beside the job types, so that `unique` (the
// rules and keys) needs nothing of this module.
impl crate::unique::UniqueWhile {
    /// Whether a job in `state` holds a key it took with this rule; always false for `window`,
    /// which is judged by time alone. Every state not named here frees the key: dead, and any
    /// state a job ends in (a cancelled job frees its key with no store code of its own).
    pub fn holds(self, state: JobState) -> bool {
        use crate::unique::UniqueWhile;
        match self {
            UniqueWhile::Pending => matches!(state, JobState::Scheduled | JobState::Ready | JobState::Blocked),
            UniqueWhile::Active => {
                matches!(state, JobState::Scheduled | JobState::Ready | JobState::Blocked | JobState::Leased)
            }
            UniqueWhile::Window => false,
        }
    }
}

impl crate::unique::Unique {
    /// Checks the request against `job` ([`crate::unique::Unique::validate_of`]).
    pub fn validate(&self, job: &NewJob) -> Result<()> {
        self.validate_of(job.dedup_id.as_deref(), &job.payload)
    }

    /// The key `job` takes (the job already validated): `d` and the dedup id's bytes, or `p`
    /// and the 32 bytes of the SHA-256 of the payload's canonical form. The leading byte keeps
    /// the two kinds apart.
    pub fn key(&self, job: &NewJob) -> Result<Vec<u8>> {
        self.key_of(job.dedup_id.as_deref(), &job.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_tokens_round_trip_and_reject_garbage() {
        let t = LeaseToken::random();
        assert_eq!(t.to_string().len(), 32);
        assert_eq!(t.to_string().parse::<LeaseToken>(), Ok(t));
        assert!(matches!("xyz".parse::<LeaseToken>(), Err(Error::InvalidRequest(_))));
        assert!(matches!("g".repeat(32).parse::<LeaseToken>(), Err(Error::InvalidRequest(_))));
        assert!(matches!("é".repeat(16).parse::<LeaseToken>(), Err(Error::InvalidRequest(_))));
        assert_ne!(LeaseToken::random(), LeaseToken::random());
    }

    #[test]
    fn new_job_limits() {
        assert_eq!(NewJob::new(vec![0; PAYLOAD_BYTES_MAX]).validate(), Ok(()));
        assert!(matches!(NewJob::new(vec![0; PAYLOAD_BYTES_MAX + 1]).validate(), Err(Error::PayloadTooLarge(_))));
        assert!(matches!(NewJob::new("x").priority(PRIORITY_MAX + 1).validate(), Err(Error::InvalidRequest(_))));
        assert!(matches!(NewJob::new("x").max_attempts(0).validate(), Err(Error::InvalidRequest(_))));
        assert!(matches!(NewJob::new("x").delay_ms(DELAY_MS_MAX + 1).validate(), Err(Error::InvalidRequest(_))));
        assert!(matches!(NewJob::new("x").dedup_id("").validate(), Err(Error::InvalidRequest(_))));
        assert!(matches!(NewJob::new("x").header("", "v").validate(), Err(Error::InvalidRequest(_))));
        assert!(matches!(NewJob::new("x").ordering_key("").validate(), Err(Error::InvalidRequest(_))));
        assert_eq!(NewJob::new("x").ordering_key("k".repeat(ORDERING_KEY_LEN_MAX)).validate(), Ok(()));
        assert!(matches!(
            NewJob::new("x").ordering_key("k".repeat(ORDERING_KEY_LEN_MAX + 1)).validate(),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn error_text_is_cut_at_a_char_boundary() {
        let long = "é".repeat(ERROR_TEXT_BYTES_MAX);
        let cut = truncate_error_text(&long);
        assert!(cut.len() <= ERROR_TEXT_BYTES_MAX);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_error_text("short"), "short");
    }
}
