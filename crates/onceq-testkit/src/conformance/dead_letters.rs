//! Dead letters: listing them page by page, redriving (all, by id, with a limit) and purging.

use onceq_core::limits::DEAD_PAGE_MAX;
use onceq_core::{DeadList, DeadPage, Error, Job, JobId, JobState, NackOutcome, NewJob, Redrive, Store, StoreExt};

use super::{attempt_error, counts, ids_of, open_manual, queue, UNKNOWN_ID};
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
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(3));
    for (id, job) in dead.iter().zip(&before) {
        let redriven = Job { state: JobState::Ready, attempt: 0, run_at: now, lease_expires_at: None, ..job.clone() };
        assert_eq!(f.get(*id).await, redriven);
    }
    assert_eq!(f.get(live).await, live_before);
    assert_eq!(f.stats(&q).await, counts(3, 0, 1, 0, Some(0)));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await.map(|r| r.redriven), Ok(0));

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
    assert_eq!(
        f.store
            .dead_redrive(&q, Redrive { ids: Some(vec![]), limit: None, ..Default::default() })
            .await
            .map(|r| r.redriven),
        Ok(0)
    );
    assert_eq!(
        f.store
            .dead_redrive(&q, Redrive { ids: Some(ids), limit: None, ..Default::default() })
            .await
            .map(|r| r.redriven),
        Ok(2)
    );
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
    assert_eq!(
        f.store.dead_redrive(&q, Redrive { ids: None, limit: Some(2), ..Default::default() }).await.map(|r| r.redriven),
        Ok(2)
    );
    let mut states = Vec::new();
    for id in &dead {
        states.push(f.get(*id).await.state);
    }
    use JobState::{Dead, Ready};
    assert_eq!(states, vec![Ready, Ready, Dead, Dead, Dead]);
    assert_eq!(
        f.store
            .dead_redrive(&q, Redrive { ids: None, limit: Some(10), ..Default::default() })
            .await
            .map(|r| r.redriven),
        Ok(3)
    );
    assert_eq!(f.stats(&q).await, counts(5, 0, 0, 0, Some(0)));

    // With ids and a limit, only the count is pinned down.
    let q2 = queue("redrive-limit-ids");
    let dead = f.enqueue_dead(&q2, 3).await;
    let ids = Some(vec![dead[2], dead[0], dead[1]]);
    assert_eq!(
        f.store.dead_redrive(&q2, Redrive { ids, limit: Some(2), ..Default::default() }).await.map(|r| r.redriven),
        Ok(2)
    );
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

/// A redrive's filters pick dead jobs by their last error (the one they died of): text it
/// contains, when it was recorded, and the attempts spent. `matched` counts every match (the
/// limit aside), `redriven` what moved; a dry run counts and moves nothing; the filters combine.
pub async fn dead_redrive_filters<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("redrive-filters");
    // Four jobs die at four times: two of a timeout (after 1 and 2 attempts), one of a bad
    // address, one of a timeout only in an earlier attempt (its last error is something else).
    let ids = f.enqueue(&q, (0..4).map(|i| NewJob::new(format!("job {i}")).max_attempts(2)).collect()).await;
    let deaths: [&[&str]; 4] =
        [&["connect timeout"], &["boom", "read timeout"], &["bad address"], &["connect timeout", "bad address"]];
    let mut died_at = Vec::new();
    for (id, errors) in ids.iter().zip(deaths) {
        for (i, error) in errors.iter().enumerate() {
            let leased = f.lease(&q, 4, None).await;
            let job = leased.iter().find(|j| j.id == *id).expect("the job is ready").clone();
            for other in leased.iter().filter(|j| j.id != *id) {
                assert_eq!(f.store.release(other.lease(), None).await, Ok(()));
            }
            if i + 1 == errors.len() {
                assert_eq!(f.store.fail(job.lease(), error).await, Ok(()));
            } else {
                let retrying = NackOutcome::Retrying { run_at: f.now() };
                assert_eq!(f.store.nack(job.lease(), Some(0), Some(error)).await, Ok(retrying));
            }
            clock.advance(10);
        }
        died_at.push(f.now());
        clock.advance(1000);
    }
    let redriven = |r: Result<onceq_core::Redriven, Error>| r.map(|r| (r.matched, r.redriven));
    let timeout = || Redrive { error_contains: Some("timeout".into()), ..Redrive::default() };
    // Dry runs: counts only.
    let dry = |r: Redrive| Redrive { dry_run: true, ..r };
    assert_eq!(redriven(f.store.dead_redrive(&q, dry(timeout())).await), Ok((2, 0)));
    assert_eq!(redriven(f.store.dead_redrive(&q, dry(Redrive::default())).await), Ok((4, 0)));
    let twice = Redrive { min_attempts: Some(2), ..Redrive::default() };
    assert_eq!(redriven(f.store.dead_redrive(&q, dry(twice.clone())).await), Ok((2, 0)));
    assert_eq!(
        redriven(f.store.dead_redrive(&q, dry(Redrive { min_attempts: Some(2), ..timeout() })).await),
        Ok((1, 0)),
        "filters combine"
    );
    let window = Redrive { dead_after: Some(died_at[0]), dead_before: Some(died_at[2]), ..Redrive::default() };
    // A job died when its last error was recorded, 10 ms before its `died_at`: the window
    // [died_at[0], died_at[2]) holds the deaths of jobs 1 and 2.
    let by_window = f.store.dead_redrive(&q, dry(window.clone())).await.unwrap();
    assert_eq!((by_window.matched, by_window.redriven), (2, 0), "jobs 1 and 2 died in the window");
    let case = Redrive { error_contains: Some("TIMEOUT".into()), ..Redrive::default() };
    assert_eq!(redriven(f.store.dead_redrive(&q, dry(case)).await), Ok((0, 0)), "the text match is case-sensitive");
    assert_eq!(
        redriven(f.store.dead_redrive(&q, dry(Redrive { ids: Some(vec![ids[0], ids[2]]), ..timeout() })).await),
        Ok((1, 0)),
        "ids and filters combine"
    );
    for id in &ids {
        assert_eq!(f.get(*id).await.state, JobState::Dead, "a dry run moved a job");
    }
    // Real runs: the limit takes the oldest matches; matched still counts them all.
    assert_eq!(redriven(f.store.dead_redrive(&q, Redrive { limit: Some(1), ..timeout() }).await), Ok((2, 1)));
    assert_eq!(f.get(ids[0]).await.state, JobState::Ready);
    assert_eq!(f.get(ids[1]).await.state, JobState::Dead);
    let rest = f.store.dead_redrive(&q, timeout()).await.unwrap();
    assert_eq!((rest.matched, rest.redriven, rest.last), (1, 1, Some(ids[1])));
    assert_eq!(f.get(ids[1]).await.state, JobState::Ready);
    assert_eq!(f.get(ids[3]).await.state, JobState::Dead, "its timeout was not its last error");
    assert_eq!(f.get(ids[1]).await.errors.len(), 2, "a redrive keeps the error history");
    // A cursor: only ids above it.
    let after = Redrive { after: Some(ids[2]), dry_run: true, ..Redrive::default() };
    assert_eq!(redriven(f.store.dead_redrive(&q, after).await), Ok((1, 0)));
    assert_eq!(f.store.queue_get(&q).await.unwrap().stats.dead, 2);
}

/// A redrive with `to_queue` moves the matching dead jobs, ready, into another queue, keeping
/// their id, payload and error history; a per-key queue on either side is refused, and an unknown
/// destination is not found; in both cases nothing moves.
pub async fn dead_redrive_into_another_queue<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("redrive-from");
    let to = queue("redrive-to");
    f.store.queue_upsert(&to, onceq_core::QueueConfigPatch::default()).await.unwrap();
    let ids = f.enqueue_dead(&q, 3).await;
    let before = f.get(ids[0]).await;
    let moved = Redrive { to_queue: Some(to.clone()), limit: Some(2), ..Redrive::default() };
    let done = f.store.dead_redrive(&q, moved).await.unwrap();
    assert_eq!((done.matched, done.redriven), (3, 2));
    let after = f.get(ids[0]).await;
    assert_eq!(
        after,
        Job { queue: to.clone(), state: JobState::Ready, attempt: 0, run_at: f.now(), ..before },
        "moved, ready, the rest kept"
    );
    assert_eq!(
        (f.store.queue_get(&q).await.unwrap().stats.dead, f.store.queue_get(&to).await.unwrap().stats.ready),
        (1, 2)
    );
    let leased = f.lease(&to, 10, None).await;
    assert_eq!(ids_of(&leased), ids[..2].to_vec(), "the destination's workers get them");
    // The same queue as destination is a plain redrive.
    let same = Redrive { to_queue: Some(q.clone()), ..Redrive::default() };
    assert_eq!(f.store.dead_redrive(&q, same).await.map(|r| r.redriven), Ok(1));
    // Refusals.
    let q = queue("redrive-refused");
    let ghost = queue("redrive-nowhere");
    let nowhere = Redrive { to_queue: Some(ghost.clone()), ..Redrive::default() };
    let dead = f.enqueue_dead(&q, 1).await;
    assert_eq!(f.store.dead_redrive(&q, nowhere).await, Err(Error::QueueNotFound(ghost)));
    let ordered = queue("redrive-ordered");
    let per_key = onceq_core::QueueConfigPatch { ordering: Some(onceq_core::Ordering::PerKey), ..Default::default() };
    f.store.queue_upsert(&ordered, per_key).await.unwrap();
    let into_ordered = Redrive { to_queue: Some(ordered.clone()), ..Redrive::default() };
    match f.store.dead_redrive(&q, into_ordered).await {
        Err(Error::InvalidRequest(message)) => assert!(message.contains("per-key"), "{message}"),
        other => panic!("a redrive into a per-key queue gave {other:?}"),
    }
    assert_eq!(f.get(dead[0]).await.state, JobState::Dead, "a refused redrive moved a job");
}

/// A paced redrive moves what its rate earned at each step (at most one second's worth after a
/// pause), oldest first, keeps its progress (`redriven`, `cursor`), ends `done` when no match is
/// left or its limit is reached, never takes a job that died after it started, and stops when
/// asked; the listing puts running redrives first.
pub async fn dead_redrive_paced<B: Backend>(backend: &B) {
    use onceq_core::redrive::RedriveState;
    let (f, clock) = open_manual(backend).await;
    let q = queue("redrive-paced");
    let ids = f.enqueue_dead(&q, 25).await;
    let paced = f.store.redrive_start(&q, Redrive::default(), 10).await.unwrap();
    assert_eq!((paced.state, paced.matched, paced.redriven, paced.cursor), (RedriveState::Running, 25, 0, None));
    let start = f.now();
    assert_eq!(paced.filter.dead_before.map(|t| t.as_millis()), Some(start.as_millis() + 1), "jobs dead by the start");
    // A job that dies after the start is not its business.
    clock.advance(1);
    let late = f.enqueue_dead(&q, 1).await;
    let step = |ms: u64| {
        let (f, clock) = (&f, &clock);
        async move {
            clock.advance(ms);
            f.store.redrive_tick().await.unwrap();
            f.store.redrive_get(paced.id).await.unwrap()
        }
    };
    let now = step(999).await;
    assert_eq!((now.redriven, now.cursor), (10, Some(ids[9])), "one second at 10/s");
    assert_eq!(f.get(ids[9]).await.state, JobState::Ready);
    assert_eq!(f.get(ids[10]).await.state, JobState::Dead, "oldest first");
    let half = step(500).await;
    assert_eq!(half.redriven, 15, "half a second more: {half:?}");
    // An hour away earns one second's worth, not an hour's.
    assert_eq!(step(3_600_000).await.redriven, 25);
    let now = step(1000).await;
    assert_eq!((now.state, now.redriven), (RedriveState::Done, 25), "no match left: done");
    assert!(now.finished_at.is_some());
    assert_eq!(f.get(late[0]).await.state, JobState::Dead, "it died after the start");
    // A limit ends it early; a stop ends it at once.
    let q2 = queue("redrive-paced-2");
    f.enqueue_dead(&q2, 5).await;
    let limited = f.store.redrive_start(&q2, Redrive { limit: Some(3), ..Redrive::default() }, 100).await.unwrap();
    let stopped = f.store.redrive_start(&q2, Redrive::default(), 1).await.unwrap();
    let listed: Vec<_> = f.store.redrive_list().await.unwrap().iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        listed[..3],
        [(stopped.id, RedriveState::Running), (limited.id, RedriveState::Running), (paced.id, RedriveState::Done)],
        "running first, newest first"
    );
    assert_eq!(f.store.redrive_stop(stopped.id).await.unwrap().state, RedriveState::Stopped);
    clock.advance(1000);
    f.store.redrive_tick().await.unwrap();
    let limited = f.store.redrive_get(limited.id).await.unwrap();
    assert_eq!((limited.state, limited.redriven), (RedriveState::Done, 3));
    let stopped_now = f.store.redrive_get(stopped.id).await.unwrap();
    assert_eq!(
        (stopped_now.state, stopped_now.redriven),
        (RedriveState::Stopped, 0),
        "a stopped redrive moves nothing"
    );
    assert_eq!(f.store.redrive_stop(stopped.id).await.unwrap(), stopped_now, "stopping twice changes nothing");
    assert_eq!(f.store.queue_get(&q2).await.unwrap().stats.dead, 2);
    // Refusals.
    let ghost = onceq_core::RedriveId::new(u64::MAX >> 2);
    assert_eq!(f.store.redrive_get(ghost).await, Err(Error::RedriveNotFound(ghost)));
    assert_eq!(f.store.redrive_stop(ghost).await, Err(Error::RedriveNotFound(ghost)));
    match f.store.redrive_start(&q2, Redrive::default(), 0).await {
        Err(Error::InvalidRequest(message)) => assert!(message.contains("rate_per_second"), "{message}"),
        other => panic!("a rate of 0 gave {other:?}"),
    }
    let unknown = queue("redrive-paced-nowhere");
    assert_eq!(f.store.redrive_start(&unknown, Redrive::default(), 5).await, Err(Error::QueueNotFound(unknown)));
}
