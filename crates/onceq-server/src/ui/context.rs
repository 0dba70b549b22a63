//! What every dashboard page shares: [`Ui`] (the store, the tokens, the sessions), the layout
//! every page is drawn in, the error page, and how values are shown (times, payloads).

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};
use onceq_core::{Inspect, Timestamp};

use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::session::{same_secret, Session, Sessions};

/// The Content-Security-Policy of every dashboard response: scripts and styles from the
/// dashboard's own embedded files only (no inline script, no inline style), nothing framed.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What every dashboard handler shares.
#[derive(Clone)]
pub(crate) struct Ui {
    pub(crate) app: AppState,
    /// The store's bounded reads (jobs by state, dedup ids); `None` for a store without them.
    pub(crate) inspect: Option<Arc<dyn Inspect>>,
    pub(crate) sessions: Sessions,
}

/// A page that could not be shown: its status and a message for the operator.
#[derive(Debug)]
pub(crate) struct UiError {
    pub(crate) status: StatusCode,
    message: String,
}

impl UiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        UiError { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        UiError::new(StatusCode::FORBIDDEN, message)
    }
}

impl From<onceq_core::Error> for UiError {
    fn from(error: onceq_core::Error) -> Self {
        // The API's mapping: internal causes are logged there and never shown.
        ApiError::from(error).into()
    }
}

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        UiError { status: error.status(), message: error.detail().message }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "onceq: " (self.status) } link rel="stylesheet" href="/ui/assets/dashboard.css"; }
                body {
                    main {
                        h1 { (self.status) }
                        p.error { (self.message) }
                        p { a href="/ui" { "Back to the overview" } }
                    }
                }
            }
        };
        (self.status, page_headers(), body.into_string()).into_response()
    }
}

pub(crate) type UiResult<T = Response> = Result<T, UiError>;

/// The headers of every page: the CSP, no sniffing, no framing, no referrer, no caching.
pub(crate) fn page_headers() -> [(header::HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
    ]
}

impl Ui {
    /// The request's session, or a redirect to the login page.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Result<Session, Redirect> {
        self.sessions.get(headers).ok_or_else(|| Redirect::to("/ui/login"))
    }
}

/// The form fields of a state-changing request, once its CSRF token is checked against the
/// session's: refused (403) without it or with another.
pub(crate) fn checked_form(session: &Session, body: &[u8]) -> UiResult<Vec<(String, String)>> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| UiError::bad_request(format!("the form could not be read: {e}")))?;
    let presented = fields.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v.as_str());
    match presented {
        Some(token) if same_secret(token, &session.csrf) => Ok(fields),
        _ => Err(UiError::forbidden(
            "this request carries no valid CSRF token: reload the page and submit its form again",
        )),
    }
}

/// The first value of form field `name`.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A page: the navigation, the title and `body`, with the page headers.
pub(crate) fn page(session: &Session, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "onceq: " (title) }
                link rel="stylesheet" href="/ui/assets/dashboard.css";
                script src="/ui/assets/dashboard.js" defer {}
            }
            body {
                nav {
                    a.brand href="/ui" { "onceq" }
                    a href="/ui" { "Queues" }
                    a href="/ui/idempotency" { "Idempotency keys" }
                    span.who { "as " (session.principal.name()) }
                    form.logout method="post" action="/ui/logout" {
                        (csrf_field(session))
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    (page_headers(), markup.into_string()).into_response()
}

/// A time as UTC RFC 3339 to the millisecond.
pub(crate) fn time(at: Timestamp) -> String {
    let nanos = i128::from(at.as_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{} ms", at.as_millis()))
}

/// A payload (or any stored bytes) as text to show: pretty-printed when it is JSON, as UTF-8
/// (invalid bytes replaced) otherwise. The page escapes it.
pub(crate) fn pretty(bytes: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into()),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The first `chars` characters of `text`, with an ellipsis when cut.
pub(crate) fn preview(text: &str, chars: usize) -> String {
    let mut out: String = text.chars().take(chars).collect();
    if text.chars().nth(chars).is_some() {
        out.push('…');
    }
    out
}
