//! Schedules (`onceq_core::schedule`): a row per schedule with its spec and the first tick not
//! yet fired (`next_tick`), and firing due ticks across many servers.
//!
//! One job per tick (Invariant 14): a firing pass takes one due schedule row at a time with
//! `FOR UPDATE SKIP LOCKED`, plans its ticks as of the database's "now", enqueues each tick's
//! job (dedup id `schedule:<name>:<tick ms>`) and advances `next_tick` past "now" in the same
//! transaction. Two servers never hold one row at once, and the second finds the row no longer
//! due once the first committed (`FOR UPDATE` re-reads the row's latest version); a tick at or
//! before a committed `next_tick` is never planned again, whatever clock reading a later pass
//! has. Should a pass and an upsert ever plan the same tick twice, its dedup id makes the second
//! enqueue a duplicate.
//!
//! Every store fires due ticks by itself: `PgStore::start_ticking` runs a pass every
//! [`TICK_INTERVAL`] on a task the store owns, so a library user gets ticks without a server.

use std::time::Duration;

use onceq_core::limits::{SCHEDULE_LIST_MAX, SCHEDULE_TICK_BATCH_MAX};
use onceq_core::schedule::{self, Cron, FiredTick, ScheduleInfo, ScheduleName, ScheduleSpec, TickPlan, TickReport};
use onceq_core::{Error, ErrorKind, JobId, Result, Timestamp};
use sqlx::{Connection, PgConnection, Row};

use crate::{Conn, PgStore};

/// How often each store looks for due ticks: the most a tick fires late on an idle store.
pub(crate) const TICK_INTERVAL: Duration = Duration::from_secs(1);

const ROW: &str =
    "SELECT {now} AS now, spec, paused, next_tick, last_tick, last_job_id FROM {s}.schedules WHERE name = $2";
const ROW_LOCKED: &str =
    "SELECT {now} AS now, spec, paused, next_tick, last_tick, last_job_id FROM {s}.schedules WHERE name = $2 FOR UPDATE";
const NOW: &str = "SELECT {now} AS now";
const LIST: &str = "SELECT {now} AS now, name, spec, paused, next_tick, last_tick, last_job_id FROM {s}.schedules \
                    ORDER BY name COLLATE \"C\" LIMIT $2";
const UPSERT: &str = "INSERT INTO {s}.schedules (name, spec, paused, next_tick, last_tick, last_job_id, updated_at) \
                      VALUES ($2, $3, $4, $5, NULL, NULL, {now}) \
                      ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, paused = excluded.paused, \
                      next_tick = excluded.next_tick, updated_at = excluded.updated_at";
const DELETE: &str = "DELETE FROM {s}.schedules WHERE name = $1";
const SET_PAUSED: &str = "UPDATE {s}.schedules SET paused = $3, next_tick = $4, updated_at = {now} WHERE name = $2";
/// Whether any running schedule is due: the cheap look before a firing pass opens a transaction.
const ANY_DUE: &str =
    "SELECT 1 FROM {s}.schedules WHERE NOT paused AND next_tick IS NOT NULL AND next_tick <= {now} LIMIT 1";
/// The most overdue running schedule that no other pass holds, locked.
const TAKE_DUE: &str = "SELECT {now} AS now, name, spec, next_tick FROM {s}.schedules \
                        WHERE NOT paused AND next_tick IS NOT NULL AND next_tick <= {now} \
                        ORDER BY next_tick LIMIT 1 FOR UPDATE SKIP LOCKED";
const ADVANCE: &str = "UPDATE {s}.schedules SET next_tick = $2, last_tick = coalesce($3, last_tick), \
                       last_job_id = coalesce($4, last_job_id) WHERE name = $1";

/// A schedule row as read.
struct StoredRow {
    now: i64,
    spec: String,
    paused: bool,
    next_tick: Option<i64>,
    last_tick: Option<i64>,
    last_job_id: Option<i64>,
}

impl StoredRow {
    fn read(row: &sqlx::postgres::PgRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(StoredRow {
            now: row.try_get("now")?,
            spec: row.try_get("spec")?,
            paused: row.try_get("paused")?,
            next_tick: row.try_get("next_tick")?,
            last_tick: row.try_get("last_tick")?,
            last_job_id: row.try_get("last_job_id")?,
        })
    }

    fn info(self, name: ScheduleName) -> Result<ScheduleInfo> {
        let spec = ScheduleSpec::from_stored(&self.spec, self.paused)?;
        Ok(ScheduleInfo::from_row(
            name,
            spec,
            self.next_tick.map(Timestamp::from_millis),
            self.last_tick.map(Timestamp::from_millis),
            self.last_job_id.and_then(|id| u64::try_from(id).ok()).map(JobId::new),
            Timestamp::from_millis(self.now),
        ))
    }
}

/// The first tick after `now` and after `last_tick`.
fn first_tick(cron: &Cron, now: i64, last_tick: Option<i64>) -> Option<i64> {
    let after = Timestamp::from_millis(last_tick.map_or(now, |t| t.max(now)));
    cron.next_after(after).map(Timestamp::as_millis)
}

impl PgStore {
    fn map_err(&self, context: &'static str) -> impl Fn(sqlx::Error) -> Error + '_ {
        move |e| crate::error::map(&self.inner.target, context, e)
    }

    /// A connection for a transaction of the store's own.
    async fn schedule_conn(&self, context: &'static str) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        self.acquire_conn().await.map_err(self.map_err(context))
    }

    /// `Store::schedule_upsert` (the spec validated by the caller).
    pub(crate) async fn schedule_upsert_own(
        &self,
        name: &ScheduleName,
        spec: ScheduleSpec,
        cron: &Cron,
    ) -> Result<ScheduleInfo> {
        let context = "writing a schedule";
        let mut conn = self.schedule_conn(context).await?;
        let mut tx = conn.begin().await.map_err(self.map_err(context))?;
        let now_param = self.now_param();
        let existing = sqlx::query(&self.sql(ROW_LOCKED))
            .bind(now_param)
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.map_err(context))?;
        let now: i64 = match &existing {
            Some(row) => row.try_get("now").map_err(self.map_err(context))?,
            None => sqlx::query(&self.sql(NOW))
                .bind(now_param)
                .fetch_one(&mut *tx)
                .await
                .and_then(|r| r.try_get("now"))
                .map_err(self.map_err(context))?,
        };
        let (next_tick, last_tick, last_job_id) = match existing {
            Some(row) => {
                let old = StoredRow::read(&row).map_err(self.map_err(context))?;
                let old_spec = ScheduleSpec::from_stored(&old.spec, old.paused)?;
                // Same ticks and still running: keep the next tick, so a re-applied spec loses
                // no tick that is due. Otherwise start after now, and after the last tick.
                let next = if !old_spec.ticks_differ(&spec) && !old.paused && !spec.paused {
                    old.next_tick
                } else {
                    first_tick(cron, now, old.last_tick)
                };
                (next, old.last_tick, old.last_job_id)
            }
            None => (first_tick(cron, now, None), None, None),
        };
        sqlx::query(&self.sql(UPSERT))
            .bind(now_param)
            .bind(name.as_str())
            .bind(spec.to_stored())
            .bind(spec.paused)
            .bind(next_tick)
            .execute(&mut *tx)
            .await
            .map_err(self.map_err(context))?;
        tx.commit().await.map_err(self.map_err(context))?;
        let row = StoredRow { now, spec: spec.to_stored(), paused: spec.paused, next_tick, last_tick, last_job_id };
        row.info(name.clone())
    }

    /// `Store::schedule_get`.
    pub(crate) async fn schedule_read(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        let context = "reading a schedule";
        let row = sqlx::query(&self.sql(ROW))
            .bind(self.now_param())
            .bind(name.as_str())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(self.map_err(context))?
            .ok_or_else(|| Error::ScheduleNotFound(name.to_string()))?;
        StoredRow::read(&row).map_err(self.map_err(context))?.info(name.clone())
    }

    /// `Store::schedule_list`.
    pub(crate) async fn schedule_read_all(&self) -> Result<Vec<ScheduleInfo>> {
        let context = "listing schedules";
        let rows = sqlx::query(&self.sql(LIST))
            .bind(self.now_param())
            .bind(i64::try_from(SCHEDULE_LIST_MAX).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(self.map_err(context))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name").map_err(self.map_err(context))?;
                let name = ScheduleName::new(name)
                    .map_err(|e| Error::Storage(format!("a stored schedule name is invalid: {e}")))?;
                StoredRow::read(row).map_err(self.map_err(context))?.info(name)
            })
            .collect()
    }

    /// `Store::schedule_delete`.
    pub(crate) async fn schedule_remove(&self, name: &ScheduleName) -> Result<()> {
        let done = sqlx::query(&self.sql(DELETE))
            .bind(name.as_str())
            .execute(&self.inner.pool)
            .await
            .map_err(self.map_err("deleting a schedule"))?;
        if done.rows_affected() == 0 {
            return Err(Error::ScheduleNotFound(name.to_string()));
        }
        Ok(())
    }

    /// `Store::schedule_pause` and `schedule_resume`: resuming starts from the first tick after
    /// now (ticks while paused are not caught up); pausing or resuming again changes nothing.
    pub(crate) async fn schedule_set_paused(&self, name: &ScheduleName, paused: bool) -> Result<()> {
        let context = "pausing or resuming a schedule";
        let mut conn = self.schedule_conn(context).await?;
        let mut tx = conn.begin().await.map_err(self.map_err(context))?;
        let now_param = self.now_param();
        let row = sqlx::query(&self.sql(ROW_LOCKED))
            .bind(now_param)
            .bind(name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.map_err(context))?
            .ok_or_else(|| Error::ScheduleNotFound(name.to_string()))?;
        let row = StoredRow::read(&row).map_err(self.map_err(context))?;
        if row.paused == paused {
            return Ok(());
        }
        let mut spec = ScheduleSpec::from_stored(&row.spec, row.paused)?;
        spec.paused = paused;
        let next_tick = if paused {
            None
        } else {
            let cron = Cron::new(&spec.cron, &spec.timezone)
                .map_err(|e| Error::Storage(format!("schedule {name} has an unreadable cron: {e}")))?;
            first_tick(&cron, row.now, row.last_tick)
        };
        sqlx::query(&self.sql(SET_PAUSED))
            .bind(now_param)
            .bind(name.as_str())
            .bind(paused)
            .bind(next_tick)
            .execute(&mut *tx)
            .await
            .map_err(self.map_err(context))?;
        tx.commit().await.map_err(self.map_err(context))
    }

    /// `Store::schedule_tick`: fires the due ticks of up to [`SCHEDULE_TICK_BATCH_MAX`]
    /// schedules, one schedule per transaction, skipping those another pass holds.
    pub(crate) async fn schedules_fire(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        let any = sqlx::query(&self.sql(ANY_DUE))
            .bind(self.now_param())
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(self.map_err("finding due schedules"))?;
        if any.is_none() {
            return Ok(report);
        }
        for _ in 0..SCHEDULE_TICK_BATCH_MAX {
            if !self.fire_one(&mut report).await? {
                break;
            }
        }
        Ok(report)
    }

    /// Fires the most overdue schedule no other pass holds; false when there is none.
    async fn fire_one(&self, report: &mut TickReport) -> Result<bool> {
        let context = "firing a schedule";
        let mut conn = self.schedule_conn(context).await?;
        let mut tx = conn.begin().await.map_err(self.map_err(context))?;
        let now_param = self.now_param();
        let Some(row) = sqlx::query(&self.sql(TAKE_DUE))
            .bind(now_param)
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.map_err(context))?
        else {
            return Ok(false);
        };
        let read = |row: &sqlx::postgres::PgRow| -> std::result::Result<(i64, String, String, i64), sqlx::Error> {
            Ok((row.try_get("now")?, row.try_get("name")?, row.try_get("spec")?, row.try_get("next_tick")?))
        };
        let (now, name, spec, next_tick) = read(&row).map_err(self.map_err(context))?;
        let name =
            ScheduleName::new(name).map_err(|e| Error::Storage(format!("a stored schedule name is invalid: {e}")))?;
        let spec = ScheduleSpec::from_stored(&spec, false)?;
        let now = Timestamp::from_millis(now);
        let plan = match Cron::new(&spec.cron, &spec.timezone) {
            Ok(cron) => cron.plan(Timestamp::from_millis(next_tick), now, spec.catch_up),
            Err(error) => {
                // Validated when stored; a time zone a newer build dropped lands here.
                tracing::error!(schedule = %name, %error, "a stored schedule no longer parses; it stops firing");
                TickPlan { fire: Vec::new(), skipped: 0, next_tick: None }
            }
        };
        let mut fired = Vec::new();
        if !plan.fire.is_empty() {
            let jobs = plan.fire.iter().map(|tick| spec.job_for(*tick, &name)).collect();
            match self.job_enqueue(&mut Conn::Caller(&mut tx), &spec.queue, jobs).await {
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
                Err(error) if matches!(error.kind(), ErrorKind::Storage | ErrorKind::Unavailable) => {
                    let _ = tx.rollback().await;
                    return Err(error);
                }
                Err(error) => {
                    // The queue refuses the job (its config changed since): the ticks are
                    // skipped, the schedule goes on. The refusal wrote nothing, but a refused
                    // statement may have aborted the transaction: advance in a fresh one.
                    tracing::warn!(schedule = %name, %error, "a schedule's tick job was refused; skipped");
                    let _ = tx.rollback().await;
                    report.skipped += u64::try_from(plan.fire.len()).unwrap_or(u64::MAX);
                    let mut tx = conn.begin().await.map_err(self.map_err(context))?;
                    let still_due = sqlx::query(&self.sql(ROW_LOCKED))
                        .bind(now_param)
                        .bind(name.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(self.map_err(context))?
                        .map(|r| r.try_get::<Option<i64>, _>("next_tick"))
                        .transpose()
                        .map_err(self.map_err(context))?
                        .flatten()
                        == Some(next_tick);
                    if still_due {
                        self.advance(&mut tx, &name, &plan, &[]).await?;
                    }
                    tx.commit().await.map_err(self.map_err(context))?;
                    return Ok(true);
                }
            }
        }
        self.advance(&mut tx, &name, &plan, &fired).await?;
        tx.commit().await.map_err(self.map_err(context))?;
        schedule::record(&name, &plan, &fired, now);
        report.skipped += plan.skipped;
        report.fired.extend(fired);
        Ok(true)
    }

    async fn advance(
        &self,
        tx: &mut PgConnection,
        name: &ScheduleName,
        plan: &TickPlan,
        fired: &[FiredTick],
    ) -> Result<()> {
        let last = fired.last().map(|f| (f.tick.as_millis(), i64::try_from(f.job_id.get()).unwrap_or(i64::MAX)));
        sqlx::query(&self.sql(ADVANCE))
            .bind(name.as_str())
            .bind(plan.next_tick.map(Timestamp::as_millis))
            .bind(last.map(|l| l.0))
            .bind(last.map(|l| l.1))
            .execute(&mut *tx)
            .await
            .map_err(self.map_err("advancing a schedule"))?;
        Ok(())
    }
}

impl PgStore {
    /// Starts the store's own firing of due ticks, a pass every [`TICK_INTERVAL`], and stepping
    /// of paced redrives (module `redrives`): every `REDRIVE_STEP_INTERVAL_MS` while one runs,
    /// else a look every tick interval. For as long as the store lives (the task holds it weakly
    /// and ends when it is gone; `close` and drop abort it).
    pub(crate) fn start_ticking(&self) {
        let inner = std::sync::Arc::downgrade(&self.inner);
        let step = std::time::Duration::from_millis(onceq_core::limits::REDRIVE_STEP_INTERVAL_MS);
        let task = tokio::spawn(async move {
            let mut since_fire = std::time::Duration::ZERO;
            loop {
                tokio::time::sleep(step).await;
                since_fire += step;
                let Some(inner) = inner.upgrade() else { return };
                let store = PgStore { inner };
                let fire = since_fire >= TICK_INTERVAL;
                if fire {
                    since_fire = std::time::Duration::ZERO;
                    if let Err(error) = store.schedules_fire().await {
                        tracing::warn!(%error, "firing due schedule ticks failed; trying again");
                    }
                }
                if fire || store.inner.redrives_running.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(error) = store.redrives_step().await {
                        tracing::warn!(%error, "stepping paced redrives failed; trying again");
                    }
                }
            }
        });
        *self.inner.ticker.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }
}
