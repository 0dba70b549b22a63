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

pub use crate::sql::HotStatement;
use crate::sql::{channel_of, fill};
use crate::{due, groups, jobs, schema};

/// The text of `statement` as a store on `schema` runs it; an invalid schema name is refused as
/// [`PgOptions::schema`](crate::PgOptions::schema) refuses it.
pub fn hot_statement(schema: &str, statement: HotStatement) -> Result<String> {
    schema::validate_name(schema)?;
    Ok(fill(&template(statement), &schema::quoted(schema), &channel_of(schema)))
}

/// The text of `statement` before the schema and clock are filled in.
pub(crate) fn template(statement: HotStatement) -> String {
    match statement {
        HotStatement::QueueLookup => jobs::queue_lookup_template().to_owned(),
        HotStatement::Enqueue { items } => jobs::enqueue_template(items),
        HotStatement::EnqueueKeyed { items } => jobs::enqueue_keyed_template(items),
        HotStatement::ApplyDue => due::apply_due_for(due::ONE_QUEUE),
        HotStatement::Lease { max_jobs } => {
            jobs::lease_template(max_jobs, false).replace("{relax}", &format!("${}::bool", jobs::LEASE_RELAX_PARAM))
        }
        HotStatement::RateLease { max_jobs } => crate::flow::rate_lease_template(max_jobs),
        HotStatement::GroupLease { max_jobs } => {
            groups::restricted(&jobs::lease_template(max_jobs, false), max_jobs, groups::PARTITIONS_PARAM)
        }
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
            HotStatement::EnqueueKeyed { items: 1 },
            HotStatement::EnqueueKeyed { items: 100 },
            HotStatement::ApplyDue,
            HotStatement::Lease { max_jobs: 7 },
            HotStatement::RateLease { max_jobs: 7 },
            HotStatement::GroupLease { max_jobs: 7 },
            HotStatement::Ack { items: 3 },
        ] {
            let sql = hot_statement("s1", statement).unwrap();
            assert!(sql.contains("\"s1\"."), "{statement:?}: {sql}");
            for placeholder in [
                "{s}",
                "{now}",
                "{channel}",
                "{cap}",
                "{reply_bytes}",
                "{pick}",
                "{limit}",
                "{notify",
                "{verdict",
                "{queues}",
                "{batch}",
                "{move_on",
                "{claim",
                "{queue}",
                "{claiming}",
                "{ordered}",
                "{leaving}",
                "{dead}",
                "{relax",
            ] {
                assert!(!sql.contains(placeholder), "{statement:?} left {placeholder}: {sql}");
            }
            assert!(sql.contains("$1"), "{statement:?}: {sql}");
        }
        assert!(hot_statement("s1", HotStatement::Lease { max_jobs: 7 }).unwrap().contains("LIMIT 7"));
        let group_lease = hot_statement("s1", HotStatement::GroupLease { max_jobs: 7 }).unwrap();
        assert!(group_lease.contains("unnest($5::int4[])") && group_lease.contains("\"s1\".jobs"), "{group_lease}");
        assert!(hot_statement("s1", HotStatement::Ack { items: 3 }).unwrap().contains(" LIMIT 3)"));
        assert!(!hot_statement("s1", HotStatement::Ack { items: 100 }).unwrap().contains("ord) LIMIT"));
        assert!(hot_statement("s1", HotStatement::ApplyDue).unwrap().contains("'onceq_s1'"));
        assert!(hot_statement("1bad", HotStatement::QueueLookup).is_err());
        // Statements that share a text share a key, and only they do.
        for (a, b) in [(11, 100), (12, 1000)] {
            for (x, y) in [
                (HotStatement::Enqueue { items: a }, HotStatement::Enqueue { items: b }),
                (HotStatement::EnqueueKeyed { items: a }, HotStatement::EnqueueKeyed { items: b }),
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
