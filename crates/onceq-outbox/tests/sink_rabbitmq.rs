//! Proves the RabbitMQ sink against a real broker: a publish reaches a queue (through the default
//! exchange and through a named exchange) with `message_id` = the dedup id, the staged headers
//! and delivery mode 2 (persistent); the same dedup id published twice is held twice (RabbitMQ
//! has no publisher dedup, as the sink documents); a message no queue is bound for, and an
//! exchange that does not exist, are errors, not silent drops, and the sink keeps working after
//! them; a malformed destination is permanent; a lost connection is opened again.
//!
//! The broker is `ONCEQ_TEST_AMQP_URL` (default amqp://guest:guest@127.0.0.1:5672/%2f). Every
//! test that uses the broker gets a virtual host of its own (the testkit's RabbitMQ fixture),
//! declares its queues and exchanges there under unique names, and deletes them. The
//! connection-loss test runs the sink through a TCP relay of its own that it cuts, so the shared
//! broker is never stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use onceq_outbox::sink::rabbitmq::lapin;
use onceq_outbox::sink::rabbitmq::RabbitMqSink;
use onceq_outbox::{OutboxMessage, PublishError, Sink};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use onceq_testkit::proxy::CuttableProxy;
use onceq_testkit::rabbitmq::{url as amqp_url, Vhost};

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn message(id: i64, destination: &str, payload: &[u8], headers: &[(&str, &str)]) -> OutboxMessage {
    OutboxMessage {
        id,
        destination: destination.to_owned(),
        payload: payload.to_vec(),
        headers: headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        ordering_key: None,
        attempt: 1,
    }
}

/// A virtual host and a channel of the test's own for declaring, reading and deleting what it
/// uses.
struct Broker {
    _connection: Connection,
    channel: Channel,
    queues: Vec<String>,
    exchanges: Vec<String>,
    /// Deleted last, with anything the test left in it (fields drop in declaration order).
    vhost: Vhost,
}

impl Broker {
    async fn open() -> Broker {
        let vhost = Vhost::create();
        let connection = Connection::connect(&vhost.url(), ConnectionProperties::default()).await.unwrap_or_else(|e| {
            panic!("cannot connect to the test RabbitMQ: {e}\n{}", onceq_testkit::rabbitmq::how_to_get_rabbitmq())
        });
        let channel = connection.create_channel().await.unwrap();
        Broker { _connection: connection, channel, queues: Vec::new(), exchanges: Vec::new(), vhost }
    }

    /// The URL of the test broker in this test's virtual host.
    fn url(&self) -> String {
        self.vhost.url()
    }

    async fn queue(&mut self) -> String {
        let name = unique("onceq_test");
        self.channel
            .queue_declare(
                &name,
                // Exclusive: gone with this connection even when the test fails half-way.
                // Other connections (the sink's) may still publish to it.
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.queues.push(name.clone());
        name
    }

    /// A direct exchange that RabbitMQ deletes by itself when this connection closes, even when
    /// the test fails half-way: it is auto-delete, and bound to an exclusive anchor queue (under
    /// a routing key no test uses) that goes with the connection, taking the last binding along.
    async fn exchange(&mut self) -> String {
        let name = unique("onceq_test");
        self.channel
            .exchange_declare(
                &name,
                ExchangeKind::Direct,
                ExchangeDeclareOptions { auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let anchor = unique("onceq_test_anchor");
        self.channel
            .queue_declare(
                &anchor,
                QueueDeclareOptions { exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.bind(&anchor, &name, "onceq-test-anchor").await;
        self.exchanges.push(name.clone());
        name
    }

    async fn bind(&self, queue: &str, exchange: &str, routing_key: &str) {
        self.channel
            .queue_bind(queue, exchange, routing_key, QueueBindOptions::default(), FieldTable::default())
            .await
            .unwrap();
    }

    /// Everything in `queue`, taken off it.
    async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        while let Some(got) = self.channel.basic_get(queue, BasicGetOptions { no_ack: true }).await.unwrap() {
            out.push(got.delivery);
        }
        out
    }

    async fn delete(self) {
        for queue in &self.queues {
            self.channel.queue_delete(queue, QueueDeleteOptions::default()).await.unwrap();
        }
        for exchange in &self.exchanges {
            self.channel.exchange_delete(exchange, ExchangeDeleteOptions::default()).await.unwrap();
        }
    }
}

fn message_id(delivery: &lapin::message::Delivery) -> Option<String> {
    delivery.properties.message_id().as_ref().map(|id| id.as_str().to_owned())
}

fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<AMQPValue> {
    delivery.properties.headers().as_ref().and_then(|headers| headers.inner().get(&ShortString::from(name)).cloned())
}

fn transient_text(result: Result<impl std::fmt::Debug, PublishError>) -> String {
    match result {
        Err(PublishError::Transient(text)) => text,
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn permanent_text(result: Result<impl std::fmt::Debug, PublishError>) -> String {
    match result {
        Err(PublishError::Permanent(text)) => text,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_publish_reaches_a_consumer_with_message_id_headers_and_persistence() {
    let mut broker = Broker::open().await;
    let direct = broker.queue().await;
    let bound = broker.queue().await;
    let exchange = broker.exchange().await;
    broker.bind(&bound, &exchange, "orders.created").await;
    let sink = RabbitMqSink::connect(&broker.url()).await.unwrap();
    assert_eq!(sink.kind(), "rabbitmq");

    let through_default = message(
        7,
        &format!("/{direct}"),
        br#"{"order":7}"#,
        &[("content-type", "application/json"), ("trace-id", "abc-123")],
    );
    sink.publish(&through_default, "outbox-7").await.unwrap();
    let through_exchange = message(8, &format!("{exchange}/orders.created"), b"eight", &[]);
    sink.publish(&through_exchange, "outbox-8").await.unwrap();

    let got = broker.drain(&direct).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, br#"{"order":7}"#);
    assert_eq!(message_id(&got[0]).as_deref(), Some("outbox-7"));
    assert_eq!(*got[0].properties.delivery_mode(), Some(2));
    assert_eq!(header(&got[0], "content-type"), Some(AMQPValue::LongString("application/json".into())));
    assert_eq!(header(&got[0], "trace-id"), Some(AMQPValue::LongString("abc-123".into())));
    assert_eq!(got[0].routing_key.as_str(), direct);

    let got = broker.drain(&bound).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"eight");
    assert_eq!(message_id(&got[0]).as_deref(), Some("outbox-8"));
    assert_eq!(got[0].exchange.as_str(), exchange);
    assert_eq!(*got[0].properties.delivery_mode(), Some(2));
    broker.delete().await;
}

#[tokio::test]
async fn the_same_dedup_id_twice_is_held_twice_rabbitmq_is_at_least_once() {
    let mut broker = Broker::open().await;
    let queue = broker.queue().await;
    let sink = RabbitMqSink::connect(&broker.url()).await.unwrap();
    let sent = message(1, &format!("/{queue}"), b"once?", &[]);
    sink.publish(&sent, "outbox-1").await.unwrap();
    sink.publish(&sent, "outbox-1").await.unwrap();
    let got = broker.drain(&queue).await;
    let ids: Vec<_> = got.iter().map(message_id).collect();
    // Consumers deduplicate by message_id; the broker does not.
    assert_eq!(ids, vec![Some("outbox-1".to_owned()), Some("outbox-1".to_owned())]);
    broker.delete().await;
}

#[tokio::test]
async fn unroutable_messages_and_missing_exchanges_are_errors_not_silent_drops() {
    let mut broker = Broker::open().await;
    let queue = broker.queue().await;
    let exchange = broker.exchange().await;
    let sink = RabbitMqSink::connect(&broker.url()).await.unwrap();

    // An exchange with no binding for the key: returned under `mandatory`.
    let text = transient_text(sink.publish(&message(1, &format!("{exchange}/nowhere"), b"x", &[]), "outbox-1").await);
    assert!(text.contains("unroutable"), "{text}");
    assert!(text.contains(&exchange) && text.contains("nowhere"), "{text}");

    // The default exchange and a queue that does not exist: returned too.
    let missing_queue = unique("onceq_test_missing");
    let text = transient_text(sink.publish(&message(2, &format!("/{missing_queue}"), b"x", &[]), "outbox-2").await);
    assert!(text.contains("unroutable") && text.contains(&missing_queue), "{text}");

    // An exchange that does not exist: the broker closes the channel with 404.
    let missing_exchange = unique("onceq_test_missing");
    let text =
        transient_text(sink.publish(&message(3, &format!("{missing_exchange}/key"), b"x", &[]), "outbox-3").await);
    assert!(text.contains("NOT_FOUND") || text.contains("not found"), "{text}");

    // The sink opens a new channel and goes on.
    sink.publish(&message(4, &format!("/{queue}"), b"after", &[]), "outbox-4").await.unwrap();
    let got = broker.drain(&queue).await;
    assert_eq!(got.len(), 1);
    assert_eq!(message_id(&got[0]).as_deref(), Some("outbox-4"));
    broker.delete().await;
}

#[tokio::test]
async fn malformed_destinations_and_urls_are_permanent() {
    let sink = RabbitMqSink::connect(&amqp_url()).await.unwrap();
    let long_key = format!("/{}", "q".repeat(256));
    let long_header = "h".repeat(256);
    let cases = [
        (message(1, "no-slash", b"x", &[]), "outbox-1", "it has no '/'"),
        (message(2, "/", b"x", &[]), "outbox-2", "queue name is empty"),
        (message(3, &long_key, b"x", &[]), "outbox-3", "routing key is longer"),
        (message(4, "/q", b"x", &[(long_header.as_str(), "v")]), "outbox-4", "AMQP header names are 1 to 255 bytes"),
        (message(5, "/q", b"x", &[]), "", "message_id"),
    ];
    for (sent, dedup_id, expected) in cases {
        let text = permanent_text(sink.publish(&sent, dedup_id).await);
        assert!(text.contains(expected), "message {}: {text}", sent.id);
    }

    let text = permanent_text(RabbitMqSink::connect("http://guest:secret@127.0.0.1:5672/").await);
    assert!(text.contains("is not an AMQP URL"), "{text}");
    assert!(!text.contains("secret"), "the password leaked: {text}");
    let port = free_port();
    let text = transient_text(
        RabbitMqSink::builder(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await,
    );
    assert!(text.contains("connecting"), "{text}");
    let text =
        permanent_text(RabbitMqSink::builder(&amqp_url()).confirm_timeout(Duration::from_secs(3600)).connect().await);
    assert!(text.contains("confirm timeout"), "{text}");
}

#[tokio::test]
async fn a_lost_connection_is_opened_again() {
    let mut broker = Broker::open().await;
    let queue = broker.queue().await;
    let relay = CuttableProxy::start(5672).await.unwrap();
    let url = broker.url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", relay.port()));
    assert_ne!(url, broker.url(), "the connection-loss test needs the broker on 127.0.0.1:5672");
    let sink = RabbitMqSink::builder(&url)
        .connect_timeout(Duration::from_secs(2))
        .confirm_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let destination = format!("/{queue}");
    sink.publish(&message(1, &destination, b"before", &[]), "outbox-1").await.unwrap();

    relay.cut_and_refuse();
    let text = transient_text(sink.publish(&message(2, &destination, b"x", &[]), "outbox-2").await);
    eprintln!("while down: {text}");
    // The next publishes try to connect again, fail, and (for a moment) fail at once.
    for _ in 0..2 {
        let text = transient_text(sink.publish(&message(2, &destination, b"x", &[]), "outbox-2").await);
        assert!(text.contains("connecting") && !text.contains("guest:guest"), "{text}");
    }

    relay.accept_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sink.publish(&message(2, &destination, b"after", &[]), "outbox-2").await {
            Ok(()) => break,
            Err(PublishError::Transient(text)) if Instant::now() < deadline => {
                eprintln!("still down: {text}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("publishing after the connection came back: {other:?}"),
        }
    }
    let got = broker.drain(&queue).await;
    let payloads: Vec<_> = got.iter().map(|d| d.data.clone()).collect();
    assert_eq!(payloads, vec![b"before".to_vec(), b"after".to_vec()]);
    broker.delete().await;
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
