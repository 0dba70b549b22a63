//! Applying what the clock made due: scheduled jobs with `run_at <= now` become ready; leases
//! with `lease_expires_at <= now` end, recording "lease expired" at `lease_expires_at`, and the
//! job is ready again at that time, or dead on its last attempt (docs/semantics.md), when its
//! ordering key moves on unless its queue has `dead_blocks_key` (see `keys`), or cancelled if it
//! was cancelled while leased (its key moves on). Blocked jobs are
//! none of these: a job behind its key is not due, whatever its `run_at`.
//!
//! Nothing runs in the background for this. Every operation that looks at a queue's jobs as a
//! set (lease, stats, dead letters, reading a job) first applies the queue's due transitions as
//! of its own "now", in one statement that also returns that "now" and the queue's row. So
//! every read and write observes the transitions as of the clock's current time, whichever
//! process runs it, and an idle queue costs nothing. Settling a lease needs no such step: its
//! statement judges the lease live by `now < lease_expires_at` itself.
//!
//! Rows another transaction holds are skipped (`SKIP LOCKED`), not waited for: a job row locked
//! for long (an ack inside a caller's transaction) must not stall every lease of its queue. Such
//! a row is moved by whichever operation next finds it free.

use crate::conns::pooled;
use onceq_core::metrics as names;
use onceq_core::{Error, QueueConfig, QueueName, Result};
use sqlx::Row;

use crate::keys::with_move_on;
use crate::{parse_config, PgStore};

/// Most jobs one statement moves of each kind (scheduled to ready, expired leases): bounds a
/// statement's work and row locks, and keeps its plan on the primary key.
const DUE_BATCH_MAX: i64 = 5_000;
/// Most statements one operation runs to catch up with a backlog that came due at once.
const DUE_ROUNDS_MAX: i64 = 100;

/// The transitions, for the queues the `q` CTE selects (`{queues}`).
const APPLY_DUE: &str = r#"
WITH t AS (SELECT {now} AS now),
q AS ({queues}),
promoted AS (
    UPDATE {s}.jobs SET state = 1
    WHERE state = 0 AND id = ANY (ARRAY(
        SELECT id FROM {s}.jobs
        WHERE queue_id = ANY (ARRAY(SELECT id FROM q)) AND state = 0 AND run_at <= (SELECT now FROM t)
        LIMIT {batch}
        FOR UPDATE SKIP LOCKED))
    RETURNING queue_id
),
expired AS (
    UPDATE {s}.jobs
    SET state = CASE WHEN cancelled_at IS NOT NULL THEN 5 WHEN attempt >= max_attempts THEN 3 ELSE 1 END,
        run_at = lease_expires_at, lease_token = NULL, lease_expires_at = NULL, error_count = error_count + 1
    WHERE state = 2 AND id = ANY (ARRAY(
        SELECT id FROM {s}.jobs
        WHERE queue_id = ANY (ARRAY(SELECT id FROM q)) AND state = 2
          AND lease_expires_at <= (SELECT now FROM t)
        LIMIT {batch}
        FOR UPDATE SKIP LOCKED))
    RETURNING id, queue_id, state, attempt, run_at, error_count, ordering_key, partition
),
recorded AS (
    INSERT INTO {s}.job_errors (job_id, n, attempt, at, error)
    SELECT id, error_count, attempt, run_at, 'lease expired' FROM expired
),
{move_on_dead:expired},
moved AS (
    SELECT queue_id, count(*) AS promoted, 0::int8 AS redelivered, 0::int8 AS dead, 0::int8 AS cancelled
    FROM promoted GROUP BY queue_id
    UNION ALL
    SELECT queue_id, 0, count(*) FILTER (WHERE state = 1), count(*) FILTER (WHERE state = 3),
           count(*) FILTER (WHERE state = 5)
    FROM expired GROUP BY queue_id
),
per_queue AS (
    SELECT queue_id, sum(promoted)::int8 AS promoted, sum(redelivered)::int8 AS redelivered, sum(dead)::int8 AS dead,
           sum(cancelled)::int8 AS cancelled
    FROM moved GROUP BY queue_id
)
SELECT t.now, q.id, q.name, q.config::text AS config, q.paused, coalesce(m.promoted, 0) AS promoted,
       coalesce(m.redelivered, 0) AS redelivered, coalesce(m.dead, 0) AS dead, coalesce(m.cancelled, 0) AS cancelled,
       CASE WHEN NOT q.paused AND coalesce(m.promoted, 0) + coalesce(m.redelivered, 0) > 0
            THEN pg_notify('{channel}', 'r ' || (m.promoted + m.redelivered) || ' ' || q.name)::text END AS notified,
       (SELECT promoted FROM moved_on) AS keys_moved_on
FROM t LEFT JOIN q ON true LEFT JOIN per_queue m ON m.queue_id = q.id
ORDER BY q.name COLLATE "C"
"#;

/// The `q` CTE of [`APPLY_DUE`] for one queue, by name (`$2`).
pub(crate) const ONE_QUEUE: &str = "SELECT id, name, config, paused FROM {s}.queues WHERE name = $2";

/// The statement applying the due transitions of the queues in `scope` (`$1` now, `$2` the
/// scope's queue name, job id, or NULL), before the schema and clock are filled in.
pub(crate) fn apply_due_template(scope: Scope<'_>) -> String {
    let queues = match scope {
        Scope::Queue(_) => ONE_QUEUE,
        Scope::Job(_) => {
            "SELECT id, name, config, paused FROM {s}.queues WHERE id = (SELECT queue_id FROM {s}.jobs WHERE id = $2)"
        }
        Scope::All => "SELECT id, name, config, paused FROM {s}.queues WHERE $2::text IS NULL",
    };
    apply_due_for(queues)
}

/// [`APPLY_DUE`] for the queues the CTE `queues` selects.
pub(crate) fn apply_due_for(queues: &str) -> String {
    with_move_on(APPLY_DUE).replace("{queues}", queues).replace("{batch}", &DUE_BATCH_MAX.to_string())
}

/// Which queues to bring up to date.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// One queue, by name.
    Queue(&'a QueueName),
    /// The queue of one job.
    Job(i64),
    /// Every queue.
    All,
}

/// A queue as read while applying its due transitions.
#[derive(Debug, Clone)]
pub(crate) struct QueueRow {
    pub id: i64,
    pub name: QueueName,
    pub config: QueueConfig,
    pub paused: bool,
}

/// The "now" the transitions were applied at, and the queues they were applied to (by name).
#[derive(Debug)]
pub(crate) struct Due {
    pub now: i64,
    pub queues: Vec<QueueRow>,
}

impl Due {
    /// The one queue of a `Scope::Queue` or `Scope::Job`, if it exists.
    pub(crate) fn queue(self) -> (i64, Option<QueueRow>) {
        (self.now, self.queues.into_iter().next())
    }
}

impl PgStore {
    /// Applies the due transitions of the queues in `scope` as of the store's "now"; returns that
    /// "now" and those queues.
    pub(crate) async fn apply_due(&self, scope: Scope<'_>) -> Result<Due> {
        let sql = match scope {
            Scope::Queue(_) => self.hot_sql(crate::sql::HotStatement::ApplyDue),
            _ => std::sync::Arc::from(self.sql(&apply_due_template(scope))),
        };
        for _ in 0..DUE_ROUNDS_MAX {
            let now = self.now_param();
            let rows = self
                .run("applying due jobs and expired leases", || {
                    let query = sqlx::query(&sql).bind(now);
                    let query = match scope {
                        Scope::Queue(name) => query.bind(name.as_str()),
                        Scope::Job(id) => query.bind(id),
                        Scope::All => query.bind(None::<String>),
                    };
                    pooled!(self, query, fetch_all)
                })
                .await?;
            let mut due = Due { now: 0, queues: Vec::with_capacity(rows.len()) };
            let (mut promoted, mut expired) = (0, 0);
            for row in rows {
                due.now = row.try_get("now").map_err(decode)?;
                let Some(id) = row.try_get::<Option<i64>, _>("id").map_err(decode)? else { continue };
                let name: String = row.try_get("name").map_err(decode)?;
                let config: String = row.try_get("config").map_err(decode)?;
                let redelivered: i64 = row.try_get("redelivered").map_err(decode)?;
                let dead: i64 = row.try_get("dead").map_err(decode)?;
                let cancelled: i64 = row.try_get("cancelled").map_err(decode)?;
                promoted += row.try_get::<i64, _>("promoted").map_err(decode)?;
                expired += redelivered + dead + cancelled;
                if cancelled > 0 {
                    metrics::counter!(names::JOBS_CANCELLED, "queue" => name.clone())
                        .increment(cancelled.unsigned_abs());
                }
                if redelivered > 0 {
                    metrics::counter!(names::REDELIVERIES, "queue" => name.clone(), "reason" => "lease_expired")
                        .increment(redelivered.unsigned_abs());
                }
                if dead > 0 {
                    metrics::counter!(names::DEAD_LETTERED, "queue" => name.clone(), "reason" => "attempts_exhausted")
                        .increment(dead.unsigned_abs());
                }
                due.queues.push(QueueRow {
                    id,
                    config: parse_config(&name, &config)?,
                    name: QueueName::new(name)
                        .map_err(|e| Error::Storage(format!("queue {id} has an invalid stored name: {e}")))?,
                    paused: row.try_get("paused").map_err(decode)?,
                });
            }
            // A full batch may have left more behind: go on until a round finds less.
            if promoted < DUE_BATCH_MAX && expired < DUE_BATCH_MAX {
                return Ok(due);
            }
        }
        Err(Error::Unavailable(format!(
            "more than {} jobs came due at once; they are being moved, retry",
            DUE_BATCH_MAX * DUE_ROUNDS_MAX
        )))
    }
}

/// A row that does not have the shape its statement promises.
pub(crate) fn decode(error: sqlx::Error) -> Error {
    Error::Storage(format!("reading a PostgreSQL row: {error}"))
}
