//! An operator's delete and kill of one job (`Store::job_delete`, `Store::job_kill`,
//! docs/semantics.md "Delete and kill"): both act on a job that is not leased and refuse a leased
//! one with `Conflict`. A delete takes the job and its history away; a kill makes it dead now,
//! whatever attempts it has left, with the operator's error recorded. In a `per_key` queue both
//! hand the key on as any job leaving its key does.

use onceq_core::{
    DeadPage, Error, JobState, NackOutcome, NewJob, Ordering, QueueConfigPatch, QueueStats, Redrive, Store, StoreExt,
};

use super::{open_manual, queue, UNKNOWN_ID};
use crate::Backend;

/// A scheduled, ready, dead or cancelled job is deleted: reads answer `JobNotFound`, the stats
/// lose it, and a second delete is `JobNotFound`. A leased job is refused with `Conflict` and
/// stays leased, its lease good for an ack. A deleted job's dedup id still answers duplicates
/// with its id, as an acked job's does.
pub async fn delete_removes_a_job_that_is_not_leased<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("deletes");
    let dead = f.enqueue_dead(&q, 1).await[0];
    let leased_id = f.enqueue_one(&q, NewJob::new("leased")).await;
    let leased = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(leased.id, leased_id);
    let ready = f.enqueue_one(&q, NewJob::new("ready").dedup_id("order-7")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("later").delay_ms(60_000)).await;
    let cancelled = f.enqueue_one(&q, NewJob::new("cancelled")).await;
    assert_eq!(f.store.job_cancel(cancelled).await.map(|j| j.state), Ok(JobState::Cancelled));
    let stats = f.stats(&q).await;
    let expected = QueueStats { ready: 1, scheduled: 1, leased: 1, dead: 1, cancelled: 1, ..QueueStats::default() };
    assert_eq!(stats, QueueStats { oldest_ready_age_ms: stats.oldest_ready_age_ms, ..expected });

    for id in [ready, scheduled, dead, cancelled] {
        assert_eq!(f.store.job_delete(id).await, Ok(()), "job {id}");
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
        assert_eq!(f.store.job_delete(id).await, Err(Error::JobNotFound(id)), "deleted already");
    }
    let stats = f.stats(&q).await;
    assert_eq!(
        stats,
        QueueStats { leased: 1, oldest_ready_age_ms: stats.oldest_ready_age_ms, ..QueueStats::default() }
    );
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await.map(|l| l.jobs.len()), Ok(0));

    let refused = f.store.job_delete(leased.id).await;
    assert!(matches!(&refused, Err(Error::Conflict(text)) if text.contains("leased")), "{refused:?}");
    assert_eq!(f.get(leased.id).await.state, JobState::Leased, "a refused delete changes nothing");
    assert_eq!(f.store.ack(leased.lease()).await, Ok(()));
    assert_eq!(f.store.job_delete(UNKNOWN_ID).await, Err(Error::JobNotFound(UNKNOWN_ID)));

    let again = f.store.job_enqueue(&q, vec![NewJob::new("ready again").dedup_id("order-7")]).await.unwrap();
    assert_eq!((again[0].id, again[0].duplicate), (ready, true), "the dedup id outlives the deleted job");
    f.lease_none(&q).await;
}

/// A kill makes a scheduled, ready or retrying job dead now, with the operator's error recorded
/// as its current attempt's and its earlier errors kept; it counts as dead, lists in the dead
/// letters and can be redriven. Killing a dead job changes nothing; a leased or cancelled job is
/// a `Conflict`, an unknown one `JobNotFound`.
pub async fn kill_makes_a_job_dead_now<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("kills");
    let retrying = f.enqueue_one(&q, NewJob::new("retrying").max_attempts(5)).await;
    let leased = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(leased.id, retrying);
    assert!(matches!(
        f.store.nack(leased.lease(), Some(60_000), Some("flaky")).await,
        Ok(NackOutcome::Retrying { .. })
    ));
    let ready = f.enqueue_one(&q, NewJob::new("ready").max_attempts(5)).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("later").delay_ms(60_000)).await;
    clock.advance(10);
    let at = f.now();
    for id in [retrying, ready, scheduled] {
        let job = f.store.job_kill(id, "operator: bad data").await.unwrap();
        assert_eq!((job.id, job.state, job.lease_expires_at), (id, JobState::Dead, None), "{job:?}");
        let last = job.errors.last().unwrap();
        assert_eq!((last.error.as_str(), last.at, last.attempt), ("operator: bad data", at, job.attempt), "{job:?}");
    }
    assert_eq!(
        f.get(retrying).await.errors.iter().map(|e| e.error.as_str()).collect::<Vec<_>>(),
        ["flaky", "operator: bad data"]
    );
    assert_eq!(f.get(retrying).await.attempt, 1, "a kill spends no attempt");
    let stats = f.stats(&q).await;
    assert_eq!(stats, QueueStats { dead: 3, oldest_ready_age_ms: stats.oldest_ready_age_ms, ..QueueStats::default() });
    f.lease_none(&q).await;
    // Dead already: nothing changes, not even the errors.
    let before = f.get(ready).await;
    assert_eq!(f.store.job_kill(ready, "again").await, Ok(before));

    let listed = f.store.dead_list(&q, DeadPage::default()).await.unwrap();
    assert_eq!(listed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![retrying, ready, scheduled]);
    let redriven = f.store.dead_redrive(&q, Redrive { ids: Some(vec![ready]), ..Redrive::default() }).await.unwrap();
    assert_eq!(redriven.redriven, 1);
    assert_eq!(f.lease_one(&q, Some(30_000)).await.id, ready, "a killed job redriven runs again");

    let busy = f.enqueue_one(&q, NewJob::new("busy")).await;
    let lease = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(lease.id, busy);
    let refused = f.store.job_kill(busy, "no").await;
    assert!(matches!(&refused, Err(Error::Conflict(text)) if text.contains("leased")), "{refused:?}");
    assert_eq!(f.get(busy).await.errors.len(), 0, "a refused kill records nothing");
    assert_eq!(f.store.ack(lease.lease()).await, Ok(()));
    let cancelled = f.enqueue_one(&q, NewJob::new("cancelled")).await;
    f.store.job_cancel(cancelled).await.unwrap();
    assert!(matches!(f.store.job_kill(cancelled, "no").await, Err(Error::Conflict(_))));
    assert_eq!(f.get(cancelled).await.state, JobState::Cancelled);
    assert_eq!(f.store.job_kill(UNKNOWN_ID, "no").await, Err(Error::JobNotFound(UNKNOWN_ID)));
}

/// In a `per_key` queue a deleted or killed blocked job leaves the line; a deleted ready head
/// hands its key on; a killed head hands it on unless the queue keeps dead heads
/// (`dead_blocks_key`), and then deleting the dead head hands it on.
pub async fn delete_and_kill_in_a_per_key_queue_hand_the_key_on<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("control-ordered");
    f.upsert(&q, QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() }).await;
    let keyed = |payload: &str| NewJob::new(payload.to_owned()).ordering_key("k");
    let k = f.enqueue(&q, (1..=7).map(|i| keyed(&i.to_string())).collect()).await;
    // Blocked jobs leave the line: the head runs, then the job behind the ones taken out.
    assert_eq!(f.store.job_delete(k[1]).await, Ok(()));
    assert_eq!(f.store.job_kill(k[2], "skip").await.map(|j| j.state), Ok(JobState::Dead));
    let head = f.lease_one(&q, Some(30_000)).await;
    assert_eq!(head.id, k[0]);
    f.lease_none(&q).await;
    assert_eq!(f.store.ack(head.lease()).await, Ok(()));
    // A ready head deleted: the key goes on.
    assert_eq!(f.get(k[3]).await.state, JobState::Ready);
    assert_eq!(f.store.job_delete(k[3]).await, Ok(()));
    assert_eq!(f.get(k[4]).await.state, JobState::Ready);
    // A ready head killed: the key goes on.
    assert_eq!(f.store.job_kill(k[4], "skip").await.map(|j| j.state), Ok(JobState::Dead));
    assert_eq!(f.get(k[5]).await.state, JobState::Ready);
    // With dead_blocks_key the killed head keeps the key until it is deleted.
    f.upsert(&q, QueueConfigPatch { dead_blocks_key: Some(true), ..QueueConfigPatch::default() }).await;
    assert_eq!(f.store.job_kill(k[5], "hold").await.map(|j| j.state), Ok(JobState::Dead));
    f.lease_none(&q).await;
    assert_eq!(f.get(k[6]).await.state, JobState::Blocked);
    assert_eq!(f.store.job_delete(k[5]).await, Ok(()));
    assert_eq!(f.lease_one(&q, Some(30_000)).await.id, k[6], "deleting the dead head let the key go on");
    let stats = f.stats(&q).await;
    assert_eq!(
        stats,
        QueueStats { leased: 1, dead: 2, oldest_ready_age_ms: stats.oldest_ready_age_ms, ..QueueStats::default() }
    );
}
