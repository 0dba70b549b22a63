//! Lease: order, batches, attempt/token/expiry, unknown and paused queues, `at_most_once`,
//! and what happens when a lease expires.

use std::collections::HashSet;

use onceq_core::limits::LEASE_BATCH_MAX;
use onceq_core::{
    DeadList, DeadPage, DeliveryMode, Error, Job, JobId, JobState, LeaseToken, LeasedJob, NackOutcome, NewJob,
    QueueConfigPatch, QueueInfo, QueueName, QueueStats, Store, StoreExt,
};

use super::{
    attempt_error, counts, defaults, ids_of, leased_from, leased_state, open_manual, queue, with_run_at_of, Fixture,
};
use crate::Backend;

/// Enqueues six jobs whose lease order differs from their id order; returns their ids in the
/// order they must be leased (priority, then `run_at`, then id).
async fn enqueue_for_order<S: Store + 'static>(f: &Fixture<S>, q: &QueueName) -> Vec<JobId> {
    let ids = f
        .enqueue(
            q,
            vec![
                NewJob::new("x").delay_ms(500),
                NewJob::new("y").delay_ms(100),
                NewJob::new("z"),
                NewJob::new("w").priority(10).delay_ms(300),
                NewJob::new("v"),
                NewJob::new("u").priority(-1),
            ],
        )
        .await;
    let [x, y, z, w, v, u] = ids[..] else { panic!("six ids expected, got {ids:?}") };
    vec![w, z, v, y, x, u]
}

/// Leasing hands out the highest priority first, then the oldest `run_at`, then the lowest id,
/// one by one and within a batch.
pub async fn lease_order_priority_then_run_at_then_id<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let (one_by_one, batch) = (queue("one-by-one"), queue("batch"));
    let expected_single = enqueue_for_order(&f, &one_by_one).await;
    let expected_batch = enqueue_for_order(&f, &batch).await;
    clock.advance(1_000);
    let mut got = Vec::new();
    for _ in 0..expected_single.len() {
        got.push(f.lease_one(&one_by_one, None).await.id);
    }
    assert_eq!(got, expected_single);
    f.lease_none(&one_by_one).await;
    assert_eq!(ids_of(&f.lease(&batch, 3, None).await), expected_batch[..3].to_vec());
    assert_eq!(ids_of(&f.lease(&batch, 10, None).await), expected_batch[3..].to_vec());
}

/// A lease hands out at most `max_jobs` jobs, each with its own token, and no job twice.
pub async fn lease_batch_up_to_max_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("batches");
    let ids = f.enqueue(&q, (0..5).map(|i| NewJob::new(format!("{i}"))).collect()).await;
    let first = f.lease(&q, 3, None).await;
    assert_eq!(ids_of(&first), ids[..3].to_vec());
    let second = f.lease(&q, 10, None).await;
    assert_eq!(ids_of(&second), ids[3..].to_vec());
    f.lease_none(&q).await;
    let all: Vec<&LeasedJob> = first.iter().chain(&second).collect();
    assert_eq!(all.iter().map(|j| j.attempt).collect::<Vec<_>>(), vec![1; 5]);
    let tokens: HashSet<LeaseToken> = all.iter().map(|j| j.lease_token).collect();
    assert_eq!(tokens.len(), 5, "every lease gets its own token");
    assert_eq!(f.stats(&q).await, counts(0, 0, 5, 0, None));
}

/// A lease sets `attempt += 1`, a fresh token, state `leased` and
/// `lease_expires_at = now + visibility timeout` (the call's, else the queue's current default).
pub async fn lease_sets_attempt_token_and_expiry<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiry");
    let t0 = f.now();
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c")]).await;
    let before: Vec<Job> = vec![f.get(ids[0]).await, f.get(ids[1]).await, f.get(ids[2]).await];

    let a = f.lease_one(&q, Some(5_000)).await;
    assert_eq!(a, leased_from(&before[0], a.lease_token, 1, t0.plus_ms(5_000)));
    assert_eq!(f.get(ids[0]).await, leased_state(&before[0], 1, t0.plus_ms(5_000)));

    let b = f.lease_one(&q, None).await;
    let queue_default = t0.plus_ms(defaults().visibility_timeout_ms);
    assert_eq!(b, leased_from(&before[1], b.lease_token, 1, queue_default));
    assert_eq!(f.get(ids[1]).await, leased_state(&before[1], 1, queue_default));

    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(20_000), ..Default::default() }).await;
    let c = f.lease_one(&q, None).await;
    assert_eq!(c, leased_from(&before[2], c.lease_token, 1, t0.plus_ms(20_000)));
    assert_eq!(f.stats(&q).await, counts(0, 0, 3, 0, None));

    // The first lease expires; the next lease of the same job gets attempt 2 and a new token.
    clock.advance(5_000);
    let expired = f.get(ids[0]).await;
    let again = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(again, leased_from(&expired, again.lease_token, 2, t0.plus_ms(6_000)));
    let tokens: HashSet<LeaseToken> = [&a, &b, &c, &again].iter().map(|j| j.lease_token).collect();
    assert_eq!(tokens.len(), 4, "every lease gets a fresh token");
}

/// Leasing from a queue that does not exist returns nothing and does not create it.
pub async fn lease_unknown_queue_is_empty_and_not_created<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let ghost = queue("ghost");
    assert_eq!(f.lease(&ghost, LEASE_BATCH_MAX, Some(1_000)).await, Vec::<LeasedJob>::new());
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
    assert_eq!(f.store.queue_get(&ghost).await, Err(Error::QueueNotFound(ghost.clone())));
}

/// A paused queue hands out nothing but still accepts enqueues; resuming restores leasing.
pub async fn lease_paused_queue_hands_out_nothing<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("pausable");
    let first = f.enqueue_one(&q, NewJob::new("1")).await;
    assert_eq!(f.store.queue_pause(&q).await, Ok(()));
    let info = f.store.queue_get(&q).await.unwrap();
    assert_eq!(
        info,
        QueueInfo { name: q.clone(), config: defaults(), paused: true, stats: counts(1, 0, 0, 0, Some(0)) }
    );
    f.lease_none(&q).await;
    let second = f.enqueue_one(&q, NewJob::new("2")).await;
    assert_eq!(f.stats(&q).await, counts(2, 0, 0, 0, Some(0)));
    f.lease_none(&q).await;
    assert_eq!(f.store.queue_resume(&q).await, Ok(()));
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.paused), Ok(false));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![first, second]);
}

/// In an `at_most_once` queue a lease is the ack: the job is removed as it is handed out and is
/// never delivered again; settling it finds no job.
pub async fn lease_at_most_once_removes_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fire-and-forget");
    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::AtMostOnce), ..Default::default() }).await;
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    let before = f.get(ids[0]).await;
    let a = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(a, leased_from(&before, a.lease_token, 1, f.now().plus_ms(1_000)));
    assert_eq!(f.store.job_get(ids[0]).await, Err(Error::JobNotFound(ids[0])));
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    f.assert_settles_rejected(a.lease(), Error::JobNotFound(ids[0])).await;
    clock.advance(60_000);
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1]]);
    clock.advance(60_000);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, QueueStats::default());
}

/// When `now >= lease_expires_at` the lease is lost: the job is `ready` with
/// `run_at = lease_expires_at`, "lease expired" is recorded at that time, and the next lease gets
/// attempt 2 with a new token while the old one is rejected.
pub async fn lease_expiry_redelivers_with_next_attempt<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiring");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("slow worker")).await;
    let first = f.lease_one(&q, Some(1_000)).await;
    let leased = f.get(id).await;
    clock.advance(999);
    assert_eq!(f.get(id).await, leased, "a lease is live while now < lease_expires_at");
    f.lease_none(&q).await;
    clock.advance(501);
    let expired = Job {
        state: JobState::Ready,
        run_at: t0.plus_ms(1_000),
        lease_expires_at: None,
        errors: vec![attempt_error(1, "lease expired", t0.plus_ms(1_000))],
        ..leased
    };
    assert_eq!(f.get(id).await, expired);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(500)));
    let second = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(second, leased_from(&expired, second.lease_token, 2, f.now().plus_ms(1_000)));
    assert_ne!(second.lease_token, first.lease_token);
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(id)).await;
    assert_eq!(f.store.ack(second.lease()).await, Ok(()));
}

/// A lease that expires on the job's last attempt dead-letters it, recording "lease expired".
pub async fn lease_expiry_on_last_attempt_dead_letters<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("expiring-last");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("once").max_attempts(1)).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    let before = f.get(id).await;
    clock.advance(5_000);
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "lease expired", t0.plus_ms(1_000))],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    f.lease_none(&q).await;
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
}

/// The error of every attempt is kept, in order, with its attempt number and time, whichever
/// way the attempt ended (nack with text, expiry, nack without text, fail).
pub async fn error_history_keeps_every_attempt<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("history");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("unlucky").max_attempts(4)).await;
    let one = f.lease_one(&q, Some(1_000)).await;
    clock.advance(10);
    assert_eq!(
        f.store.nack(one.lease(), Some(0), Some("e1")).await,
        Ok(NackOutcome::Retrying { run_at: t0.plus_ms(10) })
    );
    let two = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(two.attempt, 2);
    clock.advance(1_000);
    let three = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(three.attempt, 3);
    assert_eq!(
        f.store.nack(three.lease(), Some(0), None).await,
        Ok(NackOutcome::Retrying { run_at: t0.plus_ms(1_010) })
    );
    let four = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(four.attempt, 4);
    clock.advance(5);
    assert_eq!(f.store.fail(four.lease(), "e4").await, Ok(()));
    let job = f.get(id).await;
    assert_eq!(
        (job.state, job.attempt, job.errors),
        (
            JobState::Dead,
            4,
            vec![
                attempt_error(1, "e1", t0.plus_ms(10)),
                attempt_error(2, "lease expired", t0.plus_ms(1_010)),
                attempt_error(3, "nacked", t0.plus_ms(1_010)),
                attempt_error(4, "e4", t0.plus_ms(1_015)),
            ]
        )
    );
}
