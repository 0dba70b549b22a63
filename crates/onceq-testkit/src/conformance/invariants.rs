//! Invariants 2 to 7 of docs/design.md, checked at the seam. Invariant 1 is checked by the crash
//! test, which kills a real process; Invariant 8 is in [`limits`](super::limits).

use std::sync::Arc;
use std::time::Duration;

use onceq_core::{
    DeadList, DeadPage, Enqueued, Error, JobState, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, NackOutcome, NewJob,
    QueueConfigPatch, Redrive, Store, StoreExt,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::{assert_increasing, attempt_error, counts, ids_of, lease_concurrently, open_manual, queue, within};
use crate::Backend;

/// Invariant 2: a job has at most one live lease, however many consumers lease at once; every
/// job of a backlog drained by concurrent consumers is handed out exactly once.
pub async fn invariant_2_one_live_lease<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("contended");
    let id = f.enqueue_one(&q, NewJob::new("only one")).await;
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(1_000), wait_ms: 0 };
    let got = lease_concurrently(&f.store, &q, 16, options).await;
    assert_eq!(got.iter().map(|j| (j.id, j.attempt)).collect::<Vec<_>>(), vec![(id, 1)]);
    assert_eq!(lease_concurrently(&f.store, &q, 16, options).await, Vec::<LeasedJob>::new());
    assert_eq!(f.stats(&q).await, counts(0, 0, 1, 0, None));
    clock.advance(1_000);
    let got = lease_concurrently(&f.store, &q, 16, options).await;
    assert_eq!(got.iter().map(|j| (j.id, j.attempt)).collect::<Vec<_>>(), vec![(id, 2)]);

    let backlog = queue("backlog");
    let ids = f.enqueue(&backlog, (0..200).map(|i| NewJob::new(format!("{i}"))).collect()).await;
    let mut set = JoinSet::new();
    for _ in 0..8 {
        let (store, backlog) = (Arc::clone(&f.store), backlog.clone());
        set.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let options = LeaseOptions { max_jobs: 7, visibility_timeout_ms: None, wait_ms: 0 };
                let jobs = store.job_lease(&backlog, options).await.unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        });
    }
    let mut handed_out = Vec::new();
    while let Some(mine) = within("concurrent consumers", set.join_next()).await {
        handed_out.extend(mine.unwrap());
    }
    handed_out.sort();
    assert_eq!(handed_out, ids, "each job of the backlog must be leased exactly once");
}

/// Invariant 3: an ack, nack, extend or fail whose token is not the job's current live lease (an
/// expired lease, a superseded one, a stranger's token, another job's token, a settled lease) is
/// rejected with `LeaseLost` (or `JobNotFound` once the job is gone) and changes nothing.
pub async fn invariant_3_fencing<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("fenced");
    let a = f.enqueue_one(&q, NewJob::new("a")).await;
    let first = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(first.id, a);

    // Expired, not yet leased again: the lease ended exactly at lease_expires_at.
    clock.advance(1_000);
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(a)).await;

    // Superseded by a new lease, and a random token: both rejected, the new lease untouched.
    let second = f.lease_one(&q, Some(1_000)).await;
    assert_eq!((second.id, second.attempt), (a, 2));
    f.assert_settles_rejected(first.lease(), Error::LeaseLost(a)).await;
    f.assert_settles_rejected(LeaseRef { id: a, lease_token: LeaseToken::random() }, Error::LeaseLost(a)).await;

    // Another job's token.
    let ids = f.enqueue(&q, vec![NewJob::new("b"), NewJob::new("c")]).await;
    let (b, c) = (ids[0], ids[1]);
    let leases = f.lease(&q, 2, Some(10_000)).await;
    assert_eq!(ids_of(&leases), vec![b, c]);
    let (lb, lc) = (leases[0].lease(), leases[1].lease());
    f.assert_settles_rejected(LeaseRef { id: b, lease_token: lc.lease_token }, Error::LeaseLost(b)).await;

    // Settled leases: nacked (job ready again), failed (dead), acked (gone).
    assert_eq!(f.store.nack(lb, Some(0), None).await, Ok(NackOutcome::Retrying { run_at: f.now() }));
    f.assert_settles_rejected(lb, Error::LeaseLost(b)).await;
    assert_eq!(f.store.fail(lc, "no").await, Ok(()));
    f.assert_settles_rejected(lc, Error::LeaseLost(c)).await;
    assert_eq!(f.store.ack(second.lease()).await, Ok(()));
    f.assert_settles_rejected(second.lease(), Error::JobNotFound(a)).await;
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 1, Some(0)));
}

/// Invariant 4: an acked job is never delivered again, however much time passes; a dead job is
/// not delivered until it is redriven.
pub async fn invariant_4_no_resurrection<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("no-zombies");
    let ids = f.enqueue(&q, vec![NewJob::new("acked"), NewJob::new("dead")]).await;
    let leases = f.lease(&q, 2, Some(1_000)).await;
    assert_eq!(ids_of(&leases), ids);
    assert_eq!(f.store.ack(leases[0].lease()).await, Ok(()));
    assert_eq!(f.store.fail(leases[1].lease(), "dead").await, Ok(()));
    for _ in 0..3 {
        clock.advance(86_400_000);
        f.lease_none(&q).await;
    }
    assert_eq!(f.store.job_get(ids[0]).await, Err(Error::JobNotFound(ids[0])));
    assert_eq!(f.get(ids[1]).await.state, JobState::Dead);
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(1));
    assert_eq!(ids_of(&f.lease(&q, 10, None).await), vec![ids[1]]);
}

/// Invariant 5: a job is dead-lettered exactly once, after its `max_attempts`-th lease fails
/// (nack or expiry), or at once on `fail`; the error of every attempt is kept and nothing more is
/// added while it is dead.
pub async fn invariant_5_bounded_retries<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("bounded-retries");
    f.upsert(&q, QueueConfigPatch { max_attempts: Some(3), ..Default::default() }).await;
    let t0 = f.now();
    let id = f.enqueue_one(&q, NewJob::new("flaky")).await;
    let one = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(f.store.nack(one.lease(), Some(0), Some("n1")).await, Ok(NackOutcome::Retrying { run_at: t0 }));
    let two = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(two.attempt, 2);
    clock.advance(1_000);
    let three = f.lease_one(&q, Some(1_000)).await;
    assert_eq!(three.attempt, 3);
    assert_eq!(f.store.nack(three.lease(), Some(0), Some("n3")).await, Ok(NackOutcome::Dead));
    let expected_errors = vec![
        attempt_error(1, "n1", t0),
        attempt_error(2, "lease expired", t0.plus_ms(1_000)),
        attempt_error(3, "n3", t0.plus_ms(1_000)),
    ];
    let dead = f.get(id).await;
    assert_eq!((dead.state, dead.attempt, &dead.errors), (JobState::Dead, 3, &expected_errors));
    clock.advance(600_000);
    assert_eq!(f.get(id).await, dead, "a dead job does not change while it waits");
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![dead], next: None }));

    // fail on the first of five attempts: dead at once, one error.
    let early = f.enqueue_one(&q, NewJob::new("hopeless").max_attempts(5)).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, early);
    assert_eq!(f.store.fail(leased.lease(), "hopeless").await, Ok(()));
    let job = f.get(early).await;
    assert_eq!((job.state, job.attempt, job.errors), (JobState::Dead, 1, vec![attempt_error(1, "hopeless", f.now())]));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 2, None));
}

/// Invariant 6: within the window the same (queue, dedup id) yields the same id and
/// `duplicate: true`, however many times and however concurrently it is sent, within a batch too.
pub async fn invariant_6_dedup_window<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("dedup-storm");
    let barrier = Arc::new(Barrier::new(32));
    let mut set = JoinSet::new();
    for i in 0..32 {
        let (store, q, barrier) = (Arc::clone(&f.store), q.clone(), Arc::clone(&barrier));
        set.spawn(async move {
            barrier.wait().await;
            store.job_enqueue(&q, vec![NewJob::new(format!("copy {i}")).dedup_id("same")]).await.unwrap()
        });
    }
    let mut results = Vec::new();
    while let Some(out) = within("concurrent enqueues", set.join_next()).await {
        results.extend(out.unwrap());
    }
    assert_eq!(results.len(), 32);
    let id = results[0].id;
    assert_eq!(results.iter().filter(|e| !e.duplicate).count(), 1, "exactly one enqueue creates the job: {results:?}");
    assert!(results.iter().all(|e| e.id == id), "every duplicate names the original: {results:?}");
    assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
    assert_eq!(f.get(id).await.dedup_id, Some("same".to_owned()));

    for _ in 0..10 {
        assert_eq!(
            f.store.enqueue(&q, NewJob::new("again").dedup_id("same")).await,
            Ok(Enqueued { id, duplicate: true })
        );
    }

    let batch = vec![
        NewJob::new("m").dedup_id("m"),
        NewJob::new("m again").dedup_id("m"),
        NewJob::new("same").dedup_id("same"),
        NewJob::new("n").dedup_id("n"),
        NewJob::new("no dedup id"),
    ];
    let out = f.store.job_enqueue(&q, batch).await.unwrap();
    assert_eq!(out.len(), 5);
    let (m, n, plain) = (out[0].id, out[3].id, out[4].id);
    assert_eq!(
        out,
        vec![
            Enqueued { id: m, duplicate: false },
            Enqueued { id: m, duplicate: true },
            Enqueued { id, duplicate: true },
            Enqueued { id: n, duplicate: false },
            Enqueued { id: plain, duplicate: false },
        ]
    );
    assert_increasing(&[id, m, n, plain]);
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 0, Some(0)));
    let elsewhere = f.store.enqueue(&queue("dedup-elsewhere"), NewJob::new("x").dedup_id("same")).await.unwrap();
    assert!(!elsewhere.duplicate, "dedup ids are per queue");
}

/// Invariant 7: times are judged by the store's one clock. With a [`ManualClock`](onceq_core::ManualClock), nothing
/// expires, comes due or leaves the dedup window while real time passes, and every recorded time
/// is the clock's; advancing the clock is what moves them.
pub async fn invariant_7_one_clock<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("clocked");
    let t0 = f.now();
    f.upsert(&q, QueueConfigPatch { dedup_window_ms: Some(100), ..Default::default() }).await;
    let ids = f.enqueue(&q, vec![NewJob::new("leased"), NewJob::new("dedup").dedup_id("d")]).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(100)).await;
    let leases = f.lease(&q, 2, Some(100)).await;
    assert_eq!(ids_of(&leases), ids);
    assert!(leases.iter().all(|l| l.enqueued_at == t0 && l.lease_expires_at == t0.plus_ms(100)));

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.now(), t0);
    f.lease_none(&q).await;
    assert_eq!(f.stats(&q).await, counts(0, 1, 2, 0, None));
    assert_eq!(f.get(scheduled).await.state, JobState::Scheduled);
    assert_eq!(f.get(ids[0]).await.lease_expires_at, Some(t0.plus_ms(100)));
    assert_eq!(
        f.store.enqueue(&q, NewJob::new("dedup").dedup_id("d")).await,
        Ok(Enqueued { id: ids[1], duplicate: true })
    );
    assert_eq!(f.store.ack(leases[0].lease()).await, Ok(()), "the lease is live by the store's clock");

    clock.advance(100);
    let got = f.lease(&q, 10, Some(100)).await;
    assert_eq!(ids_of(&got), vec![ids[1], scheduled], "expired lease (run_at t0 + 100, lower id), then due job");
    let again = f.store.enqueue(&q, NewJob::new("dedup").dedup_id("d")).await.unwrap();
    assert!(!again.duplicate, "the window passed on the store's clock");
    assert_eq!(f.get(again.id).await.enqueued_at, t0.plus_ms(100));
}
