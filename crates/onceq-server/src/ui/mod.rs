//! The web dashboard at `/ui`: server-rendered HTML (maud: templates checked at compile time,
//! every value escaped unless marked otherwise) and one small script for live counts, every
//! asset embedded in the binary.
//!
//! # Layout
//!
//! - `session`: logins, the session cookie and the CSRF token of every state-changing request.
//! - `context`: [`Ui`](context::Ui), what every page shares; the layout, the error page, the
//!   security headers (CSP without inline scripts) and how values are shown.
//! - `pages`: the pages and the actions, each checking the session's token as the API does.
//!
//! The dashboard is outside the OpenAPI document (it is HTML for people, not an API); see
//! docs/api.md, "Dashboard".

mod context;
mod pages;
mod session;

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use onceq_core::Inspect;

use crate::state::AppState;

/// Largest form a dashboard request may post, in bytes (a redrive of 1,000 selected ids fits).
pub(crate) const UI_FORM_BYTES_MAX: usize = 64 * 1024;

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

/// The dashboard's routes over `app`, with `inspect` for the job lists.
pub(crate) fn routes(app: AppState, inspect: Option<Arc<dyn Inspect>>) -> Router {
    let ui = context::Ui { app, inspect, sessions: session::Sessions::default() };
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/overview.json", get(pages::overview_live))
        .route("/ui/login", get(pages::login_page).post(pages::login_submit))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/queues", post(pages::queue_create))
        .route("/ui/queues/{queue}", get(pages::queue_page))
        .route("/ui/queues/{queue}/find", get(pages::queue_find))
        .route("/ui/queues/{queue}/config", post(pages::queue_config))
        .route("/ui/queues/{queue}/dead", get(pages::dead_page))
        .route("/ui/queues/{queue}/dead/redrive", post(pages::dead_redrive))
        .route("/ui/queues/{queue}/dead/purge", post(pages::dead_purge))
        .route("/ui/queues/{queue}/dead/purge-selected", post(pages::dead_purge_selected))
        .route("/ui/queues/{queue}/{action}", post(pages::queue_pause_or_resume))
        .route("/ui/jobs/{id}", get(pages::job_page))
        .route("/ui/jobs/{id}/retry", post(pages::job_retry))
        .route("/ui/jobs/{id}/cancel", post(pages::job_cancel))
        .route("/ui/jobs/{id}/kill", post(pages::job_kill))
        .route("/ui/jobs/{id}/delete", post(pages::job_delete))
        .route("/ui/idempotency", get(pages::idempotency_page))
        .route("/ui/assets/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/assets/dashboard.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .layer(axum::extract::DefaultBodyLimit::max(UI_FORM_BYTES_MAX))
        .with_state(ui)
}
