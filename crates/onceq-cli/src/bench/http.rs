//! `onceq bench --server URL`: a running server's throughput and per-call latency over HTTP.
//!
//! The scenarios of the embedded bench that the HTTP API's targets are about, run through
//! [`onceq_client::Client`] (one pool of keep-alive connections shared by every task; each task
//! has at most one request in flight, so N tasks use N connections):
//!
//! | scenario | tasks | calls |
//! |---|---|---|
//! | enqueue 100/call | 4 producers | `POST /v1/queues/{q}/jobs` with 100 jobs |
//! | lease+ack 100/call | 4 workers, the queue filled first (untimed) | lease `max_jobs` 100, batch ack (`POST /v1/acks`) of 100 |
//! | end-to-end 100/call | 4 producers + 4 workers at once | the two above, workers long-polling |
//! | end-to-end 1/call | 16 producers + 16 workers at once | enqueue 1, lease 1 (long poll), ack 1 |
//!
//! Every scenario runs on a fresh queue `bench-<pid>-<n>`, deleted afterwards, and checks that
//! every job was enqueued once and leased and acked once. There is no raw floor here: the figure
//! includes the client, HTTP, the server and its store, on one machine, all sharing its cores.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use onceq_client::Client;
use onceq_core::{Error, QueueName, Store};

use super::error::BenchError;
use super::options::{payload, BenchArgs, BATCH};
use super::report::{emit, one_kind_latencies, progress, rate_target, row_details, thousands};
use super::scenarios::{self, Keys, Run, Shape};

/// Tasks of each side in the batched scenarios.
const BATCHED_TASKS: u64 = 4;
/// Producers, and workers, of the single-job scenario: concurrent keep-alive clients.
const SINGLE_TASKS: u64 = 16;
/// jobs/s the HTTP API must reach end to end with batched calls (issue 3).
const TARGET_BATCHED_JOBS_PER_S: f64 = 50_000.0;
/// jobs/s the HTTP API must reach end to end with single-job calls (issue 3).
const TARGET_SINGLE_JOBS_PER_S: f64 = 8_000.0;
/// A call that takes longer than this is a hung server; the run stops.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the HTTP scenarios against `server` and prints the report on stdout.
pub(super) fn run(args: &BenchArgs, server: &str, command_line: &str) -> Result<(), BenchError> {
    let jobs = args.jobs.unwrap_or(if args.quick { 5_000 } else { 200_000 });
    let client = Client::builder(server)
        .token(args.server_token.clone().filter(|token| !token.is_empty()))
        .timeout(CALL_TIMEOUT)
        .build()
        .map_err(|e| BenchError::Options(format!("--server {server}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        // Fail early, with the client's message, when the server is not there or refuses us.
        client.queue_list().await?;
        let bench = HttpBench { client, payload: payload(args.payload_bytes).into(), serial: 0 };
        bench.report(jobs, args.payload_bytes, command_line).await
    })
}

/// One run against one server.
struct HttpBench {
    client: Client,
    payload: std::sync::Arc<[u8]>,
    /// Numbers each scenario's fresh queue.
    serial: u32,
}

/// One line of the report.
struct Row {
    scenario: String,
    run: Run,
}

impl Row {
    fn jobs_per_s(&self) -> f64 {
        self.run.jobs as f64 / self.run.elapsed.as_secs_f64().max(1e-9)
    }
}

impl HttpBench {
    async fn report(mut self, jobs: u64, payload_bytes: usize, command_line: &str) -> Result<(), BenchError> {
        let mut out = String::new();
        let _ = writeln!(out, "$ {command_line}");
        let _ = writeln!(
            out,
            "onceq {} · over HTTP to {} through onceq-client (keep-alive) · {} CPUs shared by this client and \
             any server on this machine · payload {payload_bytes} B",
            env!("CARGO_PKG_VERSION"),
            self.client.base_url(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let _ = writeln!(
            out,
            "jobs/s = jobs / the scenario's wall time; p50, p99 = latency of one HTTP call as the client sees it"
        );
        let _ = writeln!(
            out,
            "no raw floor over HTTP: figures include client, HTTP, server and store; the store's own share is \
             what `onceq bench` (embedded) measures against raw SQLite. Durability is the server's own setting."
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<48} {:>9} {:>10} {:>9} {:>9}", "scenario", "jobs", "jobs/s", "p50 ms", "p99 ms");
        emit(&mut out);
        let started = Instant::now();

        let tasks = BATCHED_TASKS;
        let run = self
            .scenario(|client, queue, payload| async move {
                scenarios::enqueue(&client, &queue, &payload, jobs, BATCH, tasks, Keys::None).await
            })
            .await?;
        print_row(&Row { scenario: format!("enqueue {BATCH}/call, {tasks} producers"), run });

        let run = self
            .scenario(|client, queue, payload| async move {
                let filling = Instant::now();
                scenarios::fill(&client, &queue, &payload, jobs, Keys::None).await?;
                progress(&format!(
                    "filled {} jobs in {:.1} s",
                    thousands(jobs as f64),
                    filling.elapsed().as_secs_f64()
                ));
                scenarios::lease_ack(&client, &queue, jobs, BATCH, tasks).await
            })
            .await?;
        print_row(&Row {
            scenario: format!("lease+ack {BATCH}/call, {tasks} workers, {} ready", thousands(jobs as f64)),
            run,
        });

        let run = self
            .scenario(|client, queue, payload| async move {
                scenarios::end_to_end(
                    &client,
                    &queue,
                    &payload,
                    jobs,
                    Shape { per_call: BATCH, producers: tasks, workers: tasks, keys: Keys::None },
                )
                .await
            })
            .await?;
        let batched = Row { scenario: format!("end-to-end {BATCH}/call, {tasks} producers + {tasks} workers"), run };
        print_row(&batched);

        let run = self
            .scenario(|client, queue, payload| async move {
                scenarios::end_to_end(
                    &client,
                    &queue,
                    &payload,
                    jobs,
                    Shape { per_call: 1, producers: SINGLE_TASKS, workers: SINGLE_TASKS, keys: Keys::None },
                )
                .await
            })
            .await?;
        let single =
            Row { scenario: format!("end-to-end 1/call, {SINGLE_TASKS} producers + {SINGLE_TASKS} workers"), run };
        print_row(&single);

        let _ = writeln!(out);
        let _ = writeln!(out, "targets (HTTP API, client and server on one machine):");
        let batched_what = format!("end-to-end batched ({BATCH}/call)");
        rate_target(&mut out, &batched_what, batched.jobs_per_s(), TARGET_BATCHED_JOBS_PER_S);
        let single_what = format!("single-job requests, {SINGLE_TASKS} keep-alive clients each side");
        rate_target(&mut out, &single_what, single.jobs_per_s(), TARGET_SINGLE_JOBS_PER_S);
        let _ = writeln!(out, "total time {:.0} s", started.elapsed().as_secs_f64());
        emit(&mut out);
        Ok(())
    }

    /// Runs `scenario` on a fresh queue of the server, then deletes the queue.
    async fn scenario<F, Fut>(&mut self, scenario: F) -> Result<Run, BenchError>
    where
        F: FnOnce(Client, QueueName, std::sync::Arc<[u8]>) -> Fut,
        Fut: std::future::Future<Output = Result<Run, BenchError>>,
    {
        self.serial += 1;
        let queue = QueueName::new(format!("bench-{}-{}", std::process::id(), self.serial))?;
        match self.client.queue_get(&queue).await {
            Err(Error::QueueNotFound(_)) => {}
            Ok(_) => return Err(BenchError::Check(format!("queue {queue} already exists on the server"))),
            Err(e) => return Err(e.into()),
        }
        let run = scenario(self.client.clone(), queue.clone(), self.payload.clone()).await;
        // Delete it even when the scenario failed; a token without admin cannot, which is only
        // worth a note.
        if let Err(e) = self.client.queue_delete(&queue).await {
            progress(&format!("could not delete queue {queue} afterwards: {e}"));
        }
        run
    }
}

fn print_row(row: &Row) {
    let mut out = String::new();
    let (p50, p99) = one_kind_latencies(&row.run);
    let _ = writeln!(
        out,
        "{:<48} {:>9} {:>10} {:>9} {:>9}",
        row.scenario,
        thousands(row.run.jobs as f64),
        thousands(row.jobs_per_s()),
        p50,
        p99
    );
    // One round over HTTP: no ratios to list.
    row_details(&mut out, 48, &[], &row.run);
    emit(&mut out);
}
