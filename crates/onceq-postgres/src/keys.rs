//! Ordering keys (docs/semantics.md, "Ordering per key"; Invariant 9): which job holds each key
//! of a `per_key` queue, and handing a key on when that job leaves. The statements of `jobs`,
//! `due` and `queues` carry the pieces below; the hand-over itself is the schema's function
//! `keys_move_on` (migration v4).
//!
//! # What is stored
//!
//! A job of a `per_key` queue has a `partition` (never NULL there, always NULL in an unordered
//! queue, whose jobs keep their `ordering_key` as a plain column that orders nothing): so "an
//! ordered, keyed job" is `ordering_key IS NOT NULL AND partition IS NOT NULL`, with no need to
//! read the queue's config. `ordering_keys` has a row per key that has a head, naming it
//! (`head_id`); every other job of the key is `blocked` (state 4), in the `jobs_blocked` index
//! and never in `jobs_ready`, so leases read past none of them.
//!
//! - An enqueue claims the keys of its batch with `INSERT ... ON CONFLICT DO UPDATE SET head_id =
//!   head_id RETURNING head_id` (one row per key, the batch's lowest id as the candidate): the
//!   key's head comes back, the batch's own candidate if the key had none. Every job of the batch
//!   that is not its key's head is stored blocked. A redrive claims the keys of the jobs it
//!   brings back the same way: a dead head gets itself back and is ready, a job whose key went
//!   on waits blocked behind the key's head, or becomes the head of a key that has none.
//! - A head leaves (acked, leased from an `at_most_once` queue, dead unless the queue has
//!   `dead_blocks_key`, purged while dead): the statement that makes it leave calls
//!   `keys_move_on` for it ([`MOVE_ON`]), which promotes the key's blocked job with the lowest id
//!   or, with none, deletes the key's row.
//!
//! # Taking turns across servers
//!
//! Many servers share the tables, so an enqueue of a key and the key moving on must not
//! interleave: an enqueue that saw the head and stored its job blocked, beside a move-on that
//! found no blocked job and freed the key, would leave the job blocked for ever. Both serialize
//! on the key's row: the enqueue's upsert holds it until the enqueue commits, and
//! `keys_move_on` locks it (`FOR UPDATE`) before it looks for blocked jobs, in a statement of its
//! own, whose snapshot is taken after the lock is granted: it sees every job of an enqueue that
//! held the row before. (One statement could not: in READ COMMITTED a statement that waits for a
//! row lock reads the rest of the database as of its start, and would miss the blocked job the
//! enqueue it waited for committed. A function marked VOLATILE takes a snapshot per statement.)
//! Whoever comes second sees what the first did: an enqueue that waited for a move-on finds the
//! key handed on (its jobs wait behind the new head) or gone (PostgreSQL retries its insert,
//! and its first job becomes the head). Rows are locked in (queue, key) order everywhere, so
//! batches of several keys cannot deadlock on each other.
//!
//! Nothing here costs an unordered queue a statement: the enqueue of key-less jobs into one runs
//! the statement it always ran, and the move-on call sits in a CTE that finds no ordered job and
//! calls nothing.

/// The CTE `moved_on` of a statement whose CTE `{leaving}` returns the jobs (`id`, `queue_id`,
/// `ordering_key`, `partition`, and `state` for [`MOVE_ON_DEAD`]) that left their key's head:
/// hands their keys on as of `(SELECT now FROM t)`, and returns one row (`promoted`) if there was
/// any ordered job among them, none otherwise (then it calls nothing). The statement must read
/// `moved_on` (as `(SELECT promoted FROM moved_on)`), or it does not run.
const MOVE_ON_CTE: &str = r#"
moved_on AS (
    SELECT {s}.keys_move_on(array_agg(l.queue_id), array_agg(l.ordering_key), array_agg(l.id),
                            (SELECT now FROM t), '{channel}') AS promoted
    FROM {leaving} l
    WHERE l.ordering_key IS NOT NULL AND l.partition IS NOT NULL{dead}
    HAVING count(*) > 0
)"#;

/// The condition that makes a job that went dead or was cancelled leave its key's head: it was
/// cancelled (whatever `dead_blocks_key` says), or it is dead and its queue does not keep dead
/// heads (`dead_blocks_key`, judged as the job dies).
const DEAD_LEAVES: &str = r#"
      AND (l.state = 5 OR (l.state = 3
      AND NOT EXISTS (SELECT 1 FROM {s}.queues q WHERE q.id = l.queue_id AND (q.config->>'dead_blocks_key')::boolean)))"#;

/// The placeholder of [`MOVE_ON_CTE`] for jobs that all leave: `{move_on:<cte>}`.
pub(crate) const MOVE_ON: &str = "{move_on:";

/// The placeholder of [`MOVE_ON_CTE`] for jobs that leave if they went dead:
/// `{move_on_dead:<cte>}` (the CTE also returns `state`).
pub(crate) const MOVE_ON_DEAD: &str = "{move_on_dead:";

/// `template` with its `{move_on:<cte>}` or `{move_on_dead:<cte>}` (at most one) replaced by the
/// `moved_on` CTE over that CTE.
pub(crate) fn with_move_on(template: &str) -> String {
    for (placeholder, dead) in [(MOVE_ON, ""), (MOVE_ON_DEAD, DEAD_LEAVES)] {
        let Some(start) = template.find(placeholder) else { continue };
        let rest = &template[start + placeholder.len()..];
        let Some(end) = rest.find('}') else { continue };
        let cte = MOVE_ON_CTE.replace("{leaving}", &rest[..end]).replace("{dead}", dead);
        return format!("{}{}{}", &template[..start], cte.trim_start(), &rest[end + 1..]);
    }
    template.to_owned()
}

/// Claims the keys of the jobs of CTE `{claiming}` (`id`, `ordering_key`, in queue `{queue}`)
/// that are ordered (`{ordered}` true for the row): one row per key, the lowest id as its
/// candidate head, locked in key order. Returns `ordering_key` and the key's `head_id`.
pub(crate) const CLAIM_KEYS: &str = r#"
INSERT INTO {s}.ordering_keys AS k (queue_id, ordering_key, head_id)
SELECT {queue}, c.ordering_key, min(c.id) FROM {claiming} c
WHERE c.ordering_key IS NOT NULL AND {ordered}
GROUP BY c.ordering_key
ORDER BY c.ordering_key COLLATE "C"
ON CONFLICT (queue_id, ordering_key) DO UPDATE SET head_id = k.head_id
RETURNING k.ordering_key, k.head_id"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_on_placeholders_expand() {
        let sql = with_move_on("WITH t AS (SELECT 1 AS now),\n{move_on:acked}\nSELECT 1");
        assert!(
            sql.contains("FROM acked l") && sql.starts_with("WITH t AS (SELECT 1 AS now),\nmoved_on AS ("),
            "{sql}"
        );
        assert!(!sql.contains("l.state = 3") && !sql.contains("{move_on"), "{sql}");
        let sql = with_move_on("{move_on_dead:failed}");
        assert!(
            sql.contains("FROM failed l") && sql.contains("l.state = 3") && sql.contains("dead_blocks_key"),
            "{sql}"
        );
        assert_eq!(with_move_on("SELECT 1"), "SELECT 1");
    }
}
