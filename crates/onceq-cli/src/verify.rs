//! `onceq verify`: measure docs/design.md's service-tier matrix on a live target, with injected faults.
//!
//! Parses the options into an [`onceq_verify::target::TargetSpec`] and an
//! [`onceq_verify::workload::WorkloadConfig`], runs the workload (a progress bar on stderr), checks
//! each mode's history with [`onceq_verify::checker::check`], and prints the reports. What each
//! fault simulates is in [`onceq_verify::faults`]; the workload and the windows each mode guards
//! are in [`onceq_verify::workload`].
//!
//! With `--pipeline` it runs [`onceq_verify::workload::run_pipeline`] instead: both pipeline
//! stages side by side, checked with [`onceq_verify::pipeline::check`], in one table.
//!
//! Exit codes: 0 every mode kept its promise; 1 a mode broke its promise, or the run failed;
//! 2 bad options; 3 the target could not be reached.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use onceq_core::{DeliveryMode, Error};
use onceq_verify::checker::{check, Report};
use onceq_verify::faults::{FaultPlan, TargetKind};
use onceq_verify::pipeline::{self, Stage, StageReport};
use onceq_verify::target::{LedgerSpec, Target, TargetSpec};
use onceq_verify::workload::{self, ModeRun, Progress, StageRun, WorkloadConfig};

use crate::error::CliError;

/// The end of `onceq verify --help`.
const AFTER_HELP: &str = "\
Faults (--fault NAME=RATE, repeatable; --all-faults turns on every one that applies to the target):
  crash-after-effect     worker dies after the effect, before the ack (per delivery)     [0.02]
  crash-mid-handler      worker dies in the handler, before the effect (per delivery)    [0.02]
  crash-before-complete  worker dies between the effect and the idempotency record
                         (effectively_once; in --all-faults only on PostgreSQL, where the
                         effect and the record commit together)                          [0.01]
  stall                  worker stalls past its lease, then acks late (per delivery)     [0.005]
  drop-ack               the ack's response is lost (per delivery)                       [0.02]
  duplicate-enqueue      an enqueue is sent twice (per job)                              [0.02]
  server-kill            kill -9 and restart of the server (--managed-server; per second) [0.1]
  pg-drop                pg_terminate_backend of the run's connections (PostgreSQL; per second) [0.2]

Examples:
  onceq verify --all-faults                                    # embedded store, 20,000 jobs per mode
  onceq verify --managed-server --all-faults --jobs 200000
  onceq verify --store postgres://postgres@127.0.0.1:5432/test --all-faults --json
  onceq verify --fault crash-before-complete=0.05 --modes effectively_once   # watch it break
  onceq verify --ordered --all-faults                          # per-key order through every fault
  onceq verify --pipeline --all-faults                         # A -> B + C, committed vs enqueue-then-ack
  onceq verify --managed-server --modes effectively_once --all-faults \
      --worker-cmd 'python3 -m onceq.verify_worker'          # the Python worker (docs/verify.md)

Pipeline (--pipeline): queue A's inputs each become one job in B and one in C, by two stages side
by side under the same faults: `committed` (the worker's ctx.produce: outputs committed with the
ack of A, the commit sent again under the same commit id when its reply is lost) and
`enqueue-then-ack` (the handler enqueues B and C, then the worker acks A). No idempotency store,
no dedup id on outputs. Downstream consumers drain B and C. Per input: outputs missing (acked
without its B or C), outputs duplicated (a second B or C job; the same job redelivered is not
one), inputs lost. The faults, per stage:
  crash-mid-handler      dies before the handler: nothing produced or sent, in both
  crash-after-effect     dies after the handler, before the commit (committed: the outputs die
                         with it) or the ack (enqueue-then-ack: B and C stay, and are made again)
  stall                  the late commit is refused whole; the late ack is refused, B and C stay
  drop-ack               the commit's (first) reply or the ack's reply is lost after it applied;
                         the runtime sends the commit again and the target replays it
  duplicate-enqueue      an input batch sent twice: each copy is an input of its own
  server-kill, pg-drop   calls in flight end unknown: a commit is sent again (replayed if it
                         applied); a failed output enqueue retries the input
Exit 1 when committed has any output missing or duplicated, or any input lost (or either stage
loses or misses outputs); enqueue-then-ack's duplicates are the expected contrast.

Exit codes: 0 every mode kept its promise; 1 a mode broke its promise (or the run failed);
2 bad options; 3 the target could not be reached.";

/// Options of `onceq verify`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct VerifyArgs {
    /// The store to drive: `embedded` (in-process, the default) or a PostgreSQL URL
    /// (`postgres://user@host:port/database`, driven directly).
    #[arg(long, value_name = "embedded|URL", conflicts_with_all = ["server", "managed_server"])]
    pub store: Option<String>,
    /// Data directory of the embedded store [default: a temporary directory, removed at the end].
    #[arg(long, value_name = "DIR", conflicts_with_all = ["server", "managed_server"])]
    pub data_dir: Option<PathBuf>,
    /// Drive the onceq server at this URL over HTTP (its store and idempotency store).
    #[arg(long, value_name = "URL", conflicts_with = "managed_server")]
    pub server: Option<String>,
    /// Bearer token for --server when its auth is on (needs produce, consume and admin on `verify.*`).
    #[arg(long, value_name = "TOKEN", env = "ONCEQ_TOKEN", hide_env_values = true, requires = "server")]
    pub token: Option<String>,
    /// Start an `onceq serve` (embedded store, temporary data directory, free port) and drive it;
    /// the server-kill fault kills it with SIGKILL and restarts it.
    #[arg(long)]
    pub managed_server: bool,
    /// PostgreSQL schema to use with --store postgres://... [default: a fresh one, dropped at the end].
    #[arg(long, value_name = "SCHEMA")]
    pub pg_schema: Option<String>,
    /// Keep the fresh PostgreSQL schema at the end (to look at the jobs and the ledger).
    #[arg(long)]
    pub keep_schema: bool,
    /// SQLite ledger file for the embedded and server targets [default: in a temporary directory].
    /// With PostgreSQL the ledger is the table `verify_effects` in the schema.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Delivery modes to run, one after the other, each on a queue of its own.
    #[arg(long, value_delimiter = ',', default_value = "at_most_once,at_least_once,effectively_once",
          value_parser = parse_mode)]
    pub modes: Vec<DeliveryMode>,
    /// Jobs (distinct values) per mode.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub jobs: u64,
    /// Producer tasks.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub producers: u32,
    /// Worker tasks (each runs the jobs of its leased batch concurrently); a --pipeline run's
    /// two stages share them (half each, rounded up).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub workers: u32,
    /// Jobs per enqueue call.
    #[arg(long, default_value_t = 100)]
    pub enqueue_batch: u32,
    /// Most jobs per lease call.
    #[arg(long, default_value_t = 32)]
    pub lease_batch: u32,
    /// Visibility timeout of the queues and leases, ms. Short, so that a run drains quickly.
    #[arg(long, default_value_t = 1_500)]
    pub visibility_timeout_ms: u64,
    /// Max attempts of the queues: a job whose leases all end in a fault this often goes dead.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// How long an effectively_once claim on an idempotency key lasts, ms: above the visibility
    /// timeout and above the longest outage of the idempotency store (a worker that applied an
    /// effect keeps trying to record it until 1 s before its claim ends); a crashed holder blocks
    /// its key this long.
    #[arg(long, default_value_t = 10_000)]
    pub claim_ttl_ms: u64,
    /// Inject this fault at this rate (0 to 1): NAME=RATE, or NAME for its default rate. Repeatable.
    #[arg(long = "fault", value_name = "NAME=RATE")]
    pub faults: Vec<String>,
    /// Turn on every fault that applies to the target at its default rate (--fault overrides a rate).
    #[arg(long)]
    pub all_faults: bool,
    /// Seed of the fault schedule [default: random, printed]: the same seed injects the same
    /// faults into the same deliveries.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Longest wait, in seconds, for a mode's queue to drain after its producers are done; what
    /// is still missing then is reported as lost.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub drain_timeout_s: u64,
    /// Print the reports as JSON on stdout (the run's settings and fault counts go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write each mode's history as JSON lines to DIR/<mode>.jsonl, to check again or inspect (a
    /// --pipeline run writes each stage's as one JSON document, DIR/pipeline-<stage>.json, to inspect).
    #[arg(long, value_name = "DIR")]
    pub history_out: Option<PathBuf>,
    /// Run nothing: check histories written by --history-out (one file per mode) again, print
    /// their reports (table, or --json) and exit as a run would (1 when a promise is broken).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["store", "server", "managed_server", "history_out"])]
    pub check: Vec<PathBuf>,
    /// Leave each mode's queue (and its dead letters) on the target; by default verify deletes
    /// it once read.
    #[arg(long)]
    pub keep_queues: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// An ordered run: the queues are `per_key` and every job carries one of --ordered-keys
    /// ordering keys; the reports add per-key order (order_violations) and one job of a key in
    /// flight at a time (concurrent_key_deliveries), under the same faults.
    #[arg(long)]
    pub ordered: bool,
    /// How many ordering keys an --ordered run spreads its jobs over. Fewer keys mean longer
    /// per-key queues, so a slower drain under faults (each stalled head holds its key for a
    /// visibility timeout).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000), requires = "ordered")]
    pub ordered_keys: u64,
    /// Runs the workers with a deliberately broken effectively-once gate, to prove that verify
    /// reports the duplicate effects it causes. For onceq's own tests.
    #[arg(long, hide = true)]
    pub break_gate_for_tests: bool,
    /// A pipeline run: each input in queue A becomes one job in B and one in C, by a stage that
    /// commits its outputs with the ack of A beside one that enqueues them and then acks, under
    /// the same faults; one table of outputs missing and duplicated per stage (below). --modes
    /// does not apply.
    #[arg(long, conflicts_with_all = ["ordered", "check", "break_gate_for_tests"])]
    pub pipeline: bool,
    /// Runs the --pipeline committed stage with its commit broken on purpose (the handler
    /// enqueues the outputs outside it), to prove that verify reports the duplicates. For
    /// onceq's own tests.
    #[arg(long, hide = true, requires = "pipeline")]
    pub break_commit_for_tests: bool,
    /// Run the workers as --workers processes of this command (run by `sh -c`) instead of the
    /// Rust worker: a worker of another language speaking the protocol of docs/verify.md, e.g.
    /// `python3 -m onceq.verify_worker` or `node clients/node/dist/verify-worker.js`. Each process
    /// gets its own recording API (ONCEQ_URL), so the same faults and checks apply, and runs
    /// --lease-batch handlers at once (a crash ends every delivery of its process: keep it small).
    #[arg(long, value_name = "CMD", conflicts_with_all = ["pipeline", "ordered", "check"])]
    pub worker_cmd: Option<String>,
}

fn parse_mode(text: &str) -> Result<DeliveryMode, String> {
    text.trim().parse::<DeliveryMode>().map_err(|e| e.to_string())
}

fn usage(error: impl std::fmt::Display) -> CliError {
    CliError::Usage(error.to_string())
}

fn from_store(error: Error) -> CliError {
    match error {
        Error::InvalidRequest(m) => CliError::Usage(m),
        Error::Unavailable(m) => CliError::Unavailable(m),
        other => CliError::Failed(other.to_string()),
    }
}

/// The target and workload the options describe.
pub fn plan(args: &VerifyArgs) -> Result<(TargetSpec, WorkloadConfig), CliError> {
    let spec = if let Some(url) = &args.server {
        // An empty token (`--token "$T"` with T unset) means none, as for the operator commands.
        TargetSpec::Server { url: url.clone(), token: args.token.clone().filter(|token| !token.is_empty()) }
    } else if args.managed_server {
        let binary =
            std::env::current_exe().map_err(|e| CliError::Failed(format!("cannot find the onceq binary: {e}")))?;
        TargetSpec::ManagedServer { binary }
    } else {
        match args.store.as_deref() {
            None | Some("embedded") => TargetSpec::Embedded { data_dir: args.data_dir.clone() },
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if args.data_dir.is_some() {
                    return Err(usage("--data-dir is for the embedded store; PostgreSQL keeps its data itself"));
                }
                TargetSpec::Postgres {
                    url: url.to_owned(),
                    schema: args.pg_schema.clone(),
                    keep_schema: args.keep_schema,
                }
            }
            Some(other) => return Err(usage(format!("--store {other:?}: use `embedded` or a postgres:// URL"))),
        }
    };
    let is_pg = matches!(spec, TargetSpec::Postgres { .. });
    if !is_pg && (args.pg_schema.is_some() || args.keep_schema) {
        return Err(usage("--pg-schema and --keep-schema need --store postgres://..."));
    }
    if is_pg && args.ledger.is_some() {
        return Err(usage(
            "--ledger is a SQLite file for the embedded and server targets; PostgreSQL's ledger is a table",
        ));
    }
    let kind = match spec {
        TargetSpec::Embedded { .. } => TargetKind::Embedded,
        TargetSpec::Server { .. } => TargetKind::Server,
        TargetSpec::ManagedServer { .. } => TargetKind::ManagedServer,
        TargetSpec::Postgres { .. } => TargetKind::Postgres,
    };
    let mut faults = if args.all_faults { FaultPlan::all(kind) } else { FaultPlan::default() };
    for spec in &args.faults {
        faults.set(spec).map_err(|e| usage(e.to_string().trim_start_matches("invalid request: ")))?;
    }
    faults.check_target(kind).map_err(|e| usage(e.to_string().trim_start_matches("invalid request: ")))?;
    let mut modes = Vec::new();
    for mode in &args.modes {
        if !modes.contains(mode) {
            modes.push(*mode);
        }
    }
    let config = WorkloadConfig {
        modes,
        jobs: args.jobs,
        producers: args.producers,
        workers: args.workers,
        enqueue_batch: args.enqueue_batch,
        lease_batch: args.lease_batch,
        visibility_timeout_ms: args.visibility_timeout_ms,
        max_attempts: args.max_attempts,
        claim_ttl_ms: args.claim_ttl_ms,
        drain_timeout_ms: args.drain_timeout_s * 1000,
        faults,
        seed: args.seed.unwrap_or_else(rand::random),
        keep_queues: args.keep_queues,
        broken_gate_for_tests: args.break_gate_for_tests,
        ordered_keys: args.ordered.then_some(args.ordered_keys),
        pipeline: args.pipeline,
        broken_commit_for_tests: args.break_commit_for_tests,
        external_worker: args.worker_cmd.clone(),
    };
    if args.worker_cmd.is_some() && is_pg {
        return Err(usage(
            "--worker-cmd drives the embedded store or a server (--server, --managed-server), not PostgreSQL directly",
        ));
    }
    config.validate().map_err(|e| usage(e.to_string().trim_start_matches("invalid request: ")))?;
    Ok((spec, config))
}

/// Checks recorded histories again (`--check`): no workload runs.
fn check_files(args: &VerifyArgs) -> Result<(), CliError> {
    let mut reports = Vec::with_capacity(args.check.len());
    for path in &args.check {
        let file = std::fs::File::open(path).map_err(|e| usage(format!("--check {}: {e}", path.display())))?;
        let history = onceq_verify::history::History::read_jsonl(std::io::BufReader::new(file))
            .map_err(|e| usage(format!("--check {}: not a verify history: {e}", path.display())))?;
        reports.push(check(&history));
    }
    if args.json {
        let json = onceq_verify::report::render_json(&reports)
            .map_err(|e| CliError::Failed(format!("cannot encode the reports: {e}")))?;
        outln_lossy!("{json}");
    } else {
        out_lossy!("{}", onceq_verify::report::render_table(&reports));
    }
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| !r.promise_kept())
        .map(|r| format!("{} ({})", r.mode.as_str(), r.violations.join("; ")))
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("promise broken: {}", broken.join(", "))))
    }
}

/// Runs `onceq verify`.
pub fn run(args: &VerifyArgs, command_line: &str) -> Result<(), CliError> {
    if !args.check.is_empty() {
        return check_files(args);
    }
    let (spec, config) = plan(args)?;
    if config.pipeline {
        return run_pipeline(args, command_line, &spec, &config);
    }
    if let Some(dir) = &args.history_out {
        std::fs::create_dir_all(dir)
            .map_err(|e| usage(format!("--history-out {}: cannot create the directory: {e}", dir.display())))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let ledger = LedgerSpec { path: args.ledger.clone() };
    let (target_description, ledger_description, runs) = runtime.block_on(async {
        let target = Target::open(&spec, &ledger).await.map_err(from_store)?;
        let description = (target.description.clone(), target.ledger.describe());
        let progress = Arc::new(Progress::default());
        let bar = progress_bar(!args.quiet && std::io::stderr().is_terminal(), &config);
        let ticker = tokio::spawn(tick(bar.clone(), progress.clone(), config.clone()));
        let runs = workload::run(&target, &config, progress).await;
        ticker.abort();
        bar.finish_and_clear();
        let closed = target.close().await;
        let runs = runs.map_err(from_store)?;
        closed.map_err(from_store)?;
        Ok::<_, CliError>((description.0, description.1, runs))
    })?;

    if let Some(dir) = &args.history_out {
        for run in &runs {
            let path = dir.join(format!("{}.jsonl", run.history.mode.as_str()));
            let file = std::fs::File::create(&path)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
            run.history.write_jsonl(file).map_err(|e| CliError::Failed(format!("writing {}: {e}", path.display())))?;
        }
    }
    let reports: Vec<Report> = runs.iter().map(|run| check(&run.history)).collect();
    let summary = summary(command_line, &target_description, &ledger_description, &config, &runs);
    if args.json {
        eprint!("{summary}");
        let json = onceq_verify::report::render_json(&reports)
            .map_err(|e| CliError::Failed(format!("cannot encode the reports: {e}")))?;
        outln_lossy!("{json}");
    } else {
        out_lossy!("{summary}");
        outln_lossy!();
        out_lossy!("{}", onceq_verify::report::render_table(&reports));
    }
    let broken: Vec<&Report> = reports.iter().filter(|r| !r.promise_kept()).collect();
    let undrained: Vec<&ModeRun> = runs.iter().filter(|r| !r.drained).collect();
    for run in &undrained {
        eprintln!(
            "onceq verify: the {} queue did not drain within {} s; what is missing is counted as lost",
            run.history.mode.as_str(),
            args.drain_timeout_s
        );
    }
    if broken.is_empty() {
        Ok(())
    } else {
        let modes: Vec<String> =
            broken.iter().map(|r| format!("{} ({})", r.mode.as_str(), r.violations.join("; "))).collect();
        Err(CliError::Failed(format!("promise broken: {}", modes.join(", "))))
    }
}

/// Runs `onceq verify --pipeline`: both stages in one run, one table.
fn run_pipeline(
    args: &VerifyArgs,
    command_line: &str,
    spec: &TargetSpec,
    config: &WorkloadConfig,
) -> Result<(), CliError> {
    if let Some(dir) = &args.history_out {
        std::fs::create_dir_all(dir)
            .map_err(|e| usage(format!("--history-out {}: cannot create the directory: {e}", dir.display())))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let ledger = LedgerSpec { path: args.ledger.clone() };
    let (target_description, runs) = runtime.block_on(async {
        let target = Target::open(spec, &ledger).await.map_err(from_store)?;
        let description = target.description.clone();
        let progress = Arc::new(Progress::default());
        // Both stages settle their inputs into one count.
        let mut shown = config.clone();
        shown.jobs = config.jobs.saturating_mul(Stage::ALL.len() as u64);
        shown.modes = vec![DeliveryMode::AtLeastOnce];
        let bar = progress_bar(!args.quiet && std::io::stderr().is_terminal(), &shown);
        let ticker = tokio::spawn(tick(bar.clone(), progress.clone(), shown));
        let runs = workload::run_pipeline(&target, config, progress).await;
        ticker.abort();
        bar.finish_and_clear();
        let closed = target.close().await;
        let runs = runs.map_err(from_store)?;
        closed.map_err(from_store)?;
        Ok::<_, CliError>((description, runs))
    })?;
    if let Some(dir) = &args.history_out {
        for run in &runs {
            let path = dir.join(format!("pipeline-{}.json", run.history.stage.name()));
            let json = serde_json::to_vec(&run.history)
                .map_err(|e| CliError::Failed(format!("cannot encode {}: {e}", path.display())))?;
            std::fs::write(&path, json)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    let reports: Vec<StageReport> = runs.iter().map(|run| pipeline::check(&run.history)).collect();
    let summary = pipeline_summary(command_line, &target_description, config, &runs);
    if args.json {
        eprint!("{summary}");
        let json = onceq_verify::report::render_pipeline_json(&reports)
            .map_err(|e| CliError::Failed(format!("cannot encode the reports: {e}")))?;
        outln_lossy!("{json}");
    } else {
        out_lossy!("{summary}");
        outln_lossy!();
        out_lossy!("{}", onceq_verify::report::render_pipeline_table(&reports));
    }
    if runs.iter().any(|run| !run.history.drained) {
        eprintln!(
            "onceq verify: the pipeline's queues did not drain within {} s; inputs still missing are counted as lost",
            args.drain_timeout_s
        );
    }
    let broken: Vec<String> = reports
        .iter()
        .filter(|r| !r.promise_kept())
        .map(|r| format!("{} ({})", r.stage.name(), r.violations.join("; ")))
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(CliError::Failed(format!("promise broken: {}", broken.join(", "))))
    }
}

/// What a pipeline run was, for the top of its report.
fn pipeline_summary(command_line: &str, target: &str, config: &WorkloadConfig, runs: &[StageRun]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "onceq verify: {command_line}");
    let _ = writeln!(out, "target: {target}; no idempotency store, no ledger (a stage's effects are its outputs)");
    let _ = writeln!(
        out,
        "inputs per stage: {}; per stage: producers {}, workers {} (lease batch {}); visibility timeout {} ms; \
         max attempts {}; seed {}",
        config.jobs,
        config.producers,
        workload::pipeline_workers_per_stage(config),
        config.lease_batch,
        config.visibility_timeout_ms,
        config.max_attempts,
        config.seed
    );
    let _ = writeln!(out, "faults: {}", config.faults.describe());
    for run in runs {
        let fired: Vec<String> = run.faults_fired.iter().map(|(f, n)| format!("{f}={n}")).collect();
        let _ = writeln!(
            out,
            "{}: queues {}.{{a,b,c}}, {:.1} s, {}; faults fired: {}",
            run.history.stage.name(),
            run.queue.trim_end_matches(".a"),
            run.elapsed_ms as f64 / 1000.0,
            if run.history.drained { "drained" } else { "NOT drained" },
            if fired.is_empty() { "none".to_owned() } else { fired.join(" ") }
        );
    }
    out
}

/// What was run, for the top of the report: the command, the target, the queues' settings and
/// the faults that fired.
fn summary(command_line: &str, target: &str, ledger: &str, config: &WorkloadConfig, runs: &[ModeRun]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "onceq verify: {command_line}");
    let _ = writeln!(out, "target: {target}; ledger: {ledger}");
    let _ = writeln!(
        out,
        "jobs per mode: {}; producers {}, workers {} (lease batch {}); visibility timeout {} ms; max attempts {}; \
         claim ttl {} ms; seed {}",
        config.jobs,
        config.producers,
        config.workers,
        config.lease_batch,
        config.visibility_timeout_ms,
        config.max_attempts,
        config.claim_ttl_ms,
        config.seed
    );
    let _ = writeln!(out, "faults: {}", config.faults.describe());
    match &config.external_worker {
        Some(command) => {
            let _ = writeln!(
                out,
                "worker: external, {} processes of `{command}` (concurrency {} each), each on a recording API",
                config.workers, config.lease_batch
            );
        }
        None => {
            let _ = writeln!(out, "worker: onceq_worker::Worker (Rust, in-process)");
        }
    }
    for run in runs {
        let fired: Vec<String> = run.faults_fired.iter().map(|(f, n)| format!("{f}={n}")).collect();
        let exits = match run.external_crash_exits {
            Some(n) => format!("; worker processes restarted after {n} crash exits"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "{}: queue {}, {:.1} s, {}; faults fired: {}{exits}",
            run.history.mode.as_str(),
            run.queue,
            run.elapsed_ms as f64 / 1000.0,
            if run.drained { "drained" } else { "NOT drained" },
            if fired.is_empty() { "none".to_owned() } else { fired.join(" ") }
        );
    }
    out
}

fn progress_bar(visible: bool, config: &WorkloadConfig) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(config.jobs), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix:>18} [{bar:30}] {pos}/{len} settled  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

async fn tick(bar: ProgressBar, progress: Arc<Progress>, config: WorkloadConfig) {
    loop {
        let index = progress.mode_index.load(Ordering::Relaxed) as usize;
        if let Some(mode) = index.checked_sub(1).and_then(|i| config.modes.get(i)) {
            bar.set_prefix(mode.as_str());
        }
        bar.set_position(progress.settled.load(Ordering::Relaxed).min(config.jobs));
        bar.set_message(format!(
            "enqueued {}  faults {}{}",
            progress.enqueued.load(Ordering::Relaxed),
            progress.faults.load(Ordering::Relaxed),
            if progress.draining.load(Ordering::Relaxed) { "  draining" } else { "" }
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> Result<VerifyArgs, clap::Error> {
        let mut full = vec!["onceq", "verify"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full)?.command {
            Command::Verify(args) => Ok(args),
            other => panic!("not verify: {other:?}"),
        }
    }

    #[test]
    fn options_become_a_plan() {
        let args = parse(&["--all-faults", "--fault", "stall=0.5", "--modes", "at_least_once", "--seed", "7"]).unwrap();
        let (spec, config) = plan(&args).unwrap();
        assert!(matches!(spec, TargetSpec::Embedded { data_dir: None }), "{spec:?}");
        assert_eq!(config.modes, vec![DeliveryMode::AtLeastOnce]);
        assert_eq!(config.seed, 7);
        assert_eq!(config.faults.rates.get(&onceq_verify::faults::Fault::Stall), Some(&0.5));
    }

    #[test]
    fn bad_options_are_clear_errors() {
        assert!(parse(&["--modes", "twice"]).is_err());
        assert!(parse(&["--server", "http://h:1", "--managed-server"]).is_err());
        let bad = |args: &[&str]| match plan(&parse(args).unwrap()) {
            Err(CliError::Usage(message)) => message,
            other => panic!("{args:?}: {other:?}"),
        };
        assert!(bad(&["--fault", "server-kill=0.1"]).contains("--managed-server"));
        assert!(bad(&["--fault", "pg-drop"]).contains("PostgreSQL"));
        assert!(bad(&["--fault", "nope"]).contains("unknown fault"));
        assert!(bad(&["--fault", "stall=3"]).contains("from 0 to 1"));
        assert!(bad(&["--store", "mysql://x"]).contains("postgres://"));
        assert!(bad(&["--pg-schema", "s"]).contains("--store postgres"));
        assert!(bad(&["--visibility-timeout-ms", "5000", "--claim-ttl-ms", "1000"]).contains("claim-ttl"));
    }

    #[test]
    fn pipeline_is_a_run_of_its_own() {
        let (_, config) =
            plan(&parse(&["--pipeline", "--all-faults", "--visibility-timeout-ms", "20000"]).unwrap()).unwrap();
        assert!(config.pipeline);
        assert_eq!(config.ordered_keys, None);
        assert_eq!(config.visibility_timeout_ms, 20_000, "no idempotency claim to outlast");
        for other in [&["--ordered"][..], &["--check", "x.jsonl"], &["--break-gate-for-tests"]] {
            let mut args = vec!["--pipeline"];
            args.extend_from_slice(other);
            assert!(parse(&args).is_err(), "{args:?}");
        }
    }
}
