//! The SQL of the idempotency store (see `onceq_core::idempotency` for its semantics).

use onceq_core::{Result, Timestamp};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::storage;
use crate::writer::cache::State;

/// An idempotency record as stored.
struct IdempotencyRow {
    in_progress: bool,
    owner: String,
    until: i64,
    fingerprint: Option<String>,
    result: Option<Vec<u8>>,
}

/// Stored states of an idempotency record.
const IDEMPOTENCY_IN_PROGRESS: i64 = 0;
const IDEMPOTENCY_COMPLETED: i64 = 1;

fn idempotency_row(conn: &Connection, key: &str) -> Result<Option<IdempotencyRow>> {
    conn.prepare_cached("SELECT state, owner, until, fingerprint, result FROM idempotency WHERE key = ?1")
        .and_then(|mut s| {
            s.query_row([key], |r| {
                Ok(IdempotencyRow {
                    in_progress: r.get::<_, i64>(0)? == IDEMPOTENCY_IN_PROGRESS,
                    owner: r.get(1)?,
                    until: r.get(2)?,
                    fingerprint: r.get(3)?,
                    result: r.get(4)?,
                })
            })
            .optional()
        })
        .map_err(storage("reading an idempotency key"))
}

impl State {
    /// See `onceq_core::idempotency` for the semantics this implements.
    pub(crate) fn idempotency_begin(
        &mut self,
        conn: &Connection,
        begin: &onceq_core::Begin,
    ) -> Result<onceq_core::BeginOutcome> {
        use onceq_core::BeginOutcome;
        let now = self.now.as_millis();
        let live = idempotency_row(conn, &begin.key)?.filter(|row| row.until > now);
        if let Some(row) = live {
            if let (Some(stored), Some(given)) = (&row.fingerprint, &begin.fingerprint) {
                if stored != given {
                    return Err(onceq_core::idempotency::fingerprint_mismatch(&begin.key));
                }
            }
            if !row.in_progress {
                return Ok(BeginOutcome::Completed { result: row.result.unwrap_or_default() });
            }
            if row.owner != begin.owner {
                return Ok(BeginOutcome::InProgress { owner: row.owner, until: Timestamp::from_millis(row.until) });
            }
            // The holder again: same claim, later expiry, the fingerprint it was made with.
            conn.prepare_cached(
                "UPDATE idempotency SET until = ?2, fingerprint = coalesce(?3, fingerprint) WHERE key = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![begin.key, self.now.plus_ms(begin.ttl_ms).as_millis(), begin.fingerprint])
            })
            .map_err(storage("claiming an idempotency key"))?;
            return Ok(BeginOutcome::Acquired);
        }
        // No live record: a fresh claim, which inherits nothing from a dead one.
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (key, state, owner, until, fingerprint, result) \
             VALUES (?1, 0, ?2, ?3, ?4, NULL)",
        )
        .and_then(|mut s| {
            s.execute(params![begin.key, begin.owner, self.now.plus_ms(begin.ttl_ms).as_millis(), begin.fingerprint])
        })
        .map_err(storage("claiming an idempotency key"))?;
        Ok(BeginOutcome::Acquired)
    }

    /// Records the result of a key the owner holds.
    pub(crate) fn idempotency_complete(&mut self, conn: &Connection, complete: &onceq_core::Complete) -> Result<()> {
        match idempotency_row(conn, &complete.key)? {
            Some(row) if row.in_progress && row.owner == complete.owner => {}
            _ => return Err(onceq_core::idempotency::not_held(&complete.key, &complete.owner)),
        }
        conn.prepare_cached("UPDATE idempotency SET state = ?2, until = ?3, result = ?4 WHERE key = ?1")
            .and_then(|mut s| {
                s.execute(params![
                    complete.key,
                    IDEMPOTENCY_COMPLETED,
                    self.now.plus_ms(complete.retention_ms).as_millis(),
                    complete.result
                ])
            })
            .map_err(storage("completing an idempotency key"))?;
        Ok(())
    }

    /// Gives up a key the owner holds.
    pub(crate) fn idempotency_release(&mut self, conn: &Connection, key: &str, owner: &str) -> Result<()> {
        match idempotency_row(conn, key)? {
            Some(row) if row.in_progress && row.owner == owner => {}
            _ => return Err(onceq_core::idempotency::not_held(key, owner)),
        }
        conn.prepare_cached("DELETE FROM idempotency WHERE key = ?1")
            .and_then(|mut s| s.execute([key]))
            .map_err(storage("releasing an idempotency key"))?;
        Ok(())
    }
}
