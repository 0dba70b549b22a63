//! The outbox tables of one PostgreSQL schema and their versioned migrations, safe when several
//! processes (applications, relays) start at once: they take turns under an advisory lock.

use sqlx::{Connection, Executor, PgConnection};

use crate::error::from_sqlx;
use crate::{OutboxError, Result};

/// The schema version this build writes and understands.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Migration `n + 1` is `MIGRATIONS[n]`; `{s}` is the quoted schema. Never edit a released
/// migration: add the next one.
const MIGRATIONS: &[&str] = &[
    // 1: messages waiting to be (or recently) published, and the parked ones.
    "CREATE TABLE {s}.messages (
         id bigserial PRIMARY KEY,
         destination text NOT NULL,
         payload bytea NOT NULL,
         headers jsonb NOT NULL DEFAULT '{}',
         ordering_key text,
         created_at timestamptz NOT NULL DEFAULT now(),
         attempts integer NOT NULL DEFAULT 0,
         next_attempt_at timestamptz NOT NULL DEFAULT now(),
         last_error text,
         sent_at timestamptz
     );
     -- The relay's claim walks pending rows in id order; sent rows wait for their retention
     -- outside these partial indexes, so they cost the claim nothing.
     CREATE INDEX messages_pending ON {s}.messages (id) WHERE sent_at IS NULL;
     -- Finding whether a row is its key's head (no earlier pending row of the same key).
     CREATE INDEX messages_key_pending ON {s}.messages (ordering_key, id)
         WHERE sent_at IS NULL AND ordering_key IS NOT NULL;
     -- Deleting sent rows after their retention.
     CREATE INDEX messages_sent ON {s}.messages (sent_at) WHERE sent_at IS NOT NULL;
     CREATE TABLE {s}.dead_letters (
         id bigint PRIMARY KEY,
         destination text NOT NULL,
         payload bytea NOT NULL,
         headers jsonb NOT NULL,
         ordering_key text,
         created_at timestamptz NOT NULL,
         attempts integer NOT NULL,
         error text NOT NULL,
         parked_at timestamptz NOT NULL DEFAULT now()
     );
     -- Relays about to sleep: staging sends a NOTIFY only while one is (see `postgres::source`,
     -- \"Wake-ups\"), since NOTIFY serializes the commits of the transactions that send it.
     CREATE TABLE {s}.sleepers (relay text PRIMARY KEY, until timestamptz NOT NULL);
     -- Called by every staging statement. VOLATILE: in READ COMMITTED its query takes a fresh
     -- snapshot after the shared lock is held. Other isolation levels read the transaction's
     -- snapshot, which may predate a relay's registration: they always notify.
     CREATE FUNCTION {s}.wake_relays(channel text, lock_key integer) RETURNS void
     LANGUAGE plpgsql VOLATILE AS $fn$
     BEGIN
         PERFORM pg_advisory_xact_lock_shared(hashtext('onceq_outbox.wake'), lock_key);
         IF current_setting('transaction_isolation') <> 'read committed'
            OR EXISTS (SELECT 1 FROM {s}.sleepers WHERE until > clock_timestamp()) THEN
             PERFORM pg_notify(channel, '');
         END IF;
     END
     $fn$;",
];

/// Migrates `schema` (quoted: `quoted`) to [`SCHEMA_VERSION`] on `conn`, creating it if needed.
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str, quoted: &str) -> Result<()> {
    let fail = |context: &str| {
        let context = format!("migrating outbox schema {schema}: {context}");
        move |e: sqlx::Error| from_sqlx(&context, e)
    };
    let s = quoted;
    let mut tx = conn.begin().await.map_err(fail("starting a transaction"))?;
    // Processes starting at once take turns here; the lock goes with the transaction.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('onceq_outbox.migrate'), hashtext($1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(fail("waiting for the migration lock"))?;
    let (exists, has_version_table, relations, has_messages): (bool, bool, i64, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                to_regclass($2) IS NOT NULL, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1), \
                to_regclass($3) IS NOT NULL",
    )
    .bind(schema)
    .bind(format!("{s}.migrations"))
    .bind(format!("{s}.messages"))
    .fetch_one(&mut *tx)
    .await
    .map_err(fail("inspecting the schema"))?;
    if exists && !has_version_table && relations > 0 {
        return Err(OutboxError::Storage(format!(
            "schema {schema} exists and holds {relations} relation(s) (tables, indexes, sequences) that are not the outbox's; \
             refusing to touch it. Give the outbox a schema of its own (the default is onceq_outbox)"
        )));
    }
    let version: i32 = if has_version_table {
        sqlx::query_scalar(&format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"))
            .fetch_one(&mut *tx)
            .await
            .map_err(fail("reading the schema version"))?
    } else {
        0
    };
    // A onceq PostgreSQL store versions its schemas with a `migrations` table too: one without
    // the outbox's `messages` table is not an outbox, whatever its version says.
    if version > 0 && !has_messages {
        return Err(OutboxError::Storage(format!(
            "schema {schema} has a migrations table but no outbox in it (no messages table): it is not an outbox's \
             schema (a onceq store's, perhaps); refusing to touch it. Give the outbox a schema of its own (the \
             default is onceq_outbox)"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(OutboxError::Storage(format!(
            "outbox schema {schema} was written by a newer onceq-outbox (schema version {version}); this build knows \
             versions up to {SCHEMA_VERSION}. Upgrade, or point it at another schema"
        )));
    }
    if version == SCHEMA_VERSION {
        return tx.commit().await.map_err(fail("committing"));
    }
    if !has_version_table {
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE {s}.migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        );
        (&mut *tx).execute(create.as_str()).await.map_err(fail("creating the schema"))?;
    }
    for (from, template) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let sql = template.replace("{s}", s);
        (&mut *tx).execute(sql.as_str()).await.map_err(fail(&format!("applying version {}", from + 1)))?;
        sqlx::query(&format!("INSERT INTO {s}.migrations (version) VALUES ($1)"))
            .bind(i32::try_from(from + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(fail("recording the schema version"))?;
    }
    tx.commit().await.map_err(fail("committing"))?;
    tracing::info!(schema, from = version, to = SCHEMA_VERSION, "migrated the outbox schema");
    Ok(())
}

const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);
