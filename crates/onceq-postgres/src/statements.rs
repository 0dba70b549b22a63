//! The statements of the store's hot path, as text: exactly what a [`PgStore`](crate::PgStore)
//! on a given schema prepares and runs, for tools that must run the store's own SQL. `onceq
//! bench --store` hands them to pgbench as its floor, so that the floor cannot drift from the
//! store when a statement changes.
//!
//! The texts carry the store's parameters as `$n`, bound as each [`HotStatement`] variant says.
//! `$1` is "now" in every one of them: the store binds NULL there (the database's clock) unless
//! a test clock is set, except where a variant says it takes the "now" an earlier statement of
//! the same operation returned.

use onceq_core::Result;

use crate::{channel_of, due, fill, jobs, schema};

/// A statement of the hot path (see the module docs for `$1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HotStatement {
    /// The first statement of an enqueue into a queue the store does not know yet (or whose
    /// config changed), or of jobs scheduled for later: reads the clock and finds the queue by
    /// name (`$2`); returns `now`, `id`, `config`. The store then remembers the queue.
    QueueLookup,
    /// The enqueue of a batch of `items` jobs, the only statement of an enqueue of jobs ready at
    /// once into a queue the store knows: `$1` NULL there (the database's clock), or the lookup's
    /// `now`; then the jobs' columns as arrays (`$2` payloads `bytea[]`, `$3` headers `text[]`,
    /// `$4` priorities `int4[]`, `$5` run_at `int8[]`, NULL for "now", `$6` max_attempts
    /// `int4[]`, `$7` dedup ids `text[]`, `$8` whether each claims its dedup id `bool[]`), `$9`
    /// the queue's id, `$10` how long claimed dedup ids live (ms), `$11` the queue's config as
    /// the lookup printed it (NULL after a lookup): with another config, or another queue under
    /// that id, it inserts nothing and returns no row. Returns `ord`, `id`, `original`,
    /// `notified` and `now` per job.
    Enqueue {
        /// Jobs in the batch (statements for up to 10 items are planned for their exact count).
        items: usize,
    },
    /// The first statement of a lease: applies the due transitions of the queue named `$2`;
    /// returns `now` and the queue's row (`id`, `name`, `config`, `paused`).
    ApplyDue,
    /// The lease of up to `max_jobs` jobs of an at-least-once queue: `$1` the `now` of
    /// [`HotStatement::ApplyDue`], `$2` the queue's id, `$3` the new lease tokens (`bytea[]`,
    /// `max_jobs` of them), `$4` when the leases expire. Returns the leased jobs.
    Lease {
        /// Most jobs the lease takes (a literal in the statement, one statement per value).
        max_jobs: u32,
    },
    /// The ack of `items` leases: `$2` the job ids (`int8[]`), `$3` their lease tokens
    /// (`bytea[]`). Returns one verdict row per item, in order.
    Ack {
        /// Leases in the batch (statements for up to 10 items are planned for their exact count).
        items: usize,
    },
}

/// The text of `statement` as a store on `schema` runs it; an invalid schema name is refused as
/// [`PgOptions::schema`](crate::PgOptions::schema) refuses it.
pub fn hot_statement(schema: &str, statement: HotStatement) -> Result<String> {
    schema::validate_name(schema)?;
    Ok(fill(&template(statement), &schema::quoted(schema), &channel_of(schema)))
}

impl HotStatement {
    /// The statement of the same text: batches of more than
    /// [`ITEMS_EXACT_MAX`](crate::jobs::ITEMS_EXACT_MAX) items share one, so they share a key.
    pub(crate) fn text_key(self) -> Self {
        let shared = jobs::ITEMS_EXACT_MAX + 1;
        match self {
            HotStatement::Enqueue { items } => HotStatement::Enqueue { items: items.min(shared) },
            HotStatement::Ack { items } => HotStatement::Ack { items: items.min(shared) },
            other => other,
        }
    }
}

/// The text of `statement` before the schema and clock are filled in.
pub(crate) fn template(statement: HotStatement) -> String {
    match statement {
        HotStatement::QueueLookup => jobs::queue_lookup_template().to_owned(),
        HotStatement::Enqueue { items } => jobs::enqueue_template(items),
        HotStatement::ApplyDue => due::apply_due_for(due::ONE_QUEUE),
        HotStatement::Lease { max_jobs } => jobs::lease_template(max_jobs, false),
        HotStatement::Ack { items } => jobs::ack_template(items),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn texts_are_filled_in_for_the_schema() {
        for statement in [
            HotStatement::QueueLookup,
            HotStatement::Enqueue { items: 1 },
            HotStatement::Enqueue { items: 100 },
            HotStatement::ApplyDue,
            HotStatement::Lease { max_jobs: 7 },
            HotStatement::Ack { items: 3 },
        ] {
            let sql = hot_statement("s1", statement).unwrap();
            assert!(sql.contains("\"s1\"."), "{statement:?}: {sql}");
            for placeholder in
                ["{s}", "{now}", "{channel}", "{cap}", "{limit}", "{notify", "{verdict", "{queues}", "{batch}"]
            {
                assert!(!sql.contains(placeholder), "{statement:?} left {placeholder}: {sql}");
            }
            assert!(sql.contains("$1"), "{statement:?}: {sql}");
        }
        assert!(hot_statement("s1", HotStatement::Lease { max_jobs: 7 }).unwrap().contains("LIMIT 7"));
        assert!(hot_statement("s1", HotStatement::Ack { items: 3 }).unwrap().contains(" LIMIT 3)"));
        assert!(!hot_statement("s1", HotStatement::Ack { items: 100 }).unwrap().contains("ord) LIMIT"));
        assert!(hot_statement("s1", HotStatement::ApplyDue).unwrap().contains("'onceq_s1'"));
        assert!(hot_statement("1bad", HotStatement::QueueLookup).is_err());
        // Statements that share a text share a key, and only they do.
        for (a, b) in [(11, 100), (12, 1000)] {
            for (x, y) in [
                (HotStatement::Enqueue { items: a }, HotStatement::Enqueue { items: b }),
                (HotStatement::Ack { items: a }, HotStatement::Ack { items: b }),
            ] {
                assert_eq!(x.text_key(), y.text_key());
                assert_eq!(hot_statement("s1", x).unwrap(), hot_statement("s1", y).unwrap());
            }
        }
        assert_ne!(HotStatement::Ack { items: 9 }.text_key(), HotStatement::Ack { items: 10 }.text_key());
        assert_ne!(HotStatement::Ack { items: 10 }.text_key(), HotStatement::Ack { items: 11 }.text_key());
    }
}
