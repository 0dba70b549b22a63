//! The relay's side of an SQLite outbox: one connection of its own to the application's file,
//! an exclusive lock file (one relay per file), and polling (see the module docs of
//! [`crate::sqlite`] for why).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, TransactionBehavior};

use super::NOW_MS_SQL;
use crate::error::{from_sqlite, truncate_error_text};
use crate::message::headers_from_json;
use crate::source::{Backlog, Claim, Outcome, Source};
use crate::{OutboxError, OutboxMessage, Result};

/// How often the relay looks for due messages unless told otherwise: SQLite cannot notify it.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(200);
/// How long the relay's statements wait for the application's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct SqliteSource {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Held for the relay's life: the OS releases it when the process ends, however it ends.
    _lock: File,
}

impl SqliteSource {
    /// Opens the application's database at `path`, takes the relay lock and migrates.
    pub(crate) fn open(path: &Path) -> Result<SqliteSource> {
        let lock_path = PathBuf::from(format!("{}-onceq-relay.lock", path.display()));
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| {
                OutboxError::Storage(format!("cannot open the relay lock {}: {e}", lock_path.display()))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OutboxError::Busy(format!(
                    "another relay holds {}: there is one relay per SQLite outbox",
                    lock_path.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(OutboxError::Storage(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
        if !path.exists() {
            return Err(OutboxError::InvalidOptions(format!(
                "the SQLite outbox database {} does not exist; point the relay at the application's database file",
                path.display()
            )));
        }
        let conn = Connection::open(path).map_err(|e| from_sqlite(&format!("opening {}", path.display()), e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| from_sqlite("setting the busy timeout", e))?;
        super::migrate(&conn)?;
        Ok(SqliteSource { path: path.to_owned(), conn: Arc::new(Mutex::new(conn)), _lock: lock })
    }

    /// Runs `work` on the relay's connection, off the async threads.
    async fn with_conn<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| OutboxError::Storage(format!("the SQLite relay task failed: {e}")))?
    }
}

struct SqliteClaim {
    conn: Arc<Mutex<Connection>>,
    messages: Vec<OutboxMessage>,
}

#[async_trait]
impl Claim for SqliteClaim {
    fn messages(&self) -> &[OutboxMessage] {
        &self.messages
    }

    async fn settle(self: Box<Self>, outcomes: Vec<(i64, Outcome)>, delete_sent: bool) -> Result<()> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            let fail = |context: &'static str| move |e| from_sqlite(context, e);
            let tx =
                conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail("starting to mark"))?;
            for (id, outcome) in outcomes {
                match outcome {
                    Outcome::Sent if delete_sent => {
                        tx.prepare_cached("DELETE FROM onceq_outbox_messages WHERE id = ?1")
                            .and_then(|mut s| s.execute(params![id]))
                            .map_err(fail("deleting a sent outbox message"))?;
                    }
                    Outcome::Sent => {
                        tx.prepare_cached(&format!(
                            "UPDATE onceq_outbox_messages SET sent_at = {NOW_MS_SQL}, attempts = attempts + 1 \
                             WHERE id = ?1"
                        ))
                        .and_then(|mut s| s.execute(params![id]))
                        .map_err(fail("marking an outbox message sent"))?;
                    }
                    Outcome::Retry { delay_ms, error } => {
                        tx.prepare_cached(&format!(
                            "UPDATE onceq_outbox_messages SET attempts = attempts + 1, last_error = ?2, \
                                    next_attempt_at = {NOW_MS_SQL} + ?3 WHERE id = ?1"
                        ))
                        .and_then(|mut s| {
                            s.execute(params![
                                id,
                                truncate_error_text(&error),
                                i64::try_from(delay_ms).unwrap_or(i64::MAX)
                            ])
                        })
                        .map_err(fail("scheduling an outbox retry"))?;
                    }
                    Outcome::Park { error } => {
                        tx.prepare_cached(&format!(
                            "INSERT INTO onceq_outbox_dead_letters (id, destination, payload, headers, ordering_key, \
                                                                    created_at, attempts, error, parked_at) \
                             SELECT id, destination, payload, headers, ordering_key, created_at, attempts + 1, ?2, \
                                    {NOW_MS_SQL} \
                             FROM onceq_outbox_messages WHERE id = ?1"
                        ))
                        .and_then(|mut s| s.execute(params![id, truncate_error_text(&error)]))
                        .map_err(fail("parking an outbox message"))?;
                        tx.prepare_cached("DELETE FROM onceq_outbox_messages WHERE id = ?1")
                            .and_then(|mut s| s.execute(params![id]))
                            .map_err(fail("parking an outbox message"))?;
                    }
                }
            }
            tx.commit().map_err(fail("committing the relay's marks"))
        })
        .await
        .map_err(|e| OutboxError::Storage(format!("the SQLite relay task failed: {e}")))?
    }
}

#[async_trait]
impl Source for SqliteSource {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn default_outbox_name(&self) -> String {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name: String = stem.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).collect();
        if name.is_empty() {
            "onceq_outbox".to_owned()
        } else {
            name
        }
    }

    fn default_poll_interval(&self) -> Duration {
        POLL_INTERVAL_DEFAULT
    }

    async fn claim(&self, limit: u32) -> Result<Box<dyn Claim>> {
        let messages = self
            .with_conn(move |conn| {
                let fail = |e| from_sqlite("claiming outbox messages", e);
                let mut statement = conn
                    .prepare_cached(&format!(
                        "SELECT m.id, m.destination, m.payload, m.headers, m.ordering_key, m.attempts \
                         FROM onceq_outbox_messages m \
                         WHERE m.sent_at IS NULL AND m.next_attempt_at <= {NOW_MS_SQL} \
                           AND (m.ordering_key IS NULL OR NOT EXISTS ( \
                                SELECT 1 FROM onceq_outbox_messages e \
                                WHERE e.ordering_key = m.ordering_key AND e.sent_at IS NULL AND e.id < m.id)) \
                         ORDER BY m.id LIMIT ?1"
                    ))
                    .map_err(fail)?;
                let rows = statement
                    .query_map(params![i64::from(limit)], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Vec<u8>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    })
                    .map_err(fail)?;
                let mut messages = Vec::new();
                for row in rows {
                    let (id, destination, payload, headers, ordering_key, attempts) = row.map_err(fail)?;
                    messages.push(OutboxMessage {
                        id,
                        destination,
                        payload,
                        headers: headers_from_json(id, &headers)?,
                        ordering_key,
                        attempt: u32::try_from(attempts).unwrap_or(0).saturating_add(1),
                    });
                }
                Ok(messages)
            })
            .await?;
        Ok(Box::new(SqliteClaim { conn: self.conn.clone(), messages }))
    }

    async fn prepare_sleep(&self, _timeout: Duration) -> Result<bool> {
        // Nothing can wake an SQLite relay: it polls.
        Ok(true)
    }

    async fn awake(&self) -> Result<()> {
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        tokio::time::sleep(timeout).await;
    }

    async fn next_due_ms(&self) -> Result<Option<i64>> {
        self.with_conn(|conn| {
            conn.query_row(
                &format!(
                    "SELECT min(next_attempt_at) - {NOW_MS_SQL} FROM onceq_outbox_messages \
                          WHERE sent_at IS NULL AND next_attempt_at > {NOW_MS_SQL}"
                ),
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .map_err(|e| from_sqlite("reading when the next outbox message is due", e))
        })
        .await
    }

    async fn purge_sent(&self, retention_ms: u64) -> Result<u64> {
        self.with_conn(move |conn| {
            conn.execute(
                &format!("DELETE FROM onceq_outbox_messages WHERE sent_at < {NOW_MS_SQL} - ?1"),
                params![i64::try_from(retention_ms).unwrap_or(i64::MAX)],
            )
            .map(|n| n as u64)
            .map_err(|e| from_sqlite("deleting sent outbox messages", e))
        })
        .await
    }

    async fn backlog(&self) -> Result<Backlog> {
        self.with_conn(|conn| {
            conn.query_row(
                &format!(
                    "SELECT (SELECT count(*) FROM onceq_outbox_messages WHERE sent_at IS NULL), \
                            (SELECT max(0, {NOW_MS_SQL} - min(created_at)) FROM onceq_outbox_messages \
                             WHERE sent_at IS NULL), \
                            (SELECT count(*) FROM onceq_outbox_dead_letters)"
                ),
                [],
                |r| {
                    Ok(Backlog {
                        pending: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        oldest_pending_age_ms: r.get::<_, Option<i64>>(1)?.map(|ms| u64::try_from(ms).unwrap_or(0)),
                        parked: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                    })
                },
            )
            .map_err(|e| from_sqlite("reading the outbox backlog", e))
        })
        .await
    }

    async fn close(&self) {}
}
