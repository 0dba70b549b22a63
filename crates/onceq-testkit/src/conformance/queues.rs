//! Queues: upsert (create, update, partial backoff, invalid config), stats, list, unknown
//! queues and delete.

use onceq_core::limits::{BACKOFF_MULTIPLIER_MAX, DEDUP_WINDOW_MS_MAX};
use onceq_core::{
    Backoff, BackoffPatch, DeadPage, DeliveryMode, Error, ErrorKind, Jitter, NewJob, QueueConfig, QueueConfigPatch,
    QueueInfo, QueueStats, Redrive, Store, StoreExt,
};

use super::{counts, defaults, open_manual, queue};
use crate::Backend;

/// `queue_upsert` on a new queue creates it with the defaults patched, returns that config, and
/// the queue reads back with it; an empty patch gives the defaults.
pub async fn queue_upsert_creates_with_defaults_and_patch<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("configured");
    let backoff = Backoff { initial_ms: 50, max_ms: 5_000, multiplier: 1.5, jitter: Jitter::Equal };
    let patch = QueueConfigPatch {
        delivery: None,
        visibility_timeout_ms: Some(12_345),
        max_attempts: Some(7),
        backoff: Some(backoff.clone().into()),
        dedup_window_ms: Some(600),
        ..QueueConfigPatch::default()
    };
    let expected =
        QueueConfig { visibility_timeout_ms: 12_345, max_attempts: 7, backoff, dedup_window_ms: 600, ..defaults() };
    assert_eq!(f.store.queue_upsert(&q, patch).await, Ok(expected.clone()));
    assert_eq!(
        f.store.queue_get(&q).await,
        Ok(QueueInfo { name: q.clone(), config: expected, paused: false, stats: QueueStats::default() })
    );
    let plain = queue("plain");
    assert_eq!(f.store.queue_upsert(&plain, QueueConfigPatch::default()).await, Ok(defaults()));
    assert_eq!(f.store.queue_get(&plain).await.map(|i| i.config), Ok(defaults()));
}

/// `queue_upsert` on an existing queue replaces only the patched fields; the new defaults apply
/// to later enqueues and leases.
pub async fn queue_upsert_updates_existing<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("evolving");
    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(12_345), ..Default::default() }).await;
    let early = f.enqueue_one(&q, NewJob::new("early")).await;
    let updated = f.upsert(&q, QueueConfigPatch { max_attempts: Some(9), ..Default::default() }).await;
    assert_eq!(updated, QueueConfig { visibility_timeout_ms: 12_345, max_attempts: 9, ..defaults() });
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config), Ok(updated.clone()));
    let late = f.enqueue_one(&q, NewJob::new("late")).await;
    assert_eq!((f.get(early).await.max_attempts, f.get(late).await.max_attempts), (defaults().max_attempts, 9));

    let updated = f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(500), ..Default::default() }).await;
    assert_eq!(updated, QueueConfig { visibility_timeout_ms: 500, max_attempts: 9, ..defaults() });
    let leased = f.lease_one(&q, None).await;
    assert_eq!((leased.id, leased.lease_expires_at), (early, f.now().plus_ms(500)));

    f.upsert(&q, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    let err = f.store.job_enqueue(&q, vec![NewJob::new("no dedup id")]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
}

/// A partial backoff replaces the fields it gives and keeps the queue's others; whether the
/// result is valid depends on the queue's current policy, not on the defaults: `max_ms: 500`
/// alone is refused on a queue whose `initial_ms` is 1,000 (the default) and accepted on one
/// whose `initial_ms` is 100.
pub async fn queue_upsert_merges_a_partial_backoff<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("partial-backoff");
    let start = Backoff { initial_ms: 100, max_ms: 10_000, multiplier: 3.0, jitter: Jitter::Equal };
    f.upsert(&q, QueueConfigPatch { backoff: Some(start.clone().into()), ..Default::default() }).await;
    let patch = |backoff: BackoffPatch| QueueConfigPatch { backoff: Some(backoff), ..Default::default() };
    let lower_cap = patch(BackoffPatch { max_ms: Some(500), ..BackoffPatch::default() });
    let updated = f.upsert(&q, lower_cap.clone()).await;
    assert_eq!(updated.backoff, Backoff { max_ms: 500, ..start.clone() });
    let updated = f.upsert(&q, patch(BackoffPatch { jitter: Some(Jitter::None), ..BackoffPatch::default() })).await;
    assert_eq!(updated.backoff, Backoff { max_ms: 500, jitter: Jitter::None, ..start });
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config.backoff), Ok(updated.backoff.clone()));
    // On a new queue the same partial meets the defaults (initial_ms 1,000): refused, not created.
    let fresh = queue("partial-backoff-fresh");
    let expected = defaults().patched(&lower_cap).unwrap_err();
    assert_eq!(f.store.queue_upsert(&fresh, lower_cap).await, Err(expected));
    assert_eq!(f.store.queue_get(&fresh).await.map(|i| i.name), Err(Error::QueueNotFound(fresh.clone())));
    // A field out of its own range is refused whatever the queue holds.
    let too_big = patch(BackoffPatch { multiplier: Some(BACKOFF_MULTIPLIER_MAX * 2.0), ..BackoffPatch::default() });
    let expected = updated.patched(&too_big).unwrap_err();
    assert_eq!(f.store.queue_upsert(&q, too_big).await, Err(expected));
}

/// An upsert whose resulting config is invalid is rejected with the shared validation's error
/// and changes nothing: a new queue is not created, an existing one keeps its config.
pub async fn queue_upsert_rejects_invalid_config<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("strict-config");
    let invalid = [
        QueueConfigPatch { visibility_timeout_ms: Some(0), ..Default::default() },
        QueueConfigPatch {
            max_attempts: Some(9),
            backoff: Some(Backoff { multiplier: 0.5, ..Backoff::default() }.into()),
            ..Default::default()
        },
        QueueConfigPatch {
            backoff: Some(Backoff { initial_ms: 10, max_ms: 5, ..Backoff::default() }.into()),
            ..Default::default()
        },
        QueueConfigPatch { dedup_window_ms: Some(DEDUP_WINDOW_MS_MAX + 1), ..Default::default() },
        // Effectively-once without a dedup window: a producer's retry would make a second job.
        QueueConfigPatch {
            delivery: Some(onceq_core::DeliveryMode::EffectivelyOnce),
            dedup_window_ms: Some(0),
            ..Default::default()
        },
    ];
    for patch in &invalid {
        let expected = defaults().patched(patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch.clone()).await, Err(expected), "{patch:?}");
        assert_eq!(f.store.queue_list().await, Ok(vec![]), "{patch:?} created the queue");
    }
    let current = f.upsert(&q, QueueConfigPatch { max_attempts: Some(3), ..Default::default() }).await;
    let before = f.store.queue_get(&q).await;
    for patch in &invalid {
        let expected = current.patched(patch).unwrap_err();
        assert_eq!(f.store.queue_upsert(&q, patch.clone()).await, Err(expected), "{patch:?}");
        assert_eq!(f.store.queue_get(&q).await, before, "{patch:?} changed the queue");
    }
}

/// Stats count jobs by state as of the clock's current time (scheduled jobs come due, expired
/// leases become ready), and `oldest_ready_age_ms` is now minus the smallest ready `run_at`.
pub async fn queue_stats_count_each_state<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("stats");
    let t0 = f.now();
    let dead = f.enqueue_one(&q, NewJob::new("dead").priority(10)).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, dead);
    assert_eq!(f.store.fail(leased.lease(), "x").await, Ok(()));
    let held = f.enqueue_one(&q, NewJob::new("held")).await;
    assert_eq!(f.lease_one(&q, None).await.id, held);
    clock.advance(100);
    f.enqueue(&q, vec![NewJob::new("b"), NewJob::new("c").delay_ms(50), NewJob::new("d").delay_ms(100_000)]).await;
    assert_eq!(f.stats(&q).await, counts(1, 2, 1, 1, Some(0)));
    clock.advance(900);
    let info = QueueInfo { name: q.clone(), config: defaults(), paused: false, stats: counts(2, 1, 1, 1, Some(900)) };
    assert_eq!(f.store.queue_get(&q).await, Ok(info.clone()));
    assert_eq!(f.store.queue_list().await, Ok(vec![info]));
    // The held lease expires at t0 + 30 s and becomes ready then.
    clock.advance(29_500);
    let age = f.now().ms_since(t0.plus_ms(100));
    assert_eq!(f.stats(&q).await, counts(3, 1, 0, 1, Some(age)));
    clock.advance(70_000);
    let age = f.now().ms_since(t0.plus_ms(100));
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 1, Some(age)));
}

/// `oldest_ready_age_ms` is the age of the oldest ready job whatever its priority, not of the
/// job the next lease would take: the oldest may sit behind newer jobs of higher priority.
pub async fn queue_stats_oldest_ready_spans_priorities<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let q = queue("oldest");
    f.enqueue_one(&q, NewJob::new("middle").priority(-3)).await;
    clock.advance(10);
    f.enqueue_one(&q, NewJob::new("newest").priority(7)).await;
    clock.advance(10);
    f.enqueue(&q, vec![NewJob::new("a").priority(0), NewJob::new("b").priority(7)]).await;
    clock.advance(5);
    assert_eq!(f.stats(&q).await, counts(4, 0, 0, 0, Some(25)));
    // Leasing the two priority-7 jobs and the priority-0 one leaves the oldest, at priority -3.
    let leased = f.lease(&q, 3, None).await;
    assert_eq!(leased.len(), 3);
    assert_eq!(f.stats(&q).await, counts(1, 0, 3, 0, Some(25)));
    for job in &leased {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }
    let last = f.lease_one(&q, None).await;
    assert_eq!(f.store.ack(last.lease()).await, Ok(()));
    assert_eq!(f.stats(&q).await, counts(0, 0, 0, 0, None));
}

/// `queue_list` lists every queue, by name (byte order), with its config, pause flag and stats.
pub async fn queue_list_lists_by_name<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    f.upsert(&queue("b-queue"), QueueConfigPatch::default()).await;
    f.enqueue_one(&queue("a-queue"), NewJob::new("a")).await;
    f.upsert(&queue("c.queue"), QueueConfigPatch { max_attempts: Some(2), ..Default::default() }).await;
    f.upsert(&queue("B"), QueueConfigPatch::default()).await;
    assert_eq!(f.store.queue_pause(&queue("B")).await, Ok(()));
    let info = |name: &str, config: QueueConfig, paused: bool, stats: QueueStats| QueueInfo {
        name: queue(name),
        config,
        paused,
        stats,
    };
    assert_eq!(
        f.store.queue_list().await,
        Ok(vec![
            info("B", defaults(), true, QueueStats::default()),
            info("a-queue", defaults(), false, counts(1, 0, 0, 0, Some(0))),
            info("b-queue", defaults(), false, QueueStats::default()),
            info("c.queue", QueueConfig { max_attempts: 2, ..defaults() }, false, QueueStats::default()),
        ])
    );
}

/// `queue_list_page` gives the list a page at a time, by name: at most `limit` queues after
/// `after`, so that walking the pages from the last name of each lists every queue once.
pub async fn queue_list_pages_by_name<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let names = ["B", "a-queue", "b-queue", "c.queue", "d", "e"];
    for name in names.iter().rev() {
        f.upsert(&queue(name), QueueConfigPatch::default()).await;
    }
    f.enqueue_one(&queue("c.queue"), NewJob::new("c")).await;
    let page = |after: Option<&str>, limit| {
        let after = after.map(queue);
        let store = &f.store;
        async move {
            let page = store.queue_list_page(after.as_ref(), limit).await.unwrap();
            page.into_iter().map(|q| (q.name.to_string(), q.stats.ready)).collect::<Vec<_>>()
        }
    };
    let pairs = |items: &[(&str, u64)]| items.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect::<Vec<_>>();
    assert_eq!(page(None, 2).await, pairs(&[("B", 0), ("a-queue", 0)]));
    assert_eq!(page(Some("a-queue"), 2).await, pairs(&[("b-queue", 0), ("c.queue", 1)]));
    // `after` need not name a queue: the page starts at the first name past it.
    assert_eq!(page(Some("c"), 3).await, pairs(&[("c.queue", 1), ("d", 0), ("e", 0)]));
    assert_eq!(page(Some("e"), 3).await, pairs(&[]));
    assert_eq!(page(None, 100).await.len(), names.len());
    let mut walked = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let got = page(after.as_deref(), 4).await;
        let Some((last, _)) = got.last().cloned() else { break };
        walked.extend(got.into_iter().map(|(n, _)| n));
        after = Some(last);
    }
    assert_eq!(walked, names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>());
}

/// Every operation that names an existing queue returns `QueueNotFound` for an unknown one, and
/// creates nothing.
pub async fn queue_ops_on_unknown_queue_are_not_found<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let ghost = queue("nowhere");
    let not_found = Error::QueueNotFound(ghost.clone());
    assert_eq!(f.store.queue_get(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_resume(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_delete(&ghost).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&ghost, DeadPage::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_redrive(&ghost, Redrive::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_purge(&ghost).await, Err(not_found));
    assert_eq!(f.store.queue_list().await, Ok(vec![]));
}

/// `queue_delete` removes the queue, every job in it (whatever its state) and its dedup entries;
/// the queue's operations then return `QueueNotFound`, its jobs `JobNotFound`; other queues are
/// untouched; enqueueing again creates a fresh default queue.
pub async fn queue_delete_removes_queue_and_jobs<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("doomed");
    let other = queue("survivor");
    f.upsert(&q, QueueConfigPatch { visibility_timeout_ms: Some(1_234), ..Default::default() }).await;
    let dead = f.enqueue_dead(&q, 1).await[0];
    let leased_id = f.enqueue_one(&q, NewJob::new("leased")).await;
    let leased = f.lease_one(&q, None).await;
    assert_eq!(leased.id, leased_id);
    let ready = f.enqueue_one(&q, NewJob::new("ready").dedup_id("once")).await;
    let scheduled = f.enqueue_one(&q, NewJob::new("scheduled").delay_ms(60_000)).await;
    let survivor = f.enqueue_one(&other, NewJob::new("survivor")).await;
    let survivor_before = f.get(survivor).await;

    assert_eq!(f.store.queue_delete(&q).await, Ok(()));
    for id in [dead, leased_id, ready, scheduled] {
        assert_eq!(f.store.job_get(id).await, Err(Error::JobNotFound(id)));
    }
    f.assert_settles_rejected(leased.lease(), Error::JobNotFound(leased_id)).await;
    let not_found = Error::QueueNotFound(q.clone());
    assert_eq!(f.store.queue_get(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_pause(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_resume(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.queue_delete(&q).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_list(&q, DeadPage::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_redrive(&q, Redrive::default()).await, Err(not_found.clone()));
    assert_eq!(f.store.dead_purge(&q).await, Err(not_found));
    f.lease_none(&q).await;
    assert_eq!(f.store.queue_list().await.map(|l| l.into_iter().map(|i| i.name).collect::<Vec<_>>()), Ok(vec![other]));
    assert_eq!(f.get(survivor).await, survivor_before);

    let reborn = f.store.enqueue(&q, NewJob::new("again").dedup_id("once")).await.unwrap();
    assert!(!reborn.duplicate, "the dedup entries went with the queue");
    assert!(reborn.id > survivor);
    assert_eq!(f.store.queue_get(&q).await.map(|i| i.config), Ok(defaults()));
}

/// A queue's `durability` round-trips through `queue_upsert` and `queue_get`: absent by default
/// (the store's own setting), kept by a patch that does not name it, and cleared by `null`.
/// Every operation works on a `relaxed` queue and across a relaxed and an `fsync` one: enqueue,
/// lease, extend, nack, release, fail, a redrive into the fsync queue, a commit spanning both,
/// and ack. (That a relaxed reply does not wait for the disk is each store's own test: the
/// seam cannot see it; that relaxed work survives a clean close is the embedded store's.)
pub async fn queue_durability_round_trips_and_relaxed_queues_work<B: Backend>(backend: &B) {
    use onceq_core::commit::{Commit, CommitEnqueue};
    use onceq_core::{Durability, NackOutcome};

    let (f, _clock) = open_manual(backend).await;
    let fast = queue("durability-relaxed");
    let safe = queue("durability-fsync");
    assert_eq!(f.upsert(&queue("durability-default"), QueueConfigPatch::default()).await.durability, None);
    let set = |durability: Option<Durability>| QueueConfigPatch { durability: Some(durability), ..Default::default() };
    let relaxed = f.upsert(&fast, set(Some(Durability::Relaxed))).await;
    assert_eq!(relaxed, QueueConfig { durability: Some(Durability::Relaxed), ..defaults() });
    assert_eq!(f.store.queue_get(&fast).await.map(|i| i.config), Ok(relaxed));
    assert_eq!(f.upsert(&safe, set(Some(Durability::Fsync))).await.durability, Some(Durability::Fsync));
    let kept = f.upsert(&fast, QueueConfigPatch { dedup_window_ms: Some(1_000), ..Default::default() }).await;
    assert_eq!(kept.durability, Some(Durability::Relaxed), "a patch without durability changed it");

    let ids = f.enqueue(&fast, vec![NewJob::new("a"), NewJob::new("b"), NewJob::new("c")]).await;
    assert_eq!(f.stats(&fast).await.ready, 3);
    let leased = f.lease(&fast, 3, None).await;
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    assert_eq!(f.store.extend(leased[0].lease(), 60_000).await, Ok(f.now().plus_ms(60_000)));
    assert_eq!(
        f.store.nack(leased[1].lease(), Some(0), Some("later")).await,
        Ok(NackOutcome::Retrying { run_at: f.now() })
    );
    assert_eq!(f.store.release(leased[2].lease(), None).await, Ok(()));
    assert_eq!(f.store.fail(leased[0].lease(), "broken").await, Ok(()));
    assert_eq!(f.stats(&fast).await, counts(2, 0, 0, 1, Some(0)));

    let again = f.lease(&fast, 2, None).await;
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), ids[1..].to_vec());
    assert_eq!(f.store.ack(again[0].lease()).await, Ok(()));
    let redriven = f.store.dead_redrive(&fast, Redrive { to_queue: Some(safe.clone()), ..Redrive::default() }).await;
    assert_eq!(redriven.map(|r| (r.matched, r.redriven)), Ok((1, 1)));
    // One commit settles in the relaxed queue and enqueues into both.
    let commit = Commit {
        ack: vec![again[1].lease()],
        enqueue: vec![
            CommitEnqueue { queue: fast.clone(), jobs: vec![NewJob::new("d")] },
            CommitEnqueue { queue: safe.clone(), jobs: vec![NewJob::new("e")] },
        ],
        ..Commit::default()
    };
    let outcome = f.store.commit(commit).await.unwrap();
    assert_eq!(outcome.enqueued.iter().map(|e| e.jobs.len()).collect::<Vec<_>>(), vec![1, 1]);
    assert_eq!(f.stats(&fast).await, counts(1, 0, 0, 0, Some(0)));
    assert_eq!(f.stats(&safe).await, counts(2, 0, 0, 0, Some(0)));
    let moved = f.lease(&safe, 10, None).await;
    assert_eq!(moved[0].id, ids[0], "the redriven job is in the fsync queue");
    for job in &moved {
        assert_eq!(f.store.ack(job.lease()).await, Ok(()));
    }

    let cleared = f.upsert(&fast, set(None)).await;
    assert_eq!(cleared, QueueConfig { dedup_window_ms: 1_000, ..defaults() }, "null went back to the store's");
    assert_eq!(f.store.queue_get(&fast).await.map(|i| i.config), Ok(cleared));
}
