//! What a run of `onceq bench` is asked to do: its options ([`BenchArgs`]), the scenarios
//! `--only` picks, and what every bench derives from the options (rounds, payload, batch size).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::error::BenchError;

/// Options of `onceq bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Durability setting to measure: fsync (every reply after its commit is synced; the floor uses
    /// synchronous=FULL), relaxed (no sync; the floor uses synchronous=NORMAL), or both.
    #[arg(long, value_enum, default_value_t = DurabilityChoice::Both)]
    pub durability: DurabilityChoice,
    /// Jobs per scenario [default: 200000, or 5000 with --quick]. Single enqueue with one producer
    /// runs a tenth of them (it is one fsync per job).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    pub jobs: Option<u64>,
    /// Ready jobs behind the big-backlog lease scenario; 0 skips it [default: 1000000, or 0 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub backlog: Option<u64>,
    /// A short run: fewer jobs, no big backlog.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of every scenario that has a floor (embedded store and --store): the store and
    /// its floor take turns, round after round, and the report gives the median of each and the
    /// median of the rounds' ratios, so that a drift of the machine (disk, neighbours) hits both
    /// sides alike [default: 3, or 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Run only these scenarios (comma-separated or repeated), with the embedded store or
    /// --store [default: all of them]. The embedded bench has enqueue-1, enqueue-concurrent,
    /// enqueue-batched, end-to-end-batched, end-to-end-single, lease-ack-batched,
    /// lease-ack-backlog, end-to-end-ordered, lease-ack-ordered-backlog, pipeline-stage,
    /// lease-ack-limited and durability-mixed; --store has enqueue-batched, lease-ack-batched, end-to-end-batched,
    /// enqueue-concurrent, lease-ack-single, end-to-end-ordered, lease-ack-ordered-backlog
    /// (behind 1,000,000 jobs), pipeline-stage and lease-ack-limited.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SCENARIO", conflicts_with_all = ["server", "outbox"])]
    pub only: Vec<Scenario>,
    /// Measure latency instead of throughput: enqueue → handler start under an open-loop
    /// offered load of 10%, 50% and 80% of the maximum a closed loop finds (one job per enqueue
    /// call, workers leasing up to 100 and waiting), with p50, p99, p99.9 and the maximum, on the
    /// embedded store at each --durability, or with --store on PostgreSQL (a fresh schema, dropped
    /// at the end). About 20 s per store; with --quick about 4 s, to see that it runs.
    #[arg(long, conflicts_with_all = ["only", "server", "outbox", "jobs", "backlog", "rounds"])]
    pub latency: bool,
    /// Directory in which the run makes (and then removes) a temporary directory for its databases
    /// [default: the system's temporary directory]. Choose the disk you mean to measure.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Payload size of every job, in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Measure the onceq server at this URL over HTTP (e.g. http://127.0.0.1:7700) instead of
    /// the embedded store. The server keeps its own data directory and durability.
    #[arg(long, value_name = "URL", conflicts_with_all = ["durability", "backlog", "data_dir"])]
    pub server: Option<String>,
    /// Bearer token for --server when its auth is on (needs produce and consume on `bench-*`
    /// queues; admin too, to delete them afterwards).
    #[arg(long, value_name = "TOKEN", env = "ONCEQ_TOKEN", hide_env_values = true)]
    pub server_token: Option<String>,
    /// Measure the PostgreSQL store at this URL (e.g. postgres://postgres@127.0.0.1:5432/test)
    /// beside a pgbench floor running the store's statements. Needs `pgbench` (package
    /// postgresql-client or postgresql).
    #[arg(long, value_name = "URL", conflicts_with_all = ["server", "durability", "backlog", "data_dir"])]
    pub store: Option<String>,
    /// Schema of the PostgreSQL run (with --store); the floor uses `<schema>_floor`. Both are
    /// dropped at the end [default: a fresh onceq_bench_<random>].
    #[arg(long, value_name = "SCHEMA", requires = "store")]
    pub pg_schema: Option<String>,
    /// With --store or --outbox: how long the first connection to PostgreSQL may take before the
    /// run gives up (exit 3), 1 to 600000 ms.
    #[arg(long, value_name = "MS", default_value_t = 3000, env = "ONCEQ_PG_CONNECT_TIMEOUT_MS",
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub pg_connect_timeout_ms: u64,
    /// Measure the transactional outbox on the PostgreSQL at this URL (e.g.
    /// postgres://postgres@127.0.0.1:5432/test): the cost of staging a message in a business
    /// transaction (ratio with/without), messages staged/s, and published/s through the relay
    /// into a onceq queue. Uses fresh schemas, dropped at the end; --jobs is the message count
    /// [default: 20000, or 5000 with --quick].
    #[arg(long, value_name = "URL", conflicts_with_all = ["server", "store", "durability", "backlog", "data_dir"])]
    pub outbox: Option<String>,
}

/// Which durability settings `onceq bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityChoice {
    /// An acknowledged write survives power loss (floor: synchronous=FULL).
    Fsync,
    /// Survives a process crash; the last commits may be lost on power loss (floor: synchronous=NORMAL).
    Relaxed,
    /// Both, fsync first.
    Both,
}

/// A scenario, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Single-job enqueue from one producer (embedded).
    #[value(name = "enqueue-1")]
    Enqueue1,
    /// Single-job enqueue from many producers at once (embedded: 64, --store: 16).
    EnqueueConcurrent,
    /// Enqueue of 100 jobs per call.
    EnqueueBatched,
    /// Enqueue → lease → ack, 100 jobs per call, producers and workers at once.
    EndToEndBatched,
    /// Enqueue → lease → ack, one job per call, 64 producers and 64 workers (embedded).
    EndToEndSingle,
    /// Lease + ack of 100 jobs per call on a filled queue.
    LeaseAckBatched,
    /// The same behind a big backlog (embedded; its target compares it with lease-ack-batched,
    /// so it needs that one in the same run).
    LeaseAckBacklog,
    /// Lease + ack of one job per call, 16 workers (--store).
    LeaseAckSingle,
    /// End-to-end batched on a `per_key` queue of 10,000 keys, beside the same run on an
    /// unordered queue (its yardstick, in place of a floor).
    EndToEndOrdered,
    /// Lease + ack on a `per_key` queue whose 100,000 keys hold a big backlog (most of it
    /// blocked behind its keys' heads), beside a small one of the same keys.
    LeaseAckOrderedBacklog,
    /// A pipeline stage: lease 100 jobs, then one commit that acks them and enqueues 100 jobs
    /// into the next queue, beside plain lease + ack of 100 per call (its yardstick).
    PipelineStage,
    /// Lease + ack of 100 per call, 4 workers, on a queue with a rate limit far above the
    /// achieved rate, beside the same on an unlimited queue (its yardstick): the limiter's cost.
    LeaseAckLimited,
    /// Per-queue durability: an fsync queue's end-to-end batched run beside a relaxed queue
    /// offered 10,000 jobs/s, and beside one that runs unbounded, against the fsync queue alone
    /// (its yardstick); and a relaxed queue's run against the relaxed floor (raw SQLite,
    /// synchronous=NORMAL) (embedded).
    DurabilityMixed,
}

impl Scenario {
    /// The name `--only` takes.
    fn name(self) -> String {
        self.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// The scenarios `--only` asks for, checked against those a bench has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selection(Vec<Scenario>);

impl Selection {
    /// `only` (empty: all of `offered`), refused if it names one that `bench` does not have.
    pub(super) fn new(only: &[Scenario], offered: &[Scenario], bench: &str) -> Result<Self, BenchError> {
        if let Some(missing) = only.iter().find(|s| !offered.contains(s)) {
            let names: Vec<String> = offered.iter().map(|s| s.name()).collect();
            return Err(BenchError::Options(format!(
                "--only {}: {bench} has no such scenario; it has {}",
                missing.name(),
                names.join(", ")
            )));
        }
        Ok(Selection(if only.is_empty() { offered.to_vec() } else { only.to_vec() }))
    }

    pub(super) fn runs(&self, scenario: Scenario) -> bool {
        self.0.contains(&scenario)
    }
}

/// Jobs per call in the batched scenarios.
pub(super) const BATCH: u64 = 100;
/// Keys of the ordered end-to-end scenario.
pub(super) const ORDERED_KEYS: u64 = 10_000;
/// Keys of the ordered lease scenarios: the big backlog waits behind this many heads.
pub(super) const ORDERED_BACKLOG_KEYS: u64 = 100_000;

/// Jobs the small side of `lease-ack-ordered-backlog` (its yardstick) holds when `leased` jobs
/// are leased: a head for every key, and one job behind each head that is leased, so that every
/// ack hands its key on, as every ack behind the big backlog does. Holding only the leased jobs
/// gave a run that leases fewer jobs than there are keys (`--store --jobs 20000`) no blocked job
/// at all: its acks skipped the hand-over the big side's acks make, and the ratio compared two
/// different works.
pub(super) fn ordered_small_backlog(leased: u64) -> u64 {
    ORDERED_BACKLOG_KEYS + leased.min(ORDERED_BACKLOG_KEYS)
}

/// `--rounds`, or its default: 3, or 1 with `--quick`.
pub(super) fn rounds(args: &BenchArgs) -> u32 {
    args.rounds.unwrap_or(if args.quick { 1 } else { 3 })
}

/// A payload of `bytes` bytes that looks like a small JSON document.
pub(super) fn payload(bytes: usize) -> Vec<u8> {
    let mut payload = br#"{"task":"bench","data":""#.to_vec();
    payload.resize(bytes.saturating_sub(2).max(payload.len()), b'x');
    payload.extend_from_slice(br#""}"#);
    payload.truncate(bytes);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs `n` and `n + ORDERED_BACKLOG_KEYS` share key `n`: each of the first `leased` keys
    /// (the heads leased, in id order) has exactly one job behind it.
    #[test]
    fn the_small_ordered_backlog_has_one_job_behind_each_leased_head() {
        assert_eq!(ordered_small_backlog(20_000), 120_000);
        assert_eq!(ordered_small_backlog(100_000), 200_000);
        assert_eq!(ordered_small_backlog(300_000), 200_000);
    }

    #[test]
    fn payload_has_the_asked_size() {
        for bytes in [0, 1, 10, 30, 100, 4096] {
            assert_eq!(payload(bytes).len(), bytes);
        }
        assert!(payload(100).starts_with(br#"{"task":"bench""#));
        assert!(payload(100).ends_with(br#""}"#));
    }
}
