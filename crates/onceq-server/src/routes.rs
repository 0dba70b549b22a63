//! The `/v1` endpoints of docs/api.md, plus health, metrics and the OpenAPI document.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use onceq_core::api::*;
use onceq_core::group::{GroupInfo, JoinOptions, MemberInfo, MemberView, PartitionInfo};
use onceq_core::{
    DeadPage, Error, Extend, Fail, JobId, LeaseOptions, LeaseRef, Nack, QueueConfig, QueueConfigPatch, QueueInfo,
    QueueName, Store,
};
use serde::Deserialize;
use utoipa::OpenApi;

use crate::advice::AdvisedQueue;
use crate::auth::{Action, Principal};
use crate::body::JsonBody;
use crate::error::ApiError;
use crate::extract::{GroupPath, JobPath, KeyPath, MemberPath, ProducerPath, QueryParams, QueuePath};
use crate::state::AppState;
use crate::statuses::CommonStatuses;

type ApiResult<T> = Result<T, ApiError>;

/// Header whose value is a one-job enqueue's dedup id.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// The router of every endpoint.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/queues", get(queue_list))
        .route("/v1/queues/{queue}", get(queue_get).put(queue_put).delete(queue_delete))
        .route("/v1/queues/{queue}/pause", post(queue_pause))
        .route("/v1/queues/{queue}/resume", post(queue_resume))
        .route("/v1/queues/{queue}/jobs", post(job_enqueue))
        .route("/v1/queues/{queue}/leases", post(job_lease))
        .route("/v1/queues/{queue}/dead", get(dead_list).delete(dead_purge))
        .route("/v1/queues/{queue}/dead/redrive", post(dead_redrive))
        .route("/v1/queues/{queue}/groups", get(group_list))
        .route("/v1/queues/{queue}/groups/{group}", get(group_get))
        .route("/v1/queues/{queue}/groups/{group}/members", post(group_join))
        .route("/v1/queues/{queue}/groups/{group}/members/{member_id}", axum::routing::delete(group_leave))
        .route("/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat", post(group_heartbeat))
        .route("/v1/jobs/{id}", get(job_get).delete(job_delete))
        .route("/v1/jobs/{id}/cancel", post(job_cancel))
        .route("/v1/jobs/{id}/kill", post(job_kill))
        .route("/v1/jobs/{id}/ack", post(job_ack))
        .route("/v1/jobs/{id}/nack", post(job_nack))
        .route("/v1/jobs/{id}/extend", post(job_extend))
        .route("/v1/jobs/{id}/fail", post(job_fail))
        .route("/v1/jobs/{id}/release", post(job_release))
        .route("/v1/acks", post(acks))
        .route("/v1/nacks", post(nacks))
        .route("/v1/extends", post(extends))
        .route("/v1/fails", post(fails))
        .route("/v1/releases", post(releases))
        .route("/v1/commits", post(commit))
        .route("/v1/producers/{id}", get(producer_get).post(producer_register))
        .merge(crate::schedules::routes())
        .merge(crate::redrives::routes())
        .route("/v1/idempotency/{key}/begin", post(idempotency_begin))
        .route("/v1/idempotency/{key}/complete", post(idempotency_complete))
        .route("/v1/idempotency/{key}/release", post(idempotency_release))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(openapi_json))
        .fallback(|uri: axum::http::Uri| async move { ApiError::no_route(uri.path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "onceq HTTP API",
        version = "1",
        description = "A durable job queue, honest about delivery guarantees. See docs/api.md."
    ),
    paths(
        queue_list,
        queue_get,
        queue_put,
        queue_delete,
        queue_pause,
        queue_resume,
        job_enqueue,
        job_lease,
        dead_list,
        dead_purge,
        dead_redrive,
        group_list,
        group_get,
        group_join,
        group_heartbeat,
        group_leave,
        job_get,
        job_cancel,
        job_delete,
        job_kill,
        job_ack,
        job_nack,
        job_extend,
        job_fail,
        job_release,
        acks,
        nacks,
        extends,
        fails,
        releases,
        commit,
        producer_register,
        producer_get,
        crate::schedules::schedule_list,
        crate::schedules::schedule_get,
        crate::schedules::schedule_put,
        crate::schedules::schedule_delete,
        crate::schedules::schedule_pause,
        crate::schedules::schedule_resume,
        crate::schedules::schedule_tick,
        crate::redrives::redrive_list,
        crate::redrives::redrive_get,
        crate::redrives::redrive_stop,
        crate::redrives::redrive_tick,
        idempotency_begin,
        idempotency_complete,
        idempotency_release,
        crate::metrics::render,
        healthz,
        readyz,
        openapi_json
    ),
    modifiers(&CommonStatuses),
    components(schemas(
        ErrorBody,
        CommitRequest,
        CommitEnqueueItem,
        onceq_core::commit::CommitOutcome,
        onceq_core::commit::CommitEnqueued,
        onceq_core::commit::Fence,
        onceq_core::commit::Registration,
        ScheduleRequest,
        ScheduleView,
        ScheduleList,
        onceq_core::schedule::JobTemplate,
        onceq_core::schedule::CatchUp,
        onceq_core::schedule::TickReport,
        onceq_core::schedule::FiredTick,
        QueueConfig,
        QueueConfigPatch,
        // Flow limits (a queue's rate limit).
        onceq_core::flow::RateLimit,
        QueueInfo,
        QueueList,
        EnqueueRequest,
        EnqueueResponse,
        LeaseRequest,
        LeaseResponse,
        AckRequest,
        NackRequest,
        ExtendRequest,
        ExtendResponse,
        FailRequest,
        KillRequest,
        AcksRequest,
        NacksRequest,
        ExtendsRequest,
        FailsRequest,
        LeaseReleaseRequest,
        LeaseReleasesRequest,
        BeginRequest,
        BeginResponse,
        BeginState,
        CompleteRequest,
        ReleaseRequest,
        SettleResults,
        JobView,
        DeadListResponse,
        RedriveRequest,
        RedriveResponse,
        PacedRedriveView,
        RedriveList,
        RedriveTickResponse,
        onceq_core::redrive::RedriveState,
        AdvisedQueue,
        crate::advice::Advice,
        PurgeResponse,
        JoinOptions,
        MemberView,
        GroupInfo,
        GroupList,
        MemberInfo,
        PartitionInfo
    ))
)]
pub(crate) struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json",
    responses((status = 200, description = "the OpenAPI document of this API", content_type = "application/json")))]
async fn openapi_json() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// Query of a queue listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueListQuery {
    limit: Option<u32>,
    after: Option<String>,
}

/// Lists a page of the queues the token may read, by name.
#[utoipa::path(get, path = "/v1/queues",
    params(("limit" = Option<u32>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, body = QueueList, description = "a page of the queues the token may read")))]
async fn queue_list(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<QueueListQuery>,
) -> ApiResult<Json<QueueList>> {
    use onceq_core::limits::{QUEUE_PAGE_DEFAULT, QUEUE_PAGE_MAX};
    let limit = query.limit.unwrap_or(QUEUE_PAGE_DEFAULT);
    if !(1..=QUEUE_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!("limit is {limit}; it must be 1 to {QUEUE_PAGE_MAX}")));
    }
    let mut after = query.after.map(QueueName::new).transpose()?;
    let mut queues: Vec<onceq_core::QueueInfo> = Vec::new();
    // The store's pages hold queues the token may not read too: read on until this page is full.
    loop {
        let page = state.store.queue_list_page(after.as_ref(), limit).await?;
        let last_page = page.len() < limit as usize;
        for queue in page {
            if queues.len() == limit as usize {
                // One more queue exists past a full page: the client reads on from its last.
                let next = queues.last().map(|q| q.name.clone());
                return Ok(Json(QueueList { queues, next }));
            }
            after = Some(queue.name.clone());
            if principal.can(Action::Read, queue.name.as_str()) {
                queues.push(queue);
            }
        }
        if last_page {
            return Ok(Json(QueueList { queues, next: None }));
        }
    }
}

/// Reads a queue's config and stats.
#[utoipa::path(get, path = "/v1/queues/{queue}", params(("queue" = String, Path)),
    responses(
        (status = 200, body = AdvisedQueue, description = "the queue's config and stats, and the lease adviser's advice"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has no permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn queue_get(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<Json<AdvisedQueue>> {
    principal.check(Action::Read, queue.as_str())?;
    let info = state.store.queue_get(&queue).await?;
    let advice = crate::advice::advise(&info);
    Ok(Json(AdvisedQueue { info, advice }))
}

/// Creates or updates a queue. Changing `ordering` or `partitions` of a queue that holds jobs is
/// 409 `queue_not_empty`.
#[utoipa::path(put, path = "/v1/queues/{queue}", params(("queue" = String, Path)), request_body = QueueConfigPatch,
    responses(
        (status = 200, body = QueueConfig, description = "the queue's config after the change"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 409, body = ErrorBody, description = "queue_not_empty: ordering or partitions would change while the queue holds jobs; nothing changed")
    ))]
async fn queue_put(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
    JsonBody(patch): JsonBody<QueueConfigPatch>,
) -> ApiResult<Json<QueueConfig>> {
    principal.check(Action::Admin, queue.as_str())?;
    Ok(Json(state.store.queue_upsert(&queue, patch).await?))
}

/// Deletes a queue and its jobs.
#[utoipa::path(delete, path = "/v1/queues/{queue}", params(("queue" = String, Path)),
    responses(
        (status = 204, description = "the queue and its jobs are deleted"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn queue_delete(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<StatusCode> {
    principal.check(Action::Admin, queue.as_str())?;
    state.store.queue_delete(&queue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses leasing.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", params(("queue" = String, Path)),
    responses(
        (status = 204, description = "the queue is paused"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn queue_pause(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<StatusCode> {
    principal.check(Action::Admin, queue.as_str())?;
    state.store.queue_pause(&queue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes leasing.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", params(("queue" = String, Path)),
    responses(
        (status = 204, description = "the queue is resumed"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn queue_resume(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<StatusCode> {
    principal.check(Action::Admin, queue.as_str())?;
    state.store.queue_resume(&queue).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Enqueues jobs atomically. For a one-job request, `Idempotency-Key` is the job's dedup id.
/// With `producer`, refused (409 `fenced`) once a newer epoch of that producer registered.
#[utoipa::path(post, path = "/v1/queues/{queue}/jobs", params(("queue" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "dedup id of a one-job request")),
    request_body = EnqueueRequest,
    responses(
        (status = 200, body = EnqueueResponse, description = "the jobs, in request order, each new or a duplicate"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the produce permission on the queue"),
        (status = 409, body = ErrorBody, description = "fenced: a newer epoch of the producer registered; nothing was enqueued and this instance must stop"),
        (status = 413, body = ErrorBody, description = "payload_too_large: the request body is over 16 MiB or a job's payload over 1 MiB"),
        (status = 429, body = ErrorBody, description = "rate_limited: the jobs would take the queue past its max_depth; nothing was enqueued, retry after retry_after_ms")
    ))]
async fn job_enqueue(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
    headers: HeaderMap,
    JsonBody(request): JsonBody<EnqueueRequest>,
) -> ApiResult<Json<EnqueueResponse>> {
    principal.check(Action::Produce, queue.as_str())?;
    let mut keys = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let key = match keys.next() {
        None => None,
        Some(_) if keys.next().is_some() => {
            return Err(ApiError::invalid("the request has more than one Idempotency-Key header; send one"))
        }
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))?
                .to_owned(),
        ),
    };
    let mut jobs =
        request.jobs.into_iter().enumerate().map(|(i, job)| job.into_new_job(i)).collect::<Result<Vec<_>, Error>>()?;
    if let Some(key) = key {
        match jobs.as_mut_slice() {
            [job] => match &job.dedup_id {
                Some(existing) if *existing != key => {
                    return Err(ApiError::invalid("Idempotency-Key and the job's dedup_id differ; send one of them"))
                }
                _ => job.dedup_id = Some(key),
            },
            _ => return Err(ApiError::invalid("Idempotency-Key applies to one-job requests; use dedup_id per job")),
        }
    }
    let jobs = match request.producer {
        None => state.store.job_enqueue(&queue, jobs).await?,
        // A fenced enqueue is a commit of these jobs alone: the fence is checked and the jobs
        // written in one transaction, so no enqueue of an older epoch lands after a newer
        // registration returned.
        Some(fence) => {
            let commit = onceq_core::commit::Commit {
                producer: Some(fence),
                enqueue: vec![onceq_core::commit::CommitEnqueue { queue, jobs }],
                ..onceq_core::commit::Commit::default()
            };
            let mut outcome = state.store.commit(commit).await?;
            outcome.enqueued.pop().map(|e| e.jobs).unwrap_or_default()
        }
    };
    Ok(Json(EnqueueResponse { jobs }))
}

/// Leases ready jobs, waiting up to `wait_ms` for one. With `group` and `member_id`, as that
/// member of a consumer group: only from the partitions it owns and is not giving up (409
/// `not_member` when it is not a member).
#[utoipa::path(post, path = "/v1/queues/{queue}/leases", params(("queue" = String, Path)), request_body = LeaseRequest,
    responses(
        (status = 200, body = LeaseResponse, description = "the leased jobs, none when nothing was ready within wait_ms"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue, for a group lease (a plain lease from it finds no jobs)"),
        (status = 409, body = ErrorBody, description = "not_member: member_id is not a member of the group (never joined, left or expired); join again")
    ))]
async fn job_lease(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> ApiResult<Json<LeaseResponse>> {
    principal.check(Action::Consume, queue.as_str())?;
    let options = LeaseOptions {
        max_jobs: request.max_jobs.unwrap_or(1),
        visibility_timeout_ms: request.visibility_timeout_ms,
        wait_ms: request.wait_ms.unwrap_or(0),
    };
    options.validate()?;
    let member = request.member()?;
    let lease = async {
        match member {
            Some((group, member)) => state.store.group_lease(&queue, group, member, options).await,
            None => state.store.job_lease(&queue, options).await,
        }
    };
    // A long poll ends early when the server shuts down, so shutdown is not held up by it.
    // (Leased jobs whose reply is lost that way are redelivered after their visibility timeout.)
    let mut shutdown = state.shutdown.clone();
    let leased = tokio::select! {
        leased = lease => leased?,
        Ok(_) = shutdown.wait_for(|stopping| *stopping), if options.wait_ms > 0 => Vec::new(),
    };
    Ok(Json(LeaseResponse { jobs: leased.iter().map(LeasedJobView::from_leased).collect() }))
}

/// Lists a queue's consumer groups, by name (those that ever had members).
#[utoipa::path(get, path = "/v1/queues/{queue}/groups", params(("queue" = String, Path)),
    responses(
        (status = 200, body = GroupList, description = "the queue's consumer groups"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has no permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn group_list(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<Json<GroupList>> {
    principal.check(Action::Read, queue.as_str())?;
    Ok(Json(GroupList { groups: state.store.group_list(&queue).await? }))
}

/// Reads a consumer group: its members, and each partition's owner, hand-over and load. A group
/// that never had members reads as empty.
#[utoipa::path(get, path = "/v1/queues/{queue}/groups/{group}", params(("queue" = String, Path), ("group" = String, Path)),
    responses(
        (status = 200, body = GroupInfo, description = "the group's members and partitions"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has no permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn group_get(
    State(state): State<AppState>,
    principal: Principal,
    GroupPath { queue, group }: GroupPath,
) -> ApiResult<Json<GroupInfo>> {
    principal.check(Action::Read, queue.as_str())?;
    Ok(Json(state.store.group_get(&queue, &group).await?))
}

/// Joins a consumer group of a `per_key` queue as a new member; the group rebalances. The reply
/// names the member's id, to present on heartbeats, leases and leave.
#[utoipa::path(post, path = "/v1/queues/{queue}/groups/{group}/members",
    params(("queue" = String, Path), ("group" = String, Path)), request_body = JoinOptions,
    responses(
        (status = 201, body = MemberView, description = "the new member", headers(("location" = String, description = "the member's path"))),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue"),
        (status = 409, body = ErrorBody, description = "conflict: another consumer group of the queue has members")
    ))]
async fn group_join(
    State(state): State<AppState>,
    principal: Principal,
    GroupPath { queue, group }: GroupPath,
    JsonBody(options): JsonBody<JoinOptions>,
) -> ApiResult<Response> {
    principal.check(Action::Consume, queue.as_str())?;
    options.validate()?;
    let view = state.store.group_join(&queue, &group, options).await?;
    let location = format!("/v1/queues/{queue}/groups/{group}/members/{}", view.member_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
}

/// Records a member's heartbeat; replies with its partitions and those it is giving up.
#[utoipa::path(post, path = "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat",
    params(("queue" = String, Path), ("group" = String, Path), ("member_id" = String, Path)),
    responses(
        (status = 200, body = MemberView, description = "the member's partitions and those it is giving up"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue"),
        (status = 409, body = ErrorBody, description = "not_member: the member id is not a member of the group (never joined, left or expired); join again")
    ))]
async fn group_heartbeat(
    State(state): State<AppState>,
    principal: Principal,
    MemberPath { queue, group, member }: MemberPath,
) -> ApiResult<Json<MemberView>> {
    principal.check(Action::Consume, queue.as_str())?;
    Ok(Json(state.store.group_heartbeat(&queue, &group, &member).await?))
}

/// Leaves a consumer group; the group rebalances, and the member's partitions move once its
/// leases in them are settled or expired.
#[utoipa::path(delete, path = "/v1/queues/{queue}/groups/{group}/members/{member_id}",
    params(("queue" = String, Path), ("group" = String, Path), ("member_id" = String, Path)),
    responses(
        (status = 204, description = "the member left; the group rebalances"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue"),
        (status = 409, body = ErrorBody, description = "not_member: the member id is not a member of the group (never joined, left or expired)")
    ))]
async fn group_leave(
    State(state): State<AppState>,
    principal: Principal,
    MemberPath { queue, group, member }: MemberPath,
) -> ApiResult<StatusCode> {
    principal.check(Action::Consume, queue.as_str())?;
    state.store.group_leave(&queue, &group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads one job.
#[utoipa::path(get, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView, description = "the job"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has neither the consume nor the admin permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)")
    ))]
async fn job_get(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
) -> ApiResult<Json<JobView>> {
    let job = state.store.job_get(id).await?;
    if !principal.can(Action::Consume, job.queue.as_str()) && !principal.can(Action::Admin, job.queue.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} has neither the consume nor the admin permission on queue {:?}, one of which reading its \
             jobs needs",
            principal.name(),
            job.queue.as_str()
        )));
    }
    Ok(Json(JobView::from_job(&job)))
}

/// Cancels one job: a scheduled, ready or blocked one at once; a leased one is marked, and its
/// holder learns of it at its next extend (`job_cancelled`).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", params(("id" = String, Path)),
    responses(
        (status = 200, body = JobView, description = "the job after the cancel: state cancelled, or leased with cancelled_at set (it ends cancelled when its lease ends, unless acked)"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has neither the produce nor the admin permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "conflict: the job is dead (redrive or purge it instead)")
    ))]
async fn job_cancel(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
) -> ApiResult<Json<JobView>> {
    // A job never changes queue while it can be cancelled (only a redrive of a dead job moves
    // one), so the queue read here is the one the cancel acts in.
    let queue = state.store.job_get(id).await?.queue;
    if !principal.can(Action::Produce, queue.as_str()) && !principal.can(Action::Admin, queue.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} has neither the produce nor the admin permission on queue {:?}, one of which cancelling its \
             jobs needs",
            principal.name(),
            queue.as_str()
        )));
    }
    let job = state.store.job_cancel(id).await?;
    Ok(Json(JobView::from_job(&job)))
}

/// The queue of job `id`, which `principal` must administer to delete or kill it. A job never
/// changes queue while it can be deleted or killed by an operator (only a redrive of a dead job
/// moves one, and then the job is read again by the store's statement, which acts on the id).
async fn admin_of_job(state: &AppState, principal: &Principal, id: JobId, what: &str) -> ApiResult<()> {
    let queue = state.store.job_get(id).await?.queue;
    if !principal.can(Action::Admin, queue.as_str()) {
        return Err(ApiError::forbidden(format!(
            "token {:?} lacks the admin permission on queue {:?}, which {what} its jobs needs",
            principal.name(),
            queue.as_str()
        )));
    }
    Ok(())
}

/// Deletes one job that is not leased, with its error history.
#[utoipa::path(delete, path = "/v1/jobs/{id}", params(("id" = String, Path)),
    responses(
        (status = 204, description = "the job is deleted (an ordered key it headed moves on)"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "conflict: the job is leased (cancel it, or let its holder settle it)")
    ))]
async fn job_delete(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
) -> ApiResult<StatusCode> {
    admin_of_job(&state, &principal, id, "deleting").await?;
    state.store.job_delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Fails one job that is not leased, now: it goes dead whatever attempts it has left.
#[utoipa::path(post, path = "/v1/jobs/{id}/kill", params(("id" = String, Path)), request_body = KillRequest,
    responses(
        (status = 200, body = JobView, description = "the job after the kill: dead, with the error recorded for its current attempt (a job dead already is returned as it is)"),
        (status = 400, body = ErrorBody, description = "invalid_request: the body is not a kill request"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "conflict: the job is leased (its holder fails it, or cancel it) or cancelled")
    ))]
async fn job_kill(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<KillRequest>,
) -> ApiResult<Json<JobView>> {
    admin_of_job(&state, &principal, id, "failing").await?;
    let error = request.error.as_deref().unwrap_or(KILL_ERROR_DEFAULT);
    let job = state.store.job_kill(id, error).await?;
    Ok(Json(JobView::from_job(&job)))
}

/// Checks that `principal` may consume from the queue of each job; returns, per job, the
/// refusal if any. Looks jobs up only for tokens that are not allowed everywhere.
async fn consume_checks(state: &AppState, principal: &Principal, ids: &[JobId]) -> Vec<Option<ApiError>> {
    if principal.everywhere(Action::Consume) {
        return ids.iter().map(|_| None).collect();
    }
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        out.push(match state.store.job_get(id).await {
            Ok(job) => principal.check(Action::Consume, job.queue.as_str()).err(),
            // Unknown jobs are left for the store to answer (not found), as for anyone.
            Err(_) => None,
        });
    }
    out
}

/// Runs a settle batch: refused items get their error, the rest go to the store in one call.
async fn settle<I, T, F, Fut>(
    state: &AppState,
    principal: &Principal,
    items: Vec<I>,
    id_of: impl Fn(&I) -> JobId,
    call: F,
    ok: impl Fn(JobId, T) -> SettleResult,
) -> ApiResult<Vec<SettleResult>>
where
    F: FnOnce(Vec<I>) -> Fut,
    Fut: std::future::Future<Output = onceq_core::Result<Vec<onceq_core::Result<T>>>>,
{
    onceq_core::store::validate::settle_batch(items.len())?;
    let ids: Vec<JobId> = items.iter().map(&id_of).collect();
    let refusals = consume_checks(state, principal, &ids).await;
    let allowed: Vec<I> =
        items.into_iter().zip(&refusals).filter(|(_, refusal)| refusal.is_none()).map(|(item, _)| item).collect();
    let mut results = if allowed.is_empty() { Vec::new() } else { call(allowed).await? }.into_iter();
    let mut out = Vec::with_capacity(ids.len());
    for (id, refusal) in ids.into_iter().zip(refusals) {
        out.push(match refusal {
            Some(refusal) => SettleResult { ok: false, error: Some(refusal.detail()), ..SettleResult::ok(id) },
            None => match results.next() {
                Some(Ok(value)) => ok(id, value),
                Some(Err(e)) => SettleResult::failed(id, &e),
                None => return Err(Error::Storage("the store answered fewer items than it was given".into()).into()),
            },
        });
    }
    Ok(out)
}

/// The one result of a one-item settle, as a response or an error.
fn single(mut results: Vec<SettleResult>) -> ApiResult<SettleResult> {
    let result = results.pop().ok_or_else(|| ApiError::from(Error::Storage("empty settle result".into())))?;
    match result.error.clone() {
        Some(detail) if !result.ok => Err(ApiError::from_detail(detail)),
        _ => Ok(result),
    }
}

/// Acks one lease.
#[utoipa::path(post, path = "/v1/jobs/{id}/ack", params(("id" = String, Path)), request_body = AckRequest,
    responses(
        (status = 204, description = "the job is acked"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "lease_lost: the token is not the job's current lease (expired, settled or leased again); nothing changed")
    ))]
async fn job_ack(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<AckRequest>,
) -> ApiResult<StatusCode> {
    let items = vec![LeaseRef { id, lease_token: request.lease_token }];
    let store = state.store.clone();
    single(
        settle(
            &state,
            &principal,
            items,
            |a| a.id,
            |v| async move { store.job_ack(&v).await },
            |id, ()| SettleResult::ok(id),
        )
        .await?,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// Nacks one lease: retry later (or dead-letter when attempts are exhausted).
#[utoipa::path(post, path = "/v1/jobs/{id}/nack", params(("id" = String, Path)), request_body = NackRequest,
    responses(
        (status = 204, description = "the job is nacked: retried later, or dead when out of attempts"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "lease_lost: the token is not the job's current lease (expired, settled or leased again); nothing changed")
    ))]
async fn job_nack(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<NackRequest>,
) -> ApiResult<StatusCode> {
    let items = vec![Nack { id, lease_token: request.lease_token, delay_ms: request.delay_ms, error: request.error }];
    let store = state.store.clone();
    single(
        settle(&state, &principal, items, |n| n.id, |v| async move { store.job_nack(&v).await }, SettleResult::nacked)
            .await?,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// Extends one lease.
#[utoipa::path(post, path = "/v1/jobs/{id}/extend", params(("id" = String, Path)), request_body = ExtendRequest,
    responses(
        (status = 200, body = ExtendResponse, description = "the lease's new expiry"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "lease_lost: the token is not the job's current lease (expired, settled or leased again); nothing changed")
    ))]
async fn job_extend(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> ApiResult<Json<ExtendResponse>> {
    let items =
        vec![Extend { id, lease_token: request.lease_token, visibility_timeout_ms: request.visibility_timeout_ms }];
    let store = state.store.clone();
    let result = single(
        settle(&state, &principal, items, |e| e.id, |v| async move { store.job_extend(&v).await }, extended).await?,
    )?;
    Ok(Json(ExtendResponse { lease_expires_at: result.lease_expires_at.unwrap_or_default() }))
}

fn extended(id: JobId, at: onceq_core::Timestamp) -> SettleResult {
    SettleResult { lease_expires_at: Some(format_time(at)), ..SettleResult::ok(id) }
}

/// Fails one lease: dead-letter now.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", params(("id" = String, Path)), request_body = FailRequest,
    responses(
        (status = 204, description = "the job is dead"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "lease_lost: the token is not the job's current lease (expired, settled or leased again); nothing changed")
    ))]
async fn job_fail(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<FailRequest>,
) -> ApiResult<StatusCode> {
    let items = vec![Fail { id, lease_token: request.lease_token, error: request.error }];
    let store = state.store.clone();
    single(
        settle(
            &state,
            &principal,
            items,
            |f| f.id,
            |v| async move { store.job_fail(&v).await },
            |id, ()| SettleResult::ok(id),
        )
        .await?,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// Releases one lease without counting it as an attempt: the job is ready again after the delay.
#[utoipa::path(post, path = "/v1/jobs/{id}/release", params(("id" = String, Path)), request_body = LeaseReleaseRequest,
    responses(
        (status = 204, description = "the job is released"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the job's queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such job (acked, purged, deleted with its queue, or never enqueued)"),
        (status = 409, body = ErrorBody, description = "lease_lost: the token is not the job's current lease (expired, settled or leased again); nothing changed")
    ))]
async fn job_release(
    State(state): State<AppState>,
    principal: Principal,
    JobPath(id): JobPath,
    JsonBody(request): JsonBody<LeaseReleaseRequest>,
) -> ApiResult<StatusCode> {
    let items = vec![onceq_core::Release { id, lease_token: request.lease_token, delay_ms: request.delay_ms }];
    let store = state.store.clone();
    single(
        settle(
            &state,
            &principal,
            items,
            |r| r.id,
            |v| async move { store.job_release(&v).await },
            |id, ()| SettleResult::ok(id),
        )
        .await?,
    )?;
    Ok(StatusCode::NO_CONTENT)
}

/// Releases many leases, each judged on its own.
#[utoipa::path(post, path = "/v1/releases", request_body = LeaseReleasesRequest,
    responses(
        (status = 200, body = SettleResults, description = "one result per item, in request order")
    ))]
async fn releases(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<LeaseReleasesRequest>,
) -> ApiResult<Json<SettleResults>> {
    let items: Vec<onceq_core::Release> = request
        .releases
        .into_iter()
        .map(|r| onceq_core::Release { id: r.id, lease_token: r.lease_token, delay_ms: r.delay_ms })
        .collect();
    let store = state.store.clone();
    let results = settle(&state, &principal, items, |r| r.id, |v| async move { store.job_release(&v).await }, {
        |id, ()| SettleResult::ok(id)
    })
    .await?;
    Ok(Json(SettleResults { results }))
}

/// Applies a commit: its settles and enqueues all apply, or none. Every settled job needs the
/// consume permission on its queue and every enqueue the produce permission on its queue.
#[utoipa::path(post, path = "/v1/commits", request_body = CommitRequest,
    responses(
        (status = 200, body = onceq_core::commit::CommitOutcome, description = "the commit applied, or was replayed"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the produce permission on an enqueue's queue, or the consume permission on a settled job's queue"),
        (status = 409, body = ErrorBody, description = "lease_lost (jobs lists the stale leases), fenced, or conflict (commit_id reused with other content); nothing applied"),
        (status = 413, body = ErrorBody, description = "payload_too_large: the request body is over 16 MiB, or a payload or the commit's payloads over their limit"),
        (status = 429, body = ErrorBody, description = "rate_limited: an enqueue would take its queue past its max_depth; nothing applied, retry after retry_after_ms")
    ))]
async fn commit(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<CommitRequest>,
) -> ApiResult<Json<onceq_core::commit::CommitOutcome>> {
    let commit = request.into_commit()?;
    onceq_core::store::validate::commit(&commit)?;
    for batch in &commit.enqueue {
        principal.check(Action::Produce, batch.queue.as_str())?;
    }
    let ids: Vec<JobId> = commit.leases().map(|l| l.id).collect();
    if let Some(refusal) = consume_checks(&state, &principal, &ids).await.into_iter().flatten().next() {
        return Err(refusal);
    }
    Ok(Json(state.store.commit(commit).await?))
}

/// Registers a producer (again): a new epoch, fencing every older one, and the checkpoint of
/// its last commit. Needs the produce permission on a queue named as the producer (name
/// producers after what they feed, or use a token for `*`).
#[utoipa::path(post, path = "/v1/producers/{id}", params(("id" = String, Path)),
    responses(
        (status = 200, body = onceq_core::commit::Registration, description = "the new epoch and the last checkpoint"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the produce permission on a queue named as the producer")
    ))]
async fn producer_register(
    State(state): State<AppState>,
    principal: Principal,
    ProducerPath(producer): ProducerPath,
) -> ApiResult<Json<onceq_core::commit::Registration>> {
    principal.check(Action::Produce, producer.as_str())?;
    Ok(Json(state.store.producer_register(&producer).await?))
}

/// Reads a producer: its epoch (0 when it never registered) and the checkpoint of its last
/// commit. Any permission on a queue named as the producer.
#[utoipa::path(get, path = "/v1/producers/{id}", params(("id" = String, Path)),
    responses(
        (status = 200, body = onceq_core::commit::Registration, description = "the current epoch and the last checkpoint"),
        (status = 403, body = ErrorBody, description = "forbidden: the token has no permission on a queue named as the producer")
    ))]
async fn producer_get(
    State(state): State<AppState>,
    principal: Principal,
    ProducerPath(producer): ProducerPath,
) -> ApiResult<Json<onceq_core::commit::Registration>> {
    principal.check(Action::Read, producer.as_str())?;
    Ok(Json(state.store.producer_get(&producer).await?))
}

/// Acks many leases, each judged on its own.
#[utoipa::path(post, path = "/v1/acks", request_body = AcksRequest, responses(
        (status = 200, body = SettleResults, description = "one result per item, in request order")
    ))]
async fn acks(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<AcksRequest>,
) -> ApiResult<Json<SettleResults>> {
    let store = state.store.clone();
    let results = settle(&state, &principal, request.acks, |a| a.id, |v| async move { store.job_ack(&v).await }, {
        |id, ()| SettleResult::ok(id)
    })
    .await?;
    Ok(Json(SettleResults { results }))
}

/// Nacks many leases, each judged on its own.
#[utoipa::path(post, path = "/v1/nacks", request_body = NacksRequest, responses(
        (status = 200, body = SettleResults, description = "one result per item, in request order")
    ))]
async fn nacks(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<NacksRequest>,
) -> ApiResult<Json<SettleResults>> {
    let items: Vec<Nack> = request
        .nacks
        .into_iter()
        .map(|n| Nack { id: n.id, lease_token: n.lease_token, delay_ms: n.delay_ms, error: n.error })
        .collect();
    let store = state.store.clone();
    let results =
        settle(&state, &principal, items, |n| n.id, |v| async move { store.job_nack(&v).await }, SettleResult::nacked)
            .await?;
    Ok(Json(SettleResults { results }))
}

/// Extends many leases, each judged on its own.
#[utoipa::path(post, path = "/v1/extends", request_body = ExtendsRequest, responses(
        (status = 200, body = SettleResults, description = "one result per item, in request order")
    ))]
async fn extends(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<ExtendsRequest>,
) -> ApiResult<Json<SettleResults>> {
    let items: Vec<Extend> = request
        .extends
        .into_iter()
        .map(|e| Extend { id: e.id, lease_token: e.lease_token, visibility_timeout_ms: e.visibility_timeout_ms })
        .collect();
    let store = state.store.clone();
    let results =
        settle(&state, &principal, items, |e| e.id, |v| async move { store.job_extend(&v).await }, extended).await?;
    Ok(Json(SettleResults { results }))
}

/// Fails many leases, each judged on its own.
#[utoipa::path(post, path = "/v1/fails", request_body = FailsRequest, responses(
        (status = 200, body = SettleResults, description = "one result per item, in request order")
    ))]
async fn fails(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(request): JsonBody<FailsRequest>,
) -> ApiResult<Json<SettleResults>> {
    let items: Vec<Fail> =
        request.fails.into_iter().map(|f| Fail { id: f.id, lease_token: f.lease_token, error: f.error }).collect();
    let store = state.store.clone();
    let results = settle(&state, &principal, items, |f| f.id, |v| async move { store.job_fail(&v).await }, {
        |id, ()| SettleResult::ok(id)
    })
    .await?;
    Ok(Json(SettleResults { results }))
}

/// Query of a dead-letter listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    limit: Option<u32>,
    after: Option<String>,
}

/// Lists a page of dead jobs.
#[utoipa::path(get, path = "/v1/queues/{queue}/dead",
    params(("queue" = String, Path), ("limit" = Option<u32>, Query), ("after" = Option<String>, Query)),
    responses(
        (status = 200, body = DeadListResponse, description = "a page of dead jobs"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn dead_list(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
    QueryParams(query): QueryParams<DeadQuery>,
) -> ApiResult<Json<DeadListResponse>> {
    principal.check(Action::Admin, queue.as_str())?;
    let after = query.after.as_deref().map(str::parse::<JobId>).transpose()?;
    let page = DeadPage { after, limit: query.limit.unwrap_or(100) };
    let list = state.store.dead_list(&queue, page).await?;
    Ok(Json(DeadListResponse { jobs: list.jobs.iter().map(JobView::from_job).collect(), next: list.next }))
}

/// Makes dead jobs ready again (all, by ids, by filters, up to a limit), attempts reset; with
/// `rate_per_second`, in the background at that pace.
#[utoipa::path(post, path = "/v1/queues/{queue}/dead/redrive", params(("queue" = String, Path)),
    request_body = RedriveRequest, responses(
        (status = 200, body = RedriveResponse, description = "how many dead jobs matched, and how many are ready again"),
        (status = 202, body = PacedRedriveView, description = "a paced redrive started (`rate_per_second`)"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue (or on `to_queue`)"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue (or no such `to_queue`)"),
        (status = 409, body = ErrorBody, description = "conflict: as many paced redrives run as a store runs at once")
    ))]
async fn dead_redrive(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
    JsonBody(request): JsonBody<RedriveRequest>,
) -> ApiResult<Response> {
    principal.check(Action::Admin, queue.as_str())?;
    // Moving jobs into another queue needs the same permission there.
    if let Some(to) = &request.to_queue {
        principal.check(Action::Admin, to.as_str())?;
    }
    let rate = request.rate_per_second;
    let redrive = request.into_redrive()?;
    if let Some(rate) = rate {
        let paced = state.store.redrive_start(&queue, redrive, rate).await?;
        return Ok((StatusCode::ACCEPTED, Json(PacedRedriveView::from_paced(&paced))).into_response());
    }
    let done = state.store.dead_redrive(&queue, redrive).await?;
    Ok(Json(RedriveResponse { matched: done.matched, redriven: done.redriven, last: done.last }).into_response())
}

/// Deletes every dead job of a queue.
#[utoipa::path(delete, path = "/v1/queues/{queue}/dead", params(("queue" = String, Path)),
    responses(
        (status = 200, body = PurgeResponse, description = "how many dead jobs were deleted"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the admin permission on the queue"),
        (status = 404, body = ErrorBody, description = "not_found: no such queue")
    ))]
async fn dead_purge(
    State(state): State<AppState>,
    principal: Principal,
    QueuePath(queue): QueuePath,
) -> ApiResult<Json<PurgeResponse>> {
    principal.check(Action::Admin, queue.as_str())?;
    Ok(Json(PurgeResponse { purged: state.store.dead_purge(&queue).await? }))
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses(
        (status = 200, description = "the process is up")
    ))]
async fn healthz() -> StatusCode {
    StatusCode::OK
}

/// The store answers (and the server is not shutting down).
#[utoipa::path(get, path = "/readyz", responses(
        (status = 200, description = "the store answers"),
        (status = 503, body = ErrorBody, description = "unavailable: the server is shutting down, or the store does not answer")
    ))]
async fn readyz(State(state): State<AppState>) -> ApiResult<StatusCode> {
    if *state.shutdown.borrow() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    // Reading a job that cannot exist goes through the store's read path end to end.
    match state.store.job_get(JobId::new(0)).await {
        Ok(_) | Err(Error::JobNotFound(_)) => Ok(StatusCode::OK),
        Err(e @ Error::Corrupt(_)) => {
            tracing::error!(error = %e, "not ready: the store's data is damaged; restore it from a backup");
            Err(ApiError::unavailable(
                "database corrupt: the store's data is damaged and the server stopped using it; restore the data \
                 from a backup (the server's log says what was found)",
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::unavailable("the store does not answer; see the server log"))
        }
    }
}

/// The idempotency store, or 503 when this server has none.
fn idempotency_store(state: &AppState) -> ApiResult<std::sync::Arc<dyn onceq_core::IdempotencyStore>> {
    state.idempotency.clone().ok_or_else(|| ApiError::unavailable("this server has no idempotency store"))
}

/// The `{key}` path segment. Keys are scoped by the token's `consume` patterns, matched
/// against the key (so `consume = ["payments*"]` covers keys like `payments.42`).
async fn idempotency_key(KeyPath(key): KeyPath, principal: &Principal) -> ApiResult<String> {
    principal.check(Action::Consume, &key)?;
    Ok(key)
}

/// Claims an idempotency key, or reports who holds it, or returns its recorded result.
#[utoipa::path(post, path = "/v1/idempotency/{key}/begin", params(("key" = String, Path)), request_body = BeginRequest,
    responses(
        (status = 200, body = BeginResponse, description = "acquired, in progress (by whom, until when) or completed (the result)"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the key"),
        (status = 409, body = ErrorBody, description = "conflict: the key was claimed with another fingerprint")
    ))]
async fn idempotency_begin(
    State(state): State<AppState>,
    principal: Principal,
    key: KeyPath,
    JsonBody(request): JsonBody<BeginRequest>,
) -> ApiResult<Json<BeginResponse>> {
    let key = idempotency_key(key, &principal).await?;
    let store = idempotency_store(&state)?;
    let begin =
        onceq_core::Begin { key, owner: request.owner, ttl_ms: request.ttl_ms, fingerprint: request.fingerprint };
    Ok(Json(BeginResponse::from_outcome(store.idempotency_begin(begin).await?)))
}

/// Records the result of a claimed key (owner-checked).
#[utoipa::path(post, path = "/v1/idempotency/{key}/complete", params(("key" = String, Path)),
    request_body = CompleteRequest, responses(
        (status = 204, description = "the result is recorded"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the key"),
        (status = 409, body = ErrorBody, description = "conflict: another owner holds the key"),
        (status = 413, body = ErrorBody, description = "payload_too_large: the request body is over 16 MiB or the result over 1 MiB")
    ))]
async fn idempotency_complete(
    State(state): State<AppState>,
    principal: Principal,
    key: KeyPath,
    JsonBody(request): JsonBody<CompleteRequest>,
) -> ApiResult<StatusCode> {
    let key = idempotency_key(key, &principal).await?;
    let store = idempotency_store(&state)?;
    let complete = onceq_core::Complete {
        key,
        owner: request.owner,
        result: request.result.get().as_bytes().to_vec(),
        retention_ms: request.retention_ms,
    };
    store.idempotency_complete(complete).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a claimed key up without a result (owner-checked).
#[utoipa::path(post, path = "/v1/idempotency/{key}/release", params(("key" = String, Path)),
    request_body = ReleaseRequest, responses(
        (status = 204, description = "the key is released"),
        (status = 403, body = ErrorBody, description = "forbidden: the token lacks the consume permission on the key"),
        (status = 409, body = ErrorBody, description = "conflict: another owner holds the key")
    ))]
async fn idempotency_release(
    State(state): State<AppState>,
    principal: Principal,
    key: KeyPath,
    JsonBody(request): JsonBody<ReleaseRequest>,
) -> ApiResult<StatusCode> {
    let key = idempotency_key(key, &principal).await?;
    let store = idempotency_store(&state)?;
    store.idempotency_release(&key, &request.owner).await?;
    Ok(StatusCode::NO_CONTENT)
}
