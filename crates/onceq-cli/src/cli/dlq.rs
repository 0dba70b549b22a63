//! `onceq dlq list|redrive|purge`: a queue's dead letters.

use clap::{Args, Subcommand};
use onceq_core::api::{DeadListResponse, JobView, PacedRedriveView, PurgeResponse, RedriveList, RedriveResponse};
use onceq_core::limits::{DEAD_PAGE_MAX, REDRIVE_IDS_MAX, REDRIVE_RATE_MAX};
use onceq_core::redrive::PacedRedrive;
use onceq_core::{DeadPage, Job, JobId, QueueName, Redrive, RedriveId, Store, Timestamp};

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
        /// Only jobs whose last error (the one they died of) contains this text.
        #[arg(long, value_name = "TEXT")]
        error_contains: Option<String>,
        /// Only jobs that died at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        dead_after: Option<Timestamp>,
        /// Only jobs that died before this RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
        dead_before: Option<Timestamp>,
        /// Only jobs that died after at least this many attempts.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        min_attempts: Option<u32>,
        /// Redrive into this queue instead of their own (neither may order per key).
        #[arg(long, value_name = "QUEUE")]
        to_queue: Option<QueueName>,
        /// Count the matching jobs and redrive none.
        #[arg(long, conflicts_with = "rate")]
        dry_run: bool,
        /// Redrive in the background at this many jobs per second (a paced redrive: it survives
        /// restarts; see `onceq dlq redrives`).
        #[arg(long, value_name = "JOBS_PER_SECOND",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(REDRIVE_RATE_MAX)))]
        rate: Option<u32>,
    },
    /// List paced redrives (running first, then the latest finished), with their progress.
    Redrives,
    /// Stop a running paced redrive; what it redrove stays redriven.
    Stop {
        /// The paced redrive's id (from `onceq dlq redrives`).
        id: RedriveId,
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
            DlqCommand::Redrive {
                queue,
                ids,
                limit,
                error_contains,
                dead_after,
                dead_before,
                min_attempts,
                to_queue,
                dry_run,
                rate,
            } => {
                if let Some(ids) = ids {
                    if ids.len() > REDRIVE_IDS_MAX {
                        return Err(CliError::Usage(format!(
                            "{} ids in one redrive; the limit is {REDRIVE_IDS_MAX}",
                            ids.len()
                        )));
                    }
                }
                let redrive = Redrive {
                    ids: ids.clone(),
                    limit: *limit,
                    error_contains: error_contains.clone(),
                    dead_after: *dead_after,
                    dead_before: *dead_before,
                    min_attempts: *min_attempts,
                    after: None,
                    to_queue: to_queue.clone(),
                    dry_run: *dry_run,
                };
                if let Some(rate) = rate {
                    let paced =
                        session.client.redrive_start(queue, redrive, *rate).await.map_err(|e| session.failure(e))?;
                    return match session.output {
                        Output::Json => session.print_json(&PacedRedriveView::from_paced(&paced)),
                        Output::Table => {
                            outln!(
                                "paced redrive {} started: {} matching dead jobs of {queue}, {rate} per second \
                                 (onceq dlq redrives; onceq dlq stop {})",
                                paced.id,
                                paced.matched,
                                paced.id
                            );
                            Ok(())
                        }
                    };
                }
                let done = session.client.dead_redrive(queue, redrive).await.map_err(|e| session.failure(e))?;
                let (matched, redriven) = (done.matched, done.redriven);
                match session.output {
                    Output::Json => session.print_json(&RedriveResponse { matched, redriven, last: done.last }),
                    Output::Table if *dry_run => {
                        outln!("{matched} dead jobs of {queue} match; none was redriven (dry run)");
                        Ok(())
                    }
                    Output::Table => {
                        let into = to_queue.as_ref().filter(|to| *to != queue).unwrap_or(queue);
                        outln!("redrove {redriven} of {matched} matching dead jobs of {queue}: they are ready again in {into}");
                        Ok(())
                    }
                }
            }
            DlqCommand::Redrives => {
                let all = session.client.redrive_list().await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session
                        .print_json(&RedriveList { redrives: all.iter().map(PacedRedriveView::from_paced).collect() }),
                    Output::Table => {
                        out!("{}", redrives_table(&all).render());
                        Ok(())
                    }
                }
            }
            DlqCommand::Stop { id } => {
                let paced = session.client.redrive_stop(*id).await.map_err(|e| session.failure(e))?;
                match session.output {
                    Output::Json => session.print_json(&PacedRedriveView::from_paced(&paced)),
                    Output::Table => {
                        let state = format!("{:?}", paced.state).to_lowercase();
                        outln!("paced redrive {id} is {state}: {} of {} redriven", paced.redriven, paced.matched);
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

/// Paced redrives, one row each, with their progress.
fn redrives_table(all: &[PacedRedrive]) -> Table {
    let mut table = Table::new(&[
        ("ID", Align::Right),
        ("QUEUE", Align::Left),
        ("STATE", Align::Left),
        ("RATE/S", Align::Right),
        ("REDRIVEN", Align::Right),
        ("MATCHED", Align::Right),
        ("STARTED", Align::Left),
        ("ERROR", Align::Left),
    ]);
    for paced in all {
        let state = format!("{:?}", paced.state).to_lowercase();
        table.row(vec![
            paced.id.to_string(),
            paced.queue.to_string(),
            state,
            paced.rate_per_second.to_string(),
            paced.redriven.to_string(),
            paced.matched.to_string(),
            table::time(paced.created_at),
            paced.error.as_deref().map_or_else(|| "-".into(), |e| table::one_line(e, CELL_CHARS_MAX)),
        ]);
    }
    table
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

/// An RFC 3339 time argument.
fn parse_time_arg(text: &str) -> Result<Timestamp, String> {
    onceq_core::api::parse_time(text).map_err(|e| e.detail())
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
