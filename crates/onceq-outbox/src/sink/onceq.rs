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
//!
//! A retry of a publish whose confirmation was lost comes at most the relay's backoff cap plus
//! its publish timeout after the first: a sink made [`OnceqSink::with_retry_horizon`] (what
//! `onceq relay` does) asks the store for each destination queue's window (again every
//! [`WINDOW_RECHECK`]) and refuses, as a permanent failure that parks the message with the
//! reason, to publish into a queue whose window is shorter than that horizon: a retry there
//! could enqueue the job twice. A queue that does not exist yet gets the default window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use onceq_core::limits::ENQUEUE_BATCH_MAX;
use onceq_core::{Error, NewJob, QueueConfig, QueueName, Store};
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

/// How long a destination queue's dedup window is trusted before it is read again.
pub const WINDOW_RECHECK: Duration = Duration::from_secs(60);

impl OnceqSink {
    /// A sink enqueueing into `store`. Call it within a tokio runtime: it starts the task that
    /// gathers publishes into enqueues.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (pending, receiver) = mpsc::unbounded_channel();
        tokio::spawn(gather(store, receiver, None));
        OnceqSink { pending }
    }

    /// A sink enqueueing into `store` that refuses queues whose dedup window is shorter than
    /// `horizon`, the longest time after a publish that the relay may publish it again (its
    /// backoff cap plus its publish timeout).
    pub fn with_retry_horizon(store: Arc<dyn Store>, horizon: Duration) -> Self {
        let (pending, receiver) = mpsc::unbounded_channel();
        tokio::spawn(gather(store, receiver, Some(horizon)));
        OnceqSink { pending }
    }
}

/// Why `queue`, with a dedup window of `window_ms`, cannot take the relay's retries, if so.
fn window_too_short(queue: &QueueName, window_ms: u64, horizon: Duration) -> Option<String> {
    let horizon_ms = u64::try_from(horizon.as_millis()).unwrap_or(u64::MAX);
    (window_ms < horizon_ms).then(|| {
        format!(
            "queue {queue}'s dedup_window_ms ({window_ms} ms) is shorter than the relay's retry horizon \
             (--backoff-max-ms plus --publish-timeout-ms: {horizon_ms} ms): a retry after a lost confirmation \
             could enqueue the job twice. Raise the queue's dedup_window_ms (onceq queue set {queue} \
             --dedup-window-ms {horizon_ms}) or lower the relay's --backoff-max-ms, then redrive the parked messages"
        )
    })
}

/// Takes every publish waiting at once, and enqueues them per queue, up to a batch each.
async fn gather(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Pending>, horizon: Option<Duration>) {
    // Each destination's dedup window as last read, and when.
    let mut windows: HashMap<QueueName, (Instant, u64)> = HashMap::new();
    while let Some(first) = receiver.recv().await {
        let mut by_queue: BTreeMap<QueueName, Vec<Pending>> = BTreeMap::new();
        by_queue.entry(first.queue.clone()).or_default().push(first);
        let mut taken = 1;
        while taken < ENQUEUE_BATCH_MAX {
            let Ok(next) = receiver.try_recv() else { break };
            by_queue.entry(next.queue.clone()).or_default().push(next);
            taken += 1;
        }
        if let Some(horizon) = horizon {
            let mut refused = Vec::new();
            for queue in by_queue.keys() {
                let fresh = windows.get(queue).is_some_and(|(at, _)| at.elapsed() < WINDOW_RECHECK);
                if !fresh {
                    let window_ms = match store.queue_get(queue).await {
                        Ok(info) => info.config.dedup_window_ms,
                        Err(Error::QueueNotFound(_)) => QueueConfig::default().dedup_window_ms,
                        // Not known now: the enqueue below meets the same trouble and is retried.
                        Err(_) => continue,
                    };
                    windows.insert(queue.clone(), (Instant::now(), window_ms));
                }
                let window_ms = windows.get(queue).map_or(u64::MAX, |(_, ms)| *ms);
                if let Some(reason) = window_too_short(queue, window_ms, horizon) {
                    refused.push((queue.clone(), reason));
                }
            }
            for (queue, reason) in refused {
                tracing::warn!(%queue, "{reason}");
                for waiting in by_queue.remove(&queue).unwrap_or_default() {
                    let _ = waiting.done.send(Err(PublishError::Permanent(reason.clone())));
                }
            }
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
