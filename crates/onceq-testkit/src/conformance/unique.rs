//! Unique jobs (`onceq_core::unique`): each `while` by each `by`, the freeing of a key by every
//! way a job leaves the states its rule names, the canonical form of a payload, validation, the
//! interplay with dedup ids, commits and `per_key` queues, and concurrent enqueues of one key.

use std::sync::Arc;

use onceq_core::commit::{Commit, CommitEnqueue};
use onceq_core::{
    DeliveryMode, Enqueued, Error, ErrorKind, JobId, NewJob, Ordering, QueueConfigPatch, QueueName, Redrive, Store,
    StoreExt, Unique, UniqueBy, UniqueWhile,
};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::{counts, open_manual, queue, within};
use crate::Backend;

/// A job of `payload` (JSON), unique as `unique` asks; with dedup id `key` when it is unique by
/// its dedup id (a job unique by payload gets none, so that no dedup window plays a part).
fn unique_job(payload: &str, key: &str, unique: Unique) -> NewJob {
    let job = NewJob::new(payload.to_owned()).unique(unique);
    if unique.by == UniqueBy::DedupId {
        job.dedup_id(key)
    } else {
        job
    }
}

/// Enqueues `job`, which must be a duplicate of `of`.
async fn assert_duplicate<S: Store>(store: &S, q: &QueueName, job: NewJob, of: JobId) {
    assert_eq!(store.enqueue(q, job).await, Ok(Enqueued { id: of, duplicate: true }));
}

/// Enqueues `job`, which must be new; returns its id.
async fn assert_new<S: Store>(store: &S, q: &QueueName, job: NewJob) -> JobId {
    let enqueued = store.enqueue(q, job).await.unwrap();
    assert!(!enqueued.duplicate, "expected a new job, got a duplicate of {}", enqueued.id);
    enqueued.id
}

const BOTH: [UniqueBy; 2] = [UniqueBy::DedupId, UniqueBy::Payload];

/// `while: pending`: the key is held while its job is scheduled or ready (a duplicate gets the
/// holder's id and changes nothing, in a batch too), and freed once the job is leased. A job
/// that goes back to ready (nack, expiry, release) holds its key again if no job took it
/// meanwhile; if one did, the key is the newer job's and both run.
pub async fn unique_while_pending_by_each_key<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    for by in BOTH {
        let q = queue(&format!("pending-{by:?}").to_lowercase());
        let rule = Unique::new(by, UniqueWhile::Pending);
        let job = |text: &str| unique_job(r#"{"task":"sync"}"#, "k", rule).header("n", text);
        // A scheduled job holds its key.
        let first = assert_new(&*f.store, &q, job("1").delay_ms(1_000)).await;
        assert_duplicate(&*f.store, &q, job("2"), first).await;
        assert_eq!(f.store.job_get(first).await.unwrap().headers.get("n").map(String::as_str), Some("1"));
        clock.advance(1_000);
        // Ready, it still does; a batch's repeats are duplicates of the holder.
        let batch = f.store.job_enqueue(&q, vec![job("3"), job("4")]).await.unwrap();
        assert_eq!(batch, vec![Enqueued { id: first, duplicate: true }; 2]);
        assert_eq!(f.stats(&q).await, counts(1, 0, 0, 0, Some(0)));
        // Leased, it frees the key: the next enqueue creates a job, which holds it.
        let leased = f.lease_one(&q, None).await;
        assert_eq!(leased.id, first);
        let second = assert_new(&*f.store, &q, job("5")).await;
        assert_duplicate(&*f.store, &q, job("6"), second).await;
        // The first job, nacked back to ready, does not take the key back: both run.
        f.store.nack(leased.lease(), Some(0), Some("again")).await.unwrap();
        assert_duplicate(&*f.store, &q, job("7"), second).await;
        assert_eq!(f.stats(&q).await.ready, 2);
        // With nobody taking it meanwhile, a job back in ready holds its key again.
        let leased = f.lease(&q, 2, None).await;
        assert_eq!(leased.len(), 2);
        let holder = leased.iter().find(|j| j.id == second).unwrap();
        f.store.release(holder.lease(), None).await.unwrap();
        assert_duplicate(&*f.store, &q, job("8"), second).await;
        // Within one batch, the first job of a key takes it and the rest are its duplicates.
        let fresh = queue(&format!("pending-batch-{by:?}").to_lowercase());
        let other = unique_job(r#"{"task":"other"}"#, "other", rule);
        let out = f.store.job_enqueue(&fresh, vec![job("a"), other.clone(), job("b"), other]).await.unwrap();
        assert!(!out[0].duplicate && !out[1].duplicate && out[0].id != out[1].id, "{out:?}");
        assert_eq!(out[2], Enqueued { id: out[0].id, duplicate: true });
        assert_eq!(out[3], Enqueued { id: out[1].id, duplicate: true });
    }
}

/// `while: active`: the key is held while its job is scheduled, ready or leased (its redeliveries
/// too), and freed when it is acked or goes dead; a dead job redriven back to ready holds it
/// again if no job took it meanwhile.
pub async fn unique_while_active_by_each_key<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    for by in BOTH {
        let q = queue(&format!("active-{by:?}").to_lowercase());
        let rule = Unique::new(by, UniqueWhile::Active);
        let job = || unique_job(r#"{"report":7}"#, "r", rule);
        let first = assert_new(&*f.store, &q, job()).await;
        let leased = f.lease_one(&q, None).await;
        assert_duplicate(&*f.store, &q, job(), first).await;
        f.store.nack(leased.lease(), Some(0), None).await.unwrap();
        assert_duplicate(&*f.store, &q, job(), first).await;
        let leased = f.lease_one(&q, None).await;
        f.store.ack(leased.lease()).await.unwrap();
        // Acked: free.
        let second = assert_new(&*f.store, &q, job()).await;
        let leased = f.lease_one(&q, None).await;
        f.store.fail(leased.lease(), "broken").await.unwrap();
        // Dead: free; redriven while nobody took the key, it holds it again.
        assert_eq!(f.stats(&q).await, counts(0, 0, 0, 1, None));
        f.store.dead_redrive(&q, Redrive::default()).await.unwrap();
        assert_duplicate(&*f.store, &q, job(), second).await;
        let leased = f.lease_one(&q, None).await;
        f.store.fail(leased.lease(), "broken again").await.unwrap();
        let third = assert_new(&*f.store, &q, job()).await;
        assert!(third > second);
        f.store.dead_redrive(&q, Redrive::default()).await.unwrap();
        // The redriven job does not take the key back from the newer one.
        assert_duplicate(&*f.store, &q, job(), third).await;
        assert_eq!(f.stats(&q).await.ready, 2);
    }
}

/// `while: window`: the key is held for `window_ms` after the first enqueue whatever the job's
/// state (acked and gone included), its own window and not the queue's dedup window; duplicates
/// do not extend it.
pub async fn unique_while_window_by_each_key<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    for by in BOTH {
        let q = queue(&format!("window-{by:?}").to_lowercase());
        let rule = Unique::window(by, 1_000);
        let job = || unique_job(r#"["mail",1]"#, "w", rule);
        let first = assert_new(&*f.store, &q, job()).await;
        let leased = f.lease_one(&q, None).await;
        f.store.ack(leased.lease()).await.unwrap();
        clock.advance(999);
        assert_duplicate(&*f.store, &q, job(), first).await;
        clock.advance(1);
        // The queue's dedup window (300 s by default) plays no part.
        let second = assert_new(&*f.store, &q, job()).await;
        clock.advance(999);
        assert_duplicate(&*f.store, &q, job(), second).await;
        clock.advance(1);
        let third = assert_new(&*f.store, &q, job()).await;
        // The rule of the job that took the key decides while it holds it: an enqueue asking
        // for another rule is its duplicate within the window.
        let pending = unique_job(r#"["mail",1]"#, "w", Unique::new(by, UniqueWhile::Pending));
        assert_duplicate(&*f.store, &q, pending, third).await;
    }
}

/// `by: payload` hashes the canonical form of the JSON payload: key order and whitespace do not
/// matter, values do (`1` and `1.0` are different numbers); a payload that is not JSON is refused.
/// Keys are per queue.
pub async fn unique_by_payload_hashes_the_canonical_form<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("canonical");
    let rule = Unique::new(UniqueBy::Payload, UniqueWhile::Pending);
    let first = assert_new(&*f.store, &q, NewJob::new(r#"{"a":1,"b":[true,null,"x"]}"#).unique(rule)).await;
    for spelling in ["{ \"b\" : [ true , null , \"x\" ] ,\n \"a\" : 1 }", r#"{"b":[true,null,"\u0078"],"a":1}"#] {
        assert_duplicate(&*f.store, &q, NewJob::new(spelling).unique(rule), first).await;
    }
    for other in [r#"{"a":1.0,"b":[true,null,"x"]}"#, r#"{"a":1,"b":[null,true,"x"]}"#, r#"{"a":1}"#] {
        assert_new(&*f.store, &q, NewJob::new(other).unique(rule)).await;
    }
    // The same payload in another queue is another key.
    assert_new(&*f.store, &queue("canonical-2"), NewJob::new(r#"{"b":[true,null,"x"],"a":1}"#).unique(rule)).await;
    // A job's dedup id plays no part in a key by payload.
    assert_duplicate(&*f.store, &q, NewJob::new(r#"{"a":1,"b":[true,null,"x"]}"#).dedup_id("z").unique(rule), first)
        .await;
    let err = f.store.enqueue(&q, NewJob::new("not json").unique(rule)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
    assert!(err.to_string().contains("JSON"), "{err}");
}

/// A key is freed by every way its job leaves: acked, leased in an `at_most_once` queue, failed
/// and purged, moved into another queue by a redrive, deleted with its queue.
pub async fn unique_keys_are_freed_when_their_job_leaves<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let rule = Unique::new(UniqueBy::Payload, UniqueWhile::Active);
    let job = || NewJob::new(r#"{"k":1}"#).unique(rule);

    let fire = queue("fire-and-forget");
    f.upsert(&fire, QueueConfigPatch { delivery: Some(DeliveryMode::AtMostOnce), ..Default::default() }).await;
    let first = assert_new(&*f.store, &fire, job()).await;
    assert_duplicate(&*f.store, &fire, job(), first).await;
    assert_eq!(f.lease_one(&fire, None).await.id, first);
    assert_new(&*f.store, &fire, job()).await;

    let q = queue("leaving");
    let first = assert_new(&*f.store, &q, job()).await;
    let leased = f.lease_one(&q, None).await;
    f.store.fail(leased.lease(), "no").await.unwrap();
    assert_eq!(f.store.dead_purge(&q).await, Ok(1));
    let second = assert_new(&*f.store, &q, job()).await;
    assert!(second > first);
    // Moved to another queue by a redrive: it holds no key of its old queue.
    let leased = f.lease_one(&q, None).await;
    f.store.fail(leased.lease(), "no").await.unwrap();
    let elsewhere = queue("leaving-elsewhere");
    f.upsert(&elsewhere, QueueConfigPatch::default()).await;
    let moved = f.store.dead_redrive(&q, Redrive { to_queue: Some(elsewhere.clone()), ..Default::default() }).await;
    assert_eq!(moved.unwrap().redriven, 1);
    assert_eq!(f.stats(&elsewhere).await.ready, 1);
    let third = assert_new(&*f.store, &q, job()).await;
    // Deleted with its queue.
    f.store.queue_delete(&q).await.unwrap();
    let fourth = assert_new(&*f.store, &q, job()).await;
    assert!(fourth > third);
    assert_eq!(f.store.job_get(third).await, Err(Error::JobNotFound(third)));
}

/// Every bad request is refused whole, naming the field: an unknown combination of window
/// fields, `by: dedup_id` without a dedup id, a payload that is not JSON, and, in an
/// `effectively_once` queue, `by: dedup_id` while pending or active (its dedup ids must hold for
/// the dedup window); nothing of a refused batch is written.
pub async fn unique_requests_are_validated<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("checked");
    let bad = [
        (NewJob::new("{}").unique(Unique::new(UniqueBy::DedupId, UniqueWhile::Pending)), "dedup_id"),
        (NewJob::new("{}").unique(Unique::new(UniqueBy::Payload, UniqueWhile::Window)), "window_ms"),
        (NewJob::new("{}").unique(Unique::window(UniqueBy::Payload, 0)), "window_ms"),
        (
            NewJob::new("{}")
                .unique(Unique { window_ms: Some(10), ..Unique::new(UniqueBy::Payload, UniqueWhile::Active) }),
            "window_ms",
        ),
        (NewJob::new("<xml/>").unique(Unique::new(UniqueBy::Payload, UniqueWhile::Active)), "JSON"),
    ];
    for (job, field) in bad {
        let err = f.store.job_enqueue(&q, vec![NewJob::new("{}"), job]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
        let text = err.to_string();
        assert!(text.contains("item 1") && text.contains(field), "{text}");
    }
    assert_eq!(f.store.queue_get(&q).await, Err(Error::QueueNotFound(q.clone())));

    let strict = queue("checked-strict");
    f.upsert(&strict, QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..Default::default() }).await;
    for rule in [UniqueWhile::Pending, UniqueWhile::Active] {
        let err =
            f.store.enqueue(&strict, unique_job("{}", "d", Unique::new(UniqueBy::DedupId, rule))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
        assert!(err.to_string().contains("effectively_once"), "{err}");
    }
    // A window, or a key by payload, keeps the dedup id's promise and is accepted.
    let id = assert_new(&*f.store, &strict, unique_job("{}", "d", Unique::window(UniqueBy::DedupId, 60_000))).await;
    assert_duplicate(&*f.store, &strict, unique_job("{}", "d", Unique::window(UniqueBy::DedupId, 60_000)), id).await;
    let by_payload =
        NewJob::new(r#"{"p":1}"#).dedup_id("e").unique(Unique::new(UniqueBy::Payload, UniqueWhile::Pending));
    let other = assert_new(&*f.store, &strict, by_payload.clone()).await;
    assert_duplicate(&*f.store, &strict, by_payload, other).await;
    assert_eq!(f.stats(&strict).await.ready, 2);
}

/// `by: dedup_id` judges the dedup id by the unique rule instead of the queue's dedup window,
/// and unique keys and plain dedup ids do not see each other; a job unique by payload keeps its
/// dedup id's window as well.
pub async fn unique_by_dedup_id_replaces_the_dedup_window<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("replaces");
    let rule = Unique::new(UniqueBy::DedupId, UniqueWhile::Pending);
    let first = assert_new(&*f.store, &q, unique_job("1", "id", rule)).await;
    let leased = f.lease_one(&q, None).await;
    f.store.ack(leased.lease()).await.unwrap();
    // Within the queue's dedup window, yet new: the job that held the key is gone.
    let second = assert_new(&*f.store, &q, unique_job("2", "id", rule)).await;
    assert!(second > first);
    // A plain dedup id of the same text is not a unique key, and the other way round.
    let plain = assert_new(&*f.store, &q, NewJob::new("3").dedup_id("id")).await;
    assert_duplicate(&*f.store, &q, NewJob::new("4").dedup_id("id"), plain).await;
    assert_duplicate(&*f.store, &q, unique_job("5", "id", rule), second).await;
    // By payload, the dedup id still dedups for the window after the job is gone.
    let by_payload = Unique::new(UniqueBy::Payload, UniqueWhile::Pending);
    let third = assert_new(&*f.store, &q, NewJob::new(r#"{"n":3}"#).dedup_id("p").unique(by_payload)).await;
    let leased = f.lease(&q, 10, None).await;
    for job in &leased {
        f.store.ack(job.lease()).await.unwrap();
    }
    assert_duplicate(&*f.store, &q, NewJob::new(r#"{"n":3}"#).dedup_id("p").unique(by_payload), third).await;
    assert_new(&*f.store, &q, NewJob::new(r#"{"n":3}"#).dedup_id("p2").unique(by_payload)).await;
}

/// Unique jobs in a commit's enqueue and in a `per_key` queue: a commit's duplicate gets the
/// holder's id; a job blocked behind its ordering key is pending, so it holds its key.
pub async fn unique_jobs_in_commits_and_ordered_queues<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let q = queue("committed");
    let rule = Unique::new(UniqueBy::Payload, UniqueWhile::Pending);
    let held = assert_new(&*f.store, &q, NewJob::new(r#"{"c":1}"#).unique(rule)).await;
    let commit = Commit {
        enqueue: vec![CommitEnqueue {
            queue: q.clone(),
            jobs: vec![NewJob::new(r#"{"c":1}"#).unique(rule), NewJob::new(r#"{"c":2}"#).unique(rule)],
        }],
        ..Default::default()
    };
    let outcome = f.store.commit(commit).await.unwrap();
    let jobs = &outcome.enqueued[0].jobs;
    assert_eq!(jobs[0], Enqueued { id: held, duplicate: true });
    assert!(!jobs[1].duplicate);
    assert_duplicate(&*f.store, &q, NewJob::new(r#"{"c":2}"#).unique(rule), jobs[1].id).await;

    let ordered = queue("ordered-unique");
    f.upsert(&ordered, QueueConfigPatch { ordering: Some(Ordering::PerKey), ..Default::default() }).await;
    let head = assert_new(&*f.store, &ordered, NewJob::new(r#"{"o":1}"#).ordering_key("acct")).await;
    let blocked = assert_new(&*f.store, &ordered, NewJob::new(r#"{"o":2}"#).ordering_key("acct").unique(rule)).await;
    assert!(blocked > head);
    assert_duplicate(&*f.store, &ordered, NewJob::new(r#"{"o":2}"#).ordering_key("acct").unique(rule), blocked).await;
}

/// However many enqueues of one key race, exactly one job is created and every one of them
/// gets its id.
pub async fn unique_holds_under_concurrent_enqueues<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    for (name, rule) in [
        ("race-pending", Unique::new(UniqueBy::Payload, UniqueWhile::Pending)),
        ("race-active", Unique::new(UniqueBy::DedupId, UniqueWhile::Active)),
        ("race-window", Unique::window(UniqueBy::Payload, 60_000)),
    ] {
        let q = queue(name);
        let racers = 16;
        let barrier = Arc::new(Barrier::new(racers));
        let mut set = JoinSet::new();
        for i in 0..racers {
            let (store, barrier, q) = (f.store.clone(), barrier.clone(), q.clone());
            set.spawn(async move {
                barrier.wait().await;
                let job = unique_job(r#"{"race":true}"#, "race", rule).header("racer", i.to_string());
                store.enqueue(&q, job).await.unwrap()
            });
        }
        let mut results = Vec::new();
        while let Some(result) = within("racing unique enqueues", set.join_next()).await {
            results.push(result.unwrap());
        }
        let created: Vec<&Enqueued> = results.iter().filter(|e| !e.duplicate).collect();
        assert_eq!(created.len(), 1, "{name}: {results:?}");
        assert!(results.iter().all(|e| e.id == created[0].id), "{name}: {results:?}");
        assert_eq!(f.stats(&q).await.ready, 1, "{name}");
    }
}
