//! The SQL of a queue's dead letters: redrive and purge. (Listing them is a read: `reader`.)

use onceq_core::metrics as names;
use onceq_core::{Error, JobId, QueueName, Redrive, Redriven, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;

impl State {
    pub(crate) fn dead_redrive(&mut self, conn: &Connection, name: &QueueName, redrive: &Redrive) -> Result<Redriven> {
        let queue_id = self.queue_required(name)?.id;
        let per_key = self.per_key(queue_id);
        let to_queue_id = match &redrive.to_queue {
            Some(to) if to != name => {
                let to_id = self.queue_required(to)?.id;
                if per_key || self.per_key(to_id) {
                    return Err(Error::invalid(format!(
                        "a redrive into another queue needs two queues without per-key ordering; {} orders per key",
                        if per_key { name } else { to }
                    )));
                }
                Some(to_id)
            }
            _ => None,
        };
        let limit = redrive.limit.map(to_i64).unwrap_or(i64::MAX);
        let filters = Filters::of(redrive);
        // The matching dead jobs, oldest first, with their ordering keys: all of the named ids
        // (a bounded list), or the first `limit` of the queue's.
        let (matched, jobs): (u64, Vec<(i64, Option<String>)>) = match &redrive.ids {
            Some(ids) => {
                // Oldest first, as for "all": the limit keeps the lowest ids whatever the request order.
                let mut ids: Vec<i64> = ids.iter().map(|id| to_i64(id.get())).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut found = Vec::new();
                let sql = format!("{MATCHING} AND j.id = ?7");
                for row_id in ids {
                    let dead: Option<Option<String>> = conn
                        .prepare_cached(&sql)
                        .and_then(|mut s| {
                            s.query_row(filters.params(queue_id, row_id), |r| r.get::<_, Option<String>>(1)).optional()
                        })
                        .map_err(storage("finding a dead job"))?;
                    if let Some(ordering_key) = dead {
                        found.push((row_id, ordering_key));
                    }
                }
                let matched = found.len() as u64;
                found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                (matched, found)
            }
            None => {
                let matched = if redrive.filters() {
                    let sql = format!("SELECT count(*) FROM ({MATCHING} LIMIT ?7)");
                    let n: i64 = conn
                        .prepare_cached(&sql)
                        .and_then(|mut s| s.query_row(filters.params(queue_id, i64::MAX), |r| r.get(0)))
                        .map_err(storage("counting dead jobs"))?;
                    n.unsigned_abs()
                } else {
                    self.entry_by_id(queue_id).map(|e| e.counts[state::DEAD as usize]).unwrap_or(0)
                };
                let jobs = if redrive.dry_run {
                    Vec::new()
                } else {
                    let sql = format!("{MATCHING} ORDER BY j.id LIMIT ?7");
                    let mut stmt = conn.prepare_cached(&sql).map_err(storage("listing dead jobs"))?;
                    let rows = stmt
                        .query_map(filters.params(queue_id, limit), |r| Ok((r.get(0)?, r.get(1)?)))
                        .map_err(storage("listing dead jobs"))?;
                    rows.collect::<rusqlite::Result<_>>().map_err(storage("listing dead jobs"))?
                };
                (matched, jobs)
            }
        };
        if redrive.dry_run {
            return Ok(Redriven { matched, redriven: 0, last: None });
        }
        // Oldest first: of several jobs of one key redriven together, the oldest takes the key.
        for (id, ordering_key) in &jobs {
            if let Some(to_id) = to_queue_id {
                conn.prepare_cached(
                    "UPDATE jobs SET queue_id = ?2, state = ?3, attempt = 0, run_at = ?4 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, to_id, state::READY, self.now.as_millis()]))
                .map_err(storage("redriving a job"))?;
                self.count_move(queue_id, Some(state::DEAD), None);
                self.count_move(to_id, None, Some(state::READY));
                continue;
            }
            let to = match ordering_key {
                Some(key) if per_key => self.key_rejoin(conn, queue_id, key, *id)?,
                _ => state::READY,
            };
            conn.prepare_cached("UPDATE jobs SET state = ?2, attempt = 0, run_at = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, to, self.now.as_millis()]))
                .map_err(storage("redriving a job"))?;
            self.count_move(queue_id, Some(state::DEAD), Some(to));
        }
        metrics::counter!(names::REDRIVEN, "queue" => name.to_string()).increment(jobs.len() as u64);
        let last = jobs.last().map(|(id, _)| JobId::new(id.unsigned_abs()));
        Ok(Redriven { matched, redriven: jobs.len() as u64, last })
    }

    pub(crate) fn dead_purge(&mut self, conn: &Connection, name: &QueueName) -> Result<u64> {
        let queue_id = self.queue_required(name)?.id;
        // A dead job may still be its key's head (it died with `dead_blocks_key`): once it is
        // gone, the key moves on. (Dead jobs the key moved past are no head: nothing happens.)
        let keyed: Vec<(i64, String)> = if self.per_key(queue_id) {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, ordering_key FROM jobs WHERE queue_id = ?1 AND state = 3 AND ordering_key IS NOT NULL",
                )
                .map_err(storage("purging dead jobs"))?;
            let rows =
                stmt.query_map([queue_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(storage("purging dead jobs"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("purging dead jobs"))?
        } else {
            Vec::new()
        };
        conn.prepare_cached(
            "DELETE FROM job_errors WHERE job_id IN (SELECT id FROM jobs WHERE queue_id = ?1 AND state = 3)",
        )
        .and_then(|mut s| s.execute([queue_id]))
        .map_err(storage("purging dead jobs"))?;
        let purged = conn
            .prepare_cached("DELETE FROM jobs WHERE queue_id = ?1 AND state = 3")
            .and_then(|mut s| s.execute([queue_id]))
            .map_err(storage("purging dead jobs"))?;
        if let Some(entry) = self.entry_by_id(queue_id) {
            debug_assert_eq!(entry.counts[state::DEAD as usize], purged as u64);
            entry.counts[state::DEAD as usize] = 0;
        }
        for (id, key) in keyed {
            self.key_moves_on(conn, queue_id, &key, id)?;
        }
        Ok(purged as u64)
    }
}

/// The dead jobs of queue `?1` that pass a redrive's filters: `?2` a cursor (ids above it),
/// `?3` the least attempts, `?4` text the last error contains, `?5`/`?6` the range of times the
/// last error was recorded (when the job died). A NULL parameter filters nothing. The last error
/// is found through `job_errors_job`, one probe per dead job that the cheaper filters let by.
const MATCHING: &str = "SELECT j.id, j.ordering_key FROM jobs j \
    WHERE j.queue_id = ?1 AND j.state = 3 AND (?2 IS NULL OR j.id > ?2) AND (?3 IS NULL OR j.attempt >= ?3) \
    AND ((?4 IS NULL AND ?5 IS NULL AND ?6 IS NULL) OR EXISTS (SELECT 1 FROM job_errors e \
        WHERE e.seq = (SELECT max(seq) FROM job_errors WHERE job_id = j.id) \
        AND (?4 IS NULL OR instr(e.error, ?4) > 0) AND (?5 IS NULL OR e.at >= ?5) AND (?6 IS NULL OR e.at < ?6)))";

/// A redrive's filters as `MATCHING`'s parameters.
struct Filters {
    after: Option<i64>,
    min_attempts: Option<i64>,
    error_contains: Option<String>,
    dead_after: Option<i64>,
    dead_before: Option<i64>,
}

impl Filters {
    fn of(redrive: &Redrive) -> Self {
        Filters {
            after: redrive.after.map(|id| to_i64(id.get())),
            min_attempts: redrive.min_attempts.map(i64::from),
            error_contains: redrive.error_contains.clone(),
            dead_after: redrive.dead_after.map(|t| t.as_millis()),
            dead_before: redrive.dead_before.map(|t| t.as_millis()),
        }
    }

    /// The parameters for queue `queue_id`, with `seventh` as `?7` (a limit or an id).
    fn params(&self, queue_id: i64, seventh: i64) -> impl rusqlite::Params + '_ {
        (
            queue_id,
            self.after,
            self.min_attempts,
            self.error_contains.as_deref(),
            self.dead_after,
            self.dead_before,
            seventh,
        )
    }
}
