//! What the PostgreSQL tests of `onceq serve` (`tests/pg_*.rs`) share: the database to use and a
//! schema per test (dropped at the end), servers started on it, a worker loop that records every
//! lease it got and every settle it sent, and the check of such a record against docs/design.md's
//! invariants (one live lease, fencing, no resurrection).
//!
//! Times are wall-clock milliseconds since the Unix epoch, read on this machine. PostgreSQL runs
//! on the same machine, so its `now()` (which judges every lease, Invariant 7) reads the same
//! clock: a lease handed out between our sending the request (`sent_ms`) and reading the reply
//! (`recv_ms`) has `lease_expires_at` between `sent_ms + timeout` and `recv_ms + timeout`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use onceq_client::Client;
use onceq_core::{Error, Extend, JobId, LeaseOptions, LeaseRef, LeaseToken, Nack, QueueName, Store};
use rand::Rng;
use sqlx::Connection;

use crate::common::Server;

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::postgres::{database_url, how_to_get_postgres, DEFAULT_URL};

/// Jobs per run when `ONCEQ_PG_JOBS` does not say: issue 5's 100,000 in release builds, fewer
/// in debug builds (CI), where the servers are several times slower.
pub const JOBS_DEFAULT: usize = if cfg!(debug_assertions) { 20_000 } else { 100_000 };

/// Whether the tests use their default, local PostgreSQL (the one `pg_ctlcluster` controls).
pub fn database_is_local_default() -> bool {
    std::env::var("ONCEQ_TEST_DATABASE_URL").is_err()
}

/// How many jobs a run moves: `ONCEQ_PG_JOBS`, or [`JOBS_DEFAULT`].
pub fn jobs_from_env() -> usize {
    match std::env::var("ONCEQ_PG_JOBS") {
        Ok(text) => text.trim().parse().unwrap_or_else(|e| panic!("ONCEQ_PG_JOBS={text:?} is not a count: {e}")),
        Err(_) => JOBS_DEFAULT,
    }
}

/// A schema of its own for one test; dropped (with everything in it) when this is dropped.
pub struct Schema {
    /// Its name.
    pub name: String,
}

impl Schema {
    /// A fresh schema name, after checking that PostgreSQL answers (failing the test with
    /// instructions when it does not). The servers create the schema.
    pub async fn fresh(test: &str) -> Schema {
        let url = database_url();
        match sqlx::PgConnection::connect(&url).await {
            Ok(conn) => {
                let _ = conn.close().await;
            }
            Err(e) => panic!("cannot connect to PostgreSQL: {e}\n{}", how_to_get_postgres()),
        }
        let name = format!("onceq_{test}_{}_{:08x}", std::process::id(), rand::random::<u32>());
        Schema { name }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        onceq_testkit::postgres::drop_schemas(std::slice::from_ref(&self.name));
    }
}

/// `onceq serve --store <database> --pg-schema <schema> --listen 127.0.0.1:0`.
pub async fn start_server(schema: &Schema) -> Server {
    let url = database_url();
    Server::start_with(&["--store", &url, "--pg-schema", &schema.name, "--listen", "127.0.0.1:0"], None).await
}

/// The Rust client of `server`.
pub fn client(server: &Server) -> Client {
    Client::builder(server.url()).timeout(Duration::from_secs(60)).build().expect("client")
}

/// Wall-clock milliseconds since the Unix epoch (rounded down, as the store rounds `now()`).
pub fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("a clock after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit")
}

/// The payload of job number `index`: a JSON string.
pub fn payload(index: u64) -> String {
    format!("\"j{index}\"")
}

/// The job number a payload of [`payload`] carries.
#[track_caller]
pub fn index_of(payload: &[u8]) -> u64 {
    let text = std::str::from_utf8(payload).expect("UTF-8 payload");
    text.strip_prefix("\"j")
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("a payload no producer sent: {text:?}"))
}

/// How a settle call turned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx for this item: it took effect.
    Ok,
    /// Refused for this item, with the error code (e.g. `lease_lost`): it changed nothing.
    Refused(String),
    /// No reply (the server died): it may or may not have taken effect.
    Unknown,
}

/// Which settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleKind {
    /// Done.
    Ack,
    /// Retry (with no delay).
    Nack,
}

/// A settle sent for one lease.
#[derive(Debug, Clone)]
pub struct Settle {
    /// Ack or nack.
    pub kind: SettleKind,
    /// Which server it went through.
    pub via: usize,
    /// When the request was sent.
    pub sent_ms: i64,
    /// What came of it.
    pub outcome: Outcome,
}

/// An extend sent for one lease (to make it expire soon).
#[derive(Debug, Clone)]
pub struct Extension {
    /// The new visibility timeout.
    pub timeout_ms: u64,
    /// When the request was sent and its reply read.
    pub sent_ms: i64,
    /// When its reply was read.
    pub recv_ms: i64,
    /// The new expiry the server reported.
    pub expires_ms: i64,
}

/// One lease a consumer got, and what it did with it.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    /// The job.
    pub id: JobId,
    /// The job number in its payload.
    pub index: u64,
    /// The lease token.
    pub token: LeaseToken,
    /// The attempt the server reported.
    pub attempt: u32,
    /// Which server handed it out.
    pub server: usize,
    /// The visibility timeout asked for.
    pub timeout_ms: u64,
    /// When the lease request was sent.
    pub sent_ms: i64,
    /// When its reply was read.
    pub recv_ms: i64,
    /// `lease_expires_at` of the reply.
    pub leased_expires_ms: i64,
    /// An extend, if one was sent (and succeeded: a failed one fails the test).
    pub extension: Option<Extension>,
    /// The settle sent, if any (`None`: the lease was left to expire).
    pub settle: Option<Settle>,
}

impl LeaseRecord {
    /// When the lease expires unless settled: the latest expiry the server reported.
    pub fn expires_ms(&self) -> i64 {
        self.extension.as_ref().map_or(self.leased_expires_ms, |e| e.expires_ms)
    }

    /// Whether an ack of it got a 2xx reply.
    pub fn acked_ok(&self) -> bool {
        matches!(&self.settle, Some(Settle { kind: SettleKind::Ack, outcome: Outcome::Ok, .. }))
    }

    /// The earliest moment the lease can have ended: when its successful settle was sent, or
    /// else (left alone, refused, or no reply) its expiry.
    pub fn ended_no_earlier_than(&self) -> i64 {
        match &self.settle {
            Some(Settle { outcome: Outcome::Ok, sent_ms, .. }) => *sent_ms,
            _ => self.expires_ms(),
        }
    }
}

/// What a consumer does with the first lease of a job (later leases are always acked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Ack it.
    Ack,
    /// Nack it with no delay: it is ready again at once.
    Nack,
    /// Extend it to [`ABANDON_TIMEOUT_MS`] and leave it: it expires and is redelivered.
    Abandon,
}

/// The visibility timeout an abandoned lease is extended to.
pub const ABANDON_TIMEOUT_MS: u64 = 200;

/// How one consumer task works.
pub struct WorkerPlan {
    /// The queue.
    pub queue: QueueName,
    /// The server leases go through: (its number, its client).
    pub lease_via: (usize, Client),
    /// The servers settles go through, in turn, one per leased batch.
    pub settle_via: Vec<(usize, Client)>,
    /// Visibility timeout of each lease.
    pub timeout_ms: u64,
    /// Most jobs per lease.
    pub batch: u32,
    /// Simulated work per leased batch: a random pause of up to this long.
    pub hold_ms: u64,
    /// What to do with the first lease of job number `index`.
    pub first_lease: fn(u64) -> Plan,
    /// Set when the run is over: the loop ends at its next turn.
    pub stop: Arc<AtomicBool>,
    /// Jobs acked with a 2xx reply, by all consumers.
    pub acked: Arc<AtomicU64>,
    /// When set and true, a failed call (no reply) ends this consumer: its server was killed.
    /// Any other failure fails the test.
    pub killed: Option<Arc<AtomicBool>>,
}

impl WorkerPlan {
    /// Fails the test unless `error` from a call is the expected death of this consumer's server.
    #[track_caller]
    fn expect_death(&self, context: &str, error: &Error) {
        match (&self.killed, error) {
            (Some(killed), Error::Unavailable(_)) if killed.load(Ordering::SeqCst) => {}
            _ => panic!("{context} through server {} failed: {error}", self.lease_via.0),
        }
    }
}

/// Leases batches and settles them as planned until told to stop (or its server dies);
/// returns every lease it got.
pub async fn work(plan: WorkerPlan) -> Vec<LeaseRecord> {
    let mut records = Vec::new();
    for round in 0usize.. {
        if plan.stop.load(Ordering::SeqCst) {
            break;
        }
        let options = LeaseOptions { max_jobs: plan.batch, visibility_timeout_ms: Some(plan.timeout_ms), wait_ms: 200 };
        let sent_ms = now_ms();
        let leased = match plan.lease_via.1.job_lease(&plan.queue, options).await {
            Ok(leased) => leased,
            Err(e) => {
                plan.expect_death("a lease", &e);
                break;
            }
        };
        let recv_ms = now_ms();
        if leased.is_empty() {
            continue;
        }
        let first = records.len();
        for job in &leased {
            records.push(LeaseRecord {
                id: job.id,
                index: index_of(&job.payload),
                token: job.lease_token,
                attempt: job.attempt,
                server: plan.lease_via.0,
                timeout_ms: plan.timeout_ms,
                sent_ms,
                recv_ms,
                leased_expires_ms: job.lease_expires_at.as_millis(),
                extension: None,
                settle: None,
            });
        }
        if plan.hold_ms > 0 {
            let pause = rand::thread_rng().gen_range(0..=plan.hold_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let (via, client) = &plan.settle_via[round % plan.settle_via.len()];
        let mut groups: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        for (at, record) in records.iter().enumerate().skip(first) {
            let what = if record.attempt > 1 { Plan::Ack } else { (plan.first_lease)(record.index) };
            let group = match what {
                Plan::Ack => "ack",
                Plan::Nack => "nack",
                Plan::Abandon => "abandon",
            };
            groups.entry(group).or_default().push(at);
        }
        let mut dead = false;
        if let Some(at) = groups.get("abandon") {
            let extends: Vec<Extend> = at
                .iter()
                .map(|&i| Extend {
                    id: records[i].id,
                    lease_token: records[i].token,
                    visibility_timeout_ms: ABANDON_TIMEOUT_MS,
                })
                .collect();
            let sent_ms = now_ms();
            match client.job_extend(&extends).await {
                Ok(results) => {
                    let recv_ms = now_ms();
                    assert_eq!(results.len(), at.len(), "one extend result per item");
                    for (&i, result) in at.iter().zip(results) {
                        let expires = result.unwrap_or_else(|e| panic!("extend of a live lease failed: {e}"));
                        records[i].extension = Some(Extension {
                            timeout_ms: ABANDON_TIMEOUT_MS,
                            sent_ms,
                            recv_ms,
                            expires_ms: expires.as_millis(),
                        });
                    }
                }
                Err(e) => {
                    plan.expect_death("an extend", &e);
                    dead = true;
                }
            }
        }
        if !dead {
            if let Some(at) = groups.get("nack") {
                let nacks: Vec<Nack> = at
                    .iter()
                    .map(|&i| Nack {
                        id: records[i].id,
                        lease_token: records[i].token,
                        delay_ms: Some(0),
                        error: Some("planned nack".into()),
                    })
                    .collect();
                let sent_ms = now_ms();
                let results = match client.job_nack(&nacks).await {
                    Ok(results) => results.into_iter().map(|r| r.map(|_| ())).collect(),
                    Err(e) => {
                        plan.expect_death("a nack", &e);
                        dead = true;
                        vec![Err(e); at.len()]
                    }
                };
                record_settles(&mut records, at, SettleKind::Nack, *via, sent_ms, results);
            }
        }
        if !dead {
            if let Some(at) = groups.get("ack") {
                let acks: Vec<LeaseRef> =
                    at.iter().map(|&i| LeaseRef { id: records[i].id, lease_token: records[i].token }).collect();
                let sent_ms = now_ms();
                let results = match client.job_ack(&acks).await {
                    Ok(results) => results,
                    Err(e) => {
                        plan.expect_death("an ack", &e);
                        dead = true;
                        vec![Err(e); at.len()]
                    }
                };
                let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                record_settles(&mut records, at, SettleKind::Ack, *via, sent_ms, results);
                plan.acked.fetch_add(ok, Ordering::SeqCst);
            }
        }
        if dead {
            break;
        }
    }
    records
}

/// Records the settle of `records[at[k]]` with the k-th result; a call that got no reply
/// (`Unavailable`) is `Unknown` for every item.
fn record_settles(
    records: &mut [LeaseRecord],
    at: &[usize],
    kind: SettleKind,
    via: usize,
    sent_ms: i64,
    results: Vec<onceq_core::Result<()>>,
) {
    assert_eq!(results.len(), at.len(), "one settle result per item");
    for (&i, result) in at.iter().zip(results) {
        let outcome = match result {
            Ok(()) => Outcome::Ok,
            Err(Error::Unavailable(_)) => Outcome::Unknown,
            Err(Error::LeaseLost(_)) => Outcome::Refused("lease_lost".into()),
            Err(Error::JobNotFound(_)) => Outcome::Refused("not_found".into()),
            Err(e) => panic!("a {kind:?} of job {} failed unexpectedly: {e}", records[i].id),
        };
        records[i].settle = Some(Settle { kind, via, sent_ms, outcome });
    }
}

/// Checks a record of leases against the invariants, whatever else the test did, and returns
/// each job's leases in attempt order:
/// - no lease token was handed out twice;
/// - the server's expiry is consistent with the timeout asked for and the times of the call
///   (one clock, Invariant 7);
/// - a job's leases have strictly increasing attempts, and each starts only after the one
///   before ended: after its successful settle was sent, or else after its expiry (one live
///   lease, Invariant 2; fencing, Invariant 3);
/// - a job has at most one successful ack, and it belongs to its last lease: nothing acked is
///   delivered again (Invariant 4).
pub fn check_history(records: Vec<LeaseRecord>) -> BTreeMap<JobId, Vec<LeaseRecord>> {
    let mut tokens = HashSet::with_capacity(records.len());
    let mut by_job: BTreeMap<JobId, Vec<LeaseRecord>> = BTreeMap::new();
    for record in records {
        assert!(tokens.insert(record.token), "lease token handed out twice: {record:?}");
        let timeout = i64::try_from(record.timeout_ms).expect("timeout fits");
        assert!(
            record.sent_ms + timeout <= record.leased_expires_ms
                && record.leased_expires_ms <= record.recv_ms + timeout,
            "a lease's expiry is not `now() + visibility timeout` of a moment within the call: {record:?}"
        );
        if let Some(ext) = &record.extension {
            let timeout = i64::try_from(ext.timeout_ms).expect("timeout fits");
            assert!(
                ext.sent_ms + timeout <= ext.expires_ms && ext.expires_ms <= ext.recv_ms + timeout,
                "an extended lease's expiry is not `now() + timeout` of a moment within the call: {record:?}"
            );
        }
        by_job.entry(record.id).or_default().push(record);
    }
    for (id, leases) in &mut by_job {
        leases.sort_by_key(|l| l.attempt);
        let payloads: HashSet<u64> = leases.iter().map(|l| l.index).collect();
        assert_eq!(payloads.len(), 1, "job {id} was delivered with different payloads: {leases:#?}");
        for pair in leases.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            assert!(
                earlier.attempt < later.attempt,
                "job {id} was leased twice with attempt {}: {earlier:#?}\n{later:#?}",
                earlier.attempt
            );
            assert!(
                later.recv_ms >= earlier.ended_no_earlier_than(),
                "job {id}: lease attempt {} was handed out (reply read at {} ms) before lease attempt {} ended \
                 (no earlier than {} ms): two live leases at once\n{earlier:#?}\n{later:#?}",
                later.attempt,
                later.recv_ms,
                earlier.attempt,
                earlier.ended_no_earlier_than()
            );
        }
        let acked: Vec<&LeaseRecord> = leases.iter().filter(|l| l.acked_ok()).collect();
        assert!(acked.len() <= 1, "job {id} was acked {} times: {leases:#?}", acked.len());
        if let Some(ack) = acked.first() {
            assert_eq!(
                ack.attempt,
                leases.last().map_or(0, |l| l.attempt),
                "job {id} was delivered again after a successful ack: {leases:#?}"
            );
        }
    }
    by_job
}
