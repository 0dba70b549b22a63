//! The sink seam: where the relay publishes a claimed outbox message.
//!
//! A sink publishes one message and returns only once the destination has durably accepted it
//! (a onceq enqueue that returned, a JetStream publish ack, a RabbitMQ publisher confirm, a 2xx
//! HTTP response). It sets the message's [`OutboxMessage::dedup_id`] as the destination's dedup
//! key, so that publishing the same row twice (a relay crash between publish and mark) leaves one
//! copy wherever the destination deduplicates.

use std::collections::BTreeMap;

use async_trait::async_trait;

#[cfg(feature = "nats")]
pub mod nats;
pub mod onceq;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "webhook")]
pub mod webhook;

/// One staged message as the relay hands it to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The outbox row id: unique per outbox, never reused.
    pub id: i64,
    /// Where it goes, in the sink's own terms: a onceq queue name, a JetStream subject, a
    /// RabbitMQ `exchange/routing-key`, a webhook name. Each sink documents its form.
    pub destination: String,
    /// The payload bytes, exactly as staged.
    pub payload: Vec<u8>,
    /// Headers, exactly as staged (sinks that have headers forward them).
    pub headers: BTreeMap<String, String>,
    /// Messages with the same ordering key are published in staging order, one at a time.
    pub ordering_key: Option<String>,
    /// Which publish attempt this is (1 the first time).
    pub attempt: u32,
}

impl OutboxMessage {
    /// The dedup id every sink sets on the destination: stable across relays and restarts for
    /// one outbox row, `<outbox>-<id>`. `outbox` names the outbox (its schema or file), so two
    /// outboxes feeding one destination do not collide.
    pub fn dedup_id(&self, outbox: &str) -> String {
        format!("{outbox}-{}", self.id)
    }
}

/// Why a publish did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Worth retrying later: the destination is down, timed out, answered 5xx, or did not confirm.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (a 4xx answer, an unknown destination, a payload the destination
    /// refuses): the relay parks the message in the outbox dead letters at once.
    #[error("{0}")]
    Permanent(String),
}

/// A destination the relay publishes to.
#[async_trait]
pub trait Sink: Send + Sync {
    /// A short name for logs and metrics: `onceq`, `nats`, `rabbitmq`, `webhook`.
    fn kind(&self) -> &'static str;

    /// Publishes one message and waits until the destination has durably accepted it, using
    /// `dedup_id` as the destination's dedup key. Returns an error when that cannot be confirmed;
    /// the relay retries transient errors with backoff and parks permanent ones.
    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError>;
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`, for error texts and logs of the RabbitMQ
/// and NATS sinks (here, since either may be built without the other).
#[cfg(any(feature = "nats", feature = "rabbitmq"))]
pub(crate) fn url_without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(all(test, any(feature = "nats", feature = "rabbitmq")))]
mod tests {
    use super::*;

    #[test]
    fn url_without_password_hides_only_the_password() {
        assert_eq!(
            url_without_password("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(url_without_password("amqp://127.0.0.1:5672/%2f"), "amqp://127.0.0.1:5672/%2f");
    }
}
