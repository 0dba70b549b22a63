//! The effectively-once gate: the one place where a delivery's effect is guarded by an
//! idempotency store. `onceq-worker`'s runner uses it with the store itself; the transactional
//! PostgreSQL worker uses the same gate with claims made inside the job's transaction.
//!
//! The protocol, for each delivery of a job:
//! 1. **Key.** The job's idempotency key is [`idempotency_key`]: the key prefix, the queue and
//!    the job's dedup id (which `effectively_once` queues require), or its id for a job
//!    without one. Its owner is [`claim_owner`]: the worker and the lease token, unique per
//!    delivery.
//! 2. **Begin** the key, then decide ([`Decision`]):
//!    - completed → the effect was applied by an earlier delivery: ack without running;
//!    - in progress under another owner → another delivery is running it, or crashed while
//!      running it and its claim has not expired: **release** the job until the claim's
//!      expiry. Release, not nack: the job did not fail, and a nack would burn an attempt, so
//!      that a long-held key could dead-letter a job that never ran;
//!    - acquired → run the handler.
//! 3. After the handler: **complete** the key with the result when it is done (even when the
//!    lease was lost meanwhile: the effect happened, and the redelivery the lost lease causes
//!    must find it recorded), then ack; **release** the key when it is not done (retry, fail,
//!    panic, deadline), so that the next attempt runs the effect again.
//!
//! A `complete` whose outcome is unknown (the store did not answer) is sent again while the
//! claim surely lasts; a conflict after such an attempt is resolved by a `begin` of the same
//! owner, which tells whether the earlier one landed. Giving up earlier would leave the claim to
//! expire and a redelivery to run the effect again. A `begin` that fails is not retried: the job
//! is released for a retry shortly after, and the handler never runs unguarded (fail closed).
//!
//! Inside a transaction ([`Claims::retries_unknown`] is false) nothing is sent again: a failed
//! statement ends the transaction, which then rolls back the effect with the claim.

use std::time::{Duration, Instant};

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::idempotency::{KEY_LEN_MAX, RETENTION_MS_MAX, TTL_MS_MAX};
use onceq_core::metrics::{DUPLICATES_DETECTED, IDEMPOTENCY_CHECKS};
use onceq_core::{
    Begin, BeginOutcome, Clock, Complete, Error, ErrorKind, IdempotencyStore, JobId, LeaseToken, QueueName, Result,
    SystemClock,
};
use sha2::{Digest, Sha256};

/// How long a job is released for when its key could not be begun because the idempotency
/// store did not answer.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
/// Longest key prefix, so that every key fits [`KEY_LEN_MAX`]: the prefix, a queue name, and a
/// dedup id or its digest (see [`idempotency_key`]).
pub const KEY_PREFIX_LEN_MAX: usize = 56;
const _: () = assert!(KEY_PREFIX_LEN_MAX + onceq_core::limits::QUEUE_NAME_LEN_MAX + 2 + 64 <= KEY_LEN_MAX);
/// Shortest wait before a deferred job is offered again.
const DEFER_MIN: Duration = Duration::from_millis(100);
/// Pause between tries of a `complete` whose outcome was unknown.
const COMPLETE_RETRY_PAUSE: Duration = Duration::from_millis(150);
/// How long before its claim may end the gate stops trying to record an applied effect, at
/// most (a quarter of the claim for short claims).
const CLAIM_MARGIN_MAX: Duration = Duration::from_secs(1);

/// The idempotency key guarding a job's effect: `prefix`, the queue, and the job's dedup id, or
/// `#` and its id for a job without one. A key that would be longer than [`KEY_LEN_MAX`] (a
/// long dedup id) takes `~` and the SHA-256 of the dedup id instead. The only derivation of it:
/// every guard of a queue (direct or transactional) finds the keys the others recorded.
pub fn idempotency_key(prefix: &str, queue: &QueueName, id: JobId, dedup_id: Option<&str>) -> String {
    match dedup_id {
        Some(dedup) => {
            let key = format!("{prefix}{queue}:{dedup}");
            if key.len() <= KEY_LEN_MAX {
                return key;
            }
            let digest = Sha256::digest(dedup.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{prefix}{queue}:~{hex}")
        }
        None => format!("{prefix}{queue}:#{id}"),
    }
}

/// What a delivery does when its key could not be begun: released (no attempt burned) when
/// the store did not answer, retried (an attempt burned, so it is bounded) when it refused.
pub fn begin_failed(error: &Error) -> crate::Outcome {
    match error.kind() {
        ErrorKind::Unavailable => crate::Outcome::Release { after: Some(UNAVAILABLE_RETRY) },
        _ => crate::Outcome::retry(format!("the idempotency store refused the job's key: {error}")),
    }
}

/// The owner of one delivery's claim: the worker and the lease token.
pub fn claim_owner(worker_id: &str, lease_token: LeaseToken) -> String {
    format!("{worker_id}/{lease_token}")
}

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
    /// Breaks the gate on purpose: a delivery whose effect is recorded runs again. Only for
    /// proving that `onceq verify` catches a broken gate; never set it otherwise.
    #[doc(hidden)]
    pub broken_for_tests: bool,
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

/// Default claim: 5 minutes.
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(5 * 60);
/// Default retention of a completed key: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "onceq:";

impl EffectivelyOnce {
    /// Guarded by `store`: claims of 5 minutes, results kept 7 days, keys prefixed `onceq:`.
    pub fn new(store: Arc<dyn IdempotencyStore>) -> Self {
        EffectivelyOnce {
            store,
            claim_ttl: DEFAULT_CLAIM_TTL,
            retention: DEFAULT_RETENTION,
            key_prefix: DEFAULT_KEY_PREFIX.into(),
            broken_for_tests: false,
        }
    }

    /// The key guarding `job`'s effect ([`idempotency_key`] with this prefix).
    pub fn key(&self, job: &onceq_core::LeasedJob) -> String {
        idempotency_key(&self.key_prefix, &job.queue, job.id, job.dedup_id.as_deref())
    }

    /// The gate these settings make.
    pub fn gate(&self) -> Result<Gate> {
        let mut gate = Gate::new(&self.key_prefix, self.claim_ttl, self.retention)?;
        gate.broken = self.broken_for_tests;
        Ok(gate)
    }
}

/// Where a gate makes its claims: the idempotency store itself (each call commits on its own),
/// or a transaction on it.
#[async_trait]
pub trait Claims: Send {
    /// [`IdempotencyStore::idempotency_begin`].
    async fn begin(&mut self, begin: Begin) -> Result<BeginOutcome>;
    /// [`IdempotencyStore::idempotency_complete`].
    async fn complete(&mut self, complete: Complete) -> Result<()>;
    /// [`IdempotencyStore::idempotency_release`].
    async fn release(&mut self, key: &str, owner: &str) -> Result<()>;
    /// Whether a call whose outcome is unknown may be sent again: true when each call commits
    /// on its own, false inside a transaction.
    fn retries_unknown(&self) -> bool;
}

#[async_trait]
impl Claims for &dyn IdempotencyStore {
    async fn begin(&mut self, begin: Begin) -> Result<BeginOutcome> {
        self.idempotency_begin(begin).await
    }
    async fn complete(&mut self, complete: Complete) -> Result<()> {
        self.idempotency_complete(complete).await
    }
    async fn release(&mut self, key: &str, owner: &str) -> Result<()> {
        self.idempotency_release(key, owner).await
    }
    fn retries_unknown(&self) -> bool {
        true
    }
}

/// What the gate decided about a delivery.
#[derive(Debug)]
pub enum Decision {
    /// Run the handler; the delivery holds this claim.
    Run(Claim),
    /// The effect was applied by an earlier delivery: ack without running.
    AlreadyDone,
    /// Another delivery holds the key: release the job (no attempt burned) for this long.
    Defer {
        /// Until the holder's claim expires.
        after: Duration,
    },
}

/// One delivery's claim on its key.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The idempotency key.
    pub key: String,
    /// The delivery owning it.
    pub owner: String,
    /// When the claim was made: it surely lasts until this plus the claim ttl.
    began: Instant,
}

/// The gate of one queue: key prefix, claim and retention. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Gate {
    key_prefix: String,
    claim_ttl_ms: u64,
    retention_ms: u64,
    broken: bool,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Gate {
    /// A gate with these settings, each checked against the idempotency store's limits.
    pub fn new(key_prefix: &str, claim_ttl: Duration, retention: Duration) -> Result<Gate> {
        let claim_ttl_ms = millis(claim_ttl);
        let retention_ms = millis(retention);
        if !(1..=TTL_MS_MAX).contains(&claim_ttl_ms) {
            return Err(Error::invalid(format!("claim_ttl must be between 1 and {TTL_MS_MAX} ms")));
        }
        if !(1..=RETENTION_MS_MAX).contains(&retention_ms) {
            return Err(Error::invalid(format!("retention must be between 1 and {RETENTION_MS_MAX} ms")));
        }
        if key_prefix.len() > KEY_PREFIX_LEN_MAX {
            return Err(Error::invalid(format!("key_prefix must be at most {KEY_PREFIX_LEN_MAX} bytes")));
        }
        Ok(Gate { key_prefix: key_prefix.to_owned(), claim_ttl_ms, retention_ms, broken: false })
    }

    /// The key of a job of this gate's queue ([`idempotency_key`] with the gate's prefix).
    pub fn key(&self, queue: &QueueName, id: JobId, dedup_id: Option<&str>) -> String {
        idempotency_key(&self.key_prefix, queue, id, dedup_id)
    }

    /// Begins `key` for `owner` and decides what the delivery does. An error means the store
    /// did not answer or refused: the job must not run now.
    pub async fn begin<C: Claims + ?Sized>(
        &self,
        claims: &mut C,
        queue: &QueueName,
        key: String,
        owner: String,
    ) -> Result<Decision> {
        let began = Instant::now();
        let begin = Begin { key: key.clone(), owner: owner.clone(), ttl_ms: self.claim_ttl_ms, fingerprint: None };
        let (decision, label) = match claims.begin(begin).await {
            Ok(BeginOutcome::Acquired) => (Ok(Decision::Run(Claim { key, owner, began })), "acquired"),
            Ok(BeginOutcome::Completed { .. }) if self.broken => {
                (Ok(Decision::Run(Claim { key, owner, began })), "completed")
            }
            Ok(BeginOutcome::Completed { .. }) => (Ok(Decision::AlreadyDone), "completed"),
            Ok(BeginOutcome::InProgress { until, .. }) => {
                let wait = until.ms_since(SystemClock::default().now());
                (Ok(Decision::Defer { after: Duration::from_millis(wait).max(DEFER_MIN) }), "in_progress")
            }
            Err(error) => (Err(error), "error"),
        };
        metrics::counter!(IDEMPOTENCY_CHECKS, "queue" => queue.to_string(), "outcome" => label).increment(1);
        if matches!(decision, Ok(Decision::AlreadyDone)) {
            metrics::counter!(DUPLICATES_DETECTED, "queue" => queue.to_string()).increment(1);
        }
        decision
    }

    /// Records the claim's effect with its result. Sent again while its outcome is unknown and
    /// the claim surely lasts (see the [module docs](self)).
    pub async fn complete<C: Claims + ?Sized>(
        &self,
        claims: &mut C,
        claim: &Claim,
        result: &serde_json::Value,
    ) -> Result<()> {
        let result = serde_json::to_vec(result).map_err(|e| Error::invalid(format!("encoding the result: {e}")))?;
        let ttl = Duration::from_millis(self.claim_ttl_ms);
        let deadline = claim.began + ttl.saturating_sub(CLAIM_MARGIN_MAX.min(ttl / 4));
        let mut unknown_before = false;
        loop {
            let complete = Complete {
                key: claim.key.clone(),
                owner: claim.owner.clone(),
                result: result.clone(),
                retention_ms: self.retention_ms,
            };
            let error = match claims.complete(complete).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if !claims.retries_unknown() {
                return Err(error);
            }
            match error.kind() {
                ErrorKind::Unavailable if Instant::now() < deadline => {
                    unknown_before = true;
                    tokio::time::sleep(COMPLETE_RETRY_PAUSE).await;
                }
                ErrorKind::Conflict if unknown_before => {
                    // An earlier try may have landed: a begin of the same owner tells.
                    let again = Begin {
                        key: claim.key.clone(),
                        owner: claim.owner.clone(),
                        ttl_ms: self.claim_ttl_ms,
                        fingerprint: None,
                    };
                    match claims.begin(again).await {
                        Ok(BeginOutcome::Completed { .. }) => return Ok(()),
                        // Still ours: the earlier try did not land; record it now.
                        Ok(BeginOutcome::Acquired) => unknown_before = false,
                        Ok(BeginOutcome::InProgress { owner, .. }) => {
                            return Err(Error::Conflict(format!(
                                "idempotency key {:?} was taken by {owner:?} before the effect was recorded",
                                claim.key
                            )))
                        }
                        Err(_) => return Err(error),
                    }
                }
                _ => return Err(error),
            }
        }
    }

    /// Gives the claim up without a result, so that the next delivery runs the effect.
    pub async fn release<C: Claims + ?Sized>(&self, claims: &mut C, claim: &Claim) {
        if let Err(error) = claims.release(&claim.key, &claim.owner).await {
            // The claim expires by itself after its ttl.
            tracing::warn!(%error, key = claim.key, "could not release an idempotency key");
        }
    }
}
