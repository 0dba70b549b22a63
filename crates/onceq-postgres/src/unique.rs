//! Unique jobs (`onceq_core::unique`): an enqueue batch with a unique job runs here, in a
//! transaction, instead of the one-statement enqueue.
//!
//! One record per (queue, key) in `unique_keys` names the job that took the key last. An
//! enqueue takes a transaction-scoped advisory lock per key (in key order, so two batches never
//! wait on each other in a cycle), then reads the records and their jobs in a statement of its
//! own: whoever held the lock before has committed by then, so its job and record are seen.
//! Keys held by their record's job make duplicates; the rest of the batch goes through the
//! plain enqueue statement in the same transaction, and the records of the jobs it created are
//! written before the commit releases the locks. Servers sharing a schema share the locks, so
//! racing enqueues of one key create one job however many servers take them.
//!
//! Inside a caller's transaction the locks are held until it ends, and its isolation must be
//! read committed (the default): a repeatable-read snapshot taken before the lock would not see
//! the job another transaction just created.

use std::collections::HashMap;

use onceq_core::{Enqueued, Error, QueueName, Result, UniqueWhile};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::due::decode;
use crate::jobs::{Batch, ResolvedQueue, QUEUE_RESOLVE_TRIES_MAX};
use crate::{job_id, Conn, PgStore};

/// Takes the advisory lock of each key (`$1`, sorted), waiting for transactions that hold one.
/// `unnest` yields the keys in array order, so the locks are taken in that order.
const UNIQUE_LOCK: &str = "SELECT count(pg_advisory_xact_lock(hashtext('onceq.unique {s}'), k)) \
                           FROM unnest($1::int4[]) AS k";

/// The records of keys `$2` in queue `$1`, with the state of each record's job if it is still
/// in the queue.
const UNIQUE_HOLDERS: &str = "SELECT k.unique_key, k.job_id, k.held_while, k.expires_at, j.state \
                              FROM {s}.unique_keys k LEFT JOIN {s}.jobs j ON j.id = k.job_id AND j.queue_id = k.queue_id \
                              WHERE k.queue_id = $1 AND k.unique_key = ANY($2::bytea[])";

/// Records the jobs that took keys: `$1` the queue, then the keys, jobs, rules and window ends.
const UNIQUE_RECORD: &str = "INSERT INTO {s}.unique_keys (queue_id, unique_key, job_id, held_while, expires_at) \
                             SELECT $1, k, j, w, e FROM unnest($2::bytea[], $3::int8[], $4::int2[], $5::int8[]) \
                                 AS u(k, j, w, e) \
                             ON CONFLICT (queue_id, unique_key) DO UPDATE SET job_id = EXCLUDED.job_id, \
                                 held_while = EXCLUDED.held_while, expires_at = EXCLUDED.expires_at";

/// What became of one job of the batch before the insert.
enum Fate {
    /// Its key is held by this job already: a duplicate.
    Held(i64),
    /// Its key was taken by an earlier job of the batch (by position).
    SameAs(usize),
    /// It goes in: its place in the inserted sub-batch.
    Insert(usize),
}

impl PgStore {
    /// Enqueues a batch that holds a unique job: in a transaction of its own on the pool, or in
    /// the transaction `conn` is in.
    pub(crate) async fn job_enqueue_unique(
        &self,
        conn: &mut Conn<'_>,
        queue: &QueueName,
        batch: Batch,
    ) -> Result<(Vec<Enqueued>, i64)> {
        if !matches!(conn, Conn::Pool) {
            return self.unique_in(conn, queue, batch).await;
        }
        let map = |e| crate::error::map(&self.inner.target, "enqueueing unique jobs", e);
        let mut pooled = self.acquire_conn().await.map_err(map)?;
        let mut tx = sqlx::Connection::begin(&mut *pooled).await.map_err(map)?;
        let out = self.unique_in(&mut Conn::Own(&mut tx), queue, batch).await?;
        tx.commit().await.map_err(map)?;
        Ok(out)
    }

    async fn unique_in(&self, conn: &mut Conn<'_>, queue: &QueueName, batch: Batch) -> Result<(Vec<Enqueued>, i64)> {
        // The batch holds the payloads apart from the jobs.
        let keys: Vec<Option<Vec<u8>>> = batch
            .jobs
            .iter()
            .zip(&batch.payloads)
            .map(|(job, payload)| job.unique.map(|u| u.key_of(job.dedup_id.as_deref(), payload)).transpose())
            .collect::<Result<_>>()?;
        for _ in 0..QUEUE_RESOLVE_TRIES_MAX {
            let Some(resolved) = self.resolve_queue(conn, queue, &batch.jobs).await? else { continue };
            let ResolvedQueue { now, id: queue_id, config, config_text } = resolved;
            let mut locks: Vec<i32> = keys.iter().flatten().map(|key| lock_of(queue_id, key)).collect();
            locks.sort_unstable();
            locks.dedup();
            let lock = self.sql(UNIQUE_LOCK);
            self.fetch_all(conn, "locking unique keys", || sqlx::query(&lock).bind(&locks)).await?;
            let wanted: Vec<&[u8]> = keys.iter().flatten().map(Vec::as_slice).collect();
            let holders_sql = self.sql(UNIQUE_HOLDERS);
            let rows = self
                .fetch_all(conn, "reading unique keys", || sqlx::query(&holders_sql).bind(queue_id).bind(&wanted))
                .await?;
            let mut holders: HashMap<Vec<u8>, i64> = HashMap::new();
            for row in rows {
                let key: Vec<u8> = row.try_get("unique_key").map_err(decode)?;
                let holder: i64 = row.try_get("job_id").map_err(decode)?;
                let rule = UniqueWhile::from_code(i64::from(row.try_get::<i16, _>("held_while").map_err(decode)?))?;
                let expires_at: Option<i64> = row.try_get("expires_at").map_err(decode)?;
                let job_state: Option<i16> = row.try_get("state").map_err(decode)?;
                let held = match rule {
                    UniqueWhile::Window => expires_at.is_some_and(|at| at > now),
                    rule => job_state.map(crate::jobs::job_state).transpose()?.is_some_and(|s| rule.holds(s)),
                };
                if held {
                    holders.insert(key, holder);
                }
            }
            // Judge the batch in request order: a key taken by an earlier job of the batch is
            // that job's.
            let mut fates = Vec::with_capacity(batch.jobs.len());
            let mut taken: HashMap<&[u8], usize> = HashMap::new();
            let mut inserted = 0;
            for (i, key) in keys.iter().enumerate() {
                let fate = match key {
                    Some(key) if holders.contains_key(key) => Fate::Held(holders[key]),
                    Some(key) if taken.contains_key(key.as_slice()) => Fate::SameAs(taken[key.as_slice()]),
                    _ => {
                        if let Some(key) = key {
                            taken.insert(key, i);
                        }
                        inserted += 1;
                        Fate::Insert(inserted - 1)
                    }
                };
                fates.push(fate);
            }
            let sub = batch.subset(fates.iter().map(|f| matches!(f, Fate::Insert(_))));
            let created = if sub.jobs.is_empty() {
                Vec::new()
            } else {
                let done =
                    self.insert_bounded(conn, queue, &sub, Some(now), queue_id, &config, Some(&config_text)).await?;
                let Some((created, _)) = done else { continue };
                created
            };
            // The records of the jobs created with a key (one a dedup id made a duplicate
            // created nothing, and takes no key).
            let (mut record_keys, mut record_jobs, mut record_rules, mut record_ends) =
                (vec![], vec![], vec![], vec![]);
            for (i, fate) in fates.iter().enumerate() {
                if let (Fate::Insert(k), Some(key), Some(rule)) = (fate, &keys[i], batch.jobs[i].unique) {
                    let enqueued = created[*k];
                    if !enqueued.duplicate {
                        record_keys.push(key.as_slice());
                        record_jobs.push(crate::to_i64(enqueued.id.get()));
                        record_rules.push(rule.held_while.code());
                        record_ends.push(rule.window_ms.map(|ms| crate::plus_ms(now, ms)));
                    }
                }
            }
            if !record_keys.is_empty() {
                let record = self.sql(UNIQUE_RECORD);
                self.fetch_all(conn, "recording unique keys", || {
                    sqlx::query(&record)
                        .bind(queue_id)
                        .bind(&record_keys)
                        .bind(&record_jobs)
                        .bind(&record_rules)
                        .bind(&record_ends)
                })
                .await?;
            }
            let mut out: Vec<Enqueued> = Vec::with_capacity(fates.len());
            for fate in &fates {
                let enqueued = match *fate {
                    Fate::Held(holder) => Enqueued { id: job_id(holder), duplicate: true },
                    Fate::SameAs(first) => Enqueued { id: out[first].id, duplicate: true },
                    Fate::Insert(k) => created[k],
                };
                out.push(enqueued);
            }
            return Ok((out, now));
        }
        Err(Error::Unavailable(format!(
            "queue {queue} was created or deleted again and again while this enqueue ran; nothing was enqueued, retry"
        )))
    }
}

/// The advisory lock of `key` in queue `queue_id`: 32 bits of a SHA-256, the same in every
/// process and build (two keys that share a lock only wait for each other).
fn lock_of(queue_id: i64, key: &[u8]) -> i32 {
    let digest = Sha256::new().chain_update(queue_id.to_be_bytes()).chain_update(key).finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_depend_on_queue_and_key_only() {
        assert_eq!(lock_of(1, b"pk"), lock_of(1, b"pk"));
        assert_ne!(lock_of(1, b"pk"), lock_of(2, b"pk"));
        assert_ne!(lock_of(1, b"pk"), lock_of(1, b"pl"));
    }
}
