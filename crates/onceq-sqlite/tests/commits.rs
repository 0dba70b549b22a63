//! Commits on the embedded store (`onceq_core::commit`, docs/design.md "Next: commits"): a
//! stage's ack of its input and enqueue of its outputs apply together or not at all; a stale
//! lease, a failed enqueue check or a fenced producer changes nothing; a commit id replays its
//! first outcome (across a restart) and refuses other content; a producer's checkpoint comes
//! back with its next registration.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use onceq_core::commit::{Commit, CommitEnqueue, CommitId, Fence, ProducerId};
use onceq_core::{
    DeliveryMode, Error, JobState, LeaseRef, LeasedJob, NewJob, Ordering, QueueConfigPatch, QueueName, Release, Store,
    StoreExt,
};
use onceq_sqlite::{SqliteOptions, SqliteStore};

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

async fn leased(store: &SqliteStore, queue: &str, payload: &str) -> LeasedJob {
    store.enqueue(&q(queue), NewJob::new(payload)).await.unwrap();
    store.lease_one(&q(queue)).await.unwrap().expect("a job to lease")
}

/// Ack `input`, enqueue one job into `b` and one into `c`.
fn stage(input: &LeasedJob, id: Option<&str>) -> Commit {
    Commit {
        commit_id: id.map(|i| CommitId::new(i).unwrap()),
        ack: vec![input.lease()],
        enqueue: vec![
            CommitEnqueue { queue: q("b"), jobs: vec![NewJob::new("b-out")] },
            CommitEnqueue { queue: q("c"), jobs: vec![NewJob::new("c-out")] },
        ],
        ..Commit::default()
    }
}

async fn ready(store: &SqliteStore, queue: &str) -> u64 {
    match store.queue_get(&q(queue)).await {
        Ok(info) => info.stats.ready,
        Err(Error::QueueNotFound(_)) => 0,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_stage_acks_its_input_and_enqueues_its_outputs_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let input = leased(&store, "a", "in").await;
    let outcome = store.commit(stage(&input, None)).await.unwrap();
    assert!(!outcome.replayed);
    assert_eq!(
        outcome.enqueued.iter().map(|e| (e.queue.as_str(), e.jobs.len())).collect::<Vec<_>>(),
        [("b", 1), ("c", 1)]
    );
    assert!(matches!(store.job_get(input.id).await, Err(Error::JobNotFound(_))), "the input is acked");
    for e in &outcome.enqueued {
        let job = store.job_get(e.jobs[0].id).await.unwrap();
        assert_eq!((job.state, job.queue.as_str()), (JobState::Ready, e.queue.as_str()));
    }
}

#[tokio::test]
async fn a_commit_with_a_stale_lease_or_a_refused_enqueue_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let first = leased(&store, "a", "one").await;
    let second = leased(&store, "a", "two").await;
    store.ack(second.lease()).await.unwrap();
    let mut commit = stage(&first, None);
    commit.ack.push(second.lease());
    commit.release.push(Release { id: first.id, lease_token: second.lease_token, delay_ms: None });
    // (The same job settled twice is refused before anything is looked at.)
    assert!(matches!(store.commit(commit.clone()).await, Err(Error::InvalidRequest(_))));
    commit.release.clear();
    match store.commit(commit).await {
        Err(Error::LeasesLost(jobs)) => assert_eq!(jobs, vec![second.id]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.job_get(first.id).await.unwrap().state, JobState::Leased, "the live lease was not acked");
    assert_eq!((ready(&store, "b").await, ready(&store, "c").await), (0, 0), "nothing was enqueued");

    // An enqueue refused by its queue (effectively_once wants dedup ids) after the leases
    // checked live: still nothing applies.
    let patch = QueueConfigPatch { delivery: Some(DeliveryMode::EffectivelyOnce), ..QueueConfigPatch::default() };
    store.queue_upsert(&q("c"), patch).await.unwrap();
    assert!(matches!(store.commit(stage(&first, None)).await, Err(Error::InvalidRequest(_))));
    assert_eq!(store.job_get(first.id).await.unwrap().state, JobState::Leased);
    assert_eq!(ready(&store, "b").await, 0);
}

#[tokio::test]
async fn a_commit_id_replays_its_first_outcome_even_after_a_restart_and_refuses_other_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let input = leased(&store, "a", "in").await;
    let first = store.commit(stage(&input, Some("stage-1:7"))).await.unwrap();
    // The reply was lost; the retry finds its lease gone, yet gets the first outcome.
    let again = store.commit(stage(&input, Some("stage-1:7"))).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.enqueued, first.enqueued);
    assert_eq!((ready(&store, "b").await, ready(&store, "c").await), (1, 1), "nothing applied twice");
    store.close().await;

    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let after_restart = store.commit(stage(&input, Some("stage-1:7"))).await.unwrap();
    assert!(after_restart.replayed);
    assert_eq!(after_restart.enqueued, first.enqueued);
    let mut other = stage(&input, Some("stage-1:7"));
    other.enqueue[0].jobs[0] = NewJob::new("different");
    assert!(matches!(store.commit(other).await, Err(Error::Conflict(_))));
    assert_eq!((ready(&store, "b").await, ready(&store, "c").await), (1, 1));
}

#[tokio::test]
async fn a_newer_registration_fences_the_older_producer_and_returns_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let ingest = ProducerId::new("ingest:orders").unwrap();
    let old = store.producer_register(&ingest).await.unwrap();
    assert_eq!((old.epoch, old.checkpoint.clone()), (1, None));
    let produce = |epoch: u64, offset: u64| Commit {
        producer: Some(Fence { producer: ingest.clone(), epoch }),
        enqueue: vec![CommitEnqueue { queue: q("orders"), jobs: vec![NewJob::new(format!("line {offset}"))] }],
        checkpoint: Some(serde_json::json!({ "offset": offset })),
        ..Commit::default()
    };
    store.commit(produce(1, 10)).await.unwrap();

    let new = store.producer_register(&ingest).await.unwrap();
    assert_eq!((new.epoch, new.checkpoint), (2, Some(serde_json::json!({ "offset": 10 }))));
    // The old instance, still running, is refused from now on and changes nothing.
    assert!(matches!(store.commit(produce(1, 11)).await, Err(Error::Fenced(_))));
    assert!(matches!(store.commit(produce(3, 11)).await, Err(Error::InvalidRequest(_))), "epoch 3 was never issued");
    store.commit(produce(2, 11)).await.unwrap();
    assert_eq!(ready(&store, "orders").await, 2);
    let unknown =
        Commit { producer: Some(Fence { producer: ProducerId::new("nobody").unwrap(), epoch: 1 }), ..produce(1, 12) };
    assert!(matches!(store.commit(unknown).await, Err(Error::InvalidRequest(_))));
    assert_eq!(store.producer_register(&ingest).await.unwrap().checkpoint, Some(serde_json::json!({ "offset": 11 })));
}

#[tokio::test]
async fn a_key_moves_on_and_takes_the_next_job_of_its_key_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let patch = QueueConfigPatch { ordering: Some(Ordering::PerKey), ..QueueConfigPatch::default() };
    store.queue_upsert(&q("account"), patch).await.unwrap();
    store.enqueue(&q("account"), NewJob::new("opened").ordering_key("acct-1")).await.unwrap();
    let head = store.lease_one(&q("account")).await.unwrap().unwrap();
    // The head's handler emits the key's next event with its ack.
    let commit = Commit {
        ack: vec![LeaseRef { id: head.id, lease_token: head.lease_token }],
        enqueue: vec![CommitEnqueue {
            queue: q("account"),
            jobs: vec![NewJob::new("credited").ordering_key("acct-1")],
        }],
        ..Commit::default()
    };
    let outcome = store.commit(commit).await.unwrap();
    let next = store.lease_one(&q("account")).await.unwrap().expect("the key's next job is its head now");
    assert_eq!(next.id, outcome.enqueued[0].jobs[0].id);
}
