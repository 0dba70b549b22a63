//! The RabbitMQ sink: publishes each outbox message through an AMQP 0-9-1 channel in confirm mode
//! and waits for the broker's publisher confirm.
//!
//! # At least once, not exactly once
//!
//! **RabbitMQ has no publisher deduplication.** This sink sets the AMQP `message_id` property to
//! the outbox dedup id, but the broker does not look at it. A relay that crashes after the broker
//! confirmed a publish and before it marked the outbox row sent publishes the row again after
//! restart, and the queue then holds the message twice. A confirm that is lost on the way back
//! (connection dropped, timeout) has the same effect. So this sink delivers **at least once**;
//! consumers must deduplicate by `message_id` (for onceq workers: the idempotency store, keyed by
//! `message_id`). Use the onceq or NATS JetStream sink where the destination must hold each
//! message exactly once.
//!
//! # Destination
//!
//! [`OutboxMessage::destination`] is `exchange/routing_key`, split at the first `/`:
//! `orders/created.eu` publishes to exchange `orders` with routing key `created.eu` (the routing
//! key may itself contain `/`). An empty exchange is the default exchange, which routes by queue
//! name: `/billing` publishes straight to queue `billing`. Both parts are at most 255 bytes (AMQP
//! short strings), and the default exchange needs a non-empty routing key. Any other form is
//! [`PublishError::Permanent`].
//!
//! # What each publish does
//!
//! - `mandatory` is set, so a message that no queue binding matches is returned by the broker
//!   instead of dropped silently; the publish then fails.
//! - Delivery mode 2 (persistent): a durable queue keeps the message across a broker restart.
//!   (Persistence needs a durable queue too; that is the queue owner's choice.)
//! - `message_id` is the outbox dedup id; the staged headers become AMQP headers (long strings).
//! - The sink waits for the confirm: an ack is success, a nack is [`PublishError::Transient`]
//!   (the broker could not take it now, e.g. a full queue with `x-overflow: reject-publish`).
//!
//! # Errors
//!
//! - Unroutable (returned under `mandatory`) and a missing exchange (the broker's `404 NOT_FOUND`)
//!   are [`PublishError::Transient`]: queues and bindings are usually declared by the consuming
//!   side, which may deploy after the producer. A destination that never appears costs the
//!   relay's retry bound, after which the relay parks the message in the outbox dead letters with
//!   this error rather than dropping it. The error text names the exchange and routing key.
//! - No confirm within the confirm timeout, a nack, a lost connection, a closed channel: transient.
//! - Permanent: a malformed destination, a header name over 255 bytes, an over-long dedup id, and
//!   the broker's `403 ACCESS_REFUSED` (the user may not write to the exchange), `406
//!   PRECONDITION_FAILED` (e.g. the message is larger than the broker's `max_message_size`) and
//!   `311 CONTENT_TOO_LARGE`.
//!
//! # Connection
//!
//! The sink holds one connection and one confirm-mode channel, shared by concurrent publishes.
//! When the broker closes the channel (as it does on a missing exchange) the next publish opens
//! a new one; when the connection is lost the next publish connects again. Heartbeats are the
//! broker's default unless the URL sets one (`amqp://host/%2f?heartbeat=10`); they bound how long
//! a silently dead connection goes unnoticed while nothing is being published.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{url_without_password, OutboxMessage, PublishError, Sink};

/// The client library this sink is built on, re-exported so that callers (and tests) that
/// declare queues or consume use the very version the sink links.
pub use lapin;

/// How long a publish waits for the broker's confirm unless [`RabbitMqSinkBuilder::confirm_timeout`]
/// says otherwise.
pub const CONFIRM_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest accepted confirm timeout: the relay holds a claimed row for at least this long.
pub const CONFIRM_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// How long connecting (TCP, AMQP handshake, opening the channel) may take unless
/// [`RabbitMqSinkBuilder::connect_timeout`] says otherwise; also bounds each reconnection.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The longest accepted connect timeout.
pub const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// The longest AMQP short string: exchange, routing key, `message_id`, header names.
pub const SHORT_STRING_BYTES_MAX: usize = 255;

/// How long after a failed connect the sink fails publishes at once rather than connecting again.
/// The relay backs off per message anyway; this spares a dead broker (and the publishes queued
/// behind the lock) one connect attempt per publish.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
const _: () = assert!(RECONNECT_PAUSE.as_millis() < CONNECT_TIMEOUT_DEFAULT.as_millis());

/// AMQP delivery mode 2: the broker writes the message to disk in a durable queue.
const DELIVERY_MODE_PERSISTENT: u8 = 2;

/// A sink that publishes to RabbitMQ, at least once; see the [module docs](self) for the
/// destination form, why duplicates are possible, and the error classes.
pub struct RabbitMqSink {
    uri: AMQPUri,
    /// The URL without its password, for error texts and logs.
    uri_display: String,
    confirm_timeout: Duration,
    connect_timeout: Duration,
    /// The connection and confirm-mode channel (replaced when either is lost), or why the last
    /// attempt to connect failed.
    link: Mutex<LinkState>,
}

enum LinkState {
    /// Boxed: a connection and a channel are large next to `Down`.
    Up(Box<Link>),
    /// The last connect failed at this instant with this error. For [`RECONNECT_PAUSE`] after
    /// it, publishes fail at once with the same error instead of each waiting out its own
    /// connect attempt behind the lock.
    Down(std::time::Instant, PublishError),
}

struct Link {
    connection: Connection,
    channel: Channel,
}

/// Options of a [`RabbitMqSink`], then [`RabbitMqSinkBuilder::connect`].
#[derive(Clone)]
pub struct RabbitMqSinkBuilder {
    url: String,
    confirm_timeout: Duration,
    connect_timeout: Duration,
}

/// Shows the URL without its password.
impl std::fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSink")
            .field("url", &self.uri_display)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Shows the URL without its password.
impl std::fmt::Debug for RabbitMqSinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqSinkBuilder")
            .field("url", &url_without_password(&self.url))
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RabbitMqSink {
    /// Connects to the broker at `url` (`amqp://user:password@host:port/vhost`, the default vhost
    /// `/` written `%2f`) with the default options and opens a confirm-mode channel; see
    /// [`RabbitMqSink::builder`].
    ///
    /// A malformed URL or refused credentials are [`PublishError::Permanent`]; an unreachable
    /// broker is [`PublishError::Transient`].
    pub async fn connect(url: &str) -> Result<RabbitMqSink, PublishError> {
        RabbitMqSink::builder(url).connect().await
    }

    /// Options for a sink connecting to `url`: the confirm timeout and the connect timeout.
    pub fn builder(url: &str) -> RabbitMqSinkBuilder {
        RabbitMqSinkBuilder {
            url: url.to_owned(),
            confirm_timeout: CONFIRM_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }

    /// The live confirm-mode channel, opening a new channel or a new connection when needed.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut state = self.link.lock().await;
        match &mut *state {
            LinkState::Up(current) if current.channel.status().connected() => {
                return Ok(current.channel.clone());
            }
            LinkState::Up(current) if current.connection.status().connected() => {
                // The broker closed the channel (a missing exchange does that); the connection
                // lives on.
                let channel = tokio::time::timeout(self.connect_timeout, confirm_channel_open(&current.connection))
                    .await
                    .map_err(|_| {
                        PublishError::Transient(format!(
                            "opening a RabbitMQ channel on {} took more than {} ms",
                            self.uri_display,
                            self.connect_timeout.as_millis()
                        ))
                    })?
                    .map_err(|error| self.lapin_error("opening a channel", error))?;
                current.channel = channel.clone();
                return Ok(channel);
            }
            LinkState::Up(_) => {
                tracing::info!(broker = %self.uri_display, "RabbitMQ connection lost; connecting again");
            }
            LinkState::Down(failed_at, error) if failed_at.elapsed() < RECONNECT_PAUSE => {
                return Err(error_copy(error));
            }
            LinkState::Down(..) => {}
        }
        match self.link_open().await {
            Ok(fresh) => {
                let channel = fresh.channel.clone();
                *state = LinkState::Up(Box::new(fresh));
                Ok(channel)
            }
            Err(error) => {
                *state = LinkState::Down(std::time::Instant::now(), error_copy(&error));
                Err(error)
            }
        }
    }

    async fn link_open(&self) -> Result<Link, PublishError> {
        let open = async {
            let properties = ConnectionProperties::default().with_connection_name("onceq-outbox".into());
            let connection = Connection::connect_uri(self.uri.clone(), properties).await?;
            let channel = confirm_channel_open(&connection).await?;
            Ok::<_, lapin::Error>(Link { connection, channel })
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .map_err(|_| {
                PublishError::Transient(format!(
                    "connecting to RabbitMQ at {} took more than {} ms",
                    self.uri_display,
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|error| self.lapin_error("connecting", error))
    }

    fn lapin_error(&self, doing: &str, error: lapin::Error) -> PublishError {
        let text = format!("RabbitMQ at {}: {doing} failed: {error}", self.uri_display);
        match &error {
            lapin::Error::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(
                    AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED | AMQPSoftError::CONTENTTOOLARGE,
                ) => PublishError::Permanent(text),
                _ => PublishError::Transient(text),
            },
            _ => PublishError::Transient(text),
        }
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError> {
        let (exchange, routing_key) = destination_parse(&message.destination)?;
        let properties = properties_for(message, dedup_id)?;
        let channel = self.channel().await?;
        let doing = format!("publishing to exchange {exchange:?} with routing key {routing_key:?}");
        let confirm = async {
            channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions { mandatory: true, immediate: false },
                    &message.payload,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| {
                PublishError::Transient(format!(
                    "RabbitMQ at {}: no publisher confirm within {} ms for {doing}",
                    self.uri_display,
                    self.confirm_timeout.as_millis()
                ))
            })?
            .map_err(|error| self.lapin_error(&doing, error))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(PublishError::Transient(format!(
                    "RabbitMQ returned the message as unroutable ({} {}): no queue is bound to exchange \
                     {exchange:?} for routing key {routing_key:?}",
                    returned.reply_code, returned.reply_text
                )))
            }
            Confirmation::Nack(None) => Err(PublishError::Transient(format!(
                "RabbitMQ at {} nacked the message ({doing}): the broker could not take it now",
                self.uri_display
            ))),
            // The channel is in confirm mode from the moment it is opened, so every publish on it
            // gets a confirm; an unconfirmed publish is not a success.
            Confirmation::NotRequested => Err(PublishError::Transient(format!(
                "RabbitMQ at {}: the channel was not in confirm mode ({doing})",
                self.uri_display
            ))),
        }
    }
}

impl RabbitMqSinkBuilder {
    /// How long each publish waits for the broker's publisher confirm before it fails as
    /// [`PublishError::Transient`]; default [`CONFIRM_TIMEOUT_DEFAULT`], at most
    /// [`CONFIRM_TIMEOUT_MAX`]. A publish that timed out may still have been taken; the relay's
    /// retry then delivers it twice (this sink is at least once).
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// How long connecting (and each reconnection) may take; default [`CONNECT_TIMEOUT_DEFAULT`],
    /// at most [`CONNECT_TIMEOUT_MAX`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects and opens the confirm-mode channel.
    pub async fn connect(self) -> Result<RabbitMqSink, PublishError> {
        if self.confirm_timeout.is_zero() || self.confirm_timeout > CONFIRM_TIMEOUT_MAX {
            return Err(PublishError::Permanent(format!(
                "RabbitMQ confirm timeout of {} ms is out of range: 1 ms to {} s",
                self.confirm_timeout.as_millis(),
                CONFIRM_TIMEOUT_MAX.as_secs()
            )));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > CONNECT_TIMEOUT_MAX {
            return Err(PublishError::Permanent(format!(
                "RabbitMQ connect timeout of {} ms is out of range: 1 ms to {} s",
                self.connect_timeout.as_millis(),
                CONNECT_TIMEOUT_MAX.as_secs()
            )));
        }
        let uri: AMQPUri = self.url.trim().parse().map_err(|error| {
            PublishError::Permanent(format!(
                "{:?} is not an AMQP URL (amqp://user:password@host:port/vhost): {error}",
                url_without_password(&self.url)
            ))
        })?;
        let mut sink = RabbitMqSink {
            uri,
            uri_display: url_without_password(self.url.trim()),
            confirm_timeout: self.confirm_timeout,
            connect_timeout: self.connect_timeout,
            // Replaced just below, before the sink is handed out.
            link: Mutex::new(LinkState::Down(
                std::time::Instant::now(),
                PublishError::Transient("not connected yet".to_owned()),
            )),
        };
        let link = sink.link_open().await?;
        *sink.link.get_mut() = LinkState::Up(Box::new(link));
        Ok(sink)
    }
}

/// `PublishError` is not `Clone`; the remembered connect failure is handed out again.
fn error_copy(error: &PublishError) -> PublishError {
    match error {
        PublishError::Transient(text) => PublishError::Transient(text.clone()),
        PublishError::Permanent(text) => PublishError::Permanent(text.clone()),
    }
}

async fn confirm_channel_open(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// `exchange/routing_key` → (exchange, routing key); see the module docs.
fn destination_parse(destination: &str) -> Result<(&str, &str), PublishError> {
    let refuse = |reason: &str| {
        Err(PublishError::Permanent(format!(
            "{destination:?} is not a RabbitMQ destination: {reason}; expected exchange/routing_key, \
             or /queue-name for the default exchange"
        )))
    };
    let Some((exchange, routing_key)) = destination.split_once('/') else {
        return refuse("it has no '/'");
    };
    if exchange.len() > SHORT_STRING_BYTES_MAX {
        return refuse("the exchange is longer than 255 bytes");
    }
    if routing_key.len() > SHORT_STRING_BYTES_MAX {
        return refuse("the routing key is longer than 255 bytes");
    }
    if exchange.is_empty() && routing_key.is_empty() {
        return refuse("the default exchange routes by queue name, and the queue name is empty");
    }
    Ok((exchange, routing_key))
}

/// Persistent, `message_id` = dedup id, the staged headers as AMQP long strings.
fn properties_for(message: &OutboxMessage, dedup_id: &str) -> Result<BasicProperties, PublishError> {
    if dedup_id.is_empty() || dedup_id.len() > SHORT_STRING_BYTES_MAX {
        return Err(PublishError::Permanent(format!(
            "dedup id {dedup_id:?} cannot be an AMQP message_id: 1 to 255 bytes"
        )));
    }
    let mut headers = FieldTable::default();
    for (name, value) in &message.headers {
        if name.is_empty() || name.len() > SHORT_STRING_BYTES_MAX {
            return Err(PublishError::Permanent(format!(
                "message {} has header name {name:?}: AMQP header names are 1 to 255 bytes",
                message.id
            )));
        }
        headers.insert(ShortString::from(name.as_str()), AMQPValue::LongString(LongString::from(value.as_str())));
    }
    Ok(BasicProperties::default()
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_message_id(ShortString::from(dedup_id))
        .with_headers(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent_text(result: Result<(&str, &str), PublishError>) -> String {
        match result {
            Err(PublishError::Permanent(text)) => text,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn destination_parse_splits_at_the_first_slash() {
        assert_eq!(destination_parse("orders/created.eu").ok(), Some(("orders", "created.eu")));
        assert_eq!(destination_parse("/billing").ok(), Some(("", "billing")));
        assert_eq!(destination_parse("logs/a/b").ok(), Some(("logs", "a/b")));
        assert_eq!(destination_parse("fanout/").ok(), Some(("fanout", "")));
        assert!(permanent_text(destination_parse("billing")).contains("it has no '/'"));
        assert!(permanent_text(destination_parse("/")).contains("queue name is empty"));
        let long = format!("/{}", "q".repeat(256));
        assert!(permanent_text(destination_parse(&long)).contains("routing key is longer"));
        let long = format!("{}/key", "x".repeat(256));
        assert!(permanent_text(destination_parse(&long)).contains("exchange is longer"));
    }
}
