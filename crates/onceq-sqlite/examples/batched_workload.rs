//! A fixed, deterministic batched workload for counting instructions (callgrind), not for timing.
//!
//! Wall-clock benchmarks (`onceq bench`) are noisy on a shared machine; instruction counts are
//! not. This runs the work of `onceq bench`'s batched scenarios one call at a time, so that every
//! run of it does the same work:
//!
//! - `store-e2e N`: N jobs through the store, 100 per call: enqueue 100, lease 100, ack 100.
//! - `store-lease-ack N`: enqueue N jobs (1000 per call), then lease 100 and ack 100 until empty.
//! - `store-fill N`: only the enqueues of `store-lease-ack N`, to subtract from it.
//! - `floor-e2e N`, `floor-lease-ack N`, `floor-fill N`: the same work as raw rusqlite, with the SQL and the shape
//!   of `onceq bench`'s floor (crates/onceq-cli/src/bench/floor.rs, copied here because that module
//!   is private to the binary): the end-to-end floor is pipelined, one transaction acking the
//!   previous batch, leasing one and inserting one.
//!
//! Per-job cost = (count at N2 − count at N1) / (N2 − N1), which cancels start-up and the schema:
//!
//! ```text
//! cargo build --release -p onceq-sqlite --example batched_workload
//! valgrind --tool=callgrind --dump-instr=no --separate-threads=yes \
//!     target/release/examples/batched_workload store-e2e 20000
//! ```
//!
//! The data directory is a fresh temporary one under `$TMPDIR`; durability is fsync
//! (`synchronous=FULL`), as in the figures the issue targets.

use std::sync::Arc;

use onceq_core::{LeaseOptions, NewJob, QueueName, Store};
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};
use rusqlite::{params, Connection};

/// Jobs per call, as in `onceq bench`.
const BATCH: u64 = 100;
/// The payload `onceq bench` uses by default: 100 bytes that look like JSON.
fn payload() -> Vec<u8> {
    let mut payload = br#"{"task":"bench","data":""#.to_vec();
    payload.resize(98, b'x');
    payload.extend_from_slice(br#""}"#);
    payload
}

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(jobs)) = (args.get(1), args.get(2)) else {
        return Err("usage: batched_workload store-e2e|store-lease-ack|floor-e2e|floor-lease-ack JOBS".into());
    };
    let jobs: u64 = jobs.parse()?;
    let dir = tempfile::Builder::new().prefix("onceq-workload-").tempdir()?;
    match mode.as_str() {
        "store-e2e" => store(dir.path(), jobs, Work::EndToEnd),
        "store-lease-ack" => store(dir.path(), jobs, Work::LeaseAck),
        "store-fill" => store(dir.path(), jobs, Work::Fill),
        "floor-e2e" => floor_end_to_end(&mut floor_open(dir.path())?, jobs),
        "floor-lease-ack" => floor_lease_ack(&mut floor_open(dir.path())?, jobs, true),
        "floor-fill" => floor_lease_ack(&mut floor_open(dir.path())?, jobs, false),
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// What a store run does.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    /// Enqueue 100, lease 100, ack 100, until `jobs` are done.
    EndToEnd,
    /// Enqueue `jobs` jobs (1000 per call), then lease 100 and ack 100 until none is left.
    LeaseAck,
    /// Only the enqueues of `LeaseAck`.
    Fill,
}

fn store(dir: &std::path::Path, jobs: u64, work: Work) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(dir).durability(Durability::Fsync))?;
        let queue = QueueName::new("bench")?;
        let payload: Arc<[u8]> = payload().into();
        let batch = |n: u64| (0..n).map(|_| NewJob::new(payload.to_vec())).collect::<Vec<_>>();
        let options = LeaseOptions { max_jobs: BATCH as u32, visibility_timeout_ms: Some(600_000), wait_ms: 0 };
        if work != Work::EndToEnd {
            let mut filled = 0;
            while filled < jobs {
                let n = 1000.min(jobs - filled);
                store.job_enqueue(&queue, batch(n)).await?;
                filled += n;
            }
        }
        let mut done = if work == Work::Fill { jobs } else { 0 };
        while done < jobs {
            if work == Work::EndToEnd {
                store.job_enqueue(&queue, batch(BATCH.min(jobs - done))).await?;
            }
            let leased = store.job_lease(&queue, options).await?;
            if leased.is_empty() {
                return Err(format!("ran dry after {done} jobs").into());
            }
            let leases: Vec<_> = leased.iter().map(|job| job.lease()).collect();
            for result in store.job_ack(&leases).await? {
                result?;
            }
            done += leased.len() as u64;
        }
        store.close().await;
        Ok(())
    })
}

// The floor, as in crates/onceq-cli/src/bench/floor.rs.

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
const LEASE: &str =
    "UPDATE jobs SET state = 1, attempt = attempt + 1, lease_token = randomblob(16), lease_expires_at = ?1
     WHERE id IN (SELECT id FROM jobs WHERE queue_id = 1 AND state = 0 ORDER BY priority DESC, run_at, id LIMIT ?2)
     RETURNING id";
const ACK: &str = "DELETE FROM jobs WHERE id = ?1";
const NOW_MS: i64 = 1_767_225_600_000;

fn floor_open(dir: &std::path::Path) -> Result<Connection, Failure> {
    let conn = Connection::open(dir.join("floor.db"))?;
    let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA cache_size = -{}; PRAGMA temp_store = MEMORY;",
        onceq_sqlite::PAGE_CACHE_BYTES_DEFAULT / 1024
    ))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

fn floor_insert(tx: &rusqlite::Transaction<'_>, payload: &[u8], n: u64) -> Result<(), Failure> {
    let mut insert = tx.prepare_cached(INSERT)?;
    for _ in 0..n {
        insert.execute(params![NOW_MS, payload])?;
    }
    Ok(())
}

fn floor_lease(tx: &rusqlite::Transaction<'_>, n: u64) -> Result<Vec<i64>, Failure> {
    let mut lease = tx.prepare_cached(LEASE)?;
    let rows = lease.query_map(params![NOW_MS + 600_000, n], |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<i64>, _>>()?)
}

fn floor_ack(tx: &rusqlite::Transaction<'_>, ids: &[i64]) -> Result<(), Failure> {
    let mut delete = tx.prepare_cached(ACK)?;
    for id in ids {
        if delete.execute(params![id])? != 1 {
            return Err(format!("acked job {id} that was not there").into());
        }
    }
    Ok(())
}

fn floor_end_to_end(conn: &mut Connection, jobs: u64) -> Result<(), Failure> {
    let payload = payload();
    let (mut inserted, mut acked) = (0, 0);
    let mut leased: Vec<i64> = Vec::new();
    while acked < jobs {
        let tx = conn.transaction()?;
        floor_ack(&tx, &leased)?;
        acked += leased.len() as u64;
        leased = floor_lease(&tx, BATCH)?;
        let n = BATCH.min(jobs - inserted);
        floor_insert(&tx, &payload, n)?;
        inserted += n;
        tx.commit()?;
    }
    Ok(())
}

fn floor_lease_ack(conn: &mut Connection, jobs: u64, lease_ack: bool) -> Result<(), Failure> {
    let payload = payload();
    let mut filled = 0;
    while filled < jobs {
        let n = 10_000.min(jobs - filled);
        let tx = conn.transaction()?;
        floor_insert(&tx, &payload, n)?;
        tx.commit()?;
        filled += n;
    }
    let mut done = if lease_ack { 0 } else { jobs };
    while done < jobs {
        let tx = conn.transaction()?;
        let leased = floor_lease(&tx, BATCH)?;
        tx.commit()?;
        if leased.is_empty() {
            return Err(format!("the floor ran dry after {done} jobs").into());
        }
        let tx = conn.transaction()?;
        floor_ack(&tx, &leased)?;
        tx.commit()?;
        done += leased.len() as u64;
    }
    Ok(())
}
