//! `kill -9` of one of two `onceq serve` processes sharing a PostgreSQL schema, mid-run, while
//! the other keeps serving (docs/design.md Invariants 1-4 across processes; issue 5's "kill -9 of one
//! server mid-run loses nothing acknowledged").
//!
//! Proves that:
//! - every job whose enqueue got a 2xx reply (through either server) is processed exactly once
//!   overall: it ends acked, with one successful ack, or — only for an ack sent to the killed
//!   server that got no reply — with that ack having committed (the job is gone, 404);
//! - a producer that loses its server mid-request and sends the same batch again (same dedup
//!   ids) through the other server creates no duplicate: each payload ends with one job id;
//! - nothing acked comes back: no job is leased again after a successful ack;
//! - no job is leased twice at once, across the kill (same checks as `pg_two_servers`);
//! - jobs leased through the killed server and never settled come back through the survivor,
//!   with a higher attempt, only after their (short) visibility timeout;
//! - the queue's stats end at zero, and a restarted server sees the same.
//!
//! How: servers A and B on one schema; 2 producers per server enqueue unique payloads with dedup
//! ids in batches of 100; 3 consumers per server lease batches of 100 with 2 s leases, pause a
//! little, and ack through their own server, recording every lease and ack. When half the jobs
//! are enqueued, a holder leases jobs through A and keeps them, then A is killed with SIGKILL.
//! A's consumers end there, as if they died with it (their leases are left to expire); A's
//! producers send their pending batch again through B and carry on there.
//!
//! N is `ONCEQ_PG_JOBS`; by default 100,000 in release builds and 20,000 in debug builds (see
//! `pg_two_servers.rs` for the full-size run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod pg_common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_client::Client;
use onceq_core::{Error, JobId, LeaseOptions, LeaseToken, NewJob, QueueConfigPatch, QueueName, QueueStats, Store};
use pg_common::{LeaseRecord, Outcome, Plan, Settle, SettleKind, WorkerPlan};

const QUEUE: &str = "survive";
/// Server 0 (A) is killed; server 1 (B) survives.
const KILLED: usize = 0;
const SURVIVOR: usize = 1;
const PRODUCERS_PER_SERVER: usize = 2;
const CONSUMERS_PER_SERVER: usize = 3;
const BATCH: usize = 100;
/// Short leases, so that what A's consumers held comes back soon.
const TIMEOUT_MS: u64 = 2_000;
/// Most the holder keeps through A at the kill.
const HELD_MAX: u32 = 50;

/// What a producer got: (id, job number, whether the reply said duplicate).
type Produced = Vec<(JobId, u64, bool)>;

/// Enqueues the batches `producer`, `producer + producers`, ... of jobs `0..jobs` through
/// `clients[first]`; when that is the killed server and it is gone, sends the batch again (same
/// dedup ids) through the survivor and stays there.
async fn produce(
    clients: Vec<Client>,
    first: usize,
    killed: Arc<AtomicBool>,
    enqueued: Arc<AtomicU64>,
    (producer, producers, jobs): (usize, usize, u64),
) -> Produced {
    let queue = QueueName::new(QUEUE).unwrap();
    let mut server = first;
    let mut out = Vec::new();
    let batches = jobs.div_ceil(BATCH as u64);
    for batch in (producer as u64..batches).step_by(producers) {
        let indexes: Vec<u64> = (batch * BATCH as u64..((batch + 1) * BATCH as u64).min(jobs)).collect();
        let mut resent = false;
        let entries = loop {
            let new_jobs =
                indexes.iter().map(|&i| NewJob::new(pg_common::payload(i)).dedup_id(format!("d{i}"))).collect();
            match clients[server].job_enqueue(&queue, new_jobs).await {
                Ok(entries) => break entries,
                Err(Error::Unavailable(e)) if server == KILLED && killed.load(Ordering::SeqCst) => {
                    eprintln!("producer {producer}: server A is gone ({e}); sending batch {batch} again through B");
                    server = SURVIVOR;
                    resent = true;
                }
                Err(e) => panic!("enqueue through server {server}: {e}"),
            }
        };
        assert_eq!(entries.len(), indexes.len(), "one result per job");
        for (entry, index) in entries.into_iter().zip(indexes) {
            assert!(!entry.duplicate || resent, "job {index} is a duplicate though its batch was sent once");
            out.push((entry.id, index, entry.duplicate));
        }
        enqueued.fetch_add(BATCH as u64, Ordering::SeqCst);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_two_servers_loses_nothing_acknowledged() {
    let jobs = pg_common::jobs_from_env() as u64;
    let schema = pg_common::Schema::fresh("kill").await;
    let mut servers = vec![pg_common::start_server(&schema).await, pg_common::start_server(&schema).await];
    let clients: Vec<Client> = servers.iter().map(pg_common::client).collect();
    let queue = QueueName::new(QUEUE).unwrap();
    let patch =
        QueueConfigPatch { max_attempts: Some(20), visibility_timeout_ms: Some(TIMEOUT_MS), ..Default::default() };
    clients[SURVIVOR].queue_upsert(&queue, patch).await.unwrap();

    let started = Instant::now();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let enqueued_count = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for server in [KILLED, SURVIVOR] {
        for k in 0..PRODUCERS_PER_SERVER {
            let who = (server * PRODUCERS_PER_SERVER + k, 2 * PRODUCERS_PER_SERVER, jobs);
            producers.push(tokio::spawn(produce(clients.clone(), server, killed.clone(), enqueued_count.clone(), who)));
        }
    }
    let mut consumers = Vec::new();
    for server in [KILLED, SURVIVOR] {
        for _ in 0..CONSUMERS_PER_SERVER {
            let plan = WorkerPlan {
                queue: queue.clone(),
                lease_via: (server, clients[server].clone()),
                settle_via: vec![(server, clients[server].clone())],
                timeout_ms: TIMEOUT_MS,
                batch: BATCH as u32,
                hold_ms: 20,
                first_lease: |_| Plan::Ack,
                stop: stop.clone(),
                acked: acked.clone(),
                killed: (server == KILLED).then(|| killed.clone()),
            };
            consumers.push(tokio::spawn(pg_common::work(plan)));
        }
    }

    // Mid-run: half the jobs enqueued (and some acked), a holder keeps leases through A, and A dies.
    let deadline = Instant::now() + Duration::from_secs(120);
    while enqueued_count.load(Ordering::SeqCst) < jobs / 2 {
        assert!(Instant::now() < deadline, "half the jobs were not enqueued in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let options = LeaseOptions { max_jobs: HELD_MAX, visibility_timeout_ms: Some(TIMEOUT_MS), wait_ms: 5_000 };
    let sent_ms = pg_common::now_ms();
    let held = clients[KILLED].job_lease(&queue, options).await.unwrap();
    let recv_ms = pg_common::now_ms();
    assert!(!held.is_empty(), "the holder got no job to hold through A");
    let held: Vec<LeaseRecord> = held
        .iter()
        .map(|job| LeaseRecord {
            id: job.id,
            index: pg_common::index_of(&job.payload),
            token: job.lease_token,
            attempt: job.attempt,
            server: KILLED,
            timeout_ms: TIMEOUT_MS,
            sent_ms,
            recv_ms,
            leased_expires_ms: job.lease_expires_at.as_millis(),
            extension: None,
            settle: None,
        })
        .collect();
    let acked_at_kill = acked.load(Ordering::SeqCst);
    killed.store(true, Ordering::SeqCst);
    servers[KILLED].kill().await;
    let dead_ms = pg_common::now_ms();
    let killed_after = started.elapsed();

    // Every producer finishes (A's through B), then B drains the queue.
    let mut produced: Vec<(JobId, u64, bool)> = Vec::new();
    for producer in producers {
        produced.extend(producer.await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(120 + jobs / 200);
    loop {
        let stats = clients[SURVIVOR].queue_get(&queue).await.unwrap().stats;
        if stats.ready + stats.scheduled + stats.leased == 0 {
            assert_eq!(stats, QueueStats::default(), "nothing is left, and nothing is dead");
            break;
        }
        assert!(Instant::now() < deadline, "the queue was not drained in time; stats {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained_after = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for consumer in consumers {
        records.extend(consumer.await.unwrap());
    }
    let held_tokens: BTreeMap<JobId, LeaseToken> = held.iter().map(|l| (l.id, l.token)).collect();
    let held_count = held.len();
    records.extend(held);

    // Each payload has one job id, even where a batch was sent twice.
    let mut by_index: BTreeMap<u64, JobId> = BTreeMap::new();
    let mut duplicates = 0;
    for &(id, index, duplicate) in &produced {
        duplicates += usize::from(duplicate);
        assert_eq!(by_index.insert(index, id), None, "job number {index} enqueued twice by the producers");
    }
    assert_eq!(by_index.len() as u64, jobs, "every job got a 2xx enqueue reply");
    let enqueued: BTreeMap<JobId, u64> = by_index.iter().map(|(&index, &id)| (id, index)).collect();
    assert_eq!(enqueued.len() as u64, jobs, "no id is shared by two payloads");

    let leases_total = records.len();
    let leases_through_killed = records.iter().filter(|r| r.server == KILLED).count();
    let history = pg_common::check_history(records);
    assert_eq!(
        history.keys().copied().collect::<BTreeSet<JobId>>(),
        enqueued.keys().copied().collect::<BTreeSet<JobId>>(),
        "the jobs leased are exactly the jobs enqueued"
    );

    // Exactly once overall: one successful ack, or an ack lost with A that committed.
    let mut acked_without_reply = Vec::new();
    let mut came_back = 0;
    for (id, leases) in &history {
        assert_eq!(leases[0].index, enqueued[id], "job {id} carries the payload it was enqueued with");
        let oks = leases.iter().filter(|l| l.acked_ok()).count();
        if oks == 0 {
            let last = leases.last().unwrap();
            let unknown_ack = Some(SettleKind::Ack) == last.settle.as_ref().map(|s| s.kind)
                && matches!(last.settle, Some(Settle { outcome: Outcome::Unknown, via: KILLED, .. }));
            assert!(unknown_ack, "job {id} was never acked (lost): {leases:#?}");
            acked_without_reply.push(*id);
        }
        for lease in leases {
            assert!(lease.server != KILLED || lease.sent_ms <= dead_ms, "job {id} leased through A after its death");
        }
        // Whatever A handed out and was not acked came back through B, after it expired
        // (`check_history` checked the times).
        came_back += leases.windows(2).filter(|pair| pair[0].server == KILLED && pair[1].server == SURVIVOR).count();
        if let Some(token) = held_tokens.get(id) {
            let held_at = leases.iter().position(|l| l.token == *token).unwrap();
            assert!(held_at + 1 < leases.len(), "job {id}, held through A at the kill, never came back: {leases:#?}");
            assert_eq!(leases[held_at + 1].server, SURVIVOR, "job {id} came back through B: {leases:#?}");
        }
    }
    // An ack that got no reply did commit: the job is gone.
    let api = servers[SURVIVOR].api();
    for id in &acked_without_reply {
        api.get(&format!("/v1/jobs/{id}")).await.err(404, "not_found");
    }
    assert_eq!(acked.load(Ordering::SeqCst) + acked_without_reply.len() as u64, jobs, "acks in all");

    // A restarted A sees the same empty queue, and serves.
    servers[KILLED].restart().await;
    let restarted = pg_common::client(&servers[KILLED]);
    assert_eq!(restarted.queue_get(&queue).await.unwrap().stats, QueueStats::default(), "stats through restarted A");
    let after = restarted.job_enqueue(&queue, vec![NewJob::new("\"after\"")]).await.unwrap();
    let leased = clients[SURVIVOR].job_lease(&queue, LeaseOptions::default()).await.unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![after[0].id]);
    assert_eq!(restarted.job_ack(&[leased[0].lease()]).await.unwrap(), vec![Ok(())]);
    assert_eq!(clients[SURVIVOR].queue_get(&queue).await.unwrap().stats, QueueStats::default());

    eprintln!(
        "pg_kill_one_server: {jobs} jobs; A killed after {killed_after:?} with {acked_at_kill} acked and {held_count} \
         held through it; drained after {drained_after:?}; {leases_total} deliveries ({leases_through_killed} \
         through A), {came_back} came back after A's lease expired, {} acks lost with A had committed, \
         {duplicates} duplicates absorbed by dedup ids on re-send",
        acked_without_reply.len()
    );
    drop(servers);
    drop(schema);
}
