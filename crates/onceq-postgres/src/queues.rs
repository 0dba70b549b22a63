//! Queues: config, pause and resume, delete, stats, and each queue's dead letters.
//!
//! Stats stay cheap however large the table grows: the counts by state are sums over at most
//! 32 rows of `queue_counts` per queue, and the oldest ready job is the first entry of the
//! `jobs_ready_since` index.

use crate::conns::pooled;
use onceq_core::metrics as names;
use onceq_core::{
    DeadList, DeadPage, Error, JobId, Ordering, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, QueueStats,
    Redrive, Redriven, Result, Timestamp,
};
use sqlx::{Connection, Row};

use crate::due::{decode, QueueRow, Scope};
use crate::jobs::{job_from_row, JOB_COLUMNS};
use crate::keys::{with_move_on, CLAIM_KEYS};
use crate::transaction::PgQuery;
use crate::{parse_config, to_i64, PgStore};

/// Tries at an upsert that keeps meeting a concurrent change of the same queue.
const UPSERT_TRIES_MAX: usize = 8;

/// The counts by state and the oldest ready `run_at` of each queue in `$1`.
///
/// The oldest ready job is found through `jobs_ready` (queue, priority DESC, run_at, id), the
/// only index on ready jobs (see migration v2): the first entry of each distinct priority holds
/// that priority's oldest `run_at`, and a recursive skip over the priorities present visits one
/// entry each — a few index probes, however many jobs are ready.
const STATS: &str = r#"
SELECT q.id, coalesce(c.scheduled, 0) AS scheduled, coalesce(c.ready, 0) AS ready,
       coalesce(c.leased, 0) AS leased, coalesce(c.dead, 0) AS dead, coalesce(c.blocked, 0) AS blocked,
       (SELECT count(*) FROM {s}.jobs j WHERE j.queue_id = q.id AND (j.state + 0) = 5) AS cancelled,
       (WITH RECURSIVE heads AS (
            (SELECT j.priority, j.run_at FROM {s}.jobs j WHERE j.queue_id = q.id AND j.state = 1
             ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1)
            UNION ALL
            SELECT n.priority, n.run_at FROM heads h CROSS JOIN LATERAL (
                SELECT j.priority, j.run_at FROM {s}.jobs j
                WHERE j.queue_id = q.id AND j.state = 1 AND j.priority < h.priority
                ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1) n
        )
        SELECT min(run_at) FROM heads) AS oldest_ready
FROM unnest($1::int8[]) AS q(id)
LEFT JOIN LATERAL (
    SELECT sum(scheduled)::int8 AS scheduled, sum(ready)::int8 AS ready, sum(leased)::int8 AS leased,
           sum(dead)::int8 AS dead, sum(blocked)::int8 AS blocked
    FROM {s}.queue_counts WHERE queue_id = q.id
) c ON true
"#;

const CONFIG_READ: &str = "SELECT config::text FROM {s}.queues WHERE name = $1";

/// Replaces the config only if it is still the one the patch was applied to.
const CONFIG_UPDATE: &str =
    "UPDATE {s}.queues SET config = $2::jsonb WHERE name = $1 AND config = $3::jsonb RETURNING id";

/// Locks queue `$1`'s row against enqueues before its ordering changes (see
/// [`PgStore::queue_reorder`]).
const REORDER_LOCK: &str = "SELECT id, config::text FROM {s}.queues WHERE name = $1 FOR UPDATE";

/// The jobs queue `$1` holds, in every state.
const REORDER_COUNT: &str = "SELECT coalesce(sum(scheduled + ready + leased + dead + blocked), 0)::int8 \
                             FROM {s}.queue_counts WHERE queue_id = $1";

const REORDER_UPDATE: &str = "UPDATE {s}.queues SET config = $2::jsonb WHERE id = $1";

/// What a change of a queue's ordering found.
enum Reorder {
    Done,
    /// The config changed since it was read (or the queue is gone).
    Changed,
    /// The queue holds this many jobs.
    Holds(i64),
}

/// Creates a queue, and wakes the leases waiting for it to exist (they wait unregistered, see
/// `wait`, "Sleeping").
const QUEUE_INSERT: &str = "INSERT INTO {s}.queues (name, config, created_at) VALUES ($2, $3::jsonb, {now}) \
                            ON CONFLICT (name) DO NOTHING \
                            RETURNING id, pg_notify('{channel}', 'r 2147483647 ' || name)::text AS notified";

/// Pauses or resumes; a resume wakes every lease waiting on the queue.
const SET_PAUSED: &str = "UPDATE {s}.queues SET paused = $2 WHERE name = $1 \
                          RETURNING id, CASE WHEN NOT $2 THEN pg_notify('{channel}', 'r 2147483647 ' || name)::text END";

/// Deletes the queue row first: that waits for enqueues holding it, and makes later ones find
/// it gone, so the jobs deleted next are all there will ever be.
const QUEUE_ROW_DELETE: &str = "DELETE FROM {s}.queues WHERE name = $1 RETURNING id";

/// One arm per state, so that each uses its partial index. The ids are gathered once into an
/// array and deleted by primary key: as `id IN (...)`, statistics taken while the table was
/// nearly empty made PostgreSQL pick a nested loop that scanned every arm once per job, and
/// deleting a queue of 100,000 jobs ran for more than ten minutes.
const QUEUE_JOBS_DELETE: &str = r#"
WITH gone AS (
    DELETE FROM {s}.jobs j WHERE j.id = ANY (ARRAY(
        SELECT id FROM {s}.jobs WHERE queue_id = $1 AND state = 0
        UNION ALL SELECT id FROM {s}.jobs WHERE queue_id = $1 AND state = 1
        UNION ALL SELECT id FROM {s}.jobs WHERE queue_id = $1 AND state = 2
        UNION ALL SELECT id FROM {s}.jobs WHERE queue_id = $1 AND state = 3
        UNION ALL SELECT id FROM {s}.jobs WHERE queue_id = $1 AND state = 4
        UNION ALL SELECT id FROM {s}.jobs WHERE queue_id = $1 AND (state + 0) = 5))
    RETURNING j.id, j.error_count
),
forgotten AS (DELETE FROM {s}.job_errors e USING gone g WHERE e.job_id = g.id AND g.error_count > 0),
dedup AS (DELETE FROM {s}.dedup WHERE queue_id = $1)
SELECT count(*) FROM gone
"#;

/// After the jobs (whose delete trigger updates them): the queue's counters, and its ordering
/// keys. In a statement of its own, so that it also sees a key a redrive that the jobs' delete
/// waited for claimed.
const QUEUE_COUNTS_DELETE: &str = "WITH keys AS (DELETE FROM {s}.ordering_keys WHERE queue_id = $1) \
                                   DELETE FROM {s}.queue_counts WHERE queue_id = $1";

const DEAD_PAGE: &str = "SELECT {columns} FROM {s}.jobs j JOIN {s}.queues q ON q.id = j.queue_id \
                         WHERE j.queue_id = $1 AND j.state = 3 AND j.id > $2 ORDER BY j.id LIMIT $3";

/// A page of a queue's jobs in one state: `$1` queue, `$2` state, `$3` after this id, `$4` most
/// rows. `state + 0` is what `jobs_state` indexes (see the schema's migration 10).
const JOB_PAGE: &str = "SELECT {columns} FROM {s}.jobs j JOIN {s}.queues q ON q.id = j.queue_id \
                        WHERE j.queue_id = $1 AND (j.state + 0) = $2 AND j.id > $3 ORDER BY j.id LIMIT $4";

/// Makes dead jobs ready again, oldest first: `$1` now, `$2` queue, `$3` the named ids (NULL:
/// all), `$4` most jobs. In a `per_key` queue they claim their keys first (see `keys`): a dead
/// head gets its key back and is ready, and so is a job whose key has no head (the lowest id of
/// the key among those redriven); the others wait blocked behind their key's head.
/// The dead jobs of queue `$2` that pass a redrive's filters: `$3` the ids (NULL: any), `$5` a
/// cursor (ids above it), `$6` the least attempts, `$7` text the last error contains, `$8`/`$9`
/// the range of times the last error was recorded (when the job died; the last error is the
/// one numbered `error_count`). A NULL parameter filters nothing.
const DEAD_MATCHING: &str = r#"
    j.queue_id = $2 AND j.state = 3 AND ($3::int8[] IS NULL OR j.id = ANY($3::int8[]))
    AND ($5::int8 IS NULL OR j.id > $5) AND ($6::int4 IS NULL OR j.attempt >= $6)
    AND (($7::text IS NULL AND $8::int8 IS NULL AND $9::int8 IS NULL) OR EXISTS (
        SELECT 1 FROM {s}.job_errors e WHERE e.job_id = j.id AND e.n = j.error_count
        AND ($7::text IS NULL OR strpos(e.error, $7) > 0)
        AND ($8::int8 IS NULL OR e.at >= $8) AND ($9::int8 IS NULL OR e.at < $9)))
"#;

/// Redrives the first `$4` matching dead jobs (`DEAD_MATCHING`) as of `$1`, into queue `$10`
/// (NULL: their own; never a `per_key` queue), and counts every match. `$11` true: counts only.
/// `$12`, a paced redrive's id (NULL: none), whose progress moves in the same statement.
const REDRIVE: &str = r#"
WITH matched AS (
    SELECT count(*) AS n FROM {s}.jobs j WHERE {matching}
),
picked AS (
    SELECT id, ordering_key, partition FROM {s}.jobs j
    WHERE NOT $11::bool AND {matching}
    ORDER BY id LIMIT $4
    FOR UPDATE
),
heads AS ({claim_keys}),
redriven AS (
    UPDATE {s}.jobs j SET state = CASE WHEN h.head_id <> j.id THEN 4 ELSE 1 END, attempt = 0, run_at = $1,
        queue_id = COALESCE($10::int8, j.queue_id)
    FROM picked p LEFT JOIN heads h ON p.partition IS NOT NULL AND h.ordering_key = p.ordering_key
    WHERE j.id = p.id
    RETURNING j.id, j.queue_id, j.state, j.run_at
),
advanced AS (
    UPDATE {s}.redrives r SET redriven = r.redriven + (SELECT count(*) FROM redriven),
        cursor = coalesce((SELECT max(id) FROM redriven), r.cursor)
    WHERE r.id = $12::int8
),
{notify:redriven}
SELECT (SELECT n FROM matched) AS matched, count(*) AS redriven, max(id) AS last,
    (SELECT count(*) FROM notified) AS notified FROM redriven
"#;

/// Deletes the dead jobs of queue `$1`; a dead head among them (`dead_blocks_key`) hands its key
/// on as of `$2`.
const PURGE: &str = r#"
WITH t AS (SELECT $2::int8 AS now),
gone AS (
    DELETE FROM {s}.jobs WHERE queue_id = $1 AND state = 3
    RETURNING id, queue_id, error_count, ordering_key, partition
),
forgotten AS (DELETE FROM {s}.job_errors e USING gone g WHERE e.job_id = g.id AND g.error_count > 0),
{move_on:gone}
SELECT count(*) AS purged, (SELECT promoted FROM moved_on) AS promoted FROM gone
"#;

/// A stored count as a count; a negative one means the counters are wrong, which is logged.
fn count(queue: &QueueName, state: &str, n: i64) -> u64 {
    u64::try_from(n).unwrap_or_else(|_| {
        tracing::error!(%queue, state, n, "a job count went negative; the queue_counts table is off");
        0
    })
}

impl PgStore {
    /// Stats of `queues` as of `now` (their due transitions applied).
    async fn stats(&self, now: i64, queues: Vec<QueueRow>) -> Result<Vec<QueueInfo>> {
        let ids: Vec<i64> = queues.iter().map(|q| q.id).collect();
        let sql = self.sql(STATS);
        let rows = self.run("reading queue stats", || pooled!(self, sqlx::query(&sql).bind(&ids), fetch_all)).await?;
        let mut by_id = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            by_id.insert(row.try_get::<i64, _>("id").map_err(decode)?, row);
        }
        let mut infos = Vec::with_capacity(queues.len());
        for queue in queues {
            let row = by_id
                .get(&queue.id)
                .ok_or_else(|| Error::Storage(format!("no stats were read for queue {}", queue.name)))?;
            let get = |column: &str| row.try_get::<i64, _>(column).map_err(decode);
            let oldest: Option<i64> = row.try_get("oldest_ready").map_err(decode)?;
            let stats = QueueStats {
                ready: count(&queue.name, "ready", get("ready")?),
                scheduled: count(&queue.name, "scheduled", get("scheduled")?),
                leased: count(&queue.name, "leased", get("leased")?),
                dead: count(&queue.name, "dead", get("dead")?),
                blocked: count(&queue.name, "blocked", get("blocked")?),
                cancelled: count(&queue.name, "cancelled", get("cancelled")?),
                oldest_ready_age_ms: oldest.map(|at| Timestamp::from_millis(now).ms_since(Timestamp::from_millis(at))),
            };
            infos.push(QueueInfo { name: queue.name, config: queue.config, paused: queue.paused, stats });
        }
        Ok(infos)
    }

    /// The queue's row after applying its due transitions, or `QueueNotFound`.
    async fn queue_due(&self, queue: &QueueName) -> Result<(i64, QueueRow)> {
        let (now, row) = self.apply_due(Scope::Queue(queue)).await?.queue();
        row.map(|row| (now, row)).ok_or_else(|| Error::QueueNotFound(queue.clone()))
    }

    pub(crate) async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        let (now, row) = self.queue_due(queue).await?;
        let mut infos = self.stats(now, vec![row]).await?;
        infos.pop().ok_or_else(|| Error::Storage(format!("no stats were read for queue {queue}")))
    }

    pub(crate) async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        self.queue_list_page(None, u32::MAX).await
    }

    /// A page of the queue list: the stats are read for the page's queues only.
    pub(crate) async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        let due = self.apply_due(Scope::All).await?;
        let mut page: Vec<QueueRow> =
            due.queues.into_iter().filter(|q| after.is_none_or(|after| q.name > *after)).collect();
        page.sort_by(|a, b| a.name.cmp(&b.name));
        page.truncate(limit as usize);
        let mut infos = self.stats(due.now, page).await?;
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    pub(crate) async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        // The next enqueue looks the new config up rather than trying the old one first.
        self.forget_queue(queue);
        let encode = |config: &QueueConfig| {
            serde_json::to_string(config).map_err(|e| Error::Storage(format!("encoding a queue config: {e}")))
        };
        for _ in 0..UPSERT_TRIES_MAX {
            let read = self.sql(CONFIG_READ);
            let current: Option<String> = self
                .run("reading a queue config", || {
                    pooled!(self, sqlx::query_scalar(&read).bind(queue.as_str()), fetch_optional)
                })
                .await?;
            match current {
                Some(text) => {
                    let current = parse_config(queue.as_str(), &text)?;
                    let config = current.patched(&patch)?;
                    if current.reorders(&config) {
                        match self.queue_reorder(queue, &text, &config).await? {
                            Some(()) => return Ok(config),
                            None => continue,
                        }
                    }
                    let new = encode(&config)?;
                    let update = self.sql(CONFIG_UPDATE);
                    let updated: Option<i64> = self
                        .run("updating a queue config", || {
                            pooled!(
                                self,
                                sqlx::query_scalar(&update).bind(queue.as_str()).bind(&new).bind(&text),
                                fetch_optional
                            )
                        })
                        .await?;
                    if updated.is_some() {
                        return Ok(config);
                    }
                }
                None => {
                    let config = QueueConfig::default().patched(&patch)?;
                    let new = encode(&config)?;
                    let insert = self.sql(QUEUE_INSERT);
                    let now = self.now_param();
                    let created: Option<i64> = self
                        .run("creating a queue", || {
                            pooled!(
                                self,
                                sqlx::query_scalar(&insert).bind(now).bind(queue.as_str()).bind(&new),
                                fetch_optional
                            )
                        })
                        .await?;
                    if created.is_some() {
                        return Ok(config);
                    }
                }
            }
            // Someone changed, created or deleted the queue meanwhile: apply the patch again.
        }
        Err(Error::Conflict(format!("queue {queue} kept changing while its config was being updated; retry")))
    }

    /// Replaces the config `text` of `queue` with `config`, which changes its ordering or its
    /// partition count: only while the queue holds no job (`QueueNotEmpty` otherwise). `None`: the
    /// config is no longer `text` (or the queue is gone); the caller patches again.
    ///
    /// The queue's row is locked `FOR UPDATE` first, which waits for the enqueues that hold it
    /// (`FOR KEY SHARE`) to end and makes later ones wait; the jobs are counted after that, in a
    /// statement of their own that sees those enqueues' jobs. An enqueue that waited finds the
    /// config changed and resolves the queue again, so no job is ever stored under the ordering
    /// or partitions its queue no longer has.
    async fn queue_reorder(&self, queue: &QueueName, text: &str, config: &QueueConfig) -> Result<Option<()>> {
        let new = serde_json::to_string(config).map_err(|e| Error::Storage(format!("encoding a queue config: {e}")))?;
        let (lock, count, update) = (self.sql(REORDER_LOCK), self.sql(REORDER_COUNT), self.sql(REORDER_UPDATE));
        let outcome = self
            .run("changing a queue's ordering", || async {
                let mut conn = self.acquire_conn().await?;
                let mut tx = conn.begin().await?;
                let locked: Option<(i64, String)> =
                    sqlx::query_as(&lock).bind(queue.as_str()).fetch_optional(&mut *tx).await?;
                // Every way out ends the transaction here, so no lock outlives this call (a
                // dropped transaction would roll back only when its connection is next used).
                let Some((id, _)) = locked.filter(|(_, current)| current == text) else {
                    tx.rollback().await?;
                    return Ok(Reorder::Changed);
                };
                let jobs: i64 = sqlx::query_scalar(&count).bind(id).fetch_one(&mut *tx).await?;
                if jobs != 0 {
                    tx.rollback().await?;
                    return Ok(Reorder::Holds(jobs));
                }
                sqlx::query(&update).bind(id).bind(&new).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Reorder::Done)
            })
            .await?;
        match outcome {
            Reorder::Done => Ok(Some(())),
            Reorder::Changed => Ok(None),
            Reorder::Holds(jobs) => Err(Error::QueueNotEmpty(format!(
                "queue {queue} holds {jobs} jobs; its ordering and partitions change only while it holds none: \
                 let it drain and purge its dead jobs, or move the work to a new queue, then retry"
            ))),
        }
    }

    pub(crate) async fn queue_set_paused(&self, queue: &QueueName, paused: bool) -> Result<()> {
        let sql = self.sql(SET_PAUSED);
        let row = self
            .run("pausing or resuming a queue", || {
                pooled!(self, sqlx::query(&sql).bind(queue.as_str()).bind(paused), fetch_optional)
            })
            .await?;
        row.map(|_| ()).ok_or_else(|| Error::QueueNotFound(queue.clone()))
    }

    pub(crate) async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        self.forget_queue(queue);
        let (row_delete, jobs_delete, counts_delete) =
            (self.sql(QUEUE_ROW_DELETE), self.sql(QUEUE_JOBS_DELETE), self.sql(QUEUE_COUNTS_DELETE));
        let deleted = self
            .run("deleting a queue", || async {
                let mut conn = self.acquire_conn().await?;
                let mut tx = conn.begin().await?;
                let id: Option<i64> =
                    sqlx::query_scalar(&row_delete).bind(queue.as_str()).fetch_optional(&mut *tx).await?;
                let Some(id) = id else { return Ok(false) };
                sqlx::query(&jobs_delete).bind(id).execute(&mut *tx).await?;
                sqlx::query(&counts_delete).bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(true)
            })
            .await?;
        if deleted {
            Ok(())
        } else {
            Err(Error::QueueNotFound(queue.clone()))
        }
    }

    pub(crate) async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        let (_, row) = self.queue_due(queue).await?;
        let after = page.after.map(|id| to_i64(id.get())).unwrap_or(0);
        let limit = i64::from(page.limit) + 1;
        let sql = self.sql(&DEAD_PAGE.replace("{columns}", JOB_COLUMNS));
        let rows = self
            .run("listing dead jobs", || {
                pooled!(self, sqlx::query(&sql).bind(row.id).bind(after).bind(limit), fetch_all)
            })
            .await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next = if jobs.len() > page.limit as usize {
            jobs.truncate(page.limit as usize);
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        Ok(DeadList { jobs, next })
    }

    /// A page of `queue`'s jobs in one state, by id, through `jobs_state`: at most `limit + 1`
    /// rows read.
    pub(crate) async fn job_page(&self, queue: &QueueName, page: onceq_core::JobPage) -> Result<onceq_core::JobList> {
        use crate::schema::state;
        let stored = match page.state {
            onceq_core::JobState::Scheduled => state::SCHEDULED,
            onceq_core::JobState::Ready => state::READY,
            onceq_core::JobState::Leased => state::LEASED,
            onceq_core::JobState::Dead => state::DEAD,
            onceq_core::JobState::Blocked => state::BLOCKED,
            onceq_core::JobState::Cancelled => state::CANCELLED,
        };
        let (_, row) = self.queue_due(queue).await?;
        let after = page.after.map(|id| to_i64(id.get())).unwrap_or(0);
        let limit = i64::from(page.limit) + 1;
        let sql = self.sql(&JOB_PAGE.replace("{columns}", JOB_COLUMNS));
        let rows = self
            .run("listing jobs", || {
                pooled!(self, sqlx::query(&sql).bind(row.id).bind(i32::from(stored)).bind(after).bind(limit), fetch_all)
            })
            .await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next = if jobs.len() > page.limit as usize {
            jobs.truncate(page.limit as usize);
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        Ok(onceq_core::JobList { jobs, next })
    }

    /// The job `dedup_id` names in `queue` while its entry lasts.
    pub(crate) async fn job_by_dedup(&self, queue: &QueueName, dedup_id: &str) -> Result<Option<JobId>> {
        let (now, row) = self.queue_due(queue).await?;
        let sql = self.sql("SELECT job_id FROM {s}.dedup WHERE queue_id = $1 AND dedup_id = $2 AND expires_at > $3");
        let id: Option<i64> = self
            .run("reading a dedup id", || {
                pooled!(self, sqlx::query_scalar(&sql).bind(row.id).bind(dedup_id).bind(now), fetch_optional)
            })
            .await?;
        Ok(id.map(|id| JobId::new(id.unsigned_abs())))
    }

    /// The record of idempotency key `key` as stored (state 1 is completed: `idempotency`).
    pub(crate) async fn idempotency_get(&self, key: &str) -> Result<Option<onceq_core::IdempotencyRecord>> {
        let sql = self.sql("SELECT state, owner, until, result FROM {s}.idempotency WHERE key = $1");
        let row = self
            .run("reading an idempotency key", || pooled!(self, sqlx::query(&sql).bind(key), fetch_optional))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(onceq_core::IdempotencyRecord {
            key: key.to_owned(),
            completed: row.try_get::<i16, _>("state").map_err(decode)? == 1,
            owner: row.try_get("owner").map_err(decode)?,
            until: Timestamp::from_millis(row.try_get("until").map_err(decode)?),
            result: row.try_get("result").map_err(decode)?,
        }))
    }

    pub(crate) async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven> {
        let plan = self.redrive_plan(queue, &redrive).await?;
        let sql = plan.sql(self);
        let reply = self.run("redriving dead jobs", || pooled!(self, plan.query(&sql, None), fetch_one)).await?;
        plan.read(&reply)
    }

    /// Looks up the queues of a redrive (as of now, their due transitions applied) and checks
    /// them: what [`RedrivePlan::query`] binds.
    pub(crate) async fn redrive_plan(&self, queue: &QueueName, redrive: &Redrive) -> Result<RedrivePlan> {
        let (now, row) = self.queue_due(queue).await?;
        let to_queue_id = match &redrive.to_queue {
            Some(to) if to != queue => {
                let (_, to_row) = self.queue_due(to).await?;
                let per_key = [&row, &to_row].into_iter().find(|r| r.config.ordering == Ordering::PerKey);
                if let Some(ordered) = per_key {
                    return Err(Error::invalid(format!(
                        "a redrive into another queue needs two queues without per-key ordering; {} orders per key",
                        ordered.name
                    )));
                }
                Some(to_row.id)
            }
            _ => None,
        };
        Ok(RedrivePlan {
            queue: queue.clone(),
            now,
            queue_id: row.id,
            to_queue_id,
            // Ids no job can have (above i64::MAX) name no dead job: they are skipped.
            ids: redrive.ids.as_ref().map(|ids| ids.iter().filter_map(|id| i64::try_from(id.get()).ok()).collect()),
            limit: redrive.limit.map(to_i64).unwrap_or(i64::MAX),
            after: redrive.after.map(|id| to_i64(id.get())),
            min_attempts: redrive.min_attempts.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            error_contains: redrive.error_contains.clone(),
            dead_after: redrive.dead_after.map(Timestamp::as_millis),
            dead_before: redrive.dead_before.map(Timestamp::as_millis),
            dry_run: redrive.dry_run,
        })
    }

    pub(crate) async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        let (now, row) = self.queue_due(queue).await?;
        let sql = self.sql(&with_move_on(PURGE));
        let purged: i64 = self
            .run("purging dead jobs", || pooled!(self, sqlx::query_scalar(&sql).bind(row.id).bind(now), fetch_one))
            .await?;
        Ok(purged.unsigned_abs())
    }
}

/// A redrive with its queues looked up: the arguments of `REDRIVE`.
#[derive(Debug)]
pub(crate) struct RedrivePlan {
    queue: QueueName,
    /// "Now", as the lookup read it.
    pub(crate) now: i64,
    queue_id: i64,
    to_queue_id: Option<i64>,
    ids: Option<Vec<i64>>,
    limit: i64,
    after: Option<i64>,
    min_attempts: Option<i32>,
    error_contains: Option<String>,
    dead_after: Option<i64>,
    dead_before: Option<i64>,
    dry_run: bool,
}

impl RedrivePlan {
    /// This plan for one step of a paced redrive: the step's limit and cursor.
    pub(crate) fn stepped(&self, step: &Redrive) -> RedrivePlan {
        RedrivePlan {
            queue: self.queue.clone(),
            ids: self.ids.clone(),
            error_contains: self.error_contains.clone(),
            limit: step.limit.map(to_i64).unwrap_or(i64::MAX),
            after: step.after.map(|id| to_i64(id.get())),
            dry_run: false,
            ..*self
        }
    }

    /// The statement's text on `store`'s schema.
    pub(crate) fn sql(&self, store: &PgStore) -> String {
        let claim = CLAIM_KEYS
            .replace("{queue}", "$2")
            .replace("{claiming}", "picked")
            .replace("{ordered}", "c.partition IS NOT NULL");
        let statement = REDRIVE.replace("{matching}", DEAD_MATCHING.trim()).replace("{claim_keys}", claim.trim());
        store.sql(&crate::jobs::with_notify(&statement, "redriven"))
    }

    /// The statement with its arguments; `paced` is the id of the paced redrive whose progress
    /// moves with it.
    pub(crate) fn query<'q>(&'q self, sql: &'q str, paced: Option<i64>) -> PgQuery<'q> {
        sqlx::query(sql)
            .bind(self.now)
            .bind(self.queue_id)
            .bind(&self.ids)
            .bind(self.limit)
            .bind(self.after)
            .bind(self.min_attempts)
            .bind(self.error_contains.as_deref())
            .bind(self.dead_after)
            .bind(self.dead_before)
            .bind(self.to_queue_id)
            .bind(self.dry_run)
            .bind(paced)
    }

    /// What the statement's reply says.
    pub(crate) fn read(&self, reply: &sqlx::postgres::PgRow) -> Result<Redriven> {
        let matched: i64 = reply.try_get("matched").map_err(decode)?;
        let redriven: i64 = reply.try_get("redriven").map_err(decode)?;
        let last: Option<i64> = reply.try_get("last").map_err(decode)?;
        let redriven = redriven.unsigned_abs();
        metrics::counter!(names::REDRIVEN, "queue" => self.queue.to_string()).increment(redriven);
        Ok(Redriven { matched: matched.unsigned_abs(), redriven, last: last.map(|id| JobId::new(id.unsigned_abs())) })
    }
}
