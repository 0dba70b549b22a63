//! Proves transactional completion at the store's level (`job_ack_in`,
//! `idempotency_begin_in`, `idempotency_complete_in`): a job acked in the transaction that
//! writes its effect is gone, with its idempotency record completed and the effect written once,
//! exactly when that transaction commits; after a rollback the job is still leased and is
//! redelivered when the lease expires, and the key is not completed. An ack with a stale lease
//! is refused item by item inside the transaction, so the caller rolls its effect back. A key
//! claimed in an open transaction makes another claim wait for its outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{
    Begin, BeginOutcome, Clock, Complete, Error, IdempotencyStore, JobId, JobState, LeaseRef, LeaseToken, ManualClock,
    NewJob, QueueConfigPatch, QueueName, QueueStats, Store, StoreExt,
};
use onceq_postgres::PgStore;

fn begin(key: &str, owner: &str) -> Begin {
    Begin { key: key.into(), owner: owner.into(), ttl_ms: 60_000, fingerprint: None }
}

fn complete(key: &str, owner: &str, result: &[u8]) -> Complete {
    Complete { key: key.into(), owner: owner.into(), result: result.to_vec(), retention_ms: 60_000 }
}

/// A store on a manual clock with a queue whose leases last 1 s, and the business table.
async fn setup() -> (PgStore, Arc<ManualClock>, QueueName, common::SchemaGuard) {
    let clock = ManualClock::at_default_start();
    let (store, guard) = common::fresh_store(Some(clock.clone() as Arc<dyn Clock>)).await;
    common::create_orders(&store).await;
    let q = QueueName::new("orders").unwrap();
    let patch = QueueConfigPatch { visibility_timeout_ms: Some(1_000), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    (store, clock, q, guard)
}

#[tokio::test]
async fn an_ack_rolled_back_with_its_effect_leaves_the_job_to_be_redelivered() {
    let (store, clock, q, _guard) = setup().await;
    let id = store.enqueue(&q, NewJob::new("1").dedup_id("order-1")).await.unwrap().id;
    let job = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(store.idempotency_begin(begin("order-1", "delivery-1")).await.unwrap(), BeginOutcome::Acquired);

    let mut tx = store.pool().begin().await.unwrap();
    common::insert_order(&store, &mut tx, 1, job.attempt).await;
    store.idempotency_complete_in(&mut tx, complete("order-1", "delivery-1", b"charged")).await.unwrap();
    assert_eq!(store.job_ack_in(&mut tx, &[job.lease()]).await.unwrap(), vec![Ok(())]);
    tx.rollback().await.unwrap();

    assert_eq!(common::orders(&store).await, Vec::<(i64, i32)>::new());
    let kept = store.job_get(id).await.unwrap();
    assert_eq!((kept.state, kept.attempt), (JobState::Leased, 1));
    let held = store.idempotency_begin(begin("order-1", "someone-else")).await.unwrap();
    assert!(matches!(&held, BeginOutcome::InProgress { owner, .. } if owner == "delivery-1"), "{held:?}");
    // The lease expires and the job is delivered again.
    clock.advance(1_001);
    let again = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (id, 2));
}

#[tokio::test]
async fn an_ack_committed_with_its_effect_leaves_the_effect_once_and_the_job_gone() {
    let (store, _clock, q, _guard) = setup().await;
    let id = store.enqueue(&q, NewJob::new("2").dedup_id("order-2")).await.unwrap().id;
    let job = store.lease_one(&q).await.unwrap().unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    assert_eq!(
        store.idempotency_begin_in(&mut tx, begin("order-2", "delivery-1")).await.unwrap(),
        BeginOutcome::Acquired
    );
    common::insert_order(&store, &mut tx, 2, job.attempt).await;
    store.idempotency_complete_in(&mut tx, complete("order-2", "delivery-1", b"charged")).await.unwrap();
    assert_eq!(store.job_ack_in(&mut tx, &[job.lease()]).await.unwrap(), vec![Ok(())]);
    // Not acked for anyone else until the commit: the job is still there outside.
    assert_eq!(store.job_get(id).await.unwrap().state, JobState::Leased);
    tx.commit().await.unwrap();

    assert_eq!(common::orders(&store).await, vec![(2, 1)]);
    assert_eq!(store.job_get(id).await, Err(Error::JobNotFound(id)));
    assert_eq!(store.queue_get(&q).await.unwrap().stats, QueueStats::default());
    assert_eq!(
        store.idempotency_begin(begin("order-2", "someone-else")).await.unwrap(),
        BeginOutcome::Completed { result: b"charged".to_vec() }
    );
    assert_eq!(store.ack(job.lease()).await, Err(Error::JobNotFound(id)), "acked once, never again");
    assert_eq!(store.lease_one(&q).await.unwrap(), None);
}

#[tokio::test]
async fn a_stale_lease_is_refused_inside_the_transaction_item_by_item() {
    let (store, clock, q, _guard) = setup().await;
    let ids: Vec<JobId> =
        store.job_enqueue(&q, vec![NewJob::new("3"), NewJob::new("4")]).await.unwrap().iter().map(|e| e.id).collect();
    let stale = store.lease_one(&q).await.unwrap().unwrap();
    let live = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!((stale.id, live.id), (ids[0], ids[1]));
    clock.advance(900);
    store.extend(live.lease(), 1_000).await.unwrap();
    clock.advance(200); // the first lease expired; another delivery takes its job
    let thief = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!((thief.id, thief.attempt), (ids[0], 2));

    let mut tx = store.pool().begin().await.unwrap();
    common::insert_order(&store, &mut tx, 3, stale.attempt).await;
    let unknown = LeaseRef { id: JobId::new(999_999), lease_token: LeaseToken::random() };
    let verdicts = store.job_ack_in(&mut tx, &[stale.lease(), live.lease(), unknown]).await.unwrap();
    assert_eq!(verdicts, vec![Err(Error::LeaseLost(ids[0])), Ok(()), Err(Error::JobNotFound(unknown.id))]);
    // The effect of the stale delivery must not commit without its ack: the caller rolls back.
    tx.rollback().await.unwrap();

    assert_eq!(common::orders(&store).await, Vec::<(i64, i32)>::new());
    assert_eq!(store.job_get(ids[1]).await.unwrap().state, JobState::Leased, "the rollback undid the live ack too");
    store.ack(thief.lease()).await.unwrap();
    store.ack(live.lease()).await.unwrap();
    assert_eq!(store.queue_get(&q).await.unwrap().stats, QueueStats::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_in_an_open_transaction_is_decided_by_its_commit() {
    let (store, _guard) = common::fresh_store(None).await;
    let store = Arc::new(store);
    let mut first = store.pool().begin().await.unwrap();
    assert_eq!(store.idempotency_begin_in(&mut first, begin("k", "first")).await.unwrap(), BeginOutcome::Acquired);

    let s = store.clone();
    let second = tokio::spawn(async move {
        let mut tx = s.pool().begin().await.unwrap();
        let outcome = s.idempotency_begin_in(&mut tx, begin("k", "second")).await;
        tx.commit().await.unwrap();
        outcome
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second.is_finished(), "a claim did not wait for the open transaction holding the key");
    store.idempotency_complete_in(&mut first, complete("k", "first", b"done")).await.unwrap();
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), BeginOutcome::Completed { result: b"done".to_vec() });

    // A claim rolled back leaves the key free.
    let mut tx = store.pool().begin().await.unwrap();
    assert_eq!(store.idempotency_begin_in(&mut tx, begin("j", "first")).await.unwrap(), BeginOutcome::Acquired);
    tx.rollback().await.unwrap();
    assert_eq!(store.idempotency_begin(begin("j", "second")).await.unwrap(), BeginOutcome::Acquired);
    // A completion by someone who does not hold the key is refused inside a transaction too.
    let mut tx = store.pool().begin().await.unwrap();
    let refused = store.idempotency_complete_in(&mut tx, complete("j", "first", b"")).await;
    assert!(matches!(&refused, Err(Error::Conflict(_))), "{refused:?}");
}
