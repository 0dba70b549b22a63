//! Dashboard sessions: the login that turns a bearer token into a session cookie, and the CSRF
//! token every state-changing request must carry.
//!
//! A session lives in this process's memory only (a restart logs everyone out): its id is the
//! cookie's value (HttpOnly, SameSite=Strict, Secure when the request came over TLS), and it
//! holds the token's [`Principal`] and a CSRF token of its own. The cookie is written by hand:
//! one `Set-Cookie` line with fixed attributes is all the dashboard needs, so no cookie crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::auth::{Auth, Principal};

/// Name of the session cookie.
pub(crate) const SESSION_COOKIE: &str = "onceq_session";
/// Name of the cookie that carries a login form's CSRF token (before there is a session).
pub(crate) const LOGIN_COOKIE: &str = "onceq_login";
/// How long a session lasts after its login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 60 * 60);
/// Most sessions held at once; a login past it, once expired ones are swept, is refused (503).
pub(crate) const SESSIONS_MAX: usize = 10_000;

/// A logged-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// Who the session acts as: its token, or anyone when the server has no tokens.
    pub(crate) principal: Principal,
    /// The value every form and state-changing request of the session must carry.
    pub(crate) csrf: String,
    /// When the session ends.
    expires_at: Instant,
}

/// The sessions of this process.
#[derive(Clone, Default)]
pub(crate) struct Sessions {
    by_id: Arc<Mutex<HashMap<String, Session>>>,
}

/// 32 random bytes from the operating system's generator, as hex.
pub(crate) fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Whether the request reached the server over TLS: directly, or through a proxy that says so.
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for the dashboard: HttpOnly, SameSite=Strict, path `/ui`, Secure over TLS.
pub(crate) fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: Duration) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    format!("{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", max_age.as_secs())
}

impl Sessions {
    /// The session the request's cookie names, if it is live.
    pub(crate) fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(id) {
            Some(session) if session.expires_at > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new session for `principal`: its id, or `None` when [`SESSIONS_MAX`] live sessions exist.
    pub(crate) fn start(&self, principal: Principal) -> Option<String> {
        let mut sessions = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() >= SESSIONS_MAX {
            let now = Instant::now();
            sessions.retain(|_, s| s.expires_at > now);
            if sessions.len() >= SESSIONS_MAX {
                return None;
            }
        }
        let id = random_hex();
        let session = Session { principal, csrf: random_hex(), expires_at: Instant::now() + SESSION_TTL };
        sessions.insert(id.clone(), session);
        Some(id)
    }

    /// Ends the session the request's cookie names.
    pub(crate) fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.by_id.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }
}

/// Checks a login: the token as `Authorization: Bearer` would present it.
pub(crate) fn login(auth: &Auth, token: &str) -> Option<Principal> {
    auth.authenticate(Some(&format!("Bearer {}", token.trim()))).ok()
}
