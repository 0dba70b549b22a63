//! Commits racing on PostgreSQL, where several servers and workers share one database:
//! - many commits with one `commit_id` at once: exactly one applies, every other one replays
//!   its outcome (the id's row is claimed first; the others wait on its unique key);
//! - a producer registering again while its old instance commits in a loop: every commit of the
//!   old epoch that started after the registration returned is fenced, and the queue holds
//!   exactly the jobs of the commits that succeeded (none half-applied).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use onceq_core::commit::{Commit, CommitEnqueue, CommitId, Fence, ProducerId};
use onceq_core::{Error, NewJob, QueueName, Store};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_commits_with_one_id_apply_once() {
    let (store, _guard) = common::fresh_store(None).await;
    let store = Arc::new(store);
    let q = QueueName::new("out").unwrap();
    let commit = Commit {
        commit_id: Some(CommitId::new("stage:42").unwrap()),
        enqueue: vec![CommitEnqueue { queue: q.clone(), jobs: vec![NewJob::new("\"b\""), NewJob::new("\"c\"")] }],
        ..Commit::default()
    };
    let racers = 8;
    let barrier = Arc::new(Barrier::new(racers));
    let mut tasks = Vec::new();
    for _ in 0..racers {
        let (store, commit, barrier) = (store.clone(), commit.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.commit(commit).await.unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1, "exactly one applied: {outcomes:?}");
    assert!(outcomes.iter().all(|o| o.enqueued == outcomes[0].enqueued), "all saw the one outcome");
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registration_fences_the_old_instance_from_the_moment_it_returns() {
    let (store, _guard) = common::fresh_store(None).await;
    let store = Arc::new(store);
    let q = QueueName::new("ingested").unwrap();
    let producer = ProducerId::new("ingest").unwrap();
    let old = store.producer_register(&producer).await.unwrap();
    let registered_at: Arc<std::sync::Mutex<Option<std::time::Instant>>> = Arc::default();

    // The old instance commits line after line until it is fenced.
    let writers = 3;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, q, producer, registered_at) = (store.clone(), q.clone(), producer.clone(), registered_at.clone());
        tasks.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            for line in 0u64.. {
                let started = std::time::Instant::now();
                let commit = Commit {
                    producer: Some(Fence { producer: producer.clone(), epoch: old.epoch }),
                    enqueue: vec![CommitEnqueue {
                        queue: q.clone(),
                        jobs: vec![NewJob::new(format!("\"{w}-{line}\""))],
                    }],
                    checkpoint: Some(serde_json::json!({ "writer": w, "line": line })),
                    ..Commit::default()
                };
                match store.commit(commit).await {
                    Ok(outcome) => {
                        let fenced_before = registered_at.lock().unwrap().is_some_and(|at| at < started);
                        assert!(!fenced_before, "a commit of the old epoch started after the registration applied");
                        applied.push(outcome.enqueued[0].jobs[0].id);
                    }
                    Err(Error::Fenced(_)) => return applied,
                    Err(other) => panic!("{other}"),
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let new = store.producer_register(&producer).await.unwrap();
    *registered_at.lock().unwrap() = Some(std::time::Instant::now());
    assert_eq!(new.epoch, old.epoch + 1);
    let mut applied = Vec::new();
    for task in tasks {
        applied.extend(task.await.unwrap());
    }
    assert!(!applied.is_empty(), "the old instance committed before it was fenced");
    // Every job in the queue is one a commit reported applied, and the reverse.
    let stats = store.queue_get(&q).await.unwrap().stats;
    assert_eq!(stats.ready as usize, applied.len());
    for id in &applied {
        store.job_get(*id).await.unwrap();
    }
    // The checkpoint the new instance got is one of those commits' (the last to apply).
    let checkpoint = new.checkpoint.expect("the old instance saved checkpoints");
    assert!(checkpoint.get("line").is_some(), "{checkpoint}");
}
