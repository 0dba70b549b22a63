//! onceq-postgres-worker: [`PgWorker`], `onceq_worker`'s runtime over a [`PgStore`], with handlers that run inside a
//! transaction so that a job's effects, its idempotency record and its ack commit together, or
//! none of them does (DESIGN.md "Effectively-once": same-database effects). The flow and what
//! each failure does are documented on [`PgWorker`].
//!
//! # Layout
//!
//! One module: [`PgWorker`] and its builder, [`TransactionalOptions`], and the per-job flow
//! (open a transaction, claim the idempotency key in it, run the handler, complete the key and
//! ack in the same transaction, commit — or roll everything back). It is a crate of its own so
//! that the PostgreSQL backend does not depend on the worker runtime (DESIGN.md's arrows).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use onceq_core::idempotency::{KEY_LEN_MAX, RETENTION_MS_MAX, TTL_MS_MAX};
use onceq_core::metrics::{DUPLICATES_DETECTED, IDEMPOTENCY_CHECKS};
use onceq_core::{Begin, BeginOutcome, Clock, Complete, Error, Result, SystemClock};
use onceq_worker::{JobContext, Outcome, QueueOptions, Worker, WorkerBuilder, WorkerOptions, WorkerReport};
use serde::de::DeserializeOwned;

use onceq_postgres::PgStore;
/// The transaction a transactional handler runs in ([`onceq_postgres::PgTransaction`]). The
/// handler writes through it (`.execute(&mut **tx)`) and may open savepoints in it; committing or
/// rolling it back is the worker's.
pub use onceq_postgres::PgTransaction;

/// What a transactional handler returns: a boxed future that may borrow the transaction
/// (`Box::pin(async move { ... })`).
pub type TransactionFuture<'t> = Pin<Box<dyn Future<Output = Outcome> + Send + 't>>;

/// Default [`TransactionalOptions::retention`]: 7 days, as `onceq_worker::EffectivelyOnce`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Default [`TransactionalOptions::key_prefix`], as `onceq_worker::EffectivelyOnce`, so that
/// either guard finds the keys the other recorded.
pub const DEFAULT_KEY_PREFIX: &str = "onceq:";

/// How a queue with a transactional handler is worked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransactionalOptions {
    /// Concurrency, prefetch, visibility timeout, deadline and polling, as for any queue. Its
    /// `effectively_once` must stay `None`: a transactional handler records its idempotency
    /// keys in its own transaction (see [`TransactionalOptions::effectively_once`]).
    pub queue: QueueOptions,
    /// Records each job's effect under its idempotency key (the queue and its dedup id, else
    /// its id) in the job's transaction, and acks without running a job whose key is recorded
    /// already: a job enqueued again with the same dedup id after the dedup window. For
    /// `effectively_once` queues. Default: off.
    pub effectively_once: bool,
    /// How long a recorded effect (and its `DoneWith` result) is kept.
    pub retention: Duration,
    /// Prefix of every idempotency key.
    pub key_prefix: String,
}

impl Default for TransactionalOptions {
    fn default() -> Self {
        TransactionalOptions::new(QueueOptions::default())
    }
}

impl TransactionalOptions {
    /// These queue options; effects not recorded in the idempotency store.
    pub fn new(queue: QueueOptions) -> Self {
        TransactionalOptions {
            queue,
            effectively_once: false,
            retention: DEFAULT_RETENTION,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// Records each job's effect under its idempotency key (see the field).
    pub fn effectively_once(mut self) -> Self {
        self.effectively_once = true;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.queue.effectively_once.is_some() {
            return Err(Error::invalid(
                "a transactional handler records its idempotency keys in its own transaction: leave \
                 QueueOptions::effectively_once unset and set TransactionalOptions::effectively_once instead",
            ));
        }
        let retention = millis(self.retention);
        if !(1..=RETENTION_MS_MAX).contains(&retention) {
            return Err(Error::invalid(format!("retention must be between 1 and {RETENTION_MS_MAX} ms")));
        }
        if self.key_prefix.len() >= KEY_LEN_MAX {
            return Err(Error::invalid(format!("key_prefix must be shorter than {KEY_LEN_MAX} bytes")));
        }
        Ok(())
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A worker over a [`PgStore`] whose handlers may run inside a transaction: the job's effects,
/// its idempotency record and its ack commit together, or none of them does.
///
/// It is `onceq_worker`'s runtime (leases, prefetch, concurrency, heartbeats, deadlines,
/// shutdown) over a [`PgStore`], with one more way to register a handler:
/// [`PgWorkerBuilder::handle_in_transaction`]. For each job of such a queue it
///
/// 1. opens a transaction on the store's pool;
/// 2. in an effectively-once queue ([`TransactionalOptions::effectively_once`]), claims the
///    job's idempotency key in that transaction (`idempotency_begin_in`); a key some earlier job
///    completed means the effect is applied already: the job is acked without running;
/// 3. runs the handler with the transaction;
/// 4. on `Done` or `DoneWith`: records the result under the key (`idempotency_complete_in`)
///    and acks the lease (`job_ack_in`), both in the transaction, then commits, and reports
///    [`Outcome::Acked`] to the runtime, which settles nothing more and counts the job as
///    acked. A handler that acked the job itself with `job_ack_in` on the transaction returns
///    `Acked`: the key is recorded and the transaction committed, without a second ack.
///
/// Everything else rolls the transaction back, so no effect commits without the ack:
/// - the handler returns `Retry` or `Fail`: the runtime nacks or fails the job as usual;
/// - the handler panics or passes its deadline: the transaction is dropped (rolled back) and
///   the runtime retries the job as usual;
/// - the ack is refused (the lease was lost: it expired and another delivery may run the job):
///   the runtime's nack is refused the same way, changes nothing, and counts a lost lease;
/// - a statement or the commit fails: the job is retried; if a failed commit did land after
///   all, the job is gone and the retry finds nothing to do.
///
/// Each running job holds one pooled connection for its whole run; keep the concurrency of
/// transactional queues below the store's pool size, which leases and heartbeats share.
///
/// ```no_run
/// # async fn demo(store: onceq_postgres::PgStore) -> onceq_core::Result<()> {
/// use onceq_postgres_worker::{PgTransaction, PgWorker, TransactionalOptions};
/// use onceq_worker::{JobContext, Outcome, QueueOptions};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: i64, cents: i64 }
///
/// let worker = PgWorker::builder(store)
///     .handle_in_transaction(
///         "orders",
///         TransactionalOptions::new(QueueOptions::concurrency(4)).effectively_once(),
///         |_ctx: JobContext, order: Order, tx: &mut PgTransaction| {
///             Box::pin(async move {
///                 let inserted = sqlx::query("INSERT INTO orders (id, cents) VALUES ($1, $2)")
///                     .bind(order.id)
///                     .bind(order.cents)
///                     .execute(&mut **tx)
///                     .await;
///                 match inserted {
///                     Ok(_) => Outcome::Done, // committed with the ack, or not at all
///                     Err(e) => Outcome::retry(e.to_string()),
///                 }
///             })
///         },
///     )
///     .build()?;
/// let report = worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// println!("{report:?}");
/// # Ok(()) }
/// ```
pub struct PgWorker {
    inner: Worker<PgStore>,
}

impl std::fmt::Debug for PgWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorker").finish_non_exhaustive()
    }
}

impl PgWorker {
    /// Starts registering handlers for a worker over `store`.
    pub fn builder(store: PgStore) -> PgWorkerBuilder {
        PgWorkerBuilder {
            inner: Worker::builder(Arc::new(store.clone())),
            store,
            error: None,
            transactional_concurrency: 0,
        }
    }

    /// Works until `shutdown` completes, then shuts down gracefully; see
    /// [`Worker::run`](onceq_worker::Worker::run). A job whose handler is cut off by the
    /// shutdown has its transaction rolled back and is released for redelivery.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        self.inner.run(shutdown).await
    }
}

/// Registers handlers; see [`PgWorker::builder`].
pub struct PgWorkerBuilder {
    store: PgStore,
    inner: WorkerBuilder<PgStore>,
    /// The first registration error of a transactional handler.
    error: Option<Error>,
    /// How many transactions the transactional queues may hold open at once, in all.
    transactional_concurrency: usize,
}

impl std::fmt::Debug for PgWorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorkerBuilder").field("store", &self.store).finish_non_exhaustive()
    }
}

impl PgWorkerBuilder {
    /// Sets the worker's options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.inner = self.inner.options(options);
        self
    }

    /// Runs `handler` (not in a transaction) for the jobs of `queue`, with default options; see
    /// [`WorkerBuilder::handle`](onceq_worker::WorkerBuilder::handle).
    pub fn handle<T, F, Fut>(mut self, queue: &str, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.inner = self.inner.handle(queue, handler);
        self
    }

    /// Runs `handler` (not in a transaction) for the jobs of `queue`, with these options; see
    /// [`WorkerBuilder::handle_with`](onceq_worker::WorkerBuilder::handle_with).
    pub fn handle_with<T, F, Fut>(mut self, queue: &str, options: QueueOptions, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(JobContext, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        self.inner = self.inner.handle_with(queue, options, handler);
        self
    }

    /// Runs `handler` for the jobs of `queue` inside a transaction that commits the handler's
    /// writes together with the job's ack (and its idempotency record); see [`PgWorker`].
    /// The payload is parsed as JSON into `T`; a payload that does not parse fails the job at
    /// once. The handler returns `Box::pin(async move { ... })`, which may use the transaction.
    pub fn handle_in_transaction<T, F>(mut self, queue: &str, options: TransactionalOptions, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: for<'t> Fn(JobContext, T, &'t mut PgTransaction) -> TransactionFuture<'t> + Send + Sync + 'static,
    {
        if let Err(error) = options.validate() {
            self.error.get_or_insert(error);
            return self;
        }
        self.transactional_concurrency += options.queue.concurrency;
        let run = Arc::new(Transactional {
            store: self.store.clone(),
            claim_ttl_ms: millis(options.queue.visibility_timeout).clamp(1, TTL_MS_MAX),
            retention_ms: millis(options.retention),
            effectively_once: options.effectively_once,
            key_prefix: options.key_prefix,
            handler,
        });
        self.inner = self.inner.handle_with(queue, options.queue, move |context: JobContext, payload: T| {
            let run = run.clone();
            async move { run.job(context, payload).await }
        });
        self
    }

    /// The worker, or the first registration error.
    pub fn build(self) -> Result<PgWorker> {
        if let Some(error) = self.error {
            return Err(error);
        }
        // The listener holds one of the pool's connections for good.
        let pool_size = self.store.pool().options().get_max_connections().saturating_sub(1) as usize;
        if self.transactional_concurrency >= pool_size {
            tracing::warn!(
                transactional_concurrency = self.transactional_concurrency,
                pool_size,
                "transactional handlers may hold every pooled connection at once, leaving none for leases and \
                 heartbeats; lower their concurrency or raise the store's pool size"
            );
        }
        Ok(PgWorker { inner: self.inner.build()? })
    }
}

/// One queue's transactional handler and what it needs to run a job.
struct Transactional<F> {
    store: PgStore,
    effectively_once: bool,
    key_prefix: String,
    /// How long the key's claim lasts; it is only ever seen inside the job's transaction.
    claim_ttl_ms: u64,
    retention_ms: u64,
    handler: F,
}

/// The idempotency key a transactional job's effect is recorded under.
struct Claim {
    key: String,
    owner: String,
}

impl<F> Transactional<F> {
    /// Runs one job in a transaction of its own; the outcome tells the runtime what is left to
    /// settle (see [`PgWorker`]).
    async fn job<T>(&self, context: JobContext, payload: T) -> Outcome
    where
        F: for<'t> Fn(JobContext, T, &'t mut PgTransaction) -> TransactionFuture<'t>,
    {
        let mut tx = match self.store.transaction().await {
            Ok(tx) => tx,
            Err(error) => return Outcome::retry(error.to_string()),
        };
        let claim = if self.effectively_once {
            match self.claim(&mut tx, &context).await {
                Ok(Some(claim)) => Some(claim),
                Ok(None) => return self.ack_and_commit(tx, &context).await,
                Err(outcome) => {
                    roll_back(tx).await;
                    return outcome;
                }
            }
        } else {
            None
        };
        let outcome = (self.handler)(context.clone(), payload, &mut tx).await;
        let result = match &outcome {
            Outcome::Retry { .. } | Outcome::Fail { .. } => {
                roll_back(tx).await;
                return outcome;
            }
            Outcome::DoneWith(value) => value.clone(),
            Outcome::Done | Outcome::Acked => serde_json::Value::Null,
        };
        if let Some(claim) = claim {
            if let Err(error) = self.record(&mut tx, claim, &result).await {
                roll_back(tx).await;
                return Outcome::retry(format!("recording the effect in the transaction failed: {error}"));
            }
        }
        if outcome == Outcome::Acked {
            // The handler acked the job itself, with `job_ack_in` on this transaction.
            return commit(tx).await;
        }
        self.ack_and_commit(tx, &context).await
    }

    /// Claims the job's key in the transaction: `Some` to run the handler, `None` when an
    /// earlier job recorded the effect already, `Err` with the outcome when it cannot run now.
    async fn claim(&self, tx: &mut PgTransaction, context: &JobContext) -> std::result::Result<Option<Claim>, Outcome> {
        let key = idempotency_key(&self.key_prefix, context);
        // Unique per delivery; the claim is never seen outside this delivery's transaction.
        let owner = format!("tx/{}/{}", context.id, context.lease_token);
        let begin = Begin { key: key.clone(), owner: owner.clone(), ttl_ms: self.claim_ttl_ms, fingerprint: None };
        let queue = context.queue.to_string();
        let (claimed, label) = match self.store.idempotency_begin_in(tx, begin).await {
            Ok(BeginOutcome::Acquired) => (Ok(Some(Claim { key, owner })), "acquired"),
            Ok(BeginOutcome::Completed { .. }) => {
                metrics::counter!(DUPLICATES_DETECTED, "queue" => queue.clone()).increment(1);
                (Ok(None), "completed")
            }
            Ok(BeginOutcome::InProgress { owner, until }) => {
                // Only a guard outside any transaction (`onceq_worker::EffectivelyOnce` on the
                // same keys) leaves a claim others can see: retry once it has expired.
                let wait = until.ms_since(SystemClock::default().now()).max(100);
                let reason = format!("idempotency key {key:?} is held by {owner:?}");
                (Err(Outcome::retry_after(Duration::from_millis(wait), reason)), "in_progress")
            }
            Err(error) => (Err(Outcome::retry(format!("claiming idempotency key {key:?} failed: {error}"))), "error"),
        };
        metrics::counter!(IDEMPOTENCY_CHECKS, "queue" => queue, "outcome" => label).increment(1);
        claimed
    }

    /// Completes the job's key with its result, in the transaction.
    async fn record(&self, tx: &mut PgTransaction, claim: Claim, result: &serde_json::Value) -> Result<()> {
        let result = serde_json::to_vec(result).map_err(|e| Error::invalid(format!("encoding the result: {e}")))?;
        let complete = Complete { key: claim.key, owner: claim.owner, result, retention_ms: self.retention_ms };
        self.store.idempotency_complete_in(tx, complete).await
    }

    /// Acks the job's lease in the transaction, then commits; rolls back if the ack is refused.
    async fn ack_and_commit(&self, mut tx: PgTransaction, context: &JobContext) -> Outcome {
        let verdict = self.store.job_ack_in(&mut tx, &[context.lease()]).await.and_then(|mut items| {
            items.pop().unwrap_or_else(|| Err(Error::Storage("an ack of one lease got no verdict".into())))
        });
        match verdict {
            Ok(()) => commit(tx).await,
            Err(error @ (Error::LeaseLost(_) | Error::JobNotFound(_))) => {
                // The effects must not commit without the ack. The runtime's nack of this lease
                // is refused the same way and changes nothing; it counts the lost lease.
                roll_back(tx).await;
                Outcome::retry(format!("the transaction was rolled back: {error}"))
            }
            Err(error) => {
                roll_back(tx).await;
                Outcome::retry(format!("acking the job in its transaction failed: {error}"))
            }
        }
    }
}

/// The key `onceq_worker::EffectivelyOnce::key` gives the same job: its queue and its dedup id,
/// else its id.
fn idempotency_key(prefix: &str, context: &JobContext) -> String {
    match &context.dedup_id {
        Some(dedup) => format!("{prefix}{}:{dedup}", context.queue),
        None => format!("{prefix}{}:#{}", context.queue, context.id),
    }
}

/// Commits the job's transaction: the job is acked (with its effects) exactly when this
/// succeeds.
async fn commit(tx: PgTransaction) -> Outcome {
    match tx.commit().await {
        Ok(()) => Outcome::Acked,
        // Ambiguous when the connection broke: if the commit landed, the job is gone and the
        // runtime's nack finds nothing; if not, the job is retried.
        Err(error) => Outcome::retry(format!("committing the job's transaction failed: {error}")),
    }
}

/// Rolls the job's transaction back.
async fn roll_back(tx: PgTransaction) {
    if let Err(error) = tx.rollback().await {
        // The connection broke: PostgreSQL ends the transaction without committing it.
        tracing::debug!(%error, "rolling back a job's transaction failed");
    }
}
