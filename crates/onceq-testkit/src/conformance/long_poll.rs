//! Long poll: a waiting lease wakes, promptly, on whatever makes a job ready, and returns
//! empty after its wait when nothing does.

use std::time::{Duration, Instant};

use onceq_core::{LeaseOptions, NackOutcome, NewJob, QueueConfigPatch, Redrive, Store, StoreExt};

use super::{
    assert_woke, check_woke, open_manual, open_system, queue, spawn_waiting_lease, within, LONG_WAIT_MS, NUDGE,
    PROMPTLY, SHORT_MS,
};
use crate::Backend;

/// A lease waiting on an empty queue returns, promptly, the job another task enqueues during the
/// wait.
pub async fn long_poll_wakes_on_enqueue<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-enqueue");
    f.upsert(&q, QueueConfigPatch::default()).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    let id = f.enqueue_one(&q, NewJob::new("wake up")).await;
    assert_woke(waiting, id, 1).await;
}

/// Several leases waiting on one queue all return, promptly, when one enqueue makes enough jobs
/// ready for all of them: a store that wakes waiters one at a time must pass the wake-up on.
pub async fn long_poll_wakes_every_waiter_a_batch_can_serve<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-many");
    f.upsert(&q, QueueConfigPatch::default()).await;
    let waiting: Vec<_> = (0..4).map(|_| spawn_waiting_lease(&f.store, &q)).collect();
    tokio::time::sleep(NUDGE).await;
    let jobs = (0..4).map(|i| NewJob::new(format!("job {i}"))).collect();
    let enqueued = f.store.job_enqueue(&q, jobs).await.unwrap();
    let mut got = Vec::new();
    for lease in waiting {
        let (jobs, elapsed) = within("a waiting lease", lease).await.unwrap();
        assert!(elapsed < PROMPTLY, "a waiting lease took {elapsed:?} to wake up (wait was {LONG_WAIT_MS} ms)");
        assert_eq!(jobs.len(), 1, "each waiting lease asked for one job and four were ready");
        got.push(jobs[0].id);
    }
    got.sort();
    assert_eq!(got, enqueued.iter().map(|e| e.id).collect::<Vec<_>>());
}

/// A lease waiting on a queue that does not exist yet returns the job whose enqueue creates it.
pub async fn long_poll_on_unknown_queue_wakes_on_enqueue<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-unborn");
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    let id = f.enqueue_one(&q, NewJob::new("first ever")).await;
    assert_woke(waiting, id, 1).await;
}

/// A waiting lease returns a scheduled job as soon as it comes due.
pub async fn long_poll_wakes_when_scheduled_job_is_due<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-scheduled");
    let id = f.enqueue_one(&q, NewJob::new("soon").delay_ms(SHORT_MS)).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 1).await;
}

/// A waiting lease returns a nacked job as soon as its nack delay has elapsed.
pub async fn long_poll_wakes_when_nack_delay_elapses<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-nack");
    let id = f.enqueue_one(&q, NewJob::new("retry soon")).await;
    let leased = f.lease_one(&q, None).await;
    let before = f.now();
    let outcome = f.store.nack(leased.lease(), Some(SHORT_MS), None).await.unwrap();
    let after = f.now();
    let NackOutcome::Retrying { run_at } = outcome else { panic!("a first nack must retry, got {outcome:?}") };
    assert!(run_at >= before.plus_ms(SHORT_MS) && run_at <= after.plus_ms(SHORT_MS), "run_at {run_at}");
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 2).await;
}

/// A waiting lease returns a job as soon as its previous lease expires.
pub async fn long_poll_wakes_when_lease_expires<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-expiry");
    let id = f.enqueue_one(&q, NewJob::new("abandoned")).await;
    assert_eq!(f.lease_one(&q, Some(SHORT_MS)).await.id, id);
    let waiting = spawn_waiting_lease(&f.store, &q);
    assert_woke(waiting, id, 2).await;
}

/// A waiting lease returns a dead job as soon as it is redriven.
pub async fn long_poll_wakes_on_redrive<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-redrive");
    let id = f.enqueue_dead(&q, 1).await[0];
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(1));
    assert_woke(waiting, id, 1).await;
}

/// A lease waiting on a paused queue returns its job as soon as the queue is resumed.
pub async fn long_poll_wakes_on_resume<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-resume");
    let id = f.enqueue_one(&q, NewJob::new("paused")).await;
    assert_eq!(f.store.queue_pause(&q).await, Ok(()));
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    assert_eq!(f.store.queue_resume(&q).await, Ok(()));
    assert_woke(waiting, id, 1).await;
}

/// A lease that finds nothing for its whole wait returns empty after about `wait_ms`, on an
/// existing queue and on an unknown one (which it does not create).
pub async fn long_poll_with_nothing_returns_empty_after_wait<B: Backend>(backend: &B) {
    let f = open_system(backend).await;
    let q = queue("poll-quiet");
    f.upsert(&q, QueueConfigPatch::default()).await;
    for name in [q, queue("poll-nobody")] {
        let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: None, wait_ms: 500 };
        let started = Instant::now();
        let jobs = within("an empty long poll", f.store.job_lease(&name, options)).await;
        let elapsed = started.elapsed();
        assert_eq!(jobs, Ok(vec![]));
        assert!(elapsed >= Duration::from_millis(450), "{name}: returned after {elapsed:?}, before its 500 ms wait");
        assert!(elapsed < PROMPTLY, "{name}: returned after {elapsed:?}, long after its 500 ms wait");
    }
    assert_eq!(f.store.queue_list().await.map(|l| l.len()), Ok(1));
}

/// Advancing a [`ManualClock`](onceq_core::ManualClock) wakes a waiting lease (through the callback the store registered
/// with `Clock::on_advance`), which returns the job that came due.
pub async fn long_poll_wakes_on_manual_clock_advance<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("poll-manual");
    let id = f.enqueue_one(&q, NewJob::new("due on advance").delay_ms(1_000)).await;
    let waiting = spawn_waiting_lease(&f.store, &q);
    tokio::time::sleep(NUDGE).await;
    clock.advance(1_000);
    let advanced = Instant::now();
    let output = within("the waiting lease", waiting).await.unwrap();
    let since_advance = advanced.elapsed();
    check_woke(output, id, 1);
    // Tighter than PROMPTLY: a store that only re-checks on a periodic timer (rather than on the
    // clock's callback) would usually miss this.
    assert!(since_advance < Duration::from_millis(500), "woke {since_advance:?} after the clock advanced");
}
