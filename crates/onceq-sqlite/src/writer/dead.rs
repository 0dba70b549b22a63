//! The SQL of a queue's dead letters: redrive and purge. (Listing them is a read: `reader`.)

use onceq_core::metrics as names;
use onceq_core::{QueueName, Redrive, Result};
use rusqlite::{params, Connection};

use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;

impl State {
    pub(crate) fn dead_redrive(&mut self, conn: &Connection, name: &QueueName, redrive: &Redrive) -> Result<u64> {
        let queue_id = self.queue_required(name)?.id;
        let limit = redrive.limit.map(to_i64).unwrap_or(i64::MAX);
        let ids: Vec<i64> = match &redrive.ids {
            Some(ids) => {
                // Oldest first, as for "all": the limit keeps the lowest ids whatever the request order.
                let mut ids: Vec<i64> = ids.iter().map(|id| to_i64(id.get())).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut chosen = Vec::new();
                for row_id in ids {
                    if to_i64(chosen.len() as u64) >= limit {
                        break;
                    }
                    let dead: bool = conn
                        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND queue_id = ?2 AND state = 3")
                        .and_then(|mut s| s.exists(params![row_id, queue_id]))
                        .map_err(storage("finding a dead job"))?;
                    if dead {
                        chosen.push(row_id);
                    }
                }
                chosen
            }
            None => {
                let mut stmt = conn
                    .prepare_cached("SELECT id FROM jobs WHERE queue_id = ?1 AND state = 3 ORDER BY id LIMIT ?2")
                    .map_err(storage("listing dead jobs"))?;
                let rows =
                    stmt.query_map(params![queue_id, limit], |r| r.get(0)).map_err(storage("listing dead jobs"))?;
                rows.collect::<rusqlite::Result<_>>().map_err(storage("listing dead jobs"))?
            }
        };
        for &id in &ids {
            conn.prepare_cached("UPDATE jobs SET state = 1, attempt = 0, run_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, self.now.as_millis()]))
                .map_err(storage("redriving a job"))?;
            self.count_move(queue_id, Some(state::DEAD), Some(state::READY));
        }
        metrics::counter!(names::REDRIVEN, "queue" => name.to_string()).increment(ids.len() as u64);
        Ok(ids.len() as u64)
    }

    pub(crate) fn dead_purge(&mut self, conn: &Connection, name: &QueueName) -> Result<u64> {
        let queue_id = self.queue_required(name)?.id;
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
        Ok(purged as u64)
    }
}
