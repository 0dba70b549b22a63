//! Path and query extractors whose rejections speak the API's error format.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use onceq_core::group::{GroupName, MemberId};
use onceq_core::{JobId, QueueName};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;

/// The `{queue}` path segment, validated.
pub struct QueuePath(pub QueueName);

impl<S: Send + Sync> FromRequestParts<S> for QueuePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = raw_path(parts, state).await?;
        QueueName::new(raw).map(QueuePath).map_err(ApiError::from)
    }
}

/// The `{id}` path segment of a producer, validated.
pub struct ProducerPath(pub onceq_core::commit::ProducerId);

impl<S: Send + Sync> FromRequestParts<S> for ProducerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = raw_path(parts, state).await?;
        onceq_core::commit::ProducerId::new(raw).map(ProducerPath).map_err(ApiError::from)
    }
}

/// The `{id}` path segment, parsed.
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = raw_path(parts, state).await?;
        // As sent: `%31` decodes to `1`, and is still not how a job id is written.
        let sent = parts.uri.path().strip_prefix("/v1/jobs/").and_then(|rest| rest.split('/').next());
        if sent.is_some_and(|sent| sent != raw) {
            return Err(ApiError::invalid(format!(
                "{:?} is not a job id: a job id is its decimal digits, not percent-encoded",
                sent.unwrap_or_default()
            )));
        }
        raw.parse::<JobId>().map(JobPath).map_err(ApiError::from)
    }
}

/// The `{queue}` and `{group}` path segments, validated.
pub struct GroupPath {
    /// The queue.
    pub queue: QueueName,
    /// The consumer group.
    pub group: GroupName,
}

/// The segments of a group path, before they are validated.
#[derive(Deserialize)]
struct RawGroupPath {
    queue: String,
    group: String,
}

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: RawGroupPath = raw_path(parts, state).await?;
        let queue = QueueName::new(raw.queue)?;
        let group = GroupName::new(raw.group)?;
        Ok(GroupPath { queue, group })
    }
}

/// The `{queue}`, `{group}` and `{member_id}` path segments, validated.
pub struct MemberPath {
    /// The queue.
    pub queue: QueueName,
    /// The consumer group.
    pub group: GroupName,
    /// The member.
    pub member: MemberId,
}

/// The segments of a member path, before they are validated.
#[derive(Deserialize)]
struct RawMemberPath {
    queue: String,
    group: String,
    member_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for MemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: RawMemberPath = raw_path(parts, state).await?;
        let queue = QueueName::new(raw.queue)?;
        let group = GroupName::new(raw.group)?;
        let member = raw.member_id.parse::<MemberId>()?;
        Ok(MemberPath { queue, group, member })
    }
}

/// Query parameters of type `T`.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let _ = state;
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str::<T>(query).map(QueryParams).map_err(|e| {
            ApiError::invalid(format!(
                "the query string `{}` is not valid for this endpoint: {e} (see /openapi.json for the parameters it takes)",
                shorten(query)
            ))
        })
    }
}

/// The `{key}` path segment of an idempotency key, as sent (percent-decoded).
pub struct KeyPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        raw_path(parts, state).await.map(KeyPath)
    }
}

/// The raw `{...}` segments of a path, percent-decoded, as `T`; a rejection in the API's words.
pub(crate) async fn raw_path<T: DeserializeOwned + Send, S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<T, ApiError> {
    Path::<T>::from_request_parts(parts, state).await.map(|Path(raw)| raw).map_err(|_| {
        ApiError::invalid(format!(
            "the path `{}` has a segment that is not valid UTF-8 once percent-decoded",
            shorten(parts.uri.path())
        ))
    })
}

/// At most 200 characters of `text`, for a message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}
