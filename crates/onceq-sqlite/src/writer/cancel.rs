//! The SQL of a job's cancel (`Store::job_cancel`): a job that is not leased ends `cancelled` at
//! once; a leased one is marked, and the end of its lease (module `leases`, and `due` for an
//! expiry) ends it.

use onceq_core::metrics as names;
use onceq_core::{Error, Job, JobId, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::reader;
use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;

impl State {
    pub(crate) fn job_cancel(&mut self, conn: &Connection, id: JobId) -> Result<Job> {
        let row_id = to_i64(id.get());
        let row: Option<(i64, i64, Option<String>, bool)> = conn
            .prepare_cached("SELECT queue_id, state, ordering_key, cancelled_at IS NOT NULL FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.query_row([row_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
            .map_err(storage("reading a job to cancel"))?;
        let Some((queue_id, from, ordering_key, marked)) = row else { return Err(Error::JobNotFound(id)) };
        // The reply waits as the job's queue's durability says (module `writer`), whatever it does.
        self.touch_id(queue_id);
        let now = self.now.as_millis();
        match from {
            state::SCHEDULED | state::READY | state::BLOCKED => {
                conn.prepare_cached("UPDATE jobs SET state = 5, cancelled_at = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![row_id, now]))
                    .map_err(storage("cancelling a job"))?;
                self.count_move(queue_id, Some(from), Some(state::CANCELLED));
                metrics::counter!(names::JOBS_CANCELLED, "queue" => self.label(queue_id)).increment(1);
                if let Some(key) = ordering_key.as_deref().filter(|_| self.per_key(queue_id)) {
                    if from == state::BLOCKED {
                        // Not its key's head: it only leaves the line.
                        conn.prepare_cached(
                            "DELETE FROM blocked WHERE queue_id = ?1 AND ordering_key = ?2 AND job_id = ?3",
                        )
                        .and_then(|mut s| s.execute(params![queue_id, key, row_id]))
                        .map_err(storage("cancelling a blocked job"))?;
                    } else {
                        // The key's head: the key moves on, as when a job is acked.
                        self.key_moves_on(conn, queue_id, key, row_id)?;
                    }
                }
            }
            state::LEASED if !marked => {
                conn.prepare_cached("UPDATE jobs SET cancelled_at = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![row_id, now]))
                    .map_err(storage("marking a leased job cancelled"))?;
            }
            state::LEASED | state::CANCELLED => {}
            state::DEAD => {
                return Err(Error::Conflict(format!(
                    "job {id} is dead: a dead job is not cancelled; redrive or purge it from the dead letters"
                )))
            }
            other => return Err(Error::Storage(format!("job {id} has an unknown stored state {other}"))),
        }
        reader::job_get(conn, id)
    }
}
