//! onceq-sqlite: the embedded store, SQLite in one data directory.
//!
//! # Layout
//!
//! - `schema`: the on-disk format, opening a file safely, versioned migrations, and how SQLite's
//!   errors and integers become the seam's.
//! - `writer`: the writer thread, the only code that changes the file; it group-commits every
//!   pending request in one transaction and answers only after the commit.
//!   - `writer/mod.rs`: the loop and the group commit.
//!   - `writer::op`: the requests it takes, their replies, and the committed batches of replies
//!     it hands the syncer.
//!   - `writer::cache`: queue configs, per-state counts, the id counter and the next due time,
//!     kept in memory, and what of them it publishes for readers and waiting leases.
//!   - `writer::due`: what the clock made due, applied before each group.
//!   - `writer::redrives`: paced redrives: starting, reading, stopping, and their steps (from
//!     `writer::due` when one is due, and on `redrive_tick`), each step's jobs and cursor in one
//!     transaction; `writer::dead` redrives (with filters, into another queue) and purges.
//!   - `writer::schedules`: schedules, and firing their due ticks (from `writer::due`, and on
//!     `schedule_tick`) in the transaction that advances them.
//!   - the SQL of each operation, by resource, as in the PostgreSQL store: `writer::jobs`
//!     (enqueue, lease), `writer::leases` (ack, nack, release, extend, fail), `writer::control`
//!     (an operator's cancel, delete and kill of one job), `writer::queues`,
//!     `writer::dead` (redrive, purge), `writer::idempotency` and `writer::groups` (consumer
//!     groups: each group's state, hand-over, and the lease restricted to a member's
//!     partitions); and `writer::keys`, each ordering key's head in a `per_key` queue and
//!     handing the key on, which they call.
//! - `sync`: the syncer thread, which makes commits durable (one `fdatasync` for every group
//!   committed since the last) and only then answers them, while the writer goes on.
//! - `durable`: what the writer, the syncer and readers share about durability: which commits
//!   are on disk, and whether the store stopped.
//! - `reader`: read-only queries on separate connections.
//! - `wait`: leases (plain and group) waiting for jobs, and waking them.
//! - this file: [`SqliteStore`], its options, the data-directory lock, and long-poll waiting.
//!
//! # Durability
//!
//! [`Durability::Fsync`] (the default): a reply means the change is on disk and survives power
//! loss. The writer commits without waiting for the disk (`synchronous=NORMAL`) and the syncer
//! thread `fdatasync`s the write-ahead log before any reply, and before any read answers with
//! what it saw: SQLite's `synchronous=FULL` promise, with the disk's wait overlapped with the
//! next groups' work (module `sync`). [`Durability::Relaxed`] skips the sync: it survives a
//! crash of the process (`kill -9`), but the last commits before a power loss or kernel crash may
//! be lost — the trade Redis makes with `appendfsync everysec`, and NATS JetStream by default.
//!
//! That is the store's setting; a queue's config may set its own (`QueueConfig::durability`).
//! Each request is answered as the queues it touched ask (the strictest of them; the store's
//! setting if it touched none): a relaxed one at its group's commit, an fsync one after the sync,
//! even when both share a group commit. The syncer runs whatever the store's setting, since any
//! queue may ask for `fsync` (docs/design.md, "Per-queue durability").
//!
//! ```
//! # async fn demo() -> onceq_core::Result<()> {
//! use onceq_core::{NewJob, QueueName, StoreExt};
//! use onceq_sqlite::{SqliteOptions, SqliteStore};
//!
//! let dir = tempfile::tempdir().map_err(|e| onceq_core::Error::Storage(e.to_string()))?;
//! let store = SqliteStore::open(SqliteOptions::new(dir.path()))?;
//! let emails = QueueName::new("emails")?;
//! store.enqueue(&emails, NewJob::new(r#"{"to":"ada@example.com"}"#)).await?;
//! let job = store.lease_one(&emails).await?.expect("a job is ready");
//! store.ack(job.lease()).await?;
//! store.close().await;
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

mod durable;
pub mod maintenance;
mod reader;
mod schema;
mod sync;
mod wait;
mod writer;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::commit::{Commit, CommitOutcome, ProducerId, Registration};
use onceq_core::group::{GroupInfo, GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::redrive::PacedRedrive;
use onceq_core::schedule::{ScheduleInfo, ScheduleName, ScheduleSpec, TickReport};
use onceq_core::store::validate;
use onceq_core::{
    Clock, DeadList, DeadPage, Enqueued, Error, Extend, Fail, ItemResults, Job, JobId, LeaseOptions, LeaseRef,
    LeasedJob, Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, QueueStats, Redrive,
    RedriveId, Redriven, Result, Store, SystemClock, Timestamp,
};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::durable::Durable;
use crate::reader::Readers;
use crate::schema::state;
use crate::writer::cache::{QueueEntry, Shared, State};
use crate::writer::groups::GroupsRead;
use crate::writer::op::{self, Message};

/// The data file's name inside the data directory.
pub const DATA_FILE_NAME: &str = "onceq.db";
/// The lock file's name inside the data directory: held while a store has it open.
pub const LOCK_FILE_NAME: &str = "onceq.lock";

pub use onceq_core::Durability;

/// The writer's page cache by default: 16 MiB.
///
/// Smaller is faster here, up to a point, because SQLite walks the whole page cache at the end
/// of most write transactions: a b-tree page split that takes its new pages from the free list
/// out of order renumbers them through the page number of the lock byte (page 262,145 with
/// 4 KiB pages, `balance_nonroot`), and the commit then sees a cached page past the end of the
/// file and looks at every hash slot and every cached page to drop it (`pcache1TruncateUnsafe`),
/// until the file passes 1 GiB. The walk costs in proportion to the cache, in every commit that
/// split a page, whatever it touched. Measured (`examples/ordered_backlog.rs`, CPU per job,
/// lease + ack of 100 on a `per_key` queue of 100,000 keys): behind 1,200,000 jobs, 28-29 µs
/// with 64 MiB, 23-25 µs with 16 MiB, 34 µs with 256 MiB; behind 200,000, 22-23, 21-22 and
/// 19-21 µs. What it no longer keeps is read again from the operating system's file cache, which
/// costs less than the walk (docs/design.md, "Embedded store").
pub const PAGE_CACHE_BYTES_DEFAULT: u64 = 16 << 20;
/// The smallest page cache [`SqliteOptions::page_cache_bytes`] takes: 1 MiB.
pub const PAGE_CACHE_BYTES_MIN: u64 = 1 << 20;
/// The largest page cache [`SqliteOptions::page_cache_bytes`] takes: 64 GiB.
pub const PAGE_CACHE_BYTES_MAX: u64 = 64 << 30;
const _: () =
    assert!(PAGE_CACHE_BYTES_MIN <= PAGE_CACHE_BYTES_DEFAULT && PAGE_CACHE_BYTES_DEFAULT <= PAGE_CACHE_BYTES_MAX);

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// The data directory; created if missing.
    pub data_dir: PathBuf,
    /// The store's durability: of every queue whose config sets none
    /// ([`onceq_core::QueueConfig::durability`]), and of requests that touch no queue.
    pub durability: Durability,
    /// The store's one clock; `None` uses the system clock, never below the last time recorded.
    pub clock: Option<Arc<dyn Clock>>,
    /// Memory for the writer connection's SQLite page cache (`PRAGMA cache_size`), from
    /// [`PAGE_CACHE_BYTES_MIN`] to [`PAGE_CACHE_BYTES_MAX`]; the process holds up to this much,
    /// plus SQLite's few KiB per reader connection. A bigger one is not faster: see
    /// [`PAGE_CACHE_BYTES_DEFAULT`].
    pub page_cache_bytes: u64,
    /// Runs SQLite's full integrity check (every page, every index against its table) at open,
    /// and refuses a damaged file with [`Error::Corrupt`]. It reads the whole file: seconds per
    /// gigabyte. Off by default: a damaged page met later stops the store anyway.
    pub verify_on_start: bool,
}

impl SqliteOptions {
    /// Options for `data_dir` with every other setting at its default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            data_dir: data_dir.into(),
            durability: Durability::default(),
            clock: None,
            page_cache_bytes: PAGE_CACHE_BYTES_DEFAULT,
            verify_on_start: false,
        }
    }

    /// Sets whether the file's integrity is checked at open (see [`SqliteOptions::verify_on_start`]).
    pub fn verify_on_start(mut self, verify: bool) -> Self {
        self.verify_on_start = verify;
        self
    }

    /// Sets the writer's page cache size (see [`SqliteOptions::page_cache_bytes`]).
    pub fn page_cache_bytes(mut self, bytes: u64) -> Self {
        self.page_cache_bytes = bytes;
        self
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the clock.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
}

struct Inner {
    /// Requests to the writer thread.
    writer: Mutex<Sender<Message>>,
    shared: Arc<Shared>,
    readers: Arc<Readers>,
    clock: Arc<dyn Clock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender ends the writer loop; it checkpoints and releases the lock.
        let (reply, _) = oneshot::channel();
        let _ = self.writer.lock().unwrap_or_else(|p| p.into_inner()).send(Message::Shutdown(reply));
    }
}

/// The embedded store. Cheap to clone; all clones share one writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn lock_data_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Storage(format!("cannot create data directory {}: {e}", dir.display())))?;
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Storage(format!("cannot open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Storage(format!(
            "data directory {} is in use by another onceq process (it holds {}); stop it or choose another \
             data directory",
            dir.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Storage(format!("cannot lock {}: {e}", path.display()))),
    }
}

impl SqliteStore {
    /// Opens (or creates) the store in `options.data_dir`.
    ///
    /// Fails with a clear [`Error::Storage`] when the directory is locked by another process,
    /// the file is not an onceq data file or is damaged, or it was written by a newer onceq.
    pub fn open(options: SqliteOptions) -> Result<Self> {
        Self::open_with_sync(options, None, true)
    }

    /// [`SqliteStore::open`], with `sync_fn` in place of `fdatasync` on the write-ahead log, and
    /// whether the writer may sync itself when idle (see `sync::Syncer::submit`). Tests inject
    /// slow, failing and panicking syncs, and hold every sync on the syncer thread.
    fn open_with_sync(options: SqliteOptions, sync_fn: Option<sync::SyncFn>, inline_when_idle: bool) -> Result<Self> {
        if !(PAGE_CACHE_BYTES_MIN..=PAGE_CACHE_BYTES_MAX).contains(&options.page_cache_bytes) {
            return Err(Error::invalid(format!(
                "page_cache_bytes {} is outside {PAGE_CACHE_BYTES_MIN}..={PAGE_CACHE_BYTES_MAX}",
                options.page_cache_bytes
            )));
        }
        let lock = lock_data_dir(&options.data_dir)?;
        let path = options.data_dir.join(DATA_FILE_NAME);
        schema::ensure_created(&path, options.page_cache_bytes)?;
        let conn = schema::open_writer(&path, options.page_cache_bytes)?;
        if options.verify_on_start {
            let problems = schema::integrity_problems(&conn, &path)?;
            if !problems.is_empty() {
                return Err(Error::Corrupt(format!(
                    "{} failed its integrity check at start: {}; restore it from a backup",
                    path.display(),
                    problems.join("; ")
                )));
            }
        }
        let clock: Arc<dyn Clock> = match options.clock {
            Some(clock) => clock,
            None => {
                let floor: i64 = conn
                    .query_row("SELECT value FROM meta WHERE key = 'clock_floor_ms'", [], |r| r.get(0))
                    .map_err(|e| schema::sqlite_error("reading the clock floor", e))?;
                Arc::new(SystemClock::with_floor(Timestamp::from_millis(floor)))
            }
        };
        let shared = Arc::new(Shared {
            queues: Mutex::new(BTreeMap::new()),
            waiters: wait::Waiters::default(),
            group_waiters: wait::GroupWaiters::default(),
            next_due: AtomicI64::new(i64::MAX),
            durable: Arc::new(Durable::new()),
        });
        let state = State::load(&conn, shared.clone(), clock.now(), options.durability)?;
        // The syncer runs whatever the store's durability: any queue may ask for `fsync`.
        let syncer = start_syncer(&conn, &options.data_dir, &path, shared.durable.clone(), sync_fn, inline_when_idle)?;
        let readers = Arc::new(Readers::new(path, shared.durable.clone()));
        let (sender, inbox) = channel();
        let thread_clock = clock.clone();
        std::thread::Builder::new()
            .name("onceq-writer".into())
            .spawn(move || writer::run(conn, state, inbox, thread_clock, lock, syncer))
            .map_err(|e| Error::Storage(format!("cannot start the writer thread: {e}")))?;
        let inner = Arc::new(Inner { writer: Mutex::new(sender.clone()), shared, readers, clock: clock.clone() });
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        clock.on_advance(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.send(Message::Tick(None));
            }
        }));
        drop(sender);
        Ok(SqliteStore { inner })
    }

    /// Finishes pending requests, checkpoints the file, stops the writer and releases the data
    /// directory. Requests made afterwards fail with [`Error::Unavailable`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.send(Message::Shutdown(reply)) {
            let _ = done.await;
        }
    }

    /// The store's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, &Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        if !self.inner.send(Message::Op(op::op(f, reply))) {
            return Err(closed());
        }
        answer.await.map_err(|_| closed())?
    }

    /// Makes sure everything the clock made due is applied before a read; fails once the store
    /// stopped (a failed sync, a damaged file), so reads answered from memory stop too.
    async fn catch_up(&self) -> Result<()> {
        if let Some(error) = self.inner.shared.durable.failure() {
            return Err(error);
        }
        if self.inner.clock.now().as_millis() < self.inner.shared.next_due.load(Ordering::Acquire) {
            return Ok(());
        }
        let (reply, done) = oneshot::channel();
        if !self.inner.send(Message::Tick(Some(reply))) {
            return Err(closed());
        }
        done.await.map_err(|_| closed())
    }

    fn queue_entry(&self, queue: &QueueName) -> Result<QueueEntry> {
        let queues = self.inner.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(queue).cloned().ok_or_else(|| Error::QueueNotFound(queue.clone()))
    }

    /// The groups as `group_get` shows them: each partition's load is read on a reader
    /// connection, after the writer committed the groups' states, so that the writer never spends
    /// a pass over a queue's jobs on a read.
    async fn group_infos(&self, read: GroupsRead) -> Result<Vec<GroupInfo>> {
        if read.groups.is_empty() {
            return Ok(Vec::new());
        }
        let queue_id = read.queue_id;
        let loads = self.inner.readers.with(move |conn| reader::partition_loads(conn, queue_id)).await?;
        Ok(read.groups.iter().map(|(group, state)| state.info(group, &loads, read.now)).collect())
    }

    async fn queue_info(&self, name: QueueName, entry: QueueEntry) -> Result<QueueInfo> {
        let ready = entry.counts[state::READY as usize];
        let oldest = if ready > 0 {
            let queue_id = entry.id;
            self.inner.readers.with(move |conn| reader::oldest_ready(conn, queue_id)).await?
        } else {
            None
        };
        let now = self.inner.clock.now();
        Ok(QueueInfo {
            name,
            config: entry.config,
            paused: entry.paused,
            stats: QueueStats {
                ready,
                scheduled: entry.counts[state::SCHEDULED as usize],
                leased: entry.counts[state::LEASED as usize],
                dead: entry.counts[state::DEAD as usize],
                blocked: entry.counts[state::BLOCKED as usize],
                cancelled: entry.counts[state::CANCELLED as usize],
                oldest_ready_age_ms: oldest.map(|at| now.ms_since(at)),
            },
        })
    }
}

/// Makes what is already in the data directory durable, then starts the syncer thread, which
/// syncs the write-ahead log after each group commit (module `sync`).
fn start_syncer(
    conn: &Connection,
    dir: &Path,
    data_file: &Path,
    durable: Arc<Durable>,
    sync_fn: Option<sync::SyncFn>,
    inline_when_idle: bool,
) -> Result<sync::Syncer> {
    let mut wal_path = data_file.as_os_str().to_owned();
    wal_path.push("-wal");
    let wal_path = PathBuf::from(wal_path);
    // SQLite keeps the log (it truncates it, never deletes it) while a connection is open, so
    // this handle stays on the file SQLite appends to; fdatasync on any handle flushes the file.
    let wal = File::open(&wal_path)
        .map_err(|e| Error::Storage(format!("cannot open the write-ahead log {}: {e}", wal_path.display())))?;
    // Copy the log into the data file and sync both (SQLite does, in a checkpoint) before the
    // first reply. What the log holds may never have reached the disk: a migration just committed
    // it, or an earlier store stopped after a failed sync, whose pages Linux then marks clean
    // while it keeps serving them from memory. Syncing the log again would report success
    // without writing them; the checkpoint writes them afresh.
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| schema::sqlite_error("checkpointing the write-ahead log at open", e))?;
    if busy != 0 {
        return Err(Error::Storage(format!(
            "cannot checkpoint {} at open: another connection holds it",
            data_file.display()
        )));
    }
    let sync_error = |what: &Path, e: std::io::Error| Error::Storage(format!("cannot sync {}: {e}", what.display()));
    // The log and the data file may be new: make their directory entries durable too.
    wal.sync_data().map_err(|e| sync_error(&wal_path, e))?;
    File::open(data_file).and_then(|f| f.sync_all()).map_err(|e| sync_error(data_file, e))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| sync_error(dir, e))?;
    let sync_fn = sync_fn.unwrap_or_else(|| Box::new(move || wal.sync_data()));
    sync::Syncer::start(sync_fn, durable, inline_when_idle)
}

impl Inner {
    fn send(&self, message: Message) -> bool {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).send(message).is_ok()
    }
}

/// Records how long a long-poll lease waited for a queue's rate limit, if it did.
fn flow_waited(queue: &QueueName, held_since: Option<tokio::time::Instant>, until: tokio::time::Instant) {
    if let Some(since) = held_since {
        metrics::histogram!(onceq_core::metrics::FLOW_WAIT, "queue" => queue.to_string())
            .record(until.saturating_duration_since(since).as_secs_f64());
    }
}

fn closed() -> Error {
    Error::Unavailable("the store is closed".into())
}

#[async_trait]
impl onceq_core::Inspect for SqliteStore {
    async fn job_by_dedup(&self, queue: &QueueName, dedup_id: &str) -> Result<Option<JobId>> {
        self.catch_up().await?;
        let entry = self.queue_entry(queue)?;
        let (dedup_id, now) = (dedup_id.to_owned(), self.inner.clock.now());
        self.inner.readers.with(move |conn| reader::job_by_dedup(conn, entry.id, &dedup_id, now)).await
    }

    async fn job_page(&self, queue: &QueueName, page: onceq_core::JobPage) -> Result<onceq_core::JobList> {
        page.validate()?;
        self.catch_up().await?;
        let entry = self.queue_entry(queue)?;
        let list = self.inner.readers.with(move |conn| reader::job_page(conn, entry.id, page)).await;
        self.inner.shared.durable.settled().await?;
        list
    }

    async fn idempotency_get(&self, key: &str) -> Result<Option<onceq_core::IdempotencyRecord>> {
        let key = key.to_owned();
        self.inner.readers.with(move |conn| reader::idempotency_get(conn, &key)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, commit: Commit) -> Result<CommitOutcome> {
        let fence = commit.producer.clone();
        let result = match validate::commit(&commit) {
            Err(e) => Err(e),
            Ok(()) => {
                // Hashing the content is the caller's work, not the single writer's.
                let digest = commit.commit_id.as_ref().map(|_| commit.digest());
                self.call(move |state, conn| state.commit(conn, commit, digest)).await
            }
        };
        onceq_core::commit::record(fence.as_ref(), &result);
        result
    }

    async fn producer_register(&self, producer: &ProducerId) -> Result<Registration> {
        let producer = producer.clone();
        onceq_core::commit::record_registration(&producer);
        self.call(move |state, conn| state.producer_register(conn, &producer)).await
    }

    async fn producer_get(&self, producer: &ProducerId) -> Result<Registration> {
        let producer = producer.clone();
        self.call(move |_, conn| crate::writer::producer_get(conn, &producer)).await
    }

    async fn schedule_delete(&self, name: &ScheduleName) -> Result<()> {
        let name = name.clone();
        self.call(move |state, conn| state.schedule_delete(conn, &name)).await
    }

    async fn schedule_get(&self, name: &ScheduleName) -> Result<ScheduleInfo> {
        let name = name.clone();
        self.call(move |state, conn| state.schedule_get(conn, &name)).await
    }

    async fn schedule_list(&self) -> Result<Vec<ScheduleInfo>> {
        self.call(move |state, conn| state.schedule_list(conn)).await
    }

    async fn schedule_pause(&self, name: &ScheduleName) -> Result<()> {
        let name = name.clone();
        self.call(move |state, conn| state.schedule_set_paused(conn, &name, true)).await
    }

    async fn schedule_resume(&self, name: &ScheduleName) -> Result<()> {
        let name = name.clone();
        self.call(move |state, conn| state.schedule_set_paused(conn, &name, false)).await
    }

    async fn schedule_tick(&self) -> Result<TickReport> {
        self.call(move |state, conn| state.schedules_fire(conn)).await
    }

    async fn schedule_upsert(&self, name: &ScheduleName, spec: ScheduleSpec) -> Result<ScheduleInfo> {
        let cron = spec.validate()?;
        let name = name.clone();
        self.call(move |state, conn| state.schedule_upsert(conn, &name, spec, &cron)).await
    }

    async fn dead_list(&self, queue: &QueueName, page: DeadPage) -> Result<DeadList> {
        validate::dead_page(&page)?;
        self.catch_up().await?;
        let list = match self.queue_entry(queue) {
            Ok(entry) => self.inner.readers.with(move |conn| reader::dead_list(conn, entry.id, page)).await,
            Err(e) => Err(e),
        };
        self.inner.shared.durable.settled().await?;
        list
    }

    async fn dead_purge(&self, queue: &QueueName) -> Result<u64> {
        let queue = queue.clone();
        self.call(move |state, conn| state.dead_purge(conn, &queue)).await
    }

    async fn dead_redrive(&self, queue: &QueueName, redrive: Redrive) -> Result<Redriven> {
        validate::redrive(&redrive)?;
        let queue = queue.clone();
        self.call(move |state, conn| state.dead_redrive(conn, &queue, &redrive)).await
    }

    async fn redrive_get(&self, id: RedriveId) -> Result<PacedRedrive> {
        self.call(move |state, conn| state.redrive_get(conn, id)).await
    }

    async fn redrive_list(&self) -> Result<Vec<PacedRedrive>> {
        self.call(move |state, conn| state.redrive_list(conn)).await
    }

    async fn redrive_start(&self, queue: &QueueName, redrive: Redrive, rate_per_second: u32) -> Result<PacedRedrive> {
        validate::redrive(&redrive)?;
        let queue = queue.clone();
        self.call(move |state, conn| state.redrive_start(conn, &queue, &redrive, rate_per_second)).await
    }

    async fn redrive_stop(&self, id: RedriveId) -> Result<PacedRedrive> {
        self.call(move |state, conn| state.redrive_stop(conn, id)).await
    }

    async fn redrive_tick(&self) -> Result<u64> {
        self.call(move |state, conn| state.redrives_step(conn)).await
    }

    async fn group_get(&self, queue: &QueueName, group: &GroupName) -> Result<GroupInfo> {
        let (name, group) = (queue.clone(), group.clone());
        let read = self.call(move |state, conn| state.group_get(conn, &name, &group)).await?;
        let mut infos = self.group_infos(read).await?;
        infos.pop().ok_or_else(|| Error::Storage("reading a group returned no group".into()))
    }

    async fn group_heartbeat(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<MemberView> {
        let (name, group, member) = (queue.clone(), group.clone(), member.clone());
        self.call(move |state, conn| state.group_heartbeat(conn, &name, &group, &member)).await
    }

    async fn group_join(&self, queue: &QueueName, group: &GroupName, options: JoinOptions) -> Result<MemberView> {
        options.validate()?;
        let (name, group) = (queue.clone(), group.clone());
        self.call(move |state, conn| state.group_join(conn, &name, &group, &options)).await
    }

    async fn group_lease(
        &self,
        queue: &QueueName,
        group: &GroupName,
        member: &MemberId,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(options.wait_ms);
        loop {
            // Register before looking, so that a commit in between still wakes this lease.
            let registration = (options.wait_ms > 0).then(|| self.inner.shared.group_waiters.register(queue));
            let (name, group, member) = (queue.clone(), group.clone(), member.clone());
            // Membership and ownership are checked again on every look, in the transaction that
            // leases: a member removed mid-wait gets `NotMember`.
            let leased = self.call(move |state, conn| state.group_lease(conn, &name, &group, &member, options)).await?;
            let Some(registration) = registration else { return Ok(leased.jobs) };
            let now = tokio::time::Instant::now();
            if !leased.jobs.is_empty() || now >= deadline {
                return Ok(leased.jobs);
            }
            // Look again by the end of the member's session too: nothing else wakes a lease whose
            // member expires without anyone touching its group.
            let session_left_ms = leased.session_ends_at.ms_since(self.inner.clock.now()).max(1);
            let wake_at = deadline.min(now + Duration::from_millis(session_left_ms));
            tokio::select! {
                _ = registration.notify.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn group_leave(&self, queue: &QueueName, group: &GroupName, member: &MemberId) -> Result<()> {
        let (name, group, member) = (queue.clone(), group.clone(), member.clone());
        self.call(move |state, conn| state.group_leave(conn, &name, &group, &member)).await
    }

    async fn group_list(&self, queue: &QueueName) -> Result<Vec<GroupInfo>> {
        let name = queue.clone();
        let read = self.call(move |state, conn| state.group_list(conn, &name)).await?;
        self.group_infos(read).await
    }

    async fn job_ack(&self, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        validate::settle_batch(acks.len())?;
        let acks = acks.to_vec();
        self.call(move |state, conn| state.job_ack(conn, &acks)).await
    }

    async fn job_enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>> {
        validate::enqueue(&jobs)?;
        let queue = queue.clone();
        self.call(move |state, conn| state.job_enqueue(conn, &queue, jobs)).await
    }

    async fn job_extend(&self, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        validate::extends(extends)?;
        let extends = extends.to_vec();
        self.call(move |state, conn| state.job_extend(conn, &extends)).await
    }

    async fn job_fail(&self, fails: &[Fail]) -> Result<ItemResults<()>> {
        validate::settle_batch(fails.len())?;
        let fails = fails.to_vec();
        self.call(move |state, conn| state.job_fail(conn, &fails)).await
    }

    async fn job_cancel(&self, id: JobId) -> Result<Job> {
        self.call(move |state, conn| state.job_cancel(conn, id)).await
    }

    async fn job_delete(&self, id: JobId) -> Result<()> {
        self.call(move |state, conn| state.job_delete(conn, id)).await
    }

    async fn job_kill(&self, id: JobId, error: &str) -> Result<Job> {
        let error = error.to_owned();
        self.call(move |state, conn| state.job_kill(conn, id, &error)).await
    }

    async fn job_get(&self, id: JobId) -> Result<Job> {
        self.catch_up().await?;
        let job = self.inner.readers.with(move |conn| reader::job_get(conn, id)).await;
        // A job that is not there is an answer too: wait for the commit that deleted it.
        self.inner.shared.durable.settled().await?;
        job
    }

    async fn job_lease(&self, queue: &QueueName, options: LeaseOptions) -> Result<Vec<LeasedJob>> {
        options.validate()?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(options.wait_ms);
        // When a limit first held this lease back with jobs ready (for the wait's histogram).
        let mut held_since: Option<tokio::time::Instant> = None;
        loop {
            // Register before looking, so that a commit in between still wakes this lease.
            let registration =
                (options.wait_ms > 0).then(|| self.inner.shared.waiters.register(queue, options.max_jobs));
            let name = queue.clone();
            let look = match self.call(move |state, conn| state.job_lease(conn, &name, options)).await {
                Ok(look) => look,
                Err(error) => {
                    // This call may have taken a wake-up meant for it: pass it on.
                    self.inner.shared.waiters.wake(queue, u64::from(options.max_jobs));
                    return Err(error);
                }
            };
            let jobs = look.jobs;
            let Some(registration) = registration else { return Ok(jobs) };
            let now = tokio::time::Instant::now();
            if !jobs.is_empty() || now >= deadline {
                flow_waited(queue, held_since, now);
                return Ok(jobs);
            }
            // Held back by a limit with jobs ready: look again when the rate limit's next token is
            // due, or when a commit wakes this lease (a settle that frees an in-flight slot does),
            // never sooner.
            if look.held {
                held_since.get_or_insert(now);
            }
            let wake_at = match look.retry_ms {
                Some(ms) => deadline.min(now + Duration::from_millis(ms)),
                None => deadline,
            };
            tokio::select! {
                _ = registration.notify.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {
                    if wake_at == deadline {
                        flow_waited(queue, held_since, deadline);
                        return Ok(Vec::new());
                    }
                }
            }
        }
    }

    async fn job_nack(&self, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        validate::nacks(nacks)?;
        let nacks = nacks.to_vec();
        self.call(move |state, conn| state.job_nack(conn, &nacks)).await
    }

    async fn job_release(&self, releases: &[onceq_core::Release]) -> Result<ItemResults<()>> {
        validate::releases(releases)?;
        let releases = releases.to_vec();
        self.call(move |state, conn| state.job_release(conn, &releases)).await
    }

    async fn queue_delete(&self, queue: &QueueName) -> Result<()> {
        let queue = queue.clone();
        self.call(move |state, conn| state.queue_delete(conn, &queue)).await
    }

    async fn queue_get(&self, queue: &QueueName) -> Result<QueueInfo> {
        self.catch_up().await?;
        let entry = self.queue_entry(queue);
        let info = match entry {
            Ok(entry) => self.queue_info(queue.clone(), entry).await,
            Err(e) => Err(e),
        };
        self.inner.shared.durable.settled().await?;
        info
    }

    async fn queue_list(&self) -> Result<Vec<QueueInfo>> {
        self.queue_list_page(None, u32::MAX).await
    }

    async fn queue_list_page(&self, after: Option<&QueueName>, limit: u32) -> Result<Vec<QueueInfo>> {
        use std::ops::Bound;
        self.catch_up().await?;
        // Only the page's queues are read (each one's oldest ready job is a read of its own).
        let entries: Vec<(QueueName, QueueEntry)> = {
            let queues = self.inner.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            queues.range((from, Bound::Unbounded)).take(limit as usize).map(|(n, e)| (n.clone(), e.clone())).collect()
        };
        let mut out = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            out.push(self.queue_info(name, entry).await?);
        }
        self.inner.shared.durable.settled().await?;
        Ok(out)
    }

    async fn queue_pause(&self, queue: &QueueName) -> Result<()> {
        let queue = queue.clone();
        self.call(move |state, conn| state.queue_set_paused(conn, &queue, true)).await
    }

    async fn queue_resume(&self, queue: &QueueName) -> Result<()> {
        let queue = queue.clone();
        self.call(move |state, conn| state.queue_set_paused(conn, &queue, false)).await
    }

    async fn queue_upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> Result<QueueConfig> {
        let queue = queue.clone();
        self.call(move |state, conn| state.queue_upsert(conn, &queue, &patch)).await
    }
}

#[async_trait]
impl onceq_core::IdempotencyStore for SqliteStore {
    async fn idempotency_begin(&self, begin: onceq_core::Begin) -> Result<onceq_core::BeginOutcome> {
        begin.validate()?;
        self.call(move |state, conn| state.idempotency_begin(conn, &begin)).await
    }

    async fn idempotency_complete(&self, complete: onceq_core::Complete) -> Result<()> {
        complete.validate()?;
        self.call(move |state, conn| state.idempotency_complete(conn, &complete)).await
    }

    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        onceq_core::idempotency::validate_release(key, owner)?;
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.call(move |state, conn| state.idempotency_release(conn, &key, &owner)).await
    }
}
