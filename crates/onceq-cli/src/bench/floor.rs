//! The raw SQLite floor: the same writes as each scenario, done the simplest fast way with
//! rusqlite on one connection, with the store's PRAGMAs (WAL, its page cache). Durability is
//! SQLite's own: `synchronous=FULL` (a sync inside every commit) for the store's `fsync`, whose
//! syncer thread keeps the same promise while overlapping the sync with the next commits' work,
//! and `synchronous=NORMAL` for `relaxed`.
//!
//! The table is shaped like a job row and carries the two indexes any queue with leases needs: the
//! ready order (priority, then run_at, then id) over ready rows, so that leasing is an index walk
//! here too, and the lease expiry over leased rows, so that expired leases can be found. Everything
//! onceq adds on top (headers, dedup ids, error history, scheduled and dead indexes, queue stats,
//! the writer thread and its per-request savepoints, the async seam) is what the ratio measures.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::error::BenchError;

const SCHEMA: &str = "
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    queue_id         INTEGER NOT NULL,
    state            INTEGER NOT NULL,  -- 0 ready, 1 leased
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    enqueued_at      INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    lease_token      BLOB,
    lease_expires_at INTEGER,
    payload          BLOB NOT NULL
);
CREATE INDEX jobs_ready ON jobs (queue_id, priority DESC, run_at, id) WHERE state = 0;
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 1;
";

const INSERT: &str = "INSERT INTO jobs (queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, payload)
     VALUES (1, 0, 0, ?1, ?1, 0, 5, ?2)";

/// Leases the oldest ready jobs through the ready-order index, each with a fresh random token.
const LEASE: &str =
    "UPDATE jobs SET state = 1, attempt = attempt + 1, lease_token = randomblob(16), lease_expires_at = ?1
     WHERE id IN (SELECT id FROM jobs WHERE queue_id = 1 AND state = 0 ORDER BY priority DESC, run_at, id LIMIT ?2)
     RETURNING id";

const ACK: &str = "DELETE FROM jobs WHERE id = ?1";

/// A fixed clock reading: the floor measures writes, not time keeping.
const NOW_MS: i64 = 1_767_225_600_000;

/// The PRAGMAs the embedded store sets on its writer connection by default, besides
/// `journal_mode` and `synchronous`: its default page cache and in-memory temporary tables.
fn store_pragmas() -> String {
    format!("PRAGMA cache_size = -{}; PRAGMA temp_store = MEMORY;", onceq_sqlite::PAGE_CACHE_BYTES_DEFAULT / 1024)
}

/// Opens a fresh database in `dir` with the store's PRAGMAs and the job table.
pub(crate) fn open(dir: &Path, synchronous: &str) -> Result<Connection, BenchError> {
    let conn = Connection::open(dir.join("floor.db"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BenchError::Check(format!("the floor database is in journal mode {mode}, not WAL")));
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {synchronous}; {}", store_pragmas()))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Inserts `jobs` rows, `per_txn` per transaction (one commit, one fsync, each).
pub(crate) fn insert(conn: &mut Connection, payload: &[u8], jobs: u64, per_txn: u64) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut inserted = 0;
    while inserted < jobs {
        let n = per_txn.min(jobs - inserted);
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for _ in 0..n {
                insert.execute(params![NOW_MS, payload])?;
            }
        }
        tx.commit()?;
        inserted += n;
    }
    Ok(started.elapsed())
}

/// Inserts `jobs` ready rows untimed, in big transactions: the backlog of a lease floor.
pub(crate) fn fill(conn: &mut Connection, payload: &[u8], jobs: u64) -> Result<(), BenchError> {
    insert(conn, payload, jobs, 10_000).map(drop)
}

/// Leases `per_txn` ready jobs in one transaction and acks (deletes) them in the next, until
/// `jobs` are done: a lease call and an ack call, each committed before it would answer.
pub(crate) fn lease_ack(conn: &mut Connection, jobs: u64, per_txn: u64) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let mut done = 0;
    while done < jobs {
        let leased = lease(conn, per_txn)?;
        if leased.is_empty() {
            return Err(BenchError::Check(format!("the floor ran dry after {done} of {jobs} jobs")));
        }
        let tx = conn.transaction()?;
        ack(&tx, &leased)?;
        tx.commit()?;
        done += leased.len() as u64;
    }
    Ok(started.elapsed())
}

fn lease(conn: &mut Connection, n: u64) -> Result<Vec<i64>, BenchError> {
    let tx = conn.transaction()?;
    let leased = lease_in(&tx, n)?;
    tx.commit()?;
    Ok(leased)
}

fn lease_in(tx: &rusqlite::Transaction<'_>, n: u64) -> Result<Vec<i64>, BenchError> {
    let mut lease = tx.prepare_cached(LEASE)?;
    let expires_at = NOW_MS + 600_000;
    let rows = lease.query_map(params![expires_at, n], |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<i64>, _>>()?)
}

fn ack(tx: &rusqlite::Transaction<'_>, ids: &[i64]) -> Result<(), BenchError> {
    let mut delete = tx.prepare_cached(ACK)?;
    for id in ids {
        if delete.execute(params![id])? != 1 {
            return Err(BenchError::Check(format!("the floor acked job {id} that was not there")));
        }
    }
    Ok(())
}

/// Enqueue → lease → ack of `jobs` jobs, pipelined: each transaction acks the jobs the previous
/// one leased, leases the jobs inserted before it, and inserts `per_txn` new ones. Every job is
/// written three times in three commits, as in a queue; a commit serves three batches at once,
/// as a perfect group commit would.
///
/// This schedule is also the kindest to the disk: the three batches of a transaction are
/// neighbours, so they share table and index pages. Counted with `sqlite3_wal_hook` (100,000
/// jobs of 100 bytes, batches of 100), each commit here writes 12 pages to the WAL. The store's
/// run matches it only while its workers keep up: when it ran as many workers as producers, the
/// producers outran them, the backlog grew, and its leases and enqueues wrote at different
/// places of the table and of each index, 22 to 24 pages per commit at the same three calls per
/// commit (67% of this floor). Hence twice the workers there (`END_TO_END_BATCHED_WORKERS`).
pub(crate) fn end_to_end(
    conn: &mut Connection,
    payload: &[u8],
    jobs: u64,
    per_txn: u64,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    let (mut inserted, mut acked) = (0, 0);
    let mut leased: Vec<i64> = Vec::new();
    while acked < jobs {
        let tx = conn.transaction()?;
        ack(&tx, &leased)?;
        acked += leased.len() as u64;
        // Leased before this transaction's inserts, so it takes the rows of earlier ones.
        leased = lease_in(&tx, per_txn)?;
        let n = per_txn.min(jobs - inserted);
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for _ in 0..n {
                insert.execute(params![NOW_MS, payload])?;
            }
        }
        inserted += n;
        tx.commit()?;
    }
    if acked != jobs || inserted != jobs {
        return Err(BenchError::Check(format!("the floor inserted {inserted} and acked {acked} of {jobs} jobs")));
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_floor_does_all_the_work_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(dir.path(), "NORMAL").unwrap();
        let count =
            |conn: &Connection| conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0)).unwrap();
        insert(&mut conn, b"{}", 250, 100).unwrap();
        assert_eq!(count(&conn), 250);
        lease_ack(&mut conn, 250, 100).unwrap();
        assert_eq!(count(&conn), 0);
        end_to_end(&mut conn, b"{}", 1_030, 64).unwrap();
        assert_eq!(count(&conn), 0);
    }

    #[test]
    fn leasing_walks_the_ready_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path(), "NORMAL").unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {LEASE}"))
            .unwrap()
            .query_map(params![0, 1], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("jobs_ready")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.starts_with("SCAN jobs")), "{plan:?}");
    }
}
