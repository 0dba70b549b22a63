//! The worker: handlers registered per queue, run until a shutdown signal.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use onceq_core::group::{GroupName, JoinOptions};
use onceq_core::{Error, QueueName, Result, Store};
use rand::RngCore;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::gate::{EffectivelyOnce, Gate};
use crate::group::Membership;
use crate::handler::{erase, wrap, ErasedHandler, JobContext, Middleware, Outcome, OutcomeFuture};
use crate::report::{Shared, WorkerReport};
use crate::runner::{QueueOptions, Runner};

/// Most acks in flight to the acker before job tasks wait.
const ACK_QUEUE_MAX: usize = 10_000;

/// How the whole worker runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Names this worker in idempotency claims and logs (default: random).
    pub worker_id: String,
    /// On shutdown, how long running jobs may take to finish before they are cancelled and their
    /// jobs released for immediate redelivery (default 30 s).
    pub shutdown_grace: Duration,
    /// Most acks in one `job_ack` call (default 100).
    pub ack_batch_max: usize,
    /// How long an ack waits for others to join its batch (default 2 ms).
    pub ack_flush_after: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        WorkerOptions {
            worker_id: format!("worker-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            shutdown_grace: Duration::from_secs(30),
            ack_batch_max: 100,
            ack_flush_after: Duration::from_millis(2),
        }
    }
}

/// Registers handlers; see [`Worker::builder`].
pub struct WorkerBuilder<S: ?Sized> {
    store: Arc<S>,
    options: WorkerOptions,
    queues: Vec<(QueueName, QueueOptions, ErasedHandler)>,
    /// Around every handler, the first added outermost.
    middleware: Vec<Middleware>,
    error: Option<Error>,
}

impl<S: Store + ?Sized + 'static> WorkerBuilder<S> {
    /// Runs `middleware` around every handler of the worker (whenever registered): logging,
    /// tracing spans, metrics of your own, or fault injection in tests. It gets the job's
    /// context and the handler's run, not yet started, and returns the run to use instead. The
    /// first middleware added is the outermost. It runs inside the effectively-once gate: it is
    /// not called for a delivery the gate acks or defers without running.
    pub fn middleware<M>(mut self, middleware: M) -> Self
    where
        M: Fn(JobContext, OutcomeFuture) -> OutcomeFuture + Send + Sync + 'static,
    {
        self.middleware.push(std::sync::Arc::new(middleware));
        self
    }

    /// Sets the worker's options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs `handler` for the jobs of `queue`, with default [`QueueOptions`]. The payload is
    /// parsed as JSON into `T`; a payload that does not parse fails the job at once.
    pub fn handle<T, F, Fut>(self, queue: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.handle_with(queue, QueueOptions::default(), handler)
    }

    /// Runs `handler` for the jobs of `queue`, with these options. With
    /// [`QueueOptions::group`], the queue is worked as a member of a consumer group: see
    /// [`GroupOptions`](crate::GroupOptions) for the session, the heartbeats and the
    /// [`PartitionHooks`](crate::PartitionHooks) called as partitions come and go.
    pub fn handle_with<T, F, Fut>(mut self, queue: &str, options: QueueOptions, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let checked = QueueName::new(queue).and_then(|name| {
            options.validate()?;
            if self.queues.iter().any(|(q, _, _)| *q == name) {
                return Err(Error::invalid(format!("queue {name} has a handler already")));
            }
            Ok(name)
        });
        match checked {
            Ok(name) => self.queues.push((name, options, erase(handler))),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// The worker, or the first registration error.
    pub fn build(self) -> Result<Worker<S>> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.queues.is_empty() {
            return Err(Error::invalid("register a handler for at least one queue"));
        }
        if self.options.ack_batch_max == 0 || self.options.ack_batch_max > onceq_core::limits::SETTLE_BATCH_MAX {
            return Err(Error::invalid(format!(
                "ack_batch_max must be between 1 and {}",
                onceq_core::limits::SETTLE_BATCH_MAX
            )));
        }
        // A claim's owner is the worker id, `/` and the 32 hex digits of a lease token.
        let worker_id_max = onceq_core::idempotency::OWNER_LEN_MAX - 33;
        if self.options.worker_id.is_empty() || self.options.worker_id.len() > worker_id_max {
            return Err(Error::invalid(format!("worker_id must be 1 to {worker_id_max} bytes")));
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (queue, options, mut handler) in self.queues {
            for middleware in self.middleware.iter().rev() {
                handler = wrap(handler.clone(), middleware.clone());
            }
            // Made once per queue, not per job.
            let gate = options.effectively_once.as_ref().map(EffectivelyOnce::gate).transpose()?;
            let group = options.group.as_ref().map(|g| g.checked(&self.options.worker_id)).transpose()?;
            queues.push(Queue { name: queue, options, gate, group, handler });
        }
        Ok(Worker { store: self.store, options: self.options, queues })
    }
}

/// One queue a built worker works.
struct Queue {
    name: QueueName,
    options: QueueOptions,
    /// The effectively-once gate of `options.effectively_once`, if any.
    gate: Option<Gate>,
    /// The checked group name and join options of `options.group`, if any.
    group: Option<(GroupName, JoinOptions)>,
    handler: ErasedHandler,
}

/// A worker over any store of the seam.
pub struct Worker<S: ?Sized> {
    store: Arc<S>,
    options: WorkerOptions,
    queues: Vec<Queue>,
}

impl<S: Store + ?Sized + 'static> Worker<S> {
    /// Starts registering handlers for a worker over `store`.
    pub fn builder(store: Arc<S>) -> WorkerBuilder<S> {
        WorkerBuilder {
            store,
            options: WorkerOptions::default(),
            queues: Vec::new(),
            middleware: Vec::new(),
            error: None,
        }
    }

    /// Works until `shutdown` completes, then shuts down gracefully: stops leasing, lets running
    /// jobs finish within the grace period, cancels the rest and releases their jobs for
    /// immediate redelivery, flushes the acks; a queue worked in a consumer group then revokes
    /// its partitions and leaves the group. Returns what it did.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        let (acks, inbox) = mpsc::channel(ACK_QUEUE_MAX);
        let acker = tokio::spawn(crate::acker::run(
            self.store.clone(),
            inbox,
            self.options.ack_batch_max,
            self.options.ack_flush_after,
        ));
        let shared = Arc::new(Shared {
            worker_id: self.options.worker_id.as_str().into(),
            acks,
            stop: CancellationToken::new(),
            abandon: CancellationToken::new(),
            report: Mutex::new(WorkerReport::default()),
        });
        let mut runners = tokio::task::JoinSet::new();
        for Queue { name, options, gate, group, handler } in self.queues {
            let membership = group.map(|(group, join)| {
                let hooks = options.group.as_ref().and_then(|g| g.hooks.clone());
                Arc::new(Membership::new(self.store.clone(), name.clone(), group, join, hooks, shared.clone()))
            });
            let runner = Arc::new(Runner {
                store: self.store.clone(),
                queue: name,
                options,
                gate,
                handler,
                shared: shared.clone(),
                membership,
            });
            runners.spawn(runner.run());
        }
        shutdown.await;
        tracing::info!(worker = %shared.worker_id, "stopping: no new leases; waiting for running jobs");
        shared.stop.cancel();
        let drained =
            tokio::time::timeout(self.options.shutdown_grace, async { while runners.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(grace = ?self.options.shutdown_grace, "jobs still running after the grace: cancelling them");
            shared.abandon.cancel();
            while runners.join_next().await.is_some() {}
        }
        let report = shared.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
        drop(shared);
        let _ = acker.await;
        report
    }
}
