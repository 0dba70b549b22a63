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
//!
//! Per-key limits (`rate_limit_by`, `max_in_flight_per_key`) are taken under the same lock: the
//! lease reads up to [`flow::key_scan_rows`] candidates (id, ordering key, headers) in lease
//! order, counts each key's live leases, reads the candidates' keys' buckets from
//! `flow_key_buckets` (a key without a row reads the queue's `key_floor`, the greatest `tat` a
//! sweep deleted: a bucket as full as any deleted one), picks with
//! [`flow::pick_by_key`], leases the picked ids, and writes their keys' buckets back; then it
//! deletes up to [`FLOW_KEY_SWEEP_MAX`] refilled buckets of the queue (they equal no row).

use std::collections::HashMap;

use onceq_core::flow::{self, Grant, KeyPick, RateLimit};
use onceq_core::limits::FLOW_KEY_SWEEP_MAX;
use onceq_core::metrics as names;
use onceq_core::{Headers, QueueConfig, QueueName};
use sqlx::{PgConnection, Row};

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

/// Candidates of a lease of queue `$1` under per-key limits, up to `$2`, in lease order.
const KEY_CANDIDATES: &str = "SELECT id, ordering_key, headers FROM {s}.jobs WHERE queue_id = $1 AND state = 1 \
     ORDER BY priority DESC, run_at, id LIMIT $2";

/// The same for a group lease, from partitions `$3` only: rank 0 of every partition before rank
/// 1 of any, as the group lease takes them.
const KEY_CANDIDATES_IN: &str = r#"
SELECT c.id, c.ordering_key, c.headers FROM unnest($3::int4[]) AS p (partition) CROSS JOIN LATERAL (
    SELECT id, ordering_key, headers, priority, run_at,
           row_number() OVER (ORDER BY priority DESC, run_at, id) AS rank
    FROM {s}.jobs WHERE queue_id = $1 AND state = 1 AND partition = p.partition
    ORDER BY priority DESC, run_at, id LIMIT $2) c
ORDER BY c.rank, c.priority DESC, c.run_at, c.id LIMIT $2
"#;

/// The ordering keys and headers of queue `$1`'s live leases at `$2`.
const LIVE_KEYS: &str =
    "SELECT ordering_key, headers FROM {s}.jobs WHERE queue_id = $1 AND state = 2 AND lease_expires_at > $2";

/// The buckets of queue `$1`'s keys `$2`.
const KEY_TATS: &str = "SELECT key, tat FROM {s}.flow_key_buckets WHERE queue_id = $1 AND key = ANY ($2::text[])";

/// Writes queue `$1`'s buckets of keys `$2` back with `tat`s `$3`.
const KEY_SAVE: &str = r#"
INSERT INTO {s}.flow_key_buckets (queue_id, key, tat) SELECT $1, k, t FROM unnest($2::text[], $3::int8[]) AS u (k, t)
ON CONFLICT (queue_id, key) DO UPDATE SET tat = excluded.tat
"#;

/// Queue `$1`'s `key_floor`: the `tat` of a key without a row (the greatest `tat` a sweep deleted).
const KEY_FLOOR: &str = "SELECT key_floor FROM {s}.flow_buckets WHERE queue_id = $1";

/// Deletes up to `$3` of queue `$1`'s buckets that have refilled at `$2` (through
/// `flow_key_buckets_refilled`), and raises the queue's `key_floor` to the greatest `tat` deleted:
/// a key without a row then reads exactly the bucket it had, also for a lease on another server
/// whose clock reading is earlier than this one's.
const KEY_SWEEP: &str = r#"
WITH gone AS (
    DELETE FROM {s}.flow_key_buckets WHERE queue_id = $1 AND key IN (
        SELECT key FROM {s}.flow_key_buckets WHERE queue_id = $1 AND tat <= $2 LIMIT $3)
    RETURNING tat
)
UPDATE {s}.flow_buckets SET key_floor = greatest(key_floor, (SELECT max(tat) FROM gone))
WHERE queue_id = $1 AND EXISTS (SELECT 1 FROM gone)
"#;

/// A lease of a queue whose only limit is its rate limit, in one statement (see
/// [`HotStatement::RateLease`](crate::sql::HotStatement::RateLease) for its parameters): the
/// bucket row's lock is taken by `FOR UPDATE` and held only while the statement runs, and the
/// statement's commit does not wait for the WAL's flush (`set_config(..., true)` sets
/// `synchronous_commit` for its own implicit transaction, as `SET LOCAL` does for a transaction
/// block), so the leases of one limited queue take turns for one statement, not for a
/// transaction of five and the disk. Two leases cannot both spend the last token: the second
/// waits for the row, and READ COMMITTED re-reads it as the first left it. The jobs are picked
/// before the grant is known (`{pick}`, as every lease picks them), and only the first
/// `granted` of them are leased, and of those only the ones whose payloads before them stay under
/// `{reply_bytes}`; the others stay ready.
const RATE_LEASE: &str = r#"
WITH sc AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
b AS (SELECT tat FROM {s}.flow_buckets WHERE queue_id = $2 FOR UPDATE),
{pick},
g AS (
    SELECT b.tat, (SELECT count(*) FROM numbered WHERE before < {reply_bytes}) AS ready,
           CASE WHEN r.room < $5::int8 THEN 0 ELSE least(r.room / $5::int8, {limit}) END AS granted
    FROM b CROSS JOIN sc
    CROSS JOIN LATERAL (SELECT $1::int8 * 1000000 + $6::int8 * $5::int8 - greatest(b.tat, $1::int8 * 1000000) AS room) r
),
leased AS (
    UPDATE {s}.jobs j
    SET state = 2, attempt = j.attempt + 1, lease_token = ($3::bytea[])[n.rn::int4], lease_expires_at = $4, leased_at = $1
    FROM numbered n, g
    WHERE j.id = n.id AND n.rn <= g.granted AND n.before < {reply_bytes}
    RETURNING j.id, j.priority, j.run_at, j.enqueued_at, j.attempt, j.max_attempts, j.dedup_id, j.headers, j.payload,
              j.lease_token, j.ordering_key, j.partition
),
moved AS (
    UPDATE {s}.flow_buckets f
    SET tat = greatest(g.tat, $1::int8 * 1000000) + (SELECT count(*) FROM leased) * $5::int8
    FROM g
    WHERE f.queue_id = $2 AND EXISTS (SELECT 1 FROM leased)
)
SELECT l.*, g.granted, g.ready, g.tat AS bucket_tat FROM g LEFT JOIN leased l ON true
"#;

/// Creates queue `$1`'s bucket row, full at `$2`, unless it exists: before a
/// [`RATE_LEASE`], which locks the row but does not create it.
pub(crate) const FLOW_CREATE: &str =
    "INSERT INTO {s}.flow_buckets (queue_id, tat) VALUES ($1, $2) ON CONFLICT (queue_id) DO NOTHING";

/// [`RATE_LEASE`] for up to `max_jobs` jobs, before the schema is filled in.
pub(crate) fn rate_lease_template(max_jobs: u32) -> String {
    crate::sql::with_pick(RATE_LEASE, max_jobs)
}

/// Whether a lease of a queue with `config` takes the one-statement path of [`RATE_LEASE`]: a
/// rate limit and no other lease limit, and a lease that keeps its jobs.
pub(crate) fn rate_only(config: &QueueConfig) -> bool {
    config.queue_rate().is_some()
        && config.max_in_flight.is_none()
        && !config.keyed_limits()
        && config.delivery != onceq_core::DeliveryMode::AtMostOnce
}

/// The statements of this module with the schema filled in.
pub(crate) struct FlowSql {
    pub lock: String,
    live: String,
    ready: String,
    pub depth: String,
    save: String,
    key_candidates: String,
    key_candidates_in: String,
    live_keys: String,
    key_tats: String,
    key_floor: String,
    key_save: String,
    key_sweep: String,
}

impl FlowSql {
    pub(crate) fn new(fill: impl Fn(&str) -> String) -> Self {
        FlowSql {
            lock: fill(FLOW_LOCK),
            live: fill(LIVE_LEASES),
            ready: fill(READY_UP_TO),
            depth: fill(DEPTH_UP_TO),
            save: fill(FLOW_SAVE),
            key_candidates: fill(KEY_CANDIDATES),
            key_candidates_in: fill(KEY_CANDIDATES_IN),
            live_keys: fill(LIVE_KEYS),
            key_tats: fill(KEY_TATS),
            key_floor: fill(KEY_FLOOR),
            key_save: fill(KEY_SAVE),
            key_sweep: fill(KEY_SWEEP),
        }
    }
}

/// A key's row in `flow_key_buckets`: `=` and the value, or empty for the jobs without the key
/// (a header's value may itself be empty).
fn bucket_key(key: Option<&str>) -> String {
    key.map_or_else(String::new, |k| format!("={k}"))
}

/// A job's headers from their stored JSON.
fn headers_of(text: Option<&str>) -> Result<Headers, sqlx::Error> {
    match text {
        None => Ok(Headers::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e))),
    }
}

/// Under the queue's flow lock in `tx` (taken by [`grant`]), picks up to `want` of queue
/// `queue_id`'s ready jobs (of `partitions` only, for a group lease) that its per-key limits
/// allow at `now`, and spends their keys' tokens. Returns the picked ids, in lease order.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn key_pick(
    tx: &mut PgConnection,
    sql: &FlowSql,
    name: &QueueName,
    queue_id: i64,
    config: &QueueConfig,
    now: i64,
    want: u32,
    partitions: Option<Vec<i32>>,
) -> Result<(Vec<i64>, KeyPick), sqlx::Error> {
    let scan = i64::from(flow::key_scan_rows(want));
    let rows = match partitions {
        None => sqlx::query(&sql.key_candidates).bind(queue_id).bind(scan).fetch_all(&mut *tx).await?,
        Some(partitions) => {
            sqlx::query(&sql.key_candidates_in).bind(queue_id).bind(scan).bind(partitions).fetch_all(&mut *tx).await?
        }
    };
    let key_by = config.in_flight_key_by();
    let mut ids = Vec::with_capacity(rows.len());
    let mut keys: Vec<Option<String>> = Vec::with_capacity(rows.len());
    for row in &rows {
        ids.push(row.try_get::<i64, _>(0)?);
        let ordering_key: Option<String> = row.try_get(1)?;
        let headers = headers_of(row.try_get::<Option<String>, _>(2)?.as_deref())?;
        keys.push(key_by.key_of(ordering_key.as_deref(), &headers).map(str::to_string));
    }
    let mut live: HashMap<String, u64> = HashMap::new();
    if config.max_in_flight_per_key.is_some() && !rows.is_empty() {
        for row in sqlx::query(&sql.live_keys).bind(queue_id).bind(now).fetch_all(&mut *tx).await? {
            let ordering_key: Option<String> = row.try_get(0)?;
            let headers = headers_of(row.try_get::<Option<String>, _>(1)?.as_deref())?;
            if let Some(key) = key_by.key_of(ordering_key.as_deref(), &headers) {
                *live.entry(key.to_string()).or_insert(0) += 1;
            }
        }
    }
    let rate = config.key_rate();
    let mut tats: HashMap<String, i64> = HashMap::new();
    let mut floor = 0;
    if rate.is_some() && !rows.is_empty() {
        floor = sqlx::query_scalar(&sql.key_floor).bind(queue_id).fetch_one(&mut *tx).await?;
        let mut wanted: Vec<String> = keys.iter().map(|k| bucket_key(k.as_deref())).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for row in sqlx::query(&sql.key_tats).bind(queue_id).bind(&wanted).fetch_all(&mut *tx).await? {
            tats.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    let full = rate.map_or(0, |r| r.full_tat(now));
    let key_refs: Vec<Option<&str>> = keys.iter().map(Option::as_deref).collect();
    let pick = flow::pick_by_key(
        &key_refs,
        want,
        now,
        rate,
        config.max_in_flight_per_key,
        |key| tats.get(&bucket_key(key)).copied().unwrap_or(floor),
        |key| live.get(key).copied().unwrap_or(0),
    );
    if !pick.buckets.is_empty() {
        let (names_, values): (Vec<String>, Vec<i64>) =
            pick.buckets.iter().map(|(k, tat)| (bucket_key(k.as_deref()), *tat)).unzip();
        sqlx::query(&sql.key_save).bind(queue_id).bind(&names_).bind(&values).execute(&mut *tx).await?;
    }
    if rate.is_some() {
        let sweep = i64::from(FLOW_KEY_SWEEP_MAX);
        sqlx::query(&sql.key_sweep).bind(queue_id).bind(full).bind(sweep).execute(&mut *tx).await?;
    }
    if let Some(held_by) = pick.held_by {
        metrics::counter!(names::FLOW_HELD_BACK, "queue" => name.to_string(), "limit" => held_by.as_str())
            .increment(u64::from(pick.held));
    }
    let picked = pick.picked.iter().map(|&i| ids[i]).collect();
    Ok((picked, pick))
}

/// `template` (a lease statement) taking the jobs of ids `$param` instead of the queue's next.
pub(crate) fn by_ids(template: &str, param: usize) -> String {
    let pick = "WHERE queue_id = $2 AND state = 1";
    debug_assert_eq!(template.matches(pick).count(), 1, "a lease statement picks its jobs in one place");
    template.replacen(pick, &format!("WHERE id = ANY (${param}::int8[]) AND queue_id = $2 AND state = 1"), 1)
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
    let full = config.queue_rate().map_or(0, |rate| rate.full_tat(now));
    let tat: i64 = sqlx::query_scalar(&sql.lock).bind(queue_id).bind(full).fetch_one(&mut *tx).await?;
    let live: i64 = match config.max_in_flight {
        Some(_) => sqlx::query_scalar(&sql.live).bind(queue_id).bind(now).fetch_one(&mut *tx).await?,
        None => 0,
    };
    let rate = config.queue_rate().map(|rate| (rate, tat));
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
        flow::HeldBy::Rate => Some(config.queue_rate()?.next_token_ms(granted.tat, now).max(1)),
        flow::HeldBy::InFlight | flow::HeldBy::RatePerKey | flow::HeldBy::InFlightPerKey => None,
    }
}

/// How far an enqueue's count of a queue's jobs goes: one past its `max_depth` tells whether
/// any room is left.
pub(crate) fn depth_bound(config: &QueueConfig) -> i64 {
    config.max_depth.map_or(i64::MAX, |max| i64::try_from(max.saturating_add(1)).unwrap_or(i64::MAX))
}
