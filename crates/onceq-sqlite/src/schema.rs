//! The on-disk format: opening a data file safely, and versioned migrations.
//!
//! A data file carries `PRAGMA application_id = APPLICATION_ID` (so a foreign SQLite file is
//! refused, never altered) and `PRAGMA user_version = <schema version>`. A file from a newer
//! onceq is refused with a clear message; an older one is migrated forward in one transaction.

use std::path::Path;

use onceq_core::{Error, Result};
use rusqlite::{Connection, OpenFlags};

/// Marks a SQLite file as an onceq data file ("ONCQ").
pub(crate) const APPLICATION_ID: i32 = 0x4F4E_4351;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: queues, jobs with one partial index per state, error history, dedup entries.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE queues (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        config     TEXT NOT NULL,
        paused     INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY,
        queue_id         INTEGER NOT NULL,
        state            INTEGER NOT NULL,
        priority         INTEGER NOT NULL,
        run_at           INTEGER NOT NULL,
        enqueued_at      INTEGER NOT NULL,
        attempt          INTEGER NOT NULL,
        max_attempts     INTEGER NOT NULL,
        lease_token      BLOB,
        lease_expires_at INTEGER,
        error_count      INTEGER NOT NULL DEFAULT 0,
        dedup_id         TEXT,
        headers          TEXT,
        payload          BLOB NOT NULL
    );
    CREATE INDEX jobs_ready     ON jobs (queue_id, priority DESC, run_at, id) WHERE state = 1;
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 0;
    CREATE INDEX jobs_leased    ON jobs (lease_expires_at) WHERE state = 2;
    CREATE INDEX jobs_dead      ON jobs (queue_id, id) WHERE state = 3;
    CREATE TABLE job_errors (
        seq     INTEGER PRIMARY KEY,
        job_id  INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        at      INTEGER NOT NULL,
        error   TEXT NOT NULL
    );
    CREATE INDEX job_errors_job ON job_errors (job_id, seq);
    CREATE TABLE dedup (
        queue_id   INTEGER NOT NULL,
        dedup_id   TEXT NOT NULL,
        job_id     INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (queue_id, dedup_id)
    ) WITHOUT ROWID;
    CREATE INDEX dedup_expiry ON dedup (expires_at);
    INSERT INTO meta (key, value) VALUES ('next_id', 1), ('clock_floor_ms', 0);
    "#,
    // v2: when each lease began (the lease-to-ack histogram), and the idempotency store.
    r#"
    ALTER TABLE jobs ADD COLUMN leased_at INTEGER;
    CREATE TABLE idempotency (
        key         TEXT PRIMARY KEY,
        state       INTEGER NOT NULL,
        owner       TEXT NOT NULL,
        until       INTEGER NOT NULL,
        fingerprint TEXT,
        result      BLOB
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_until ON idempotency (until);
    "#,
    // v3: ordering per key. A job's ordering key and, in a `per_key` queue, its partition; the
    // blocked state (4), never in the ready index, so that a lease reads past none of them; each
    // key's head, the one job of the key that may be ready, scheduled, leased (or dead, with
    // `dead_blocks_key`); and each key's blocked jobs in id order, with their `run_at`.
    //
    // `blocked` is the index of blocked jobs, kept by the writer (module `writer::keys`) rather
    // than by SQLite as a partial index on `jobs`: every insert, state change and delete of any
    // job would evaluate a partial index, and open a cursor on it, in unordered queues too
    // (callgrind, `batched_workload store-e2e`: 870 instructions per job, 2%). A row is in
    // `blocked` exactly while its job's state is 4.
    r#"
    ALTER TABLE jobs ADD COLUMN ordering_key TEXT;
    ALTER TABLE jobs ADD COLUMN partition INTEGER;
    CREATE TABLE keys (
        queue_id     INTEGER NOT NULL,
        ordering_key TEXT NOT NULL,
        head_id      INTEGER NOT NULL,
        PRIMARY KEY (queue_id, ordering_key)
    ) WITHOUT ROWID;
    CREATE TABLE blocked (
        queue_id     INTEGER NOT NULL,
        ordering_key TEXT NOT NULL,
        job_id       INTEGER NOT NULL,
        run_at       INTEGER NOT NULL,
        PRIMARY KEY (queue_id, ordering_key, job_id)
    ) WITHOUT ROWID;
    "#,
    // v4: consumer groups. Each group's whole state (`onceq_core::group::GroupState`) as JSON,
    // read and written by the writer inside the transaction of each group operation. And one
    // index over the jobs of `per_key` queues by partition, in lease order within each state:
    // a group lease reads each owned partition's ready jobs in lease order (state 1), the
    // hand-over asks whether a partition holds a leased job (state 2), and `group_get` counts
    // each partition's jobs, all as searches of this index. It is partial (`partition IS NOT
    // NULL`): jobs of unordered queues never enter it, and no query that does not name a
    // partition can use it, so the plans of the other operations stay as they were.
    r#"
    CREATE TABLE groups (
        queue_id INTEGER NOT NULL,
        name     TEXT NOT NULL,
        state    TEXT NOT NULL,
        PRIMARY KEY (queue_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX jobs_partition ON jobs (queue_id, partition, state, priority DESC, run_at, id)
        WHERE partition IS NOT NULL;
    "#,
    // v5: commits (`onceq_core::commit`). Producers with their epoch (the fence) and the
    // checkpoint of their last commit that carried one; commit ids with the digest of what the
    // commit did and its outcome (JSON), kept until `expires_at` for replay, swept with the
    // dedup ids.
    r#"
    CREATE TABLE producers (
        id            TEXT PRIMARY KEY,
        epoch         INTEGER NOT NULL,
        checkpoint    TEXT,
        registered_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE commits (
        commit_id  TEXT PRIMARY KEY,
        digest     TEXT NOT NULL,
        outcome    TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX commits_expiry ON commits (expires_at);
    "#,
    // v6: schedules (`onceq_core::schedule`). The spec as JSON, the paused flag, the first tick
    // not yet fired or skipped (NULL: never fires again), and the last tick that fired with its
    // job. A firing pass advances `next_tick` in the transaction that enqueues the ticks' jobs.
    r#"
    CREATE TABLE schedules (
        name        TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        paused      INTEGER NOT NULL,
        next_tick   INTEGER,
        last_tick   INTEGER,
        last_job_id INTEGER,
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules (next_tick) WHERE paused = 0 AND next_tick IS NOT NULL;
    "#,
    // v7: paced redrives (`onceq_core::redrive`). The queue by name (a deleted queue stops its
    // redrive), the filter as the API's JSON, the state, the progress (jobs redriven, the cursor
    // above which the next step starts), and the pace (budget in thousandths of a job, the time
    // it was last topped up). A step moves jobs and the cursor in one transaction.
    r#"
    CREATE TABLE redrives (
        id           INTEGER PRIMARY KEY,
        queue        TEXT NOT NULL,
        filter       TEXT NOT NULL,
        rate         INTEGER NOT NULL,
        state        INTEGER NOT NULL,
        matched      INTEGER NOT NULL,
        redriven     INTEGER NOT NULL,
        cursor       INTEGER,
        budget_milli INTEGER NOT NULL,
        stepped_at   INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        error        TEXT
    );
    "#,
    // v8: a queue's jobs in one state by id (`onceq_core::Inspect::job_page`, the dashboard's
    // pages): each page reads only the rows it shows, in every state. On `state + 0`, not
    // `state`, so that only a query that says `state + 0` can use it, and the plans of the
    // other statements (leases on `jobs_ready`) stay as they were.
    r#"
    CREATE INDEX jobs_state ON jobs (queue_id, state + 0, id);
    "#,
    // v9: cancelled jobs (`Store::job_cancel`). When a job was cancelled: a job in state 5 ended
    // then; a leased job (state 2) with a time is marked, and the end of its lease cancels it.
    // No index: a cancelled job is found by its id or through `jobs_state`, and the mark is read
    // with the lease row that a settle reads anyway.
    r#"
    ALTER TABLE jobs ADD COLUMN cancelled_at INTEGER;
    "#,
    // v10: unique jobs (`onceq_core::unique`). One record per (queue, key): the job that took the
    // key last, its rule (0 pending, 1 active, 2 window) and, for a window, when it ends. A
    // record is judged against its job's state when the key is enqueued again, so no path that
    // moves or deletes jobs touches it; the writer sweeps ended windows and records whose job
    // is gone.
    r#"
    CREATE TABLE unique_keys (
        queue_id   INTEGER NOT NULL,
        unique_key BLOB NOT NULL,
        job_id     INTEGER NOT NULL,
        held_while INTEGER NOT NULL,
        expires_at INTEGER,
        PRIMARY KEY (queue_id, unique_key)
    ) WITHOUT ROWID;
    CREATE INDEX unique_keys_expiry ON unique_keys (expires_at) WHERE expires_at IS NOT NULL;
    "#,
    // v11: `jobs_state` (v8) leaves out the ready and leased jobs. Every job passes through both
    // states (enqueued ready, leased, acked), and an index entry each state change moves cost
    // the write path 15-25% in release builds (`onceq bench`, with and without the index, in
    // one hour; with this partial one the figures are those without): a dashboard index must
    // not tax every job. The pages of ready and leased jobs
    // walk the table by id instead, a bounded window of ids at a time (`reader::job_page`).
    r#"
    DROP INDEX jobs_state;
    CREATE INDEX jobs_state ON jobs (queue_id, state + 0, id) WHERE state NOT IN (1, 2);
    "#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Job states as stored.
pub(crate) mod state {
    pub const SCHEDULED: i64 = 0;
    pub const READY: i64 = 1;
    pub const LEASED: i64 = 2;
    pub const DEAD: i64 = 3;
    /// In a `per_key` queue, behind an earlier job of its ordering key.
    pub const BLOCKED: i64 = 4;
    /// Cancelled: never delivered again, kept for inspection.
    pub const CANCELLED: i64 = 5;
    /// How many stored states there are (each one's value is below it).
    pub const COUNT: usize = 6;
}

/// A SQLite error met while `context`, as the seam's error: [`Error::Corrupt`] when SQLite found
/// the file damaged, else [`Error::Storage`].
pub(crate) fn sqlite_error(context: &str, error: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match error.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => Error::Corrupt(format!(
            "{context}: {error}: the data file is damaged; restore it from a backup (the damaged file is left as \
             it is, for inspection)"
        )),
        _ => Error::Storage(format!("{context}: {error}")),
    }
}

/// [`sqlite_error`] with its context, for `map_err`.
pub(crate) fn storage(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| sqlite_error(context, e)
}

/// A count or id as SQLite stores it (a signed 64-bit integer); ids and counts never come near
/// the limit, so saturating is only a guard.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An attempt count as stored, as the seam carries it.
pub(crate) fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn open_error(path: &Path, error: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode::*;
    let hint = match error.sqlite_error_code() {
        Some(NotADatabase) => "the file is not an onceq data file, or it is damaged",
        Some(DatabaseCorrupt) => "the file is damaged; restore it from a backup",
        Some(CannotOpen) | Some(PermissionDenied) | Some(ReadOnly) => "check the path and its permissions",
        _ => "the data file could not be opened",
    };
    Error::Storage(format!("cannot open {}: {hint} ({error})", path.display()))
}

/// Makes sure a data file is at `path`: a new store's file is made whole under a temporary name
/// (`onceq.db.creating`) and renamed into place, so that a data file that exists was once a
/// whole store. A file at `path` that is empty (0 bytes) is then never a store being created:
/// its contents are gone (truncated, or a copy that failed), and it is refused rather than taken
/// as a new, empty store in which every queue and job would silently be missing.
pub(crate) fn ensure_created(path: &Path, page_cache_bytes: u64) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() == 0 => {
            return Err(Error::Storage(format!(
                "{} is empty (0 bytes): it held a store whose contents are gone, or a copy that failed. onceq will \
                 not take it as a new, empty store: restore the file from a backup, or, if this directory is meant \
                 to start empty, delete the file",
                path.display()
            )))
        }
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::Storage(format!("cannot read {}: {e}", path.display()))),
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".creating");
    let creating = std::path::PathBuf::from(name);
    let remove_all = |base: &Path| {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = base.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(std::path::PathBuf::from(name));
        }
    };
    // Left by a first start that stopped half-way: nothing in it was ever acknowledged.
    remove_all(&creating);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::Storage(format!("creating the data file {}: {what}: {e}", path.display()))
    };
    {
        let conn = open_writer(&creating, page_cache_bytes)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| failed("checkpointing", &e))?;
        conn.close().map_err(|(_, e)| failed("closing", &e))?;
    }
    std::fs::File::open(&creating).and_then(|f| f.sync_all()).map_err(|e| failed("syncing", &e))?;
    std::fs::rename(&creating, path).map_err(|e| failed("renaming it into place", &e))?;
    remove_all(&creating);
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| failed("syncing its directory", &e))?;
    }
    Ok(())
}

/// The most problems an integrity check lists (SQLite's own default for `integrity_check`).
pub const INTEGRITY_PROBLEMS_MAX: u32 = 100;

/// SQLite's full integrity check of `conn`'s database: what it found wrong (empty: nothing).
pub(crate) fn integrity_problems(conn: &Connection, path: &Path) -> Result<Vec<String>> {
    let failed = |e: rusqlite::Error| Error::Corrupt(format!("checking {}: {e}", path.display()));
    let mut stmt = conn.prepare(&format!("PRAGMA integrity_check({INTEGRITY_PROBLEMS_MAX})")).map_err(failed)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(failed)?;
    let lines: Vec<String> = rows.collect::<rusqlite::Result<_>>().map_err(failed)?;
    Ok(if lines == ["ok"] { Vec::new() } else { lines })
}

/// Opens the writer connection: checks the file is ours, migrates it, sets its PRAGMAs, with a
/// page cache of `page_cache_bytes` (see `PAGE_CACHE_BYTES_DEFAULT` for why it is small).
pub(crate) fn open_writer(path: &Path, page_cache_bytes: u64) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    let read_i64 = |conn: &Connection, pragma: &str| -> Result<i64> {
        conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0)).map_err(|e| open_error(path, e))
    };
    let application_id = read_i64(&conn, "application_id")?;
    let version = read_i64(&conn, "user_version")?;
    let tables: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
    let fresh = application_id == 0 && version == 0 && tables == 0;
    if !fresh && application_id != i64::from(APPLICATION_ID) {
        return Err(Error::Storage(format!(
            "{} is a SQLite file but not an onceq data file (application_id {application_id:#x}); refusing to touch it",
            path.display()
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "{} was written by a newer onceq (schema version {version}); this build reads versions up to \
             {SCHEMA_VERSION}. Upgrade onceq, or use another data directory",
            path.display()
        )));
    }
    let journal: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(Error::Storage(format!(
            "{}: cannot switch to WAL journal mode (got {journal}); is the file on a network filesystem?",
            path.display()
        )));
    }
    // Both durability settings commit with `synchronous=NORMAL`: with `fsync` the syncer thread
    // syncs the log after each commit, before any reply (module `sync`); with `relaxed` nothing does.
    // A negative cache_size is in KiB.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA busy_timeout = 5000; \
         PRAGMA cache_size = -{}; PRAGMA temp_store = MEMORY;",
        page_cache_bytes / 1024
    ))
    .map_err(|e| open_error(path, e))?;
    if version < SCHEMA_VERSION {
        let tx = conn.transaction().map_err(|e| open_error(path, e))?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(|e| sqlite_error(&format!("migrating schema from version {from}"), e))?;
        }
        tx.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"))
            .map_err(|e| sqlite_error("recording the schema version", e))?;
        tx.commit().map_err(|e| sqlite_error("committing the migration", e))?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens a read-only connection for queries that change nothing.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;").map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's page cache is the size it was opened with (`cache_size` in KiB, negative).
    #[test]
    fn the_writer_page_cache_has_the_size_asked_for() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for mib in [1, 16, 100] {
            let conn = open_writer(&dir.path().join("cache.db"), mib << 20).unwrap_or_else(|e| panic!("{e}"));
            let kib: i64 = conn.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(kib, -(mib as i64) * 1024, "{mib} MiB");
        }
    }

    #[test]
    fn a_version_1_file_is_migrated_forward_with_its_jobs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(MIGRATIONS[0]).unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;"))
                .unwrap_or_else(|e| panic!("{e}"));
            conn.execute_batch(
                "INSERT INTO queues (id, name, config, created_at) VALUES (1, 'q', '{}', 0); \
                 INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, payload) \
                 VALUES (7, 1, 1, 0, 0, 0, 0, 5, x'01');",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let conn = open_writer(&path, crate::PAGE_CACHE_BYTES_DEFAULT).unwrap_or_else(|e| panic!("{e}"));
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
        let (id, leased_at): (i64, Option<i64>) = conn
            .query_row("SELECT id, leased_at FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id, leased_at), (7, None));
        let keys: i64 =
            conn.query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys, 0);
    }

    /// A data file written by the version 2 schema opens, migrates to version 3, and its jobs,
    /// in every stored state, read as before and unordered: no ordering key, no partition; its
    /// queue reads as unordered, and takes keyed jobs as an unordered queue does.
    #[test]
    fn a_version_2_file_is_migrated_forward_and_its_jobs_read_unordered() {
        use onceq_core::{JobId, JobState, NewJob, Ordering, QueueName, Store, StoreExt};

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(crate::DATA_FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap_or_else(|e| panic!("{e}"));
            }
            conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 2;"))
                .unwrap_or_else(|e| panic!("{e}"));
            // A config as version 2 stored it, before queues had an ordering.
            let config = r#"{"delivery":"at_least_once","visibility_timeout_ms":30000,"max_attempts":5,"backoff":{"initial_ms":1000,"max_ms":300000,"multiplier":2.0,"jitter":"full"},"dedup_window_ms":300000}"#;
            conn.execute("INSERT INTO queues (id, name, config, created_at) VALUES (1, 'q', ?1, 0)", [config])
                .unwrap_or_else(|e| panic!("{e}"));
            // One job in each state of version 2: scheduled far ahead, ready, dead.
            conn.execute_batch(
                "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, payload) \
                 VALUES (7, 1, 0, 0, 9000000000000, 0, 0, 5, x'07'), (8, 1, 1, 0, 0, 0, 0, 5, x'08'), \
                 (9, 1, 3, 0, 0, 0, 5, 5, x'09'); \
                 UPDATE meta SET value = 10 WHERE key = 'next_id';",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let store =
                crate::SqliteStore::open(crate::SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}"));
            let q = QueueName::new("q").unwrap_or_else(|e| panic!("{e}"));
            for (id, state, payload) in [(7, JobState::Scheduled, 7u8), (8, JobState::Ready, 8), (9, JobState::Dead, 9)]
            {
                let job = store.job_get(JobId::new(id)).await.unwrap_or_else(|e| panic!("job {id}: {e}"));
                assert_eq!(
                    (job.state, job.payload, job.ordering_key, job.partition),
                    (state, vec![payload], None, None),
                    "job {id}"
                );
            }
            let info = store.queue_get(&q).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((info.config.ordering, info.stats.ready, info.stats.blocked), (Ordering::None, 1, 0));
            // Keyed jobs in the migrated queue are kept, and order nothing.
            let keyed = store.enqueue(&q, NewJob::new("k").ordering_key("k")).await.unwrap_or_else(|e| panic!("{e}"));
            let again = store.enqueue(&q, NewJob::new("k").ordering_key("k")).await.unwrap_or_else(|e| panic!("{e}"));
            let ids: Vec<u64> = store
                .job_lease(&q, onceq_core::LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 })
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|job| job.id.get())
                .collect();
            assert_eq!(ids, vec![8, keyed.id.get(), again.id.get()]);
            store.close().await;
        });
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
        let keys: i64 = conn.query_row("SELECT count(*) FROM keys", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys, 0, "an unordered queue keeps no key heads");
    }

    /// A data file written by the version 3 schema opens and migrates to version 4: its
    /// `per_key` queue's jobs enter the partition index, and a consumer group shares them.
    #[test]
    fn a_version_3_file_is_migrated_forward_and_its_per_key_jobs_are_grouped() {
        use onceq_core::group::{GroupName, JoinOptions};
        use onceq_core::{LeaseOptions, Ordering, QueueConfig, QueueName, Store};

        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(crate::DATA_FILE_NAME);
        {
            let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap_or_else(|e| panic!("{e}"));
            }
            conn.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 3;"))
                .unwrap_or_else(|e| panic!("{e}"));
            let config = QueueConfig { ordering: Ordering::PerKey, partitions: 2, ..QueueConfig::default() };
            let config = serde_json::to_string(&config).unwrap_or_else(|e| panic!("{e}"));
            conn.execute("INSERT INTO queues (id, name, config, created_at) VALUES (1, 'q', ?1, 0)", [config])
                .unwrap_or_else(|e| panic!("{e}"));
            // Two ready heads, one in each partition.
            conn.execute_batch(
                "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, payload, \
                 ordering_key, partition) VALUES (7, 1, 1, 0, 0, 0, 0, 5, x'07', 'a', 0), \
                 (8, 1, 1, 0, 0, 0, 0, 5, x'08', 'b', 1); \
                 INSERT INTO keys (queue_id, ordering_key, head_id) VALUES (1, 'a', 7), (1, 'b', 8); \
                 UPDATE meta SET value = 9 WHERE key = 'next_id';",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
        let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        runtime.block_on(async {
            let store =
                crate::SqliteStore::open(crate::SqliteOptions::new(dir.path())).unwrap_or_else(|e| panic!("{e}"));
            let (q, g) = (
                QueueName::new("q").unwrap_or_else(|e| panic!("{e}")),
                GroupName::new("g").unwrap_or_else(|e| panic!("{e}")),
            );
            let member = store.group_join(&q, &g, JoinOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(member.partitions, vec![0, 1]);
            let info = store.group_get(&q, &g).await.unwrap_or_else(|e| panic!("{e}"));
            let loads: Vec<(u64, u64)> = info.partitions.iter().map(|p| (p.lag, p.ready)).collect();
            assert_eq!(loads, vec![(1, 1), (1, 1)]);
            let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
            let leased = store.group_lease(&q, &g, &member.member_id, options).await.unwrap_or_else(|e| panic!("{e}"));
            let ids: Vec<u64> = leased.iter().map(|j| j.id.get()).collect();
            assert_eq!(ids, vec![7, 8]);
            store.close().await;
        });
        let conn = Connection::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, SCHEMA_VERSION);
        let groups: i64 =
            conn.query_row("SELECT count(*) FROM groups", [], |r| r.get(0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(groups, 1);
    }
}
