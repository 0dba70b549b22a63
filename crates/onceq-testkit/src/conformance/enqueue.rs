//! Enqueue: ids, atomic batches, queues created on first use, attempts, delays and `run_at`,
//! and the dedup window as enqueue sees it.

use onceq_core::limits::{PAYLOAD_BYTES_MAX, PRIORITY_MAX};
use onceq_core::store::validate;
use onceq_core::{
    DeliveryMode, Enqueued, Error, ErrorKind, Job, JobId, JobState, NewJob, QueueConfigPatch, QueueInfo, QueueStats,
    Store, StoreExt, Timestamp,
};

use super::{assert_increasing, counts, defaults, fresh, ids_of, leased_from, open_manual, queue};
use crate::Backend;

/// Enqueue assigns ids in request order, strictly increasing across calls and across the store's
/// life (never reused, even after the highest job is acked or its queue deleted), and stores each
/// job exactly as sent.
pub async fn enqueue_returns_ids_in_request_order<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("orders");
    let t0 = f.now();
    let jobs: Vec<NewJob> =
        (0..5).map(|i| NewJob::new(format!("job {i}")).priority(i).header("n", i.to_string())).collect();
    let enqueued = f.store.job_enqueue(&q, jobs.clone()).await.unwrap();
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id).collect();
    assert_eq!(enqueued, ids.iter().map(|&id| Enqueued { id, duplicate: false }).collect::<Vec<_>>());
    assert_eq!(ids.len(), 5);
    assert_increasing(&ids);
    for (id, job) in ids.iter().zip(&jobs) {
        assert_eq!(f.get(*id).await, fresh(*id, &q, job, t0, t0, defaults().max_attempts));
    }

    let more = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    assert_increasing(&[ids.clone(), more.clone()].concat());

    // Gone jobs leave their ids behind: the highest one is not handed out again.
    let all = f.lease(&q, 10, None).await;
    assert_eq!(all.len(), 7);
    for job in &all {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }
    let after_ack = f.enqueue_one(&q, NewJob::new("after ack")).await;
    assert!(after_ack > more[1], "id {after_ack} reuses or precedes {}", more[1]);
    f.store.queue_delete(&q).await.unwrap();
    let after_delete = f.enqueue_one(&q, NewJob::new("after delete")).await;
    assert!(after_delete > after_ack, "id {after_delete} reuses or precedes {after_ack}");
    let elsewhere = f.enqueue_one(&queue("elsewhere"), NewJob::new("other queue")).await;
    assert!(elsewhere > after_delete, "ids are store-wide: {elsewhere} after {after_delete}");
}

/// One invalid job rejects the whole batch with the shared validation's error, and nothing is
/// written: no queue is created, no job and no dedup id is stored.
pub async fn enqueue_batch_is_atomic<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("atomic");

    let bad_priority = vec![NewJob::new("a"), NewJob::new("b").priority(PRIORITY_MAX + 1), NewJob::new("c")];
    let expected = validate::enqueue(&bad_priority).unwrap_err();
    assert_eq!(expected.kind(), ErrorKind::InvalidRequest);
    assert_eq!(f.store.job_enqueue(&q, bad_priority).await, Err(expected));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));

    let too_large = vec![NewJob::new("a").dedup_id("a"), NewJob::new(vec![7u8; PAYLOAD_BYTES_MAX + 1])];
    let expected = validate::enqueue(&too_large).unwrap_err();
    assert_eq!(expected.kind(), ErrorKind::PayloadTooLarge);
    assert_eq!(f.store.job_enqueue(&q, too_large).await, Err(expected));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&q).await, Err(Error::QueueNotFound(q.clone())));

    // The dedup id of the rejected batch was not remembered.
    let id = f.enqueue_one(&q, NewJob::new("a").dedup_id("a")).await;
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));

    // effectively_once: one job without a dedup id rejects the batch, including its valid jobs.
    let strict = queue("strict");
    f.upsert(&strict, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let mixed = vec![NewJob::new("x").dedup_id("x"), NewJob::new("y")];
    let err = f.store.job_enqueue(&strict, mixed).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert_eq!(f.stats(&strict).await, QueueStats::default());
    let x = f.enqueue_one(&strict, NewJob::new("x").dedup_id("x")).await;
    assert!(x > id, "a fresh job gets a fresh id");
}

/// Enqueueing to a queue that does not exist creates it with the default config.
pub async fn enqueue_creates_unknown_queue_with_defaults<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("brand-new");
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&q).await, Err(Error::QueueNotFound(q.clone())));
    f.enqueue_one(&q, NewJob::new("first")).await;
    let info = QueueInfo { name: q.clone(), config: defaults(), paused: false, stats: counts(1, 0, 0, 0, Some(0)) };
    assert_eq!(f.store.queue_get(&q).await, Ok(info.clone()));
    assert_eq!(f.store.queue_list().await, Ok(vec![info]));
}

/// A job's `max_attempts` is its own, else the queue's at enqueue time; a later config change
/// does not touch jobs already enqueued.
pub async fn enqueue_max_attempts_from_job_else_queue<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("attempts");
    let t0 = f.now();
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(7), ..Default::default() }).await;
    let (plain, own) = (NewJob::new("plain"), NewJob::new("own").max_attempts(3));
    let ids = f.enqueue(&q, vec![plain.clone(), own.clone()]).await;
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(9), ..Default::default() }).await;
    let later = NewJob::new("later");
    let later_id = f.enqueue_one(&q, later.clone()).await;
    assert_eq!(f.get(ids[0]).await, fresh(ids[0], &q, &plain, t0, t0, 7));
    assert_eq!(f.get(ids[1]).await, fresh(ids[1], &q, &own, t0, t0, 3));
    assert_eq!(f.get(later_id).await, fresh(later_id, &q, &later, t0, t0, 9));
    let leased = f.lease(&q, 3, None).await;
    let max: Vec<(JobId, u32)> = leased.iter().map(|j| (j.id, j.max_attempts)).collect();
    assert_eq!(max, vec![(ids[0], 7), (ids[1], 3), (later_id, 9)]);
}

/// An `effectively_once` queue rejects a job without a dedup id (`InvalidRequest`, nothing
/// written) and accepts and deduplicates jobs that carry one.
pub async fn enqueue_effectively_once_requires_dedup_ids<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("payments");
    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let err = f.store.job_enqueue(&q, vec![NewJob::new("charge")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert_eq!(f.stats(&q).await, QueueStats::default());
    let first = f.store.enqueue(&q, NewJob::new("charge").dedup_id("charge-42")).await.unwrap();
    assert!(!first.duplicate);
    let again = f.store.enqueue(&q, NewJob::new("charge").dedup_id("charge-42")).await;
    assert_eq!(again, Ok(Enqueued { id: first.id, duplicate: true }));
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
}

/// A delayed job is `scheduled` at now + delay and becomes ready (leasable) exactly when due.
pub async fn enqueue_delayed_job_becomes_ready_when_due<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("delayed");
    let t0 = f.now();
    let job = NewJob::new("later").delay_ms(5_000);
    let id = f.enqueue_one(&q, job.clone()).await;
    let scheduled = fresh(id, &q, &job, t0, t0.plus_ms(5_000), defaults().max_attempts);
    assert_eq!(scheduled.state, JobState::Scheduled);
    assert_eq!(f.get(id).await, scheduled);
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));
    f.lease_none(&q).await;

    clock.advance(4_999);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));

    clock.advance(1);
    let ready = Job { state: JobState::Ready, ..scheduled };
    assert_eq!(f.get(id).await, ready);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    let leased = f.lease_one(&q, None).await;
    let expires = f.now().plus_ms(defaults().visibility_timeout_ms);
    assert_eq!(leased, leased_from(&ready, leased.lease_token, 1, expires));
}

/// `Schedule::At` sets `run_at` to that time (`scheduled` until then); a time in the past means
/// now (`ready`); leasing then follows `run_at`, not id.
pub async fn enqueue_run_at_schedules_at_that_time<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("at");
    let t0 = f.now();
    let future = NewJob::new("future").run_at(t0.plus_ms(10_000));
    let past = NewJob::new("past").run_at(Timestamp::from_millis(t0.as_millis() - 60_000));
    let exact = NewJob::new("exact").run_at(t0);
    let ids = f.enqueue(&q, vec![future.clone(), past.clone(), exact.clone()]).await;
    let max = defaults().max_attempts;
    assert_eq!(f.get(ids[0]).await, fresh(ids[0], &q, &future, t0, t0.plus_ms(10_000), max));
    assert_eq!(f.get(ids[1]).await, fresh(ids[1], &q, &past, t0, t0, max));
    assert_eq!(f.get(ids[2]).await, fresh(ids[2], &q, &exact, t0, t0, max));
    assert_eq!(f.stats(&q).await, counts(2, 1, 0, 0, Some(0)));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1], ids[2]]);
    clock.advance(9_999);
    f.lease_none(&q).await;
    clock.advance(1);
    assert_eq!(f.lease_one(&q, None).await.id, ids[0]);
}

/// Within the dedup window the same (queue, dedup id) returns the original id with
/// `duplicate: true` and creates nothing, even after the original was acked or went dead; another
/// queue's dedup ids are its own.
pub async fn enqueue_dedup_returns_original_even_after_ack_or_dead<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("dedup");
    let acked = f.enqueue_one(&q, NewJob::new("a").dedup_id("a")).await;
    assert_eq!(
        f.store.enqueue(&q, NewJob::new("a, again").dedup_id("a")).await,
        Ok(Enqueued { id: acked, duplicate: true })
    );
    assert_eq!(f.get(acked).await.payload, b"a".to_vec(), "a duplicate must not overwrite the original");
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));
    clock.advance(1_000);
    assert_eq!(f.store.enqueue(&q, NewJob::new("a").dedup_id("a")).await, Ok(Enqueued { id: acked, duplicate: true }));
    assert_eq!(f.stats(&q).await, QueueStats::default());
    assert_eq!(f.store.job_get(acked).await, Err(Error::JobNotFound(acked)));

    let dead = f.enqueue_one(&q, NewJob::new("b").dedup_id("b")).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.fail(leased.lease(), "no").await, Ok(()));
    assert_eq!(f.store.enqueue(&q, NewJob::new("b").dedup_id("b")).await, Ok(Enqueued { id: dead, duplicate: true }));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));

    let other = f.store.enqueue(&queue("dedup-other"), NewJob::new("a").dedup_id("a")).await.unwrap();
    assert!(!other.duplicate, "dedup ids are per queue");
    assert!(other.id > dead);
}

/// The dedup window runs from the first enqueue (duplicates do not extend it); once it has
/// passed (now >= first + window) the same dedup id creates a new job, which opens a new window.
/// A window of 0 deduplicates nothing.
pub async fn enqueue_dedup_window_expires<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("window");
    f.upsert(&q, QueueConfigPatch { dedup_window_ms: Some(1_000), ..Default::default() }).await;
    let first = f.enqueue_one(&q, NewJob::new("1").dedup_id("k")).await;
    clock.advance(999);
    assert_eq!(f.store.enqueue(&q, NewJob::new("2").dedup_id("k")).await, Ok(Enqueued { id: first, duplicate: true }));
    clock.advance(1);
    let second = f.enqueue_one(&q, NewJob::new("3").dedup_id("k")).await;
    assert!(second > first);
    clock.advance(999);
    assert_eq!(f.store.enqueue(&q, NewJob::new("4").dedup_id("k")).await, Ok(Enqueued { id: second, duplicate: true }));
    clock.advance(1);
    let third = f.enqueue_one(&q, NewJob::new("5").dedup_id("k")).await;
    assert!(third > second);
    assert_eq!(f.stats(&q).await.ready, 3);

    let none = queue("no-window");
    f.upsert(&none, QueueConfigPatch { dedup_window_ms: Some(0), ..Default::default() }).await;
    let a = f.enqueue_one(&none, NewJob::new("a").dedup_id("k")).await;
    let b = f.enqueue_one(&none, NewJob::new("b").dedup_id("k")).await;
    assert!(b > a);
}
