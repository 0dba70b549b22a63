//! Commits on the embedded store beyond the conformance suite's `commits` area: a commit id and
//! a producer's epoch and checkpoint live in the data file, so a restart keeps replaying the
//! commit and fencing the old producer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use onceq_core::commit::{Commit, CommitEnqueue, CommitId, Fence, ProducerId};
use onceq_core::{Error, NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{SqliteOptions, SqliteStore};

#[tokio::test]
async fn commit_ids_and_producer_epochs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (QueueName::new("a").unwrap(), QueueName::new("b").unwrap());
    let ingest = ProducerId::new("ingest").unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    store.enqueue(&a, NewJob::new("in")).await.unwrap();
    let input = store.lease_one(&a).await.unwrap().unwrap();
    let stage = Commit {
        commit_id: Some(CommitId::new("stage:1").unwrap()),
        ack: vec![input.lease()],
        enqueue: vec![CommitEnqueue { queue: b.clone(), jobs: vec![NewJob::new("out")] }],
        ..Commit::default()
    };
    let first = store.commit(stage.clone()).await.unwrap();
    let epoch = store.producer_register(&ingest).await.unwrap().epoch;
    let checkpointed = Commit {
        producer: Some(Fence { producer: ingest.clone(), epoch }),
        enqueue: vec![CommitEnqueue { queue: b.clone(), jobs: vec![NewJob::new("line 1")] }],
        checkpoint: Some(serde_json::json!("offset-1")),
        ..Commit::default()
    };
    store.commit(checkpointed.clone()).await.unwrap();
    store.close().await;

    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let replayed = store.commit(stage).await.unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.enqueued, first.enqueued);
    let next = store.producer_register(&ingest).await.unwrap();
    assert_eq!((next.epoch, next.checkpoint), (epoch + 1, Some(serde_json::json!("offset-1"))));
    assert!(matches!(store.commit(checkpointed).await, Err(Error::Fenced(_))));
    assert_eq!(store.queue_get(&b).await.unwrap().stats.ready, 2);
}
