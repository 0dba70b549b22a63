//! Queries that change nothing, on read-only connections beside the writer.
//!
//! WAL mode lets these run while the writer commits; each sees the last committed state.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use onceq_core::group::PartitionLoad;
use onceq_core::{
    AttemptError, DeadList, DeadPage, Error, Headers, Job, JobId, JobState, QueueName, Result, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::durable::Durable;
use crate::schema::{open_reader, sqlite_error, state};

/// Idle reader connections kept for reuse.
const IDLE_READERS_MAX: usize = 8;

/// A small pool of read-only connections.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Whether the store stopped (then no read runs), and where a read that finds the file
    /// damaged stops it.
    durable: std::sync::Arc<Durable>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf, durable: std::sync::Arc<Durable>) -> Self {
        Readers { path, idle: Mutex::new(Vec::new()), durable }
    }

    /// Runs `f` on a reader connection, on tokio's blocking pool.
    pub(crate) async fn with<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Some(error) = self.durable.failure() {
            return Err(error);
        }
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                Some(conn) => conn,
                None => open_reader(&readers.path)?,
            };
            let result = f(&conn);
            if let Err(error @ Error::Corrupt(_)) = &result {
                return Err(readers.durable.corrupt(error));
            }
            let mut idle = readers.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_READERS_MAX {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|e| Error::Unavailable(format!("a read task stopped: {e}")))?
    }
}

fn storage(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| sqlite_error(context, e)
}

pub(crate) fn job_state(stored: i64) -> Result<JobState> {
    Ok(match stored {
        state::SCHEDULED => JobState::Scheduled,
        state::READY => JobState::Ready,
        state::LEASED => JobState::Leased,
        state::DEAD => JobState::Dead,
        state::BLOCKED => JobState::Blocked,
        state::CANCELLED => JobState::Cancelled,
        other => return Err(Error::Storage(format!("unknown stored job state {other}"))),
    })
}

const JOB_COLUMNS: &str = "j.id, q.name, j.state, j.attempt, j.max_attempts, j.priority, j.payload, j.headers, \
                           j.dedup_id, j.enqueued_at, j.run_at, j.lease_expires_at, j.error_count, \
                           j.ordering_key, j.partition, j.cancelled_at";

fn job_from_row(conn: &Connection, r: &rusqlite::Row<'_>) -> Result<Job> {
    let read = |e| sqlite_error("reading a job", e);
    let id: i64 = r.get(0).map_err(read)?;
    let queue: String = r.get(1).map_err(read)?;
    let headers: Option<String> = r.get(7).map_err(read)?;
    let headers: Headers = match headers {
        None => Headers::new(),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| Error::Storage(format!("job {id} has unreadable headers: {e}")))?
        }
    };
    let error_count: i64 = r.get(12).map_err(read)?;
    let errors = if error_count > 0 { job_errors(conn, id)? } else { Vec::new() };
    Ok(Job {
        id: JobId::new(id as u64),
        queue: QueueName::new(queue)?,
        state: job_state(r.get(2).map_err(read)?)?,
        attempt: r.get(3).map_err(read)?,
        max_attempts: r.get(4).map_err(read)?,
        priority: r.get(5).map_err(read)?,
        payload: r.get(6).map_err(read)?,
        headers,
        dedup_id: r.get(8).map_err(read)?,
        ordering_key: r.get(13).map_err(read)?,
        partition: r.get(14).map_err(read)?,
        enqueued_at: Timestamp::from_millis(r.get(9).map_err(read)?),
        run_at: Timestamp::from_millis(r.get(10).map_err(read)?),
        lease_expires_at: r.get::<_, Option<i64>>(11).map_err(read)?.map(Timestamp::from_millis),
        cancelled_at: r.get::<_, Option<i64>>(15).map_err(read)?.map(Timestamp::from_millis),
        errors,
    })
}

fn job_errors(conn: &Connection, id: i64) -> Result<Vec<AttemptError>> {
    let mut stmt = conn
        .prepare_cached("SELECT attempt, error, at FROM job_errors WHERE job_id = ?1 ORDER BY seq")
        .map_err(storage("reading a job's errors"))?;
    let rows = stmt
        .query_map([id], |r| {
            Ok(AttemptError { attempt: r.get(0)?, error: r.get(1)?, at: Timestamp::from_millis(r.get(2)?) })
        })
        .map_err(storage("reading a job's errors"))?;
    rows.collect::<rusqlite::Result<_>>().map_err(storage("reading a job's errors"))
}

pub(crate) fn job_get(conn: &Connection, id: JobId) -> Result<Job> {
    let row_id = i64::try_from(id.get()).map_err(|_| Error::JobNotFound(id))?;
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs j JOIN queues q ON q.id = j.queue_id WHERE j.id = ?1"))
        .map_err(storage("reading a job"))?;
    let mut rows = stmt.query([row_id]).map_err(storage("reading a job"))?;
    match rows.next().map_err(storage("reading a job"))? {
        Some(row) => job_from_row(conn, row),
        None => Err(Error::JobNotFound(id)),
    }
}

pub(crate) fn dead_list(conn: &Connection, queue_id: i64, page: DeadPage) -> Result<DeadList> {
    let after = page.after.map(|id| i64::try_from(id.get()).unwrap_or(i64::MAX)).unwrap_or(0);
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN queues q ON q.id = j.queue_id \
             WHERE j.queue_id = ?1 AND j.state = 3 AND j.id > ?2 ORDER BY j.id LIMIT ?3"
        ))
        .map_err(storage("listing dead jobs"))?;
    let mut rows =
        stmt.query(params![queue_id, after, i64::from(page.limit) + 1]).map_err(storage("listing dead jobs"))?;
    let mut jobs = Vec::new();
    while let Some(row) = rows.next().map_err(storage("listing dead jobs"))? {
        jobs.push(job_from_row(conn, row)?);
    }
    let next = if jobs.len() > page.limit as usize {
        jobs.truncate(page.limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        None
    };
    Ok(DeadList { jobs, next })
}

/// When the oldest ready job of a queue became ready.
pub(crate) fn oldest_ready(conn: &Connection, queue_id: i64) -> Result<Option<Timestamp>> {
    conn.prepare_cached("SELECT min(run_at) FROM jobs WHERE queue_id = ?1 AND state = 1")
        .and_then(|mut s| s.query_row([queue_id], |r| r.get::<_, Option<i64>>(0)).optional())
        .map(|v| v.flatten().map(Timestamp::from_millis))
        .map_err(storage("finding the oldest ready job"))
}

/// Each partition's load in queue `queue_id` (`writer::groups::LOAD_SQL`); partitions with no job are absent.
pub(crate) fn partition_loads(conn: &Connection, queue_id: i64) -> Result<BTreeMap<u32, PartitionLoad>> {
    let mut stmt = conn.prepare_cached(crate::writer::groups::LOAD_SQL).map_err(storage("reading partition loads"))?;
    let rows = stmt
        .query_map([queue_id], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, Option<i64>>(3)?))
        })
        .map_err(storage("reading partition loads"))?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (p, lag, ready, oldest) = row.map_err(storage("reading partition loads"))?;
        let load = PartitionLoad {
            lag: u64::try_from(lag).unwrap_or(0),
            ready: u64::try_from(ready).unwrap_or(0),
            oldest_ready: oldest.map(Timestamp::from_millis),
        };
        out.insert(p, load);
    }
    Ok(out)
}

/// Ids one statement of a ready or leased page walks (a window of the table's ids).
const PAGE_ID_WINDOW: i64 = 10_000;
/// Ids one ready or leased page walks at most; a page that found fewer jobs than it asked for by
/// then ends short, with `next` where it stopped.
const PAGE_IDS_MAX: i64 = 100_000;

/// A page of queue `queue_id`'s jobs in one state, by id. Scheduled, dead, blocked and cancelled
/// jobs are read through `jobs_state` (schema v11), at most `limit + 1` rows. Ready and leased jobs
/// have no such index (it would cost every job's write path): the page walks the table's ids from
/// `after`, [`PAGE_ID_WINDOW`] at a time, up to [`PAGE_IDS_MAX`]; a page that ends short has a
/// `next` all the same, unless it reached the last id.
pub(crate) fn job_page(conn: &Connection, queue_id: i64, page: onceq_core::JobPage) -> Result<onceq_core::JobList> {
    let stored = match page.state {
        JobState::Scheduled => state::SCHEDULED,
        JobState::Ready => state::READY,
        JobState::Leased => state::LEASED,
        JobState::Dead => state::DEAD,
        JobState::Blocked => state::BLOCKED,
        JobState::Cancelled => state::CANCELLED,
    };
    let after = page.after.map(|id| i64::try_from(id.get()).unwrap_or(i64::MAX)).unwrap_or(0);
    let want = i64::from(page.limit) + 1;
    let mut jobs = Vec::new();
    let mut walked_to = None;
    if stored == state::READY || stored == state::LEASED {
        let last: i64 = conn
            .prepare_cached("SELECT coalesce(max(id), 0) FROM jobs")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(storage("listing jobs"))?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs j NOT INDEXED JOIN queues q ON q.id = j.queue_id \
                 WHERE j.id > ?3 AND j.id <= ?4 AND j.queue_id = ?1 AND j.state = ?2 ORDER BY j.id LIMIT ?5"
            ))
            .map_err(storage("listing jobs"))?;
        let mut from = after;
        while (jobs.len() as i64) < want && from < last {
            if from - after >= PAGE_IDS_MAX {
                walked_to = Some(from);
                break;
            }
            let to = from.saturating_add(PAGE_ID_WINDOW);
            let need = want - jobs.len() as i64;
            let mut rows = stmt.query(params![queue_id, stored, from, to, need]).map_err(storage("listing jobs"))?;
            while let Some(row) = rows.next().map_err(storage("listing jobs"))? {
                jobs.push(job_from_row(conn, row)?);
            }
            from = to;
        }
    } else {
        // The partial index's own condition, written out, lets SQLite use it.
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs j INDEXED BY jobs_state JOIN queues q ON q.id = j.queue_id \
                 WHERE j.queue_id = ?1 AND j.state + 0 = ?2 AND j.state NOT IN (1, 2) AND j.id > ?3 \
                 ORDER BY j.id LIMIT ?4"
            ))
            .map_err(storage("listing jobs"))?;
        let mut rows = stmt.query(params![queue_id, stored, after, want]).map_err(storage("listing jobs"))?;
        while let Some(row) = rows.next().map_err(storage("listing jobs"))? {
            jobs.push(job_from_row(conn, row)?);
        }
    }
    let next = if jobs.len() > page.limit as usize {
        jobs.truncate(page.limit as usize);
        jobs.last().map(|j| j.id)
    } else {
        walked_to.map(|id| JobId::new(id.unsigned_abs()))
    };
    Ok(onceq_core::JobList { jobs, next })
}

/// The job `dedup_id` names in queue `queue_id` while its entry lasts at `now`.
pub(crate) fn job_by_dedup(conn: &Connection, queue_id: i64, dedup_id: &str, now: Timestamp) -> Result<Option<JobId>> {
    conn.prepare_cached("SELECT job_id FROM dedup WHERE queue_id = ?1 AND dedup_id = ?2 AND expires_at > ?3")
        .and_then(|mut s| s.query_row(params![queue_id, dedup_id, now.as_millis()], |r| r.get::<_, i64>(0)).optional())
        .map(|id| id.map(|id| JobId::new(id as u64)))
        .map_err(storage("reading a dedup id"))
}

/// The record of idempotency key `key` as stored (state 1 is completed: `writer::idempotency`).
pub(crate) fn idempotency_get(conn: &Connection, key: &str) -> Result<Option<onceq_core::IdempotencyRecord>> {
    conn.prepare_cached("SELECT state, owner, until, result FROM idempotency WHERE key = ?1")
        .and_then(|mut s| {
            s.query_row([key], |r| {
                Ok(onceq_core::IdempotencyRecord {
                    key: key.to_owned(),
                    completed: r.get::<_, i64>(0)? == 1,
                    owner: r.get(1)?,
                    until: Timestamp::from_millis(r.get(2)?),
                    result: r.get(3)?,
                })
            })
            .optional()
        })
        .map_err(storage("reading an idempotency key"))
}
