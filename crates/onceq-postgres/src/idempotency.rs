//! The idempotency store on PostgreSQL: one row per key in the store's schema, with the exact
//! semantics of `onceq_core::idempotency`, judged at the store's clock.
//!
//! `begin` is one `INSERT ... ON CONFLICT DO UPDATE ... WHERE <the caller may take the key>`:
//! PostgreSQL's unique index makes concurrent begins of one key take turns, so exactly one of
//! them acquires a free key. When the `WHERE` refuses, a second read says why (held by another
//! owner, completed, or a fingerprint conflict); if the key changed in between, `begin` starts
//! over. `complete` and `release` are single statements whose `WHERE` is the owner check.

use crate::conns::pooled;
use onceq_core::idempotency::{fingerprint_mismatch, not_held};
use onceq_core::{Begin, BeginOutcome, Complete, Error, Result, Timestamp};
use sqlx::Row;

use crate::due::decode;
use crate::{to_i64, Conn, PgStore};

/// Stored states of a key.
const IN_PROGRESS: i16 = 0;
const COMPLETED: i16 = 1;

/// Tries at a `begin` whose key keeps changing between its two statements.
const BEGIN_TRIES_MAX: usize = 8;

/// Takes the key when nobody else may keep it: no live record, or a live claim of the same
/// owner with no conflicting fingerprint. `$2` key, `$3` owner, `$4` ttl, `$5` fingerprint.
const TAKE: &str = r#"
INSERT INTO {s}.idempotency AS r (key, state, owner, until, fingerprint, result)
VALUES ($2, 0, $3, {now} + $4, $5, NULL)
ON CONFLICT (key) DO UPDATE SET
    state = 0, owner = EXCLUDED.owner, until = EXCLUDED.until, result = NULL,
    fingerprint = CASE WHEN r.until > {now} THEN coalesce(EXCLUDED.fingerprint, r.fingerprint)
                       ELSE EXCLUDED.fingerprint END
WHERE r.until <= {now}
   OR (r.state = 0 AND r.owner = EXCLUDED.owner
       AND (EXCLUDED.fingerprint IS NULL OR r.fingerprint IS NULL OR r.fingerprint = EXCLUDED.fingerprint))
RETURNING {now} AS now
"#;

const READ: &str = "SELECT {now} AS now, state, owner, until, fingerprint, result FROM {s}.idempotency WHERE key = $2";

const COMPLETE: &str = "UPDATE {s}.idempotency SET state = 1, until = {now} + $4, result = $5 \
                        WHERE key = $2 AND state = 0 AND owner = $3 RETURNING 1";

const RELEASE: &str = "DELETE FROM {s}.idempotency WHERE key = $1 AND state = 0 AND owner = $2 RETURNING 1";

/// Refuses text PostgreSQL cannot hold (NUL), naming the field.
fn check_nul(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::invalid(format!("the {what} contains NUL, which PostgreSQL text cannot hold")));
    }
    Ok(())
}

impl PgStore {
    /// Begins on `conn`: on the pool, or in a caller's transaction (see `transaction`).
    pub(crate) async fn idempotency_begin(&self, conn: &mut Conn<'_>, begin: &Begin) -> Result<BeginOutcome> {
        check_nul("idempotency key", &begin.key)?;
        check_nul("owner", &begin.owner)?;
        if let Some(f) = &begin.fingerprint {
            check_nul("fingerprint", f)?;
        }
        let (take, read) = (self.sql(TAKE), self.sql(READ));
        let ttl = to_i64(begin.ttl_ms);
        for _ in 0..BEGIN_TRIES_MAX {
            let now = self.now_param();
            let taken = self
                .fetch_optional(conn, "claiming an idempotency key", || {
                    sqlx::query(&take).bind(now).bind(&begin.key).bind(&begin.owner).bind(ttl).bind(&begin.fingerprint)
                })
                .await?;
            if let Some(row) = taken {
                let now: i64 = row.try_get("now").map_err(decode)?;
                self.sweep_after(conn, now).await;
                return Ok(BeginOutcome::Acquired);
            }
            let now = self.now_param();
            let row = self
                .fetch_optional(conn, "reading an idempotency key", || sqlx::query(&read).bind(now).bind(&begin.key))
                .await?;
            let Some(row) = row else { continue }; // released meanwhile: try to take it
            let now: i64 = row.try_get("now").map_err(decode)?;
            let until: i64 = row.try_get("until").map_err(decode)?;
            if until <= now {
                continue; // expired meanwhile: try to take it
            }
            let stored: Option<String> = row.try_get("fingerprint").map_err(decode)?;
            if let (Some(stored), Some(given)) = (&stored, &begin.fingerprint) {
                if stored != given {
                    return Err(fingerprint_mismatch(&begin.key));
                }
            }
            let state: i16 = row.try_get("state").map_err(decode)?;
            let owner: String = row.try_get("owner").map_err(decode)?;
            match state {
                COMPLETED => {
                    let result: Option<Vec<u8>> = row.try_get("result").map_err(decode)?;
                    return Ok(BeginOutcome::Completed { result: result.unwrap_or_default() });
                }
                IN_PROGRESS if owner != begin.owner => {
                    return Ok(BeginOutcome::InProgress { owner, until: Timestamp::from_millis(until) });
                }
                IN_PROGRESS => continue, // our own claim, taken back meanwhile? try again
                other => return Err(Error::Storage(format!("idempotency key {:?} has state {other}", begin.key))),
            }
        }
        Err(Error::Conflict(format!("idempotency key {:?} kept changing while it was being claimed; retry", begin.key)))
    }

    /// Completes on `conn`: on the pool, or in a caller's transaction (see `transaction`).
    pub(crate) async fn idempotency_complete(&self, conn: &mut Conn<'_>, complete: &Complete) -> Result<()> {
        check_nul("idempotency key", &complete.key)?;
        check_nul("owner", &complete.owner)?;
        let sql = self.sql(COMPLETE);
        let now = self.now_param();
        let retention = to_i64(complete.retention_ms);
        let done = self
            .fetch_optional(conn, "completing an idempotency key", || {
                sqlx::query(&sql)
                    .bind(now)
                    .bind(&complete.key)
                    .bind(&complete.owner)
                    .bind(retention)
                    .bind(&complete.result)
            })
            .await?;
        done.map(|_| ()).ok_or_else(|| not_held(&complete.key, &complete.owner))
    }

    pub(crate) async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        check_nul("idempotency key", key)?;
        check_nul("owner", owner)?;
        let sql = self.sql(RELEASE);
        let done: Option<i32> = self
            .run("releasing an idempotency key", || {
                pooled!(self, sqlx::query_scalar(&sql).bind(key).bind(owner), fetch_optional)
            })
            .await?;
        done.map(|_| ()).ok_or_else(|| not_held(key, owner))
    }
}
