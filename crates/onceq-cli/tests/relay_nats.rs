//! Proves, with the real `onceq relay` binary, a real PostgreSQL outbox and real NATS JetStream
//! (issue 6, "Tests"):
//! - kill of the relay between publish and mark, many times (the `crash_after_publish` fail
//!   point aborts the process right after a confirmed publish): restarted until the outbox is
//!   empty, the relay leaves every committed message in the stream exactly once (the
//!   `Nats-Msg-Id` dedup absorbs the re-publishes), with its payload and headers, and a message
//!   staged in a rolled-back transaction never;
//! - a NATS server down for a while: the backlog stays in the outbox (nothing parked, nothing
//!   lost) and drains when the server returns, each message once.
//!
//! PostgreSQL is `ONCEQ_TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/test), each
//! test in an outbox schema of its own, dropped at the end. The crash test uses the shared NATS
//! (`ONCEQ_TEST_NATS_URL`, default nats://127.0.0.1:4222) with a stream of its own, deleted at the
//! end; the outage test starts a nats-server of its own (`ONCEQ_TEST_NATS_SERVER_BIN`, default
//! /usr/sbin/nats-server) on a free port with a temporary store, kills it and starts it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod outbox_common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onceq_outbox::sink::nats::async_nats;
use onceq_outbox::Message;
use outbox_common::{log_text, relay, unique, wait_drained, OutboxSchema};

fn nats_url() -> String {
    std::env::var("ONCEQ_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// What a stream holds, by `Nats-Msg-Id`: (payload, headers) of each copy.
type Held = BTreeMap<String, Vec<(Vec<u8>, BTreeMap<String, String>)>>;

/// Every message of the stream `name`, by `Nats-Msg-Id`: (payload, headers) of each copy.
async fn stream_contents(url: &str, name: &str) -> Held {
    let client = async_nats::connect(url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    if state.messages == 0 {
        return out;
    }
    let id_header: async_nats::HeaderName = "Nats-Msg-Id".parse().unwrap();
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let id = message.headers.get(id_header.clone()).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let headers = message
            .headers
            .iter()
            .filter(|(name, _)| **name != id_header)
            .map(|(name, values)| (name.to_string(), values.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(",")))
            .collect();
        out.entry(id).or_default().push((message.payload.to_vec(), headers));
    }
    assert_eq!(out.values().map(Vec::len).sum::<usize>() as u64, state.messages, "the stream has gaps");
    out
}

async fn stream_create(url: &str, name: &str, subjects: &str) -> async_nats::jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            ..Default::default()
        })
        .await
        .expect("create the test stream (is JetStream on? nats-server -js)");
    jetstream
}

/// Message number `n` to `subject`: payload `m<n>`, a header `n: <n>`, one of three ordering keys
/// (or none, every fourth).
fn numbered(subject: &str, n: usize) -> Message {
    let message = Message::new(subject, format!("m{n}").into_bytes()).header("n", n.to_string());
    if n.is_multiple_of(4) {
        message
    } else {
        message.ordering_key(format!("key{}", n % 3))
    }
}

/// Asserts that `held` has exactly the messages `ids` (numbered 0.. in order) of outbox `outbox`,
/// each once.
fn assert_exactly_once(held: &Held, outbox: &str, ids: &[i64]) {
    let duplicated: Vec<_> = held.iter().filter(|(_, copies)| copies.len() > 1).map(|(id, c)| (id, c.len())).collect();
    assert!(duplicated.is_empty(), "held more than once: {duplicated:?}");
    let expected: Vec<String> = ids.iter().map(|id| format!("{outbox}-{id}")).collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(held.keys().cloned().collect::<Vec<_>>(), expected_sorted, "the stream holds other messages");
    for (n, dedup_id) in expected.iter().enumerate() {
        let (payload, headers) = &held[dedup_id][0];
        assert_eq!(payload, format!("m{n}").as_bytes(), "{dedup_id}");
        assert_eq!(headers.get("n"), Some(&n.to_string()), "{dedup_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_after_publish_again_and_again_leaves_each_message_once_in_jetstream() {
    const MESSAGES: usize = 40;
    let schema = OutboxSchema::create("nats_crash").await;
    let stream_name = unique("onceq_relay");
    let subject_prefix = unique("onceq_relay");
    let subject = format!("{subject_prefix}.orders");
    let _jetstream = stream_create(&nats_url(), &stream_name, &format!("{subject_prefix}.>")).await;
    let _cleanup = StreamDelete { url: nats_url(), name: stream_name.clone() };

    let messages: Vec<Message> = (0..MESSAGES).map(|n| numbered(&subject, n)).collect();
    let ids = schema.stage_committed(&messages).await;
    let never = schema.stage_rolled_back(&Message::new(&subject, b"rolled back".to_vec())).await;

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let (mut runs, mut crashes) = (0u32, 0u32);
    loop {
        runs += 1;
        assert!(runs <= 400, "the outbox did not drain in 400 relay runs ({crashes} crashes)\n{}", log_text(&log));
        // Two per batch, so that a batch gets through 49% of the time at a crash chance of 30%.
        let mut child = relay(&schema, &nats_url(), 2, Some("crash_after_publish:0.3"), &log);
        if wait_drained(&schema, &mut child, Some(&mut crashes), Duration::from_secs(60), &log).await.is_some() {
            drop(child);
            break;
        }
    }
    eprintln!("drained in {runs} relay runs, {crashes} of them killed by the fail point after a publish");
    // Each crash follows a confirmed publish that was not marked: that message went out again.
    assert!(crashes >= 3, "the fail point hit only {crashes} times: the test proved little");
    // (Two publishes of one batch may both hit the fail point before the process is gone.)
    let hits = log_text(&log).matches("fail point crash_after_publish hit").count() as u32;
    assert!(hits >= crashes, "{crashes} aborts but {hits} fail-point hits logged");

    let held = stream_contents(&nats_url(), &stream_name).await;
    assert_exactly_once(&held, &schema.name, &ids);
    assert!(!held.contains_key(&format!("{}-{never}", schema.name)), "a rolled-back message was published");
}

/// Two relays serve one outbox at once, both crashing now and then after a publish: JetStream
/// still holds each message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_leave_each_message_once_in_jetstream() {
    const MESSAGES: usize = 60;
    let schema = OutboxSchema::create("nats_two").await;
    let stream_name = unique("onceq_relay2");
    let subject_prefix = unique("onceq_relay2");
    let subject = format!("{subject_prefix}.orders");
    let _jetstream = stream_create(&nats_url(), &stream_name, &format!("{subject_prefix}.>")).await;
    let _cleanup = StreamDelete { url: nats_url(), name: stream_name.clone() };
    let messages: Vec<Message> = (0..MESSAGES).map(|n| numbered(&subject, n)).collect();
    let ids = schema.stage_committed(&messages).await;

    let logs = tempfile::tempdir().unwrap();
    let logs = [logs.path().join("a.log"), logs.path().join("b.log")];
    let start = |i: usize| relay(&schema, &nats_url(), 2, Some("crash_after_publish:0.1"), &logs[i]);
    let mut relays = [start(0), start(1)];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut crashes = 0u32;
    loop {
        for (i, relay) in relays.iter_mut().enumerate() {
            if let Some(status) = relay.0.try_wait().unwrap() {
                assert_eq!(status.signal(), Some(6), "relay {i} exited with {status}\n{}", log_text(&logs[i]));
                crashes += 1;
                *relay = start(i);
            }
        }
        let (pending, parked) = schema.backlog().await;
        assert!(parked.is_empty(), "the relays parked messages: {parked:?}");
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} messages still pending after 120 s ({crashes} crashes)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("drained with two relays, {crashes} aborts after a publish");
    let held = stream_contents(&nats_url(), &stream_name).await;
    assert_exactly_once(&held, &schema.name, &ids);
}

/// Deletes a stream of the shared NATS when dropped, also when the test fails.
struct StreamDelete {
    url: String,
    name: String,
}

impl Drop for StreamDelete {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A thread of its own, so that this works inside a runtime.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let client = async_nats::connect(&url).await.unwrap();
                async_nats::jetstream::new(client).delete_stream(&name).await.unwrap();
            });
        })
        .join();
        if deleted.is_err() {
            eprintln!("could not delete test stream {}", self.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_holds_the_backlog_and_it_drains_when_nats_returns() {
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    let schema = OutboxSchema::create("nats_outage").await;
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = PrivateNats::start(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let subject = "orders.created";
    let _jetstream = stream_create(&url, "orders", "orders.>").await;

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("relay.log");
    let messages: Vec<Message> = (0..BEFORE + DURING).map(|n| numbered(subject, n)).collect();
    let mut ids = schema.stage_committed(&messages[..BEFORE]).await;
    let mut child = relay(&schema, &url, 10, None, &log);
    wait_drained(&schema, &mut child, None, Duration::from_secs(30), &log).await;

    server.kill();
    ids.extend(schema.stage_committed(&messages[BEFORE..]).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (pending, parked) = schema.backlog().await;
    assert_eq!((pending, parked), (DURING as i64, vec![]), "while NATS is down\n{}", log_text(&log));
    assert!(child.0.try_wait().unwrap().is_none(), "the relay died with NATS\n{}", log_text(&log));

    let server = PrivateNats::start(port, store.path());
    let started = Instant::now();
    wait_drained(&schema, &mut child, None, Duration::from_secs(60), &log).await;
    eprintln!("the backlog of {DURING} drained {:?} after NATS returned", started.elapsed());
    drop(child);

    let held = stream_contents(&url, "orders").await;
    assert_exactly_once(&held, &schema.name, &ids);
    drop(server);
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A nats-server of this test's own, killed (SIGKILL) when dropped.
struct PrivateNats {
    child: Option<Child>,
}

impl PrivateNats {
    fn start(port: u16, store: &Path) -> PrivateNats {
        let binary = std::env::var("ONCEQ_TEST_NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".to_owned());
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary} (set ONCEQ_TEST_NATS_SERVER_BIN): {error}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not open port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        PrivateNats { child: Some(child) }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
