//! Proves that an enqueue of an ordering key and the key moving on take turns on the key, in the
//! interleavings that could otherwise leave a job blocked for ever (see the crate's `keys`
//! module): an ack whose head's key an open transaction is enqueuing into waits for it and then
//! hands the key to that transaction's job; an enqueue of a key whose head an open transaction
//! acked waits for it, then becomes the head (commit) or waits behind the head (rollback); an ack
//! inside a REPEATABLE READ transaction whose snapshot missed a job enqueued behind its head
//! fails with a serialization error instead of freeing the key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use onceq_core::{
    Error, JobId, JobState, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, Store, StoreExt,
};
use onceq_postgres::PgStore;

/// How long a call is given to show that it waits for a transaction: it must not return before.
const WAITS: Duration = Duration::from_millis(300);

async fn ordered_queue(store: &PgStore) -> QueueName {
    let q = QueueName::new("ordered").unwrap();
    let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    q
}

async fn state(store: &PgStore, id: JobId) -> JobState {
    store.job_get(id).await.unwrap().state
}

/// The head of each key in the store's schema, as (key, head id).
async fn heads(store: &PgStore) -> Vec<(String, i64)> {
    let sql = format!("SELECT ordering_key, head_id FROM \"{}\".ordering_keys ORDER BY ordering_key", store.schema());
    sqlx::query_as(&sql).fetch_all(store.pool()).await.unwrap()
}

fn id_of(id: JobId) -> i64 {
    i64::try_from(id.get()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_waits_for_an_enqueue_behind_its_head_and_hands_the_key_to_it() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = ordered_queue(&store).await;
    let head = store.enqueue(&q, NewJob::new("head").ordering_key("k")).await.unwrap().id;
    let leased = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(leased.id, head);

    let mut tx = store.transaction().await.unwrap();
    let next = store.job_enqueue_in(&mut tx, &q, vec![NewJob::new("next").ordering_key("k")]).await.unwrap()[0].id;
    let ack = {
        let store = store.clone();
        tokio::spawn(async move { store.ack(leased.lease()).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!ack.is_finished(), "the ack did not wait for the enqueue holding the key");
    tx.commit().await.unwrap();
    assert_eq!(ack.await.unwrap(), Ok(()));

    assert_eq!(state(&store, next).await, JobState::Ready, "the job enqueued behind the head was left blocked");
    assert_eq!(heads(&store).await, vec![("k".to_owned(), id_of(next))]);
    assert_eq!(store.lease_one(&q).await.unwrap().map(|j| j.id), Some(next));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_waits_for_an_ack_in_a_transaction_and_then_heads_the_key_or_waits_behind_it() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = ordered_queue(&store).await;
    let head = store.enqueue(&q, NewJob::new("head").ordering_key("k")).await.unwrap().id;
    let leased = store.lease_one(&q).await.unwrap().unwrap();

    // Rolled back: the head stays, and the job enqueued meanwhile waits behind it.
    let mut tx = store.transaction().await.unwrap();
    assert!(store.job_ack_in(&mut tx, &[leased.lease()]).await.unwrap()[0].is_ok());
    let enqueue = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move { store.enqueue(&q, NewJob::new("behind").ordering_key("k")).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!enqueue.is_finished(), "the enqueue did not wait for the ack holding the key");
    tx.rollback().await.unwrap();
    let behind = enqueue.await.unwrap().unwrap().id;
    assert_eq!((state(&store, head).await, state(&store, behind).await), (JobState::Leased, JobState::Blocked));
    assert_eq!(heads(&store).await, vec![("k".to_owned(), id_of(head))]);

    // Committed: the key went on to `behind`; then, acked in a transaction again, the key is
    // free, and the enqueue that waited for it heads it.
    assert_eq!(store.ack(leased.lease()).await, Ok(()));
    let leased = store.lease_one(&q).await.unwrap().unwrap();
    assert_eq!(leased.id, behind);
    let mut tx = store.transaction().await.unwrap();
    assert!(store.job_ack_in(&mut tx, &[leased.lease()]).await.unwrap()[0].is_ok());
    let enqueue = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move { store.enqueue(&q, NewJob::new("after").ordering_key("k")).await })
    };
    tokio::time::sleep(WAITS).await;
    assert!(!enqueue.is_finished(), "the enqueue did not wait for the ack holding the key");
    tx.commit().await.unwrap();
    let after = enqueue.await.unwrap().unwrap().id;
    assert_eq!(state(&store, after).await, JobState::Ready);
    assert_eq!(heads(&store).await, vec![("k".to_owned(), id_of(after))]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_whose_repeatable_read_snapshot_missed_a_blocked_job_fails_and_frees_nothing() {
    let (store, _guard) = common::fresh_store(None).await;
    let q = ordered_queue(&store).await;
    store.enqueue(&q, NewJob::new("head").ordering_key("k")).await.unwrap();
    let leased = store.lease_one(&q).await.unwrap().unwrap();

    let mut tx = store.transaction().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap(); // the snapshot is taken here
    let behind = store.enqueue(&q, NewJob::new("behind").ordering_key("k")).await.unwrap().id;
    let acked = store.job_ack_in(&mut tx, &[leased.lease()]).await;
    match acked {
        Err(Error::Unavailable(message)) => assert!(message.contains("40001"), "{message}"),
        other => panic!("expected a serialization failure, got {other:?}"),
    }
    tx.rollback().await.unwrap();

    assert_eq!(state(&store, behind).await, JobState::Blocked);
    assert_eq!(store.ack(leased.lease()).await, Ok(()));
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 0 };
    assert_eq!(store.job_lease(&q, options).await.unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), vec![behind]);
    store.close().await;
}
