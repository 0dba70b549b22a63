//! What a worker did ([`WorkerReport`]), and what its runners share while it runs.

use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a worker did, counted over its run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Jobs leased.
    pub leased: u64,
    /// Jobs acked (handler done, or effect already applied), by the runtime or, for
    /// [`Outcome::Acked`](crate::Outcome::Acked), by the handler itself.
    pub acked: u64,
    /// Jobs produced by handlers ([`JobContext::produce`](crate::JobContext::produce)) and
    /// committed with their job's ack.
    pub produced: u64,
    /// Deliveries skipped because the idempotency store had the effect recorded.
    pub duplicates_skipped: u64,
    /// Deliveries released because another delivery held the job's idempotency key.
    pub deferred: u64,
    /// Jobs whose handler chose [`Outcome::Release`](crate::Outcome::Release).
    pub released_by_handler: u64,
    /// Jobs nacked by their handler.
    pub retried: u64,
    /// Jobs failed (dead-lettered) by their handler.
    pub failed: u64,
    /// Handlers that panicked (their jobs were retried).
    pub panicked: u64,
    /// Handlers past their deadline (their jobs were retried).
    pub deadline_exceeded: u64,
    /// Jobs whose lease was lost before they were settled (nothing was settled for them).
    pub lease_lost: u64,
    /// Jobs cancelled while their handler ran: a heartbeat learned of it and fired the
    /// handler's cancellation token; the job ended cancelled unless the handler finished it.
    pub cancelled: u64,
    /// Jobs given back without counting the attempt (shutdown, deferral, store down, a
    /// handler's `Release`).
    pub released: u64,
    /// Consumer group joins, rejoins after an expiry included.
    pub group_joins: u64,
    /// Times a consumer group expired this worker's member (it missed heartbeats for its
    /// session timeout) and the worker joined again.
    pub group_expired: u64,
}

/// What the runners share.
pub(crate) struct Shared {
    pub worker_id: std::sync::Arc<str>,
    pub acks: mpsc::Sender<crate::acker::AckRequest>,
    /// Stop leasing.
    pub stop: CancellationToken,
    /// The shutdown grace is over: cancel running handlers.
    pub abandon: CancellationToken,
    pub report: Mutex<WorkerReport>,
}

impl Shared {
    pub(crate) fn count(&self, f: impl FnOnce(&mut WorkerReport)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }
}
