//! A queue's flow limits in the writer (docs/design.md, Invariant 15): the rate limit's bucket
//! and the in-flight limit at lease time, the depth limit at enqueue.
//!
//! The writer is the only code that leases, so its in-memory state is the one lock every lease
//! passes: each bucket is a `tat` ([`onceq_core::flow`]) in [`State::buckets`], and live leases
//! are the queue's count of leased jobs, which is exact at the moment of the lease (expired
//! leases were redelivered by the due pass that opens every group). Buckets are not stored: a
//! store that opens starts every limited queue's bucket **empty**, which keeps every window that
//! spans the restart within burst + rate × T (`onceq_core::flow`); a queue that gets a rate limit
//! while the store runs starts with a full one.
//!
//! Per-key limits (`rate_limit_by`, `max_in_flight_per_key`): a lease reads up to
//! [`flow::key_scan_rows`] candidates (id, ordering key, headers) in lease order and picks with
//! [`flow::pick_by_key`]. Each key's bucket is a `tat` in [`KeyBuckets`]; a key without one
//! reads the queue's floor (empty at open, as the queue bucket). At most
//! [`FLOW_KEY_BUCKETS_MAX`] buckets per queue: when full, refilled ones are dropped (they equal
//! a new one), and if none has refilled, jobs of a key without a bucket wait. A key's live
//! leases are counted from its leased jobs (one read of the queue's leased jobs per lease).

use std::collections::HashMap;

use onceq_core::flow::{self, Grant, KeyPick, RateLimit};
use onceq_core::limits::FLOW_KEY_BUCKETS_MAX;
use onceq_core::metrics as names;
use onceq_core::{Error, Headers, QueueConfig, QueueName, Result};
use rusqlite::{params, Connection};

use crate::schema::{state, storage};
use crate::writer::cache::{KeyBuckets, QueueEntry, State};

/// A lease's candidates under per-key limits, in lease order: id, ordering key, headers (JSON).
pub(super) const KEY_CANDIDATES_SQL: &str = "SELECT id, ordering_key, headers FROM jobs \
     WHERE queue_id = ?1 AND state = 1 ORDER BY priority DESC, run_at, id LIMIT ?2";

/// One candidate by id, as [`KEY_CANDIDATES_SQL`] reads it.
pub(super) const KEY_CANDIDATE_SQL: &str = "SELECT id, ordering_key, headers FROM jobs WHERE id = ?1";

/// The ordering keys and headers of a queue's leased jobs, for counting each key's live leases.
const LEASED_KEYS_SQL: &str = "SELECT ordering_key, headers FROM jobs WHERE queue_id = ?1 AND state = 2";

/// A candidate of a lease under per-key limits: id, ordering key, headers (JSON text).
pub(super) type KeyCandidate = (i64, Option<String>, Option<String>);

/// Reads a row of [`KEY_CANDIDATES_SQL`] or [`KEY_CANDIDATE_SQL`].
pub(super) fn key_candidate(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyCandidate> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

/// A job's headers from their stored JSON.
fn headers_of(text: Option<&str>) -> Result<Headers> {
    match text {
        None => Ok(Headers::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| Error::Storage(format!("unreadable job headers: {e}"))),
    }
}

impl State {
    /// Starts every limited queue's bucket empty: called once the queues are loaded at open.
    pub(super) fn flow_buckets_empty(&mut self) {
        let now = self.now.as_millis();
        for entry in self.queues.values() {
            if let Some(rate) = entry.config.queue_rate() {
                self.buckets.insert(entry.id, rate.empty_tat(now));
            }
            if let Some(rate) = entry.config.key_rate() {
                self.key_buckets.insert(entry.id, KeyBuckets { floor: rate.empty_tat(now), tats: HashMap::new() });
            }
        }
    }

    /// Gives a queue that now has a rate limit and no bucket a full one.
    pub(super) fn flow_configured(&mut self, queue_id: i64, config: &QueueConfig) {
        match config.key_rate() {
            Some(rate) => {
                let floor = rate.full_tat(self.now.as_millis());
                self.key_buckets.entry(queue_id).or_insert_with(|| KeyBuckets { floor, tats: HashMap::new() });
            }
            None => {
                self.key_buckets.remove(&queue_id);
            }
        }
        match config.queue_rate() {
            Some(rate) => {
                let now = self.now.as_millis();
                self.buckets.entry(queue_id).or_insert_with(|| rate.full_tat(now));
            }
            None => {
                self.buckets.remove(&queue_id);
            }
        }
    }

    /// What the limits of `entry` (a lease-limited queue) let a lease of `want` jobs take now,
    /// counting the jobs held back.
    pub(super) fn flow_grant(&self, name: &QueueName, entry: &QueueEntry, want: u32) -> Grant {
        let now = self.now.as_millis();
        let rate = entry.config.queue_rate().map(|rate| {
            let tat = self.buckets.get(&entry.id).copied().unwrap_or_else(|| rate.empty_tat(now));
            (rate, tat)
        });
        let live = entry.counts[state::LEASED as usize];
        let grant = flow::grant(rate, entry.config.max_in_flight, live, now, want);
        if let Some(held_by) = grant.held_by {
            let ready = u32::try_from(entry.counts[state::READY as usize]).unwrap_or(u32::MAX);
            let held = want.min(ready).saturating_sub(grant.jobs);
            if held > 0 {
                metrics::counter!(names::FLOW_HELD_BACK, "queue" => name.to_string(), "limit" => held_by.as_str())
                    .increment(u64::from(held));
            }
        }
        grant
    }

    /// Records that a lease of queue `queue_id` took `taken` jobs its grant allowed.
    pub(super) fn flow_taken(&mut self, queue_id: i64, rate: Option<&RateLimit>, taken: u32) {
        let Some(rate) = rate else { return };
        let now = self.now.as_millis();
        let tat = self.buckets.get(&queue_id).copied().unwrap_or_else(|| rate.empty_tat(now));
        self.buckets.insert(queue_id, rate.after(tat, now, taken));
    }

    /// When a lease that got nothing from queue `entry` because of its limits should look again,
    /// in milliseconds from now: when the bucket grants a token (a free in-flight slot wakes it
    /// through the settle that frees it). `None`: no limit holds it back.
    pub(super) fn flow_retry_ms(&self, entry: &QueueEntry, grant: Grant) -> Option<u64> {
        match grant.held_by? {
            flow::HeldBy::InFlight | flow::HeldBy::InFlightPerKey | flow::HeldBy::RatePerKey => None,
            flow::HeldBy::Rate => {
                let rate = entry.config.queue_rate()?;
                let now = self.now.as_millis();
                let tat = self.buckets.get(&entry.id).copied().unwrap_or_else(|| rate.empty_tat(now));
                Some(rate.next_token_ms(tat, now).max(1))
            }
        }
    }

    /// Checks an enqueue of `adding` jobs into queue `name` against its `max_depth`, once
    /// `leaving` of its jobs are gone (a commit's acks and fails, applied before its enqueues).
    pub(super) fn flow_depth(&self, name: &QueueName, adding: usize, leaving: u64) -> Result<()> {
        let Some(entry) = self.queues.get(name) else { return Ok(()) };
        if entry.config.max_depth.is_none() {
            return Ok(());
        }
        let c = &entry.counts;
        let depth = c[state::READY as usize]
            + c[state::SCHEDULED as usize]
            + c[state::LEASED as usize]
            + c[state::BLOCKED as usize];
        let depth = depth.saturating_sub(leaving);
        flow::check_depth(name, entry.config.max_depth, depth, adding)
    }

    /// Picks from `candidates` (ready jobs of queue `name`, in lease order) up to `want` that
    /// its per-key limits allow now, and spends their keys' tokens (module `flow`).
    pub(super) fn flow_key_pick(
        &mut self,
        conn: &Connection,
        name: &QueueName,
        want: u32,
        candidates: &[KeyCandidate],
    ) -> Result<KeyPick> {
        let entry = self.queue_required(name)?;
        let (queue_id, config) = (entry.id, entry.config.clone());
        let now = self.now.as_millis();
        let key_by = config.in_flight_key_by();
        let mut keys: Vec<Option<String>> = Vec::with_capacity(candidates.len());
        for (_, ordering_key, headers) in candidates {
            let headers = headers_of(headers.as_deref())?;
            keys.push(key_by.key_of(ordering_key.as_deref(), &headers).map(str::to_string));
        }
        let mut live: HashMap<String, u64> = HashMap::new();
        if config.max_in_flight_per_key.is_some() && !candidates.is_empty() {
            let mut stmt = conn.prepare_cached(LEASED_KEYS_SQL).map_err(storage("counting live leases per key"))?;
            let rows = stmt
                .query_map(params![queue_id], |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<String>>(1)?)))
                .map_err(storage("counting live leases per key"))?;
            for row in rows {
                let (ordering_key, headers) = row.map_err(storage("counting live leases per key"))?;
                let headers = headers_of(headers.as_deref())?;
                if let Some(key) = key_by.key_of(ordering_key.as_deref(), &headers) {
                    *live.entry(key.to_string()).or_insert(0) += 1;
                }
            }
        }
        let rate = config.key_rate();
        let ns_now = rate.map_or(0, |r| r.full_tat(now));
        let buckets = self.key_buckets.entry(queue_id).or_insert_with(|| KeyBuckets {
            // A bucket that was never made (it cannot be: `flow_configured` makes it) starts empty.
            floor: rate.map_or(0, |r| r.empty_tat(now)),
            tats: HashMap::new(),
        });
        if buckets.tats.len() >= FLOW_KEY_BUCKETS_MAX {
            let refilled = buckets.floor.max(ns_now);
            buckets.tats.retain(|_, tat| *tat > refilled);
        }
        let mut room = FLOW_KEY_BUCKETS_MAX.saturating_sub(buckets.tats.len());
        let key_refs: Vec<Option<&str>> = keys.iter().map(Option::as_deref).collect();
        let pick = flow::pick_by_key(
            &key_refs,
            want,
            now,
            rate,
            config.max_in_flight_per_key,
            |key| match buckets.tats.get(&key.map(str::to_string)) {
                Some(tat) => *tat,
                None if room > 0 => {
                    room -= 1;
                    buckets.floor
                }
                // No room for another bucket: this key waits, as behind an empty bucket.
                None => rate.map_or(0, |r| r.empty_tat(now)),
            },
            |key| live.get(key).copied().unwrap_or(0),
        );
        for (key, tat) in &pick.buckets {
            buckets.tats.insert(key.clone(), *tat);
        }
        if let Some(held_by) = pick.held_by {
            metrics::counter!(names::FLOW_HELD_BACK, "queue" => name.to_string(), "limit" => held_by.as_str())
                .increment(u64::from(pick.held));
        }
        Ok(pick)
    }
}
