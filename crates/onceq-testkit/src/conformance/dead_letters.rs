//! Dead letters: listing them page by page, redriving (all, by id, with a limit) and purging.

use onceq_core::limits::DEAD_PAGE_MAX;
use onceq_core::{DeadList, DeadPage, Error, Job, JobId, JobState, NackOutcome, NewJob, Redrive, Store, StoreExt};

use super::{attempt_error, counts, open_manual, queue, UNKNOWN_ID};
use crate::Backend;

/// `dead_list` pages through the queue's dead jobs in id order: at most `limit`, after `after`
/// (exclusive), `next` = the last id on the page when more follow, else `None`; other queues'
/// dead jobs and live jobs are not listed.
pub async fn dead_list_pages<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("graveyard");
    let ids = f.enqueue_dead(&q, 5).await;
    f.enqueue_dead(&queue("other-graveyard"), 2).await;
    f.enqueue_one(&q, NewJob::new("alive")).await;
    let mut jobs = Vec::new();
    for id in &ids {
        jobs.push(f.get(*id).await);
    }
    assert!(jobs.iter().all(|j| j.state == JobState::Dead && j.errors.len() == 1));
    let page = |after: Option<usize>, limit: u32| DeadPage { after: after.map(|i| ids[i]), limit };
    let list = |from: usize, to: usize, next: Option<usize>| DeadList {
        jobs: jobs[from..to].to_vec(),
        next: next.map(|i| ids[i]),
    };
    assert_eq!(f.store.dead_list(&q, page(None, 2)).await, Ok(list(0, 2, Some(1))));
    assert_eq!(f.store.dead_list(&q, page(Some(1), 2)).await, Ok(list(2, 4, Some(3))));
    assert_eq!(f.store.dead_list(&q, page(Some(3), 2)).await, Ok(list(4, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(None, 5)).await, Ok(list(0, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(None, 4)).await, Ok(list(0, 4, Some(3))));
    assert_eq!(f.store.dead_list(&q, page(None, DEAD_PAGE_MAX)).await, Ok(list(0, 5, None)));
    assert_eq!(f.store.dead_list(&q, page(Some(4), 10)).await, Ok(list(5, 5, None)));
    let before_all = DeadPage { after: Some(JobId::new(0)), limit: 1 };
    assert_eq!(f.store.dead_list(&q, before_all).await, Ok(list(0, 1, Some(0))));
}

/// Redriving all dead jobs makes each `ready` with `attempt = 0` and `run_at = now`, keeping its
/// error history; the next lease is attempt 1; it returns the count, and touches no live job.
pub async fn dead_redrive_all<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("redrive-all");
    let dead = f.enqueue_dead(&q, 3).await;
    let live = f.enqueue_one(&q, NewJob::new("live")).await;
    let live_leased = f.lease_one(&q, None).await;
    assert_eq!(live_leased.id, live);
    let live_before = f.get(live).await;
    clock.advance(100);
    let now = f.now();
    let mut before = Vec::new();
    for id in &dead {
        before.push(f.get(*id).await);
    }
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(3));
    for (id, job) in dead.iter().zip(&before) {
        let redriven = Job { state: JobState::Ready, attempt: 0, run_at: now, lease_expires_at: None, ..job.clone() };
        assert_eq!(f.get(*id).await, redriven);
    }
    assert_eq!(f.get(live).await, live_before);
    assert_eq!(f.stats(&q).await, counts(3, 0, 1, 0, Some(0)));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Ok(0));

    let again = f.lease_one(&q, None).await;
    assert_eq!((again.id, again.attempt, again.max_attempts), (dead[0], 1, before[0].max_attempts));
    assert_eq!(
        f.store.nack(again.lease(), Some(0), Some("still broken")).await,
        Ok(NackOutcome::Retrying { run_at: now })
    );
    let mut errors = before[0].errors.clone();
    errors.push(attempt_error(1, "still broken", now));
    assert_eq!(f.get(dead[0]).await.errors, errors, "the history is kept across a redrive");
}

/// Redriving named ids makes those that are dead in this queue ready; ids of live jobs, of dead
/// jobs of other queues and of unknown jobs are skipped; an empty list redrives nothing.
pub async fn dead_redrive_by_ids_skips_others<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-ids");
    let other = queue("redrive-other");
    let dead = f.enqueue_dead(&q, 3).await;
    let foreign = f.enqueue_dead(&other, 1).await[0];
    let live = f.enqueue_one(&q, NewJob::new("live")).await;
    let untouched = f.snapshot(&[live, foreign, dead[1]]).await;
    let ids = vec![dead[2], live, foreign, UNKNOWN_ID, dead[0]];
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: Some(vec![]), limit: None }).await, Ok(0));
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: Some(ids), limit: None }).await, Ok(2));
    assert_eq!(f.get(dead[0]).await.state, JobState::Ready);
    assert_eq!(f.get(dead[2]).await.state, JobState::Ready);
    let (_, jobs) = f.snapshot(&[live, foreign, dead[1]]).await;
    assert_eq!(jobs, untouched.1);
    assert_eq!(f.stats(&q).await, counts(3, 0, 0, 1, Some(0)));
    assert_eq!(f.stats(&other).await, counts(0, 0, 0, 1, None));
}

/// Redriving with a limit takes at most that many, oldest id first.
pub async fn dead_redrive_with_limit<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-limit");
    let dead = f.enqueue_dead(&q, 5).await;
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: None, limit: Some(2) }).await, Ok(2));
    let mut states = Vec::new();
    for id in &dead {
        states.push(f.get(*id).await.state);
    }
    use JobState::{Dead, Ready};
    assert_eq!(states, vec![Ready, Ready, Dead, Dead, Dead]);
    assert_eq!(f.store.dead_redrive(&q, Redrive { ids: None, limit: Some(10) }).await, Ok(3));
    assert_eq!(f.stats(&q).await, counts(5, 0, 0, 0, Some(0)));

    // With ids and a limit, only the count is pinned down.
    let q2 = queue("redrive-limit-ids");
    let dead = f.enqueue_dead(&q2, 3).await;
    let ids = Some(vec![dead[2], dead[0], dead[1]]);
    assert_eq!(f.store.dead_redrive(&q2, Redrive { ids, limit: Some(2) }).await, Ok(2));
    assert_eq!(f.stats(&q2).await, counts(2, 0, 0, 1, Some(0)));
}

/// `dead_purge` deletes the queue's dead jobs (and only them) and returns the count.
pub async fn dead_purge_deletes_dead_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("purge");
    let other = queue("purge-other");
    let dead = f.enqueue_dead(&q, 2).await;
    let foreign = f.enqueue_dead(&other, 1).await[0];
    let leased = f.enqueue_one(&q, NewJob::new("leased")).await;
    assert_eq!(f.lease_one(&q, None).await.id, leased);
    let ready = f.enqueue_one(&q, NewJob::new("ready")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(60_000)).await;
    let (_, before) = f.snapshot(&[leased, ready, scheduled, foreign]).await;
    assert_eq!(f.store.dead_purge(&q).await, Ok(2));
    for id in dead {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    }
    assert_eq!(f.snapshot(&[leased, ready, scheduled, foreign]).await.1, before);
    assert_eq!(f.stats(&q).await, counts(1, 1, 1, 0, Some(0)));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Ok(DeadList { jobs: vec![], next: None }));
    assert_eq!(f.store.dead_purge(&q).await, Ok(0));
}
