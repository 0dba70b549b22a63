//! The embedded store's batched statements keep every job's fields and every item's verdict:
//! a full batch goes in by multi-row INSERTs of several sizes with ids in request order and each
//! job's own fields; a lease reads and claims a batch in lease order; an ack batch deletes its live
//! leases by id chunks and judges a lease named twice in one call as gone the second time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use onceq_core::limits::ENQUEUE_BATCH_MAX;
use onceq_core::{Error, LeaseOptions, LeaseRef, NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn job(i: usize) -> NewJob {
    let mut job = NewJob::new(format!("payload {i}")).priority((i % 3) as i32).max_attempts(1 + (i % 7) as u32);
    if i.is_multiple_of(5) {
        job = job.header("n", i.to_string());
    }
    job
}

#[tokio::test]
async fn a_full_batch_keeps_request_order_and_every_field_through_lease_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let queue = QueueName::new("q").unwrap();
    // 1000 = 15 × 64 + 2 × 16 + 2 × 4: every chunk size of the multi-row INSERT.
    let enqueued = store.job_enqueue(&queue, (0..ENQUEUE_BATCH_MAX).map(job).collect()).await.unwrap();
    assert_eq!(enqueued.len(), ENQUEUE_BATCH_MAX);
    let first = enqueued[0].id.get();
    for (i, e) in enqueued.iter().enumerate() {
        assert_eq!((e.id.get(), e.duplicate), (first + i as u64, false), "job {i}");
    }
    let mut leased = Vec::new();
    loop {
        let options = LeaseOptions { max_jobs: 100, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
        let batch = store.job_lease(&queue, options).await.unwrap();
        if batch.is_empty() {
            break;
        }
        leased.extend(batch);
    }
    assert_eq!(leased.len(), ENQUEUE_BATCH_MAX);
    // Lease order: priority high first, then run_at (all equal here), then id.
    let mut expected: Vec<usize> = (0..ENQUEUE_BATCH_MAX).collect();
    expected.sort_by_key(|&i| (std::cmp::Reverse(i % 3), i));
    for (job_leased, &i) in leased.iter().zip(&expected) {
        assert_eq!(job_leased.id.get(), first + i as u64);
        assert_eq!(job_leased.payload, format!("payload {i}").into_bytes());
        assert_eq!(job_leased.priority, (i % 3) as i32);
        assert_eq!(job_leased.max_attempts, 1 + (i % 7) as u32);
        assert_eq!(job_leased.attempt, 1);
        let header = job_leased.headers.get("n").cloned();
        assert_eq!(header, i.is_multiple_of(5).then(|| i.to_string()), "job {i}");
    }
    let mut tokens: Vec<[u8; 16]> = leased.iter().map(|j| *j.lease_token.as_bytes()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), ENQUEUE_BATCH_MAX, "every lease has its own token");
    // 1000 acks: id chunks of 128, 64, 32 and 8.
    let acks: Vec<LeaseRef> = leased.iter().map(|j| j.lease()).collect();
    let results = store.job_ack(&acks).await.unwrap();
    assert_eq!(results, vec![Ok(()); ENQUEUE_BATCH_MAX]);
    let stats = store.queue_get(&queue).await.unwrap().stats;
    assert_eq!((stats.ready, stats.scheduled, stats.leased, stats.dead), (0, 0, 0, 0));
    for e in &enqueued {
        assert_eq!(store.job_get(e.id).await, Err(Error::JobNotFound(e.id)));
    }
    store.close().await;
}

#[tokio::test]
async fn a_lease_named_twice_in_one_ack_is_acked_once_and_then_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let queue = QueueName::new("q").unwrap();
    store.job_enqueue(&queue, vec![NewJob::new("a"), NewJob::new("b")]).await.unwrap();
    let options = LeaseOptions { max_jobs: 2, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
    let leased = store.job_lease(&queue, options).await.unwrap();
    let (a, b) = (leased[0].lease(), leased[1].lease());
    let results = store.job_ack(&[a, b, a]).await.unwrap();
    assert_eq!(results, vec![Ok(()), Ok(()), Err(Error::JobNotFound(a.id))]);
    assert_eq!(store.queue_get(&queue).await.unwrap().stats.leased, 0);
    assert_eq!(store.ack(a).await, Err(Error::JobNotFound(a.id)));
    store.close().await;
}
