//! Paced redrives (`onceq_core::redrive`): starting, reading, stopping, and the steps every
//! store of a cluster takes by itself (`PgStore::start_ticking`).
//!
//! A step holds its redrive's row lock (`FOR UPDATE`: a store that finds another stepping the
//! row waits for it, then reads the row as that step left it), tops up the budget as of now, and
//! redrives what it holds with the statement that also moves the row's progress; budget and
//! progress commit together. So the stores of a cluster share one pace, a step that returns has
//! seen every earlier one, and a crash loses at most the budget of one step.

use onceq_core::api::RedriveRequest;
use onceq_core::limits::{REDRIVES_RUNNING_MAX, REDRIVES_RUNNING_PER_QUEUE_MAX, REDRIVE_LIST_MAX};
use onceq_core::redrive::{paced_filter, running_within_limits, Pace, PacedRedrive, RedriveState};
use onceq_core::{Error, ErrorKind, JobId, QueueName, Redrive, RedriveId, Result, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::{Connection, Row};

use crate::conns::pooled;
use crate::due::decode;
use crate::{to_i64, PgStore};

/// The columns `from_row` reads.
const COLUMNS: &str =
    "id, queue, filter, rate, state, matched, redriven, cursor, created_at, finished_at, error, budget_milli, stepped_at";

/// Starts a redrive unless `$6` are running, or `$7` on its queue: `$1` queue, `$2` filter,
/// `$3` rate, `$4` matched, `$5` now. No row: too many run (`RUNNING` says how many).
const START: &str = r#"
INSERT INTO {s}.redrives (queue, filter, rate, state, matched, redriven, budget_milli, stepped_at, created_at)
SELECT $1, $2, $3, 0, $4, 0, 0, $5, $5
WHERE (SELECT count(*) FROM {s}.redrives WHERE state = 0) < $6
  AND (SELECT count(*) FROM {s}.redrives WHERE state = 0 AND queue = $1) < $7
RETURNING {columns}
"#;

/// How many redrives run, in the store and on queue `$1`.
const RUNNING: &str =
    "SELECT count(*) AS running, count(*) FILTER (WHERE queue = $1) AS on_queue FROM {s}.redrives WHERE state = 0";

/// Forgets finished redrives past the newest `$1`.
const FORGET: &str = r#"
DELETE FROM {s}.redrives WHERE state <> 0 AND id NOT IN
    (SELECT id FROM {s}.redrives WHERE state <> 0 ORDER BY id DESC LIMIT $1)
"#;

/// Ends running redrive `$2` in state `$3` with error `$4`, as of now (`$1`); returns it whatever
/// its state (no row: not found).
const FINISH: &str = r#"
WITH ended AS (
    UPDATE {s}.redrives SET state = $3, finished_at = {now}, error = $4 WHERE id = $2 AND state = 0
    RETURNING {columns}
)
SELECT * FROM ended
UNION ALL
SELECT {columns} FROM {s}.redrives WHERE id = $2 AND NOT EXISTS (SELECT 1 FROM ended)
"#;

impl PgStore {
    pub(crate) async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive> {
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM {{s}}.redrives WHERE id = $1"));
        let row = self
            .run("reading a paced redrive", || pooled!(self, sqlx::query(&sql).bind(to_i64(id.get())), fetch_optional))
            .await?;
        Ok(from_row(&row.ok_or(Error::RedriveNotFound(id))?)?.0)
    }

    pub(crate) async fn redrive_list(&self) -> Result<Vec<PacedRedrive>> {
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM {{s}}.redrives ORDER BY state = 0 DESC, id DESC LIMIT $1"));
        let rows = self
            .run("listing paced redrives", || {
                pooled!(self, sqlx::query(&sql).bind(to_i64(REDRIVE_LIST_MAX as u64)), fetch_all)
            })
            .await?;
        rows.iter().map(|row| from_row(row).map(|(paced, _)| paced)).collect()
    }

    pub(crate) async fn redrive_start(
        &self,
        queue: &QueueName,
        redrive: Redrive,
        rate_per_second: u32,
    ) -> Result<PacedRedrive> {
        // The filter is capped at "now" as the dry run reads it: the database's clock.
        let counted = self.dead_redrive(queue, Redrive { dry_run: true, ..redrive.clone() }).await?;
        let plan = self.redrive_plan(queue, &redrive).await?;
        let now = Timestamp::from_millis(plan.now);
        let filter = paced_filter(&redrive, rate_per_second, now)?;
        let text = serde_json::to_string(&RedriveRequest::from_redrive(&filter))
            .map_err(|e| Error::Storage(format!("writing a redrive's filter: {e}")))?;
        let sql = self.sql(&START.replace("{columns}", COLUMNS));
        let row = self
            .run("starting a paced redrive", || {
                pooled!(
                    self,
                    sqlx::query(&sql)
                        .bind(queue.as_str())
                        .bind(&text)
                        .bind(i32::try_from(rate_per_second).unwrap_or(i32::MAX))
                        .bind(to_i64(counted.matched))
                        .bind(plan.now)
                        .bind(to_i64(REDRIVES_RUNNING_MAX as u64))
                        .bind(to_i64(REDRIVES_RUNNING_PER_QUEUE_MAX as u64)),
                    fetch_optional
                )
            })
            .await?;
        let Some(row) = row else {
            let sql = self.sql(RUNNING);
            let counts = self
                .run("counting paced redrives", || pooled!(self, sqlx::query(&sql).bind(queue.as_str()), fetch_one))
                .await?;
            let running: i64 = counts.try_get("running").map_err(decode)?;
            let on_queue: i64 = counts.try_get("on_queue").map_err(decode)?;
            running_within_limits(running.unsigned_abs(), on_queue.unsigned_abs(), queue)?;
            // Another start took the last place and something finished since: try again.
            return Err(Error::Conflict(
                "as many paced redrives were running as a store runs at once; try again".into(),
            ));
        };
        let forget = self.sql(FORGET);
        self.run("forgetting finished paced redrives", || {
            pooled!(self, sqlx::query(&forget).bind(to_i64(REDRIVE_LIST_MAX as u64)), execute)
        })
        .await?;
        self.inner.redrives_running.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(from_row(&row)?.0)
    }

    pub(crate) async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive> {
        self.redrive_finish(id, RedriveState::Stopped, None).await
    }

    /// Ends a running redrive (a finished one is returned as it is).
    async fn redrive_finish(&self, id: RedriveId, to: RedriveState, error: Option<&str>) -> Result<PacedRedrive> {
        let sql = self.sql(&FINISH.replace("{columns}", COLUMNS));
        let now = self.now_param();
        let state = i16::try_from(to.code()).unwrap_or(i16::MAX);
        let row = self
            .run("ending a paced redrive", || {
                pooled!(
                    self,
                    sqlx::query(&sql).bind(now).bind(to_i64(id.get())).bind(state).bind(error),
                    fetch_optional
                )
            })
            .await?;
        Ok(from_row(&row.ok_or(Error::RedriveNotFound(id))?)?.0)
    }

    /// `Store::redrive_tick`: steps every running redrive; returns the jobs redriven. Records whether any still runs (the ticker steps often only then).
    pub(crate) async fn redrives_step(&self) -> Result<u64> {
        let sql = self.sql("SELECT id FROM {s}.redrives WHERE state = 0 ORDER BY id");
        let ids: Vec<i64> =
            self.run("reading paced redrives", || pooled!(self, sqlx::query_scalar(&sql), fetch_all)).await?;
        let mut total = 0;
        for id in &ids {
            total += self.redrive_step(RedriveId::new(id.unsigned_abs())).await?;
        }
        let still = !ids.is_empty() && self.redrive_any_running().await?;
        self.inner.redrives_running.store(still, std::sync::atomic::Ordering::Relaxed);
        Ok(total)
    }

    async fn redrive_any_running(&self) -> Result<bool> {
        let sql = self.sql("SELECT EXISTS (SELECT 1 FROM {s}.redrives WHERE state = 0)");
        self.run("reading paced redrives", || pooled!(self, sqlx::query_scalar(&sql), fetch_one)).await
    }

    /// One step of redrive `id` (after any step another store is taking).
    async fn redrive_step(&self, id: RedriveId) -> Result<u64> {
        let context = "stepping a paced redrive";
        // Its queues are looked up first, on the pool: a transaction never waits for a pooled
        // connection while it holds one (module `transaction`).
        let paced = self.redrive_get(id).await?;
        if paced.state != RedriveState::Running {
            return Ok(0);
        }
        let plan = match self.redrive_plan(&paced.queue, &paced.filter).await {
            Ok(plan) => plan,
            Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::InvalidRequest) => {
                self.redrive_finish(id, RedriveState::Stopped, Some(&error.to_string())).await?;
                return Ok(0);
            }
            Err(error) => return Err(error),
        };
        let now = Timestamp::from_millis(plan.now);
        let mut conn = self.acquire_conn().await.map_err(|e| crate::error::map(&self.inner.target, context, e))?;
        let map = |e| crate::error::map(&self.inner.target, context, e);
        let mut tx = conn.begin().await.map_err(map)?;
        let locked = sqlx::query(
            &self.sql(&format!("SELECT {COLUMNS} FROM {{s}}.redrives WHERE id = $1 AND state = 0 FOR UPDATE")),
        )
        .bind(to_i64(id.get()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map)?;
        let Some(locked) = locked else { return Ok(0) };
        let (paced, pace) = from_row(&locked)?;
        let (take, pace) = pace.earn(paced.rate_per_second, now);
        let save_pace = self.sql("UPDATE {s}.redrives SET budget_milli = $2, stepped_at = $3 WHERE id = $1");
        sqlx::query(&save_pace)
            .bind(to_i64(id.get()))
            .bind(pace.budget_milli)
            .bind(pace.stepped_at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        let Some(step) = paced.step(take) else {
            tx.commit().await.map_err(map)?;
            if paced.limit_reached() {
                self.redrive_finish(id, RedriveState::Done, None).await?;
            }
            return Ok(0);
        };
        // The step's own plan: the cursor and the step's limit (the queues were checked above).
        let step_plan = plan.stepped(&step);
        let sql = step_plan.sql(self);
        let reply = step_plan.query(&sql, Some(to_i64(id.get()))).fetch_one(&mut *tx).await.map_err(map)?;
        let done = step_plan.read(&reply)?;
        tx.commit().await.map_err(map)?;
        let exhausted = done.redriven < step.limit.unwrap_or(0);
        let reached = paced.filter.limit.is_some_and(|limit| paced.redriven + done.redriven >= limit);
        if exhausted || reached {
            self.redrive_finish(id, RedriveState::Done, None).await?;
        }
        Ok(done.redriven)
    }
}

/// A row of `COLUMNS` as the redrive and its pace.
fn from_row(row: &PgRow) -> Result<(PacedRedrive, Pace)> {
    let id: i64 = row.try_get("id").map_err(decode)?;
    let queue: String = row.try_get("queue").map_err(decode)?;
    let filter: String = row.try_get("filter").map_err(decode)?;
    let rate: i32 = row.try_get("rate").map_err(decode)?;
    let state: i16 = row.try_get("state").map_err(decode)?;
    let matched: i64 = row.try_get("matched").map_err(decode)?;
    let redriven: i64 = row.try_get("redriven").map_err(decode)?;
    let cursor: Option<i64> = row.try_get("cursor").map_err(decode)?;
    let created_at: i64 = row.try_get("created_at").map_err(decode)?;
    let finished_at: Option<i64> = row.try_get("finished_at").map_err(decode)?;
    let error: Option<String> = row.try_get("error").map_err(decode)?;
    let budget_milli: i64 = row.try_get("budget_milli").map_err(decode)?;
    let stepped_at: i64 = row.try_get("stepped_at").map_err(decode)?;
    let request: RedriveRequest = serde_json::from_str(&filter)
        .map_err(|e| Error::Storage(format!("paced redrive {id} has a filter no version wrote: {e}")))?;
    let paced = PacedRedrive {
        id: RedriveId::new(id.unsigned_abs()),
        queue: QueueName::new(queue)?,
        filter: request.into_redrive()?,
        rate_per_second: rate.unsigned_abs(),
        state: RedriveState::from_code(i64::from(state))?,
        matched: matched.unsigned_abs(),
        redriven: redriven.unsigned_abs(),
        cursor: cursor.map(|c| JobId::new(c.unsigned_abs())),
        created_at: Timestamp::from_millis(created_at),
        finished_at: finished_at.map(Timestamp::from_millis),
        error,
    };
    Ok((paced, Pace { budget_milli, stepped_at: Timestamp::from_millis(stepped_at) }))
}
