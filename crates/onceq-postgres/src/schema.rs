//! The tables, indexes and triggers of one onceq schema, and versioned migrations.
//!
//! Every object lives in the store's schema (`onceq` unless configured), so several stores (or
//! tests) share one database without touching each other. `migrations` records each applied
//! version. Migrating takes a transaction-scoped advisory lock on the schema name first, so
//! processes that start at once migrate one after the other; a schema recording a version newer
//! than this build knows is refused, never altered.
//!
//! # Tables
//!
//! - `queues`: name, config (JSON of `QueueConfig`), pause flag.
//! - `jobs`: one row per job, `state` 0 scheduled, 1 ready, 2 leased, 3 dead, 4 blocked. Times
//!   are bigint milliseconds since the Unix epoch, all read from one clock (see the crate docs).
//!   One partial index per state serves each access path: leasing (`jobs_ready`, in lease order),
//!   the oldest ready job, scheduled jobs coming due, leases expiring, dead-letter pages, a key's
//!   next blocked job (`jobs_blocked`). A job of a `per_key` queue has a `partition`; in any
//!   queue it may have an `ordering_key`.
//! - `ordering_keys`: in `per_key` queues, one row per key that has a head (the job holding the
//!   key, `head_id`); the function `keys_move_on` hands a key on when its head leaves. See the
//!   `keys` module for who writes it and how they take turns.
//! - `job_errors`: the error of every failed attempt, numbered per job by `jobs.error_count`.
//! - `dedup`: producer dedup ids, unique per (queue, dedup id), each alive until `expires_at`.
//! - `queue_counts`: per-queue job counts by state, in 32 slots per queue (a session adds to the
//!   slot of its backend pid, so concurrent writers rarely wait on one row); statement triggers on
//!   `jobs` keep them exact in the same transaction as every change, and stats sum the slots.
//! - `idempotency`: the idempotency store, one row per key.
//! - `groups`: consumer groups, one row per (queue, group) with the group's whole state as JSON
//!   (see the `groups` module); deleted with its queue (a foreign key `ON DELETE CASCADE`). The
//!   ready jobs of `per_key` queues are also indexed by partition (`jobs_ready_partition`), for
//!   the leases of a group's members.
//! - `producers` and `commits`: each producer's epoch and last checkpoint, and each commit id's
//!   content digest and outcome until it expires (see the `commits` module).
//! - `sleepers` (unlogged): the queues for which a store has a lease about to sleep, and until
//!   when; statements that make jobs ready send `NOTIFY` only for those (functions `wake` and
//!   `may_sleep`, see the `wait` module).

use onceq_core::{Error, Result};
use sqlx::{Connection, Executor, PgConnection};

use crate::error::{map, Target};

/// Job states as stored.
pub(crate) mod state {
    pub const SCHEDULED: i16 = 0;
    pub const READY: i16 = 1;
    pub const LEASED: i16 = 2;
    pub const DEAD: i16 = 3;
    /// Waiting behind an earlier job of its ordering key (see the `keys` module).
    pub const BLOCKED: i16 = 4;
    /// Cancelled: never delivered again, kept for inspection.
    pub const CANCELLED: i16 = 5;
}

/// Counter slots per queue in `queue_counts`.
const COUNT_SLOTS: u32 = 32;

/// Longest schema name: PostgreSQL identifiers are at most 63 bytes.
pub const SCHEMA_NAME_LEN_MAX: usize = 63;

/// Each entry migrates from version `index` to `index + 1`. `{s}` is the quoted schema name.
const MIGRATIONS: &[&str] = &[
    // v1: queues, jobs, errors, dedup ids, counters and their triggers, the idempotency store.
    r#"
    CREATE TABLE {s}.queues (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name       text NOT NULL UNIQUE,
        config     jsonb NOT NULL,
        paused     boolean NOT NULL DEFAULT false,
        created_at bigint NOT NULL
    );
    CREATE SEQUENCE {s}.job_ids AS bigint;
    CREATE TABLE {s}.jobs (
        id               bigint PRIMARY KEY,
        queue_id         bigint NOT NULL,
        run_at           bigint NOT NULL,
        enqueued_at      bigint NOT NULL,
        lease_expires_at bigint,
        leased_at        bigint,
        state            smallint NOT NULL CHECK (state BETWEEN 0 AND 3),
        priority         integer NOT NULL,
        attempt          integer NOT NULL,
        max_attempts     integer NOT NULL,
        error_count      integer NOT NULL DEFAULT 0,
        lease_token      bytea,
        dedup_id         text,
        headers          text,
        payload          bytea NOT NULL
    ) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
    CREATE INDEX jobs_ready ON {s}.jobs (queue_id, priority DESC, run_at, id) WHERE state = 1;
    CREATE INDEX jobs_ready_since ON {s}.jobs (queue_id, run_at) WHERE state = 1; -- dropped by v2
    CREATE INDEX jobs_scheduled ON {s}.jobs (queue_id, run_at) WHERE state = 0;
    CREATE INDEX jobs_leased ON {s}.jobs (queue_id, lease_expires_at) WHERE state = 2;
    CREATE INDEX jobs_dead ON {s}.jobs (queue_id, id) WHERE state = 3;
    CREATE TABLE {s}.job_errors (
        job_id  bigint NOT NULL,
        n       integer NOT NULL,
        attempt integer NOT NULL,
        at      bigint NOT NULL,
        error   text NOT NULL,
        PRIMARY KEY (job_id, n)
    );
    CREATE TABLE {s}.dedup (
        queue_id   bigint NOT NULL,
        dedup_id   text NOT NULL,
        job_id     bigint NOT NULL,
        expires_at bigint NOT NULL,
        PRIMARY KEY (queue_id, dedup_id)
    );
    CREATE INDEX dedup_expiry ON {s}.dedup (expires_at);
    CREATE TABLE {s}.queue_counts (
        queue_id  bigint NOT NULL,
        slot      integer NOT NULL,
        scheduled bigint NOT NULL DEFAULT 0,
        ready     bigint NOT NULL DEFAULT 0,
        leased    bigint NOT NULL DEFAULT 0,
        dead      bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (queue_id, slot)
    );
    CREATE FUNCTION {s}.count_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead)
        SELECT queue_id, pg_backend_pid() % {slots},
               count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1),
               count(*) FILTER (WHERE state = 2), count(*) FILTER (WHERE state = 3)
        FROM inserted GROUP BY queue_id ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead;
        RETURN NULL;
    END $fn$;
    CREATE FUNCTION {s}.count_deleted_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead)
        SELECT queue_id, pg_backend_pid() % {slots},
               -count(*) FILTER (WHERE state = 0), -count(*) FILTER (WHERE state = 1),
               -count(*) FILTER (WHERE state = 2), -count(*) FILTER (WHERE state = 3)
        FROM deleted GROUP BY queue_id ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead;
        RETURN NULL;
    END $fn$;
    CREATE FUNCTION {s}.count_updated_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        -- Old rows count out, new rows count in: no join needed, and a statement that moved no
        -- job between states (an extend) writes nothing.
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead)
        SELECT queue_id, pg_backend_pid() % {slots}, sum(s0), sum(s1), sum(s2), sum(s3)
        FROM (
            SELECT queue_id, -(state = 0)::int AS s0, -(state = 1)::int AS s1, -(state = 2)::int AS s2,
                   -(state = 3)::int AS s3
            FROM before_update
            UNION ALL
            SELECT queue_id, (state = 0)::int, (state = 1)::int, (state = 2)::int, (state = 3)::int
            FROM after_update
        ) moved
        GROUP BY queue_id
        HAVING sum(s0) <> 0 OR sum(s1) <> 0 OR sum(s2) <> 0 OR sum(s3) <> 0
        ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead;
        RETURN NULL;
    END $fn$;
    CREATE TRIGGER count_inserted_jobs AFTER INSERT ON {s}.jobs REFERENCING NEW TABLE AS inserted
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_inserted_jobs();
    CREATE TRIGGER count_deleted_jobs AFTER DELETE ON {s}.jobs REFERENCING OLD TABLE AS deleted
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_deleted_jobs();
    CREATE TRIGGER count_updated_jobs AFTER UPDATE ON {s}.jobs
        REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
        FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_updated_jobs();
    CREATE TABLE {s}.idempotency (
        key         text PRIMARY KEY,
        state       smallint NOT NULL,
        owner       text NOT NULL,
        until       bigint NOT NULL,
        fingerprint text,
        result      bytea
    );
    CREATE INDEX idempotency_until ON {s}.idempotency (until);
    "#,
    // v2: the lease's plan no longer depends on fresh statistics. With a second partial index on
    // ready jobs (queue_id, run_at), a table whose statistics say "few ready jobs" (analyzed
    // while most jobs were leased, or while it was empty) led the planner to read every ready job
    // through that smaller index and sort them all for each lease: 359 ms instead of 2.5 ms per
    // lease of 100 with 200,000 ready, until autovacuum's next analyze. With `jobs_ready` the only
    // index on ready jobs, its order is the lease's order and the plan is the same whatever the
    // statistics say. The oldest ready job of a queue (stats) is now found through `jobs_ready`
    // too, one index probe per distinct priority (queues.rs, STATS).
    r#"
    DROP INDEX IF EXISTS {s}.jobs_ready_since;
    "#,
    // v3: wake-ups only while a lease sleeps. `NOTIFY` serializes the commits of the
    // transactions that send it (PostgreSQL holds a global lock on its notification queue from
    // before the commit until the commit is flushed), so with a `NOTIFY` in every enqueue,
    // concurrent enqueues committed one at a time: pgbench with 16 clients enqueuing one job
    // each ran at about a fifth of the rate without it. Now a statement that makes jobs ready
    // notifies through `wake`, which sends the `NOTIFY` only while a store has a lease of that
    // queue registered as sleeping in `sleepers` (see the `wait` module, "Sleeping"). UNLOGGED:
    // registrations are seconds long, need no fsync, and a crash may forget them (every store
    // then re-registers before it sleeps again). Upgrade every store sharing a schema together:
    // a store built before v3 still running against it never registers, so enqueues do not
    // wake its leases, which then find jobs by their periodic look (every 5 s) only.
    r#"
    CREATE UNLOGGED TABLE {s}.sleepers (
        queue_id bigint NOT NULL,
        store    text NOT NULL,
        until    timestamptz NOT NULL,
        PRIMARY KEY (queue_id, store)
    );
    -- VOLATILE: in READ COMMITTED its query takes a fresh snapshot after the shared lock is
    -- held. Other isolation levels read the transaction's snapshot, which may predate a
    -- registration: they always notify.
    CREATE FUNCTION {s}.wake(channel text, queue bigint, note text) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $fn$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared(hashtext('onceq.wake {s}'), (queue % 2147483647)::int4);
        IF current_setting('transaction_isolation') <> 'read committed'
           OR EXISTS (SELECT 1 FROM {s}.sleepers s WHERE s.queue_id = queue AND s.until > clock_timestamp()) THEN
            PERFORM pg_notify(channel, note);
            RETURN true;
        END IF;
        RETURN false;
    END
    $fn$;
    -- Whether no transaction that may have missed a registration for `queue` is still open:
    -- it tries the lock every `wake` holds shared, and lets it go at once (autocommit).
    CREATE FUNCTION {s}.may_sleep(queue bigint) RETURNS boolean
    LANGUAGE sql VOLATILE AS $fn$
        SELECT pg_try_advisory_xact_lock(hashtext('onceq.wake {s}'), (queue % 2147483647)::int4)
    $fn$;
    "#,
    // v4: ordering per key (docs/semantics.md, "Ordering per key"; the `keys` module). Jobs gain
    // their ordering key and partition, and a fifth state, blocked (4), kept in an index of its
    // own so that no lease ever reads past a blocked job; `ordering_keys` holds each key's head;
    // the counters count blocked jobs; `keys_move_on` hands a key on when its head leaves. The
    // new columns have no default, so adding them rewrites nothing. The wider state check is
    // added NOT VALID: every row passed the narrower one, so scanning them (under this
    // migration's exclusive lock on the table) would prove nothing.
    r#"
    ALTER TABLE {s}.jobs ADD COLUMN ordering_key text, ADD COLUMN partition integer;
    ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check;
    ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 0 AND 4) NOT VALID;
    CREATE INDEX jobs_blocked ON {s}.jobs (queue_id, ordering_key, id) WHERE state = 4;
    CREATE TABLE {s}.ordering_keys (
        queue_id     bigint NOT NULL,
        ordering_key text NOT NULL,
        head_id      bigint NOT NULL,
        PRIMARY KEY (queue_id, ordering_key)
    );
    ALTER TABLE {s}.queue_counts ADD COLUMN blocked bigint NOT NULL DEFAULT 0;
    CREATE OR REPLACE FUNCTION {s}.count_inserted_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead, blocked)
        SELECT queue_id, pg_backend_pid() % {slots},
               count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1),
               count(*) FILTER (WHERE state = 2), count(*) FILTER (WHERE state = 3),
               count(*) FILTER (WHERE state = 4)
        FROM inserted GROUP BY queue_id ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead,
            blocked = c.blocked + EXCLUDED.blocked;
        RETURN NULL;
    END $fn$;
    CREATE OR REPLACE FUNCTION {s}.count_deleted_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead, blocked)
        SELECT queue_id, pg_backend_pid() % {slots},
               -count(*) FILTER (WHERE state = 0), -count(*) FILTER (WHERE state = 1),
               -count(*) FILTER (WHERE state = 2), -count(*) FILTER (WHERE state = 3),
               -count(*) FILTER (WHERE state = 4)
        FROM deleted GROUP BY queue_id ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead,
            blocked = c.blocked + EXCLUDED.blocked;
        RETURN NULL;
    END $fn$;
    CREATE OR REPLACE FUNCTION {s}.count_updated_jobs() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        INSERT INTO {s}.queue_counts AS c (queue_id, slot, scheduled, ready, leased, dead, blocked)
        SELECT queue_id, pg_backend_pid() % {slots}, sum(s0), sum(s1), sum(s2), sum(s3), sum(s4)
        FROM (
            SELECT queue_id, -(state = 0)::int AS s0, -(state = 1)::int AS s1, -(state = 2)::int AS s2,
                   -(state = 3)::int AS s3, -(state = 4)::int AS s4
            FROM before_update
            UNION ALL
            SELECT queue_id, (state = 0)::int, (state = 1)::int, (state = 2)::int, (state = 3)::int,
                   (state = 4)::int
            FROM after_update
        ) moved
        GROUP BY queue_id
        HAVING sum(s0) <> 0 OR sum(s1) <> 0 OR sum(s2) <> 0 OR sum(s3) <> 0 OR sum(s4) <> 0
        ORDER BY queue_id
        ON CONFLICT (queue_id, slot) DO UPDATE SET
            scheduled = c.scheduled + EXCLUDED.scheduled, ready = c.ready + EXCLUDED.ready,
            leased = c.leased + EXCLUDED.leased, dead = c.dead + EXCLUDED.dead,
            blocked = c.blocked + EXCLUDED.blocked;
        RETURN NULL;
    END $fn$;
    -- The jobs `leaving_ids` (of queues `leaving_queue_ids`, keys `leaving_keys`) left the queue
    -- or died: each that is still its key's head hands the key to the key's blocked job with the
    -- lowest id (scheduled if its run_at is after `at_ms`, else ready from `at_ms`), or, with none
    -- blocked, frees the key. Wakes the leases of `wake_channel` sleeping on the queues. Returns
    -- how many jobs it promoted. Called by the statement that made the jobs leave (see the
    -- `keys` module for why a function).
    --
    -- VOLATILE, for the snapshots: in READ COMMITTED each statement below reads the database as
    -- of its own start, so the second one, which looks for blocked jobs, starts after the first
    -- holds the key rows, and sees every blocked job of an enqueue that held one before it
    -- (enqueues hold the key row until they commit). Under REPEATABLE READ or SERIALIZABLE the
    -- lock of a key row an enqueue changed since the transaction's snapshot fails with a
    -- serialization error instead. Key rows are locked in (queue, key) order, as enqueues and
    -- redrives lock theirs, so that they cannot deadlock on each other.
    CREATE FUNCTION {s}.keys_move_on(leaving_queue_ids int8[], leaving_keys text[], leaving_ids int8[], at_ms int8,
                                     wake_channel text) RETURNS int8
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        promoted_count int8;
        woken_count int8;
    BEGIN
        PERFORM 1 FROM {s}.ordering_keys k
        JOIN unnest(leaving_queue_ids, leaving_keys) AS l(queue_id, ordering_key)
          ON k.queue_id = l.queue_id AND k.ordering_key = l.ordering_key
        ORDER BY k.queue_id, k.ordering_key COLLATE "C"
        FOR UPDATE OF k;
        WITH heads AS (
            SELECT DISTINCT k.queue_id, k.ordering_key
            FROM {s}.ordering_keys k
            JOIN unnest(leaving_queue_ids, leaving_keys, leaving_ids) AS l(queue_id, ordering_key, id)
              ON k.queue_id = l.queue_id AND k.ordering_key = l.ordering_key AND k.head_id = l.id
        ),
        next AS (
            SELECT h.queue_id, h.ordering_key, b.id
            FROM heads h LEFT JOIN LATERAL (
                SELECT j.id FROM {s}.jobs j
                WHERE j.queue_id = h.queue_id AND j.ordering_key = h.ordering_key AND j.state = 4
                ORDER BY j.id LIMIT 1
            ) b ON true
        ),
        promoted AS (
            UPDATE {s}.jobs j
            SET state = CASE WHEN j.run_at > at_ms THEN 0 ELSE 1 END, run_at = greatest(j.run_at, at_ms)
            FROM next n
            WHERE j.id = n.id AND j.state = 4
            RETURNING j.queue_id, j.state, j.run_at
        ),
        handed_on AS (
            UPDATE {s}.ordering_keys k SET head_id = n.id
            FROM next n
            WHERE n.id IS NOT NULL AND k.queue_id = n.queue_id AND k.ordering_key = n.ordering_key
        ),
        freed AS (
            DELETE FROM {s}.ordering_keys k
            USING next n
            WHERE n.id IS NULL AND k.queue_id = n.queue_id AND k.ordering_key = n.ordering_key
        ),
        notes AS (
            SELECT q.id, q.name, count(*) FILTER (WHERE p.state = 1) AS ready,
                   min(p.run_at) FILTER (WHERE p.state = 0) AS next_at
            FROM promoted p JOIN {s}.queues q ON q.id = p.queue_id
            GROUP BY q.id, q.name
        ),
        woken AS (
            SELECT {s}.wake(wake_channel, id, 'r ' || ready || ' ' || name) FROM notes WHERE ready > 0
            UNION ALL
            SELECT {s}.wake(wake_channel, id, 's ' || next_at || ' ' || name) FROM notes WHERE next_at IS NOT NULL
        )
        SELECT (SELECT count(*) FROM promoted), (SELECT count(*) FROM woken) INTO promoted_count, woken_count;
        RETURN promoted_count;
    END $fn$;
    "#,
    // v5: consumer groups, one row per (queue, group) holding the group's whole state (JSON of
    // `onceq_core::group::GroupState`), deleted with its queue; and the ready jobs of `per_key`
    // queues by partition, in lease order, for the leases of a group's members (see the
    // `groups` module). Only jobs with a partition are in it, so unordered enqueues do not pay
    // for it. Building it locks `jobs` against writes for as long as it takes on a big table.
    r#"
    CREATE TABLE {s}.groups (
        queue_id bigint NOT NULL REFERENCES {s}.queues (id) ON DELETE CASCADE,
        name     text NOT NULL,
        state    jsonb NOT NULL,
        PRIMARY KEY (queue_id, name)
    );
    CREATE INDEX jobs_ready_partition ON {s}.jobs (queue_id, partition, priority DESC, run_at, id)
        WHERE state = 1 AND partition IS NOT NULL;
    "#,
    // v6: commits (`onceq_core::commit`; the `commits` module). Producers with their epoch (the
    // fence; a commit holds its producer's row `FOR SHARE`, a registration updates it, so the
    // two take turns) and the checkpoint of their last commit that carried one; commit ids with
    // the digest of what the commit did and its outcome, kept until `expires_at` for replay and
    // swept with the dedup ids. A commit claims its id by inserting the row first, so two
    // commits with one id take turns on the unique key.
    r#"
    CREATE TABLE {s}.producers (
        id            text PRIMARY KEY,
        epoch         bigint NOT NULL,
        checkpoint    jsonb,
        registered_at bigint NOT NULL
    );
    CREATE TABLE {s}.commits (
        commit_id  text PRIMARY KEY,
        digest     text NOT NULL,
        outcome    jsonb,
        expires_at bigint NOT NULL
    );
    CREATE INDEX commits_expiry ON {s}.commits (expires_at);
    "#,
    // v7: flow limits (`onceq_core::flow`; the `flow` module). One row per queue with a rate,
    // in-flight or depth limit: the lock every limited lease and depth-limited enqueue of the
    // queue takes, on any server, and the rate limit's bucket (`tat`, nanoseconds of the store's
    // clock). Created by the first such lease or enqueue, deleted with its queue.
    r#"
    CREATE TABLE {s}.flow_buckets (
        queue_id bigint PRIMARY KEY REFERENCES {s}.queues (id) ON DELETE CASCADE,
        tat      bigint NOT NULL
    );
    "#,
    // v8: schedules (`onceq_core::schedule`; the `schedules` module). The spec as JSON text,
    // the paused flag, the first tick not yet fired or skipped (NULL: never fires again), and
    // the last tick that fired with its job. A firing pass holds the row `FOR UPDATE SKIP
    // LOCKED` while it enqueues the ticks' jobs and advances `next_tick`.
    r#"
    CREATE TABLE {s}.schedules (
        name        text PRIMARY KEY,
        spec        text NOT NULL,
        paused      boolean NOT NULL,
        next_tick   bigint,
        last_tick   bigint,
        last_job_id bigint,
        updated_at  bigint NOT NULL
    );
    CREATE INDEX schedules_due ON {s}.schedules (next_tick) WHERE NOT paused AND next_tick IS NOT NULL;
    "#,
    // v9: per-key rate buckets (`rate_limit_by`; the `flow` module). One row per key value of a
    // queue that leased within the last refill (`key` is `=` and the value, or empty for the
    // jobs without the key), read and written under the queue's `flow_buckets` row lock; refilled
    // rows are deleted by later leases through `flow_key_buckets_refilled`, which raise the
    // queue's `flow_buckets.key_floor` to the greatest `tat` deleted: the bucket of a key
    // without a row. Deleted with its queue.
    r#"
    CREATE TABLE {s}.flow_key_buckets (
        queue_id bigint NOT NULL REFERENCES {s}.queues (id) ON DELETE CASCADE,
        key      text NOT NULL,
        tat      bigint NOT NULL,
        PRIMARY KEY (queue_id, key)
    );
    CREATE INDEX flow_key_buckets_refilled ON {s}.flow_key_buckets (queue_id, tat);
    ALTER TABLE {s}.flow_buckets ADD COLUMN key_floor bigint NOT NULL DEFAULT 0;
    "#,
    // v10: paced redrives (`onceq_core::redrive`; the `redrives` module). The queue by name (a
    // deleted queue stops its redrive), the filter as the API's JSON, the state, the progress
    // (jobs redriven, the cursor above which the next step starts; moved by the statement that
    // redrives), and the pace (budget in thousandths of a job, when it was last topped up). A
    // step holds the row's lock, so the stores of a cluster share one pace.
    r#"
    CREATE TABLE {s}.redrives (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        queue        text NOT NULL,
        filter       text NOT NULL,
        rate         integer NOT NULL,
        state        smallint NOT NULL,
        matched      bigint NOT NULL,
        redriven     bigint NOT NULL,
        cursor       bigint,
        budget_milli bigint NOT NULL,
        stepped_at   bigint NOT NULL,
        created_at   bigint NOT NULL,
        finished_at  bigint,
        error        text
    );
    "#,
    // v11: a queue's jobs in one state by id (`onceq_core::Inspect::job_page`, the dashboard's pages):
    // each page reads only the rows it shows, in every state. On `state + 0`, not `state`, so that
    // only a query that says `state + 0` can use it: on `state` the planner took it for leases
    // (then sorted) when its statistics said the queue held few ready jobs, instead of
    // `jobs_ready`, whose order is the lease order.
    r#"
    CREATE INDEX jobs_state ON {s}.jobs (queue_id, (state + 0), id);
    "#,
    // v12: cancelled jobs (`Store::job_cancel`): a sixth state, cancelled (5), and when a job was
    // cancelled: a job in state 5 ended then; a leased job (state 2) with a time is marked, and
    // the end of its lease cancels it. The counter triggers count states 0 to 4 only, so a job
    // that becomes cancelled counts out of its old state and into none; `queue_get` counts the
    // cancelled ones through `jobs_state`. The new column has no default: adding it rewrites
    // nothing.
    r#"
    ALTER TABLE {s}.jobs ADD COLUMN cancelled_at bigint;
    ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check;
    ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check CHECK (state BETWEEN 0 AND 5) NOT VALID;
    "#,
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks a schema name: 1 to 63 bytes of `[A-Za-z0-9_]`, not starting with a digit.
pub(crate) fn validate_name(schema: &str) -> Result<()> {
    let valid = !schema.is_empty()
        && schema.len() <= SCHEMA_NAME_LEN_MAX
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "schema name {schema:?} is not valid: use 1 to {SCHEMA_NAME_LEN_MAX} characters of [A-Za-z0-9_], \
             not starting with a digit"
        )))
    }
}

/// `schema` as a quoted SQL identifier (it is validated, so it holds no quote).
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Migrates `schema` to [`SCHEMA_VERSION`] on `conn`, creating it if needed; `true` when it
/// held no store before (the store was created, empty).
pub(crate) async fn migrate(conn: &mut PgConnection, schema: &str, target: &Target) -> Result<bool> {
    let fail = |context: &str| {
        let context = format!("migrating schema {schema}: {context}");
        move |e: sqlx::Error| map(target, &context, e)
    };
    let s = quoted(schema);
    let mut tx = conn.begin().await.map_err(fail("starting a transaction"))?;
    // Processes starting at once take turns here; the lock goes with the transaction.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('onceq.migrate'), hashtext($1))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(fail("waiting for the migration lock"))?;
    let (exists, has_version_table, relations, has_jobs): (bool, bool, i64, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                to_regclass($2) IS NOT NULL, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1), \
                to_regclass($3) IS NOT NULL",
    )
    .bind(schema)
    .bind(format!("{s}.migrations"))
    .bind(format!("{s}.jobs"))
    .fetch_one(&mut *tx)
    .await
    .map_err(fail("inspecting the schema"))?;
    if exists && !has_version_table && relations > 0 {
        return Err(Error::Storage(format!(
            "schema {schema} exists and holds {relations} relation(s) (tables, indexes, sequences) that are not onceq's; \
             refusing to touch it. Choose another schema for onceq"
        )));
    }
    let version: i32 = if has_version_table {
        sqlx::query_scalar(&format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"))
            .fetch_one(&mut *tx)
            .await
            .map_err(fail("reading the schema version"))?
    } else {
        0
    };
    // The transactional outbox (onceq-outbox) versions its schemas with a `migrations` table
    // too: one without the store's `jobs` table is not a store, whatever its version says.
    if version > 0 && !has_jobs {
        return Err(Error::Storage(format!(
            "schema {schema} has a migrations table but no onceq store in it (no jobs table): it is not a store's \
             schema (an outbox's, perhaps); refusing to touch it. Give the store a schema of its own"
        )));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::Storage(format!(
            "schema {schema} was written by a newer onceq (schema version {version}); this build knows versions up \
             to {SCHEMA_VERSION}. Upgrade onceq, or point it at another schema"
        )));
    }
    if version == SCHEMA_VERSION {
        return tx.commit().await.map_err(fail("committing")).map(|()| false);
    }
    if !has_version_table {
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE {s}.migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        );
        (&mut *tx).execute(create.as_str()).await.map_err(fail("creating the schema"))?;
    }
    for (from, template) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        let sql = template.replace("{s}", &s).replace("{slots}", &COUNT_SLOTS.to_string());
        (&mut *tx).execute(sql.as_str()).await.map_err(fail(&format!("applying version {}", from + 1)))?;
        sqlx::query(&format!("INSERT INTO {s}.migrations (version) VALUES ($1)"))
            .bind(i32::try_from(from + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(fail("recording the schema version"))?;
    }
    tx.commit().await.map_err(fail("committing"))?;
    tracing::info!(schema, from = version, to = SCHEMA_VERSION, "migrated the PostgreSQL schema");
    Ok(version == 0)
}

/// Opens one connection for migrating, with a precise error when the server cannot be reached.
pub(crate) async fn connect_once(options: &sqlx::postgres::PgConnectOptions, target: &Target) -> Result<PgConnection> {
    PgConnection::connect_with(options).await.map_err(|e| match e {
        sqlx::Error::Io(io) => Error::Unavailable(format!(
            "cannot connect to PostgreSQL at {}: {io}. Is the server running and reachable? Start it, or fix the \
             host and port in the database URL",
            target.name
        )),
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28") || c == "3D000") => {
            Error::Storage(format!(
                "PostgreSQL at {} refused the connection: {} (SQLSTATE {}); check the user, password and database \
                 in the URL",
                target.name,
                db.message(),
                db.code().unwrap_or_default()
            ))
        }
        other => map(target, "connecting", other),
    })
}
