//! The `/v1/redrives` endpoints (docs/api.md, "Paced redrives"): reading, listing and stopping
//! the paced redrives that `POST /v1/queues/{queue}/dead/redrive` with `rate_per_second`
//! starts, and stepping them now.
//!
//! Permissions follow the queue a redrive drains: reading and stopping one needs the admin
//! permission on its queue, and a listing shows only those. Stepping every redrive now
//! (`POST /v1/redrive-ticks`) needs admin on every queue.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use onceq_core::api::{ErrorBody, PacedRedriveView, RedriveList, RedriveTickResponse};
use onceq_core::{RedriveId, Store};

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The redrive endpoints' routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/redrives", get(redrive_list))
        .route("/v1/redrives/{id}", get(redrive_get))
        .route("/v1/redrives/{id}/stop", post(redrive_stop))
        .route("/v1/redrive-ticks", post(redrive_tick))
}

/// The `{id}` path segment of a paced redrive, validated.
pub(crate) struct RedrivePath(pub RedriveId);

impl<S: Send + Sync> FromRequestParts<S> for RedrivePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw: String = crate::extract::raw_path(parts, state).await?;
        raw.parse::<RedriveId>().map(RedrivePath).map_err(ApiError::from)
    }
}

/// Lists paced redrives on queues the token administers: running ones first, newest first.
#[utoipa::path(get, path = "/v1/redrives", responses(
        (status = 200, body = RedriveList, description = "the paced redrives of queues the token administers")
    ))]
pub(crate) async fn redrive_list(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<RedriveList>> {
    let redrives = state.store.redrive_list().await?;
    let redrives = redrives
        .iter()
        .filter(|r| principal.can(Action::Admin, r.queue.as_str()))
        .map(PacedRedriveView::from_paced)
        .collect();
    Ok(Json(RedriveList { redrives }))
}

/// Reads a paced redrive: its filter, rate, state and progress.
#[utoipa::path(get, path = "/v1/redrives/{id}", params(("id" = String, Path)),
    responses(
        (status = 200, body = PacedRedriveView, description = "the paced redrive"),
        (status = 400, body = ErrorBody, description = "invalid_request: the id is not a decimal number"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the redrive's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such paced redrive")
    ))]
pub(crate) async fn redrive_get(
    State(state): State<AppState>,
    principal: Principal,
    RedrivePath(id): RedrivePath,
) -> ApiResult<Json<PacedRedriveView>> {
    let paced = state.store.redrive_get(id).await?;
    principal.check(Action::Admin, paced.queue.as_str())?;
    Ok(Json(PacedRedriveView::from_paced(&paced)))
}

/// Stops a running paced redrive (what it redrove stays redriven); one already stopped or done
/// is returned as it is.
#[utoipa::path(post, path = "/v1/redrives/{id}/stop", params(("id" = String, Path)),
    responses(
        (status = 200, body = PacedRedriveView, description = "the paced redrive, stopped"),
        (status = 400, body = ErrorBody, description = "invalid_request: the id is not a decimal number"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the redrive's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such paced redrive")
    ))]
pub(crate) async fn redrive_stop(
    State(state): State<AppState>,
    principal: Principal,
    RedrivePath(id): RedrivePath,
) -> ApiResult<Json<PacedRedriveView>> {
    let paced = state.store.redrive_get(id).await?;
    principal.check(Action::Admin, paced.queue.as_str())?;
    Ok(Json(PacedRedriveView::from_paced(&state.store.redrive_stop(id).await?)))
}

/// Steps every running paced redrive now (the store also does so by itself, every 100 ms
/// while one runs); returns the jobs this call redrove.
#[utoipa::path(post, path = "/v1/redrive-ticks",
    responses(
        (status = 200, body = RedriveTickResponse, description = "the jobs this call redrove"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on every queue (\"*\")")
    ))]
pub(crate) async fn redrive_tick(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<RedriveTickResponse>> {
    if !principal.everywhere(Action::Admin) {
        return Err(ApiError::forbidden("stepping paced redrives needs the admin permission on every queue (\"*\")"));
    }
    Ok(Json(RedriveTickResponse { redriven: state.store.redrive_tick().await? }))
}
