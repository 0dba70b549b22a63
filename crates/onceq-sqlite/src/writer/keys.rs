//! The SQL of ordering keys (docs/semantics.md, "Ordering per key"; Invariant 9): which job is
//! each key's head, and handing a key on to its next job when the head leaves.
//!
//! In a `per_key` queue the table `keys` holds one row per key that has a head: the oldest job of
//! the key still in the queue that is ready, scheduled, leased, or dead with `dead_blocks_key`.
//! Every later job of the key is stored `blocked`, never in the ready index, so a lease reads past
//! none of them however many wait; the table `blocked` lists them by key in id order, with their
//! `run_at`, and holds a row exactly while its job is blocked (this module writes both together).
//! Unordered queues have no rows in either and pay for none of this: their jobs keep their key as
//! a plain column.

use onceq_core::ordering::Ordering;
use onceq_core::Result;
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage};
use crate::writer::cache::State;

/// A key's blocked job with the lowest id, and its `run_at`: one seek of `blocked`'s primary key,
/// however many jobs and keys the queue holds.
pub(crate) const NEXT_BLOCKED_SQL: &str =
    "SELECT job_id, run_at FROM blocked WHERE queue_id = ?1 AND ordering_key = ?2 ORDER BY job_id LIMIT 1";

impl State {
    /// Whether the jobs of this queue are ordered per key.
    pub(super) fn per_key(&self, queue_id: i64) -> bool {
        self.config_of(queue_id).is_some_and(|config| config.ordering == Ordering::PerKey)
    }

    /// Makes job `id` the head of `key` if the key has none. Returns whether it did; if not, the
    /// job waits `blocked` behind the head.
    pub(super) fn key_claim(&self, conn: &Connection, queue_id: i64, key: &str, id: i64) -> Result<bool> {
        debug_assert!(self.per_key(queue_id), "queue {queue_id} is not per_key, yet job {id} claims a key");
        let inserted = conn
            .prepare_cached(
                "INSERT INTO keys (queue_id, ordering_key, head_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (queue_id, ordering_key) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![queue_id, key, id]))
            .map_err(storage("claiming an ordering key"))?;
        Ok(inserted == 1)
    }

    /// Lists job `id`, stored (or about to be) as `blocked`, among its key's blocked jobs.
    pub(super) fn key_block(&self, conn: &Connection, queue_id: i64, key: &str, id: i64, run_at: i64) -> Result<()> {
        debug_assert!(self.per_key(queue_id), "queue {queue_id} is not per_key, yet job {id} is blocked");
        conn.prepare_cached("INSERT INTO blocked (queue_id, ordering_key, job_id, run_at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut s| s.execute(params![queue_id, key, id, run_at]))
            .map_err(storage("blocking a job behind its ordering key"))?;
        Ok(())
    }

    /// Job `id` left its key's head (acked, leased at most once, dead without `dead_blocks_key`,
    /// or purged): the key's blocked job with the lowest id becomes the head, `scheduled` if its
    /// own `run_at` is still ahead, else `ready` from now; with none waiting the key is forgotten.
    /// Returns whether `id` was the head; if not (a dead job its key already moved past), nothing
    /// changes.
    pub(super) fn key_moves_on(&mut self, conn: &Connection, queue_id: i64, key: &str, id: i64) -> Result<bool> {
        let next: Option<(i64, i64)> = conn
            .prepare_cached(NEXT_BLOCKED_SQL)
            .and_then(|mut s| s.query_row(params![queue_id, key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(storage("finding an ordering key's next job"))?;
        let was_head = match next {
            Some((next_id, _)) => conn
                .prepare_cached(
                    "UPDATE keys SET head_id = ?4 WHERE queue_id = ?1 AND ordering_key = ?2 AND head_id = ?3",
                )
                .and_then(|mut s| s.execute(params![queue_id, key, id, next_id])),
            None => conn
                .prepare_cached("DELETE FROM keys WHERE queue_id = ?1 AND ordering_key = ?2 AND head_id = ?3")
                .and_then(|mut s| s.execute(params![queue_id, key, id])),
        }
        .map_err(storage("moving an ordering key on"))?
            == 1;
        let Some((next_id, run_at)) = next.filter(|_| was_head) else { return Ok(was_head) };
        let now = self.now.as_millis();
        let to = if run_at > now { state::SCHEDULED } else { state::READY };
        let unlisted = conn
            .prepare_cached("DELETE FROM blocked WHERE queue_id = ?1 AND ordering_key = ?2 AND job_id = ?3")
            .and_then(|mut s| s.execute(params![queue_id, key, next_id]))
            .map_err(storage("promoting an ordering key's next job"))?;
        let promoted = conn
            .prepare_cached("UPDATE jobs SET state = ?2, run_at = max(run_at, ?3) WHERE id = ?1 AND state = 4")
            .and_then(|mut s| s.execute(params![next_id, to, now]))
            .map_err(storage("promoting an ordering key's next job"))?;
        if (unlisted, promoted) != (1, 1) {
            return Err(onceq_core::Error::Storage(format!(
                "job {next_id} was blocked behind ordering key {key:?} but could not be promoted"
            )));
        }
        if to == state::SCHEDULED {
            self.lower_next_due(onceq_core::Timestamp::from_millis(run_at));
        }
        // A promotion to ready wakes waiting leases through the count (see `count_move_n`).
        self.count_move(queue_id, Some(state::BLOCKED), Some(to));
        Ok(true)
    }

    /// Job `id` of `key` went dead: unless its queue has `dead_blocks_key`, its key moves on.
    pub(super) fn key_after_death(
        &mut self,
        conn: &Connection,
        queue_id: i64,
        key: Option<&str>,
        id: i64,
    ) -> Result<()> {
        let Some(key) = key else { return Ok(()) };
        let Some(config) = self.config_of(queue_id) else { return Ok(()) };
        if config.ordering != Ordering::PerKey || config.dead_blocks_key {
            return Ok(());
        }
        let was_head = self.key_moves_on(conn, queue_id, key, id)?;
        debug_assert!(was_head, "job {id} was leased in a per_key queue but was not the head of {key:?}");
        Ok(())
    }

    /// A dead job `id` of `key` is redriven to run from now: the state it takes. It is the head
    /// already (it died with `dead_blocks_key`), or it becomes the head of a key that has none:
    /// `ready`. Otherwise it waits `blocked` behind the key's head and, having the lowest id,
    /// runs next.
    pub(super) fn key_rejoin(&self, conn: &Connection, queue_id: i64, key: &str, id: i64) -> Result<i64> {
        let head: Option<i64> = conn
            .prepare_cached("SELECT head_id FROM keys WHERE queue_id = ?1 AND ordering_key = ?2")
            .and_then(|mut s| s.query_row(params![queue_id, key], |r| r.get(0)).optional())
            .map_err(storage("reading an ordering key's head"))?;
        match head {
            Some(head) if head == id => Ok(state::READY),
            Some(_) => {
                self.key_block(conn, queue_id, key, id, self.now.as_millis())?;
                Ok(state::BLOCKED)
            }
            None => {
                let claimed = self.key_claim(conn, queue_id, key, id)?;
                debug_assert!(claimed, "ordering key {key:?} had no head, yet job {id} could not claim it");
                Ok(state::READY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use onceq_core::limits::ENQUEUE_BATCH_MAX;
    use onceq_core::{NewJob, Ordering, QueueConfigPatch, QueueName, Store};
    use rusqlite::{Connection, OpenFlags, StatementStatus};

    use super::NEXT_BLOCKED_SQL;
    use crate::writer::jobs::LEASE_SQL;
    use crate::{Durability, SqliteOptions, SqliteStore, DATA_FILE_NAME};

    const KEYS: usize = 20_000;

    /// Fills `queue` (per_key) with `per_key` jobs of each of [`KEYS`] keys, round by round.
    async fn fill(store: &SqliteStore, queue: &QueueName, per_key: usize) {
        let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() };
        store.queue_upsert(queue, patch).await.unwrap();
        let jobs: Vec<NewJob> = (0..KEYS * per_key)
            .map(|i| NewJob::new(format!("job {i:06}")).ordering_key(format!("key-{:05}", i % KEYS)))
            .collect();
        for batch in jobs.chunks(ENQUEUE_BATCH_MAX) {
            store.job_enqueue(queue, batch.to_vec()).await.unwrap();
        }
    }

    /// The lease statement's plan and its work, counted by SQLite (never timed), for one queue:
    /// (plan details, rows it returns, virtual machine steps, full-scan steps).
    fn lease_cost(conn: &Connection, queue: &str) -> (Vec<String>, usize, i32, i32) {
        let queue_id: i64 = conn.query_row("SELECT id FROM queues WHERE name = ?1", [queue], |r| r.get(0)).unwrap();
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {LEASE_SQL}")).unwrap();
        let plan: Vec<String> =
            explain.query_map((queue_id, 10), |r| r.get(3)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        let mut lease = conn.prepare(LEASE_SQL).unwrap();
        let rows = lease.query_map((queue_id, 10), |r| r.get::<_, i64>(0)).unwrap().count();
        (plan, rows, lease.get_status(StatementStatus::VmStep), lease.get_status(StatementStatus::FullscanStep))
    }

    /// A per_key queue of 20,000 keys × 5 jobs holds 80,000 blocked jobs, none of which a lease
    /// reads: the lease statement searches the ready index (no scan, no sort), and does exactly
    /// the work it does in a queue of the same 20,000 heads with nothing blocked behind them. And
    /// a key moving on finds its next job by one seek of the list of blocked jobs.
    #[test]
    fn a_lease_reads_past_no_blocked_job() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(Durability::Relaxed)).unwrap();
            let (deep, shallow) = (QueueName::new("deep").unwrap(), QueueName::new("shallow").unwrap());
            fill(&store, &deep, 5).await;
            fill(&store, &shallow, 1).await;
            let stats = store.queue_get(&deep).await.unwrap().stats;
            assert_eq!((stats.ready, stats.blocked), (KEYS as u64, 4 * KEYS as u64));
            assert_eq!(store.queue_get(&shallow).await.unwrap().stats.blocked, 0);
            store.close().await;
        });
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(dir.path().join(DATA_FILE_NAME), flags).unwrap();
        let deep = lease_cost(&conn, "deep");
        let shallow = lease_cost(&conn, "shallow");
        assert_eq!(deep.0, vec!["SEARCH jobs USING INDEX jobs_ready (queue_id=?)".to_owned()]);
        assert_eq!((deep.1, deep.3), (10, 0), "ten rows, and no full-scan step");
        assert_eq!(deep, shallow, "blocked jobs cost the lease nothing");
        // Moving a key on finds its next job with one seek of the blocked list, which lists
        // exactly the blocked jobs.
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {NEXT_BLOCKED_SQL}")).unwrap();
        let plan: Vec<String> =
            explain.query_map((1, "key-00001"), |r| r.get(3)).unwrap().collect::<rusqlite::Result<_>>().unwrap();
        assert_eq!(plan, vec!["SEARCH blocked USING PRIMARY KEY (queue_id=? AND ordering_key=?)".to_owned()]);
        let listed: i64 = conn
            .query_row(
                "SELECT count(*) FROM blocked b JOIN jobs j ON j.id = b.job_id AND j.state = 4 AND j.run_at = b.run_at \
                 AND j.queue_id = b.queue_id AND j.ordering_key = b.ordering_key",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let blocked: i64 = conn.query_row("SELECT count(*) FROM jobs WHERE state = 4", [], |r| r.get(0)).unwrap();
        assert_eq!((listed, blocked), (4 * KEYS as i64, 4 * KEYS as i64));
    }
}
