//! onceq-postgres-worker: [`PgWorker`], `onceq_worker`'s runtime over a [`PgStore`], with handlers that run inside a
//! transaction so that a job's effects, its idempotency record and its ack commit together, or
//! none of them does (docs/design.md "Effectively-once": same-database effects). The flow and what
//! each failure does are documented on [`PgWorker`].
//!
//! # Layout
//!
//! One module: [`PgWorker`] and its builder, [`TransactionalOptions`], and the per-job flow
//! (open a transaction, begin the idempotency key in it, run the handler, complete the key and
//! ack in the same transaction, commit — or roll everything back). The key, the decision and
//! the record are `onceq_worker::gate`'s, the same gate the runtime uses outside transactions,
//! with its claims made in the job's transaction. It is a crate of its own so that the
//! PostgreSQL backend does not depend on the worker runtime (docs/design.md's arrows).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::commit::{Commit, CommitEnqueue};
use onceq_core::idempotency::TTL_MS_MAX;
use onceq_core::{Begin, BeginOutcome, Complete, Error, Result, Store};
use onceq_worker::gate::{begin_failed, claim_owner, Claim, Claims, Decision, Gate};
use onceq_worker::{
    JobContext, Outcome, OutcomeFuture, QueueOptions, Worker, WorkerBuilder, WorkerOptions, WorkerReport,
};
use serde::de::DeserializeOwned;

use onceq_postgres::PgStore;
/// The transaction a transactional handler runs in ([`onceq_postgres::PgTransaction`]). The
/// handler writes through it (`.execute(&mut **tx)`) and may open savepoints in it; committing or
/// rolling it back is the worker's.
pub use onceq_postgres::PgTransaction;

/// What a transactional handler returns: a boxed future that may borrow the transaction
/// (`Box::pin(async move { ... })`).
pub type TransactionFuture<'t> = Pin<Box<dyn Future<Output = Outcome> + Send + 't>>;

/// Default [`TransactionalOptions::key_prefix`], as `onceq_worker::EffectivelyOnce`, so that
/// either guard finds the keys the other recorded.
pub use onceq_worker::gate::DEFAULT_KEY_PREFIX;
/// Default [`TransactionalOptions::retention`]: 7 days, as `onceq_worker::EffectivelyOnce`.
pub use onceq_worker::gate::DEFAULT_RETENTION;

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

    /// The gate of the queue, when its effects are recorded; an error for bad settings.
    fn gate(&self) -> Result<Option<Gate>> {
        if self.queue.effectively_once.is_some() {
            return Err(Error::invalid(
                "a transactional handler records its idempotency keys in its own transaction: leave \
                 QueueOptions::effectively_once unset and set TransactionalOptions::effectively_once instead",
            ));
        }
        // The claim is only ever seen inside the job's transaction; it lasts as long as a lease.
        let claim_ttl = Duration::from_millis(millis(self.queue.visibility_timeout).clamp(1, TTL_MS_MAX));
        let gate = Gate::new(&self.key_prefix, claim_ttl, self.retention)?;
        Ok(self.effectively_once.then_some(gate))
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
/// 2. in an effectively-once queue ([`TransactionalOptions::effectively_once`]), begins the
///    job's idempotency key in that transaction (`idempotency_begin_in`), through the gate of
///    `onceq_worker::gate`: a key some earlier job completed means the effect is applied
///    already: the job is acked without running; a key held by a guard outside any
///    transaction releases the job until that claim expires, without burning an attempt;
/// 3. runs the handler with the transaction;
/// 4. on `Done` or `DoneWith`: records the result under the key (`idempotency_complete_in`)
///    and acks the lease (`job_ack_in`), with the jobs the handler produced
///    (`JobContext::produce`, enqueued by `PgStore::commit_in`), all in the transaction, then
///    commits, and reports
///    [`Outcome::Acked`] to the runtime, which settles nothing more and counts the job as
///    acked. A handler that acked the job itself with `job_ack_in` on the transaction returns
///    `Acked`: the key is recorded and the transaction committed, without a second ack.
///
/// Everything else rolls the transaction back, so no effect commits without the ack:
/// - the handler returns `Retry`, `Fail` or `Release`: the runtime nacks, fails or releases
///   the job as usual;
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
pub struct PgWorker<S: ?Sized = PgStore> {
    inner: Worker<S>,
}

impl<S: ?Sized> std::fmt::Debug for PgWorker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorker").finish_non_exhaustive()
    }
}

impl PgWorker {
    /// Starts registering handlers for a worker over `store`.
    pub fn builder(store: PgStore) -> PgWorkerBuilder {
        let seam = Arc::new(store.clone());
        PgWorker::builder_over(store, seam)
    }
}

impl<S: Store + ?Sized + 'static> PgWorker<S> {
    /// Starts registering handlers for a worker whose leases, heartbeats and settles go through
    /// `seam`, a store over the same database as `store` (which opens the transactions): a
    /// wrapper of `store` that traces, meters or, in `onceq verify`, records and injects faults.
    pub fn builder_over(store: PgStore, seam: Arc<S>) -> PgWorkerBuilder<S> {
        PgWorkerBuilder { inner: Worker::builder(seam), store, error: None, transactional_concurrency: 0 }
    }

    /// Works until `shutdown` completes, then shuts down gracefully; see
    /// [`Worker::run`](onceq_worker::Worker::run). A job whose handler is cut off by the
    /// shutdown has its transaction rolled back and is released for redelivery.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> WorkerReport {
        self.inner.run(shutdown).await
    }
}

/// Registers handlers; see [`PgWorker::builder`].
pub struct PgWorkerBuilder<S: ?Sized = PgStore> {
    store: PgStore,
    inner: WorkerBuilder<S>,
    /// The first registration error of a transactional handler.
    error: Option<Error>,
    /// How many transactions the transactional queues may hold open at once, in all.
    transactional_concurrency: usize,
}

impl<S: ?Sized> std::fmt::Debug for PgWorkerBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgWorkerBuilder").field("store", &self.store).finish_non_exhaustive()
    }
}

impl<S: Store + ?Sized + 'static> PgWorkerBuilder<S> {
    /// Sets the worker's options.
    pub fn options(mut self, options: WorkerOptions) -> Self {
        self.inner = self.inner.options(options);
        self
    }

    /// Runs `middleware` around every handler; see
    /// [`WorkerBuilder::middleware`](onceq_worker::WorkerBuilder::middleware). Around a
    /// transactional handler it sees the whole job: the transaction, the handler, the record
    /// of the effect, the ack and the commit (an outcome of `Acked` means it committed).
    pub fn middleware<M>(mut self, middleware: M) -> Self
    where
        M: Fn(JobContext, OutcomeFuture) -> OutcomeFuture + Send + Sync + 'static,
    {
        self.inner = self.inner.middleware(middleware);
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
        let gate = match options.gate() {
            Ok(gate) => gate,
            Err(error) => {
                self.error.get_or_insert(error);
                return self;
            }
        };
        self.transactional_concurrency += options.queue.concurrency;
        let run = Arc::new(Transactional { store: self.store.clone(), gate, handler });
        self.inner = self.inner.handle_with(queue, options.queue, move |context: JobContext, payload: T| {
            let run = run.clone();
            async move { run.job(context, payload).await }
        });
        self
    }

    /// The worker, or the first registration error.
    pub fn build(self) -> Result<PgWorker<S>> {
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
    /// The effectively-once gate, when the queue's effects are recorded.
    gate: Option<Gate>,
    handler: F,
}

/// The gate's claims, made in a job's transaction: they commit with its effects and ack, or
/// roll back with them.
struct InTransaction<'a> {
    store: &'a PgStore,
    tx: &'a mut PgTransaction,
}

#[async_trait]
impl Claims for InTransaction<'_> {
    async fn begin(&mut self, begin: Begin) -> Result<BeginOutcome> {
        self.store.idempotency_begin_in(self.tx, begin).await
    }
    async fn complete(&mut self, complete: Complete) -> Result<()> {
        self.store.idempotency_complete_in(self.tx, complete).await
    }
    async fn release(&mut self, _key: &str, _owner: &str) -> Result<()> {
        // Rolling the transaction back releases the claim: it was never seen outside it.
        Ok(())
    }
    fn retries_unknown(&self) -> bool {
        false
    }
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
        let claim = match &self.gate {
            Some(gate) => match self.begin(gate, &mut tx, &context).await {
                Ok(Some(claim)) => Some((gate, claim)),
                Ok(None) => return self.ack_and_commit(tx, &context, Vec::new()).await,
                Err(outcome) => {
                    roll_back(tx).await;
                    return outcome;
                }
            },
            None => None,
        };
        let outcome = (self.handler)(context.clone(), payload, &mut tx).await;
        // What the handler produced commits in this transaction, with the ack, or not at all.
        let produced = context.take_produced();
        let result = match &outcome {
            Outcome::Retry { .. } | Outcome::Fail { .. } | Outcome::Release { .. } => {
                roll_back(tx).await;
                return outcome;
            }
            Outcome::DoneWith(value) => value.clone(),
            Outcome::Done | Outcome::Acked => serde_json::Value::Null,
        };
        if let Some((gate, claim)) = claim {
            let mut claims = InTransaction { store: &self.store, tx: &mut tx };
            if let Err(error) = gate.complete(&mut claims, &claim, &result).await {
                roll_back(tx).await;
                return Outcome::retry(format!("recording the effect in the transaction failed: {error}"));
            }
        }
        if outcome == Outcome::Acked {
            // The handler acked the job itself, with `job_ack_in` on this transaction.
            if !produced.is_empty() {
                let outputs = Commit { enqueue: produced, ..Commit::default() };
                if let Err(error) = self.store.commit_in(&mut tx, outputs).await {
                    roll_back(tx).await;
                    return Outcome::retry(format!("enqueueing the job's outputs in its transaction failed: {error}"));
                }
            }
            return commit(tx).await;
        }
        self.ack_and_commit(tx, &context, produced).await
    }

    /// Begins the job's key in the transaction, through the gate: `Some` to run the handler,
    /// `None` when an earlier job recorded the effect already, `Err` with the outcome when it
    /// cannot run now (the gate's decision: a key held outside any transaction is released
    /// until its claim expires; a store that fails is [`begin_failed`]).
    async fn begin(
        &self,
        gate: &Gate,
        tx: &mut PgTransaction,
        context: &JobContext,
    ) -> std::result::Result<Option<Claim>, Outcome> {
        let key = gate.key(&context.queue, context.id, context.dedup_id.as_deref());
        let owner = claim_owner(&context.worker_id, context.lease_token);
        let mut claims = InTransaction { store: &self.store, tx };
        match gate.begin(&mut claims, &context.queue, key, owner).await {
            Ok(Decision::Run(claim)) => Ok(Some(claim)),
            Ok(Decision::AlreadyDone) => Ok(None),
            Ok(Decision::Defer { after }) => Err(Outcome::Release { after: Some(after) }),
            Err(error) => Err(begin_failed(&error)),
        }
    }

    /// Acks the job's lease in the transaction, with the jobs the handler produced (one commit,
    /// `PgStore::commit_in`), then commits; rolls back if the ack is refused.
    async fn ack_and_commit(
        &self,
        mut tx: PgTransaction,
        context: &JobContext,
        produced: Vec<CommitEnqueue>,
    ) -> Outcome {
        let verdict = if produced.is_empty() {
            self.store.job_ack_in(&mut tx, &[context.lease()]).await.and_then(|mut items| {
                items.pop().unwrap_or_else(|| Err(Error::Storage("an ack of one lease got no verdict".into())))
            })
        } else {
            let commit = Commit { ack: vec![context.lease()], enqueue: produced, ..Commit::default() };
            self.store.commit_in(&mut tx, commit).await.map(drop).map_err(|e| match e {
                Error::LeasesLost(_) => Error::LeaseLost(context.id),
                other => other,
            })
        };
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
