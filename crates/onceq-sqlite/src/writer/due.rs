//! What the clock made due, applied at the start of every group commit (Invariant 7: the
//! store's one clock decides): scheduled jobs become ready, expired leases are redelivered or
//! dead-lettered, due schedule ticks fire (`writer::schedules`), and expired dedup ids, idempotency records and commit ids are swept.

use onceq_core::metrics as names;
use onceq_core::Result;
use rusqlite::{params, Connection};

use crate::schema::{state, storage, to_i64};
use crate::writer::cache::State;
use crate::writer::jobs::record_error;

/// How often expired dedup entries are swept.
const DEDUP_SWEEP_INTERVAL_MS: u64 = 1000;

impl State {
    /// Applies what the clock made due: scheduled jobs become ready, expired leases are
    /// redelivered (or dead-lettered on their last attempt), old dedup entries are swept.
    pub(super) fn apply_due(&mut self, conn: &Connection) -> Result<()> {
        if self.now.ms_since(self.last_dedup_sweep) >= DEDUP_SWEEP_INTERVAL_MS {
            conn.prepare_cached("DELETE FROM dedup WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute([self.now.as_millis()]))
                .map_err(storage("sweeping expired dedup ids"))?;
            // Completed idempotency records past their retention go; an in-progress claim stays a
            // day past its expiry, so that its owner can still complete it if nobody took it over.
            conn.prepare_cached("DELETE FROM idempotency WHERE until <= ?1 AND (state = 1 OR until <= ?1 - ?2)")
                .and_then(|mut s| s.execute(params![self.now.as_millis(), to_i64(onceq_core::idempotency::TTL_MS_MAX)]))
                .map_err(storage("sweeping expired idempotency keys"))?;
            conn.prepare_cached("DELETE FROM commits WHERE expires_at <= ?1")
                .and_then(|mut s| s.execute([self.now.as_millis()]))
                .map_err(storage("sweeping expired commit ids"))?;
            self.last_dedup_sweep = self.now;
        }
        if self.now.as_millis() >= self.next_schedule_due {
            // The store's own firing of due schedule ticks; `schedule_tick` returns what it
            // fires, these are counted in metrics only.
            self.schedules_fire(conn)?;
        }
        if self.now.as_millis() >= self.next_redrive_due {
            // The store's own stepping of paced redrives (`writer::redrives`).
            self.redrives_step(conn)?;
        }
        if self.now.as_millis() < self.next_due {
            return Ok(());
        }
        let now = self.now.as_millis();
        let promoted: Vec<i64> = {
            let mut stmt = conn
                .prepare_cached("UPDATE jobs SET state = 1 WHERE state = 0 AND run_at <= ?1 RETURNING queue_id")
                .map_err(storage("promoting due jobs"))?;
            let rows = stmt.query_map([now], |r| r.get(0)).map_err(storage("promoting due jobs"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("promoting due jobs"))?
        };
        for queue_id in promoted {
            self.count_move(queue_id, Some(state::SCHEDULED), Some(state::READY));
        }
        type Expired = (i64, i64, i64, i64, i64, Option<String>, bool);
        let expired: Vec<Expired> = {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, queue_id, attempt, max_attempts, lease_expires_at, ordering_key, \
                     cancelled_at IS NOT NULL FROM jobs WHERE state = 2 AND lease_expires_at <= ?1",
                )
                .map_err(storage("finding expired leases"))?;
            let rows = stmt
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
                .map_err(storage("finding expired leases"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(storage("finding expired leases"))?
        };
        for (id, queue_id, attempt, max_attempts, expired_at, ordering_key, cancelled) in expired {
            record_error(conn, id, attempt, "lease expired", expired_at)?;
            if cancelled {
                // Cancelled while leased: the lease's end is the job's end.
                self.end_cancelled(conn, id, queue_id, ordering_key.as_deref(), true)?;
                continue;
            }
            let to = if attempt >= max_attempts { state::DEAD } else { state::READY };
            if to == state::DEAD {
                metrics::counter!(names::DEAD_LETTERED, "queue" => self.label(queue_id), "reason" => "attempts_exhausted")
                    .increment(1);
            } else {
                metrics::counter!(names::REDELIVERIES, "queue" => self.label(queue_id), "reason" => "lease_expired")
                    .increment(1);
            }
            conn.prepare_cached(
                "UPDATE jobs SET state = ?2, run_at = CASE WHEN ?2 = 1 THEN ?3 ELSE run_at END, \
                 lease_token = NULL, lease_expires_at = NULL, error_count = error_count + 1 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, to, expired_at]))
            .map_err(storage("expiring a lease"))?;
            self.count_move(queue_id, Some(state::LEASED), Some(to));
            if to == state::DEAD {
                self.key_after_death(conn, queue_id, ordering_key.as_deref(), id)?;
            }
        }
        self.recompute_next_due(conn)
    }
}
