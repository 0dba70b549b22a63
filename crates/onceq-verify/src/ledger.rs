//! The ledger: where workers apply each job's effect, apart from the queue.
//!
//! An effect is one row: the job's value, its id, the lease under which it was applied and when
//! (verify clock). Rows are never deduplicated: an effect applied twice is two rows, which is what
//! the checker counts as a duplicate effect.
//!
//! - [`SqliteLedger`]: a SQLite file (WAL, `synchronous=NORMAL`: the in-process crash faults do not
//!   lose a commit, and verify itself is not being killed). Used with the embedded store and with
//!   servers. It is a database of its own, so for `effectively_once` the effect and the
//!   idempotency store's record are two commits (see [`crate::workload`] for the windows that
//!   leaves).
//! - [`PgLedger`]: a table in the target PostgreSQL schema, so that an effect can commit in the
//!   same transaction as the job's idempotency record and its ack.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use onceq_core::{Error, Result};
use sqlx::PgConnection;

use crate::history::Effect;

/// The table both ledgers write.
const TABLE: &str = "verify_effects";

/// One effect to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectRow {
    /// The queue of the job (each mode has its own).
    pub queue: String,
    /// The job's value.
    pub value: u64,
    /// The job.
    pub job_id: u64,
    /// The lease (hex).
    pub lease_token: String,
    /// When (verify clock, Unix ms).
    pub at_ms: i64,
}

fn storage(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("ledger: {what}: {e}"))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A ledger in a SQLite file.
#[derive(Clone)]
pub struct SqliteLedger {
    conn: Arc<Mutex<rusqlite::Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteLedger").field("path", &self.path).finish()
    }
}

impl SqliteLedger {
    /// Opens (or creates) the ledger file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = rusqlite::Connection::open(path).map_err(|e| storage(&format!("opening {}", path.display()), e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| storage("setting WAL", e))?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| storage("setting synchronous", e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| storage("setting busy timeout", e))?;
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, \
             value INTEGER NOT NULL, job_id INTEGER NOT NULL, lease_token TEXT NOT NULL, at_ms INTEGER NOT NULL); \
             CREATE INDEX IF NOT EXISTS {TABLE}_queue ON {TABLE} (queue, seq);"
        ))
        .map_err(|e| storage("creating the table", e))?;
        Ok(SqliteLedger { conn: Arc::new(Mutex::new(conn)), path: path.to_owned() })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies one effect: one committed row.
    pub async fn record(&self, row: EffectRow) -> Result<()> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| storage("recording", "the ledger lock is poisoned"))?;
            conn.prepare_cached(&format!(
                "INSERT INTO {TABLE} (queue, value, job_id, lease_token, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))
            .and_then(|mut s| {
                s.execute((&row.queue, to_i64(row.value), to_i64(row.job_id), &row.lease_token, row.at_ms))
            })
            .map(drop)
            .map_err(|e| storage("recording an effect", e))
        })
        .await
        .map_err(|e| storage("recording", e))?
    }

    /// Every effect recorded for `queue`, in the order applied.
    pub async fn effects(&self, queue: &str) -> Result<Vec<Effect>> {
        let conn = self.conn.clone();
        let queue = queue.to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| storage("reading", "the ledger lock is poisoned"))?;
            let mut statement = conn
                .prepare(&format!(
                    "SELECT value, job_id, lease_token, at_ms FROM {TABLE} WHERE queue = ?1 ORDER BY seq"
                ))
                .map_err(|e| storage("reading", e))?;
            let rows = statement
                .query_map([&queue], |r| {
                    Ok(Effect {
                        value: to_u64(r.get(0)?),
                        job_id: to_u64(r.get(1)?),
                        lease_token: r.get(2)?,
                        at_ms: r.get(3)?,
                    })
                })
                .map_err(|e| storage("reading", e))?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| storage("reading", e))
        })
        .await
        .map_err(|e| storage("reading", e))?
    }
}

/// A ledger table in the target PostgreSQL schema.
#[derive(Debug, Clone)]
pub struct PgLedger {
    pool: sqlx::PgPool,
    /// `"schema".verify_effects`, quoted.
    table: String,
}

impl PgLedger {
    /// Creates the table in `schema` if needed.
    pub async fn open(pool: sqlx::PgPool, schema: &str) -> Result<Self> {
        let table = format!("\"{}\".{TABLE}", schema.replace('"', "\"\""));
        let create = format!(
            "CREATE TABLE IF NOT EXISTS {table} (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             queue text NOT NULL, value bigint NOT NULL, job_id bigint NOT NULL, lease_token text NOT NULL, \
             at_ms bigint NOT NULL)"
        );
        sqlx::query(&create).execute(&pool).await.map_err(|e| storage("creating the table", e))?;
        Ok(PgLedger { pool, table })
    }

    fn insert_sql(&self) -> String {
        format!("INSERT INTO {} (queue, value, job_id, lease_token, at_ms) VALUES ($1, $2, $3, $4, $5)", self.table)
    }

    /// Applies one effect in its own (autocommitted) statement.
    pub async fn record(&self, row: &EffectRow) -> Result<()> {
        let sql = self.insert_sql();
        bind(&sql, row).execute(&self.pool).await.map(drop).map_err(|e| Error::Unavailable(format!("ledger: {e}")))
    }

    /// Applies one effect on `conn`, inside the caller's transaction: it exists only if that
    /// commits.
    pub async fn record_in(&self, conn: &mut PgConnection, row: &EffectRow) -> Result<()> {
        let sql = self.insert_sql();
        bind(&sql, row).execute(conn).await.map(drop).map_err(|e| Error::Unavailable(format!("ledger: {e}")))
    }

    /// Every committed effect for `queue`, in commit-independent insertion order.
    pub async fn effects(&self, queue: &str) -> Result<Vec<Effect>> {
        let sql = format!("SELECT value, job_id, lease_token, at_ms FROM {} WHERE queue = $1 ORDER BY seq", self.table);
        let rows: Vec<(i64, i64, String, i64)> =
            sqlx::query_as(&sql).bind(queue).fetch_all(&self.pool).await.map_err(|e| storage("reading", e))?;
        Ok(rows
            .into_iter()
            .map(|(value, job_id, lease_token, at_ms)| Effect {
                value: to_u64(value),
                job_id: to_u64(job_id),
                lease_token,
                at_ms,
            })
            .collect())
    }
}

fn bind<'q>(sql: &'q str, row: &'q EffectRow) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(&row.queue)
        .bind(to_i64(row.value))
        .bind(to_i64(row.job_id))
        .bind(&row.lease_token)
        .bind(row.at_ms)
}

/// Where a run's effects go.
#[derive(Debug, Clone)]
pub enum Ledger {
    /// A SQLite file.
    Sqlite(SqliteLedger),
    /// A table in the target PostgreSQL.
    Postgres(PgLedger),
}

impl Ledger {
    /// Applies one effect in a commit of its own.
    pub async fn record(&self, row: EffectRow) -> Result<()> {
        match self {
            Ledger::Sqlite(l) => l.record(row).await,
            Ledger::Postgres(l) => l.record(&row).await,
        }
    }

    /// Every committed effect for `queue`.
    pub async fn effects(&self, queue: &str) -> Result<Vec<Effect>> {
        match self {
            Ledger::Sqlite(l) => l.effects(queue).await,
            Ledger::Postgres(l) => l.effects(queue).await,
        }
    }

    /// Where it is, for the report.
    pub fn describe(&self) -> String {
        match self {
            Ledger::Sqlite(l) => format!("SQLite file {}", l.path().display()),
            Ledger::Postgres(l) => format!("PostgreSQL table {}", l.table),
        }
    }
}
