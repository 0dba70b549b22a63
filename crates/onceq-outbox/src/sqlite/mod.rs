//! The outbox in an SQLite application's own database file: [`migrate`], [`stage`] in the
//! business transaction, the dead letters; and the relay's side (`source`).
//!
//! # Tables
//!
//! In the application's database, beside its own tables: `onceq_outbox_messages` (`id` INTEGER
//! PRIMARY KEY AUTOINCREMENT, so an id is never reused even after its row is deleted;
//! `destination`, `payload` BLOB, `headers` JSON text, `ordering_key`, `created_at`, `attempts`,
//! `next_attempt_at`, `last_error`, `sent_at`; times in milliseconds since the Unix epoch, read
//! from SQLite's clock), `onceq_outbox_dead_letters` (parked messages with their error) and
//! `onceq_outbox_migrations` (the schema version).
//!
//! # One relay per file, polling
//!
//! SQLite has no notifications between processes: a commit in the application cannot wake the
//! relay, so the relay looks for due messages every poll interval (default
//! [`POLL_INTERVAL_DEFAULT`](source::POLL_INTERVAL_DEFAULT)). SQLite has no row locks either,
//! so two relays could not split the work safely: a relay holds an exclusive OS lock on
//! `<database>-onceq-relay.lock` while it runs, and a second one is refused
//! ([`OutboxError::Busy`](crate::OutboxError::Busy)). The lock goes with the process, so a
//! relay killed with `kill -9` does not block its successor.
//!
//! SQLite serializes writers, so row ids are in commit order: the relay publishes each ordering
//! key's messages in staging order. Use WAL mode (`PRAGMA journal_mode=WAL`) so that the relay's
//! reads do not block the application's writes.

pub(crate) mod source;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::error::from_sqlite;
use crate::message::headers_from_json;
use crate::{Message, OutboxError, ParkedMessage, Result};

/// The schema version this build writes and understands.
const SCHEMA_VERSION: i64 = 1;

/// SQLite's clock, in milliseconds since the Unix epoch.
pub(crate) const NOW_MS_SQL: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

/// Migration `n + 1` is `MIGRATIONS[n]`. Never edit a released migration: add the next one.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE onceq_outbox_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL DEFAULT '{}',
        ordering_key TEXT,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error TEXT,
        sent_at INTEGER
    );
    CREATE INDEX onceq_outbox_messages_pending ON onceq_outbox_messages (id) WHERE sent_at IS NULL;
    CREATE INDEX onceq_outbox_messages_key_pending ON onceq_outbox_messages (ordering_key, id)
        WHERE sent_at IS NULL AND ordering_key IS NOT NULL;
    CREATE INDEX onceq_outbox_messages_sent ON onceq_outbox_messages (sent_at) WHERE sent_at IS NOT NULL;
    CREATE TABLE onceq_outbox_dead_letters (
        id INTEGER PRIMARY KEY,
        destination TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT NOT NULL,
        ordering_key TEXT,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        parked_at INTEGER NOT NULL
    );
"];

const _: () = assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION);

/// Creates the outbox tables in `conn`'s database, or brings them to this build's version.
/// Safe to run at every start and from several processes at once: it takes SQLite's write lock
/// (`BEGIN IMMEDIATE`) first. Refuses a database written by a newer version.
pub fn migrate(conn: &Connection) -> Result<()> {
    let fail = |context: &'static str| move |e| from_sqlite(context, e);
    // A transaction on a shared reference: `Connection::transaction` wants `&mut`.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(fail("migrating the SQLite outbox: taking the write lock"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS onceq_outbox_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(fail("migrating the SQLite outbox: creating the version table"))?;
    let version: i64 = tx
        .query_row("SELECT coalesce(max(version), 0) FROM onceq_outbox_migrations", [], |r| r.get(0))
        .map_err(fail("migrating the SQLite outbox: reading the version"))?;
    if version > SCHEMA_VERSION {
        return Err(OutboxError::Storage(format!(
            "the SQLite outbox was written by a newer onceq-outbox (schema version {version}); this build knows \
             versions up to {SCHEMA_VERSION}"
        )));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.execute_batch(sql).map_err(fail("migrating the SQLite outbox: applying a version"))?;
        tx.execute(
            &format!("INSERT INTO onceq_outbox_migrations (version, applied_at) VALUES (?1, {NOW_MS_SQL})"),
            params![i64::try_from(from + 1).unwrap_or(i64::MAX)],
        )
        .map_err(fail("migrating the SQLite outbox: recording the version"))?;
    }
    tx.commit().map_err(fail("migrating the SQLite outbox: committing"))
}

/// Stages `message` in the business transaction `tx` (a `rusqlite::Transaction` or `Savepoint`
/// derefs to the `Connection` this takes): the message exists only if that transaction
/// commits. Returns the row id (the message's dedup id is `<outbox name>-<id>`).
///
/// Validates first ([`Message::validate`]): an invalid message writes nothing. The relay finds
/// it at its next poll (see the module docs). Run [`migrate`] once before staging.
///
/// ```
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use onceq_outbox::{sqlite, Message};
///
/// let mut conn = rusqlite::Connection::open_in_memory()?;
/// conn.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")?;
/// sqlite::migrate(&conn)?;
/// let tx = conn.transaction()?;
/// tx.execute("INSERT INTO orders (id) VALUES (42)", [])?;
/// sqlite::stage(&tx, &Message::new("orders", br#"{"order":42}"#.to_vec()))?;
/// tx.commit()?; // the order and its message, or neither
/// # Ok(()) }
/// # demo().unwrap();
/// ```
pub fn stage(tx: &Connection, message: &Message) -> Result<i64> {
    message.validate()?;
    let headers = message.headers_json()?;
    let mut statement = tx
        .prepare_cached(&format!(
            "INSERT INTO onceq_outbox_messages (destination, payload, headers, ordering_key, created_at, \
                                                next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, {NOW_MS_SQL}, {NOW_MS_SQL}) RETURNING id"
        ))
        .map_err(|e| from_sqlite("staging an outbox message", e))?;
    statement
        .query_row(params![message.destination, message.payload, headers, message.ordering_key], |r| r.get(0))
        .map_err(|e| from_sqlite("staging an outbox message", e))
}

/// A page of parked messages, in id order, after `after` (exclusive), at most `limit` (1 to 1000).
pub fn dead_list(conn: &Connection, after: Option<i64>, limit: u32) -> Result<Vec<ParkedMessage>> {
    if !(1..=1000).contains(&limit) {
        return Err(OutboxError::InvalidOptions(format!("limit is {limit}; it must be 1 to 1000")));
    }
    let fail = |e| from_sqlite("listing parked outbox messages", e);
    let mut statement = conn
        .prepare_cached(
            "SELECT id, destination, payload, headers, ordering_key, attempts, error, created_at, parked_at \
             FROM onceq_outbox_dead_letters WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .map_err(fail)?;
    let rows = statement
        .query_map(params![after.unwrap_or(0), i64::from(limit)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })
        .map_err(fail)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, destination, payload, headers, ordering_key, attempts, error, created_at_ms, parked_at_ms) =
            row.map_err(fail)?;
        out.push(ParkedMessage {
            id,
            destination,
            payload,
            headers: headers_from_json(id, &headers)?,
            ordering_key,
            attempts: u32::try_from(attempts).unwrap_or(0),
            error,
            created_at_ms,
            parked_at_ms,
        });
    }
    Ok(out)
}

/// Puts parked messages back in the outbox with their original ids (their dedup ids do not
/// change) and their attempts reset, inside `tx`. Ids that are not parked are skipped. Returns
/// how many were put back.
pub fn dead_redrive(tx: &Connection, ids: &[i64]) -> Result<u64> {
    let fail = |e| from_sqlite("redriving parked outbox messages", e);
    let mut moved = 0;
    for id in ids {
        let row = tx
            .query_row(
                &format!(
                    "INSERT INTO onceq_outbox_messages (id, destination, payload, headers, ordering_key, created_at, \
                                                        next_attempt_at) \
                     SELECT id, destination, payload, headers, ordering_key, created_at, {NOW_MS_SQL} \
                     FROM onceq_outbox_dead_letters WHERE id = ?1 RETURNING id"
                ),
                params![id],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map_err(fail)?;
        if row.is_some() {
            tx.execute("DELETE FROM onceq_outbox_dead_letters WHERE id = ?1", params![id]).map_err(fail)?;
            moved += 1;
        }
    }
    Ok(moved)
}
