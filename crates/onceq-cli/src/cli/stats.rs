//! `onceq stats [QUEUE] [--watch [SECONDS]]`: job counts of every queue (or one), once or
//! redrawn until Ctrl-C.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args;
use onceq_core::api::QueueList;
use onceq_core::{Clock, QueueInfo, QueueName, Store, SystemClock};

use super::table::{self, Align, Table};
use super::{block_on, Connection, Output, Session};
use crate::error::CliError;

/// Clears a terminal and puts the cursor top left (ANSI).
const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

/// `onceq stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// Only this queue (default: every queue).
    pub queue: Option<QueueName>,
    /// Redraw every SECONDS seconds (default 2) until Ctrl-C. Errors, such as a server that
    /// went away, are shown in place and the next refresh tries again.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
}

/// Runs `onceq stats`.
pub fn run(args: &StatsArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        let Some(seconds) = args.watch else {
            let queues = fetch(&session, args.queue.as_ref()).await?;
            return match session.output {
                Output::Json => session.print_json(&QueueList { queues, next: None }),
                Output::Table => {
                    out!("{}", stats_table(&queues).render());
                    Ok(())
                }
            };
        };
        watch(&session, args.queue.as_ref(), Duration::from_secs(seconds)).await
    })
}

/// The queues to show.
async fn fetch(session: &Session, queue: Option<&QueueName>) -> Result<Vec<QueueInfo>, CliError> {
    let result = match queue {
        Some(queue) => session.client.queue_get(queue).await.map(|info| vec![info]),
        None => session.client.queue_list().await,
    };
    result.map_err(|e| session.failure(e))
}

/// One refresh of `--watch --output json`: one line, so the output is a stream of JSON lines.
fn print_json_line(queues: Vec<QueueInfo>) -> Result<(), CliError> {
    let text = serde_json::to_string(&QueueList { queues, next: None })
        .map_err(|e| CliError::Failed(format!("cannot print the result as JSON: {e}")))?;
    outln!("{text}");
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Refreshes until Ctrl-C; then exits 0.
async fn watch(session: &Session, queue: Option<&QueueName>, every: Duration) -> Result<(), CliError> {
    let redraw = session.output == Output::Table && std::io::stdout().is_terminal();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = ticks.tick() => {}
        }
        let fetched = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            fetched = fetch(session, queue) => fetched,
        };
        let now = table::time(SystemClock::default().now());
        match session.output {
            Output::Json => match fetched {
                Ok(queues) => print_json_line(queues)?,
                Err(error) => eprintln!("onceq: {now}: {error}"),
            },
            Output::Table => {
                let mut screen = String::new();
                if redraw {
                    screen.push_str(CLEAR_SCREEN);
                }
                screen.push_str(&format!(
                    "onceq stats · {} · every {} s · {now} · Ctrl-C to stop\n\n",
                    session.server,
                    every.as_secs()
                ));
                match fetched {
                    Ok(queues) => screen.push_str(&stats_table(&queues).render()),
                    Err(error) => screen.push_str(&format!("{error}\n(trying again in {} s)\n", every.as_secs())),
                }
                if !redraw {
                    screen.push('\n');
                }
                out!("{screen}");
                let _ = std::io::stdout().flush();
            }
        }
    }
}

/// Job counts by state, one row per queue.
pub fn stats_table(queues: &[QueueInfo]) -> Table {
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("READY", Align::Right),
        ("SCHEDULED", Align::Right),
        ("LEASED", Align::Right),
        ("BLOCKED", Align::Right),
        ("DEAD", Align::Right),
        ("OLDEST_READY", Align::Right),
        ("PAUSED", Align::Left),
    ]);
    for queue in queues {
        let s = &queue.stats;
        table.row(vec![
            queue.name.to_string(),
            s.ready.to_string(),
            s.scheduled.to_string(),
            s.leased.to_string(),
            s.blocked.to_string(),
            s.dead.to_string(),
            table::age_or_dash(s.oldest_ready_age_ms),
            table::yes_no(queue.paused),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use onceq_core::{QueueConfig, QueueStats};

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> StatsArgs {
        match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Stats(stats), .. }) => stats,
            other => panic!("{args:?} did not parse as stats: {other:?}"),
        }
    }

    #[test]
    fn watch_takes_an_optional_period() {
        assert_eq!(parse(&["onceq", "stats"]).watch, None);
        assert_eq!(parse(&["onceq", "stats", "--watch"]).watch, Some(2));
        assert_eq!(parse(&["onceq", "stats", "--watch", "5"]).watch, Some(5));
        let one = parse(&["onceq", "stats", "emails", "--watch"]);
        assert_eq!((one.queue.map(|q| q.to_string()), one.watch), (Some("emails".into()), Some(2)));
        let error = Cli::try_parse_from(["onceq", "stats", "--watch", "0"]).err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }

    #[test]
    fn the_table_has_every_count() {
        let queue = |name: &str, paused, stats| QueueInfo {
            name: QueueName::new(name).unwrap_or_else(|e| panic!("{e}")),
            config: QueueConfig::default(),
            paused,
            stats,
        };
        let queues = [
            queue(
                "emails",
                false,
                QueueStats {
                    ready: 1200,
                    scheduled: 3,
                    leased: 10,
                    dead: 2,
                    blocked: 40,
                    cancelled: 0,
                    oldest_ready_age_ms: Some(65_000),
                },
            ),
            queue("billing", true, QueueStats::default()),
        ];
        assert_eq!(
            stats_table(&queues).render(),
            "QUEUE    READY  SCHEDULED  LEASED  BLOCKED  DEAD  OLDEST_READY  PAUSED\n\
             emails    1200          3      10       40     2         1m05s  no\n\
             billing      0          0       0        0     0             -  yes\n"
        );
    }
}
