//! Settling a lease: ack, nack (explicit delay, backoff, zero, last attempt), release, extend
//! and fail, one by one and in batches.

use onceq_core::limits::ERROR_TEXT_BYTES_MAX;
use onceq_core::{
    truncate_error_text, Backoff, DeadList, DeadPage, Error, Extend, Fail, Jitter, Job, JobState, LeaseRef, LeaseToken,
    Nack, NackOutcome, NewJob, QueueConfigPatch, QueueStats, Release, Store, StoreExt,
};

use super::{attempt_error, counts, defaults, ids_of, leased_from, open_manual, queue, with_run_at_of, UNKNOWN_ID};
use crate::Backend;

/// Ack deletes the job: it cannot be read, settled or leased again.
pub async fn ack_removes_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("acks");
    let id = f.enqueue_one(&q, NewJob::new("done soon")).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(f.store.job_ack(&[leased.lease()]).await, Ok(vec![Ok(())]));
    assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    assert_eq!(f.stats(&q).await, QueueStats::default());
    f.assert_settles_rejected(leased.lease(), Error::JobNotFound(id)).await;
    clock.advance(60_000);
    f.lease_none(&q).await;
}

/// Each item of an ack batch is judged alone: good leases are acked, a wrong token or a job not
/// leased is `LeaseLost`, an unknown id `JobNotFound`, and the rejected jobs are unchanged.
pub async fn ack_batch_judges_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("mixed");
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c"), NewJob::new("r")]).await;
    let leased = f.lease(&q, 3, None).await;
    assert_eq!(ids_of(&leased), ids[..3].to_vec());
    let (a, b, c, r) = (&leased[0], &leased[1], &leased[2], ids[3]);
    let b_before = f.get(b.id).await;
    let r_before = f.get(r).await;
    let acks = [
        a.lease(),
        LeaseRef { id: b.id, lease_token: LeaseToken::random() },
        LeaseRef { id: UNKNOWN_ID, lease_token: LeaseToken::random() },
        LeaseRef { id: r, lease_token: LeaseToken::random() },
        c.lease(),
    ];
    assert_eq!(
        f.store.job_ack(&acks).await,
        Ok(vec![
            Ok(()),
            Err(Error::LeaseLost(b.id)),
            Err(Error::JobNotFound(UNKNOWN_ID)),
            Err(Error::LeaseLost(r)),
            Ok(())
        ])
    );
    assert_eq!(f.store.job_get(a.id).await, Err(Error::JobNotFound(a.id)));
    assert_eq!(f.store.job_get(c.id).await, Err(Error::JobNotFound(c.id)));
    assert_eq!(f.get(b.id).await, b_before);
    assert_eq!(f.get(r).await, r_before);
    assert_eq!(f.store.ack(b.lease()).await, Ok(()), "b's lease survived the batch");
}

/// Each item of a nack, extend or fail batch is judged alone, like an ack batch.
pub async fn nack_extend_fail_batches_judge_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("mixed-settles");
    f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c")]).await;
    let leased = f.lease(&q, 3, None).await;
    let (a, b, c) = (&leased[0], &leased[1], &leased[2]);
    let now = f.now();

    let nacks = [
        Nack { id: a.id, lease_token: a.lease_token, delay_ms: Some(0), error: Some("again".into()) },
        Nack { id: b.id, lease_token: LeaseToken::random(), delay_ms: Some(0), error: None },
        Nack { id: UNKNOWN_ID, lease_token: LeaseToken::random(), delay_ms: None, error: None },
    ];
    assert_eq!(
        f.store.job_nack(&nacks).await,
        Ok(vec![
            Ok(NackOutcome::Retrying { run_at: now }),
            Err(Error::LeaseLost(b.id)),
            Err(Error::JobNotFound(UNKNOWN_ID))
        ])
    );

    let extends = [
        Extend { id: b.id, lease_token: b.lease_token, visibility_timeout_ms: 5_000 },
        Extend { id: a.id, lease_token: a.lease_token, visibility_timeout_ms: 5_000 },
        Extend { id: UNKNOWN_ID, lease_token: LeaseToken::random(), visibility_timeout_ms: 5_000 },
    ];
    assert_eq!(
        f.store.job_extend(&extends).await,
        Ok(vec![Ok(now.plus_ms(5_000)), Err(Error::LeaseLost(a.id)), Err(Error::JobNotFound(UNKNOWN_ID))])
    );

    let fails = [
        Fail { id: c.id, lease_token: c.lease_token, error: "broken".into() },
        Fail { id: b.id, lease_token: LeaseToken::random(), error: "not mine".into() },
        Fail { id: UNKNOWN_ID, lease_token: LeaseToken::random(), error: "nobody".into() },
    ];
    assert_eq!(
        f.store.job_fail(&fails).await,
        Ok(vec![Ok(()), Err(Error::LeaseLost(b.id)), Err(Error::JobNotFound(UNKNOWN_ID))])
    );

    assert_eq!(f.get(a.id).await.state, JobState::Ready);
    assert_eq!(f.get(b.id).await.lease_expires_at, Some(now.plus_ms(5_000)));
    assert_eq!(f.get(b.id).await.errors, vec![]);
    assert_eq!(f.get(c.id).await.state, JobState::Dead);
    assert_eq!(f.stats(&q).await, counts(1, 0, 1, 1, Some(0)));
}

/// A nack with an explicit delay records the error and schedules the job at now + delay; it is
/// leased again, with attempt 2, exactly when due.
pub async fn nack_with_explicit_delay<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("nacks");
    let id = f.enqueue_one(&q, NewJob::new("flaky")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    clock.advance(100);
    let t1 = f.now();
    assert_eq!(
        f.store.nack(leased.lease(), Some(2_000), Some("boom")).await,
        Ok(NackOutcome::Retrying { run_at: t1.plus_ms(2_000) })
    );
    let nacked = Job {
        state: JobState::Scheduled,
        run_at: t1.plus_ms(2_000),
        lease_expires_at: None,
        errors: vec![attempt_error(1, "boom", t1)],
        ..before
    };
    assert_eq!(f.get(id).await, nacked);
    assert_eq!(f.stats(&q).await, counts(0, 1, 0, 0, None));
    f.lease_none(&q).await;
    clock.advance(1_999);
    f.lease_none(&q).await;
    clock.advance(1);
    let again = f.lease_one(&q, None).await;
    let ready = Job { state: JobState::Ready, ..nacked };
    assert_eq!(again, leased_from(&ready, again.lease_token, 2, f.now().plus_ms(defaults().visibility_timeout_ms)));
    assert_ne!(again.lease_token, leased.lease_token);
}

/// A nack without a delay uses the queue's backoff for the failed attempt (exact with
/// `Jitter::None`, growing and capped; within `[0, base]` with full jitter) and records "nacked"
/// when no error text is given.
pub async fn nack_with_backoff<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("backoff");
    let backoff = Backoff { initial_ms: 1_000, max_ms: 10_000, multiplier: 3.0, jitter: Jitter::None };
    f.upsert(&q, QueueConfigPatch { backoff: Some(backoff.into()), max_attempts: Some(10), ..Default::default() })
        .await;
    let id = f.enqueue_one(&q, NewJob::new("retry me")).await;
    let mut errors = Vec::new();
    for (attempt, delay) in [(1u32, 1_000u64), (2, 3_000), (3, 9_000), (4, 10_000), (5, 10_000)] {
        let leased = f.lease_one(&q, None).await;
        assert_eq!(leased.attempt, attempt);
        let now = f.now();
        assert_eq!(
            f.store.nack(leased.lease(), None, None).await,
            Ok(NackOutcome::Retrying { run_at: now.plus_ms(delay) })
        );
        errors.push(attempt_error(attempt, "nacked", now));
        let job = f.get(id).await;
        assert_eq!(
            (job.state, job.run_at, job.attempt, &job.errors),
            (JobState::Scheduled, now.plus_ms(delay), attempt, &errors)
        );
        clock.advance(delay - 1);
        f.lease_none(&q).await;
        clock.advance(1);
    }

    let jittered = queue("backoff-jittered");
    let base = defaults().backoff.base_delay_ms(1);
    f.enqueue_one(&jittered, NewJob::new("jitter")).await;
    let leased = f.lease_one(&jittered, None).await;
    let now = f.now();
    let Ok(NackOutcome::Retrying { run_at }) = f.store.nack(leased.lease(), None, Some("jitter")).await else {
        panic!("a first nack of a default queue must retry")
    };
    assert!(run_at >= now && run_at <= now.plus_ms(base), "full jitter: {run_at} outside [{now}, {now} + {base}]");
    let expected_state = if run_at > now { JobState::Scheduled } else { JobState::Ready };
    assert_eq!(f.get(leased.id).await.state, expected_state);
}

/// A nack with delay 0 (given, or from a zero backoff) makes the job `ready` at once.
pub async fn nack_zero_delay_is_ready_at_once<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("zero");
    let id = f.enqueue_one(&q, NewJob::new("again")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    let now = f.now();
    assert_eq!(f.store.nack(leased.lease(), Some(0), Some("again")).await, Ok(NackOutcome::Retrying { run_at: now }));
    let ready = Job {
        state: JobState::Ready,
        run_at: now,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "again", now)],
        ..before
    };
    assert_eq!(f.get(id).await, ready);
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    let again = f.lease_one(&q, None).await;
    assert_eq!(again.attempt, 2);

    let instant = queue("zero-backoff");
    let backoff = Backoff { initial_ms: 0, max_ms: 0, multiplier: 1.0, jitter: Jitter::None };
    f.upsert(&instant, QueueConfigPatch { backoff: Some(backoff.into()), ..Default::default() }).await;
    f.enqueue_one(&instant, NewJob::new("again")).await;
    let leased = f.lease_one(&instant, None).await;
    assert_eq!(f.store.nack(leased.lease(), None, None).await, Ok(NackOutcome::Retrying { run_at: now }));
    assert_eq!(f.lease_one(&instant, None).await.attempt, 2);
}

/// A release ends the lease without counting it as an attempt: the job is ready at once with its
/// attempt count given back and no error recorded, even on its last attempt.
pub async fn release_returns_the_job_without_burning_an_attempt<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("release");
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(1), ..Default::default() }).await;
    let id = f.enqueue_one(&q, NewJob::new("not yet")).await;
    let before = f.get(id).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.attempt, 1);
    let now = f.now();
    assert_eq!(f.store.release(leased.lease(), None).await, Ok(()));
    assert_eq!(f.get(id).await, Job { run_at: now, ..before });
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    // The released lease is over: its token settles nothing.
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    // The next lease is attempt 1 again, and its nack (the last attempt) dead-letters.
    let again = f.lease_one(&q, None).await;
    assert_eq!(again.attempt, 1);
    assert_eq!(f.store.nack(again.lease(), None, Some("real failure")).await, Ok(NackOutcome::Dead));
}

/// A release with a delay schedules the job that far ahead.
pub async fn release_with_a_delay_schedules_the_job<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("release-later");
    let id = f.enqueue_one(&q, NewJob::new("later")).await;
    let leased = f.lease_one(&q, None).await;
    let run_at = f.now().plus_ms(500);
    f.store.release(leased.lease(), Some(500)).await.unwrap();
    let job = f.get(id).await;
    assert_eq!((job.state, job.run_at, job.attempt, job.errors.len()), (JobState::Scheduled, run_at, 0, 0));
    f.lease_none(&q).await;
    clock.advance(500);
    assert_eq!(f.lease_one(&q, None).await.attempt, 1);
}

/// A release batch judges each item alone: a stale token is `LeaseLost`, an unknown job
/// `JobNotFound`, and neither changes anything.
pub async fn release_batch_judges_each_item_alone<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("release-batch");
    let ids = f.enqueue(&q, vec![NewJob::new("a"), NewJob::new("b")]).await;
    let leased = f.lease(&q, 2, None).await;
    let stale = Release { id: ids[1], lease_token: LeaseToken::random(), delay_ms: None };
    let unknown = Release { id: UNKNOWN_ID, lease_token: leased[0].lease_token, delay_ms: None };
    let good = Release { id: leased[0].id, lease_token: leased[0].lease_token, delay_ms: None };
    let results = f.store.job_release(&[good, stale, unknown]).await.unwrap();
    assert_eq!(results, vec![Ok(()), Err(Error::LeaseLost(ids[1])), Err(Error::JobNotFound(UNKNOWN_ID))]);
    assert_eq!(f.get(ids[1]).await.state, JobState::Leased);
    assert_eq!(f.stats(&q).await, counts(1, 0, 1, 0, Some(0)));
    let too_far = Release { delay_ms: Some(onceq_core::limits::DELAY_MS_MAX + 1), ..good };
    assert!(matches!(f.store.job_release(&[too_far]).await, Err(Error::InvalidRequest(_))));
}

/// A nack on the job's last attempt dead-letters it (whatever delay it names): outcome `Dead`,
/// state `dead`, every attempt's error kept, never leased again.
pub async fn nack_on_last_attempt_dead_letters<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("last-nack");
    let id = f.enqueue_one(&q, NewJob::new("twice").max_attempts(2)).await;
    let before = f.get(id).await;
    let first = f.lease_one(&q, None).await;
    let t0 = f.now();
    assert_eq!(f.store.nack(first.lease(), Some(0), Some("one")).await, Ok(NackOutcome::Retrying { run_at: t0 }));
    let second = f.lease_one(&q, None).await;
    clock.advance(10);
    let t1 = f.now();
    assert_eq!(f.store.nack(second.lease(), Some(5_000), Some("two")).await, Ok(NackOutcome::Dead));
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        attempt: 2,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "one", t0), attempt_error(2, "two", t1)],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    clock.advance(10_000);
    f.lease_none(&q).await;
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
}

/// Extend moves the expiry to now + the new timeout (longer or shorter) and returns it; the same
/// token keeps working after the old expiry, with the same attempt.
pub async fn extend_moves_expiry_and_keeps_token<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("extend");
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("slow")).await;
    let leased = f.lease_one(&q, Some(1_000)).await;
    let before = f.get(id).await;
    clock.advance(500);
    assert_eq!(f.store.extend(leased.lease(), 2_000).await, Ok(t0.plus_ms(2_500)));
    assert_eq!(f.get(id).await, Job { lease_expires_at: Some(t0.plus_ms(2_500)), ..before.clone() });
    clock.advance(1_000);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 0, 1, 0, None));
    assert_eq!(f.store.extend(leased.lease(), 1_000).await, Ok(t0.plus_ms(2_500)));
    clock.advance(999);
    assert_eq!(f.get(id).await.attempt, 1);
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));

    // Shortening: the lease now ends 1 ms from now.
    let short = f.enqueue_one(&q, NewJob::new("short")).await;
    let leased = f.lease_one(&q, Some(60_000)).await;
    let now = f.now();
    assert_eq!(f.store.extend(leased.lease(), 1).await, Ok(now.plus_ms(1)));
    clock.advance(1);
    let job = f.get(short).await;
    assert_eq!(
        (job.state, job.run_at, &job.errors),
        (JobState::Ready, now.plus_ms(1), &vec![attempt_error(1, "lease expired", now.plus_ms(1))])
    );
}

/// Fail dead-letters the job now, whatever attempts are left, recording its error; its token is
/// then lost and it is never leased.
pub async fn fail_dead_letters_with_error<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fails");
    let id = f.enqueue_one(&q, NewJob::new("poison")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.get(id).await;
    clock.advance(10);
    let now = f.now();
    assert_eq!(
        f.store.job_fail(&[Fail { id, lease_token: leased.lease_token, error: "bad input".into() }]).await,
        Ok(vec![Ok(())])
    );
    let got = f.get(id).await;
    let dead = Job {
        state: JobState::Dead,
        lease_expires_at: None,
        errors: vec![attempt_error(1, "bad input", now)],
        ..before
    };
    assert_eq!(got, with_run_at_of(dead, &got));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![got], next: None }));
    f.assert_settles_rejected(leased.lease(), Error::LeaseLost(id)).await;
    clock.advance(3_600_000);
    f.lease_none(&q).await;
}

/// Error texts longer than `ERROR_TEXT_BYTES_MAX` are kept cut (with `truncate_error_text`),
/// not rejected, so a worker reporting a huge panic can still nack or fail.
pub async fn settle_long_error_text_is_cut<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("long-errors");
    let id = f.enqueue_one(&q, NewJob::new("chatty")).await;
    let long = "é".repeat(ERROR_TEXT_BYTES_MAX);
    let leased = f.lease_one(&q, None).await;
    let now = f.now();
    assert_eq!(f.store.nack(leased.lease(), Some(0), Some(&long)).await, Ok(NackOutcome::Retrying { run_at: now }));
    let leased = f.lease_one(&q, None).await;
    assert_eq!(f.store.fail(leased.lease(), &long).await, Ok(()));
    let cut = truncate_error_text(&long);
    assert_eq!(f.get(id).await.errors, vec![attempt_error(1, &cut, now), attempt_error(2, &cut, now)]);
}
