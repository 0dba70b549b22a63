//! The SQL of enqueue and lease, and of the error history every settle writes to.

use onceq_core::flow;
use onceq_core::limits::LEASE_REPLY_BYTES_MAX;
use onceq_core::metrics as names;
use onceq_core::ordering::partition_of;
use onceq_core::store::validate;
use onceq_core::{
    truncate_error_text, DeliveryMode, Enqueued, Error, JobId, LeaseOptions, LeaseToken, LeasedJob, NewJob, Ordering,
    QueueConfig, QueueName, Result, Timestamp, UniqueBy, UniqueWhile,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage, to_i64, to_u32};
use crate::writer::cache::State;
use crate::writer::flow::{key_candidate, KeyCandidate, KEY_CANDIDATES_SQL};

impl State {
    pub(crate) fn job_enqueue(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        validate::run_at_horizon(&jobs, self.now)?;
        if let Some(entry) = self.queues.get(name) {
            validate::enqueue_into(name, &entry.config, &jobs)?;
            self.flow_depth(name, jobs.len(), 0)?;
        } else {
            self.queue_create(conn, name, QueueConfig::default())?;
        }
        let (target, window_ms) = {
            let entry = self.queue_required(name)?;
            let target = Target {
                queue_id: entry.id,
                max_attempts: entry.config.max_attempts,
                partitions: (entry.config.ordering == Ordering::PerKey).then_some(entry.config.partitions),
            };
            (target, entry.config.dedup_window_ms)
        };
        let queue_id = target.queue_id;
        let now = self.now;
        let mut out = Vec::with_capacity(jobs.len());
        let mut placed = Placed::default();
        // Without dedup ids there is nothing to look up per job: the rows go in by the chunk, and
        // the one-by-one loop below gets nothing.
        let jobs = if jobs.iter().all(|job| job.dedup_id.is_none() && job.unique.is_none()) {
            placed = self.insert_chunked(conn, &target, jobs, &mut out)?;
            Vec::new()
        } else {
            jobs
        };
        // Prepared once per batch: the statement cache's lookup per row is measurable here.
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, \
                 dedup_id, headers, payload, ordering_key, partition) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(storage("inserting a job"))?;
        for job in jobs {
            // A job unique by its dedup id is judged by its unique rule alone.
            let dedup_id = job.dedup_id.as_ref().filter(|_| !job.unique.is_some_and(|u| u.by == UniqueBy::DedupId));
            let unique = job.unique.map(|u| u.key(&job).map(|key| (u, key))).transpose()?;
            if let Some((_, key)) = &unique {
                if let Some(holder) = unique_holder(conn, queue_id, key, now)? {
                    out.push(Enqueued { id: JobId::new(holder as u64), duplicate: true });
                    continue;
                }
            }
            if let Some(dedup_id) = dedup_id {
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
            let (job_state, partition) = self.place(conn, &target, &job, id, run_at)?;
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
                    job.max_attempts.unwrap_or(target.max_attempts),
                    job.dedup_id,
                    headers,
                    job.payload,
                    job.ordering_key,
                    partition,
                ])
                .map_err(storage("inserting a job"))?;
            if let Some((rule, key)) = &unique {
                let expires_at = rule.window_ms.map(|ms| now.plus_ms(ms).as_millis());
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO unique_keys (queue_id, unique_key, job_id, held_while, expires_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![queue_id, key, to_i64(id), rule.held_while.code(), expires_at]))
                .map_err(storage("recording a unique key"))?;
            }
            if let Some(dedup_id) = dedup_id {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO dedup (queue_id, dedup_id, job_id, expires_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![queue_id, dedup_id, to_i64(id), now.plus_ms(window_ms).as_millis()])
                })
                .map_err(storage("recording a dedup id"))?;
            }
            self.count_placed(&mut placed, job_state, run_at);
            out.push(Enqueued { id: JobId::new(id), duplicate: false });
        }
        self.count_move_n(queue_id, None, Some(state::READY), placed.ready);
        self.count_move_n(queue_id, None, Some(state::SCHEDULED), placed.scheduled);
        self.count_move_n(queue_id, None, Some(state::BLOCKED), placed.blocked);
        let created = placed.ready + placed.scheduled + placed.blocked;
        let duplicates = out.len() as u64 - created;
        metrics::counter!(names::ENQUEUED, "queue" => name.to_string()).increment(created);
        if duplicates > 0 {
            metrics::counter!(names::DUPLICATES_SUPPRESSED, "queue" => name.to_string()).increment(duplicates);
        }
        Ok(out)
    }

    /// Where a new job `id` waits, and its partition: in an unordered queue it is ready or
    /// scheduled, with no partition; in a `per_key` queue a keyed job whose key has a head is
    /// blocked, any other becomes ready or scheduled (and its key's head), and every job has the
    /// partition of its key (or id). Jobs are placed in request order, so the first job of a key
    /// in a batch is its head and the rest queue behind it in order.
    fn place(
        &self,
        conn: &Connection,
        target: &Target,
        job: &NewJob,
        id: u64,
        run_at: Timestamp,
    ) -> Result<(i64, Option<u32>)> {
        let due = if run_at > self.now { state::SCHEDULED } else { state::READY };
        let Some(partitions) = target.partitions else { return Ok((due, None)) };
        let partition = partition_of(job.ordering_key.as_deref(), JobId::new(id), partitions);
        let job_state = match &job.ordering_key {
            Some(key) if !self.key_claim(conn, target.queue_id, key, to_i64(id))? => {
                self.key_block(conn, target.queue_id, key, to_i64(id), run_at.as_millis())?;
                state::BLOCKED
            }
            _ => due,
        };
        Ok((job_state, Some(partition)))
    }

    /// Counts a new job placed in `job_state`; a scheduled one tells the due timer its time.
    fn count_placed(&mut self, placed: &mut Placed, job_state: i64, run_at: Timestamp) {
        match job_state {
            state::SCHEDULED => {
                self.lower_next_due(run_at);
                placed.scheduled += 1;
            }
            state::BLOCKED => placed.blocked += 1,
            _ => placed.ready += 1,
        }
    }

    /// Inserts `jobs`, none of which has a dedup id, with one multi-row INSERT per chunk of
    /// [`INSERT_CHUNK_ROWS`] rows: one statement execution per chunk instead of per job, and the
    /// values every row shares (first id, queue, enqueue time) bound once. Ids are assigned in
    /// request order. Returns how many it placed in each state.
    fn insert_chunked(
        &mut self,
        conn: &Connection,
        target: &Target,
        jobs: Vec<NewJob>,
        out: &mut Vec<Enqueued>,
    ) -> Result<Placed> {
        let now = self.now;
        let mut placed = Placed::default();
        let bind = |stmt: &mut rusqlite::CachedStatement<'_>, index: usize, value: &dyn rusqlite::ToSql| {
            stmt.raw_bind_parameter(index, value).map_err(storage("inserting a job"))
        };
        // A batch with no ordering key into an unordered queue leaves both ordering columns NULL:
        // it binds only what it had to before ordering existed.
        let columns = if target.partitions.is_none() && jobs.iter().all(|job| job.ordering_key.is_none()) {
            InsertColumns::Plain
        } else {
            InsertColumns::Ordering
        };
        let row_params = columns.row_params();
        let mut left = jobs.len();
        let mut jobs = jobs.into_iter();
        while left > 0 {
            let rows = INSERT_CHUNK_ROWS.iter().copied().find(|&rows| rows <= left).unwrap_or(1);
            let mut insert = conn.prepare_cached(insert_sql(rows, columns)).map_err(storage("inserting a job"))?;
            bind(&mut insert, 1, &to_i64(self.next_id))?;
            bind(&mut insert, 2, &target.queue_id)?;
            bind(&mut insert, 3, &now.as_millis())?;
            for (row, job) in jobs.by_ref().take(rows).enumerate() {
                let id = self.next_id;
                self.next_id += 1;
                self.next_id_dirty = true;
                let run_at = job.ready_at(now);
                let (job_state, partition) = self.place(conn, target, &job, id, run_at)?;
                let headers = if job.headers.is_empty() {
                    None
                } else {
                    Some(
                        serde_json::to_string(&job.headers)
                            .map_err(|e| Error::Storage(format!("encoding headers: {e}")))?,
                    )
                };
                let base = INSERT_SHARED_PARAMS + row * row_params;
                bind(&mut insert, base + 1, &job_state)?;
                bind(&mut insert, base + 2, &job.priority)?;
                bind(&mut insert, base + 3, &run_at.as_millis())?;
                bind(&mut insert, base + 4, &job.max_attempts.unwrap_or(target.max_attempts))?;
                bind(&mut insert, base + 5, &headers)?;
                bind(&mut insert, base + 6, &job.payload)?;
                if columns == InsertColumns::Ordering {
                    bind(&mut insert, base + 7, &job.ordering_key)?;
                    bind(&mut insert, base + 8, &partition)?;
                }
                self.count_placed(&mut placed, job_state, run_at);
                out.push(Enqueued { id: JobId::new(id), duplicate: false });
            }
            let inserted = insert.raw_execute().map_err(storage("inserting a job"))?;
            debug_assert_eq!(inserted, rows, "a multi-row INSERT wrote {inserted} of {rows} rows");
            left -= rows;
        }
        Ok(placed)
    }

    pub(crate) fn job_lease(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        mut options: LeaseOptions,
    ) -> Result<LeaseLook> {
        let Some(entry) = self.queues.get(name) else { return Ok(LeaseLook::default()) };
        self.touch(&entry.config);
        if entry.paused || entry.counts[state::READY as usize] == 0 {
            return Ok(LeaseLook::default());
        }
        let queue_id = entry.id;
        // An unlimited queue pays this one check (module `flow`).
        let limited = entry.config.lease_limited().then(|| entry.config.queue_rate().copied());
        let keyed = entry.config.keyed_limits();
        if limited.is_some() {
            let grant = self.flow_grant(name, entry, options.max_jobs);
            if grant.jobs == 0 {
                return Ok(LeaseLook { jobs: Vec::new(), retry_ms: self.flow_retry_ms(entry, grant), held: true });
            }
            options.max_jobs = grant.jobs;
        }
        let rows: Vec<ReadyRow> = if keyed {
            // Per-key limits: a bounded scan of candidates, of which the pick takes those whose
            // keys have a token and a free slot (module `flow`).
            let candidates: Vec<KeyCandidate> = {
                let mut stmt = conn.prepare_cached(KEY_CANDIDATES_SQL).map_err(storage("leasing jobs"))?;
                let scan = flow::key_scan_rows(options.max_jobs);
                let rows = stmt.query_map(params![queue_id, scan], key_candidate).map_err(storage("leasing jobs"))?;
                rows.collect::<rusqlite::Result<_>>().map_err(storage("leasing jobs"))?
            };
            let pick = self.flow_key_pick(conn, name, options.max_jobs, &candidates)?;
            if pick.picked.is_empty() {
                return Ok(LeaseLook { jobs: Vec::new(), retry_ms: pick.retry_ms, held: pick.held > 0 });
            }
            let mut stmt = conn.prepare_cached(READY_ROW_SQL).map_err(storage("leasing jobs"))?;
            let rows = pick.picked.into_iter().map(|i| stmt.query_row([candidates[i].0], ReadyRow::read));
            within_reply_bytes(rows)?
        } else {
            // The batch is read in lease order through the ready-order index, then each job is
            // claimed by id with one cached statement. (One `UPDATE ... WHERE id IN (SELECT ...)
            // RETURNING` would be one statement, but SQLite materializes both the IN list and the
            // RETURNING rows in ephemeral tables, and hands the rows back unordered: measured, it
            // costs more per job.)
            let mut stmt = conn.prepare_cached(LEASE_SQL).map_err(storage("leasing jobs"))?;
            let rows =
                stmt.query_map(params![queue_id, options.max_jobs], ReadyRow::read).map_err(storage("leasing jobs"))?;
            within_reply_bytes(rows)?
        };
        let jobs = self.lease_rows(conn, name, options, rows)?;
        if let Some(rate) = limited {
            self.flow_taken(queue_id, rate.as_ref(), u32::try_from(jobs.len()).unwrap_or(u32::MAX));
        }
        Ok(LeaseLook { jobs, retry_ms: None, held: false })
    }

    /// Leases `rows`, ready jobs of queue `name` read in lease order in this transaction: the
    /// claim shared by `job_lease` and `group_lease`. Every row must have been read in this
    /// transaction: the writer is the only connection that writes, so nothing can take them in
    /// between.
    pub(super) fn lease_rows(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        options: LeaseOptions,
        rows: Vec<ReadyRow>,
    ) -> Result<Vec<LeasedJob>> {
        let entry = self.queue_required(name)?;
        let queue_id = entry.id;
        let at_most_once = entry.config.delivery == DeliveryMode::AtMostOnce;
        // In at_most_once mode a leased job leaves the queue, and its key moves on.
        let keys_move_on = at_most_once && entry.config.ordering == Ordering::PerKey;
        let visibility_ms = options.visibility_timeout_ms.unwrap_or(entry.config.visibility_timeout_ms);
        let expires_at = self.now.plus_ms(visibility_ms);
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
            if let (true, Some(key)) = (keys_move_on, &row.ordering_key) {
                let was_head = self.key_moves_on(conn, queue_id, key, row.id)?;
                debug_assert!(was_head, "job {} was ready in a per_key queue but was not the head of {key:?}", row.id);
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
                ordering_key: row.ordering_key,
                partition: row.partition,
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
}

/// The job holding unique key `key` in queue `queue_id` at `now`, if one does: the record's job
/// while it is in the queue in a state its rule names, or, for a window, until the window ends
/// (`onceq_core::unique`).
fn unique_holder(conn: &Connection, queue_id: i64, key: &[u8], now: Timestamp) -> Result<Option<i64>> {
    let row: Option<(i64, i64, Option<i64>, Option<i64>)> = conn
        .prepare_cached(
            "SELECT k.job_id, k.held_while, k.expires_at, j.state FROM unique_keys k \
             LEFT JOIN jobs j ON j.id = k.job_id AND j.queue_id = k.queue_id \
             WHERE k.queue_id = ?1 AND k.unique_key = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![queue_id, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional()
        })
        .map_err(storage("checking a unique key"))?;
    let Some((job_id, rule, expires_at, job_state)) = row else { return Ok(None) };
    let held = match UniqueWhile::from_code(rule)? {
        UniqueWhile::Window => expires_at.is_some_and(|at| at > now.as_millis()),
        rule => match job_state {
            Some(stored) => rule.holds(crate::reader::job_state(stored)?),
            None => false,
        },
    };
    Ok(held.then_some(job_id))
}

/// A queue's next ready jobs, in lease order, through the ready index (`jobs_ready`): blocked
/// jobs (state 4) are not in it, so however many wait behind their keys, a lease reads none.
pub(crate) const LEASE_SQL: &str =
    "SELECT id, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id, headers, payload, error_count, \
     ordering_key, partition FROM jobs WHERE queue_id = ?1 AND state = 1 ORDER BY priority DESC, run_at, id LIMIT ?2";

/// The rows of `rows`, read one at a time, while the payloads taken so far stay under
/// [`LEASE_REPLY_BYTES_MAX`] (the first is always taken): a lease of big jobs hands out fewer,
/// and never holds more than about that much of them in memory.
pub(super) fn within_reply_bytes(rows: impl Iterator<Item = rusqlite::Result<ReadyRow>>) -> Result<Vec<ReadyRow>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        if bytes >= LEASE_REPLY_BYTES_MAX {
            break;
        }
        let row = row.map_err(storage("leasing jobs"))?;
        bytes = bytes.saturating_add(row.payload.len());
        out.push(row);
    }
    Ok(out)
}

/// One ready job by id, with the columns [`ReadyRow::read`] takes.
pub(super) const READY_ROW_SQL: &str =
    "SELECT id, priority, run_at, enqueued_at, attempt, max_attempts, dedup_id, headers, payload, error_count, \
     ordering_key, partition FROM jobs WHERE id = ?1 AND state = 1";

/// Rows per multi-row INSERT, largest first: a batch goes in as few statements as these sizes
/// allow (100 jobs: 64 + 16 + 16 + 4), and each size is one cached statement.
const INSERT_CHUNK_ROWS: [usize; 4] = [64, 16, 4, 1];
/// Parameters every row of a multi-row INSERT shares: the first id, the queue, the enqueue time.
const INSERT_SHARED_PARAMS: usize = 3;

/// Which columns a multi-row INSERT writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InsertColumns {
    /// Those of a job without ordering (its ordering key and partition are left NULL).
    Plain,
    /// Those and the ordering key and partition.
    Ordering,
}

impl InsertColumns {
    /// Parameters of each row.
    const fn row_params(self) -> usize {
        match self {
            InsertColumns::Plain => 6,
            InsertColumns::Ordering => 8,
        }
    }
}

/// The multi-row INSERT of `rows` jobs without dedup ids (ids consecutive from `?1`).
fn insert_sql(rows: usize, columns: InsertColumns) -> &'static str {
    static PLAIN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    static ORDERING: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = match columns {
        InsertColumns::Plain => &PLAIN,
        InsertColumns::Ordering => &ORDERING,
    };
    let all = texts.get_or_init(|| {
        let names = match columns {
            InsertColumns::Plain => "",
            InsertColumns::Ordering => ", ordering_key, partition",
        };
        INSERT_CHUNK_ROWS
            .iter()
            .map(|&rows| {
                let mut sql = format!(
                    "INSERT INTO jobs (id, queue_id, state, priority, run_at, enqueued_at, attempt, max_attempts, \
                     dedup_id, headers, payload{names}) VALUES "
                );
                for row in 0..rows {
                    let p = INSERT_SHARED_PARAMS + row * columns.row_params();
                    if row > 0 {
                        sql.push(',');
                    }
                    let tail = match columns {
                        InsertColumns::Plain => String::new(),
                        InsertColumns::Ordering => format!(", ?{}, ?{}", p + 7, p + 8),
                    };
                    sql.push_str(&format!(
                        "(?1 + {row}, ?2, ?{}, ?{}, ?{}, ?3, 0, ?{}, NULL, ?{}, ?{}{tail})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6,
                    ));
                }
                sql
            })
            .collect()
    });
    let index = INSERT_CHUNK_ROWS.iter().position(|&r| r == rows).unwrap_or(INSERT_CHUNK_ROWS.len() - 1);
    all.get(index).map_or("", String::as_str)
}

/// What one look of a lease found: the jobs it leased, and, when a limit held it back with
/// nothing, how long until it may look again (module `flow`).
#[derive(Default)]
pub(crate) struct LeaseLook {
    pub(crate) jobs: Vec<LeasedJob>,
    /// Milliseconds until the queue's rate limit grants a job; `None`: no rate limit held it.
    pub(crate) retry_ms: Option<u64>,
    /// Whether a limit held it back while jobs were ready.
    pub(crate) held: bool,
}

/// The queue an enqueue writes to, as its jobs' placement needs it.
struct Target {
    queue_id: i64,
    /// The queue's default attempts, for jobs that name none.
    max_attempts: u32,
    /// The partition count of a `per_key` queue; `None` for an unordered one.
    partitions: Option<u32>,
}

/// How many new jobs one enqueue placed in each state.
#[derive(Default)]
struct Placed {
    ready: u64,
    scheduled: u64,
    blocked: u64,
}

/// A ready job as read for leasing.
pub(super) struct ReadyRow {
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
    ordering_key: Option<String>,
    partition: Option<u32>,
}

impl ReadyRow {
    /// Reads a row of [`LEASE_SQL`] or [`READY_ROW_SQL`].
    pub(super) fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
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
            ordering_key: r.get(10)?,
            partition: r.get(11)?,
        })
    }
}

pub(super) fn record_error(conn: &Connection, id: i64, attempt: i64, text: &str, at: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO job_errors (job_id, attempt, at, error) VALUES (?1, ?2, ?3, ?4)")
        .and_then(|mut s| s.execute(params![id, attempt, at, truncate_error_text(text)]))
        .map_err(storage("recording an attempt's error"))?;
    Ok(())
}

pub(super) fn delete_errors(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM job_errors WHERE job_id = ?1")
        .and_then(|mut s| s.execute([id]))
        .map_err(storage("deleting a job's errors"))?;
    Ok(())
}
