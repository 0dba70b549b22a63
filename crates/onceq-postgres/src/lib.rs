//! onceq-postgres: the PostgreSQL store, for many servers and workers sharing one database.
//!
//! # Layout
//!
//! - `schema`: the tables, indexes and counter triggers of one onceq schema; versioned
//!   migrations, safe when several processes start at once.
//! - `due`: applying what the clock made due (scheduled jobs become ready, expired leases are
//!   redelivered or dead-lettered) before an operation looks at a queue.
//! - `jobs`: enqueue, lease, ack, nack, extend, fail, release and reading one job.
//! - `queues`: queue config, pause, delete, stats, and the dead letters of a queue.
//! - `keys`: ordering per key: each key's head, and how enqueues and the statements that make a
//!   head leave take turns on a key across servers (the pieces of SQL they share).
//! - `groups`: consumer groups: each group's state in one row, the group operations as
//!   transactions under its row lock, and the one-look lease of a member, serialized against
//!   hand-overs (Invariant 10); `jobs` runs the long poll around it.
//! - `schedules`: schedules, and firing their due ticks (one job per tick across servers, by
//!   the schedule row's lock), from a task each store runs and on `schedule_tick`.
//! - `redrives`: paced redrives: starting, reading, stopping, and the steps every store takes
//!   by itself under the redrive's row lock.
//! - `idempotency`: the idempotency store, in the same schema.
//! - `unique`: unique jobs: an enqueue batch with one, under an advisory lock per key.
//! - Each seam operation is implemented by a crate-private `PgStore` method of the seam's name
//!   (`PgStore::job_ack` in `jobs`, taking the connection it runs on), which the seam's trait
//!   method in this file calls after validating the request; so grepping a seam name finds its
//!   implementation here as in every backend.
//! - `transaction`: the store inside a caller's transaction (see "Inside a caller's
//!   transaction"), and running a statement where an operation runs: on the pool, or on a
//!   caller's connection.
//! - `conns`: the connections the store keeps checked out of the sqlx pool between its
//!   statements, which spares the pool's test round trip on every release.
//! - The worker whose handlers run inside a transaction is `onceq-postgres-worker`, so that
//!   this backend does not depend on the worker runtime (docs/design.md's dependency direction).
//! - `wait`: long polls: waiting leases, `LISTEN/NOTIFY` wake-ups, timers, and the name a store
//!   registers as sleeping under.
//! - `error`: PostgreSQL failures mapped onto the seam's error kinds.
//! - `sql`: how a statement's template becomes the text run on a schema (schema, clock and
//!   `NOTIFY` channel filled in), and [`statements::HotStatement`], the keys of the hot path's
//!   statements, which the store prepares once.
//! - [`statements`]: the text of the hot path's statements, for tools that run the store's own
//!   SQL (the floor of `onceq bench --store`).
//! - this file: [`PgStore`], [`PgOptions`], connecting, the seam's entry points, and what the
//!   modules above share of the store: where an operation's statements run (`Conn`: the pool,
//!   or a caller's connection) and the queues it remembers for the one-statement enqueue.
//!
//! # Time (Invariant 7)
//!
//! Every statement reads "now" as `coalesce($1, <the database's statement_timestamp() in ms>)`:
//! in production `$1` is NULL and the database's clock judges every lease expiry, `run_at` and
//! dedup window, whichever process asks. `statement_timestamp()` rather than `now()`: the two
//! agree for the store's own single-statement transactions, but inside a caller's transaction
//! `now()` stays at the moment that transaction began, and a long one would
//! judge leases and windows by a stale clock. Only when [`PgOptions::clock`] is set (the
//! conformance suite's manual clock) is that clock's reading passed instead: one code path
//! either way. Times are stored as bigint milliseconds since the Unix epoch. A statement that
//! needs a time computed from "now" (a lease's expiry, a retry's `run_at`) takes the "now" an
//! earlier statement of the same operation returned, so one operation sees one clock reading.
//!
//! # Concurrency
//!
//! Operations are single statements where they can be (an ack batch, a lease batch, an enqueue
//! batch is one statement each), so they need no explicit transaction and hold their row locks
//! for one round trip; the `_in` variants run the same statements inside a caller's
//! transaction, and hold their locks until it ends. Leases claim rows with
//! `FOR UPDATE SKIP LOCKED`; settles are fenced by the lease token in the statement's own
//! `WHERE` (Invariant 3); dedup ids are claimed with `INSERT ... ON CONFLICT` on a unique key
//! (Invariant 6). In a `per_key` queue an enqueue of a key and the key moving on (its head
//! acked, dead, purged) serialize on the key's row of `ordering_keys`, locked in key order (see
//! `keys`); nothing of that runs for an unordered queue. Due transitions are applied lazily, by
//! the operation that next looks at the queue (see `due`). A statement PostgreSQL rolls back
//! for a deadlock or a serialization failure is run again (on the pool; inside a caller's
//! transaction the whole transaction was rolled back, and running it again is the caller's).
//!
//! # Durability (Invariant 1)
//!
//! A call returns only after PostgreSQL committed its statement; with the server's default
//! `synchronous_commit = on` that commit is flushed to the WAL on disk first. What an `_in`
//! variant writes is durable when, and only if, the caller's transaction commits.
//!
//! # Per-queue durability
//!
//! A queue whose config says `durability: relaxed` has its own statements on the pool (enqueue,
//! lease, ack, nack, extend, fail, release) commit with `synchronous_commit = off`: each statement
//! turns it off for its one-statement transaction with `set_config(..., true)` when a `bool`
//! parameter says it may (`sql::RELAX`). The store binds it for a relaxed queue's enqueue and lease,
//! and for every settle on the pool, whose statement then relaxes only if every job it settled is
//! of a relaxed queue. A crash of PostgreSQL may forget such a commit (within three
//! `wal_writer_delay`s); a crash of onceq cannot. Inside a caller's transaction and a commit's,
//! nothing relaxes: the transaction's own setting decides. Due transitions, redrives, schedules
//! and group leases stay as the database's setting says.
//!
//! # Inside a caller's transaction
//!
//! [`PgStore::job_enqueue_in`], [`PgStore::job_ack_in`], [`PgStore::idempotency_begin_in`] and
//! [`PgStore::idempotency_complete_in`] have the semantics of their seam counterparts
//! (docs/semantics.md) and run on the connection they are given, usually a transaction's
//! (`&mut tx` passes one), which is what onceq offers that no separate broker can: jobs
//! enqueued with the business data, and a job acked with its effects. `onceq_postgres_worker::PgWorker` builds the
//! latter into the worker runtime. What changes inside a caller's transaction:
//!
//! - **Visibility.** Nothing the call wrote is seen by anyone else until the caller commits,
//!   and a rollback undoes all of it: the jobs, the dedup ids they claimed, a queue the enqueue
//!   created, an ack, an idempotency record. Wake-ups (`NOTIFY`) are transactional too:
//!   waiting leases wake when the caller commits, never for a rollback.
//! - **Locks.** Rows the call wrote stay locked until the caller's transaction ends: an acked
//!   job's row (leases skip it), a claimed dedup id or idempotency key (an enqueue of the same
//!   dedup id, or a `begin` of the same key, waits for the caller's outcome), and the name of a
//!   queue the enqueue created (upsert queues ahead of time to avoid that wait). In a
//!   `per_key` queue, an enqueue holds the rows of the ordering keys of its jobs, and an ack the
//!   row of its job's key: enqueues of those keys, and their heads leaving, wait for the
//!   caller's outcome. An enqueue also holds its queue's wake lock shared (see `wait`,
//!   "Sleeping"): while the caller's transaction is open, a lease of that queue that finds
//!   nothing and whose store is not yet registered as sleeping on it does not sleep but looks
//!   again every few milliseconds, backing off to a quarter of a second; and a transaction that
//!   enqueues into thousands of queues holds one such lock per queue (mind
//!   `max_locks_per_transaction`). Keep such transactions short.
//! - **Errors.** Statements run once: PostgreSQL aborts the caller's whole transaction on a
//!   deadlock or a serialization failure, which the call returns as `Unavailable` (its message
//!   names the SQLSTATE). Roll back and run the transaction again. Under
//!   REPEATABLE READ or SERIALIZABLE, an ack of a key's head fails so when a job was enqueued
//!   behind it after the transaction's snapshot (its snapshot could not see the job it must
//!   hand the key to).
//! - **Time.** Each statement reads the database's clock as it starts (see "Time").
//! - **Metrics** count what the statements did; a transaction rolled back afterwards was still
//!   counted.
//!
//! # Long polls
//!
//! A lease with `wait_ms` sleeps until a `NOTIFY` from any store sharing the schema (enqueue,
//! nack, release, redrive, resume, jobs coming due) says jobs are ready, or until a timer for the
//! queue's next scheduled job or lease expiry fires; see `wait`. Nothing polls the database
//! while nothing changes, beyond a look every few seconds per waiting lease as a safety net.
//! Since a `NOTIFY` makes PostgreSQL commit its senders one at a time, statements send it only
//! while a lease of their queue is registered as sleeping (`wait`, "Sleeping"): enqueues into a
//! queue whose workers are all busy commit side by side.
//!
//! ```no_run
//! # async fn demo() -> onceq_core::Result<()> {
//! use onceq_core::{NewJob, QueueName, StoreExt};
//! use onceq_postgres::{PgOptions, PgStore};
//!
//! let store = PgStore::connect(PgOptions::new("postgres://postgres@127.0.0.1:5432/test")).await?;
//! let emails = QueueName::new("emails")?;
//! store.enqueue(&emails, NewJob::new(r#"{"to":"ada@example.com"}"#)).await?;
//! if let Some(job) = store.lease_one(&emails).await? {
//!     store.ack(job.lease()).await?;
//! }
//! store.close().await;
//! # Ok(()) }
//! ```

mod commits;
mod conns;
mod due;
mod error;
mod flow;
mod groups;
mod idempotency;
mod jobs;
mod keys;
mod queues;
mod redrives;
mod schedules;
mod schema;
mod sql;
pub mod statements;
mod transaction;
mod unique;
mod wait;

use std::str::FromStr;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::commit::{Commit, CommitOutcome, ProducerId, Registration};
use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::redrive::PacedRedrive;
use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::store::validate;
use onceq_core::{
    Clock, DeadList, DeadPage, Enqueued, Error, Extend, Fail, ItemResults, Job, JobId, LeaseOptions, LeaseRef,
    LeasedJob, Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, Redrive, RedriveId,
    Redriven, Release, Result, Store, Timestamp,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Connection;

use crate::error::Target;
pub use crate::schema::SCHEMA_NAME_LEN_MAX;
/// A transaction on the store's pool, for `*_in` calls (see `onceq-postgres-worker` for a worker
/// whose handlers run inside one).
pub type PgTransaction = sqlx::postgres::PgTransaction<'static>;

/// The schema onceq uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "onceq";
/// Connections in the pool unless told otherwise (the listener takes one more).
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// Most connections a store may open.
pub const POOL_SIZE_MAX: u32 = 1000;
/// How long a request waits for a pooled connection before it fails as unavailable, unless
/// told otherwise.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`PgStore::connect`] waits for its first connection (and the migration) before it
/// fails as unavailable, unless told otherwise: a database that cannot be reached is reported
/// at start in seconds, not after the pool's wait.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of every session of the store's pool: `SET` once on each new connection (a
/// round trip per connection, none per statement; the startup packet's `options` would cost
/// nothing, but connection poolers such as PgBouncer refuse that parameter by default). They
/// take precedence over `options` in the database URL.
///
/// - `enable_bitmapscan = off`. A jobs table not yet analyzed, or last analyzed while its queue
///   was empty, makes the planner guess a handful of ready jobs; with bitmap scans allowed it
///   then planned the lease as a bitmap scan of every ready job and a sort of them all (150-250
///   ms per lease of 100 with 70,000 ready, until autovacuum analyzed the table). Without them
///   the lease walks `jobs_ready` in lease order and stops after its batch, whatever the
///   statistics say. The store's statements read by primary key or along an index; none needs
///   a bitmap scan. (tests/plans.rs, `leasing_before_statistics_exist_walks_the_ready_index`.)
///
/// Statements of the store that run in a caller's transaction run with the caller's settings:
/// those are enqueues and settles, by primary key.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[("enable_bitmapscan", "off")];

/// A pooled connection idle at least this long is pinged before it is handed out; one in steady
/// use is not, unless a connection failed in the last 10 s (a restart or failover cuts them
/// all). sqlx pings on every acquire by default, which doubles the round trips of a
/// one-statement call (HikariCP's `aliveBypassWindowMs` makes the same trade, at 500 ms).
pub const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Where an operation's statements run.
pub(crate) enum Conn<'c> {
    /// On the pool: each statement is a transaction of its own, run again if PostgreSQL rolls it
    /// back for a deadlock or a serialization failure.
    Pool,
    /// On the caller's connection, inside its transaction if it opened one: each statement runs
    /// once (a deadlock aborts the caller's whole transaction, so running one statement again
    /// could not help).
    Caller(&'c mut sqlx::PgConnection),
    /// Inside a transaction this store opened itself (a commit's), at read committed: each
    /// statement runs once, as on the caller's connection, and reads what is committed as a
    /// statement on the pool does (so a queue it looks up may be remembered).
    Own(&'c mut sqlx::PgConnection),
}

/// A queue as this store last looked it up, for enqueues that skip the lookup.
#[derive(Debug)]
pub(crate) struct KnownQueue {
    id: i64,
    /// The config as the database prints it: the enqueue checks it is unchanged.
    config_text: String,
    config: QueueConfig,
}

/// How to connect a [`PgStore`].
#[derive(Clone)]
#[non_exhaustive]
pub struct PgOptions {
    /// The database URL, `postgres://user:password@host:port/database`.
    pub url: String,
    /// The schema holding onceq's tables; created if missing. Stores sharing a schema share
    /// queues and jobs.
    pub schema: String,
    /// Most pooled connections for requests.
    pub pool_size: u32,
    /// How long a request waits for a connection before failing with [`Error::Unavailable`].
    pub acquire_timeout: Duration,
    /// How long [`PgStore::connect`] waits for its first connection before failing with
    /// [`Error::Unavailable`] (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// A clock to judge time by instead of the database's: for tests only (a manual clock).
    /// `None`, the default, uses the database's `now()` (Invariant 7).
    pub clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl PgOptions {
    /// Options for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            clock: None,
        }
    }

    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the pool size.
    pub fn pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// Sets how long a request waits for a connection.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Sets how long connecting waits for the first connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Judges time by `clock` instead of the database (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
}

/// What every clone of a store shares.
pub(crate) struct Inner {
    pub(crate) pool: PgPool,
    /// The validated schema name.
    pub(crate) schema: String,
    /// The schema as a quoted identifier, substituted for `{s}` in statements.
    quoted: String,
    /// The `NOTIFY` channel of this schema.
    pub(crate) channel: String,
    /// Where the pool connects, for error messages.
    pub(crate) target: Target,
    /// The test clock, if any; `None` reads the database's clock.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) waiters: Arc<wait::Waiters>,
    /// The hot-path statements' texts, filled in (see [`PgStore::hot_sql`]).
    hot_sql: Mutex<std::collections::HashMap<sql::HotStatement, Arc<str>>>,
    /// This store's name in `sleepers` (random; see `wait`, "Sleeping").
    pub(crate) sleeper: String,
    /// The listener task; aborted when the store goes.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The task firing due schedule ticks and stepping paced redrives (`PgStore::start_ticking`);
    /// aborted when the store goes.
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether a paced redrive was running when last looked (or this store started one): the
    /// ticker then steps every `REDRIVE_STEP_INTERVAL_MS`, else it looks once a tick interval
    /// (the first look a second after connecting, with the first schedule pass, so that an idle
    /// store adds no statement of its own before then).
    pub(crate) redrives_running: std::sync::atomic::AtomicBool,
    /// When (store-clock ms) expired dedup ids and idempotency keys were last swept.
    pub(crate) last_sweep_ms: AtomicI64,
    /// Queues looked up before, by name: an enqueue into one of them skips the lookup.
    pub(crate) known_queues: Mutex<std::collections::HashMap<QueueName, Arc<KnownQueue>>>,
    /// Connections kept out of the pool between statements (see `conns`).
    pub(crate) conns: Arc<conns::Conns>,
    /// Whether connecting created the store: its schema held none before.
    created: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        if let Some(task) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share one pool, one listener and one set of
/// waiting leases.
#[derive(Clone)]
pub struct PgStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("schema", &self.inner.schema).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, migrates the schema (creating it if needed) and starts listening for
    /// wake-ups.
    ///
    /// Fails with [`Error::Unavailable`] when the server cannot be reached, and with
    /// [`Error::Storage`] when it refuses the credentials, when the schema holds tables that are
    /// not onceq's, or when it was written by a newer onceq.
    pub async fn connect(options: PgOptions) -> Result<Self> {
        schema::validate_name(&options.schema)?;
        if !(1..=POOL_SIZE_MAX).contains(&options.pool_size) {
            return Err(Error::invalid(format!(
                "pool size is {}; it must be between 1 and {POOL_SIZE_MAX}",
                options.pool_size
            )));
        }
        if options.connect_timeout.is_zero() {
            return Err(Error::invalid("the connect timeout is 0; give it at least 1 ms"));
        }
        let mut connect_options = PgConnectOptions::from_str(&options.url)
            .map_err(|e| Error::invalid(format!("the database URL is not valid: {e}")))?;
        if connect_options.get_application_name().is_none() {
            // Names onceq's sessions in pg_stat_activity, unless the URL names them otherwise.
            connect_options = connect_options.application_name("onceq");
        }
        let target = Target::of(&connect_options);
        let mut conn = tokio::time::timeout(options.connect_timeout, schema::connect_once(&connect_options, &target))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "connecting to PostgreSQL at {} timed out after {:?}; is the server reachable?",
                    target.name, options.connect_timeout
                ))
            })??;
        let migrated = schema::migrate(&mut conn, &options.schema, &target).await;
        let _ = conn.close().await;
        let created = migrated?;

        let pool = PgPoolOptions::new()
            // One more than asked for: the listener holds one for good.
            .max_connections(options.pool_size + 1)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    for (name, value) in SESSION_SETTINGS {
                        sqlx::Executor::execute(&mut *conn, format!("SET {name} = {value}").as_str()).await?;
                    }
                    Ok(())
                })
            })
            .before_acquire({
                let target = target.clone();
                move |conn, meta| {
                    let ping = meta.idle_for >= PING_IDLE_AFTER || target.suspect();
                    let target = target.clone();
                    Box::pin(async move {
                        if ping {
                            // A connection that died while idle: the database may be down, so
                            // every request waits for a connection only briefly from now.
                            conn.ping().await.inspect_err(|_| target.connection_failed())?;
                        }
                        Ok(true)
                    })
                }
            })
            .connect_lazy_with(connect_options);
        let quoted = schema::quoted(&options.schema);
        let channel = sql::channel_of(&options.schema);
        let listener = wait::start_listening(&pool, &channel)
            .await
            .map_err(|e| error::map(&target, "listening for wake-ups", e))?;
        let waiters = Arc::new(wait::Waiters::default());
        let task = tokio::spawn(wait::listen(pool.clone(), channel.clone(), listener, Arc::downgrade(&waiters)));
        if let Some(clock) = &options.clock {
            let weak = Arc::downgrade(&waiters);
            clock.on_advance(Box::new(move || {
                if let Some(waiters) = weak.upgrade() {
                    waiters.wake_all();
                }
            }));
        }
        let conns = Arc::new(conns::Conns::new(pool.clone(), target.clone()));
        let inner = Inner {
            pool,
            schema: options.schema,
            quoted,
            channel,
            target,
            clock: options.clock,
            waiters,
            hot_sql: Mutex::default(),
            sleeper: wait::sleeper_name(),
            listener: Mutex::new(Some(task)),
            ticker: Mutex::new(None),
            redrives_running: std::sync::atomic::AtomicBool::new(false),
            last_sweep_ms: AtomicI64::new(i64::MIN),
            known_queues: Mutex::new(std::collections::HashMap::new()),
            conns,
            created,
        };
        let store = PgStore { inner: Arc::new(inner) };
        store.start_ticking();
        Ok(store)
    }

    /// Stops listening and closes every connection. Requests made afterwards fail with
    /// [`Error::Unavailable`].
    pub async fn close(&self) {
        if let Some(task) = self.inner.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        if let Some(task) = self.inner.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        // The pool is marked closed before the kept connections go back, so that none of them
        // lands in its idle list after it emptied it.
        let closing = self.inner.pool.close();
        self.inner.conns.close();
        closing.await;
        // Waiting leases look again now, and find the store closed.
        self.inner.waiters.wake_all();
    }

    /// Opens a transaction on the store's pool, for the `*_in` calls; failures map like every
    /// other call's (`Unavailable` when the database cannot be reached). While the database is
    /// suspect (a statement just failed to reach it), waiting for a connection is bounded as for
    /// every other call, so the caller hears `Unavailable` within about a second rather than after
    /// the pool's full acquire timeout.
    pub async fn transaction(&self) -> Result<PgTransaction> {
        let map = |error| crate::error::map(&self.inner.target, "opening a transaction", error);
        let conn = self.acquire_conn().await.map_err(map)?;
        sqlx::Transaction::begin(conn, None).await.map_err(map)
    }

    /// The schema this store uses.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Whether [`connect`](Self::connect) created the store: its schema held no store before
    /// (it did not exist, or was empty), so the store starts with no queues and no jobs. A
    /// program that expected existing queues tells its operator (`onceq serve` does).
    pub fn created(&self) -> bool {
        self.inner.created
    }

    /// The connection pool (for callers that run their own SQL beside the store).
    ///
    /// The store keeps the connections its statements use out of this pool while it is busy,
    /// and gives each back once it has sat unused for 50 ms (sparing sqlx's test round trip on
    /// every release). A caller that finds the pool empty waits for the statements in progress,
    /// and about that long for a connection the store kept; [`PgStore::transaction`] does not
    /// wait for kept ones. Close the store with [`PgStore::close`], not this pool's `close`.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// `template` with `{s}` replaced by the quoted schema, `{now}` by the clock expression and
    /// `{channel}` by the `NOTIFY` channel (an identifier of `[A-Za-z0-9_]`, safe in a literal).
    pub(crate) fn sql(&self, template: &str) -> String {
        sql::fill(template, &self.inner.quoted, &self.inner.channel)
    }

    /// A connection for a transaction (see `conns`): quickly `Unavailable` while the database
    /// is suspect.
    pub(crate) async fn acquire_conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, sqlx::Error> {
        self.inner.conns.acquire().await
    }

    /// A connection for one autocommit statement (see `conns`).
    pub(crate) async fn checkout(&self) -> Result<conns::Checkout<'_>, sqlx::Error> {
        self.inner.conns.checkout().await
    }

    /// The text of a hot-path statement for this store: filled in once, then kept, so that a
    /// call does not rebuild kilobytes of SQL (a few per cent of a client's CPU per enqueue).
    /// Bounded: one text per lease size up to the lease limit, and per batch size up to the
    /// size from which batches share one text.
    pub(crate) fn hot_sql(&self, statement: sql::HotStatement) -> Arc<str> {
        let key = statement.text_key();
        let mut texts = self.inner.hot_sql.lock().unwrap_or_else(|p| p.into_inner());
        texts.entry(key).or_insert_with(|| Arc::from(self.sql(&statements::template(key)))).clone()
    }

    /// The value for `$1` of every statement: the test clock's reading, or NULL for the
    /// database's clock.
    pub(crate) fn now_param(&self) -> Option<i64> {
        self.inner.clock.as_ref().map(|c| c.now().as_millis())
    }

    /// Runs one statement (or transaction), again if PostgreSQL rolls it back for a deadlock.
    pub(crate) async fn run<T, F, Fut>(&self, context: &str, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        error::retrying(&self.inner.target, context, attempt).await
    }
}

/// A job id as stored, or `None` for an id no job can have (above `i64::MAX`).
pub(crate) fn row_id(id: JobId) -> Option<i64> {
    i64::try_from(id.get()).ok()
}

/// A stored id as a job id (stored ids are positive).
pub(crate) fn job_id(id: i64) -> JobId {
    JobId::new(u64::try_from(id).unwrap_or(0))
}

/// A count as stored, clamped to `i64`.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `now + ms`, as stored.
pub(crate) fn plus_ms(now: i64, ms: u64) -> i64 {
    Timestamp::from_millis(now).plus_ms(ms).as_millis()
}

/// A queue's config as stored.
pub(crate) fn parse_config(queue: &str, text: &str) -> Result<QueueConfig> {
    serde_json::from_str(text).map_err(|e| Error::Storage(format!("queue {queue} has an unreadable config: {e}")))
}

/// Each method validates the request, then calls the crate-private inherent method of the same
/// name (in `jobs`, `queues` or `idempotency`). Rust resolves a method call to an inherent method
/// before a trait's, so `self.job_get(id)` here is that implementation, not a recursive call;
/// outside this crate the inherent methods are invisible and callers reach these.
#[async_trait]
impl onceq_core::Inspect for PgStore {
    async fn job_by_dedup(&self, queue: &QueueName, dedup_id: &str) -> Result<Option<JobId>> {
        self.job_by_dedup(queue, dedup_id).await
    }

    async fn job_page(&self, queue: &QueueName, page: onceq_core::JobPage) -> Result<onceq_core::JobList> {
        page.validate()?;
        self.job_page(queue, page).await
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<onceq_core::IdempotencyRecord>> {
        self.idempotency_get(key).await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let fence = commit.producer.clone();
        let result = self.commit_own(commit).await;
        onceq_core::commit::record(fence.as_ref(), &result);
        result
    }

    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        onceq_core::commit::record_registration(producer);
        self.register_producer(producer).await
    }

    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        self.read_producer(producer).await
    }

    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        self.schedule_remove(name).await
    }

    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        self.schedule_read(name).await
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        self.schedule_read_all().await
    }

    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        self.schedule_set_paused(name, true).await
    }

    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        self.schedule_set_paused(name, false).await
    }

    async fn schedule_tick(&self) -> Result<TickReport> {
        self.schedules_fire().await
    }

    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        let cron = spec.validate()?;
        self.schedule_upsert_own(name, spec, &cron).await
    }

    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        validate::dead_page(&page)?;
        self.dead_list(queue, page).await
    }

    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        self.dead_purge(queue).await
    }

    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven> {
        validate::redrive(&redrive)?;
        self.dead_redrive(queue, redrive).await
    }

    async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive> {
        self.redrive_get(id).await
    }

    async fn redrive_list(&self) -> Result<Vec<PacedRedrive>> {
        self.redrive_list().await
    }

    async fn redrive_start(&self, queue: &QueueName, redrive: Redrive, rate_per_second: u32) -> Result<PacedRedrive> {
        validate::redrive(&redrive)?;
        self.redrive_start(queue, redrive, rate_per_second).await
    }

    async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive> {
        self.redrive_stop(id).await
    }

    async fn redrive_tick(&self) -> Result<u64> {
        self.redrives_step().await
    }

    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        self.group_get(queue, group).await
    }

    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        self.group_heartbeat(queue, group, member).await
    }

    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        options.validate()?;
        self.group_join(queue, group, &options).await
    }

    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        self.group_lease(queue, group, member, options).await
    }

    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        self.group_leave(queue, group, member).await
    }

    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        self.group_list(queue).await
    }

    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        validate::settle_batch(acks.len())?;
        self.job_ack(&mut Conn::Pool, acks).await
    }

    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate::enqueue(&jobs)?;
        self.job_enqueue(&mut Conn::Pool, queue, jobs).await
    }

    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        validate::extends(extends)?;
        self.job_extend(extends).await
    }

    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        validate::settle_batch(fails.len())?;
        self.job_fail(&mut Conn::Pool, fails).await
    }

    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        self.job_cancel(id).await
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.job_delete(id).await
    }

    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        self.job_kill(id, error).await
    }

    async fn job_get(&self, id: JobId) -> Result<Job> {
        self.job_get(id).await
    }

    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        self.job_lease(queue, options).await
    }

    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        validate::nacks(nacks)?;
        self.job_nack(&mut Conn::Pool, nacks).await
    }

    async fn job_release(&self, releases: &[Release]) -> Result<ItemResults<()>> {
        validate::releases(releases)?;
        self.job_release(&mut Conn::Pool, releases).await
    }

    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        self.queue_delete(queue).await
    }

    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        self.queue_get(queue).await
    }

    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        self.queue_list().await
    }

    async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        self.queue_list_page(after, limit).await
    }

    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        self.queue_set_paused(queue, true).await
    }

    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        self.queue_set_paused(queue, false).await
    }

    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        self.queue_upsert(queue, patch).await
    }
}

/// As for [`Store`]: each method calls the inherent method of its name, in `idempotency`.
#[async_trait]
impl onceq_core::IdempotencyStore for PgStore {
    async fn idempotency_begin(&self, begin: onceq_core::Begin) -> Result<onceq_core::BeginOutcome> {
        begin.validate()?;
        self.idempotency_begin(&mut Conn::Pool, &begin).await
    }

    async fn idempotency_complete(&self, complete: onceq_core::Complete) -> Result<()> {
        complete.validate()?;
        self.idempotency_complete(&mut Conn::Pool, &complete).await
    }

    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        onceq_core::idempotency::validate_release(key, owner)?;
        self.idempotency_release(key, owner).await
    }
}
