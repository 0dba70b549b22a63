//! The idempotency store: the consumer half of effectively-once processing (docs/design.md).
//!
//! A consumer records, under an idempotency key, that a job's effect was applied and what it
//! returned. `begin` claims the key for an owner for a time (`in_progress`); `complete` records
//! the result and keeps it for a retention; a later `begin` with the same key gets the recorded
//! result instead of running the effect again. A claim whose holder crashed expires after its
//! ttl, so it never blocks forever. `complete` and `release` are owner-checked.
//!
//! Semantics, exactly (every backend; the conformance suite checks each):
//! - `begin(key, owner, ttl_ms, fingerprint)`, judged at the store's clock `now`:
//!   - no live record (none, or an in-progress claim with `until <= now`, or a completed record
//!     past its retention) → `Acquired`: the record is `in_progress{owner, until: now + ttl}`;
//!   - a live in-progress claim by the same owner → `Acquired`, its `until` moved to `now + ttl`;
//!   - a live in-progress claim by another owner → `InProgress{owner, until}`;
//!   - a completed record → `Completed{result}`;
//!   - in the last three cases, a fingerprint given both times that differs → `Conflict` (the key
//!     was reused for another request), and nothing changes.
//! - `complete(key, owner, result, retention_ms)`: the record must be in progress and held by
//!   `owner` (its claim may have expired, as long as nobody else took it); it becomes
//!   `completed{result}`, kept until `now + retention_ms`. Otherwise `Conflict`, nothing changes.
//! - `release(key, owner)`: the same check; the record is deleted, so the next `begin` acquires.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Timestamp};

/// Longest idempotency key, in bytes.
pub const KEY_LEN_MAX: usize = 256;
/// Longest owner name, in bytes.
pub const OWNER_LEN_MAX: usize = 256;
/// Longest fingerprint, in bytes.
pub const FINGERPRINT_LEN_MAX: usize = 256;
/// Largest stored result, in bytes.
pub const RESULT_BYTES_MAX: usize = 1024 * 1024;
/// Longest in-progress claim, in milliseconds (1 day).
pub const TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Longest retention of a completed record, in milliseconds (30 days).
pub const RETENTION_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;

/// What `begin` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BeginOutcome {
    /// The caller holds the key now: run the effect, then `complete` (or `release`).
    Acquired,
    /// Another owner holds the key until `until`: try again later.
    InProgress {
        /// Who holds it.
        owner: String,
        /// When its claim expires.
        until: Timestamp,
    },
    /// The effect was applied: here is its recorded result.
    Completed {
        /// The result bytes `complete` stored.
        result: Vec<u8>,
    },
}

/// A `begin` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The idempotency key.
    pub key: String,
    /// Who claims it (a worker id, a request id).
    pub owner: String,
    /// How long the claim lasts unless completed or released.
    pub ttl_ms: u64,
    /// A digest of the request the key stands for; a different one reusing the key is a conflict.
    pub fingerprint: Option<String>,
}

/// A `complete` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    /// The idempotency key.
    pub key: String,
    /// The claim's owner.
    pub owner: String,
    /// The effect's result, returned to later `begin`s.
    pub result: Vec<u8>,
    /// How long the completed record is kept.
    pub retention_ms: u64,
}

fn check_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.is_empty() || text.len() > max {
        return Err(Error::invalid(format!("{what} must be 1 to {max} bytes (got {})", text.len())));
    }
    Ok(())
}

fn check_duration(what: &str, ms: u64, max: u64) -> Result<()> {
    if !(1..=max).contains(&ms) {
        return Err(Error::invalid(format!("{what} is {ms}; it must be between 1 and {max}")));
    }
    Ok(())
}

impl Begin {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        check_text("idempotency key", &self.key, KEY_LEN_MAX)?;
        check_text("owner", &self.owner, OWNER_LEN_MAX)?;
        check_duration("ttl_ms", self.ttl_ms, TTL_MS_MAX)?;
        if let Some(f) = &self.fingerprint {
            check_text("fingerprint", f, FINGERPRINT_LEN_MAX)?;
        }
        Ok(())
    }
}

impl Complete {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<()> {
        check_text("idempotency key", &self.key, KEY_LEN_MAX)?;
        check_text("owner", &self.owner, OWNER_LEN_MAX)?;
        check_duration("retention_ms", self.retention_ms, RETENTION_MS_MAX)?;
        if self.result.len() > RESULT_BYTES_MAX {
            return Err(Error::PayloadTooLarge(format!(
                "result is {} bytes; the limit is {RESULT_BYTES_MAX}",
                self.result.len()
            )));
        }
        Ok(())
    }
}

/// Checks a `release` request.
pub fn validate_release(key: &str, owner: &str) -> Result<()> {
    check_text("idempotency key", key, KEY_LEN_MAX)?;
    check_text("owner", owner, OWNER_LEN_MAX)
}

/// The conflict of a `complete` or `release` by someone who does not hold the key.
pub fn not_held(key: &str, owner: &str) -> Error {
    Error::Conflict(format!("idempotency key {key:?} is not in progress under owner {owner:?}"))
}

/// The conflict of a key reused with another request.
pub fn fingerprint_mismatch(key: &str) -> Error {
    Error::Conflict(format!("idempotency key {key:?} was used for a different request (fingerprint differs)"))
}

/// An idempotency store. Embedded (SQLite), PostgreSQL and Redis implement it.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `begin.key` for `begin.owner`, or reports who holds it or what it completed with.
    async fn idempotency_begin(&self, begin: Begin) -> Result<BeginOutcome>;
    /// Records the result of the claimed key (owner-checked).
    async fn idempotency_complete(&self, complete: Complete) -> Result<()>;
    /// Gives the claimed key up without a result (owner-checked).
    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()>;
}

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<S> {
    async fn idempotency_begin(&self, begin: Begin) -> Result<BeginOutcome> {
        (**self).idempotency_begin(begin).await
    }
    async fn idempotency_complete(&self, complete: Complete) -> Result<()> {
        (**self).idempotency_complete(complete).await
    }
    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        (**self).idempotency_release(key, owner).await
    }
}
