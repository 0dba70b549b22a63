//! [`OnceqSink`]: publishes to a onceq queue through any store of the seam — the embedded
//! `SqliteStore` or a `PgStore` in-process, or a remote `onceq serve` through
//! `onceq_client::Client`.
//!
//! The destination is the queue name. Each message becomes one job with the message's payload
//! and headers and the relay's dedup id as the job's dedup id, so that a message published twice
//! (a relay crash between publish and mark) is one job.
//!
//! # Batching
//!
//! The relay publishes a batch's messages concurrently; the sink gathers the publishes that are
//! waiting at the same moment into one `job_enqueue` per queue (at most
//! [`ENQUEUE_BATCH_MAX`](onceq_core::limits::ENQUEUE_BATCH_MAX) jobs), so that a batch costs a
//! few commits (or HTTP requests) instead of one each. Each job is validated on its own first,
//! so that one bad message is refused alone; an enqueue that fails as a whole (the store is
//! unavailable) fails each of its publishes, which the relay retries.
//!
//! # The dedup window must cover the relay's retry horizon
//!
//! onceq absorbs a second enqueue of a dedup id only within the queue's `dedup_window_ms`
//! (default 5 minutes) after the first (Invariant 6). A message is published again only when a
//! relay died (or lost its database) between the publish and the mark, and the next relay
//! publishes it as soon as it runs: the window must be longer than the time a dead relay takes
//! to be replaced (or restarted) plus its publish timeout. Configure a longer window on queues
//! fed by an outbox whose relay may stay down longer; a queue with a window of 0 cannot dedup,
//! and gets a duplicate for each such crash.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::limits::ENQUEUE_BATCH_MAX;
use onceq_core::{Error, NewJob, QueueName, Store};
use tokio::sync::{mpsc, oneshot};

use crate::{OutboxMessage, PublishError, Sink};

/// One publish waiting for the enqueue that carries it.
struct Pending {
    queue: QueueName,
    job: NewJob,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// Publishes outbox messages as jobs of the onceq queue named by their destination.
#[derive(Clone)]
pub struct OnceqSink {
    /// Where publishes wait to be gathered into enqueues (see "Batching"); the gathering task
    /// ends when the last clone of the sink is dropped.
    pending: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for OnceqSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnceqSink").finish_non_exhaustive()
    }
}

impl OnceqSink {
    /// A sink enqueueing into `store`. Call it within a tokio runtime: it starts the task that
    /// gathers publishes into enqueues.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (pending, receiver) = mpsc::unbounded_channel();
        tokio::spawn(gather(store, receiver));
        OnceqSink { pending }
    }
}

/// Takes every publish waiting at once, and enqueues them per queue, up to a batch each.
async fn gather(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut by_queue: BTreeMap<QueueName, Vec<Pending>> = BTreeMap::new();
        by_queue.entry(first.queue.clone()).or_default().push(first);
        let mut taken = 1;
        while taken < ENQUEUE_BATCH_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            by_queue.entry(next.queue.clone()).or_default().push(next);
            taken += 1;
        }
        let enqueues = by_queue.into_iter().map(|(queue, waiting)| {
            let store = store.clone();
            async move {
                let (jobs, done): (Vec<NewJob>, Vec<_>) = waiting.into_iter().map(|p| (p.job, p.done)).unzip();
                let result = store.job_enqueue(&queue, jobs).await;
                for done in done {
                    let _ = done.send(match &result {
                        Ok(_) => Ok(()),
                        Err(error) => Err(classify(&queue, error.clone())),
                    });
                }
            }
        });
        let tasks: Vec<_> = enqueues.map(tokio::spawn).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Whether a failed enqueue is worth retrying.
fn classify(queue: &QueueName, error: Error) -> PublishError {
    match error {
        Error::InvalidRequest(_) | Error::PayloadTooLarge(_) | Error::QueueNotFound(_) => {
            PublishError::Permanent(format!("onceq refused the job for queue {queue}: {error}"))
        }
        other => PublishError::Transient(format!("enqueueing into onceq queue {queue}: {other}")),
    }
}

#[async_trait]
impl Sink for OnceqSink {
    fn kind(&self) -> &'static str {
        "onceq"
    }

    async fn publish(&self, message: &OutboxMessage, dedup_id: &str) -> Result<(), PublishError> {
        let queue = QueueName::new(&message.destination).map_err(|e| {
            PublishError::Permanent(format!("destination {:?} is not a onceq queue name: {e}", message.destination))
        })?;
        let mut job = NewJob::new(message.payload.clone()).dedup_id(dedup_id);
        job.headers = message.headers.clone();
        // Refused alone, before it could make a whole gathered enqueue fail.
        job.validate().map_err(|e| classify(&queue, e))?;
        let (done, outcome) = oneshot::channel();
        self.pending
            .send(Pending { queue, job, done })
            .map_err(|_| PublishError::Transient("the onceq sink has stopped".into()))?;
        outcome.await.unwrap_or_else(|_| Err(PublishError::Transient("the onceq sink has stopped".into())))
    }
}
