//! Cancelling a job (`Store::job_cancel`, docs/semantics.md "Cancel"): a job that is not leased
//! ends `cancelled` at once and is never delivered; a leased one is marked, its extend is
//! refused with `JobCancelled`, an ack still settles it, and any other end of its lease (nack,
//! release, fail, expiry) ends it `cancelled`. In a `per_key` queue a cancelled job leaves its
//! key's line, and a cancelled head lets the key go on.

use onceq_core::{Error, JobState, NackOutcome, NewJob, Ordering, QueueConfigPatch, QueueStats, Store, StoreExt};

use super::{ids_of, open_manual, queue, UNKNOWN_ID};
use crate::Backend;

/// A scheduled, ready or (re)scheduled-after-nack job ends `cancelled` at once, with the time,
/// and is never leased; the stats count it; cancelling again changes nothing; a dead job is a
/// `Conflict` and an unknown one `JobNotFound`.
pub async fn cancel_a_job_that_is_not_leased_ends_it_at_once<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("cancels");
    let ready = f.enqueue_one(&q, NewJob::new("ready")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("later").delay_ms(60_000)).await;
    let retried = f.enqueue_one(&q, NewJob::new("retried")).await;
    let leased = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(leased.id, ready, "the oldest ready job is leased first");
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));
    let leased = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(leased.id, retried);
    assert!(matches!(f.store.nack(leased.lease(), Some(5_000), Some("flaky")).await, Ok(NackOutcome::Retrying { .. })));
    let still_ready = f.enqueue_one(&q, NewJob::new("ready too")).await;

    clock.advance(10);
    let at = f.now();
    for id in [scheduled, retried, still_ready] {
        let job = f.store.job_cancel(id).await.unwrap();
        assert_eq!((job.id, job.state, job.cancelled_at), (id, JobState::Cancelled, Some(at)), "{job:?}");
        assert_eq!(job.lease_expires_at, None);
    }
    let nacked = f.get(retried).await;
    assert_eq!(nacked.errors.len(), 1, "a cancel keeps the job's error history: {nacked:?}");
    assert_eq!(
        f.stats(&q).await,
        QueueStats { cancelled: 3, ..QueueStats::default() },
        "cancelled jobs are counted as such, and nothing else is left"
    );
    // Again: nothing changes, not even the time.
    clock.advance(10);
    assert_eq!(f.store.job_cancel(scheduled).await.map(|j| j.cancelled_at), Ok(Some(at)));
    clock.advance(120_000);
    f.lease_none(&q).await;
    assert_eq!(f.get(scheduled).await.state, JobState::Cancelled);

    let dead = f.enqueue_dead(&queue("cancels-dead"), 1).await[0];
    assert!(matches!(f.store.job_cancel(dead).await, Err(Error::Conflict(_))), "a dead job is redriven or purged");
    assert_eq!(f.get(dead).await.state, JobState::Dead);
    assert_eq!(f.store.job_cancel(UNKNOWN_ID).await, Err(Error::JobNotFound(UNKNOWN_ID)));

    // Deleting the queue takes its cancelled jobs with it.
    f.store.queue_delete(&q).await.unwrap();
    assert_eq!(f.store.job_get(scheduled).await, Err(Error::JobNotFound(scheduled)));
}

/// A leased job is only marked: its lease goes on, an extend is refused with `JobCancelled` (and
/// does not extend it), an ack settles it as usual, and a nack, release, fail or expiry ends it
/// `cancelled` (a nack's and a fail's error kept); it is never leased again.
pub async fn cancel_a_leased_job_marks_it_and_the_end_of_its_lease_cancels_it<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("cancel-leased");
    let ids = f.enqueue(&q, (0..5).map(|i| NewJob::new(format!("job {i}"))).collect()).await;
    let leased = f.lease(&q, 5, Some(30_000)).await;
    assert_eq!(ids_of(&leased), ids);
    let at = f.now();
    for job in &leased {
        let marked = f.store.job_cancel(job.id).await.unwrap();
        assert_eq!(marked.state, JobState::Leased, "{marked:?}");
        assert_eq!(marked.cancelled_at, Some(at));
        assert_eq!(marked.lease_expires_at, Some(job.lease_expires_at), "the lease is untouched");
        assert_eq!(f.store.extend(job.lease(), 60_000).await, Err(Error::JobCancelled(job.id)));
        assert_eq!(
            f.get(job.id).await.lease_expires_at,
            Some(job.lease_expires_at),
            "a refused extend extends nothing"
        );
    }
    assert_eq!(f.stats(&q).await, QueueStats { leased: 5, ..QueueStats::default() });
    let (acked, nacked, released, failed, expiring) = (&leased[0], &leased[1], &leased[2], &leased[3], &leased[4]);
    assert_eq!(f.store.ack(acked.lease()).await, Ok(()), "the handler finished the work: the ack stands");
    assert_eq!(f.store.job_get(acked.id).await, Err(Error::JobNotFound(acked.id)));
    assert_eq!(f.store.nack(nacked.lease(), Some(0), Some("stopped")).await, Ok(NackOutcome::Cancelled));
    assert_eq!(f.store.release(released.lease(), None).await, Ok(()));
    assert_eq!(f.store.fail(failed.lease(), "gave up").await, Ok(()));
    for (job, error) in [(nacked, Some("stopped")), (released, None), (failed, Some("gave up"))] {
        let now = f.get(job.id).await;
        assert_eq!(
            (now.state, now.lease_expires_at, now.cancelled_at),
            (JobState::Cancelled, None, Some(at)),
            "{now:?}"
        );
        assert_eq!(now.errors.last().map(|e| e.error.as_str()), error, "{now:?}");
    }
    assert_eq!(f.stats(&q).await, QueueStats { leased: 1, cancelled: 3, ..QueueStats::default() });
    clock.advance(30_000);
    f.lease_none(&q).await;
    let expired = f.get(expiring.id).await;
    assert_eq!(expired.state, JobState::Cancelled, "an expired marked lease ends the job: {expired:?}");
    assert_eq!(expired.errors.last().map(|e| e.error.as_str()), Some("lease expired"));
    assert_eq!(f.stats(&q).await, QueueStats { cancelled: 4, ..QueueStats::default() });
    assert_eq!(f.store.nack(expiring.lease(), None, None).await, Err(Error::LeaseLost(expiring.id)));
}

/// In a `per_key` queue a cancelled job leaves its key's line: cancelling a blocked job lets the
/// one behind it run after the head; cancelling a ready head, or ending a marked leased head,
/// lets the key go on at once.
pub async fn cancel_in_a_per_key_queue_lets_the_key_go_on<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("cancel-ordered");
    f.upsert(&q, QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() }).await;
    let keyed = |key: &str, payload: &str| NewJob::new(payload.to_owned()).ordering_key(key);
    let k = f.enqueue(&q, vec![keyed("k", "1"), keyed("k", "2"), keyed("k", "3"), keyed("k", "4")]).await;
    // A blocked job leaves the line.
    assert_eq!(f.store.job_cancel(k[1]).await.map(|j| j.state), Ok(JobState::Cancelled));
    let head = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(head.id, k[0]);
    f.lease_none(&q).await;
    assert_eq!(f.store.ack(head.lease()).await, Ok(()));
    // The ready head is cancelled: the key goes on to the next.
    assert_eq!(f.get(k[2]).await.state, JobState::Ready);
    assert_eq!(f.store.job_cancel(k[2]).await.map(|j| j.state), Ok(JobState::Cancelled));
    let next = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(next.id, k[3], "the job behind a cancelled head is next");
    // A marked leased head: its release ends it, and the key goes on.
    let more = f.enqueue(&q, vec![keyed("k", "5")]).await;
    assert_eq!(f.get(more[0]).await.state, JobState::Blocked);
    assert_eq!(f.store.job_cancel(next.id).await.map(|j| j.state), Ok(JobState::Leased));
    f.lease_none(&q).await;
    assert_eq!(f.store.release(next.lease(), None).await, Ok(()));
    assert_eq!(f.get(next.id).await.state, JobState::Cancelled);
    assert_eq!(f.lease_one(&q, Some(30_000)).await.id, more[0]);
    assert_eq!(f.stats(&q).await, QueueStats { leased: 1, cancelled: 3, ..QueueStats::default() });
}
