//! The NATS JetStream sink: publishes each outbox message to a JetStream subject and waits for the
//! stream's publish ack.
//!
//! # Destination
//!
//! [`OutboxMessage::destination`] is the NATS subject, e.g. `orders.created`. It must be a literal
//! subject: non-empty, no whitespace, no empty token (`a..b`, a leading or trailing `.`), and no
//! wildcard token (`*`, `>`). Anything else is [`PublishError::Permanent`].
//!
//! # Deduplication, and the window it holds for
//!
//! Every publish carries the `Nats-Msg-Id` header set to the relay's dedup id, and the sink waits
//! for the stream's publish ack before it reports success. When the relay crashes between publish
//! and mark and publishes the same row again, JetStream recognises the `Nats-Msg-Id`, answers with
//! an ack marked `duplicate`, and stores nothing: the stream holds the message once.
//!
//! **JetStream deduplicates only within the stream's `duplicate_window`** (2 minutes unless the
//! stream says otherwise). A second publish of the same id after the window has passed is stored
//! again. The relay's whole retry horizon for one row — its longest backoff, plus how long a
//! crashed relay stays down before one restarts — must fit inside the window, or the
//! exactly-once promise degrades to at-least-once. Use [`NatsSinkBuilder::with_stream`] to create
//! the stream with a window that fits (and [`NatsSink::duplicate_window`] to read it back), or
//! raise the window of an existing stream (`nats stream edit --dupe-window`).
//!
//! # Errors
//!
//! - A subject that no stream captures ("no responders") is [`PublishError::Transient`]. Streams
//!   are usually created by whoever consumes them, which may deploy after the producer, and a
//!   clustered stream answers "no responders" for a moment while it elects a leader. Retrying is
//!   right in both cases; a subject that never gets a stream costs the relay's retry bound, after
//!   which the relay parks the message in the outbox dead letters, with this error, instead of
//!   dropping it. The error text names the subject.
//! - No publish ack within the publish-ack timeout, a lost connection, or a JetStream error that
//!   may clear (storage full with `discard: new`, a stream without leader) are transient.
//! - Refusals that a retry cannot change are permanent: a malformed subject, a header name or
//!   value NATS cannot carry, a staged `Nats-Msg-Id` header (it would replace the relay's dedup
//!   id), a message larger than the server's `max_payload` or the stream's `max_msg_size`, a
//!   header block over the stream's limit, a sealed stream, and a failed `Nats-Expected-*`
//!   condition staged as a header.
//!
//! # Connection
//!
//! The sink holds one NATS connection. When it drops, the client reconnects by itself, with
//! backoff, for as long as the sink lives; publishes in the meantime fail as transient once their
//! publish-ack timeout passes. A publish that was queued while disconnected may still reach the
//! server after the reconnection; the `Nats-Msg-Id` makes the relay's retry of it a duplicate.

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamErrorKind, Publish, PublishError as JetStreamPublishError, PublishErrorKind,
};
use async_nats::jetstream::stream;
use async_nats::jetstream::ErrorCode;
use async_nats::{ConnectErrorKind, HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;

use super::{url_without_password, OutboxMessage, PublishError, Sink};

/// The client library this sink is built on, re-exported so that callers (and tests) that
/// inspect or prepare streams use the very version the sink links.
pub use async_nats;

/// How long a publish waits for the stream's ack unless [`NatsSinkBuilder::publish_ack_timeout`]
/// says otherwise (the async-nats default).
pub const PUBLISH_ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest accepted publish-ack timeout (a claimed outbox row stays locked while the relay
/// waits).
pub const PUBLISH_ACK_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// How long [`NatsSink::connect`] waits for the server unless [`NatsSinkBuilder::connect_timeout`]
/// says otherwise.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest accepted connect timeout.
pub const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// JetStream's own default `duplicate_window` (for a stream that does not set one).
pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
/// The longest `duplicate_window` [`NatsSinkBuilder::with_stream`] accepts: 7 days, the same bound
/// as onceq's own dedup window. JetStream keeps one id per message for the whole window.
pub const DUPLICATE_WINDOW_MAX: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The shortest `duplicate_window` [`NatsSinkBuilder::with_stream`] accepts; the window must also
/// be longer than the publish-ack timeout, or it could not cover even one retry of a publish
/// whose ack was lost.
pub const DUPLICATE_WINDOW_MIN: Duration = Duration::from_secs(1);
const _: () = assert!(PUBLISH_ACK_TIMEOUT_MAX.as_secs() < DUPLICATE_WINDOW_DEFAULT.as_secs());
const _: () = assert!(DUPLICATE_WINDOW_MIN.as_secs() <= DUPLICATE_WINDOW_DEFAULT.as_secs());

/// The header JetStream deduplicates on.
const MESSAGE_ID_HEADER: &str = "Nats-Msg-Id";

/// A sink that publishes to NATS JetStream; see the [module docs](self) for the destination form,
/// the deduplication window and the error classes.
#[derive(Debug)]
pub struct NatsSink {
    jetstream: async_nats::jetstream::Context,
    /// Kept beside the context to read the server's `max_payload` before each publish.
    client: async_nats::Client,
    publish_ack_timeout: Duration,
    /// The `duplicate_window` of the stream ensured by [`NatsSinkBuilder::with_stream`], if any.
    duplicate_window: Option<Duration>,
}

/// The stream [`NatsSinkBuilder::with_stream`] makes sure of.
#[derive(Debug, Clone)]
struct StreamSpec {
    name: String,
    subjects: Vec<String>,
    duplicate_window: Duration,
}

/// Options of a [`NatsSink`], then [`NatsSinkBuilder::connect`].
#[derive(Clone)]
pub struct NatsSinkBuilder {
    url: String,
    publish_ack_timeout: Duration,
    connect_timeout: Duration,
    stream: Option<StreamSpec>,
}

/// Shows the URL without its password.
impl std::fmt::Debug for NatsSinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkBuilder")
            .field("url", &url_without_password(&self.url))
            .field("publish_ack_timeout", &self.publish_ack_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("stream", &self.stream)
            .finish()
    }
}

impl NatsSink {
    /// Connects to the NATS server at `url` (`nats://host:port`, credentials as
    /// `nats://user:password@host:port`) with the default options; see [`NatsSink::builder`].
    ///
    /// A malformed URL or refused credentials are [`PublishError::Permanent`]; an unreachable
    /// server is [`PublishError::Transient`].
    pub async fn connect(url: &str) -> Result<NatsSink, PublishError> {
        NatsSink::builder(url).connect().await
    }

    /// Options for a sink connecting to `url`: the publish-ack timeout, the connect timeout, and
    /// a stream to make sure of.
    pub fn builder(url: &str) -> NatsSinkBuilder {
        NatsSinkBuilder {
            url: url.to_owned(),
            publish_ack_timeout: PUBLISH_ACK_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            stream: None,
        }
    }

    /// The `duplicate_window` of the stream made sure of by [`NatsSinkBuilder::with_stream`]
    /// (the existing stream's, which is at least the one asked for), or `None` when the sink was
    /// built without one. The relay's retry horizon must fit in it.
    pub fn duplicate_window(&self) -> Option<Duration> {
        self.duplicate_window
    }

    /// How long each publish waits for the stream's ack.
    pub fn publish_ack_timeout(&self) -> Duration {
        self.publish_ack_timeout
    }

    /// The message as async-nats sends it: headers (staged ones, then `Nats-Msg-Id`) and payload.
    fn to_publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<Publish, PublishError> {
        if dedup_id.is_empty() || dedup_id.contains(['\r', '\n']) {
            return Err(PublishError::Permanent(format!(
                "dedup id {dedup_id:?} cannot be a Nats-Msg-Id: it must be non-empty, without CR or LF"
            )));
        }
        let mut headers = HeaderMap::new();
        // "NATS/1.0\r\n" and the closing "\r\n".
        let mut header_bytes = 12;
        for (name, value) in &message.headers {
            if name.eq_ignore_ascii_case(MESSAGE_ID_HEADER) {
                return Err(PublishError::Permanent(format!(
                    "message {} stages a {name:?} header: the NATS sink sets {MESSAGE_ID_HEADER} to the outbox dedup id, \
                     and a staged one would defeat JetStream deduplication",
                    message.id
                )));
            }
            let header_name: HeaderName = name.parse().map_err(|_| {
                PublishError::Permanent(format!(
                    "message {} has header name {name:?}, which NATS cannot carry \
                     (printable ASCII without ':' or spaces)",
                    message.id
                ))
            })?;
            let header_value: HeaderValue = value.parse().map_err(|_| {
                PublishError::Permanent(format!(
                    "message {} has a value of header {name:?} with CR or LF, which NATS cannot carry",
                    message.id
                ))
            })?;
            headers.append(header_name, header_value);
            header_bytes += name.len() + value.len() + 4;
        }
        header_bytes += MESSAGE_ID_HEADER.len() + dedup_id.len() + 4;
        let max_payload = self.client.server_info().max_payload;
        let size = header_bytes + message.payload.len();
        // A message over max_payload would make the server close the whole connection.
        if max_payload > 0 && size > max_payload {
            return Err(PublishError::Permanent(format!(
                "message {} is {size} bytes with headers, more than the NATS server's max_payload of {max_payload} bytes",
                message.id
            )));
        }
        Ok(Publish::build().payload(message.payload.clone().into()).headers(headers).message_id(dedup_id))
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError> {
        let subject = message.destination.as_str();
        subject_check(subject)?;
        let publish = self.to_publish(message, dedup_id)?;
        let ack_future = self
            .jetstream
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|error| self.publish_error(subject, error))?;
        let ack = ack_future.await.map_err(|error| self.publish_error(subject, error))?;
        if ack.duplicate {
            tracing::debug!(
                subject,
                dedup_id,
                stream = %ack.stream,
                sequence = ack.sequence,
                "JetStream already held this message; the duplicate was not stored"
            );
        }
        Ok(())
    }
}

impl NatsSink {
    fn publish_error(&self, subject: &str, error: JetStreamPublishError) -> PublishError {
        match error.kind() {
            PublishErrorKind::StreamNotFound => PublishError::Transient(format!(
                "no JetStream stream captures subject {subject:?} (no responders): create a stream \
                 for it (`nats stream add`, or NatsSinkBuilder::with_stream)"
            )),
            PublishErrorKind::TimedOut => PublishError::Transient(format!(
                "no JetStream publish ack for subject {subject:?} within {} ms (server slow or unreachable)",
                self.publish_ack_timeout.as_millis()
            )),
            PublishErrorKind::BrokenPipe => PublishError::Transient(format!(
                "the NATS connection was lost before the publish ack for subject {subject:?}"
            )),
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                PublishError::Permanent(format!(
                    "JetStream refused the publish to {subject:?}: {error} (a staged Nats-Expected-* header did not hold)"
                ))
            }
            PublishErrorKind::Other => {
                let api_error = std::error::Error::source(&error)
                    .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>());
                let permanent = api_error.is_some_and(|api| {
                    [
                        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
                        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
                        ErrorCode::STREAM_SEALED,
                    ]
                    .contains(&api.error_code())
                });
                let text = format!("JetStream publish to {subject:?} failed: {error}");
                if permanent {
                    PublishError::Permanent(text)
                } else {
                    PublishError::Transient(text)
                }
            }
        }
    }
}

impl NatsSinkBuilder {
    /// How long each publish waits for the stream's publish ack before it fails as
    /// [`PublishError::Transient`]; default [`PUBLISH_ACK_TIMEOUT_DEFAULT`], at most
    /// [`PUBLISH_ACK_TIMEOUT_MAX`]. A publish that timed out may still have been stored; the
    /// relay's retry is then a duplicate that JetStream drops.
    pub fn publish_ack_timeout(mut self, timeout: Duration) -> Self {
        self.publish_ack_timeout = timeout;
        self
    }

    /// How long [`NatsSinkBuilder::connect`] waits for the server; default
    /// [`CONNECT_TIMEOUT_DEFAULT`], at most [`CONNECT_TIMEOUT_MAX`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Makes sure, at connect, that a file-backed stream `name` captures `subjects` with a
    /// `duplicate_window` of at least `duplicate_window` (between [`DUPLICATE_WINDOW_MIN`] and
    /// [`DUPLICATE_WINDOW_MAX`]): it creates the stream when there is none, and refuses to
    /// connect ([`PublishError::Permanent`]) when a stream of that name exists with a shorter
    /// window or without one of the subjects. An existing stream is never changed: its
    /// owner decides its limits and retention. Subjects may use wildcards (`orders.>`).
    pub fn with_stream(mut self, name: &str, subjects: &[&str], duplicate_window: Duration) -> Self {
        self.stream = Some(StreamSpec {
            name: name.to_owned(),
            subjects: subjects.iter().map(|subject| (*subject).to_owned()).collect(),
            duplicate_window,
        });
        self
    }

    /// Connects, and makes sure of the stream if one was named.
    pub async fn connect(self) -> Result<NatsSink, PublishError> {
        if self.publish_ack_timeout.is_zero() || self.publish_ack_timeout > PUBLISH_ACK_TIMEOUT_MAX {
            return Err(PublishError::Permanent(format!(
                "NATS publish-ack timeout of {} ms is out of range: 1 ms to {} s",
                self.publish_ack_timeout.as_millis(),
                PUBLISH_ACK_TIMEOUT_MAX.as_secs()
            )));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > CONNECT_TIMEOUT_MAX {
            return Err(PublishError::Permanent(format!(
                "NATS connect timeout of {} ms is out of range: 1 ms to {} s",
                self.connect_timeout.as_millis(),
                CONNECT_TIMEOUT_MAX.as_secs()
            )));
        }
        if let Some(spec) = &self.stream {
            stream_spec_check(spec)?;
            if spec.duplicate_window <= self.publish_ack_timeout {
                return Err(PublishError::Permanent(format!(
                    "JetStream duplicate_window of {} s is not longer than the publish-ack timeout of {} s: \
                     it could not cover even one retry",
                    spec.duplicate_window.as_secs_f64(),
                    self.publish_ack_timeout.as_secs_f64()
                )));
            }
        }
        let url = self.url.trim();
        if url.is_empty() {
            return Err(PublishError::Permanent("NATS URL is empty: expected nats://host:port".to_owned()));
        }
        let options = async_nats::ConnectOptions::new().name("onceq-outbox").connection_timeout(self.connect_timeout);
        let client = async_nats::connect_with_options(url, options).await.map_err(|error| {
            let text = format!("cannot connect to NATS at {}: {error}", url_without_password(url));
            match error.kind() {
                ConnectErrorKind::ServerParse
                | ConnectErrorKind::Authentication
                | ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Tls => PublishError::Permanent(text),
                _ => PublishError::Transient(text),
            }
        })?;
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(self.publish_ack_timeout);
        let duplicate_window = match &self.stream {
            Some(spec) => Some(stream_ensure(&jetstream, spec).await?),
            None => None,
        };
        Ok(NatsSink { jetstream, client, publish_ack_timeout: self.publish_ack_timeout, duplicate_window })
    }
}

/// Creates the stream of `spec` when missing; checks an existing one. Returns its window.
async fn stream_ensure(
    jetstream: &async_nats::jetstream::Context,
    spec: &StreamSpec,
) -> Result<Duration, PublishError> {
    let config = stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        duplicate_window: spec.duplicate_window,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let stream = jetstream.get_or_create_stream(config).await.map_err(|error| {
        let text = format!("cannot create or read JetStream stream {:?}: {error}", spec.name);
        match error.kind() {
            CreateStreamErrorKind::EmptyStreamName
            | CreateStreamErrorKind::InvalidStreamName
            | CreateStreamErrorKind::DomainAndExternalSet => PublishError::Permanent(text),
            // A subject overlapping another stream, an invalid config: a retry cannot help.
            CreateStreamErrorKind::JetStream(api) if api.code() >= 400 && api.code() < 500 && api.code() != 408 => {
                PublishError::Permanent(text)
            }
            _ => PublishError::Transient(text),
        }
    })?;
    let existing = &stream.cached_info().config;
    let missing: Vec<&String> = spec.subjects.iter().filter(|subject| !existing.subjects.contains(subject)).collect();
    if !missing.is_empty() {
        return Err(PublishError::Permanent(format!(
            "JetStream stream {:?} exists with subjects {:?}, which do not include {missing:?}; \
             add them (`nats stream edit`) or name another stream",
            spec.name, existing.subjects
        )));
    }
    if existing.duplicate_window < spec.duplicate_window {
        return Err(PublishError::Permanent(format!(
            "JetStream stream {:?} exists with a duplicate_window of {} s, shorter than the {} s asked for: \
             a relay retry after the window would be stored twice; raise it (`nats stream edit --dupe-window`)",
            spec.name,
            existing.duplicate_window.as_secs_f64(),
            spec.duplicate_window.as_secs_f64()
        )));
    }
    Ok(existing.duplicate_window)
}

fn stream_spec_check(spec: &StreamSpec) -> Result<(), PublishError> {
    let name = &spec.name;
    if name.is_empty()
        || name.chars().any(|c| c.is_whitespace() || c.is_control() || ['.', '*', '>', '/', '\\'].contains(&c))
    {
        return Err(PublishError::Permanent(format!(
            "JetStream stream name {name:?} is invalid: non-empty, without whitespace, '.', '*', '>', '/' or '\\'"
        )));
    }
    if spec.subjects.is_empty() {
        return Err(PublishError::Permanent(format!("JetStream stream {name:?} needs at least one subject")));
    }
    for subject in &spec.subjects {
        if subject.is_empty() || subject.chars().any(char::is_whitespace) || subject.split('.').any(str::is_empty) {
            return Err(PublishError::Permanent(format!(
                "JetStream stream {name:?} has invalid subject {subject:?}: non-empty tokens separated by '.', no whitespace"
            )));
        }
    }
    if spec.duplicate_window < DUPLICATE_WINDOW_MIN || spec.duplicate_window > DUPLICATE_WINDOW_MAX {
        return Err(PublishError::Permanent(format!(
            "JetStream duplicate_window of {} s is out of range: {} s to {} s",
            spec.duplicate_window.as_secs_f64(),
            DUPLICATE_WINDOW_MIN.as_secs(),
            DUPLICATE_WINDOW_MAX.as_secs()
        )));
    }
    Ok(())
}

/// A destination the sink can publish to: a literal subject.
fn subject_check(subject: &str) -> Result<(), PublishError> {
    let reason = if subject.is_empty() {
        Some("it is empty")
    } else if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace")
    } else if subject.split('.').any(str::is_empty) {
        Some("it has an empty token (a leading, trailing or doubled '.')")
    } else if subject.split('.').any(|token| token == "*" || token == ">") {
        Some("it has a wildcard token ('*' or '>'), and one publishes to a literal subject")
    } else {
        None
    };
    match reason {
        Some(reason) => {
            Err(PublishError::Permanent(format!("{subject:?} is not a NATS subject to publish to: {reason}")))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent_text(result: Result<(), PublishError>) -> String {
        match result {
            Err(PublishError::Permanent(text)) => text,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn subject_check_accepts_literal_subjects_only() {
        assert!(subject_check("orders").is_ok());
        assert!(subject_check("orders.created.eu-1").is_ok());
        for (bad, reason) in [
            ("", "it is empty"),
            ("orders created", "whitespace"),
            (".orders", "empty token"),
            ("orders.", "empty token"),
            ("orders..x", "empty token"),
            ("orders.*", "wildcard"),
            ("orders.>", "wildcard"),
        ] {
            let text = permanent_text(subject_check(bad));
            assert!(text.contains("is not a NATS subject") && text.contains(reason), "{bad:?}: {text}");
        }
    }

    #[test]
    fn stream_spec_check_bounds_the_window_and_names() {
        let spec = |name: &str, window| StreamSpec {
            name: name.to_owned(),
            subjects: vec!["orders.>".to_owned()],
            duplicate_window: window,
        };
        assert!(stream_spec_check(&spec("orders", DUPLICATE_WINDOW_DEFAULT)).is_ok());
        for bad in [Duration::ZERO, DUPLICATE_WINDOW_MAX + Duration::from_secs(1)] {
            let text = permanent_text(stream_spec_check(&spec("orders", bad)));
            assert!(text.contains("out of range"), "{bad:?}: {text}");
        }
        for bad in ["", "or.ders", "or ders", "orders>"] {
            let text = permanent_text(stream_spec_check(&spec(bad, DUPLICATE_WINDOW_DEFAULT)));
            assert!(text.contains("stream name"), "{bad:?}: {text}");
        }
    }
}
