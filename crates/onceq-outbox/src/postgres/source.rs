//! The relay's side of a PostgreSQL outbox: claiming heads with `FOR UPDATE SKIP LOCKED` in a
//! transaction that stays open across publish and mark, settling in that same transaction, and
//! `LISTEN` for the wake-ups staging sends.
//!
//! # Why the claim transaction stays open across the publish
//!
//! The rows a relay claimed stay locked until it has published them and marked them sent (or
//! scheduled their retry, or parked them), all in the claiming transaction. So:
//!
//! - two relays never publish one row at the same time: the second one skips the locked row;
//! - a relay that dies at any point (even between a confirmed publish and the mark) loses its
//!   connection, PostgreSQL rolls the transaction back and the rows are claimable again: the
//!   next relay publishes them again with the *same* dedup id (`<outbox>-<id>`), which a
//!   deduplicating sink absorbs. Nothing is lost; nothing is published twice where the sink
//!   deduplicates within the time the relay takes to come back.
//!
//! The price is one open transaction per relay while a batch is in flight, bounded by the
//! publish timeout.
//!
//! # Wake-ups
//!
//! `NOTIFY` serializes the commits of the transactions that send it (PostgreSQL takes a global
//! lock on its notification queue at commit), which would make every business transaction that
//! stages pay for it under load. So a staging transaction notifies only while a relay is
//! registered as sleeping in the `sleepers` table, and a busy relay (the case under load) costs
//! staging nothing but a shared advisory lock and a one-row read (the schema's `wake_relays`).
//!
//! No wake-up is lost: a relay about to sleep (1) registers (commits its `sleepers` row), then
//! (2) tries to take the schema's wake lock exclusively — every staging statement holds it
//! shared until its transaction ends, and reads `sleepers` with a snapshot taken after it got
//! the lock — then (3) looks for work once more, and only then (4) waits. A staging transaction
//! that read `sleepers` before (1) committed still holds the lock shared, so (2) fails and the
//! relay looks again shortly instead of sleeping (it never blocks staging by waiting for the
//! lock); one that read it after (1) sends the `NOTIFY`, which wakes the relay when it commits.
//! If (2) succeeds, every staging transaction that missed the registration has ended, so (3)
//! sees its messages. The registration expires by itself (a crashed relay does not make
//! staging notify forever), and is withdrawn when the relay finds work after a sleep.
//!
//! # Heads only
//!
//! A row with an ordering key is claimable only when no earlier row of its key is pending: a
//! plain `SKIP LOCKED` claim would let a second relay skip the locked head of a key and take the
//! row behind it, publishing a key out of order. The `NOT EXISTS` below reads every pending row
//! of the key, locked or not, so while a head is claimed (locked) or waiting for its retry, the
//! rest of its key waits, and other keys go on.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::Notify;

use super::PgOutbox;
use crate::error::{from_sqlx, truncate_error_text};
use crate::message::headers_from_json;
use crate::source::{Backlog, Claim, Outcome, Source};
use crate::{OutboxError, OutboxMessage, Result};

/// Rows deleted per statement when sent rows pass their retention: bounds each statement's locks.
const PURGE_BATCH: i64 = 10_000;
/// The fallback poll interval: a bound on how late a missed notification makes the relay.
pub(crate) const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Pauses between attempts to reconnect the listener: doubling from the first to the last.
const LISTENER_RETRY_MS: (u64, u64) = (100, 5_000);
/// Connections of a relay's pool: the claim transaction, the housekeeping, and spare.
const POOL_SIZE: u32 = 4;

/// Pauses of a relay that may not sleep yet (see "Wake-ups"): doubling from the first to the last.
const SLEEP_BLOCKED_MS: (u64, u64) = (5, 1_000);
/// How long a sleeper registration outlives the sleep it announces.
const SLEEPER_MARGIN: Duration = Duration::from_secs(1);

pub(crate) struct PgSource {
    outbox: PgOutbox,
    /// This relay's row in `sleepers`.
    relay_id: String,
    /// The current pause while sleeping is refused (see `SLEEP_BLOCKED_MS`).
    blocked_ms: std::sync::atomic::AtomicU64,
    pool: PgPool,
    /// host:port/database, for the startup line.
    target: String,
    claim_sql: String,
    wake: Arc<Notify>,
    listener: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PgSource {
    /// Connects to `url`, migrates the outbox schema and starts listening.
    pub(crate) async fn connect(url: &str, outbox: PgOutbox, connect_timeout: Duration) -> Result<PgSource> {
        let mut options = PgConnectOptions::from_str(url)
            .map_err(|e| OutboxError::InvalidOptions(format!("the outbox database URL is not valid: {e}")))?;
        if options.get_application_name().is_none() {
            options = options.application_name("onceq-relay");
        }
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        );
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        {
            // The first connection within `connect_timeout`, not the pool's longer acquire wait.
            let mut conn = tokio::time::timeout(connect_timeout, pool.acquire())
                .await
                .unwrap_or(Err(sqlx::Error::PoolTimedOut))
                .map_err(|e| from_sqlx(&format!("connecting to {target} (connect timeout {connect_timeout:?})"), e))?;
            outbox.migrate(&mut conn).await?;
        }
        let mut listener =
            PgListener::connect_with(&pool).await.map_err(|e| from_sqlx("connecting the outbox listener", e))?;
        listener.listen(outbox.channel()).await.map_err(|e| from_sqlx("listening for staged messages", e))?;
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(listen(pool.clone(), outbox.channel().to_owned(), listener, wake.clone()));
        let s = outbox.quoted();
        let claim_sql = format!(
            "SELECT m.id, m.destination, m.payload, m.headers::text AS headers, m.ordering_key, m.attempts \
             FROM {s}.messages m \
             WHERE m.sent_at IS NULL AND m.next_attempt_at <= now() \
               AND (m.ordering_key IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM {s}.messages e \
                    WHERE e.ordering_key = m.ordering_key AND e.sent_at IS NULL AND e.id < m.id)) \
             ORDER BY m.id \
             LIMIT $1 \
             FOR UPDATE OF m SKIP LOCKED"
        );
        Ok(PgSource {
            outbox,
            relay_id: format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
            blocked_ms: std::sync::atomic::AtomicU64::new(0),
            pool,
            target,
            claim_sql,
            wake,
            listener: std::sync::Mutex::new(Some(task)),
        })
    }
}

impl Drop for PgSource {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Receives notifications and wakes the relay until the pool closes (or the task is aborted);
/// after a reconnect it wakes the relay too, since notifications sent meanwhile are lost.
async fn listen(pool: PgPool, channel: String, mut listener: PgListener, wake: Arc<Notify>) {
    let mut retry_ms = LISTENER_RETRY_MS.0;
    loop {
        match listener.try_recv().await {
            Ok(Some(_)) => {
                wake.notify_one();
                retry_ms = LISTENER_RETRY_MS.0;
            }
            Ok(None) => {
                tracing::warn!(channel, "the outbox listener lost its connection; reconnecting");
                wake.notify_one();
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, channel, retry_ms, "the outbox listener failed; reconnecting");
                loop {
                    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                    retry_ms = (retry_ms * 2).min(LISTENER_RETRY_MS.1);
                    if pool.is_closed() {
                        return;
                    }
                    let fresh = async {
                        let mut fresh = PgListener::connect_with(&pool).await?;
                        fresh.listen(&channel).await?;
                        Ok::<_, sqlx::Error>(fresh)
                    };
                    match fresh.await {
                        Ok(fresh) => {
                            listener = fresh;
                            break;
                        }
                        Err(error) => tracing::warn!(%error, channel, "reconnecting the outbox listener failed"),
                    }
                }
                wake.notify_one();
            }
        }
    }
}

struct PgClaim {
    tx: Transaction<'static, Postgres>,
    messages: Vec<OutboxMessage>,
    quoted: String,
}

#[async_trait]
impl Claim for PgClaim {
    fn messages(&self) -> &[OutboxMessage] {
        &self.messages
    }

    async fn settle(self: Box<Self>, outcomes: Vec<(i64, Outcome)>, delete_sent: bool) -> Result<()> {
        let PgClaim { mut tx, quoted: s, .. } = *self;
        let mut sent = Vec::new();
        let (mut retry_ids, mut retry_delays, mut retry_errors) = (Vec::new(), Vec::new(), Vec::new());
        let (mut park_ids, mut park_errors) = (Vec::new(), Vec::new());
        for (id, outcome) in outcomes {
            match outcome {
                Outcome::Sent => sent.push(id),
                Outcome::Retry { delay_ms, error } => {
                    retry_ids.push(id);
                    retry_delays.push(i64::try_from(delay_ms).unwrap_or(i64::MAX));
                    retry_errors.push(truncate_error_text(&error));
                }
                Outcome::Park { error } => {
                    park_ids.push(id);
                    park_errors.push(truncate_error_text(&error));
                }
            }
        }
        let fail = |context: &'static str| move |e| from_sqlx(context, e);
        if !sent.is_empty() {
            let sql = if delete_sent {
                format!("DELETE FROM {s}.messages WHERE id = ANY($1)")
            } else {
                format!("UPDATE {s}.messages SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)")
            };
            sqlx::query(&sql).bind(&sent).execute(&mut *tx).await.map_err(fail("marking outbox messages sent"))?;
        }
        if !retry_ids.is_empty() {
            sqlx::query(&format!(
                "UPDATE {s}.messages m SET attempts = m.attempts + 1, last_error = d.error, \
                        next_attempt_at = clock_timestamp() + d.delay_ms * interval '1 millisecond' \
                 FROM unnest($1::int8[], $2::int8[], $3::text[]) AS d(id, delay_ms, error) WHERE m.id = d.id"
            ))
            .bind(&retry_ids)
            .bind(&retry_delays)
            .bind(&retry_errors)
            .execute(&mut *tx)
            .await
            .map_err(fail("scheduling outbox retries"))?;
        }
        if !park_ids.is_empty() {
            sqlx::query(&format!(
                "WITH moved AS ( \
                     DELETE FROM {s}.messages m USING unnest($1::int8[], $2::text[]) AS d(id, error) \
                     WHERE m.id = d.id \
                     RETURNING m.id, m.destination, m.payload, m.headers, m.ordering_key, m.created_at, m.attempts, \
                               d.error) \
                 INSERT INTO {s}.dead_letters (id, destination, payload, headers, ordering_key, created_at, attempts, \
                                              error) \
                 SELECT id, destination, payload, headers, ordering_key, created_at, attempts + 1, error FROM moved"
            ))
            .bind(&park_ids)
            .bind(&park_errors)
            .execute(&mut *tx)
            .await
            .map_err(fail("parking outbox messages"))?;
        }
        tx.commit().await.map_err(fail("committing the relay's marks"))
    }
}

#[async_trait]
impl Source for PgSource {
    fn describe(&self) -> String {
        format!("postgres {} schema {}", self.target, self.outbox.schema())
    }

    fn default_outbox_name(&self) -> String {
        self.outbox.schema().to_owned()
    }

    fn default_poll_interval(&self) -> Duration {
        POLL_INTERVAL_DEFAULT
    }

    async fn claim(&self, limit: u32) -> Result<Box<dyn Claim>> {
        let mut tx = self.pool.begin().await.map_err(|e| from_sqlx("starting a claim transaction", e))?;
        let rows = sqlx::query(&self.claim_sql)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| from_sqlx("claiming outbox messages", e))?;
        let messages = rows
            .iter()
            .map(|row| {
                let read = |e| from_sqlx("reading a claimed outbox message", e);
                let id: i64 = row.try_get("id").map_err(read)?;
                let headers: String = row.try_get("headers").map_err(read)?;
                let attempts: i32 = row.try_get("attempts").map_err(read)?;
                Ok(OutboxMessage {
                    id,
                    destination: row.try_get("destination").map_err(read)?,
                    payload: row.try_get("payload").map_err(read)?,
                    headers: headers_from_json(id, &headers)?,
                    ordering_key: row.try_get("ordering_key").map_err(read)?,
                    attempt: u32::try_from(attempts).unwrap_or(0).saturating_add(1),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(PgClaim { tx, messages, quoted: self.outbox.quoted().to_owned() }))
    }

    async fn prepare_sleep(&self, timeout: Duration) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let s = self.outbox.quoted();
        let until_ms = i64::try_from((timeout + SLEEPER_MARGIN).as_millis()).unwrap_or(i64::MAX);
        sqlx::query(&format!(
            "INSERT INTO {s}.sleepers (relay, until) VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond') \
             ON CONFLICT (relay) DO UPDATE SET until = excluded.until"
        ))
        .bind(&self.relay_id)
        .bind(until_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| from_sqlx("registering the relay as sleeping", e))?;
        let free: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('onceq_outbox.wake'), hashtext($1))")
                .bind(self.outbox.schema())
                .fetch_one(&self.pool)
                .await
                .map_err(|e| from_sqlx("taking the outbox wake lock", e))?;
        if free {
            self.blocked_ms.store(0, Ordering::Relaxed);
            return Ok(true);
        }
        let pause = self.blocked_ms.load(Ordering::Relaxed).max(SLEEP_BLOCKED_MS.0);
        self.blocked_ms.store((pause * 2).min(SLEEP_BLOCKED_MS.1), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        Ok(false)
    }

    async fn awake(&self) -> Result<()> {
        let s = self.outbox.quoted();
        sqlx::query(&format!("DELETE FROM {s}.sleepers WHERE relay = $1 OR until < now() - interval '1 hour'"))
            .bind(&self.relay_id)
            .execute(&self.pool)
            .await
            .map_err(|e| from_sqlx("withdrawing the relay's sleeping registration", e))?;
        Ok(())
    }

    async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
    }

    async fn next_due_ms(&self) -> Result<Option<i64>> {
        let s = self.outbox.quoted();
        sqlx::query_scalar::<_, Option<i64>>(&format!(
            "SELECT ceil(extract(epoch FROM min(next_attempt_at) - now()) * 1000)::int8 \
             FROM {s}.messages WHERE sent_at IS NULL AND next_attempt_at > now()"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| from_sqlx("reading when the next outbox message is due", e))
    }

    async fn purge_sent(&self, retention_ms: u64) -> Result<u64> {
        let s = self.outbox.quoted();
        // The ids are gathered once and deleted by key: as `id IN (...)`, statistics taken
        // while the table was nearly empty can make it a nested loop over every row.
        let sql = format!(
            "DELETE FROM {s}.messages WHERE id = ANY (ARRAY( \
                 SELECT id FROM {s}.messages WHERE sent_at < now() - $1 * interval '1 millisecond' LIMIT $2))"
        );
        let mut total = 0;
        loop {
            let done = sqlx::query(&sql)
                .bind(i64::try_from(retention_ms).unwrap_or(i64::MAX))
                .bind(PURGE_BATCH)
                .execute(&self.pool)
                .await
                .map_err(|e| from_sqlx("deleting sent outbox messages", e))?
                .rows_affected();
            total += done;
            if done < u64::try_from(PURGE_BATCH).unwrap_or(0) {
                return Ok(total);
            }
        }
    }

    async fn backlog(&self) -> Result<Backlog> {
        let s = self.outbox.quoted();
        let (pending, oldest_ms, parked): (i64, Option<i64>, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {s}.messages WHERE sent_at IS NULL), \
                    (SELECT greatest(0, (extract(epoch FROM now() - min(created_at)) * 1000))::int8 \
                     FROM {s}.messages WHERE sent_at IS NULL), \
                    (SELECT count(*) FROM {s}.dead_letters)"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| from_sqlx("reading the outbox backlog", e))?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest_pending_age_ms: oldest_ms.map(|ms| u64::try_from(ms).unwrap_or(0)),
            parked: u64::try_from(parked).unwrap_or(0),
        })
    }

    async fn close(&self) {
        if let Some(task) = self.listener.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        self.pool.close().await;
    }
}
