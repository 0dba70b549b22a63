//! Permissions checked before a request body is read: from the token and the path alone, so a
//! token that may not do what the endpoint does is refused (401, 403) without the server reading,
//! and holding in memory, a body of up to 16 MiB it would throw away.
//!
//! Each handler still makes its own, exact check (some need the body: the queues of a commit, the
//! jobs of a batch settle). This one is the part that the path decides: the action on the path's
//! queue (or idempotency key, or producer), or, where the path names none, that the token has the
//! action on some queue at all.

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Action, Principal};
use crate::error::ApiError;
use crate::state::AppState;

/// Where the permission of an endpoint applies.
enum Scope {
    /// The queue-name pattern is matched against this path parameter.
    Param(&'static str),
    /// The path names no queue: the token must have the action on some queue.
    Somewhere,
}

/// What the endpoint at `path` (its template) with `method` needs before its body is read; `None`
/// for endpoints without a body.
fn needs(method: &Method, path: &str) -> Option<&'static [(Action, Scope)]> {
    use Action::{Admin, Consume, Produce};
    use Scope::{Param, Somewhere};
    let needs: &'static [(Action, Scope)] = match (method.as_str(), path) {
        ("PUT", "/v1/queues/{queue}") => &[(Admin, Param("queue"))],
        ("POST", "/v1/queues/{queue}/jobs") => &[(Produce, Param("queue"))],
        ("POST", "/v1/queues/{queue}/leases") => &[(Consume, Param("queue"))],
        ("POST", "/v1/queues/{queue}/dead/redrive") => &[(Admin, Param("queue"))],
        ("POST", "/v1/queues/{queue}/groups/{group}/members") => &[(Consume, Param("queue"))],
        ("POST", "/v1/queues/{queue}/groups/{group}/members/{member_id}/heartbeat") => &[(Consume, Param("queue"))],
        (
            "POST",
            "/v1/idempotency/{key}/begin" | "/v1/idempotency/{key}/complete" | "/v1/idempotency/{key}/release",
        ) => &[(Consume, Param("key"))],
        ("POST", "/v1/producers/{id}") => &[(Produce, Param("id"))],
        ("POST", "/v1/jobs/{id}/ack" | "/v1/jobs/{id}/nack" | "/v1/jobs/{id}/extend" | "/v1/jobs/{id}/fail")
        | ("POST", "/v1/jobs/{id}/release" | "/v1/acks" | "/v1/nacks" | "/v1/extends" | "/v1/fails")
        | ("POST", "/v1/releases") => &[(Consume, Somewhere)],
        // A commit may only enqueue, or only settle: either permission lets it be read.
        ("POST", "/v1/commits") => &[(Consume, Somewhere), (Produce, Somewhere)],
        ("PUT", "/v1/schedules/{name}") => &[(Admin, Somewhere)],
        _ => return None,
    };
    Some(needs)
}

/// Refuses a request whose token may not do what its endpoint does, before its body is read.
pub(crate) async fn before_the_body(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let Some(needs) = matched.as_ref().and_then(|path| needs(request.method(), path.as_str())) else {
        return next.run(request).await;
    };
    // A path that does not decode is the handler's to refuse, in its own words.
    let Ok(params) = params else { return next.run(request).await };
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let principal = match state.auth.authenticate(header) {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let mut refusal = None;
    for (action, scope) in needs {
        let allowed = match scope {
            Scope::Param(name) => match params.iter().find(|(key, _)| key == name) {
                // A malformed name is the handler's to refuse (400), with its own words.
                Some((_, value)) => return check_param(&principal, *action, value, request, next).await,
                None => true,
            },
            Scope::Somewhere => principal.anywhere(*action),
        };
        if allowed {
            return next.run(request).await;
        }
        refusal.get_or_insert(*action);
    }
    let action = refusal.unwrap_or(Action::Read);
    ApiError::forbidden(format!(
        "token {:?} has no {} permission on any queue, which this endpoint needs",
        principal.name(),
        action.word()
    ))
    .into_response()
}

/// Refuses unless `principal` may do `action` on the path's `value`.
async fn check_param(principal: &Principal, action: Action, value: &str, request: Request, next: Next) -> Response {
    match principal.check(action, value) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}
