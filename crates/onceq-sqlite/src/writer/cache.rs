//! The writer's cache: queue configs, per-state job counts, the id counter and the next due
//! time, kept in memory by the writer thread and authoritative for them; and the copy of it that
//! the writer publishes to readers and waiting leases after each commit ([`Shared`]).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use onceq_core::{Durability, Error, QueueConfig, QueueName, Result, Timestamp};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rusqlite::Connection;

use crate::durable::Durable;
use crate::schema::{state, storage, to_i64};
use crate::wait::{GroupWaiters, Waiters};

/// What the writer publishes for readers and waiters.
pub(crate) struct Shared {
    /// Queue configs and counts as of the last commit.
    pub queues: Mutex<BTreeMap<QueueName, QueueEntry>>,
    /// Leases waiting for jobs.
    pub waiters: Waiters,
    /// Group leases waiting for jobs of their member's partitions.
    pub group_waiters: GroupWaiters,
    /// No scheduled job or lease expiry is due before this time (ms); may be early, never late.
    pub next_due: AtomicI64,
    /// Which commits are on disk; reads wait on it before they answer.
    pub durable: Arc<Durable>,
}

/// A queue as the writer knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueEntry {
    /// Row id in `queues`.
    pub id: i64,
    pub config: QueueConfig,
    pub paused: bool,
    /// Job counts indexed by stored state (scheduled, ready, leased, dead, blocked).
    pub counts: [u64; state::COUNT],
}

/// The writer's in-memory state; authoritative for queue configs and counts.
pub(crate) struct State {
    /// The clock reading for the current transaction: every decision in it uses this one value.
    pub now: Timestamp,
    pub(super) queues: BTreeMap<QueueName, QueueEntry>,
    pub(super) names: HashMap<i64, QueueName>,
    pub(super) next_id: u64,
    pub(super) next_id_dirty: bool,
    /// Queues (by id) whose published view must be refreshed after commit.
    pub(super) dirty: HashSet<i64>,
    /// Queues deleted in this transaction, to remove from the published view.
    pub(super) deleted: Vec<QueueName>,
    /// Ready jobs gained in this transaction, by queue id: after the commit, that many jobs'
    /// worth of waiting leases are woken.
    pub(super) woken: HashMap<i64, u64>,
    /// Queues (by id) whose waiting group leases must look again after the commit: a job became
    /// ready, a lease ended (a partition may now move), or a group changed.
    pub(super) groups_woken: HashSet<i64>,
    pub(super) shared: Arc<Shared>,
    /// No scheduled job or lease expiry is due before this time (ms). Published to
    /// `shared.next_due` only after the transaction that computed it commits, so a reader that
    /// sees a later `next_due` also sees the committed transitions (it may be early, never late).
    pub(super) next_due: i64,
    /// No schedule has a tick due before this time (ms; `i64::MAX` when none will).
    pub(super) next_schedule_due: i64,
    /// No paced redrive is due a step before this time (ms; `i64::MAX` when none runs).
    pub(super) next_redrive_due: i64,
    pub(super) rng: StdRng,
    pub(super) last_dedup_sweep: Timestamp,
    /// When the unique keys of gone jobs were last swept.
    pub(super) last_unique_sweep: Timestamp,
    /// The rate-limit bucket (`tat`, `onceq_core::flow`) of each rate-limited queue, by id;
    /// in memory only (module `flow`).
    pub(super) buckets: HashMap<i64, i64>,
    /// The per-key rate buckets of each queue with a `rate_limit_by`, by id; in memory only
    /// (module `flow`).
    pub(super) key_buckets: HashMap<i64, KeyBuckets>,
    /// The store's durability: of the queues that set none, and of requests that touch no queue.
    pub(super) durability_default: Durability,
    /// The strictest durability of the queues the running request (or the group's due work)
    /// looked at or changed so far; `None`: none yet. Set wherever the writer finds a queue
    /// (by name, by id, or through a lease), read and cleared by the group commit after each
    /// request (see [`State::touched_take`]). A `Cell`, because lookups take `&self`.
    touched: Cell<Option<Durability>>,
}

/// The stricter of what a request touched so far and `durability`.
fn strictest(so_far: Option<Durability>, durability: Durability) -> Durability {
    if so_far == Some(Durability::Fsync) {
        Durability::Fsync
    } else {
        durability
    }
}

/// One queue's per-key rate buckets (module `flow`): at most
/// [`onceq_core::limits::FLOW_KEY_BUCKETS_MAX`], each a `tat` by key value (`None`: the jobs
/// without the key).
pub(super) struct KeyBuckets {
    /// The `tat` of a key with no bucket: empty at the store's open, full when the queue got its
    /// limit while the store ran. A bucket that falls to it (or to now) has refilled, and is
    /// dropped when room is needed.
    pub(super) floor: i64,
    pub(super) tats: HashMap<Option<String>, i64>,
}

impl State {
    /// Loads queues, counts and the id counter from the database.
    pub(crate) fn load(
        conn: &Connection,
        shared: Arc<Shared>,
        now: Timestamp,
        durability_default: Durability,
    ) -> Result<Self> {
        let mut state = State {
            now,
            queues: BTreeMap::new(),
            names: HashMap::new(),
            next_id: 1,
            next_id_dirty: false,
            dirty: HashSet::new(),
            deleted: Vec::new(),
            woken: HashMap::new(),
            groups_woken: HashSet::new(),
            shared,
            next_due: i64::MAX,
            next_schedule_due: i64::MAX,
            next_redrive_due: i64::MAX,
            rng: StdRng::from_entropy(),
            last_dedup_sweep: Timestamp::default(),
            last_unique_sweep: Timestamp::default(),
            buckets: HashMap::new(),
            key_buckets: HashMap::new(),
            durability_default,
            touched: Cell::new(None),
        };
        state.reload(conn)?;
        state.flow_buckets_empty();
        Ok(state)
    }

    /// Re-reads everything cached from the database, after a rollback, and republishes it.
    pub(super) fn reload(&mut self, conn: &Connection) -> Result<()> {
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
                queues.insert(name, QueueEntry { id, config, paused, counts: [0; state::COUNT] });
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
                    if slot < state::COUNT {
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
        self.recompute_next_schedule_due(conn)?;
        self.recompute_next_redrive_due(conn)?;
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
    pub(super) fn publish_dirty(&mut self) {
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
    pub(super) fn wake_waiters(&mut self) {
        let groups_waiting = self.shared.group_waiters.waiting();
        for (id, jobs) in self.woken.drain() {
            // A paused queue hands out nothing: its waiters sleep on until resume wakes them.
            let Some(name) = self.names.get(&id) else { continue };
            if self.queues.get(name).is_some_and(|q| !q.paused) {
                self.shared.waiters.wake(name, jobs);
                if groups_waiting {
                    self.groups_woken.insert(id);
                }
            }
        }
        // Which member may lease the new jobs is the group's to say: every waiting group lease
        // of the queue looks again (a woken one that is not the owner finds nothing and waits on).
        for id in self.groups_woken.drain() {
            let Some(name) = self.names.get(&id) else { continue };
            if self.queues.get(name).is_some_and(|q| !q.paused) {
                self.shared.group_waiters.wake_all(name);
            }
        }
    }

    /// Records a new due time. Lowering the published value at once is safe: early is harmless.
    pub(super) fn lower_next_due(&mut self, at: Timestamp) {
        self.next_due = self.next_due.min(at.as_millis());
        self.shared.next_due.fetch_min(at.as_millis(), Ordering::AcqRel);
    }

    pub(super) fn recompute_next_due(&mut self, conn: &Connection) -> Result<()> {
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
    pub(super) fn label(&self, queue_id: i64) -> String {
        self.names.get(&queue_id).map(|n| n.to_string()).unwrap_or_default()
    }

    /// The config of the queue with this row id.
    pub(super) fn config_of(&self, queue_id: i64) -> Option<&QueueConfig> {
        let config = self.names.get(&queue_id).and_then(|name| self.queues.get(name)).map(|entry| &entry.config);
        if let Some(config) = config {
            self.touch(config);
        }
        config
    }

    pub(super) fn entry_by_id(&mut self, queue_id: i64) -> Option<&mut QueueEntry> {
        let name = self.names.get(&queue_id)?;
        self.dirty.insert(queue_id);
        let entry = self.queues.get_mut(name)?;
        let durability = entry.config.durability.unwrap_or(self.durability_default);
        self.touched.set(Some(strictest(self.touched.get(), durability)));
        Some(entry)
    }

    /// Records that the running request touched a queue with `config` (see [`State::touched`]).
    pub(super) fn touch(&self, config: &QueueConfig) {
        let durability = config.durability.unwrap_or(self.durability_default);
        self.touched.set(Some(strictest(self.touched.get(), durability)));
    }

    /// Records that the running request touched the queue with this row id.
    pub(super) fn touch_id(&self, queue_id: i64) {
        if let Some(entry) = self.names.get(&queue_id).and_then(|name| self.queues.get(name)) {
            self.touch(&entry.config);
        }
    }

    /// The strictest durability of the queues touched since the last call (`None`: none), and
    /// clears the record for the next request.
    pub(super) fn touched_take(&self) -> Option<Durability> {
        self.touched.take()
    }

    /// Moves one job's count from one state to another (`None`: created or deleted).
    pub(super) fn count_move(&mut self, queue_id: i64, from: Option<i64>, to: Option<i64>) {
        self.count_move_n(queue_id, from, to, 1);
    }

    /// Moves `n` jobs' counts from one state to another (`None`: created or deleted).
    pub(super) fn count_move_n(&mut self, queue_id: i64, from: Option<i64>, to: Option<i64>, n: u64) {
        if n == 0 {
            return;
        }
        let mut slot_freed = false;
        if let Some(entry) = self.entry_by_id(queue_id) {
            // A lease that ends frees an in-flight slot: leases waiting for one look again.
            slot_freed = from == Some(state::LEASED)
                && (entry.config.max_in_flight.is_some() || entry.config.max_in_flight_per_key.is_some());
            if let Some(from) = from {
                let slot = &mut entry.counts[from as usize];
                debug_assert!(*slot >= n, "count of state {from} would go negative");
                *slot = slot.saturating_sub(n);
            }
            if let Some(to) = to {
                entry.counts[to as usize] += n;
            }
        }
        if to == Some(state::READY) || slot_freed {
            *self.woken.entry(queue_id).or_default() += n;
        }
        // A lease that ends may let a partition move to a waiting member.
        if from == Some(state::LEASED) && self.shared.group_waiters.waiting() {
            self.groups_woken.insert(queue_id);
        }
    }

    pub(super) fn queue_required(&self, name: &QueueName) -> Result<&QueueEntry> {
        let entry = self.queues.get(name).ok_or_else(|| Error::QueueNotFound(name.clone()))?;
        self.touch(&entry.config);
        Ok(entry)
    }

    /// Writes the id counter (and the clock floor) if this transaction assigned ids.
    pub(super) fn persist_meta(&mut self, conn: &Connection) -> Result<()> {
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
