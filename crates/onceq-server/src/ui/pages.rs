//! The dashboard's pages and actions: overview, queue, job, dead letters, idempotency keys, login.
//!
//! Every read is bounded: a page shows at most a named number of rows and reads no more than it
//! shows, except a lookup by payload substring or a dead-letter filter, which scans at most
//! [`SCAN_JOBS_MAX`] jobs per request and says where to continue.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use maud::{html, Markup};
use onceq_core::api::KILL_ERROR_DEFAULT;
use onceq_core::limits::{DEAD_PAGE_MAX, JOB_PAGE_MAX};
use onceq_core::{
    DeadPage, Error, Job, JobId, JobPage, JobState, QueueConfigPatch, QueueInfo, QueueName, Redrive, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::auth::{Action, Principal};
use crate::ui::context::{
    checked_form, csrf_field, field, page, page_headers, pretty, preview, time, Ui, UiError, UiResult,
};
use crate::ui::session::{
    cookie, login, random_hex, same_secret, set_cookie, Session, LOGIN_COOKIE, SESSION_COOKIE, SESSION_TTL,
};

/// Queues on one page of the overview.
pub(crate) const OVERVIEW_QUEUES_MAX: u32 = 50;
/// Jobs on one page of a queue's jobs.
pub(crate) const QUEUE_JOBS_SHOWN: u32 = 50;
/// Most jobs one payload lookup or dead-letter filter reads before it stops and offers to go on.
pub(crate) const SCAN_JOBS_MAX: usize = 10_000;
/// Pages of jobs a payload lookup reads per request at most (the pages that [`SCAN_JOBS_MAX`]
/// full ones make; a store's page may end short, `Inspect::job_page`).
const FIND_PAGES_MAX: usize = SCAN_JOBS_MAX.div_ceil(JOB_PAGE_MAX as usize);
/// Most matches one payload lookup or dead-letter filter shows.
pub(crate) const MATCHES_SHOWN: usize = 100;
/// Characters of a payload shown in a list.
const PAYLOAD_PREVIEW_CHARS: usize = 80;
/// Most ids one redrive form may select ([`REDRIVE_IDS_MAX`](onceq_core::limits::REDRIVE_IDS_MAX)).
const REDRIVE_SELECTED_MAX: usize = onceq_core::limits::REDRIVE_IDS_MAX;

const _: () = assert!(MATCHES_SHOWN <= REDRIVE_SELECTED_MAX);
const _: () = assert!(QUEUE_JOBS_SHOWN <= JOB_PAGE_MAX);

fn queue_name(name: String) -> UiResult<QueueName> {
    QueueName::new(name).map_err(|e| UiError::bad_request(e.to_string()))
}

/// Whether the principal may read `queue`'s jobs (payloads): consume or admin, as the API's
/// `GET /v1/jobs/{id}`.
fn can_read_jobs(principal: &Principal, queue: &str) -> bool {
    principal.can(Action::Consume, queue) || principal.can(Action::Admin, queue)
}

fn need(principal: &Principal, action: Action, queue: &str) -> UiResult<()> {
    principal.check(action, queue).map_err(UiError::from)
}

fn state_word(state: JobState) -> &'static str {
    match state {
        JobState::Scheduled => "scheduled",
        JobState::Ready => "ready",
        JobState::Leased => "leased",
        JobState::Dead => "dead",
        JobState::Blocked => "blocked",
        JobState::Cancelled => "cancelled",
    }
}

fn parse_state(word: &str) -> UiResult<JobState> {
    Ok(match word {
        "scheduled" => JobState::Scheduled,
        "ready" => JobState::Ready,
        "leased" => JobState::Leased,
        "dead" => JobState::Dead,
        "blocked" => JobState::Blocked,
        "cancelled" => JobState::Cancelled,
        other => {
            return Err(UiError::bad_request(format!(
                "state {other:?} is not one of ready, scheduled, leased, dead, blocked, cancelled"
            )))
        }
    })
}

fn parse_id(text: &str) -> UiResult<JobId> {
    text.trim().parse::<JobId>().map_err(|e| UiError::bad_request(e.to_string()))
}

// ---- login ----

/// Login form fields.
#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    csrf: String,
}

/// The login form; with no tokens configured, a session at once (the server is loopback-only then).
pub(crate) async fn login_page(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if !ui.app.auth.enabled() {
        let Some(id) = ui.sessions.start(Principal::anyone()) else { return too_many_sessions() };
        let cookie = set_cookie(&headers, SESSION_COOKIE, &id, SESSION_TTL);
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/ui")).into_response();
    }
    login_form(&headers, None)
}

fn too_many_sessions() -> Response {
    UiError::new(StatusCode::SERVICE_UNAVAILABLE, "too many dashboard sessions are open; retry later").into_response()
}

fn login_form(headers: &HeaderMap, error: Option<&str>) -> Response {
    let csrf = random_hex();
    let markup = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "onceq: log in" } link rel="stylesheet" href="/ui/assets/dashboard.css"; }
            body {
                main.login {
                    h1 { "onceq" }
                    @if let Some(error) = error { p.error { (error) } }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "Bearer token " input type="password" name="token" autocomplete="off" autofocus; }
                        button type="submit" { "Log in" }
                    }
                    p.hint { "A token from the server's config file. A token without the admin permission sees a read-only dashboard." }
                }
            }
        }
    };
    let cookie = set_cookie(headers, LOGIN_COOKIE, &csrf, std::time::Duration::from_secs(3600));
    let mut response = (page_headers(), markup.into_string()).into_response();
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Checks the token and starts a session. The form's CSRF token must match its cookie (a
/// login from another site is refused).
pub(crate) async fn login_submit(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return UiError::bad_request("the login form needs token and csrf").into_response();
    };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !same_secret(&form.csrf, expected) {
        return UiError::forbidden("this login carries no valid CSRF token: reload the login page").into_response();
    }
    let Some(principal) = login(&ui.app.auth, &form.token) else {
        let mut response = login_form(&headers, Some("unknown token"));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    };
    let Some(id) = ui.sessions.start(principal) else { return too_many_sessions() };
    let cookie = set_cookie(&headers, SESSION_COOKIE, &id, SESSION_TTL);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui")).into_response()
}

/// Ends the session.
pub(crate) async fn logout(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    checked_form(&session, &body)?;
    ui.sessions.end(&headers);
    let cookie = set_cookie(&headers, SESSION_COOKIE, "", std::time::Duration::ZERO);
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response())
}

// ---- overview ----

/// Query of the overview: the page of queues after this name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverviewQuery {
    after: Option<String>,
}

/// The queues the principal may read, a page at a time, and the next page's first name.
async fn readable_queues(
    ui: &Ui,
    principal: &Principal,
    after: Option<String>,
) -> UiResult<(Vec<QueueInfo>, Option<QueueName>)> {
    let limit = OVERVIEW_QUEUES_MAX;
    let mut after = after.filter(|a| !a.is_empty()).map(queue_name).transpose()?;
    let mut queues = Vec::new();
    // The store's pages hold queues the token may not read too: read on until the page is full.
    loop {
        let page = ui.app.store.queue_list_page(after.as_ref(), limit).await?;
        let last_page = page.len() < limit as usize;
        for queue in page {
            if queues.len() == limit as usize {
                let next = queues.last().map(|q: &QueueInfo| q.name.clone());
                return Ok((queues, next));
            }
            after = Some(queue.name.clone());
            if principal.can(Action::Read, queue.name.as_str()) {
                queues.push(queue);
            }
        }
        if last_page {
            return Ok((queues, None));
        }
    }
}

/// The overview: every queue with its counts, rates (filled in live), pause and resume.
pub(crate) async fn overview(State(ui): State<Ui>, headers: HeaderMap, Query(query): Query<OverviewQuery>) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let principal = &session.principal;
    let after = query.after.clone().unwrap_or_default();
    let (queues, next) = readable_queues(&ui, principal, query.after).await?;
    let body = html! {
        @if principal.anywhere(Action::Admin) {
            form.create method="post" action="/ui/queues" {
                (csrf_field(&session))
                label { "New queue " input type="text" name="name" required pattern="[A-Za-z0-9._\\-]+" maxlength="128"; }
                button type="submit" { "Create" }
            }
        }
        p.hint { "Counts and rates update every 1.5 s. Rates are of this server process, per second." }
        table #queues data-after=(after) {
            thead { tr {
                th { "Queue" } th { "Ready" } th { "Scheduled" } th { "Leased" } th { "Dead" }
                th { "Enqueued/s" } th { "Acked/s" } th { "Dead/s" } th { "Last minutes" } th { "State" } th {}
            } }
            tbody {
                @for queue in &queues {
                    @let name = queue.name.as_str();
                    tr data-queue=(name) {
                        td { a href={ "/ui/queues/" (name) } { (name) } }
                        td data-field="ready" { (queue.stats.ready) }
                        td data-field="scheduled" { (queue.stats.scheduled) }
                        td data-field="leased" { (queue.stats.leased) }
                        td data-field="dead" {
                            @if principal.can(Action::Admin, name) {
                                a href={ "/ui/queues/" (name) "/dead" } { span data-field="dead-count" { (queue.stats.dead) } }
                            } @else { span data-field="dead-count" { (queue.stats.dead) } }
                        }
                        td data-field="enqueued-rate" { "…" }
                        td data-field="acked-rate" { "…" }
                        td data-field="dead-rate" { "…" }
                        td.chart data-field="chart" {}
                        td data-field="paused" { @if queue.paused { "paused" } @else { "running" } }
                        td {
                            @if principal.can(Action::Admin, name) {
                                (pause_form(&session, name, queue.paused))
                            }
                        }
                    }
                }
            }
        }
        @if queues.is_empty() { p { "No queue yet." } }
        @if let Some(next) = &next { p { a href={ "/ui?after=" (next) } { "Next queues →" } } }
    };
    Ok(page(&session, "Queues", body))
}

fn pause_form(session: &Session, queue: &str, paused: bool) -> Markup {
    let (action, label) = if paused { ("resume", "Resume") } else { ("pause", "Pause") };
    html! {
        form.inline method="post" action={ "/ui/queues/" (queue) "/" (action) } {
            (csrf_field(session))
            button type="submit" data-action=(action) { (label) }
        }
    }
}

/// One queue of the live overview.
#[derive(Serialize)]
pub(crate) struct LiveQueue {
    name: String,
    ready: u64,
    scheduled: u64,
    leased: u64,
    dead: u64,
    paused: bool,
    /// This process's counters since it started: jobs enqueued, acked, dead-lettered.
    enqueued_total: f64,
    acked_total: f64,
    dead_total: f64,
}

/// The live overview: what the page's script polls.
#[derive(Serialize)]
pub(crate) struct Live {
    /// Milliseconds since the Unix epoch when it was read.
    at_ms: i64,
    queues: Vec<LiveQueue>,
}

/// The sum of each queue's series of counter `name` in Prometheus text.
fn counter_by_queue(text: &str, name: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some(labels) = rest.strip_prefix('{') else { continue };
        let Some((labels, value)) = labels.split_once('}') else { continue };
        let Some(queue) = labels.split(',').find_map(|l| l.strip_prefix("queue=\"")).and_then(|q| q.strip_suffix('"'))
        else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(queue.to_owned()).or_insert(0.0) += value;
    }
    out
}

/// The overview's counts and this process's counters, as JSON, for the page's script.
pub(crate) async fn overview_live(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(query): Query<OverviewQuery>,
) -> UiResult {
    let Some(session) = ui.sessions.get(&headers) else {
        return Err(UiError::new(StatusCode::UNAUTHORIZED, "log in again"));
    };
    let (queues, _) = readable_queues(&ui, &session.principal, query.after).await?;
    let text = ui.app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    let enqueued = counter_by_queue(&text, onceq_core::metrics::ENQUEUED);
    let acked = counter_by_queue(&text, onceq_core::metrics::ACKS);
    let dead = counter_by_queue(&text, onceq_core::metrics::DEAD_LETTERED);
    let queues = queues
        .into_iter()
        .map(|q| {
            let name = q.name.to_string();
            LiveQueue {
                enqueued_total: enqueued.get(&name).copied().unwrap_or(0.0),
                acked_total: acked.get(&name).copied().unwrap_or(0.0),
                dead_total: dead.get(&name).copied().unwrap_or(0.0),
                name,
                ready: q.stats.ready,
                scheduled: q.stats.scheduled,
                leased: q.stats.leased,
                dead: q.stats.dead,
                paused: q.paused,
            }
        })
        .collect();
    let at_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let live = Live { at_ms: i64::try_from(at_ms).unwrap_or(0), queues };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(live)).into_response())
}

// ---- queue actions ----

/// Creates a queue with the default config (the API's `PUT /v1/queues/{queue}` with `{}`).
pub(crate) async fn queue_create(State(ui): State<Ui>, headers: HeaderMap, body: Bytes) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(field(&fields, "name").unwrap_or("").trim().to_owned())?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    ui.app.store.queue_upsert(&queue, QueueConfigPatch::default()).await?;
    Ok(Redirect::to(&format!("/ui/queues/{queue}")).into_response())
}

/// Pauses or resumes a queue.
pub(crate) async fn queue_pause_or_resume(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    body: Bytes,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    match action.as_str() {
        "pause" => ui.app.store.queue_pause(&queue).await?,
        "resume" => ui.app.store.queue_resume(&queue).await?,
        other => return Err(UiError::new(StatusCode::NOT_FOUND, format!("no queue action {other:?}"))),
    }
    let back = if field(&fields, "back") == Some("queue") { format!("/ui/queues/{queue}") } else { "/ui".into() };
    Ok(Redirect::to(&back).into_response())
}

/// Changes a queue's config: the JSON of `PUT /v1/queues/{queue}`, through the same checks.
pub(crate) async fn queue_config(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: Bytes,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    let text = field(&fields, "config").unwrap_or("");
    let patch: QueueConfigPatch = serde_json::from_str(text)
        .map_err(|e| UiError::bad_request(format!("the config is not a queue config patch: {e}")))?;
    ui.app.store.queue_upsert(&queue, patch).await?;
    Ok(Redirect::to(&format!("/ui/queues/{queue}")).into_response())
}

// ---- queue page ----

/// Query of the queue page: which state's jobs, from which id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueQuery {
    state: Option<String>,
    after: Option<String>,
}

fn job_rows(jobs: &[Job]) -> Markup {
    html! {
        table.jobs {
            thead { tr { th { "Id" } th { "State" } th { "Attempt" } th { "Priority" } th { "Run at" } th { "Lease expires" } th { "Dedup id" } th { "Payload" } } }
            tbody {
                @for job in jobs {
                    tr {
                        td { a href={ "/ui/jobs/" (job.id) } { (job.id) } }
                        td { (state_word(job.state)) }
                        td { (job.attempt) "/" (job.max_attempts) }
                        td { (job.priority) }
                        td { (time(job.run_at)) }
                        td { @if let Some(at) = job.lease_expires_at { (time(at)) } }
                        td { @if let Some(d) = &job.dedup_id { code { (d) } } }
                        td { code { (preview(&String::from_utf8_lossy(&job.payload), PAYLOAD_PREVIEW_CHARS)) } }
                    }
                }
            }
        }
    }
}

/// A queue: its counts, config (editable with admin), jobs by state and lookups.
pub(crate) async fn queue_page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Query(query): Query<QueueQuery>,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let principal = &session.principal;
    let queue = queue_name(queue)?;
    need(principal, Action::Read, queue.as_str())?;
    let info = ui.app.store.queue_get(&queue).await?;
    let state = parse_state(query.state.as_deref().unwrap_or("ready"))?;
    let after = query.after.as_deref().filter(|a| !a.is_empty()).map(parse_id).transpose()?;
    let admin = principal.can(Action::Admin, queue.as_str());
    let readable = can_read_jobs(principal, queue.as_str());
    let list = match (&ui.inspect, readable) {
        (Some(inspect), true) => {
            Some(inspect.job_page(&queue, JobPage { state, after, limit: QUEUE_JOBS_SHOWN }).await?)
        }
        _ => None,
    };
    // The store lists at most SCHEDULES_LIST_MAX schedules (docs/api.md, "Limits").
    let schedules: Vec<_> = ui.app.store.schedule_list().await?.into_iter().filter(|s| s.spec.queue == queue).collect();
    let groups = match info.config.ordering {
        onceq_core::Ordering::PerKey => ui.app.store.group_list(&queue).await?,
        _ => Vec::new(),
    };
    let config = serde_json::to_string_pretty(&info.config).unwrap_or_default();
    let name = queue.as_str();
    let stats = &info.stats;
    let body = html! {
        section.stats {
            span { "ready " b { (stats.ready) } } span { "scheduled " b { (stats.scheduled) } }
            span { "leased " b { (stats.leased) } } span { "dead " b { (stats.dead) } }
            span { "blocked " b { (stats.blocked) } }
            span #paused-state { @if info.paused { "paused" } @else { "running" } }
            @if admin {
                form.inline method="post" action={ "/ui/queues/" (name) "/" (if info.paused { "resume" } else { "pause" }) } {
                    (csrf_field(&session))
                    input type="hidden" name="back" value="queue";
                    button type="submit" { (if info.paused { "Resume" } else { "Pause" }) }
                }
                a href={ "/ui/queues/" (name) "/dead" } { "Dead letters" }
            }
        }
        h2 { "Config" }
        @if admin {
            form.config method="post" action={ "/ui/queues/" (name) "/config" } {
                (csrf_field(&session))
                p.hint { "The JSON of PUT /v1/queues/" (name) ": fields left out keep their value. The API's checks apply." }
                textarea name="config" rows="14" cols="70" spellcheck="false" { (config) }
                button type="submit" { "Save config" }
            }
        } @else {
            pre { (config) }
        }
        @if !schedules.is_empty() {
            h2 { "Schedules" }
            table.schedules #schedules {
                thead { tr { th { "Schedule" } th { "Cron" } th { "Time zone" } th { "Next tick" } th { "Last tick" } th { "State" } } }
                tbody {
                    @for schedule in &schedules {
                        tr {
                            td { (schedule.name.as_str()) }
                            td { code { (schedule.spec.cron) } }
                            td { (schedule.spec.timezone) }
                            td { @if let Some(at) = schedule.next_tick { (time(at)) } }
                            td { @if let Some(at) = schedule.last_tick { (time(at)) } }
                            td { @if schedule.spec.paused { "paused" } @else { "running" } }
                        }
                    }
                }
            }
        }
        @if !groups.is_empty() {
            h2 { "Consumer groups" }
            table.groups #groups {
                thead { tr { th { "Group" } th { "Generation" } th { "Members" } th { "Partitions" } } }
                tbody {
                    @for group in &groups {
                        tr {
                            td { (group.group.as_str()) }
                            td { (group.generation) }
                            td { @for member in &group.members {
                                code { (member.member_id.as_str()) } " (" (member.partitions.len()) " partitions) "
                            } }
                            td { (group.partitions.len()) }
                        }
                    }
                }
            }
        }
        h2 { "Jobs" }
        @if !readable {
            p { "Reading jobs needs the consume or admin permission on this queue." }
        } @else if let Some(list) = &list {
            nav.states {
                @for s in [JobState::Ready, JobState::Scheduled, JobState::Leased, JobState::Dead, JobState::Blocked, JobState::Cancelled] {
                    @if s == state { b { (state_word(s)) } } @else {
                        a href={ "/ui/queues/" (name) "?state=" (state_word(s)) } { (state_word(s)) }
                    }
                }
            }
            form.find method="get" action={ "/ui/queues/" (name) "/find" } {
                select name="by" {
                    option value="id" { "job id" } option value="dedup" { "dedup id" }
                    option value="payload" { "payload contains" }
                }
                input type="text" name="value" required;
                input type="hidden" name="state" value=(state_word(state));
                button type="submit" { "Find" }
                span.hint { "A payload search reads at most " (SCAN_JOBS_MAX) " " (state_word(state)) " jobs per request." }
            }
            (job_rows(&list.jobs))
            @if list.jobs.is_empty() && list.next.is_none() { p { "No " (state_word(state)) " job" @if after.is_some() { " after this point" } "." } }
            @if (list.jobs.len() as u32) < QUEUE_JOBS_SHOWN && list.next.is_some() {
                p.hint { "This page read as far as one page reads (ready and leased jobs are listed by walking job ids) and found " (list.jobs.len()) "; more may follow." }
            }
            @if let Some(next) = list.next {
                p { a href={ "/ui/queues/" (name) "?state=" (state_word(state)) "&after=" (next) } { "Next jobs →" } }
            }
        } @else {
            p { "This store does not list jobs by state." }
        }
    };
    Ok(page(&session, &format!("Queue {name}"), body))
}

/// Query of a lookup.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FindQuery {
    by: String,
    value: String,
    state: Option<String>,
    after: Option<String>,
}

/// Finds jobs of a queue by id, dedup id, or payload substring (a bounded scan).
pub(crate) async fn queue_find(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Query(query): Query<FindQuery>,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let queue = queue_name(queue)?;
    if !can_read_jobs(&session.principal, queue.as_str()) {
        return Err(UiError::forbidden(format!(
            "token {:?} has neither the consume nor the admin permission on queue {:?}, one of which reading its jobs needs",
            session.principal.name(),
            queue.as_str()
        )));
    }
    let inspect = ui.inspect.clone().ok_or_else(|| UiError::bad_request("this store does not list jobs"))?;
    let name = queue.as_str().to_owned();
    match query.by.as_str() {
        "id" => {
            let id = parse_id(&query.value)?;
            let job = ui.app.store.job_get(id).await?;
            if job.queue != queue {
                return Err(UiError::new(StatusCode::NOT_FOUND, format!("job {id} is not in queue {name}")));
            }
            Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response())
        }
        "dedup" => match inspect.job_by_dedup(&queue, query.value.trim()).await? {
            Some(id) => Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response()),
            None => Err(UiError::new(
                StatusCode::NOT_FOUND,
                format!("no dedup entry {:?} in queue {name} (entries last the queue's dedup window)", query.value),
            )),
        },
        "payload" => {
            let state = parse_state(query.state.as_deref().unwrap_or("ready"))?;
            let needle = query.value.as_bytes();
            if needle.is_empty() {
                return Err(UiError::bad_request("give the text the payload contains"));
            }
            let mut after = query.after.as_deref().filter(|a| !a.is_empty()).map(parse_id).transpose()?;
            let (mut scanned, mut found, mut pages) = (0usize, Vec::new(), 0usize);
            let finished = loop {
                let page = JobPage { state, after, limit: JOB_PAGE_MAX.min((SCAN_JOBS_MAX - scanned) as u32) };
                let list = inspect.job_page(&queue, page).await?;
                pages += 1;
                for job in list.jobs {
                    scanned += 1;
                    after = Some(job.id);
                    if job.payload.windows(needle.len()).any(|w| w == needle) {
                        found.push(job);
                    }
                    if found.len() == MATCHES_SHOWN {
                        break;
                    }
                }
                if list.next.is_none() && found.len() < MATCHES_SHOWN {
                    break true;
                }
                if found.len() < MATCHES_SHOWN {
                    // A page that ended short at the store's bound goes on from where it stopped.
                    after = list.next.or(after);
                }
                // As many pages as full ones would take: short pages must not make a request walk
                // the whole table.
                if found.len() == MATCHES_SHOWN || scanned >= SCAN_JOBS_MAX || pages >= FIND_PAGES_MAX {
                    break false;
                }
            };
            let body = html! {
                p { "Payloads of " (state_word(state)) " jobs containing " code { (query.value) } ": "
                    (found.len()) " found in " (scanned) " jobs read." }
                (job_rows(&found))
                @if !finished {
                    @if let Some(after) = after {
                        p { "Stopped after " (scanned) " jobs (at most " (SCAN_JOBS_MAX) " per request) or "
                            (MATCHES_SHOWN) " matches. "
                            a href={ "/ui/queues/" (name) "/find?by=payload&state=" (state_word(state)) "&after=" (after) "&value=" (urlencode(&query.value)) } { "Continue after job " (after) " →" } }
                    }
                }
                p { a href={ "/ui/queues/" (name) } { "Back to queue " (name) } }
            };
            Ok(page(&session, &format!("Find in {name}"), body))
        }
        other => Err(UiError::bad_request(format!("find by {other:?}: use id, dedup or payload"))),
    }
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).map(|s| s[2..].to_owned()).unwrap_or_default()
}

// ---- job page ----

/// A job: payload and headers, the attempt timeline, the lease, and its actions.
pub(crate) async fn job_page(State(ui): State<Ui>, headers: HeaderMap, Path(id): Path<String>) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let id = parse_id(&id)?;
    let job = ui.app.store.job_get(id).await?;
    let queue = job.queue.as_str();
    if !can_read_jobs(&session.principal, queue) {
        return Err(UiError::forbidden(format!(
            "token {:?} has neither the consume nor the admin permission on queue {queue:?}, one of which reading its jobs needs",
            session.principal.name()
        )));
    }
    let admin = session.principal.can(Action::Admin, queue);
    let now = Timestamp::from_millis(
        i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
    );
    let body = html! {
        dl.job {
            dt { "Queue" } dd { a href={ "/ui/queues/" (queue) } { (queue) } }
            dt { "State" } dd #job-state { (state_word(job.state)) }
            dt { "Attempt" } dd { (job.attempt) " of " (job.max_attempts) }
            dt { "Priority" } dd { (job.priority) }
            dt { "Dedup id" } dd { @if let Some(d) = &job.dedup_id { code { (d) } } @else { "none" } }
            dt { "Ordering key" } dd { @if let Some(k) = &job.ordering_key { code { (k) } } @else { "none" } }
            @if let Some(p) = job.partition { dt { "Partition" } dd { (p) } }
            dt { "Enqueued" } dd { (time(job.enqueued_at)) }
            dt { "Run at" } dd { (time(job.run_at)) }
            dt { "Lease expires" } dd {
                @if let Some(at) = job.lease_expires_at {
                    (time(at)) " (" @if at > now { "in " (at.ms_since(now)) " ms" } @else { "passed" } ")"
                } @else { "no lease" }
            }
        }
        @if let Some(at) = job.cancelled_at {
            p.hint #cancelled { "Cancelled " (time(at)) @if job.state == JobState::Leased { ": the running attempt's next heartbeat stops its handler, and the job ends cancelled unless that attempt finishes it." } }
        }
        @if admin && job.state == JobState::Dead {
            form.actions method="post" action={ "/ui/jobs/" (id) "/retry" } {
                (csrf_field(&session))
                button type="submit" data-action="retry" { "Retry now" }
                span.hint { " Makes this dead job ready again, attempts reset (a redrive of this job)." }
            }
        }
        @if admin && job.cancelled_at.is_none() && matches!(job.state, JobState::Scheduled | JobState::Ready | JobState::Blocked | JobState::Leased) {
            form.actions method="post" action={ "/ui/jobs/" (id) "/cancel" } {
                (csrf_field(&session))
                button type="submit" data-action="cancel" { "Cancel" }
                span.hint { " The job never runs again; a running attempt is told at its next heartbeat." }
            }
        }
        @if admin && matches!(job.state, JobState::Scheduled | JobState::Ready | JobState::Blocked) {
            form.actions method="post" action={ "/ui/jobs/" (id) "/kill" } {
                (csrf_field(&session))
                input type="text" name="error" placeholder=(KILL_ERROR_DEFAULT) maxlength="500" aria-label="error to record";
                " "
                button type="submit" data-action="kill" { "Fail" }
                span.hint { " Dead now, whatever attempts it has left, with this error recorded; a redrive brings it back." }
            }
        }
        @if admin && job.state != JobState::Leased {
            form.actions method="post" action={ "/ui/jobs/" (id) "/delete" } {
                (csrf_field(&session))
                button type="submit" data-action="delete" { "Delete" }
                span.hint { " Gone for good, with its error history (asks first)." }
            }
        }
        h2 { "Attempts" }
        ol.timeline #timeline {
            li { span.at { (time(job.enqueued_at)) } " enqueued" }
            @for error in &job.errors {
                li.failed {
                    span.at { (time(error.at)) } " attempt " (error.attempt) " ended: "
                    pre.error-text { (error.error) }
                }
            }
            @match job.state {
                JobState::Leased => li { "attempt " (job.attempt) " is running" @if let Some(at) = job.lease_expires_at { ", its lease expires " (time(at)) } @if let Some(at) = job.cancelled_at { "; cancelled " (time(at)) ": it ends cancelled unless this attempt finishes it" } }
                JobState::Dead => li.dead { "dead-lettered after attempt " (job.attempt) }
                JobState::Scheduled => li { "waiting until " (time(job.run_at)) " for attempt " (job.attempt + 1) }
                JobState::Ready => li { "ready for attempt " (job.attempt + 1) }
                JobState::Blocked => li { "waiting behind an earlier job of its ordering key" }
                JobState::Cancelled => li.dead { "cancelled" @if let Some(at) = job.cancelled_at { " " (time(at)) } }
            }
        }
        h2 { "Payload" }
        pre.payload #payload { (pretty(&job.payload)) }
        h2 { "Headers" }
        @if job.headers.is_empty() { p { "none" } } @else {
            table.headers { tbody { @for (k, v) in &job.headers { tr { th { (k) } td { code { (v) } } } } } }
        }
    };
    Ok(page(&session, &format!("Job {id}"), body))
}

/// What every action on one job does first: the session (or the redirect to log in), the form's
/// CSRF token, the job, and the admin permission on its queue.
async fn job_action(
    ui: &Ui,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
) -> UiResult<Result<(Session, Vec<(String, String)>, Job), Response>> {
    let session = match ui.session(headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(Err(redirect.into_response())),
    };
    let fields = checked_form(&session, body)?;
    let id = parse_id(id)?;
    let job = ui.app.store.job_get(id).await?;
    need(&session.principal, Action::Admin, job.queue.as_str())?;
    Ok(Ok((session, fields, job)))
}

/// Back to the job's page.
fn to_job(id: JobId) -> Response {
    Redirect::to(&format!("/ui/jobs/{id}")).into_response()
}

/// Retries a dead job now: a redrive of that one job.
pub(crate) async fn job_retry(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (_, _, job) = match job_action(&ui, &headers, &id, &body).await? {
        Ok(acting) => acting,
        Err(redirect) => return Ok(redirect),
    };
    if job.state != JobState::Dead {
        return Err(UiError::new(
            StatusCode::CONFLICT,
            format!("job {} is {}, not dead: only a dead job is retried now", job.id, state_word(job.state)),
        ));
    }
    ui.app.store.dead_redrive(&job.queue, Redrive { ids: Some(vec![job.id]), ..Redrive::default() }).await?;
    Ok(to_job(job.id))
}

/// Cancels a job (`Store::job_cancel`): at once when it is not leased, at the end of its lease
/// when it is.
pub(crate) async fn job_cancel(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (_, _, job) = match job_action(&ui, &headers, &id, &body).await? {
        Ok(acting) => acting,
        Err(redirect) => return Ok(redirect),
    };
    ui.app.store.job_cancel(job.id).await?;
    Ok(to_job(job.id))
}

/// Fails a job that is not leased, now (`Store::job_kill`), with the error the form gives.
pub(crate) async fn job_kill(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (_, fields, job) = match job_action(&ui, &headers, &id, &body).await? {
        Ok(acting) => acting,
        Err(redirect) => return Ok(redirect),
    };
    let error = field(&fields, "error").map(str::trim).filter(|e| !e.is_empty()).unwrap_or(KILL_ERROR_DEFAULT);
    ui.app.store.job_kill(job.id, error).await?;
    Ok(to_job(job.id))
}

/// Deletes a job that is not leased (`Store::job_delete`), once confirmed: the first post asks.
pub(crate) async fn job_delete(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> UiResult {
    let (session, fields, job) = match job_action(&ui, &headers, &id, &body).await? {
        Ok(acting) => acting,
        Err(redirect) => return Ok(redirect),
    };
    let (id, name) = (job.id, job.queue.as_str());
    if field(&fields, "confirm") != Some("yes") {
        let body = html! {
            p #confirm-text { "Delete job " (id) " of queue " (name) " (" (state_word(job.state)) ")? It is gone for good, with its error history." }
            form method="post" action={ "/ui/jobs/" (id) "/delete" } {
                (csrf_field(&session))
                input type="hidden" name="confirm" value="yes";
                button type="submit" data-action="confirm" { "Delete job " (id) }
                " " a href={ "/ui/jobs/" (id) } { "Cancel" }
            }
        };
        return Ok(page(&session, "Confirm the delete", body));
    }
    ui.app.store.job_delete(id).await?;
    let body = html! {
        p #done-text { "Job " (id) " of queue " (name) " deleted." }
        p { a href={ "/ui/queues/" (name) } { "Back to queue " (name) } }
    };
    Ok(page(&session, "Deleted", body))
}

// ---- dead letters ----

/// Query of the dead-letter page: error text, a time range (UTC, `YYYY-MM-DDTHH:MM`), from which id.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeadQuery {
    error: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<String>,
}

fn parse_minute(text: &str, name: &str) -> UiResult<Option<Timestamp>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // What a datetime-local input sends: to the minute, or to the second when its step asks.
    let minutes = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let seconds = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let at = time::PrimitiveDateTime::parse(text, &minutes)
        .or_else(|_| time::PrimitiveDateTime::parse(text, &seconds))
        .map_err(|_| UiError::bad_request(format!("{name} is {text:?}; give it as YYYY-MM-DDTHH:MM (UTC)")))?
        .assume_utc();
    let millis = at.unix_timestamp_nanos() / 1_000_000;
    Ok(Some(Timestamp::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))))
}

/// When a dead job died: its last error's time (the enqueue time when it has none).
fn died_at(job: &Job) -> Timestamp {
    job.errors.last().map(|e| e.at).unwrap_or(job.enqueued_at)
}

/// A queue's dead letters, filtered by error text and the time they died.
pub(crate) async fn dead_page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    Query(query): Query<DeadQuery>,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    let info = ui.app.store.queue_get(&queue).await?;
    let error = query.error.clone().unwrap_or_default();
    let needle = error.to_lowercase();
    let since = parse_minute(query.since.as_deref().unwrap_or(""), "since")?;
    let until = parse_minute(query.until.as_deref().unwrap_or(""), "until")?;
    let mut after = query.after.as_deref().filter(|a| !a.is_empty()).map(parse_id).transpose()?;
    let (mut scanned, mut found) = (0usize, Vec::new());
    let filtered = !needle.is_empty() || since.is_some() || until.is_some();
    let finished = loop {
        // Unfiltered, every job read is shown: read no more than the page shows.
        let limit = if filtered {
            DEAD_PAGE_MAX.min((SCAN_JOBS_MAX - scanned) as u32)
        } else {
            (MATCHES_SHOWN - found.len()) as u32
        };
        let list = ui.app.store.dead_list(&queue, DeadPage { after, limit }).await?;
        for job in list.jobs {
            scanned += 1;
            after = Some(job.id);
            let died = died_at(&job);
            let matches = (needle.is_empty() || job.errors.iter().any(|e| e.error.to_lowercase().contains(&needle)))
                && since.is_none_or(|s| died >= s)
                && until.is_none_or(|u| died < u);
            if matches {
                found.push(job);
            }
            if found.len() == MATCHES_SHOWN {
                break;
            }
        }
        if list.next.is_none() && found.len() < MATCHES_SHOWN {
            break true;
        }
        if found.len() == MATCHES_SHOWN || scanned >= SCAN_JOBS_MAX {
            break false;
        }
    };
    let name = queue.as_str();
    let body = html! {
        p { "Dead jobs: " b #dead-count { (info.stats.dead) } ". " a href={ "/ui/queues/" (name) } { "Back to queue " (name) } }
        form.filter method="get" action={ "/ui/queues/" (name) "/dead" } {
            label { "Error contains " input type="text" name="error" value=(error); }
            label { "Died since (UTC) " input type="datetime-local" name="since" value=(query.since.clone().unwrap_or_default()); }
            label { "until " input type="datetime-local" name="until" value=(query.until.clone().unwrap_or_default()); }
            button type="submit" { "Filter" }
        }
        p.hint { (found.len()) " shown of " (scanned) " dead jobs read (at most " (SCAN_JOBS_MAX) " per request, "
            (MATCHES_SHOWN) " shown)." }
        form.dead method="post" action={ "/ui/queues/" (name) "/dead/redrive" } {
            (csrf_field(&session))
            table.jobs #dead {
                thead { tr { th { input type="checkbox" #select-all title="select all shown"; } th { "Id" } th { "Died" } th { "Attempts" } th { "Last error" } th { "Payload" } } }
                tbody {
                    @for job in &found {
                        tr {
                            td { input type="checkbox" name="id" value=(job.id); }
                            td { a href={ "/ui/jobs/" (job.id) } { (job.id) } }
                            td { (time(died_at(job))) }
                            td { (job.attempt) }
                            td { @if let Some(e) = job.errors.last() { code { (preview(&e.error, PAYLOAD_PREVIEW_CHARS)) } } }
                            td { code { (preview(&String::from_utf8_lossy(&job.payload), PAYLOAD_PREVIEW_CHARS)) } }
                        }
                    }
                }
            }
            button type="submit" data-action="redrive" { "Redrive selected" }
            " "
            button type="submit" data-action="purge-selected" formaction={ "/ui/queues/" (name) "/dead/purge-selected" } { "Purge selected" }
        }
        form.purge method="post" action={ "/ui/queues/" (name) "/dead/purge" } {
            (csrf_field(&session))
            button type="submit" data-action="purge" { "Purge all dead jobs" }
        }
        @if !finished {
            @if let Some(after) = after {
                p { a href={ "/ui/queues/" (name) "/dead?after=" (after) "&error=" (urlencode(&error))
                    "&since=" (urlencode(query.since.as_deref().unwrap_or(""))) "&until=" (urlencode(query.until.as_deref().unwrap_or(""))) }
                    { "Continue after job " (after) " →" } }
            }
        }
    };
    Ok(page(&session, &format!("Dead letters of {name}"), body))
}

/// The jobs a dead-letter form selected (`id` fields): at least one, at most
/// [`REDRIVE_SELECTED_MAX`]. `verb`: what is done to them, for the refusal.
fn selected_ids(fields: &[(String, String)], verb: &str) -> UiResult<Vec<JobId>> {
    let ids = fields.iter().filter(|(k, _)| k == "id").map(|(_, v)| parse_id(v)).collect::<UiResult<Vec<JobId>>>()?;
    if ids.is_empty() {
        return Err(UiError::bad_request(format!("select at least one dead job to {verb}")));
    }
    if ids.len() > REDRIVE_SELECTED_MAX {
        return Err(UiError::bad_request(format!(
            "{} jobs selected; at most {REDRIVE_SELECTED_MAX} at a time",
            ids.len()
        )));
    }
    Ok(ids)
}

/// The page that asks to confirm an action on selected dead jobs: `question` says how many and
/// what happens; the form posts the same ids to `action` with `confirm=yes`.
fn confirm_selected(
    session: &Session,
    name: &str,
    ids: &[JobId],
    action: &str,
    question: &str,
    button: &str,
) -> Response {
    let body = html! {
        p #confirm-text { (question) }
        form method="post" action={ "/ui/queues/" (name) "/dead/" (action) } {
            (csrf_field(session))
            input type="hidden" name="confirm" value="yes";
            @for id in ids { input type="hidden" name="id" value=(id); }
            button type="submit" data-action="confirm" { (button) " " (ids.len()) }
            " " a href={ "/ui/queues/" (name) "/dead" } { "Cancel" }
        }
    };
    page(session, "Confirm", body)
}

/// `n job(s)`.
fn jobs_word(n: u64) -> &'static str {
    if n == 1 {
        "job"
    } else {
        "jobs"
    }
}

/// Redrives the selected dead jobs, once confirmed: the first post shows how many and asks.
pub(crate) async fn dead_redrive(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: Bytes,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    let ids = selected_ids(&fields, "redrive")?;
    let name = queue.as_str();
    if field(&fields, "confirm") != Some("yes") {
        let n = ids.len() as u64;
        let question =
            format!("Redrive {n} dead {} of queue {name}? They become ready again, attempts reset.", jobs_word(n));
        return Ok(confirm_selected(&session, name, &ids, "redrive", &question, "Redrive"));
    }
    let redriven = ui.app.store.dead_redrive(&queue, Redrive { ids: Some(ids), ..Redrive::default() }).await?.redriven;
    let body = html! {
        p #done-text { (redriven) " dead " (jobs_word(redriven)) " of queue " (name) " redriven." }
        p { a href={ "/ui/queues/" (name) "/dead" } { "Back to the dead letters" } }
    };
    Ok(page(&session, "Redriven", body))
}

/// Purges the selected dead jobs, once confirmed: each is deleted (`Store::job_delete`) if it is
/// still dead in this queue; one redriven or gone meanwhile is left alone and counted apart.
pub(crate) async fn dead_purge_selected(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: Bytes,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    let ids = selected_ids(&fields, "purge")?;
    let name = queue.as_str();
    if field(&fields, "confirm") != Some("yes") {
        let n = ids.len() as u64;
        let question = format!("Purge {n} dead {} of queue {name}? They are deleted for good.", jobs_word(n));
        return Ok(confirm_selected(&session, name, &ids, "purge-selected", &question, "Purge"));
    }
    let (mut purged, mut skipped) = (0u64, 0u64);
    for id in ids {
        // Only what is still a dead job of this queue: a job redriven since the page was shown
        // is live work, not a dead letter to purge.
        let still_dead = match ui.app.store.job_get(id).await {
            Ok(job) => job.queue == queue && job.state == JobState::Dead,
            Err(Error::JobNotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !still_dead {
            skipped += 1;
            continue;
        }
        match ui.app.store.job_delete(id).await {
            Ok(()) => purged += 1,
            Err(Error::JobNotFound(_)) => skipped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    let body = html! {
        p #done-text { (purged) " dead " (jobs_word(purged)) " of queue " (name) " purged."
            @if skipped > 0 { " " (skipped) " no longer dead here (redriven or gone) and left alone." } }
        p { a href={ "/ui/queues/" (name) "/dead" } { "Back to the dead letters" } }
    };
    Ok(page(&session, "Purged", body))
}

/// Purges every dead job of a queue, once confirmed: the first post shows how many and asks.
pub(crate) async fn dead_purge(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: Bytes,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let fields = checked_form(&session, &body)?;
    let queue = queue_name(queue)?;
    need(&session.principal, Action::Admin, queue.as_str())?;
    let name = queue.as_str();
    if field(&fields, "confirm") != Some("yes") {
        let dead = ui.app.store.queue_get(&queue).await?.stats.dead;
        let body = html! {
            p #confirm-text { "Purge all " (dead) " dead jobs of queue " (name) "? They are deleted for good." }
            form method="post" action={ "/ui/queues/" (name) "/dead/purge" } {
                (csrf_field(&session))
                input type="hidden" name="confirm" value="yes";
                button type="submit" data-action="confirm" { "Purge " (dead) }
                " " a href={ "/ui/queues/" (name) "/dead" } { "Cancel" }
            }
        };
        return Ok(page(&session, "Confirm the purge", body));
    }
    let purged = ui.app.store.dead_purge(&queue).await?;
    let body = html! {
        p #done-text { (purged) " dead jobs of queue " (name) " purged." }
        p { a href={ "/ui/queues/" (name) } { "Back to queue " (name) } }
    };
    Ok(page(&session, "Purged", body))
}

// ---- idempotency ----

/// Query of the idempotency lookup.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyQuery {
    key: Option<String>,
}

/// Looks up an idempotency key: its state, owner, result and expiry. Needs the consume
/// permission on the key, as the API's idempotency endpoints.
pub(crate) async fn idempotency_page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Query(query): Query<KeyQuery>,
) -> UiResult {
    let session = match ui.session(&headers) {
        Ok(session) => session,
        Err(redirect) => return Ok(redirect.into_response()),
    };
    let key = query.key.unwrap_or_default();
    let record = match (key.is_empty(), &ui.inspect) {
        (true, _) => None,
        (false, None) => return Err(UiError::bad_request("this store does not read idempotency keys")),
        (false, Some(inspect)) => {
            need(&session.principal, Action::Consume, &key)?;
            Some(inspect.idempotency_get(&key).await?)
        }
    };
    let now = now();
    let body = html! {
        form.find method="get" action="/ui/idempotency" {
            label { "Key " input type="text" name="key" value=(key) required; }
            button type="submit" { "Look up" }
        }
        @match record {
            None => {}
            Some(None) => p #key-state { "No record of key " code { (key) } " (never claimed, released, or swept after it expired)." }
            Some(Some(record)) => {
                dl.job {
                    dt { "State" }
                    dd #key-state {
                        (if record.completed { "completed" } else { "in progress" })
                        @if record.until <= now { " (expired)" }
                    }
                    dt { "Owner" } dd { code { (record.owner) } }
                    dt { "Expires" } dd { (time(record.until)) }
                }
                @if let Some(result) = &record.result {
                    h2 { "Result" }
                    pre.payload { (pretty(result)) }
                }
            }
        }
    };
    Ok(page(&session, "Idempotency keys", body))
}

/// The wall clock, as a store timestamp.
fn now() -> Timestamp {
    let millis = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    Timestamp::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counters_are_summed_per_queue_from_prometheus_text() {
        let text = "# HELP onceq_acks_total Acks.\n\
                    onceq_acks_total{queue=\"mail\"} 3\n\
                    onceq_acks_total{queue=\"mail\",outcome=\"x\"} 2\n\
                    onceq_acks_total{queue=\"sms\"} 7\n\
                    onceq_acks_total_other{queue=\"mail\"} 100\n\
                    onceq_jobs_enqueued_total{queue=\"mail\"} 9\n";
        let acks = counter_by_queue(text, "onceq_acks_total");
        assert_eq!(acks.get("mail"), Some(&5.0));
        assert_eq!(acks.get("sms"), Some(&7.0));
        assert_eq!(acks.len(), 2);
    }

    #[test]
    fn times_are_read_to_the_minute_or_second_in_utc() {
        let minute = parse_minute("2026-03-01T10:15", "since").unwrap().unwrap();
        assert_eq!(minute.as_millis(), 1_772_360_100_000);
        let second = parse_minute("2026-03-01T10:15:30", "since").unwrap().unwrap();
        assert_eq!(second.as_millis(), 1_772_360_130_000);
        assert_eq!(parse_minute("  ", "since").unwrap(), None);
        let refused = parse_minute("yesterday", "until").unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }
}
