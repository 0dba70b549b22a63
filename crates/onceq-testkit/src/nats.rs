//! The NATS fixture of every crate's tests (feature `nats`): the server to use, a JetStream
//! stream per test (deleted when the test ends, also when it fails), and a failure that says how
//! to start NATS when it is not there (tests never skip silently).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use async_nats;

/// The server the tests use unless `ONCEQ_TEST_NATS_URL` names another.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The test NATS server: `ONCEQ_TEST_NATS_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("ONCEQ_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// How to get a NATS server with JetStream for the tests, for failures that come from not
/// having one.
pub fn how_to_get_nats() -> String {
    format!(
        "these tests need a NATS server with JetStream at {} (set ONCEQ_TEST_NATS_URL to use another). Run the \
         tests with `scripts/test`, which starts the local one, or start it with `nats-server -a 127.0.0.1 -p 4222 \
         -js -sd /var/lib/nats-server`; without one, install it (Debian: `apt-get install nats-server`)",
        url()
    )
}

/// A name no other test (or earlier run) uses: `[A-Za-z0-9_]` only, fit for streams and subjects.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A JetStream context on the test server; fails the test with [`how_to_get_nats`] when the
/// server is not there.
pub async fn jetstream() -> async_nats::jetstream::Context {
    match async_nats::connect(url()).await {
        Ok(client) => async_nats::jetstream::new(client),
        Err(e) => panic!("cannot connect to NATS: {e}\n{}", how_to_get_nats()),
    }
}

/// A stream of the test's own, capturing every subject under [`TestStream::prefix`]; deleted
/// when dropped (also when the test fails) unless [`TestStream::delete`] already did.
pub struct TestStream {
    /// The context the stream was made with.
    pub jetstream: async_nats::jetstream::Context,
    /// The stream's name.
    pub name: String,
    /// Every subject under `<prefix>.` belongs to this stream.
    pub prefix: String,
    /// Set once [`TestStream::delete`] has deleted the stream.
    deleted: bool,
}

impl TestStream {
    /// Creates the stream; fails the test with [`how_to_get_nats`] when the server is not there,
    /// and says so when JetStream is off.
    pub async fn create() -> TestStream {
        let jetstream = jetstream().await;
        let (name, prefix) = (unique("onceq_test"), unique("onceq_test"));
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        };
        if let Err(e) = jetstream.create_stream(config).await {
            panic!("cannot create the test stream (is JetStream on? nats-server -js): {e}\n{}", how_to_get_nats());
        }
        TestStream { jetstream, name, prefix, deleted: false }
    }

    /// The subject `<prefix>.<last>`, which this stream captures.
    pub fn subject(&self, last: &str) -> String {
        format!("{}.{last}", self.prefix)
    }

    /// Every message the stream holds, in order; fails the test if the stream has gaps.
    pub async fn messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut stream = self.jetstream.get_stream(&self.name).await.unwrap_or_else(|e| panic!("get stream: {e}"));
        let state = stream.info().await.unwrap_or_else(|e| panic!("stream info: {e}")).state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return out;
        }
        for sequence in state.first_sequence..=state.last_sequence {
            out.push(stream.get_raw_message(sequence).await.unwrap_or_else(|e| panic!("message {sequence}: {e}")));
        }
        assert_eq!(out.len() as u64, state.messages, "the stream has gaps");
        out
    }

    /// Deletes the stream, failing the test if the server refuses.
    pub async fn delete(mut self) {
        let deleted = self.jetstream.delete_stream(&self.name).await;
        self.deleted = true;
        if let Err(e) = deleted {
            panic!("cannot delete the test stream {}: {e}", self.name);
        }
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        if !self.deleted {
            stream_delete_blocking(&self.name);
        }
    }
}

/// Deletes the stream of this name when dropped while the test fails (a test that made its
/// stream some other way, and deletes it itself when it passes).
pub struct DeleteOnPanic(pub String);

impl Drop for DeleteOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            stream_delete_blocking(&self.0);
        }
    }
}

/// Deletes stream `name` from a thread and runtime of its own, so that it works from `Drop`
/// inside or outside any runtime. A failure is ignored: a guard being dropped must not panic.
pub fn stream_delete_blocking(name: &str) {
    let (url, name) = (url(), name.to_owned());
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            if let Ok(client) = async_nats::connect(&url).await {
                let _ = async_nats::jetstream::new(client).delete_stream(&name).await;
            }
        });
    })
    .join();
}
