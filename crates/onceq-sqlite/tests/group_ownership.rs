//! Invariant 10 under concurrency in the embedded store: while members join, lease, settle and
//! leave from many tasks at once, no two members ever hold live leases in one partition. The
//! ownership check and the lease are one writer transaction, so a hand-over cannot slip between
//! them.
//!
//! The proof does not rely on the tasks' view of time: triggers added to the data file record
//! every lease's start and end in commit order (SQLite runs them inside the transaction that
//! leases or settles), and the test maps each lease token to the member that received it. The
//! record is replayed afterwards, partition by partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq_core::group::{GroupName, JoinOptions};
use onceq_core::{Error, LeaseOptions, NewJob, Ordering, QueueConfigPatch, QueueName, Store, StoreExt};
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore, DATA_FILE_NAME};

const PARTITIONS: u32 = 8;
const WORKERS: u64 = 6;
const KEYS: u64 = 200;
const RUN: Duration = Duration::from_millis(1_500);

/// Who received each lease token.
type Tokens = Arc<Mutex<HashMap<[u8; 16], String>>>;

/// Records each lease's start (`began = 1`) and end (`began = 0`: acked, nacked, released,
/// failed, expired or deleted) in commit order.
const AUDIT: &str = "
    CREATE TABLE lease_audit (seq INTEGER PRIMARY KEY, partition INTEGER, token BLOB, began INTEGER NOT NULL);
    CREATE TRIGGER audit_lease AFTER UPDATE OF state ON jobs WHEN NEW.state = 2 AND OLD.state <> 2
    BEGIN INSERT INTO lease_audit (partition, token, began) VALUES (NEW.partition, NEW.lease_token, 1); END;
    CREATE TRIGGER audit_settle AFTER UPDATE OF state ON jobs WHEN OLD.state = 2 AND NEW.state <> 2
    BEGIN INSERT INTO lease_audit (partition, token, began) VALUES (OLD.partition, OLD.lease_token, 0); END;
    CREATE TRIGGER audit_delete AFTER DELETE ON jobs WHEN OLD.state = 2
    BEGIN INSERT INTO lease_audit (partition, token, began) VALUES (OLD.partition, OLD.lease_token, 0); END;
";

/// A small deterministic generator, so each task's choices differ without a shared source.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(dir).durability(Durability::Relaxed)).unwrap()
}

/// One member's life, over and over until `until`: join, lease and settle for a while, leave
/// (sometimes before settling what it holds, which leaves its partitions in hand-over).
async fn worker(store: SqliteStore, q: QueueName, g: GroupName, tokens: Tokens, seed: u64, until: Instant) -> u64 {
    let mut rng = Xorshift(seed);
    let mut leased = 0;
    tokio::time::sleep(Duration::from_millis(seed % 7 * 40)).await;
    while Instant::now() < until {
        let options = JoinOptions { name: Some(format!("worker-{seed}")), session_timeout_ms: Some(5_000) };
        let member = store.group_join(&q, &g, options).await.unwrap().member_id;
        let mut held = Vec::new();
        for _ in 0..5 + rng.below(40) {
            if Instant::now() >= until {
                break;
            }
            store.group_heartbeat(&q, &g, &member).await.unwrap();
            let options = LeaseOptions { max_jobs: 4, visibility_timeout_ms: Some(60_000), wait_ms: 20 };
            let jobs = store.group_lease(&q, &g, &member, options).await.unwrap();
            {
                let mut tokens = tokens.lock().unwrap();
                for job in &jobs {
                    tokens.insert(*job.lease_token.as_bytes(), member.to_string());
                }
            }
            leased += jobs.len() as u64;
            held.extend(jobs);
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
            // Settle some of what it holds, keep the rest for a while.
            let keep = rng.below(held.len() as u64 + 1) as usize;
            for job in held.drain(keep..) {
                store.ack(job.lease()).await.unwrap();
            }
        }
        let settle_first = rng.below(2) == 0;
        if settle_first {
            for job in held.drain(..) {
                store.ack(job.lease()).await.unwrap();
            }
        }
        store.group_leave(&q, &g, &member).await.unwrap();
        // After leaving, its leases are still its own to settle; its partitions wait for them.
        tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
        for job in held.drain(..) {
            store.ack(job.lease()).await.unwrap();
        }
    }
    leased
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_10_no_two_members_hold_live_leases_in_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (q, g) = (QueueName::new("owned").unwrap(), GroupName::new("g").unwrap());
    let store = open(dir.path());
    let patch =
        QueueConfigPatch { ordering: Some(Ordering::PerKey), partitions: Some(PARTITIONS), ..Default::default() };
    store.queue_upsert(&q, patch).await.unwrap();
    store.close().await;
    let audit = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    audit.execute_batch(AUDIT).unwrap();
    drop(audit);

    let store = open(dir.path());
    let until = Instant::now() + RUN;
    let producer = {
        let (store, q) = (store.clone(), q.clone());
        tokio::spawn(async move {
            let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
            while Instant::now() < until {
                let jobs =
                    (0..16).map(|i| NewJob::new(format!("{i}")).ordering_key(format!("key-{}", rng.below(KEYS))));
                store.job_enqueue(&q, jobs.collect()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
        })
    };
    let tokens: Tokens = Arc::default();
    let workers: Vec<_> = (1..=WORKERS)
        .map(|seed| {
            let (store, q, g, tokens) = (store.clone(), q.clone(), g.clone(), tokens.clone());
            tokio::spawn(worker(store, q, g, tokens, seed * 0x2545_f491_4f6c_dd1d, until))
        })
        .collect();
    producer.await.unwrap();
    let mut leased = 0;
    for w in workers {
        leased += w.await.unwrap();
    }
    assert!(store.group_get(&q, &g).await.unwrap().members.is_empty(), "every member left");
    assert!(matches!(
        store.group_heartbeat(&q, &g, &onceq_core::group::MemberId::random()).await,
        Err(Error::NotMember(_))
    ));
    store.close().await;

    let conn = rusqlite::Connection::open(dir.path().join(DATA_FILE_NAME)).unwrap();
    let mut stmt = conn.prepare("SELECT seq, partition, token, began FROM lease_audit ORDER BY seq").unwrap();
    let rows: Vec<(i64, u32, Vec<u8>, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let tokens = tokens.lock().unwrap();
    // Live leases per partition: token -> member.
    let mut live: BTreeMap<u32, HashMap<Vec<u8>, &String>> = BTreeMap::new();
    // The member that last leased in each partition, and how often that changed.
    let mut last: BTreeMap<u32, &String> = BTreeMap::new();
    let (mut begun, mut moves) = (0u64, 0u64);
    for (seq, partition, token, began) in &rows {
        let in_partition = live.entry(*partition).or_default();
        if *began {
            let key: [u8; 16] = token.as_slice().try_into().unwrap();
            let member = tokens.get(&key).unwrap_or_else(|| panic!("audit {seq}: a lease no member received"));
            if let Some(other) = in_partition.values().find(|m| **m != member) {
                panic!("audit {seq}: {member} leased in partition {partition} while {other} held a live lease there");
            }
            in_partition.insert(token.clone(), member);
            if last.insert(*partition, member).is_some_and(|before| before != member) {
                moves += 1;
            }
            begun += 1;
        } else {
            assert!(in_partition.remove(token).is_some(), "audit {seq}: a lease ended that never began");
        }
    }
    assert_eq!(begun, leased, "the audit saw every lease the members received");
    assert!(live.values().all(HashMap::is_empty), "every lease was settled");
    // The run must have exercised what it checks: many leases, and partitions that changed hands.
    assert!(leased >= 200, "only {leased} leases");
    assert!(moves >= 2 * u64::from(PARTITIONS), "partitions changed hands only {moves} times");
}
