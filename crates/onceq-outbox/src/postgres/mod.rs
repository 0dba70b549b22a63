//! The outbox in the application's PostgreSQL: [`PgOutbox`] (migrate, [`stage`] in the business
//! transaction, the dead letters) and the relay's side (`source`: claiming with
//! `FOR UPDATE SKIP LOCKED`, settling, `LISTEN` for wake-ups).
//!
//! # Tables
//!
//! In the outbox's own schema (default [`DEFAULT_SCHEMA`]): `messages` (one row per staged
//! message: `id` bigserial, never reused; `destination`, `payload` bytea, `headers` jsonb,
//! `ordering_key`, `created_at`, `attempts`, `next_attempt_at`, `last_error`, `sent_at`),
//! `dead_letters` (parked messages with their error), `migrations` (the schema version).
//!
//! # Order per key
//!
//! [`PgOutbox::stage`] of a message with an ordering key first takes a transaction-level advisory
//! lock on the key, so two business transactions staging the same key take turns: the later one
//! gets its row id only after the earlier one ended. Row ids of one key are thus in commit order,
//! and the relay publishes a key's messages in id order. Transactions staging different keys (or
//! none) never wait for each other.

mod schema;
pub(crate) mod source;

use sqlx::{PgConnection, Postgres, Row};

use crate::error::from_sqlx;
use crate::limits::SCHEMA_NAME_LEN_MAX;
use crate::message::headers_from_json;
use crate::{Message, OutboxError, ParkedMessage, Result};

/// The schema of the outbox tables unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "onceq_outbox";

/// An outbox's PostgreSQL schema: cheap to clone, holds no connection. Stage with it on the
/// application's own connections; a relay connects on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOutbox {
    schema: String,
    /// The schema as a quoted identifier.
    quoted: String,
    /// The `NOTIFY` channel relays of this schema listen on.
    channel: String,
    /// The staging statement (see [`PgOutbox::stage`]).
    stage_sql: String,
}

impl Default for PgOutbox {
    fn default() -> Self {
        PgOutbox::build(DEFAULT_SCHEMA.to_owned())
    }
}

impl PgOutbox {
    /// The outbox in `schema`: 1 to [`SCHEMA_NAME_LEN_MAX`] characters of `[A-Za-z0-9_]`, not
    /// starting with a digit. The schema must be the outbox's own (a migration refuses a schema
    /// that holds other tables).
    pub fn new(schema: impl Into<String>) -> Result<Self> {
        let schema = schema.into();
        let valid = !schema.is_empty()
            && schema.len() <= SCHEMA_NAME_LEN_MAX
            && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(OutboxError::InvalidOptions(format!(
                "outbox schema {schema:?} is not valid: use 1 to {SCHEMA_NAME_LEN_MAX} (SCHEMA_NAME_LEN_MAX) characters \
                 of [A-Za-z0-9_], not starting with a digit"
            )));
        }
        Ok(PgOutbox::build(schema))
    }

    fn build(schema: String) -> Self {
        let quoted = format!("\"{schema}\"");
        let channel = format!("onceq_outbox_{schema}");
        // One round trip: the key's advisory lock (keyed messages only; see the module docs), the
        // insert, and the wake-up of sleeping relays (a NOTIFY, which PostgreSQL delivers only
        // if the transaction commits; see `source`, "Wake-ups").
        let stage_sql = format!(
            "WITH ins AS ( \
                 INSERT INTO {quoted}.messages (destination, payload, headers, ordering_key) \
                 SELECT $1, $2, $3::jsonb, $4 \
                 FROM (SELECT CASE WHEN $4::text IS NULL THEN NULL \
                              ELSE pg_advisory_xact_lock(hashtext('onceq_outbox.key'), hashtext($5 || $4)) END) AS l \
                 RETURNING id) \
             SELECT ins.id FROM ins, {quoted}.wake_relays($6, hashtext($5)) AS n"
        );
        PgOutbox { schema, quoted, channel, stage_sql }
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The `NOTIFY` channel staging signals and relays listen on: `onceq_outbox_<schema>`.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The schema as a quoted identifier, for queries of the outbox tables.
    pub(crate) fn quoted(&self) -> &str {
        &self.quoted
    }

    /// Creates the schema and its tables, or brings them to this build's version. Safe to run
    /// from several processes at once (they take turns under an advisory lock) and again at
    /// every start. Refuses a schema that holds tables that are not the outbox's, or one
    /// written by a newer version.
    pub async fn migrate(&self, conn: &mut PgConnection) -> Result<()> {
        schema::migrate(conn, &self.schema, &self.quoted).await
    }

    /// Stages `message` on `conn`, usually the business transaction's (`&mut tx`): the message
    /// exists, and wakes the relays, only if that transaction commits. Returns the row id (the
    /// message's dedup id is `<outbox name>-<id>`).
    ///
    /// Validates first ([`Message::validate`]): an invalid message writes nothing and does not
    /// abort the transaction. A message with an ordering key waits for another open
    /// transaction staging the same key (see the module docs, "Order per key").
    pub async fn stage(&self, conn: &mut PgConnection, message: &Message) -> Result<i64> {
        message.validate()?;
        let headers = message.headers_json()?;
        sqlx::query_scalar::<_, i64>(&self.stage_sql)
            .bind(&message.destination)
            .bind(&message.payload)
            .bind(headers)
            .bind(message.ordering_key.as_deref())
            .bind(&self.schema)
            .bind(&self.channel)
            .fetch_one(conn)
            .await
            .map_err(|e| from_sqlx("staging an outbox message", e))
    }

    /// A page of parked messages (the outbox dead letters), in id order, after `after`
    /// (exclusive), at most `limit` (1 to 1000).
    pub async fn dead_list(
        &self,
        conn: &mut PgConnection,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ParkedMessage>> {
        if !(1..=1000).contains(&limit) {
            return Err(OutboxError::InvalidOptions(format!("limit is {limit}; it must be 1 to 1000")));
        }
        let s = &self.quoted;
        let rows = sqlx::query(&format!(
            "SELECT id, destination, payload, headers::text AS headers, ordering_key, attempts, error, \
                    (extract(epoch FROM created_at) * 1000)::int8 AS created_at_ms, \
                    (extract(epoch FROM parked_at) * 1000)::int8 AS parked_at_ms \
             FROM {s}.dead_letters WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
        .map_err(|e| from_sqlx("listing parked outbox messages", e))?;
        rows.iter()
            .map(|row| {
                let read = |e| from_sqlx("reading a parked outbox message", e);
                let id: i64 = row.try_get("id").map_err(read)?;
                let headers: String = row.try_get("headers").map_err(read)?;
                Ok(ParkedMessage {
                    id,
                    destination: row.try_get("destination").map_err(read)?,
                    payload: row.try_get("payload").map_err(read)?,
                    headers: headers_from_json(id, &headers)?,
                    ordering_key: row.try_get("ordering_key").map_err(read)?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(read)?).unwrap_or(0),
                    error: row.try_get("error").map_err(read)?,
                    created_at_ms: row.try_get("created_at_ms").map_err(read)?,
                    parked_at_ms: row.try_get("parked_at_ms").map_err(read)?,
                })
            })
            .collect()
    }

    /// Puts parked messages back in the outbox, with their original ids (so their dedup ids do
    /// not change) and their attempts reset; the relays are woken when `conn`'s transaction
    /// commits. Ids that are not parked are skipped. Returns how many were put back.
    ///
    /// A redriven message of an ordering key goes back to its place in id order: it becomes
    /// its key's head again if no earlier message of the key is pending.
    pub async fn dead_redrive(&self, conn: &mut PgConnection, ids: &[i64]) -> Result<u64> {
        let s = &self.quoted;
        let moved = sqlx::query(&format!(
            "WITH moved AS (DELETE FROM {s}.dead_letters WHERE id = ANY($1) RETURNING *), \
                  ins AS (INSERT INTO {s}.messages (id, destination, payload, headers, ordering_key, created_at) \
                          SELECT id, destination, payload, headers, ordering_key, created_at FROM moved RETURNING id) \
             SELECT count(*) AS n, pg_notify($2, '')::text AS notified FROM ins"
        ))
        .bind(ids)
        .bind(&self.channel)
        .fetch_one(conn)
        .await
        .map_err(|e| from_sqlx("redriving parked outbox messages", e))?;
        let n: i64 = moved.try_get("n").map_err(|e| from_sqlx("redriving parked outbox messages", e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// Stages `message` in the business transaction `tx` (see [`PgOutbox::stage`]).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use onceq_outbox::{postgres::{stage, PgOutbox}, Message};
///
/// let outbox = PgOutbox::default();
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
/// stage(&mut tx, &outbox, &Message::new("orders", br#"{"order":42}"#.to_vec())).await?;
/// tx.commit().await?; // the order and its message, or neither
/// # Ok(()) }
/// ```
pub async fn stage(tx: &mut sqlx::Transaction<'_, Postgres>, outbox: &PgOutbox, message: &Message) -> Result<i64> {
    outbox.stage(tx, message).await
}
