//! `onceq bench --store postgres://...`: the PostgreSQL store's throughput beside a pgbench floor.
//!
//! Every scenario runs twice in the same run, on the same database: once through the seam on a
//! [`PgStore`] in a fresh schema (the generic `scenarios`), and once as `pgbench` running the
//! store's own statements (the very texts the store runs, from [`onceq_postgres::statements`],
//! with the same parameter shapes) against another fresh schema that a second `PgStore::connect` prepared, with
//! the same number of concurrent clients. Each figure's ratio is onceq / floor: what the store
//! keeps of what PostgreSQL allows for the same SQL. The floor leaves out only the store's Rust
//! side: binding, decoding rows, the pool, the tokio tasks.
//!
//! Each scenario runs `--rounds` times (default 3), store and floor taking turns, so that a
//! drift of a shared machine (its disk above all) hits both sides alike; the report gives the
//! medians and the median of the rounds' ratios.
//!
//! | scenario | onceq | floor (one pgbench transaction = one script run) |
//! |---|---|---|
//! | enqueue 100/call | 4 producers | enqueue of 100 into the known queue, 4 clients |
//! | lease+ack 100/call | 4 workers, the queue filled first (untimed) | apply due + lease 100 + ack 100, 4 clients, same fill |
//! | end-to-end 100/call | 4 producers + 4 workers at once | the five statements in one script, 8 clients |
//! | enqueue 1/call | 16 producers | enqueue of 1 into the known queue, 16 clients |
//! | lease+ack 1/call | 16 workers, the queue filled first | apply due + lease 1 + ack 1, 16 clients |
//!
//! Three scenarios have the store itself as their yardstick, in place of pgbench: end-to-end on
//! a `per_key` queue of 10,000 keys beside an unordered one, lease+ack behind 1,000,000 ordered
//! jobs beside a small backlog of the same keys, and a pipeline stage (lease 100, one commit
//! acking them and enqueuing 100 into the next queue) beside plain lease+ack of 100, 1 worker.
//!
//! pgbench cannot carry the rows a lease returns into the ack, so the floor's lease wraps the
//! store's lease statement in one more CTE that aggregates its ids and tokens into one row
//! (`\gset`), which the ack statement then takes as its arrays. Payloads travel as the store's
//! do: into every enqueue as a parameter (pgbench's `-D payloads=...`, a `bytea[]` sent as
//! text), and out of every lease (aggregated into that row); pgbench speaks PostgreSQL's text
//! format, sqlx the binary one. Every statement autocommits, as
//! on the store's pool, with the server's `synchronous_commit` (the run prints it); pgbench runs
//! in `-M prepared` mode, as sqlx prepares and caches the store's statements.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::{QueueConfig, QueueName};
use onceq_postgres::statements::HotStatement;
use onceq_postgres::{PgOptions, PgStore};

use super::error::BenchError;
use super::options::{
    ordered_small_backlog, payload, rounds, BenchArgs, Scenario, Selection, BATCH, ORDERED_BACKLOG_KEYS, ORDERED_KEYS,
};
use super::report::{emit, one_kind_latencies, progress, rate_target, row_details, target_line, thousands};
use super::scenarios::{self, Keys, Run, Shape};
use super::turns::{jobs_per_s, median, rounds_of};

/// Producers, and workers, of the batched scenarios.
const BATCHED_TASKS: u64 = 4;
/// Concurrent tasks of the per-job scenarios.
const SINGLE_TASKS: u64 = 16;
/// jobs/s end to end with batched calls (issue 5).
const TARGET_END_TO_END_BATCHED: f64 = 35_000.0;
/// jobs/s of batched enqueue (issue 5).
const TARGET_ENQUEUE_BATCHED: f64 = 80_000.0;
/// Least onceq / floor ratio (issue 5).
const TARGET_RATIO: f64 = 0.90;
/// The lease length of every lease, store and floor: far longer than any run.
const VISIBILITY_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// The bench queue, on both sides.
const QUEUE: &str = "bench";

/// The lease's result as one row that pgbench can `\gset`: the ids and tokens of the leased
/// jobs (for the ack), and their payloads and headers aggregated, so that the floor reads back
/// what the store's lease returns.
const LEASE_AGGREGATE: &str = "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') AS ids,
       coalesce(string_agg(encode(lease_token, 'hex'), ',' ORDER BY id), '') AS tokens,
       count(*) AS leased, array_agg(payload ORDER BY id) AS payloads, array_agg(headers ORDER BY id) AS headers
FROM leased";

/// The store's lease statement (`WITH ... UPDATE ... RETURNING ...`) with its `UPDATE` made the
/// CTE `leased` of [`LEASE_AGGREGATE`], since pgbench cannot carry rows between statements.
fn lease_aggregated(lease: &str) -> Result<String, BenchError> {
    let Some(update) = lease.rfind("\nUPDATE ") else {
        return Err(BenchError::Floor(format!(
            "the store's lease statement is no longer `WITH ... UPDATE ... RETURNING ...`; the floor cannot wrap it:\n{lease}"
        )));
    };
    let (with, update) = lease.split_at(update);
    Ok(format!("{},\nleased AS ({}\n)\n{LEASE_AGGREGATE}", with.trim_end(), update.trim_end()))
}

/// Refreshes the planner's statistics of the jobs table after a fill, on both sides.
///
/// A table that grew from empty to hundreds of thousands of rows within seconds still has the
/// statistics of an empty one until autovacuum's next analyze (up to a minute later), and the
/// lease's plan then sorts the whole ready set instead of walking the `jobs_ready` index: 45×
/// slower per lease of 100 on 200,000 rows (EXPLAIN ANALYZE: 292 ms against 6.4 ms). Whichever
/// side met autovacuum first would win by that, so both start from fresh statistics.
/// The last job id the schema's sequence handed out.
async fn last_job_id(store: &PgStore) -> Result<i64, BenchError> {
    let sql = format!("SELECT last_value FROM \"{}\".job_ids", store.schema());
    let (last,): (i64,) =
        sqlx::query_as(&sql).fetch_one(store.pool()).await.map_err(|e| BenchError::Floor(format!("{sql}: {e}")))?;
    Ok(last)
}

/// The bench queue's id and config as the database prints them.
async fn known_queue(store: &PgStore) -> Result<(i64, String), BenchError> {
    let sql = format!("SELECT id, config::text FROM \"{}\".queues WHERE name = $1", store.schema());
    sqlx::query_as(&sql).bind(QUEUE).fetch_one(store.pool()).await.map_err(|e| BenchError::Floor(format!("{sql}: {e}")))
}

/// Vacuums the tables a scenario's queue lived in, once the queue is deleted: the next run in
/// the schema (the other side of an ordered scenario, the next round, the next scenario) then
/// starts from tables that hold none of this run's dead rows, whether or not autovacuum has
/// come by (with it off, they stayed for good). Without it, the small ordered backlog ran right
/// after the big one had deleted 1,020,000 jobs, and its acks, through the jobs' indexes still
/// full of them, took 68 ms per 100 jobs instead of 2.5 ms (`--jobs 20000`, second round).
async fn vacuum(store: &PgStore) -> Result<(), BenchError> {
    for table in ["jobs", "ordering_keys"] {
        let sql = format!("VACUUM \"{}\".{table}", store.schema());
        sqlx::query(&sql).execute(store.pool()).await.map_err(|e| BenchError::Floor(format!("{sql}: {e}")))?;
    }
    Ok(())
}

async fn analyze(store: &PgStore) -> Result<(), BenchError> {
    let sql = format!("ANALYZE \"{}\".jobs", store.schema());
    sqlx::query(&sql).execute(store.pool()).await.map_err(|e| BenchError::Floor(format!("{sql}: {e}")))?;
    Ok(())
}

/// Where the floor's statements run: the floor's schema. The statements are the store's own
/// ([`onceq_postgres::statements`]), as a store on that schema runs them; the floor fills in
/// their parameters.
struct Target {
    schema: String,
    /// The queue's id and config as the database prints it, once the queue exists: what a
    /// store that has enqueued into it before knows of it.
    queue: Option<(i64, String)>,
}

impl Target {
    fn new(schema: &str) -> Self {
        Target { schema: schema.to_owned(), queue: None }
    }

    /// The store's `statement` on this schema.
    fn statement(&self, statement: HotStatement) -> Result<String, BenchError> {
        Ok(onceq_postgres::statements::hot_statement(&self.schema, statement)?)
    }

    /// `statement` with `params` in place of its `$n` (highest `n` first, so that `$1` does not
    /// eat `$10`), as one line of a pgbench script.
    fn sql(&self, statement: &str, params: &[(usize, String)]) -> String {
        let mut sql = statement.to_owned();
        let mut params = params.to_vec();
        params.sort_by_key(|p| std::cmp::Reverse(p.0));
        for (n, value) in params {
            sql = sql.replace(&format!("${n}"), &value);
        }
        format!("{};\n", sql.trim())
    }

    /// The enqueue of `per_call` jobs ready at once into a queue the store knows, as
    /// `job_enqueue` runs it: one statement, which reads the clock and checks the queue's id and
    /// config itself. The payloads come in as a parameter on every call, as the store's do: the
    /// variable `:payloads` (see [`payloads_define`]).
    fn enqueue_script(&self, per_call: u64) -> Result<String, BenchError> {
        let config = QueueConfig::default();
        let (queue_id, config_text) = self
            .queue
            .as_ref()
            .ok_or_else(|| BenchError::Floor("the floor's enqueue script needs its queue to exist first".into()))?;
        let n = format!("ARRAY[{per_call}]");
        let items = usize::try_from(per_call).map_err(|_| BenchError::Options(format!("{per_call} jobs per call")))?;
        Ok(self.sql(
            &self.statement(HotStatement::Enqueue { items })?,
            &[
                (1, "NULL".into()),
                (2, ":payloads::bytea[]".into()),
                (3, format!("array_fill(NULL::text, {n})")),
                (4, format!("array_fill(0, {n})")),
                (5, format!("array_fill(NULL::int8, {n})")),
                (6, format!("array_fill({}, {n})", config.max_attempts)),
                (7, format!("array_fill(NULL::text, {n})")),
                (8, format!("array_fill(false, {n})")),
                (9, queue_id.to_string()),
                (10, config.dedup_window_ms.to_string()),
                (11, format!("'{}'", config_text.replace('\'', "''"))),
                // The bench queue is not relaxed: its enqueues wait for the WAL's flush.
                (12, "false".into()),
            ],
        ))
    }

    /// Lease of `per_call` and the ack of what it got: due transitions, lease, ack, as
    /// `job_lease` and `job_ack` run them.
    fn lease_ack_script(&self, per_call: u64) -> Result<String, BenchError> {
        let max_jobs = u32::try_from(per_call).map_err(|_| BenchError::Options(format!("{per_call} jobs per call")))?;
        let mut script =
            self.sql(&self.statement(HotStatement::ApplyDue)?, &[(1, "NULL".into()), (2, format!("'{QUEUE}'"))]);
        script.push_str("\\gset d_\n");
        script.push_str(&self.sql(
            &lease_aggregated(&self.statement(HotStatement::Lease { max_jobs })?)?,
            &[
                (1, ":d_now::int8".into()),
                (2, ":d_id::int8".into()),
                (3, format!("ARRAY(SELECT decode(md5(random()::text), 'hex') FROM generate_series(1, {per_call}))")),
                (4, format!("(:d_now::int8 + {VISIBILITY_TIMEOUT_MS})")),
                (5, "false".into()),
            ],
        ));
        script.push_str("\\gset l_\n");
        script.push_str(&self.sql(
            &self.statement(HotStatement::Ack { items: max_jobs as usize })?,
            &[
                (1, "NULL".into()),
                (2, "string_to_array(:l_ids::text, ',')::int8[]".into()),
                (3, "ARRAY(SELECT decode(t, 'hex') FROM unnest(string_to_array(:l_tokens::text, ',')) t)".into()),
                // On the pool, as the store acks: relaxed if every job is of a relaxed queue.
                (4, "true".into()),
            ],
        ));
        Ok(script)
    }
}

/// pgbench's `-D payloads=...`: a `bytea[]` of `n` copies of `payload`, as text, which every
/// enqueue of the floor sends as its payloads parameter.
fn payloads_define(n: u64, payload: &[u8]) -> String {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let one = format!("\"\\\\x{hex}\"");
    let all: Vec<&str> = (0..n).map(|_| one.as_str()).collect();
    format!("payloads={{{}}}", all.join(","))
}

/// Linux's limit on one command-line argument (`MAX_ARG_STRLEN`, 32 pages of 4 KiB).
const ARG_BYTES_MAX: usize = 131_072;

/// Checks that a batch's payloads fit in pgbench's `-D payloads=...` argument.
fn payloads_fit(payload_bytes: usize) -> Result<(), BenchError> {
    let define = payloads_define(BATCH, &vec![0; payload_bytes]);
    if define.len() < ARG_BYTES_MAX {
        return Ok(());
    }
    let most = (ARG_BYTES_MAX / BATCH as usize).saturating_sub(8) / 2;
    Err(BenchError::Options(format!(
        "--payload-bytes {payload_bytes} is too big for --store: the pgbench floor takes a batch's {BATCH} payloads \
         as one command-line argument, which holds at most {ARG_BYTES_MAX} bytes; use at most {most}"
    )))
}

/// What `pgbench` printed that the report uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PgbenchResult {
    /// Transactions (script runs) per second, without connection time.
    pub tps: f64,
    /// Mean latency of one transaction, in ms, when printed.
    pub latency_ms: Option<f64>,
    /// Transactions processed.
    pub transactions: Option<u64>,
}

/// Parses pgbench's summary: `tps = N (without initial connection time)` (PostgreSQL 14+), or
/// `tps = N (excluding connections establishing)` (older), else the only `tps = N` line.
pub(crate) fn parse_pgbench(output: &str) -> Option<PgbenchResult> {
    let mut tps_any = None;
    let mut tps_best = None;
    let mut latency_ms = None;
    let mut transactions = None;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            if rest.contains("without initial connection time") || rest.contains("excluding connections") {
                tps_best = Some(value);
            } else {
                tps_any.get_or_insert(value);
            }
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            latency_ms = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ") {
            transactions = rest.split(['/', ' ']).next().and_then(|v| v.parse().ok());
        }
    }
    let tps = tps_best.or(tps_any)?;
    tps.is_finite().then_some(PgbenchResult { tps, latency_ms, transactions })
}

/// The `pgbench` to run: on `PATH`, or where Debian installs PostgreSQL's.
fn find_pgbench() -> Result<String, BenchError> {
    let works = |program: &str| Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if works("pgbench") {
        return Ok("pgbench".into());
    }
    for version in (12..=20).rev() {
        let path = format!("/usr/lib/postgresql/{version}/bin/pgbench");
        if Path::new(&path).exists() && works(&path) {
            return Ok(path);
        }
    }
    Err(BenchError::Floor(
        "pgbench not found (needed for the floor of `onceq bench --store postgres://...`): install it with \
         `apt-get install postgresql-client` (Debian, Ubuntu; or the `postgresql` package), \
         `dnf install postgresql`, or `brew install libpq`, and put it on PATH"
            .into(),
    ))
}

/// [`onceq_postgres::SESSION_SETTINGS`] as libpq's `PGOPTIONS`.
fn pgoptions() -> String {
    onceq_postgres::SESSION_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Dropping the run's two schemas, through pgbench (which needs no more than the URL).
#[derive(Clone)]
struct SchemaDrop {
    pgbench: String,
    url: String,
    /// Where the statement's script is written.
    dir: std::path::PathBuf,
    schemas: [String; 2],
}

impl SchemaDrop {
    fn run(&self) -> Result<(), BenchError> {
        let sql: String = self.schemas.iter().map(|s| format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE;\n")).collect();
        let file = self.dir.join("drop.sql");
        std::fs::write(&file, sql)?;
        let output = Command::new(&self.pgbench)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-n", "-t", "1", "-c", "1", "-f"])
            .arg(&file)
            .arg(&self.url)
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(BenchError::Floor(format!(
                "dropping the bench schemas {} failed: {}",
                self.schemas.join(" and "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// On Ctrl-C: drops the schemas (a run cut short would leave them behind), then exits 130.
    fn on_interrupt(self, runtime: &tokio::runtime::Runtime) {
        runtime.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress("interrupted: dropping the bench schemas");
                let dropped = tokio::task::spawn_blocking(move || {
                    let dropped = self.run();
                    let _ = std::fs::remove_dir_all(&self.dir);
                    dropped
                })
                .await;
                if let Ok(Err(error)) = dropped {
                    eprintln!("onceq bench: {error}");
                }
                std::process::exit(130);
            }
        });
    }
}

/// One pgbench run's settings.
struct PgbenchRun<'a> {
    pgbench: &'a str,
    url: &'a str,
    dir: &'a Path,
    name: &'a str,
    script: &'a str,
    /// A `-D name=value` for pgbench.
    define: &'a str,
    clients: u64,
    transactions_per_client: u64,
}

impl PgbenchRun<'_> {
    fn run(&self) -> Result<PgbenchResult, BenchError> {
        let file = self.dir.join(format!("{}.sql", self.name));
        std::fs::write(&file, self.script)?;
        let output = Command::new(self.pgbench)
            .args(["-n", "-M", "prepared", "-c", &self.clients.to_string(), "-j"])
            .arg(self.clients.min(2).to_string())
            .args(["-D", self.define])
            .args(["-t", &self.transactions_per_client.to_string(), "-f"])
            .arg(&file)
            .arg(self.url)
            // The store's session settings, so that both sides plan alike (a URL that sets
            // `options` itself overrides this for pgbench, as libpq does).
            .env("PGOPTIONS", pgoptions())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let failed = || {
            BenchError::Floor(format!(
                "pgbench {} failed ({}), script {}:\n{}{}",
                self.name,
                output.status,
                file.display(),
                stdout.trim(),
                stderr.lines().take(20).collect::<Vec<_>>().join("\n")
            ))
        };
        if !output.status.success() {
            return Err(failed());
        }
        let result = parse_pgbench(&stdout).ok_or_else(failed)?;
        let expected = self.clients * self.transactions_per_client;
        if result.transactions.is_some_and(|n| n != expected) {
            return Err(failed());
        }
        Ok(result)
    }
}

/// One line of the report: the median of its rounds.
struct Row {
    scenario: String,
    /// The store's round of median jobs/s.
    run: Run,
    /// The floor's median jobs/s.
    floor_jobs_per_s: f64,
    /// onceq / floor of each round, in round order.
    ratios: Vec<f64>,
    floor_what: String,
}

impl Row {
    fn jobs_per_s(&self) -> f64 {
        jobs_per_s(&self.run)
    }

    /// The median of the rounds' ratios.
    fn ratio(&self) -> f64 {
        median(self.ratios.clone())
    }
}

/// A run against one database.
struct PgBench<'a> {
    url: &'a str,
    pgbench: String,
    /// The schema the store's scenarios run in, and the one the floor runs in; both dropped.
    store_schema: String,
    floor_schema: String,
    dir: tempfile::TempDir,
    payload: Arc<[u8]>,
    runtime: tokio::runtime::Runtime,
    serial: std::cell::Cell<u32>,
    /// Rounds of every scenario (store, floor, store, floor, ...).
    rounds: u32,
    /// The scenarios to run.
    only: Selection,
}

/// Jobs behind the ordered big-backlog lease scenario of `--store`.
const ORDERED_BACKLOG: u64 = 1_000_000;

/// The scenarios of the PostgreSQL bench, in the order they run.
const PG_SCENARIOS: [Scenario; 9] = [
    Scenario::EnqueueBatched,
    Scenario::LeaseAckBatched,
    Scenario::EndToEndBatched,
    Scenario::EnqueueConcurrent,
    Scenario::LeaseAckSingle,
    Scenario::EndToEndOrdered,
    Scenario::LeaseAckOrderedBacklog,
    Scenario::PipelineStage,
    Scenario::LeaseAckLimited,
];

/// Runs the PostgreSQL scenarios against `url` and prints the report on stdout.
pub(super) fn run(args: &BenchArgs, url: &str, command_line: &str) -> Result<(), BenchError> {
    payloads_fit(args.payload_bytes)?;
    let pgbench = find_pgbench()?;
    let jobs = args.jobs.unwrap_or(if args.quick { 10_000 } else { 200_000 });
    let single_jobs = (jobs / 10).max(SINGLE_TASKS * 10);
    let tag: u32 = rand::random();
    let store_schema = args.pg_schema.clone().unwrap_or_else(|| format!("onceq_bench_{tag:08x}"));
    let floor_schema = format!("{}_floor", &store_schema[..store_schema.len().min(40)]);
    let bench = PgBench {
        url,
        pgbench,
        store_schema,
        floor_schema,
        dir: tempfile::Builder::new().prefix("onceq-pgbench-").tempdir()?,
        payload: payload(args.payload_bytes).into(),
        runtime: tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        serial: std::cell::Cell::new(0),
        rounds: rounds(args),
        only: Selection::new(&args.only, &PG_SCENARIOS, "the PostgreSQL bench (--store)")?,
    };
    bench.schema_drop().on_interrupt(&bench.runtime);
    let result = bench.report(jobs, single_jobs, args.payload_bytes, command_line);
    let dropped = bench.schema_drop().run();
    result.and(dropped)
}

impl PgBench<'_> {
    fn report(&self, jobs: u64, single_jobs: u64, payload_bytes: usize, command_line: &str) -> Result<(), BenchError> {
        let started = Instant::now();
        let mut out = String::new();
        let _ = writeln!(out, "$ {command_line}");
        let version = self.query_one("SHOW server_version").unwrap_or_else(|_| "?".into());
        let sync = self.query_one("SHOW synchronous_commit").unwrap_or_else(|_| "?".into());
        let pgbench_version = Command::new(&self.pgbench)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "onceq {} · PostgreSQL {version} (synchronous_commit={sync}) · {pgbench_version} · {} CPUs · payload {payload_bytes} B · schemas {} (onceq), {} (floor), dropped at the end",
            env!("CARGO_PKG_VERSION"),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            self.store_schema,
            self.floor_schema,
        );
        let _ = writeln!(
            out,
            "jobs/s = jobs / the scenario's wall time; p50, p99 = latency of one call; floor = pgbench running the \
             store's statements, same clients (tps × jobs per transaction); ratio = onceq / floor. {} round(s) per \
             scenario, store and floor taking turns: jobs/s and floor/s are medians, ratio the median of the \
             rounds' ratios",
            self.rounds
        );
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>10} {:>9} {:>9} {:>11} {:>6}  floor",
            "scenario", "jobs", "jobs/s", "p50 ms", "p99 ms", "floor/s", "ratio"
        );
        emit(&mut out);

        // (scenario, onceq / floor) of every row printed, for the targets.
        let mut rows_done: Vec<(String, f64)> = Vec::new();
        let batched = BATCHED_TASKS;
        let (mut enqueue_batched, mut end_to_end_batched) = (None, None);

        if self.only.runs(Scenario::EnqueueBatched) {
            // Batched enqueue.
            let (run, floor, ratios) = rounds_of(
                self.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::enqueue(&store, &queue, &payload, jobs, BATCH, batched, Keys::None).await
                    })
                },
                || self.floor(jobs, BATCH, batched, |t| t.enqueue_script(BATCH), 0),
            )?;
            let row = Row {
                scenario: format!("enqueue {BATCH}/call, {batched} producers"),
                run,
                floor_jobs_per_s: floor,
                ratios,
                floor_what: format!("enqueue {BATCH}, {batched} clients"),
            };
            enqueue_batched = Some(self.row(&row, &mut rows_done));
        }

        if self.only.runs(Scenario::LeaseAckBatched) {
            // Batched lease + ack on a prefilled queue.
            let (run, floor, ratios) = rounds_of(
                self.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::fill(&store, &queue, &payload, jobs, Keys::None).await?;
                        analyze(&store).await?;
                        scenarios::lease_ack(&store, &queue, jobs, BATCH, batched).await
                    })
                },
                || self.floor(jobs, BATCH, batched, |t| t.lease_ack_script(BATCH), jobs),
            )?;
            let row = Row {
                scenario: format!("lease+ack {BATCH}/call, {batched} workers"),
                run,
                floor_jobs_per_s: floor,
                ratios,
                floor_what: format!("due + lease {BATCH} + ack {BATCH}, {batched} clients"),
            };
            self.row(&row, &mut rows_done);
        }

        if self.only.runs(Scenario::EndToEndBatched) {
            // End-to-end, batched.
            // As many workers as producers here, unlike the embedded bench: on PostgreSQL more
            // workers contend for the same rows and cost more than the backlog they avoid
            // (back to back, 4 + 4 ran at 41,272 and 45,824 jobs/s, 4 + 8 at 39,337 and 36,938).
            let (producers, workers) = (batched, batched);
            let clients = 2 * batched;
            let (run, floor, ratios) = rounds_of(
                self.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::end_to_end(
                            &store,
                            &queue,
                            &payload,
                            jobs,
                            Shape { per_call: BATCH, producers, workers, keys: Keys::None },
                        )
                        .await
                    })
                },
                || {
                    self.floor(
                        jobs,
                        BATCH,
                        clients,
                        |t| Ok(format!("{}{}", t.enqueue_script(BATCH)?, t.lease_ack_script(BATCH)?)),
                        BATCH * clients,
                    )
                },
            )?;
            let row = Row {
                scenario: format!("end-to-end {BATCH}/call, {producers}+{workers} tasks"),
                run,
                floor_jobs_per_s: floor,
                ratios,
                floor_what: format!("enqueue + due + lease + ack, {BATCH} jobs, {clients} clients"),
            };
            end_to_end_batched = Some(self.row(&row, &mut rows_done));
        }

        // Per job: single enqueue, then single lease + ack, 16 concurrent tasks each.
        let n = single_jobs;
        if self.only.runs(Scenario::EnqueueConcurrent) {
            let (run, floor, ratios) = rounds_of(
                self.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::enqueue(&store, &queue, &payload, n, 1, SINGLE_TASKS, Keys::None).await
                    })
                },
                || self.floor(n, 1, SINGLE_TASKS, |t| t.enqueue_script(1), 0),
            )?;
            let row = Row {
                scenario: format!("enqueue 1/call, {SINGLE_TASKS} producers"),
                run,
                floor_jobs_per_s: floor,
                ratios,
                floor_what: format!("enqueue 1, {SINGLE_TASKS} clients"),
            };
            self.row(&row, &mut rows_done);
        }

        if self.only.runs(Scenario::LeaseAckSingle) {
            let (run, floor, ratios) = rounds_of(
                self.rounds,
                || {
                    self.store(|store, queue, payload| async move {
                        scenarios::fill(&store, &queue, &payload, n, Keys::None).await?;
                        analyze(&store).await?;
                        scenarios::lease_ack(&store, &queue, n, 1, SINGLE_TASKS).await
                    })
                },
                || self.floor(n, 1, SINGLE_TASKS, |t| t.lease_ack_script(1), n),
            )?;
            let row = Row {
                scenario: format!("lease+ack 1/call, {SINGLE_TASKS} workers"),
                run,
                floor_jobs_per_s: floor,
                ratios,
                floor_what: format!("due + lease 1 + ack 1, {SINGLE_TASKS} clients"),
            };
            self.row(&row, &mut rows_done);
        }

        // Ordering per key: the store against itself, ordered against unordered, and a big
        // ordered backlog against a small one (no pgbench floor: the yardstick is the store).
        let mut ordered_done: Vec<(String, f64)> = Vec::new();
        if self.only.runs(Scenario::EndToEndOrdered) {
            let keys = ORDERED_KEYS;
            let e2e = |keys: Keys| {
                self.store(move |store, queue, payload| async move {
                    scenarios::end_to_end(
                        &store,
                        &queue,
                        &payload,
                        jobs,
                        Shape { per_call: BATCH, producers: batched, workers: batched, keys },
                    )
                    .await
                })
            };
            let (run, unordered, ratios) =
                rounds_of(self.rounds, || e2e(Keys::Spread(keys)), || e2e(Keys::None).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: format!("end-to-end {BATCH}/call, per_key, {} keys", thousands(keys as f64)),
                run,
                floor_jobs_per_s: unordered,
                ratios,
                floor_what: "the same, unordered queue (the store, not pgbench)".into(),
            };
            self.row(&row, &mut ordered_done);
        }
        if self.only.runs(Scenario::LeaseAckOrderedBacklog) {
            let (keys, backlog) = (ORDERED_BACKLOG_KEYS, ORDERED_BACKLOG);
            let leased = jobs.min(keys);
            let lease = |held: u64| {
                self.store(move |store, queue, payload| async move {
                    scenarios::fill(&store, &queue, &payload, held, Keys::Spread(keys)).await?;
                    analyze(&store).await?;
                    scenarios::lease_ack(&store, &queue, leased, BATCH, 1).await
                })
            };
            let small_held = ordered_small_backlog(leased);
            let (run, small, ratios) =
                rounds_of(self.rounds, || lease(backlog + jobs), || lease(small_held).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: format!("lease+ack {BATCH}/call, per_key, {} jobs", thousands((backlog + jobs) as f64)),
                run,
                floor_jobs_per_s: small,
                ratios,
                floor_what: format!(
                    "the same {} keys, {} jobs (the store)",
                    thousands(keys as f64),
                    thousands(small_held as f64)
                ),
            };
            self.row(&row, &mut ordered_done);
        }

        // A consume → produce stage: its commit (ack 100, enqueue 100) beside a plain ack, the
        // store against itself.
        let mut pipeline_ratio = None;
        if self.only.runs(Scenario::PipelineStage) {
            let stage = |pipeline: bool| {
                self.store(move |store, queue, payload| async move {
                    scenarios::pipeline_or_plain(&store, &queue, &payload, jobs, pipeline).await
                })
            };
            let (run, plain, ratios) = rounds_of(self.rounds, || stage(true), || stage(false).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: format!("pipeline stage: lease {BATCH}, commit (ack {BATCH} + enqueue {BATCH})"),
                run,
                floor_jobs_per_s: plain,
                ratios,
                floor_what: format!("plain lease+ack {BATCH}/call, 1 worker (the store, not pgbench)"),
            };
            self.row(&row, &mut Vec::new());
            pipeline_ratio = Some(row.ratio());
        }

        // The limiter's cost: a rate limit that never binds, beside no limit, the store against
        // itself.
        let mut limited_ratio = None;
        if self.only.runs(Scenario::LeaseAckLimited) {
            let side = |limited: bool| {
                self.store(move |store, queue, payload| async move {
                    scenarios::limited_or_plain(&store, &queue, &payload, jobs, limited).await
                })
            };
            let (run, plain, ratios) = rounds_of(self.rounds, || side(true), || side(false).map(|r| jobs_per_s(&r)))?;
            let row = Row {
                scenario: scenarios::limited_scenario(),
                run,
                floor_jobs_per_s: plain,
                ratios,
                floor_what: scenarios::LIMITED_YARDSTICK.to_owned(),
            };
            self.row(&row, &mut Vec::new());
            limited_ratio = Some(row.ratio());
        }

        let _ = writeln!(out, "targets (issue 5, synchronous_commit={sync}):");
        if let Some(rate) = end_to_end_batched {
            rate_target(&mut out, "end-to-end batched", rate, TARGET_END_TO_END_BATCHED);
        }
        if let Some(rate) = enqueue_batched {
            rate_target(&mut out, "batched enqueue", rate, TARGET_ENQUEUE_BATCHED);
        }
        for (scenario, ratio) in &rows_done {
            target_line(
                &mut out,
                *ratio >= TARGET_RATIO,
                format_args!("≥ {:.0}% of the floor: {scenario}: {:.0}%", 100.0 * TARGET_RATIO, 100.0 * ratio),
            );
        }
        for (scenario, ratio) in &ordered_done {
            let need = if scenario.starts_with("end-to-end") { 0.70 } else { 0.80 };
            target_line(
                &mut out,
                *ratio >= need,
                format_args!("ordering: ≥ {:.0}% of its yardstick: {scenario}: {:.0}%", 100.0 * need, 100.0 * ratio),
            );
        }
        if let Some(ratio) = pipeline_ratio {
            target_line(
                &mut out,
                ratio >= 0.80,
                format_args!(
                    "pipeline stage (commit of ack + enqueue) ≥ 80% of plain lease+ack: {:.0}%",
                    100.0 * ratio
                ),
            );
        }
        if let Some(ratio) = limited_ratio {
            super::report::limited_target(&mut out, ratio);
        }
        let _ = writeln!(out, "total time {:.0} s", started.elapsed().as_secs_f64());
        emit(&mut out);
        Ok(())
    }

    /// Connects a store to `schema` (creating and migrating it).
    async fn connect(&self, schema: &str) -> Result<PgStore, BenchError> {
        let options = PgOptions::new(self.url)
            .schema(schema)
            .pool_size(u32::try_from(2 * SINGLE_TASKS + 4).unwrap_or(u32::MAX))
            .acquire_timeout(Duration::from_secs(30));
        Ok(PgStore::connect(options).await?)
    }

    /// Runs `scenario` on the store in the bench schema, on a fresh queue (deleted afterwards,
    /// and its tables vacuumed: see `vacuum`).
    fn store<F, Fut>(&self, scenario: F) -> Result<Run, BenchError>
    where
        F: FnOnce(PgStore, QueueName, Arc<[u8]>) -> Fut,
        Fut: std::future::Future<Output = Result<Run, BenchError>>,
    {
        use onceq_core::Store as _;
        self.runtime.block_on(async {
            let store = self.connect(&self.store_schema).await?;
            let queue = QueueName::new(QUEUE)?;
            let run = scenario(store.clone(), queue.clone(), self.payload.clone()).await;
            let deleted = store.queue_delete(&queue).await;
            let vacuumed = if deleted.is_ok() { vacuum(&store).await } else { Ok(()) };
            store.close().await;
            let run = run?;
            deleted?;
            vacuumed?;
            Ok(run)
        })
    }

    /// The floor: pgbench running `script(target)` with `clients` clients for `jobs` jobs at
    /// `per_txn` jobs per transaction, on the floor schema, its queue filled with `fill` jobs
    /// first (untimed, through the store). Returns jobs/s.
    fn floor(
        &self,
        jobs: u64,
        per_txn: u64,
        clients: u64,
        script: impl FnOnce(&Target) -> Result<String, BenchError>,
        fill: u64,
    ) -> Result<f64, BenchError> {
        use onceq_core::Store as _;
        let mut target = Target::new(&self.floor_schema);
        let transactions_per_client = jobs.div_ceil(per_txn).div_ceil(clients).max(1);
        // A lease floor's queue holds what its transactions lease, rounded up to whole ones.
        let fill = if fill >= jobs { transactions_per_client * clients * per_txn } else { fill };
        let store = self.runtime.block_on(async {
            let store = self.connect(&self.floor_schema).await?;
            let queue = QueueName::new(QUEUE)?;
            // The queue exists before the floor runs: the store creates it on first enqueue.
            scenarios::fill(&store, &queue, &self.payload, fill.max(1), Keys::None).await?;
            analyze(&store).await?;
            if fill == 0 {
                let leased = store
                    .job_lease(
                        &queue,
                        onceq_core::LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: 0 },
                    )
                    .await?;
                store.job_ack(&leased.iter().map(|j| j.lease()).collect::<Vec<_>>()).await?;
            }
            target.queue = Some(known_queue(&store).await?);
            Ok::<_, BenchError>(store)
        })?;
        let script = script(&target)?;
        // A script that enqueues must create every job it is counted for: one whose queue id or
        // config did not match would insert nothing, and its rate would mean nothing.
        let enqueues = script.contains(".job_ids");
        let ids_before = self.runtime.block_on(last_job_id(&store))?;
        progress(&format!("pgbench: {clients} clients × {transactions_per_client} transactions"));
        let name = format!("floor-{:02}", self.serial_next());
        let result = PgbenchRun {
            pgbench: &self.pgbench,
            url: self.url,
            dir: self.dir.path(),
            name: &name,
            script: &script,
            define: &payloads_define(per_txn, &self.payload),
            clients,
            transactions_per_client,
        }
        .run();
        let created = self.runtime.block_on(last_job_id(&store)).map(|last| last - ids_before);
        // The store stayed connected (listening on its channel, as the store's own does) while
        // pgbench ran; now the queue goes, and its dead rows with it (see `vacuum`), ready for
        // the next floor.
        self.runtime.block_on(async {
            let queue = QueueName::new(QUEUE)?;
            let deleted = store.queue_delete(&queue).await;
            let vacuumed = if deleted.is_ok() { vacuum(&store).await } else { Ok(()) };
            store.close().await;
            deleted.map(drop).map_err(BenchError::from)?;
            vacuumed
        })?;
        let (result, created) = (result?, created?);
        let expected = transactions_per_client * clients * per_txn;
        if enqueues && created < i64::try_from(expected).unwrap_or(i64::MAX) {
            return Err(BenchError::Check(format!(
                "the floor's enqueues created {created} of {expected} jobs: its script does not match the queue"
            )));
        }
        Ok(result.tps * per_txn as f64)
    }

    /// Numbers the floor scripts, kept in the temporary directory until the end of the run.
    fn serial_next(&self) -> u32 {
        self.serial.set(self.serial.get() + 1);
        self.serial.get()
    }

    /// One setting of the server, through `psql` when it is installed ("?" otherwise: pgbench
    /// cannot print a query's result).
    fn query_one(&self, sql: &str) -> Result<String, BenchError> {
        let output = Command::new("psql").args(["-X", "-A", "-t", "-c", sql]).arg(self.url).output()?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() && !text.is_empty() {
            Ok(text)
        } else {
            Err(BenchError::Floor(format!("psql -c {sql:?} failed")))
        }
    }

    /// How to drop the run's schemas.
    fn schema_drop(&self) -> SchemaDrop {
        SchemaDrop {
            pgbench: self.pgbench.clone(),
            url: self.url.to_owned(),
            dir: self.dir.path().to_owned(),
            schemas: [self.store_schema.clone(), self.floor_schema.clone()],
        }
    }

    /// Prints `row`, notes its ratio in `done` for the targets, and returns its jobs/s.
    fn row(&self, row: &Row, done: &mut Vec<(String, f64)>) -> f64 {
        done.push((row.scenario.clone(), row.ratio()));
        let mut out = String::new();
        let (p50, p99) = one_kind_latencies(&row.run);
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>10} {:>9} {:>9} {:>11} {:>6}  {}",
            row.scenario,
            thousands(row.run.jobs as f64),
            thousands(row.jobs_per_s()),
            p50,
            p99,
            thousands(row.floor_jobs_per_s),
            format!("{:.0}%", 100.0 * row.ratio()),
            row.floor_what,
        );
        row_details(&mut out, 40, &row.ratios, &row.run);
        emit(&mut out);
        row.jobs_per_s()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const PG15: &str = "pgbench (15.8 (Debian 15.8-0+deb12u1))
transaction type: /tmp/x/floor-01.sql
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
number of transactions per client: 500
number of transactions actually processed: 2000/2000
number of failed transactions: 0 (0.000%)
latency average = 4.321 ms
initial connection time = 6.543 ms
tps = 925.720361 (without initial connection time)
";

    const PG13: &str = "number of transactions actually processed: 100/100
latency average = 1.000 ms
tps = 990.000000 (including connections establishing)
tps = 1000.500000 (excluding connections establishing)
";

    #[test]
    fn parses_pgbench_15_output() {
        let r = parse_pgbench(PG15).unwrap();
        assert!((r.tps - 925.720361).abs() < 1e-9);
        assert_eq!(r.latency_ms, Some(4.321));
        assert_eq!(r.transactions, Some(2000));
    }

    #[test]
    fn prefers_tps_without_connection_time_in_older_output() {
        let r = parse_pgbench(PG13).unwrap();
        assert!((r.tps - 1000.5).abs() < 1e-9);
        assert_eq!(r.transactions, Some(100));
    }

    #[test]
    fn payloads_too_big_for_the_command_line_are_refused_up_front() {
        assert!(payloads_fit(100).is_ok());
        let most = (ARG_BYTES_MAX / BATCH as usize).saturating_sub(8) / 2;
        assert!(payloads_fit(most).is_ok(), "{most} bytes should fit");
        let refused = payloads_fit(1_000).unwrap_err().to_string();
        assert!(refused.contains("--payload-bytes 1000") && refused.contains(&format!("at most {most}")), "{refused}");
    }

    #[test]
    fn output_without_tps_is_none() {
        assert_eq!(parse_pgbench("pgbench: error: connection to server failed\n"), None);
        assert_eq!(parse_pgbench("tps = garbage (without initial connection time)\n"), None);
    }

    #[test]
    fn parameters_are_substituted_highest_first() {
        let t = Target::new("s1");
        let sql = t.sql("SELECT $1, $10, $2", &[(1, "a".into()), (10, "b".into()), (2, "c".into())]);
        assert_eq!(sql, "SELECT a, b, c;\n");
        assert_eq!(payloads_define(2, b"{}"), r#"payloads={"\\x7b7d","\\x7b7d"}"#);
    }

    #[test]
    fn the_floor_scripts_are_the_stores_statements_with_every_parameter_filled_in() {
        let mut t = Target::new("s1");
        assert!(t.enqueue_script(100).is_err(), "an enqueue script before the queue exists");
        t.queue = Some((7, r#"{"it's": 1}"#.into()));
        let script = t.enqueue_script(100).unwrap();
        assert!(script.contains(":payloads::bytea[]") && script.contains(r#"'{"it''s": 1}'"#), "{script}");
        assert!(script.contains("\"s1\".jobs") && script.contains("'onceq_s1'"), "{script}");
        assert!(script.contains("coalesce(NULL::int8, floor(extract(epoch FROM statement_timestamp())"), "{script}");
        assert!(!script.contains('$'), "{script}");
        let script = t.lease_ack_script(1).unwrap();
        assert!(!script.contains('$') && script.contains(":l_ids") && script.contains(":d_now"), "{script}");
        assert!(script.contains("LIMIT 1\n") && script.contains("ord) LIMIT 1)"), "{script}");
        assert!(script.contains("leased AS (\nUPDATE \"s1\".jobs j") && script.contains("FROM leased;"), "{script}");
        // Each statement of the store is in the script whole, but for its parameters.
        let lease = onceq_postgres::statements::hot_statement("s1", HotStatement::Lease { max_jobs: 1 }).unwrap();
        let update = &lease[lease.find("\nUPDATE").unwrap()..lease.find("$3").unwrap()];
        assert!(script.contains(update), "{script}");
    }

    #[test]
    fn a_lease_statement_of_another_shape_is_refused() {
        let refused = lease_aggregated("SELECT 1").unwrap_err().to_string();
        assert!(refused.contains("cannot wrap"), "{refused}");
    }
}
