//! Crash safety of the embedded store under `kill -9` (docs/design.md Invariants 1 and 4; ids never
//! reused).
//!
//! Proves that, however a process dies, after the store is reopened:
//! - every enqueue that returned success is still there, unless an ack of it was attempted
//!   (Invariant 1, durable acknowledgment; jobs leased at the kill come back when their lease ends);
//! - every ack that returned success stuck: the job is gone (`job_get` → `JobNotFound`) and is never
//!   delivered again, even when everything left in the queue is leased (Invariant 4, no resurrection);
//! - job ids are unique and strictly increasing over the store's whole life, across crashes: no id
//!   is handed out twice, and every payload maps to one id.
//!
//! How: the test binary re-runs itself as a child (`crash_child`, ignored unless the parent sets
//! its environment). The child opens the store in a data directory shared by every cycle and runs
//! concurrent producers (unique payloads) and workers (lease with a short visibility timeout, ack
//! most jobs, let the rest expire). After a store call returns `Ok`, and only then, it appends the
//! outcome to a log: `E <id> <payload>` for an enqueued job, `A <id>` for an acked one; before an ack
//! it appends `a <id>` (attempted: such an ack may commit even if the kill lands before its reply).
//! The parent kills the child with SIGKILL at a random moment, waits out the child's leases, reopens
//! the store and checks the log against it exactly; then it acks half of what remains, nacks the
//! rest back to ready, closes the store, and starts the next cycle on the same data directory.
//! Odd cycles run the child with `fsync` durability, even ones with `relaxed` (which must survive a
//! process crash too).
//!
//! `ONCEQ_CRASH_CYCLES` sets the number of cycles (default 50).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onceq::limits::ATTEMPTS_MAX;
use onceq::{
    Durability, Error, JobId, LeaseOptions, LeasedJob, Nack, NackOutcome, NewJob, QueueName, SqliteOptions,
    SqliteStore, Store,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The child's test name, run by the parent with `--exact --ignored`.
const CHILD_TEST: &str = "crash_child";
const ENV_DATA_DIR: &str = "ONCEQ_CRASH_DATA_DIR";
const ENV_LOG: &str = "ONCEQ_CRASH_LOG";
const ENV_CYCLE: &str = "ONCEQ_CRASH_CYCLE";
const ENV_DURABILITY: &str = "ONCEQ_CRASH_DURABILITY";
const ENV_CYCLES: &str = "ONCEQ_CRASH_CYCLES";
const CYCLES_DEFAULT: u32 = 50;
/// The child prints this once its store is open; the kill delay counts from it.
const READY_LINE: &str = "ONCEQ_CRASH_CHILD_READY";
const QUEUE: &str = "crash";
const PRODUCERS: u32 = 4;
const WORKERS: u32 = 4;
/// Leases in the child are short, so that jobs leased at the kill are ready again soon after.
const CHILD_VISIBILITY_TIMEOUT_MS: u64 = 150;
/// Bounds the child's life if its parent is gone and nobody kills it.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);
/// The kill comes this long after the child is ready, drawn uniformly.
const KILL_DELAY_MS: std::ops::RangeInclusive<u64> = 50..=400;
/// Longest wait for a child to open its store.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------------
// The child.

/// The child process of the crash test. Without the parent's environment it does nothing.
#[test]
#[ignore = "the child of the crash test; the parent runs it with its environment"]
fn crash_child() {
    let Ok(data_dir) = std::env::var(ENV_DATA_DIR) else {
        return;
    };
    let log_path = std::env::var(ENV_LOG).expect("log path");
    let cycle: u32 = std::env::var(ENV_CYCLE).expect("cycle").parse().expect("cycle number");
    let durability: Durability = std::env::var(ENV_DURABILITY).expect("durability").parse().expect("durability");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let store = SqliteStore::open(SqliteOptions::new(&data_dir).durability(durability)).expect("child opens");
        let log = Arc::new(Log(Mutex::new(
            OpenOptions::new().create(true).append(true).open(&log_path).expect("child opens its log"),
        )));
        println!("{READY_LINE}");
        std::io::stdout().flush().expect("stdout");
        let deadline = Instant::now() + CHILD_LIFETIME_MAX;
        let mut tasks = tokio::task::JoinSet::new();
        for producer in 0..PRODUCERS {
            tasks.spawn(produce(store.clone(), log.clone(), cycle, producer, deadline));
        }
        for _ in 0..WORKERS {
            tasks.spawn(work(store.clone(), log.clone(), deadline));
        }
        // Runs until killed. A failing task panics here, and the parent sees the child exit early.
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a child task failed");
        }
    });
}

/// The child's outcome log. `File` has no user-space buffer: each `append` is one `write(2)` in
/// append mode, on its way to the file before the next store call starts.
struct Log(Mutex<File>);

impl Log {
    fn append(&self, lines: &str) {
        if lines.is_empty() {
            return;
        }
        let mut file = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(lines.as_bytes()).expect("child writes its log");
    }
}

async fn produce(store: SqliteStore, log: Arc<Log>, cycle: u32, producer: u32, deadline: Instant) {
    let queue = QueueName::new(QUEUE).unwrap();
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let payloads: Vec<String> = (0..rng.gen_range(1..=8))
            .map(|_| {
                seq += 1;
                format!("c{cycle}-p{producer}-{seq}")
            })
            .collect();
        // Leases never run out: a job is dead-lettered by nothing this test does.
        let jobs = payloads.iter().map(|p| NewJob::new(p.as_bytes().to_vec()).max_attempts(ATTEMPTS_MAX)).collect();
        let enqueued = store.job_enqueue(&queue, jobs).await.expect("child enqueue");
        assert_eq!(enqueued.len(), payloads.len());
        let mut lines = String::new();
        for (result, payload) in enqueued.iter().zip(&payloads) {
            assert!(!result.duplicate, "no dedup id was sent, yet {result:?}");
            lines.push_str(&format!("E {} {payload}\n", result.id));
        }
        log.append(&lines);
    }
}

async fn work(store: SqliteStore, log: Arc<Log>, deadline: Instant) {
    let queue = QueueName::new(QUEUE).unwrap();
    let mut rng = rand::rngs::StdRng::from_entropy();
    while Instant::now() < deadline {
        let options = LeaseOptions {
            max_jobs: rng.gen_range(1..=10),
            visibility_timeout_ms: Some(CHILD_VISIBILITY_TIMEOUT_MS),
            wait_ms: 20,
        };
        let leased = store.job_lease(&queue, options).await.expect("child lease");
        // One job in five is left to its lease's expiry: it must come back, never be lost.
        let acks: Vec<_> = leased.iter().filter(|_| rng.gen_bool(0.8)).map(LeasedJob::lease).collect();
        if acks.is_empty() {
            continue;
        }
        log.append(&acks.iter().map(|a| format!("a {}\n", a.id)).collect::<String>());
        let results = store.job_ack(&acks).await.expect("child ack");
        assert_eq!(results.len(), acks.len());
        let mut lines = String::new();
        for (ack, result) in acks.iter().zip(results) {
            match result {
                Ok(()) => lines.push_str(&format!("A {}\n", ack.id)),
                // The lease expired before the ack (and another worker may have acked the job).
                Err(Error::LeaseLost(id)) | Err(Error::JobNotFound(id)) => assert_eq!(id, ack.id),
                Err(other) => panic!("ack of job {} failed: {other}", ack.id),
            }
        }
        log.append(&lines);
    }
}

// ------------------------------------------------------------------------------------------------
// The parent.

/// Every enqueue and ack acknowledged to a process killed with `kill -9` stays done, acked jobs
/// never come back, and ids are never handed out twice; see the file's opening comment.
#[test]
fn invariant_1_durable_acknowledgment_and_invariant_4_no_resurrection_survive_kill_9() {
    let cycles: u32 = std::env::var(ENV_CYCLES).map_or(CYCLES_DEFAULT, |v| v.parse().expect("ONCEQ_CRASH_CYCLES"));
    let scratch = tempfile::tempdir().unwrap();
    let data_dir = scratch.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut rng = rand::thread_rng();
    let mut ledger = Ledger::default();
    let started = Instant::now();
    for cycle in 1..=cycles {
        let log_path = scratch.path().join(format!("cycle-{cycle}.log"));
        let durability = if cycle % 2 == 1 { "fsync" } else { "relaxed" };
        let mut child = ChildProcess::spawn(&data_dir, &log_path, cycle, durability);
        child.wait_ready();
        std::thread::sleep(Duration::from_millis(rng.gen_range(KILL_DELAY_MS)));
        child.kill();
        // Jobs the child held under lease are ready again once their lease ends.
        std::thread::sleep(Duration::from_millis(CHILD_VISIBILITY_TIMEOUT_MS + 100));
        let log = OutcomeLog::read(&log_path);
        runtime.block_on(ledger.check_cycle(cycle, &data_dir, &log, &mut rng));
    }
    let elapsed = started.elapsed();
    eprintln!(
        "crash test: {cycles} cycles in {:.1} s; {} enqueues logged, {} found unlogged (killed before the log); \
         {} acks logged by children, {} unlogged acks found committed, {} found not committed; {} acked and {} \
         nacked by the parent; {} jobs left",
        elapsed.as_secs_f64(),
        ledger.totals.enqueued_logged,
        ledger.totals.enqueued_unlogged,
        ledger.totals.acked_logged,
        ledger.totals.ack_attempts_committed,
        ledger.totals.ack_attempts_not_committed,
        ledger.totals.acked_by_parent,
        ledger.totals.nacked_by_parent,
        ledger.live.len(),
    );
    assert!(ledger.totals.enqueued_logged > 0 && ledger.totals.acked_logged > 0, "the children did no work");
}

/// A running child, its stdout lines and its stderr.
struct ChildProcess {
    child: Child,
    cycle: u32,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl ChildProcess {
    fn spawn(data_dir: &Path, log_path: &Path, cycle: u32, durability: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([CHILD_TEST, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(ENV_DATA_DIR, data_dir)
            .env(ENV_LOG, log_path)
            .env(ENV_CYCLE, cycle.to_string())
            .env(ENV_DURABILITY, durability)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        ChildProcess { child, cycle, lines, stderr }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // The harness may print "test crash_child ... " on the same line first.
                Ok(line) if line.trim_end().ends_with(READY_LINE) => return,
                Ok(_) => continue,
                Err(_) => self.fail("did not report ready"),
            }
        }
    }

    /// SIGKILL (`Child::kill` on Unix) while the child is mid-flight; it must still be running.
    fn kill(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            self.fail(&format!("exited on its own ({status}) before the kill"));
        }
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "cycle {}: the child was killed yet exited {status}", self.cycle);
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        panic!("cycle {}: the child {what}; its stderr:\n{stderr}", self.cycle);
    }
}

/// What a child's log says it was told.
#[derive(Debug, Default)]
struct OutcomeLog {
    /// `E`: enqueues that returned success, in log order.
    enqueued: Vec<(JobId, String)>,
    /// `a`: acks attempted (their outcome is unknown unless an `A` follows).
    ack_attempts: HashSet<JobId>,
    /// `A`: acks that returned success.
    acked: Vec<JobId>,
}

impl OutcomeLog {
    fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut log = OutcomeLog::default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        // A line the kill tore (no newline yet) is past `complete`: ignored.
        for line in complete.lines() {
            let mut fields = line.splitn(3, ' ');
            let (kind, id) = (fields.next(), fields.next().map(|id| id.parse::<JobId>()));
            match (kind, id, fields.next()) {
                (Some("E"), Some(Ok(id)), Some(payload)) => log.enqueued.push((id, payload.to_owned())),
                (Some("a"), Some(Ok(id)), None) => {
                    log.ack_attempts.insert(id);
                }
                (Some("A"), Some(Ok(id)), None) => log.acked.push(id),
                _ => panic!("{}: malformed log line {line:?}", path.display()),
            }
        }
        log
    }
}

/// Counts for the closing summary.
#[derive(Debug, Default)]
struct Totals {
    enqueued_logged: u64,
    enqueued_unlogged: u64,
    acked_logged: u64,
    ack_attempts_committed: u64,
    ack_attempts_not_committed: u64,
    acked_by_parent: u64,
    nacked_by_parent: u64,
}

/// What the parent knows across cycles.
#[derive(Debug, Default)]
struct Ledger {
    /// Every job id ever seen (in a log or in the store) → its payload, when known.
    known: HashMap<JobId, Option<String>>,
    /// Every payload ever seen → the one id it was enqueued as.
    payload_ids: HashMap<String, JobId>,
    /// Jobs whose ack returned success: they must never be seen again.
    acked: HashSet<JobId>,
    /// Jobs that must exist now: enqueue acknowledged, no ack attempted (or attempted and found
    /// not committed) → payload.
    live: BTreeMap<JobId, String>,
    totals: Totals,
}

impl Ledger {
    fn highest_known(&self) -> Option<JobId> {
        self.known.keys().max().copied()
    }

    /// Records an id first seen in `cycle`: it must be new and above every id seen before.
    fn record_new(&mut self, cycle: u32, id: JobId, payload: Option<&str>, highest_before: Option<JobId>, what: &str) {
        if let Some(highest) = highest_before {
            assert!(
                id > highest,
                "cycle {cycle}: {what} job {id}, but ids up to {highest} were handed out before this cycle: ids must \
                 increase strictly over the store's life and never be reused"
            );
        }
        let previous = self.known.insert(id, payload.map(str::to_owned));
        assert!(previous.is_none(), "cycle {cycle}: {what} job {id}, an id already handed out ({previous:?})");
        if let Some(payload) = payload {
            assert!(
                payload.starts_with(&format!("c{cycle}-")),
                "cycle {cycle}: {what} job {id} with payload {payload}"
            );
            let other = self.payload_ids.insert(payload.to_owned(), id);
            assert!(other.is_none(), "cycle {cycle}: payload {payload} was enqueued as job {other:?} and as job {id}");
        }
    }

    async fn check_cycle(&mut self, cycle: u32, data_dir: &Path, log: &OutcomeLog, rng: &mut impl Rng) {
        let highest_before = self.highest_known();
        let queue = QueueName::new(QUEUE).unwrap();

        // What the child was told.
        for (id, payload) in &log.enqueued {
            self.record_new(cycle, *id, Some(payload), highest_before, "the child was told it enqueued");
            self.live.insert(*id, payload.clone());
        }
        self.totals.enqueued_logged += log.enqueued.len() as u64;
        for id in &log.acked {
            assert!(log.ack_attempts.contains(id), "cycle {cycle}: job {id} acked without its attempt logged first");
            if !self.known.contains_key(id) {
                // Enqueued in this cycle, acked by a worker before its producer wrote the log.
                self.record_new(cycle, *id, None, highest_before, "the child was told it acked");
            }
            assert!(self.acked.insert(*id), "cycle {cycle}: job {id} was acked (Ok) twice");
            self.live.remove(id);
        }
        self.totals.acked_logged += log.acked.len() as u64;
        let acked_now: HashSet<JobId> = log.acked.iter().copied().collect();
        let mut uncertain: BTreeMap<JobId, Option<String>> = BTreeMap::new();
        for id in log.ack_attempts.difference(&acked_now) {
            assert!(!self.acked.contains(id), "cycle {cycle}: job {id} was leased and acked again after its ack");
            if !self.known.contains_key(id) {
                self.record_new(cycle, *id, None, highest_before, "the child attempted to ack");
            }
            uncertain.insert(*id, self.live.remove(id));
        }

        // What the store kept.
        let store = SqliteStore::open(SqliteOptions::new(data_dir)).unwrap_or_else(|e| {
            panic!("cycle {cycle}: the store does not reopen after kill -9: {e}");
        });
        for id in &acked_now {
            assert_eq!(
                store.job_get(*id).await.map(|job| job.id),
                Err(Error::JobNotFound(*id)),
                "cycle {cycle}: Invariant 1/4: job {id} was acked (Ok) but is still there after kill -9"
            );
        }
        let leased = lease_everything(&store, &queue, cycle).await;
        let mut seen = HashSet::new();
        for job in &leased {
            let id = job.id;
            assert!(seen.insert(id), "cycle {cycle}: job {id} was delivered twice by one sweep of leases");
            assert!(
                !self.acked.contains(&id),
                "cycle {cycle}: Invariant 4: job {id} was acked (Ok) yet is delivered again after kill -9"
            );
            let payload = String::from_utf8(job.payload.clone()).unwrap();
            match self.known.get(&id) {
                Some(Some(expected)) => assert_eq!(
                    &payload, expected,
                    "cycle {cycle}: job {id} carries another payload than the one enqueued as it"
                ),
                Some(None) => {
                    // Known only from an ack attempt whose outcome was unknown: learn its payload.
                    assert!(uncertain.contains_key(&id), "cycle {cycle}: job {id} reappeared");
                    assert!(
                        payload.starts_with(&format!("c{cycle}-")),
                        "cycle {cycle}: job {id} has payload {payload}"
                    );
                    self.known.insert(id, Some(payload.clone()));
                    let other = self.payload_ids.insert(payload.clone(), id);
                    assert!(other.is_none(), "cycle {cycle}: payload {payload} is jobs {other:?} and {id}");
                }
                None => {
                    // Committed, but the kill came before the child logged it.
                    self.record_new(cycle, id, Some(&payload), highest_before, "the store holds unlogged");
                    self.live.insert(id, payload.clone());
                    self.totals.enqueued_unlogged += 1;
                }
            }
        }

        // Invariant 1: every acknowledged enqueue without an ack attempt is still there.
        for (id, payload) in &self.live {
            assert!(
                seen.contains(id),
                "cycle {cycle}: Invariant 1: job {id} ({payload}) was enqueued (Ok), never acked, and is gone \
                 after kill -9: {:?}",
                store.job_get(*id).await.map(|job| (job.state, job.attempt))
            );
        }
        // Acks whose reply the kill may have cut: committed (gone for good) or not (still there).
        for (id, payload) in uncertain {
            if seen.contains(&id) {
                let payload = self.known.get(&id).cloned().flatten().or(payload).unwrap_or_default();
                self.live.insert(id, payload);
                self.totals.ack_attempts_not_committed += 1;
            } else {
                assert_eq!(
                    store.job_get(id).await.map(|job| job.id),
                    Err(Error::JobNotFound(id)),
                    "cycle {cycle}: job {id} is neither leasable nor gone"
                );
                self.acked.insert(id);
                self.totals.ack_attempts_committed += 1;
            }
        }
        let live: HashSet<JobId> = self.live.keys().copied().collect();
        assert_eq!(live, seen, "cycle {cycle}: the jobs in the store are not the jobs the parent expects");

        // Nothing is hidden in another state: every job there is the parent's under lease now.
        match store.queue_get(&queue).await {
            Ok(info) => {
                let stats = info.stats;
                assert_eq!(
                    (stats.ready, stats.scheduled, stats.leased, stats.dead),
                    (0, 0, leased.len() as u64, 0),
                    "cycle {cycle}: queue stats after leasing everything"
                );
            }
            Err(Error::QueueNotFound(_)) => assert!(leased.is_empty() && self.known.is_empty()),
            Err(other) => panic!("cycle {cycle}: queue_get: {other}"),
        }

        self.settle(&store, leased, cycle, rng).await;
        store.close().await;
    }

    /// Acks a random half of what is left (the acks must stick next cycle) and nacks the rest
    /// back to ready for the next child.
    async fn settle(&mut self, store: &SqliteStore, mut leased: Vec<LeasedJob>, cycle: u32, rng: &mut impl Rng) {
        leased.shuffle(rng);
        let keep = leased.split_off(leased.len() / 2);
        for chunk in leased.chunks(1000) {
            let acks: Vec<_> = chunk.iter().map(LeasedJob::lease).collect();
            let results = store.job_ack(&acks).await.unwrap();
            assert_eq!(results, vec![Ok(()); acks.len()], "cycle {cycle}: the parent's acks");
            for ack in &acks {
                self.acked.insert(ack.id);
                self.live.remove(&ack.id);
            }
            self.totals.acked_by_parent += acks.len() as u64;
        }
        for chunk in keep.chunks(1000) {
            let nacks: Vec<_> = chunk
                .iter()
                .map(|job| Nack { id: job.id, lease_token: job.lease_token, delay_ms: Some(0), error: None })
                .collect();
            let results = store.job_nack(&nacks).await.unwrap();
            for (nack, result) in nacks.iter().zip(&results) {
                assert!(
                    matches!(result, Ok(NackOutcome::Retrying { .. })),
                    "cycle {cycle}: the parent's nack of job {}: {result:?}",
                    nack.id
                );
            }
            assert_eq!(results.len(), nacks.len());
            self.totals.nacked_by_parent += nacks.len() as u64;
        }
    }
}

/// Leases every ready job (for a minute, longer than the check), 1,000 at a time, until none is left.
async fn lease_everything(store: &SqliteStore, queue: &QueueName, cycle: u32) -> Vec<LeasedJob> {
    let options = LeaseOptions { max_jobs: 1000, visibility_timeout_ms: Some(60_000), wait_ms: 0 };
    let mut all = Vec::new();
    loop {
        let batch = store.job_lease(queue, options).await.unwrap_or_else(|e| panic!("cycle {cycle}: lease: {e}"));
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[test]
fn the_log_reader_ignores_only_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("log");
    std::fs::write(&path, "E 1 c1-p0-1\na 1\nA 1\nE 2 c1-p0-2\nA 2\nE 3 c1-p").unwrap();
    let log = OutcomeLog::read(&path);
    assert_eq!(log.enqueued, vec![(JobId::new(1), "c1-p0-1".to_owned()), (JobId::new(2), "c1-p0-2".to_owned())]);
    assert_eq!(log.ack_attempts, HashSet::from([JobId::new(1)]));
    assert_eq!(log.acked, vec![JobId::new(1), JobId::new(2)]);
}
