//! The seam between the relay and an outbox's tables: claim a batch of heads, settle it.
//! PostgreSQL (`postgres::source`) and SQLite (`sqlite::source`) implement it.

use std::time::Duration;

use async_trait::async_trait;

use crate::{OutboxMessage, Result};

/// What became of one claimed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The sink confirmed it: mark it sent (or delete it at once when the retention is zero).
    Sent,
    /// Try again after `delay_ms`; `error` is kept as its last error.
    Retry { delay_ms: u64, error: String },
    /// Park it in the dead letters with `error`.
    Park { error: String },
}

/// A claimed batch: each message is its key's head (or has no key), due, unsent and unparked.
/// On PostgreSQL the rows stay locked until the batch is settled or dropped, so no other relay
/// publishes them meanwhile; dropping it unsettled releases them unchanged.
#[async_trait]
pub(crate) trait Claim: Send {
    fn messages(&self) -> &[OutboxMessage];
    /// Applies every outcome in one transaction, which commits only if all of it applied.
    async fn settle(self: Box<Self>, outcomes: Vec<(i64, Outcome)>, delete_sent: bool) -> Result<()>;
}

/// An outbox's tables, as the relay sees them.
#[async_trait]
pub(crate) trait Source: Send + Sync {
    /// For the relay's startup line: what and where, never a password.
    fn describe(&self) -> String;
    /// The dedup-id prefix unless the relay is told otherwise.
    fn default_outbox_name(&self) -> String;
    /// How long to sleep with nothing to do when no wake-up comes.
    fn default_poll_interval(&self) -> Duration;
    /// Claims up to `limit` due heads.
    async fn claim(&self, limit: u32) -> Result<Box<dyn Claim>>;
    /// Called after a round claimed nothing, before the relay looks once more and then waits up
    /// to `timeout`: registers it as sleeping, so that staging wakes it. Returns false when it
    /// must not wait long yet (a staging transaction that may have missed the registration is
    /// still open), and the relay should look again soon instead.
    async fn prepare_sleep(&self, timeout: Duration) -> Result<bool>;
    /// Called when a round claims messages after the relay slept: staging no longer needs to
    /// wake it.
    async fn awake(&self) -> Result<()>;
    /// Returns when staging may have made work (a notification), or after `timeout`.
    async fn wait(&self, timeout: Duration);
    /// Milliseconds until the earliest pending message that is not due yet (a retry waiting
    /// for its backoff) becomes due; `None` when there is none. Due messages that could not be
    /// claimed are not counted: they wait for their key's head or for another relay.
    async fn next_due_ms(&self) -> Result<Option<i64>>;
    /// Deletes messages sent more than `retention_ms` ago; returns how many.
    async fn purge_sent(&self, retention_ms: u64) -> Result<u64>;
    /// Pending and parked counts, and the age of the oldest pending message.
    async fn backlog(&self) -> Result<Backlog>;
    /// Releases connections, listeners and locks.
    async fn close(&self);
}

/// What an outbox holds, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Messages staged and not yet sent (nor parked).
    pub pending: u64,
    /// Age of the oldest pending message in milliseconds (the relay's lag); `None` when none.
    pub oldest_pending_age_ms: Option<u64>,
    /// Messages parked in the dead letters.
    pub parked: u64,
}
