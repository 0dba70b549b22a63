//! Path and query extractors whose rejections speak the API's error format.

use axum::extract::{FromRequestParts, Path, Query};
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
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
        QueueName::new(raw).map(QueuePath).map_err(ApiError::from)
    }
}

/// The `{id}` path segment of a producer, validated.
pub struct ProducerPath(pub onceq_core::commit::ProducerId);

impl<S: Send + Sync> FromRequestParts<S> for ProducerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
        onceq_core::commit::ProducerId::new(raw).map(ProducerPath).map_err(ApiError::from)
    }
}

/// The `{id}` path segment, parsed.
pub struct JobPath(pub JobId);

impl<S: Send + Sync> FromRequestParts<S> for JobPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
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
        let Path(raw) = Path::<RawGroupPath>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
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
        let Path(raw) = Path::<RawMemberPath>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))?;
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
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|e| ApiError::invalid(format!("bad query parameters: {}", e.body_text())))
    }
}
