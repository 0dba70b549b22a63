//! `onceq bench`: the embedded store's throughput and per-call latency beside the raw SQLite floor.
//!
//! Every scenario runs on both sides in the same process, on the same disk, with the same
//! durability: through the seam on a fresh [`SqliteStore`] (`scenarios`), and as the simplest
//! fast raw SQLite writes that do the same work on a fresh database (`floor`). Each figure's
//! ratio is onceq / floor: what the store keeps of what the disk and SQLite allow (DESIGN.md,
//! "Performance model": the floor is measured, not guessed). The two sides take turns for
//! `--rounds` rounds (default 3), and the report gives the medians and the median of the rounds'
//! ratios, so that a drift of a shared machine's disk hits both alike. Benchmarks are not
//! tests; this prints figures.
//!
//! The scenarios (jobs/s is jobs through the whole scenario divided by its wall time):
//!
//! | scenario | onceq | floor |
//! |---|---|---|
//! | enqueue, 1 job/call, 1 producer | sequential calls | 1 INSERT per transaction |
//! | enqueue, 1 job/call, 64 producers | 64 tokio tasks | 64 INSERTs per transaction: a perfect group commit |
//! | enqueue, 100 jobs/call, 1 producer | sequential calls | 100 INSERTs per transaction |
//! | end-to-end, 100/call | 4 producers, 4 workers (lease 100, ack 100) | pipelined, 100 jobs per transaction |
//! | end-to-end, 1/call | 64 producers, 64 workers (lease 1, ack 1) | pipelined, 64 jobs per transaction |
//! | lease+ack 100/call, small backlog | 1 worker; the queue holds only the jobs it leases | UPDATE 100 + DELETE 100, a transaction each |
//! | lease+ack 100/call, 1,000,000 ready | the same, behind a backlog | the same, behind the same backlog |
//! | end-to-end 100/call, `per_key`, 10,000 keys | 4 producers, 8 workers | the same on an unordered queue |
//! | lease+ack 100/call, `per_key`, 100,000 keys behind 1,000,000 jobs | 1 worker | the same keys, a head each and one job behind each leased head |
//! | pipeline stage: lease 100, commit (ack 100 + enqueue 100) | 1 worker | plain lease+ack 100/call, 1 worker |
//! | lease+ack 100/call, rate limit far above (1,000,000/s, burst 100,000) | 4 workers | the same on an unlimited queue |
//! | `durability-mixed`: end-to-end 100/call on an `fsync` queue beside a `relaxed` one offered 10,000 jobs/s | 4 producers, 8 workers; 4 neighbour tasks | the fsync queue alone (target ≥ 90%) |
//! | `durability-mixed`: the same beside an unbounded `relaxed` neighbour | the same | the fsync queue alone: both queues' jobs together (target ≥ 90%: the one writer's capacity kept) |
//! | `durability-mixed`: end-to-end 100/call on a `relaxed` queue | 4 producers, 8 workers | pipelined, 100 jobs per transaction, `synchronous=NORMAL` |
//!
//! The ordered, pipeline and rate-limited scenarios have no SQLite floor: their yardstick is the
//! store itself, on an unordered queue (what ordering costs), on a small backlog of the same keys
//! (that leasing never looks at the jobs blocked behind their keys' heads), doing plain
//! lease+ack (what a commit adds), and on an unlimited queue (what the limiter costs).
//!
//! A *pipelined* end-to-end floor transaction deletes (acks) the jobs leased by the previous one,
//! leases (UPDATE through the ready-order index) the jobs inserted before it, and inserts new ones:
//! the best a queue that must commit each enqueue, lease and ack before answering can do.
//! The big-backlog scenario's figure is its ratio to the small-backlog one: leasing must not slow
//! down as the backlog grows.
//!
//! With `--server URL` the run measures a running `onceq serve` over HTTP instead, through
//! `onceq_client::Client` (module `http`): batched enqueue, batched lease + ack, end-to-end
//! batched, and end-to-end with single-job requests from 16 + 16 keep-alive clients, against the
//! targets of the HTTP API. There is no raw floor over HTTP.
//!
//! # Layout
//!
//! - This file: [`run`], which picks the bench the options ask for, and the embedded bench (its
//!   durability levels, scenarios, rows and targets).
//! - `options`: [`BenchArgs`], the scenarios `--only` picks, and what every bench derives from
//!   the options (rounds, payload, batch size).
//! - `error`: [`BenchError`], why a run stops.
//! - `report`: printing the report as it goes, its target lines and number formats.
//! - `turns`: the store and its floor taking turns for `--rounds` rounds, and the medians.
//! - `scenarios`: the onceq side of each scenario, generic over the seam.
//! - `floor`: the raw SQLite floor of the embedded bench.
//! - `http`: `--server`, a running server over HTTP.
//! - `pg`: `--store`, the PostgreSQL store beside a pgbench floor.
//! - `outbox`: `--outbox`, the transactional outbox on PostgreSQL.
//! - `latency`: `--latency`, enqueue → handler start under an open-loop offered load.

mod error;
mod floor;
mod http;
mod latency;
mod options;
mod outbox;
mod pg;
mod report;
mod scenarios;
mod turns;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use onceq_core::limits::PAYLOAD_BYTES_MAX;
use onceq_core::QueueName;
use onceq_sqlite::{Durability, SqliteOptions, SqliteStore};

pub use error::BenchError;
pub use options::{BenchArgs, DurabilityChoice, Scenario};

use options::{ordered_small_backlog, payload, rounds, Selection, BATCH, ORDERED_BACKLOG_KEYS, ORDERED_KEYS};
use report::{emit, one_kind_latencies, progress, rate_target, row_details, target_line, thousands};
use scenarios::{Keys, Run, Shape};
use turns::{jobs_per_s, median, rounds_of};

/// One durability level under test, with what it means for the store and for the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Fsync,
    Relaxed,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Fsync => "fsync",
            Level::Relaxed => "relaxed",
        }
    }

    /// What a reply promises at this level, and how the store keeps it.
    fn promise(self) -> &'static str {
        match self {
            Level::Fsync => "every reply after an fdatasync of the log that covers it",
            Level::Relaxed => "no sync: survives a process crash, not a power loss",
        }
    }

    /// The floor's `PRAGMA synchronous`: SQLite's own way to give this level's promise.
    fn synchronous(self) -> &'static str {
        match self {
            Level::Fsync => "FULL",
            Level::Relaxed => "NORMAL",
        }
    }

    fn durability(self) -> Durability {
        match self {
            Level::Fsync => Durability::Fsync,
            Level::Relaxed => Durability::Relaxed,
        }
    }
}

/// The sizes of one run, resolved from the options.
#[derive(Debug, Clone)]
struct Plan {
    /// Jobs per scenario.
    jobs: u64,
    /// Jobs of the one-producer single-enqueue scenario (one commit each).
    single_jobs: u64,
    /// Ready jobs behind the big-backlog lease scenario; 0 skips it.
    backlog: u64,
    /// Every job's payload.
    payload: Vec<u8>,
    /// Rounds of every scenario (store, floor, store, floor, ...).
    rounds: u32,
    /// The scenarios to run.
    only: Selection,
}

/// The scenarios of the embedded bench, in the order they run.
const EMBEDDED_SCENARIOS: [Scenario; 12] = [
    Scenario::Enqueue1,
    Scenario::EnqueueConcurrent,
    Scenario::EnqueueBatched,
    Scenario::EndToEndBatched,
    Scenario::EndToEndSingle,
    Scenario::LeaseAckBatched,
    Scenario::LeaseAckBacklog,
    Scenario::EndToEndOrdered,
    Scenario::LeaseAckOrderedBacklog,
    Scenario::PipelineStage,
    Scenario::LeaseAckLimited,
    Scenario::DurabilityMixed,
];

/// Producers, and workers, of the single-job scenarios: the concurrency group commit serves.
const SINGLE_TASKS: u64 = 64;
/// Fails within `timeout_ms` (exit 3) when PostgreSQL at `url` does not answer, as serve and relay
/// do at start, rather than leaving the run (and the `psql` and `pgbench` it starts) to wait on a
/// database that never answers.
fn reach_postgres(url: &str, timeout_ms: u64) -> Result<(), BenchError> {
    use sqlx::Connection as _;
    let options: sqlx::postgres::PgConnectOptions = url
        .parse()
        .map_err(|e| BenchError::Options(format!("not a PostgreSQL URL (postgres://user@host:port/database): {e}")))?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default database)")
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let unavailable = |message: String| BenchError::Store(onceq_core::Error::Unavailable(message));
        match tokio::time::timeout(Duration::from_millis(timeout_ms), sqlx::PgConnection::connect_with(&options)).await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                Ok(())
            }
            Ok(Err(e)) => Err(unavailable(format!("cannot connect to PostgreSQL at {target}: {e}"))),
            Err(_) => Err(unavailable(format!(
                "cannot connect to PostgreSQL at {target}: no answer within the connect timeout of {timeout_ms} ms \
                 (--pg-connect-timeout-ms); check that it is running and reachable"
            ))),
        }
    })
}

/// Runs `onceq bench` and prints its report on stdout (progress goes to stderr).
pub fn run(args: &BenchArgs, command_line: &str) -> Result<(), BenchError> {
    if args.payload_bytes > PAYLOAD_BYTES_MAX {
        return Err(BenchError::Options(format!(
            "--payload-bytes is {}; the limit is {PAYLOAD_BYTES_MAX}",
            args.payload_bytes
        )));
    }
    if let Some(server) = &args.server {
        return http::run(args, server, command_line);
    }
    if args.latency {
        return match &args.store {
            Some(url) => {
                reach_postgres(url, args.pg_connect_timeout_ms)?;
                latency::run_postgres(args, url, command_line)
            }
            None => latency::run_embedded(args, command_line),
        };
    }
    if let Some(url) = &args.store {
        reach_postgres(url, args.pg_connect_timeout_ms)?;
        return pg::run(args, url, command_line);
    }
    if let Some(url) = &args.outbox {
        reach_postgres(url, args.pg_connect_timeout_ms)?;
        return outbox::run(args, url, command_line);
    }
    let jobs = args.jobs.unwrap_or(if args.quick { 5_000 } else { 200_000 });
    let backlog = args.backlog.unwrap_or(if args.quick { 0 } else { 1_000_000 });
    if backlog == 0 && args.only.contains(&Scenario::LeaseAckBacklog) {
        return Err(BenchError::Options(
            "--only lease-ack-backlog needs a backlog: --backlog is 0 (its default with --quick); give --backlog N"
                .into(),
        ));
    }
    let plan = Plan {
        jobs,
        single_jobs: (jobs / 10).max(100),
        backlog,
        payload: payload(args.payload_bytes),
        rounds: rounds(args),
        only: Selection::new(&args.only, &EMBEDDED_SCENARIOS, "the embedded bench")?,
    };
    let levels: &[Level] = match args.durability {
        DurabilityChoice::Fsync => &[Level::Fsync],
        DurabilityChoice::Relaxed => &[Level::Relaxed],
        DurabilityChoice::Both => &[Level::Fsync, Level::Relaxed],
    };
    let root = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::Builder::new().prefix("onceq-bench-").tempdir_in(dir)?
        }
        None => tempfile::Builder::new().prefix("onceq-bench-").tempdir()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    let mut out = String::new();
    let _ = writeln!(out, "$ {command_line}");
    let _ = writeln!(
        out,
        "onceq {} · SQLite {} (bundled, WAL) · {} CPUs · payload {} B · data dir {} ({})",
        env!("CARGO_PKG_VERSION"),
        rusqlite::version(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.payload_bytes,
        root.path().display(),
        file_system_of(root.path()),
    );
    let _ = writeln!(
        out,
        "jobs/s = jobs / the scenario's wall time; p50, p99 = latency of one call (scenarios with several \
         kinds of call list each below); ratio = onceq jobs/s / floor jobs/s. {} round(s) per scenario, store and \
         floor taking turns: jobs/s and floor/s are medians, ratio the median of the rounds' ratios",
        plan.rounds
    );
    emit(&mut out);

    let started = Instant::now();
    for &level in levels {
        let bench = Bench { level, plan: &plan, root: root.path(), runtime: &runtime, serial: std::cell::Cell::new(0) };
        bench.run_level()?;
    }
    outln_lossy!("total time {:.0} s", started.elapsed().as_secs_f64());
    root.close()?;
    Ok(())
}

/// The file system a path lives on, from `/proc/mounts` (Linux); tmpfs makes fsync free, so it is
/// worth seeing next to the figures.
fn file_system_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "file system unknown".into();
    };
    let best = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = fields.next()?;
            let kind = fields.next()?;
            path.starts_with(mount_point).then_some((mount_point.len(), device, kind))
        })
        .max_by_key(|(len, _, _)| *len);
    match best {
        Some((_, device, "tmpfs")) => {
            format!("tmpfs on {device}: fsync costs nothing here, figures are not durable ones")
        }
        Some((_, device, kind)) => format!("{kind} on {device}"),
        None => "file system unknown".into(),
    }
}

/// One durability level's scenarios.
struct Bench<'a> {
    level: Level,
    plan: &'a Plan,
    root: &'a Path,
    runtime: &'a tokio::runtime::Runtime,
    /// Numbers each scenario's fresh directory.
    serial: std::cell::Cell<u32>,
}

/// A scenario's floor: how it was measured, and its jobs/s.
struct FloorFigure {
    what: String,
    jobs_per_s: f64,
}

/// One line of the report, with its per-call latency lines: the medians of its rounds.
struct Row {
    scenario: String,
    /// The store's round of median jobs/s.
    run: Run,
    /// onceq / floor of each round, in round order.
    ratios: Vec<f64>,
    floor: Option<FloorFigure>,
}

impl Bench<'_> {
    fn run_level(self) -> Result<(), BenchError> {
        let level = self.level;
        let plan = self.plan;
        let mut out = String::new();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "durability {} ({}); floor = raw rusqlite, synchronous={}, the store's other PRAGMAs, one connection",
            level.name(),
            level.promise(),
            level.synchronous()
        );
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>10} {:>9} {:>9} {:>11} {:>6}  floor",
            "scenario", "jobs", "jobs/s", "p50 ms", "p99 ms", "floor/s", "ratio"
        );
        emit(&mut out);

        let mut figures = Figures::default();
        let n = plan.jobs;
        // Lease+ack jobs/s with a small backlog, the yardstick of the big-backlog scenario.
        let mut small: Option<f64> = None;

        if plan.only.runs(Scenario::Enqueue1) {
            // Single enqueue, one producer: one commit (one fsync) per job, on both sides.
            let n = plan.single_jobs;
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::enqueue(&store, &queue, &payload, n, 1, 1, Keys::None).await
                    })
                },
                || self.floor(n, |conn, payload| floor::insert(conn, payload, n, 1)),
            )?;
            self.row(Row {
                scenario: "enqueue 1/call, 1 producer".into(),
                run,
                ratios,
                floor: Some(floor_figure(floor, "1 INSERT/txn")),
            });
        }

        if plan.only.runs(Scenario::EnqueueConcurrent) {
            // Single enqueue, 64 producers: group commit at work. The floor is a perfect group
            // commit: every transaction carries one job of each of the 64 producers.
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::enqueue(&store, &queue, &payload, n, 1, SINGLE_TASKS, Keys::None).await
                    })
                },
                || self.floor(n, |conn, payload| floor::insert(conn, payload, n, SINGLE_TASKS)),
            )?;
            self.row(Row {
                scenario: format!("enqueue 1/call, {SINGLE_TASKS} producers"),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("{SINGLE_TASKS} INSERTs/txn (perfect group commit)"))),
            });
        }

        if plan.only.runs(Scenario::EnqueueBatched) {
            // Batched enqueue.
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::enqueue(&store, &queue, &payload, n, BATCH, 1, Keys::None).await
                    })
                },
                || self.floor(n, |conn, payload| floor::insert(conn, payload, n, BATCH)),
            )?;
            let row = Row {
                scenario: format!("enqueue {BATCH}/call, 1 producer"),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("{BATCH} INSERTs/txn"))),
            };
            figures.batched.push(row.ratio_named());
            self.row(row);
        }

        if plan.only.runs(Scenario::EndToEndBatched) {
            // End-to-end, batched.
            let (producers, workers) = (scenarios::END_TO_END_BATCHED_PRODUCERS, scenarios::END_TO_END_BATCHED_WORKERS);
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::end_to_end(
                            &store,
                            &queue,
                            &payload,
                            n,
                            Shape { per_call: BATCH, producers, workers, keys: Keys::None },
                        )
                        .await
                    })
                },
                || self.floor(n, |conn, payload| floor::end_to_end(conn, payload, n, BATCH)),
            )?;
            let row = Row {
                scenario: format!("end-to-end {BATCH}/call, {producers} producers + {workers} workers"),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("pipelined, {BATCH} jobs/txn"))),
            };
            figures.batched.push(row.ratio_named());
            self.row(row);
        }

        if plan.only.runs(Scenario::EndToEndSingle) {
            // End-to-end, single jobs.
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::end_to_end(
                            &store,
                            &queue,
                            &payload,
                            n,
                            Shape { per_call: 1, producers: SINGLE_TASKS, workers: SINGLE_TASKS, keys: Keys::None },
                        )
                        .await
                    })
                },
                || self.floor(n, |conn, payload| floor::end_to_end(conn, payload, n, SINGLE_TASKS)),
            )?;
            let row = Row {
                scenario: format!("end-to-end 1/call, {SINGLE_TASKS} producers + {SINGLE_TASKS} workers"),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("pipelined, {SINGLE_TASKS} jobs/txn (perfect group commit)"))),
            };
            figures.end_to_end_single = Some(row.jobs_per_s());
            self.row(row);
        }

        if plan.only.runs(Scenario::LeaseAckBatched) {
            // Lease throughput, small backlog: the queue holds only the jobs leased.
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::fill(&store, &queue, &payload, n, Keys::None).await?;
                        scenarios::lease_ack(&store, &queue, n, BATCH, 1).await
                    })
                },
                || {
                    self.floor(n, |conn, payload| {
                        floor::fill(conn, payload, n)?;
                        floor::lease_ack(conn, n, BATCH)
                    })
                },
            )?;
            let row = Row {
                scenario: format!("lease+ack {BATCH}/call, {} ready at start", thousands(n as f64)),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("UPDATE {BATCH} txn + DELETE {BATCH} txn"))),
            };
            figures.batched.push(row.ratio_named());
            small = Some(row.jobs_per_s());
            self.row(row);
        }

        // Lease throughput behind a big backlog.
        if plan.backlog > 0 && plan.only.runs(Scenario::LeaseAckBacklog) {
            let backlog = plan.backlog;
            let (run, floor, ratios) = rounds_of(
                self.plan.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        let started = Instant::now();
                        scenarios::fill(&store, &queue, &payload, backlog + n, Keys::None).await?;
                        progress(&format!(
                            "filled {} jobs in {:.1} s",
                            thousands((backlog + n) as f64),
                            started.elapsed().as_secs_f64()
                        ));
                        scenarios::lease_ack(&store, &queue, n, BATCH, 1).await
                    })
                },
                || {
                    self.floor(n, |conn, payload| {
                        floor::fill(conn, payload, backlog + n)?;
                        floor::lease_ack(conn, n, BATCH)
                    })
                },
            )?;
            let row = Row {
                scenario: format!("lease+ack {BATCH}/call, {} ready", thousands(backlog as f64)),
                run,
                ratios,
                floor: Some(floor_figure(floor, format!("the same, behind {} rows", thousands(backlog as f64)))),
            };
            figures.batched.push(row.ratio_named());
            figures.backlog = small.map(|small| (backlog, row.jobs_per_s() / small));
            self.row(row);
        }

        if plan.only.runs(Scenario::EndToEndOrdered) {
            // Ordered end-to-end beside unordered: what ordering per key costs.
            let (producers, workers) = (scenarios::END_TO_END_BATCHED_PRODUCERS, scenarios::END_TO_END_BATCHED_WORKERS);
            let e2e = |keys: Keys| {
                self.store(move |store, queue, payload| async move {
                    scenarios::end_to_end(
                        &store,
                        &queue,
                        &payload,
                        n,
                        Shape { per_call: BATCH, producers, workers, keys },
                    )
                    .await
                })
            };
            let (run, unordered, ratios) = rounds_of(
                self.plan.rounds,
                || e2e(Keys::Spread(ORDERED_KEYS)),
                || e2e(Keys::None).map(|r| jobs_per_s(&r)),
            )?;
            let row = Row {
                scenario: format!("end-to-end {BATCH}/call, per_key, {} keys", thousands(ORDERED_KEYS as f64)),
                run,
                ratios,
                floor: Some(floor_figure(unordered, "the same, unordered queue (the store, not SQLite)")),
            };
            figures.ordered = Some(row.ratio());
            self.row(row);
        }

        if plan.backlog > 0 && plan.only.runs(Scenario::LeaseAckOrderedBacklog) {
            // Leasing an ordered queue behind a big backlog: heads only, whatever waits behind.
            let backlog = plan.backlog;
            let keys = Keys::Spread(ORDERED_BACKLOG_KEYS);
            // Up to n jobs leased, each with a job behind it on both sides: the small run holds
            // a head per key and one job behind each leased head, the big one the backlog too.
            let leased = n.min(ORDERED_BACKLOG_KEYS);
            let small_held = ordered_small_backlog(leased);
            let lease = |held: u64| {
                self.store(move |store, queue, payload| async move {
                    scenarios::fill(&store, &queue, &payload, held, keys).await?;
                    scenarios::lease_ack(&store, &queue, leased, BATCH, 1).await
                })
            };
            let (run, small, ratios) =
                rounds_of(self.plan.rounds, || lease(backlog + n), || lease(small_held).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: format!(
                    "lease+ack {BATCH}/call, per_key, {} keys, {} jobs",
                    thousands(ORDERED_BACKLOG_KEYS as f64),
                    thousands((backlog + n) as f64)
                ),
                run,
                ratios,
                floor: Some(floor_figure(
                    small,
                    format!("the same keys, {} jobs (the store)", thousands(small_held as f64)),
                )),
            };
            figures.ordered_backlog = Some((backlog + n, row.ratio()));
            self.row(row);
        }

        if plan.only.runs(Scenario::PipelineStage) {
            // A consume → produce stage: its commit (ack 100, enqueue 100) beside a plain ack.
            let stage = |pipeline: bool| {
                self.store(move |store, queue, payload| async move {
                    scenarios::pipeline_or_plain(&store, &queue, &payload, n, pipeline).await
                })
            };
            let (run, plain, ratios) =
                rounds_of(self.plan.rounds, || stage(true), || stage(false).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: format!("pipeline stage: lease {BATCH}, commit (ack {BATCH} + enqueue {BATCH})"),
                run,
                ratios,
                floor: Some(floor_figure(plain, format!("plain lease+ack {BATCH}/call (the store)"))),
            };
            figures.pipeline = Some(row.ratio());
            self.row(row);
        }

        if plan.only.runs(Scenario::LeaseAckLimited) {
            // The limiter's cost: a rate limit that never binds, beside no limit.
            let side = |limited: bool| {
                self.store(move |store, queue, payload| async move {
                    scenarios::limited_or_plain(&store, &queue, &payload, n, limited).await
                })
            };
            let (run, plain, ratios) =
                rounds_of(self.plan.rounds, || side(true), || side(false).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: scenarios::limited_scenario(),
                run,
                ratios,
                floor: Some(floor_figure(plain, scenarios::LIMITED_YARDSTICK)),
            };
            figures.limited = Some(row.ratio());
            self.row(row);
        }

        if plan.only.runs(Scenario::DurabilityMixed) {
            self.durability_mixed()?;
        }

        figures.print(level);
        Ok(())
    }

    /// Per-queue durability (docs/design.md, "Per-queue durability"): an `fsync` queue's
    /// end-to-end batched figure beside a busy `relaxed` queue, against the fsync queue alone in
    /// the same run (target ≥ 90%), and a relaxed queue's figure against the relaxed floor (raw
    /// SQLite with `synchronous=NORMAL`, whatever the level). The queues set their durability
    /// themselves, so the figures do not depend on the store's.
    ///
    /// The neighbour that the target is judged with is offered a fixed
    /// [`NEIGHBOUR_PACED_JOBS_PER_S`](scenarios::NEIGHBOUR_PACED_JOBS_PER_S): beside it the fsync
    /// queue keeps what the neighbour's own work leaves, unless mixing durabilities costs more
    /// (a relaxed reply held for an fsync, an fsync per relaxed commit). A second row runs the
    /// neighbour unbounded: one writer thread serves both queues, so the fsync queue then keeps
    /// only a share, and what is judged is the two queues' jobs together against the fsync
    /// queue alone (the writer's capacity kept, target ≥ 90%).
    fn durability_mixed(&self) -> Result<(), BenchError> {
        use scenarios::{Neighbour, NEIGHBOUR_PACED_JOBS_PER_S};
        let n = self.plan.jobs;
        let neighbour_rates = std::cell::RefCell::new(Vec::new());
        let side = |neighbour: Neighbour| {
            let rates = &neighbour_rates;
            self.store(move |store, queue, payload| async move {
                let (run, rate) = scenarios::fsync_beside_relaxed(&store, &queue, &payload, n, neighbour).await?;
                if neighbour != Neighbour::None {
                    rates.borrow_mut().push(rate);
                }
                Ok(run)
            })
        };
        let alone = || side(Neighbour::None).map(|r| jobs_per_s(&r));
        let paced = Neighbour::Paced(NEIGHBOUR_PACED_JOBS_PER_S);
        let (run, alone_per_s, ratios) = rounds_of(self.plan.rounds, || side(paced), alone)?;
        let row = Row {
            scenario: format!(
                "fsync e2e {BATCH}/call beside relaxed {}/s",
                thousands(NEIGHBOUR_PACED_JOBS_PER_S as f64)
            ),
            run,
            ratios,
            floor: Some(floor_figure(alone_per_s, "the fsync queue alone (the store); target >= 90%")),
        };
        let ratio = row.ratio();
        self.row(row);
        let rates: Vec<String> = neighbour_rates.borrow().iter().map(|r| thousands(*r)).collect();
        let mut out = String::new();
        let _ = writeln!(out, "{:<44} relaxed neighbour jobs/s by round: {}", "", rates.join(", "));
        let verdict = if ratio >= 0.9 { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "target: fsync queue beside a busy relaxed queue >= 90% of it alone: {:.0}%, {verdict}",
            100.0 * ratio
        );
        emit(&mut out);

        neighbour_rates.borrow_mut().clear();
        let (run, alone_per_s, ratios) = rounds_of(self.plan.rounds, || side(Neighbour::Unbounded), alone)?;
        let rates = neighbour_rates.borrow().clone();
        // The two queues together, round by round: the fsync queue's jobs/s plus the neighbour's.
        let together: Vec<f64> = ratios.iter().zip(&rates).map(|(r, rate)| r + rate / alone_per_s).collect();
        let row = Row {
            scenario: format!("fsync e2e {BATCH}/call beside unbounded relaxed"),
            run,
            ratios,
            floor: Some(floor_figure(alone_per_s, "the fsync queue alone (the store)")),
        };
        self.row(row);
        let together_ratio = median(together.clone());
        let mut out = String::new();
        let shown: Vec<String> = rates.iter().map(|r| thousands(*r)).collect();
        let _ = writeln!(out, "{:<44} relaxed neighbour jobs/s by round: {}", "", shown.join(", "));
        let each: Vec<String> = together.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect();
        let verdict = if together_ratio >= 0.9 { "met" } else { "MISSED" };
        let _ = writeln!(
            out,
            "target: both queues' jobs/s together >= 90% of the fsync queue alone: {:.0}% (rounds {}), {verdict}",
            100.0 * together_ratio,
            each.join(" ")
        );
        emit(&mut out);

        let (run, floor, ratios) = rounds_of(
            self.plan.rounds,
            || {
                self.store(|store, queue, payload| async move {
                    scenarios::relaxed_end_to_end(&store, &queue, &payload, n).await
                })
            },
            || {
                self.floor_at(n, Level::Relaxed.synchronous(), |conn, payload| {
                    floor::end_to_end(conn, payload, n, BATCH)
                })
            },
        )?;
        self.row(Row {
            scenario: format!("relaxed queue e2e {BATCH}/call"),
            run,
            ratios,
            floor: Some(floor_figure(floor, format!("pipelined, {BATCH} jobs/txn, synchronous=NORMAL"))),
        });
        Ok(())
    }

    /// A fresh directory for one side of one scenario.
    fn fresh_dir(&self, side: &str) -> Result<PathBuf, BenchError> {
        self.serial.set(self.serial.get() + 1);
        let dir = self.root.join(format!("{}-{:02}-{side}", self.level.name(), self.serial.get()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Runs `scenario` on a fresh store, then closes the store and removes its files.
    fn store<F, Fut>(&self, scenario: F) -> Result<Run, BenchError>
    where
        F: FnOnce(SqliteStore, QueueName, std::sync::Arc<[u8]>) -> Fut,
        Fut: std::future::Future<Output = Result<Run, BenchError>>,
    {
        let dir = self.fresh_dir("onceq")?;
        let store = SqliteStore::open(SqliteOptions::new(&dir).durability(self.level.durability()))?;
        let queue = QueueName::new("bench")?;
        let payload: std::sync::Arc<[u8]> = self.plan.payload.clone().into();
        let run = self.runtime.block_on(async {
            let run = scenario(store.clone(), queue, payload).await;
            store.close().await;
            run
        })?;
        std::fs::remove_dir_all(&dir)?;
        Ok(run)
    }

    /// Runs a floor measurement of `jobs` jobs on a fresh raw SQLite database; returns its jobs/s.
    fn floor<F>(&self, jobs: u64, measure: F) -> Result<f64, BenchError>
    where
        F: FnOnce(&mut rusqlite::Connection, &[u8]) -> Result<Duration, BenchError>,
    {
        self.floor_at(jobs, self.level.synchronous(), measure)
    }

    /// [`Bench::floor`] with this `PRAGMA synchronous` rather than the level's.
    fn floor_at<F>(&self, jobs: u64, synchronous: &str, measure: F) -> Result<f64, BenchError>
    where
        F: FnOnce(&mut rusqlite::Connection, &[u8]) -> Result<Duration, BenchError>,
    {
        let dir = self.fresh_dir("floor")?;
        let mut conn = floor::open(&dir, synchronous)?;
        let elapsed = measure(&mut conn, &self.plan.payload)?;
        drop(conn);
        std::fs::remove_dir_all(&dir)?;
        Ok(jobs as f64 / elapsed.as_secs_f64().max(1e-9))
    }

    fn row(&self, row: Row) {
        let mut out = String::new();
        let (p50, p99) = one_kind_latencies(&row.run);
        let (floor_per_s, ratio, what) = match &row.floor {
            Some(floor) => (thousands(floor.jobs_per_s), format!("{:.0}%", 100.0 * row.ratio()), floor.what.clone()),
            None => ("-".into(), "-".into(), String::new()),
        };
        let _ = writeln!(
            out,
            "{:<44} {:>9} {:>10} {:>9} {:>9} {:>11} {:>6}  {what}",
            row.scenario,
            thousands(row.run.jobs as f64),
            thousands(row.jobs_per_s()),
            p50,
            p99,
            floor_per_s,
            ratio,
        );
        row_details(&mut out, 44, &row.ratios, &row.run);
        emit(&mut out);
    }
}

/// A floor's median jobs/s, with how it was measured.
fn floor_figure(jobs_per_s: f64, what: impl Into<String>) -> FloorFigure {
    FloorFigure { what: what.into(), jobs_per_s }
}

impl Row {
    fn jobs_per_s(&self) -> f64 {
        jobs_per_s(&self.run)
    }

    /// The median of the rounds' ratios.
    fn ratio(&self) -> f64 {
        median(self.ratios.clone())
    }

    fn ratio_named(&self) -> (String, f64) {
        (self.scenario.clone(), self.ratio())
    }
}

/// The figures the issue sets targets for, gathered while the rows print.
#[derive(Default)]
struct Figures {
    /// (scenario, onceq / floor) of every batched scenario.
    batched: Vec<(String, f64)>,
    /// jobs/s of end-to-end with single-job producers and workers.
    end_to_end_single: Option<f64>,
    /// (backlog, big-backlog lease rate / small-backlog lease rate).
    backlog: Option<(u64, f64)>,
    /// Ordered end-to-end jobs/s / unordered end-to-end jobs/s.
    ordered: Option<f64>,
    /// (jobs held, ordered lease rate behind them / with a small backlog of the same keys).
    ordered_backlog: Option<(u64, f64)>,
    /// Pipeline stage jobs/s / plain lease+ack jobs/s.
    pipeline: Option<f64>,
    /// Lease+ack jobs/s under a rate limit that never binds / without one.
    limited: Option<f64>,
}

impl Figures {
    fn print(&self, level: Level) {
        let mut out = String::new();
        let _ = writeln!(out, "targets ({}):", level.name());
        for (scenario, ratio) in &self.batched {
            let met = *ratio >= 0.70;
            target_line(&mut out, met, format_args!("batched ≥ 70% of its floor: {scenario}: {:.0}%", 100.0 * ratio));
        }
        if let Some(rate) = self.end_to_end_single {
            let what = format!("end-to-end 1/call with {SINGLE_TASKS}+{SINGLE_TASKS} tasks");
            rate_target(&mut out, &what, rate, 25_000.0);
        }
        match self.backlog {
            Some((backlog, ratio)) => {
                target_line(
                    &mut out,
                    ratio >= 0.80,
                    format_args!(
                        "lease+ack with {} ready within 20% of the small backlog: {:.0}% of it",
                        thousands(backlog as f64),
                        100.0 * ratio
                    ),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  skipped lease+ack behind a big backlog within 20% of the small one (it needs both lease-ack \
                     scenarios: not with --quick, --backlog 0, or an --only without both)"
                );
            }
        }
        if let Some(ratio) = self.ordered {
            target_line(
                &mut out,
                ratio >= 0.70,
                format_args!(
                    "ordered end-to-end ({} keys) ≥ 70% of unordered: {:.0}%",
                    thousands(ORDERED_KEYS as f64),
                    100.0 * ratio
                ),
            );
        }
        if let Some((held, ratio)) = self.ordered_backlog {
            target_line(
                &mut out,
                ratio >= 0.80,
                format_args!(
                    "ordered lease+ack ({} keys) behind {} jobs within 20% of a small backlog: {:.0}% of it",
                    thousands(ORDERED_BACKLOG_KEYS as f64),
                    thousands(held as f64),
                    100.0 * ratio
                ),
            );
        }
        if let Some(ratio) = self.pipeline {
            target_line(
                &mut out,
                ratio >= 0.80,
                format_args!(
                    "pipeline stage (commit of ack + enqueue) ≥ 80% of plain lease+ack: {:.0}%",
                    100.0 * ratio
                ),
            );
        }
        if let Some(ratio) = self.limited {
            report::limited_target(&mut out, ratio);
        }
        emit(&mut out);
    }
}
