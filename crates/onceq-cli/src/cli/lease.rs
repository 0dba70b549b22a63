//! `onceq lease` and what ends a lease: `onceq ack|nack|extend|fail JOB_ID --lease-token TOKEN`.
//!
//! These are a worker's calls, by hand: to look at what a queue hands out, to settle a job a
//! crashed worker left leased, or to try a queue's retry policy.

use clap::Args;
use onceq_core::api::{format_time, ExtendResponse, LeaseResponse, LeasedJobView, SettleResult};
use onceq_core::limits::DELAY_MS_MAX;
use onceq_core::limits::{LEASE_BATCH_MAX, VISIBILITY_TIMEOUT_MS_MAX, VISIBILITY_TIMEOUT_MS_MIN, WAIT_MS_MAX};
use onceq_core::{JobId, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, NackOutcome, QueueName, Store, StoreExt};

use super::table::{self, Align, Table, CELL_CHARS_MAX};
use super::{block_on, Connection, Output, Session};
use crate::error::CliError;

/// `onceq lease`.
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// The queue.
    pub queue: QueueName,
    /// Most jobs to lease.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(LEASE_BATCH_MAX)))]
    pub max_jobs: u32,
    /// Lease length in milliseconds (default: the queue's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX))]
    pub visibility_timeout_ms: Option<u64>,
    /// Wait up to this many milliseconds for a job when none is ready (long poll).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=WAIT_MS_MAX))]
    pub wait_ms: u64,
}

/// The job and lease every settle command names.
#[derive(Debug, Clone, Args)]
pub struct LeaseTarget {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// The job's id.
    pub job_id: JobId,
    /// The lease token the lease call returned (32 hex digits).
    #[arg(long, value_name = "LEASE_TOKEN")]
    pub lease_token: LeaseToken,
}

impl LeaseTarget {
    fn lease(&self) -> LeaseRef {
        LeaseRef { id: self.job_id, lease_token: self.lease_token }
    }
}

/// `onceq ack`.
#[derive(Debug, Clone, Args)]
pub struct AckArgs {
    /// The job and its lease.
    #[command(flatten)]
    pub target: LeaseTarget,
}

/// `onceq nack`.
#[derive(Debug, Clone, Args)]
pub struct NackArgs {
    /// The job and its lease.
    #[command(flatten)]
    pub target: LeaseTarget,
    /// Run again after this many milliseconds (default: the queue's backoff).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub delay_ms: Option<u64>,
    /// Why the attempt failed (kept in the job's error history).
    #[arg(long)]
    pub error: Option<String>,
}

/// `onceq extend`.
#[derive(Debug, Clone, Args)]
pub struct ExtendArgs {
    /// The job and its lease.
    #[command(flatten)]
    pub target: LeaseTarget,
    /// The lease now expires this many milliseconds from now.
    #[arg(long, value_parser = clap::value_parser!(u64).range(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX))]
    pub visibility_timeout_ms: u64,
}

/// `onceq release`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// The job and its lease.
    #[command(flatten)]
    pub target: LeaseTarget,
    /// Ready again after this many milliseconds (default: at once): a snooze.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub delay_ms: Option<u64>,
}

/// `onceq fail`.
#[derive(Debug, Clone, Args)]
pub struct FailArgs {
    /// The job and its lease.
    #[command(flatten)]
    pub target: LeaseTarget,
    /// Why the job is given up (kept in its error history).
    #[arg(long, default_value = "failed by an operator with `onceq fail`")]
    pub error: String,
}

/// Runs `onceq lease`.
pub fn lease(args: &LeaseArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        let options = LeaseOptions {
            max_jobs: args.max_jobs,
            visibility_timeout_ms: args.visibility_timeout_ms,
            wait_ms: args.wait_ms,
        };
        let jobs = session.client.job_lease(&args.queue, options).await.map_err(|e| session.failure(e))?;
        match session.output {
            Output::Json => {
                session.print_json(&LeaseResponse { jobs: jobs.iter().map(LeasedJobView::from_leased).collect() })
            }
            Output::Table if jobs.is_empty() => {
                outln!(
                    "no job leased from {}: none is ready (empty, paused, or every job is leased or scheduled)",
                    args.queue
                );
                Ok(())
            }
            Output::Table => {
                out!("{}", leased_table(&jobs).render());
                Ok(())
            }
        }
    })
}

/// Leased jobs, one row each, with what a settle command needs: id and lease token.
pub fn leased_table(jobs: &[LeasedJob]) -> Table {
    // The key column appears when a job has a key, so unordered work reads as before.
    let keyed = jobs.iter().any(|job| job.ordering_key.is_some());
    let mut columns = vec![
        ("ID", Align::Right),
        ("ATTEMPT", Align::Right),
        ("LEASE_TOKEN", Align::Left),
        ("LEASE_EXPIRES_AT", Align::Left),
    ];
    if keyed {
        columns.push(("ORDERING_KEY", Align::Left));
    }
    columns.push(("PAYLOAD", Align::Left));
    let mut table = Table::new(&columns);
    for job in jobs {
        let mut cells = vec![
            job.id.to_string(),
            format!("{}/{}", job.attempt, job.max_attempts),
            job.lease_token.to_string(),
            table::time(job.lease_expires_at),
        ];
        if keyed {
            cells.push(table::ordering_key(job.ordering_key.as_deref()));
        }
        cells.push(table::payload(&job.payload, CELL_CHARS_MAX));
        table.row(cells);
    }
    table
}

/// Runs `onceq ack`.
pub fn ack(args: &AckArgs) -> Result<(), CliError> {
    let target = &args.target;
    block_on(&target.connection, |session| async move {
        session.client.ack(target.lease()).await.map_err(|e| session.failure(e))?;
        settled(&session, &SettleResult::ok(target.job_id), &format!("job {} acked: done for good", target.job_id))
    })
}

/// Runs `onceq nack`.
pub fn nack(args: &NackArgs) -> Result<(), CliError> {
    let target = &args.target;
    block_on(&target.connection, |session| async move {
        let outcome = session
            .client
            .nack(target.lease(), args.delay_ms, args.error.as_deref())
            .await
            .map_err(|e| session.failure(e))?;
        settled(&session, &SettleResult::nacked(target.job_id, outcome), &nack_line(target.job_id, outcome))
    })
}

/// What became of a nacked job, in words.
fn nack_line(id: JobId, outcome: NackOutcome) -> String {
    match outcome {
        NackOutcome::Retrying { run_at } => format!("job {id} nacked: ready again at {}", format_time(run_at)),
        NackOutcome::Dead => format!("job {id} nacked: its attempts are exhausted, it is dead"),
        NackOutcome::Cancelled => format!("job {id} nacked: it had been cancelled, so it ends cancelled"),
    }
}

/// Runs `onceq extend`.
pub fn extend(args: &ExtendArgs) -> Result<(), CliError> {
    let target = &args.target;
    block_on(&target.connection, |session| async move {
        let at =
            session.client.extend(target.lease(), args.visibility_timeout_ms).await.map_err(|e| session.failure(e))?;
        match session.output {
            Output::Json => session.print_json(&ExtendResponse { lease_expires_at: format_time(at) }),
            Output::Table => {
                outln!("job {}: the lease now expires at {}", target.job_id, format_time(at));
                Ok(())
            }
        }
    })
}

/// Runs `onceq fail`.
pub fn fail(args: &FailArgs) -> Result<(), CliError> {
    let target = &args.target;
    block_on(&target.connection, |session| async move {
        session.client.fail(target.lease(), &args.error).await.map_err(|e| session.failure(e))?;
        let line = format!("job {} failed: it is dead (`onceq dlq redrive` makes it ready again)", target.job_id);
        settled(&session, &SettleResult::ok(target.job_id), &line)
    })
}

/// Runs `onceq release`: ends the lease without spending an attempt.
pub fn release(args: &ReleaseArgs) -> Result<(), CliError> {
    let target = &args.target;
    block_on(&target.connection, |session| async move {
        session.client.release(target.lease(), args.delay_ms).await.map_err(|e| session.failure(e))?;
        let when = match args.delay_ms {
            Some(ms) if ms > 0 => format!("ready again in {ms} ms"),
            _ => "ready again now".to_owned(),
        };
        let line = format!("job {} released: {when}, without spending an attempt", target.job_id);
        settled(&session, &SettleResult::ok(target.job_id), &line)
    })
}

/// Prints a settle's result: the batch endpoints' result item as JSON, or a line for people.
fn settled(session: &Session, result: &SettleResult, line: &str) -> Result<(), CliError> {
    match session.output {
        Output::Json => session.print_json(result),
        Output::Table => {
            outln!("{line}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use onceq_core::{Headers, Timestamp};

    use super::*;
    use crate::{Cli, Command};

    const TOKEN: &str = "000102030405060708090a0b0c0d0e0f";

    #[test]
    fn lease_takes_its_options() {
        let cli = Cli::try_parse_from(["onceq", "lease", "emails", "--max-jobs", "10", "--wait-ms", "5000"]);
        let Ok(Cli { command: Command::Lease(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(
            (args.queue.as_str(), args.max_jobs, args.wait_ms, args.visibility_timeout_ms),
            ("emails", 10, 5000, None)
        );
        for bad in [["--max-jobs", "0"], ["--max-jobs", "1001"], ["--wait-ms", "20001"]] {
            let error = Cli::try_parse_from(["onceq", "lease", "q", bad[0], bad[1]]).err();
            assert_eq!(error.map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
    }

    #[test]
    fn settles_take_the_job_and_its_lease_token() {
        let cli =
            Cli::try_parse_from(["onceq", "nack", "42", "--lease-token", TOKEN, "--delay-ms", "0", "--error", "boom"]);
        let Ok(Cli { command: Command::Nack(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(
            args.target.lease(),
            LeaseRef { id: JobId::new(42), lease_token: TOKEN.parse().unwrap_or_else(|e| panic!("{e}")) }
        );
        assert_eq!((args.delay_ms, args.error.as_deref()), (Some(0), Some("boom")));
        // The global --token is the bearer token; the lease token has its own flag.
        let cli = Cli::try_parse_from(["onceq", "ack", "42", "--lease-token", TOKEN, "--token", "secret"]);
        let Ok(Cli { command: Command::Ack(args), .. }) = cli else { panic!("{cli:?}") };
        assert_eq!(args.target.connection.token.as_deref(), Some("secret"));
        for bad in [
            &["onceq", "ack", "42"][..],
            &["onceq", "ack", "42", "--lease-token", "nothex"],
            &["onceq", "ack", "x", "--lease-token", TOKEN],
            &["onceq", "extend", "42", "--lease-token", TOKEN],
        ] {
            let error = Cli::try_parse_from(bad).err();
            assert_eq!(error.map(|e| e.exit_code()), Some(2), "{bad:?}");
        }
    }

    #[test]
    fn leased_jobs_show_what_a_settle_needs() {
        let job = LeasedJob {
            id: JobId::new(7),
            queue: QueueName::new("q").unwrap_or_else(|e| panic!("{e}")),
            lease_token: TOKEN.parse().unwrap_or_else(|e| panic!("{e}")),
            attempt: 2,
            max_attempts: 5,
            priority: 0,
            payload: br#"{"to":"ada"}"#.to_vec(),
            headers: Headers::new(),
            dedup_id: None,
            ordering_key: None,
            partition: None,
            enqueued_at: Timestamp::from_millis(0),
            run_at: Timestamp::from_millis(0),
            lease_expires_at: Timestamp::from_millis(1_767_225_600_000),
        };
        assert_eq!(
            leased_table(std::slice::from_ref(&job)).render(),
            "ID  ATTEMPT  LEASE_TOKEN                       LEASE_EXPIRES_AT          PAYLOAD\n \
             7      2/5  000102030405060708090a0b0c0d0e0f  2026-01-01T00:00:00.000Z  {\"to\":\"ada\"}\n"
        );
        let keyed =
            LeasedJob { id: JobId::new(8), ordering_key: Some("customer-7".into()), partition: Some(3), ..job.clone() };
        assert_eq!(
            leased_table(&[job, keyed]).render(),
            "ID  ATTEMPT  LEASE_TOKEN                       LEASE_EXPIRES_AT          ORDERING_KEY  PAYLOAD\n \
             7      2/5  000102030405060708090a0b0c0d0e0f  2026-01-01T00:00:00.000Z  -             {\"to\":\"ada\"}\n \
             8      2/5  000102030405060708090a0b0c0d0e0f  2026-01-01T00:00:00.000Z  customer-7    {\"to\":\"ada\"}\n"
        );
    }

    #[test]
    fn nack_outcomes_read_as_words() {
        let retrying = NackOutcome::Retrying { run_at: Timestamp::from_millis(1_767_225_600_000) };
        assert_eq!(nack_line(JobId::new(3), retrying), "job 3 nacked: ready again at 2026-01-01T00:00:00.000Z");
        assert_eq!(nack_line(JobId::new(3), NackOutcome::Dead), "job 3 nacked: its attempts are exhausted, it is dead");
    }
}
