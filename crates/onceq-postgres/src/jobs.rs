//! Jobs: enqueue, lease (with long polls), the settles (ack, nack, extend, fail, release) and
//! reading one job. Each batch is one statement over arrays (`unnest ... WITH ORDINALITY`), so a
//! batch of a thousand costs about what a batch of one does.
//!
//! Settle batches are judged item by item. A batch that names one job twice is run in rounds
//! (the k-th mention of each job in round k), so that each item sees the effect of the items
//! before it, exactly as if they ran one by one.

use crate::conns::pooled;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use onceq_core::group::{self, GroupName, MemberId};
use onceq_core::limits::PARTITIONS_MAX;
use onceq_core::metrics as names;
use onceq_core::ordering::partition_of;
use onceq_core::store::validate;
use onceq_core::{
    truncate_error_text, AttemptError, DeliveryMode, Enqueued, Error, Extend, Fail, Headers, ItemResults, Job, JobId,
    JobState, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, Nack, NackOutcome, NewJob, Ordering, QueueConfig,
    QueueName, Release, Result, Schedule, Timestamp,
};
use rand::RngCore;
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::time::Instant;

use crate::due::{decode, Scope};
use crate::keys::{with_move_on, CLAIM_KEYS};
use crate::schema::state;
use crate::sql::{HotStatement, ITEMS_EXACT_MAX};
use crate::wait::{SleepStep, REGISTRATION_MS, SLEEP_BLOCKED_MS, TIMER_DUE_SLEEP_MS, TIMER_RECHECK_MS_MAX};
use crate::{job_id, parse_config, plus_ms, row_id, Conn, KnownQueue, PgStore};

/// Tries at resolving the queue of an enqueue that finds it deleted under its feet.
pub(crate) const QUEUE_RESOLVE_TRIES_MAX: usize = 4;

/// Deletes at most `$1` records whose job is gone (acked, purged, leased at most once): job ids
/// are not reused, so such a record can never hold its key again. Run seldom (see `sweep`); here, beside the sweep, rather than in
/// `unique`, which builds on this module.
pub(crate) const UNIQUE_SWEEP_GONE: &str = "DELETE FROM {s}.unique_keys WHERE ctid = ANY (ARRAY( \
                                             SELECT k.ctid FROM {s}.unique_keys k WHERE k.expires_at IS NULL \
                                             AND NOT EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.id = k.job_id) \
                                             LIMIT $1 FOR UPDATE SKIP LOCKED))";

/// Whether `job` is unique by its dedup id: then its dedup id is judged by the unique rule, and
/// the plain enqueue does not claim it for the queue's dedup window.
pub(crate) fn by_dedup_id(job: &NewJob) -> bool {
    job.unique.is_some_and(|u| u.by == onceq_core::UniqueBy::DedupId)
}

/// How often (store-clock ms) expired dedup ids and idempotency records are swept.
const SWEEP_INTERVAL_MS: i64 = 1_000;
/// How often (store-clock ms) the unique keys of jobs that are gone are swept: that reads
/// every key held by a job's state, so seldom.
const UNIQUE_SWEEP_EVERY: i64 = 60;
/// Most expired rows of each kind one sweep deletes.
const SWEEP_BATCH_MAX: i64 = 1_000;

/// Sends the wake-ups for the jobs a statement moved (see `wait`), through the schema's `wake`,
/// which notifies only while a lease of the queue sleeps (`wait`, "Sleeping"): its CTE
/// `{changed}` returns `queue_id, state, run_at` of each moved job. The statement must read
/// `notified`. Paused queues too: their leases do not register, but `wake` takes the queue's
/// wake lock, so that a lease registering after a resume cannot sleep through the commit of an
/// enqueue made while the queue was paused.
const NOTIFY_CHANGED: &str = r#"
notes AS (
    SELECT q.id, q.name, count(*) FILTER (WHERE c.state = 1) AS ready, min(c.run_at) FILTER (WHERE c.state = 0) AS next
    FROM {changed} c JOIN {s}.queues q ON q.id = c.queue_id
    GROUP BY q.id, q.name
),
notified AS (
    SELECT {s}.wake('{channel}', id, 'r ' || ready || ' ' || name) FROM notes WHERE ready > 0
    UNION ALL
    SELECT {s}.wake('{channel}', id, 's ' || next || ' ' || name) FROM notes WHERE next IS NOT NULL
)"#;

/// `template` with `{notify:<cte>}` replaced by [`NOTIFY_CHANGED`] over that CTE.
pub(crate) fn with_notify(template: &str, changed: &str) -> String {
    template.replace(&format!("{{notify:{changed}}}"), &NOTIFY_CHANGED.replace("{changed}", changed))
}

/// Registers store `$2` as having a lease of queue `$1` about to sleep, for `$3` seconds from
/// now (see `wait`, "Sleeping").
const SLEEPER_REGISTER: &str = "INSERT INTO {s}.sleepers (queue_id, store, until) \
                                VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
                                ON CONFLICT (queue_id, store) DO UPDATE SET until = EXCLUDED.until";

/// Whether no transaction that may have missed a registration for queue `$1` is still open.
const MAY_SLEEP: &str = "SELECT {s}.may_sleep($1)";

/// What a lease about to sleep does (see [`PgStore::before_sleep`]).
enum BeforeSleep {
    Sleep,
    LookAgain,
    Blocked,
}

const QUEUE_LOOKUP: &str = "SELECT t.now, q.id, q.config::text AS config \
                            FROM (SELECT {now} AS now) t LEFT JOIN {s}.queues q ON q.name = $2";

/// Creates a queue, and wakes the leases waiting for it to exist (they wait unregistered, see
/// `wait`, "Sleeping").
const QUEUE_CREATE: &str = "INSERT INTO {s}.queues (name, config, created_at) VALUES ($2, $3::jsonb, $1) \
                            ON CONFLICT (name) DO NOTHING \
                            RETURNING id, config::text AS config, \
                                      pg_notify('{channel}', 'r 2147483647 ' || name)::text AS notified";

/// The enqueue of a batch. `$1` now (NULL: the database's clock), `$2..$8` the jobs (a NULL
/// run_at is "now"), `$9` the queue, `$10` how long dedup ids claimed now live (ms), `$11` the
/// queue's config as the caller knows it (NULL: any). The queue row is share-locked so that a
/// concurrent `queue_delete` either waits for this enqueue or makes it insert nothing; it inserts
/// nothing too when the queue's config is no longer `$11`. Either way the caller resolves the
/// queue again. Returns `now` on every row, for the caller's bookkeeping.
/// A dedup id is claimed with `ON CONFLICT DO UPDATE`, which takes the expired entry over and
/// keeps a live one: either way it returns the entry's job id, so a duplicate learns its
/// original's id even when that was committed a moment ago by a concurrent enqueue.
const ENQUEUE: &str = r#"
WITH t AS (SELECT {now} AS now),
input AS (
    SELECT * FROM unnest($2::bytea[], $3::text[], $4::int4[], $5::int8[], $6::int4[], $7::text[], $8::bool[])
        WITH ORDINALITY AS i(payload, headers, priority, run_at, max_attempts, dedup_id, dedup_claim, ord){cap}
),
locked AS (SELECT id FROM {s}.queues WHERE id = $9 AND ($11::text IS NULL OR config::text = $11) FOR KEY SHARE),
numbered AS (
    SELECT i.payload, i.headers, i.priority, coalesce(i.run_at, t.now) AS run_at, i.max_attempts, i.dedup_id,
           i.dedup_claim, i.ord, nextval('{s}.job_ids') AS id
    FROM input i CROSS JOIN locked CROSS JOIN t
),
claimed AS (
    INSERT INTO {s}.dedup AS d (queue_id, dedup_id, job_id, expires_at)
    SELECT $9, dedup_id, id, least(t.now, 9223372036854775807 - $10::int8) + $10::int8
    FROM numbered CROSS JOIN t WHERE dedup_claim
    ON CONFLICT (queue_id, dedup_id) DO UPDATE SET
        job_id = CASE WHEN d.expires_at <= (SELECT now FROM t) THEN EXCLUDED.job_id ELSE d.job_id END,
        expires_at = CASE WHEN d.expires_at <= (SELECT now FROM t) THEN EXCLUDED.expires_at ELSE d.expires_at END
    RETURNING d.dedup_id, d.job_id
),
created AS (
    INSERT INTO {s}.jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id,
                          headers, payload)
    SELECT n.id, $9, CASE WHEN n.run_at > t.now THEN 0 ELSE 1 END, n.priority, n.run_at, t.now, 0, n.max_attempts,
           n.dedup_id, n.headers, n.payload
    FROM numbered n CROSS JOIN t LEFT JOIN claimed c ON n.dedup_claim AND c.dedup_id = n.dedup_id
    WHERE NOT n.dedup_claim OR c.job_id = n.id
    RETURNING queue_id, state, run_at
),
{notify:created}
SELECT n.ord, n.id, c.job_id AS original, (SELECT count(*) FROM notified) AS notified, (SELECT now FROM t) AS now,
       {relax_column}
FROM numbered n LEFT JOIN claimed c ON n.dedup_claim AND c.dedup_id = n.dedup_id
ORDER BY n.ord
"#;

/// [`ENQUEUE`] of a batch into a `per_key` queue, or of jobs with ordering keys: `$12` the jobs'
/// ordering keys (`text[]`), `$13` each keyed job's partition (`int4[]`; NULL in an unordered
/// queue), `$14` the queue's partition count if it is `per_key`, else NULL. In a `per_key` queue
/// the jobs it creates claim their keys (see the `keys` module): each that is not its key's head
/// is stored blocked, and a key-less job's partition is its id modulo `$14`.
const ENQUEUE_KEYED: &str = r#"
WITH t AS (SELECT {now} AS now),
input AS (
    SELECT * FROM unnest($2::bytea[], $3::text[], $4::int4[], $5::int8[], $6::int4[], $7::text[], $8::bool[],
                         $12::text[], $13::int4[])
        WITH ORDINALITY AS i(payload, headers, priority, run_at, max_attempts, dedup_id, dedup_claim, ordering_key,
                             key_partition, ord){cap}
),
locked AS (SELECT id FROM {s}.queues WHERE id = $9 AND ($11::text IS NULL OR config::text = $11) FOR KEY SHARE),
numbered AS (
    SELECT i.payload, i.headers, i.priority, coalesce(i.run_at, t.now) AS run_at, i.max_attempts, i.dedup_id,
           i.dedup_claim, i.ordering_key, i.key_partition, i.ord, nextval('{s}.job_ids') AS id
    FROM input i CROSS JOIN locked CROSS JOIN t
),
claimed AS (
    INSERT INTO {s}.dedup AS d (queue_id, dedup_id, job_id, expires_at)
    SELECT $9, dedup_id, id, least(t.now, 9223372036854775807 - $10::int8) + $10::int8
    FROM numbered CROSS JOIN t WHERE dedup_claim
    ON CONFLICT (queue_id, dedup_id) DO UPDATE SET
        job_id = CASE WHEN d.expires_at <= (SELECT now FROM t) THEN EXCLUDED.job_id ELSE d.job_id END,
        expires_at = CASE WHEN d.expires_at <= (SELECT now FROM t) THEN EXCLUDED.expires_at ELSE d.expires_at END
    RETURNING d.dedup_id, d.job_id
),
kept AS (
    SELECT n.* FROM numbered n LEFT JOIN claimed c ON n.dedup_claim AND c.dedup_id = n.dedup_id
    WHERE NOT n.dedup_claim OR c.job_id = n.id
),
heads AS ({claim_keys}),
created AS (
    INSERT INTO {s}.jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id,
                          headers, payload, ordering_key, partition)
    SELECT n.id, $9, CASE WHEN h.head_id <> n.id THEN 4 WHEN n.run_at > t.now THEN 0 ELSE 1 END, n.priority,
           n.run_at, t.now, 0, n.max_attempts, n.dedup_id, n.headers, n.payload, n.ordering_key,
           CASE WHEN $14::int4 IS NULL THEN NULL WHEN n.ordering_key IS NULL THEN (n.id % $14::int4)::int4
                ELSE n.key_partition END
    FROM kept n CROSS JOIN t LEFT JOIN heads h ON h.ordering_key = n.ordering_key
    RETURNING queue_id, state, run_at
),
{notify:created}
SELECT n.ord, n.id, c.job_id AS original, (SELECT count(*) FROM notified) AS notified, (SELECT now FROM t) AS now,
       {relax_column}
FROM numbered n LEFT JOIN claimed c ON n.dedup_claim AND c.dedup_id = n.dedup_id
ORDER BY n.ord
"#;

/// Deletes expired dedup ids (`$1` now, `$2` most rows) and idempotency keys (`$3` how long an
/// in-progress claim is kept past its expiry). Rows another transaction holds are skipped, not
/// waited for: one may be a caller's transaction that waits for this sweep (see `transaction`).
/// The rows are picked once into an array and deleted by row address or key: as `IN (...)`,
/// statistics taken while the table was nearly empty gave a nested loop over every row of it
/// (1,000 expired ids out of 100,000 took 7.1 s; 9 ms this way). The row addresses stay put:
/// the rows are locked. Sleeper registrations that lapsed a minute ago go too (their stores died
/// or stopped sleeping): `sleepers` holds a row per store and queue, and only autocommit
/// statements write it, so all of them at once, waiting for none for long.
const SWEEP: &str = r#"
WITH dedup AS (
    DELETE FROM {s}.dedup WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {s}.dedup WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
),
idempotency AS (
    DELETE FROM {s}.idempotency WHERE key = ANY (ARRAY(
        SELECT key FROM {s}.idempotency WHERE until <= $1 AND (state = 1 OR until <= $1 - $3) LIMIT $2
        FOR UPDATE SKIP LOCKED))
),
commits AS (
    DELETE FROM {s}.commits WHERE commit_id = ANY (ARRAY(
        SELECT commit_id FROM {s}.commits WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
),
unique_windows AS (
    DELETE FROM {s}.unique_keys WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM {s}.unique_keys WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED))
),
sleepers AS (DELETE FROM {s}.sleepers WHERE until < clock_timestamp() - interval '1 minute')
SELECT 1
"#;

/// Claims up to `{limit}` ready jobs of queue `$2` in lease order, skipping rows another lease
/// holds. The limit is a literal, not a parameter: with `LIMIT $3` PostgreSQL's generic plan
/// guesses that a tenth of the table is wanted, costs it above the custom plans and so plans
/// every lease afresh, which took more CPU than running it (one cached statement per batch size
/// is the price; sqlx keeps up to 100 per connection). Of the jobs picked, those whose payloads
/// before them in lease order reach `{reply_bytes}` (`LEASE_REPLY_BYTES_MAX`) stay ready.
const LEASE: &str = r#"
WITH {pick}
UPDATE {s}.jobs j
SET state = 2, attempt = j.attempt + 1, lease_token = ($3::bytea[])[n.rn::int4], lease_expires_at = $4, leased_at = $1
FROM numbered n
WHERE j.id = n.id AND n.before < {reply_bytes}
RETURNING j.id, j.priority, j.run_at, j.enqueued_at, j.attempt, j.max_attempts, j.dedup_id, j.headers, j.payload,
          j.lease_token, j.ordering_key, j.partition, {relax_column}
"#;

/// The lease of an `at_most_once` queue: the lease is the ack, so the jobs go as they are handed
/// out, and their keys move on. `$1` now, `$2` queue, `{limit}` most jobs (a literal, as in
/// [`LEASE`]).
const LEASE_AND_DELETE: &str = r#"
WITH t AS (SELECT $1::int8 AS now),
{pick},
gone AS (
    DELETE FROM {s}.jobs j USING numbered p WHERE j.id = p.id AND p.before < {reply_bytes}
    RETURNING j.id, j.queue_id, j.priority, j.run_at, j.enqueued_at, j.attempt + 1 AS attempt, j.max_attempts,
              j.dedup_id, j.headers, j.payload, j.error_count, j.ordering_key, j.partition
),
forgotten AS (DELETE FROM {s}.job_errors e USING gone g WHERE e.job_id = g.id AND g.error_count > 0),
{move_on:gone}
SELECT id, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id, headers, payload, NULL::bytea AS lease_token,
       ordering_key, partition, (SELECT promoted FROM moved_on) AS promoted, {relax_column}
FROM gone
"#;

/// When the next scheduled job of queue `$1` comes due or its next lease expires.
const NEXT_DUE: &str = r#"
SELECT least((SELECT min(run_at) FROM {s}.jobs WHERE queue_id = $1 AND state = 0),
             (SELECT min(lease_expires_at) FROM {s}.jobs WHERE queue_id = $1 AND state = 2)) AS due
"#;

/// The columns of a job as `job_get` and `dead_list` return it (`j` jobs, `q` queues).
pub(crate) const JOB_COLUMNS: &str = r#"
j.id, q.name, j.state, j.attempt, j.max_attempts, j.priority, j.payload, j.headers, j.dedup_id, j.ordering_key,
j.partition, j.enqueued_at, j.run_at, j.lease_expires_at, j.cancelled_at,
CASE WHEN j.error_count > 0 THEN ARRAY(SELECT e.attempt FROM {s}.job_errors e WHERE e.job_id = j.id ORDER BY e.n) END
    AS error_attempts,
CASE WHEN j.error_count > 0 THEN ARRAY(SELECT e.error FROM {s}.job_errors e WHERE e.job_id = j.id ORDER BY e.n) END
    AS error_texts,
CASE WHEN j.error_count > 0 THEN ARRAY(SELECT e.at FROM {s}.job_errors e WHERE e.job_id = j.id ORDER BY e.n) END
    AS error_times
"#;

const JOB_GET: &str = "SELECT {columns} FROM {s}.jobs j JOIN {s}.queues q ON q.id = j.queue_id WHERE j.id = $1";

/// Cancels job `$2` as of `$1`: a scheduled, ready or blocked job becomes cancelled (5), and a
/// ready or scheduled one, its key's head in a `per_key` queue, hands its key on; a leased one
/// is only marked (`cancelled_at`). Returns the state it was in (no row: no such job) and its
/// queue's name (for metrics).
const CANCEL: &str = r#"
WITH t AS (SELECT {now} AS now),
old AS (SELECT id, state FROM {s}.jobs WHERE id = $2 FOR UPDATE),
changed AS (
    UPDATE {s}.jobs j
    SET state = CASE WHEN o.state = 2 THEN 2 ELSE 5 END, cancelled_at = coalesce(j.cancelled_at, t.now)
    FROM old o, t
    WHERE j.id = o.id AND o.state IN (0, 1, 2, 4)
    RETURNING j.id, j.queue_id, j.ordering_key, j.partition, o.state AS was
),
leaving AS (SELECT * FROM changed WHERE was IN (0, 1)),
{move_on:leaving}
SELECT o.state AS was, q.name, (SELECT promoted FROM moved_on) AS promoted
FROM old o JOIN {s}.jobs j ON j.id = o.id JOIN {s}.queues q ON q.id = j.queue_id
"#;

/// An operator's delete of a job that is not leased (`Store::job_delete`): the row and its
/// errors go; a head (ready, scheduled, or dead with `dead_blocks_key`) hands its key on, a
/// blocked job (state 4) simply leaves the line. `was` tells the caller what it found.
const DELETE: &str = r#"
WITH t AS (SELECT {now} AS now),
old AS (SELECT id, state, queue_id FROM {s}.jobs WHERE id = $2 FOR UPDATE),
deleted AS (
    DELETE FROM {s}.jobs j USING old o
    WHERE j.id = o.id AND o.state <> 2
    RETURNING j.id, j.queue_id, j.ordering_key, j.partition, o.state AS was
),
forgotten AS (DELETE FROM {s}.job_errors e USING deleted d WHERE e.job_id = d.id),
leaving AS (SELECT * FROM deleted WHERE was IN (0, 1, 3)),
{move_on:leaving}
SELECT o.state AS was, q.name, (SELECT promoted FROM moved_on) AS promoted
FROM old o JOIN {s}.queues q ON q.id = o.queue_id
"#;

/// An operator's kill of a scheduled, ready or blocked job (`Store::job_kill`): it goes dead
/// with `$3` recorded as its current attempt's error; a head leaves its key as any job that
/// dies does (`dead_blocks_key` decides), a blocked one leaves the line.
const KILL: &str = r#"
WITH t AS (SELECT {now} AS now),
old AS (SELECT id, state, queue_id FROM {s}.jobs WHERE id = $2 FOR UPDATE),
killed AS (
    UPDATE {s}.jobs j SET state = 3, error_count = j.error_count + 1
    FROM old o
    WHERE j.id = o.id AND o.state IN (0, 1, 4)
    RETURNING j.id, j.queue_id, j.state, j.attempt, j.error_count, j.ordering_key, j.partition, o.state AS was
),
recorded AS (
    INSERT INTO {s}.job_errors (job_id, n, attempt, at, error)
    SELECT k.id, k.error_count, k.attempt, t.now, $3 FROM killed k CROSS JOIN t
),
heads AS (SELECT * FROM killed WHERE was IN (0, 1)),
{move_on_dead:heads}
SELECT o.state AS was, q.name, (SELECT promoted FROM moved_on) AS promoted
FROM old o JOIN {s}.queues q ON q.id = o.queue_id
"#;

/// The common tail of every settle statement: one row per item, in order, saying whether the
/// statement settled it (`done`), and if not whether the job existed (then the token was not its
/// live lease), with the queue for metrics. `{settled}` is the CTE of settled rows (`id`,
/// `queue_id`), `{extra}` more columns. `relaxed`: when the statement runs on its own (`{relax}`
/// a true parameter) and every job it settled is of a `relaxed` queue, it commits without
/// waiting for the WAL's flush (see [`crate::sql::RELAX`]).
const SETTLE_VERDICT: &str = r#"
SELECT i.ord, s.id IS NOT NULL AS done, ex.id IS NOT NULL AS existed, q.name AS queue,
       (SELECT set_config('synchronous_commit', 'off', true)
        WHERE {relax} AND EXISTS (SELECT 1 FROM {settled})
          AND NOT EXISTS (SELECT 1 FROM {settled} r JOIN {s}.queues rq ON rq.id = r.queue_id
                          WHERE rq.config->>'durability' IS DISTINCT FROM 'relaxed')) AS relaxed {extra}
FROM items i
LEFT JOIN {settled} s ON s.id = i.id
LEFT JOIN {s}.jobs ex ON ex.id = i.id
LEFT JOIN {s}.queues q ON q.id = coalesce(s.queue_id, ex.queue_id)
ORDER BY i.ord
"#;

const ACK: &str = r#"
WITH t AS (SELECT {now} AS now),
items AS (SELECT * FROM unnest($2::int8[], $3::bytea[]) WITH ORDINALITY AS i(id, token, ord){cap}),
acked AS (
    DELETE FROM {s}.jobs j USING items i, t
    WHERE j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > t.now
    RETURNING j.id, j.queue_id, j.error_count, j.leased_at, j.ordering_key, j.partition
),
forgotten AS (DELETE FROM {s}.job_errors e USING acked a WHERE e.job_id = a.id AND a.error_count > 0),
{move_on:acked}
{verdict:acked:, s.leased_at, (SELECT now FROM t) AS now, (SELECT promoted FROM moved_on) AS promoted}
"#;

const NACK_READ: &str = r#"
SELECT j.id, j.attempt, q.name, q.config::text AS config
FROM {s}.jobs j JOIN {s}.queues q ON q.id = j.queue_id
WHERE j.id = ANY($1)
"#;

const NACK: &str = r#"
WITH t AS (SELECT {now} AS now),
items AS (
    SELECT * FROM unnest($2::int8[], $3::bytea[], $4::int8[], $5::text[]) WITH ORDINALITY AS i(id, token, delay, error, ord){cap}
),
nacked AS (
    UPDATE {s}.jobs j
    SET state = CASE WHEN j.cancelled_at IS NOT NULL THEN 5 WHEN j.attempt >= j.max_attempts THEN 3
                     WHEN i.delay = 0 THEN 1 ELSE 0 END,
        run_at = CASE WHEN j.cancelled_at IS NOT NULL OR j.attempt >= j.max_attempts THEN j.run_at
                      ELSE t.now + i.delay END,
        lease_token = NULL, lease_expires_at = NULL, error_count = j.error_count + 1
    FROM items i, t
    WHERE j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > t.now
    RETURNING j.id, j.queue_id, j.state, j.run_at, j.attempt, j.error_count, j.ordering_key, j.partition
),
recorded AS (
    INSERT INTO {s}.job_errors (job_id, n, attempt, at, error)
    SELECT n.id, n.error_count, n.attempt, t.now, i.error FROM nacked n JOIN items i ON i.id = n.id CROSS JOIN t
),
{move_on_dead:nacked},
{notify:nacked}
{verdict:nacked:, s.state, s.run_at, (SELECT count(*) FROM notified) AS notified, (SELECT promoted FROM moved_on) AS promoted}
"#;

const EXTEND: &str = r#"
WITH t AS (SELECT {now} AS now),
items AS (SELECT * FROM unnest($2::int8[], $3::bytea[], $4::int8[]) WITH ORDINALITY AS i(id, token, timeout, ord){cap}),
extended AS (
    UPDATE {s}.jobs j SET lease_expires_at = t.now + i.timeout
    FROM items i, t
    WHERE j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > t.now
      AND j.cancelled_at IS NULL
    RETURNING j.id, j.queue_id, j.lease_expires_at
)
{verdict:extended:, s.lease_expires_at,
    (ex.state = 2 AND ex.lease_token = i.token AND ex.lease_expires_at > (SELECT now FROM t)
     AND ex.cancelled_at IS NOT NULL) AS cancelled}
"#;

const FAIL: &str = r#"
WITH t AS (SELECT {now} AS now),
items AS (SELECT * FROM unnest($2::int8[], $3::bytea[], $4::text[]) WITH ORDINALITY AS i(id, token, error, ord){cap}),
failed AS (
    UPDATE {s}.jobs j
    SET state = CASE WHEN j.cancelled_at IS NOT NULL THEN 5 ELSE 3 END, lease_token = NULL, lease_expires_at = NULL,
        error_count = j.error_count + 1
    FROM items i, t
    WHERE j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > t.now
    RETURNING j.id, j.queue_id, j.state, j.attempt, j.error_count, j.ordering_key, j.partition
),
recorded AS (
    INSERT INTO {s}.job_errors (job_id, n, attempt, at, error)
    SELECT f.id, f.error_count, f.attempt, t.now, i.error FROM failed f JOIN items i ON i.id = f.id CROSS JOIN t
),
{move_on_dead:failed}
{verdict:failed:, s.state, (SELECT promoted FROM moved_on) AS promoted}
"#;

const RELEASE: &str = r#"
WITH t AS (SELECT {now} AS now),
items AS (SELECT * FROM unnest($2::int8[], $3::bytea[], $4::int8[]) WITH ORDINALITY AS i(id, token, delay, ord){cap}),
released AS (
    UPDATE {s}.jobs j
    SET state = CASE WHEN j.cancelled_at IS NOT NULL THEN 5 WHEN i.delay = 0 THEN 1 ELSE 0 END,
        run_at = CASE WHEN j.cancelled_at IS NOT NULL THEN j.run_at ELSE t.now + i.delay END,
        attempt = greatest(j.attempt - 1, 0), lease_token = NULL, lease_expires_at = NULL
    FROM items i, t
    WHERE j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > t.now
    RETURNING j.id, j.queue_id, j.state, j.run_at, j.ordering_key, j.partition
),
{move_on_dead:released},
{notify:released}
{verdict:released:, s.state, (SELECT count(*) FROM notified) AS notified, (SELECT promoted FROM moved_on) AS promoted}
"#;

/// `sql` with its `{cap}` filled in for a batch of `n` items (see [`ITEMS_EXACT_MAX`]).
fn sized(sql: &str, n: usize) -> String {
    if n <= ITEMS_EXACT_MAX {
        sql.replace("{cap}", &format!(" LIMIT {n}"))
    } else {
        sql.replace("{cap}", "")
    }
}

/// `template` with its `{verdict:<cte>:<extra columns>}` replaced by [`SETTLE_VERDICT`].
fn with_verdict(template: &str) -> String {
    let Some(start) = template.find("{verdict:") else { return template.to_owned() };
    let rest = &template[start + "{verdict:".len()..];
    let (Some(colon), Some(end)) = (rest.find(':'), rest.find('}')) else { return template.to_owned() };
    let verdict = SETTLE_VERDICT.replace("{settled}", &rest[..colon]).replace("{extra}", &rest[colon + 1..end]);
    format!("{}{}{}", &template[..start], verdict, &rest[end + 1..])
}

/// A settle statement ready to run: the verdict, the keys moving on and the wake-ups filled in.
fn settle_sql(template: &str, changed: Option<&str>) -> String {
    let sql = with_move_on(&with_verdict(template));
    match changed {
        Some(cte) => with_notify(&sql, cte),
        None => sql,
    }
}

/// The enqueue of a batch of `rows` jobs ([`ENQUEUE`] with its wake-ups), before the schema and
/// clock are filled in.
pub(crate) fn enqueue_template(rows: usize) -> String {
    sized(&relaxable(&with_notify(ENQUEUE, "created"), ENQUEUE_RELAX_PARAM), rows)
}

/// The parameter (`bool`) of [`ENQUEUE`] that says whether it may commit without waiting for
/// the WAL's flush: a `relaxed` queue's enqueue on the pool.
pub(crate) const ENQUEUE_RELAX_PARAM: usize = 12;
/// The same parameter of [`ENQUEUE_KEYED`].
pub(crate) const ENQUEUE_KEYED_RELAX_PARAM: usize = 15;
/// The same parameter of [`LEASE`] (as [`HotStatement::Lease`] runs it).
pub(crate) const LEASE_RELAX_PARAM: usize = 5;

/// `template` with its `{relax_column}` ([`RELAX`]) and `{relax}` bound to parameter `param`.
pub(crate) fn relaxable(template: &str, param: usize) -> String {
    template.replace("{relax_column}", crate::sql::RELAX).replace("{relax}", &format!("${param}::bool"))
}

/// Whether a statement of `config`'s queue on `conn` may commit without waiting for the WAL's
/// flush: the queue is `relaxed`, and the statement is a transaction of its own (on the pool).
fn relaxed(conn: &Conn<'_>, config: &QueueConfig) -> bool {
    matches!(conn, Conn::Pool) && config.durability == Some(onceq_core::Durability::Relaxed)
}

/// The enqueue of a batch of `rows` jobs into a `per_key` queue or with ordering keys
/// ([`ENQUEUE_KEYED`] with its key claims and wake-ups), before the schema and clock are filled in.
pub(crate) fn enqueue_keyed_template(rows: usize) -> String {
    let claim =
        CLAIM_KEYS.replace("{queue}", "$9").replace("{claiming}", "kept").replace("{ordered}", "$14::int4 IS NOT NULL");
    let sql = with_notify(&ENQUEUE_KEYED.replace("{claim_keys}", claim.trim()), "created");
    sized(&relaxable(&sql, ENQUEUE_KEYED_RELAX_PARAM), rows)
}

/// The lease statement a group lease runs (built by `groups`), with what it binds.
pub(crate) struct GroupLeaseSql<'a> {
    /// The statement restricted to the member's partitions (see [`restricted`]): `$1` now, `$2`
    /// the queue, then `$3` the lease tokens and `$4` the expiry when `tokens` is given, then
    /// the partitions.
    pub sql: &'a str,
    /// The new lease tokens, for a lease that keeps its jobs (not `at_most_once`).
    pub tokens: Option<&'a [Vec<u8>]>,
    /// When the leases expire.
    pub expires_at: i64,
    /// The most jobs `sql` leases (what the lease asked for).
    pub max_jobs: u32,
}

/// The lease of up to `max_jobs` jobs ([`LEASE`], or [`LEASE_AND_DELETE`] for an
/// `at_most_once` queue), before the schema and clock are filled in.
pub(crate) fn lease_template(max_jobs: u32, at_most_once: bool) -> String {
    let template = if at_most_once { with_move_on(LEASE_AND_DELETE) } else { LEASE.to_owned() };
    crate::sql::with_pick(&template, max_jobs).replace("{relax_column}", crate::sql::RELAX)
}

/// The ack of `items` leases ([`ACK`] with its verdict), before the schema and clock are filled in.
pub(crate) fn ack_template(items: usize) -> String {
    sized(&relaxable(&settle_sql(ACK, None), 4), items)
}

/// The queue lookup that starts an enqueue ([`QUEUE_LOOKUP`]), before the schema and clock are
/// filled in.
pub(crate) fn queue_lookup_template() -> &'static str {
    QUEUE_LOOKUP
}

/// Item positions in rounds in which each job appears at most once (see the module docs).
fn rounds(ids: &[JobId]) -> Vec<Vec<usize>> {
    let mut mentions: HashMap<JobId, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let k = mentions.entry(*id).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// The items of a round that a job can have, with their stored ids; the others (ids above
/// `i64::MAX`) are judged not found at once.
fn storable<T>(ids: &[JobId], round: &[usize], out: &mut [Option<Result<T>>]) -> (Vec<usize>, Vec<i64>) {
    let mut positions = Vec::with_capacity(round.len());
    let mut row_ids = Vec::with_capacity(round.len());
    for &i in round {
        match row_id(ids[i]) {
            Some(id) => {
                positions.push(i);
                row_ids.push(id);
            }
            None => out[i] = Some(Err(rejected(ids[i], false, None))),
        }
    }
    (positions, row_ids)
}

/// The error of an item its statement did not settle: the job existed (so the token was not
/// its live lease) or not. Counts the rejection.
fn rejected(id: JobId, existed: bool, queue: Option<&str>) -> Error {
    let label = if existed { queue.unwrap_or_default().to_owned() } else { String::new() };
    metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => label).increment(1);
    if existed {
        Error::LeaseLost(id)
    } else {
        Error::JobNotFound(id)
    }
}

/// One row of a settle verdict: the item's position, and whether it was settled.
struct Verdict {
    position: usize,
    done: bool,
    existed: bool,
    queue: Option<String>,
}

impl Verdict {
    fn read(row: &PgRow, positions: &[usize]) -> Result<Self> {
        let ord: i64 = row.try_get("ord").map_err(decode)?;
        let position = usize::try_from(ord - 1)
            .ok()
            .and_then(|k| positions.get(k).copied())
            .ok_or_else(|| Error::Storage(format!("a settle statement returned item {ord} of {}", positions.len())))?;
        Ok(Verdict {
            position,
            done: row.try_get("done").map_err(decode)?,
            existed: row.try_get("existed").map_err(decode)?,
            queue: row.try_get("queue").map_err(decode)?,
        })
    }

    fn label(&self) -> String {
        self.queue.clone().unwrap_or_default()
    }
}

/// Every item's result, or a storage error if a statement left one unjudged.
fn collect<T>(out: Vec<Option<Result<T>>>) -> Result<ItemResults<T>> {
    out.into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| Error::Storage(format!("item {i} of a settle batch got no verdict"))))
        .collect()
}

/// Error text as kept: NUL (which PostgreSQL text cannot hold) shown as U+FFFD, then cut.
fn error_text(text: &str) -> String {
    truncate_error_text(&text.replace('\0', "\u{FFFD}"))
}

/// `n` fresh lease tokens: 128 bits each from the operating system's CSPRNG.
fn lease_tokens(n: usize) -> Vec<Vec<u8>> {
    let mut bytes = vec![0u8; 16 * n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.chunks_exact(16).map(<[u8]>::to_vec).collect()
}

fn token_of(id: i64, bytes: &[u8]) -> Result<LeaseToken> {
    let token: [u8; 16] =
        bytes.try_into().map_err(|_| Error::Storage(format!("job {id} got a lease token of {} bytes", bytes.len())))?;
    Ok(LeaseToken::from_bytes(token))
}

fn headers_of(id: i64, text: Option<String>) -> Result<Headers> {
    match text {
        None => Ok(Headers::new()),
        Some(text) => {
            serde_json::from_str(&text).map_err(|e| Error::Storage(format!("job {id} has unreadable headers: {e}")))
        }
    }
}

pub(crate) fn job_state(stored: i16) -> Result<JobState> {
    Ok(match stored {
        state::SCHEDULED => JobState::Scheduled,
        state::READY => JobState::Ready,
        state::LEASED => JobState::Leased,
        state::DEAD => JobState::Dead,
        state::BLOCKED => JobState::Blocked,
        state::CANCELLED => JobState::Cancelled,
        other => return Err(Error::Storage(format!("unknown stored job state {other}"))),
    })
}

fn to_u32(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// The `partition` of job `id`'s row: NULL outside a `per_key` queue, else below the queue's
/// partition count (at most [`PARTITIONS_MAX`]).
fn partition_of_row(id: i64, row: &PgRow) -> Result<Option<u32>> {
    let stored: Option<i32> = row.try_get("partition").map_err(decode)?;
    stored
        .map(|p| {
            u32::try_from(p)
                .ok()
                .filter(|p| *p < PARTITIONS_MAX)
                .ok_or_else(|| Error::Storage(format!("job {id} has partition {p}, out of range")))
        })
        .transpose()
}

/// A job row read with [`JOB_COLUMNS`].
pub(crate) fn job_from_row(row: &PgRow) -> Result<Job> {
    let id: i64 = row.try_get("id").map_err(decode)?;
    let queue: String = row.try_get("name").map_err(decode)?;
    let attempts: Option<Vec<i32>> = row.try_get("error_attempts").map_err(decode)?;
    let texts: Option<Vec<String>> = row.try_get("error_texts").map_err(decode)?;
    let times: Option<Vec<i64>> = row.try_get("error_times").map_err(decode)?;
    let errors = match (attempts, texts, times) {
        (Some(attempts), Some(texts), Some(times)) => attempts
            .into_iter()
            .zip(texts)
            .zip(times)
            .map(|((attempt, error), at)| AttemptError {
                attempt: to_u32(attempt),
                error,
                at: Timestamp::from_millis(at),
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Job {
        id: job_id(id),
        queue: QueueName::new(queue)?,
        state: job_state(row.try_get("state").map_err(decode)?)?,
        attempt: to_u32(row.try_get("attempt").map_err(decode)?),
        max_attempts: to_u32(row.try_get("max_attempts").map_err(decode)?),
        priority: row.try_get("priority").map_err(decode)?,
        payload: row.try_get("payload").map_err(decode)?,
        headers: headers_of(id, row.try_get("headers").map_err(decode)?)?,
        dedup_id: row.try_get("dedup_id").map_err(decode)?,
        ordering_key: row.try_get("ordering_key").map_err(decode)?,
        partition: partition_of_row(id, row)?,
        enqueued_at: Timestamp::from_millis(row.try_get("enqueued_at").map_err(decode)?),
        run_at: Timestamp::from_millis(row.try_get("run_at").map_err(decode)?),
        lease_expires_at: row
            .try_get::<Option<i64>, _>("lease_expires_at")
            .map_err(decode)?
            .map(Timestamp::from_millis),
        cancelled_at: row.try_get::<Option<i64>, _>("cancelled_at").map_err(decode)?.map(Timestamp::from_millis),
        errors,
    })
}

/// Records how long a long-poll lease waited for a queue's flow limit, if it did.
fn flow_waited(queue: &QueueName, held_since: Option<Instant>) {
    if let Some(since) = held_since {
        metrics::histogram!(names::FLOW_WAIT, "queue" => queue.to_string()).record(since.elapsed().as_secs_f64());
    }
}

/// How often a long poll held back by its queue's in-flight limit looks again, in milliseconds:
/// a slot frees when a lease ends on any server, which sends no wake-up (a lease that expires
/// is a due time, and wakes it on time).
const FLOW_SLOT_RECHECK_MS: u64 = 100;

/// Most queues a store remembers for the one-statement enqueue; past it, it forgets them all.
const KNOWN_QUEUES_MAX: usize = 10_000;

impl PgStore {
    fn known_queue(&self, queue: &QueueName) -> Option<Arc<KnownQueue>> {
        self.inner.known_queues.lock().unwrap_or_else(|p| p.into_inner()).get(queue).cloned()
    }

    fn know_queue(&self, queue: &QueueName, known: Arc<KnownQueue>) {
        let mut known_queues = self.inner.known_queues.lock().unwrap_or_else(|p| p.into_inner());
        if known_queues.len() >= KNOWN_QUEUES_MAX && !known_queues.contains_key(queue) {
            known_queues.clear();
        }
        known_queues.insert(queue.clone(), known);
    }

    pub(crate) fn forget_queue(&self, queue: &QueueName) {
        self.inner.known_queues.lock().unwrap_or_else(|p| p.into_inner()).remove(queue);
    }
}

/// An enqueue batch, encoded once for however many tries it takes.
pub(crate) struct Batch {
    /// The jobs, their payloads taken out.
    pub(crate) jobs: Vec<NewJob>,
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Headers as JSON text, `None` when a job has none.
    headers: Vec<Option<String>>,
}

impl Batch {
    fn new(mut jobs: Vec<NewJob>) -> Result<Self> {
        if let Some(i) = jobs.iter().position(|j| j.dedup_id.as_deref().is_some_and(|d| d.contains('\0'))) {
            return Err(Error::invalid(format!(
                "item {i}: the dedup id contains NUL, which PostgreSQL text cannot hold"
            )));
        }
        if let Some(i) = jobs.iter().position(|j| j.ordering_key.as_deref().is_some_and(|k| k.contains('\0'))) {
            return Err(Error::invalid(format!(
                "item {i}: the ordering key contains NUL, which PostgreSQL text cannot hold"
            )));
        }
        let payloads = jobs.iter_mut().map(|j| std::mem::take(&mut j.payload)).collect();
        let headers = jobs
            .iter()
            .map(|j| {
                (!j.headers.is_empty())
                    .then(|| serde_json::to_string(&j.headers))
                    .transpose()
                    .map_err(|e| Error::Storage(format!("encoding headers: {e}")))
            })
            .collect::<Result<Vec<Option<String>>>>()?;
        Ok(Batch { jobs, payloads, headers })
    }

    /// The jobs `keep` says yes to, in order.
    pub(crate) fn subset(&self, keep: impl Iterator<Item = bool>) -> Batch {
        let mut sub = Batch { jobs: Vec::new(), payloads: Vec::new(), headers: Vec::new() };
        for (i, keep) in keep.enumerate() {
            if keep {
                sub.jobs.push(self.jobs[i].clone());
                sub.payloads.push(self.payloads[i].clone());
                sub.headers.push(self.headers[i].clone());
            }
        }
        sub
    }
}

/// A queue an enqueue resolved: the "now" it was read at, its id, and its config, parsed and
/// as the database prints it.
pub(crate) struct ResolvedQueue {
    pub(crate) now: i64,
    pub(crate) id: i64,
    pub(crate) config: QueueConfig,
    pub(crate) config_text: String,
}

/// One look for jobs by a lease, and what a waiting lease needs to sleep until the next one.
struct LeaseAttempt {
    jobs: Vec<LeasedJob>,
    /// The queue's id, if a lease may register to sleep on it (not for a paused or unknown
    /// queue: those wait for the `NOTIFY` of a resume or of the queue's creation).
    queue_id: Option<i64>,
    /// The "now" the look was made at (store-clock ms).
    now: i64,
    /// When the queue's next scheduled job comes due or next lease expires, if the lease may
    /// wait for it (not for a paused or unknown queue).
    next_due: Option<i64>,
    /// Whether a flow limit held back jobs that were ready.
    held: bool,
}

impl PgStore {
    /// Enqueues on `conn`: on the pool, or in a caller's transaction (see `transaction`).
    pub(crate) async fn job_enqueue(
        &self,
        conn: &mut Conn<'_>,
        queue: &QueueName,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        let batch = Batch::new(jobs)?;
        if batch.jobs.iter().any(|j| j.unique.is_some()) {
            let (out, now) = self.job_enqueue_unique(conn, queue, batch).await?;
            return Ok(self.enqueued(conn, queue, out, now).await);
        }
        // One statement instead of two when this store has looked the queue up before and every
        // job is ready at once (then no limit depends on "now"): the enqueue itself checks that
        // the queue and its config are still the ones known, and inserts nothing otherwise.
        if batch.jobs.iter().all(|j| matches!(j.schedule, Schedule::Now)) {
            if let Some(known) = self.known_queue(queue) {
                if validate::enqueue_into(queue, &known.config, &batch.jobs).is_ok() {
                    let config_text = Some(known.config_text.as_str());
                    let inserted = self.insert_bounded(conn, queue, &batch, None, known.id, &known.config, config_text);
                    match inserted.await? {
                        Some((out, now)) => return Ok(self.enqueued(conn, queue, out, now).await),
                        None => self.forget_queue(queue),
                    }
                }
            }
        }
        for _ in 0..QUEUE_RESOLVE_TRIES_MAX {
            let Some(resolved) = self.resolve_queue(conn, queue, &batch.jobs).await? else { continue };
            let ResolvedQueue { now, id, config, config_text } = resolved;
            // The config as resolved, checked by the insert itself: a queue whose ordering or
            // partitions changed meanwhile (only while it was empty) gets nothing inserted under
            // the old ones, and is resolved again.
            let inserted = self.insert_bounded(conn, queue, &batch, Some(now), id, &config, Some(&config_text)).await?;
            let Some((out, _)) = inserted else { continue };
            return Ok(self.enqueued(conn, queue, out, now).await);
        }
        Err(Error::Unavailable(format!(
            "queue {queue} was created or deleted again and again while this enqueue ran; nothing was enqueued, retry"
        )))
    }

    /// Counts what an enqueue did, and sweeps if a sweep is due.
    async fn enqueued(&self, conn: &Conn<'_>, queue: &QueueName, out: Vec<Enqueued>, now: i64) -> Vec<Enqueued> {
        let created = out.iter().filter(|e| !e.duplicate).count() as u64;
        metrics::counter!(names::ENQUEUED, "queue" => queue.to_string()).increment(created);
        let duplicates = out.len() as u64 - created;
        if duplicates > 0 {
            metrics::counter!(names::DUPLICATES_SUPPRESSED, "queue" => queue.to_string()).increment(duplicates);
        }
        self.sweep_after(conn, now).await;
        out
    }

    /// Reads "now" and the queue (creating it with the defaults if it does not exist), and
    /// checks the batch against both. `None`: another enqueue created the queue meanwhile.
    pub(crate) async fn resolve_queue(
        &self,
        conn: &mut Conn<'_>,
        queue: &QueueName,
        jobs: &[NewJob],
    ) -> Result<Option<ResolvedQueue>> {
        let lookup = self.hot_sql(HotStatement::QueueLookup);
        let now_param = self.now_param();
        let row = self
            .fetch_optional(conn, "looking up a queue", || sqlx::query(&lookup).bind(now_param).bind(queue.as_str()))
            .await?
            .ok_or_else(|| Error::Storage("looking up a queue returned no row".into()))?;
        let now: i64 = row.try_get("now").map_err(decode)?;
        let now_ts = Timestamp::from_millis(now);
        validate::run_at_horizon(jobs, now_ts)?;
        if let Some(id) = row.try_get::<Option<i64>, _>("id").map_err(decode)? {
            let config_text: String = row.try_get("config").map_err(decode)?;
            let config = parse_config(queue.as_str(), &config_text)?;
            // Not from inside a caller's transaction: its snapshot may be older than the queue's
            // config. (A queue remembered from a transaction that then rolled back, or one
            // changed since, costs one more lookup: the enqueue checks the config it was given.)
            if matches!(conn, Conn::Pool | Conn::Own(_)) {
                let known = KnownQueue { id, config_text: config_text.clone(), config: config.clone() };
                self.know_queue(queue, Arc::new(known));
            }
            validate::enqueue_into(queue, &config, jobs)?;
            return Ok(Some(ResolvedQueue { now, id, config, config_text }));
        }
        let config = QueueConfig::default();
        let text =
            serde_json::to_string(&config).map_err(|e| Error::Storage(format!("encoding a queue config: {e}")))?;
        let create = self.sql(QUEUE_CREATE);
        let created = self
            .fetch_optional(conn, "creating a queue", || {
                sqlx::query(&create).bind(now).bind(queue.as_str()).bind(&text)
            })
            .await?;
        match created {
            Some(row) => Ok(Some(ResolvedQueue {
                now,
                id: row.try_get("id").map_err(decode)?,
                config,
                config_text: row.try_get("config").map_err(decode)?,
            })),
            None => Ok(None),
        }
    }

    /// [`PgStore::insert_batch`], after checking the queue's `max_depth` under its flow lock in
    /// the same transaction (module `flow`): on the pool, a transaction of its own; in a caller's
    /// transaction, the lock is held until it ends. A queue without one inserts as before.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn insert_bounded(
        &self,
        conn: &mut Conn<'_>,
        queue: &QueueName,
        batch: &Batch,
        now: Option<i64>,
        queue_id: i64,
        config: &QueueConfig,
        config_text: Option<&str>,
    ) -> Result<Option<(Vec<Enqueued>, i64)>> {
        if config.max_depth.is_none() {
            return self.insert_batch(conn, batch, now, queue_id, config, config_text).await;
        }
        if !matches!(conn, Conn::Pool) {
            // Inside a transaction already: the lock is held until it ends.
            return self.depth_then_insert(conn, queue, batch, now, queue_id, config, config_text).await;
        }
        let map = |e| crate::error::map(&self.inner.target, "checking a queue's depth", e);
        let mut pooled = self.acquire_conn().await.map_err(map)?;
        let mut tx = sqlx::Connection::begin(&mut *pooled).await.map_err(map)?;
        let inserted = self
            .depth_then_insert(&mut Conn::Caller(&mut tx), queue, batch, now, queue_id, config, config_text)
            .await?;
        tx.commit().await.map_err(map)?;
        Ok(inserted)
    }

    /// Takes queue `queue_id`'s flow lock on `conn` (a transaction), counts its jobs against its
    /// `max_depth`, and inserts the batch if it fits (module `flow`).
    #[allow(clippy::too_many_arguments)]
    async fn depth_then_insert(
        &self,
        conn: &mut Conn<'_>,
        queue: &QueueName,
        batch: &Batch,
        now: Option<i64>,
        queue_id: i64,
        config: &QueueConfig,
        config_text: Option<&str>,
    ) -> Result<Option<(Vec<Enqueued>, i64)>> {
        let flow_sql = crate::flow::FlowSql::new(|t| self.sql(t));
        let context = "checking a queue's depth";
        self.fetch_optional(conn, context, || sqlx::query(&flow_sql.lock).bind(queue_id).bind(0i64)).await?;
        let bound = crate::flow::depth_bound(config);
        let row =
            self.fetch_optional(conn, context, || sqlx::query(&flow_sql.depth).bind(queue_id).bind(bound)).await?;
        let depth: i64 = match row {
            Some(row) => row.try_get(0).map_err(decode)?,
            None => return Err(Error::Storage("counting a queue's jobs returned no row".into())),
        };
        onceq_core::flow::check_depth(queue, config.max_depth, u64::try_from(depth).unwrap_or(0), batch.jobs.len())?;
        self.insert_batch(conn, batch, now, queue_id, config, config_text).await
    }

    /// Runs the enqueue statement into the queue, at `now` (`None`: the statement reads the
    /// store's clock, and every job must be ready at once), checking the queue's config is still
    /// `config_text` if given. Returns the ids and the "now" it ran at; `None` when the queue was
    /// deleted meanwhile or its config changed (then nothing was written).
    async fn insert_batch(
        &self,
        conn: &mut Conn<'_>,
        batch: &Batch,
        now: Option<i64>,
        queue_id: i64,
        config: &QueueConfig,
        config_text: Option<&str>,
    ) -> Result<Option<(Vec<Enqueued>, i64)>> {
        let jobs = &batch.jobs;
        // A repeated dedup id in one batch is a duplicate of its first mention, which alone goes
        // to the database (a window of 0 deduplicates nothing, so then none is a duplicate).
        let window = config.dedup_window_ms;
        let mut first_mention: HashMap<&str, usize> = HashMap::new();
        let mut repeat_of: Vec<Option<usize>> = vec![None; jobs.len()];
        for (i, job) in jobs.iter().enumerate() {
            if let (Some(d), true) = (job.dedup_id.as_deref(), window > 0 && !by_dedup_id(job)) {
                match first_mention.get(d) {
                    Some(&first) => repeat_of[i] = Some(first),
                    None => {
                        first_mention.insert(d, i);
                    }
                }
            }
        }
        // The statement's rows, by position in the batch.
        let rows_of: Vec<usize> = (0..jobs.len()).filter(|&i| repeat_of[i].is_none()).collect();
        let payloads: Vec<&[u8]> = rows_of.iter().map(|&i| batch.payloads[i].as_slice()).collect();
        let headers: Vec<Option<&str>> = rows_of.iter().map(|&i| batch.headers[i].as_deref()).collect();
        let priorities: Vec<i32> = rows_of.iter().map(|&i| jobs[i].priority).collect();
        // Without a "now", every job is ready at once: NULL is the statement's own "now".
        let run_ats: Vec<Option<i64>> =
            rows_of.iter().map(|&i| now.map(|now| jobs[i].ready_at(Timestamp::from_millis(now)).as_millis())).collect();
        let max_attempts: Vec<i32> = rows_of
            .iter()
            .map(|&i| i32::try_from(jobs[i].max_attempts.unwrap_or(config.max_attempts)).unwrap_or(i32::MAX))
            .collect();
        let dedup_ids: Vec<Option<&str>> = rows_of.iter().map(|&i| jobs[i].dedup_id.as_deref()).collect();
        // A job unique by its dedup id is judged by its unique rule (module `unique`) instead.
        let claims: Vec<bool> =
            rows_of.iter().zip(&dedup_ids).map(|(&i, d)| window > 0 && d.is_some() && !by_dedup_id(&jobs[i])).collect();
        // Key-less jobs of an unordered queue take the statement they always took (see `keys`).
        let per_key = config.ordering == Ordering::PerKey;
        let keyed = per_key || rows_of.iter().any(|&i| jobs[i].ordering_key.is_some());
        let ordering_keys: Vec<Option<&str>> = rows_of.iter().map(|&i| jobs[i].ordering_key.as_deref()).collect();
        // A keyed job's partition does not depend on its id (a key-less one's is the id's, which
        // the statement computes once it has drawn the id).
        let key_partitions: Vec<Option<i32>> = ordering_keys
            .iter()
            .map(|key| {
                let key = key.filter(|_| per_key)?;
                i32::try_from(partition_of(Some(key), JobId::new(0), config.partitions)).ok()
            })
            .collect();
        let partitions = per_key.then(|| i32::try_from(config.partitions).unwrap_or(i32::MAX));
        let sql = if keyed {
            self.hot_sql(HotStatement::EnqueueKeyed { items: rows_of.len() })
        } else {
            self.hot_sql(HotStatement::Enqueue { items: rows_of.len() })
        };
        let now_param = now.or_else(|| self.now_param());
        let window_ms = i64::try_from(window).unwrap_or(i64::MAX);
        let relax = relaxed(conn, config);
        let rows = self
            .fetch_all(conn, "enqueueing jobs", || {
                let query = sqlx::query(&sql)
                    .bind(now_param)
                    .bind(&payloads)
                    .bind(&headers)
                    .bind(&priorities)
                    .bind(&run_ats)
                    .bind(&max_attempts)
                    .bind(&dedup_ids)
                    .bind(&claims)
                    .bind(queue_id)
                    .bind(window_ms)
                    .bind(config_text);
                if keyed {
                    query.bind(&ordering_keys).bind(&key_partitions).bind(partitions).bind(relax)
                } else {
                    query.bind(relax)
                }
            })
            .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let ran_at: i64 = first.try_get("now").map_err(decode)?;
        let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        let mut last_id = 0;
        for row in rows {
            let ord: i64 = row.try_get("ord").map_err(decode)?;
            let id: i64 = row.try_get("id").map_err(decode)?;
            let original: Option<i64> = row.try_get("original").map_err(decode)?;
            let (k, i) = usize::try_from(ord - 1)
                .ok()
                .and_then(|k| Some((k, *rows_of.get(k)?)))
                .ok_or_else(|| Error::Storage(format!("the enqueue returned row {ord} of {}", rows_of.len())))?;
            // Ids follow request order: `unnest` yields the rows in order, and `nextval` runs on
            // each as it is scanned.
            debug_assert!(id > last_id, "job ids must increase in request order ({id} after {last_id})");
            last_id = id;
            out[i] = Some(match (claims[k], original) {
                (false, _) => Enqueued { id: job_id(id), duplicate: false },
                (true, Some(original)) => Enqueued { id: job_id(original), duplicate: original != id },
                (true, None) => return Err(Error::Storage(format!("item {i}: its dedup id was not claimed"))),
            });
        }
        for i in 0..out.len() {
            if let Some(first) = repeat_of[i] {
                out[i] = out[first].map(|e| Enqueued { id: e.id, duplicate: true });
            }
        }
        let out = out
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.ok_or_else(|| Error::Storage(format!("item {i} of the batch got no id"))))
            .collect::<Result<Vec<Enqueued>>>()?;
        Ok(Some((out, ran_at)))
    }

    /// Deletes expired dedup ids and idempotency records, at most once a [`SWEEP_INTERVAL_MS`]
    /// of store time per store. An in-progress idempotency claim stays a day past its expiry, so
    /// that its owner can still complete it if nobody took it over. Failures are only logged:
    /// the rows are dead either way.
    pub(crate) async fn sweep(&self, now: i64) {
        if self.sweep_due(now) {
            self.sweep_now(now).await;
        }
    }

    /// Whether a sweep is due at `now`; if so, this caller is the one to run it.
    pub(crate) fn sweep_due(&self, now: i64) -> bool {
        let last = self.inner.last_sweep_ms.load(std::sync::atomic::Ordering::Acquire);
        now.saturating_sub(last) >= SWEEP_INTERVAL_MS
            && self
                .inner
                .last_sweep_ms
                .compare_exchange(last, now, std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire)
                .is_ok()
    }

    /// Runs one sweep on the pool.
    pub(crate) async fn sweep_now(&self, now: i64) {
        let sql = self.sql(SWEEP);
        let day = crate::to_i64(onceq_core::idempotency::TTL_MS_MAX);
        let swept = self
            .run("sweeping expired dedup ids and idempotency keys", || {
                pooled!(self, sqlx::query(&sql).bind(now).bind(SWEEP_BATCH_MAX).bind(day), execute)
            })
            .await;
        if let Err(error) = swept {
            tracing::warn!(%error, "sweeping expired dedup ids and idempotency keys failed");
        }
        if (now / SWEEP_INTERVAL_MS) % UNIQUE_SWEEP_EVERY == 0 {
            let sql = self.sql(UNIQUE_SWEEP_GONE);
            let swept = self
                .run("sweeping the unique keys of finished jobs", || {
                    pooled!(self, sqlx::query(&sql).bind(SWEEP_BATCH_MAX), execute)
                })
                .await;
            if let Err(error) = swept {
                tracing::warn!(%error, "sweeping the unique keys of finished jobs failed");
            }
        }
    }

    pub(crate) async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        self.lease_waiting(queue, options, None).await
    }

    /// A lease of a consumer group's member: each look checks membership and ownership afresh
    /// (see `groups`).
    pub(crate) async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        self.lease_waiting(queue, options, Some((group, member))).await
    }

    /// Leases, waiting up to `wait_ms` for jobs; only from `member`'s partitions when given.
    async fn lease_waiting(
        &self,
        queue: &QueueName,
        options: LeaseOptions,
        member: Option<(&GroupName, &MemberId)>,
    ) -> Result<Vec<LeasedJob>> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(options.wait_ms);
        let waiters = self.inner.waiters.clone();
        // The pause before looking again while sleeping is refused (see `wait`, "Sleeping").
        let mut blocked_ms = SLEEP_BLOCKED_MS.0;
        // When a flow limit first held this lease back with jobs ready (for the wait's histogram).
        let mut held_since: Option<Instant> = None;
        loop {
            // Register before looking, so that a notification in between still wakes this lease.
            let registration = (options.wait_ms > 0).then(|| waiters.register(queue.as_str(), options.max_jobs));
            let attempt = match self.lease_once(queue, options, registration.is_some(), member).await {
                Ok(attempt) => attempt,
                Err(error) => {
                    // This call may have taken a wake-up meant for another: pass it on.
                    let woken = registration.as_ref().is_some_and(|r| r.was_woken());
                    drop(registration);
                    if woken {
                        waiters.wake(queue.as_str(), u64::from(options.max_jobs));
                    }
                    return Err(error);
                }
            };
            let Some(registration) = registration else { return Ok(attempt.jobs) };
            if attempt.held {
                held_since.get_or_insert_with(Instant::now);
            }
            if !attempt.jobs.is_empty() {
                flow_waited(queue, held_since);
                // A full batch may leave jobs behind; a wake-up this lease took while it was
                // already finding jobs was meant for the next waiter.
                let pass_on = registration.was_woken() || attempt.jobs.len() == options.max_jobs as usize;
                drop(registration);
                if pass_on {
                    waiters.wake(queue.as_str(), 1);
                }
                return Ok(attempt.jobs);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                flow_waited(queue, held_since);
                return Ok(Vec::new());
            }
            let sleep_ms = match attempt.next_due {
                Some(due) => {
                    registration.arm(due);
                    u64::try_from(due.saturating_sub(attempt.now))
                        .unwrap_or(0)
                        .clamp(TIMER_DUE_SLEEP_MS, TIMER_RECHECK_MS_MAX)
                }
                None => TIMER_RECHECK_MS_MAX,
            };
            let mut wake_at = (now + Duration::from_millis(sleep_ms)).min(deadline);
            if let Some(queue_id) = attempt.queue_id {
                let step = match self.before_sleep(queue_id, now, wake_at).await {
                    Ok(step) => step,
                    Err(error) => {
                        let woken = registration.was_woken();
                        drop(registration);
                        if woken {
                            waiters.wake(queue.as_str(), u64::from(options.max_jobs));
                        }
                        return Err(error);
                    }
                };
                match step {
                    BeforeSleep::Sleep => blocked_ms = SLEEP_BLOCKED_MS.0,
                    // The registration is in place: one more look, then sleep.
                    BeforeSleep::LookAgain => continue,
                    BeforeSleep::Blocked => {
                        wake_at = wake_at.min(now + Duration::from_millis(blocked_ms));
                        blocked_ms = (blocked_ms * 2).min(SLEEP_BLOCKED_MS.1);
                    }
                }
            }
            tokio::select! {
                _ = registration.notify.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Applies the queue's due transitions, then leases what is ready.
    async fn lease_once(
        &self,
        queue: &QueueName,
        options: LeaseOptions,
        waiting: bool,
        member: Option<(&GroupName, &MemberId)>,
    ) -> Result<LeaseAttempt> {
        let (now, found) = self.apply_due(Scope::Queue(queue)).await?.queue();
        let Some(q) = found else {
            // A queue that does not exist has no groups, so no members.
            if let Some((_, member)) = member {
                return Err(group::not_member(member));
            }
            return Ok(LeaseAttempt { jobs: Vec::new(), now, next_due: None, queue_id: None, held: false });
        };
        // A member's lease checks its membership even in a paused queue (the statement leases
        // nothing from a paused queue).
        if q.paused && member.is_none() {
            return Ok(LeaseAttempt { jobs: Vec::new(), now, next_due: None, queue_id: None, held: false });
        }
        let visibility_ms = options.visibility_timeout_ms.unwrap_or(q.config.visibility_timeout_ms);
        let expires_at = plus_ms(now, visibility_ms);
        let at_most_once = q.config.delivery == DeliveryMode::AtMostOnce;
        let relax = q.config.durability == Some(onceq_core::Durability::Relaxed);
        let sql = if at_most_once {
            Arc::from(self.sql(&relaxable(&lease_template(options.max_jobs, true), 3)))
        } else {
            self.hot_sql(HotStatement::Lease { max_jobs: options.max_jobs })
        };
        // Held back by a limit with jobs ready, and when the rate limit grants the next job.
        let mut flow_held: Option<Option<u64>> = None;
        let rows = if let Some((group, member)) = member {
            let tokens = (!at_most_once).then(|| lease_tokens(options.max_jobs as usize));
            let sql = self.group_lease_sql(options.max_jobs, at_most_once);
            let lease = GroupLeaseSql { sql: &sql, tokens: tokens.as_deref(), expires_at, max_jobs: options.max_jobs };
            self.group_lease_rows(&q, group, member, now, lease).await?
        } else if crate::flow::rate_only(&q.config) {
            // A rate limit alone: one statement (module `flow`).
            let (rows, held) = self.lease_rate_only(&q, now, options.max_jobs, expires_at).await?;
            flow_held = held;
            rows
        } else if q.config.lease_limited() {
            // Only a limited queue pays for its limits (module `flow`).
            let (rows, held) = self.lease_limited(&q, now, options.max_jobs, at_most_once, expires_at).await?;
            flow_held = held;
            rows
        } else if at_most_once {
            self.run("leasing jobs", || pooled!(self, sqlx::query(&sql).bind(now).bind(q.id).bind(relax), fetch_all))
                .await?
        } else {
            let tokens = lease_tokens(options.max_jobs as usize);
            self.run("leasing jobs", || {
                let query = sqlx::query(&sql).bind(now).bind(q.id).bind(&tokens).bind(expires_at);
                pooled!(self, query.bind(relax), fetch_all)
            })
            .await?
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id").map_err(decode)?;
            let token = match row.try_get::<Option<Vec<u8>>, _>("lease_token").map_err(decode)? {
                Some(bytes) => token_of(id, &bytes)?,
                None => LeaseToken::random(),
            };
            jobs.push(LeasedJob {
                id: job_id(id),
                queue: queue.clone(),
                lease_token: token,
                attempt: to_u32(row.try_get("attempt").map_err(decode)?),
                max_attempts: to_u32(row.try_get("max_attempts").map_err(decode)?),
                priority: row.try_get("priority").map_err(decode)?,
                payload: row.try_get("payload").map_err(decode)?,
                headers: headers_of(id, row.try_get("headers").map_err(decode)?)?,
                dedup_id: row.try_get("dedup_id").map_err(decode)?,
                ordering_key: row.try_get("ordering_key").map_err(decode)?,
                partition: partition_of_row(id, &row)?,
                enqueued_at: Timestamp::from_millis(row.try_get("enqueued_at").map_err(decode)?),
                run_at: Timestamp::from_millis(row.try_get("run_at").map_err(decode)?),
                lease_expires_at: Timestamp::from_millis(expires_at),
            });
        }
        // A queue's ordering and partitions change only while it is empty, so its jobs carry the
        // partition its config gives them, and only a `per_key` queue's have one.
        debug_assert!(
            jobs.iter().all(|j| match q.config.ordering {
                Ordering::PerKey =>
                    j.partition == Some(partition_of(j.ordering_key.as_deref(), j.id, q.config.partitions)),
                Ordering::None => j.partition.is_none(),
            }),
            "queue {queue} handed out a job with a partition its config does not give it"
        );
        // RETURNING rows come in no particular order; hand them out in lease order.
        jobs.sort_unstable_by(|a, b| b.priority.cmp(&a.priority).then(a.run_at.cmp(&b.run_at)).then(a.id.cmp(&b.id)));
        if !jobs.is_empty() {
            metrics::counter!(names::DELIVERIES, "queue" => queue.to_string()).increment(jobs.len() as u64);
            let wait = metrics::histogram!(names::ENQUEUE_TO_LEASE, "queue" => queue.to_string());
            let now_ts = Timestamp::from_millis(now);
            for job in jobs.iter().filter(|j| j.attempt == 1) {
                wait.record(now_ts.ms_since(job.enqueued_at) as f64 / 1000.0);
            }
        }
        if q.paused {
            return Ok(LeaseAttempt { jobs, now, next_due: None, queue_id: None, held: false });
        }
        let next_due = if jobs.is_empty() && waiting {
            let sql = self.sql(NEXT_DUE);
            let due = self
                .run("finding the next due job", || {
                    pooled!(self, sqlx::query_scalar::<_, Option<i64>>(&sql).bind(q.id), fetch_one)
                })
                .await?;
            // Held back by a limit: look again when the bucket grants the next job, or, for an
            // in-flight slot (another server's settle sends no wake-up), every FLOW_SLOT_RECHECK_MS.
            match flow_held {
                Some(retry) => {
                    let limit_due = now.saturating_add(crate::to_i64(retry.unwrap_or(FLOW_SLOT_RECHECK_MS)));
                    Some(due.map_or(limit_due, |due| due.min(limit_due)))
                }
                None => due,
            }
        } else {
            None
        };
        Ok(LeaseAttempt { jobs, now, next_due, queue_id: Some(q.id), held: flow_held.is_some() })
    }

    /// Leases from queue `q`, whose only limit is its rate limit, in one statement (module
    /// `flow`, `RATE_LEASE`). Returns the leased rows, and whether the rate held back ready jobs
    /// (with when the bucket grants the next one).
    async fn lease_rate_only(
        &self,
        q: &crate::due::QueueRow,
        now: i64,
        max_jobs: u32,
        expires_at: i64,
    ) -> Result<(Vec<PgRow>, Option<Option<u64>>)> {
        let Some(rate) = q.config.queue_rate().copied() else { return Ok((Vec::new(), None)) };
        let sql = self.hot_sql(HotStatement::RateLease { max_jobs });
        let tokens = lease_tokens(max_jobs as usize);
        let interval = rate.interval_ns();
        let burst = i64::from(rate.burst);
        for _ in 0..2 {
            let rows = self
                .run("leasing jobs under the queue's rate limit", || {
                    pooled!(
                        self,
                        sqlx::query(&sql)
                            .bind(now)
                            .bind(q.id)
                            .bind(&tokens)
                            .bind(expires_at)
                            .bind(interval)
                            .bind(burst),
                        fetch_all
                    )
                })
                .await?;
            let Some(first) = rows.first() else {
                // The queue has no bucket row yet: make it full, and lease again.
                let create = self.sql(crate::flow::FLOW_CREATE);
                let full = rate.full_tat(now);
                self.run("creating the queue's rate bucket", || {
                    pooled!(self, sqlx::query(&create).bind(q.id).bind(full), execute)
                })
                .await?;
                continue;
            };
            let granted: i64 = first.try_get("granted").map_err(decode)?;
            let ready: i64 = first.try_get("ready").map_err(decode)?;
            let tat: i64 = first.try_get("bucket_tat").map_err(decode)?;
            let mut leased = Vec::with_capacity(rows.len());
            for row in rows {
                if row.try_get::<Option<i64>, _>("id").map_err(decode)?.is_some() {
                    leased.push(row);
                }
            }
            let taken = u32::try_from(leased.len()).unwrap_or(u32::MAX);
            let held = u64::try_from(ready.saturating_sub(granted)).unwrap_or(0);
            if held == 0 {
                return Ok((leased, None));
            }
            metrics::counter!(names::FLOW_HELD_BACK, "queue" => q.name.to_string(), "limit" => "rate").increment(held);
            let tat = rate.after(tat, now, taken);
            return Ok((leased, Some(Some(rate.next_token_ms(tat, now).max(1)))));
        }
        Err(Error::Storage(format!("queue {}: its rate bucket could not be created", q.name)))
    }

    /// Leases from queue `q`, which has a rate or in-flight limit, in one transaction under its
    /// flow lock (module `flow`): up to what the limits grant of `max_jobs`. Returns the rows,
    /// and whether a limit held back ready jobs (with when the bucket grants the next one).
    async fn lease_limited(
        &self,
        q: &crate::due::QueueRow,
        now: i64,
        max_jobs: u32,
        at_most_once: bool,
        expires_at: i64,
    ) -> Result<(Vec<PgRow>, Option<Option<u64>>)> {
        let flow_sql = crate::flow::FlowSql::new(|t| self.sql(t));
        self.run("leasing jobs under the queue's limits", || async {
            let mut conn = self.acquire_conn().await?;
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            if !at_most_once {
                // The queue's flow row stays locked until this transaction ends: with an
                // asynchronous commit it ends without waiting for the WAL's flush, so the
                // leases of one limited queue do not take turns at the disk's pace. What a
                // crash of PostgreSQL could forget is the lease itself (the job is leasable
                // again, as after an expiry; the old token is refused) and the bucket's last
                // moves (module `flow`). An at_most_once lease deletes its jobs, and stays
                // synchronous.
                sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
            }
            let granted = crate::flow::grant(&mut tx, &flow_sql, &q.name, q.id, &q.config, now, max_jobs).await?;
            let mut held = granted.grant.held_by.map(|_| crate::flow::retry_ms(&q.config, &granted, now));
            if granted.grant.jobs == 0 {
                tx.rollback().await?;
                return Ok((Vec::new(), held));
            }
            let mut n = granted.grant.jobs;
            // Per-key limits: the ids their pick took from a bounded scan (module `flow`).
            let mut ids = None;
            if q.config.keyed_limits() {
                let (picked, pick) =
                    crate::flow::key_pick(&mut tx, &flow_sql, &q.name, q.id, &q.config, now, n, None).await?;
                if picked.is_empty() {
                    tx.commit().await?;
                    return Ok((Vec::new(), if pick.held > 0 { Some(pick.retry_ms) } else { held }));
                }
                if pick.held > 0 && held.is_none() {
                    held = Some(pick.retry_ms);
                }
                n = u32::try_from(picked.len()).unwrap_or(u32::MAX);
                ids = Some(picked);
            }
            let rows = match (at_most_once, &ids) {
                (true, None) => {
                    let sql = self.sql(&lease_template(n, true));
                    sqlx::query(&sql).bind(now).bind(q.id).fetch_all(&mut *tx).await?
                }
                (true, Some(ids)) => {
                    let sql = self.sql(&crate::flow::by_ids(&lease_template(n, true), 3));
                    sqlx::query(&sql).bind(now).bind(q.id).bind(ids).fetch_all(&mut *tx).await?
                }
                (false, None) => {
                    let sql = self.hot_sql(HotStatement::Lease { max_jobs: n });
                    let tokens = lease_tokens(n as usize);
                    // Relaxed or not, this transaction already commits without waiting (above).
                    let query = sqlx::query(&sql).bind(now).bind(q.id).bind(&tokens).bind(expires_at);
                    query.bind(false).fetch_all(&mut *tx).await?
                }
                (false, Some(ids)) => {
                    let sql = self.sql(&crate::flow::by_ids(&lease_template(n, false), 5));
                    let tokens = lease_tokens(n as usize);
                    let query = sqlx::query(&sql).bind(now).bind(q.id).bind(&tokens).bind(expires_at);
                    query.bind(ids).fetch_all(&mut *tx).await?
                }
            };
            let taken = u32::try_from(rows.len()).unwrap_or(u32::MAX);
            crate::flow::taken(&mut tx, &flow_sql, q.id, q.config.queue_rate(), &granted, now, taken).await?;
            tx.commit().await?;
            Ok((rows, held))
        })
        .await
    }

    /// Readies a lease of `queue_id` to sleep from `now` until `wake_at` (see `wait`,
    /// "Sleeping"): registers this store in `sleepers` or renews its registration if it does not
    /// cover the sleep, and checks that no transaction that missed it is still open.
    async fn before_sleep(&self, queue_id: i64, now: Instant, wake_at: Instant) -> Result<BeforeSleep> {
        let waiters = &self.inner.waiters;
        let mut step = waiters.sleep_step(queue_id, now, wake_at);
        if let SleepStep::Register(renewal) = step {
            let sql = self.sql(SLEEPER_REGISTER);
            let seconds = REGISTRATION_MS as f64 / 1000.0;
            self.run("registering a sleeping lease", || {
                pooled!(self, sqlx::query(&sql).bind(queue_id).bind(&self.inner.sleeper).bind(seconds), execute)
            })
            .await?;
            step = waiters.registered(queue_id, renewal, Instant::now());
        }
        let SleepStep::Check(ticket) = step else { return Ok(BeforeSleep::Sleep) };
        let sql = self.sql(MAY_SLEEP);
        let may = self
            .run("checking that a lease may sleep", || {
                pooled!(self, sqlx::query_scalar::<_, bool>(&sql).bind(queue_id), fetch_one)
            })
            .await?;
        if may {
            waiters.armed(queue_id, ticket);
            Ok(BeforeSleep::LookAgain)
        } else {
            Ok(BeforeSleep::Blocked)
        }
    }

    pub(crate) async fn job_cancel(&self, id: JobId) -> Result<Job> {
        let Some(row_id) = row_id(id) else { return Err(Error::JobNotFound(id)) };
        let sql = self.sql(&with_move_on(CANCEL));
        let now = self.now_param();
        let row = self
            .run("cancelling a job", || pooled!(self, sqlx::query(&sql).bind(now).bind(row_id), fetch_optional))
            .await?;
        let Some(row) = row else { return Err(Error::JobNotFound(id)) };
        let was: i16 = row.try_get("was").map_err(decode)?;
        let queue: String = row.try_get("name").map_err(decode)?;
        match was {
            state::SCHEDULED | state::READY | state::BLOCKED => {
                metrics::counter!(names::JOBS_CANCELLED, "queue" => queue).increment(1);
            }
            state::DEAD => {
                return Err(Error::Conflict(format!(
                    "job {id} is dead: a dead job is not cancelled; redrive or purge it from the dead letters"
                )))
            }
            _ => {}
        }
        self.job_get(id).await
    }

    pub(crate) async fn job_delete(&self, id: JobId) -> Result<()> {
        let Some(row_id) = row_id(id) else { return Err(Error::JobNotFound(id)) };
        let sql = self.sql(&with_move_on(DELETE));
        let now = self.now_param();
        let row = self
            .run("deleting a job", || pooled!(self, sqlx::query(&sql).bind(now).bind(row_id), fetch_optional))
            .await?;
        let Some(row) = row else { return Err(Error::JobNotFound(id)) };
        let was: i16 = row.try_get("was").map_err(decode)?;
        let queue: String = row.try_get("name").map_err(decode)?;
        if was == state::LEASED {
            return Err(Error::leased_job(id, "deleted"));
        }
        metrics::counter!(names::JOBS_DELETED, "queue" => queue).increment(1);
        Ok(())
    }

    pub(crate) async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        let Some(row_id) = row_id(id) else { return Err(Error::JobNotFound(id)) };
        let sql = self.sql(&with_move_on(KILL));
        let now = self.now_param();
        let error = error_text(error);
        let row = self
            .run("failing a job", || {
                pooled!(self, sqlx::query(&sql).bind(now).bind(row_id).bind(&error), fetch_optional)
            })
            .await?;
        let Some(row) = row else { return Err(Error::JobNotFound(id)) };
        let was: i16 = row.try_get("was").map_err(decode)?;
        let queue: String = row.try_get("name").map_err(decode)?;
        match was {
            state::SCHEDULED | state::READY | state::BLOCKED => {
                metrics::counter!(names::DEAD_LETTERED, "queue" => queue, "reason" => "killed").increment(1);
            }
            state::LEASED => return Err(Error::leased_job(id, "failed by an operator")),
            state::CANCELLED => return Err(Error::cancelled_job_not_failed(id)),
            _ => {}
        }
        self.job_get(id).await
    }

    pub(crate) async fn job_get(&self, id: JobId) -> Result<Job> {
        let Some(row_id) = row_id(id) else { return Err(Error::JobNotFound(id)) };
        let (_, queue) = self.apply_due(Scope::Job(row_id)).await?.queue();
        if queue.is_none() {
            return Err(Error::JobNotFound(id));
        }
        let sql = self.sql(&JOB_GET.replace("{columns}", JOB_COLUMNS));
        let row = self.run("reading a job", || pooled!(self, sqlx::query(&sql).bind(row_id), fetch_optional)).await?;
        match row {
            Some(row) => job_from_row(&row),
            None => Err(Error::JobNotFound(id)),
        }
    }

    /// Acks on `conn`: on the pool, or in a caller's transaction (see `transaction`).
    pub(crate) async fn job_ack(&self, conn: &mut Conn<'_>, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        let results = self.job_ack_queues(conn, acks).await?;
        Ok(results.into_iter().map(|r| r.map(drop)).collect())
    }

    /// [`job_ack`](Self::job_ack), with the queue of each job it acked (a commit's replay
    /// window depends on the queues it touched).
    pub(crate) async fn job_ack_queues(&self, conn: &mut Conn<'_>, acks: &[LeaseRef]) -> Result<ItemResults<String>> {
        let ids: Vec<JobId> = acks.iter().map(|a| a.id).collect();
        let mut out: Vec<Option<Result<String>>> = (0..acks.len()).map(|_| None).collect();
        for round in rounds(&ids) {
            let (positions, row_ids) = storable(&ids, &round, &mut out);
            if positions.is_empty() {
                continue;
            }
            let sql = self.hot_sql(HotStatement::Ack { items: positions.len() });
            let tokens: Vec<&[u8]> = positions.iter().map(|&i| &acks[i].lease_token.as_bytes()[..]).collect();
            let now = self.now_param();
            let relax = matches!(conn, Conn::Pool);
            let rows = self
                .fetch_all(conn, "acking jobs", || sqlx::query(&sql).bind(now).bind(&row_ids).bind(&tokens).bind(relax))
                .await?;
            for row in rows {
                let verdict = Verdict::read(&row, &positions)?;
                let id = ids[verdict.position];
                out[verdict.position] = Some(if verdict.done {
                    let label = verdict.label();
                    metrics::counter!(names::ACKS, "queue" => label.clone()).increment(1);
                    let leased_at: Option<i64> = row.try_get("leased_at").map_err(decode)?;
                    let now: i64 = row.try_get("now").map_err(decode)?;
                    if let Some(leased_at) = leased_at {
                        let held = Timestamp::from_millis(now).ms_since(Timestamp::from_millis(leased_at));
                        metrics::histogram!(names::LEASE_TO_ACK, "queue" => label.clone()).record(held as f64 / 1000.0);
                    }
                    Ok(label)
                } else {
                    Err(rejected(id, verdict.existed, verdict.queue.as_deref()))
                });
            }
        }
        collect(out)
    }

    /// Nacks on `conn`: on the pool, or in a transaction (a commit's).
    pub(crate) async fn job_nack(&self, conn: &mut Conn<'_>, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        let ids: Vec<JobId> = nacks.iter().map(|n| n.id).collect();
        let backoff = self.backoff_delays(conn, nacks).await?;
        let mut out: Vec<Option<Result<NackOutcome>>> = (0..nacks.len()).map(|_| None).collect();
        let template = self.sql(&relaxable(&settle_sql(NACK, Some("nacked")), 6));
        for round in rounds(&ids) {
            let (positions, row_ids) = storable(&ids, &round, &mut out);
            if positions.is_empty() {
                continue;
            }
            let sql = sized(&template, positions.len());
            let tokens: Vec<&[u8]> = positions.iter().map(|&i| &nacks[i].lease_token.as_bytes()[..]).collect();
            let delays: Vec<i64> = positions.iter().map(|&i| crate::to_i64(backoff[i])).collect();
            let errors: Vec<String> =
                positions.iter().map(|&i| error_text(nacks[i].error.as_deref().unwrap_or("nacked"))).collect();
            let now = self.now_param();
            let relax = matches!(conn, Conn::Pool);
            let rows = self
                .fetch_all(conn, "nacking jobs", || {
                    let query = sqlx::query(&sql).bind(now).bind(&row_ids).bind(&tokens).bind(&delays);
                    query.bind(&errors).bind(relax)
                })
                .await?;
            for row in rows {
                let verdict = Verdict::read(&row, &positions)?;
                let id = ids[verdict.position];
                out[verdict.position] = Some(if verdict.done {
                    let stored: i16 = row.try_get("state").map_err(decode)?;
                    if stored == state::CANCELLED {
                        metrics::counter!(names::JOBS_CANCELLED, "queue" => verdict.label()).increment(1);
                        Ok(NackOutcome::Cancelled)
                    } else if stored == state::DEAD {
                        metrics::counter!(names::DEAD_LETTERED, "queue" => verdict.label(), "reason" => "attempts_exhausted")
                            .increment(1);
                        Ok(NackOutcome::Dead)
                    } else {
                        metrics::counter!(names::REDELIVERIES, "queue" => verdict.label(), "reason" => "nack")
                            .increment(1);
                        let run_at: i64 = row.try_get("run_at").map_err(decode)?;
                        Ok(NackOutcome::Retrying { run_at: Timestamp::from_millis(run_at) })
                    }
                } else {
                    Err(rejected(id, verdict.existed, verdict.queue.as_deref()))
                });
            }
        }
        collect(out)
    }

    /// The delay of each nack: its own, else its queue's backoff for the job's current attempt
    /// (0 for a job that is not there; its nack will be rejected anyway).
    async fn backoff_delays(&self, conn: &mut Conn<'_>, nacks: &[Nack]) -> Result<Vec<u64>> {
        let wanted: Vec<i64> = nacks.iter().filter(|n| n.delay_ms.is_none()).filter_map(|n| row_id(n.id)).collect();
        let mut current: HashMap<i64, (i32, QueueConfig)> = HashMap::new();
        if !wanted.is_empty() {
            let sql = self.sql(NACK_READ);
            let rows =
                self.fetch_all(conn, "reading the attempts of nacked jobs", || sqlx::query(&sql).bind(&wanted)).await?;
            let mut configs: HashMap<String, QueueConfig> = HashMap::new();
            for row in rows {
                let id: i64 = row.try_get("id").map_err(decode)?;
                let attempt: i32 = row.try_get("attempt").map_err(decode)?;
                let name: String = row.try_get("name").map_err(decode)?;
                let config = match configs.get(&name) {
                    Some(config) => config.clone(),
                    None => {
                        let config = parse_config(&name, &row.try_get::<String, _>("config").map_err(decode)?)?;
                        configs.insert(name, config.clone());
                        config
                    }
                };
                current.insert(id, (attempt, config));
            }
        }
        let mut rng = rand::thread_rng();
        Ok(nacks
            .iter()
            .map(|n| match n.delay_ms {
                Some(ms) => ms,
                None => row_id(n.id)
                    .and_then(|id| current.get(&id))
                    .map(|(attempt, config)| config.backoff.delay_ms(to_u32(*attempt), &mut rng))
                    .unwrap_or(0),
            })
            .collect())
    }

    pub(crate) async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        let ids: Vec<JobId> = extends.iter().map(|e| e.id).collect();
        let mut out: Vec<Option<Result<Timestamp>>> = (0..extends.len()).map(|_| None).collect();
        let template = self.sql(&relaxable(&settle_sql(EXTEND, None), 5));
        for round in rounds(&ids) {
            let (positions, row_ids) = storable(&ids, &round, &mut out);
            if positions.is_empty() {
                continue;
            }
            let sql = sized(&template, positions.len());
            let tokens: Vec<&[u8]> = positions.iter().map(|&i| &extends[i].lease_token.as_bytes()[..]).collect();
            let timeouts: Vec<i64> =
                positions.iter().map(|&i| crate::to_i64(extends[i].visibility_timeout_ms)).collect();
            let now = self.now_param();
            let rows = self
                .run("extending leases", || {
                    pooled!(
                        self,
                        sqlx::query(&sql).bind(now).bind(&row_ids).bind(&tokens).bind(&timeouts).bind(true),
                        fetch_all
                    )
                })
                .await?;
            for row in rows {
                let verdict = Verdict::read(&row, &positions)?;
                let id = ids[verdict.position];
                out[verdict.position] = Some(if verdict.done {
                    metrics::counter!(names::LEASE_EXTENSIONS, "queue" => verdict.label()).increment(1);
                    let expires: i64 = row.try_get("lease_expires_at").map_err(decode)?;
                    Ok(Timestamp::from_millis(expires))
                } else if row.try_get::<Option<bool>, _>("cancelled").map_err(decode)?.unwrap_or(false) {
                    // The holder learns of the cancel here, and its lease stays as it was.
                    Err(Error::JobCancelled(id))
                } else {
                    Err(rejected(id, verdict.existed, verdict.queue.as_deref()))
                });
            }
        }
        collect(out)
    }

    /// Fails on `conn`: on the pool, or in a transaction (a commit's).
    pub(crate) async fn job_fail(&self, conn: &mut Conn<'_>, fails: &[Fail]) -> Result<ItemResults<()>> {
        let ids: Vec<JobId> = fails.iter().map(|f| f.id).collect();
        let mut out: Vec<Option<Result<()>>> = (0..fails.len()).map(|_| None).collect();
        let template = self.sql(&relaxable(&settle_sql(FAIL, None), 5));
        for round in rounds(&ids) {
            let (positions, row_ids) = storable(&ids, &round, &mut out);
            if positions.is_empty() {
                continue;
            }
            let sql = sized(&template, positions.len());
            let tokens: Vec<&[u8]> = positions.iter().map(|&i| &fails[i].lease_token.as_bytes()[..]).collect();
            let errors: Vec<String> = positions.iter().map(|&i| error_text(&fails[i].error)).collect();
            let now = self.now_param();
            let relax = matches!(conn, Conn::Pool);
            let rows = self
                .fetch_all(conn, "failing jobs", || {
                    sqlx::query(&sql).bind(now).bind(&row_ids).bind(&tokens).bind(&errors).bind(relax)
                })
                .await?;
            for row in rows {
                let verdict = Verdict::read(&row, &positions)?;
                let id = ids[verdict.position];
                out[verdict.position] = Some(if verdict.done {
                    let stored: i16 = row.try_get("state").map_err(decode)?;
                    if stored == state::CANCELLED {
                        metrics::counter!(names::JOBS_CANCELLED, "queue" => verdict.label()).increment(1);
                    } else {
                        metrics::counter!(names::DEAD_LETTERED, "queue" => verdict.label(), "reason" => "failed")
                            .increment(1);
                    }
                    Ok(())
                } else {
                    Err(rejected(id, verdict.existed, verdict.queue.as_deref()))
                });
            }
        }
        collect(out)
    }

    /// Releases on `conn`: on the pool, or in a transaction (a commit's).
    pub(crate) async fn job_release(&self, conn: &mut Conn<'_>, releases: &[Release]) -> Result<ItemResults<()>> {
        let ids: Vec<JobId> = releases.iter().map(|r| r.id).collect();
        let mut out: Vec<Option<Result<()>>> = (0..releases.len()).map(|_| None).collect();
        let template = self.sql(&relaxable(&settle_sql(RELEASE, Some("released")), 5));
        for round in rounds(&ids) {
            let (positions, row_ids) = storable(&ids, &round, &mut out);
            if positions.is_empty() {
                continue;
            }
            let sql = sized(&template, positions.len());
            let tokens: Vec<&[u8]> = positions.iter().map(|&i| &releases[i].lease_token.as_bytes()[..]).collect();
            let delays: Vec<i64> =
                positions.iter().map(|&i| crate::to_i64(releases[i].delay_ms.unwrap_or(0))).collect();
            let now = self.now_param();
            let relax = matches!(conn, Conn::Pool);
            let rows = self
                .fetch_all(conn, "releasing jobs", || {
                    sqlx::query(&sql).bind(now).bind(&row_ids).bind(&tokens).bind(&delays).bind(relax)
                })
                .await?;
            for row in rows {
                let verdict = Verdict::read(&row, &positions)?;
                let id = ids[verdict.position];
                out[verdict.position] = Some(if verdict.done {
                    let stored: i16 = row.try_get("state").map_err(decode)?;
                    if stored == state::CANCELLED {
                        metrics::counter!(names::JOBS_CANCELLED, "queue" => verdict.label()).increment(1);
                    } else {
                        metrics::counter!(names::REDELIVERIES, "queue" => verdict.label(), "reason" => "released")
                            .increment(1);
                    }
                    Ok(())
                } else {
                    Err(rejected(id, verdict.existed, verdict.queue.as_deref()))
                });
            }
        }
        collect(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_put_each_mention_of_a_job_after_the_previous_one() {
        let (a, b, c) = (JobId::new(1), JobId::new(2), JobId::new(3));
        assert_eq!(rounds(&[a, b, c]), vec![vec![0, 1, 2]]);
        assert_eq!(rounds(&[a, b, a, a, c, b]), vec![vec![0, 1, 4], vec![2, 5], vec![3]]);
    }

    #[test]
    fn verdict_and_notify_templates_expand() {
        let sql = settle_sql(RELEASE, Some("released"));
        assert!(!sql.contains("{verdict") && !sql.contains("{notify"), "{sql}");
        assert!(sql.contains("LEFT JOIN released s ON s.id = i.id") && sql.contains("FROM released c JOIN"), "{sql}");
        assert!(
            sql.contains(", (SELECT count(*) FROM notified) AS notified") && sql.contains("\nFROM items i\n"),
            "{sql}"
        );
    }

    #[test]
    fn error_text_keeps_no_nul_and_stays_in_bounds() {
        let text = error_text(&"\0".repeat(onceq_core::limits::ERROR_TEXT_BYTES_MAX));
        assert!(!text.contains('\0'));
        assert!(text.len() <= onceq_core::limits::ERROR_TEXT_BYTES_MAX);
    }
}
