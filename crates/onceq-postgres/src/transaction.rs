//! The store inside a caller's transaction ([`PgStore::job_enqueue_in`],
//! [`PgStore::job_ack_in`], [`PgStore::idempotency_begin_in`],
//! [`PgStore::idempotency_complete_in`]; what changes there is in the crate docs, "Inside a
//! caller's transaction"), and running a statement where an operation runs ([`Conn`]).
//!
//! Nothing here ever waits for another pooled connection while it holds the caller's: a
//! statement on the pool could wait for a row the caller's transaction holds, and the caller
//! would wait for it in turn, a deadlock PostgreSQL cannot see. So housekeeping (sweeping
//! expired dedup ids and idempotency keys) is started beside the call, not awaited by it.

use crate::conns::pooled;
use onceq_core::store::validate;
use onceq_core::{Begin, BeginOutcome, Complete, Enqueued, ItemResults, LeaseRef, NewJob, QueueName, Result};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, Postgres};

use crate::{error, Conn, PgStore};

/// A statement with its arguments bound.
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

impl PgStore {
    /// Enqueues `jobs` into `queue` inside the caller's transaction: [`Store::job_enqueue`]
    /// (validation, dedup, the `effectively_once` rule, ids, scheduling), except that the jobs
    /// exist only if the caller commits, and waiting leases wake only then. A rollback leaves
    /// no job, no claimed dedup id, and no queue if this call created it.
    ///
    /// ```no_run
    /// # async fn demo(store: onceq_postgres::PgStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use onceq_core::{NewJob, QueueName};
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
    /// let emails = QueueName::new("emails")?;
    /// store.job_enqueue_in(&mut tx, &emails, vec![NewJob::new(r#"{"order":42}"#)]).await?;
    /// tx.commit().await?; // the order and its job, or neither
    /// # Ok(()) }
    /// ```
    ///
    /// What else changes inside a caller's transaction (locks held until it ends, statements
    /// not retried): see [the crate docs](crate#inside-a-callers-transaction).
    ///
    /// [`Store::job_enqueue`]: onceq_core::Store::job_enqueue
    pub async fn job_enqueue_in(
        &self,
        tx: &mut PgConnection,
        queue: &QueueName,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        validate::enqueue(&jobs)?;
        self.job_enqueue(&mut Conn::Caller(tx), queue, jobs).await
    }

    /// Acks leases inside the caller's transaction: [`Store::job_ack`], fenced by each lease
    /// token and judged item by item (`LeaseLost`, `JobNotFound`), except that the jobs are
    /// gone only if the caller commits. After a rollback they are still leased, and a lease
    /// that expires redelivers its job as usual.
    ///
    /// A caller that writes a job's effects in the same transaction must roll back when its
    /// item is refused: the lease is lost, another delivery may run the job, and the effects
    /// must not commit without the ack.
    ///
    /// What else changes inside a caller's transaction (locks held until it ends, statements
    /// not retried): see [the crate docs](crate#inside-a-callers-transaction).
    ///
    /// [`Store::job_ack`]: onceq_core::Store::job_ack
    pub async fn job_ack_in(&self, tx: &mut PgConnection, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        validate::settle_batch(acks.len())?;
        self.job_ack(&mut Conn::Caller(tx), acks).await
    }

    /// Claims an idempotency key inside the caller's transaction:
    /// [`IdempotencyStore::idempotency_begin`], except that the claim exists only if the
    /// caller commits. Until then a `begin` of the same key elsewhere waits for the caller's
    /// transaction, and then sees the key completed (committed) or free (rolled back).
    ///
    /// What else changes inside a caller's transaction (locks held until it ends, statements
    /// not retried): see [the crate docs](crate#inside-a-callers-transaction).
    ///
    /// [`IdempotencyStore::idempotency_begin`]: onceq_core::IdempotencyStore::idempotency_begin
    pub async fn idempotency_begin_in(&self, tx: &mut PgConnection, begin: Begin) -> Result<BeginOutcome> {
        begin.validate()?;
        self.idempotency_begin(&mut Conn::Caller(tx), &begin).await
    }

    /// Records a claimed key's result inside the caller's transaction:
    /// [`IdempotencyStore::idempotency_complete`] (owner-checked), except that the record is
    /// completed only if the caller commits, together with the effects and the ack written in
    /// the same transaction.
    ///
    /// What else changes inside a caller's transaction (locks held until it ends, statements
    /// not retried): see [the crate docs](crate#inside-a-callers-transaction).
    ///
    /// [`IdempotencyStore::idempotency_complete`]: onceq_core::IdempotencyStore::idempotency_complete
    pub async fn idempotency_complete_in(&self, tx: &mut PgConnection, complete: Complete) -> Result<()> {
        complete.validate()?;
        self.idempotency_complete(&mut Conn::Caller(tx), &complete).await
    }

    /// Runs a statement on `conn` and returns its rows.
    pub(crate) async fn fetch_all<'q, F>(&self, conn: &mut Conn<'_>, context: &str, make: F) -> Result<Vec<PgRow>>
    where
        F: Fn() -> PgQuery<'q> + Send + Sync,
    {
        match conn {
            Conn::Pool => self.run(context, || pooled!(self, make(), fetch_all)).await,
            Conn::Caller(c) | Conn::Own(c) => {
                make().fetch_all(&mut **c).await.map_err(|e| error::map(&self.inner.target, context, e))
            }
        }
    }

    /// Runs a statement on `conn` and returns its row, if any.
    pub(crate) async fn fetch_optional<'q, F>(
        &self,
        conn: &mut Conn<'_>,
        context: &str,
        make: F,
    ) -> Result<Option<PgRow>>
    where
        F: Fn() -> PgQuery<'q> + Send + Sync,
    {
        match conn {
            Conn::Pool => self.run(context, || pooled!(self, make(), fetch_optional)).await,
            Conn::Caller(c) | Conn::Own(c) => {
                make().fetch_optional(&mut **c).await.map_err(|e| error::map(&self.inner.target, context, e))
            }
        }
    }

    /// Sweeps expired dedup ids and idempotency keys if one is due (see `sweep`): awaited on
    /// the pool; started beside the call inside a caller's transaction (see the module docs).
    pub(crate) async fn sweep_after(&self, conn: &Conn<'_>, now: i64) {
        match conn {
            Conn::Pool => self.sweep(now).await,
            Conn::Caller(_) | Conn::Own(_) => {
                if self.sweep_due(now) {
                    let store = self.clone();
                    // One statement that skips locked rows, bounded by the pool's acquire
                    // timeout; its failure is only logged (see `sweep`).
                    tokio::spawn(async move { store.sweep_now(now).await });
                }
            }
        }
    }
}
