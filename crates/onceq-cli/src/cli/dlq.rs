//! `onceq dlq list|redrive|purge`: a queue's dead letters.

use clap::{Args, Subcommand};
use onceq_core::api::{DeadListResponse, JobView, PurgeResponse, RedriveResponse};
use onceq_core::limits::{DEAD_PAGE_MAX, REDRIVE_IDS_MAX};
use onceq_core::{DeadPage, Job, JobId, QueueName, Redrive, Store};

use super::table::{self, Align, Table, CELL_CHARS_MAX};
use super::{block_on, confirm, Connection, Output};
use crate::error::CliError;

/// `onceq dlq ...`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The dead-letter commands.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List a page of a queue's dead jobs, oldest id first, with the last error of each.
    List {
        /// The queue.
        queue: QueueName,
        /// Most jobs on the page.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(DEAD_PAGE_MAX)))]
        limit: u32,
        /// Start after this job id (the `next` of the previous page).
        #[arg(long, value_name = "ID")]
        after: Option<JobId>,
    },
    /// Make dead jobs ready again, with their attempt count reset.
    Redrive {
        /// The queue.
        queue: QueueName,
        /// Only these jobs (comma-separated ids); default: every dead job, oldest first.
        #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "ID,ID,...")]
        ids: Option<Vec<JobId>>,
        /// At most this many jobs.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
    },
    /// Delete every dead job of a queue.
    Purge {
        /// The queue.
        queue: QueueName,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// Runs a dead-letter command.
pub fn run(args: &DlqArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        match &args.command {
            DlqCommand::List { queue, limit, after } => {
                let page = DeadPage { after: *after, limit: *limit };
                let list = session.client.dead_list(queue, page).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&DeadListResponse {
                        jobs: list.jobs.iter().map(JobView::from_job).collect(),
                        next: list.next,
                    }),
                    Output::Table => {
                        out!("{}", dead_table(&list.jobs).render());
                        if let Some(next) = list.next {
                            outln!("more: onceq dlq list {queue} --after {next}");
                        }
                        Ok(())
                    }
                }
            }
            DlqCommand::Redrive { queue, ids, limit } => {
                if let Some(ids) = ids {
                    if ids.len() > REDRIVE_IDS_MAX {
                        return Err(CliError::Usage(format!(
                            "{} ids in one redrive; the limit is {REDRIVE_IDS_MAX}",
                            ids.len()
                        )));
                    }
                }
                let redrive = Redrive { ids: ids.clone(), limit: *limit };
                let redriven = session.client.dead_redrive(queue, redrive).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&RedriveResponse { redriven }),
                    Output::Table => {
                        outln!("redrove {redriven} dead jobs of {queue}: they are ready again");
                        Ok(())
                    }
                }
            }
            DlqCommand::Purge { queue, yes } => {
                if !yes {
                    let info = session.client.queue_get(queue).await.map_err(|e| session.failure(e))?;
                    confirm(&format!("delete the {} dead jobs of queue {queue} for good", info.stats.dead), *yes)?;
                }
                let purged = session.client.dead_purge(queue).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&PurgeResponse { purged }),
                    Output::Table => {
                        outln!("purged {purged} dead jobs of {queue}");
                        Ok(())
                    }
                }
            }
        }
    })
}

/// Dead jobs, one row each, with their last error.
pub fn dead_table(jobs: &[Job]) -> Table {
    // The key column appears when a job has a key (a dead head may hold its key, with
    // dead_blocks_key), so unordered queues read as before.
    let keyed = jobs.iter().any(|job| job.ordering_key.is_some());
    let mut columns = vec![("ID", Align::Right), ("ATTEMPTS", Align::Right), ("ENQUEUED_AT", Align::Left)];
    if keyed {
        columns.push(("ORDERING_KEY", Align::Left));
    }
    columns.extend([("LAST_ERROR", Align::Left), ("PAYLOAD", Align::Left)]);
    let mut table = Table::new(&columns);
    for job in jobs {
        let last_error = job.errors.last().map_or_else(|| "-".into(), |e| table::one_line(&e.error, CELL_CHARS_MAX));
        let mut cells =
            vec![job.id.to_string(), format!("{}/{}", job.attempt, job.max_attempts), table::time(job.enqueued_at)];
        if keyed {
            cells.push(table::ordering_key(job.ordering_key.as_deref()));
        }
        cells.extend([last_error, table::payload(&job.payload, CELL_CHARS_MAX)]);
        table.row(cells);
    }
    table
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> DlqCommand {
        match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Dlq(dlq), .. }) => dlq.command,
            other => panic!("{args:?} did not parse as a dlq command: {other:?}"),
        }
    }

    #[test]
    fn list_pages_with_limit_and_after() {
        let DlqCommand::List { queue, limit, after } =
            parse(&["onceq", "dlq", "list", "q", "--limit", "5", "--after", "9"])
        else {
            panic!("not list")
        };
        assert_eq!((queue.as_str(), limit, after), ("q", 5, Some(JobId::new(9))));
        let error = Cli::try_parse_from(["onceq", "dlq", "list", "q", "--limit", "0"]).err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn redrive_takes_comma_separated_ids() {
        let DlqCommand::Redrive { ids, limit, .. } =
            parse(&["onceq", "dlq", "redrive", "q", "--ids", "3,5,8", "--limit", "2"])
        else {
            panic!("not redrive")
        };
        assert_eq!(ids, Some(vec![JobId::new(3), JobId::new(5), JobId::new(8)]));
        assert_eq!(limit, Some(2));
        let DlqCommand::Redrive { ids, limit, .. } = parse(&["onceq", "dlq", "redrive", "q"]) else {
            panic!("not redrive")
        };
        assert_eq!((ids, limit), (None, None));
        let error = Cli::try_parse_from(["onceq", "dlq", "redrive", "q", "--ids", "3,x"]).err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn purge_takes_yes() {
        assert!(matches!(parse(&["onceq", "dlq", "purge", "q", "-y"]), DlqCommand::Purge { yes: true, .. }));
    }
}
