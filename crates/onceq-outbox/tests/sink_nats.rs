//! Proves the NATS JetStream sink against a real nats-server: a publish lands in the stream with
//! its payload, its headers and `Nats-Msg-Id` = the dedup id; the same dedup id published twice
//! is stored once; a subject no stream captures, an unreachable server and a server that dies are
//! transient errors (and publishing resumes when the server is back); malformed input, and a
//! message the stream refuses for its size, are permanent; `with_stream` creates a stream with the asked window and refuses a weaker one.
//!
//! The shared server is `ONCEQ_TEST_NATS_URL` (default nats://127.0.0.1:4222, JetStream on);
//! every test makes its own stream with unique subjects (the testkit's NATS fixture) and deletes
//! it. The server-death test starts a private nats-server (`ONCEQ_TEST_NATS_SERVER_BIN`, default
//! /usr/sbin/nats-server) on a free port with a temporary store, and never touches the shared one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onceq_outbox::sink::nats::async_nats;
use onceq_outbox::sink::nats::{NatsSink, DUPLICATE_WINDOW_DEFAULT};
use onceq_outbox::{OutboxMessage, PublishError, Sink};
use onceq_testkit::nats::{unique, url as nats_url, DeleteOnPanic, TestStream};

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

fn header<'a>(message: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    // Parsed, so that a standard name (Nats-Msg-Id) is looked up as the standard header it is
    // stored as.
    let name: async_nats::HeaderName = name.parse().unwrap();
    message.headers.get(name).map(|value| value.as_str())
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
async fn a_publish_lands_in_the_stream_with_payload_headers_and_msg_id() {
    let stream = TestStream::create().await;
    let sink = NatsSink::connect(&nats_url()).await.unwrap();
    assert_eq!(sink.kind(), "nats");
    let subject = stream.subject("orders.created");
    let sent =
        message(7, &subject, br#"{"order":7}"#, &[("content-type", "application/json"), ("trace-id", "abc-123")]);
    sink.publish(&sent, "outbox-7").await.unwrap();

    let held = stream.messages().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].subject.as_str(), subject);
    assert_eq!(held[0].payload.as_ref(), br#"{"order":7}"#);
    assert_eq!(header(&held[0], "content-type"), Some("application/json"));
    assert_eq!(header(&held[0], "trace-id"), Some("abc-123"));
    assert_eq!(header(&held[0], "Nats-Msg-Id"), Some("outbox-7"));
    stream.delete().await;
}

#[tokio::test]
async fn the_same_dedup_id_published_twice_is_stored_once() {
    let stream = TestStream::create().await;
    let sink = NatsSink::connect(&nats_url()).await.unwrap();
    let subject = stream.subject("events");
    let first = message(1, &subject, b"first", &[]);
    sink.publish(&first, "outbox-1").await.unwrap();
    // The relay crashed after the publish and before the mark: the same row goes out again.
    let again = OutboxMessage { attempt: 2, ..first.clone() };
    sink.publish(&again, "outbox-1").await.unwrap();
    sink.publish(&message(2, &subject, b"second", &[]), "outbox-2").await.unwrap();

    let held = stream.messages().await;
    let ids: Vec<_> = held.iter().map(|m| header(m, "Nats-Msg-Id")).collect();
    assert_eq!(ids, vec![Some("outbox-1"), Some("outbox-2")]);
    assert_eq!(held[0].payload.as_ref(), b"first");
    assert_eq!(held[1].payload.as_ref(), b"second");
    stream.delete().await;
}

#[tokio::test]
async fn a_subject_no_stream_captures_is_transient_and_names_the_subject() {
    let sink = NatsSink::connect(&nats_url()).await.unwrap();
    let subject = format!("{}.orphan", unique("onceq_test_nostream"));
    let started = Instant::now();
    let text = transient_text(sink.publish(&message(1, &subject, b"x", &[]), "outbox-1").await);
    assert!(text.contains("no JetStream stream captures subject"), "{text}");
    assert!(text.contains(&subject), "{text}");
    // "No responders" is answered at once; it is not a publish-ack timeout.
    assert!(started.elapsed() < sink.publish_ack_timeout(), "{:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_server_is_transient_and_a_malformed_url_permanent() {
    let port = free_port();
    let text = transient_text(
        NatsSink::builder(&format!("nats://127.0.0.1:{port}")).connect_timeout(Duration::from_secs(2)).connect().await,
    );
    assert!(text.contains("cannot connect to NATS"), "{text}");

    let text = permanent_text(NatsSink::connect("nats://127.0.0.1:notaport").await);
    assert!(text.contains("cannot connect to NATS"), "{text}");
    let text = permanent_text(NatsSink::connect("  ").await);
    assert!(text.contains("URL is empty"), "{text}");
    let text = permanent_text(NatsSink::builder(&nats_url()).publish_ack_timeout(Duration::ZERO).connect().await);
    assert!(text.contains("publish-ack timeout"), "{text}");
}

#[tokio::test]
async fn malformed_messages_are_permanent_and_publish_nothing() {
    let stream = TestStream::create().await;
    let sink = NatsSink::connect(&nats_url()).await.unwrap();
    let subject = stream.subject("bad");

    let cases = [
        (message(1, "", b"x", &[]), "outbox-1", "it is empty"),
        (message(2, &format!("{}.*", stream.prefix), b"x", &[]), "outbox-2", "wildcard"),
        (message(3, &format!("{subject} x"), b"x", &[]), "outbox-3", "whitespace"),
        (message(4, &subject, b"x", &[("Nats-Msg-Id", "mine")]), "outbox-4", "would defeat JetStream deduplication"),
        (message(5, &subject, b"x", &[("bad name", "v")]), "outbox-5", "which NATS cannot carry"),
        (message(6, &subject, b"x", &[("x-multi", "a\r\nb")]), "outbox-6", "CR or LF"),
        (message(7, &subject, &vec![b'x'; 2 * 1024 * 1024], &[]), "outbox-7", "max_payload"),
        (message(8, &subject, b"x", &[]), "", "dedup id"),
    ];
    for (sent, dedup_id, expected) in cases {
        let text = permanent_text(sink.publish(&sent, dedup_id).await);
        assert!(text.contains(expected), "message {}: {text}", sent.id);
    }
    assert_eq!(stream.messages().await.len(), 0);
    // The connection survived all of it.
    sink.publish(&message(9, &subject, b"ok", &[]), "outbox-9").await.unwrap();
    assert_eq!(stream.messages().await.len(), 1);
    stream.delete().await;
}

#[tokio::test]
async fn a_message_over_the_streams_max_message_size_is_permanent() {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let name = unique("onceq_test");
    let prefix = unique("onceq_test");
    let _cleanup = DeleteOnPanic(name.clone());
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_message_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let sink = NatsSink::connect(&nats_url()).await.unwrap();
    let subject = format!("{prefix}.big");
    let text = permanent_text(sink.publish(&message(1, &subject, &[b'x'; 200], &[]), "outbox-1").await);
    assert!(text.contains("JetStream publish to") && text.contains(&subject), "{text}");
    sink.publish(&message(2, &subject, b"small", &[]), "outbox-2").await.unwrap();
    let mut stream = jetstream.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    jetstream.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn with_stream_creates_the_stream_and_refuses_a_weaker_existing_one() {
    let name = unique("onceq_test");
    let prefix = unique("onceq_test");
    let subjects = format!("{prefix}.>");
    let window = Duration::from_secs(600);
    let _cleanup = DeleteOnPanic(name.clone());
    let sink = NatsSink::builder(&nats_url()).with_stream(&name, &[&subjects], window).connect().await.unwrap();
    assert_eq!(sink.duplicate_window(), Some(window));
    sink.publish(&message(1, &format!("{prefix}.a"), b"x", &[]), "outbox-1").await.unwrap();

    let client = async_nats::connect(nats_url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![subjects.clone()]);
    assert_eq!(info.config.duplicate_window, window);
    assert_eq!(info.state.messages, 1);

    // Asking again with what the stream has (or less) is fine and changes nothing.
    let again = NatsSink::builder(&nats_url())
        .with_stream(&name, &[&subjects], DUPLICATE_WINDOW_DEFAULT)
        .connect()
        .await
        .unwrap();
    assert_eq!(again.duplicate_window(), Some(window));

    let text = permanent_text(
        NatsSink::builder(&nats_url()).with_stream(&name, &[&subjects], Duration::from_secs(3600)).connect().await,
    );
    assert!(text.contains("shorter than"), "{text}");
    let text =
        permanent_text(NatsSink::builder(&nats_url()).with_stream(&name, &["elsewhere.>"], window).connect().await);
    assert!(text.contains("do not include"), "{text}");
    let text =
        permanent_text(NatsSink::builder(&nats_url()).with_stream(&name, &[&subjects], Duration::ZERO).connect().await);
    assert!(text.contains("out of range"), "{text}");
    let text = permanent_text(
        NatsSink::builder(&nats_url())
            .publish_ack_timeout(Duration::from_secs(10))
            .with_stream(&name, &[&subjects], Duration::from_secs(5))
            .connect()
            .await,
    );
    assert!(text.contains("not longer than the publish-ack timeout"), "{text}");

    let info = stream.info().await.unwrap();
    assert_eq!(info.config.duplicate_window, window);
    jetstream.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn a_server_that_dies_gives_transient_errors_and_publishing_resumes_when_it_returns() {
    let store = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = PrivateNats::start(port, store.path());
    let url = format!("nats://127.0.0.1:{port}");
    let prefix = unique("onceq_test");
    let sink = NatsSink::builder(&url)
        .publish_ack_timeout(Duration::from_millis(500))
        .with_stream("outage", &[&format!("{prefix}.>")], Duration::from_secs(600))
        .connect()
        .await
        .unwrap();
    let subject = format!("{prefix}.events");
    sink.publish(&message(1, &subject, b"before", &[]), "outbox-1").await.unwrap();

    server.kill();
    let text = transient_text(sink.publish(&message(2, &subject, b"during", &[]), "outbox-2").await);
    eprintln!("while down: {text}");
    assert!(text.contains("publish ack") || text.contains("connection was lost"), "{text}");

    let server = PrivateNats::start(port, store.path());
    // The relay retries with backoff; do the same until the client has reconnected.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match sink.publish(&message(2, &subject, b"during", &[]), "outbox-2").await {
            Ok(()) => break,
            Err(PublishError::Transient(text)) if Instant::now() < deadline => {
                eprintln!("still down: {text}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(other) => panic!("publishing after the restart: {other:?}"),
        }
    }

    let client = async_nats::connect(&url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream("outage").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    // Message 1 survived the kill (file store); message 2 is there once although it was
    // published (or queued) several times.
    assert_eq!(info.state.messages, 2);
    let first = stream.get_raw_message(info.state.first_sequence).await.unwrap();
    let last = stream.get_raw_message(info.state.last_sequence).await.unwrap();
    assert_eq!(first.payload.as_ref(), b"before");
    assert_eq!(last.payload.as_ref(), b"during");
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
    fn start(port: u16, store: &std::path::Path) -> PrivateNats {
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
