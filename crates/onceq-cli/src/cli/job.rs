//! `onceq job get ID`: one job, its state and the error of every failed attempt.
//! `onceq job cancel ID`: cancel it. `onceq job kill ID`: fail it now. `onceq job delete ID`: delete it.

use clap::{Args, Subcommand};
use onceq_core::api::{JobView, KILL_ERROR_DEFAULT};
use onceq_core::{Job, JobId, JobState, Store};

use super::table::{self, Align, Table};
use super::{block_on, Connection, Output};
use crate::error::CliError;

/// `onceq job ...`.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: JobCommand,
}

/// The job commands.
#[derive(Debug, Clone, Subcommand)]
pub enum JobCommand {
    /// Show a job: state, attempts, schedule, payload, headers and errors. An acked job is gone
    /// (exit code 1).
    Get {
        /// The job's id.
        id: JobId,
    },
    /// Cancel a job: a scheduled, ready or blocked job is never delivered; a leased one is
    /// marked, its worker's next heartbeat learns of it and cancels the handler, and it ends
    /// cancelled unless the handler finishes it (an ack). Cancelled jobs stay readable with
    /// `job get`. A dead job is not cancelled (exit code 1): redrive or purge it.
    Cancel {
        /// The job's id.
        id: JobId,
    },
    /// Fail a job now, as an operator: a scheduled, ready or blocked job goes dead whatever
    /// attempts it has left, with the error recorded (`dlq redrive` brings it back). A leased job
    /// is refused (exit code 1): cancel it, or let its worker settle it. A dead job stays as it is.
    Kill {
        /// The job's id.
        id: JobId,
        /// The error to record for its current attempt.
        #[arg(long, default_value = KILL_ERROR_DEFAULT)]
        error: String,
    },
    /// Delete a job that is not leased, with its error history: gone for good (`job get` then
    /// exits 1). A leased job is refused (exit code 1): cancel it, or let its worker settle it.
    Delete {
        /// The job's id.
        id: JobId,
    },
}

/// Runs a job command.
pub fn run(args: &JobArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        match &args.command {
            JobCommand::Get { id } => {
                let job = session.client.job_get(*id).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&JobView::from_job(&job)),
                    Output::Table => {
                        out!("{}", job_record(&job));
                        Ok(())
                    }
                }
            }
            JobCommand::Cancel { id } => {
                let job = session.client.job_cancel(*id).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&JobView::from_job(&job)),
                    Output::Table if job.state == JobState::Cancelled => {
                        out!("job {id} cancelled\n");
                        Ok(())
                    }
                    Output::Table => {
                        out!(
                            "job {id} is leased: cancel requested; its worker's next heartbeat stops the handler, and \
                             the job ends cancelled unless the handler finishes it\n"
                        );
                        Ok(())
                    }
                }
            }
            JobCommand::Kill { id, error } => {
                let job = session.client.job_kill(*id, error).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&JobView::from_job(&job)),
                    Output::Table => {
                        out!("job {id} is dead: {}\n", job.errors.last().map_or("", |e| e.error.as_str()));
                        Ok(())
                    }
                }
            }
            JobCommand::Delete { id } => {
                session.client.job_delete(*id).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&serde_json::json!({ "deleted": id })),
                    Output::Table => {
                        out!("job {id} deleted\n");
                        Ok(())
                    }
                }
            }
        }
    })
}

/// The wire name of a state.
pub fn state_name(state: JobState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| format!("{state:?}"))
}

/// A job as name / value lines, then its errors as a table. The payload is shown whole.
pub fn job_record(job: &Job) -> String {
    let fields = [
        ("id", job.id.to_string()),
        ("queue", job.queue.to_string()),
        ("state", state_name(job.state)),
        ("attempt", format!("{} of {}", job.attempt, job.max_attempts)),
        ("priority", job.priority.to_string()),
        ("dedup_id", job.dedup_id.clone().unwrap_or_else(|| "-".into())),
        ("ordering_key", job.ordering_key.clone().unwrap_or_else(|| "-".into())),
        ("partition", job.partition.map_or_else(|| "-".into(), |p| p.to_string())),
        ("enqueued_at", table::time(job.enqueued_at)),
        ("run_at", table::time(job.run_at)),
        ("lease_expires_at", job.lease_expires_at.map_or_else(|| "-".into(), table::time)),
        ("cancelled_at", job.cancelled_at.map_or_else(|| "-".into(), table::time)),
        ("headers", table::headers(&job.headers)),
        ("payload", table::payload(&job.payload, usize::MAX)),
    ];
    let mut out = table::record(&fields);
    if !job.errors.is_empty() {
        out.push('\n');
        let mut errors = Table::new(&[("ATTEMPT", Align::Right), ("AT", Align::Left), ("ERROR", Align::Left)]);
        for error in &job.errors {
            errors.row(vec![
                error.attempt.to_string(),
                table::time(error.at),
                table::one_line(&error.error, usize::MAX),
            ]);
        }
        out.push_str(&errors.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use onceq_core::{AttemptError, Headers, QueueName, Timestamp};

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn job_get_takes_an_id() {
        let cli = Cli::try_parse_from(["onceq", "job", "get", "42", "--output", "json"]);
        let Ok(Cli { command: Command::Job(args), .. }) = cli else { panic!("{cli:?}") };
        assert!(matches!(args.command, JobCommand::Get { id } if id == JobId::new(42)));
        let error = Cli::try_parse_from(["onceq", "job", "get", "forty-two"]).err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn job_kill_records_a_default_error_unless_given_one() {
        let cli = Cli::try_parse_from(["onceq", "job", "kill", "7"]);
        let Ok(Cli { command: Command::Job(args), .. }) = cli else { panic!("{cli:?}") };
        assert!(
            matches!(&args.command, JobCommand::Kill { id, error } if *id == JobId::new(7) && error == KILL_ERROR_DEFAULT)
        );
        let cli = Cli::try_parse_from(["onceq", "job", "kill", "7", "--error", "bad data"]);
        let Ok(Cli { command: Command::Job(args), .. }) = cli else { panic!("{cli:?}") };
        assert!(matches!(&args.command, JobCommand::Kill { error, .. } if error == "bad data"));
        let cli = Cli::try_parse_from(["onceq", "job", "delete", "7"]);
        let Ok(Cli { command: Command::Job(args), .. }) = cli else { panic!("{cli:?}") };
        assert!(matches!(args.command, JobCommand::Delete { id } if id == JobId::new(7)));
    }

    #[test]
    fn a_dead_job_shows_its_errors() {
        let mut headers = Headers::new();
        headers.insert("trace".into(), "abc".into());
        let job = Job {
            id: JobId::new(9),
            queue: QueueName::new("emails").unwrap_or_else(|e| panic!("{e}")),
            state: JobState::Dead,
            attempt: 2,
            max_attempts: 2,
            priority: 0,
            payload: br#"{"to":"ada"}"#.to_vec(),
            headers,
            dedup_id: None,
            ordering_key: Some("customer-7".into()),
            partition: Some(3),
            enqueued_at: Timestamp::from_millis(1_767_225_600_000),
            run_at: Timestamp::from_millis(1_767_225_600_000),
            lease_expires_at: None,
            cancelled_at: None,
            errors: vec![
                AttemptError { attempt: 1, error: "timeout".into(), at: Timestamp::from_millis(1_767_225_601_000) },
                AttemptError { attempt: 2, error: "bad\ninput".into(), at: Timestamp::from_millis(1_767_225_602_000) },
            ],
        };
        assert_eq!(
            job_record(&job),
            "id                9\n\
             queue             emails\n\
             state             dead\n\
             attempt           2 of 2\n\
             priority          0\n\
             dedup_id          -\n\
             ordering_key      customer-7\n\
             partition         3\n\
             enqueued_at       2026-01-01T00:00:00.000Z\n\
             run_at            2026-01-01T00:00:00.000Z\n\
             lease_expires_at  -\n\
             cancelled_at      -\n\
             headers           trace=abc\n\
             payload           {\"to\":\"ada\"}\n\
             \n\
             ATTEMPT  AT                        ERROR\n      \
             1  2026-01-01T00:00:01.000Z  timeout\n      \
             2  2026-01-01T00:00:02.000Z  bad input\n"
        );
    }
}
