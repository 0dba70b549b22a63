//! Commit atomicity across `kill -9` (Invariant 12), end to end through `onceq serve`: workers
//! turn each input job of queue `a` into one job of `b` and one of `c`, acking the input in the
//! same commit (`POST /v1/commits`, named after the lease), while the server is killed with
//! SIGKILL at a random moment and restarted on the same data directory. After each restart,
//! every input is either still there with no output of it, or gone with exactly one output in
//! `b` and exactly one in `c`: no commit is ever found half applied, and none applied twice.
//!
//! `ONCEQ_COMMIT_CRASH_CYCLES` sets the number of cycles (default 4); odd cycles run with
//! `--durability relaxed`, even ones with `fsync`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::Server;
use onceq_client::Client;
use onceq_core::commit::{Commit, CommitEnqueue, CommitId};
use onceq_core::{Error, JobId, LeaseOptions, NewJob, QueueName, Store};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const INPUTS_PER_CYCLE: usize = 300;
const WORKERS: usize = 3;

fn q(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

fn client_of(server: &Server) -> Arc<Client> {
    Arc::new(Client::builder(server.url()).timeout(Duration::from_secs(5)).build().unwrap())
}

/// Leases from `a` and commits each input's outputs with its ack until `stop`, ignoring errors
/// (the server dies under it).
async fn work(client: Arc<Client>, mut stop: watch::Receiver<bool>) {
    let options = LeaseOptions { max_jobs: 10, visibility_timeout_ms: Some(1_000), wait_ms: 100 };
    let a = q("a");
    while !*stop.borrow() {
        let leased = tokio::select! {
            leased = client.job_lease(&a, options) => leased,
            _ = stop.changed() => return,
        };
        let Ok(leased) = leased else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        for job in leased {
            let input = String::from_utf8(job.payload.clone()).unwrap();
            let commit = Commit {
                commit_id: Some(CommitId::new(format!("lease:{}:{}", job.id, job.lease_token)).unwrap()),
                ack: vec![job.lease()],
                enqueue: vec![
                    CommitEnqueue { queue: q("b"), jobs: vec![NewJob::new(input.clone())] },
                    CommitEnqueue { queue: q("c"), jobs: vec![NewJob::new(input)] },
                ],
                ..Commit::default()
            };
            let _ = client.commit(commit).await;
        }
    }
}

/// Every payload in `queue` (leased for long, so each is read once), by count.
async fn drain(client: &Client, queue: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    let options = LeaseOptions { max_jobs: 1000, visibility_timeout_ms: Some(600_000), wait_ms: 0 };
    loop {
        let leased = client.job_lease(&q(queue), options).await.unwrap();
        if leased.is_empty() {
            return seen;
        }
        for job in leased {
            *seen.entry(String::from_utf8(job.payload).unwrap()).or_insert(0) += 1;
            client.job_ack(&[onceq_core::LeaseRef { id: job.id, lease_token: job.lease_token }]).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_commit_is_half_applied_across_kill_9() {
    let cycles: usize = std::env::var("ONCEQ_COMMIT_CRASH_CYCLES").map_or(4, |v| v.parse().expect("a count"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
    let mut server = Server::start().await;
    let mut totals = (0usize, 0usize);
    for cycle in 0..cycles {
        let client = client_of(&server);
        // The inputs of this cycle, by id.
        let jobs: Vec<NewJob> = (0..INPUTS_PER_CYCLE).map(|i| NewJob::new(format!("\"in-{cycle}-{i}\""))).collect();
        let enqueued = client.job_enqueue(&q("a"), jobs).await.unwrap();
        let inputs: Vec<(JobId, String)> =
            enqueued.iter().enumerate().map(|(i, e)| (e.id, format!("\"in-{cycle}-{i}\""))).collect();

        let (stop_tx, stop_rx) = watch::channel(false);
        let workers: Vec<_> = (0..WORKERS).map(|_| tokio::spawn(work(client.clone(), stop_rx.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
        server.kill().await;
        let _ = stop_tx.send(true);
        for worker in workers {
            worker.await.unwrap();
        }
        let relaxed = cycle % 2 == 1;
        let durability = if relaxed { "relaxed" } else { "fsync" };
        server.restart_with(&["--listen", "127.0.0.1:0", "--durability", durability]).await;
        let client = client_of(&server);

        let (b, c) = (drain(&client, "b").await, drain(&client, "c").await);
        let (mut consumed, mut pending) = (0, 0);
        for (id, input) in &inputs {
            let (in_b, in_c) = (b.get(input).copied().unwrap_or(0), c.get(input).copied().unwrap_or(0));
            match client.job_get(*id).await {
                Ok(_) => {
                    assert_eq!((in_b, in_c), (0, 0), "cycle {cycle}: input {input} is still there, yet has outputs");
                    pending += 1;
                }
                Err(Error::JobNotFound(_)) => {
                    assert_eq!(
                        (in_b, in_c),
                        (1, 1),
                        "cycle {cycle}: input {input} was acked; its outputs: b {in_b}, c {in_c}"
                    );
                    consumed += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(b.values().sum::<usize>(), consumed, "cycle {cycle}: outputs in b of no acked input");
        assert_eq!(c.values().sum::<usize>(), consumed, "cycle {cycle}: outputs in c of no acked input");
        eprintln!("cycle {cycle} ({durability}): {consumed} inputs committed, {pending} not");
        totals.0 += consumed;
        totals.1 += pending;
        // The rest is cleared for the next cycle (their leases from before the kill may be live).
        let purge = client.queue_delete(&q("a")).await;
        assert!(purge.is_ok(), "{purge:?}");
    }
    // The kills must have landed while commits flowed: some committed, and (in some cycle) some not.
    assert!(totals.0 > 0 && totals.1 > 0, "committed {}, pending {}", totals.0, totals.1);
}
