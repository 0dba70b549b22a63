//! The HTTP API's wire types (docs/api.md), shared by `onceq-server` and `onceq-client` so the two
//! cannot drift apart. Serde only: no I/O here.
//!
//! Times are RFC 3339 UTC strings on the wire ([`format_time`], [`parse_time`]); durations are
//! integer milliseconds with a `_ms` suffix; job ids are decimal strings.
//!
//! Payloads are JSON: a job enqueued over HTTP stores the JSON text of its `payload` byte for
//! byte, and gets it back as that JSON. A payload that is not JSON (enqueued through the library
//! with arbitrary bytes) travels as `payload: null` plus `payload_base64`.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::commit::{Commit, CommitEnqueue, CommitId, Fence};
use crate::group::{GroupInfo, GroupName, MemberId};
use crate::{
    AttemptError, Enqueued, Error, ErrorKind, Headers, Job, JobId, JobState, LeaseRef, LeaseToken, LeasedJob,
    NackOutcome, NewJob, QueueInfo, QueueName, Result, Schedule, Timestamp, Unique, UniqueBy, UniqueWhile,
};

/// The body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A stable code and an actionable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// One of the codes in docs/api.md (`invalid_request`, `not_found`, `lease_lost`, ...).
    pub code: String,
    /// What to do about it.
    pub message: String,
    /// The jobs whose leases were lost, for a commit refused with `lease_lost` (absent
    /// otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub jobs: Vec<JobId>,
    /// For `rate_limited`: how long to wait before retrying, in milliseconds (the
    /// `Retry-After` header says the same in whole seconds, rounded up). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The API's error code for a portable error kind.
pub fn error_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::PayloadTooLarge => "payload_too_large",
        ErrorKind::NotFound => "not_found",
        ErrorKind::LeaseLost => "lease_lost",
        ErrorKind::JobCancelled => "job_cancelled",
        ErrorKind::Conflict => "conflict",
        ErrorKind::QueueNotEmpty => "queue_not_empty",
        ErrorKind::NotMember => "not_member",
        ErrorKind::Fenced => "fenced",
        ErrorKind::RateLimited => "rate_limited",
        // docs/api.md has no 5xx besides 503: a store that fails is, to the client, a store that is
        // unavailable for now (retry later); the cause is logged by the server.
        ErrorKind::Unavailable | ErrorKind::Storage => "unavailable",
        // Not worth a retry: the server stopped using its store until it is restored.
        ErrorKind::Corrupt => "corrupt",
    }
}

impl ErrorBody {
    /// The body for `error`. Storage errors keep their cause out of the message (it is logged).
    pub fn from_error(error: &Error) -> Self {
        let message = match error {
            Error::Storage(_) => "the store failed; the cause is in the server's log".to_owned(),
            Error::Corrupt(_) => "the store's data is damaged (database corrupt): the server stopped using it; \
                                  restore the data from a backup (the server's log says what was found)"
                .to_owned(),
            Error::InvalidRequest(m)
            | Error::PayloadTooLarge(m)
            | Error::Conflict(m)
            | Error::QueueNotEmpty(m)
            | Error::NotMember(m)
            | Error::Fenced(m)
            | Error::Unavailable(m)
            | Error::RateLimited { message: m, .. } => m.clone(),
            other => other.to_string(),
        };
        let jobs = error.stale_jobs().to_vec();
        let retry_after_ms = error.retry_after_ms();
        ErrorBody { error: ErrorDetail { code: error_code(error.kind()).to_owned(), message, jobs, retry_after_ms } }
    }

    /// The seam error this body stands for (what a client returns to its caller). `id` names
    /// the job of a per-job call, so that `not_found` and `lease_lost` map back exactly.
    pub fn into_error(self, id: Option<JobId>) -> Error {
        let ErrorDetail { code, message, jobs, retry_after_ms } = self.error;
        match (code.as_str(), id) {
            ("lease_lost", _) if !jobs.is_empty() => Error::LeasesLost(jobs),
            ("invalid_request", _) => Error::InvalidRequest(message),
            ("payload_too_large", _) => Error::PayloadTooLarge(message),
            ("not_found", Some(id)) => Error::JobNotFound(id),
            ("lease_lost", Some(id)) => Error::LeaseLost(id),
            ("job_cancelled", Some(id)) => Error::JobCancelled(id),
            ("job_cancelled", None) => Error::Conflict(message),
            ("conflict", _) => Error::Conflict(message),
            ("queue_not_empty", _) => Error::QueueNotEmpty(message),
            ("not_member", _) => Error::NotMember(message),
            ("fenced", _) => Error::Fenced(message),
            ("rate_limited", _) => Error::RateLimited {
                message,
                retry_after_ms: retry_after_ms.unwrap_or(crate::limits::MAX_DEPTH_RETRY_AFTER_MS),
            },
            ("unavailable", _) => Error::Unavailable(message),
            ("corrupt", _) => Error::Corrupt(message),
            // The server cut a request that ran too long: another try may succeed.
            ("request_timeout", _) => Error::Unavailable(message),
            ("unauthorized", _) | ("forbidden", _) => Error::InvalidRequest(format!("{code}: {message}")),
            _ => Error::Storage(format!("{code}: {message}")),
        }
    }
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
pub fn format_time(at: Timestamp) -> String {
    let nanos = i128::from(at.as_millis()) * 1_000_000;
    match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            let (h, mi, s, ms) = (t.hour(), t.minute(), t.second(), t.millisecond());
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
        Err(_) => format!("{}ms", at.as_millis()),
    }
}

/// Parses an RFC 3339 time (any offset) into a timestamp.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| Error::invalid(format!("{text:?} is not an RFC 3339 time ({e})")))?;
    let millis = t.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(millis).map(Timestamp::from_millis).map_err(|_| Error::invalid(format!("{text:?} is out of range")))
}

/// Serde of a [`Timestamp`] as the API writes times ([`format_time`]) and reads them
/// ([`parse_time`]): `#[serde(with = "onceq_core::api::rfc3339")]`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Timestamp;

    /// Writes `at` as RFC 3339 UTC with milliseconds.
    pub fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_time(*at))
    }

    /// Reads an RFC 3339 time.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_time(&text).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

/// A payload on the wire: JSON when the bytes are JSON exactly as they would travel (no
/// surrounding whitespace, which JSON parsers drop, and not a bare `null`, which reads as "no
/// payload"), else base64 — so every payload comes back byte for byte.
fn payload_out(bytes: &[u8]) -> (Option<Box<RawValue>>, Option<String>) {
    let raw = std::str::from_utf8(bytes)
        .ok()
        .filter(|text| *text != "null")
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .filter(|raw| raw.get().len() == bytes.len());
    match raw {
        Some(raw) => (Some(raw), None),
        None => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

/// Reads a present `payload` field as JSON text, `null` included (a missing field stays `None`).
fn raw_present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(deserializer).map(Some)
}

/// A queue list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueList {
    /// A page of queues, by name.
    pub queues: Vec<QueueInfo>,
    /// Pass as `after` for the next page; null on the last.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub next: Option<QueueName>,
}

/// `POST /v1/queues/{queue}/jobs`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnqueueRequest {
    /// The jobs, enqueued atomically.
    pub jobs: Vec<EnqueueJob>,
    /// The producer instance sending them: `{"id", "epoch"}` from its registration. Refused
    /// (409 `fenced`) once a newer epoch of that producer registered. The enqueue is then a
    /// commit of these jobs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Fence>,
}

/// One job of an enqueue request.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnqueueJob {
    /// Any JSON value, `null` included: stored as its JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Option<Box<RawValue>>,
    /// Instead of `payload`: arbitrary bytes, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Ready after this delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Ready at this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Overrides the queue's max attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Producer dedup key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_id: Option<String>,
    /// String headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Ordering key: in a `per_key` queue, jobs of one key run one at a time, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Uniqueness: no second job with this key while the first holds it (docs/api.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<UniqueSpec>,
}

/// The `unique` of an enqueued job: `{"by", "while", "window_ms"?}`. The names are read here, so
/// that an unknown one gets onceq's wording.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UniqueSpec {
    /// `dedup_id` (the job's dedup id is the key) or `payload` (the SHA-256 of the canonical
    /// form of its JSON payload).
    pub by: String,
    /// `pending` (scheduled, ready or blocked), `active` (those or leased) or `window`
    /// (`window_ms` after the enqueue).
    #[serde(rename = "while")]
    pub held_while: String,
    /// With `while: window` only: 1 to 604800000 ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

impl UniqueSpec {
    /// The wire form of `unique`.
    pub fn from_unique(unique: &Unique) -> Self {
        let by = match unique.by {
            UniqueBy::DedupId => "dedup_id",
            UniqueBy::Payload => "payload",
        };
        let held_while = match unique.held_while {
            UniqueWhile::Pending => "pending",
            UniqueWhile::Active => "active",
            UniqueWhile::Window => "window",
        };
        UniqueSpec { by: by.into(), held_while: held_while.into(), window_ms: unique.window_ms }
    }

    /// The request this names; an unknown `by` or `while` is refused. (The window is checked
    /// with the job, by [`NewJob::validate`].)
    pub fn into_unique(self) -> Result<Unique> {
        let by = match self.by.as_str() {
            "dedup_id" => UniqueBy::DedupId,
            "payload" => UniqueBy::Payload,
            other => {
                return Err(Error::invalid(format!("unique.by is {other:?}; it must be dedup_id or payload")));
            }
        };
        let held_while = match self.held_while.as_str() {
            "pending" => UniqueWhile::Pending,
            "active" => UniqueWhile::Active,
            "window" => UniqueWhile::Window,
            other => {
                return Err(Error::invalid(format!("unique.while is {other:?}; it must be pending, active or window")));
            }
        };
        Ok(Unique { by, held_while, window_ms: self.window_ms })
    }
}

impl EnqueueJob {
    /// The wire form of `job`.
    pub fn from_new_job(job: &NewJob) -> Self {
        let (payload, payload_base64) = payload_out(&job.payload);
        let (delay_ms, run_at) = match job.schedule {
            Schedule::Now => (None, None),
            Schedule::Delay { delay_ms } => (Some(delay_ms), None),
            Schedule::At(at) => (None, Some(format_time(at))),
        };
        EnqueueJob {
            payload,
            payload_base64,
            delay_ms,
            run_at,
            priority: (job.priority != 0).then_some(job.priority),
            max_attempts: job.max_attempts,
            dedup_id: job.dedup_id.clone(),
            headers: (!job.headers.is_empty()).then(|| job.headers.clone()),
            ordering_key: job.ordering_key.clone(),
            unique: job.unique.as_ref().map(UniqueSpec::from_unique),
        }
    }

    /// The job this asks for; `index` names it in errors.
    pub fn into_new_job(self, index: usize) -> Result<NewJob> {
        let at = |m: String| Error::invalid(format!("item {index}: {m}"));
        let payload = match (self.payload, self.payload_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| at(format!("payload_base64 is not base64: {e}")))?,
            (None, None) => return Err(at("needs a payload".into())),
            (Some(_), Some(_)) => return Err(at("give payload or payload_base64, not both".into())),
        };
        let schedule = match (self.delay_ms, self.run_at) {
            (None, None) => Schedule::Now,
            (Some(delay_ms), None) => Schedule::Delay { delay_ms },
            (None, Some(text)) => Schedule::At(parse_time(&text).map_err(|e| at(e.detail()))?),
            (Some(_), Some(_)) => return Err(at("give delay_ms or run_at, not both".into())),
        };
        Ok(NewJob {
            payload,
            headers: self.headers.unwrap_or_default(),
            priority: self.priority.unwrap_or(0),
            schedule,
            max_attempts: self.max_attempts,
            dedup_id: self.dedup_id,
            ordering_key: self.ordering_key,
            unique: self.unique.map(UniqueSpec::into_unique).transpose().map_err(|e| at(e.detail()))?,
        })
    }
}

/// Response of an enqueue: one entry per job, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnqueueResponse {
    /// Ids, and whether each was a duplicate.
    pub jobs: Vec<Enqueued>,
}

/// `POST /v1/queues/{queue}/leases`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseRequest {
    /// 1 to 1000 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
    /// Lease length (default: the queue's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
    /// Long poll, 0 to 20000 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// Lease as a member of this consumer group (with `member_id`): only from the partitions
    /// the member owns and is not giving up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub group: Option<GroupName>,
    /// The member of `group` leasing (with `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub member_id: Option<MemberId>,
}

impl LeaseRequest {
    /// The group and member a lease is for: both or neither.
    pub fn member(&self) -> Result<Option<(&GroupName, &MemberId)>> {
        match (&self.group, &self.member_id) {
            (Some(group), Some(member)) => Ok(Some((group, member))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(Error::invalid(
                "\"group\" needs \"member_id\": a group lease is made by a member (join the group first)",
            )),
            (None, Some(_)) => {
                Err(Error::invalid("\"member_id\" needs \"group\": name the group the member belongs to"))
            }
        }
    }
}

/// `GET /v1/queues/{queue}/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupList {
    /// The queue's consumer groups, by name.
    pub groups: Vec<GroupInfo>,
}

/// Leased jobs.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    /// In lease order.
    pub jobs: Vec<LeasedJobView>,
}

/// A leased job on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeasedJobView {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// Queue name.
    pub queue: String,
    /// Present it on ack / nack / extend / fail.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// 1-based attempt of this lease.
    pub attempt: u32,
    /// Leases allowed before dead-lettering.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// The JSON payload (null when `payload_base64` is set).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Option<Box<RawValue>>,
    /// A payload that is not JSON, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key (absent when the job has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Partition, in a `per_key` queue (absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// RFC 3339.
    pub enqueued_at: String,
    /// RFC 3339.
    pub run_at: String,
    /// RFC 3339.
    pub lease_expires_at: String,
}

fn payload_in(payload: Option<Box<RawValue>>, payload_base64: Option<String>) -> Result<Vec<u8>> {
    match (payload, payload_base64) {
        (_, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| Error::Storage(format!("the server sent bad base64: {e}"))),
        (Some(raw), None) => Ok(raw.get().as_bytes().to_vec()),
        (None, None) => Ok(b"null".to_vec()),
    }
}

fn name(queue: &str) -> Result<crate::QueueName> {
    crate::QueueName::new(queue).map_err(|e| Error::Storage(format!("the server sent a bad queue name: {e}")))
}

impl LeasedJobView {
    /// The wire form of a leased job.
    pub fn from_leased(job: &LeasedJob) -> Self {
        let (payload, payload_base64) = payload_out(&job.payload);
        LeasedJobView {
            id: job.id,
            queue: job.queue.to_string(),
            lease_token: job.lease_token,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            payload,
            payload_base64,
            headers: job.headers.clone(),
            dedup_id: job.dedup_id.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: job.partition,
            enqueued_at: format_time(job.enqueued_at),
            run_at: format_time(job.run_at),
            lease_expires_at: format_time(job.lease_expires_at),
        }
    }

    /// The leased job this describes.
    pub fn into_leased(self) -> Result<LeasedJob> {
        Ok(LeasedJob {
            id: self.id,
            queue: name(&self.queue)?,
            lease_token: self.lease_token,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            priority: self.priority,
            payload: payload_in(self.payload, self.payload_base64)?,
            headers: self.headers,
            dedup_id: self.dedup_id,
            ordering_key: self.ordering_key,
            partition: self.partition,
            enqueued_at: parse_time(&self.enqueued_at)?,
            run_at: parse_time(&self.run_at)?,
            lease_expires_at: parse_time(&self.lease_expires_at)?,
        })
    }
}

/// `POST /v1/jobs/{id}/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckRequest {
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
}

/// `POST /v1/jobs/{id}/nack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NackRequest {
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Run again after this delay (default: the queue's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Why the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/jobs/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendRequest {
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// The lease now expires this long after the call.
    pub visibility_timeout_ms: u64,
}

/// Response of an extend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendResponse {
    /// RFC 3339.
    pub lease_expires_at: String,
}

/// `POST /v1/jobs/{id}/kill`: an operator fails a job that is not leased.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KillRequest {
    /// Recorded as the error of the job's current attempt; [`KILL_ERROR_DEFAULT`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The error a kill records when the request names none.
pub const KILL_ERROR_DEFAULT: &str = "failed by an operator";

/// `POST /v1/jobs/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailRequest {
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Why.
    pub error: String,
}

/// `POST /v1/acks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AcksRequest {
    /// Leases to ack, each judged on its own.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<AckItem>))]
    pub acks: Vec<LeaseRef>,
}

/// One item of a batch ack (schema only; the type is [`LeaseRef`]).
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct AckItem {
    /// Job id.
    id: String,
    /// Its lease token.
    lease_token: String,
}

/// One item of a batch nack (`POST /v1/nacks`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NackItem {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Run again after this delay (default: the queue's backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Why the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/nacks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NacksRequest {
    /// Nacks, each judged on its own.
    pub nacks: Vec<NackItem>,
}

/// One item of a batch extend (`POST /v1/extends`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendItem {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// The lease now expires this long after the call.
    pub visibility_timeout_ms: u64,
}

/// `POST /v1/extends`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExtendsRequest {
    /// Extends, each judged on its own.
    pub extends: Vec<ExtendItem>,
}

/// One item of a batch fail (`POST /v1/fails`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailItem {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Why.
    pub error: String,
}

/// `POST /v1/fails`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailsRequest {
    /// Fails, each judged on its own.
    pub fails: Vec<FailItem>,
}

/// The result of one item of a batch settle call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettleResult {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// Whether this item succeeded.
    pub ok: bool,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    /// For a nack: `retrying` or `dead`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// For a nack that retries: when (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// For an extend: the new expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
}

impl SettleResult {
    /// A success.
    pub fn ok(id: JobId) -> Self {
        SettleResult { id, ok: true, error: None, outcome: None, run_at: None, lease_expires_at: None }
    }

    /// A failure.
    pub fn failed(id: JobId, error: &Error) -> Self {
        SettleResult { ok: false, error: Some(ErrorBody::from_error(error).error), ..SettleResult::ok(id) }
    }

    /// A nack's success.
    pub fn nacked(id: JobId, outcome: NackOutcome) -> Self {
        match outcome {
            NackOutcome::Retrying { run_at } => SettleResult {
                outcome: Some("retrying".into()),
                run_at: Some(format_time(run_at)),
                ..SettleResult::ok(id)
            },
            NackOutcome::Dead => SettleResult { outcome: Some("dead".into()), ..SettleResult::ok(id) },
            NackOutcome::Cancelled => SettleResult { outcome: Some("cancelled".into()), ..SettleResult::ok(id) },
        }
    }

    /// The item's error, if it failed.
    pub fn into_result(self) -> Result<Self> {
        match (self.ok, self.error.clone()) {
            (true, _) => Ok(self),
            (false, Some(detail)) => Err(ErrorBody { error: detail }.into_error(Some(self.id))),
            (false, None) => Err(Error::Storage(format!("the server failed job {} without saying why", self.id))),
        }
    }

    /// The nack outcome this success describes.
    pub fn nack_outcome(&self) -> Result<NackOutcome> {
        match (self.outcome.as_deref(), &self.run_at) {
            (Some("dead"), _) => Ok(NackOutcome::Dead),
            (Some("cancelled"), _) => Ok(NackOutcome::Cancelled),
            (Some("retrying"), Some(at)) => Ok(NackOutcome::Retrying { run_at: parse_time(at)? }),
            _ => Err(Error::Storage(format!("the server sent no nack outcome for job {}", self.id))),
        }
    }
}

/// Response of a batch settle call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettleResults {
    /// One per item, in request order.
    pub results: Vec<SettleResult>,
}

/// One attempt's error on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptErrorView {
    /// The attempt that failed.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// RFC 3339.
    pub at: String,
}

/// A job as `GET /v1/jobs/{id}` and dead-letter listings show it.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobView {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// Queue name.
    pub queue: String,
    /// `scheduled`, `ready`, `leased`, `dead`, `blocked` or `cancelled`.
    pub state: JobState,
    /// Leases so far.
    pub attempt: u32,
    /// Leases allowed.
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// The JSON payload (null when `payload_base64` is set).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Option<Box<RawValue>>,
    /// A payload that is not JSON, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Producer dedup id.
    pub dedup_id: Option<String>,
    /// Ordering key (absent when the job has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Partition, in a `per_key` queue (absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// RFC 3339.
    pub enqueued_at: String,
    /// RFC 3339.
    pub run_at: String,
    /// RFC 3339, while leased.
    pub lease_expires_at: Option<String>,
    /// RFC 3339: when it was cancelled (state `cancelled`), or when a cancel was asked for
    /// while it is leased (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    /// Every failed attempt's error, oldest first.
    pub errors: Vec<AttemptErrorView>,
}

impl JobView {
    /// The wire form of a job.
    pub fn from_job(job: &Job) -> Self {
        let (payload, payload_base64) = payload_out(&job.payload);
        JobView {
            id: job.id,
            queue: job.queue.to_string(),
            state: job.state,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            priority: job.priority,
            payload,
            payload_base64,
            headers: job.headers.clone(),
            dedup_id: job.dedup_id.clone(),
            ordering_key: job.ordering_key.clone(),
            partition: job.partition,
            enqueued_at: format_time(job.enqueued_at),
            run_at: format_time(job.run_at),
            lease_expires_at: job.lease_expires_at.map(format_time),
            cancelled_at: job.cancelled_at.map(format_time),
            errors: job
                .errors
                .iter()
                .map(|e| AttemptErrorView { attempt: e.attempt, error: e.error.clone(), at: format_time(e.at) })
                .collect(),
        }
    }

    /// The job this describes.
    pub fn into_job(self) -> Result<Job> {
        Ok(Job {
            id: self.id,
            queue: name(&self.queue)?,
            state: self.state,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            priority: self.priority,
            payload: payload_in(self.payload, self.payload_base64)?,
            headers: self.headers,
            dedup_id: self.dedup_id,
            ordering_key: self.ordering_key,
            partition: self.partition,
            enqueued_at: parse_time(&self.enqueued_at)?,
            run_at: parse_time(&self.run_at)?,
            lease_expires_at: self.lease_expires_at.as_deref().map(parse_time).transpose()?,
            cancelled_at: self.cancelled_at.as_deref().map(parse_time).transpose()?,
            errors: self
                .errors
                .into_iter()
                .map(|e| Ok(AttemptError { attempt: e.attempt, error: e.error, at: parse_time(&e.at)? }))
                .collect::<Result<_>>()?,
        })
    }
}

/// `GET /v1/queues/{queue}/dead`.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadListResponse {
    /// Dead jobs in id order.
    pub jobs: Vec<JobView>,
    /// Pass as `after` for the next page; null on the last.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub next: Option<JobId>,
}

/// `POST /v1/queues/{queue}/dead/redrive`. The filters combine (all must hold); a dead job's
/// last error is the one it died of, and its time is when it died.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedriveRequest {
    /// These jobs (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>))]
    pub ids: Option<Vec<JobId>>,
    /// At most this many, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Only jobs whose last error contains this text (case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_contains: Option<String>,
    /// Only jobs that died at or after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_after: Option<String>,
    /// Only jobs that died before this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_before: Option<String>,
    /// Only jobs that died after at least this many attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_attempts: Option<u32>,
    /// Only jobs with an id above this one: pass the previous reply's `last` to redrive in
    /// steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub after: Option<JobId>,
    /// Redrive into this queue instead (neither queue may order per key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub to_queue: Option<QueueName>,
    /// Count the matching jobs and redrive none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Redrive in the background at this many jobs per second (a paced redrive; reply 202).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
}

impl RedriveRequest {
    /// The request as the store's [`crate::Redrive`]: times parsed, field names in the errors.
    pub fn into_redrive(self) -> Result<crate::Redrive> {
        let time = |field: &str, text: Option<String>| {
            text.map(|t| parse_time(&t).map_err(|e| Error::invalid(format!("{field}: {}", e.detail())))).transpose()
        };
        Ok(crate::Redrive {
            dead_after: time("dead_after", self.dead_after)?,
            dead_before: time("dead_before", self.dead_before)?,
            ids: self.ids,
            limit: self.limit,
            error_contains: self.error_contains,
            min_attempts: self.min_attempts,
            after: self.after,
            to_queue: self.to_queue,
            dry_run: self.dry_run,
        })
    }

    /// The request that asks for `redrive`.
    pub fn from_redrive(redrive: &crate::Redrive) -> Self {
        RedriveRequest {
            ids: redrive.ids.clone(),
            limit: redrive.limit,
            error_contains: redrive.error_contains.clone(),
            dead_after: redrive.dead_after.map(format_time),
            dead_before: redrive.dead_before.map(format_time),
            min_attempts: redrive.min_attempts,
            after: redrive.after,
            to_queue: redrive.to_queue.clone(),
            dry_run: redrive.dry_run,
            rate_per_second: None,
        }
    }
}

/// A paced redrive (`onceq_core::redrive`): `GET /v1/redrives/{id}`, and the 202 reply of a
/// redrive with `rate_per_second`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PacedRedriveView {
    /// Its id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: crate::RedriveId,
    /// The queue whose dead letters it redrives.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub queue: QueueName,
    /// Which jobs and where to (`dead_before` is at most `created_at`).
    pub filter: RedriveRequest,
    /// Jobs per second.
    pub rate_per_second: u32,
    /// `running`, `stopped` or `done`.
    pub state: crate::redrive::RedriveState,
    /// Dead jobs that matched when it started.
    pub matched: u64,
    /// Jobs redriven so far.
    pub redriven: u64,
    /// The highest id redriven so far.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub cursor: Option<JobId>,
    /// When it started.
    pub created_at: String,
    /// When it stopped or finished.
    pub finished_at: Option<String>,
    /// Why it stopped, when an error stopped it.
    pub error: Option<String>,
}

impl PacedRedriveView {
    /// The view of `paced`.
    pub fn from_paced(paced: &crate::redrive::PacedRedrive) -> Self {
        PacedRedriveView {
            id: paced.id,
            queue: paced.queue.clone(),
            filter: RedriveRequest::from_redrive(&paced.filter),
            rate_per_second: paced.rate_per_second,
            state: paced.state,
            matched: paced.matched,
            redriven: paced.redriven,
            cursor: paced.cursor,
            created_at: format_time(paced.created_at),
            finished_at: paced.finished_at.map(format_time),
            error: paced.error.clone(),
        }
    }

    /// The redrive this view shows.
    pub fn into_paced(self) -> Result<crate::redrive::PacedRedrive> {
        Ok(crate::redrive::PacedRedrive {
            id: self.id,
            queue: self.queue,
            filter: self.filter.into_redrive()?,
            rate_per_second: self.rate_per_second,
            state: self.state,
            matched: self.matched,
            redriven: self.redriven,
            cursor: self.cursor,
            created_at: parse_time(&self.created_at)?,
            finished_at: self.finished_at.as_deref().map(parse_time).transpose()?,
            error: self.error,
        })
    }
}

/// `GET /v1/redrives`: running paced redrives first, then the latest finished, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedriveList {
    /// The redrives.
    pub redrives: Vec<PacedRedriveView>,
}

/// `POST /v1/redrive-ticks`: jobs the steps of this call redrove.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedriveTickResponse {
    /// Jobs redriven.
    pub redriven: u64,
}

/// Response of a redrive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RedriveResponse {
    /// How many dead jobs pass the filters (the limit aside).
    pub matched: u64,
    /// How many jobs are ready again (0 in a dry run).
    pub redriven: u64,
    /// The highest id redriven, null when none was: the `after` of a next step.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub last: Option<JobId>,
}

/// Response of a purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurgeResponse {
    /// How many dead jobs were deleted.
    pub purged: u64,
}

// ---------------------------------------------------------------------------------------------
// Schedules (`crate::schedule`): `PUT/GET/DELETE /v1/schedules/{name}`, pause, resume, tick.
// ---------------------------------------------------------------------------------------------

/// The body of `PUT /v1/schedules/{name}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleRequest {
    /// The queue each tick's job goes to (created with defaults by the first tick if needed).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub queue: crate::QueueName,
    /// Cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Each tick's job payload, any JSON value (default `null`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Option<Box<RawValue>>,
    /// Instead of `payload`: arbitrary bytes, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Each tick's job fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::schedule::JobTemplate>,
    /// `skip`, `one` (default) or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<crate::schedule::CatchUp>,
    /// Create (or keep) the schedule paused (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// A schedule payload on the wire: JSON, `null` for the default `null`, else base64.
fn schedule_payload_out(bytes: &[u8]) -> (Option<Box<RawValue>>, Option<String>) {
    if bytes == b"null" {
        return (None, None);
    }
    payload_out(bytes)
}

impl ScheduleRequest {
    /// The wire form of a spec.
    pub fn from_spec(spec: &crate::schedule::ScheduleSpec) -> Self {
        let (payload, payload_base64) = schedule_payload_out(&spec.payload);
        ScheduleRequest {
            queue: spec.queue.clone(),
            cron: spec.cron.clone(),
            timezone: Some(spec.timezone.clone()),
            payload,
            payload_base64,
            job: Some(spec.job.clone()),
            catch_up: Some(spec.catch_up),
            paused: Some(spec.paused),
        }
    }

    /// The spec asked for, defaults filled in (not yet validated: see
    /// [`ScheduleSpec::validate`](crate::schedule::ScheduleSpec::validate)).
    pub fn into_spec(self) -> Result<crate::schedule::ScheduleSpec> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| Error::invalid(format!("payload_base64 is not base64: {e}")))?,
            (None, None) => b"null".to_vec(),
            (Some(_), Some(_)) => return Err(Error::invalid("give payload or payload_base64, not both")),
        };
        Ok(crate::schedule::ScheduleSpec {
            queue: self.queue,
            cron: self.cron,
            timezone: self.timezone.unwrap_or_else(|| "UTC".to_owned()),
            payload,
            job: self.job.unwrap_or_default(),
            catch_up: self.catch_up.unwrap_or_default(),
            paused: self.paused.unwrap_or(false),
        })
    }
}

/// A schedule as `GET /v1/schedules/{name}` shows it.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleView {
    /// The schedule's name.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub name: crate::schedule::ScheduleName,
    /// The queue each tick's job goes to.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub queue: crate::QueueName,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Each tick's JSON payload (null when it is `null` or `payload_base64` is set).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Option<Box<RawValue>>,
    /// A payload that is not JSON, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// Each tick's job fields.
    pub job: crate::schedule::JobTemplate,
    /// Catch-up policy.
    pub catch_up: crate::schedule::CatchUp,
    /// Whether it is paused.
    pub paused: bool,
    /// RFC 3339: the next tick that fires (null while paused, or when it never fires again).
    pub next_tick: Option<String>,
    /// RFC 3339: the next few ticks.
    pub next_ticks: Vec<String>,
    /// RFC 3339: the latest tick that fired a job.
    pub last_tick: Option<String>,
    /// The job of `last_tick`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub last_job_id: Option<JobId>,
}

impl ScheduleView {
    /// The wire form of a schedule.
    pub fn from_info(info: &crate::schedule::ScheduleInfo) -> Self {
        let (payload, payload_base64) = schedule_payload_out(&info.spec.payload);
        ScheduleView {
            name: info.name.clone(),
            queue: info.spec.queue.clone(),
            cron: info.spec.cron.clone(),
            timezone: info.spec.timezone.clone(),
            payload,
            payload_base64,
            job: info.spec.job.clone(),
            catch_up: info.spec.catch_up,
            paused: info.spec.paused,
            next_tick: info.next_tick.map(format_time),
            next_ticks: info.next_ticks.iter().copied().map(format_time).collect(),
            last_tick: info.last_tick.map(format_time),
            last_job_id: info.last_job_id,
        }
    }

    /// The schedule this view shows (what a client returns).
    pub fn into_info(self) -> Result<crate::schedule::ScheduleInfo> {
        let time = |t: &str| parse_time(t).map_err(|e| Error::Storage(format!("the server sent a bad time: {e}")));
        let opt = |t: Option<String>| t.as_deref().map(time).transpose();
        Ok(crate::schedule::ScheduleInfo {
            name: self.name,
            spec: crate::schedule::ScheduleSpec {
                queue: self.queue,
                cron: self.cron,
                timezone: self.timezone,
                payload: payload_in(self.payload, self.payload_base64)?,
                job: self.job,
                catch_up: self.catch_up,
                paused: self.paused,
            },
            next_tick: opt(self.next_tick)?,
            next_ticks: self.next_ticks.iter().map(|t| time(t)).collect::<Result<_>>()?,
            last_tick: opt(self.last_tick)?,
            last_job_id: self.last_job_id,
        })
    }
}

/// `GET /v1/schedules`: every schedule, by name.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduleList {
    /// The schedules.
    pub schedules: Vec<ScheduleView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_begin_with_a_null_result_round_trips() {
        // A worker records `null` for `Outcome::Done`; a redelivery's begin over HTTP must see
        // it completed, not a reply "without result".
        for result in [&b"null"[..], b"{}", b"[1,2]", b"\"text\""] {
            let outcome = crate::BeginOutcome::Completed { result: result.to_vec() };
            let wire = serde_json::to_string(&BeginResponse::from_outcome(outcome.clone())).unwrap_or_default();
            let back: BeginResponse = serde_json::from_str(&wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
            assert_eq!(back.into_outcome(), Ok(outcome), "{wire}");
        }
    }

    #[test]
    fn times_round_trip_in_utc_with_milliseconds() {
        let at = Timestamp::from_millis(1_767_225_600_123);
        assert_eq!(format_time(at), "2026-01-01T00:00:00.123Z");
        assert_eq!(parse_time("2026-01-01T00:00:00.123Z"), Ok(at));
        assert_eq!(parse_time("2026-01-01T02:00:00.123+02:00"), Ok(at));
        assert!(matches!(parse_time("yesterday"), Err(Error::InvalidRequest(_))));
    }

    /// An error carried inside another message says its kind once: `item 0: "tomorrow" is not an
    /// RFC 3339 time`, not `item 0: invalid request: "tomorrow" ...`.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn errors_inside_other_messages_say_their_kind_once() {
        let job: EnqueueJob = serde_json::from_str(r#"{"payload": 1, "run_at": "tomorrow"}"#).unwrap();
        let error = job.into_new_job(0).unwrap_err().to_string();
        assert!(error.starts_with("invalid request: item 0: \"tomorrow\" is not an RFC 3339 time"), "{error}");
        let errors = [
            serde_json::from_str::<crate::LeaseToken>(r#""x""#).unwrap_err().to_string(),
            serde_json::from_str::<crate::JobId>(r#""7x""#).unwrap_err().to_string(),
            serde_json::from_str::<crate::QueueName>(r#""bad name""#).unwrap_err().to_string(),
        ];
        for error in errors {
            assert!(!error.contains("invalid request") && !error.is_empty(), "{error}");
        }
    }

    #[test]
    fn payloads_travel_as_json_or_base64() {
        let json = NewJob::new(r#"{"a":[1,2]}"#);
        let wire = EnqueueJob::from_new_job(&json);
        assert_eq!(wire.payload.as_ref().map(|p| p.get()), Some(r#"{"a":[1,2]}"#));
        assert_eq!(wire.into_new_job(0).map(|j| j.payload), Ok(br#"{"a":[1,2]}"#.to_vec()));
        for exact in [&b" 1 "[..], b"\n{}\n", b"null", b""] {
            let wire = EnqueueJob::from_new_job(&NewJob::new(exact));
            let text = serde_json::to_string(&wire).unwrap_or_else(|e| panic!("{e}"));
            let back: EnqueueJob = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.into_new_job(0).map(|j| j.payload), Ok(exact.to_vec()), "{text}");
        }
        let null: EnqueueJob = serde_json::from_str(r#"{"payload":null}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(null.into_new_job(0).map(|j| j.payload), Ok(b"null".to_vec()));
        let binary = NewJob::new(vec![0xff, 0x00, 0x10]);
        let wire = EnqueueJob::from_new_job(&binary);
        assert_eq!(wire.payload_base64.as_deref(), Some("/wAQ"));
        assert_eq!(wire.into_new_job(0).map(|j| j.payload), Ok(vec![0xff, 0x00, 0x10]));
    }

    #[test]
    fn an_enqueue_job_needs_one_payload_and_one_schedule() {
        let both: EnqueueJob = serde_json::from_str(r#"{"payload":1,"delay_ms":5,"run_at":"2026-01-01T00:00:00Z"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(both.into_new_job(3), Err(Error::InvalidRequest(m)) if m.starts_with("item 3:")));
        let none: EnqueueJob = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(none.into_new_job(0), Err(Error::InvalidRequest(_))));
        assert!(serde_json::from_str::<EnqueueJob>(r#"{"payload":1,"colour":"red"}"#).is_err());
    }

    #[test]
    fn errors_map_to_codes_and_back() {
        let id = JobId::new(7);
        let body = ErrorBody::from_error(&Error::LeaseLost(id));
        assert_eq!(body.error.code, "lease_lost");
        assert_eq!(body.into_error(Some(id)), Error::LeaseLost(id));
        let hidden = ErrorBody::from_error(&Error::Storage("disk I/O error at /secret/path".into()));
        assert_eq!(hidden.error.code, "unavailable");
        assert!(!hidden.error.message.contains("secret"));
    }
}

/// `POST /v1/idempotency/{key}/begin`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BeginRequest {
    /// Who claims the key.
    pub owner: String,
    /// How long the claim lasts unless completed or released.
    pub ttl_ms: u64,
    /// A digest of the request the key stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// What a begin found, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BeginState {
    /// The caller holds the key: apply the effect, then complete or release.
    Acquired,
    /// Another owner holds it (`owner`, `until`).
    InProgress,
    /// The effect was applied (`result`).
    Completed,
}

/// Response of a begin: `{"state": "acquired"}`, `{"state": "in_progress", "owner", "until"}` or
/// `{"state": "completed", "result"}`. (A flat struct rather than a tagged enum: serde cannot
/// read raw JSON inside an internally tagged enum.)
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BeginResponse {
    /// What begin found.
    pub state: BeginState,
    /// The holder, when in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When the holder's claim expires (RFC 3339), when in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// The recorded result (JSON), when completed. A result of `null` is present: absent and
    /// `null` are not the same here.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "raw_present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub result: Option<Box<RawValue>>,
}

impl BeginResponse {
    /// The wire form of a begin outcome. A result that is not JSON (stored through the library)
    /// is returned as a JSON string of its base64.
    pub fn from_outcome(outcome: crate::BeginOutcome) -> Self {
        let bare = |state| BeginResponse { state, owner: None, until: None, result: None };
        match outcome {
            crate::BeginOutcome::Acquired => bare(BeginState::Acquired),
            crate::BeginOutcome::InProgress { owner, until } => {
                BeginResponse { owner: Some(owner), until: Some(format_time(until)), ..bare(BeginState::InProgress) }
            }
            crate::BeginOutcome::Completed { result } => {
                let raw = match std::str::from_utf8(&result).ok().and_then(|t| RawValue::from_string(t.to_owned()).ok())
                {
                    Some(raw) if raw.get().len() == result.len() => raw,
                    _ => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(&result);
                        RawValue::from_string(format!("{b64:?}")).unwrap_or_else(|_| null_raw())
                    }
                };
                BeginResponse { result: Some(raw), ..bare(BeginState::Completed) }
            }
        }
    }

    /// The begin outcome this describes.
    pub fn into_outcome(self) -> Result<crate::BeginOutcome> {
        let missing = |field: &str| Error::Storage(format!("the server sent a begin reply without {field}"));
        Ok(match self.state {
            BeginState::Acquired => crate::BeginOutcome::Acquired,
            BeginState::InProgress => crate::BeginOutcome::InProgress {
                owner: self.owner.ok_or_else(|| missing("owner"))?,
                until: parse_time(&self.until.ok_or_else(|| missing("until"))?)?,
            },
            BeginState::Completed => crate::BeginOutcome::Completed {
                result: self.result.ok_or_else(|| missing("result"))?.get().as_bytes().to_vec(),
            },
        })
    }
}

fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON; from_string cannot fail on it.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

/// `POST /v1/idempotency/{key}/complete`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompleteRequest {
    /// The claim's owner.
    pub owner: String,
    /// Any JSON: what later begins get back.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub result: Box<RawValue>,
    /// How long the completed record is kept.
    pub retention_ms: u64,
}

/// `POST /v1/idempotency/{key}/release`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseRequest {
    /// The claim's owner.
    pub owner: String,
}

/// `POST /v1/jobs/{id}/release`: end the lease without counting it as an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseReleaseRequest {
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Ready again after this delay (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// Jobs a commit enqueues into one queue (`POST /v1/commits`, `enqueue`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitEnqueueItem {
    /// The queue (created with the defaults if it does not exist).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub queue: crate::QueueName,
    /// The jobs, as an enqueue takes them.
    pub jobs: Vec<EnqueueJob>,
}

/// `POST /v1/commits`: settles and enqueues that apply together or not at all.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitRequest {
    /// Makes a retry return the first outcome (`replayed`) instead of failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub commit_id: Option<CommitId>,
    /// The producer instance: `{"id", "epoch"}` from its registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<Fence>,
    /// Leases to ack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<AckItem>))]
    pub ack: Vec<LeaseRef>,
    /// Leases to nack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nack: Vec<NackItem>,
    /// Leases to fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fail: Vec<FailItem>,
    /// Leases to release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release: Vec<LeaseReleaseItem>,
    /// Jobs to enqueue, per queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enqueue: Vec<CommitEnqueueItem>,
    /// Saved as the producer's checkpoint with the commit (needs `producer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub checkpoint: Option<serde_json::Value>,
}

impl CommitRequest {
    /// The wire form of `commit`.
    pub fn from_commit(commit: &Commit) -> Self {
        CommitRequest {
            commit_id: commit.commit_id.clone(),
            producer: commit.producer.clone(),
            ack: commit.ack.clone(),
            nack: commit
                .nack
                .iter()
                .map(|n| NackItem {
                    id: n.id,
                    lease_token: n.lease_token,
                    delay_ms: n.delay_ms,
                    error: n.error.clone(),
                })
                .collect(),
            fail: commit
                .fail
                .iter()
                .map(|f| FailItem { id: f.id, lease_token: f.lease_token, error: f.error.clone() })
                .collect(),
            release: commit
                .release
                .iter()
                .map(|r| LeaseReleaseItem { id: r.id, lease_token: r.lease_token, delay_ms: r.delay_ms })
                .collect(),
            enqueue: commit
                .enqueue
                .iter()
                .map(|e| CommitEnqueueItem {
                    queue: e.queue.clone(),
                    jobs: e.jobs.iter().map(EnqueueJob::from_new_job).collect(),
                })
                .collect(),
            checkpoint: commit.checkpoint.clone(),
        }
    }

    /// The commit this asks for.
    pub fn into_commit(self) -> Result<Commit> {
        let mut enqueue = Vec::with_capacity(self.enqueue.len());
        for item in self.enqueue {
            let jobs = item
                .jobs
                .into_iter()
                .enumerate()
                .map(|(i, job)| job.into_new_job(i))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| match e {
                    Error::InvalidRequest(m) => Error::InvalidRequest(format!("enqueue into {}: {m}", item.queue)),
                    other => other,
                })?;
            enqueue.push(CommitEnqueue { queue: item.queue, jobs });
        }
        Ok(Commit {
            commit_id: self.commit_id,
            producer: self.producer,
            ack: self.ack,
            nack: self
                .nack
                .into_iter()
                .map(|n| crate::Nack { id: n.id, lease_token: n.lease_token, delay_ms: n.delay_ms, error: n.error })
                .collect(),
            fail: self
                .fail
                .into_iter()
                .map(|f| crate::Fail { id: f.id, lease_token: f.lease_token, error: f.error })
                .collect(),
            release: self
                .release
                .into_iter()
                .map(|r| crate::Release { id: r.id, lease_token: r.lease_token, delay_ms: r.delay_ms })
                .collect(),
            enqueue,
            checkpoint: self.checkpoint,
        })
    }
}

/// One item of a batch release (`POST /v1/releases`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseReleaseItem {
    /// Job id.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub id: JobId,
    /// The job's current lease token.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lease_token: LeaseToken,
    /// Ready again after this delay (default: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// `POST /v1/releases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseReleasesRequest {
    /// Releases, each judged on its own.
    pub releases: Vec<LeaseReleaseItem>,
}
