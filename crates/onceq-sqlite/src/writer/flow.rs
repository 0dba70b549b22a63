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

use onceq_core::flow::{self, Grant, RateLimit};
use onceq_core::metrics as names;
use onceq_core::{QueueConfig, QueueName, Result};

use crate::schema::state;
use crate::writer::cache::{QueueEntry, State};

impl State {
    /// Starts every limited queue's bucket empty: called once the queues are loaded at open.
    pub(super) fn flow_buckets_empty(&mut self) {
        let now = self.now.as_millis();
        for entry in self.queues.values() {
            if let Some(rate) = &entry.config.rate_limit {
                self.buckets.insert(entry.id, rate.empty_tat(now));
            }
        }
    }

    /// Gives a queue that now has a rate limit and no bucket a full one.
    pub(super) fn flow_configured(&mut self, queue_id: i64, config: &QueueConfig) {
        match &config.rate_limit {
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
        let rate = entry.config.rate_limit.as_ref().map(|rate| {
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
            flow::HeldBy::InFlight => None,
            flow::HeldBy::Rate => {
                let rate = entry.config.rate_limit.as_ref()?;
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
}
