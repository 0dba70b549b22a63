//! The SQL of an operator's control of one job. Cancel (`Store::job_cancel`): a job that is not
//! leased ends `cancelled` at once; a leased one is marked, and the end of its lease (module
//! `leases`, and `due` for an expiry) ends it. Delete (`Store::job_delete`) and kill
//! (`Store::job_kill`) refuse a leased job, and hand an ordered key on as any job leaving it does.

use onceq_core::metrics as names;
use onceq_core::{Error, Job, JobId, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::reader;
use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;
use crate::writer::jobs::{delete_errors, record_error};

/// A job as control reads it before changing it: its queue, state, ordering key and attempt.
struct Found {
    queue_id: i64,
    state: i64,
    ordering_key: Option<String>,
    attempt: i64,
}

fn find(conn: &Connection, id: JobId) -> Result<Found> {
    conn.prepare_cached("SELECT queue_id, state, ordering_key, attempt FROM jobs WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([to_i64(id.get())], |r| {
                Ok(Found { queue_id: r.get(0)?, state: r.get(1)?, ordering_key: r.get(2)?, attempt: r.get(3)? })
            })
            .optional()
        })
        .map_err(storage("reading a job"))?
        .ok_or(Error::JobNotFound(id))
}

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
                    // A blocked job only leaves the line; the head hands the key on, as an ack does.
                    self.leave_key(conn, queue_id, key, row_id, from)?;
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

    pub(crate) fn job_delete(&mut self, conn: &Connection, id: JobId) -> Result<()> {
        let found = find(conn, id)?;
        self.touch_id(found.queue_id);
        let row_id = to_i64(id.get());
        match found.state {
            state::LEASED => return Err(Error::leased_job(id, "deleted")),
            state::SCHEDULED | state::READY | state::BLOCKED | state::DEAD | state::CANCELLED => {}
            other => return Err(Error::Storage(format!("job {id} has an unknown stored state {other}"))),
        }
        delete_errors(conn, row_id)?;
        conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")
            .and_then(|mut s| s.execute([row_id]))
            .map_err(storage("deleting a job"))?;
        self.count_move(found.queue_id, Some(found.state), None);
        metrics::counter!(names::JOBS_DELETED, "queue" => self.label(found.queue_id)).increment(1);
        if let Some(key) = found.ordering_key.as_deref().filter(|_| self.per_key(found.queue_id)) {
            self.leave_key(conn, found.queue_id, key, row_id, found.state)?;
        }
        Ok(())
    }

    pub(crate) fn job_kill(&mut self, conn: &Connection, id: JobId, error: &str) -> Result<Job> {
        let found = find(conn, id)?;
        self.touch_id(found.queue_id);
        let row_id = to_i64(id.get());
        match found.state {
            state::LEASED => return Err(Error::leased_job(id, "failed by an operator")),
            state::CANCELLED => return Err(Error::cancelled_job_not_failed(id)),
            state::DEAD => return reader::job_get(conn, id),
            state::SCHEDULED | state::READY | state::BLOCKED => {}
            other => return Err(Error::Storage(format!("job {id} has an unknown stored state {other}"))),
        }
        record_error(conn, row_id, found.attempt, error, self.now.as_millis())?;
        conn.prepare_cached("UPDATE jobs SET state = 3, error_count = error_count + 1 WHERE id = ?1")
            .and_then(|mut s| s.execute([row_id]))
            .map_err(storage("failing a job"))?;
        self.count_move(found.queue_id, Some(found.state), Some(state::DEAD));
        metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(found.queue_id), "reason" => "killed")
            .increment(1);
        if let Some(key) = found.ordering_key.as_deref().filter(|_| self.per_key(found.queue_id)) {
            if found.state == state::BLOCKED {
                self.leave_key(conn, found.queue_id, key, row_id, found.state)?;
            } else if !self.config_of(found.queue_id).is_some_and(|c| c.dead_blocks_key) {
                // The key's head died: it moves on unless the queue keeps dead heads.
                self.key_moves_on(conn, found.queue_id, key, row_id)?;
            }
        }
        reader::job_get(conn, id)
    }

    /// Job `row_id` of `key`, which was in state `was`, leaves its key: a blocked job leaves the
    /// line; any other hands the key on if it is the head (a dead job the key moved past is not).
    fn leave_key(&mut self, conn: &Connection, queue_id: i64, key: &str, row_id: i64, was: i64) -> Result<()> {
        if was == state::BLOCKED {
            conn.prepare_cached("DELETE FROM blocked WHERE queue_id = ?1 AND ordering_key = ?2 AND job_id = ?3")
                .and_then(|mut s| s.execute(params![queue_id, key, row_id]))
                .map_err(storage("taking a blocked job out of its key's line"))?;
        } else {
            self.key_moves_on(conn, queue_id, key, row_id)?;
        }
        Ok(())
    }
}
