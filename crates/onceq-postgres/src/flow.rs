//! A queue's flow limits across every server (docs/design.md, Invariant 15): the rate limit's
//! bucket and the in-flight limit at lease time, the depth limit at enqueue.
//!
//! Every server shares the bucket through one row per limited queue in `flow_buckets` (its
//! `tat`, `onceq_core::flow`). A lease of a queue with a rate or in-flight limit is one
//! transaction that takes that row's lock first ([`FLOW_LOCK`], an upsert that returns the row
//! as the last committer left it), then counts the queue's live leases in a statement of its own
//! (in READ COMMITTED a later statement sees every lease committed before the lock was granted;
//! a count in the locking statement would read as of its start), leases what the grant allows,
//! writes the bucket back and commits: leases of one limited queue take turns on the row, so no
//! two servers can both take the last token or the last slot. An enqueue into a queue with a
//! `max_depth` takes the same lock, counts the queue's jobs and inserts in one transaction, so
//! two servers cannot both fill the last places. Queues without limits never touch the table.

use onceq_core::flow::{self, Grant, RateLimit};
use onceq_core::metrics as names;
use onceq_core::{QueueConfig, QueueName};
use sqlx::PgConnection;

/// Locks queue `$1`'s flow row, creating it with `tat` `$2` (a full bucket), and returns its `tat`.
pub(crate) const FLOW_LOCK: &str = r#"
INSERT INTO {s}.flow_buckets (queue_id, tat) VALUES ($1, $2)
ON CONFLICT (queue_id) DO UPDATE SET tat = {s}.flow_buckets.tat
RETURNING tat
"#;

/// Live leases of queue `$1` at `$2` (through the `jobs_leased` index).
const LIVE_LEASES: &str = "SELECT count(*) FROM {s}.jobs WHERE queue_id = $1 AND state = 2 AND lease_expires_at > $2";

/// Ready jobs of queue `$1`, counted up to `$2`.
const READY_UP_TO: &str =
    "SELECT count(*) FROM (SELECT 1 FROM {s}.jobs WHERE queue_id = $1 AND state = 1 LIMIT $2) ready";

/// Jobs of queue `$1` that count toward its depth (ready, scheduled, leased, blocked), up to `$2`.
const DEPTH_UP_TO: &str =
    "SELECT count(*) FROM (SELECT 1 FROM {s}.jobs WHERE queue_id = $1 AND state IN (0, 1, 2, 4) LIMIT $2) held";

/// Writes queue `$1`'s bucket back.
const FLOW_SAVE: &str = "UPDATE {s}.flow_buckets SET tat = $2 WHERE queue_id = $1";

/// The statements of this module with the schema filled in.
pub(crate) struct FlowSql {
    pub lock: String,
    live: String,
    ready: String,
    pub depth: String,
    save: String,
}

impl FlowSql {
    pub(crate) fn new(fill: impl Fn(&str) -> String) -> Self {
        FlowSql {
            lock: fill(FLOW_LOCK),
            live: fill(LIVE_LEASES),
            ready: fill(READY_UP_TO),
            depth: fill(DEPTH_UP_TO),
            save: fill(FLOW_SAVE),
        }
    }
}

/// A lease's grant, taken under the queue's flow lock in transaction `tx`.
pub(crate) struct Granted {
    pub grant: Grant,
    /// The bucket's `tat` as locked.
    tat: i64,
}

/// Locks queue `queue_id`'s flow row in `tx` and works out what a lease of `want` jobs at
/// `now` may take; counts the jobs held back.
pub(crate) async fn grant(
    tx: &mut PgConnection,
    sql: &FlowSql,
    name: &QueueName,
    queue_id: i64,
    config: &QueueConfig,
    now: i64,
    want: u32,
) -> Result<Granted, sqlx::Error> {
    let full = config.rate_limit.as_ref().map_or(0, |rate| rate.full_tat(now));
    let tat: i64 = sqlx::query_scalar(&sql.lock).bind(queue_id).bind(full).fetch_one(&mut *tx).await?;
    let live: i64 = match config.max_in_flight {
        Some(_) => sqlx::query_scalar(&sql.live).bind(queue_id).bind(now).fetch_one(&mut *tx).await?,
        None => 0,
    };
    let rate = config.rate_limit.as_ref().map(|rate| (rate, tat));
    let grant = flow::grant(rate, config.max_in_flight, u64::try_from(live).unwrap_or(0), now, want);
    if let Some(held_by) = grant.held_by {
        let ready: i64 =
            sqlx::query_scalar(&sql.ready).bind(queue_id).bind(i64::from(want)).fetch_one(&mut *tx).await?;
        let held = u32::try_from(ready).unwrap_or(0).saturating_sub(grant.jobs);
        if held > 0 {
            metrics::counter!(names::FLOW_HELD_BACK, "queue" => name.to_string(), "limit" => held_by.as_str())
                .increment(u64::from(held));
        } else {
            // Nothing ready was held back: the lease is not waiting for a limit.
            return Ok(Granted { grant: Grant { jobs: grant.jobs, held_by: None }, tat });
        }
    }
    Ok(Granted { grant, tat })
}

/// Writes back the bucket after a lease at `now` took `taken` jobs of its grant.
pub(crate) async fn taken(
    tx: &mut PgConnection,
    sql: &FlowSql,
    queue_id: i64,
    rate: Option<&RateLimit>,
    granted: &Granted,
    now: i64,
    taken: u32,
) -> Result<(), sqlx::Error> {
    let Some(rate) = rate else { return Ok(()) };
    if taken == 0 {
        return Ok(());
    }
    let tat = rate.after(granted.tat, now, taken);
    sqlx::query(&sql.save).bind(queue_id).bind(tat).execute(&mut *tx).await?;
    Ok(())
}

/// Milliseconds until the bucket of a lease held back by its rate limit grants a job.
pub(crate) fn retry_ms(config: &QueueConfig, granted: &Granted, now: i64) -> Option<u64> {
    match granted.grant.held_by? {
        flow::HeldBy::Rate => Some(config.rate_limit.as_ref()?.next_token_ms(granted.tat, now).max(1)),
        flow::HeldBy::InFlight | flow::HeldBy::RatePerKey | flow::HeldBy::InFlightPerKey => None,
    }
}

/// How far an enqueue's count of a queue's jobs goes: one past its `max_depth` tells whether
/// any room is left.
pub(crate) fn depth_bound(config: &QueueConfig) -> i64 {
    config.max_depth.map_or(i64::MAX, |max| i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX))
}
