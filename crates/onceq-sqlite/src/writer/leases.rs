//! The SQL of what a lease's holder does: ack, nack, release, extend and fail, each fenced by
//! the lease's token and expiry (Invariant 3).

use onceq_core::metrics as names;
use onceq_core::{Error, Extend, Fail, ItemResults, JobId, LeaseRef, LeaseToken, Nack, NackOutcome, Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::{state, storage, to_i64, to_u32};
use crate::writer::cache::State;
use crate::writer::jobs::{delete_errors, record_error};

impl State {
    /// The live lease named by (id, token), or why it is not one.
    pub(super) fn live_lease(&self, conn: &Connection, id: JobId, token: &LeaseToken) -> Result<LiveLease> {
        let row = conn
            .prepare_cached(
                "SELECT queue_id, state, attempt, max_attempts, lease_token, lease_expires_at, ordering_key, \
                 cancelled_at IS NOT NULL FROM jobs WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([to_i64(id.get())], |r| {
                    Ok(LeaseRow {
                        queue_id: r.get(0)?,
                        state: r.get(1)?,
                        attempt: r.get(2)?,
                        max_attempts: r.get(3)?,
                        token: r.get(4)?,
                        expires_at: r.get(5)?,
                        ordering_key: r.get(6)?,
                        cancelled: r.get(7)?,
                    })
                })
                .optional()
            })
            .map_err(storage("reading a lease"))?;
        if let Some(row) = &row {
            self.touch_id(row.queue_id);
        }
        let Some(LeaseRow {
            queue_id,
            state: job_state,
            attempt,
            max_attempts,
            token: stored,
            expires_at,
            ordering_key,
            cancelled,
        }) = row
        else {
            metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => "").increment(1);
            return Err(Error::JobNotFound(id));
        };
        let live = job_state == state::LEASED
            && stored.as_deref() == Some(&token.as_bytes()[..])
            && expires_at.is_some_and(|at| self.now.as_millis() < at);
        if !live {
            metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => self.label(queue_id)).increment(1);
            return Err(Error::LeaseLost(id));
        }
        Ok(LiveLease { row_id: to_i64(id.get()), queue_id, attempt, max_attempts, ordering_key, cancelled })
    }

    pub(crate) fn job_ack(&mut self, conn: &Connection, acks: &[LeaseRef]) -> Result<ItemResults<()>> {
        let (out, plan) = self.ack_find(conn, acks)?;
        self.ack_apply(conn, plan)?;
        Ok(out)
    }

    /// The reads of an ack: each lease judged, and what acking the live ones takes. Writes
    /// nothing, so a commit can judge its acks with it before its first write.
    pub(super) fn ack_find(&self, conn: &Connection, acks: &[LeaseRef]) -> Result<(ItemResults<()>, AckPlan)> {
        let now = self.now.as_millis();
        // Each lease is checked by one point read; the live ones are then deleted with one
        // statement per id chunk. (A DELETE per job pays statement set-up and teardown, a cursor on
        // the table and on each index, per job; `DELETE ... RETURNING` builds an ephemeral table
        // per job and measured twice as costly; reading the batch with one IN list saved nothing.)
        let mut find = conn
            .prepare_cached(
                "SELECT queue_id, error_count, leased_at, ordering_key FROM jobs \
                 WHERE id = ?1 AND state = 2 AND lease_token = ?2 AND lease_expires_at > ?3",
            )
            .map_err(storage("acking a job"))?;
        let mut out = Vec::with_capacity(acks.len());
        let mut plan = AckPlan {
            doomed: Vec::with_capacity(acks.len()),
            with_errors: Vec::new(),
            settled: Settled { queues: Vec::new(), now: self.now },
            keys_moving_on: Vec::new(),
        };
        let repeats = {
            let mut ids: Vec<u64> = acks.iter().map(|ack| ack.id.get()).collect();
            ids.sort_unstable();
            ids.windows(2).any(|pair| pair[0] == pair[1])
        };
        for ack in acks {
            let row_id = to_i64(ack.id.get());
            // A job acked earlier in this call is gone, as if deleted already.
            let found: Option<(i64, i64, Option<i64>, Option<String>)> = if repeats && plan.doomed.contains(&row_id) {
                None
            } else {
                find.query_row(params![row_id, &ack.lease_token.as_bytes()[..], now], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
                .map_err(storage("acking a job"))?
            };
            out.push(match found {
                Some((queue_id, error_count, leased_at, ordering_key)) => {
                    plan.doomed.push(row_id);
                    if error_count > 0 {
                        plan.with_errors.push(row_id);
                    }
                    if let Some(key) = ordering_key.filter(|_| self.per_key(queue_id)) {
                        plan.keys_moving_on.push((queue_id, key, row_id));
                    }
                    plan.settled.add(queue_id, leased_at);
                    Ok(())
                }
                None if repeats && plan.doomed.contains(&row_id) => {
                    metrics::counter!(names::STALE_LEASE_REJECTIONS, "queue" => "").increment(1);
                    Err(Error::JobNotFound(ack.id))
                }
                None => match self.live_lease(conn, ack.id, &ack.lease_token) {
                    Ok(_) => Err(Error::Storage(format!("job {} has a live lease that ack could not delete", ack.id))),
                    Err(e) => Err(e),
                },
            });
        }
        Ok((out, plan))
    }

    /// The writes of an ack that [`State::ack_find`] planned, with nothing written in between:
    /// the live leases' jobs deleted, their keys moved on, the counts and metrics.
    pub(super) fn ack_apply(&mut self, conn: &Connection, plan: AckPlan) -> Result<()> {
        let AckPlan { doomed, with_errors, settled, keys_moving_on } = plan;
        for row_id in with_errors {
            delete_errors(conn, row_id)?;
        }
        let mut deleted = 0;
        for chunk in id_chunks(&doomed) {
            deleted += conn
                .prepare_cached(ACK_DELETE_SQL.get(chunk.len()))
                .and_then(|mut s| s.execute(rusqlite::params_from_iter(chunk)))
                .map_err(storage("acking a job"))?;
        }
        if deleted != doomed.len() {
            return Err(Error::Storage(format!("ack deleted {deleted} of {} live leases", doomed.len())));
        }
        for (queue_id, key, row_id) in keys_moving_on {
            let was_head = self.key_moves_on(conn, queue_id, &key, row_id)?;
            debug_assert!(was_head, "job {row_id} was leased in a per_key queue but was not the head of {key:?}");
        }
        // Counts and metrics once per queue, not per job: label strings and metric handles cost
        // more than the bookkeeping itself.
        for tally in settled.queues {
            self.count_move_n(tally.queue_id, Some(state::LEASED), None, tally.jobs);
            let label = self.label(tally.queue_id);
            metrics::counter!(names::ACKS, "queue" => label.clone()).increment(tally.jobs);
            if !tally.held_s.is_empty() {
                let histogram = metrics::histogram!(names::LEASE_TO_ACK, "queue" => label);
                for held in tally.held_s {
                    histogram.record(held);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn job_nack(&mut self, conn: &Connection, nacks: &[Nack]) -> Result<ItemResults<NackOutcome>> {
        let mut out = Vec::with_capacity(nacks.len());
        for nack in nacks {
            let lease = match self.live_lease(conn, nack.id, &nack.lease_token) {
                Ok(lease) => lease,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let text = nack.error.as_deref().unwrap_or("nacked");
            record_error(conn, lease.row_id, lease.attempt, text, self.now.as_millis())?;
            if lease.cancelled {
                self.settle_cancelled(conn, &lease, true)?;
                out.push(Ok(NackOutcome::Cancelled));
                continue;
            }
            if lease.attempt >= lease.max_attempts {
                self.settle_dead(conn, &lease)?;
                metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(lease.queue_id), "reason" => "attempts_exhausted")
                    .increment(1);
                out.push(Ok(NackOutcome::Dead));
                continue;
            }
            let delay_ms = match nack.delay_ms {
                Some(ms) => ms,
                None => {
                    let backoff = self
                        .names
                        .get(&lease.queue_id)
                        .and_then(|n| self.queues.get(n))
                        .map(|q| q.config.backoff.clone())
                        .unwrap_or_default();
                    backoff.delay_ms(to_u32(lease.attempt), &mut self.rng)
                }
            };
            let run_at = self.now.plus_ms(delay_ms);
            let to = if delay_ms == 0 { state::READY } else { state::SCHEDULED };
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = ?3, lease_token = NULL, lease_expires_at = NULL, \
                 error_count = error_count + 1 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![lease.row_id, to, run_at.as_millis()]))
            .map_err(storage("nacking a job"))?;
            if to == state::SCHEDULED {
                self.lower_next_due(run_at);
            }
            self.count_move(lease.queue_id, Some(state::LEASED), Some(to));
            metrics::counter!(names::REDELIVERIES, "queue" => self.label(lease.queue_id), "reason" => "nack")
                .increment(1);
            out.push(Ok(NackOutcome::Retrying { run_at }));
        }
        Ok(out)
    }

    pub(crate) fn job_release(
        &mut self,
        conn: &Connection,
        releases: &[onceq_core::Release],
    ) -> Result<ItemResults<()>> {
        let mut out = Vec::with_capacity(releases.len());
        for release in releases {
            let lease = match self.live_lease(conn, release.id, &release.lease_token) {
                Ok(lease) => lease,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if lease.cancelled {
                self.settle_cancelled(conn, &lease, false)?;
                out.push(Ok(()));
                continue;
            }
            // The lease did not count: the attempt it took is given back, and no error is kept.
            let delay_ms = release.delay_ms.unwrap_or(0);
            let run_at = self.now.plus_ms(delay_ms);
            let to = if delay_ms == 0 { state::READY } else { state::SCHEDULED };
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = ?3, attempt = max(attempt - 1, 0), lease_token = NULL, \
                 lease_expires_at = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![lease.row_id, to, run_at.as_millis()]))
            .map_err(storage("releasing a job"))?;
            if to == state::SCHEDULED {
                self.lower_next_due(run_at);
            }
            self.count_move(lease.queue_id, Some(state::LEASED), Some(to));
            metrics::counter!(names::REDELIVERIES, "queue" => self.label(lease.queue_id), "reason" => "released")
                .increment(1);
            out.push(Ok(()));
        }
        Ok(out)
    }

    /// The lease of a job cancelled while leased ended otherwise than by an ack: the job ends
    /// `cancelled` (with the error just recorded, if `errored`), and its key moves on.
    fn settle_cancelled(&mut self, conn: &Connection, lease: &LiveLease, errored: bool) -> Result<()> {
        self.end_cancelled(conn, lease.row_id, lease.queue_id, lease.ordering_key.as_deref(), errored)
    }

    /// Job `row_id`, leased and marked cancelled, ends `cancelled`: its lease is cleared, its
    /// key (in a `per_key` queue) moves on as when a job is acked, whatever `dead_blocks_key`
    /// says (a cancel is an operator's decision that the job is done with).
    pub(super) fn end_cancelled(
        &mut self,
        conn: &Connection,
        row_id: i64,
        queue_id: i64,
        ordering_key: Option<&str>,
        errored: bool,
    ) -> Result<()> {
        conn.prepare_cached(
            "UPDATE jobs SET state = 5, lease_token = NULL, lease_expires_at = NULL, \
             error_count = error_count + ?2 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![row_id, i64::from(errored)]))
        .map_err(storage("cancelling a job"))?;
        self.count_move(queue_id, Some(state::LEASED), Some(state::CANCELLED));
        metrics::counter!(names::JOBS_CANCELLED, "queue" => self.label(queue_id)).increment(1);
        if let Some(key) = ordering_key {
            if self.per_key(queue_id) {
                self.key_moves_on(conn, queue_id, key, row_id)?;
            }
        }
        Ok(())
    }

    fn settle_dead(&mut self, conn: &Connection, lease: &LiveLease) -> Result<()> {
        conn.prepare_cached(
            "UPDATE jobs SET state = 3, lease_token = NULL, lease_expires_at = NULL, error_count = error_count + 1 \
             WHERE id = ?1",
        )
        .and_then(|mut s| s.execute([lease.row_id]))
        .map_err(storage("dead-lettering a job"))?;
        self.count_move(lease.queue_id, Some(state::LEASED), Some(state::DEAD));
        self.key_after_death(conn, lease.queue_id, lease.ordering_key.as_deref(), lease.row_id)
    }

    pub(crate) fn job_extend(&mut self, conn: &Connection, extends: &[Extend]) -> Result<ItemResults<Timestamp>> {
        let mut out = Vec::with_capacity(extends.len());
        for extend in extends {
            out.push(match self.live_lease(conn, extend.id, &extend.lease_token) {
                // The holder learns of the cancel here, and its lease stays as it was.
                Ok(lease) if lease.cancelled => Err(Error::JobCancelled(extend.id)),
                Ok(lease) => {
                    let expires_at = self.now.plus_ms(extend.visibility_timeout_ms);
                    conn.prepare_cached("UPDATE jobs SET lease_expires_at = ?2 WHERE id = ?1")
                        .and_then(|mut s| s.execute(params![lease.row_id, expires_at.as_millis()]))
                        .map_err(storage("extending a lease"))?;
                    self.lower_next_due(expires_at);
                    metrics::counter!(names::LEASE_EXTENSIONS, "queue" => self.label(lease.queue_id)).increment(1);
                    Ok(expires_at)
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }

    pub(crate) fn job_fail(&mut self, conn: &Connection, fails: &[Fail]) -> Result<ItemResults<()>> {
        let mut out = Vec::with_capacity(fails.len());
        for fail in fails {
            out.push(match self.live_lease(conn, fail.id, &fail.lease_token) {
                Ok(lease) if lease.cancelled => {
                    record_error(conn, lease.row_id, lease.attempt, &fail.error, self.now.as_millis())?;
                    self.settle_cancelled(conn, &lease, true)?;
                    Ok(())
                }
                Ok(lease) => {
                    record_error(conn, lease.row_id, lease.attempt, &fail.error, self.now.as_millis())?;
                    self.settle_dead(conn, &lease)?;
                    metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(lease.queue_id), "reason" => "failed")
                        .increment(1);
                    Ok(())
                }
                Err(e) => Err(e),
            });
        }
        Ok(out)
    }
}

/// Sizes of the id lists of batched statements, largest first: `n` ids run as one statement per
/// set bit of `n` (100 = 64 + 32 + 4), and each size is one cached statement.
const ID_CHUNKS: [usize; 8] = [128, 64, 32, 16, 8, 4, 2, 1];

/// Splits `ids` into chunks whose sizes are in [`ID_CHUNKS`].
fn id_chunks(ids: &[i64]) -> impl Iterator<Item = &[i64]> {
    let mut rest = ids;
    std::iter::from_fn(move || {
        let size = ID_CHUNKS.iter().copied().find(|&size| size <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// A statement over a list of ids, one text per size in [`ID_CHUNKS`], made on first use.
struct IdListSql {
    /// The statement with `{ids}` where the list goes.
    template: &'static str,
    texts: std::sync::OnceLock<Vec<String>>,
}

impl IdListSql {
    const fn new(template: &'static str) -> Self {
        IdListSql { template, texts: std::sync::OnceLock::new() }
    }

    /// The text for `n` ids (`n` one of [`ID_CHUNKS`]): `?1, ..., ?n` in place of `{ids}`.
    fn get(&self, n: usize) -> &str {
        let texts = self.texts.get_or_init(|| {
            ID_CHUNKS
                .iter()
                .map(|&size| {
                    let list: Vec<String> = (1..=size).map(|i| format!("?{i}")).collect();
                    self.template.replace("{ids}", &list.join(", "))
                })
                .collect()
        });
        let index = ID_CHUNKS.iter().position(|&size| size == n).unwrap_or(ID_CHUNKS.len() - 1);
        texts.get(index).map_or("", String::as_str)
    }
}

/// Deletes acked jobs, each already found leased with the presented token.
static ACK_DELETE_SQL: IdListSql = IdListSql::new("DELETE FROM jobs WHERE id IN ({ids}) AND state = 2");

/// Jobs of one queue settled by one call.
struct QueueTally {
    queue_id: i64,
    jobs: u64,
    /// Seconds from lease to settle, of each job whose lease start is known.
    held_s: Vec<f64>,
}

/// What acking the live leases of an ack call takes ([`State::ack_find`]).
pub(super) struct AckPlan {
    /// Row ids of the jobs to delete.
    doomed: Vec<i64>,
    /// Those with recorded attempt errors to delete too.
    with_errors: Vec<i64>,
    settled: Settled,
    /// Keys whose head is acked, as (queue, key, job): each moves on once the job is gone.
    keys_moving_on: Vec<(i64, String, i64)>,
}

impl AckPlan {
    /// The queues the live leases are in.
    pub(super) fn queue_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.settled.queues.iter().map(|tally| tally.queue_id)
    }

    /// How many live leases of queue `queue_id` it acks.
    pub(super) fn acked_in(&self, queue_id: i64) -> u64 {
        self.settled.queues.iter().filter(|tally| tally.queue_id == queue_id).map(|tally| tally.jobs).sum()
    }
}

/// What one settle call did, by queue (a call usually touches one queue, so a short list).
struct Settled {
    queues: Vec<QueueTally>,
    /// The clock reading of the transaction.
    now: Timestamp,
}

impl Settled {
    fn add(&mut self, queue_id: i64, leased_at: Option<i64>) {
        let index = match self.queues.iter().position(|t| t.queue_id == queue_id) {
            Some(index) => index,
            None => {
                self.queues.push(QueueTally { queue_id, jobs: 0, held_s: Vec::new() });
                self.queues.len() - 1
            }
        };
        let tally = &mut self.queues[index];
        tally.jobs += 1;
        if let Some(leased_at) = leased_at {
            tally.held_s.push(self.now.ms_since(Timestamp::from_millis(leased_at)) as f64 / 1000.0);
        }
    }
}

/// The lease columns of a job row.
struct LeaseRow {
    queue_id: i64,
    state: i64,
    attempt: i64,
    max_attempts: i64,
    token: Option<Vec<u8>>,
    expires_at: Option<i64>,
    ordering_key: Option<String>,
    cancelled: bool,
}

/// A lease that [`State::live_lease`] found live.
pub(super) struct LiveLease {
    row_id: i64,
    pub(super) queue_id: i64,
    attempt: i64,
    max_attempts: i64,
    ordering_key: Option<String>,
    /// The job was cancelled while leased: any end of the lease but an ack cancels it.
    pub(super) cancelled: bool,
}
