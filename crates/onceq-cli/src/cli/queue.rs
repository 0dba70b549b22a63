//! `onceq queue list|get|set|pause|resume|delete`: a queue's configuration and life.

use clap::{Args, Subcommand};
use onceq_core::api::QueueList;
use onceq_core::flow::{KeyBy, RateLimit};
use onceq_core::limits::{ATTEMPTS_MAX, BACKOFF_MULTIPLIER_MAX, DEDUP_WINDOW_MS_MAX, DELAY_MS_MAX, PARTITIONS_MAX};
use onceq_core::limits::{IN_FLIGHT_MAX, QUEUE_DEPTH_MAX, VISIBILITY_TIMEOUT_MS_MAX, VISIBILITY_TIMEOUT_MS_MIN};
use onceq_core::{
    BackoffPatch, DeliveryMode, Durability, Error, Jitter, Ordering, QueueConfig, QueueConfigPatch, QueueInfo,
    QueueName, Store,
};
use serde::Serialize;

use super::table::{self, Align, Table};
use super::{block_on, confirm, Connection, Output, Session};
use crate::error::CliError;

/// `onceq queue ...`.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue commands.
#[derive(Debug, Clone, Subcommand)]
pub enum QueueCommand {
    /// List every queue with its configuration.
    List,
    /// Show one queue: configuration, pause flag and job counts.
    Get {
        /// The queue.
        queue: QueueName,
    },
    /// Create a queue, or change the settings given (the others keep their values).
    Set(SetArgs),
    /// Stop handing out leases from a queue (enqueues are still accepted).
    Pause {
        /// The queue.
        queue: QueueName,
    },
    /// Hand out leases from a paused queue again.
    Resume {
        /// The queue.
        queue: QueueName,
    },
    /// Delete a queue and every job in it, dead ones included.
    Delete {
        /// The queue.
        queue: QueueName,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `onceq queue set`: each flag given replaces that setting.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The queue.
    pub queue: QueueName,
    /// Delivery mode: at_most_once, at_least_once or effectively_once.
    #[arg(long, value_parser = parse_delivery)]
    pub delivery: Option<DeliveryMode>,
    /// Default lease length, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(VISIBILITY_TIMEOUT_MS_MIN..=VISIBILITY_TIMEOUT_MS_MAX))]
    pub visibility_timeout_ms: Option<u64>,
    /// Leases a job may have before it is dead-lettered.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATTEMPTS_MAX)))]
    pub max_attempts: Option<u32>,
    /// Retry delay after the first failed attempt, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub backoff_initial_ms: Option<u64>,
    /// Cap on the retry delay, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub backoff_max_ms: Option<u64>,
    /// Growth of the retry delay per attempt (1 to 100).
    #[arg(long, value_parser = parse_multiplier)]
    pub backoff_multiplier: Option<f64>,
    /// Randomization of the retry delay: full (0..d), equal (d/2..d) or none.
    #[arg(long, value_parser = parse_jitter)]
    pub backoff_jitter: Option<Jitter>,
    /// How long a dedup id is remembered, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=DEDUP_WINDOW_MS_MAX))]
    pub dedup_window_ms: Option<u64>,
    /// none, or per_key: the jobs of one ordering key run one at a time, in enqueue order.
    /// Changes only while the queue holds no job.
    #[arg(long, value_parser = parse_ordering)]
    pub ordering: Option<Ordering>,
    /// Partitions of a per_key queue, 1 to 256 (default 16). Changes only while the queue
    /// holds no job.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(PARTITIONS_MAX)))]
    pub partitions: Option<u32>,
    /// true: in a per_key queue, a dead job keeps its key blocked until it is redriven or
    /// purged; false (the default): the key's next job goes on.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub dead_blocks_key: Option<bool>,
    /// Leases per second summed over every worker, with a burst: PER_SECOND/BURST (e.g.
    /// 50/10; a fraction such as 0.5/1 is one lease every two seconds), or `none` to remove it.
    #[arg(long, value_name = "PER_SECOND/BURST|none", value_parser = parse_rate_limit)]
    pub rate_limit: Option<Setting<RateLimit>>,
    /// Most live leases of the queue at once, summed over every worker (1 to 1000000), or
    /// `none` to remove it.
    #[arg(long, value_name = "N|none", value_parser = parse_in_flight)]
    pub max_in_flight: Option<Setting<u32>>,
    /// One rate-limit bucket per key value instead of one for the queue: ordering_key, or
    /// header:<name> (jobs without that key share one bucket); `none`: one bucket. Needs a
    /// rate limit.
    #[arg(long, value_name = "ordering_key|header:NAME|none", value_parser = parse_rate_limit_by)]
    pub rate_limit_by: Option<Setting<KeyBy>>,
    /// Most live leases of one key value at once (1 to 1000000), keyed by --rate-limit-by if
    /// set, else by the ordering key (jobs without the key are not limited per key), or `none`
    /// to remove it.
    #[arg(long, value_name = "N|none", value_parser = parse_in_flight_per_key)]
    pub max_in_flight_per_key: Option<Setting<u32>>,
    /// Most jobs the queue holds (ready, scheduled, leased or blocked; 1 to 1000000): an enqueue
    /// past it is refused with 429 rate_limited. `none` removes it.
    #[arg(long, value_name = "N|none", value_parser = parse_depth)]
    pub max_depth: Option<Setting<u64>>,
    /// fsync: each reply waits until the queue's writes are on disk (survives power loss);
    /// relaxed: replies do not wait for the disk (survives a crash of the server process; a
    /// power loss may take the last ones). `default`: as the server's --durability says.
    #[arg(long, value_name = "fsync|relaxed|default", value_parser = parse_durability)]
    pub durability: Option<Setting<Durability>>,
}

/// A flag that sets a limit or removes it (`none`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Setting<T>(pub Option<T>);

fn parse_setting<T>(text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Setting<T>, String> {
    if text == "none" {
        return Ok(Setting(None));
    }
    parse(text).map(|v| Setting(Some(v)))
}

fn parse_rate_limit(text: &str) -> Result<Setting<RateLimit>, String> {
    parse_setting(text, |text| {
        let (rate, burst) = text.split_once('/').ok_or("give PER_SECOND/BURST, e.g. 50/10, or none")?;
        let per_second: f64 = rate.trim().parse().map_err(|e| format!("per_second {rate:?}: {e}"))?;
        let burst: u32 = burst.trim().parse().map_err(|e| format!("burst {burst:?}: {e}"))?;
        let limit = RateLimit { per_second, burst };
        limit.validate().map_err(|e| e.detail())?;
        Ok(limit)
    })
}

fn parse_in_flight(text: &str) -> Result<Setting<u32>, String> {
    parse_setting(text, |text| match text.parse::<u32>() {
        Ok(n) if (1..=IN_FLIGHT_MAX).contains(&n) => Ok(n),
        _ => Err(format!("max_in_flight must be a number from 1 to {IN_FLIGHT_MAX}, or none")),
    })
}

fn parse_rate_limit_by(text: &str) -> Result<Setting<KeyBy>, String> {
    parse_setting(text, |text| text.parse::<KeyBy>().map_err(|e| e.detail()))
}

fn parse_in_flight_per_key(text: &str) -> Result<Setting<u32>, String> {
    parse_setting(text, |text| match text.parse::<u32>() {
        Ok(n) if (1..=IN_FLIGHT_MAX).contains(&n) => Ok(n),
        _ => Err(format!("max_in_flight_per_key must be a number from 1 to {IN_FLIGHT_MAX}, or none")),
    })
}

fn parse_durability(text: &str) -> Result<Setting<Durability>, String> {
    if text == "default" {
        return Ok(Setting(None));
    }
    text.parse().map(|d| Setting(Some(d))).map_err(|e: Error| format!("{}, or default", e.detail()))
}

fn parse_depth(text: &str) -> Result<Setting<u64>, String> {
    parse_setting(text, |text| match text.parse::<u64>() {
        Ok(n) if (1..=QUEUE_DEPTH_MAX).contains(&n) => Ok(n),
        _ => Err(format!("max_depth must be a number from 1 to {QUEUE_DEPTH_MAX}, or none")),
    })
}

impl SetArgs {
    /// The patch these flags ask for. The backoff flags given replace those settings alone: the
    /// store keeps the queue's others (one request, no read first).
    fn patch(&self) -> QueueConfigPatch {
        let backoff = BackoffPatch {
            initial_ms: self.backoff_initial_ms,
            max_ms: self.backoff_max_ms,
            multiplier: self.backoff_multiplier,
            jitter: self.backoff_jitter,
        };
        QueueConfigPatch {
            delivery: self.delivery,
            visibility_timeout_ms: self.visibility_timeout_ms,
            max_attempts: self.max_attempts,
            backoff: (backoff != BackoffPatch::default()).then_some(backoff),
            dedup_window_ms: self.dedup_window_ms,
            ordering: self.ordering,
            partitions: self.partitions,
            dead_blocks_key: self.dead_blocks_key,
            rate_limit: self.rate_limit.map(|s| s.0),
            max_in_flight: self.max_in_flight.map(|s| s.0),
            rate_limit_by: self.rate_limit_by.clone().map(|s| s.0),
            max_in_flight_per_key: self.max_in_flight_per_key.map(|s| s.0),
            max_depth: self.max_depth.map(|s| s.0),
            durability: self.durability.map(|s| s.0),
        }
    }
}

fn parse_ordering(text: &str) -> Result<Ordering, String> {
    text.parse().map_err(|e: Error| match e {
        Error::InvalidRequest(message) => message,
        other => other.to_string(),
    })
}

fn parse_delivery(text: &str) -> Result<DeliveryMode, String> {
    text.parse().map_err(|e: Error| match e {
        Error::InvalidRequest(message) => message,
        other => other.to_string(),
    })
}

fn parse_jitter(text: &str) -> Result<Jitter, String> {
    match text {
        "full" => Ok(Jitter::Full),
        "equal" => Ok(Jitter::Equal),
        "none" => Ok(Jitter::None),
        other => Err(format!("unknown jitter {other:?}; use full, equal or none")),
    }
}

fn parse_multiplier(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(m) if m.is_finite() && (1.0..=BACKOFF_MULTIPLIER_MAX).contains(&m) => Ok(m),
        _ => Err(format!("{text:?} is not a number between 1 and {BACKOFF_MULTIPLIER_MAX}")),
    }
}

/// What `queue pause|resume|delete --output json` prints (the API answers those with 204).
#[derive(Debug, Serialize)]
struct Changed<'a> {
    /// The queue.
    name: &'a str,
    /// Its pause flag now, for pause and resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    paused: Option<bool>,
    /// True for delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
}

/// Runs a queue command.
pub fn run(args: &QueueArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        match &args.command {
            QueueCommand::List => list(&session).await,
            QueueCommand::Get { queue } => get(&session, queue).await,
            QueueCommand::Set(set_args) => set(&session, set_args).await,
            QueueCommand::Pause { queue } => pause(&session, queue, true).await,
            QueueCommand::Resume { queue } => pause(&session, queue, false).await,
            QueueCommand::Delete { queue, yes } => delete(&session, queue, *yes).await,
        }
    })
}

async fn list(session: &Session) -> Result<(), CliError> {
    let queues = session.client.queue_list().await.map_err(|e| session.failure(e))?;
    match session.output {
        Output::Json => session.print_json(&QueueList { queues, next: None }),
        Output::Table => {
            out!("{}", config_table(&queues).render());
            Ok(())
        }
    }
}

/// The queues' configurations, one row each.
pub fn config_table(queues: &[QueueInfo]) -> Table {
    let mut table = Table::new(&[
        ("QUEUE", Align::Left),
        ("DELIVERY", Align::Left),
        ("VISIBILITY", Align::Right),
        ("MAX_ATTEMPTS", Align::Right),
        ("BACKOFF", Align::Left),
        ("DEDUP_WINDOW", Align::Right),
        ("ORDERING", Align::Left),
        ("PAUSED", Align::Left),
    ]);
    for queue in queues {
        let config = &queue.config;
        table.row(vec![
            queue.name.to_string(),
            config.delivery.as_str().to_owned(),
            table::age(config.visibility_timeout_ms),
            config.max_attempts.to_string(),
            table::backoff(&config.backoff),
            table::age(config.dedup_window_ms),
            table::ordering(config),
            table::yes_no(queue.paused),
        ]);
    }
    table
}

async fn get(session: &Session, queue: &QueueName) -> Result<(), CliError> {
    let info = session.client.queue_get(queue).await.map_err(|e| session.failure(e))?;
    match session.output {
        Output::Json => session.print_json(&info),
        Output::Table => {
            out!("{}", info_record(&info));
            Ok(())
        }
    }
}

/// One queue as name / value lines.
pub fn info_record(info: &QueueInfo) -> String {
    let stats = &info.stats;
    let mut fields = vec![("name", info.name.to_string())];
    fields.extend(config_fields(&info.config));
    fields.extend([
        ("paused", table::yes_no(info.paused)),
        ("ready", stats.ready.to_string()),
        ("scheduled", stats.scheduled.to_string()),
        ("leased", stats.leased.to_string()),
        ("blocked", stats.blocked.to_string()),
        ("dead", stats.dead.to_string()),
        ("oldest_ready_age", table::age_or_dash(stats.oldest_ready_age_ms)),
    ]);
    table::record(&fields)
}

fn config_fields(config: &QueueConfig) -> Vec<(&'static str, String)> {
    vec![
        ("delivery", config.delivery.as_str().to_owned()),
        ("visibility_timeout_ms", config.visibility_timeout_ms.to_string()),
        ("max_attempts", config.max_attempts.to_string()),
        ("backoff", table::backoff(&config.backoff)),
        ("dedup_window_ms", config.dedup_window_ms.to_string()),
        ("ordering", config.ordering.as_str().to_owned()),
        ("partitions", config.partitions.to_string()),
        ("dead_blocks_key", table::yes_no(config.dead_blocks_key)),
        ("rate_limit", config.rate_limit.map_or("-".to_owned(), |r| format!("{}/s, burst {}", r.per_second, r.burst))),
        ("rate_limit_by", config.rate_limit_by.as_ref().map_or("-".to_owned(), KeyBy::to_string)),
        ("max_in_flight", config.max_in_flight.map_or("-".to_owned(), |n| n.to_string())),
        ("max_in_flight_per_key", config.max_in_flight_per_key.map_or("-".to_owned(), |n| n.to_string())),
        ("max_depth", config.max_depth.map_or("-".to_owned(), |n| n.to_string())),
        ("durability", config.durability.map_or("server default".to_owned(), |d| d.as_str().to_owned())),
    ]
}

async fn set(session: &Session, args: &SetArgs) -> Result<(), CliError> {
    let patch = args.patch();
    let config = session.client.queue_upsert(&args.queue, patch).await.map_err(|e| match e {
        // The settings the operator gave are out of range or do not fit together (with each
        // other, or with the queue's other backoff settings): a usage error. A refused token
        // is a failure, with its hint.
        Error::InvalidRequest(message) if !message.starts_with("unauthorized") && !message.starts_with("forbidden") => {
            CliError::Usage(message)
        }
        other => session.failure(other),
    })?;
    match session.output {
        Output::Json => session.print_json(&config),
        Output::Table => {
            let mut fields = vec![("name", args.queue.to_string())];
            fields.extend(config_fields(&config));
            out!("{}", table::record(&fields));
            Ok(())
        }
    }
}

async fn pause(session: &Session, queue: &QueueName, paused: bool) -> Result<(), CliError> {
    let result =
        if paused { session.client.queue_pause(queue).await } else { session.client.queue_resume(queue).await };
    result.map_err(|e| session.failure(e))?;
    match session.output {
        Output::Json => session.print_json(&Changed { name: queue.as_str(), paused: Some(paused), deleted: None }),
        Output::Table => {
            if paused {
                outln!("queue {queue} paused: no leases are handed out until `onceq queue resume {queue}`");
            } else {
                outln!("queue {queue} resumed");
            }
            Ok(())
        }
    }
}

async fn delete(session: &Session, queue: &QueueName, yes: bool) -> Result<(), CliError> {
    if !yes {
        // Read it first: the question states what goes, and an unknown queue fails before it.
        let info = session.client.queue_get(queue).await.map_err(|e| session.failure(e))?;
        let s = info.stats;
        let jobs = s.ready + s.scheduled + s.leased + s.blocked + s.dead;
        confirm(&format!("delete queue {queue} and its {jobs} jobs ({} leased, {} dead)", s.leased, s.dead), yes)?;
    }
    session.client.queue_delete(queue).await.map_err(|e| session.failure(e))?;
    match session.output {
        Output::Json => session.print_json(&Changed { name: queue.as_str(), paused: None, deleted: Some(true) }),
        Output::Table => {
            outln!("queue {queue} deleted, with its jobs");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use onceq_core::QueueStats;

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> QueueArgs {
        match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Queue(queue), .. }) => queue,
            other => panic!("{args:?} did not parse as a queue command: {other:?}"),
        }
    }

    #[test]
    fn set_parses_every_setting() {
        let args = parse(&[
            "onceq",
            "queue",
            "set",
            "emails",
            "--delivery",
            "effectively_once",
            "--visibility-timeout-ms",
            "1500",
            "--max-attempts",
            "3",
            "--backoff-jitter",
            "equal",
            "--dedup-window-ms",
            "60000",
            "--ordering",
            "per_key",
            "--partitions",
            "64",
            "--dead-blocks-key",
            "true",
            "--rate-limit",
            "0.5/3",
            "--max-in-flight",
            "5",
            "--rate-limit-by",
            "header:account",
            "--max-in-flight-per-key",
            "none",
            "--max-depth",
            "none",
            "--durability",
            "relaxed",
        ]);
        let QueueCommand::Set(set) = args.command else { panic!("not set: {:?}", args.command) };
        assert_eq!(set.queue.as_str(), "emails");
        let patch = set.patch();
        assert_eq!(
            patch,
            QueueConfigPatch {
                delivery: Some(DeliveryMode::EffectivelyOnce),
                visibility_timeout_ms: Some(1500),
                max_attempts: Some(3),
                // One backoff flag: the store keeps the queue's other backoff settings.
                backoff: Some(BackoffPatch { jitter: Some(Jitter::Equal), ..BackoffPatch::default() }),
                dedup_window_ms: Some(60_000),
                ordering: Some(Ordering::PerKey),
                partitions: Some(64),
                dead_blocks_key: Some(true),
                rate_limit: Some(Some(RateLimit { per_second: 0.5, burst: 3 })),
                max_in_flight: Some(Some(5)),
                rate_limit_by: Some(Some(KeyBy::Header("account".into()))),
                max_in_flight_per_key: Some(None),
                max_depth: Some(None),
                durability: Some(Some(Durability::Relaxed)),
            }
        );
        let back_to_default = parse(&["onceq", "queue", "set", "emails", "--durability", "default"]);
        let QueueCommand::Set(set) = back_to_default.command else { panic!("not set: {:?}", back_to_default.command) };
        assert_eq!(set.patch().durability, Some(None));
        for bad in [
            ["--rate-limit", "50"],
            ["--rate-limit", "0/1"],
            ["--max-in-flight", "0"],
            ["--max-depth", "x"],
            ["--rate-limit-by", "customer"],
            ["--rate-limit-by", "header:"],
            ["--max-in-flight-per-key", "0"],
            ["--durability", "sometimes"],
        ] {
            let args = ["onceq", "queue", "set", "emails", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn set_without_backoff_flags_leaves_the_backoff_alone() {
        let QueueCommand::Set(set) = parse(&["onceq", "queue", "set", "q", "--max-attempts", "2"]).command else {
            panic!("not set")
        };
        assert_eq!(set.patch().backoff, None);
        assert_eq!((set.patch().ordering, set.patch().partitions, set.patch().dead_blocks_key), (None, None, None));
        let QueueCommand::Set(set) =
            parse(&["onceq", "queue", "set", "q", "--ordering", "none", "--dead-blocks-key", "false"]).command
        else {
            panic!("not set")
        };
        assert_eq!((set.patch().ordering, set.patch().dead_blocks_key), (Some(Ordering::None), Some(false)));
        let max = PARTITIONS_MAX.to_string();
        let QueueCommand::Set(set) = parse(&["onceq", "queue", "set", "q", "--partitions", &max]).command else {
            panic!("not set")
        };
        assert_eq!(set.patch().partitions, Some(PARTITIONS_MAX));
    }

    #[test]
    fn bad_settings_are_usage_errors() {
        for args in [
            &["onceq", "queue", "set", "q", "--max-attempts", "0"][..],
            &["onceq", "queue", "set", "q", "--delivery", "twice"],
            &["onceq", "queue", "set", "q", "--backoff-jitter", "some"],
            &["onceq", "queue", "set", "q", "--backoff-multiplier", "0.5"],
            &["onceq", "queue", "set", "q", "--visibility-timeout-ms", "0"],
            &["onceq", "queue", "set", "q", "--ordering", "fifo"],
            &["onceq", "queue", "set", "q", "--partitions", "0"],
            &["onceq", "queue", "set", "q", "--partitions", "257"],
            &["onceq", "queue", "set", "q", "--dead-blocks-key", "maybe"],
            &["onceq", "queue", "set", "q", "--dead-blocks-key"],
            &["onceq", "queue", "get", "bad name"],
            &["onceq", "queue", "frobnicate"],
        ] {
            let error = Cli::try_parse_from(args).err();
            assert_eq!(error.as_ref().map(|e| e.exit_code()), Some(2), "{args:?}: {error:?}");
        }
    }

    #[test]
    fn connection_options_go_before_or_after_the_subcommand() {
        let before = parse(&["onceq", "queue", "--server", "http://h:1", "--output", "json", "list"]);
        let after = parse(&["onceq", "queue", "list", "--server", "http://h:1", "--output", "json"]);
        for args in [before, after] {
            assert_eq!(args.connection.server, "http://h:1");
            assert_eq!(args.connection.output, Output::Json);
        }
    }

    #[test]
    fn delete_takes_yes() {
        let args = parse(&["onceq", "queue", "delete", "q", "--yes"]);
        assert!(matches!(args.command, QueueCommand::Delete { yes: true, .. }), "{:?}", args.command);
    }

    #[test]
    fn a_queues_ordering_reads_as_words() {
        let per_key = QueueConfig { ordering: Ordering::PerKey, partitions: 64, ..QueueConfig::default() };
        assert_eq!(table::ordering(&QueueConfig::default()), "none");
        assert_eq!(table::ordering(&per_key), "per_key, 64 partitions");
        let blocking = QueueConfig { dead_blocks_key: true, ..per_key };
        assert_eq!(table::ordering(&blocking), "per_key, 64 partitions, dead blocks key");
    }

    #[test]
    fn a_queue_reads_as_a_record() {
        let info = QueueInfo {
            name: QueueName::new("emails").unwrap_or_else(|e| panic!("{e}")),
            config: QueueConfig::default(),
            paused: true,
            stats: QueueStats {
                ready: 3,
                scheduled: 1,
                leased: 2,
                dead: 0,
                blocked: 4,
                cancelled: 0,
                oldest_ready_age_ms: Some(1500),
            },
        };
        assert_eq!(
            info_record(&info),
            "name                   emails\n\
             delivery               at_least_once\n\
             visibility_timeout_ms  30000\n\
             max_attempts           5\n\
             backoff                1000ms × 2, at most 600000ms, full jitter\n\
             dedup_window_ms        300000\n\
             ordering               none\n\
             partitions             16\n\
             dead_blocks_key        no\n\
             rate_limit             -\n\
             rate_limit_by          -\n\
             max_in_flight          -\n\
             max_in_flight_per_key  -\n\
             max_depth              -\n\
             durability             server default\n\
             paused                 yes\n\
             ready                  3\n\
             scheduled              1\n\
             leased                 2\n\
             blocked                4\n\
             dead                   0\n\
             oldest_ready_age       1.5s\n"
        );
        let list = config_table(&[info]).render();
        assert_eq!(
            list,
            "QUEUE   DELIVERY       VISIBILITY  MAX_ATTEMPTS  BACKOFF                                    DEDUP_WINDOW  ORDERING  PAUSED\n\
             emails  at_least_once       30.0s             5  1000ms × 2, at most 600000ms, full jitter         5m00s  none      yes\n"
        );
    }
}
