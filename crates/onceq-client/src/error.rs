//! How a failed exchange becomes a seam [`Error`]: the server's `ErrorBody` mapped back exactly
//! (with 404s as the embedded store reports them), and everything the network adds as
//! [`Error::Unavailable`] with a message that names the server's URL.

use std::time::Duration;

use onceq_core::api::ErrorBody;
use onceq_core::{Error, JobId, QueueName};
use reqwest::{StatusCode, Url};

/// What a `404 not_found` from an endpoint stands for, so the error is the embedded store's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Missing {
    /// The queue named in the path does not exist: [`Error::QueueNotFound`].
    Queue(QueueName),
    /// The job named in the path does not exist: [`Error::JobNotFound`].
    Job(JobId),
    /// The schedule named in the path does not exist: [`Error::ScheduleNotFound`].
    Schedule(onceq_core::schedule::ScheduleName),
    /// The paced redrive named in the path does not exist: [`Error::RedriveNotFound`].
    Redrive(onceq_core::RedriveId),
    /// One of two queues (the path's, the body's) does not exist: the one the server's message
    /// quotes (`queue '<name>' not found`), else the first.
    Queues(QueueName, QueueName),
    /// The endpoint names neither: the server's error is taken as it is.
    Nothing,
}

/// Most bytes of a body that is not an onceq error quoted in a message.
const QUOTED_BODY_BYTES_MAX: usize = 200;

/// A non-2xx reply, as much of it as the mapping needs.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    /// Its status.
    pub(crate) status: StatusCode,
    /// Its `Retry-After` header (seconds), if any.
    pub(crate) retry_after: Option<String>,
    /// Its `Location` header, for a redirect.
    pub(crate) location: Option<String>,
    /// Its body.
    pub(crate) body: &'a [u8],
}

/// The seam error a non-2xx reply from `endpoint` (`"POST http://..."`) stands for.
pub(crate) fn from_reply(reply: &Reply<'_>, missing: &Missing, endpoint: &str, base: &Url) -> Error {
    let retry = match &reply.retry_after {
        Some(seconds) => format!(" (retry after {seconds} s)"),
        None => String::new(),
    };
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(reply.body) {
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            return Error::Unavailable(format!("{}{retry}", body.error.message));
        }
        if body.error.code == "not_found" {
            match missing {
                Missing::Queue(queue) => return Error::QueueNotFound(queue.clone()),
                Missing::Job(id) => return Error::JobNotFound(*id),
                Missing::Schedule(name) => return Error::ScheduleNotFound(name.to_string()),
                Missing::Redrive(id) => return Error::RedriveNotFound(*id),
                Missing::Queues(first, second) => {
                    let quoted = format!("'{second}'");
                    let missing = if body.error.message.contains(&quoted) { second } else { first };
                    return Error::QueueNotFound(missing.clone());
                }
                Missing::Nothing => {}
            }
        }
        let id = match missing {
            Missing::Job(id) => Some(*id),
            Missing::Queue(_) | Missing::Queues(..) | Missing::Redrive(_) | Missing::Schedule(_) | Missing::Nothing => {
                None
            }
        };
        // A refusal by a limit keeps its pause: the body's milliseconds, else the header's seconds.
        let mut body = body;
        if body.error.code == "rate_limited" && body.error.retry_after_ms.is_none() {
            let seconds = reply.retry_after.as_deref().and_then(|s| s.trim().parse::<u64>().ok());
            body.error.retry_after_ms = seconds.map(|s| s.saturating_mul(1000));
        }
        return match body.into_error(id) {
            Error::Unavailable(message) => Error::Unavailable(format!("{message}{retry}")),
            other => other,
        };
    }
    // Not an onceq error body: a proxy, a body-limit layer, an unknown route, or not onceq.
    let status = reply.status;
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::PayloadTooLarge(format!(
            "{endpoint}: the server refused the request body as too large ({status}); send fewer or smaller jobs per call"
        ));
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
        return Error::Unavailable(format!(
            "{endpoint} answered {status}{retry}: the server at {base} (or a proxy before it) cannot serve now; retry later"
        ));
    }
    if status.is_redirection() {
        let target = reply.location.as_deref().unwrap_or("an unnamed location");
        return Error::Storage(format!(
            "{endpoint} was redirected ({status}) to {target}; an onceq server does not redirect: give the client the server's own URL"
        ));
    }
    Error::Storage(format!(
        "{endpoint} answered {status} with a body that is not an onceq error ({}); is {base} an onceq server of a compatible version?",
        quote(reply.body)
    ))
}

/// The error for a request that got no reply (or lost it half-way): always
/// [`Error::Unavailable`], since another try may succeed.
pub(crate) fn transport(error: &reqwest::Error, endpoint: &str, base: &Url, timeout: Duration) -> Error {
    let cause = causes(error);
    let message = if error.is_connect() {
        format!("cannot connect to the onceq server at {base} ({cause}); is `onceq serve` running and listening there?")
    } else if error.is_timeout() {
        format!(
            "{endpoint} got no reply within {timeout:?}: the server at {base} is overloaded or unreachable. \
             The call may have been applied; retrying is safe for settles and for enqueues with dedup ids"
        )
    } else {
        format!(
            "{endpoint} failed: the connection to the server at {base} broke ({cause}). \
             The call may have been applied; retrying is safe for settles and for enqueues with dedup ids"
        )
    };
    Error::Unavailable(message)
}

/// An error and its chain of causes on one line: reqwest's own message rarely says what failed.
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// The start of a body, for a message.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "empty".to_owned();
    }
    match text.char_indices().nth(QUOTED_BODY_BYTES_MAX) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const ENDPOINT: &str = "GET http://127.0.0.1:7700/v1/x";

    fn map(status: u16, body: &str, missing: &Missing) -> Error {
        let base = Url::parse("http://127.0.0.1:7700/").unwrap();
        let reply = Reply {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: (status == 503 || status == 429).then(|| "2".to_owned()),
            location: None,
            body: body.as_bytes(),
        };
        from_reply(&reply, missing, ENDPOINT, &base)
    }

    fn body(code: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message}}).to_string()
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000),
            failure_persistence: None,
            ..Default::default()
        })]

        /// Fuzzing (issue 25): whatever a server (or a proxy before it) answers, with whatever
        /// status, `Retry-After` and body, the reply maps to an error without a panic; an
        /// error-shaped body with an unknown code, odd types or huge numbers included.
        #[test]
        fn any_reply_maps_to_an_error_without_a_panic(
            status in 100u16..600,
            retry_after in proptest::option::of("[ -~]{0,12}"),
            location in proptest::option::of("[ -~]{0,40}"),
            code in proptest::prop_oneof![
                proptest::sample::select(&["invalid_request", "not_found", "lease_lost", "conflict", "rate_limited",
                    "unavailable", "corrupt", "request_timeout", "fenced", "not_member", "queue_not_empty",
                    "payload_too_large", "unauthorized", "forbidden"][..]).prop_map(str::to_owned),
                ".{0,12}",
            ],
            message in ".{0,40}",
            jobs in proptest::collection::vec("[0-9a-z+-]{0,22}", 0..4),
            retry_after_ms in proptest::prelude::any::<i128>(),
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            shaped in proptest::prelude::any::<bool>(),
            missing in 0u8..4,
        ) {
            let body = if shaped {
                format!(
                    r#"{{"error": {{"code": {}, "message": {}, "jobs": {}, "retry_after_ms": {retry_after_ms}}}}}"#,
                    serde_json::Value::from(code),
                    serde_json::Value::from(message),
                    serde_json::Value::from(jobs),
                )
                .into_bytes()
            } else {
                raw
            };
            let missing = match missing {
                0 => Missing::Nothing,
                1 => Missing::Job(JobId::new(7)),
                2 => Missing::Queue(QueueName::new("q").unwrap()),
                _ => Missing::Schedule(onceq_core::schedule::ScheduleName::new("nightly").unwrap()),
            };
            let base = Url::parse("http://127.0.0.1:7700/").unwrap();
            let reply = Reply {
                status: StatusCode::from_u16(status).unwrap(),
                retry_after,
                location,
                body: &body,
            };
            let _ = from_reply(&reply, &missing, ENDPOINT, &base);
        }
    }

    #[test]
    fn not_found_is_the_queue_or_the_job_of_the_endpoint() {
        let q = QueueName::new("orders").unwrap();
        let id = JobId::new(42);
        let not_found = body("not_found", "queue 'orders' not found");
        assert_eq!(map(404, &not_found, &Missing::Queue(q.clone())), Error::QueueNotFound(q));
        assert_eq!(map(404, &not_found, &Missing::Job(id)), Error::JobNotFound(id));
        assert!(matches!(map(404, &not_found, &Missing::Nothing), Error::Storage(_)));
    }

    #[test]
    fn error_bodies_map_back_to_their_kind() {
        let id = JobId::new(7);
        let nothing = &Missing::Nothing;
        assert_eq!(map(400, &body("invalid_request", "bad"), nothing), Error::InvalidRequest("bad".into()));
        assert_eq!(map(413, &body("payload_too_large", "big"), nothing), Error::PayloadTooLarge("big".into()));
        assert_eq!(map(409, &body("lease_lost", "x"), &Missing::Job(id)), Error::LeaseLost(id));
        assert_eq!(map(409, &body("conflict", "held"), nothing), Error::Conflict("held".into()));
        assert_eq!(map(409, &body("not_member", "join again"), nothing), Error::NotMember("join again".into()));
        assert_eq!(
            map(409, &body("queue_not_empty", "holds 3 jobs"), nothing),
            Error::QueueNotEmpty("holds 3 jobs".into())
        );
        assert_eq!(
            map(503, &body("unavailable", "stopping"), nothing),
            Error::Unavailable("stopping (retry after 2 s)".into())
        );
        assert_eq!(
            map(429, &body("rate_limited", "slow down"), nothing),
            Error::RateLimited { message: "slow down".into(), retry_after_ms: 2000 }
        );
        let exact = serde_json::json!({"error": {"code": "rate_limited", "message": "full", "retry_after_ms": 1500}});
        assert_eq!(
            map(429, &exact.to_string(), nothing),
            Error::RateLimited { message: "full".into(), retry_after_ms: 1500 }
        );
        assert_eq!(map(503, &body("internal", "odd"), nothing), Error::Unavailable("odd (retry after 2 s)".into()));
        assert!(
            matches!(map(401, &body("unauthorized", "no token"), nothing), Error::InvalidRequest(m) if m.contains("no token"))
        );
        assert!(matches!(map(500, &body("internal", "the store failed"), nothing), Error::Storage(_)));
    }

    #[test]
    fn replies_without_an_error_body_map_by_status() {
        let nothing = &Missing::Nothing;
        for status in [500, 502, 503, 504, 429, 408] {
            let err = map(status, "", nothing);
            assert!(matches!(&err, Error::Unavailable(m) if m.contains("127.0.0.1:7700")), "{status}: {err}");
        }
        assert!(matches!(map(413, "length limit exceeded", nothing), Error::PayloadTooLarge(_)));
        let err = map(404, "", nothing);
        assert!(matches!(&err, Error::Storage(m) if m.contains("compatible")), "{err}");
        let err = map(400, &"x".repeat(1_000), nothing);
        assert!(matches!(&err, Error::Storage(m) if m.len() < 600), "{err}");
        let err = map(200, "{\"error\": 1}", nothing);
        assert!(matches!(err, Error::Storage(_)));
    }
}
