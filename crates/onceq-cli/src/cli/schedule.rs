//! `onceq schedule put|get|list|delete|pause|resume`: cron schedules (docs/api.md,
//! "Schedules"), each of whose ticks enqueues one job into its queue.

use clap::{Args, Subcommand, ValueEnum};
use onceq_core::api::ScheduleView;
use onceq_core::schedule::{CatchUp, ScheduleInfo, ScheduleName, ScheduleSpec};
use onceq_core::{QueueName, Store};

use super::table::{self, Align, Table};
use super::{block_on, confirm, parse_header, Connection, Output};
use crate::error::CliError;

/// `onceq schedule ...`.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

/// Which missed ticks fire after downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatchUpArg {
    /// None: go on with the next tick.
    Skip,
    /// The latest missed tick, once (the default).
    One,
    /// Every missed tick, oldest first, up to the server's bound.
    All,
}

impl From<CatchUpArg> for CatchUp {
    fn from(arg: CatchUpArg) -> Self {
        match arg {
            CatchUpArg::Skip => CatchUp::Skip,
            CatchUpArg::One => CatchUp::One,
            CatchUpArg::All => CatchUp::All,
        }
    }
}

/// The schedule commands.
#[derive(Debug, Clone, Subcommand)]
pub enum ScheduleCommand {
    /// Create or replace a schedule: every tick of CRON (in --timezone) enqueues one job into
    /// QUEUE. Replacing it with the same cron and time zone keeps its next tick.
    Put {
        /// The schedule's name.
        name: ScheduleName,
        /// The queue each tick's job goes to.
        queue: QueueName,
        /// Cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with
        /// seconds first; quote it.
        cron: String,
        /// IANA time zone the expression is read in.
        #[arg(long, default_value = "UTC", value_name = "ZONE")]
        timezone: String,
        /// Each tick's payload, JSON.
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Each tick's job priority.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
        /// A header of each tick's job, NAME=VALUE (repeatable).
        #[arg(long = "header", value_parser = parse_header, value_name = "NAME=VALUE")]
        headers: Vec<(String, String)>,
        /// Leases each tick's job may have (default: the queue's).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Ordering key of each tick's job.
        #[arg(long, value_name = "KEY")]
        ordering_key: Option<String>,
        /// Which missed ticks fire after downtime.
        #[arg(long, value_enum, default_value_t = CatchUpArg::One)]
        catch_up: CatchUpArg,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
    },
    /// Show a schedule: its spec, next ticks, last tick and last job.
    Get {
        /// The schedule's name.
        name: ScheduleName,
    },
    /// List every schedule.
    List,
    /// Delete a schedule (the jobs it enqueued stay).
    Delete {
        /// The schedule's name.
        name: ScheduleName,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Pause a schedule: it fires nothing until resumed, and its ticks meanwhile are not caught up.
    Pause {
        /// The schedule's name.
        name: ScheduleName,
    },
    /// Resume a schedule from its next tick after now.
    Resume {
        /// The schedule's name.
        name: ScheduleName,
    },
}

/// Runs a schedule command.
pub fn run(args: &ScheduleArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        let client = &session.client;
        let shown: Vec<ScheduleInfo> = match &args.command {
            ScheduleCommand::Put {
                name,
                queue,
                cron,
                timezone,
                payload,
                priority,
                headers,
                max_attempts,
                ordering_key,
                catch_up,
                paused,
            } => {
                let mut spec = ScheduleSpec::new(queue.clone(), cron.clone());
                spec.timezone = timezone.clone();
                if let Some(payload) = payload {
                    serde_json::from_str::<serde_json::Value>(payload)
                        .map_err(|e| CliError::Usage(format!("--payload is not JSON: {e}")))?;
                    spec.payload = payload.clone().into_bytes();
                }
                spec.job.priority = *priority;
                spec.job.headers = headers.iter().cloned().collect();
                spec.job.max_attempts = *max_attempts;
                spec.job.ordering_key = ordering_key.clone();
                spec.catch_up = (*catch_up).into();
                spec.paused = *paused;
                vec![client.schedule_upsert(name, spec).await.map_err(|e| session.failure(e))?]
            }
            ScheduleCommand::Get { name } => vec![client.schedule_get(name).await.map_err(|e| session.failure(e))?],
            ScheduleCommand::List => client.schedule_list().await.map_err(|e| session.failure(e))?,
            ScheduleCommand::Delete { name, yes } => {
                confirm(&format!("delete schedule {name}"), *yes)?;
                client.schedule_delete(name).await.map_err(|e| session.failure(e))?;
                return done(&session, &format!("deleted schedule {name}"));
            }
            ScheduleCommand::Pause { name } => {
                client.schedule_pause(name).await.map_err(|e| session.failure(e))?;
                return done(&session, &format!("paused schedule {name}"));
            }
            ScheduleCommand::Resume { name } => {
                client.schedule_resume(name).await.map_err(|e| session.failure(e))?;
                return done(&session, &format!("resumed schedule {name}"));
            }
        };
        let list = matches!(args.command, ScheduleCommand::List);
        match session.output {
            Output::Json if list => session.print_json(&onceq_core::api::ScheduleList {
                schedules: shown.iter().map(ScheduleView::from_info).collect(),
            }),
            Output::Json => session.print_json(&ScheduleView::from_info(&shown[0])),
            Output::Table if list => {
                out!("{}", list_table(&shown));
                Ok(())
            }
            Output::Table => {
                out!("{}", describe(&shown[0]));
                Ok(())
            }
        }
    })
}

/// Prints what a command without a result did.
fn done(session: &super::Session, message: &str) -> Result<(), CliError> {
    match session.output {
        Output::Json => session.print_json(&serde_json::json!({ "ok": true })),
        Output::Table => {
            outln!("{message}");
            Ok(())
        }
    }
}

/// The schedules as a table.
fn list_table(schedules: &[ScheduleInfo]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("QUEUE", Align::Left),
        ("CRON", Align::Left),
        ("TIMEZONE", Align::Left),
        ("CATCH_UP", Align::Left),
        ("PAUSED", Align::Left),
        ("NEXT_TICK", Align::Left),
        ("LAST_TICK", Align::Left),
    ]);
    for s in schedules {
        t.row(vec![
            s.name.to_string(),
            s.spec.queue.to_string(),
            s.spec.cron.clone(),
            s.spec.timezone.clone(),
            s.spec.catch_up.as_str().to_owned(),
            table::yes_no(s.spec.paused),
            s.next_tick.map_or_else(|| "-".to_owned(), table::time),
            s.last_tick.map_or_else(|| "-".to_owned(), table::time),
        ]);
    }
    t.render()
}

/// One schedule for people.
fn describe(s: &ScheduleInfo) -> String {
    let next: Vec<String> = s.next_ticks.iter().copied().map(table::time).collect();
    table::record(&[
        ("name", s.name.to_string()),
        ("queue", s.spec.queue.to_string()),
        ("cron", s.spec.cron.clone()),
        ("timezone", s.spec.timezone.clone()),
        ("catch_up", s.spec.catch_up.as_str().to_owned()),
        ("paused", table::yes_no(s.spec.paused)),
        ("payload", table::payload(&s.spec.payload, table::CELL_CHARS_MAX)),
        ("priority", s.spec.job.priority.to_string()),
        ("headers", table::headers(&s.spec.job.headers)),
        ("next_ticks", if next.is_empty() { "-".to_owned() } else { next.join(", ") }),
        ("last_tick", s.last_tick.map_or_else(|| "-".to_owned(), table::time)),
        ("last_job_id", s.last_job_id.map_or_else(|| "-".to_owned(), |id| id.to_string())),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use onceq_core::Timestamp;

    use super::*;

    #[test]
    fn a_schedule_reads_plainly() {
        let mut spec = ScheduleSpec::new(QueueName::new("reports").unwrap(), "0 6 * * 1-5");
        spec.timezone = "Europe/Berlin".into();
        let info = ScheduleInfo {
            name: ScheduleName::new("daily").unwrap(),
            spec,
            next_tick: Some(Timestamp::from_millis(1_767_247_200_000)),
            next_ticks: vec![Timestamp::from_millis(1_767_247_200_000)],
            last_tick: None,
            last_job_id: None,
        };
        let text = describe(&info);
        assert!(text.contains("0 6 * * 1-5") && text.contains("Europe/Berlin"), "{text}");
        assert!(text.contains("2026-01-01T06:00:00.000Z"), "{text}");
        let listed = list_table(&[info]);
        assert!(listed.starts_with("NAME"), "{listed}");
        assert!(listed.contains("daily") && listed.contains("one"), "{listed}");
    }
}
