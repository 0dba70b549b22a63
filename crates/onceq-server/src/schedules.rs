//! The `/v1/schedules` endpoints (docs/api.md, "Schedules").
//!
//! Permissions follow the queue a schedule fills: creating, replacing, deleting, pausing and
//! resuming one needs the admin permission on its queue (on the old and the new queue when a
//! replacement moves it); reading one needs any permission on its queue, and a listing shows
//! only those. Firing due ticks now (`POST /v1/schedule-ticks`) needs admin on every queue.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use onceq_core::api::{ErrorBody, ScheduleList, ScheduleRequest, ScheduleView};
use onceq_core::schedule::{ScheduleName, TickReport};
use onceq_core::Store;

use crate::auth::{Action, Principal};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The schedule endpoints' routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", get(schedule_list))
        .route("/v1/schedules/{name}", get(schedule_get).put(schedule_put).delete(schedule_delete))
        .route("/v1/schedules/{name}/pause", post(schedule_pause))
        .route("/v1/schedules/{name}/resume", post(schedule_resume))
        .route("/v1/schedule-ticks", post(schedule_tick))
}

/// The `{name}` path segment of a schedule, validated.
pub(crate) struct SchedulePath(pub ScheduleName);

impl<S: Send + Sync> FromRequestParts<S> for SchedulePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = crate::extract::raw_path(parts, state).await?;
        ScheduleName::new(raw).map(SchedulePath).map_err(ApiError::from)
    }
}

/// Checks `action` on the queue of an existing schedule (404 when there is none).
async fn check_on_schedule(
    state: &AppState,
    principal: &Principal,
    action: Action,
    name: &ScheduleName,
) -> ApiResult<()> {
    let info = state.store.schedule_get(name).await?;
    principal.check(action, info.spec.queue.as_str())
}

/// Lists schedules (those on queues the token may read), by name.
#[utoipa::path(get, path = "/v1/schedules", responses(
        (status = 200, body = ScheduleList, description = "the schedules on queues the token may read")
    ))]
pub(crate) async fn schedule_list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<ScheduleList>> {
    let schedules = state.store.schedule_list().await?;
    let schedules = schedules
        .iter()
        .filter(|s| principal.can(Action::Read, s.spec.queue.as_str()))
        .map(ScheduleView::from_info)
        .collect();
    Ok(Json(ScheduleList { schedules }))
}

/// Reads a schedule: its spec, next ticks, last tick and last job.
#[utoipa::path(get, path = "/v1/schedules/{name}", params(("name" = String, Path)),
    responses(
        (status = 200, body = ScheduleView, description = "the schedule"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has no permission on the schedule's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such schedule")
    ))]
pub(crate) async fn schedule_get(
    State(state): State<AppState>,
    principal: Principal,
    SchedulePath(name): SchedulePath,
) -> ApiResult<Json<ScheduleView>> {
    let info = state.store.schedule_get(&name).await?;
    principal.check(Action::Read, info.spec.queue.as_str())?;
    Ok(Json(ScheduleView::from_info(&info)))
}

/// Creates or replaces a schedule.
#[utoipa::path(put, path = "/v1/schedules/{name}", params(("name" = String, Path)), request_body = ScheduleRequest,
    responses(
        (status = 200, body = ScheduleView, description = "the schedule as created or replaced"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the schedule's queue (or on the queue it replaces)")
    ))]
pub(crate) async fn schedule_put(
    State(state): State<AppState>,
    principal: Principal,
    SchedulePath(name): SchedulePath,
    JsonBody(request): JsonBody<ScheduleRequest>,
) -> ApiResult<Json<ScheduleView>> {
    let spec = request.into_spec()?;
    spec.validate()?;
    principal.check(Action::Admin, spec.queue.as_str())?;
    match state.store.schedule_get(&name).await {
        Ok(old) => principal.check(Action::Admin, old.spec.queue.as_str())?,
        Err(onceq_core::Error::ScheduleNotFound(_)) => {}
        Err(other) => return Err(other.into()),
    }
    let info = state.store.schedule_upsert(&name, spec).await?;
    Ok(Json(ScheduleView::from_info(&info)))
}

/// Deletes a schedule; the jobs it enqueued stay.
#[utoipa::path(delete, path = "/v1/schedules/{name}", params(("name" = String, Path)),
    responses(
        (status = 204, description = "the schedule is deleted"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the schedule's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such schedule")
    ))]
pub(crate) async fn schedule_delete(
    State(state): State<AppState>,
    principal: Principal,
    SchedulePath(name): SchedulePath,
) -> ApiResult<StatusCode> {
    check_on_schedule(&state, &principal, Action::Admin, &name).await?;
    state.store.schedule_delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a schedule: it fires nothing until resumed.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", params(("name" = String, Path)),
    responses(
        (status = 204, description = "the schedule is paused"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the schedule's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such schedule")
    ))]
pub(crate) async fn schedule_pause(
    State(state): State<AppState>,
    principal: Principal,
    SchedulePath(name): SchedulePath,
) -> ApiResult<StatusCode> {
    check_on_schedule(&state, &principal, Action::Admin, &name).await?;
    state.store.schedule_pause(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes a schedule from its next tick after now.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", params(("name" = String, Path)),
    responses(
        (status = 204, description = "the schedule is resumed"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the schedule's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such schedule")
    ))]
pub(crate) async fn schedule_resume(
    State(state): State<AppState>,
    principal: Principal,
    SchedulePath(name): SchedulePath,
) -> ApiResult<StatusCode> {
    check_on_schedule(&state, &principal, Action::Admin, &name).await?;
    state.store.schedule_resume(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fires every due tick of every schedule now (the store also does so by itself, about every
/// second); returns what this call fired.
#[utoipa::path(post, path = "/v1/schedule-ticks",
    responses(
        (status = 200, body = TickReport, description = "what this call fired"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on every queue (\"*\")")
    ))]
pub(crate) async fn schedule_tick(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<TickReport>> {
    if !principal.everywhere(Action::Admin) {
        return Err(ApiError::forbidden("firing schedule ticks needs the admin permission on every queue (\"*\")"));
    }
    Ok(Json(state.store.schedule_tick().await?))
}
