//! The SQL of schedules (`onceq_core::schedule`): each schedule is a row with its spec and the
//! first tick not yet fired (`next_tick`). A firing pass runs in the writer's transaction: it
//! enqueues each fired tick's job (dedup id `schedule:<name>:<tick ms>`) and advances the row's
//! `next_tick` past "now" in that same transaction, so a tick fires once whatever restarts or
//! clock readings follow (Invariant 14): the writer is the only one that writes, and a tick
//! at or before a committed `next_tick` is never planned again.

use onceq_core::limits::{SCHEDULE_LIST_MAX, SCHEDULE_TICK_BATCH_MAX};
use onceq_core::schedule::{self, Cron, FiredTick, ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::{Error, ErrorKind, JobId, Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::storage;
use crate::writer::cache::State;

/// A schedule row as read: spec text, paused, next tick, last tick, last job id.
type Row = (String, bool, Option<i64>, Option<i64>, Option<i64>);

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn info_of(name: ScheduleName, row: Row, now: Timestamp) -> Result<ScheduleInfo> {
    let (spec, paused, next_tick, last_tick, last_job_id) = row;
    let spec = ScheduleSpec::from_stored(&spec, paused)?;
    Ok(ScheduleInfo::from_row(
        name,
        spec,
        next_tick.map(Timestamp::from_millis),
        last_tick.map(Timestamp::from_millis),
        last_job_id.and_then(|id| u64::try_from(id).ok()).map(JobId::new),
        now,
    ))
}

fn millis(t: Option<Timestamp>) -> Option<i64> {
    t.map(Timestamp::as_millis)
}

impl State {
    fn schedule_row(&self, conn: &Connection, name: &ScheduleName) -> Result<Option<Row>> {
        conn.prepare_cached("SELECT spec, paused, next_tick, last_tick, last_job_id FROM schedules WHERE name = ?1")
            .and_then(|mut s| s.query_row([name.as_str()], read_row).optional())
            .map_err(storage("reading a schedule"))
    }

    /// Creates or replaces a schedule (validated by the caller).
    pub(crate) fn schedule_upsert(
        &mut self,
        conn: &Connection,
        name: &ScheduleName,
        spec: ScheduleSpec,
        cron: &Cron,
    ) -> Result<ScheduleInfo> {
        let existing = self.schedule_row(conn, name)?;
        let (next_tick, last_tick, last_job_id) = match existing {
            Some((old_spec, old_paused, next_tick, last_tick, last_job_id)) => {
                let old = ScheduleSpec::from_stored(&old_spec, old_paused)?;
                // Same ticks and still running: keep the next tick, so a re-applied spec loses
                // no tick that is due. Otherwise start after now, and after the last tick.
                let next = if !old.ticks_differ(&spec) && !old_paused && !spec.paused {
                    next_tick.map(Timestamp::from_millis)
                } else {
                    self.first_tick(cron, last_tick)
                };
                (next, last_tick, last_job_id)
            }
            None => (self.first_tick(cron, None), None, None),
        };
        conn.prepare_cached(
            "INSERT INTO schedules (name, spec, paused, next_tick, last_tick, last_job_id, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, paused = excluded.paused, \
             next_tick = excluded.next_tick, updated_at = excluded.updated_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                name.as_str(),
                spec.to_stored(),
                spec.paused,
                millis(next_tick),
                last_tick,
                last_job_id,
                self.now.as_millis()
            ])
        })
        .map_err(storage("writing a schedule"))?;
        self.recompute_next_schedule_due(conn)?;
        let row = (spec.to_stored(), spec.paused, millis(next_tick), last_tick, last_job_id);
        info_of(name.clone(), row, self.now)
    }

    /// The first tick after now and after `last_tick`.
    fn first_tick(&self, cron: &Cron, last_tick: Option<i64>) -> Option<Timestamp> {
        let after = last_tick.map_or(self.now, |t| self.now.max(Timestamp::from_millis(t)));
        cron.next_after(after)
    }

    /// Reads a schedule.
    pub(crate) fn schedule_get(&self, conn: &Connection, name: &ScheduleName) -> Result<ScheduleInfo> {
        let row = self.schedule_row(conn, name)?.ok_or_else(|| Error::ScheduleNotFound(name.to_string()))?;
        info_of(name.clone(), row, self.now)
    }

    /// Every schedule, by name.
    pub(crate) fn schedule_list(&self, conn: &Connection) -> Result<Vec<ScheduleInfo>> {
        let rows: Vec<(String, Row)> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT spec, paused, next_tick, last_tick, last_job_id, name FROM schedules \
                     ORDER BY name LIMIT ?1",
                )
                .map_err(storage("listing schedules"))?;
            let found = stmt
                .query_map([i64::try_from(SCHEDULE_LIST_MAX).unwrap_or(i64::MAX)], |r| Ok((r.get(5)?, read_row(r)?)))
                .map_err(storage("listing schedules"))?;
            found.collect::<rusqlite::Result<_>>().map_err(storage("listing schedules"))?
        };
        rows.into_iter()
            .map(|(name, row)| {
                let name = ScheduleName::new(name)
                    .map_err(|e| Error::Storage(format!("a stored schedule name is invalid: {e}")))?;
                info_of(name, row, self.now)
            })
            .collect()
    }

    /// Deletes a schedule.
    pub(crate) fn schedule_delete(&mut self, conn: &Connection, name: &ScheduleName) -> Result<()> {
        let deleted = conn
            .prepare_cached("DELETE FROM schedules WHERE name = ?1")
            .and_then(|mut s| s.execute([name.as_str()]))
            .map_err(storage("deleting a schedule"))?;
        if deleted == 0 {
            return Err(Error::ScheduleNotFound(name.to_string()));
        }
        self.recompute_next_schedule_due(conn)
    }

    /// Pauses or resumes a schedule. Resuming starts from the first tick after now (the ticks
    /// while paused are not caught up); pausing or resuming again changes nothing.
    pub(crate) fn schedule_set_paused(&mut self, conn: &Connection, name: &ScheduleName, paused: bool) -> Result<()> {
        let (spec, was_paused, _, last_tick, _) =
            self.schedule_row(conn, name)?.ok_or_else(|| Error::ScheduleNotFound(name.to_string()))?;
        if was_paused == paused {
            return Ok(());
        }
        let mut spec = ScheduleSpec::from_stored(&spec, was_paused)?;
        spec.paused = paused;
        let next_tick = if paused {
            None
        } else {
            let cron = Cron::new(&spec.cron, &spec.timezone)
                .map_err(|e| Error::Storage(format!("schedule {name} has an unreadable cron: {e}")))?;
            self.first_tick(&cron, last_tick)
        };
        conn.prepare_cached("UPDATE schedules SET paused = ?2, next_tick = ?3, updated_at = ?4 WHERE name = ?1")
            .and_then(|mut s| s.execute(params![name.as_str(), paused, millis(next_tick), self.now.as_millis()]))
            .map_err(storage("pausing or resuming a schedule"))?;
        self.recompute_next_schedule_due(conn)
    }

    /// Fires every due tick of every running schedule as of this transaction's "now", up to
    /// [`SCHEDULE_TICK_BATCH_MAX`] schedules (the most overdue first; the rest come due again at
    /// once and go in the next group).
    pub(crate) fn schedules_fire(&mut self, conn: &Connection) -> Result<TickReport> {
        let now = self.now;
        let due: Vec<(String, String, i64)> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, spec, next_tick FROM schedules \
                     WHERE paused = 0 AND next_tick IS NOT NULL AND next_tick <= ?1 ORDER BY next_tick LIMIT ?2",
                )
                .map_err(storage("finding due schedules"))?;
            let rows = stmt
                .query_map(params![now.as_millis(), i64::try_from(SCHEDULE_TICK_BATCH_MAX).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(storage("finding due schedules"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("finding due schedules"))?
        };
        let mut report = TickReport::default();
        for (name, spec, next_tick) in due {
            let name = ScheduleName::new(name)
                .map_err(|e| Error::Storage(format!("a stored schedule name is invalid: {e}")))?;
            let spec = ScheduleSpec::from_stored(&spec, false)?;
            let plan = match Cron::new(&spec.cron, &spec.timezone) {
                Ok(cron) => cron.plan(Timestamp::from_millis(next_tick), now, spec.catch_up),
                Err(error) => {
                    // Validated when stored; a time zone a newer database dropped lands here.
                    tracing::error!(schedule = %name, %error, "a stored schedule no longer parses; it stops firing");
                    onceq_core::schedule::TickPlan { fire: Vec::new(), skipped: 0, next_tick: None }
                }
            };
            let mut fired = Vec::new();
            if !plan.fire.is_empty() {
                let jobs = plan.fire.iter().map(|tick| spec.job_for(*tick, &name)).collect();
                match self.job_enqueue(conn, &spec.queue, jobs) {
                    Ok(enqueued) => {
                        fired = plan
                            .fire
                            .iter()
                            .zip(enqueued)
                            .map(|(tick, e)| FiredTick {
                                schedule: name.clone(),
                                tick: *tick,
                                job_id: e.id,
                                duplicate: e.duplicate,
                            })
                            .collect();
                    }
                    Err(error) if error.kind() == ErrorKind::Storage => return Err(error),
                    Err(error) => {
                        // The queue refuses the job (its config changed since): the ticks are
                        // skipped, the schedule goes on.
                        tracing::warn!(schedule = %name, %error, "a schedule's tick job was refused; skipped");
                        report.skipped += u64::try_from(plan.fire.len()).unwrap_or(u64::MAX);
                    }
                }
            }
            let last = fired.last().map(|f| (f.tick.as_millis(), i64::try_from(f.job_id.get()).unwrap_or(i64::MAX)));
            conn.prepare_cached(
                "UPDATE schedules SET next_tick = ?2, last_tick = coalesce(?3, last_tick), \
                 last_job_id = coalesce(?4, last_job_id) WHERE name = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![name.as_str(), millis(plan.next_tick), last.map(|l| l.0), last.map(|l| l.1)])
            })
            .map_err(storage("advancing a schedule"))?;
            schedule::record(&name, &plan, &fired, now);
            report.skipped += plan.skipped;
            report.fired.extend(fired);
        }
        self.recompute_next_schedule_due(conn)?;
        Ok(report)
    }

    /// Reads the earliest due tick of the running schedules.
    pub(super) fn recompute_next_schedule_due(&mut self, conn: &Connection) -> Result<()> {
        let next: Option<i64> = conn
            .prepare_cached("SELECT min(next_tick) FROM schedules WHERE paused = 0 AND next_tick IS NOT NULL")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(storage("reading the next schedule tick"))?;
        self.next_schedule_due = next.unwrap_or(i64::MAX);
        Ok(())
    }
}
