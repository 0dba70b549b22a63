//! The SQL of commits and producers (`onceq_core::commit`): a commit's settles and enqueues run
//! in the writer's transaction after every check, so that it applies whole or not at all; its
//! id, content digest and outcome are kept for replay; a producer's epoch fences older ones.
//!
//! The writer runs no savepoint per request (module `writer`): a request that fails a check
//! must not have written anything. So a commit checks everything first — the replay, the fence,
//! every lease, every enqueue against its queue — and only then applies its parts, through the
//! same code as the single calls, whose item checks then cannot fail (nothing else runs in
//! between). A part that fails anyway is a storage error, which rolls the whole group back.

use onceq_core::commit::{
    check_fence, leases_lost, replay, Commit, CommitEnqueued, CommitOutcome, Fence, ProducerId, Registration,
};
use onceq_core::limits::COMMIT_REPLAY_MS_MIN;
use onceq_core::store::validate;
use onceq_core::{Error, ItemResults, JobId, QueueConfig, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{storage, to_i64};
use crate::writer::cache::State;

/// Turns the per-item results of a part whose leases were all checked live into one result: an
/// item that fails anyway is a storage error (the group rolls back).
fn all_applied<T>(part: &str, results: ItemResults<T>) -> Result<()> {
    match results.into_iter().find_map(|r| r.err()) {
        None => Ok(()),
        Some(e) => Err(Error::Storage(format!("a commit's {part} failed after its leases were checked live: {e}"))),
    }
}

/// A producer as stored, epoch 0 when it never registered.
pub(crate) fn producer_get(conn: &Connection, producer: &ProducerId) -> Result<Registration> {
    let row: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT epoch, checkpoint FROM producers WHERE id = ?1")
        .and_then(|mut s| s.query_row([producer.as_str()], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(storage("reading a producer"))?;
    let (epoch, checkpoint) = row.unwrap_or((0, None));
    Registration::from_stored(producer, epoch, checkpoint.as_deref())
}

impl State {
    /// Applies `commit` (validated by the caller), or nothing. `digest` is the commit's
    /// ([`Commit::digest`], computed by the caller off the writer's thread) when it has an id.
    pub(crate) fn commit(
        &mut self,
        conn: &Connection,
        commit: Commit,
        digest: Option<String>,
    ) -> Result<CommitOutcome> {
        let now = self.now.as_millis();
        let digest = digest.unwrap_or_default();
        // A retry: the same id within its window returns the first outcome and applies nothing.
        if let Some(id) = &commit.commit_id {
            let stored: Option<(String, String)> = conn
                .prepare_cached("SELECT digest, outcome FROM commits WHERE commit_id = ?1 AND expires_at > ?2")
                .and_then(|mut s| s.query_row(params![id.as_str(), now], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(storage("reading a commit id"))?;
            if let Some((stored_digest, outcome)) = stored {
                return replay(id, &digest, &stored_digest, &outcome);
            }
        }
        if let Some(fence) = &commit.producer {
            self.check_fence(conn, fence)?;
        }
        // Every lease live, and how long the commit id is remembered: the longest dedup window
        // of the queues it touches, and at least COMMIT_REPLAY_MS_MIN.
        let mut window_ms = COMMIT_REPLAY_MS_MIN;
        // The acks are judged by the ack's own reads, which it then applies without reading again.
        let (acked, ack_plan) = self.ack_find(conn, &commit.ack)?;
        let mut stale: Vec<JobId> = acked
            .into_iter()
            .zip(&commit.ack)
            .filter_map(|(judged, ack)| match judged {
                Ok(()) => None,
                Err(Error::LeaseLost(_) | Error::JobNotFound(_)) => Some(Ok(ack.id)),
                Err(other) => Some(Err(other)),
            })
            .collect::<Result<_>>()?;
        for queue_id in ack_plan.queue_ids() {
            window_ms = window_ms.max(self.config_of(queue_id).map_or(0, |c| c.dedup_window_ms));
        }
        // Jobs the commit takes out of each queue (its acks and fails), credited against the
        // queue's max_depth: its enqueues are judged as if its settles had applied first.
        let mut leaving: Vec<(i64, u64)> = ack_plan.queue_ids().map(|id| (id, ack_plan.acked_in(id))).collect();
        let fails = commit.nack.len()..commit.nack.len() + commit.fail.len();
        for (i, lease) in commit.leases().skip(commit.ack.len()).enumerate() {
            match self.live_lease(conn, lease.id, &lease.lease_token) {
                Ok(live) => {
                    let window = self.config_of(live.queue_id).map_or(0, |c| c.dedup_window_ms);
                    window_ms = window_ms.max(window);
                    if fails.contains(&i) {
                        leaving.push((live.queue_id, 1));
                    }
                }
                Err(Error::LeaseLost(id) | Error::JobNotFound(id)) => stale.push(id),
                Err(other) => return Err(other),
            }
        }
        if !stale.is_empty() {
            return Err(leases_lost(stale));
        }
        for batch in &commit.enqueue {
            validate::run_at_horizon(&batch.jobs, self.now)?;
            // A queue the enqueue creates has the default config, which asks for nothing.
            let window = match self.queues.get(&batch.queue) {
                Some(entry) => {
                    validate::enqueue_into(&batch.queue, &entry.config, &batch.jobs)?;
                    let credit = leaving.iter().filter(|(id, _)| *id == entry.id).map(|(_, n)| n).sum();
                    self.flow_depth(&batch.queue, batch.jobs.len(), credit)?;
                    entry.config.dedup_window_ms
                }
                None => QueueConfig::default().dedup_window_ms,
            };
            window_ms = window_ms.max(window);
        }

        // Checked: apply.
        let Commit { commit_id, producer, ack: _, nack, fail, release, enqueue, checkpoint } = commit;
        self.ack_apply(conn, ack_plan)?;
        if !nack.is_empty() {
            all_applied("nack", self.job_nack(conn, &nack)?)?;
        }
        if !fail.is_empty() {
            all_applied("fail", self.job_fail(conn, &fail)?)?;
        }
        if !release.is_empty() {
            all_applied("release", self.job_release(conn, &release)?)?;
        }
        let mut enqueued = Vec::with_capacity(enqueue.len());
        for batch in enqueue {
            let jobs = self.job_enqueue(conn, &batch.queue, batch.jobs)?;
            enqueued.push(CommitEnqueued { queue: batch.queue, jobs });
        }
        let outcome = CommitOutcome { enqueued, replayed: false };
        if let Some(id) = &commit_id {
            let text = outcome.to_stored();
            conn.prepare_cached(
                "INSERT OR REPLACE INTO commits (commit_id, digest, outcome, expires_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![id.as_str(), digest, text, now.saturating_add(to_i64(window_ms))]))
            .map_err(storage("recording a commit id"))?;
        }
        if let (Some(fence), Some(checkpoint)) = (&producer, &checkpoint) {
            let text = serde_json::to_string(checkpoint)
                .map_err(|e| Error::Storage(format!("cannot encode a checkpoint: {e}")))?;
            conn.prepare_cached("UPDATE producers SET checkpoint = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![fence.producer.as_str(), text]))
                .map_err(storage("saving a checkpoint"))?;
        }
        Ok(outcome)
    }

    /// `Fenced` when a newer epoch of the producer registered; invalid when this epoch was
    /// never issued.
    fn check_fence(&self, conn: &Connection, fence: &Fence) -> Result<()> {
        let current: Option<i64> = conn
            .prepare_cached("SELECT epoch FROM producers WHERE id = ?1")
            .and_then(|mut s| s.query_row([fence.producer.as_str()], |r| r.get(0)).optional())
            .map_err(storage("reading a producer"))?;
        check_fence(fence, current)
    }

    /// Registers `producer` (again): a new epoch, which fences every older one; returns it with
    /// the checkpoint of the producer's last commit that carried one.
    pub(crate) fn producer_register(&mut self, conn: &Connection, producer: &ProducerId) -> Result<Registration> {
        let (epoch, checkpoint): (i64, Option<String>) = conn
            .prepare_cached(
                "INSERT INTO producers (id, epoch, checkpoint, registered_at) VALUES (?1, 1, NULL, ?2) \
                 ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1, registered_at = excluded.registered_at \
                 RETURNING epoch, checkpoint",
            )
            .and_then(|mut s| {
                s.query_row(params![producer.as_str(), self.now.as_millis()], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .map_err(storage("registering a producer"))?;
        Registration::from_stored(producer, epoch, checkpoint.as_deref())
    }
}
