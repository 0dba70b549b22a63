//! The writer thread: the only code that changes the data file.
//!
//! It owns the read-write connection and group-commits: it blocks for one request, drains every
//! other pending request, runs them all in one transaction, commits once, and only then answers
//! them (Invariant 1) — with durability `fsync`, through the syncer thread once the commit is
//! on disk (module `sync`). A request that fails its checks writes nothing; a storage
//! error rolls the whole group back and every request in it gets the error. Before each transaction it applies what the clock made due: scheduled jobs
//! become ready, expired leases are redelivered or dead-lettered (Invariant 7: the store's one
//! clock decides). It keeps the queue configs and per-state job counts in memory, publishing
//! them to readers after each commit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::store::validate;
use onceq_core::{
    truncate_error_text, DeliveryMode, Enqueued, Error, ErrorKind, Extend, Fail, ItemResults, JobId, LeaseOptions,
    LeaseRef, LeaseToken, LeasedJob, Nack, NackOutcome, NewJob, QueueConfig, QueueConfigPatch, QueueName, Redrive,
    Result, Timestamp,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::schema::{sqlite_error, state};
use crate::sync::{Batch, Syncer};
use crate::Shared;
use onceq_core::metrics as names;

/// Most requests one group commit takes; the rest wait for the next.
const GROUP_COMMIT_REQUESTS_MAX: usize = 1024;
/// Longest the writer sleeps when nothing is due, so housekeeping still runs.
const IDLE_WAKE_MS_MAX: u64 = 1000;
/// How long the writer looks for new requests before it sleeps (see `poll_briefly`).
const WRITER_POLL_BEFORE_SLEEP: Duration = Duration::from_micros(50);
/// How often expired dedup entries are swept.
const DEDUP_SWEEP_INTERVAL_MS: u64 = 1000;

/// Answers a request once its transaction's fate is known.
pub(crate) type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// A request: runs inside the group transaction, returns whether it succeeded and its reply.
pub(crate) type Op = Box<dyn FnOnce(&mut State, &Connection) -> (Result<()>, Reply) + Send>;

/// What the writer thread receives.
pub(crate) enum Message {
    /// A request to run in the next group commit.
    Op(Op),
    /// Apply what is due now; answer when committed (if a sender is given).
    Tick(Option<oneshot::Sender<()>>),
    /// Finish pending requests, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Wraps a typed request into an [`Op`] whose answer goes to `reply`.
pub(crate) fn op<T: Send + 'static>(
    f: impl FnOnce(&mut State, &Connection) -> Result<T> + Send + 'static,
    reply: oneshot::Sender<Result<T>>,
) -> Op {
    Box::new(move |state, conn| {
        let result = f(state, conn);
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        let answer: Reply = Box::new(move |committed: Result<()>| {
            let _ = reply.send(committed.and(result));
        });
        (outcome, answer)
    })
}

/// A queue as the writer knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueEntry {
    /// Row id in `queues`.
    pub id: i64,
    pub config: QueueConfig,
    pub paused: bool,
    /// Job counts indexed by stored state (scheduled, ready, leased, dead).
    pub counts: [u64; 4],
}

/// The writer's in-memory state; authoritative for queue configs and counts.
pub(crate) struct State {
    /// The clock reading for the current transaction: every decision in it uses this one value.
    pub now: Timestamp,
    queues: BTreeMap<QueueName, QueueEntry>,
    names: HashMap<i64, QueueName>,
    next_id: u64,
    next_id_dirty: bool,
    /// Queues (by id) whose published view must be refreshed after commit.
    dirty: HashSet<i64>,
    /// Queues deleted in this transaction, to remove from the published view.
    deleted: Vec<QueueName>,
    /// Ready jobs gained in this transaction, by queue id: after the commit, that many jobs'
    /// worth of waiting leases are woken.
    woken: HashMap<i64, u64>,
    shared: Arc<Shared>,
    /// No scheduled job or lease expiry is due before this time (ms). Published to
    /// `shared.next_due` only after the transaction that computed it commits, so a reader that
    /// sees a later `next_due` also sees the committed transitions (it may be early, never late).
    next_due: i64,
    rng: StdRng,
    last_dedup_sweep: Timestamp,
}

fn storage(context: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| sqlite_error(context, e)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

impl State {
    /// Loads queues, counts and the id counter from the database.
    pub(crate) fn load(conn: &Connection, shared: Arc<Shared>, now: Timestamp) -> Result<Self> {
        let mut state = State {
            now,
            queues: BTreeMap::new(),
            names: HashMap::new(),
            next_id: 1,
            next_id_dirty: false,
            dirty: HashSet::new(),
            deleted: Vec::new(),
            woken: HashMap::new(),
            shared,
            next_due: i64::MAX,
            rng: StdRng::from_entropy(),
            last_dedup_sweep: Timestamp::default(),
        };
        state.reload(conn)?;
        Ok(state)
    }

    /// Re-reads everything cached from the database, after a rollback, and republishes it.
    fn reload(&mut self, conn: &Connection) -> Result<()> {
        let mut queues = BTreeMap::new();
        let mut names = HashMap::new();
        {
            let mut stmt = conn
                .prepare_cached("SELECT id, name, config, paused FROM queues")
                .map_err(storage("reading queues"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, bool>(3)?))
                })
                .map_err(storage("reading queues"))?;
            for row in rows {
                let (id, name, config, paused) = row.map_err(storage("reading queues"))?;
                let name = QueueName::new(name)
                    .map_err(|e| Error::Storage(format!("queue {id} has an invalid stored name: {e}")))?;
                let config: QueueConfig = serde_json::from_str(&config)
                    .map_err(|e| Error::Storage(format!("queue {name} has an unreadable config: {e}")))?;
                names.insert(id, name.clone());
                queues.insert(name, QueueEntry { id, config, paused, counts: [0; 4] });
            }
        }
        {
            let mut stmt = conn
                .prepare_cached("SELECT queue_id, state, count(*) FROM jobs GROUP BY queue_id, state")
                .map_err(storage("counting jobs"))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                .map_err(storage("counting jobs"))?;
            for row in rows {
                let (queue_id, job_state, count) = row.map_err(storage("counting jobs"))?;
                let entry = names.get(&queue_id).and_then(|name| queues.get_mut(name));
                if let (Some(entry), Ok(slot)) = (entry, usize::try_from(job_state)) {
                    if slot < 4 {
                        entry.counts[slot] = u64::try_from(count).unwrap_or(0);
                    }
                }
            }
        }
        let stored_next: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_id'", [], |r| r.get(0))
            .map_err(storage("reading the id counter"))?;
        let max_id: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) FROM jobs", [], |r| r.get(0))
            .map_err(storage("reading ids"))?;
        self.next_id = u64::try_from(stored_next.max(max_id + 1)).unwrap_or(1);
        self.next_id_dirty = false;
        self.queues = queues;
        self.names = names;
        self.dirty.clear();
        self.deleted.clear();
        self.recompute_next_due(conn)?;
        self.publish_all();
        Ok(())
    }

    fn publish_all(&mut self) {
        let mut view = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        *view = self.queues.clone();
        drop(view);
        self.shared.next_due.store(self.next_due, Ordering::Release);
    }

    /// Publishes what the committed transaction changed: queue views first, then `next_due`.
    fn publish_dirty(&mut self) {
        if !self.dirty.is_empty() || !self.deleted.is_empty() {
            self.publish_queues();
        }
        self.shared.next_due.store(self.next_due, Ordering::Release);
    }

    fn publish_queues(&mut self) {
        let mut view = self.shared.queues.lock().unwrap_or_else(|p| p.into_inner());
        for name in self.deleted.drain(..) {
            view.remove(&name);
        }
        for id in self.dirty.drain() {
            if let Some(entry) = self.names.get(&id).and_then(|name| self.queues.get(name)) {
                view.insert(self.names[&id].clone(), entry.clone());
            }
        }
    }

    /// Wakes the leases waiting on queues that gained ready jobs (see the `wait` module).
    fn wake_waiters(&mut self) {
        for (id, jobs) in self.woken.drain() {
            // A paused queue hands out nothing: its waiters sleep on until resume wakes them.
            let Some(name) = self.names.get(&id) else { continue };
            if self.queues.get(name).is_some_and(|q| !q.paused) {
                self.shared.waiters.wake(name, jobs);
            }
        }
    }

    /// Records a new due time. Lowering the published value at once is safe: early is harmless.
    fn lower_next_due(&mut self, at: Timestamp) {
        self.next_due = self.next_due.min(at.as_millis());
        self.shared.next_due.fetch_min(at.as_millis(), Ordering::AcqRel);
    }

    fn recompute_next_due(&mut self, conn: &Connection) -> Result<()> {
        let scheduled: Option<i64> = conn
            .query_row("SELECT min(run_at) FROM jobs WHERE state = 0", [], |r| r.get(0))
            .map_err(storage("finding the next scheduled job"))?;
        let expiring: Option<i64> = conn
            .query_row("SELECT min(lease_expires_at) FROM jobs WHERE state = 2", [], |r| r.get(0))
            .map_err(storage("finding the next lease expiry"))?;
        self.next_due = [scheduled, expiring].into_iter().flatten().min().unwrap_or(i64::MAX);
        Ok(())
    }

    /// The `queue` label of metrics about this queue.
    fn label(&self, queue_id: i64) -> String {
        self.names.get(&queue_id).map(|n| n.to_string()).unwrap_or_default()
    }

    fn entry_by_id(&mut self, queue_id: i64) -> Option<&mut QueueEntry> {
        let name = self.names.get(&queue_id)?;
        self.dirty.insert(queue_id);
        self.queues.get_mut(name)
    }

    /// Moves one job's count from one state to another (`None`: created or deleted).
    fn count_move(&mut self, queue_id: i64, from: Option<i64>, to: Option<i64>) {
        self.count_move_n(queue_id, from, to, 1);
    }

    /// Moves `n` jobs' counts from one state to another (`None`: created or deleted).
    fn count_move_n(&mut self, queue_id: i64, from: Option<i64>, to: Option<i64>, n: u64) {
        if n == 0 {
            return;
        }
        if let Some(entry) = self.entry_by_id(queue_id) {
            if let Some(from) = from {
                let slot = &mut entry.counts[from as usize];
                debug_assert!(*slot >= n, "count of state {from} would go negative");
                *slot = slot.saturating_sub(n);
            }
            if let Some(to) = to {
                entry.counts[to as usize] += n;
            }
        }
        if to == Some(state::READY) {
            *self.woken.entry(queue_id).or_default() += n;
        }
    }

    /// Applies what the clock made due: scheduled jobs become ready, expired leases are
    /// redelivered (or dead-lettered on their last attempt), old dedup entries are swept.
    fn apply_due(&mut self, conn: &Connection) -> Result<()> {
        if self.now.ms_since(self.last_dedup_sweep) >= DEDUP_SWEEP_INTERVAL_MS {
            conn.prepare_cached("DELETE FROM dedup WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute([self.now.as_millis()]))
                .map_err(storage("sweeping expired dedup ids"))?;
            // Completed idempotency records past their retention go; an in-progress claim stays a
            // day past its expiry, so that its owner can still complete it if nobody took it over.
            conn.prepare_cached("DELETE FROM idempotency WHERE until <= ?1 AND (state = 1 OR until <= ?1 - ?2)")
                .and_then(|mut s| s.execute(params![self.now.as_millis(), to_i64(onceq_core::idempotency::TTL_MS_MAX)]))
                .map_err(storage("sweeping expired idempotency keys"))?;
            self.last_dedup_sweep = self.now;
        }
        if self.now.as_millis() < self.next_due {
            return Ok(());
        }
        let now = self.now.as_millis();
        let promoted: Vec<i64> = {
            let mut stmt = conn
                .prepare_cached("UPDATE jobs SET state = 1 WHERE state = 0 AND run_at <= ?1 RETURNING queue_id")
                .map_err(storage("promoting due jobs"))?;
            let rows = stmt.query_map([now], |r| r.get(0)).map_err(storage("promoting due jobs"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("promoting due jobs"))?
        };
        for queue_id in promoted {
            self.count_move(queue_id, Some(state::SCHEDULED), Some(state::READY));
        }
        let expired: Vec<(i64, i64, i64, i64, i64)> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, queue_id, attempt, max_attempts, lease_expires_at FROM jobs \
                     WHERE state = 2 AND lease_expires_at <= ?1",
                )
                .map_err(storage("finding expired leases"))?;
            let rows = stmt
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                .map_err(storage("finding expired leases"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("finding expired leases"))?
        };
        for (id, queue_id, attempt, max_attempts, expired_at) in expired {
            record_error(conn, id, attempt, "lease expired", expired_at)?;
            let to = if attempt >= max_attempts { state::DEAD } else { state::READY };
            if to == state::DEAD {
                metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(queue_id), "reason" => "attempts_exhausted")
                    .increment(1);
            } else {
                metrics::counter!(names::REDELIVERIES, "queue" => self.label(queue_id), "reason" => "lease_expired")
                    .increment(1);
            }
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = CASE WHEN ?2 = 1 THEN ?3 ELSE run_at END, \
                 lease_token = NULL, lease_expires_at = NULL, error_count = error_count + 1 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, to, expired_at]))
            .map_err(storage("expiring a lease"))?;
            self.count_move(queue_id, Some(state::LEASED), Some(to));
        }
        self.recompute_next_due(conn)
    }

    fn queue_create(&mut self, conn: &Connection, name: &QueueName, config: QueueConfig) -> Result<()> {
        let text = serde_json::to_string(&config).map_err(|e| Error::Storage(format!("encoding config: {e}")))?;
        conn.prepare_cached("INSERT INTO queues (name, config, paused, created_at) VALUES (?1, ?2, 0, ?3)")
            .and_then(|mut s| s.execute(params![name.as_str(), text, self.now.as_millis()]))
            .map_err(storage("creating a queue"))?;
        let id = conn.last_insert_rowid();
        self.names.insert(id, name.clone());
        self.queues.insert(name.clone(), QueueEntry { id, config, paused: false, counts: [0; 4] });
        self.dirty.insert(id);
        Ok(())
    }

    fn queue_required(&self, name: &QueueName) -> Result<&QueueEntry> {
        self.queues.get(name).ok_or_else(|| Error::QueueNotFound(name.clone()))
    }

    pub(crate) fn queue_upsert(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        patch: &QueueConfigPatch,
    ) -> Result<QueueConfig> {
        match self.queues.get(name) {
            None => {
                let config = QueueConfig::default().patched(patch)?;
                self.queue_create(conn, name, config.clone())?;
                Ok(config)
            }
            Some(entry) => {
                let config = entry.config.patched(patch)?;
                let text =
                    serde_json::to_string(&config).map_err(|e| Error::Storage(format!("encoding config: {e}")))?;
                conn.prepare_cached("UPDATE queues SET config = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![entry.id, text]))
                    .map_err(storage("updating a queue"))?;
                let id = entry.id;
                if let Some(entry) = self.queues.get_mut(name) {
                    entry.config = config.clone();
                }
                self.dirty.insert(id);
                Ok(config)
            }
        }
    }

    pub(crate) fn queue_set_paused(&mut self, conn: &Connection, name: &QueueName, paused: bool) -> Result<()> {
        let id = self.queue_required(name)?.id;
        conn.prepare_cached("UPDATE queues SET paused = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, paused]))
            .map_err(storage("pausing a queue"))?;
        if let Some(entry) = self.queues.get_mut(name) {
            entry.paused = paused;
            if !paused && entry.counts[state::READY as usize] > 0 {
                self.woken.insert(id, entry.counts[state::READY as usize]);
            }
        }
        self.dirty.insert(id);
        Ok(())
    }

    pub(crate) fn queue_delete(&mut self, conn: &Connection, name: &QueueName) -> Result<()> {
        let id = self.queue_required(name)?.id;
        conn.execute_batch(&format!(
            "DELETE FROM job_errors WHERE job_id IN (SELECT id FROM jobs WHERE queue_id = {id}); \
             DELETE FROM jobs WHERE queue_id = {id}; DELETE FROM dedup WHERE queue_id = {id}; \
             DELETE FROM queues WHERE id = {id};"
        ))
        .map_err(storage("deleting a queue"))?;
        self.queues.remove(name);
        self.names.remove(&id);
        self.dirty.remove(&id);
        self.woken.remove(&id);
        self.deleted.push(name.clone());
        Ok(())
    }

    pub(crate) fn job_enqueue(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        validate::enqueue(&jobs)?;
        let latest = self.now.plus_ms(onceq_core::limits::DELAY_MS_MAX);
        if let Some(i) = jobs.iter().position(|j| j.ready_at(self.now) > latest) {
            return Err(Error::invalid(format!(
                "job {i}: run_at is more than {} ms ahead; that is the limit",
                onceq_core::limits::DELAY_MS_MAX
            )));
        }
        if let Some(entry) = self.queues.get(name) {
            if entry.config.delivery == DeliveryMode::EffectivelyOnce {
                if let Some(i) = jobs.iter().position(|j| j.dedup_id.is_none()) {
                    return Err(Error::invalid(format!(
                        "job {i}: queue {name} is effectively_once, so every job needs a dedup id"
                    )));
                }
            }
        } else {
            self.queue_create(conn, name, QueueConfig::default())?;
        }
        let (queue_id, window_ms, queue_max_attempts) = {
            let entry = self.queue_required(name)?;
            (entry.id, entry.config.dedup_window_ms, entry.config.max_attempts)
        };
        let now = self.now;
        let mut out = Vec::with_capacity(jobs.len());
        let (mut ready, mut scheduled) = (0u64, 0u64);
        // Without dedup ids there is nothing to look up per job: the rows go in by the chunk, and
        // the one-by-one loop below gets nothing.
        let jobs = if jobs.iter().all(|job| job.dedup_id.is_none()) {
            (ready, scheduled) = self.insert_chunked(conn, queue_id, queue_max_attempts, jobs, &mut out)?;
            Vec::new()
        } else {
            jobs
        };
        // Prepared once per batch: the statement cache's lookup per row is measurable here.
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, \
                 dedup_id, headers, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10)",
            )
            .map_err(storage("inserting a job"))?;
        for job in jobs {
            if let Some(dedup_id) = &job.dedup_id {
                let original: Option<i64> = conn
                    .prepare_cached(
                        "SELECT job_id FROM dedup WHERE queue_id = ?1 AND dedup_id = ?2 AND expires_at > ?3",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![queue_id, dedup_id, now.as_millis()], |r| r.get(0)).optional()
                    })
                    .map_err(storage("checking a dedup id"))?;
                if let Some(original) = original {
                    out.push(Enqueued { id: JobId::new(original as u64), duplicate: true });
                    continue;
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            self.next_id_dirty = true;
            let run_at = job.ready_at(now);
            let job_state = if run_at > now { state::SCHEDULED } else { state::READY };
            let headers = if job.headers.is_empty() {
                None
            } else {
                Some(
                    serde_json::to_string(&job.headers)
                        .map_err(|e| Error::Storage(format!("encoding headers: {e}")))?,
                )
            };
            insert
                .execute(params![
                    to_i64(id),
                    queue_id,
                    job_state,
                    job.priority,
                    run_at.as_millis(),
                    now.as_millis(),
                    job.max_attempts.unwrap_or(queue_max_attempts),
                    job.dedup_id,
                    headers,
                    job.payload,
                ])
                .map_err(storage("inserting a job"))?;
            if let Some(dedup_id) = &job.dedup_id {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO dedup (queue_id, dedup_id, job_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![queue_id, dedup_id, to_i64(id), now.plus_ms(window_ms).as_millis()])
                })
                .map_err(storage("recording a dedup id"))?;
            }
            if job_state == state::SCHEDULED {
                self.lower_next_due(run_at);
                scheduled += 1;
            } else {
                ready += 1;
            }
            out.push(Enqueued { id: JobId::new(id), duplicate: false });
        }
        self.count_move_n(queue_id, None, Some(state::READY), ready);
        self.count_move_n(queue_id, None, Some(state::SCHEDULED), scheduled);
        let duplicates = out.len() as u64 - ready - scheduled;
        metrics::counter!(names::ENQUEUED, "queue" => name.to_string()).increment(ready + scheduled);
        if duplicates > 0 {
            metrics::counter!(names::DUPLICATES_SUPPRESSED, "queue" => name.to_string()).increment(duplicates);
        }
        Ok(out)
    }

    /// Inserts `jobs`, none of which has a dedup id, with one multi-row INSERT per chunk of
    /// [`INSERT_CHUNK_ROWS`] rows: one statement execution per chunk instead of per job, and the
    /// values every row shares (first id, queue, enqueue time) bound once. Ids are assigned in
    /// request order. Returns how many became ready and how many scheduled.
    fn insert_chunked(
        &mut self,
        conn: &Connection,
        queue_id: i64,
        queue_max_attempts: u32,
        jobs: Vec<NewJob>,
        out: &mut Vec<Enqueued>,
    ) -> Result<(u64, u64)> {
        let now = self.now;
        let (mut ready, mut scheduled) = (0u64, 0u64);
        let bind = |stmt: &mut rusqlite::CachedStatement<'_>, index: usize, value: &dyn rusqlite::ToSql| {
            stmt.raw_bind_parameter(index, value).map_err(storage("inserting a job"))
        };
        let mut left = jobs.len();
        let mut jobs = jobs.into_iter();
        while left > 0 {
            let rows = INSERT_CHUNK_ROWS.iter().copied().find(|&rows| rows <= left).unwrap_or(1);
            let mut insert = conn.prepare_cached(insert_sql(rows)).map_err(storage("inserting a job"))?;
            bind(&mut insert, 1, &to_i64(self.next_id))?;
            bind(&mut insert, 2, &queue_id)?;
            bind(&mut insert, 3, &now.as_millis())?;
            for (row, job) in jobs.by_ref().take(rows).enumerate() {
                let id = self.next_id;
                self.next_id += 1;
                self.next_id_dirty = true;
                let run_at = job.ready_at(now);
                let job_state = if run_at > now { state::SCHEDULED } else { state::READY };
                let headers = if job.headers.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::to_string(&job.headers)
                            .map_err(|e| Error::Storage(format!("encoding headers: {e}")))?,
                    )
                };
                let base = INSERT_SHARED_PARAMS + row * INSERT_ROW_PARAMS;
                bind(&mut insert, base + 1, &job_state)?;
                bind(&mut insert, base + 2, &job.priority)?;
                bind(&mut insert, base + 3, &run_at.as_millis())?;
                bind(&mut insert, base + 4, &job.max_attempts.unwrap_or(queue_max_attempts))?;
                bind(&mut insert, base + 5, &headers)?;
                bind(&mut insert, base + 6, &job.payload)?;
                if job_state == state::SCHEDULED {
                    self.lower_next_due(run_at);
                    scheduled += 1;
                } else {
                    ready += 1;
                }
                out.push(Enqueued { id: JobId::new(id), duplicate: false });
            }
            let inserted = insert.raw_execute().map_err(storage("inserting a job"))?;
            debug_assert_eq!(inserted, rows, "a multi-row INSERT wrote {inserted} of {rows} rows");
            left -= rows;
        }
        Ok((ready, scheduled))
    }

    pub(crate) fn job_lease(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        options: LeaseOptions,
    ) -> Result<Vec<LeasedJob>> {
        let Some(entry) = self.queues.get(name) else { return Ok(Vec::new()) };
        if entry.paused || entry.counts[state::READY as usize] == 0 {
            return Ok(Vec::new());
        }
        let queue_id = entry.id;
        let at_most_once = entry.config.delivery == DeliveryMode::AtMostOnce;
        let visibility_ms = options.visibility_timeout_ms.unwrap_or(entry.config.visibility_timeout_ms);
        let expires_at = self.now.plus_ms(visibility_ms);
        // The batch is read in lease order through the ready-order index, then each job is claimed
        // by id with one cached statement. (One `UPDATE ... WHERE id IN (SELECT ...) RETURNING`
        // would be one statement, but SQLite materializes both the IN list and the RETURNING rows in
        // ephemeral tables, and hands the rows back unordered: measured, it costs more per job.)
        // Every row read here is claimed below in the same transaction: the writer is the only
        // connection that writes, so nothing can take them in between.
        let rows: Vec<ReadyRow> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id, headers, payload, \
                     error_count FROM jobs WHERE queue_id = ?1 AND state = 1 \
                     ORDER BY priority DESC, run_at, id LIMIT ?2",
                )
                .map_err(storage("leasing jobs"))?;
            let rows = stmt
                .query_map(params![queue_id, options.max_jobs], |r| {
                    Ok(ReadyRow {
                        id: r.get(0)?,
                        priority: r.get(1)?,
                        run_at: r.get(2)?,
                        enqueued_at: r.get(3)?,
                        attempt: r.get(4)?,
                        max_attempts: r.get(5)?,
                        dedup_id: r.get(6)?,
                        headers: r.get(7)?,
                        payload: r.get(8)?,
                        error_count: r.get(9)?,
                    })
                })
                .map_err(storage("leasing jobs"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("leasing jobs"))?
        };
        // In at_most_once mode the lease *is* the ack: the jobs are deleted as they are handed out.
        let mut claim = if at_most_once {
            conn.prepare_cached("DELETE FROM jobs WHERE id = ?1 AND state = 1")
        } else {
            conn.prepare_cached(
                "UPDATE jobs SET state = 2, attempt = ?2, lease_token = ?3, lease_expires_at = ?4, leased_at = ?5 \
                 WHERE id = ?1 AND state = 1",
            )
        }
        .map_err(storage("leasing jobs"))?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt = row.attempt + 1;
            // 128 bits from the writer's CSPRNG (ChaCha, seeded from the operating system).
            let mut token = [0u8; 16];
            rand::RngCore::fill_bytes(&mut self.rng, &mut token);
            let claimed = if at_most_once {
                claim.execute([row.id])
            } else {
                claim.execute(params![row.id, attempt, &token[..], expires_at.as_millis(), self.now.as_millis()])
            }
            .map_err(storage("leasing jobs"))?;
            if claimed != 1 {
                return Err(Error::Storage(format!("job {} was ready but could not be leased", row.id)));
            }
            if at_most_once && row.error_count > 0 {
                delete_errors(conn, row.id)?;
            }
            let headers = match row.headers {
                None => Default::default(),
                Some(text) => serde_json::from_str(&text)
                    .map_err(|e| Error::Storage(format!("job {} has unreadable headers: {e}", row.id)))?,
            };
            out.push(LeasedJob {
                id: JobId::new(row.id as u64),
                queue: name.clone(),
                lease_token: LeaseToken::from_bytes(token),
                attempt: to_u32(attempt),
                max_attempts: to_u32(row.max_attempts),
                priority: row.priority,
                payload: row.payload,
                headers,
                dedup_id: row.dedup_id,
                enqueued_at: Timestamp::from_millis(row.enqueued_at),
                run_at: Timestamp::from_millis(row.run_at),
                lease_expires_at: expires_at,
            });
        }
        let to = if at_most_once { None } else { Some(state::LEASED) };
        self.count_move_n(queue_id, Some(state::READY), to, out.len() as u64);
        if !out.is_empty() {
            metrics::counter!(names::DELIVERIES, "queue" => name.to_string()).increment(out.len() as u64);
            let wait = metrics::histogram!(names::ENQUEUE_TO_LEASE, "queue" => name.to_string());
            for job in out.iter().filter(|j| j.attempt == 1) {
                wait.record(self.now.ms_since(job.enqueued_at) as f64 / 1000.0);
            }
        }
        let left = self.queues.get(name).map_or(0, |q| q.counts[state::READY as usize]);
        if !out.is_empty() && left > 0 {
            self.woken.insert(queue_id, left); // pass the wake-up on: there is more to lease
        }
        if !at_most_once && !out.is_empty() {
            self.lower_next_due(expires_at);
        }
        Ok(out)
    }

    /// The live lease named by (id, token), or why it is not one.
    fn live_lease(&self, conn: &Connection, id: JobId, token: &LeaseToken) -> Result<LiveLease> {
        let row = conn
            .prepare_cached(
                "SELECT queue_id, state, attempt, max_attempts, lease_token, lease_expires_at FROM jobs WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([to_i64(id.get())], |r| {
                    Ok(LeaseRow {
                        queue_id: r.get(0)?,
                        state: r.get(1)?,
                        attempt: r.get(2)?,
                        max_attempts: r.get(3)?,
                        token: r.get(4)?,
                        expires_at: r.get(5)?,
                    })
                })
                .optional()
            })
            .map_err(storage("reading a lease"))?;
        let Some(LeaseRow { queue_id, state: job_state, attempt, max_attempts, token: stored, expires_at }) = row
        else {
            metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => "").increment(1);
            return Err(Error::JobNotFound(id));
        };
        let live = job_state == state::LEASED
            && stored.as_deref() == Some(&token.as_bytes()[..])
            && expires_at.is_some_and(|at| self.now.as_millis() < at);
        if !live {
            metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => self.label(queue_id)).increment(1);
            return Err(Error::LeaseLost(id));
        }
        Ok(LiveLease { row_id: to_i64(id.get()), queue_id, attempt, max_attempts })
    }

    pub(crate) fn job_ack(&mut self, conn: &Connection, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        validate::settle_batch(acks.len())?;
        let now = self.now.as_millis();
        // Each lease is checked by one point read; the live ones are then deleted with one
        // statement per id chunk. (A DELETE per job pays statement set-up and teardown, a cursor on
        // the table and on each index, per job; `DELETE ... RETURNING` builds an ephemeral table
        // per job and measured twice as costly; reading the batch with one IN list saved nothing.)
        let mut find = conn
            .prepare_cached(
                "SELECT queue_id, error_count, leased_at FROM jobs \
                 WHERE id = ?1 AND state = 2 AND lease_token = ?2 AND lease_expires_at > ?3",
            )
            .map_err(storage("acking a job"))?;
        let mut out = Vec::with_capacity(acks.len());
        let mut doomed: Vec<i64> = Vec::with_capacity(acks.len());
        let mut settled = Settled { queues: Vec::new(), now: self.now };
        let repeats = {
            let mut ids: Vec<u64> = acks.iter().map(|ack| ack.id.get()).collect();
            ids.sort_unstable();
            ids.windows(2).any(|pair| pair[0] == pair[1])
        };
        for ack in acks {
            let row_id = to_i64(ack.id.get());
            // A job acked earlier in this call is gone, as if deleted already.
            let found: Option<(i64, i64, Option<i64>)> = if repeats && doomed.contains(&row_id) {
                None
            } else {
                find.query_row(params![row_id, &ack.lease_token.as_bytes()[..], now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(storage("acking a job"))?
            };
            out.push(match found {
                Some((queue_id, error_count, leased_at)) => {
                    doomed.push(row_id);
                    if error_count > 0 {
                        delete_errors(conn, row_id)?;
                    }
                    settled.add(queue_id, leased_at);
                    Ok(())
                }
                None if repeats && doomed.contains(&row_id) => {
                    metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => "").increment(1);
                    Err(Error::JobNotFound(ack.id))
                }
                None => match self.live_lease(conn, ack.id, &ack.lease_token) {
                    Ok(_) => Err(Error::Storage(format!("job {} has a live lease that ack could not delete", ack.id))),
                    Err(e) => Err(e),
                },
            });
        }
        let mut deleted = 0;
        for chunk in id_chunks(&doomed) {
            deleted += conn
                .prepare_cached(ACK_DELETE_SQL.get(chunk.len()))
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(chunk)))
                .map_err(storage("acking a job"))?;
        }
        if deleted != doomed.len() {
            return Err(Error::Storage(format!("ack deleted {deleted} of {} live leases", doomed.len())));
        }
        // Counts and metrics once per queue, not per job: label strings and metric handles cost
        // more than the bookkeeping itself.
        for tally in settled.queues {
            self.count_move_n(tally.queue_id, Some(state::LEASED), None, tally.jobs);
            let label = self.label(tally.queue_id);
            metrics::counter!(names::ACKS, "queue" => label.clone()).increment(tally.jobs);
            if !tally.held_s.is_empty() {
                let histogram = metrics::histogram!(names::LEASE_TO_ACK, "queue" => label);
                for held in tally.held_s {
                    histogram.record(held);
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn job_nack(&mut self, conn: &Connection, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        validate::nacks(nacks)?;
        let mut out = Vec::with_capacity(nacks.len());
        for nack in nacks {
            let lease = match self.live_lease(conn, nack.id, &nack.lease_token) {
                Ok(lease) => lease,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let text = nack.error.as_deref().unwrap_or("nacked");
            record_error(conn, lease.row_id, lease.attempt, text, self.now.as_millis())?;
            if lease.attempt >= lease.max_attempts {
                self.settle_dead(conn, &lease)?;
                metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(lease.queue_id), "reason" => "attempts_exhausted")
                    .increment(1);
                out.push(Ok(NackOutcome::Dead));
                continue;
            }
            let delay_ms = match nack.delay_ms {
                Some(ms) => ms,
                None => {
                    let backoff = self
                        .names
                        .get(&lease.queue_id)
                        .and_then(|n| self.queues.get(n))
                        .map(|q| q.config.backoff.clone())
                        .unwrap_or_default();
                    backoff.delay_ms(to_u32(lease.attempt), &mut self.rng)
                }
            };
            let run_at = self.now.plus_ms(delay_ms);
            let to = if delay_ms == 0 { state::READY } else { state::SCHEDULED };
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = ?3, lease_token = NULL, lease_expires_at = NULL, \
                 error_count = error_count + 1 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![lease.row_id, to, run_at.as_millis()]))
            .map_err(storage("nacking a job"))?;
            if to == state::SCHEDULED {
                self.lower_next_due(run_at);
            }
            self.count_move(lease.queue_id, Some(state::LEASED), Some(to));
            metrics::counter!(names::REDELIVERIES, "queue" => self.label(lease.queue_id), "reason" => "nack")
                .increment(1);
            out.push(Ok(NackOutcome::Retrying { run_at }));
        }
        Ok(out)
    }

    pub(crate) fn job_release(
        &mut self,
        conn: &Connection,
        releases: &[onceq_core::Release],
    ) -> Result<ItemResults<()>> {
        validate::releases(releases)?;
        let mut out = Vec::with_capacity(releases.len());
        for release in releases {
            let lease = match self.live_lease(conn, release.id, &release.lease_token) {
                Ok(lease) => lease,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            // The lease did not count: the attempt it took is given back, and no error is kept.
            let delay_ms = release.delay_ms.unwrap_or(0);
            let run_at = self.now.plus_ms(delay_ms);
            let to = if delay_ms == 0 { state::READY } else { state::SCHEDULED };
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = ?3, attempt = max(attempt - 1, 0), lease_token = NULL, \
                 lease_expires_at = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![lease.row_id, to, run_at.as_millis()]))
            .map_err(storage("releasing a job"))?;
            if to == state::SCHEDULED {
                self.lower_next_due(run_at);
            }
            self.count_move(lease.queue_id, Some(state::LEASED), Some(to));
            metrics::counter!(names::REDELIVERIES, "queue" => self.label(lease.queue_id), "reason" => "released")
                .increment(1);
            out.push(Ok(()));
        }
        Ok(out)
    }

    fn settle_dead(&mut self, conn: &Connection, lease: &LiveLease) -> Result<()> {
        conn.prepare_cached(
            "UPDATE jobs SET state = 3, lease_token = NULL, lease_expires_at = NULL, error_count = error_count + 1 \
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute([lease.row_id]))
        .map_err(storage("dead-lettering a job"))?;
        self.count_move(lease.queue_id, Some(state::LEASED), Some(state::DEAD));
        Ok(())
    }

    pub(crate) fn job_extend(&mut self, conn: &Connection, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        validate::extends(extends)?;
        let mut out = Vec::with_capacity(extends.len());
        for extend in extends {
            out.push(match self.live_lease(conn, extend.id, &extend.lease_token) {
                Ok(lease) => {
                    let expires_at = self.now.plus_ms(extend.visibility_timeout_ms);
                    conn.prepare_cached("UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![lease.row_id, expires_at.as_millis()]))
                        .map_err(storage("extending a lease"))?;
                    self.lower_next_due(expires_at);
                    metrics::counter!(names::LEASE_EXTENSIONS, "queue" => self.label(lease.queue_id)).increment(1);
                    Ok(expires_at)
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    pub(crate) fn job_fail(&mut self, conn: &Connection, fails: &[Fail]) -> Result<ItemResults<()>> {
        validate::settle_batch(fails.len())?;
        let mut out = Vec::with_capacity(fails.len());
        for fail in fails {
            out.push(match self.live_lease(conn, fail.id, &fail.lease_token) {
                Ok(lease) => {
                    record_error(conn, lease.row_id, lease.attempt, &fail.error, self.now.as_millis())?;
                    self.settle_dead(conn, &lease)?;
                    metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(lease.queue_id), "reason" => "failed")
                        .increment(1);
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    pub(crate) fn dead_redrive(&mut self, conn: &Connection, name: &QueueName, redrive: &Redrive) -> Result<u64> {
        validate::redrive(redrive)?;
        let queue_id = self.queue_required(name)?.id;
        let limit = redrive.limit.map(to_i64).unwrap_or(i64::MAX);
        let ids: Vec<i64> = match &redrive.ids {
            Some(ids) => {
                // Oldest first, as for "all": the limit keeps the lowest ids whatever the request order.
                let mut ids: Vec<i64> = ids.iter().map(|id| to_i64(id.get())).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut chosen = Vec::new();
                for row_id in ids {
                    if to_i64(chosen.len() as u64) >= limit {
                        break;
                    }
                    let dead: bool = conn
                        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1 AND queue_id = ?2 AND state = 3")
                        .and_then(|mut s| s.exists(params![row_id, queue_id]))
                        .map_err(storage("finding a dead job"))?;
                    if dead {
                        chosen.push(row_id);
                    }
                }
                chosen
            }
            None => {
                let mut stmt = conn
                    .prepare_cached("SELECT id FROM jobs WHERE queue_id = ?1 AND state = 3 ORDER BY id LIMIT ?2")
                    .map_err(storage("listing dead jobs"))?;
                let rows =
                    stmt.query_map(params![queue_id, limit], |r| r.get(0)).map_err(storage("listing dead jobs"))?;
                rows.collect::<rusqlite::Result<_>>().map_err(storage("listing dead jobs"))?
            }
        };
        for &id in &ids {
            conn.prepare_cached("UPDATE jobs SET state = 1, attempt = 0, run_at = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, self.now.as_millis()]))
                .map_err(storage("redriving a job"))?;
            self.count_move(queue_id, Some(state::DEAD), Some(state::READY));
        }
        metrics::counter!(names::REDRIVEN, "queue" => name.to_string()).increment(ids.len() as u64);
        Ok(ids.len() as u64)
    }

    pub(crate) fn dead_purge(&mut self, conn: &Connection, name: &QueueName) -> Result<u64> {
        let queue_id = self.queue_required(name)?.id;
        conn.prepare_cached(
            "DELETE FROM job_errors WHERE job_id IN (SELECT id FROM jobs WHERE queue_id = ?1 AND state = 3)",
        )
        .and_then(|mut s| s.execute([queue_id]))
        .map_err(storage("purging dead jobs"))?;
        let purged = conn
            .prepare_cached("DELETE FROM jobs WHERE queue_id = ?1 AND state = 3")
            .and_then(|mut s| s.execute([queue_id]))
            .map_err(storage("purging dead jobs"))?;
        if let Some(entry) = self.entry_by_id(queue_id) {
            debug_assert_eq!(entry.counts[state::DEAD as usize], purged as u64);
            entry.counts[state::DEAD as usize] = 0;
        }
        Ok(purged as u64)
    }

    /// Writes the id counter (and the clock floor) if this transaction assigned ids.
    fn persist_meta(&mut self, conn: &Connection) -> Result<()> {
        if !self.next_id_dirty {
            return Ok(());
        }
        conn.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'next_id'")
            .and_then(|mut s| s.execute([to_i64(self.next_id)]))
            .map_err(storage("recording the id counter"))?;
        conn.prepare_cached("UPDATE meta SET value = max(value, ?1) WHERE key = 'clock_floor_ms'")
            .and_then(|mut s| s.execute([self.now.as_millis()]))
            .map_err(storage("recording the clock floor"))?;
        Ok(())
    }
}

/// Rows per multi-row INSERT, largest first: a batch goes in as few statements as these sizes
/// allow (100 jobs: 64 + 16 + 16 + 4), and each size is one cached statement.
const INSERT_CHUNK_ROWS: [usize; 4] = [64, 16, 4, 1];
/// Parameters every row of a multi-row INSERT shares: the first id, the queue, the enqueue time.
const INSERT_SHARED_PARAMS: usize = 3;
/// Parameters of each row of a multi-row INSERT.
const INSERT_ROW_PARAMS: usize = 6;

/// The multi-row INSERT of `rows` jobs without dedup ids (ids consecutive from `?1`).
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        INSERT_CHUNK_ROWS
            .iter()
            .map(|&rows| {
                let mut sql = String::from(
                    "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, \
                     dedup_id, headers, payload) VALUES ",
                );
                for row in 0..rows {
                    let p = INSERT_SHARED_PARAMS + row * INSERT_ROW_PARAMS;
                    if row > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "(?1 + {row}, ?2, ?{}, ?{}, ?{}, ?3, 0, ?{}, NULL, ?{}, ?{})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6
                    ));
                }
                sql
            })
            .collect()
    });
    let index = INSERT_CHUNK_ROWS.iter().position(|&r| r == rows).unwrap_or(INSERT_CHUNK_ROWS.len() - 1);
    all.get(index).map_or("", String::as_str)
}

/// Sizes of the id lists of batched statements, largest first: `n` ids run as one statement per
/// set bit of `n` (100 = 64 + 32 + 4), and each size is one cached statement.
const ID_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// Splits `ids` into chunks whose sizes are in [`ID_CHUNKS`].
fn id_chunks(ids: &[i64]) -> impl Iterator<Item = &[i64]> {
    let mut rest = ids;
    std::iter::from_fn(move || {
        let size = ID_CHUNKS.iter().copied().find(|&size| size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// A statement over a list of ids, one text per size in [`ID_CHUNKS`], made on first use.
struct IdListSql {
    /// The statement with `{ids}` where the list goes.
    template: &'static str,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl IdListSql {
    const fn new(template: &'static str) -> Self {
        IdListSql { template, texts: std::sync::OnceLock::new() }
    }

    /// The text for `n` ids (`n` one of [`ID_CHUNKS`]): `?1, ..., ?n` in place of `{ids}`.
    fn get(&self, n: usize) -> &str {
        let texts = self.texts.get_or_init(|| {
            ID_CHUNKS
                .iter()
                .map(|&size| {
                    let list: Vec<String> = (1..=size).map(|i| format!("?{i}")).collect();
                    self.template.replace("{ids}", &list.join(", "))
                })
                .collect()
        });
        let index = ID_CHUNKS.iter().position(|&size| size == n).unwrap_or(ID_CHUNKS.len() - 1);
        texts.get(index).map_or("", String::as_str)
    }
}

/// Deletes acked jobs, each already found leased with the presented token.
static ACK_DELETE_SQL: IdListSql = IdListSql::new("DELETE FROM jobs WHERE id IN ({ids}) AND state = 2");

/// Jobs of one queue settled by one call.
struct QueueTally {
    queue_id: i64,
    jobs: u64,
    /// Seconds from lease to settle, of each job whose lease start is known.
    held_s: Vec<f64>,
}

/// What one settle call did, by queue (a call usually touches one queue, so a short list).
struct Settled {
    queues: Vec<QueueTally>,
    /// The clock reading of the transaction.
    now: Timestamp,
}

impl Settled {
    fn add(&mut self, queue_id: i64, leased_at: Option<i64>) {
        let index = match self.queues.iter().position(|t| t.queue_id == queue_id) {
            Some(index) => index,
            None => {
                self.queues.push(QueueTally { queue_id, jobs: 0, held_s: Vec::new() });
                self.queues.len() - 1
            }
        };
        let tally = &mut self.queues[index];
        tally.jobs += 1;
        if let Some(leased_at) = leased_at {
            tally.held_s.push(self.now.ms_since(Timestamp::from_millis(leased_at)) as f64 / 1000.0);
        }
    }
}

/// A ready job as read for leasing.
struct ReadyRow {
    id: i64,
    priority: i32,
    run_at: i64,
    enqueued_at: i64,
    attempt: i64,
    max_attempts: i64,
    dedup_id: Option<String>,
    headers: Option<String>,
    payload: Vec<u8>,
    error_count: i64,
}

/// The lease columns of a job row.
struct LeaseRow {
    queue_id: i64,
    state: i64,
    attempt: i64,
    max_attempts: i64,
    token: Option<Vec<u8>>,
    expires_at: Option<i64>,
}

/// A lease that [`State::live_lease`] found live.
struct LiveLease {
    row_id: i64,
    queue_id: i64,
    attempt: i64,
    max_attempts: i64,
}

fn record_error(conn: &Connection, id: i64, attempt: i64, text: &str, at: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO job_errors (job_id, attempt, at, error) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![id, attempt, at, truncate_error_text(text)]))
        .map_err(storage("recording an attempt's error"))?;
    Ok(())
}

fn delete_errors(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM job_errors WHERE job_id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(storage("deleting a job's errors"))?;
    Ok(())
}

/// The writer thread's loop. Returns when told to shut down or when every sender is gone.
///
/// With a `syncer` (durability `fsync`), each group's replies are answered once the write-ahead
/// log is on disk: by the syncer thread while the writer goes on with the next group, or by the
/// writer itself when nothing else waits (module `sync`). Without one (`relaxed`), the writer
/// answers right after the commit.
pub(crate) fn run(
    mut conn: Connection,
    mut state: State,
    inbox: Receiver<Message>,
    clock: Arc<dyn onceq_core::Clock>,
    lock: std::fs::File,
    syncer: Option<Syncer>,
) {
    let shared = state.shared.clone();
    let _stop_if_panicking = crate::sync::StopOnPanic { durable: &shared.durable, thread: "writer" };
    let mut shutdown: Vec<oneshot::Sender<()>> = Vec::new();
    // A request taken from the inbox after a commit, to start the next group with.
    let mut pending: Option<Message> = None;
    while shutdown.is_empty() {
        let now = clock.now();
        let next_due = state.next_due;
        let sleep_ms = u64::try_from(next_due.saturating_sub(now.as_millis())).unwrap_or(0).min(IDLE_WAKE_MS_MAX);
        let first = match pending.take().or_else(|| poll_briefly(&inbox)) {
            Some(message) => Some(message),
            None => match inbox.recv_timeout(Duration::from_millis(sleep_ms)) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut ops = Vec::new();
        let mut ticks = Vec::new();
        let mut take = |message: Message, ops: &mut Vec<Op>, ticks: &mut Vec<oneshot::Sender<()>>| match message {
            Message::Op(op) => ops.push(op),
            Message::Tick(reply) => ticks.extend(reply),
            Message::Shutdown(reply) => shutdown.push(reply),
        };
        if let Some(message) = first {
            take(message, &mut ops, &mut ticks);
        }
        while ops.len() < GROUP_COMMIT_REQUESTS_MAX {
            match inbox.try_recv() {
                Ok(message) => take(message, &mut ops, &mut ticks),
                Err(_) => break,
            }
        }
        let committed = group_commit(&mut conn, &mut state, clock.as_ref(), ops);
        // Whether the next group has a request already: then the sync is worth overlapping.
        if shutdown.is_empty() {
            pending = inbox.try_recv().ok();
        }
        answer(committed, syncer.as_ref(), pending.is_some());
        for tick in ticks {
            let _ = tick.send(());
        }
    }
    // Stop accepting, then answer whatever raced with the shutdown. (No request is pending here:
    // none is taken once a shutdown is seen, and the inbox closing leaves none.)
    debug_assert!(pending.is_none());
    let mut rest: Vec<Op> = Vec::new();
    let mut ticks = Vec::new();
    for message in inbox.try_iter() {
        match message {
            Message::Op(op) => rest.push(op),
            Message::Tick(reply) => ticks.extend(reply),
            Message::Shutdown(reply) => shutdown.push(reply),
        }
    }
    if !rest.is_empty() || !ticks.is_empty() {
        let committed = group_commit(&mut conn, &mut state, clock.as_ref(), rest);
        answer(committed, syncer.as_ref(), false);
    }
    for tick in ticks {
        let _ = tick.send(());
    }
    // Every reply is sent, and the log synced, before the checkpoint and the unlock.
    if let Some(syncer) = syncer {
        syncer.finish();
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    drop(conn);
    drop(lock); // the data directory is free before `close` returns
    for reply in shutdown {
        let _ = reply.send(());
    }
}

/// Answers a committed group: through the syncer once it is durable (`fsync`), or at once.
fn answer(committed: Batch, syncer: Option<&Syncer>, more_requests: bool) {
    match syncer {
        Some(syncer) => syncer.submit(committed, more_requests),
        None => {
            for reply in committed.replies {
                reply(committed.outcome.clone());
            }
        }
    }
}

/// Looks for a request for a few microseconds before the writer goes to sleep: a client that was
/// just answered usually sends its next request at once, and catching it here saves a sleep and a
/// cross-CPU wake-up, which on a virtual machine costs more than the spin. Yields between looks so
/// that a client sharing this core can run.
fn poll_briefly(inbox: &Receiver<Message>) -> Option<Message> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(message) = inbox.try_recv() {
            return Some(message);
        }
        if started.elapsed() >= WRITER_POLL_BEFORE_SLEEP {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Runs `ops` in one transaction and commits once; returns the replies to send, with the
/// group's outcome, for [`answer`].
fn group_commit(conn: &mut Connection, state: &mut State, clock: &dyn onceq_core::Clock, ops: Vec<Op>) -> Batch {
    state.now = clock.now();
    let mut replies: Vec<Reply> = Vec::with_capacity(ops.len());
    let changes_before = conn.total_changes();
    let mut seq = 0;
    let result = (|| -> Result<()> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage("starting a transaction"))?;
        state.apply_due(&tx)?;
        // No savepoint per request: a request that returns a domain error (not found, invalid,
        // lease lost) has written nothing, because every check comes before the first write. A
        // storage error mid-request dooms the whole group instead: it rolls back, and every
        // request in it is told so — none was acknowledged, nothing of it was written. Savepoints
        // would make SQLite copy every page a request touches into a statement journal.
        let mut failure: Option<Error> = None;
        for op in ops {
            let (outcome, reply) = op(state, &tx);
            replies.push(reply);
            if let Err(e) = outcome {
                if e.kind() == ErrorKind::Storage && failure.is_none() {
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(Error::Storage(format!("{e}; the commit it was part of was rolled back, retry")));
        }
        state.persist_meta(&tx)?;
        // After a failed sync nothing more is committed (module `sync`): the group rolls back.
        if let Some(e) = state.shared.durable.failure() {
            return Err(e);
        }
        seq = state.shared.durable.begin_commit();
        tx.commit().map_err(storage("committing"))?;
        Ok(())
    })();
    let outcome = match result {
        Ok(()) => {
            state.next_id_dirty = false;
            state.publish_dirty();
            state.wake_waiters();
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, "group commit failed; every request in it is answered with the error");
            // The transaction rolled back: forget what this group did to the in-memory state.
            state.woken.clear();
            if let Err(reload_error) = state.reload(conn) {
                tracing::error!(error = %reload_error, "reloading state after a failed commit failed");
            }
            Err(error)
        }
    };
    // Every write a group makes is an INSERT, UPDATE or DELETE, which `total_changes` counts;
    // schema changes and PRAGMAs run only at open, before the first sync. A group that changes
    // the schema or runs maintenance (ANALYZE, VACUUM) must set `wrote` itself. A commit that
    // failed may still have reached the log: it is synced too.
    let wrote = conn.total_changes() != changes_before || (seq != 0 && outcome.is_err());
    Batch { seq, wrote, outcome, replies }
}

/// An idempotency record as stored.
struct IdempotencyRow {
    in_progress: bool,
    owner: String,
    until: i64,
    fingerprint: Option<String>,
    result: Option<Vec<u8>>,
}

/// Stored states of an idempotency record.
const IDEMPOTENCY_IN_PROGRESS: i64 = 0;
const IDEMPOTENCY_COMPLETED: i64 = 1;

fn idempotency_row(conn: &Connection, key: &str) -> Result<Option<IdempotencyRow>> {
    conn.prepare_cached("SELECT state, owner, until, fingerprint, result FROM idempotency WHERE key = ?1")
        .and_then(|mut s| {
            s.query_row([key], |r| {
                Ok(IdempotencyRow {
                    in_progress: r.get::<_, i64>(0)? == IDEMPOTENCY_IN_PROGRESS,
                    owner: r.get(1)?,
                    until: r.get(2)?,
                    fingerprint: r.get(3)?,
                    result: r.get(4)?,
                })
            })
            .optional()
        })
        .map_err(storage("reading an idempotency key"))
}

impl State {
    /// See `onceq_core::idempotency` for the semantics this implements.
    pub(crate) fn idempotency_begin(
        &mut self,
        conn: &Connection,
        begin: &onceq_core::Begin,
    ) -> Result<onceq_core::BeginOutcome> {
        use onceq_core::BeginOutcome;
        begin.validate()?;
        let now = self.now.as_millis();
        let live = idempotency_row(conn, &begin.key)?.filter(|row| row.until > now);
        if let Some(row) = live {
            if let (Some(stored), Some(given)) = (&row.fingerprint, &begin.fingerprint) {
                if stored != given {
                    return Err(onceq_core::idempotency::fingerprint_mismatch(&begin.key));
                }
            }
            if !row.in_progress {
                return Ok(BeginOutcome::Completed { result: row.result.unwrap_or_default() });
            }
            if row.owner != begin.owner {
                return Ok(BeginOutcome::InProgress { owner: row.owner, until: Timestamp::from_millis(row.until) });
            }
            // The holder again: same claim, later expiry, the fingerprint it was made with.
            conn.prepare_cached(
                "UPDATE idempotency SET until = ?2, fingerprint = coalesce(?3, fingerprint) WHERE key = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![begin.key, self.now.plus_ms(begin.ttl_ms).as_millis(), begin.fingerprint])
            })
            .map_err(storage("claiming an idempotency key"))?;
            return Ok(BeginOutcome::Acquired);
        }
        // No live record: a fresh claim, which inherits nothing from a dead one.
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (key, state, owner, until, fingerprint, result) \
             VALUES (?1, 0, ?2, ?3, ?4, NULL)",
        )
        .and_then(|mut s| {
            s.execute(params![begin.key, begin.owner, self.now.plus_ms(begin.ttl_ms).as_millis(), begin.fingerprint])
        })
        .map_err(storage("claiming an idempotency key"))?;
        Ok(BeginOutcome::Acquired)
    }

    /// Records the result of a key the owner holds.
    pub(crate) fn idempotency_complete(&mut self, conn: &Connection, complete: &onceq_core::Complete) -> Result<()> {
        complete.validate()?;
        match idempotency_row(conn, &complete.key)? {
            Some(row) if row.in_progress && row.owner == complete.owner => {}
            _ => return Err(onceq_core::idempotency::not_held(&complete.key, &complete.owner)),
        }
        conn.prepare_cached("UPDATE idempotency SET state = ?2, until = ?3, result = ?4 WHERE key = ?1")
            .and_then(|mut s| {
                s.execute(params![
                    complete.key,
                    IDEMPOTENCY_COMPLETED,
                    self.now.plus_ms(complete.retention_ms).as_millis(),
                    complete.result
                ])
            })
            .map_err(storage("completing an idempotency key"))?;
        Ok(())
    }

    /// Gives up a key the owner holds.
    pub(crate) fn idempotency_release(&mut self, conn: &Connection, key: &str, owner: &str) -> Result<()> {
        onceq_core::idempotency::validate_release(key, owner)?;
        match idempotency_row(conn, key)? {
            Some(row) if row.in_progress && row.owner == owner => {}
            _ => return Err(onceq_core::idempotency::not_held(key, owner)),
        }
        conn.prepare_cached("DELETE FROM idempotency WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(storage("releasing an idempotency key"))?;
        Ok(())
    }
}
