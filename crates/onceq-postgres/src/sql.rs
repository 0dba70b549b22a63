//! Statement text: how a statement's template becomes the text run on a schema (the schema, the
//! clock and the `NOTIFY` channel filled in), and the keys of the hot path's statements, which
//! the store prepares once and `statements` publishes. A leaf: the modules that hold the
//! templates and the store that runs them all build on it.

use crate::schema::SCHEMA_NAME_LEN_MAX;

/// The SQL expression every statement reads "now" from (see the crate docs, "Time").
const NOW_SQL: &str = "coalesce($1::int8, floor(extract(epoch FROM statement_timestamp()) * 1000)::int8)";

/// `template` with `{now}` replaced by [`NOW_SQL`], `{s}` by `quoted` (the quoted schema) and
/// `{channel}` by `channel`: what [`PgStore`](crate::PgStore) does to every statement it runs.
pub(crate) fn fill(template: &str, quoted: &str, channel: &str) -> String {
    template
        .replace("{now}", NOW_SQL)
        .replace("{s}", quoted)
        .replace("{channel}", channel)
        .replace("{relax_column}", RELAX)
        .replace("{relax}", "false")
}

/// A column that turns off `synchronous_commit` for the statement's own transaction when
/// `{relax}` holds (the crate docs, "Per-queue durability"): `set_config(..., true)` lasts until
/// the transaction ends, which for a statement run on its own is its commit. `{relax}` is a
/// `bool` parameter where the store binds one (a `relaxed` queue's statement on the pool), and
/// [`fill`] makes it `false` everywhere else: inside a caller's transaction, or a commit's, the
/// transaction's own setting decides.
pub(crate) const RELAX: &str = "(SELECT set_config('synchronous_commit', 'off', true) WHERE {relax}) AS relaxed";

/// The `NOTIFY` channel of the stores on `schema` (a validated schema name, so the channel is an
/// identifier of `[A-Za-z0-9_]` of at most 63 bytes).
pub(crate) fn channel_of(schema: &str) -> String {
    format!("onceq_{}", &schema[..schema.len().min(SCHEMA_NAME_LEN_MAX - 6)])
}

/// Up to this many items, a batch statement's `items` carry a `LIMIT` of their exact count.
/// PostgreSQL guesses that `unnest` of a parameter array yields 10 rows, so for a smaller batch
/// the generic plan looked dearer than the custom ones and every single-job ack or enqueue was
/// planned afresh; with the count as a literal both agree and the plan is cached. One prepared
/// statement per count up to this bound; larger batches share one.
pub(crate) const ITEMS_EXACT_MAX: usize = 10;

/// A statement of the hot path (see [`crate::statements`] for `$1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HotStatement {
    /// The first statement of an enqueue into a queue the store does not know yet (or whose
    /// config changed), or of jobs scheduled for later: reads the clock and finds the queue by
    /// name (`$2`); returns `now`, `id`, `config`. The store then remembers the queue.
    QueueLookup,
    /// The enqueue of a batch of `items` jobs, the only statement of an enqueue of jobs ready at
    /// once into a queue the store knows: `$1` NULL there (the database's clock), or the lookup's
    /// `now`; then the jobs' columns as arrays (`$2` payloads `bytea[]`, `$3` headers `text[]`,
    /// `$4` priorities `int4[]`, `$5` run_at `int8[]`, NULL for "now", `$6` max_attempts
    /// `int4[]`, `$7` dedup ids `text[]`, `$8` whether each claims its dedup id `bool[]`), `$9`
    /// the queue's id, `$10` how long claimed dedup ids live (ms), `$11` the queue's config as
    /// the store last read it (NULL: any config; the store always passes it): with another
    /// config, or another queue under that id, it inserts nothing and returns no row; `$12`
    /// (`bool`) whether it commits without waiting for the WAL's flush (a `relaxed` queue's
    /// enqueue on the pool). Returns `ord`, `id`, `original`,
    /// `notified` and `now` per job.
    Enqueue {
        /// Jobs in the batch (statements for up to 10 items are planned for their exact count).
        items: usize,
    },
    /// The enqueue of a batch of `items` jobs into a `per_key` queue, or of jobs of which any
    /// has an ordering key, in place of [`HotStatement::Enqueue`]: its parameters, then `$12`
    /// the jobs' ordering keys (`text[]`, NULL for a job without one), `$13` each keyed job's
    /// partition (`int4[]`, NULL in an unordered queue), `$14` the queue's partition count when
    /// it is `per_key`, else NULL, and `$15` in place of its `$12`. Returns what
    /// [`HotStatement::Enqueue`] returns.
    EnqueueKeyed {
        /// Jobs in the batch (statements for up to 10 items are planned for their exact count).
        items: usize,
    },
    /// The first statement of a lease: applies the due transitions of the queue named `$2`;
    /// returns `now` and the queue's row (`id`, `name`, `config`, `paused`).
    ApplyDue,
    /// The lease of up to `max_jobs` jobs of an at-least-once queue: `$1` the `now` of
    /// [`HotStatement::ApplyDue`], `$2` the queue's id, `$3` the new lease tokens (`bytea[]`,
    /// `max_jobs` of them), `$4` when the leases expire, `$5` (`bool`) whether it commits without
    /// waiting for the WAL's flush (a `relaxed` queue's). Returns the leased jobs.
    Lease {
        /// Most jobs the lease takes (a literal in the statement, one statement per value).
        max_jobs: u32,
    },
    /// The lease of up to `max_jobs` jobs of an at-least-once queue by a consumer group's
    /// member, from its partitions only: the parameters of [`HotStatement::Lease`], then `$5`
    /// the member's partitions (`int4[]`) in place of its `$5`. The store runs it inside the transaction that holds
    /// the group's row (see the crate's `groups` module). Returns the leased jobs.
    GroupLease {
        /// Most jobs the lease takes (a literal in the statement, one statement per value).
        max_jobs: u32,
    },
    /// The lease of up to `max_jobs` jobs of an at-least-once queue whose only limit is a rate
    /// limit, in one statement: the parameters of [`HotStatement::Lease`], then `$5` the rate's
    /// interval in nanoseconds and `$6` its burst. It locks the queue's row of `flow_buckets`,
    /// leases what the bucket grants, moves the bucket and commits asynchronously (the crate's
    /// `flow` module). Returns the leased jobs with `granted`, `ready` and `bucket_tat` on each,
    /// or one row of those three alone when it leased nothing; no row when the queue has no
    /// bucket row yet.
    RateLease {
        /// Most jobs the lease takes (a literal in the statement, one statement per value).
        max_jobs: u32,
    },
    /// The ack of `items` leases: `$2` the job ids (`int8[]`), `$3` their lease tokens
    /// (`bytea[]`), `$4` (`bool`) whether it may commit without waiting for the WAL's flush if
    /// every job it acks is of a `relaxed` queue (true on the pool). Returns one verdict row per
    /// item, in order.
    Ack {
        /// Leases in the batch (statements for up to 10 items are planned for their exact count).
        items: usize,
    },
}

impl HotStatement {
    /// The statement of the same text: batches of more than
    /// [`ITEMS_EXACT_MAX`] items share one, so they share a key.
    pub(crate) fn text_key(self) -> Self {
        let shared = ITEMS_EXACT_MAX + 1;
        match self {
            HotStatement::Enqueue { items } => HotStatement::Enqueue { items: items.min(shared) },
            HotStatement::EnqueueKeyed { items } => HotStatement::EnqueueKeyed { items: items.min(shared) },
            HotStatement::Ack { items } => HotStatement::Ack { items: items.min(shared) },
            other => other,
        }
    }
}

/// The jobs every lease of queue `$2` picks, as two CTEs: `picked`, up to `{limit}` ready jobs in
/// lease order (skipping rows another lease holds, none from a paused queue) with their payload
/// sizes, and `numbered`, each with its place `rn` and the payload bytes `before` it in that order
/// (a lease takes those with `before < {reply_bytes}`, `LEASE_REPLY_BYTES_MAX`). Filled into
/// the lease statements (`jobs`'s `LEASE` and `LEASE_AND_DELETE`, `flow`'s `RATE_LEASE`) at `{pick}`.
const PICK: &str = r#"picked AS (
    SELECT id, octet_length(payload) AS bytes FROM {s}.jobs
    WHERE queue_id = $2 AND state = 1 AND NOT EXISTS (SELECT 1 FROM {s}.queues WHERE id = $2 AND paused)
    ORDER BY priority DESC, run_at, id
    LIMIT {limit}
    FOR UPDATE SKIP LOCKED
),
numbered AS (
    SELECT id, row_number() OVER () AS rn, sum(bytes) OVER (ROWS UNBOUNDED PRECEDING) - bytes AS before FROM picked
)"#;

/// A lease template with its `{pick}`, `{limit}` and `{reply_bytes}` filled in.
pub(crate) fn with_pick(template: &str, max_jobs: u32) -> String {
    template
        .replace("{pick}", PICK)
        .replace("{limit}", &max_jobs.to_string())
        .replace("{reply_bytes}", &onceq_core::limits::LEASE_REPLY_BYTES_MAX.to_string())
}
