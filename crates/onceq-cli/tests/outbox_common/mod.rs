//! What the black-box relay tests against NATS (relay_nats.rs) and RabbitMQ (relay_rabbitmq.rs)
//! share: a PostgreSQL outbox schema per test, the `onceq relay` process, and waiting for the
//! outbox to drain.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onceq_outbox::postgres::PgOutbox;
use onceq_outbox::Message;
use sqlx::{Connection, PgConnection};

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::postgres::database_url;

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{:08x}", std::process::id(), rand::random::<u32>())
}

/// An outbox schema of one test, dropped (with everything in it) when this is dropped.
pub struct OutboxSchema {
    pub name: String,
    pub outbox: PgOutbox,
}

impl OutboxSchema {
    pub async fn create(test: &str) -> OutboxSchema {
        let name = unique(&format!("relay_{test}"));
        let outbox = PgOutbox::new(&name).unwrap();
        let mut conn = PgConnection::connect(&database_url()).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {} (run the tests with scripts/test, or set \
                 ONCEQ_TEST_DATABASE_URL): {e}",
                database_url()
            )
        });
        outbox.migrate(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        OutboxSchema { name, outbox }
    }

    /// Stages each message in a committed transaction of its own; returns the row ids.
    pub async fn stage_committed(&self, messages: &[Message]) -> Vec<i64> {
        let mut conn = PgConnection::connect(&database_url()).await.unwrap();
        let mut ids = Vec::new();
        for message in messages {
            let mut tx = conn.begin().await.unwrap();
            ids.push(onceq_outbox::postgres::stage(&mut tx, &self.outbox, message).await.unwrap());
            tx.commit().await.unwrap();
        }
        conn.close().await.unwrap();
        ids
    }

    /// Stages `message` in a transaction that rolls back; returns the id it had.
    pub async fn stage_rolled_back(&self, message: &Message) -> i64 {
        let mut conn = PgConnection::connect(&database_url()).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let id = onceq_outbox::postgres::stage(&mut tx, &self.outbox, message).await.unwrap();
        tx.rollback().await.unwrap();
        conn.close().await.unwrap();
        id
    }

    /// (messages not yet sent, parked messages with their errors).
    pub async fn backlog(&self) -> (i64, Vec<String>) {
        let mut conn = PgConnection::connect(&database_url()).await.unwrap();
        let s = &self.name;
        let pending: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{s}\".messages WHERE sent_at IS NULL"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let parked: Vec<String> =
            sqlx::query_scalar(&format!("SELECT id::text || ': ' || error FROM \"{s}\".dead_letters ORDER BY id"))
                .fetch_all(&mut conn)
                .await
                .unwrap();
        conn.close().await.unwrap();
        (pending, parked)
    }
}

impl Drop for OutboxSchema {
    fn drop(&mut self) {
        onceq_testkit::postgres::drop_schemas(std::slice::from_ref(&self.name));
    }
}

/// A running `onceq relay`, killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct RelayProcess(pub Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `onceq relay` on `schema` publishing to `sink`, with fast retries and nothing parked early;
/// its stderr appended to `log`.
pub fn relay(schema: &OutboxSchema, sink: &str, batch_size: u32, failpoint: Option<&str>, log: &Path) -> RelayProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_onceq"));
    command
        .args(["relay", "--outbox", &database_url(), "--outbox-schema", &schema.name, "--sink", sink])
        .args(["--batch-size", &batch_size.to_string(), "--max-attempts", "1000"])
        .args(["--backoff-initial-ms", "50", "--backoff-max-ms", "500", "--poll-interval-ms", "200"])
        .env_remove("ONCEQ_OUTBOX_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::options().create(true).append(true).open(log).unwrap());
    if let Some(failpoint) = failpoint {
        command.env("ONCEQ_OUTBOX_FAILPOINT", failpoint);
    }
    RelayProcess(command.spawn().expect("start onceq relay"))
}

pub fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits until the outbox is empty (every message sent), failing the test on a parked message
/// or after `limit`. `relay` must stay alive meanwhile unless `crashes` is given: then a relay
/// that aborted (the fail point) is counted there and `None` is returned so the caller restarts
/// it. Returns `Some(())` when the outbox is empty.
pub async fn wait_drained(
    schema: &OutboxSchema,
    relay: &mut RelayProcess,
    crashes: Option<&mut u32>,
    limit: Duration,
    log: &Path,
) -> Option<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = relay.0.try_wait().unwrap() {
            match crashes {
                Some(crashes) if status.signal() == Some(6) => {
                    *crashes += 1;
                    return None;
                }
                _ => panic!("the relay exited with {status}\n{}", log_text(log)),
            }
        }
        let (pending, parked) = schema.backlog().await;
        assert!(parked.is_empty(), "the relay parked messages: {parked:?}\n{}", log_text(log));
        if pending == 0 {
            return Some(());
        }
        assert!(Instant::now() < deadline, "{pending} messages still pending after {limit:?}\n{}", log_text(log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
