//! Proves that a unique key holds across servers: two stores (two pools) on one schema race
//! enqueues of one key, round after round, and exactly one job is created each round, whose id
//! every racer gets; batches naming two keys in opposite orders do not deadlock; a key freed by an
//! ack is taken by exactly one of the next racers; and an enqueue inside a caller's transaction
//! holds its key until the caller ends it: a racer on the other store waits, then is the
//! committed job's duplicate, or creates the job if the caller rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Enqueued, NewJob, QueueConfigPatch, QueueName, Store, StoreExt, Unique, UniqueBy, UniqueWhile};
use onceq_postgres::PgStore;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

async fn two_stores() -> (PgStore, PgStore, common::SchemaGuard) {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    (a, b, guard)
}

/// `racers` enqueues of `make(i)` at once, alternating between the stores; their results.
async fn race(
    stores: [&PgStore; 2],
    q: &QueueName,
    racers: usize,
    make: fn(usize) -> Vec<NewJob>,
) -> Vec<Vec<Enqueued>> {
    let barrier = Arc::new(Barrier::new(racers));
    let mut set = JoinSet::new();
    for i in 0..racers {
        let (store, barrier, q) = (stores[i % 2].clone(), barrier.clone(), q.clone());
        set.spawn(async move {
            barrier.wait().await;
            store.job_enqueue(&q, make(i)).await.unwrap()
        });
    }
    let mut out = Vec::new();
    while let Some(result) = tokio::time::timeout(Duration::from_secs(30), set.join_next()).await.unwrap() {
        out.push(result.unwrap());
    }
    out
}

const PENDING: Unique = Unique::new(UniqueBy::Payload, UniqueWhile::Pending);
const ACTIVE: Unique = Unique::new(UniqueBy::DedupId, UniqueWhile::Active);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_servers_create_one_job_per_key() {
    let (a, b, _guard) = two_stores().await;
    for round in 0..20 {
        let q = QueueName::new(format!("race-{round}")).unwrap();
        // Created beforehand, so that the racers do not line up behind its creation.
        a.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
        let results = race([&a, &b], &q, 12, |i| {
            vec![NewJob::new(r#"{"report":"daily"}"#).header("racer", i.to_string()).unique(PENDING)]
        })
        .await;
        let created: Vec<_> = results.iter().flatten().filter(|e| !e.duplicate).collect();
        assert_eq!(created.len(), 1, "round {round}: {results:?}");
        assert!(results.iter().flatten().all(|e| e.id == created[0].id), "round {round}: {results:?}");
        assert_eq!(a.queue_get(&q).await.unwrap().stats.ready, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_naming_keys_in_opposite_orders_do_not_deadlock() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("crossed").unwrap();
    a.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let results = race([&a, &b], &q, 16, |i| {
        let x = NewJob::new("{}").dedup_id("x").unique(ACTIVE);
        let y = NewJob::new("{}").dedup_id("y").unique(ACTIVE);
        if i % 2 == 0 {
            vec![x, y]
        } else {
            vec![y, x]
        }
    })
    .await;
    let created = results.iter().flatten().filter(|e| !e.duplicate).count();
    assert_eq!(created, 2, "{results:?}");
    assert_eq!(a.queue_get(&q).await.unwrap().stats.ready, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_freed_by_an_ack_is_taken_once() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("freed").unwrap();
    a.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let make = |_| vec![NewJob::new("{}").dedup_id("k").unique(ACTIVE)];
    let mut last = None;
    for round in 0..5 {
        let results = race([&a, &b], &q, 8, make).await;
        let created: Vec<_> = results.iter().flatten().filter(|e| !e.duplicate).map(|e| e.id).collect();
        assert_eq!(created.len(), 1, "round {round}: {results:?}");
        assert!(last < Some(created[0]), "round {round}: a new job each round");
        last = Some(created[0]);
        let leased = b.lease_one(&q).await.unwrap().unwrap();
        assert_eq!(leased.id, created[0]);
        // Leased under `active`: still held.
        assert_eq!(a.enqueue(&q, make(0).remove(0)).await.unwrap(), Enqueued { id: leased.id, duplicate: true });
        b.ack(leased.lease()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enqueue_in_a_callers_transaction_holds_its_key_until_it_ends() {
    let (a, b, _guard) = two_stores().await;
    let q = QueueName::new("in-transaction").unwrap();
    a.queue_upsert(&q, QueueConfigPatch::default()).await.unwrap();
    let job = || NewJob::new(r#"{"t":1}"#).unique(PENDING);
    for commit in [true, false] {
        let mut tx = a.transaction().await.unwrap();
        let mine = a.job_enqueue_in(&mut tx, &q, vec![job()]).await.unwrap()[0];
        assert!(!mine.duplicate);
        let racer = {
            let (b, q) = (b.clone(), q.clone());
            tokio::spawn(async move { b.enqueue(&q, NewJob::new(r#"{"t":1}"#).unique(PENDING)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!racer.is_finished(), "the racer must wait for the transaction that holds the key");
        if commit {
            tx.commit().await.unwrap();
            assert_eq!(racer.await.unwrap(), Enqueued { id: mine.id, duplicate: true });
            let leased = a.lease_one(&q).await.unwrap().unwrap();
            a.ack(leased.lease()).await.unwrap();
        } else {
            tx.rollback().await.unwrap();
            let theirs = racer.await.unwrap();
            assert!(!theirs.duplicate && theirs.id != mine.id, "{theirs:?}");
        }
    }
}
