//! Commits (docs/design.md "Next: commits", Invariants 12 and 13; `onceq_core::commit`): a
//! stage's settles and enqueues apply together or not at all; a stale lease, a refused enqueue
//! or a fenced producer changes nothing; a commit id replays its first outcome and refuses other
//! content, until its window ends; a producer's checkpoint comes back with its next
//! registration; a commit works with ordered keys.

use onceq_core::commit::{Commit, CommitEnqueue, CommitId, CommitOutcome, Fence, ProducerId};
use onceq_core::limits::{COMMIT_REPLAY_MS_MIN, LEASE_BATCH_MAX};
use onceq_core::{
    DeliveryMode, Error, JobState, LeasedJob, Nack, NewJob, Ordering, QueueConfigPatch, QueueName, Release, Store,
};

use super::{open_manual, queue, Fixture, HANG};
use crate::Backend;
use std::time::Duration;

/// Ack `input`, enqueue one job into `b` and one into `c`.
fn stage(input: &LeasedJob, id: Option<&str>) -> Commit {
    Commit {
        commit_id: id.map(|i| CommitId::new(i).unwrap()),
        ack: vec![input.lease()],
        enqueue: vec![
            CommitEnqueue { queue: queue("b"), jobs: vec![NewJob::new("\"b-out\"")] },
            CommitEnqueue { queue: queue("c"), jobs: vec![NewJob::new("\"c-out\"")] },
        ],
        ..Commit::default()
    }
}

impl<S: Store + 'static> Fixture<S> {
    /// Enqueues one job into `q` and leases it.
    async fn leased(&self, q: &str, payload: &str) -> LeasedJob {
        self.enqueue_one(&queue(q), NewJob::new(format!("\"{payload}\""))).await;
        self.lease_one(&queue(q), Some(60_000)).await
    }

    /// Ready jobs of `q` (0 for a queue that does not exist).
    async fn ready(&self, q: &str) -> u64 {
        match self.store.queue_get(&queue(q)).await {
            Ok(info) => info.stats.ready,
            Err(Error::QueueNotFound(_)) => 0,
            Err(e) => panic!("{e}"),
        }
    }

    async fn commit_ok(&self, commit: Commit) -> CommitOutcome {
        self.store.commit(commit).await.unwrap()
    }
}

/// A stage's commit acks its input and enqueues into two queues at once; nack, fail and release
/// settle in a commit as they do alone.
pub async fn a_commit_acks_its_input_and_enqueues_its_outputs_together<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let input = f.leased("a", "in").await;
    let outcome = f.commit_ok(stage(&input, None)).await;
    assert!(!outcome.replayed);
    let shape: Vec<(&str, usize)> = outcome.enqueued.iter().map(|e| (e.queue.as_str(), e.jobs.len())).collect();
    assert_eq!(shape, [("b", 1), ("c", 1)]);
    assert!(matches!(f.store.job_get(input.id).await, Err(Error::JobNotFound(_))), "the input is acked");
    for e in &outcome.enqueued {
        let job = f.store.job_get(e.jobs[0].id).await.unwrap();
        assert_eq!((job.state, job.queue.as_str()), (JobState::Ready, e.queue.as_str()));
    }
    // Nack, fail and release settle in a commit too.
    let (n, d, r) = (f.leased("a", "n").await, f.leased("a", "d").await, f.leased("a", "r").await);
    let commit = Commit {
        nack: vec![Nack { id: n.id, lease_token: n.lease_token, delay_ms: Some(0), error: Some("again".into()) }],
        fail: vec![onceq_core::Fail { id: d.id, lease_token: d.lease_token, error: "bad input".into() }],
        release: vec![Release { id: r.id, lease_token: r.lease_token, delay_ms: None }],
        ..Commit::default()
    };
    assert!(f.commit_ok(commit).await.enqueued.is_empty());
    assert_eq!(f.store.job_get(n.id).await.unwrap().state, JobState::Ready);
    assert_eq!(f.store.job_get(d.id).await.unwrap().state, JobState::Dead);
    assert_eq!(f.store.job_get(r.id).await.unwrap().state, JobState::Ready);
}

/// Invariant 12: one stale lease, or one enqueue its queue refuses, and nothing of the commit
/// applies; `LeasesLost` lists the stale jobs.
pub async fn a_commit_with_a_stale_lease_or_a_refused_enqueue_changes_nothing<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let first = f.leased("a", "one").await;
    let second = f.leased("a", "two").await;
    f.store.job_ack(&[second.lease()]).await.unwrap().pop().unwrap().unwrap();
    let mut commit = stage(&first, None);
    commit.ack.push(second.lease());
    match f.store.commit(commit).await {
        Err(Error::LeasesLost(jobs)) => assert_eq!(jobs, vec![second.id]),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.store.job_get(first.id).await.unwrap().state, JobState::Leased, "the live lease was not acked");
    assert_eq!((f.ready("b").await, f.ready("c").await), (0, 0), "nothing was enqueued");

    // An enqueue its queue refuses (effectively_once wants dedup ids): still nothing applies.
    let patch = QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..QueueConfigPatch::default() };
    f.upsert(&queue("c"), patch).await;
    assert!(matches!(f.store.commit(stage(&first, None)).await, Err(Error::InvalidRequest(_))));
    assert_eq!(f.store.job_get(first.id).await.unwrap().state, JobState::Leased);
    assert_eq!(f.ready("b").await, 0);

    // Refused before anything is looked at: nothing to do, one job settled twice.
    assert!(matches!(f.store.commit(Commit::default()).await, Err(Error::InvalidRequest(_))));
    let mut twice = stage(&first, None);
    twice.release.push(Release { id: first.id, lease_token: first.lease_token, delay_ms: None });
    assert!(matches!(f.store.commit(twice).await, Err(Error::InvalidRequest(_))));
}

/// Invariant 12: the same commit id never applies twice; its retry gets the first outcome, other
/// content under it is a conflict, and past its window it is forgotten.
pub async fn a_commit_id_replays_its_first_outcome_and_refuses_other_content<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let input = f.leased("a", "in").await;
    let first = f.commit_ok(stage(&input, Some("stage-1:7"))).await;
    // The reply was lost; the retry finds its lease gone, yet gets the first outcome.
    let again = f.commit_ok(stage(&input, Some("stage-1:7"))).await;
    assert!(again.replayed);
    assert_eq!(again.enqueued, first.enqueued);
    assert_eq!((f.ready("b").await, f.ready("c").await), (1, 1), "nothing applied twice");
    let mut other = stage(&input, Some("stage-1:7"));
    other.enqueue[0].jobs[0] = NewJob::new("\"different\"");
    assert!(matches!(f.store.commit(other).await, Err(Error::Conflict(_))));
    // Past its window (the queues' dedup window, 5 minutes by default, and at least
    // COMMIT_REPLAY_MS_MIN) the id is forgotten: the retry is judged afresh, and its lease is gone.
    clock.advance(COMMIT_REPLAY_MS_MIN.max(300_000) + 1);
    match f.store.commit(stage(&input, Some("stage-1:7"))).await {
        Err(Error::LeasesLost(jobs)) => assert_eq!(jobs, vec![input.id]),
        other => panic!("{other:?}"),
    }
    assert_eq!((f.ready("b").await, f.ready("c").await), (1, 1));
}

/// Invariant 13: once epoch e+1 registered, nothing of epoch e applies; the checkpoint of the
/// last commit comes back with the registration.
pub async fn a_newer_registration_fences_the_older_producer_and_returns_its_checkpoint<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let ingest = ProducerId::new("ingest:orders").unwrap();
    let never = f.store.producer_get(&ingest).await.unwrap();
    assert_eq!((never.epoch, never.checkpoint), (0, None), "epoch 0: never registered");
    let old = f.store.producer_register(&ingest).await.unwrap();
    assert_eq!((old.epoch, old.checkpoint.clone()), (1, None));
    let produce = |epoch: u64, offset: u64| Commit {
        producer: Some(Fence { producer: ingest.clone(), epoch }),
        enqueue: vec![CommitEnqueue { queue: queue("orders"), jobs: vec![NewJob::new(format!("{offset}"))] }],
        checkpoint: Some(serde_json::json!({ "offset": offset })),
        ..Commit::default()
    };
    f.commit_ok(produce(1, 10)).await;

    let new = f.store.producer_register(&ingest).await.unwrap();
    assert_eq!((new.epoch, new.checkpoint.clone()), (2, Some(serde_json::json!({ "offset": 10 }))));
    assert_eq!(f.store.producer_get(&ingest).await.unwrap(), new, "reading registers nothing");
    // The old instance, still running, is refused from now on and changes nothing.
    assert!(matches!(f.store.commit(produce(1, 11)).await, Err(Error::Fenced(_))));
    assert!(matches!(f.store.commit(produce(3, 11)).await, Err(Error::InvalidRequest(_))), "epoch 3 was never issued");
    f.commit_ok(produce(2, 11)).await;
    assert_eq!(f.ready("orders").await, 2);
    let unknown =
        Commit { producer: Some(Fence { producer: ProducerId::new("nobody").unwrap(), epoch: 1 }), ..produce(1, 12) };
    assert!(matches!(f.store.commit(unknown).await, Err(Error::InvalidRequest(_))));
    let orphan = Commit { producer: None, ..produce(2, 12) };
    assert!(matches!(f.store.commit(orphan).await, Err(Error::InvalidRequest(_))), "a checkpoint needs its producer");
    assert_eq!(f.store.producer_register(&ingest).await.unwrap().checkpoint, Some(serde_json::json!({ "offset": 11 })));
}

/// In a `per_key` queue, a commit that acks a key's head and enqueues the key's next job leaves
/// that job as the key's head.
pub async fn a_commit_moves_a_key_on_and_enqueues_its_next_job<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let account: QueueName = queue("account");
    let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() };
    f.upsert(&account, patch).await;
    f.enqueue_one(&account, NewJob::new("\"opened\"").ordering_key("acct-1")).await;
    let head = f.lease_one(&account, Some(60_000)).await;
    // The head's handler emits the key's next event with its ack.
    let commit = Commit {
        ack: vec![head.lease()],
        enqueue: vec![CommitEnqueue {
            queue: account.clone(),
            jobs: vec![NewJob::new("\"credited\"").ordering_key("acct-1")],
        }],
        ..Commit::default()
    };
    let outcome = f.commit_ok(commit).await;
    let next = f.lease_one(&account, Some(60_000)).await;
    assert_eq!(next.id, outcome.enqueued[0].jobs[0].id, "the key's next job is its head now");
}

/// Invariant 13 under a race: two instances of one producer read one input (lines 0 to 199), each
/// committing two lines at a time with the checkpoint of the next line. The second registers
/// while the first is mid-stream and resumes from the checkpoint it got. No commit of the first
/// that started after the registration returned applies, and the queue ends with every line
/// exactly once: no gap, no repeat.
pub async fn racing_producer_instances_hand_over_at_the_checkpoint_without_gaps_or_repeats<B: Backend>(backend: &B) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
    use std::sync::Arc;

    const LINES: u64 = 200;
    const PER_COMMIT: u64 = 2;
    let (f, _clock) = open_manual(backend).await;
    let store = f.store.clone();
    let ingest = ProducerId::new("ingest:lines").unwrap();
    let lines = queue("lines");

    /// Produces lines from the registration's checkpoint until the input ends or the instance
    /// is fenced; returns the lines its applied commits carried. `registered` is set by the
    /// other instance once its registration returned.
    async fn run<S: Store>(
        store: &S,
        ingest: &ProducerId,
        lines: &QueueName,
        registration: onceq_core::commit::Registration,
        registered: Option<(&AtomicBool, &AtomicU64)>,
    ) -> Vec<u64> {
        let mut next = registration.checkpoint.map_or(0, |c| c["next"].as_u64().unwrap());
        let mut applied = Vec::new();
        while next < LINES {
            let end = (next + PER_COMMIT).min(LINES);
            let fenced_before = registered.is_some_and(|(flag, _)| flag.load(AtomicOrdering::SeqCst));
            let commit = Commit {
                producer: Some(Fence { producer: ingest.clone(), epoch: registration.epoch }),
                enqueue: vec![CommitEnqueue {
                    queue: lines.clone(),
                    jobs: (next..end).map(|line| NewJob::new(format!("{line}"))).collect(),
                }],
                checkpoint: Some(serde_json::json!({ "next": end })),
                ..Commit::default()
            };
            match store.commit(commit).await {
                Ok(_) => {
                    assert!(
                        !fenced_before,
                        "a commit of epoch {} started after the registration of a newer one and applied",
                        registration.epoch
                    );
                    applied.extend(next..end);
                    next = end;
                    if let Some((_, progress)) = registered {
                        progress.store(next, AtomicOrdering::SeqCst);
                    }
                }
                Err(Error::Fenced(_)) => return applied,
                Err(other) => panic!("{other}"),
            }
        }
        applied
    }

    let old = store.producer_register(&ingest).await.unwrap();
    let registered = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let first = {
        let (store, ingest, lines, registered, progress) =
            (store.clone(), ingest.clone(), lines.clone(), registered.clone(), progress.clone());
        tokio::spawn(async move { run(&*store, &ingest, &lines, old, Some((&registered, &progress))).await })
    };
    // The second instance starts once the first is a fifth of the way in.
    let started = std::time::Instant::now();
    while progress.load(AtomicOrdering::SeqCst) < LINES / 5 {
        assert!(started.elapsed() < HANG, "the first instance made no progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let new = store.producer_register(&ingest).await.unwrap();
    registered.store(true, AtomicOrdering::SeqCst);
    assert_eq!(new.epoch, 2);
    let resumed_at = new.checkpoint.as_ref().map(|c| c["next"].as_u64().unwrap()).expect("a checkpoint");
    let second = run(&*store, &ingest, &lines, new, None).await;
    let first = tokio::time::timeout(HANG, first).await.expect("the first instance stopped").unwrap();

    assert!(
        first.len() as u64 >= LINES / 5 && first.len() as u64 <= resumed_at,
        "first {} lines, resumed at {resumed_at}",
        first.len()
    );
    assert_eq!(first, (0..resumed_at).collect::<Vec<_>>(), "the first instance's lines end where the checkpoint says");
    assert_eq!(second, (resumed_at..LINES).collect::<Vec<_>>());
    // The queue holds each line once.
    let mut seen = Vec::new();
    loop {
        let leased = f.lease(&lines, LEASE_BATCH_MAX, Some(60_000)).await;
        if leased.is_empty() {
            break;
        }
        seen.extend(leased.iter().map(|job| std::str::from_utf8(&job.payload).unwrap().parse::<u64>().unwrap()));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..LINES).collect::<Vec<_>>(), "every line once");
}
