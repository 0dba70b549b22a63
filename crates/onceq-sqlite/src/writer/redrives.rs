//! The SQL of paced redrives (`onceq_core::redrive`): starting, reading, stopping, and the
//! steps the writer takes at the start of a group commit when one is due, each step's jobs and
//! its cursor in the group's one transaction.

use onceq_core::api::RedriveRequest;
use onceq_core::limits::{REDRIVE_LIST_MAX, REDRIVE_STEP_INTERVAL_MS};
use onceq_core::redrive::{paced_filter, running_within_limits, Pace, PacedRedrive, RedriveState};
use onceq_core::{Error, ErrorKind, JobId, QueueName, Redrive, RedriveId, Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::schema::{storage, to_i64};
use crate::writer::cache::State;

/// The columns `from_row` reads, in its order.
const COLUMNS: &str =
    "id, queue, filter, rate, state, matched, redriven, cursor, created_at, finished_at, error, budget_milli, stepped_at";

impl State {
    pub(crate) fn redrive_start(
        &mut self,
        conn: &Connection,
        queue: &QueueName,
        redrive: &Redrive,
        rate_per_second: u32,
    ) -> Result<PacedRedrive> {
        let filter = paced_filter(redrive, rate_per_second, self.now)?;
        // A dry run checks the queues (both exist, neither orders per key, when moving) and
        // counts what the redrive will take.
        let counted = self.dead_redrive(conn, queue, &Redrive { dry_run: true, ..filter.clone() })?;
        let (running, on_queue): (i64, i64) = conn
            .prepare_cached("SELECT count(*), count(*) FILTER (WHERE queue = ?1) FROM redrives WHERE state = 0")
            .and_then(|mut s| s.query_row([queue.as_str()], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(storage("counting paced redrives"))?;
        running_within_limits(running.unsigned_abs(), on_queue.unsigned_abs(), queue)?;
        let text = serde_json::to_string(&RedriveRequest::from_redrive(&filter))
            .map_err(|e| Error::Storage(format!("writing a redrive's filter: {e}")))?;
        let now = self.now.as_millis();
        let id: i64 = conn
            .prepare_cached(
                "INSERT INTO redrives (queue, filter, rate, state, matched, redriven, budget_milli, stepped_at, created_at) \
                 VALUES (?1, ?2, ?3, 0, ?4, 0, 0, ?5, ?5) RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(params![queue.as_str(), text, rate_per_second, to_i64(counted.matched), now], |r| r.get(0))
            })
            .map_err(storage("starting a paced redrive"))?;
        // Finished redrives past the listing's size are forgotten.
        conn.prepare_cached(
            "DELETE FROM redrives WHERE state <> 0 AND id NOT IN \
             (SELECT id FROM redrives WHERE state <> 0 ORDER BY id DESC LIMIT ?1)",
        )
        .and_then(|mut s| s.execute([to_i64(REDRIVE_LIST_MAX as u64)]))
        .map_err(storage("forgetting finished paced redrives"))?;
        self.next_redrive_due = self.next_redrive_due.min(now + to_i64(REDRIVE_STEP_INTERVAL_MS));
        self.redrive_get(conn, RedriveId::new(id.unsigned_abs()))
    }

    pub(crate) fn redrive_get(&self, conn: &Connection, id: RedriveId) -> Result<PacedRedrive> {
        let sql = format!("SELECT {COLUMNS} FROM redrives WHERE id = ?1");
        conn.prepare_cached(&sql)
            .and_then(|mut s| s.query_row([to_i64(id.get())], |r| Ok(from_row(r))).optional())
            .map_err(storage("reading a paced redrive"))?
            .ok_or(Error::RedriveNotFound(id))?
            .map(|(paced, _)| paced)
    }

    pub(crate) fn redrive_list(&self, conn: &Connection) -> Result<Vec<PacedRedrive>> {
        let sql = format!("SELECT {COLUMNS} FROM redrives ORDER BY state = 0 DESC, id DESC LIMIT ?1");
        let mut stmt = conn.prepare_cached(&sql).map_err(storage("listing paced redrives"))?;
        let rows = stmt
            .query_map([to_i64(REDRIVE_LIST_MAX as u64)], |r| Ok(from_row(r)))
            .map_err(storage("listing paced redrives"))?;
        let rows: Vec<Result<(PacedRedrive, Pace)>> =
            rows.collect::<rusqlite::Result<_>>().map_err(storage("listing paced redrives"))?;
        rows.into_iter().map(|row| row.map(|(paced, _)| paced)).collect()
    }

    pub(crate) fn redrive_stop(&mut self, conn: &Connection, id: RedriveId) -> Result<PacedRedrive> {
        self.redrive_finish(conn, id, RedriveState::Stopped, None)?;
        self.redrive_get(conn, id)
    }

    /// Steps every running paced redrive as of now: each moves what its rate earned since its
    /// last step. Returns the jobs redriven.
    pub(crate) fn redrives_step(&mut self, conn: &Connection) -> Result<u64> {
        let sql = format!("SELECT {COLUMNS} FROM redrives WHERE state = 0 ORDER BY id");
        let running: Vec<Result<(PacedRedrive, Pace)>> = {
            let mut stmt = conn.prepare_cached(&sql).map_err(storage("reading paced redrives"))?;
            let rows = stmt.query_map([], |r| Ok(from_row(r))).map_err(storage("reading paced redrives"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("reading paced redrives"))?
        };
        let mut total = 0;
        for row in running {
            let (paced, pace) = row?;
            let (take, pace) = pace.earn(paced.rate_per_second, self.now);
            let Some(step) = paced.step(take) else {
                if paced.limit_reached() {
                    self.redrive_finish(conn, paced.id, RedriveState::Done, None)?;
                } else {
                    self.redrive_save_pace(conn, paced.id, pace)?;
                }
                continue;
            };
            match self.dead_redrive(conn, &paced.queue, &step) {
                Ok(done) => {
                    total += done.redriven;
                    let cursor = done.last.or(paced.cursor).map(|id| to_i64(id.get()));
                    conn.prepare_cached(
                        "UPDATE redrives SET redriven = redriven + ?2, cursor = ?3, budget_milli = ?4, stepped_at = ?5 \
                         WHERE id = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            to_i64(paced.id.get()),
                            to_i64(done.redriven),
                            cursor,
                            pace.budget_milli,
                            pace.stepped_at.as_millis()
                        ])
                    })
                    .map_err(storage("advancing a paced redrive"))?;
                    // Fewer than asked: no match is left above the cursor, and none can appear
                    // (only jobs dead before the start match).
                    let exhausted = done.redriven < step.limit.unwrap_or(0);
                    let reached = paced.filter.limit.is_some_and(|limit| paced.redriven + done.redriven >= limit);
                    if exhausted || reached {
                        self.redrive_finish(conn, paced.id, RedriveState::Done, None)?;
                    }
                }
                // Its queue or its destination is gone, or became per-key: it stops, saying why.
                Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::InvalidRequest) => {
                    self.redrive_finish(conn, paced.id, RedriveState::Stopped, Some(&error.to_string()))?;
                }
                Err(error) => return Err(error),
            }
        }
        self.recompute_next_redrive_due(conn)?;
        Ok(total)
    }

    fn redrive_save_pace(&self, conn: &Connection, id: RedriveId, pace: Pace) -> Result<()> {
        conn.prepare_cached("UPDATE redrives SET budget_milli = ?2, stepped_at = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![to_i64(id.get()), pace.budget_milli, pace.stepped_at.as_millis()]))
            .map_err(storage("pacing a paced redrive"))?;
        Ok(())
    }

    /// Ends a running redrive in `to` (a finished one stays as it is).
    fn redrive_finish(
        &mut self,
        conn: &Connection,
        id: RedriveId,
        to: RedriveState,
        error: Option<&str>,
    ) -> Result<()> {
        let changed = conn
            .prepare_cached("UPDATE redrives SET state = ?2, finished_at = ?3, error = ?4 WHERE id = ?1 AND state = 0")
            .and_then(|mut s| s.execute(params![to_i64(id.get()), to.code(), self.now.as_millis(), error]))
            .map_err(storage("ending a paced redrive"))?;
        if changed == 0 {
            // Not running: it exists (and is left as it is), or it is not found.
            let exists: Option<i64> = conn
                .prepare_cached("SELECT id FROM redrives WHERE id = ?1")
                .and_then(|mut s| s.query_row([to_i64(id.get())], |r| r.get(0)).optional())
                .map_err(storage("reading a paced redrive"))?;
            exists.ok_or(Error::RedriveNotFound(id))?;
        }
        Ok(())
    }

    /// When the next step is due: a step interval from now while any redrive runs.
    pub(super) fn recompute_next_redrive_due(&mut self, conn: &Connection) -> Result<()> {
        let running: i64 = conn
            .prepare_cached("SELECT count(*) FROM redrives WHERE state = 0")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(storage("counting paced redrives"))?;
        self.next_redrive_due =
            if running > 0 { self.now.as_millis() + to_i64(REDRIVE_STEP_INTERVAL_MS) } else { i64::MAX };
        Ok(())
    }
}

/// A row of `COLUMNS` as the redrive and its pace.
fn from_row(row: &Row<'_>) -> Result<(PacedRedrive, Pace)> {
    let read = |e: rusqlite::Error| Error::Storage(format!("reading a paced redrive: {e}"));
    let id: i64 = row.get(0).map_err(read)?;
    let queue: String = row.get(1).map_err(read)?;
    let filter: String = row.get(2).map_err(read)?;
    let rate: i64 = row.get(3).map_err(read)?;
    let state: i64 = row.get(4).map_err(read)?;
    let matched: i64 = row.get(5).map_err(read)?;
    let redriven: i64 = row.get(6).map_err(read)?;
    let cursor: Option<i64> = row.get(7).map_err(read)?;
    let created_at: i64 = row.get(8).map_err(read)?;
    let finished_at: Option<i64> = row.get(9).map_err(read)?;
    let error: Option<String> = row.get(10).map_err(read)?;
    let budget_milli: i64 = row.get(11).map_err(read)?;
    let stepped_at: i64 = row.get(12).map_err(read)?;
    let request: RedriveRequest = serde_json::from_str(&filter)
        .map_err(|e| Error::Storage(format!("paced redrive {id} has a filter no version wrote: {e}")))?;
    let paced = PacedRedrive {
        id: RedriveId::new(id.unsigned_abs()),
        queue: QueueName::new(queue)?,
        filter: request.into_redrive()?,
        rate_per_second: u32::try_from(rate).unwrap_or(u32::MAX),
        state: RedriveState::from_code(state)?,
        matched: matched.unsigned_abs(),
        redriven: redriven.unsigned_abs(),
        cursor: cursor.map(|c| JobId::new(c.unsigned_abs())),
        created_at: Timestamp::from_millis(created_at),
        finished_at: finished_at.map(Timestamp::from_millis),
        error,
    };
    Ok((paced, Pace { budget_milli, stepped_at: Timestamp::from_millis(stepped_at) }))
}
