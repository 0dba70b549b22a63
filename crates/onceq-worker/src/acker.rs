//! Acks batched across jobs: one `job_ack` call per batch, each job acked at most once.

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{LeaseRef, Store};
use tokio::sync::{mpsc, oneshot};

/// One ack and who waits for its result.
pub(crate) struct AckRequest {
    pub lease: LeaseRef,
    /// Answered with the item's result (`Err` when the lease was lost meanwhile).
    pub done: oneshot::Sender<onceq_core::Result<()>>,
}

/// Runs until every sender is gone, then flushes what is left.
pub(crate) async fn run<S: Store + ?Sized>(
    store: Arc<S>,
    mut inbox: mpsc::Receiver<AckRequest>,
    batch_max: usize,
    flush_after: Duration,
) {
    let mut batch: Vec<AckRequest> = Vec::with_capacity(batch_max);
    loop {
        // Wait for the first ack of a batch, then give others a moment to join it.
        match inbox.recv().await {
            Some(first) => batch.push(first),
            None => break,
        }
        let deadline = tokio::time::Instant::now() + flush_after;
        while batch.len() < batch_max {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        flush(store.as_ref(), &mut batch).await;
    }
}

async fn flush<S: Store + ?Sized>(store: &S, batch: &mut Vec<AckRequest>) {
    let leases: Vec<LeaseRef> = batch.iter().map(|a| a.lease).collect();
    match store.job_ack(&leases).await {
        Ok(results) if results.len() == batch.len() => {
            for (request, result) in batch.drain(..).zip(results) {
                let _ = request.done.send(result);
            }
        }
        Ok(results) => {
            let error = onceq_core::Error::Storage(format!("{} ack results for {} acks", results.len(), batch.len()));
            for request in batch.drain(..) {
                let _ = request.done.send(Err(error.clone()));
            }
        }
        Err(error) => {
            // The batch's fate is unknown (the store may have applied it): each job is left to
            // its lease, which expires and redelivers it if the ack did not land.
            tracing::warn!(%error, acks = batch.len(), "a batch of acks failed");
            for request in batch.drain(..) {
                let _ = request.done.send(Err(error.clone()));
            }
        }
    }
}
