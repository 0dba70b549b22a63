//! Commits and producers (`onceq_core::commit`) on PostgreSQL: a commit is one database
//! transaction, so whatever fails in it rolls all of it back.
//!
//! In order, inside the transaction:
//! 1. **The commit id** (if any) is claimed by inserting its row; a second commit with the same
//!    id waits on the unique key until the first ends, then finds the row: the same digest
//!    replays the stored outcome, another digest is a `Conflict`. A row past its expiry is
//!    taken over. `Store::commit` first runs a commit with an id claiming it *last* instead:
//!    one insert of the row with the outcome at step 5, which waits the same way for a commit
//!    in flight with the id. If it finds the id taken there, or anything fails before the
//!    commit, the transaction rolls back (nothing applied) and the commit runs again claiming
//!    first, which replays or meets the refusal again. A retry whose first run applied fails
//!    its fast run (its leases are gone) and replays on the second; the claim is one write of
//!    the row instead of two, and one statement fewer.
//! 2. **The fence**: the producer's row `FOR SHARE` (`FOR UPDATE` for a commit that saves a
//!    checkpoint on it), so that a registration (which updates it) waits for the commits of the
//!    old epoch in flight, and every commit after it sees the new epoch.
//! 3. **Every lease** is read at once; the stale ones are listed in `LeasesLost` and nothing
//!    applies. The live ones are not locked here: each settle judges its lease again as it
//!    writes it (step 4). A commit that settles by ack alone skips this read: its one ack
//!    statement judges every lease and lists every stale one, and a stale one rolls back the
//!    whole commit just the same.
//! 4. The settles and enqueues run the statements of the single calls on the transaction's
//!    connection; an item refused there (a lease that expired since step 3) rolls everything
//!    back as `LeasesLost`.
//! 5. The outcome is stored under the commit id, which lasts the longest dedup window of the
//!    queues the commit touched (read by the statement that stores it), and at least
//!    `COMMIT_REPLAY_MS_MIN`; a checkpoint is saved on the producer's row.
//!
//! A transaction PostgreSQL rolls back (deadlock, serialization failure) applied nothing and runs
//! again, up to `COMMIT_TRIES_MAX` times. A connection lost while `COMMIT` is in flight leaves
//! the outcome unknown: the error says to retry with the commit id, which replays the commit if
//! it applied.

use onceq_core::commit::{
    check_fence, leases_lost, replay, Commit, CommitEnqueued, CommitOutcome, Fence, ProducerId, Registration,
};
use onceq_core::limits::COMMIT_REPLAY_MS_MIN;
use onceq_core::store::validate;
use onceq_core::{Error, ItemResults, JobId, Result};
use sqlx::{Acquire, PgConnection, Row};

use crate::{row_id, Conn, PgStore};

const CLAIM: &str = "INSERT INTO {s}.commits (commit_id, digest, outcome, expires_at) VALUES ($2, $3, NULL, 0) \
                     ON CONFLICT (commit_id) DO NOTHING RETURNING 1";
const CLAIMED: &str = "SELECT digest, outcome::text AS outcome, expires_at > {now} AS live FROM {s}.commits \
                       WHERE commit_id = $2 FOR UPDATE";
const RECLAIM: &str = "UPDATE {s}.commits SET digest = $3, outcome = NULL, expires_at = 0 WHERE commit_id = $2";
/// When a commit's outcome expires: the longest dedup window of the queues it touched (`$5`,
/// read by the statement that stores the outcome, so it costs no round trip of its own), and at
/// least `$4`.
macro_rules! expires_at {
    () => {
        "{now} + least(greatest($4::int8, coalesce(
            (SELECT max((config->>'dedup_window_ms')::int8) FROM {s}.queues WHERE name = ANY($5::text[])), 0)),
            9223372036854775807 - {now})"
    };
}
/// Stores the outcome under the commit id claimed first (`$6`, the digest, is the claim's).
const RECORD: &str = concat!(
    "UPDATE {s}.commits SET outcome = $3::jsonb, expires_at = ",
    expires_at!(),
    " WHERE commit_id = $2 AND digest = $6 RETURNING 1"
);
/// Claims the commit id and stores the outcome at once, at the end of a commit that claims last;
/// no row when the id is taken by a live outcome (or by a commit in flight, which this waits for).
const RECORD_NEW: &str = concat!(
    "INSERT INTO {s}.commits AS c (commit_id, digest, outcome, expires_at) VALUES ($2, $6, $3::jsonb, ",
    expires_at!(),
    ") ON CONFLICT (commit_id) DO UPDATE SET digest = EXCLUDED.digest, outcome = EXCLUDED.outcome, \
     expires_at = EXCLUDED.expires_at WHERE c.expires_at <= {now} RETURNING 1"
);
/// Commits of one producer share its row; one that saves a checkpoint (an update of the row)
/// takes it for update from the start, since two sharers that both upgraded would deadlock.
const FENCE: &str = "SELECT epoch FROM {s}.producers WHERE id = $2 FOR SHARE";
const FENCE_FOR_UPDATE: &str = "SELECT epoch FROM {s}.producers WHERE id = $2 FOR UPDATE";
/// How many times a commit PostgreSQL rolled back (deadlock, serialization failure) runs.
const COMMIT_TRIES_MAX: u32 = 4;
const CHECKPOINT: &str = "UPDATE {s}.producers SET checkpoint = $3::jsonb WHERE id = $2";
const REGISTER: &str =
    "INSERT INTO {s}.producers AS p (id, epoch, checkpoint, registered_at) VALUES ($2, 1, NULL, {now}) \
                        ON CONFLICT (id) DO UPDATE SET epoch = p.epoch + 1, registered_at = EXCLUDED.registered_at \
                        RETURNING epoch, checkpoint::text AS checkpoint";
/// The live leases among the items, with their queue. Read, not locked: a row lock writes
/// every tuple (and its WAL record) just before the settle writes it again, and the settles
/// judge each lease themselves. A lease that stops being live between this read and its settle
/// (it expired, or its holder settled it) is refused there, which rolls the commit back.
const LIVE: &str = r#"
SELECT j.id, q.name
FROM unnest($2::int8[], $3::bytea[]) AS i(id, token)
JOIN {s}.jobs j ON j.id = i.id AND j.state = 2 AND j.lease_token = i.token AND j.lease_expires_at > {now}
JOIN {s}.queues q ON q.id = j.queue_id
"#;
const PRODUCER: &str = "SELECT epoch, checkpoint::text AS checkpoint, {now} AS now FROM {s}.producers WHERE id = $2";

/// When a commit claims its id (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Before anything else: a second commit with the id waits for the first, then replays.
    First,
    /// With the outcome, at the end: one write of the id's row and one statement fewer. A commit
    /// that finds the id taken there, or fails before it commits, runs again claiming first.
    Last,
}

/// Whose transaction a commit runs in.
#[derive(Debug, Clone, Copy)]
enum Txn {
    /// The store's own (`Store::commit`).
    Own,
    /// The caller's (`PgStore::commit_in`).
    Caller,
}

impl Txn {
    /// `tx` as the single calls' code takes it.
    fn conn(self, tx: &mut PgConnection) -> Conn<'_> {
        match self {
            Txn::Own => Conn::Own(tx),
            Txn::Caller => Conn::Caller(tx),
        }
    }
}

/// How one try of a commit in a transaction of its own failed.
enum Tried {
    /// Rolled back: nothing applied.
    BeforeCommit(Error),
    /// `COMMIT` itself failed: the outcome is unknown.
    AtCommit(Error),
}

/// An item refused after the leases were checked live (one expired in between): the commit
/// rolls back as `LeasesLost` of those jobs.
fn all_applied<T>(ids: impl Iterator<Item = JobId>, results: ItemResults<T>) -> Result<()> {
    let mut stale = Vec::new();
    for (id, result) in ids.zip(results) {
        match result {
            Ok(_) => {}
            Err(Error::LeaseLost(_) | Error::JobNotFound(_)) => stale.push(id),
            Err(other) => return Err(other),
        }
    }
    if stale.is_empty() {
        Ok(())
    } else {
        Err(leases_lost(stale))
    }
}

impl PgStore {
    /// `Store::commit`: a commit in a transaction of its own, all of it or nothing (see the
    /// module docs).
    pub(crate) async fn commit_own(&self, commit: Commit) -> Result<CommitOutcome> {
        validate::commit(&commit)?;
        // A commit with an id first runs claiming it last; if that try finds the id taken, or
        // fails in any way before it commits, it rolled back and the commit runs again
        // claiming the id first, which replays a stored outcome or meets the refusal again.
        let mut claim = if commit.commit_id.is_some() { Claim::Last } else { Claim::First };
        // A transaction PostgreSQL rolls back for a deadlock (two commits creating the same
        // queues in another order, say) applied nothing: it runs again, a few times.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.commit_once(commit.clone(), claim).await {
                Ok(Some(outcome)) => return Ok(outcome),
                Err(Tried::BeforeCommit(error)) if claim == Claim::Last => {
                    tracing::debug!(%error, "a commit that claims its id last failed; running it claiming the id first");
                    claim = Claim::First;
                }
                Ok(None) => claim = Claim::First,
                Err(Tried::BeforeCommit(error))
                    if crate::error::rolled_back_error(&error) && tries < COMMIT_TRIES_MAX =>
                {
                    tracing::debug!(%error, tries, "a commit was rolled back by PostgreSQL; running it again");
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(tries) * 5)).await;
                }
                Err(Tried::BeforeCommit(error) | Tried::AtCommit(error)) => return Err(error),
            }
        }
    }

    /// One try of [`commit_own`](Self::commit_own); `None` when the commit id was found taken
    /// at the end (rolled back: nothing applied).
    async fn commit_once(&self, commit: Commit, claim: Claim) -> std::result::Result<Option<CommitOutcome>, Tried> {
        let target = &self.inner.target;
        let mut conn = self
            .acquire_conn()
            .await
            .map_err(|e| Tried::BeforeCommit(crate::error::map(target, "starting a commit", e)))?;
        let mut tx =
            conn.begin().await.map_err(|e| Tried::BeforeCommit(crate::error::map(target, "starting a commit", e)))?;
        match self.commit_on(&mut tx, commit, claim, Txn::Own).await {
            Ok(Some(outcome)) => {
                tx.commit().await.map_err(|e| {
                    Tried::AtCommit(Error::Unavailable(format!(
                        "the commit's outcome is unknown ({}): retry it with its commit_id, which replays it if it applied",
                        crate::error::map(target, "committing", e)
                    )))
                })?;
                Ok(Some(outcome))
            }
            Ok(None) => {
                let _ = tx.rollback().await;
                Ok(None)
            }
            Err(error) => {
                let _ = tx.rollback().await;
                Err(Tried::BeforeCommit(error))
            }
        }
    }

    /// Applies a commit inside the caller's transaction: its settles and enqueues, with the
    /// caller's own writes, take effect if and only if the caller commits. After an error the
    /// caller must roll back (what ran before the error is part of its transaction). It counts in
    /// `onceq_commits_total` as it ran here, whatever the caller's transaction does next.
    pub async fn commit_in(&self, tx: &mut PgConnection, commit: Commit) -> Result<CommitOutcome> {
        let fence = commit.producer.clone();
        let result = match validate::commit(&commit) {
            Err(e) => Err(e),
            // Claimed first, the id is never found taken at the end.
            Ok(()) => self.commit_on(tx, commit, Claim::First, Txn::Caller).await.and_then(|outcome| {
                outcome.ok_or_else(|| Error::Storage("a commit that claimed its id first found it taken".into()))
            }),
        };
        onceq_core::commit::record(fence.as_ref(), &result);
        result
    }

    /// The commit on `tx` (see the module docs); `None` when it claims its id last and finds
    /// it taken (the caller rolls back and runs it again claiming first).
    async fn commit_on(
        &self,
        tx: &mut PgConnection,
        commit: Commit,
        claim: Claim,
        txn: Txn,
    ) -> Result<Option<CommitOutcome>> {
        let target = &self.inner.target;
        let map = |context: &'static str| move |e: sqlx::Error| crate::error::map(target, context, e);
        let now = self.now_param();
        // What the commit id is bound to (nothing to compute without one).
        let digest = commit.commit_id.as_ref().map(|_| commit.digest()).unwrap_or_default();
        if let (Some(id), Claim::First) = (&commit.commit_id, claim) {
            let claimed = sqlx::query(&self.sql(CLAIM))
                .bind(now)
                .bind(id.as_str())
                .bind(&digest)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map("claiming a commit id"))?;
            if claimed.is_none() {
                let row = sqlx::query(&self.sql(CLAIMED))
                    .bind(now)
                    .bind(id.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map("reading a commit id"))?;
                let live: bool = row.try_get("live").map_err(map("reading a commit id"))?;
                if live {
                    let stored: String = row.try_get("digest").map_err(map("reading a commit id"))?;
                    let text: Option<String> = row.try_get("outcome").map_err(map("reading a commit id"))?;
                    let text =
                        text.ok_or_else(|| Error::Storage(format!("commit {id} is recorded without its outcome")))?;
                    return replay(id, &digest, &stored, &text).map(Some);
                }
                sqlx::query(&self.sql(RECLAIM))
                    .bind(now)
                    .bind(id.as_str())
                    .bind(&digest)
                    .execute(&mut *tx)
                    .await
                    .map_err(map("claiming a commit id"))?;
            }
        }
        if let Some(fence) = &commit.producer {
            self.check_fence(tx, fence, commit.checkpoint.is_some()).await?;
        }

        // The queues the commit touches: its commit id lasts the longest dedup window of them.
        let mut touched: Vec<String> = commit.enqueue.iter().map(|e| e.queue.as_str().to_owned()).collect();
        // Every lease live. A commit that settles by ack alone skips this read: the ack judges
        // every lease itself, and lists every stale one.
        let acks_alone = commit.nack.is_empty() && commit.fail.is_empty() && commit.release.is_empty();
        if !acks_alone {
            let leases: Vec<onceq_core::LeaseRef> = commit.leases().collect();
            let ids: Vec<i64> = leases.iter().map(|l| row_id(l.id).unwrap_or(-1)).collect();
            let tokens: Vec<&[u8]> = leases.iter().map(|l| &l.lease_token.as_bytes()[..]).collect();
            let rows = sqlx::query(&self.sql(LIVE))
                .bind(now)
                .bind(&ids)
                .bind(&tokens)
                .fetch_all(&mut *tx)
                .await
                .map_err(map("checking a commit's leases"))?;
            let mut live = std::collections::BTreeSet::new();
            for row in rows {
                live.insert(row.try_get::<i64, _>("id").map_err(map("checking a commit's leases"))?);
                touched.push(row.try_get("name").map_err(map("checking a commit's leases"))?);
            }
            let stale: Vec<JobId> =
                leases.iter().filter(|l| !row_id(l.id).is_some_and(|id| live.contains(&id))).map(|l| l.id).collect();
            if !stale.is_empty() {
                return Err(leases_lost(stale));
            }
        }

        let Commit { commit_id, producer, ack, nack, fail, release, enqueue, checkpoint } = commit;
        if !ack.is_empty() {
            let results = self.job_ack_queues(&mut txn.conn(&mut *tx), &ack).await?;
            let mut stale = Vec::new();
            for (a, result) in ack.iter().zip(results) {
                match result {
                    Ok(queue) => touched.push(queue),
                    Err(Error::LeaseLost(_) | Error::JobNotFound(_)) => stale.push(a.id),
                    Err(other) => return Err(other),
                }
            }
            if !stale.is_empty() {
                return Err(leases_lost(stale));
            }
        }
        if !nack.is_empty() {
            all_applied(nack.iter().map(|n| n.id), self.job_nack(&mut txn.conn(&mut *tx), &nack).await?)?;
        }
        if !fail.is_empty() {
            all_applied(fail.iter().map(|f| f.id), self.job_fail(&mut txn.conn(&mut *tx), &fail).await?)?;
        }
        if !release.is_empty() {
            all_applied(release.iter().map(|r| r.id), self.job_release(&mut txn.conn(&mut *tx), &release).await?)?;
        }
        let mut enqueued = Vec::with_capacity(enqueue.len());
        for batch in enqueue {
            let jobs = self.job_enqueue(&mut txn.conn(&mut *tx), &batch.queue, batch.jobs).await?;
            enqueued.push(CommitEnqueued { queue: batch.queue, jobs });
        }
        let outcome = CommitOutcome { enqueued, replayed: false };
        if let Some(id) = &commit_id {
            let text = outcome.to_stored();
            touched.sort_unstable();
            touched.dedup();
            let sql = match claim {
                Claim::First => RECORD,
                Claim::Last => RECORD_NEW,
            };
            let recorded = sqlx::query(&self.sql(sql))
                .bind(now)
                .bind(id.as_str())
                .bind(text)
                .bind(crate::to_i64(COMMIT_REPLAY_MS_MIN))
                .bind(&touched)
                .bind(&digest)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map("recording a commit id"))?;
            if recorded.is_none() {
                return Ok(None);
            }
        }
        if let (Some(fence), Some(checkpoint)) = (&producer, &checkpoint) {
            let text = serde_json::to_string(checkpoint)
                .map_err(|e| Error::Storage(format!("cannot encode a checkpoint: {e}")))?;
            sqlx::query(&self.sql(CHECKPOINT))
                .bind(now)
                .bind(fence.producer.as_str())
                .bind(text)
                .execute(&mut *tx)
                .await
                .map_err(map("saving a checkpoint"))?;
        }
        Ok(Some(outcome))
    }

    /// `Fenced` when a newer epoch of the producer registered; invalid when this one was never
    /// issued. Holds the producer's row until the transaction ends: `FOR SHARE`, or `FOR
    /// UPDATE` when the commit will save a checkpoint on it.
    async fn check_fence(&self, tx: &mut PgConnection, fence: &Fence, checkpoint: bool) -> Result<()> {
        let current: Option<i64> = sqlx::query_scalar(&self.sql(if checkpoint { FENCE_FOR_UPDATE } else { FENCE }))
            .bind(self.now_param())
            .bind(fence.producer.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| crate::error::map(&self.inner.target, "reading a producer", e))?;
        check_fence(fence, current)
    }

    /// `Store::producer_get`: epoch 0 when the producer never registered.
    pub(crate) async fn read_producer(&self, producer: &ProducerId) -> Result<Registration> {
        let sql = self.sql(PRODUCER);
        let now = self.now_param();
        let row = self
            .run("reading a producer", || {
                crate::conns::pooled!(self, sqlx::query(&sql).bind(now).bind(producer.as_str()), fetch_optional)
            })
            .await?;
        let decode = |e: sqlx::Error| crate::error::map(&self.inner.target, "reading a producer", e);
        let (epoch, checkpoint): (i64, Option<String>) = match row {
            Some(row) => (row.try_get("epoch").map_err(decode)?, row.try_get("checkpoint").map_err(decode)?),
            None => (0, None),
        };
        Registration::from_stored(producer, epoch, checkpoint.as_deref())
    }

    /// `Store::producer_register`: a new epoch, which fences every older one (it waits for
    /// their commits in flight), and the checkpoint of its last commit that carried one.
    pub(crate) async fn register_producer(&self, producer: &ProducerId) -> Result<Registration> {
        let sql = self.sql(REGISTER);
        let now = self.now_param();
        let row = self
            .run("registering a producer", || {
                crate::conns::pooled!(self, sqlx::query(&sql).bind(now).bind(producer.as_str()), fetch_one)
            })
            .await?;
        let decode = |e: sqlx::Error| crate::error::map(&self.inner.target, "registering a producer", e);
        let epoch: i64 = row.try_get("epoch").map_err(decode)?;
        let checkpoint: Option<String> = row.try_get("checkpoint").map_err(decode)?;
        Registration::from_stored(producer, epoch, checkpoint.as_deref())
    }
}
