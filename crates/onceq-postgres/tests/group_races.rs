//! Proves that a consumer group's lease and a hand-over of its partitions are serialized on the
//! group's row (Invariant 10; the crate's `groups` module): a lease transaction held open between
//! its ownership check and its commit makes a join that wants the partition wait, and the join
//! then sees the lease and leaves the partition with its owner, revoking; a join held open after
//! it handed a partition over makes a lease of the old owner wait, and that lease then takes
//! nothing from the partition it no longer owns.
//!
//! The store's transactions are held open by a trigger the test adds to its own schema, which
//! makes the statement it fires in wait for an advisory lock the test holds: the store's code
//! runs unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use onceq_core::group::{GroupName, JoinOptions};
use onceq_core::ordering::partition_of;
use onceq_core::{JobId, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_postgres::PgStore;
use sqlx::{Connection, PgConnection};

/// How long a call is given to show that it waits for a transaction: it must not return before.
const WAITS: Duration = Duration::from_millis(400);

/// A `per_key` queue of two partitions with one job in each; returns each partition's job.
async fn two_partitions(store: &PgStore) -> (QueueName, BTreeMap<u32, JobId>) {
    let q = QueueName::new("grouped").unwrap();
    let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(2), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    let mut jobs = BTreeMap::new();
    for i in 0.. {
        let key = format!("k{i}");
        let p = partition_of(Some(&key), JobId::new(1), 2);
        if let std::collections::btree_map::Entry::Vacant(slot) = jobs.entry(p) {
            slot.insert(store.enqueue(&q, NewJob::new(key.clone()).ordering_key(key)).await.unwrap().id);
        }
        if jobs.len() == 2 {
            break;
        }
    }
    (q, jobs)
}

/// Holds `lock` on a connection of its own, and makes every statement that fires the trigger
/// `hold` on `table` (for rows where `condition` holds) wait until the lock is released.
async fn hold(store: &PgStore, table: &str, condition: &str, lock: i64) -> PgConnection {
    let s = store.schema();
    let function = format!(
        "CREATE FUNCTION \"{s}\".hold() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF {condition} THEN PERFORM pg_advisory_xact_lock({lock}); END IF; RETURN NEW; END $$"
    );
    let trigger =
        format!("CREATE TRIGGER hold BEFORE UPDATE ON \"{s}\".{table} FOR EACH ROW EXECUTE FUNCTION \"{s}\".hold()");
    sqlx::query(&function).execute(store.pool()).await.unwrap();
    sqlx::query(&trigger).execute(store.pool()).await.unwrap();
    let mut conn = PgConnection::connect(&common::database_url()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)").bind(lock).execute(&mut conn).await.unwrap();
    conn
}

async fn release(mut conn: PgConnection, lock: i64) {
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

fn session() -> JoinOptions {
    JoinOptions { name: None, session_timeout_ms: Some(60_000) }
}

/// A lock key no other test uses at the same time.
fn lock_of(store: &PgStore) -> i64 {
    store.schema().bytes().fold(17i64, |h, b| h.wrapping_mul(31).wrapping_add(i64::from(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waits_for_an_open_lease_and_leaves_the_leased_partition_revoking() {
    let (store, _guard) = common::fresh_store(None).await;
    let (q, jobs) = two_partitions(&store).await;
    let g = GroupName::new("g").unwrap();
    let a = store.group_join(&q, &g, session()).await.unwrap();
    assert_eq!(a.partitions, vec![0, 1]);

    // A's lease checks its ownership, then waits in its UPDATE of the jobs (state 2 = leased).
    let lock = lock_of(&store);
    let held = hold(&store, "jobs", "NEW.state = 2", lock).await;
    let lease = {
        let (store, q, g, m) = (store.clone(), q.clone(), g.clone(), a.member_id.clone());
        let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
        tokio::spawn(async move { store.group_lease(&q, &g, &m, options).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!lease.is_finished(), "the lease did not wait in its statement");
    let join = {
        let (store, q, g) = (store.clone(), q.clone(), g.clone());
        tokio::spawn(async move { store.group_join(&q, &g, session()).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!join.is_finished(), "the join did not wait for the lease holding the group row");
    release(held, lock).await;

    let leased = lease.await.unwrap().unwrap();
    let mut ids: Vec<JobId> = leased.iter().map(|j| j.id).collect();
    ids.sort();
    assert_eq!(ids, jobs.values().copied().collect::<Vec<_>>(), "A owned both partitions when it leased");
    let b = join.await.unwrap().unwrap();
    // B's partition is busy with A's lease: it stays A's, revoking, and B does not list it.
    assert!(b.partitions.is_empty(), "B got a partition A holds a live lease in: {b:?}");
    let a_now = store.group_heartbeat(&q, &g, &a.member_id).await.unwrap();
    assert_eq!(a_now.revoking.len(), 1);
    let moving = a_now.revoking[0];
    assert_eq!(a_now.partitions, vec![1 - moving]);

    // Once A acks its job there, the partition moves to B.
    let there = leased.iter().find(|j| j.partition == Some(moving)).unwrap();
    store.ack(there.lease()).await.unwrap();
    assert_eq!(store.group_heartbeat(&q, &g, &b.member_id).await.unwrap().partitions, vec![moving]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_waits_for_an_open_hand_over_and_then_takes_nothing_from_the_moved_partition() {
    let (store, _guard) = common::fresh_store(None).await;
    let (q, jobs) = two_partitions(&store).await;
    let g = GroupName::new("g").unwrap();
    let a = store.group_join(&q, &g, session()).await.unwrap();

    // B's join hands a partition over (no lease is live), then waits in its write of the group.
    let lock = lock_of(&store);
    let held = hold(&store, "groups", "true", lock).await;
    let join = {
        let (store, q, g) = (store.clone(), q.clone(), g.clone());
        tokio::spawn(async move { store.group_join(&q, &g, session()).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!join.is_finished(), "the join did not wait in its write");
    let lease = {
        let (store, q, g, m) = (store.clone(), q.clone(), g.clone(), a.member_id.clone());
        let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
        tokio::spawn(async move { store.group_lease(&q, &g, &m, options).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!lease.is_finished(), "the lease did not wait for the hand-over holding the group row");
    release(held, lock).await;

    let b = join.await.unwrap().unwrap();
    assert_eq!(b.partitions.len(), 1, "with no live lease, B's partition was handed over at once");
    let moved = b.partitions[0];
    let leased = lease.await.unwrap().unwrap();
    assert_eq!(
        leased.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![jobs[&(1 - moved)]],
        "A leased where it no longer owns"
    );
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
    let b_leased = store.group_lease(&q, &g, &b.member_id, options).await.unwrap();
    assert_eq!(b_leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![jobs[&moved]]);
    store.close().await;
}
