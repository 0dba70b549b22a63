//! The SQL of a queue's dead letters: redrive and purge. (Listing them is a read: `reader`.)

use onceq_core::metrics as names;
use onceq_core::{QueueName, Redrive, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;

impl State {
    pub(crate) fn dead_redrive(&mut self, conn: &Connection, name: &QueueName, redrive: &Redrive) -> Result<u64> {
        let queue_id = self.queue_required(name)?.id;
        let per_key = self.per_key(queue_id);
        let limit = redrive.limit.map(to_i64).unwrap_or(i64::MAX);
        // The chosen dead jobs, oldest first, with their ordering keys.
        let jobs: Vec<(i64, Option<String>)> = match &redrive.ids {
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
                    let dead: Option<Option<String>> = conn
                        .prepare_cached("SELECT ordering_key FROM jobs WHERE id = ?1 AND queue_id = ?2 AND state = 3")
                        .and_then(|mut s| s.query_row(params![row_id, queue_id], |r| r.get(0)).optional())
                        .map_err(storage("finding a dead job"))?;
                    if let Some(ordering_key) = dead {
                        chosen.push((row_id, ordering_key));
                    }
                }
                chosen
            }
            None => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, ordering_key FROM jobs WHERE queue_id = ?1 AND state = 3 ORDER BY id LIMIT ?2",
                    )
                    .map_err(storage("listing dead jobs"))?;
                let rows = stmt
                    .query_map(params![queue_id, limit], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(storage("listing dead jobs"))?;
                rows.collect::<rusqlite::Result<_>>().map_err(storage("listing dead jobs"))?
            }
        };
        // Oldest first: of several jobs of one key redriven together, the oldest takes the key.
        for (id, ordering_key) in &jobs {
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
        Ok(jobs.len() as u64)
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
