//! Proves that a consumer group lives in the database, shared by every server on the schema:
//! with two stores (two pools, as two servers would have) on one schema, members joined through
//! both form one group; a member joined through one store that stops heartbeating is removed,
//! and the other store's member takes its partition once its lease there expires, not before;
//! and under a hammer (members on both stores leasing and acking while members leave and join
//! again) no two members ever hold live leases in one partition, every job runs once, and the
//! jobs of each key run in enqueue order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering as Atomic};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::group::{GroupName, JoinOptions, MemberId};
use onceq_core::{
    Error, JobId, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, QueueStats, Store, StoreExt,
};
use onceq_postgres::PgStore;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

async fn two_stores() -> (PgStore, PgStore, common::SchemaGuard) {
    let (a, guard) = common::fresh_store(None).await;
    let b = common::connect(common::options(guard.schema(), None)).await;
    (a, b, guard)
}

async fn ordered(store: &PgStore, name: &str, partitions: u32) -> QueueName {
    let q = QueueName::new(name).unwrap();
    let patch = QueueConfigPatch {
        ordering: Some(Ordering::PerKey),
        partitions: Some(partitions),
        visibility_timeout_ms: Some(60_000),
        ..QueueConfigPatch::default()
    };
    store.queue_upsert(&q, patch).await.unwrap();
    q
}

fn session(ms: u64) -> JoinOptions {
    JoinOptions { name: Some("hammer".into()), session_timeout_ms: Some(ms) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joined_through_two_stores_form_one_group() {
    let (a, b, _guard) = two_stores().await;
    let q = ordered(&a, "shared-group", 6).await;
    let g = GroupName::new("g").unwrap();
    let first = a.group_join(&q, &g, session(60_000)).await.unwrap();
    let second = b.group_join(&q, &g, session(60_000)).await.unwrap();
    let third = b.group_join(&q, &g, session(60_000)).await.unwrap();
    let mut owned = BTreeMap::new();
    for (store, m) in [(&a, &first), (&b, &second), (&a, &third)] {
        let view = store.group_heartbeat(&q, &g, &m.member_id).await.unwrap();
        assert_eq!(view.partitions.len(), 2, "six partitions over three members: {view:?}");
        assert!(view.revoking.is_empty());
        for p in view.partitions {
            assert_eq!(owned.insert(p, m.member_id.clone()), None, "partition {p} has two owners");
        }
    }
    assert_eq!(owned.keys().copied().collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
    for store in [&a, &b] {
        let info = store.group_get(&q, &g).await.unwrap();
        assert_eq!(info.members.len(), 3);
        let owners: BTreeMap<u32, MemberId> =
            info.partitions.iter().map(|p| (p.partition, p.owner.clone().unwrap())).collect();
        assert_eq!(owners, owned, "both stores see the same owners");
        assert_eq!(store.group_list(&q).await.unwrap().len(), 1);
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_member_of_one_store_hands_its_partition_to_the_other_once_its_lease_expires() {
    let (a, b, _guard) = two_stores().await;
    let q = ordered(&a, "expiring", 2).await;
    let g = GroupName::new("g").unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        a.enqueue(&q, NewJob::new(key.clone()).ordering_key(key)).await.unwrap();
    }
    let gone = a.group_join(&q, &g, session(1_000)).await.unwrap();
    let stays = b.group_join(&q, &g, session(60_000)).await.unwrap();
    let gone_view = a.group_heartbeat(&q, &g, &gone.member_id).await.unwrap();
    assert_eq!(gone_view.partitions.len(), 1);
    let theirs = gone_view.partitions[0];
    let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: Some(2_500), wait_ms: 0 };
    let leased = a.group_lease(&q, &g, &gone.member_id, options).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].partition, Some(theirs));

    // Its session ends after 1 s; its lease lives 2.5 s.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let view = b.group_heartbeat(&q, &g, &stays.member_id).await.unwrap();
    assert_eq!(view.partitions, vec![1 - theirs], "the partition moved under a live lease");
    assert!(matches!(a.group_heartbeat(&q, &g, &gone.member_id).await, Err(Error::NotMember(_))));
    assert!(matches!(a.group_lease(&q, &g, &gone.member_id, options).await, Err(Error::NotMember(_))));
    let info = a.group_get(&q, &g).await.unwrap();
    assert_eq!(info.members.len(), 1);
    assert_eq!(info.partitions[theirs as usize].moving_to.as_ref(), Some(&stays.member_id));

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let view = b.group_heartbeat(&q, &g, &stays.member_id).await.unwrap();
    assert_eq!(view.partitions, vec![0, 1]);
    // The job whose lease expired is leased again, by the member that took the partition over.
    let options = LeaseOptions { max_jobs: 100, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
    let again = b.group_lease(&q, &g, &stays.member_id, options).await.unwrap();
    assert!(again.iter().any(|j| j.id == leased[0].id && j.attempt == 2), "the expired lease's job came back");
    a.close().await;
    b.close().await;
}

/// Keys of the hammered queue, and jobs per key.
const KEYS: usize = 32;
const JOBS_PER_KEY: usize = 20;
const PARTITIONS: u32 = 8;
/// Members per store (each leaves and joins again now and then).
const MEMBERS_PER_STORE: usize = 3;
/// How long the hammer may take before jobs count as stranded.
const RUN_MAX: Duration = Duration::from_secs(90);

/// One lease as a member saw it: from when the lease returned to when the member asked to ack
/// it, a part of the time the lease was live (so overlaps seen here are real).
#[derive(Debug, Clone)]
struct Held {
    partition: u32,
    member: MemberId,
    job: JobId,
    from: Instant,
    until: Instant,
}

#[derive(Default)]
struct Seen {
    held: Vec<Held>,
    /// Per key, the sequence number of the next job expected to be leased.
    next: BTreeMap<String, usize>,
    acked: BTreeSet<JobId>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_on_two_stores_never_hold_one_partition_at_once_while_members_come_and_go() {
    let (a, b, _guard) = two_stores().await;
    let q = ordered(&a, "hammered-group", PARTITIONS).await;
    let g = GroupName::new("g").unwrap();
    // Jobs of each key in sequence; rounds interleave the keys.
    for seq in 0..JOBS_PER_KEY {
        let jobs = (0..KEYS).map(|k| NewJob::new(format!("{k} {seq}")).ordering_key(format!("key-{k}"))).collect();
        a.job_enqueue(&q, jobs).await.unwrap();
    }
    let total = KEYS * JOBS_PER_KEY;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    for (s, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for w in 0..MEMBERS_PER_STORE {
            let (store, q, g, seen, failed) = (store.clone(), q.clone(), g.clone(), seen.clone(), failed.clone());
            tasks.spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64((s * 10 + w) as u64);
                let mut me = store.group_join(&q, &g, session(10_000)).await.unwrap().member_id;
                loop {
                    if failed.load(Atomic::Acquire) || seen.lock().unwrap().acked.len() == total {
                        store.group_leave(&q, &g, &me).await.unwrap();
                        return;
                    }
                    let options = LeaseOptions { max_jobs: 4, visibility_timeout_ms: None, wait_ms: 50 };
                    let leased = store.group_lease(&q, &g, &me, options).await.unwrap();
                    let from = Instant::now();
                    {
                        let mut seen = seen.lock().unwrap();
                        for job in &leased {
                            let payload = String::from_utf8(job.payload.to_vec()).unwrap();
                            let (key, seq) = payload.split_once(' ').unwrap();
                            let seq: usize = seq.parse().unwrap();
                            let next = seen.next.entry(key.to_owned()).or_default();
                            if seq != *next {
                                failed.store(true, Atomic::Release);
                                panic!("key {key}: job {seq} leased when {next} was next");
                            }
                            *next += 1;
                        }
                    }
                    // Now and then leave, sometimes while still holding the batch: the partitions
                    // then move only once the batch is acked.
                    let leave = rng.gen_bool(0.15);
                    let early = leave && rng.gen_bool(0.5);
                    if early {
                        store.group_leave(&q, &g, &me).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(2..15))).await;
                    let until = Instant::now();
                    {
                        let mut seen = seen.lock().unwrap();
                        for job in &leased {
                            let held = Held {
                                partition: job.partition.unwrap(),
                                member: me.clone(),
                                job: job.id,
                                from,
                                until,
                            };
                            seen.held.push(held);
                        }
                    }
                    let leases: Vec<_> = leased.iter().map(|j| j.lease()).collect();
                    if !leases.is_empty() {
                        let acked = store.job_ack(&leases).await.unwrap();
                        assert!(acked.iter().all(Result::is_ok), "an ack of a live lease failed: {acked:?}");
                        seen.lock().unwrap().acked.extend(leased.iter().map(|j| j.id));
                    }
                    if leave {
                        if !early {
                            store.group_leave(&q, &g, &me).await.unwrap();
                        }
                        me = store.group_join(&q, &g, session(10_000)).await.unwrap().member_id;
                    } else {
                        store.group_heartbeat(&q, &g, &me).await.unwrap();
                    }
                }
            });
        }
    }
    let run = async {
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap();
        }
    };
    if tokio::time::timeout(RUN_MAX, run).await.is_err() {
        let stats = a.queue_get(&q).await.unwrap().stats;
        panic!(
            "the run did not end in {RUN_MAX:?}: {} of {total} acked; stats {stats:?}",
            seen.lock().unwrap().acked.len()
        );
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.acked.len(), total, "every job ran once");
    assert_eq!(seen.held.len(), total, "no job was leased twice");
    assert!(seen.next.values().all(|&n| n == JOBS_PER_KEY));
    let mut by_partition: BTreeMap<u32, Vec<&Held>> = BTreeMap::new();
    for held in &seen.held {
        by_partition.entry(held.partition).or_default().push(held);
    }
    let members: BTreeSet<&MemberId> = seen.held.iter().map(|h| &h.member).collect();
    assert!(members.len() > 2 * MEMBERS_PER_STORE, "members came and went: {} leased", members.len());
    for (partition, held) in &by_partition {
        for (i, x) in held.iter().enumerate() {
            for y in &held[i + 1..] {
                let overlap = x.from < y.until && y.from < x.until;
                assert!(
                    !(overlap && x.member != y.member),
                    "partition {partition}: {} (job {}) and {} (job {}) held live leases at once",
                    x.member,
                    x.job,
                    y.member,
                    y.job
                );
            }
        }
    }
    assert_eq!(a.queue_get(&q).await.unwrap().stats, QueueStats::default());
    assert!(a.group_get(&q, &g).await.unwrap().members.is_empty());
    a.close().await;
    b.close().await;
}
