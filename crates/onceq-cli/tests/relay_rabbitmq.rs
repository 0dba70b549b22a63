//! Proves, with the real `onceq relay` binary, a real PostgreSQL outbox and real RabbitMQ (issue 6,
//! "Tests"):
//! - kill of the relay between publish and mark, many times (the `crash_after_publish` fail
//!   point aborts the process right after a confirmed publish): restarted until the outbox is
//!   empty, the relay has delivered every committed message at least once, with its payload,
//!   headers and `message_id` = the dedup id, and a message staged in a rolled-back transaction
//!   never. RabbitMQ has no publisher dedup, so each kill leaves a duplicate: the test counts
//!   them (at least one per kill) — consumers deduplicate by `message_id`;
//! - the broker unreachable for a while (the relay talks to it through a TCP relay of the test's
//!   own, which the test cuts; the shared broker is never stopped): the backlog stays in the
//!   outbox (nothing parked, nothing lost) and drains when the connection returns.
//!
//! PostgreSQL is `ONCEQ_TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test), each
//! test in an outbox schema of its own, dropped at the end. RabbitMQ is `ONCEQ_TEST_AMQP_URL`
//! (default amqp://guest:guest@127.0.0.1:5672/%2f); each test declares its own exclusive queue,
//! gone when the test's connection closes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod outbox_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use onceq_outbox::sink::rabbitmq::lapin;
use onceq_outbox::Message;
use outbox_common::{log_text, relay, unique, wait_drained, OutboxSchema};

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection as AmqpConnection, ConnectionProperties};
use onceq_testkit::proxy::CuttableProxy;

fn amqp_url() -> String {
    std::env::var("ONCEQ_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A queue of the test's own, exclusive to this connection: gone when the test ends, even when
/// it fails half-way. The relay's connection may still publish to it.
struct TestQueue {
    _connection: AmqpConnection,
    channel: Channel,
    name: String,
}

impl TestQueue {
    async fn declare() -> TestQueue {
        let connection = AmqpConnection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ (run the tests with scripts/test, or set ONCEQ_TEST_AMQP_URL)");
        let channel = connection.create_channel().await.unwrap();
        let name = unique("onceq_relay");
        channel
            .queue_declare(&name, QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
            .await
            .unwrap();
        TestQueue { _connection: connection, channel, name }
    }

    /// Everything in the queue, taken off it, by `message_id`: (payload, header `n`, delivery
    /// mode) of each copy.
    async fn drain(&self) -> Held {
        let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
        while let Some(got) = self.channel.basic_get(&self.name, BasicGetOptions { no_ack: true }).await.unwrap() {
            let properties = &got.delivery.properties;
            let id = properties.message_id().as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default();
            let n = properties.headers().as_ref().and_then(|h| h.inner().get(&ShortString::from("n")).cloned());
            out.entry(id).or_default().push((got.delivery.data.clone(), n, *properties.delivery_mode()));
        }
        out
    }
}

/// Message number `n` to `destination`: payload `m<n>`, a header `n: <n>`, one of three ordering
/// keys (or none, every fourth).
fn numbered(destination: &str, n: usize) -> Message {
    let message = Message::new(destination, format!("m{n}").into_bytes()).header("n", n.to_string());
    if n.is_multiple_of(4) {
        message
    } else {
        message.ordering_key(format!("key{}", n % 3))
    }
}

type Held = BTreeMap<String, Vec<(Vec<u8>, Option<AMQPValue>, Option<u8>)>>;

/// Asserts that `held` has every message `ids` (numbered 0.. in order) of outbox `outbox`, at
/// least once, intact and persistent, and nothing else; returns the number of extra copies.
fn assert_at_least_once(held: &Held, outbox: &str, ids: &[i64]) -> usize {
    let expected: Vec<String> = ids.iter().map(|id| format!("{outbox}-{id}")).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(held.keys().cloned().collect::<Vec<_>>(), expected_sorted, "the queue lacks or has other messages");
    for (n, dedup_id) in expected.iter().enumerate() {
        for (payload, header, delivery_mode) in &held[dedup_id] {
            assert_eq!(payload, format!("m{n}").as_bytes(), "{dedup_id}");
            assert_eq!(header, &Some(AMQPValue::LongString(n.to_string().into())), "{dedup_id}");
            assert_eq!(*delivery_mode, Some(2), "{dedup_id} is not persistent");
        }
    }
    held.values().map(|copies| copies.len() - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_after_publish_again_and_again_delivers_every_message_at_least_once() {
    const MESSAGES: usize = 40;
    let schema = OutboxSchema::create("amqp_crash").await;
    let queue = TestQueue::declare().await;
    let destination = format!("/{}", queue.name);

    let messages: Vec<Message> = (0..MESSAGES).map(|n| numbered(&destination, n)).collect();
    let ids = schema.stage_committed(&messages).await;
    let never = schema.stage_rolled_back(&Message::new(&destination, b"rolled back".to_vec())).await;

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let (mut runs, mut crashes) = (0u32, 0u32);
    loop {
        runs += 1;
        assert!(runs <= 400, "the outbox did not drain in 400 relay runs ({crashes} crashes)\n{}", log_text(&log));
        // Two per batch, so that a batch gets through 49% of the time at a crash chance of 30%.
        let mut child = relay(&schema, &amqp_url(), 2, Some("crash_after_publish:0.3"), &log);
        if wait_drained(&schema, &mut child, Some(&mut crashes), Duration::from_secs(60), &log).await.is_some() {
            drop(child);
            break;
        }
    }
    eprintln!("drained in {runs} relay runs, {crashes} of them killed by the fail point after a publish");
    assert!(crashes >= 3, "the fail point hit only {crashes} times: the test proved little");

    let held = queue.drain().await;
    assert!(!held.contains_key(&format!("{}-{never}", schema.name)), "a rolled-back message was published");
    let duplicates = assert_at_least_once(&held, &schema.name, &ids);
    eprintln!("{MESSAGES} messages arrived, plus {duplicates} duplicates (same message_id)");
    // Every kill came after a confirmed, unmarked publish, which the next relay repeated.
    assert!(duplicates >= crashes as usize, "{duplicates} duplicates for {crashes} kills");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_holds_the_backlog_and_it_drains_when_the_broker_returns() {
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    let schema = OutboxSchema::create("amqp_outage").await;
    let queue = TestQueue::declare().await;
    let destination = format!("/{}", queue.name);
    let tcp = CuttableProxy::start(broker_port()).await.unwrap();
    let url = amqp_url().replace(&format!("127.0.0.1:{}", broker_port()), &format!("127.0.0.1:{}", tcp.port()));
    assert_ne!(url, amqp_url(), "the outage test needs ONCEQ_TEST_AMQP_URL on 127.0.0.1");

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let messages: Vec<Message> = (0..BEFORE + DURING).map(|n| numbered(&destination, n)).collect();
    let mut ids = schema.stage_committed(&messages[..BEFORE]).await;
    let mut child = relay(&schema, &url, 10, None, &log);
    wait_drained(&schema, &mut child, None, Duration::from_secs(30), &log).await;

    tcp.cut_and_refuse();
    ids.extend(schema.stage_committed(&messages[BEFORE..]).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pending, parked) = schema.backlog().await;
    assert_eq!((pending, parked), (DURING as i64, vec![]), "while the broker is unreachable\n{}", log_text(&log));
    assert!(child.0.try_wait().unwrap().is_none(), "the relay died with the connection\n{}", log_text(&log));

    tcp.accept_again();
    let started = Instant::now();
    wait_drained(&schema, &mut child, None, Duration::from_secs(60), &log).await;
    eprintln!("the backlog of {DURING} drained {:?} after the broker returned", started.elapsed());
    drop(child);

    let held = queue.drain().await;
    let duplicates = assert_at_least_once(&held, &schema.name, &ids);
    eprintln!("{} messages arrived, plus {duplicates} duplicates", BEFORE + DURING);
}

/// The broker's port on 127.0.0.1, from `ONCEQ_TEST_AMQP_URL`.
fn broker_port() -> u16 {
    let url = amqp_url();
    let after_host = url.split("127.0.0.1:").nth(1).unwrap_or("5672");
    after_host.split('/').next().and_then(|port| port.parse().ok()).unwrap_or(5672)
}

/// Issue 27: a RabbitMQ login refused at start is reported by onceq in one line of its own, with
/// the password masked, and no line of the AMQP library comes before it (or at all) at the
/// default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rabbitmq_login_is_reported_in_onceq_s_words_alone() {
    let schema = OutboxSchema::create("amqp_login").await;
    let url = amqp_url();
    let wrong = match url.split_once("://").and_then(|(_, rest)| rest.split_once('@')) {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("guest");
            format!("amqp://{user}:not-the-password@{host}")
        }
        None => panic!("ONCEQ_TEST_AMQP_URL has no user: {url}"),
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_onceq"))
        .args(["relay", "--outbox", &outbox_common::database_url(), "--outbox-schema", &schema.name])
        .args(["--sink", &wrong])
        .env_remove("RUST_LOG")
        .output()
        .expect("run onceq relay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the relay ran with a refused login: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, onceq's own: {stderr}");
    assert!(lines[0].starts_with("onceq: "), "{stderr}");
    assert!(lines[0].contains("RabbitMQ") && lines[0].contains("ACCESS_REFUSED"), "{stderr}");
    assert!(!lines[0].contains("not-the-password"), "the password is shown: {stderr}");
}
