//! The effectively-once wrapper: the idempotency store guards a handler's effect.
//!
//! Before running a job the worker begins the job's idempotency key (the queue and the job's
//! dedup id, which `effectively_once` queues require; its id otherwise):
//! - completed → the effect was applied by an earlier delivery: ack without running, count a
//!   duplicate;
//! - in progress under another owner → another delivery is running it (or crashed while
//!   running it and its claim has not expired yet): release the job until the claim's expiry,
//!   without burning an attempt;
//! - acquired → run the handler; on success record its result (`complete`), then ack. A crash
//!   between `complete` and the ack leaves a completed key: the redelivery acks without running.
//!   On failure the key is released, so the retry runs the effect again.
//!
//! The store being unreachable fails closed: the job is released for a retry shortly after, and
//! the handler does not run unguarded.

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Begin, BeginOutcome, Complete, IdempotencyStore, LeasedJob, Timestamp};

/// How a queue's handler is guarded by an idempotency store.
#[derive(Clone)]
pub struct EffectivelyOnce {
    /// Where the keys live (embedded, PostgreSQL, Redis, or a server through `onceq-client`).
    pub store: Arc<dyn IdempotencyStore>,
    /// How long a delivery's claim on a key lasts; past it, a crashed holder no longer blocks.
    /// Keep it above the handler's deadline.
    pub claim_ttl: Duration,
    /// How long a completed key (and its result) is kept: redeliveries within it are detected.
    pub retention: Duration,
    /// Prefix of every key, to share a store between applications.
    pub key_prefix: String,
}

impl std::fmt::Debug for EffectivelyOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectivelyOnce")
            .field("claim_ttl", &self.claim_ttl)
            .field("retention", &self.retention)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl EffectivelyOnce {
    /// Guarded by `store`: claims of 5 minutes, results kept 7 days, keys prefixed `onceq:`.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        EffectivelyOnce {
            store,
            claim_ttl: Duration::from_secs(5 * 60),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            key_prefix: "onceq:".into(),
        }
    }

    /// The key guarding `job`'s effect: its queue and its dedup id (or id).
    pub fn key(&self, job: &LeasedJob) -> String {
        match &job.dedup_id {
            Some(dedup) => format!("{}{}:{dedup}", self.key_prefix, job.queue),
            None => format!("{}{}:#{}", self.key_prefix, job.queue, job.id),
        }
    }
}

/// What the gate decided.
pub(crate) enum Gate {
    /// Run the handler, holding `key` as `owner`.
    Run { key: String },
    /// The effect was applied already: ack without running.
    AlreadyDone,
    /// Another delivery holds the key until `until`: release the job until then.
    Defer { until: Timestamp },
    /// The store did not answer: release the job for a retry soon.
    StoreDown(onceq_core::Error),
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl EffectivelyOnce {
    pub(crate) async fn gate(&self, job: &LeasedJob, owner: &str) -> Gate {
        let key = self.key(job);
        let begin =
            Begin { key: key.clone(), owner: owner.to_owned(), ttl_ms: millis(self.claim_ttl), fingerprint: None };
        let queue = job.queue.to_string();
        let (gate, outcome) = match self.store.idempotency_begin(begin).await {
            Ok(BeginOutcome::Acquired) => (Gate::Run { key }, "acquired"),
            Ok(BeginOutcome::Completed { .. }) => (Gate::AlreadyDone, "completed"),
            Ok(BeginOutcome::InProgress { until, .. }) => (Gate::Defer { until }, "in_progress"),
            Err(error) => (Gate::StoreDown(error), "error"),
        };
        metrics::counter!(onceq_core::metrics::IDEMPOTENCY_CHECKS, "queue" => queue.clone(), "outcome" => outcome)
            .increment(1);
        if matches!(gate, Gate::AlreadyDone) {
            metrics::counter!(onceq_core::metrics::DUPLICATES_DETECTED, "queue" => queue).increment(1);
        }
        gate
    }

    pub(crate) async fn complete(&self, key: String, owner: &str, result: serde_json::Value) -> onceq_core::Result<()> {
        let result = serde_json::to_vec(&result).map_err(|e| onceq_core::Error::invalid(e.to_string()))?;
        let complete = Complete { key, owner: owner.to_owned(), result, retention_ms: millis(self.retention) };
        self.store.idempotency_complete(complete).await
    }

    pub(crate) async fn release(&self, key: &str, owner: &str) {
        if let Err(error) = self.store.idempotency_release(key, owner).await {
            // The claim expires by itself after its ttl.
            tracing::warn!(%error, key, "could not release an idempotency key");
        }
    }
}
